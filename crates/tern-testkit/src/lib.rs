//! Tern's test kit, for development only: it starts the built binaries
//! (`tern`, `tern-gateway` and the four services) in the embedded and the
//! distributed topology, and talks to them as users do, over the HTTP API
//! and WebSockets speaking protocol v1. The integration tests, the fault
//! runs and `tern-bench` all use it. It depends on no Tern crate.

pub mod api;
pub mod client;
pub mod procs;
pub mod topology;
