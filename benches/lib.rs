//! Benches package.
