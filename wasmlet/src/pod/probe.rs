//! Container probes as the kubelet runs them: startup, liveness and readiness, by HTTP(S)
//! GET, TCP connect, gRPC health check or exec.
//!
//! [`ProbeSpec`] is a container's probe resolved from the PodSpec (named ports looked up,
//! defaults applied); [`Threshold`] is the kubelet's result rule (a result changes only after
//! `successThreshold` / `failureThreshold` consecutive outcomes), pure and unit-tested;
//! [`Prober`] does the IO on the pod's network and [`run`] sequences one container
//! instance's probes: the startup probe until it succeeds, then liveness and readiness side
//! by side. Results go to the pod worker, which decides (ready, kill and restart).
//!
//! Probes come from the node, as the kubelet's do: they dial the pod IP (or `host`) through
//! the node's pod network, so a listener bound to the pod's `127.0.0.1` is not reachable by a
//! probe, exactly as in Kubernetes. An exec probe runs the container's own command component
//! once more with the probe's command as its arguments, with the container's environment,
//! mounts and pod network: WASI has no processes to exec into.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

/// Why one probe attempt failed, in the kubelet's words: the message of the `Unhealthy`
/// event (`Get "http://10.244.0.5:8080/": dial tcp ...: connect: connection refused`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ProbeFailure(pub(crate) String);

impl ProbeFailure {
    fn of(e: impl std::fmt::Display) -> Self {
        ProbeFailure(e.to_string())
    }
}

impl From<&str> for ProbeFailure {
    fn from(s: &str) -> Self {
        ProbeFailure(s.to_owned())
    }
}

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::net::NodeNet;
use crate::runtime::Prepared;
use crate::runtime::instance::{Exit, Launch};

/// The kubelet's probe user agent (the minor version of the API it speaks).
const USER_AGENT: &str = "kube-probe/1.33";

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    /// `startupProbe`: gates the others; failing kills the container.
    Startup,
    /// `livenessProbe`: failing kills the container.
    Liveness,
    /// `readinessProbe`: decides `ready`.
    Readiness,
}

impl ProbeKind {
    /// As the kubelet's events name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// `httpGet`: a 2xx or 3xx status is success.
    Http {
        /// `host` (default: the pod IP).
        host: Option<String>,
        /// The port number.
        port: u16,
        /// Path and query.
        path: String,
        /// `scheme: HTTPS` (certificates are not verified, as the kubelet does it).
        https: bool,
        /// `httpHeaders`.
        headers: Vec<(String, String)>,
    },
    /// `tcpSocket`: a connection is success.
    Tcp {
        /// `host` (default: the pod IP).
        host: Option<String>,
        /// The port number.
        port: u16,
    },
    /// `grpc`: the standard health service answers `SERVING`.
    Grpc {
        /// The port number.
        port: u16,
        /// `service` (empty: the server as a whole).
        service: String,
    },
    /// `exec`: the command exits 0.
    Exec {
        /// The command (`argv`).
        command: Vec<String>,
    },
    /// A probe that cannot run (a named port the container does not have); always fails.
    Invalid(ProbeFailure),
}

/// One probe of a container, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeSpec {
    /// What it does.
    pub action: Action,
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10).
    pub period: Duration,
    /// `timeoutSeconds` (default 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
}

/// Zero means "use the default", as for the kubelet's non-pointer fields.
fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(
        v.and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(default),
    )
}

fn count(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(p: &IntOrString, c: &Container) -> Result<u16, ProbeFailure> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ProbeFailure(format!("invalid port number: {n}"))),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| ProbeFailure(format!("couldn't find port: {name} in {}", c.name))),
        },
    }
}

fn non_empty(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.is_empty()).cloned()
}

impl ProbeSpec {
    /// Resolves `probe` of container `c`.
    pub(crate) fn new(probe: &Probe, c: &Container) -> Self {
        let action = if let Some(h) = &probe.http_get {
            match port(&h.port, c) {
                Ok(port) => {
                    let path = h.path.clone().unwrap_or_default();
                    Action::Http {
                        host: non_empty(h.host.as_ref()),
                        port,
                        path: if path.starts_with('/') {
                            path
                        } else {
                            format!("/{path}")
                        },
                        https: h.scheme.as_deref() == Some("HTTPS"),
                        headers: h
                            .http_headers
                            .iter()
                            .flatten()
                            .map(|h| (h.name.clone(), h.value.clone()))
                            .collect(),
                    }
                }
                Err(e) => Action::Invalid(e),
            }
        } else if let Some(t) = &probe.tcp_socket {
            match port(&t.port, c) {
                Ok(port) => Action::Tcp {
                    host: non_empty(t.host.as_ref()),
                    port,
                },
                Err(e) => Action::Invalid(e),
            }
        } else if let Some(g) = &probe.grpc {
            match u16::try_from(g.port).ok().filter(|p| *p > 0) {
                Some(port) => Action::Grpc {
                    port,
                    service: g.service.clone().unwrap_or_default(),
                },
                None => Action::Invalid(ProbeFailure(format!("invalid port number: {}", g.port))),
            }
        } else if let Some(e) = &probe.exec {
            Action::Exec {
                command: e.command.clone().unwrap_or_default(),
            }
        } else {
            Action::Invalid("missing probe handler".into())
        };
        Self {
            action,
            initial_delay: Duration::from_secs(
                probe
                    .initial_delay_seconds
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            ),
            period: secs(probe.period_seconds, 10),
            timeout: secs(probe.timeout_seconds, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// A container's probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ContainerProbes {
    /// `startupProbe`.
    pub startup: Option<ProbeSpec>,
    /// `livenessProbe`.
    pub liveness: Option<ProbeSpec>,
    /// `readinessProbe`.
    pub readiness: Option<ProbeSpec>,
}

impl ContainerProbes {
    /// The probes of `c` (init containers have none: the API server refuses them there).
    pub(crate) fn of(c: &Container) -> Self {
        let spec = |p: &Option<Probe>| p.as_ref().map(|p| ProbeSpec::new(p, c));
        Self {
            startup: spec(&c.startup_probe),
            liveness: spec(&c.liveness_probe),
            readiness: spec(&c.readiness_probe),
        }
    }
}

/// The kubelet's result rule for one probe of one container instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Threshold {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
    result: Option<bool>,
}

impl Threshold {
    /// A fresh instance: readiness starts failed, liveness healthy, startup undecided.
    pub(crate) fn new(kind: ProbeKind, spec: &ProbeSpec) -> Self {
        Self {
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
            last: None,
            run: 0,
            result: match kind {
                ProbeKind::Readiness => Some(false),
                ProbeKind::Liveness => Some(true),
                ProbeKind::Startup => None,
            },
        }
    }

    /// Takes one outcome; returns the new result when it changes.
    pub(crate) fn observe(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < needed || self.result == Some(ok) {
            return None;
        }
        self.result = Some(ok);
        Some(ok)
    }
}

/// Where a pod's probes go and what they run.
#[derive(Clone)]
pub(crate) struct Prober {
    /// The node's pod network.
    pub net: Arc<NodeNet>,
    /// The pod IP (virtual; for `hostNetwork` pods the node address).
    pub pod_ip: Ipv4Addr,
    /// The container's prepared image and launch, for exec probes.
    pub exec: Option<(Prepared, Launch)>,
}

impl Prober {
    async fn connect(
        &self,
        host: Option<&str>,
        port: u16,
    ) -> Result<crate::net::Conn, ProbeFailure> {
        let ip = match host {
            None => self.pod_ip,
            Some(h) => h.parse::<Ipv4Addr>().map_err(|_| {
                ProbeFailure(format!(
                    "dial tcp {h}:{port}: probe hosts must be IPv4 addresses on wasmkube"
                ))
            })?,
        };
        let dest = SocketAddrV4::new(ip, port);
        let dialled = self.net.dial_from_node(dest).await;
        dialled.map_err(|e| ProbeFailure(format!("dial tcp {dest}: connect: {}", describe(&e))))
    }

    /// Runs `action` once within `timeout`.
    ///
    /// # Errors
    /// The failure, in the kubelet's words where it has them.
    pub(crate) async fn check(
        &self,
        action: &Action,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        match action {
            Action::Invalid(why) => Err(why.clone()),
            Action::Tcp { host, port } => {
                let host_shown = host.clone().unwrap_or_else(|| self.pod_ip.to_string());
                match tokio::time::timeout(timeout, self.connect(host.as_deref(), *port)).await {
                    Ok(conn) => conn.map(drop),
                    Err(_) => Err(ProbeFailure(format!(
                        "dial tcp {host_shown}:{port}: i/o timeout"
                    ))),
                }
            }
            Action::Http {
                host,
                port,
                path,
                https,
                headers,
            } => {
                let host_shown = host.clone().unwrap_or_else(|| self.pod_ip.to_string());
                let url = format!(
                    "{}://{host_shown}:{port}{path}",
                    if *https { "https" } else { "http" }
                );
                let get = self.http_get(host.as_deref(), *port, &host_shown, path, *https, headers);
                match tokio::time::timeout(timeout, get).await {
                    Err(_) => Err(ProbeFailure(format!(
                        "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                    ))),
                    Ok(Err(e)) => Err(ProbeFailure(format!("Get \"{url}\": {e}"))),
                    Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                    Ok(Ok(code)) => Err(ProbeFailure(format!(
                        "HTTP probe failed with statuscode: {code}"
                    ))),
                }
            }
            Action::Grpc { port, service } => {
                let target = format!("{}:{port}", self.pod_ip);
                match tokio::time::timeout(timeout, self.grpc_check(*port, service)).await {
                    Err(_) => Err(ProbeFailure(format!(
                        "timeout: health rpc did not complete within {}s",
                        timeout.as_secs()
                    ))),
                    Ok(Err(e)) => Err(ProbeFailure(format!(
                        "failed to connect service {target:?}: {e}"
                    ))),
                    Ok(Ok(1)) => Ok(()),
                    Ok(Ok(status)) => Err(ProbeFailure(format!(
                        "service unhealthy (responded with {:?})",
                        grpc_status_name(status)
                    ))),
                }
            }
            Action::Exec { command } => self.exec(command, timeout).await,
        }
    }

    async fn http_get(
        &self,
        host: Option<&str>,
        port: u16,
        host_shown: &str,
        path: &str,
        https: bool,
        headers: &[(String, String)],
    ) -> Result<u16, ProbeFailure> {
        let stream = self.connect(host, port).await?;
        let mut req = http::Request::get(path);
        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !has("host") {
            req = req.header(http::header::HOST, format!("{host_shown}:{port}"));
        }
        if !has("user-agent") {
            req = req.header(http::header::USER_AGENT, USER_AGENT);
        }
        if !has("accept") {
            req = req.header(http::header::ACCEPT, "*/*");
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeFailure(format!("invalid request: {e}")))?;
        let status = if https {
            // HTTPS probes do not verify the certificate (the kubelet's `InsecureSkipVerify`).
            let tls = wasmkube_client::tls::insecure_connector()
                .connect(server_name(host_shown), stream)
                .await
                .map_err(|e| ProbeFailure(format!("tls: {e}")))?;
            send_http1(TokioIo::new(tls), req).await?
        } else {
            send_http1(TokioIo::new(stream), req).await?
        };
        Ok(status)
    }

    /// Calls `grpc.health.v1.Health/Check` over h2c and returns the serving status.
    async fn grpc_check(&self, port: u16, service: &str) -> Result<u64, ProbeFailure> {
        let stream = self.connect(None, port).await?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(ProbeFailure::of)?;
        tokio::spawn(conn);
        // HealthCheckRequest { string service = 1; }, length-prefixed as gRPC frames it.
        let mut msg = Vec::new();
        if !service.is_empty() {
            msg.push(0x0a);
            put_varint(&mut msg, service.len() as u64);
            msg.extend_from_slice(service.as_bytes());
        }
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
        frame.extend_from_slice(&msg);
        let req = http::Request::post(format!(
            "http://{}:{port}/grpc.health.v1.Health/Check",
            self.pod_ip
        ))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::from(frame)))
        .map_err(ProbeFailure::of)?;
        let resp = sender.send_request(req).await.map_err(ProbeFailure::of)?;
        let header_status = resp.headers().get("grpc-status").cloned();
        let body = resp.into_body().collect().await.map_err(ProbeFailure::of)?;
        let grpc_status = body
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(header_status);
        match grpc_status.as_ref().and_then(|s| s.to_str().ok()) {
            Some("0") => {}
            Some(code) => return Err(ProbeFailure(format!("rpc error: code = {code}"))),
            None => return Err("rpc error: no grpc-status".into()),
        }
        let bytes = body.to_bytes();
        // HealthCheckResponse { ServingStatus status = 1; } after the 5-byte frame header.
        let msg = bytes.get(5..).unwrap_or_default();
        Ok(read_status_field(msg).unwrap_or(0))
    }

    async fn exec(&self, command: &[String], timeout: Duration) -> Result<(), ProbeFailure> {
        let Some((prepared, launch)) = &self.exec else {
            return Err("exec: the container is not running".into());
        };
        let Prepared::Command(pre) = prepared else {
            return Err(
                "exec probes need a wasi:cli command component; this container is a wasi:http proxy"
                    .into(),
            );
        };
        let launch = Launch {
            argv: command.to_vec(),
            ..launch.clone()
        };
        match crate::runtime::instance::run_exec(pre, &launch, timeout).await {
            Err(e) => Err(ProbeFailure(format!("{e:#}"))),
            Ok((None, _)) => Err(ProbeFailure(format!("command {command:?} timed out"))),
            Ok((Some(Exit::Code(0)), _)) => Ok(()),
            Ok((Some(exit), output)) if output.trim().is_empty() => Err(ProbeFailure(format!(
                "command {command:?} exited with {}",
                match exit {
                    Exit::Trapped(m) | Exit::OomKilled(m) => m,
                    other => other.code().to_string(),
                }
            ))),
            Ok((Some(_), output)) => Err(ProbeFailure(output)),
        }
    }
}

async fn send_http1<I>(io: I, req: http::Request<Empty<Bytes>>) -> Result<u16, ProbeFailure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(ProbeFailure::of)?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(ProbeFailure::of)?;
    Ok(resp.status().as_u16())
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field 1 (varint) of a protobuf message, skipping anything else.
fn read_status_field(mut msg: &[u8]) -> Option<u64> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut found = None;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match key & 7 {
            0 => {
                let v = varint(&mut msg)?;
                if key >> 3 == 1 {
                    found = Some(v);
                }
            }
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                msg = msg.get(len..)?;
            }
            1 => msg = msg.get(8..)?,
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    found
}

fn grpc_status_name(s: u64) -> &'static str {
    match s {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

fn server_name(host: &str) -> rustls::pki_types::ServerName<'static> {
    match host.parse::<IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap_or(
            rustls::pki_types::ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
        ),
    }
}

/// What the probes of one container instance report.
pub(crate) trait Report: Send + Sync {
    /// A probe's result changed (after its thresholds).
    fn result(&self, kind: ProbeKind, healthy: bool);
    /// One probe attempt failed (the kubelet's `Unhealthy` event).
    fn failed(&self, kind: ProbeKind, message: &str);
}

/// Runs one container instance's probes until they are done or the future is dropped: the
/// startup probe until it succeeds (or fails for good), then liveness (until it fails) and
/// readiness side by side.
pub(crate) async fn run(prober: Prober, probes: ContainerProbes, report: Arc<dyn Report>) {
    if let Some(spec) = &probes.startup
        && !probe_loop(&prober, ProbeKind::Startup, spec, &*report).await
    {
        return;
    }
    let liveness = async {
        if let Some(spec) = &probes.liveness {
            probe_loop(&prober, ProbeKind::Liveness, spec, &*report).await;
        }
    };
    let readiness = async {
        if let Some(spec) = &probes.readiness {
            probe_loop(&prober, ProbeKind::Readiness, spec, &*report).await;
        }
    };
    tokio::join!(liveness, readiness);
}

/// Probes every period; returns when the probe is done with this instance: `true` when a
/// startup probe succeeded, `false` when a startup or liveness probe failed. Readiness never
/// returns.
async fn probe_loop(
    prober: &Prober,
    kind: ProbeKind,
    spec: &ProbeSpec,
    report: &dyn Report,
) -> bool {
    tokio::time::sleep(spec.initial_delay).await;
    let mut threshold = Threshold::new(kind, spec);
    let mut ticks = tokio::time::interval(spec.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = prober.check(&spec.action, spec.timeout).await;
        if let Err(message) = &outcome {
            report.failed(kind, &message.0);
        }
        if let Some(healthy) = threshold.observe(outcome.is_ok()) {
            report.result(kind, healthy);
            match (kind, healthy) {
                (ProbeKind::Startup, true) => return true,
                (ProbeKind::Startup | ProbeKind::Liveness, false) => return false,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: Action::Invalid(ProbeFailure(String::new())),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn readiness_starts_failed_and_flips_after_its_thresholds() {
        let mut t = Threshold::new(ProbeKind::Readiness, &spec(2, 3));
        assert_eq!(t.observe(true), None, "one success of two");
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(true), None, "no change, no report");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success resets the failure run");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
    }

    #[test]
    fn liveness_starts_healthy_and_startup_undecided() {
        let mut live = Threshold::new(ProbeKind::Liveness, &spec(1, 2));
        assert_eq!(live.observe(true), None, "already healthy");
        assert_eq!(live.observe(false), None);
        assert_eq!(live.observe(false), Some(false));
        let mut startup = Threshold::new(ProbeKind::Startup, &spec(1, 3));
        assert_eq!(startup.observe(false), None);
        assert_eq!(startup.observe(true), Some(true));
    }

    #[test]
    fn probes_resolve_named_ports_and_take_the_kubelets_defaults() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "http", "path": "healthz"}},
            "livenessProbe": {"tcpSocket": {"port": "admin"}, "periodSeconds": 0, "failureThreshold": 5},
            "startupProbe": {"exec": {"command": ["/toolbox", "cat", "/ready"]}, "initialDelaySeconds": 2}
        }))
        .unwrap();
        let p = ContainerProbes::of(&c);
        let r = p.readiness.unwrap();
        assert_eq!(
            r.action,
            Action::Http {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                https: false,
                headers: vec![]
            }
        );
        assert_eq!(
            (
                r.period,
                r.timeout,
                r.success_threshold,
                r.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        let l = p.liveness.unwrap();
        assert_eq!(
            l.action,
            Action::Invalid("couldn't find port: admin in web".into())
        );
        assert_eq!(
            (l.period, l.failure_threshold),
            (Duration::from_secs(10), 5)
        );
        let s = p.startup.unwrap();
        assert_eq!(s.initial_delay, Duration::from_secs(2));
        assert!(matches!(s.action, Action::Exec { ref command } if command.len() == 3));
    }

    #[test]
    fn grpc_status_is_field_one() {
        assert_eq!(read_status_field(&[0x08, 0x01]), Some(1));
        assert_eq!(read_status_field(&[0x12, 0x01, 0x41, 0x08, 0x02]), Some(2));
        assert_eq!(read_status_field(&[]), None);
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }
}
