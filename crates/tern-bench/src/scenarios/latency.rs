//! S4: open-loop latency at fixed fractions of S2's maximum rate. Each
//! send is scheduled in advance and its latency counts from the scheduled
//! time, so a stalled server cannot hide its stall (no coordinated
//! omission).

use super::{CpuMeter, Ctx, Outcome, pairs, throughput};

pub async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let max = match ctx.s2_max {
        Some(m) => m,
        None => {
            // No S2 figure yet in this run: measure it first.
            let s2 = throughput::run(ctx).await?;
            let m = ctx.s2_max.unwrap_or(1.0);
            out.extend(s2);
            m
        }
    };
    let s = ctx.scale;
    let users = ctx.pool.get(ctx.topo, 2 * s.pairs).await?;
    for &pct in &s.load_levels {
        let offered = max * pct as f64 / 100.0;
        let rate = offered / s.pairs as f64;
        let pace = pairs::Pace::Open { rate, secs: s.level_secs };
        let label = format!("s4 {} {pct}%", ctx.topo.kind.name());
        let cpu = CpuMeter::start(ctx.topo);
        let r = pairs::run(ctx.topo, &users, s.pairs, pace, &label).await?;
        let mut o = Outcome::new("s4", ctx.topo, format!("{pct}%"));
        o.set("load_pct", pct as f64)
            .set("offered_per_sec", offered)
            .set("delivered_per_sec", r.delivered_per_sec);
        o.percentiles("latency", &r.latency);
        cpu.finish(&mut o, "msg", r.checks.delivered);
        o.checks = r.checks;
        out.push(o);
        ctx.topo.save_metrics(ctx.out, &format!("s4-{pct}")).await;
    }
    Ok(out)
}
