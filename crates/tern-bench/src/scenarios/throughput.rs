//! S0 (the bare relay) and S2 (Tern): closed-loop 1:1 throughput, with
//! every delivery checked for loss, duplication and order.

use super::{CpuMeter, Ctx, Outcome, pairs};
use crate::topology::Kind;

/// Runs the pair workload; reported as `s0` on the relay, `s2` on Tern.
pub async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Vec<Outcome>> {
    let s = ctx.scale;
    let users = ctx.pool.get(ctx.topo, 2 * s.pairs).await?;
    let scenario = if ctx.topo.kind == Kind::Relay { "s0" } else { "s2" };
    let pace = pairs::Pace::Closed { messages: s.messages, window: s.window };
    let label = format!("{scenario} {}", ctx.topo.kind.name());
    let cpu = CpuMeter::start(ctx.topo);
    let r = pairs::run(ctx.topo, &users, s.pairs, pace, &label).await?;
    let mut o = Outcome::new(scenario, ctx.topo, format!("{} pairs x {}", s.pairs, s.messages));
    o.set("delivered_per_sec", r.delivered_per_sec)
        .set("acked_per_sec", r.acked_per_sec)
        .set("pairs", s.pairs as f64)
        .set("window", s.window as f64);
    o.percentiles("latency", &r.latency);
    cpu.finish(&mut o, "msg", r.checks.delivered);
    o.checks = r.checks;
    ctx.s2_max = Some(r.delivered_per_sec);
    Ok(vec![o])
}
