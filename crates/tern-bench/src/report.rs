//! Results on disk: `results.json` (every outcome, machine-readable),
//! `report.md` (tables, targets, ratios to S0) and two SVG charts.

mod svg;

use crate::{cli::Scale, scenarios::Outcome};
use std::{fmt::Write as _, path::Path};

/// Throughput-like figures, compared with the relay's S0 rate.
const RATES: [&str; 4] =
    ["delivered_per_sec", "deliveries_per_sec", "connects_per_sec", "drained_per_sec"];

pub fn write(out: &Path, scale: &Scale, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "tool": "tern-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "finished_unix": crate::client::now_us() / 1_000_000,
        "machine": machine(),
        "scale": scale,
        "ack_policy": crate::client::ACK_POLICY,
        "outcomes": outcomes,
    });
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(out.join("report.md"), markdown(scale, outcomes))?;
    std::fs::write(out.join("latency.svg"), svg::latency(outcomes))?;
    std::fs::write(out.join("throughput.svg"), svg::throughput(outcomes))?;
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({ "cpu": model, "cores": cores })
}

/// S0's delivered rate, the ceiling every rate is compared with.
fn s0_rate(outcomes: &[Outcome]) -> Option<f64> {
    outcomes.iter().find(|o| o.scenario == "s0").and_then(|o| o.get("delivered_per_sec"))
}

/// The relay's idle RSS per connection.
fn relay_rss(outcomes: &[Outcome]) -> Option<f64> {
    outcomes
        .iter()
        .find(|o| o.scenario == "s1" && o.topology == "relay" && o.case == "total")
        .and_then(|o| o.get("rss_per_conn_kib"))
}

/// One outcome's figure compared with S0, as "0.42× S0".
fn ratio(o: &Outcome, outcomes: &[Outcome]) -> String {
    if o.scenario == "s1" {
        return match (o.get("rss_per_conn_kib"), relay_rss(outcomes)) {
            (Some(v), Some(r)) if r > 0.0 && o.topology != "relay" => {
                format!("{:.2}× relay RSS", v / r)
            }
            _ => String::new(),
        };
    }
    let Some(s0) = s0_rate(outcomes).filter(|r| *r > 0.0) else { return String::new() };
    RATES
        .iter()
        .find_map(|k| o.get(k))
        .filter(|_| o.scenario != "s0")
        .map(|v| format!("{:.3}× S0", v / s0))
        .unwrap_or_default()
}

fn markdown(scale: &Scale, outcomes: &[Outcome]) -> String {
    let mut md = String::from("# tern-bench report\n\n");
    let m = machine();
    let _ = writeln!(
        md,
        "Machine: {} cores, {}. One run; the machine may be shared, so compare ratios \
         (to S0, measured in the same run) rather than absolute figures.\n",
        m["cores"],
        m["cpu"].as_str().unwrap_or("unknown CPU")
    );
    let _ = writeln!(md, "Scale: `{}`\n", serde_json::to_string(scale).unwrap_or_default());
    let _ = writeln!(md, "Receivers ack {}.\n", crate::client::ACK_POLICY);
    md.push_str("## Targets\n\n| target | topology | measured | met |\n|---|---|---|---|\n");
    for (target, topology, measured, met) in targets(outcomes) {
        let _ = writeln!(
            md,
            "| {target} | {topology} | {measured} | {} |",
            if met { "yes" } else { "**no**" }
        );
    }
    md.push_str("\n## Every case\n\n| scenario | topology | case | figures | vs S0 | checks |\n|---|---|---|---|---|---|\n");
    for o in outcomes {
        let figures: Vec<String> =
            o.metrics.iter().map(|(k, v)| format!("{k} {}", num(*v))).collect();
        let c = &o.checks;
        let checks = match &o.error {
            Some(e) => format!("error: {}", e.replace('|', "/").replace('\n', " ")),
            None => format!(
                "{} {}/{} lost {} dup {} order {} err {}",
                if c.ok() { "ok" } else { "**FAILED**" },
                c.delivered,
                c.expected,
                c.lost,
                c.duplicated,
                c.out_of_order,
                c.errors
            ),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {checks} |",
            o.scenario,
            o.topology,
            o.case,
            figures.join(", "),
            ratio(o, outcomes)
        );
    }
    md.push_str("\n![S4 latency percentiles](latency.svg)\n\n![S4 throughput vs offered load](throughput.svg)\n");
    md
}

/// A figure with sensible precision.
pub fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Every target of the issue that this run measured: (target, topology,
/// measured, met).
pub fn targets(outcomes: &[Outcome]) -> Vec<(String, String, String, bool)> {
    let mut rows = Vec::new();
    let s0 = s0_rate(outcomes);
    for o in outcomes.iter().filter(|o| o.error.is_none() && o.topology != "relay") {
        let t = o.topology.clone();
        match (o.scenario.as_str(), o.case.as_str()) {
            ("s1", "total") => {
                if let Some(v) = o.get("rss_per_conn_kib") {
                    let kb = v * 1024.0 / 1000.0;
                    rows.push((
                        "S1 ≤ 6 KB RSS per idle connection".into(),
                        t,
                        format!("{kb:.2} KB"),
                        kb <= 6.0,
                    ));
                }
            }
            ("s2", _) => {
                if let (Some(v), Some(s0)) = (o.get("delivered_per_sec"), s0) {
                    let want = if t == "embedded" { 0.40 } else { 0.20 };
                    let r = v / s0;
                    rows.push((
                        format!("S2 ≥ {:.0} % of the S0 relay rate", want * 100.0),
                        t,
                        format!("{:.1} % ({} msg/s vs {})", r * 100.0, num(v), num(s0)),
                        r >= want,
                    ));
                }
            }
            ("s3", "group 1000") => {
                if let Some(v) = o.get("deliveries_per_sec") {
                    rows.push((
                        "S3 ≥ 250,000 deliveries/s, 1,000 members".into(),
                        t,
                        format!("{} /s", num(v)),
                        v >= 250_000.0,
                    ));
                }
            }
            ("s4", "50%") => {
                if let (Some(p99), Some(p999)) = (o.get("latency_p99_ms"), o.get("latency_p999_ms"))
                {
                    rows.push((
                        "S4 at 50 % load: P99 ≤ 10 ms, P99.9 ≤ 25 ms".into(),
                        t,
                        format!("P99 {} ms, P99.9 {} ms", num(p99), num(p999)),
                        p99 <= 10.0 && p999 <= 25.0,
                    ));
                }
            }
            ("s5", _) => {
                if let Some(v) = o.get("connects_per_sec") {
                    rows.push((
                        "S5 ≥ 8,000 connects/s".into(),
                        t,
                        format!("{} /s", num(v)),
                        v >= 8000.0,
                    ));
                }
            }
            ("s6", case) if case.starts_with("1 x ") => {
                if let Some(v) = o.get("drain_secs") {
                    rows.push((
                        format!("S6 {} pending drained ≤ 1 s", &case[4..]),
                        t,
                        format!("{v:.3} s"),
                        v <= 1.0,
                    ));
                }
            }
            _ => {}
        }
    }
    rows
}
