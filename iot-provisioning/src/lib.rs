//! Provisioning API — **not built yet** (issue 5).
//!
//! This crate will hold the `Provisioning` trait (register, unregister, activate, deactivate, update,
//! reset credentials, bulk) and the `Provisioner` over any identity store and registry, which keeps the
//! two in agreement across failures and writes an audit trail to the log.
#![forbid(unsafe_code)]
