//! Scale from zero on the node: a connection or request for a Service with no ready
//! endpoint is held (bounded in count and time) while the Service's autoscaler is asked for a
//! replica, and goes on as soon as one is ready.

use super::*;

/// Asks for a replica of Service (namespace, name), or says that a held request gave up.
pub(crate) type Waker = Box<dyn Fn(&str, &str, Wake) + Send + Sync>;

/// What a [`Waker`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The first request is held: a replica is wanted.
    Wanted,
    /// A held request waited [`HOLD_TIMEOUT`] for a ready endpoint and was refused.
    TimedOut,
}

/// How long a request or connection is held for a Service at zero pods before it is refused
/// (503 from the Ingress).
pub(crate) const HOLD_TIMEOUT: Duration = Duration::from_secs(30);

/// How many requests and connections one node holds per Service at most.
pub(crate) const HOLD_LIMIT: u64 = 1000;

/// Requests and connections held per Service while it has no ready endpoint.
#[derive(Default)]
pub(crate) struct Waiting(Mutex<HashMap<(String, String), u64>>);

impl Waiting {
    /// What is held now, per Service.
    pub(crate) fn snapshot(&self) -> Vec<wasmkube_api::metrics::ServiceWaiting> {
        let held = self.0.lock().expect("waiting lock");
        let mut out: Vec<_> = held
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((ns, name), n)| wasmkube_api::metrics::ServiceWaiting {
                namespace: ns.clone(),
                name: name.clone(),
                waiting: *n,
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }
}

/// One held request or connection (counted until dropped).
pub(crate) struct Held<'a> {
    waiting: &'a Waiting,
    key: (String, String),
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.waiting.0.lock().expect("waiting lock");
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

impl NodeNet {
    /// Sets what asks for a replica of a Service at zero pods.
    pub(crate) fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
    }

    /// Wakes whoever waits for an endpoint (after a change of Services or endpoints).
    pub(crate) fn services_changed(&self) {
        self.changed.notify_waiters();
    }

    /// Whether Service `namespace/name` may be at zero pods, so that a request finding no
    /// ready endpoint is held rather than refused.
    pub(crate) fn holds(&self, namespace: &str, name: &str) -> bool {
        self.services
            .read()
            .expect("net lock")
            .service(namespace, name)
            .is_some_and(|s| s.scale_from_zero)
    }

    /// The Service behind cluster IP and port `dest`, if one may be at zero pods.
    pub(crate) fn holding_cluster_ip(&self, dest: SocketAddrV4) -> Option<(String, String)> {
        let index = self.services.read().expect("net lock");
        let (svc, _) = index.by_cluster_ip(*dest.ip(), dest.port(), Protocol::Tcp)?;
        svc.scale_from_zero
            .then(|| (svc.namespace.clone(), svc.name.clone()))
    }

    /// The Service behind node port `port`, if one may be at zero pods.
    pub(crate) fn holding_node_port(&self, port: u16) -> Option<(String, String)> {
        let index = self.services.read().expect("net lock");
        let (svc, _) = index.by_node_port(port, Protocol::Tcp)?;
        svc.scale_from_zero
            .then(|| (svc.namespace.clone(), svc.name.clone()))
    }

    /// Holds a request for Service `namespace/name` until it has a ready endpoint (asking for
    /// a replica when it is the first one held), for at most `timeout`; whether one came.
    /// Beyond [`HOLD_LIMIT`] held requests it does not wait.
    pub(crate) async fn wait_for_endpoint(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        let first = {
            let mut held = self.waiting.0.lock().expect("waiting lock");
            let n = held.entry(key.clone()).or_insert(0);
            if *n >= HOLD_LIMIT {
                return false;
            }
            *n += 1;
            *n == 1
        };
        let _held = Held {
            waiting: &self.waiting,
            key,
        };
        if first && let Some(wake) = self.waker.get() {
            tracing::debug!(target: "podtrace", kind = "Service", object = %format_args!("{namespace}/{name}"), stage = "held");
            wake(namespace, name, Wake::Wanted);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.has_ready_endpoint(namespace, name) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                if let Some(wake) = self.waker.get() {
                    wake(namespace, name, Wake::TimedOut);
                }
                return false;
            }
        }
    }

    pub(crate) fn has_ready_endpoint(&self, namespace: &str, name: &str) -> bool {
        let index = self.services.read().expect("net lock");
        let Some(svc) = index.service(namespace, name) else {
            return false;
        };
        svc.ports
            .iter()
            .any(|p| !self.ready_backends(&index, svc, p).is_empty())
    }
}
