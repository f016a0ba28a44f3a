//! Two small line charts as hand-written SVG (no plotting crate needed for
//! a few polylines): S4 latency percentiles by load level, and S4
//! delivered rate against offered rate.

use crate::scenarios::Outcome;
use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"];

type Series = (String, Vec<(f64, f64)>);

/// P50/P99/P99.9/max of S4 against the load level, per topology (log y).
pub fn latency(outcomes: &[Outcome]) -> String {
    let mut series: Vec<Series> = Vec::new();
    for topo in topologies(outcomes) {
        for (p, key) in [
            ("P50", "latency_p50_ms"),
            ("P99", "latency_p99_ms"),
            ("P99.9", "latency_p999_ms"),
            ("max", "latency_max_ms"),
        ] {
            let points = s4(outcomes, &topo)
                .filter_map(|o| Some((o.get("load_pct")?, o.get(key)?.max(0.001))))
                .collect();
            series.push((format!("{topo} {p}"), points));
        }
    }
    chart(
        "S4 latency from intended send time",
        "offered load, % of S2 max",
        "ms (log)",
        &series,
        true,
    )
}

/// Delivered against offered messages/s in S4, with the ideal diagonal.
pub fn throughput(outcomes: &[Outcome]) -> String {
    let mut series: Vec<Series> = Vec::new();
    let mut top: f64 = 1.0;
    for topo in topologies(outcomes) {
        let points: Vec<(f64, f64)> = s4(outcomes, &topo)
            .filter_map(|o| Some((o.get("offered_per_sec")?, o.get("delivered_per_sec")?)))
            .collect();
        top = points.iter().fold(top, |m, p| m.max(p.0).max(p.1));
        series.push((format!("{topo} delivered"), points));
    }
    series.push(("offered (ideal)".into(), vec![(0.0, 0.0), (top, top)]));
    chart("S4 throughput vs offered load", "offered msg/s", "delivered msg/s", &series, false)
}

fn topologies(outcomes: &[Outcome]) -> Vec<String> {
    let mut t: Vec<String> =
        outcomes.iter().filter(|o| o.scenario == "s4").map(|o| o.topology.clone()).collect();
    t.dedup();
    t
}

fn s4<'a>(outcomes: &'a [Outcome], topo: &'a str) -> impl Iterator<Item = &'a Outcome> + 'a {
    outcomes.iter().filter(move |o| o.scenario == "s4" && o.topology == topo && o.error.is_none())
}

fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series], log_y: bool) -> String {
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let fy = |y: f64| if log_y { y.max(1e-3).log10() } else { y };
    let (ly0, ly1) = if log_y {
        (fy(y0).floor(), fy(y1).ceil().max(fy(y0).floor() + 1.0))
    } else {
        (0.0, y1.max(1.0) * 1.05)
    };
    let x0 = if log_y { x0 } else { 0.0 };
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - (fy(y) - ly0) / (ly1 - ly0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        LEFT + pw / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    // Y ticks: decades on a log axis, fifths otherwise.
    let ticks: Vec<f64> = if log_y {
        (ly0 as i32..=ly1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| ly1 * i as f64 / 5.0).collect()
    };
    for t in ticks {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            super::num(t)
        );
    }
    for i in 0..=5 {
        let x = x0 + (x1 - x0) * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(x),
            TOP + ph + 18.0,
            super::num(x)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_label}</text>"#,
        LEFT + pw / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{y_label}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> =
            points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let dash = if name.contains("ideal") { r#" stroke-dasharray="4 4""# } else { "" };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let lx = W - RIGHT + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/>"#,
            lx + 20.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{name}</text>"#, lx + 26.0, ly + 4.0);
    }
    s.push_str("</svg>\n");
    s
}
