//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes
//! the descriptor set that gRPC server reflection serves.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "tern/auth/v1/auth.proto",
    "tern/group/v1/group.proto",
    "tern/message/v1/message.proto",
    "tern/offline/v1/offline.proto",
    "tern/bus/v1/bus.proto",
    "tern/webhook/v1/webhook.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tern_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
