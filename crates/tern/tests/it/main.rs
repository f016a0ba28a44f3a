//! Tern's integration tests against the real binaries over real sockets,
//! as one test binary: the shared kit in `tests/common/` compiles and links
//! once for all of them. Only the fault runs (`tests/faults.rs`) are a
//! binary of their own, because they restart the shared Redis and MariaDB
//! that tests running beside them here would use.

#[path = "../common/mod.rs"]
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
