//! Real components for the workspace's tests, started on loopback with free ports.
