//! Smoke run of every scenario at tiny scale, on the embedded and the
//! distributed topology, so the tool keeps working. It asserts correctness
//! only (every case finished, nothing lost, duplicated or out of order,
//! counts add up), never timing: timing is what the tool reports, not what
//! the suite judges.
//!
//! The tool starts the Tern binaries from its own folder, so they must be
//! built first (`cargo build --workspace --bins`, as the test command does).

use serde_json::Value;
use std::{collections::BTreeSet, path::PathBuf, process::Command};

fn sibling(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tern-bench")).with_file_name(name)
}

#[test]
fn every_scenario_at_tiny_scale_delivers_everything() {
    for bin in ["tern", "tern-gateway", "tern-auth", "tern-group", "tern-message", "tern-offline"] {
        assert!(
            sibling(bin).exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            sibling(bin).display()
        );
    }
    // Beside the binaries, so the tool can hard-link them instead of
    // copying (a temporary folder may be on another file system).
    let out = tempfile::Builder::new()
        .prefix("tern-bench-smoke")
        .tempdir_in(PathBuf::from(env!("CARGO_BIN_EXE_tern-bench")).parent().unwrap())
        .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args(["all", "--smoke", "--topology", "both", "--out"])
        .arg(out.path())
        .status()
        .expect("tern-bench starts");
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("results.json")).expect("results.json written"),
    )
    .unwrap();
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(status.success(), "tern-bench failed:\n{report}");
    for chart in ["latency.svg", "throughput.svg"] {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{chart}: {svg}");
    }

    let outcomes = results["outcomes"].as_array().unwrap();
    let scale = &results["scale"];
    let mut seen = BTreeSet::new();
    for o in outcomes {
        let (scenario, topology) =
            (o["scenario"].as_str().unwrap(), o["topology"].as_str().unwrap());
        let c = &o["checks"];
        assert!(o.get("error").is_none(), "{o}");
        for field in ["lost", "duplicated", "out_of_order", "errors"] {
            assert_eq!(c[field], 0, "{field} in {o}");
        }
        assert_eq!(c["delivered"], c["expected"], "{o}");
        seen.insert(format!("{scenario} {topology}"));
        let n = |k: &str| scale[k].as_u64().unwrap();
        let expected = c["expected"].as_u64().unwrap();
        match (scenario, o["case"].as_str().unwrap()) {
            ("s0" | "s2", _) => assert_eq!(expected, n("pairs") * n("messages"), "{o}"),
            ("s1", "total") => {
                let fronts = if topology == "distributed" { n("gateways") } else { 1 };
                assert_eq!(expected, n("idle_per_process") * fronts, "{o}");
                assert!(o["metrics"]["heartbeats_answered"].as_f64().unwrap() >= expected as f64);
            }
            ("s3", case) => {
                let size: u64 = case.trim_start_matches("group ").parse().unwrap();
                assert_eq!(expected, (size - 1) * n("group_messages"), "{o}");
            }
            ("s4", _) => assert!(expected > 0, "{o}"),
            // Both cases of S7 are checked together on the download case:
            // every file uploaded, then every one fetched byte for byte.
            ("s7", case) if case.starts_with("download") => {
                assert_eq!(expected, 2 * n("files"), "{o}")
            }
            ("s5", _) => assert_eq!(expected, n("storm_clients"), "{o}"),
            ("s6", case) => {
                let (users, each) = case.split_once(" x ").unwrap();
                let (users, each): (u64, u64) = (users.parse().unwrap(), each.parse().unwrap());
                assert_eq!(expected, users * each, "{o}");
            }
            _ => {}
        }
    }
    let mut want: BTreeSet<String> = ["s0 relay", "s1 relay"].map(String::from).into();
    for topology in ["embedded", "distributed"] {
        for s in ["s1", "s2", "s3", "s4", "s5", "s6", "s7"] {
            want.insert(format!("{s} {topology}"));
        }
    }
    assert_eq!(seen, want, "every scenario ran on every topology");
}
