//! `resources.limits` for a wasm instance: memory (a [`ResourceLimiter`] that plays the OOM
//! killer) and CPU (a CFS-style quota enforced at epoch ticks).
//!
//! Both are plain data so they can be tested without running wasm.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::ResourceLimiter;

/// Cost charged per table element against the memory limit: tables are host memory too.
const TABLE_ELEMENT_BYTES: usize = 16;

/// The memory a container's instance may hold: linear memories plus tables, summed.
///
/// Kubernetes' OOM killer ends the process rather than failing `malloc`, so exceeding the limit
/// traps the instance at the growing instruction and marks it [`oom_killed`](Self::oom_killed).
/// What it holds is also counted in its container's [`Usage`](super::usage::Usage), until the
/// instance is dropped.
#[derive(Debug)]
pub(crate) struct MemoryLimit {
    limit: Option<usize>,
    used: usize,
    oom_killed: bool,
    usage: Arc<super::usage::Usage>,
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        self.usage.release(self.used);
    }
}

/// The trap raised when an instance exceeds its memory limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (wanted {wanted} bytes)")]
pub(crate) struct OutOfMemory {
    /// The container's `resources.limits.memory`.
    pub limit: usize,
    /// What the instance would have held after growing.
    pub wanted: usize,
}

impl MemoryLimit {
    /// A budget of `limit` bytes (none: bounded only by the engine's per-memory maximum).
    pub(crate) fn new(limit: Option<usize>, usage: Arc<super::usage::Usage>) -> Self {
        Self {
            limit,
            used: 0,
            oom_killed: false,
            usage,
        }
    }

    /// Whether the instance was stopped for exceeding its limit.
    pub(crate) fn oom_killed(&self) -> bool {
        self.oom_killed
    }

    /// Bytes currently held by memories and tables.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    fn grow(&mut self, extra: usize) -> wasmtime::Result<bool> {
        let wanted = self.used.saturating_add(extra);
        if let Some(limit) = self.limit
            && wanted > limit
        {
            self.oom_killed = true;
            return Err(OutOfMemory { limit, wanted }.into());
        }
        self.used = wanted;
        self.usage.hold(extra);
        Ok(true)
    }
}

impl MemoryLimit {
    /// A memory or table of `unit`-byte elements asks to grow from `current` to `desired`.
    fn growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
        unit: usize,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.grow(desired.saturating_sub(current).saturating_mul(unit))
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.growing(current, desired, maximum, 1)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.growing(current, desired, maximum, TABLE_ELEMENT_BYTES)
    }

    fn instances(&self) -> usize {
        // Components instantiate several core instances; the pool bounds the total anyway.
        10_000
    }

    fn tables(&self) -> usize {
        10_000
    }

    fn memories(&self) -> usize {
        10_000
    }
}

/// The CFS period: a CPU limit of `m` millicores allows `m/1000` of each period.
pub(crate) const CPU_PERIOD: Duration = Duration::from_millis(100);

/// CPU quota accounting for one container (shared by all of its instances).
///
/// The engine calls back at every epoch tick while wasm runs; each call charges the time since
/// the instance last resumed. A gap much longer than a tick means the instance was not
/// running (blocked in a host call, or waiting for a worker thread), so a charge is capped at
/// [`MAX_CHARGE`]. When the period's quota is spent the instance sleeps to the period's end.
#[derive(Debug)]
pub(crate) struct CpuQuota {
    quota: Duration,
    period_start: Instant,
    used: Duration,
    throttled: Duration,
}

/// The most one tick callback can charge.
pub(crate) const MAX_CHARGE: Duration = Duration::from_millis(2);

impl CpuQuota {
    /// A quota of `millicores` thousandths of a core.
    pub(crate) fn new(millicores: u64, now: Instant) -> Self {
        let quota = CPU_PERIOD.mul_f64(millicores as f64 / 1000.0);
        Self {
            quota,
            period_start: now,
            used: Duration::ZERO,
            throttled: Duration::ZERO,
        }
    }

    /// Charges `ran` (capped) at `now`; returns how long the instance must sleep, if at all.
    pub(crate) fn charge(&mut self, ran: Duration, now: Instant) -> Option<Duration> {
        if now >= self.period_start + CPU_PERIOD {
            self.period_start = now;
            self.used = Duration::ZERO;
        }
        self.used += ran.min(MAX_CHARGE);
        if self.used < self.quota {
            return None;
        }
        let wait = (self.period_start + CPU_PERIOD).saturating_duration_since(now);
        self.throttled += wait;
        // The next period starts when the sleep ends.
        self.period_start += CPU_PERIOD;
        self.used = Duration::ZERO;
        Some(wait)
    }

    /// Total time spent throttled (for `nr_throttled`-style reporting).
    #[allow(
        dead_code,
        reason = "read by tests; the resource metrics will report it"
    )]
    pub(crate) fn throttled(&self) -> Duration {
        self.throttled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::usage::Usage;

    #[test]
    fn memory_over_the_limit_is_an_oom_kill() {
        let usage = Usage::new();
        let mut m = MemoryLimit::new(Some(4 << 20), Arc::clone(&usage));
        assert!(m.memory_growing(0, 1 << 20, None).expect("within"));
        assert!(m.memory_growing(1 << 20, 3 << 20, None).expect("within"));
        assert_eq!(m.used(), 3 << 20);
        assert_eq!(usage.memory_bytes(), 3 << 20, "the container sees it");
        let err = m.memory_growing(3 << 20, 5 << 20, None).expect_err("over");
        assert!(err.downcast_ref::<OutOfMemory>().is_some());
        assert!(m.oom_killed());
        drop(m);
        assert_eq!(usage.memory_bytes(), 0, "a dropped instance holds nothing");
    }

    #[test]
    fn tables_count_against_the_same_budget() {
        let mut m = MemoryLimit::new(Some(1 << 20), Usage::new());
        assert!(m.memory_growing(0, 1 << 19, None).expect("within"));
        assert!(
            m.table_growing(0, 1 << 16, None).is_err(),
            "64 Ki elements * 16 B = 1 MiB"
        );
        assert!(m.oom_killed());
    }

    #[test]
    fn a_declared_maximum_fails_the_grow_without_killing() {
        let mut m = MemoryLimit::new(None, Usage::new());
        assert!(
            !m.memory_growing(0, 2 << 20, Some(1 << 20))
                .expect("refused, not trapped")
        );
        assert!(!m.oom_killed());
    }

    #[test]
    fn half_a_core_sleeps_after_fifty_milliseconds_of_each_period() {
        let start = Instant::now();
        let mut q = CpuQuota::new(500, start);
        let mut now = start;
        let mut slept = None;
        for _ in 0..49 {
            now += Duration::from_millis(1);
            assert_eq!(q.charge(Duration::from_millis(1), now), None);
        }
        now += Duration::from_millis(1);
        slept = slept.or(q.charge(Duration::from_millis(1), now));
        assert_eq!(
            slept,
            Some(Duration::from_millis(50)),
            "sleeps to the end of the period"
        );
        assert_eq!(q.throttled(), Duration::from_millis(50));
    }

    #[test]
    fn time_spent_blocked_is_not_charged() {
        let start = Instant::now();
        let mut q = CpuQuota::new(100, start);
        // One resume after a long host call: charged one capped tick, not 9 ms.
        assert_eq!(
            q.charge(Duration::from_millis(9), start + Duration::from_millis(9)),
            None
        );
    }
}
