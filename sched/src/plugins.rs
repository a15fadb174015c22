//! The built-in plugins, by family, and the default profile that enables them.

pub mod affinity;
pub mod images;
pub mod interpod;
pub mod node;
pub mod ports;
pub mod resources;

use crate::framework::{Filter, Score};

/// The default filters, in kube-scheduler's order (cheap and decisive first).
pub fn default_filters() -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(node::NodeUnschedulable),
        Box::new(node::NodeName),
        Box::new(node::NodeReady),
        Box::new(node::TaintToleration),
        Box::new(affinity::NodeAffinity),
        Box::new(ports::NodePorts),
        Box::new(resources::NodeResourcesFit),
    ]
}

/// The default scorers, with kube-scheduler's default weights.
pub fn default_scores() -> Vec<Box<dyn Score>> {
    vec![
        Box::new(node::TaintToleration),
        Box::new(affinity::NodeAffinity),
        Box::new(resources::LeastAllocated),
        Box::new(resources::BalancedAllocation),
        Box::new(images::ImageLocality),
    ]
}
