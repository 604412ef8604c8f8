//! Quickstart (placeholder until the log tour lands).
fn main() {}
