#!/usr/bin/env bash
# Validates Tern's deployment files offline, with no Docker engine and no
# Kubernetes cluster:
#
#   1. Kubernetes: renders k8s/base and every overlay with
#      `kubectl kustomize` and validates the output against the Kubernetes
#      API schemas of the versions in K8S_VERSIONS with
#      `kubernetes-validate --strict` (unknown fields and unknown kinds are
#      errors), then checks the rendered objects against each other
#      (deploy/check-deploy.py: settings each binary needs and reads, service
#      URLs and ports, probes, shutdown budgets, security contexts, …).
#   2. Compose: docker-compose.yml against the Compose Specification JSON
#      schema (as bundled by check-jsonschema), then the same kind of
#      cross-checks, including deploy/nginx.conf; `nginx -t` on the config
#      when nginx is installed.
#   3. Dockerfile: extracts the cargo command of the build stage, checks that
#      every binary the runtime stage copies is a binary of the workspace
#      (`cargo metadata --no-deps`, which compiles nothing) and that every
#      binary the manifests run is in the image, and prints the cargo
#      command that replays the image's build. With --build it also runs it.
#
# Any failure stops the script with a non-zero exit code.
#
#   deploy/validate-deploy.sh [--build]
#
# Needs kubectl (or kustomize), python3 with venv, and the package index
# once: the validators are installed into target/deploy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kubernetes versions the manifests must be valid for: the oldest we
# support (native gRPC probes are GA since 1.27) and the newest the
# validator knows. Explicit, so a validator upgrade changes nothing silently.
K8S_VERSIONS=(1.30.0 1.37.0)
# Pinned validators (PyPI). check-jsonschema bundles the Compose
# Specification schema (compose-spec/compose-spec, schema/compose-spec.json)
# as its builtin `vendor.compose-spec`.
REQUIREMENTS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
OVERLAYS=(base overlays/dev overlays/prod overlays/embedded)

venv=target/deploy-venv
out=target/deploy-validate
build=0
for arg in "$@"; do
  case $arg in
    --build) build=1 ;;
    *) echo "usage: $0 [--build]" >&2; exit 64 ;;
  esac
done

die() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }

# --- tools ------------------------------------------------------------------
if command -v kubectl >/dev/null; then
  kustomize() { kubectl kustomize "$1"; }
  kustomize_tool="$(command -v kubectl) kustomize ($(kubectl version --client 2>/dev/null | grep -i kustomize || echo 'kustomize version unknown'))"
elif command -v kustomize >/dev/null; then
  kustomize() { command kustomize build "$1"; }
  kustomize_tool="$(command -v kustomize) build"
else
  die "kubectl is not installed (nor kustomize). It renders the k8s/ overlays \
offline (kubectl kustomize); install kubectl from your distribution or the \
Kubernetes package repository and run this again."
fi
command -v python3 >/dev/null || die "python3 is needed for the validators"
wanted="${REQUIREMENTS[*]}"
if [[ ! -x $venv/bin/python || "$(cat "$venv/.requirements" 2>/dev/null)" != "$wanted" ]]; then
  echo "installing ${REQUIREMENTS[*]} into $venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" \
    || die "pip could not install ${REQUIREMENTS[*]}"
  echo "$wanted" >"$venv/.requirements"
fi
py=$venv/bin/python
mkdir -p "$out"

# --- 0. What each binary reads ------------------------------------------------
step "Settings: the TERN__* variables each binary reads (deploy/settings/, as the binaries print them)"
"$py" deploy/check-deploy.py settings || die "deploy/check-deploy.py is out of step with the binaries' settings"

# --- 1. Kubernetes ----------------------------------------------------------
step "Kubernetes: kustomize | kubernetes-validate --strict, Kubernetes ${K8S_VERSIONS[*]}"
echo "renderer: $kustomize_tool"
echo "validator: kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"
rendered=()
for overlay in "${OVERLAYS[@]}"; do
  name=${overlay#overlays/}
  for version in "${K8S_VERSIONS[@]}"; do
    # kubernetes-validate exits 0 on a kind it has no schema for (it only
    # warns), so any WARN line counts as a failure too.
    if ! report=$(kustomize "k8s/$overlay" | tee "$out/$name.yaml" \
          | "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" - 2>&1) \
        || grep -qE '^(WARN|ERROR|FATAL)' <<<"$report"; then
      grep -vE '^INFO' <<<"$report" >&2 || true
      die "k8s/$overlay is not valid for Kubernetes $version"
    fi
    echo "ok   k8s/$overlay: $(grep -c '^INFO' <<<"$report") objects valid for Kubernetes $version (strict)"
  done
  # The base alone is no deployment (it has no Redis and no MySQL): its
  # objects are cross-checked as part of every overlay.
  [[ $overlay == base ]] || rendered+=("$name=$out/$name.yaml")
done
"$py" deploy/check-deploy.py k8s "${rendered[@]}" || die "Kubernetes consistency checks failed"
cmp -s deploy/mysql-init.sql k8s/overlays/dev/mysql-init.sql \
  || die "k8s/overlays/dev/mysql-init.sql differs from deploy/mysql-init.sql (copy it over)"
echo "ok   k8s/overlays/dev/mysql-init.sql is deploy/mysql-init.sql"

# --- 2. Compose -------------------------------------------------------------
step "Compose: docker-compose.yml against the Compose Specification schema"
echo "validator: check-jsonschema $("$venv/bin/check-jsonschema" --version | awk '{print $NF}') --builtin-schema vendor.compose-spec"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml \
  || die "docker-compose.yml does not match the Compose Specification"
"$py" deploy/check-deploy.py compose docker-compose.yml deploy/nginx.conf \
  || die "docker-compose.yml consistency checks failed"
if command -v nginx >/dev/null; then
  # The upstream names resolve only inside the compose network: test a copy
  # with every gateway name pointed at 127.0.0.1, and with nginx's files
  # under $out/nginx rather than wherever this host's nginx keeps them.
  mkdir -p "$out/nginx/logs" "$out/nginx/tmp"
  sed -E -e 's/server tern-gateway-[0-9]+:/server 127.0.0.1:/' \
    -e 's|^http \{|http {\n    access_log logs/access.log; client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;|' \
    deploy/nginx.conf >"$out/nginx/nginx.conf"
  nginx -t -q -e stderr -p "$PWD/$out/nginx/" -c "$PWD/$out/nginx/nginx.conf" \
    || die "deploy/nginx.conf: nginx -t failed"
  echo "ok   deploy/nginx.conf passes nginx -t ($(nginx -v 2>&1 | sed 's/.*: //'))"
else
  echo "SKIP nginx -t: nginx is not installed (the checks above still read deploy/nginx.conf)"
fi

# --- 3. Dockerfile ----------------------------------------------------------
step "Dockerfile: build stage → cargo, runtime binaries → workspace binaries"
command -v cargo >/dev/null || die "cargo is needed for \`cargo metadata\`"
cargo metadata --no-deps --format-version 1 --offline >"$out/metadata.json" \
  || die "cargo metadata failed"
"$py" deploy/check-deploy.py dockerfile deploy/Dockerfile "$out/metadata.json" \
  "$out"/*.yaml docker-compose.yml | tee "$out/dockerfile.txt" \
  || die "deploy/Dockerfile checks failed"
replay=$(sed -n 's/^REPLAY //p' "$out/dockerfile.txt")
[[ -n $replay ]] || die "no cargo build command found in deploy/Dockerfile"
echo "The image's build, replayed as plain cargo (deploy/test.sh builds the same"
echo "binaries with \`cargo build --workspace --bins\`):"
echo "  $replay"
if ((build)); then
  step "replaying the build"
  $replay
  echo "ok   $replay"
fi

printf '\nAll deployment files are valid.\n'
