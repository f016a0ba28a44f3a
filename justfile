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

# deploy/local-cluster.sh: four services and two gateways on the local Redis and MariaDB.
# Start Tern's distributed topology as local processes.
cluster-up:
    deploy/local-cluster.sh up

# Stop what `cluster-up` started.
cluster-down:
    deploy/local-cluster.sh down

# Build the container image with every binary (needs Docker with BuildKit).
docker-build:
    docker build -f deploy/Dockerfile -t tern:latest .

# Load the image into the cluster first (kind load docker-image tern:latest).
# Deploy Tern with its own MySQL and Redis to namespace tern-dev of the current kubectl context.
k8s-apply:
    kubectl apply -k k8s/overlays/dev

# Validate docker-compose.yml, k8s/ and deploy/Dockerfile offline.
validate-deploy:
    deploy/validate-deploy.sh

# Run every load benchmark (S0-S6, embedded and distributed; needs the local
# MariaDB and Redis) and write results to target/tern-bench/. Pass flags
# through, e.g. `just bench --smoke`. See BENCHMARKS.md.
bench *ARGS:
    cargo build --release --workspace
    cargo run --release -p tern-bench -- all {{ARGS}}

# The long fault-injection run (docs/fault-runs.md): 400 users, every fault,
# each with 20 s of load around it. Rows land in target/faults-report.md.
faults:
    cargo build --release --workspace --bins
    TERN_FAULTS_USERS=400 TERN_FAULTS_RATE=5 TERN_FAULTS_SECS=20 cargo test --release -p tern --test faults -- --nocapture
