//! Device registry — **not built yet** (issue 4).
//!
//! This crate will hold the `Registry` trait: device metadata documents (never secrets), JSON merge
//! patch (RFC 7396), optimistic concurrency with etags, and a query language in the style of Azure IoT
//! Hub's device queries answered from automatic indexes; in-memory and file-backed registries with a
//! shared conformance suite.
#![forbid(unsafe_code)]
