//! Leader election on a kube-system Lease through the API, as the scheduler and the controller
//! manager use it when several servers run them: one candidate acts; another takes over when
//! the holder releases the Lease (a clean stop) or stops renewing it (a crash).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tokio_util::sync::CancellationToken;
use wasmkube_client::leader::Election;
use wasmkube_tests::{Cluster, wait_for};

/// A candidate that counts how many times it started leading and whether it leads now.
struct Candidate {
    starts: Arc<AtomicUsize>,
    leading: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(client: &kube::Client, identity: &str) -> Candidate {
    let election = Election {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(200),
        ..Election::new("test-component", identity)
    };
    let (starts, leading) = (Arc::default(), Arc::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        let (starts, leading): (Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::clone(&starts), Arc::clone(&leading));
        async move {
            election
                .run(client, stop, |token| {
                    let (starts, leading) = (Arc::clone(&starts), Arc::clone(&leading));
                    async move {
                        starts.fetch_add(1, Ordering::SeqCst);
                        leading.store(1, Ordering::SeqCst);
                        token.cancelled().await;
                        leading.store(0, Ordering::SeqCst);
                    }
                })
                .await;
        }
    });
    Candidate {
        starts,
        leading,
        stop,
        task,
    }
}

impl Candidate {
    fn leads(&self) -> bool {
        self.leading.load(Ordering::SeqCst) == 1
    }
}

async fn lease(client: &kube::Client) -> Result<(String, i32)> {
    let l = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get("test-component")
        .await?;
    let spec = l.spec.unwrap_or_default();
    Ok((
        spec.holder_identity.unwrap_or_default(),
        spec.lease_transitions.unwrap_or(0),
    ))
}

#[tokio::test]
async fn one_candidate_should_lead_and_another_take_over_on_release_or_silence() -> Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    let a = candidate(c, "a");
    wait_for("a leads", Duration::from_secs(10), || async {
        a.leads().then_some(())
    })
    .await?;
    let b = candidate(c, "b");
    // While `a` renews, `b` stays a candidate: watch the Lease renewed several times over.
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    let renewals = std::sync::Mutex::new(std::collections::BTreeSet::new());
    wait_for("five renewals by a", Duration::from_secs(10), || async {
        let lease = leases.get("test-component").await;
        let mut seen = renewals.lock().expect("not poisoned");
        if let Ok(l) = lease
            && let Some(spec) = l.spec
            && spec.holder_identity.as_deref() == Some("a")
        {
            seen.extend(spec.renew_time.map(|t| t.0));
        }
        (seen.len() >= 5).then_some(())
    })
    .await?;
    ensure!(!b.leads(), "one leader at a time");

    // A clean stop releases the Lease: `b` takes it without waiting out the duration.
    a.stop.cancel();
    let a_leading = Arc::clone(&a.leading);
    a.task.await?;
    ensure!(a_leading.load(Ordering::SeqCst) == 0, "a stopped its work");
    wait_for("b leads", Duration::from_secs(5), || async {
        b.leads().then_some(())
    })
    .await?;
    ensure!(
        lease(c).await? == ("b".into(), 1),
        "b holds it, one transition"
    );

    // A crash (no release): another candidate takes over once the Lease goes unrenewed.
    let a2 = candidate(c, "a");
    let b_starts = Arc::clone(&b.starts);
    b.task.abort();
    let _ = b.task.await;
    wait_for("a leads again", Duration::from_secs(10), || async {
        a2.leads().then_some(())
    })
    .await?;
    ensure!(lease(c).await? == ("a".into(), 2));
    ensure!(a2.starts.load(Ordering::SeqCst) == 1 && b_starts.load(Ordering::SeqCst) == 1);
    a2.stop.cancel();
    a2.task.await?;
    cluster.stop().await
}
