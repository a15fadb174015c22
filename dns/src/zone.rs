//! The cluster zone's answers, from the Service index and the pod IPs (pure; no sockets).
//!
//! Names follow the Kubernetes DNS specification:
//! - `SVC.NS.svc.ZONE` A: the cluster IP; for a headless Service, its ready endpoints;
//!   CNAME for an ExternalName Service;
//! - `HOST.SVC.NS.svc.ZONE` A: a headless Service's endpoint by hostname (StatefulSet pods,
//!   `hostname` + `subdomain`) or by dashed IP;
//! - `_PORT._PROTO.SVC.NS.svc.ZONE` SRV: named ports (per endpoint for headless Services);
//! - `A-B-C-D.NS.pod.ZONE` A: a pod with that IP in that namespace.
//!
//! Names that exist only as parents (`NS.svc.ZONE`) answer NODATA, unknown names NXDOMAIN with
//! the zone's SOA, names outside the zone REFUSED.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::str::FromStr;

use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use wasmkube_api::services::{ClusterIp, ServiceIndex};

/// Record TTL in seconds (CoreDNS's kubernetes plugin default).
pub const TTL: u32 = 5;

/// Pod IPs by namespace, for pod A records.
#[derive(Debug, Default)]
pub struct PodIps {
    ips: HashMap<(String, Ipv4Addr), usize>,
    of: HashMap<(String, String), Ipv4Addr>,
}

impl PodIps {
    /// Records (or moves) a pod's IP.
    pub fn apply(&mut self, namespace: &str, name: &str, ip: Option<Ipv4Addr>) {
        self.delete(namespace, name);
        if let Some(ip) = ip {
            *self.ips.entry((namespace.to_owned(), ip)).or_default() += 1;
            self.of.insert((namespace.to_owned(), name.to_owned()), ip);
        }
    }

    /// Forgets a pod.
    pub fn delete(&mut self, namespace: &str, name: &str) {
        if let Some(ip) = self.of.remove(&(namespace.to_owned(), name.to_owned())) {
            let k = (namespace.to_owned(), ip);
            if let Some(n) = self.ips.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.ips.remove(&k);
                }
            }
        }
    }

    fn has(&self, namespace: &str, ip: Ipv4Addr) -> bool {
        self.ips.contains_key(&(namespace.to_owned(), ip))
    }

    fn has_namespace(&self, namespace: &str) -> bool {
        self.of.keys().any(|(ns, _)| ns == namespace)
    }
}

/// What a query gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Records (answers, additionals).
    Records(Vec<Record>, Vec<Record>),
    /// The name exists but has no records of the type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// Not our zone.
    Refused,
}

/// The cluster zone.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn undashed(label: &str) -> Option<Ipv4Addr> {
    Ipv4Addr::from_str(&label.replace('-', ".")).ok()
}

impl Zone {
    /// The zone for cluster domain `domain` (`cluster.local`).
    ///
    /// # Errors
    /// When `domain` is not a valid DNS name.
    pub fn new(domain: &str) -> Result<Zone, hickory_proto::ProtoError> {
        let mut origin = Name::from_str(domain)?;
        origin.set_fqdn(true);
        Ok(Zone {
            origin: origin.to_lowercase(),
        })
    }

    /// The zone's origin.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The SOA record (for negative answers).
    pub fn soa(&self, serial: u32) -> Record {
        let ns = self.child(&["ns", "dns"]);
        let mail = self.child(&["hostmaster"]);
        Record::from_rdata(
            self.origin.clone(),
            TTL,
            RData::SOA(SOA::new(ns, mail, serial, 7200, 1800, 86400, TTL)),
        )
    }

    fn child(&self, labels: &[&str]) -> Name {
        let mut n = Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap_or_default();
        n = n
            .append_domain(&self.origin)
            .unwrap_or_else(|_| self.origin.clone());
        n.set_fqdn(true);
        n
    }

    /// Answers `qname`/`qtype` from the current state.
    pub fn answer(
        &self,
        services: &ServiceIndex,
        pods: &PodIps,
        qname: &Name,
        qtype: RecordType,
    ) -> Answer {
        let qname = qname.to_lowercase();
        if !self.origin.zone_of(&qname) {
            return Answer::Refused;
        }
        let depth = usize::from(qname.num_labels() - self.origin.num_labels());
        let labels: Vec<String> = qname
            .iter()
            .take(depth)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        let a = |ip: Ipv4Addr| Record::from_rdata(qname.clone(), TTL, RData::A(A(ip)));
        let want_a = matches!(qtype, RecordType::A | RecordType::ANY);
        match l.as_slice() {
            [] => match qtype {
                RecordType::SOA | RecordType::ANY => Answer::Records(vec![self.soa(1)], vec![]),
                _ => Answer::NoData,
            },
            ["svc"] | ["pod"] => Answer::NoData,
            [ns, "svc"] => {
                if services.has_namespace(ns) {
                    Answer::NoData
                } else {
                    Answer::NxDomain
                }
            }
            [ns, "pod"] => {
                if pods.has_namespace(ns) {
                    Answer::NoData
                } else {
                    Answer::NxDomain
                }
            }
            [ip, ns, "pod"] => match undashed(ip) {
                Some(ip) if pods.has(ns, ip) => {
                    if want_a {
                        Answer::Records(vec![a(ip)], vec![])
                    } else {
                        Answer::NoData
                    }
                }
                _ => Answer::NxDomain,
            },
            [svc, ns, "svc"] => {
                let Some(entry) = services.service(ns, svc) else {
                    return Answer::NxDomain;
                };
                if let Some(target) = &entry.external_name {
                    let Ok(mut t) = Name::from_str(target) else {
                        return Answer::NoData;
                    };
                    t.set_fqdn(true);
                    if matches!(qtype, RecordType::A | RecordType::CNAME | RecordType::ANY) {
                        return Answer::Records(
                            vec![Record::from_rdata(
                                qname.clone(),
                                TTL,
                                RData::CNAME(CNAME(t)),
                            )],
                            vec![],
                        );
                    }
                    return Answer::NoData;
                }
                if !want_a {
                    return Answer::NoData;
                }
                let records: Vec<Record> = match entry.cluster_ip {
                    ClusterIp::Ip(ip) => vec![a(ip)],
                    ClusterIp::Headless => {
                        let mut ips: Vec<Ipv4Addr> = services
                            .endpoints(ns, svc)
                            .filter(|e| e.ready)
                            .map(|e| e.ip)
                            .collect();
                        ips.sort();
                        ips.dedup();
                        ips.into_iter().map(a).collect()
                    }
                    ClusterIp::Unset => vec![],
                };
                if records.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Records(records, vec![])
                }
            }
            [host, svc, ns, "svc"] if !host.starts_with('_') => {
                let found = services
                    .service(ns, svc)
                    .filter(|e| e.cluster_ip == ClusterIp::Headless)
                    .and_then(|_| {
                        services
                            .endpoints(ns, svc)
                            .find(|e| e.hostname.as_deref() == Some(*host) || dashed(e.ip) == *host)
                    });
                match found {
                    Some(e) if want_a => Answer::Records(vec![a(e.ip)], vec![]),
                    Some(_) => Answer::NoData,
                    None => Answer::NxDomain,
                }
            }
            [port, proto, svc, ns, "svc"] => {
                let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_'))
                else {
                    return Answer::NxDomain;
                };
                let Some(entry) = services.service(ns, svc) else {
                    return Answer::NxDomain;
                };
                let Some(sp) = entry
                    .ports
                    .iter()
                    .find(|p| p.name == port && p.protocol.srv_label() == proto)
                else {
                    return Answer::NxDomain;
                };
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    return Answer::NoData;
                }
                let service_name = self.child(&[svc, ns, "svc"]);
                let srv = |port: u16, weight: u16, target: Name| {
                    Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, weight, port, target)),
                    )
                };
                match entry.cluster_ip {
                    ClusterIp::Ip(ip) => Answer::Records(
                        vec![srv(sp.port, 100, service_name.clone())],
                        vec![Record::from_rdata(service_name, TTL, RData::A(A(ip)))],
                    ),
                    _ => {
                        let backends: Vec<_> = services
                            .backends(ns, svc, sp)
                            .filter(|b| b.endpoint.ready)
                            .collect();
                        let weight = u16::try_from(100 / backends.len().max(1)).unwrap_or(1);
                        let mut answers = Vec::new();
                        let mut extra = Vec::new();
                        for b in backends {
                            let host = b
                                .endpoint
                                .hostname
                                .clone()
                                .unwrap_or_else(|| dashed(b.endpoint.ip));
                            let target = self.child(&[&host, svc, ns, "svc"]);
                            answers.push(srv(b.addr.port(), weight, target.clone()));
                            extra.push(Record::from_rdata(target, TTL, RData::A(A(b.endpoint.ip))));
                        }
                        if answers.is_empty() {
                            Answer::NoData
                        } else {
                            Answer::Records(answers, extra)
                        }
                    }
                }
            }
            _ => Answer::NxDomain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture() -> (Zone, ServiceIndex, PodIps) {
        let mut idx = ServiceIndex::default();
        let svc = |v: serde_json::Value| serde_json::from_value(v).expect("service");
        idx.apply_service(&svc(json!({
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"clusterIP": "10.96.1.1", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        })));
        idx.apply_service(&svc(json!({
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]},
        })));
        idx.apply_service(&svc(json!({
            "metadata": {"name": "ext", "namespace": "prod"},
            "spec": {"type": "ExternalName", "externalName": "example.org"},
        })));
        idx.apply_slice(
            &serde_json::from_value(json!({
                "metadata": {"name": "db-1", "namespace": "prod",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.0.7"], "hostname": "db-0"},
                              {"addresses": ["10.244.0.8"], "conditions": {"ready": false}}],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            }))
            .expect("slice"),
        );
        let mut pods = PodIps::default();
        pods.apply("prod", "a", Some(Ipv4Addr::new(10, 244, 0, 7)));
        (Zone::new("cluster.local").expect("zone"), idx, pods)
    }

    fn ask(z: &(Zone, ServiceIndex, PodIps), name: &str, t: RecordType) -> Answer {
        z.0.answer(&z.1, &z.2, &Name::from_str(name).expect("name"), t)
    }

    fn ips(a: &Answer) -> Vec<String> {
        match a {
            Answer::Records(r, _) => r.iter().map(|r| r.data.to_string()).collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn every_record_kind() {
        let z = fixture();
        assert_eq!(
            ips(&ask(&z, "web.prod.svc.cluster.local.", RecordType::A)),
            ["10.96.1.1"]
        );
        assert_eq!(
            ips(&ask(&z, "WEB.prod.svc.cluster.local", RecordType::A)),
            ["10.96.1.1"]
        );
        assert_eq!(
            ips(&ask(&z, "db.prod.svc.cluster.local.", RecordType::A)),
            ["10.244.0.7"]
        );
        assert_eq!(
            ips(&ask(&z, "db-0.db.prod.svc.cluster.local.", RecordType::A)),
            ["10.244.0.7"]
        );
        assert_eq!(
            ips(&ask(
                &z,
                "10-244-0-7.prod.pod.cluster.local.",
                RecordType::A
            )),
            ["10.244.0.7"]
        );
        assert_eq!(
            ask(&z, "10-244-0-9.prod.pod.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            ips(&ask(
                &z,
                "_http._tcp.web.prod.svc.cluster.local.",
                RecordType::SRV
            )),
            ["0 100 80 web.prod.svc.cluster.local."]
        );
        assert_eq!(
            ips(&ask(
                &z,
                "_pg._tcp.db.prod.svc.cluster.local.",
                RecordType::SRV
            )),
            ["0 100 5432 db-0.db.prod.svc.cluster.local."]
        );
        assert_eq!(
            ips(&ask(&z, "ext.prod.svc.cluster.local.", RecordType::A)),
            ["example.org."]
        );
        assert_eq!(
            ask(&z, "web.prod.svc.cluster.local.", RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(
            ask(&z, "prod.svc.cluster.local.", RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            ask(&z, "nope.prod.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(ask(&z, "example.com.", RecordType::A), Answer::Refused);
    }
}
