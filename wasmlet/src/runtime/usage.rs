//! What a container uses, as the kubelet's cAdvisor measures a container: CPU time — the time
//! its instances spend being polled, that is running wasm or the host calls it makes (time
//! throttled by a CPU limit or waiting for I/O is not counted) — and memory, the linear
//! memories and tables its live instances hold (what its memory limit is enforced on).
//!
//! A [`Usage`] lives as long as one start of a container (a restart begins a new one, as a
//! new container ID does for the kubelet); the node's sampler turns its cumulative CPU time
//! into a rate over a window ([`Usage::sample`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// The usage of one start of a container, shared by all its instances (the command, each
/// `wasi:http` request, exec sessions and exec probes).
#[derive(Debug)]
pub struct Usage {
    started: SystemTime,
    cpu_nanos: AtomicU64,
    memory_bytes: AtomicU64,
    /// `wasi:http` requests received, and those not finished.
    requests: AtomicU64,
    in_flight: AtomicU64,
    /// The last window the sampler closed (none yet: the start).
    last: Mutex<Rate>,
}

/// A `wasi:http` request being handled (counted in flight until dropped).
pub(crate) struct InFlight(Arc<Usage>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// CPU usage (and requests) over a window that ended at `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// When the window ended.
    pub at: SystemTime,
    /// Its length.
    pub window: Duration,
    /// Billionths of a core used on average over it.
    pub nano_cores: u64,
    /// Cumulative CPU time at its end, in nanoseconds.
    pub cpu_nanos: u64,
    /// Requests received by its end, in all.
    pub requests: u64,
    /// Requests per second over it.
    pub requests_per_second: f64,
    end: Instant,
}

impl Rate {
    /// The start of measuring: cumulative `cpu_nanos` at `now`.
    pub(crate) fn start(cpu_nanos: u64, now: Instant, wall: SystemTime) -> Self {
        Rate {
            at: wall,
            window: Duration::ZERO,
            nano_cores: 0,
            cpu_nanos,
            requests: 0,
            requests_per_second: 0.0,
            end: now,
        }
    }

    /// The window from this one's end to `now`, when `cpu_nanos` have been used and
    /// `requests` received in all.
    pub(crate) fn next(
        &self,
        cpu_nanos: u64,
        requests: u64,
        now: Instant,
        wall: SystemTime,
    ) -> Rate {
        let window = now.saturating_duration_since(self.end);
        let used = cpu_nanos.saturating_sub(self.cpu_nanos);
        let nano_cores = if window.is_zero() {
            0
        } else {
            u64::try_from(u128::from(used) * 1_000_000_000 / window.as_nanos()).unwrap_or(u64::MAX)
        };
        let requests_per_second = if window.is_zero() {
            0.0
        } else {
            requests.saturating_sub(self.requests) as f64 / window.as_secs_f64()
        };
        Rate {
            at: wall,
            window,
            nano_cores,
            cpu_nanos,
            requests,
            requests_per_second,
            end: now,
        }
    }
}

impl Default for Usage {
    fn default() -> Self {
        Self::since(Instant::now())
    }
}

impl Usage {
    /// A container that starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A container that started at `start`.
    fn since(start: Instant) -> Self {
        let started = SystemTime::now();
        Self {
            started,
            cpu_nanos: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            last: Mutex::new(Rate::start(0, start, started)),
        }
    }

    /// When it started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// CPU time used so far, in nanoseconds.
    pub fn cpu_nanos(&self) -> u64 {
        self.cpu_nanos.load(Ordering::Relaxed)
    }

    /// Bytes its live instances hold now.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    /// `wasi:http` requests not finished now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// `wasi:http` requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A request arrives: counted, and in flight until the guard drops.
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    pub(crate) fn charge(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn hold(&self, bytes: usize) {
        self.memory_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn release(&self, bytes: usize) {
        let _ = self
            .memory_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(bytes as u64))
            });
    }

    /// Closes the window at `now` (the sampler's tick): the rate since the previous tick, or
    /// since the start for the first one.
    pub fn sample(&self, now: Instant, wall: SystemTime) -> Rate {
        let mut last = self.last.lock().expect("usage lock");
        *last = last.next(self.cpu_nanos(), self.requests(), now, wall);
        *last
    }

    /// The rate of the last window; before the first tick, the rate since the start.
    pub fn rate(&self) -> Rate {
        let last = *self.last.lock().expect("usage lock");
        if last.window.is_zero() {
            last.next(
                self.cpu_nanos(),
                self.requests(),
                Instant::now(),
                SystemTime::now(),
            )
        } else {
            last
        }
    }
}

/// Whether CPU time is measured (on unless `WASMKUBE_NO_ACCOUNTING` is set when the
/// wasmlet starts: for measuring what the accounting costs, nothing else).
static ACCOUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Reads `WASMKUBE_NO_ACCOUNTING` (the wasmlet calls this at start).
pub(crate) fn configure_from_env() {
    if std::env::var_os("WASMKUBE_NO_ACCOUNTING").is_some() {
        tracing::warn!("WASMKUBE_NO_ACCOUNTING: container CPU time is not measured");
        ACCOUNTING.store(false, Ordering::Relaxed);
    }
}

/// A future whose polls are charged to a container's CPU time.
pub(crate) struct Metered<F> {
    inner: Pin<Box<F>>,
    usage: Arc<Usage>,
}

impl<F> Metered<F> {
    pub(crate) fn new(inner: F, usage: Arc<Usage>) -> Self {
        Self {
            inner: Box::pin(inner),
            usage,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !ACCOUNTING.load(Ordering::Relaxed) {
            return self.inner.as_mut().poll(cx);
        }
        let start = Instant::now();
        let out = self.inner.as_mut().poll(cx);
        self.usage.charge(start.elapsed());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_should_give_the_rate_of_its_own_cpu_time() {
        let t0 = Instant::now();
        let u = Usage::since(t0);
        u.charge(Duration::from_millis(50));
        let first = u.sample(t0 + Duration::from_millis(100), SystemTime::now());
        assert_eq!(first.window, Duration::from_millis(100));
        assert_eq!(first.nano_cores, 500_000_000, "half a core");
        u.charge(Duration::from_millis(10));
        let second = u.sample(t0 + Duration::from_millis(1100), SystemTime::now());
        assert_eq!(second.window, Duration::from_secs(1));
        assert_eq!(second.nano_cores, 10_000_000, "10 ms over 1 s");
        assert_eq!(second.cpu_nanos, 60_000_000);
        assert_eq!(u.rate(), second, "the last window until the next tick");
    }

    #[test]
    fn requests_should_be_counted_in_flight_and_as_a_rate() {
        let t0 = Instant::now();
        let u = Arc::new(Usage::since(t0));
        let first = u.request();
        let second = u.request();
        assert_eq!((u.requests(), u.in_flight()), (2, 2));
        drop(first);
        assert_eq!((u.requests(), u.in_flight()), (2, 1));
        let r = u.sample(t0 + Duration::from_millis(500), SystemTime::now());
        assert!((r.requests_per_second - 4.0).abs() < 1e-9, "{r:?}");
        drop(second);
        assert_eq!(u.in_flight(), 0);
    }

    #[test]
    fn memory_should_be_held_and_released() {
        let u = Usage::new();
        u.hold(1 << 20);
        u.hold(1 << 16);
        u.release(1 << 20);
        assert_eq!(u.memory_bytes(), 1 << 16);
        u.release(1 << 20);
        assert_eq!(u.memory_bytes(), 0, "never below zero");
    }

    #[tokio::test]
    async fn a_metered_future_should_charge_its_polls_not_its_waits() {
        fn spin(d: Duration) {
            let t = Instant::now();
            while t.elapsed() < d {
                std::hint::spin_loop();
            }
        }
        let u = Usage::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The metered future runs 20 ms, then waits while the other branch runs 60 ms (on the
        // same thread, outside it) before letting it finish.
        let metered = Metered::new(
            async {
                spin(Duration::from_millis(20));
                let _ = rx.await;
            },
            Arc::clone(&u),
        );
        let t = Instant::now();
        tokio::join!(metered, async {
            spin(Duration::from_millis(60));
            let _ = tx.send(());
        });
        assert!(t.elapsed() >= Duration::from_millis(80));
        let cpu = Duration::from_nanos(u.cpu_nanos());
        assert!(cpu >= Duration::from_millis(20), "{cpu:?}");
        assert!(
            cpu < Duration::from_millis(60),
            "the wait is not charged: {cpu:?}"
        );
    }
}
