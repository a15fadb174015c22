//! Creating and deleting a controller's pods with the events kube-controller-manager records
//! about the owner (its `PodControl`): `SuccessfulCreate` "Created pod: NAME", `FailedCreate`
//! "Error creating: ...", `SuccessfulDelete` "Deleted pod: NAME", `FailedDelete`.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use wasmkube_client::events::Recorder;

/// The pods of one owner, in its namespace.
pub(crate) struct PodControl<'a> {
    /// The owner's namespace's pods.
    pub(crate) pods: &'a Api<Pod>,
    /// The controller's recorder.
    pub(crate) recorder: &'a Recorder,
    /// The owner, which the events are about.
    pub(crate) owner: ObjectReference,
}

impl PodControl<'_> {
    /// Creates `pods` concurrently: the names of those created, and the first error.
    pub(crate) async fn create_all(&self, pods: &[Pod]) -> (Vec<String>, Option<kube::Error>) {
        let pp = PostParams::default();
        let results =
            futures::future::join_all(pods.iter().map(|p| self.pods.create(&pp, p))).await;
        let mut created = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => {
                    let note = format!("Created pod: {}", p.name_any());
                    self.recorder
                        .normal(self.owner.clone(), "SuccessfulCreate", "Create", note);
                    created.push(p.name_any());
                }
                Err(e) => {
                    let note = format!("Error creating: {e}");
                    self.recorder
                        .warning(self.owner.clone(), "FailedCreate", "Create", note);
                    first_err.get_or_insert(e);
                }
            }
        }
        (created, first_err)
    }

    /// Deletes `pod`: `Ok(true)` when deleted, `Ok(false)` when it was already gone.
    ///
    /// # Errors
    /// The API refused (recorded as `FailedDelete`).
    pub(crate) async fn delete(
        &self,
        pod: &Pod,
        params: &DeleteParams,
    ) -> Result<bool, kube::Error> {
        let name = pod.name_any();
        match self.pods.delete(&name, params).await {
            Ok(_) => {
                let note = format!("Deleted pod: {name}");
                self.recorder
                    .normal(self.owner.clone(), "SuccessfulDelete", "Delete", note);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => {
                let note = format!("Error deleting: {e}");
                self.recorder
                    .warning(self.owner.clone(), "FailedDelete", "Delete", note);
                Err(e)
            }
        }
    }
}
