//! The `compare` binary end to end, in seconds: a very short run of a few paths, checking the
//! JSON it writes (what CI runs so the comparison bench never rots).

use std::{path::Path, process::Command};

use serde_json::Value;

fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(args: &[&str], dir: &Path) -> Vec<Value> {
    let json = dir.join("out.json");
    let svg = dir.join("out.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "compare failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("req/s"), "no table on stdout:\n{stdout}");
    let chart = std::fs::read_to_string(&svg).expect("the SVG chart");
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    let rows: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON"))
        .expect("valid JSON");
    rows.as_array().expect("a list").clone()
}

fn f(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {row}"))
}

fn find<'a>(rows: &'a [Value], path: &str, mode: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["path"] == path && r["mode"] == mode)
        .unwrap_or_else(|| panic!("no row for {path} {mode}"))
}

/// Every path asked for is present in both modes with sane figures, and the ratios are the
/// values divided by bare's.
#[test]
fn short_run_reports_every_path_with_consistent_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = haproxy_installed();
    let mut paths = vec!["bare", "mesh", "mesh-mtls"];
    if sidecar {
        paths.push("sidecar");
    } else {
        eprintln!("haproxy is not installed: the sidecar path is not tested");
    }
    let paths_arg = paths.join(",");
    let rows = run(
        &[
            "--paths",
            &paths_arg,
            "--http",
            "1",
            "--rounds",
            "1",
            "--duration",
            "700ms",
            "--warmup",
            "200ms",
            "--connections",
            "2",
            "--rates",
            "500",
        ],
        dir.path(),
    );
    assert_eq!(rows.len(), paths.len() * 2, "{rows:#?}");
    for path in &paths {
        for mode in ["saturation", "rate-500"] {
            let row = find(&rows, path, mode);
            assert_eq!(row["http"], "1.1");
            assert!(f(row, "rps") > 0.0, "{row}");
            assert!(f(row, "p50_us") <= f(row, "p99_us"), "{row}");
            assert!(f(row, "p50_us") >= 1.0, "{row}");
            assert!(f(row, "cpu_us_per_req") > 0.0, "{row}");
            assert!(f(row, "max_rss_kb") > 0.0, "{row}");
            assert_eq!(row["errors"], 0, "{row}");
            let procs = row["processes"].as_array().unwrap();
            let expected = if path.starts_with("sidecar") { 4 } else { 2 };
            assert_eq!(procs.len(), expected, "{row}");
            let cpu_sum: f64 = procs.iter().map(|p| f(p, "cpu_us_per_req")).sum();
            assert!((cpu_sum - f(row, "cpu_us_per_req")).abs() < 1e-6);
            let bare = find(&rows, "bare", mode);
            let ratios = &row["ratio_to_bare"];
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
            assert!(close(
                f(ratios, "cpu_per_req"),
                f(row, "cpu_us_per_req") / f(bare, "cpu_us_per_req")
            ));
            assert!(close(f(ratios, "rps"), f(row, "rps") / f(bare, "rps")));
            assert!(close(
                f(ratios, "p99"),
                f(row, "p99_us") / f(bare, "p99_us")
            ));
        }
        // In the open loop the offered rate is what is achieved (within the drain time).
        let rate = find(&rows, path, "rate-500");
        assert!(f(rate, "rps") > 300.0 && f(rate, "rps") <= 520.0, "{rate}");
    }
    if sidecar {
        // The sidecar path has two proxies in it.
        let roles: Vec<&str> = find(&rows, "sidecar", "saturation")["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["role"].as_str().unwrap())
            .collect();
        assert!(roles.contains(&"proxy-in") && roles.contains(&"proxy-out"));
    }
}

/// HTTP/2 and the mutual-TLS sidecar (HAProxy verifying the mesh CA's client certificates).
#[test]
fn http2_and_sidecar_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = vec!["bare", "bare-tls"];
    if haproxy_installed() {
        paths.push("sidecar-mtls");
    }
    let paths_arg = paths.join(",");
    let rows = run(
        &[
            "--paths",
            &paths_arg,
            "--http",
            "2",
            "--modes",
            "saturation",
            "--rounds",
            "1",
            "--duration",
            "700ms",
            "--warmup",
            "200ms",
            "--connections",
            "2",
        ],
        dir.path(),
    );
    assert_eq!(rows.len(), paths.len());
    for row in &rows {
        assert_eq!(row["http"], "2");
        assert!(f(row, "rps") > 0.0);
        assert_eq!(row["errors"], 0, "{row}");
    }
    if paths.contains(&"sidecar-mtls") {
        let row = find(&rows, "sidecar-mtls", "saturation");
        let r = &row["ratio_to_bare_tls"];
        let bare_tls = find(&rows, "bare-tls", "saturation");
        assert!(
            (f(r, "cpu_per_req") - f(row, "cpu_us_per_req") / f(bare_tls, "cpu_us_per_req")).abs()
                < 1e-9
        );
    }
}

/// A path that cannot run is reported by name, and bad arguments are refused.
#[test]
fn missing_haproxy_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args([
            "--paths",
            "sidecar",
            "--require-sidecar",
            "--haproxy",
            "/nonexistent/haproxy",
            "--duration",
            "100ms",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/haproxy"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(["--paths", "sidecar", "--haproxy", "/nonexistent/haproxy"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install -y haproxy"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(["--duration", "0s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
