//! Stream processing — **not built yet** (issue 8).
//!
//! This crate will hold the `StreamProcessor` trait and a processor host that runs processors as
//! consumer groups over the log, the `StateStore` trait (raw events and last known values), built-in
//! processors (pump, router, last known values, metadata sync, windowed aggregates, alerts, anomaly
//! detection) and a rule language in the style of Azure Stream Analytics SQL.
#![forbid(unsafe_code)]
