//! Real components for the workspace's tests, started on loopback with free ports.
//!
//! - [`otlp`]: an OpenTelemetry collector (OTLP/gRPC trace receiver) that keeps the spans it
//!   is sent.

pub mod otlp;
