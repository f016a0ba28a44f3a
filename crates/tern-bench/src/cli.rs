//! The command line: one subcommand per scenario plus `all`, each with the
//! topology choice and the scale flags; `--smoke` swaps in a tiny scale.

use crate::topology::Kind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::{net::Ipv4Addr, path::PathBuf};

/// Load generator and report tool for Tern. Starts the system under test
/// from the binaries next to its own executable, drives it over real
/// sockets and writes JSON, Markdown and SVG results to `--out`.
#[derive(Debug, Parser)]
#[command(name = "tern-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// S0: the bare fastwebsockets relay, the machine's ceiling.
    S0(Run),
    /// S1: idle capacity (RSS per connection, heartbeat CPU).
    S1(Run),
    /// S2: 1:1 throughput with loss/duplicate/order checks.
    S2(Run),
    /// S3: group fan-out to 100, 1,000 and 10,000 online members.
    S3(Run),
    /// S4: open-loop latency at fractions of S2's maximum.
    S4(Run),
    /// S5: reconnect storm with resume.
    S5(Run),
    /// S6: offline drain.
    S6(Run),
    /// S7: attachments uploaded and downloaded through the store.
    S7(Run),
    /// Every scenario, S0 first, on the chosen topologies.
    All(Run),
    /// Internal: the S0 relay server (started by the tool itself).
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        addr: String,
    },
    /// Internal: an S1 worker holding idle connections.
    #[command(hide = true)]
    WorkerIdle {
        #[arg(long)]
        urls: PathBuf,
        #[arg(long)]
        bind: Ipv4Addr,
        #[arg(long)]
        hb_secs: f64,
        #[arg(long)]
        parallel: usize,
    },
}

/// Which topologies to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topologies {
    Embedded,
    Distributed,
    Both,
}

impl Topologies {
    pub fn kinds(self) -> Vec<Kind> {
        match self {
            Topologies::Embedded => vec![Kind::Embedded],
            Topologies::Distributed => vec![Kind::Distributed],
            Topologies::Both => vec![Kind::Embedded, Kind::Distributed],
        }
    }
}

/// Options of every scenario subcommand.
#[derive(Debug, Clone, Args)]
pub struct Run {
    /// Where Tern runs: one embedded process, the distributed processes, or both.
    #[arg(long, value_enum, default_value_t = Topologies::Both)]
    pub topology: Topologies,
    /// Folder for results.json, report.md, the SVG charts and process logs.
    #[arg(long, default_value = "target/tern-bench")]
    pub out: PathBuf,
    /// Tiny scale for a quick correctness run (overrides every scale flag).
    #[arg(long)]
    pub smoke: bool,
    /// Start each case without waiting for the last case's sessions to
    /// close on the server; reproduces the presence race in BENCHMARKS.md.
    #[arg(long, hide = true)]
    pub no_quiesce: bool,
    #[command(flatten)]
    pub scale: Scale,
}

/// How big each scenario is.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Scale {
    /// Gateway processes in the distributed topology.
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// The database server of the distributed topology.
    #[arg(long, value_enum, default_value_t = Database::Mariadb)]
    pub database: Database,
    /// S0/S2/S4: sender → receiver pairs.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// S0/S2: messages per sender.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// S0/S2/S6: unacknowledged sends per sender.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// S1: idle connections per front process (relay, tern or gateway).
    #[arg(long, default_value_t = 10_000)]
    pub idle_per_process: usize,
    /// S1: connections per generator worker process (open files are capped).
    #[arg(long, default_value_t = 10_000)]
    pub idle_per_worker: usize,
    /// S1: heartbeat interval of every idle connection.
    #[arg(long, default_value_t = 30.0)]
    pub hb_secs: f64,
    /// S1: how long heartbeat CPU is measured.
    #[arg(long, default_value_t = 30.0)]
    pub cpu_window_secs: f64,
    /// S3: group sizes (members including the sender).
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000, 10_000])]
    pub group_sizes: Vec<usize>,
    /// S3: messages sent to each group (enough that the figure is the
    /// steady rate, not the sessions' first writes).
    #[arg(long, default_value_t = 100)]
    pub group_messages: u64,
    /// S3: the group sender's unacknowledged sends (1 sends each message
    /// alone, after the previous one's ack).
    #[arg(long, default_value_t = 16)]
    pub group_window: usize,
    /// S4: offered load levels, percent of S2's maximum.
    #[arg(long, value_delimiter = ',', default_values_t = [25, 50, 75, 90])]
    pub load_levels: Vec<u32>,
    /// S4: seconds per load level.
    #[arg(long, default_value_t = 10.0)]
    pub level_secs: f64,
    /// S5: clients in the storm.
    #[arg(long, default_value_t = 5_000)]
    pub storm_clients: usize,
    /// S3/S5/S6 and S1 workers: connection handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_parallel: usize,
    /// S6 case A: pending messages of the one user.
    #[arg(long, default_value_t = 10_000)]
    pub drain_one: u64,
    /// S6 case B: users with a backlog.
    #[arg(long, default_value_t = 100)]
    pub drain_users: usize,
    /// S6 case B: pending messages of each.
    #[arg(long, default_value_t = 1_000)]
    pub drain_each: u64,
    /// S7: files uploaded, then downloaded.
    #[arg(long, default_value_t = 200)]
    pub files: usize,
    /// S7: size of each file, KiB.
    #[arg(long, default_value_t = 1024)]
    pub file_kib: usize,
    /// S7: uploads (and downloads) in flight at once.
    #[arg(long, default_value_t = 8)]
    pub file_parallel: usize,
}

/// A database server the distributed services can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// MariaDB or MySQL (`TERN_BENCH_MYSQL_URL`).
    Mariadb,
    /// PostgreSQL (`TERN_BENCH_POSTGRES_URL`).
    Postgres,
}

impl Scale {
    /// The tiny scale of `--smoke`: seconds, not minutes, even on debug builds.
    pub fn smoke(gateways: usize, database: Database) -> Scale {
        Scale {
            gateways,
            database,
            pairs: 4,
            messages: 40,
            window: 4,
            idle_per_process: 30,
            idle_per_worker: 20,
            hb_secs: 0.5,
            cpu_window_secs: 1.0,
            group_sizes: vec![5, 20],
            group_messages: 3,
            group_window: 2,
            load_levels: vec![25, 50, 75, 90],
            level_secs: 0.5,
            storm_clients: 20,
            connect_parallel: 10,
            drain_one: 200,
            drain_users: 5,
            drain_each: 20,
            files: 6,
            file_kib: 64,
            file_parallel: 3,
        }
    }
}
