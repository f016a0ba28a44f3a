//! `tern-bench`: Tern's load generator and report tool. It starts the
//! system under test itself (the bare S0 relay, embedded `tern`, or the
//! distributed services and gateways) from the binaries built next to it,
//! drives scenarios S0–S7 over real WebSockets, checks every delivery
//! (loss, duplicates, order) and writes `results.json`, `report.md` and
//! SVG charts. See BENCHMARKS.md for the scenarios and the figures.

mod cli;
mod client;
mod procs;
mod relay;
mod report;
mod scenarios;
mod topology;
mod users;
mod worker;

use clap::Parser;
use cli::{Cli, Command, Run, Scale};
use indicatif::{ProgressBar, ProgressStyle};
use scenarios::{Ctx, Outcome};
use topology::{Kind, Topology};

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(label: String, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:32} {wide_bar} {pos}/{len} {per_sec} eta {eta}")
            .expect("valid progress template"),
    );
    bar.set_message(label);
    bar
}

/// The scenarios, in the order a topology runs them: S1 first so its
/// memory baseline is a fresh process, S4 after S2 whose rate it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    S0,
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
}

const ORDER: [Scenario; 7] = [
    Scenario::S1,
    Scenario::S2,
    Scenario::S4,
    Scenario::S3,
    Scenario::S5,
    Scenario::S6,
    Scenario::S7,
];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Relay { addr } => rt.block_on(relay::run(&addr)),
        Command::WorkerIdle { urls, bind, hb_secs, parallel } => {
            rt.block_on(worker::run(&urls, bind, hb_secs, parallel))
        }
        Command::S0(r) => finish(rt.block_on(bench(&[Scenario::S0], r))),
        Command::S1(r) => finish(rt.block_on(bench(&[Scenario::S1], r))),
        Command::S2(r) => finish(rt.block_on(bench(&[Scenario::S2], r))),
        Command::S3(r) => finish(rt.block_on(bench(&[Scenario::S3], r))),
        Command::S4(r) => finish(rt.block_on(bench(&[Scenario::S4], r))),
        Command::S5(r) => finish(rt.block_on(bench(&[Scenario::S5], r))),
        Command::S6(r) => finish(rt.block_on(bench(&[Scenario::S6], r))),
        Command::S7(r) => finish(rt.block_on(bench(&[Scenario::S7], r))),
        Command::All(r) => {
            let all = [Scenario::S0, Scenario::S1, Scenario::S2, Scenario::S3]
                .into_iter()
                .chain([Scenario::S4, Scenario::S5, Scenario::S6, Scenario::S7])
                .collect::<Vec<_>>();
            finish(rt.block_on(bench(&all, r)))
        }
    }
}

/// Exits non-zero when any delivery check failed.
fn finish(result: anyhow::Result<bool>) -> anyhow::Result<()> {
    if !result? {
        eprintln!("some checks failed; see report.md");
        std::process::exit(1);
    }
    Ok(())
}

/// Runs `wanted` on every chosen topology; `Ok(true)` when every check held.
async fn bench(wanted: &[Scenario], run: Run) -> anyhow::Result<bool> {
    let scale = if run.smoke {
        Scale::smoke(run.scale.gateways, run.scale.database)
    } else {
        run.scale.clone()
    };
    std::fs::create_dir_all(&run.out)?;
    procs::snapshot(&run.out)?;
    eprintln!("receivers ack {}", client::ACK_POLICY);
    let mut outcomes: Vec<Outcome> = Vec::new();
    // The relay runs S0 (and S1, as a memory baseline) whenever a figure
    // will be compared with it.
    let mut relay_plan = Vec::new();
    if wanted.iter().any(|s| matches!(s, Scenario::S0 | Scenario::S2 | Scenario::S4)) {
        relay_plan.push(Scenario::S2);
    }
    if wanted.contains(&Scenario::S1) {
        relay_plan.push(Scenario::S1);
    }
    let mut plan = vec![];
    if !relay_plan.is_empty() {
        plan.push((Kind::Relay, relay_plan));
    }
    let tern: Vec<Scenario> = ORDER.into_iter().filter(|s| wanted.contains(s)).collect();
    if !tern.is_empty() {
        for kind in run.topology.kinds() {
            plan.push((kind, tern.clone()));
        }
    }
    for (kind, scenarios) in plan {
        eprintln!("== {} ==", kind.name());
        let mut topo = Topology::start(kind, scale.gateways, scale.database, &run.out).await?;
        topo.settle = !run.no_quiesce;
        let mut pool = users::Pool::new();
        let mut ctx =
            Ctx { topo: &mut topo, pool: &mut pool, scale: &scale, out: &run.out, s2_max: None };
        for s in scenarios {
            let result = match s {
                Scenario::S0 | Scenario::S2 => scenarios::throughput::run(&mut ctx).await,
                Scenario::S1 => scenarios::idle::run(&mut ctx).await,
                Scenario::S3 => scenarios::fanout::run(&mut ctx).await,
                Scenario::S4 => scenarios::latency::run(&mut ctx).await,
                Scenario::S5 => scenarios::storm::run(&mut ctx).await,
                Scenario::S6 => scenarios::drain::run(&mut ctx).await,
                Scenario::S7 => scenarios::files::run(&mut ctx).await,
            };
            let got = match result {
                Ok(v) => v,
                Err(e) => {
                    let name = format!("{s:?}").to_lowercase();
                    let mut o = Outcome::new(&name, ctx.topo, "failed");
                    o.error = Some(format!("{e:#}"));
                    o.checks.errors = 1;
                    vec![o]
                }
            };
            for o in &got {
                scenarios::announce(o);
            }
            ctx.topo.save_metrics(&run.out, &format!("{s:?}").to_lowercase()).await;
            outcomes.extend(got);
            if let Err(e) = ctx.topo.check_alive() {
                eprintln!("{e:#}");
                break;
            }
        }
        topo.stop().await;
    }
    report::write(&run.out, &scale, &outcomes)?;
    eprintln!("results in {}", run.out.display());
    Ok(outcomes.iter().all(|o| o.error.is_none() && o.checks.ok()))
}
