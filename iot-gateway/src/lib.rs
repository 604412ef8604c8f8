//! Cloud gateway — **not built yet** (issues 6 and 7).
//!
//! This crate will hold the `Gateway` trait and the `Hub` reference gateway (sessions, telemetry into
//! the log, a durable per-device inbox, twins, direct methods, throttling), and MQTT and HTTP endpoints
//! compatible with Azure IoT Hub's device protocol.
#![forbid(unsafe_code)]
