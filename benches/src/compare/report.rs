//! Ratios, the table, the targets of issue #10 and the chart.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Http, PathKind, Row};

/// A row's figures divided by a baseline row's (same HTTP version and mode, same run).
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Ratios {
    pub(crate) rps: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) cpu_per_req: f64,
    pub(crate) max_rss: f64,
}

fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn ratios(row: &Row, base: &Row) -> Ratios {
    Ratios {
        rps: div(row.rps, base.rps),
        p50: div(row.p50_us as f64, base.p50_us as f64),
        p90: div(row.p90_us as f64, base.p90_us as f64),
        p99: div(row.p99_us as f64, base.p99_us as f64),
        cpu_per_req: div(row.cpu_us_per_req, base.cpu_us_per_req),
        max_rss: div(row.max_rss_kb as f64, base.max_rss_kb as f64),
    }
}

fn find<'a>(rows: &'a [Row], path: PathKind, http: Http, mode: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.path == path && r.http == http && r.mode == mode)
}

/// Fills `ratio_to_bare` (every row) and `ratio_to_bare_tls` (mTLS rows).
pub(crate) fn add_ratios(rows: &mut [Row]) {
    let snapshot = rows.to_vec();
    for row in rows.iter_mut() {
        row.ratio_to_bare =
            find(&snapshot, PathKind::Bare, row.http, &row.mode).map(|b| ratios(row, b));
        if matches!(row.path, PathKind::MeshMtls | PathKind::SidecarMtls) {
            row.ratio_to_bare_tls =
                find(&snapshot, PathKind::BareTls, row.http, &row.mode).map(|b| ratios(row, b));
        }
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(v) if v.is_finite() => format!("{v:.2}×"),
        _ => "-".to_owned(),
    }
}

/// The table printed on stdout, with the targets after it.
pub(crate) fn table(rows: &[Row], summary: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "\ncompare: {summary}");
    let _ = writeln!(
        t,
        "CPU is user + system time of all the path's processes (client = load generator + its client library, server, proxies) per request; RSS is the largest peak (VmHWM) of them; ratios are to `bare` (mTLS paths: `/tls` to `bare-tls`) in the same HTTP version and mode."
    );
    let mut groups: Vec<(Http, String)> = Vec::new();
    for r in rows {
        if !groups.iter().any(|(h, m)| *h == r.http && *m == r.mode) {
            groups.push((r.http, r.mode.clone()));
        }
    }
    for (http, mode) in &groups {
        let _ = writeln!(t, "\n{} {}", http.label(), mode);
        let _ = writeln!(
            t,
            "{:<13} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9}",
            "path",
            "req/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "CPU µs",
            "RSS MB",
            "errors",
            "rps/bare",
            "CPU/bare",
            "p99/bare",
            "CPU/tls"
        );
        for r in rows.iter().filter(|r| r.http == *http && r.mode == *mode) {
            let rb = r.ratio_to_bare;
            let _ = writeln!(
                t,
                "{:<13} {:>9.0} {:>7} {:>7} {:>7} {:>8.1} {:>8.1} {:>7} {:>8} {:>8} {:>8} {:>9}",
                r.path.name(),
                r.rps,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.cpu_us_per_req,
                r.max_rss_kb as f64 / 1024.0,
                r.errors,
                fmt_ratio(rb.map(|x| x.rps)),
                fmt_ratio(rb.map(|x| x.cpu_per_req)),
                fmt_ratio(rb.map(|x| x.p99)),
                fmt_ratio(r.ratio_to_bare_tls.map(|x| x.cpu_per_req)),
            );
        }
    }
    let _ = writeln!(t, "\nper process, CPU µs per request / peak RSS MB:");
    for r in rows {
        let procs: Vec<String> = r
            .processes
            .iter()
            .map(|p| {
                format!(
                    "{} {:.1} / {:.1}",
                    p.role,
                    p.cpu_us_per_req,
                    p.max_rss_kb as f64 / 1024.0
                )
            })
            .collect();
        let _ = writeln!(
            t,
            "  {:<13} {:<9} {:<11} {}",
            r.path.name(),
            r.http.label(),
            r.mode,
            procs.join(", ")
        );
    }
    let targets = targets(rows);
    if !targets.is_empty() {
        let _ = writeln!(t, "\ntargets (issue #10):");
        for line in targets {
            let _ = writeln!(t, "  {line}");
        }
    }
    t
}

/// The issue's targets, each with the figures it was judged on.
pub(crate) fn targets(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let verdict = |ok: bool| if ok { "MET   " } else { "MISSED" };
    for http in [Http::H1, Http::H2] {
        let sat = "saturation";
        for (mesh, base, limit) in [
            (PathKind::Mesh, PathKind::Bare, 1.15),
            (PathKind::MeshMtls, PathKind::BareTls, 1.15),
        ] {
            if let (Some(m), Some(b)) = (find(rows, mesh, http, sat), find(rows, base, http, sat)) {
                let r = m.cpu_us_per_req / b.cpu_us_per_req;
                out.push(format!(
                    "{} {} {}: CPU per request {:.1} vs {} {:.1} µs = {r:.2}× (target ≤ {limit:.2}×{})",
                    verdict(r <= limit),
                    http.label(),
                    mesh.name(),
                    m.cpu_us_per_req,
                    base.name(),
                    b.cpu_us_per_req,
                    if r > limit {
                        format!(", over by {:.0} %", (r / limit - 1.0) * 100.0)
                    } else {
                        String::new()
                    }
                ));
            }
        }
        for (mesh, sidecar) in [
            (PathKind::Mesh, PathKind::Sidecar),
            (PathKind::MeshMtls, PathKind::SidecarMtls),
        ] {
            if let (Some(m), Some(s)) =
                (find(rows, mesh, http, sat), find(rows, sidecar, http, sat))
            {
                // Throughput at the same CPU: requests per CPU-second of all the processes.
                let r = s.cpu_us_per_req / m.cpu_us_per_req;
                out.push(format!(
                    "{} {} {} vs {}: {:.0} vs {:.0} requests per CPU-second = {r:.2}× (target ≥ 3×; saturation req/s {:.0} vs {:.0} = {:.2}×)",
                    verdict(r >= 3.0),
                    http.label(),
                    mesh.name(),
                    sidecar.name(),
                    1e6 / m.cpu_us_per_req,
                    1e6 / s.cpu_us_per_req,
                    m.rps,
                    s.rps,
                    m.rps / s.rps
                ));
            }
        }
        for (mesh, base) in [
            (PathKind::Mesh, PathKind::Bare),
            (PathKind::MeshMtls, PathKind::BareTls),
        ] {
            let mode = "rate-1000";
            if let (Some(m), Some(b)) = (find(rows, mesh, http, mode), find(rows, base, http, mode))
            {
                let p50 = m.p50_us as i64 - b.p50_us as i64;
                let p99 = m.p99_us as i64 - b.p99_us as i64;
                out.push(format!(
                    "{} {} {} at 1,000 req/s: added p50 {p50} µs (target ≤ 25), added p99 {p99} µs (target ≤ 100) over {}",
                    verdict(p50 <= 25 && p99 <= 100),
                    http.label(),
                    mesh.name(),
                    base.name()
                ));
            }
        }
    }
    out
}

const COLORS: [(&str, &str); 6] = [
    ("bare", "#4c78a8"),
    ("mesh", "#f58518"),
    ("bare-tls", "#72b7b2"),
    ("mesh-mtls", "#e45756"),
    ("sidecar", "#54a24b"),
    ("sidecar-mtls", "#b279a2"),
];

fn color(path: PathKind) -> &'static str {
    COLORS
        .iter()
        .find(|(n, _)| *n == path.name())
        .map_or("#888888", |(_, c)| c)
}

/// One panel: a grouped bar chart of `value` per path, one group per (HTTP version, mode).
fn panel(
    svg: &mut String,
    rows: &[Row],
    y0: f64,
    title: &str,
    groups: &[(Http, String)],
    value: &dyn Fn(&Row) -> f64,
) {
    const W: f64 = 900.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 70.0;
    let max = rows.iter().map(value).fold(0.0_f64, f64::max).max(1e-9);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{:.0}" font-size="14" font-weight="bold">{title}</text>"#,
        y0 + 16.0
    );
    let top = y0 + 28.0;
    let base = top + H;
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{base:.1}\" x2=\"{W:.0}\" y2=\"{base:.1}\" stroke=\"#333\"/>"
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = base - H * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.0}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text><line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{W:.0}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
            LEFT - 4.0,
            y + 3.0,
            short(v)
        );
    }
    let group_w = (W - LEFT) / groups.len().max(1) as f64;
    for (g, (http, mode)) in groups.iter().enumerate() {
        let in_group: Vec<&Row> = rows
            .iter()
            .filter(|r| r.http == *http && r.mode == *mode)
            .collect();
        let bar_w = (group_w - 20.0) / in_group.len().max(1) as f64;
        let gx = LEFT + group_w * g as f64 + 10.0;
        for (i, r) in in_group.iter().enumerate() {
            let v = value(r);
            let h = H * v / max;
            let x = gx + bar_w * i as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {} {}: {}</title></rect>"#,
                base - h,
                (bar_w - 2.0).max(1.0),
                color(r.path),
                r.path.name(),
                http.label(),
                mode,
                short(v)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{} {}</text>"#,
            gx + (group_w - 20.0) / 2.0,
            base + 14.0,
            http.label(),
            mode
        );
    }
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A panel's figure of a row.
type Figure = Box<dyn Fn(&Row) -> f64>;
/// Title, groups and figure of one panel.
type Panel<'a> = (&'a str, &'a [(Http, String)], Figure);

/// The chart: requests/s and CPU per request in saturation, p50 and p99 in rate mode.
pub(crate) fn svg(rows: &[Row]) -> String {
    let groups = |pred: &dyn Fn(&Row) -> bool| {
        let mut g: Vec<(Http, String)> = Vec::new();
        for r in rows.iter().filter(|r| pred(r)) {
            if !g.iter().any(|(h, m)| *h == r.http && *m == r.mode) {
                g.push((r.http, r.mode.clone()));
            }
        }
        g
    };
    let sat = groups(&|r| r.mode == "saturation");
    let rate = groups(&|r| r.mode != "saturation");
    let panels: Vec<Panel<'_>> = vec![
        ("requests/s, saturation", &sat, Box::new(|r: &Row| r.rps)),
        (
            "CPU µs per request (all processes of the path), saturation",
            &sat,
            Box::new(|r: &Row| r.cpu_us_per_req),
        ),
        (
            "p50 latency µs, fixed rate",
            &rate,
            Box::new(|r: &Row| r.p50_us as f64),
        ),
        (
            "p99 latency µs, fixed rate",
            &rate,
            Box::new(|r: &Row| r.p99_us as f64),
        ),
    ];
    let panels: Vec<_> = panels.into_iter().filter(|p| !p.1.is_empty()).collect();
    let height = 40.0 + 270.0 * panels.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"920\" height=\"{height:.0}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    // Legend.
    for (i, (name, c)) in COLORS.iter().enumerate() {
        let x = 70.0 + 140.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.0}" y="8" width="12" height="12" fill="{c}"/><text x="{:.0}" y="18" font-size="12">{name}</text>"#,
            x + 16.0
        );
    }
    for (i, (title, groups, value)) in panels.iter().enumerate() {
        let rows_in: Vec<Row> = rows
            .iter()
            .filter(|r| groups.iter().any(|(h, m)| *h == r.http && *m == r.mode))
            .cloned()
            .collect();
        panel(
            &mut svg,
            &rows_in,
            30.0 + 270.0 * i as f64,
            title,
            groups,
            value.as_ref(),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn median_u(v: Vec<u64>) -> u64 {
    median_f(v.into_iter().map(|x| x as f64).collect()).round() as u64
}

/// One row per (path, HTTP version, mode): the median of each figure over the rounds, the
/// largest peak RSS, the requests and errors summed.
pub(crate) fn medians(rows: Vec<Row>) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let mut seen: Vec<(PathKind, Http, String)> = Vec::new();
    for r in &rows {
        let key = (r.path, r.http, r.mode.clone());
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    for (path, http, mode) in seen {
        let same: Vec<&Row> = rows
            .iter()
            .filter(|r| r.path == path && r.http == http && r.mode == mode)
            .collect();
        let mut row = same[0].clone();
        row.rounds = same.len();
        row.requests = same.iter().map(|r| r.requests).sum();
        row.errors = same.iter().map(|r| r.errors).sum();
        row.rps = median_f(same.iter().map(|r| r.rps).collect());
        row.p50_us = median_u(same.iter().map(|r| r.p50_us).collect());
        row.p90_us = median_u(same.iter().map(|r| r.p90_us).collect());
        row.p99_us = median_u(same.iter().map(|r| r.p99_us).collect());
        row.p999_us = median_u(same.iter().map(|r| r.p999_us).collect());
        row.cpu_us_per_req = median_f(same.iter().map(|r| r.cpu_us_per_req).collect());
        for (i, p) in row.processes.iter_mut().enumerate() {
            p.cpu_us_per_req = median_f(
                same.iter()
                    .filter_map(|r| r.processes.get(i).map(|q| q.cpu_us_per_req))
                    .collect(),
            );
            p.max_rss_kb = same
                .iter()
                .filter_map(|r| r.processes.get(i).map(|q| q.max_rss_kb))
                .max()
                .unwrap_or(0);
        }
        row.max_rss_kb = same.iter().map(|r| r.max_rss_kb).max().unwrap_or(0);
        row.total_rss_kb = same.iter().map(|r| r.total_rss_kb).max().unwrap_or(0);
        out.push(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::ProcessFigures;

    fn row(path: PathKind, cpu: f64, rps: f64, p99: u64) -> Row {
        Row {
            path,
            http: Http::H1,
            mode: "saturation".to_owned(),
            rounds: 1,
            connections: 8,
            target_rps: 0,
            requests: 100,
            errors: 0,
            rps,
            p50_us: p99 / 2,
            p90_us: p99 / 2,
            p99_us: p99,
            p999_us: p99,
            cpu_us_per_req: cpu,
            max_rss_kb: 1000,
            total_rss_kb: 2000,
            processes: vec![ProcessFigures {
                role: "client",
                cpu_us_per_req: cpu,
                max_rss_kb: 1000,
            }],
            ratio_to_bare: None,
            ratio_to_bare_tls: None,
        }
    }

    #[test]
    fn medians_and_ratios() {
        let rows = vec![
            row(PathKind::Bare, 10.0, 100.0, 50),
            row(PathKind::Mesh, 12.0, 80.0, 60),
            row(PathKind::Bare, 30.0, 300.0, 70),
            row(PathKind::Mesh, 11.0, 90.0, 80),
            row(PathKind::Bare, 20.0, 200.0, 60),
            row(PathKind::Mesh, 13.0, 70.0, 70),
        ];
        let mut m = medians(rows);
        add_ratios(&mut m);
        assert_eq!(m.len(), 2);
        let bare = &m[0];
        assert_eq!((bare.rounds, bare.requests), (3, 300));
        assert_eq!(
            (bare.cpu_us_per_req, bare.rps, bare.p99_us),
            (20.0, 200.0, 60)
        );
        let mesh = &m[1];
        assert_eq!(mesh.cpu_us_per_req, 12.0);
        let r = mesh.ratio_to_bare.unwrap();
        assert!((r.cpu_per_req - 0.6).abs() < 1e-12);
        assert!((r.rps - 0.4).abs() < 1e-12);
        assert!(mesh.ratio_to_bare_tls.is_none());
        let targets = targets(&m);
        assert!(targets[0].starts_with("MET"), "{targets:?}");
    }

    #[test]
    fn svg_is_well_formed() {
        let rows = vec![
            row(PathKind::Bare, 10.0, 100.0, 50),
            row(PathKind::Mesh, 12.0, 80.0, 60),
        ];
        let s = svg(&rows);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<rect").count(), 1 + 6 + 4);
    }
}
