//! Image locality: prefer nodes that already hold the pod's images — for wasm that means the
//! module is pulled and compiled there, so the pod starts without either.

use crate::framework::{MAX_SCORE, NodeInfo, PodInfo, Score};

/// Scores the share of the pod's images the node already has.
pub struct ImageLocality;

impl Score for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let images: Vec<&str> = pod
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .filter_map(|c| c.image.as_deref())
            .collect();
        if images.is_empty() {
            return 0;
        }
        // Node status lists qualified names (registry/name:tag); match on the suffix too.
        let present = images
            .iter()
            .filter(|i| {
                node.images
                    .iter()
                    .any(|have| have == *i || have.ends_with(&format!("/{i}")))
            })
            .count() as i64;
        present * MAX_SCORE / images.len() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn nodes_holding_the_image_score_higher() {
        let p = pod(json!({"containers": [{"name": "c", "image": "hello:v1"}]}));
        let warm = node(
            "a",
            json!({"status": {"images": [{"names": ["127.0.0.1:6443/hello:v1"], "sizeBytes": 1}]}}),
        );
        assert_eq!(ImageLocality.score(&p, &warm), MAX_SCORE);
        assert_eq!(ImageLocality.score(&p, &node("b", json!({}))), 0);
    }
}
