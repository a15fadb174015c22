//! What the node keeps about the pods it runs: the pool of pod addresses and the
//! [`PodRegistry`] its HTTPS endpoint serves logs, exec and port-forward from.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::runtime::Prepared;
use crate::runtime::instance::Launch;
use crate::runtime::usage::Usage;
use crate::streaming::attach::ContainerStdin;
use crate::streaming::logs::LogFile;

/// Pod address offsets: offset `k` is the `k`-th address of the node's pod CIDR and of its
/// loopback range alike (`.0` and `.1` are the network and the node's own relay address).
#[derive(Debug)]
pub(crate) struct IpPool {
    capacity: u32,
    next: u32,
    used: std::collections::HashSet<u32>,
}

impl IpPool {
    /// A pool of `capacity` offsets, from 2.
    pub(crate) fn new(capacity: u32) -> Self {
        Self {
            capacity,
            next: 0,
            used: Default::default(),
        }
    }

    /// A free offset, if any.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        for _ in 0..self.capacity {
            let offset = 2 + self.next;
            self.next = (self.next + 1) % self.capacity.max(1);
            if self.used.insert(offset) {
                return Some(offset);
            }
        }
        None
    }

    /// Returns an offset to the pool.
    pub(crate) fn release(&mut self, offset: u32) {
        self.used.remove(&offset);
    }
}

/// The pods this node runs, keyed by (namespace, name): where each one's logs are, its
/// running instances and its address; what the node's endpoint serves (`pods/log`,
/// `pods/exec`, `pods/portforward`).
#[derive(Default)]
pub(crate) struct PodRegistry {
    pods: Mutex<HashMap<(String, String), PodEntry>>,
}

/// One pod on this node: its log directories and live files, running instances, address.
#[derive(Clone, Default)]
pub(crate) struct PodEntry {
    /// `<pods dir>/<ns>_<name>_<uid>`.
    pub dir: PathBuf,
    /// The pod's uid.
    pub uid: String,
    /// When this node started working on it.
    pub started: Option<std::time::SystemTime>,
    /// Container name → (current restart index, its live log file while running).
    pub containers: HashMap<String, (u32, Option<Arc<LogFile>>)>,
    /// Container name → its running instance (for exec, attach and resource metrics).
    pub running: HashMap<String, Running>,
    /// Where port forwarding connects (none before the pod has an address).
    pub forward: Option<crate::streaming::portforward::Target>,
}

/// A container's running instance, as exec and attach reach it.
#[derive(Clone)]
pub(crate) struct Running {
    /// Its prepared image (exec runs it once more).
    pub prepared: Prepared,
    /// How it was launched.
    pub launch: Launch,
    /// Its live log (attach follows it).
    pub log: Arc<LogFile>,
    /// Its stdin, for a container with `stdin: true`.
    pub stdin: Option<Arc<ContainerStdin>>,
}

impl PodRegistry {
    /// The logs of a pod, if it runs here.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<PodEntry> {
        self.pods
            .lock()
            .expect("pod registry lock")
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub(crate) fn update(&self, key: &(String, String), f: impl FnOnce(&mut PodEntry)) {
        f(self
            .pods
            .lock()
            .expect("pod registry lock")
            .entry(key.clone())
            .or_default());
    }

    /// The usage of every pod with a running container.
    pub(crate) fn usage(&self) -> Vec<PodUsage> {
        let pods = self.pods.lock().expect("pod registry lock");
        pods.iter()
            .filter(|(_, e)| !e.running.is_empty())
            .map(|((namespace, name), e)| {
                let mut containers: Vec<_> = e
                    .running
                    .iter()
                    .map(|(c, r)| (c.clone(), Arc::clone(&r.launch.usage)))
                    .collect();
                containers.sort_by(|a, b| a.0.cmp(&b.0));
                PodUsage {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: e.uid.clone(),
                    started: e.started.unwrap_or(std::time::UNIX_EPOCH),
                    serves_http: e
                        .running
                        .values()
                        .any(|r| matches!(r.prepared, Prepared::Http(_))),
                    containers,
                }
            })
            .collect()
    }

    pub(crate) fn remove(&self, key: &(String, String)) {
        self.pods.lock().expect("pod registry lock").remove(key);
    }
}

/// A pod's running containers and what each uses.
pub(crate) struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub started: std::time::SystemTime,
    /// Whether a `wasi:http` container runs (its requests are counted).
    pub serves_http: bool,
    pub containers: Vec<(String, Arc<Usage>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_are_unique_and_reused_after_release() {
        let mut pool = IpPool::new(5);
        let got: Vec<_> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(got, [2, 3, 4, 5, 6]);
        pool.release(got[2]);
        assert_eq!(pool.allocate(), Some(got[2]));
        assert_eq!(pool.allocate(), None);
    }
}
