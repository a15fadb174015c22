//! The cluster DNS's Prometheus metrics, with CoreDNS's names:
//! `coredns_dns_requests_total{server, zone, proto, family, type}`,
//! `coredns_dns_responses_total{server, zone, rcode}` and
//! `coredns_dns_request_duration_seconds{server, zone, type}`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    server: String,
    zone: String,
    proto: String,
    family: &'static str,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Response {
    server: String,
    zone: String,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Timing {
    server: String,
    zone: String,
    r#type: String,
}

struct Metrics {
    requests: Family<Request, Counter>,
    responses: Family<Response, Counter>,
    durations: Family<Timing, Histogram, fn() -> Histogram>,
}

fn duration_histogram() -> Histogram {
    // CoreDNS's: 0.25 ms doubling, 16 buckets.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            requests: Family::default(),
            responses: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
        };
        let (q, a, d) = (m.requests.clone(), m.responses.clone(), m.durations.clone());
        wasmkube_client::metrics::register_once("dns", move |r| {
            r.register(
                "coredns_dns_requests",
                "Counter of DNS requests made per zone, protocol and family.",
                q,
            );
            r.register(
                "coredns_dns_responses",
                "Counter of response status codes.",
                a,
            );
            r.register(
                "coredns_dns_request_duration_seconds",
                "Histogram of the time (in seconds) each request took per zone.",
                d,
            );
        });
        m
    })
}

/// Registers the DNS server's families.
pub(crate) fn init() {
    metrics();
}

/// What one query was and how it was answered.
pub(crate) struct Answered<'a> {
    pub server: &'a str,
    pub zone: &'a str,
    pub proto: String,
    pub ipv6: bool,
    pub qtype: String,
    pub rcode: String,
    pub took: Duration,
}

/// Counts one answered query.
pub(crate) fn answered(a: Answered<'_>) {
    let m = metrics();
    m.requests
        .get_or_create(&Request {
            server: a.server.to_owned(),
            zone: a.zone.to_owned(),
            proto: a.proto,
            family: if a.ipv6 { "2" } else { "1" },
            r#type: a.qtype.clone(),
        })
        .inc();
    m.responses
        .get_or_create(&Response {
            server: a.server.to_owned(),
            zone: a.zone.to_owned(),
            rcode: a.rcode,
        })
        .inc();
    m.durations
        .get_or_create(&Timing {
            server: a.server.to_owned(),
            zone: a.zone.to_owned(),
            r#type: a.qtype,
        })
        .observe(a.took.as_secs_f64());
}
