// Runs the real `tern` binary for the browser tests: a free port, a fresh
// data folder, fast bcrypt, and a restart that keeps both.

import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const ternBinary = path.join(repoRoot, "target", "debug", "tern");

/** A port nobody listens on right now (the kernel picks it). */
async function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

export class TernServer {
  /** Starts a server; `env` adds or overrides `TERN__*` settings. */
  static async start(env = {}) {
    const server = new TernServer();
    server.port = await freePort();
    server.dataDir = await mkdtemp(path.join(os.tmpdir(), "tern-web-test-"));
    server.extraEnv = env;
    server.log = "";
    await server.#spawn();
    return server;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async #spawn() {
    // Settings inherited from the developer's shell (a MariaDB URL, say)
    // must not leak into a test server.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TERN__")));
    Object.assign(env, {
      TERN__HTTP_ADDR: `127.0.0.1:${this.port}`,
      TERN__DATA_DIR: this.dataDir,
      TERN__AUTH__BCRYPT_COST: "4",
      TERN__AUTH__INSECURE_FAST_HASHING: "true",
      RUST_LOG: "warn",
      ...this.extraEnv,
    });
    // The data folder as working directory keeps a config/tern.toml of the
    // checkout from being read.
    const child = spawn(ternBinary, [], { env, cwd: this.dataDir, stdio: ["ignore", "pipe", "pipe"] });
    const keep = (chunk) => {
      this.log = (this.log + chunk.toString()).slice(-20000);
    };
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    this.child = child;
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    child.once("error", (err) => keep(`spawn failed: ${err.message}\n`));
    await this.#waitHealthy(child);
  }

  async #waitHealthy(child, timeoutMs = 20000) {
    const deadline = Date.now() + timeoutMs;
    let exited = null;
    this.exited.then((r) => (exited = r));
    while (Date.now() < deadline) {
      if (exited || child.exitCode !== null) {
        throw new Error(`tern exited before it was healthy (${JSON.stringify(exited)}):\n${this.log}`);
      }
      try {
        const res = await fetch(`${this.url}/health`);
        if (res.ok) return;
      } catch {
        // Not listening yet.
      }
      await sleep(50);
    }
    throw new Error(`tern was not healthy within ${timeoutMs} ms:\n${this.log}`);
  }

  /** SIGTERM, then wait for the process to end (SIGKILL if it hangs). */
  async stop() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    // An unref'd timer, so a quick exit does not keep Node waiting for it.
    const ended = await Promise.race([this.exited, sleep(15000, "timeout", { ref: false })]);
    if (ended === "timeout") {
      child.kill("SIGKILL");
      await this.exited;
      throw new Error("tern did not stop within 15 s of SIGTERM");
    }
  }

  /** Starts again on the same port and data folder after `stop`. */
  async start() {
    if (this.child) throw new Error("already running");
    await this.#spawn();
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  async close() {
    await this.stop().catch(() => {});
    await rm(this.dataDir, { recursive: true, force: true });
  }

  /** One HTTP API call; answers the JSON body or throws with the error code. */
  async api(method, route, body, token) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(this.url + route, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const err = new Error(`${method} ${route}: ${res.status} ${JSON.stringify(data)}`);
      err.code = data?.error?.code;
      throw err;
    }
    return data;
  }

  /** Registers a user and logs in: `{token, user_id, username, …}`. */
  async register(username, password = "password1") {
    await this.api("POST", "/api/register", { username, password });
    return this.api("POST", "/api/login", { username, password });
  }
}
