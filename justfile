# Everyday commands for Tern. `just --list` shows them.

# Start the all-in-one server on http://localhost:8080 (data under ./data).
run:
    cargo run --release

# The whole suite, as CI runs it: format check, lints, unit and integration tests.
test:
    deploy/test.sh

# Format every crate.
fmt:
    cargo fmt --all

# Clippy on every crate and target; warnings are errors.
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Release build of every binary in the workspace.
build:
    cargo build --release --workspace
