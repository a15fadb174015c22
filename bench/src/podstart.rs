//! `podstart`: pod start as a user's client sees it, one at a time and under load.
//!
//! `wasmkube up` runs as its own process (API server, scheduler, controllers and the wasmlet);
//! this process creates pods through the API with kube-rs clients and watches them. For each
//! pod it takes the time from the start of the create call until the watch shows
//! `spec.nodeName` (*scheduled*), then phase `Running`. The image (a long-running wasip2
//! command) is pushed and compiled before the first measured pod.
//!
//! Three loads: pods one at a time; several creators back to back; and an open-loop rate
//! (creates started at fixed intervals whether or not earlier ones are done).
//!
//! Where the time goes: the server runs with `WASMKUBE_LOG=...,podtrace=debug`, and every
//! component logs a `podtrace` event per pod (create accepted, scheduler queued it, decided,
//! bind accepted, bind answered, wasmlet saw it, volumes ready, instance started, status written). Both
//! processes read the same clock, so each stage is placed relative to the start of the create
//! call; the benchmark prints the median and p99 of each stage.
//!
//! Run: `cargo build --release -p wasmkube && cargo run --release -p wasmkube-bench --bin podstart`
//! (see README). Everything is on loopback; every load loop is bounded in count and time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::Notify;

#[derive(Parser)]
struct Args {
    /// Pods created one at a time (each waits for the previous one to run).
    #[arg(long, default_value_t = 50)]
    one_at_a_time: usize,
    /// Pods created by `creators` concurrent creators, back to back.
    #[arg(long, default_value_t = 100)]
    concurrent: usize,
    /// Concurrent creators for the `concurrent` run.
    #[arg(long, default_value_t = 10)]
    creators: usize,
    /// Creates per second for the open-loop run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    rate: usize,
    /// Seconds of the open-loop run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Creates in flight at most during the open-loop run (the run says when it fell behind).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Upper bound on each run's duration (after its creates, it waits for the pods this long).
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// The server's log filter beyond the trace (`WASMKUBE_LOG` syntax).
    #[arg(long, default_value = "info,openraft=warn,raft_log=warn")]
    server_log: String,
    /// Copy the server's log here at the end.
    #[arg(long)]
    keep_log: Option<std::path::PathBuf>,
    /// Pods get the service-account token volume (Kubernetes' default; off here, as for
    /// functions that never call the API: each mounted volume holds an open directory per
    /// instance, and 10,000 pods with one exceed a 20,000 open-files limit).
    #[arg(long)]
    token_volume: bool,
    /// A flag for `wasmkube up` (repeatable), e.g. `--server-flag=--default-watch-cache-size=8192`.
    #[arg(long, allow_hyphen_values = true)]
    server_flag: Vec<String>,
}

/// `--token-volume`.
static TOKEN_VOLUME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What the watch saw of one pod.
#[derive(Default, Clone, Copy)]
struct Seen {
    created: Option<SystemTime>,
    scheduled: Option<SystemTime>,
    running: Option<SystemTime>,
}

/// Times per pod name, filled by the watch and the creators.
#[derive(Default)]
struct Board {
    pods: Mutex<HashMap<String, Seen>>,
    changed: Notify,
}

impl Board {
    fn created(&self, name: &str, at: SystemTime) {
        self.pods
            .lock()
            .expect("board")
            .entry(name.to_owned())
            .or_default()
            .created = Some(at);
    }

    fn observe(&self, pod: &Pod) {
        let now = SystemTime::now();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut pods = self.pods.lock().expect("board");
        let seen = pods.entry(name).or_default();
        if seen.scheduled.is_none()
            && pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
        {
            seen.scheduled = Some(now);
        }
        if seen.running.is_none()
            && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        {
            seen.running = Some(now);
        }
        drop(pods);
        self.changed.notify_waiters();
    }

    fn running(&self, names: &[String]) -> usize {
        let pods = self.pods.lock().expect("board");
        names
            .iter()
            .filter(|n| pods.get(*n).is_some_and(|s| s.running.is_some()))
            .count()
    }

    /// Waits until every pod in `names` runs, or `max` passes.
    async fn wait_running(&self, names: &[String], max: Duration) -> Result<()> {
        let deadline = Instant::now() + max;
        loop {
            let notified = self.changed.notified();
            let done = self.running(names);
            if done == names.len() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{done} of {} pods running after {max:?}", names.len());
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    fn get(&self, name: &str) -> Seen {
        self.pods
            .lock()
            .expect("board")
            .get(name)
            .copied()
            .unwrap_or_default()
    }
}

fn pod(name: &str) -> Result<Pod> {
    let token = TOKEN_VOLUME.load(std::sync::atomic::Ordering::Relaxed);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "podstart"}},
        "spec": {"automountServiceAccountToken": token,
                 "containers": [{"name": "idle", "image": "toolbox:v1", "args": ["forever"]}]}
    }))?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// One trace line: `TIMESTAMP DEBUG podtrace: kind=Pod object=NS/NAME stage="..."`.
fn parse_trace(line: &str) -> Option<(SystemTime, String, String)> {
    if !line.contains(" podtrace: ")
        || !(line.contains(" kind=Pod ") || line.contains(" kind=\"Pod\" "))
    {
        return None;
    }
    let at = line.split_whitespace().next()?;
    let at: jiff::Timestamp = at.parse().ok()?;
    let object = line.split(" object=").nth(1)?.split_whitespace().next()?;
    let name = object.rsplit('/').next()?.to_owned();
    let stage = line
        .split(" stage=\"")
        .nth(1)?
        .split('"')
        .next()?
        .to_owned();
    if stage == "status written" && !line.contains(" phase=Running") {
        return None;
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(at.as_nanosecond().try_into().ok()?);
    Some((at, name, stage))
}

/// The stages in the order a pod passes them.
const STAGES: [&str; 9] = [
    "created",
    "queued",
    "decided",
    "bound",
    "bind answered",
    "wasmlet saw",
    "volumes ready",
    "instance started",
    "status written",
];

/// CPU time the server and this benchmark used, to take a run's share from.
#[derive(Clone, Copy)]
struct Cpu {
    server: Duration,
    bench: Duration,
}

impl Cpu {
    fn now(server: &str) -> Cpu {
        Cpu {
            server: wasmkube_tests::proc_cpu_time(server),
            bench: wasmkube_tests::proc_cpu_time("self"),
        }
    }

    /// The CPU per pod each used since `self`, as `server / benchmark` ms.
    fn per_pod(self, server: &str, pods: usize) -> String {
        let now = Cpu::now(server);
        let n = pods.max(1) as f64;
        format!(
            "{:.2} / {:.2}",
            ms(now.server.saturating_sub(self.server)) / n,
            ms(now.bench.saturating_sub(self.bench)) / n
        )
    }
}

/// Prints one run's latencies, CPU per pod and per-stage breakdown from the server's trace.
fn report(
    label: &str,
    board: &Board,
    names: &[String],
    log: &std::path::Path,
    cpu: String,
) -> Result<()> {
    let mut scheduled = Vec::new();
    let mut running = Vec::new();
    let mut starts = HashMap::new();
    for n in names {
        let s = board.get(n);
        let Some(c) = s.created else { continue };
        starts.insert(n.clone(), c);
        if let Some(t) = s.scheduled {
            scheduled.push(ms(t.duration_since(c).unwrap_or_default()));
        }
        if let Some(t) = s.running {
            running.push(ms(t.duration_since(c).unwrap_or_default()));
        }
    }
    println!(
        "| {label} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {cpu} |",
        names.len(),
        pct(&mut scheduled, 0.5),
        pct(&mut scheduled, 0.99),
        pct(&mut running, 0.5),
        pct(&mut running, 0.99),
    );
    // The first time each stage was reached per pod (for the status, the first write of
    // phase Running).
    let text = std::fs::read_to_string(log).context("the server's log")?;
    let mut stages: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut firsts: HashMap<(String, String), SystemTime> = HashMap::new();
    for (at, name, stage) in text.lines().filter_map(parse_trace) {
        if !starts.contains_key(&name) {
            continue;
        }
        firsts.entry((name, stage)).or_insert(at);
    }
    for ((name, stage), at) in &firsts {
        if let Some(st) = STAGES.iter().find(|s| **s == stage) {
            let off = at.duration_since(starts[name]).unwrap_or_default();
            stages.entry(st).or_default().push(ms(off));
        }
    }
    let line: Vec<String> = STAGES
        .iter()
        .map(|s| {
            let v = stages.entry(s).or_default();
            format!("{s} {:.1}/{:.1}", pct(v, 0.5), pct(v, 0.99))
        })
        .collect();
    println!(
        "|   stages (p50/p99 ms from create) | {} |",
        line.join(" → ")
    );
    Ok(())
}

/// The API server's `apiserver_request_total`, summed over codes, by `VERB resource[/sub]`.
async fn request_counts(client: &kube::Client) -> Result<HashMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut counts = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        let (resource, sub) = (label("resource"), label("subresource"));
        let key = if sub.is_empty() {
            format!("{} {resource}", label("verb"))
        } else {
            format!("{} {resource}/{sub}", label("verb"))
        };
        *counts.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(counts)
}

/// Prints the API requests per pod made since `before`, most first.
fn report_requests(before: &HashMap<String, f64>, after: &HashMap<String, f64>, pods: usize) {
    let mut per_pod: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).unwrap_or(&0.0)) / pods.max(1) as f64,
            )
        })
        .filter(|(_, v)| *v >= 0.005)
        .collect();
    per_pod.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = per_pod.iter().map(|(_, v)| v).sum();
    let line: Vec<String> = per_pod.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
    println!(
        "|   API requests per pod | {total:.2}: {} |",
        line.join(", ")
    );
}

async fn create(api: &Api<Pod>, board: &Board, name: &str) -> Result<()> {
    board.created(name, SystemTime::now());
    api.create(&PostParams::default(), &pod(name)?)
        .await
        .with_context(|| format!("create {name}"))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    TOKEN_VOLUME.store(args.token_volume, std::sync::atomic::Ordering::Relaxed);
    let max = Duration::from_secs(args.max_seconds);
    let dir = tempfile::tempdir()?;
    let (net, _) = wasmkube_tests::random_pod_range();
    let pods_needed = args.one_at_a_time + args.concurrent + args.rate * args.seconds as usize + 16;
    let range = format!("127.{}.0.0/16", net.octets()[1]);
    let max_pods = pods_needed.to_string();
    let mut flags = vec!["--pod-range", &range, "--max-pods", &max_pods];
    flags.extend(args.server_flag.iter().map(String::as_str));
    let server = wasmkube_tests::Process::up_in_logging(
        dir.path(),
        &flags,
        &format!("{},podtrace=debug", args.server_log),
    )
    .await?;
    wasmkube_tests::push_samples(&server.kubeconfig(), dir.path(), &["toolbox"])?;
    let client = server.client().await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let board = Arc::new(Board::default());
    let watch = {
        let board = Arc::clone(&board);
        let mut events = watcher::watcher(
            api.clone(),
            watcher::Config::default().labels("bench=podstart"),
        )
        .boxed();
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
                    board.observe(&p);
                }
            }
        })
    };
    // The first pod pulls and compiles the image.
    create(&api, &board, "warm").await?;
    board
        .wait_running(&["warm".to_owned()], max)
        .await
        .context("the first pod")?;

    let pid = server.child.id().to_string();
    println!(
        "| load | pods | scheduled p50 / p99 ms | Running p50 / p99 ms | CPU ms per pod, server / benchmark |"
    );
    println!("|---|---:|---:|---:|---:|");

    let names: Vec<String> = (0..args.one_at_a_time)
        .map(|i| format!("one-{i}"))
        .collect();
    let run_started = Instant::now();
    let cpu = Cpu::now(&pid);
    for n in &names {
        create(&api, &board, n).await?;
        board
            .wait_running(
                std::slice::from_ref(n),
                max.saturating_sub(run_started.elapsed()),
            )
            .await?;
    }
    let cpu = cpu.per_pod(&pid, names.len());
    report("one at a time", &board, &names, &server.log_path(), cpu)?;

    let names: Vec<String> = (0..args.concurrent).map(|i| format!("conc-{i}")).collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let shared = Arc::new(names.clone());
    let run_started = Instant::now();
    let cpu = Cpu::now(&pid);
    let mut creators = Vec::new();
    for _ in 0..args.creators {
        let (api, board, next, names) = (api.clone(), board.clone(), next.clone(), shared.clone());
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= names.len() || run_started.elapsed() > max {
                    return anyhow::Ok(());
                }
                create(&api, &board, &names[i]).await?;
            }
        }));
    }
    for c in creators {
        c.await??;
    }
    board.wait_running(&names, max).await?;
    let cpu = cpu.per_pod(&pid, names.len());
    report(
        &format!("{} creators back to back", args.creators),
        &board,
        &names,
        &server.log_path(),
        cpu,
    )?;

    if args.rate > 0 {
        let total = args.rate * args.seconds as usize;
        let names: Vec<String> = (0..total).map(|i| format!("rate-{i}")).collect();
        let gate = Arc::new(tokio::sync::Semaphore::new(args.in_flight));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let cpu = Cpu::now(&pid);
        let requests = request_counts(&client).await?;
        let mut tasks = tokio::task::JoinSet::new();
        let mut waited = Duration::ZERO;
        for n in &names {
            tick.tick().await;
            let t = Instant::now();
            let permit = Arc::clone(&gate).acquire_owned().await?;
            waited += t.elapsed();
            let (api, board, n) = (api.clone(), board.clone(), n.clone());
            tasks.spawn(async move {
                let r = create(&api, &board, &n).await;
                drop(permit);
                r
            });
            if started.elapsed() > max {
                bail!("the open-loop run took longer than {max:?}");
            }
        }
        let offered = started.elapsed();
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        if let Err(e) = board.wait_running(&names, max).await {
            // Say why: the server's log, and what a few pods that did not run report.
            if let Some(keep) = &args.keep_log {
                let _ = std::fs::copy(server.log_path(), keep);
            }
            let all = api
                .list(&ListParams::default().labels("bench=podstart"))
                .await?;
            let stuck = all
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running"));
            for p in stuck.take(3) {
                let waiting: Vec<String> = p
                    .status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
                    .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                    .map(|w| format!("{:?}: {:?}", w.reason, w.message))
                    .collect();
                eprintln!(
                    "not running: {} on {:?}: {waiting:?}",
                    p.metadata.name.as_deref().unwrap_or_default(),
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                );
            }
            return Err(e);
        }
        let cpu = cpu.per_pod(&pid, names.len());
        report(
            &format!(
                "{} pods/s for {} s (offered in {offered:.1?}, {waited:.1?} waiting for a free creator)",
                args.rate, args.seconds
            ),
            &board,
            &names,
            &server.log_path(),
            cpu,
        )?;
        report_requests(&requests, &request_counts(&client).await?, names.len());
    }
    watch.abort();
    if let Some(keep) = &args.keep_log {
        std::fs::copy(server.log_path(), keep).context("keeping the server's log")?;
    }
    let _ = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("bench=podstart"),
        )
        .await;
    drop(server);
    Ok(())
}
