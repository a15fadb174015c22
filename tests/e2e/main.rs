//! End-to-end tests: the API server driven the way users drive it — kube-rs clients over
//! HTTPS, the real `wasmkube` binary, and kubectl where it is installed.
//! Files are numbered by priority band, like openraft's tests: t10 object verbs, t20 watch and
//! lists, t30 the binary (restart, kill -9), t40 kubectl.

mod fixtures;
mod t10_crud;
mod t11_errors;
mod t12_subresources;
mod t13_apply;
mod t14_runtime_kinds;
mod t20_lists;
mod t21_watch;
mod t30_durability;
mod t31_servers;
mod t32_linearizability;
mod t33_control_plane_loss;
mod t34_nodes_join;
mod t35_disk_full;
mod t36_hosts;
mod t40_kubectl;
mod t50_wasmlet;
mod t51_images;
mod t52_probes;
mod t53_exec;
mod t54_portforward;
mod t60_scheduler;
mod t61_controllers;
mod t62_deployments;
mod t63_leader_election;
mod t70_network;
mod t80_rbac;
mod t81_encryption;
mod t82_quota;
mod t83_authz_matrix;
mod t84_pod_identity;
mod t85_network_policy;
mod t86_metrics;
mod t87_autoscaling;
mod t88_scale_to_zero;
mod t89_crds;
mod t90_drain;
mod t91_dashboard;
