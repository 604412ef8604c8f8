//! Three gateway instances as three processes (`iot-cluster-node`) over the machine's NATS and
//! PostgreSQL, with real device clients (feature `cluster-node`).
#![cfg(feature = "cluster-node")]

mod cluster_support;

use cluster_support::{NodeOptions, ProcessCluster, unique_name};

#[test]
fn three_node_processes_hear_each_other() {
    let cluster = ProcessCluster::start(&unique_name("pc"), 3, NodeOptions::default(), &[]);
    assert_eq!(cluster.nodes.len(), 3);
}
