//! Tern's integration tests against the real binaries over real sockets,
//! as one test binary, so what they share (`common/`, on top of the
//! `tern-testkit` crate) compiles and links once for all of them. Only the
//! fault runs (`tests/faults/`) are a binary of their own: each starts a
//! whole cluster with its own Redis and MariaDB, one at a time.

mod common;

mod attachments;
mod backpressure;
mod bad_input;
mod chat;
mod cluster;
mod grpc;
mod http_api;
mod lifecycle;
mod offline;
mod secrets_in_logs;
mod telemetry;
mod webhooks;
