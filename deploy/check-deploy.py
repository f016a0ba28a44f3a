#!/usr/bin/env python3
"""Consistency checks of Tern's deployment files, beyond their schemas.

Run by deploy/validate-deploy.sh (which installs PyYAML with the
validators); not meant to be run alone:

  check-deploy.py settings                        the settings table (deploy/settings/)
  check-deploy.py k8s OVERLAY=RENDERED.yaml ...   kustomize output
  check-deploy.py compose docker-compose.yml deploy/nginx.conf
  check-deploy.py dockerfile deploy/Dockerfile METADATA.json YAML...
      METADATA.json: `cargo metadata --no-deps --format-version 1`;
      YAML...: rendered manifests and compose files, whose commands name
      the binaries the image must contain

Prints one line per finding and exits 1 if anything failed.
"""

import base64
import json
import os
import re
import sys
from urllib.parse import urlsplit

import yaml

# ---------------------------------------------------------------------------
# What each binary reads, with the defaults: deploy/settings/<binary>.env,
# one `TERN__KEY=default` line per setting, as `<binary> --print-settings`
# prints it (a test of crates/tern fails when a list and its binary differ).

BINARIES = ("tern", "tern-auth", "tern-group", "tern-message", "tern-offline", "tern-gateway")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_settings(binary):
    """{TERN__KEY: default} of one binary."""
    out = {}
    with open(os.path.join(ROOT, "deploy", "settings", f"{binary}.env")) as f:
        for line in f:
            key, _, default = line.rstrip("\n").partition("=")
            if key:
                out[key] = default
    return out


SETTINGS = {b: read_settings(b) for b in BINARIES}
READS = {b: set(settings) for b, settings in SETTINGS.items()}


def default_of(var):
    """A setting's default, from whichever binary reads it."""
    return next(SETTINGS[b][var] for b in BINARIES if var in SETTINGS[b])


def default_grpc_port(binary):
    addr = SETTINGS[binary].get("TERN__GRPC_ADDR", "")
    return int(addr.rsplit(":", 1)[1]) if ":" in addr else None
# Without these a binary exits at start (secrets) or silently uses a
# default that is wrong in a deployment (127.0.0.1 peers, SQLite files).
REQUIRED = {
    "tern-auth": {"TERN__SERVICE_TOKEN", "TERN__AUTH__DATABASE_URL", "TERN__AUTH__JWT__SECRET"},
    "tern-group": {"TERN__SERVICE_TOKEN", "TERN__GROUP__DATABASE_URL", "TERN__AUTH_URL", "TERN__OFFLINE_URL"}
    | {"TERN__MESSAGE_URL"},
    "tern-message": {"TERN__SERVICE_TOKEN", "TERN__MESSAGE__DATABASE_URL", "TERN__REDIS_URL"}
    | {"TERN__AUTH_URL", "TERN__GROUP_URL", "TERN__OFFLINE_URL"},
    "tern-offline": {"TERN__SERVICE_TOKEN", "TERN__OFFLINE__DATABASE_URL", "TERN__MESSAGE_URL"},
    "tern-gateway": {"TERN__SERVICE_TOKEN", "TERN__REDIS_URL"}
    | {"TERN__AUTH_URL", "TERN__GROUP_URL", "TERN__MESSAGE_URL", "TERN__OFFLINE_URL"},
    "tern": set(),
}
# Variables read outside the settings loader.
OTHER_ENV = {"TERN_LOG_FORMAT", "RUST_LOG"}
OTHER_PREFIXES = ("OTEL_",)

GRPC = {  # binary → (default port, gRPC service name)
    "tern-auth": (50051, "tern.auth.v1.AuthService"),
    "tern-group": (50052, "tern.group.v1.GroupService"),
    "tern-message": (50053, "tern.message.v1.MessageService"),
    "tern-offline": (50054, "tern.offline.v1.OfflineService"),
}
URL_TARGET = {
    "TERN__AUTH_URL": "tern-auth",
    "TERN__GROUP_URL": "tern-group",
    "TERN__MESSAGE_URL": "tern-message",
    "TERN__OFFLINE_URL": "tern-offline",
}
DB_URL = {
    "tern-auth": "TERN__AUTH__DATABASE_URL",
    "tern-group": "TERN__GROUP__DATABASE_URL",
    "tern-message": "TERN__MESSAGE__DATABASE_URL",
    "tern-offline": "TERN__OFFLINE__DATABASE_URL",
}
HTTP_DEFAULT_PORT = 8080
# What a service may need after SIGTERM + drain to finish in-flight calls.
IN_FLIGHT_SECS = 10
DEFAULTS = {
    var: int(default_of(var))
    for var in ("TERN__DRAIN_SECS", "TERN__GATEWAY__DRAIN_SECS", "TERN__GATEWAY__SHUTDOWN_GRACE_SECS")
}
TERN_UID = 10001

failures = 0
checked = 0


def check_settings_table():
    """The hand-kept facts above against the code they describe."""
    before = failures
    for b, needed in REQUIRED.items():
        for var in sorted(needed - READS[b]):
            fail(f"settings of {b}", f"{var} is required here but {b} no longer reads it")
    for b, (port, _) in GRPC.items():
        check(default_grpc_port(b) == port, f"settings of {b}", f"default gRPC port is no longer {port}")
    summary(
        before,
        "settings from deploy/settings/: "
        + ", ".join(f"{b} reads {len(READS[b])} TERN__ variables" for b in BINARIES),
    )


def fail(where, message):
    global failures
    failures += 1
    print(f"FAIL {where}: {message}")


def summary(failures_before, message):
    """The closing line of a section: ok only if nothing in it failed."""
    print(f"{'ok  ' if failures == failures_before else 'FAIL'} {message}")


def check(cond, where, message):
    global checked
    checked += 1
    if not cond:
        fail(where, message)
    return cond


def binary_of(command):
    """The Tern binary a container command runs, or None."""
    if not command:
        return None
    name = str(command[0]).rsplit("/", 1)[-1]
    return name if name in READS else None


def port_of(addr, default):
    if not addr:
        return default
    return int(str(addr).rsplit(":", 1)[-1])


def check_env_names(where, binary, names, explicit):
    """`names`: every variable the container gets; `explicit`: those set for
    this container alone (must be read by this binary)."""
    known_anywhere = set().union(*READS.values())
    for name in sorted(names):
        if name in OTHER_ENV or name.startswith(OTHER_PREFIXES):
            continue
        if name.startswith("TERN"):
            check(name in known_anywhere, where, f"{name} is read by no Tern binary (typo?)")
            if name in explicit and name in known_anywhere:
                check(name in READS[binary], where, f"{name} is set for {binary}, which does not read it")
    for name in sorted(REQUIRED[binary] - set(names)):
        fail(where, f"{binary} needs {name}")


def check_secret_values(where, values):
    """Values of the two secrets, as the binaries check them at start."""
    token = values.get("TERN__SERVICE_TOKEN")
    if token is not None:
        check(
            len(token.encode()) >= 32 and all(0x21 <= b <= 0x7E for b in token.encode()),
            where,
            "TERN__SERVICE_TOKEN must be at least 32 bytes of printable ASCII without spaces",
        )
    jwt = values.get("TERN__AUTH__JWT__SECRET")
    if jwt is not None:
        check(len(jwt.encode()) >= 32, where, "TERN__AUTH__JWT__SECRET must be at least 32 bytes")


# ---------------------------------------------------------------------------
# Kubernetes


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Rendered:
    """The objects of one rendered overlay, indexed the ways the checks need."""

    def __init__(self, docs):
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], []).append(d)
        self.configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("ConfigMap", [])}
        self.secrets = {}
        for d in by_kind.get("Secret", []):
            data = {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
            data.update(d.get("stringData", {}))
            self.secrets[d["metadata"]["name"]] = data
        self.services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
        self.workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
        self.hpas = {d["spec"]["scaleTargetRef"]["name"]: d for d in by_kind.get("HorizontalPodAutoscaler", [])}
        self.pdbs = by_kind.get("PodDisruptionBudget", [])
        # Where each Tern binary listens, and which pods run it.
        self.listeners = {}  # binary → (pod labels, container port)
        for w in self.workloads:
            pod = w["spec"]["template"]
            for c in pod["spec"]["containers"]:
                b = container_binary(c)
                if b in GRPC:
                    _, addr = self.value_of(c, "TERN__GRPC_ADDR")
                    self.listeners[b] = (pod["metadata"].get("labels", {}), port_of(addr, GRPC[b][0]))
                elif b in ("tern-gateway", "tern"):
                    _, addr = self.value_of(c, "TERN__HTTP_ADDR")
                    self.listeners[b] = (pod["metadata"].get("labels", {}), port_of(addr, HTTP_DEFAULT_PORT))
        self.mysql = None  # (user, password, name) of an in-cluster MySQL, if any
        for w in self.workloads:
            for c in w["spec"]["template"]["spec"]["containers"]:
                if c["image"].split("/")[-1].startswith("mysql:"):
                    found_u, user = self.value_of(c, "MYSQL_USER")
                    found_p, password = self.value_of(c, "MYSQL_PASSWORD")
                    if found_u and found_p:
                        self.mysql = (user, password, w["metadata"]["name"])

    def value_of(self, container, name):
        """Value of `name` in a container's env: (found, value)."""
        for e in container.get("env", []):
            if e["name"] != name:
                continue
            if "value" in e:
                return True, e["value"]
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                return True, self.secrets.get(ref["name"], {}).get(ref["key"])
            return True, None
        for src in container.get("envFrom", []):
            ref = src.get("configMapRef") or src.get("secretRef")
            data = self.configmaps.get(ref["name"]) if "configMapRef" in src else self.secrets.get(ref["name"])
            if data and name in data:
                return True, data[name]
        return False, None


def is_tern_image(container):
    return container["image"].split("/")[-1].startswith("tern")


def container_binary(container):
    """The Tern binary a container runs, if any."""
    b = binary_of(container.get("command") or container.get("args"))
    if b is None and is_tern_image(container) and not container.get("command"):
        b = "tern"  # the image's default command
    return b


def check_resources(where, spec):
    """Every container: memory requests and limits, a CPU request."""
    for c in spec.get("initContainers", []) + spec["containers"]:
        res = c.get("resources", {})
        check(
            res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"),
            where,
            f"container {c['name']} needs memory requests and limits",
        )
        check(res.get("requests", {}).get("cpu"), where, f"container {c['name']} needs a CPU request")


def check_security(where, spec, tern_containers):
    """Tern containers run unprivileged, read-only, as the image's user."""
    psc = spec.get("securityContext", {})
    for c in tern_containers:
        csc = c.get("securityContext", {})
        cwhere = f"{where} container {c['name']}"
        check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, cwhere, "runAsNonRoot must be true")
        check(
            csc.get("runAsUser", psc.get("runAsUser")) == TERN_UID,
            cwhere,
            f"runAsUser must be the image's uid {TERN_UID}",
        )
        check(csc.get("readOnlyRootFilesystem") is True, cwhere, "readOnlyRootFilesystem must be true")
        check(csc.get("allowPrivilegeEscalation") is False, cwhere, "allowPrivilegeEscalation must be false")
        check(csc.get("capabilities", {}).get("drop") == ["ALL"], cwhere, "capabilities must drop ALL")
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
        check(seccomp.get("type") == "RuntimeDefault", cwhere, "seccompProfile must be RuntimeDefault")


def check_env(cwhere, c, b, r):
    """Variables the binary reads and needs, references that resolve, secrets that are real."""
    names, explicit = set(), set()
    for e in c.get("env", []):
        names.add(e["name"])
        explicit.add(e["name"])
        ref = e.get("valueFrom", {}).get("secretKeyRef") or e.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            store = r.secrets if "secretKeyRef" in e["valueFrom"] else r.configmaps
            # An optional key may be missing (the setting keeps its
            # default); its object must still exist.
            check(
                ref["name"] in store and (ref.get("optional") or ref["key"] in store[ref["name"]]),
                cwhere,
                f"{e['name']} refers to {ref['name']}/{ref['key']}, which is not rendered",
            )
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            ref = src["configMapRef"]["name"]
            check(ref in r.configmaps, cwhere, f"envFrom ConfigMap {ref} is not rendered")
            names |= set(r.configmaps.get(ref, {}))
        if "secretRef" in src:
            ref = src["secretRef"]["name"]
            check(ref in r.secrets, cwhere, f"envFrom Secret {ref} is not rendered")
            names |= set(r.secrets.get(ref, {}))
    check_env_names(cwhere, b, names, explicit)
    secret_vars = ("TERN__SERVICE_TOKEN", "TERN__AUTH__JWT__SECRET")
    check_secret_values(cwhere, {v: r.value_of(c, v)[1] for v in secret_vars if r.value_of(c, v)[0]})


def check_service_urls(cwhere, c, b, r):
    """Each service URL names a Service that leads to that service's pods and port."""
    for var, target in URL_TARGET.items():
        found, url = r.value_of(c, var)
        if not found or var not in READS[b]:
            continue
        u = urlsplit(url or "")
        svc = r.services.get(u.hostname or "")
        if not check(svc is not None, cwhere, f"{var}={url}: no Service named {u.hostname}"):
            continue
        labels, cport = r.listeners.get(target, ({}, None))
        check(
            selects(svc["spec"].get("selector"), labels),
            cwhere,
            f"{var}: Service {u.hostname} does not select the {target} pods",
        )
        sport = next((p for p in svc["spec"]["ports"] if p["port"] == u.port), None)
        if check(sport is not None, cwhere, f"{var}: Service {u.hostname} has no port {u.port}"):
            tp = sport.get("targetPort", sport["port"])
            if isinstance(tp, str):
                tp = next(
                    (
                        p["containerPort"]
                        for w2 in r.workloads
                        if selects(svc["spec"].get("selector"), w2["spec"]["template"]["metadata"]["labels"])
                        for c2 in w2["spec"]["template"]["spec"]["containers"]
                        for p in c2.get("ports", [])
                        if p.get("name") == tp
                    ),
                    None,
                )
            check(tp == cport, cwhere, f"{var}: Service port {u.port} leads to {tp}, {target} listens on {cport}")
    for var in ("TERN__REDIS_URL",):
        found, url = r.value_of(c, var)
        if found and var in READS[b]:
            host = urlsplit(url or "").hostname or ""
            check(
                host in r.services or "." in host,
                cwhere,
                f"{var}={url}: {host} is neither a Service here nor a fully qualified host",
            )


def check_database(cwhere, c, b, r):
    """A service's database is a server every replica shares, reachable, with its credentials."""
    if b not in DB_URL:
        return
    found, url = r.value_of(c, DB_URL[b])
    u = urlsplit(url or "")
    check(
        u.scheme in ("mysql", "postgres", "postgresql"),
        cwhere,
        f"{DB_URL[b]} must be a MySQL or PostgreSQL URL shared by every replica, not {u.scheme or 'unset'}",
    )
    check(
        u.hostname in r.services or "." in (u.hostname or ""),
        cwhere,
        f"{DB_URL[b]}: {u.hostname} is neither a Service here nor a fully qualified host",
    )
    if r.mysql and u.hostname == r.mysql[2]:
        check(
            (u.username, u.password) == (r.mysql[0], r.mysql[1]),
            cwhere,
            f"{DB_URL[b]} does not carry the user and password of StatefulSet {r.mysql[2]}",
        )


def check_probes(cwhere, c, b, r):
    """gRPC services: native gRPC probes on their port; gateways: /health and /ready."""
    if b in GRPC:
        _, addr = r.value_of(c, "TERN__GRPC_ADDR")
        port = port_of(addr, GRPC[b][0])
        rp = c.get("readinessProbe", {}).get("grpc", {})
        check(
            rp.get("port") == port and rp.get("service") == GRPC[b][1],
            cwhere,
            f"readinessProbe must be grpc on {port} for service {GRPC[b][1]}",
        )
        lp = c.get("livenessProbe", {}).get("grpc", {})
        check(
            lp.get("port") == port and lp.get("service", "") == "",
            cwhere,
            f'livenessProbe must be grpc on {port} for the server as a whole ("")',
        )
        check(
            any(p["containerPort"] == port and p.get("name") == "grpc" for p in c.get("ports", [])),
            cwhere,
            f"needs a container port named grpc = {port}",
        )
        found, maddr = r.value_of(c, "TERN__METRICS_ADDR")
        if found:
            mport = port_of(maddr, None)
            check(
                any(p["containerPort"] == mport for p in c.get("ports", [])),
                cwhere,
                f"TERN__METRICS_ADDR port {mport} is not a container port",
            )
    elif b == "tern-gateway":
        check(
            c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/health",
            cwhere,
            "livenessProbe must GET /health",
        )
        check(
            c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/ready",
            cwhere,
            "readinessProbe must GET /ready",
        )
        check(
            c.get("readinessProbe", {}).get("timeoutSeconds", 1) > 2,
            cwhere,
            "readinessProbe timeout must exceed /ready's 2 s dependency checks",
        )


def check_shutdown(cwhere, c, b, spec, r):
    """preStop sleep, drain and grace fit in terminationGracePeriodSeconds."""
    if not (b in GRPC or b == "tern-gateway"):
        return
    stop = c.get("lifecycle", {}).get("preStop", {})
    sleep = 0
    if "exec" in stop:
        cmd = stop["exec"]["command"]
        if cmd[0].endswith("sleep"):
            sleep = int(cmd[1])
    elif "sleep" in stop:
        sleep = int(stop["sleep"]["seconds"])
    check(sleep > 0, cwhere, "needs a preStop sleep, so endpoints drop the pod before SIGTERM")

    def setting(var):
        found, v = r.value_of(c, var)
        return int(v) if found else DEFAULTS[var]

    if b in GRPC:
        parts = {"preStop": sleep, "TERN__DRAIN_SECS": setting("TERN__DRAIN_SECS"), "in-flight": IN_FLIGHT_SECS}
    else:
        parts = {
            "preStop": sleep,
            "TERN__GATEWAY__DRAIN_SECS": setting("TERN__GATEWAY__DRAIN_SECS"),
            "TERN__GATEWAY__SHUTDOWN_GRACE_SECS": setting("TERN__GATEWAY__SHUTDOWN_GRACE_SECS"),
        }
    grace = spec.get("terminationGracePeriodSeconds", 30)
    total = sum(parts.values())
    check(
        total < grace,
        cwhere,
        f"shutdown needs {' + '.join(f'{k} {v}' for k, v in parts.items())} = {total} s,"
        f" not under terminationGracePeriodSeconds {grace}",
    )


def check_availability(where, w, binaries, r):
    """Tern's own workloads: a PodDisruptionBudget, and no replicas an HPA owns."""
    if not any(b for b in binaries if b and b != "tern"):
        return
    labels = w["spec"]["template"]["metadata"].get("labels", {})
    check(
        any(selects(p["spec"]["selector"].get("matchLabels"), labels) for p in r.pdbs),
        where,
        "no PodDisruptionBudget selects its pods",
    )
    if w["metadata"]["name"] in r.hpas:
        check("replicas" not in w["spec"], where, "sets replicas while a HorizontalPodAutoscaler owns the count")


def check_services(overlay, r):
    """Every Service selects pods, names real ports, and marks gRPC ones."""
    for target in r.hpas:
        check(
            any(w["metadata"]["name"] == target for w in r.workloads),
            f"{overlay}: HorizontalPodAutoscaler {target}",
            "targets no rendered Deployment",
        )
    for sname, svc in r.services.items():
        sel = svc["spec"].get("selector")
        pods = [w for w in r.workloads if selects(sel, w["spec"]["template"]["metadata"].get("labels", {}))]
        if not check(pods, f"{overlay}: Service {sname}", "selects no pod"):
            continue
        names = {p.get("name") for w in pods for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str):
                check(p["targetPort"] in names, f"{overlay}: Service {sname}", f"targetPort {p['targetPort']} is no container port")
            if p.get("name") == "grpc":
                check(p.get("appProtocol") == "grpc", f"{overlay}: Service {sname}", "gRPC port needs appProtocol: grpc")


def check_k8s(overlay, path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    r = Rendered(docs)
    before, failed_before = checked, failures
    tern_images = set()
    for w in r.workloads:
        spec = w["spec"]["template"]["spec"]
        containers = spec["containers"]
        binaries = [binary_of(c.get("command") or c.get("args")) for c in containers]
        tern_containers = [c for c in spec.get("initContainers", []) + containers if is_tern_image(c)]
        where = f"{overlay}: {w['kind']} {w['metadata']['name']}"
        check_resources(where, spec)
        if not tern_containers:
            continue
        tern_images |= {c["image"] for c in tern_containers}
        check_security(where, spec, tern_containers)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers:
            b = container_binary(c)
            if b is None:
                continue
            cwhere = f"{where} container {c['name']} ({b})"
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            check(
                tmp and "emptyDir" in volumes.get(tmp[0]["name"], {}),
                cwhere,
                "needs an emptyDir on /tmp (the root filesystem is read-only)",
            )
            check_env(cwhere, c, b, r)
            check_service_urls(cwhere, c, b, r)
            check_database(cwhere, c, b, r)
            check_probes(cwhere, c, b, r)
            check_shutdown(cwhere, c, b, spec, r)
        check_availability(where, w, binaries, r)
    check_services(overlay, r)
    check(len(tern_images) <= 1, overlay, f"Tern containers use different images: {sorted(tern_images)}")
    summary(failed_before, f"{overlay}: {len(docs)} objects, {checked - before} consistency checks")


# ---------------------------------------------------------------------------
# Compose

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value):
    """Compose's ${VAR:-default}, taking the default (a fresh checkout)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def env_map(env):
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else interpolate(v) for k, v in (env or {}).items()}


def check_compose(path, nginx_conf):
    import os

    doc = yaml.safe_load(open(path))
    services = doc["services"]
    before, failed_before = checked, failures
    tern, listen = {}, {}
    for name, s in services.items():
        where = f"compose: service {name}"
        check("image" in s or "build" in s, where, "has neither image nor build")
        b = binary_of(s.get("command"))
        if b is None and str(s.get("image", "")).startswith("tern") and not s.get("command"):
            b = "tern"
        if b:
            tern[name] = b
            env = env_map(s.get("environment"))
            if b in GRPC:
                listen[name] = (b, port_of(env.get("TERN__GRPC_ADDR"), GRPC[b][0]))
            else:
                listen[name] = (b, port_of(env.get("TERN__HTTP_ADDR"), HTTP_DEFAULT_PORT))
        build = s.get("build")
        if isinstance(build, dict):
            dockerfile = os.path.join(build.get("context", "."), build.get("dockerfile", "Dockerfile"))
            check(os.path.isfile(dockerfile), where, f"build.dockerfile {dockerfile} does not exist")
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")):
                check(os.path.exists(src), where, f"bind mount source {src} does not exist")
        for dep, cond in (s.get("depends_on") or {}).items() if isinstance(s.get("depends_on"), dict) else []:
            if check(dep in services, where, f"depends on unknown service {dep}"):
                if cond.get("condition") == "service_healthy":
                    check("healthcheck" in services[dep], where, f"waits for {dep} to be healthy, which has no healthcheck")
    images = {(services[n].get("image"), json.dumps(services[n].get("build"), sort_keys=True)) for n in tern}
    check(len(images) == 1, "compose", f"Tern services must share one image and build, found {sorted(images)}")
    mysql = None
    for name, s in services.items():
        if str(s.get("image", "")).startswith("mysql:"):
            env = env_map(s.get("environment"))
            mysql = (name, env.get("MYSQL_USER"), env.get("MYSQL_PASSWORD"))
    for name, b in tern.items():
        where = f"compose: service {name} ({b})"
        env = env_map(services[name].get("environment"))
        check_env_names(where, b, set(env), set())
        check_secret_values(where, env)
        for var, target in URL_TARGET.items():
            if var in env and var in READS[b]:
                u = urlsplit(env[var])
                got = listen.get(u.hostname)
                check(
                    got is not None and got[0] == target and got[1] == u.port,
                    where,
                    f"{var}={env[var]}: {u.hostname}:{u.port} is not where {target} listens",
                )
        if "TERN__REDIS_URL" in env and "TERN__REDIS_URL" in READS[b]:
            host = urlsplit(env["TERN__REDIS_URL"]).hostname
            check(host in services, where, f"TERN__REDIS_URL host {host} is no service")
        if b in DB_URL and DB_URL[b] in env:
            u = urlsplit(env[DB_URL[b]])
            check(u.scheme in ("mysql", "postgres", "postgresql"), where, f"{DB_URL[b]} must be MySQL or PostgreSQL")
            check(u.hostname in services, where, f"{DB_URL[b]} host {u.hostname} is no service")
            if mysql and u.hostname == mysql[0]:
                check(
                    (u.username, u.password) == (mysql[1], mysql[2]),
                    where,
                    f"{DB_URL[b]} does not carry MYSQL_USER/MYSQL_PASSWORD of service {mysql[0]}",
                )
        if b in GRPC:
            test = " ".join(map(str, services[name].get("healthcheck", {}).get("test", [])))
            m = re.search(r"/dev/tcp/127\.0\.0\.1/(\d+)", test)
            check(m and int(m.group(1)) == listen[name][1], where, f"healthcheck must probe port {listen[name][1]}")
    # nginx in front of the gateways.
    conf = open(nginx_conf).read()
    upstream = re.search(r"upstream\s+\S+\s*\{(.*?)\}", conf, re.S)
    servers = re.findall(r"^\s*server\s+([^\s;]+)", upstream.group(1), re.M) if upstream else []
    gateways = {n for n, b in tern.items() if b == "tern-gateway"}
    hosts = set()
    for srv in servers:
        host, _, port = srv.partition(":")
        hosts.add(host)
        check(
            host in gateways and int(port or 80) == listen[host][1],
            "nginx.conf",
            f"upstream server {srv} is not a gateway service and its port",
        )
    check(hosts == gateways, "nginx.conf", f"upstream {sorted(hosts)} must list every gateway {sorted(gateways)}")
    for needle in ("proxy_set_header Upgrade $http_upgrade", "proxy_http_version 1.1", "proxy_read_timeout"):
        check(needle in conf, "nginx.conf", f"missing `{needle}`")
    check(
        not re.search(r"^\s*(ip_hash|hash|sticky)\b", conf, re.M), "nginx.conf", "must balance round robin, not sticky"
    )
    trusting = [n for n in gateways if env_map(services[n].get("environment")).get("TERN__GATEWAY__LIMITS__TRUST_FORWARDED_FOR") == "true"]
    if trusting:
        check(
            re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr;", conf),
            "nginx.conf",
            f"{', '.join(sorted(trusting))} trust X-Forwarded-For, so nginx must overwrite it with $remote_addr",
        )
    fronts = [
        n for n, s in services.items() if any(str(v).startswith(f"./{nginx_conf}:") or str(v).startswith(f"{nginx_conf}:") for v in s.get("volumes", []))
    ]
    check(len(fronts) == 1, "compose", f"exactly one service must mount {nginx_conf}")
    if fronts:
        check(
            any(str(p).split(":")[0] == "8080" for p in services[fronts[0]].get("ports", [])),
            f"compose: service {fronts[0]}",
            "must publish port 8080",
        )
        deps = services[fronts[0]].get("depends_on") or {}
        check(gateways <= set(deps), f"compose: service {fronts[0]}", "must depend on every gateway")
    summary(failed_before, f"compose: {len(services)} services ({len(tern)} Tern), {checked - before} consistency checks")


# ---------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(path):
    lines, current = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        lines.append(current.strip())
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def commands_in(paths):
    """Binaries named by `command:` in YAML files (manifests, compose)."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "command" and isinstance(v, list) and v and "tern" in str(v[0]):
                    found.add(str(v[0]).rsplit("/", 1)[-1])
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in paths:
        for doc in yaml.safe_load_all(open(path)):
            walk(doc)
    return found


def check_dockerfile(path, metadata_path, yaml_paths):
    wanted = commands_in(yaml_paths)
    meta = json.load(open(metadata_path))
    workspace_bins = {
        t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]
    }
    rust_version = max((p.get("rust_version") or "0" for p in meta["packages"]), key=lambda v: tuple(map(int, v.split("."))))
    stages, stage = {}, None
    args = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ARG" and stage is None:
            k, _, v = rest.partition("=")
            args[k] = v
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stage = m.group(2) or f"stage{len(stages)}"
            stages[stage] = {"from": m.group(1), "run": [], "copy": [], "user": None, "cmd": None, "entrypoint": None}
        elif stage:
            if word == "RUN":
                stages[stage]["run"].append(rest)
            elif word == "COPY":
                stages[stage]["copy"].append(rest)
            elif word == "USER":
                stages[stage]["user"] = rest
            elif word in ("CMD", "ENTRYPOINT"):
                stages[stage][word.lower()] = json.loads(rest)
    names = list(stages)
    check(len(names) >= 2, "Dockerfile", "needs a build stage and a runtime stage")
    runtime = names[-1]
    cargo, copied_out = [], {}
    for name in names[:-1]:
        for run in stages[name]["run"]:
            body = re.sub(r"--mount=\S+", "", run)
            for part in body.split("&&"):
                part = " ".join(part.split())
                if part.startswith("cargo "):
                    cargo.append((name, part))
                m = re.match(r"cp target/(\w+)/([\w-]+) (\S+)", part)
                if m:
                    copied_out[m.group(2)] = (m.group(1), m.group(3).rstrip("/") + "/" + m.group(2))
    builds = [c for c in cargo if c[1].startswith("cargo build")]
    check(len(builds) == 1, "Dockerfile", f"expected one `cargo build` in the build stage, found {len(builds)}")
    runtime_bins = set()
    for cp in stages[runtime]["copy"]:
        m = re.match(r"--from=(\S+)\s+(\S+)\s+(\S+)", cp)
        if not m:
            continue
        src_stage, src, dst = m.groups()
        bin_name = src.rsplit("/", 1)[-1]
        runtime_bins.add(bin_name)
        where = f"Dockerfile: COPY --from={src_stage} {src}"
        check(src_stage in names[:-1], where, "copies from no build stage")
        check(bin_name in workspace_bins, where, f"{bin_name} is not a binary of the workspace {sorted(workspace_bins)}")
        check(dst == f"/usr/local/bin/{bin_name}", where, "binaries belong in /usr/local/bin under their own name")
        check(
            bin_name in copied_out and copied_out[bin_name][1] == src,
            where,
            f"{src} is not where the build stage copied {bin_name}",
        )
    if builds:
        stage_name, cmd = builds[0]
        flags = cmd.split()
        for flag in ("--release", "--locked"):
            check(flag in flags, "Dockerfile", f"cargo build lacks {flag}")
        profile = "release" if "--release" in flags else "debug"
        for b, (prof, _) in copied_out.items():
            check(prof == profile, "Dockerfile", f"{b} is copied from target/{prof}, the build writes target/{profile}")
        selected = "--workspace" in flags or "--bins" in flags
        for b in runtime_bins:
            check(selected or f"--bin {b}" in cmd, "Dockerfile", f"the cargo command does not build {b}")
    for b in sorted(set(wanted)):
        check(b in runtime_bins, "Dockerfile", f"manifests run {b}, which the image does not contain")
    cmd = stages[runtime]["cmd"] or []
    entry = stages[runtime]["entrypoint"] or []
    first = (entry or cmd or [""])[0].rsplit("/", 1)[-1]
    check(not entry, "Dockerfile", "no ENTRYPOINT: manifests choose the binary with the command")
    check(first == "tern", "Dockerfile", f"the default command must be the embedded `tern`, not {first}")
    user = (stages[runtime]["user"] or "").split(":")[0]
    check(user == str(TERN_UID), "Dockerfile", f"runtime USER must be {TERN_UID} (the manifests' runAsUser)")
    rv = args.get("RUST_VERSION", "")
    check(
        rv and tuple(map(int, rv.split("."))) >= tuple(map(int, rust_version.split(".")[:2])),
        "Dockerfile",
        f"RUST_VERSION {rv} is older than the workspace's rust-version {rust_version}",
    )
    missing = workspace_bins - runtime_bins
    summary(
        0,
        f"Dockerfile: stages {names}; image holds {sorted(runtime_bins)}"
        + (f"; workspace binaries left out: {sorted(missing)}" if missing else "")
    )
    if builds:
        print(f"REPLAY {builds[0][1]}")


def main(argv):
    what = argv[1]
    if what == "settings":
        check_settings_table()
    elif what == "k8s":
        for arg in argv[2:]:
            overlay, _, path = arg.partition("=")
            check_k8s(overlay, path)
    elif what == "compose":
        check_compose(argv[2], argv[3])
    elif what == "dockerfile":
        check_dockerfile(argv[2], argv[3], argv[4:])
    else:
        sys.exit(__doc__)
    if failures:
        print(f"{failures} of {checked} checks failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
