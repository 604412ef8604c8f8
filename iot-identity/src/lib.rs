//! Device identity store — **not built yet** (issue 3).
//!
//! This crate will hold the `IdentityStore` trait (the authority on which devices exist and how they
//! prove who they are), device credentials (symmetric keys, X.509 thumbprints, argon2id passphrase
//! hashes), Azure IoT Hub–compatible SAS token generation and verification, an `Authenticator` used by
//! the gateway, and in-memory and file-backed stores with a shared conformance suite.
#![forbid(unsafe_code)]
