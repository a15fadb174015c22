//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does
//! for kube-scheduler and kube-controller-manager: of every process that runs a component,
//! the one holding the Lease acts; the others wait and take it over when its holder stops
//! renewing it for a lease duration.
//!
//! ```text
//! candidate ── get/create/update Lease (resourceVersion precondition) every retry period
//!   holder ── renews every retry period; no renewal for the renew deadline: stops its work
//!   others ── take the Lease once its record has not changed for a lease duration
//! ```
//!
//! Expiry is judged by the candidate's own clock, from when it last saw the record change
//! (client-go's `observedTime`), so clocks need not agree across machines. A holder that
//! shuts down releases the Lease (empty holder), so another takes over at once.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a stopping candidate tries to release its Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// Which Lease, who is asking, and the timings (kube-scheduler's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    /// The Lease's namespace (`kube-system`).
    pub namespace: String,
    /// The Lease's name (`kube-scheduler`, `kube-controller-manager`).
    pub name: String,
    /// This candidate's identity: unique among candidates, and stable across its restarts
    /// when it should get its own Lease back at once.
    pub identity: String,
    /// How long others wait after the last renewal they saw before taking the Lease.
    pub lease_duration: Duration,
    /// How long the holder keeps acting while renewals fail.
    pub renew_deadline: Duration,
    /// How often candidates try, and the holder renews.
    pub retry_period: Duration,
}

impl Election {
    /// The Lease `kube-system/NAME` for `identity`, with the Kubernetes default timings.
    pub fn new(name: impl Into<String>, identity: impl Into<String>) -> Self {
        Election {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Runs `work` whenever this candidate holds the Lease, until `shutdown`: `work` is given a
    /// token cancelled when leadership is lost (or at shutdown) and must return soon after;
    /// then the candidate tries again. At shutdown the Lease is released.
    pub async fn run<F, Fut>(&self, client: kube::Client, shutdown: CancellationToken, mut work: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let mut seen = Observed::default();
        loop {
            // Candidate: try every retry period.
            loop {
                let renewal = tokio::select! {
                    r = self.try_acquire_or_renew(&api, &mut seen) => r,
                    // A renewal in flight when stopping is abandoned (it may wait out a
                    // server that is gone).
                    () = shutdown.cancelled() => break,
                };
                match renewal {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(lease = %self.name, error = %e, "cannot reach the lease")
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(self.retry_period) => {}
                }
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
            let leading = shutdown.child_token();
            let acting = work(leading.clone());
            tokio::pin!(acting);
            let mut finished = false;
            let mut renewed = Instant::now();
            loop {
                tokio::select! {
                    () = &mut acting => {
                        finished = true;
                        break;
                    }
                    () = tokio::time::sleep(self.retry_period) => {}
                    // No more renewals once stopping: the API servers may be gone already.
                    () = shutdown.cancelled() => break,
                }
                let renewal = tokio::select! {
                    r = self.try_acquire_or_renew(&api, &mut seen) => r,
                    // A renewal in flight when stopping is abandoned (it may wait out a
                    // server that is gone).
                    () = shutdown.cancelled() => break,
                };
                match renewal {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => {
                        tracing::warn!(lease = %self.name, "another candidate took the lease");
                        break;
                    }
                    Err(e) if renewed.elapsed() > self.renew_deadline => {
                        tracing::warn!(lease = %self.name, error = %e, "could not renew the lease in time");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(lease = %self.name, error = %e, "renewal failed; retrying")
                    }
                }
            }
            leading.cancel();
            if !finished {
                acting.await;
            }
            if shutdown.is_cancelled() {
                // Best effort: a server that is shutting down too may not answer at all.
                if tokio::time::timeout(RELEASE_TIMEOUT, self.release(&api))
                    .await
                    .is_err()
                {
                    tracing::debug!(lease = %self.name, "no answer to the release; the lease expires instead");
                }
                return;
            }
            tracing::info!(lease = %self.name, "stopped leading; standing again");
        }
    }

    /// One attempt: takes the Lease when it is free, expired or ours, and renews it.
    /// `Ok(false)` when another holds it (or won the race to it).
    async fn try_acquire_or_renew(
        &self,
        api: &Api<Lease>,
        seen: &mut Observed,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let seconds = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (holder.clone(), spec.renew_time.clone().map(|t| t.0));
        if seen.record.as_ref() != Some(&record) {
            seen.record = Some(record);
            seen.at = Some(Instant::now());
        }
        let ours = holder == self.identity;
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.lease_duration, Duration::from_secs);
        let fresh = seen.at.is_some_and(|at| at.elapsed() < duration);
        if !ours && !holder.is_empty() && fresh {
            return Ok(false);
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..spec
        });
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (empty holder, a one-second duration), when it is ours.
    async fn release(&self, api: &Api<Lease>) {
        let Ok(Some(mut lease)) = api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the lease"),
            Err(e) => {
                tracing::debug!(lease = %self.name, error = %e, "could not release the lease")
            }
        }
    }
}

/// The Lease record as this candidate last saw it change, and when (its own clock).
#[derive(Default)]
struct Observed {
    record: Option<(String, Option<jiff::Timestamp>)>,
    at: Option<Instant>,
}
