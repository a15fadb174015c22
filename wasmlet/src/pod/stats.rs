//! The node's resource usage, as the kubelet serves it to metrics-server: `/stats/summary`
//! (a [`Summary`]: the machine, and every pod's running containers) and `/metrics/resource`
//! (the same as Prometheus text, with the kubelet's metric names).
//!
//! A sampler closes a usage window every `window` (the kubelet's cAdvisor housekeeping
//! interval): CPU rates are the average over the last closed window.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio_util::sync::CancellationToken;
use wasmkube_api::metrics::{
    ContainerStats, CpuStats, MemoryStats, NodeStats, PodReference, PodStats, Summary, Usage,
};

use crate::pod::PodRegistry;
use crate::runtime::usage::Rate;

/// The node's usage: its pods' (from the registry) and the machine's.
pub(crate) struct Stats {
    node_name: String,
    started: SystemTime,
    window: Duration,
    pods: Arc<PodRegistry>,
    machine: Mutex<Rate>,
    /// What the node holds for Services at zero pods (set once the pod network exists).
    waiting: std::sync::OnceLock<Arc<crate::net::Waiting>>,
}

/// `USER_HZ`, the unit of `/proc/stat` (fixed at 100 in Linux's ABI).
const USER_HZ: u64 = 100;

/// CPU time the machine has spent busy (all but idle and iowait), in nanoseconds.
fn machine_cpu_nanos() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0))
        .sum();
    busy.saturating_mul(1_000_000_000 / USER_HZ)
}

fn count_running(pods: &[crate::pod::registry::PodUsage]) {
    let containers = pods.iter().map(|p| p.containers.len()).sum();
    crate::metrics::running(pods.len(), containers);
}

fn time(t: SystemTime) -> Option<Time> {
    jiff::Timestamp::try_from(t).ok().map(Time)
}

fn cpu_stats(rate: &Rate) -> CpuStats {
    CpuStats {
        time: time(rate.at),
        usage_nano_cores: Some(rate.nano_cores),
        usage_core_nano_seconds: Some(rate.cpu_nanos),
        window_seconds: Some(rate.window.as_secs_f64()),
    }
}

fn memory_stats(at: SystemTime, bytes: u64) -> MemoryStats {
    MemoryStats {
        time: time(at),
        available_bytes: None,
        usage_bytes: Some(bytes),
        working_set_bytes: Some(bytes),
    }
}

impl Stats {
    pub(crate) fn new(node_name: String, window: Duration, pods: Arc<PodRegistry>) -> Self {
        let started = SystemTime::now();
        Self {
            node_name,
            started,
            window,
            pods,
            machine: Mutex::new(Rate::start(machine_cpu_nanos(), Instant::now(), started)),
            waiting: std::sync::OnceLock::new(),
        }
    }

    /// Reports what the node holds for Services at zero pods from `waiting`.
    pub(crate) fn set_waiting(&self, waiting: Arc<crate::net::Waiting>) {
        let _ = self.waiting.set(waiting);
    }

    /// Closes the window of the machine and of every running container.
    pub(crate) fn sample(&self) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        {
            let mut machine = self.machine.lock().expect("machine rate lock");
            *machine = machine.next(machine_cpu_nanos(), 0, now, wall);
        }
        let pods = self.pods.usage();
        for pod in &pods {
            for (_, usage) in &pod.containers {
                usage.sample(now, wall);
            }
        }
        count_running(&pods);
    }

    /// Sets the running pods and containers gauges.
    pub(crate) fn count_running(&self) {
        count_running(&self.pods.usage());
    }

    /// Samples every `window` until `shutdown`.
    pub(crate) async fn run_sampler(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stats = Arc::clone(&self);
            // Reading /proc and walking thousands of pods stays off the async threads.
            let _ = tokio::task::spawn_blocking(move || stats.sample()).await;
        }
    }

    /// `/stats/summary`.
    pub(crate) fn summary(&self) -> Summary {
        let wall = SystemTime::now();
        let machine = {
            let last = *self.machine.lock().expect("machine rate lock");
            if last.window.is_zero() {
                last.next(machine_cpu_nanos(), 0, Instant::now(), wall)
            } else {
                last
            }
        };
        let total = crate::node::meminfo("MemTotal:").unwrap_or(0);
        let available = crate::node::meminfo("MemAvailable:").unwrap_or(0);
        let free = crate::node::meminfo("MemFree:").unwrap_or(0);
        let node = NodeStats {
            node_name: self.node_name.clone(),
            usage: Usage {
                start_time: time(self.started),
                cpu: Some(cpu_stats(&machine)),
                memory: Some(MemoryStats {
                    time: time(wall),
                    available_bytes: Some(available),
                    usage_bytes: Some(total.saturating_sub(free)),
                    working_set_bytes: Some(total.saturating_sub(available)),
                }),
            },
        };
        let pods = self
            .pods
            .usage()
            .into_iter()
            .map(|pod| {
                let mut cpu = CpuStats::default();
                let mut memory = 0;
                let mut requests = wasmkube_api::metrics::RequestStats::default();
                let containers = pod
                    .containers
                    .iter()
                    .map(|(name, usage)| {
                        let rate = usage.rate();
                        let bytes = usage.memory_bytes();
                        memory += bytes;
                        let c = cpu_stats(&rate);
                        cpu.time = cpu.time.clone().max(c.time.clone());
                        cpu.window_seconds = Some(
                            cpu.window_seconds
                                .unwrap_or(0.0)
                                .max(c.window_seconds.unwrap_or(0.0)),
                        );
                        *cpu.usage_nano_cores.get_or_insert(0) += rate.nano_cores;
                        requests.total += usage.requests();
                        requests.in_flight += usage.in_flight();
                        requests.per_second += rate.requests_per_second;
                        requests.window_seconds =
                            requests.window_seconds.max(rate.window.as_secs_f64());
                        requests.time = time(rate.at).max(requests.time.clone());
                        *cpu.usage_core_nano_seconds.get_or_insert(0) += rate.cpu_nanos;
                        ContainerStats {
                            name: name.clone(),
                            usage: Usage {
                                start_time: time(usage.started()),
                                cpu: Some(c),
                                memory: Some(memory_stats(wall, bytes)),
                            },
                        }
                    })
                    .collect();
                PodStats {
                    pod_ref: PodReference {
                        name: pod.name,
                        namespace: pod.namespace,
                        uid: pod.uid,
                    },
                    containers,
                    usage: Usage {
                        start_time: time(pod.started),
                        cpu: Some(cpu),
                        memory: Some(memory_stats(wall, memory)),
                    },
                    requests: pod.serves_http.then_some(requests),
                }
            })
            .collect();
        let waiting = self.waiting.get().map(|w| w.snapshot()).unwrap_or_default();
        Summary {
            node,
            pods,
            waiting,
        }
    }

    /// `/metrics/resource`: the summary as Prometheus text, with the kubelet's names.
    pub(crate) fn resource_metrics(&self) -> String {
        resource_metrics(&self.summary())
    }
}

fn millis(t: Option<&Time>) -> i64 {
    t.map_or(0, |t| t.0.as_millisecond())
}

/// A label value, escaped as the text format asks.
fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The kubelet's `/metrics/resource` families for `s`.
fn resource_metrics(s: &Summary) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64, i64)>| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}");
        for (labels, value, at) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {at}");
        }
    };
    let pod_labels = |p: &PodStats| {
        format!(
            "namespace=\"{}\",pod=\"{}\"",
            label(&p.pod_ref.namespace),
            label(&p.pod_ref.name)
        )
    };
    // Each scope's subjects: their labels and usage.
    let containers: Vec<(String, &Usage)> = s
        .pods
        .iter()
        .flat_map(|p| {
            p.containers.iter().map(move |c| {
                let labels = format!("{{container=\"{}\",{}}}", label(&c.name), pod_labels(p));
                (labels, &c.usage)
            })
        })
        .collect();
    let pods: Vec<(String, &Usage)> = s
        .pods
        .iter()
        .map(|p| (format!("{{{}}}", pod_labels(p)), &p.usage))
        .collect();
    let node = vec![(String::new(), &s.node.usage)];
    for (scope, subjects) in [("container", &containers), ("node", &node), ("pod", &pods)] {
        family(
            &format!("{scope}_cpu_usage_seconds_total"),
            "counter",
            &format!("Cumulative cpu time consumed by the {scope} in core-seconds"),
            subjects
                .iter()
                .map(|(labels, u)| {
                    let cpu = u.cpu.as_ref();
                    let nanos = cpu.and_then(|c| c.usage_core_nano_seconds).unwrap_or(0);
                    let at = millis(cpu.and_then(|c| c.time.as_ref()));
                    (labels.clone(), nanos as f64 / 1e9, at)
                })
                .collect(),
        );
        family(
            &format!("{scope}_memory_working_set_bytes"),
            "gauge",
            &format!("Current working set of the {scope} in bytes"),
            subjects
                .iter()
                .map(|(labels, u)| {
                    let memory = u.memory.as_ref();
                    let bytes = memory.and_then(|m| m.working_set_bytes).unwrap_or(0);
                    let at = millis(memory.and_then(|m| m.time.as_ref()));
                    (labels.clone(), bytes as f64, at)
                })
                .collect(),
        );
        if scope == "container" {
            family(
                "container_start_time_seconds",
                "gauge",
                "Start time of the container since unix epoch in seconds",
                subjects
                    .iter()
                    .map(|(labels, u)| {
                        let at = millis(u.start_time.as_ref());
                        (labels.clone(), at as f64 / 1e3, at)
                    })
                    .collect(),
            );
        }
    }
    family(
        "scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
        vec![(String::new(), 0.0, 0)],
    );
    // The scrape_error sample carries no timestamp.
    out.replace("scrape_error 0 0\n", "scrape_error 0\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_should_read_as_the_kubelets_resource_metrics() {
        let t = Time(jiff::Timestamp::from_second(1_700_000_000).expect("time"));
        let cpu = Some(CpuStats {
            time: Some(t.clone()),
            usage_nano_cores: Some(500_000_000),
            usage_core_nano_seconds: Some(2_500_000_000),
            window_seconds: Some(10.0),
        });
        let memory = Some(MemoryStats {
            time: Some(t.clone()),
            available_bytes: None,
            usage_bytes: Some(1 << 20),
            working_set_bytes: Some(1 << 20),
        });
        let usage = Usage {
            start_time: Some(t.clone()),
            cpu,
            memory,
        };
        let s = Summary {
            node: NodeStats {
                node_name: "n".into(),
                usage: usage.clone(),
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "web".into(),
                    namespace: "default".into(),
                    uid: "u".into(),
                },
                containers: vec![ContainerStats {
                    name: "app".into(),
                    usage: usage.clone(),
                }],
                usage,
                requests: None,
            }],
            waiting: Vec::new(),
        };
        let text = resource_metrics(&s);
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter",
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 2.5 1700000000000",
            "container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"web\"} 1048576 1700000000000",
            "container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1700000000 1700000000000",
            "node_cpu_usage_seconds_total 2.5 1700000000000",
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 1048576 1700000000000",
            "scrape_error 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n---\n{text}");
        }
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
