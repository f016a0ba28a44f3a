//! Plumbing shared by every Tern binary: layered settings, logging, the
//! shutdown signal, serving a gRPC service with health and reflection, the
//! client channel type services use to reach each other, and opening a SQL
//! database.
//!
//! **Architecture Invariant:** this crate knows no Tern service and no
//! domain type. Services depend on it, never the other way round.

pub mod access;
pub mod clock;
pub mod credential;
pub mod db;
pub mod grpc;
pub mod memory;
pub mod net;
pub mod objects;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

mod secret;
pub use secret::Secret;
