//! The graph as a self-contained HTML page: inline SVG drawn on the server, no script, no
//! external asset, refreshed by `<meta http-equiv="refresh">`.
//!
//! # Layout
//!
//! Deterministic, layered left to right by call depth (Kiali's "dagre" view, simplified):
//! a node's column is the length of the longest chain of calls that reaches it (`unknown` →
//! gateway → productpage → details/reviews → ratings), rows sorted by name within a column and
//! columns centred vertically. Calls that go back or sideways are drawn as curves below.
//!
//! # What tests can find
//!
//! - a node: `<g class="node" id="node-NAME" data-node="NAME" data-status="ok|waiting|no-metrics|failed|external">`;
//! - an edge: `<g class="edge" id="edge-SRC->DST" data-edge="SRC->DST" data-health="…"
//!   data-reporter="source|destination" data-rps="…" data-error-rate="…" data-p99-ms="…">`
//!   with its label `X rps · Y% err · p99 Z ms` in a `<text class="edge-label">`;
//! - the same in the table under the drawing (`<tr data-edge="…">`, `<tr data-node="…">`).
//!
//! Every name is escaped: workload names come from other processes' labels.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use super::model::{Edge, EdgeHealth, Graph, Node, ScrapeStatus, UNKNOWN};

const NODE_W: f64 = 180.0;
const NODE_H: f64 = 54.0;
/// Room between columns for a label (`10.00 rps · 50.0% err · p99 2470 ms`, ~210 px).
const COL_W: f64 = NODE_W + 250.0;
const ROW_H: f64 = 100.0;
const MARGIN: f64 = 30.0;

/// Kiali's colours.
const GREEN: &str = "#3f9c35";
const ORANGE: &str = "#ec7a08";
const RED: &str = "#cc0000";
const GREY: &str = "#8a8d90";

/// Escapes `s` for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The edge's label: `X rps · Y% err · p99 Z ms`.
pub fn edge_label(e: &Edge) -> String {
    format!(
        "{} rps · {:.1}% err · p99 {}",
        format_rps(e.rps),
        e.error_ratio() * 100.0,
        e.p99_ms.map_or_else(|| "n/a".to_owned(), format_ms)
    )
}

fn format_rps(rps: f64) -> String {
    format!("{rps:.2}")
}

fn format_ms(ms: f64) -> String {
    if !ms.is_finite() {
        format!("{ms} ms")
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// The `id`/`data-edge` key of an edge: `SRC->DST`.
pub fn edge_key(e: &Edge) -> String {
    format!("{}->{}", e.source, e.destination)
}

fn colour(h: EdgeHealth) -> &'static str {
    match h {
        EdgeHealth::Idle => GREY,
        EdgeHealth::Healthy => GREEN,
        EdgeHealth::Degraded => ORANGE,
        EdgeHealth::Failure => RED,
    }
}

fn node_status(n: &Node) -> (&'static str, String) {
    if n.is_external() {
        let why = if n.workload == UNKNOWN {
            "callers Istio cannot name (outside the mesh)"
        } else {
            "not scraped: seen in other workloads' metrics"
        };
        return ("external", why.to_owned());
    }
    // The worst instance speaks for the node.
    let mut worst: (u8, &'static str, String) = (0, "ok", String::new());
    for i in &n.instances {
        let this = match &i.status {
            ScrapeStatus::Ok => (0, "ok", "ok".to_owned()),
            ScrapeStatus::Waiting => (1, "waiting", "waiting for a second scrape".to_owned()),
            ScrapeStatus::NoMetrics(why) => (2, "no-metrics", format!("no metrics yet: {why}")),
            ScrapeStatus::Failed(e) => (3, "failed", format!("{}: {e}", i.name)),
        };
        if this.0 >= worst.0 {
            worst = this;
        }
    }
    if worst.2.is_empty() {
        worst.2 = "ok".to_owned();
    }
    (worst.1, worst.2)
}

/// Columns and rows: the top-left corner of every node.
fn layout(g: &Graph) -> HashMap<&str, (f64, f64)> {
    let index: HashMap<&str, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.workload.as_str(), i))
        .collect();
    let n = g.nodes.len();
    let mut depth = vec![0usize; n];
    // Longest path, bounded by the node count so that cycles end.
    for _ in 0..n {
        let mut changed = false;
        for e in &g.edges {
            let (Some(&s), Some(&d)) = (
                index.get(e.source.as_str()),
                index.get(e.destination.as_str()),
            ) else {
                continue;
            };
            if s != d && depth[d] <= depth[s] && depth[s] + 1 < n {
                depth[d] = depth[s] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut columns: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        columns.entry(depth[i]).or_default().push(&node.workload);
    }
    // `unknown` first in its column, then by name (nodes are sorted by name).
    for col in columns.values_mut() {
        col.sort_by_key(|w| (*w != UNKNOWN, *w));
    }
    let tallest = columns.values().map(Vec::len).max().unwrap_or(0);
    let mut at = HashMap::new();
    for (c, (_, col)) in columns.iter().enumerate() {
        let offset = (tallest - col.len()) as f64 * ROW_H / 2.0;
        for (r, w) in col.iter().enumerate() {
            at.insert(
                *w,
                (
                    MARGIN + c as f64 * COL_W,
                    MARGIN + 20.0 + offset + r as f64 * ROW_H,
                ),
            );
        }
    }
    at
}

/// Formats a time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The page: the drawing, a legend, the time of the data and a table of nodes and edges;
/// it reloads itself every `refresh` (at least 1 s).
pub fn page(g: &Graph, refresh: Duration) -> String {
    let at = layout(g);
    let columns = at.values().map(|(x, _)| *x).fold(0.0_f64, f64::max);
    let bottom = at.values().map(|(_, y)| *y).fold(0.0_f64, f64::max);
    let width = (columns + NODE_W + MARGIN).max(480.0);
    let height = (bottom + NODE_H + ROW_H * 0.8).max(160.0);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" style="max-width:100%;height:auto" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="service graph">"#
    );
    svg.push_str("<defs>");
    for (name, c) in [
        ("idle", GREY),
        ("healthy", GREEN),
        ("degraded", ORANGE),
        ("failure", RED),
    ] {
        let _ = write!(
            svg,
            r#"<marker id="arrow-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="{c}"/></marker>"#
        );
    }
    svg.push_str("</defs>");

    // Edges first, so nodes are drawn over them.
    for e in &g.edges {
        let (Some(&(sx, sy)), Some(&(dx, dy))) =
            (at.get(e.source.as_str()), at.get(e.destination.as_str()))
        else {
            continue;
        };
        let health = e.health();
        let c = colour(health);
        let (path, lx, ly) = if e.source == e.destination {
            let (x, y) = (sx + NODE_W - 30.0, sy);
            (
                format!(
                    "M{x:.1},{y:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{y:.1}",
                    x - 10.0,
                    y - 50.0,
                    x + 40.0,
                    y - 50.0,
                    x + 30.0
                ),
                x + 15.0,
                y - 42.0,
            )
        } else if dx > sx {
            let (x1, y1, x2, y2) = (sx + NODE_W, sy + NODE_H / 2.0, dx, dy + NODE_H / 2.0);
            (
                format!("M{x1:.1},{y1:.1} L{x2:.1},{y2:.1}"),
                (x1 + x2) / 2.0,
                (y1 + y2) / 2.0 - 6.0,
            )
        } else {
            // Back or sideways: a curve under both nodes.
            let (x1, y1, x2, y2) = (
                sx + NODE_W / 2.0,
                sy + NODE_H,
                dx + NODE_W / 2.0,
                dy + NODE_H,
            );
            let cy = y1.max(y2) + ROW_H * 0.6;
            (
                format!(
                    "M{x1:.1},{y1:.1} Q{:.1},{cy:.1} {x2:.1},{y2:.1}",
                    (x1 + x2) / 2.0
                ),
                (x1 + x2) / 2.0,
                (y1.max(y2) + cy) / 2.0 + 4.0,
            )
        };
        let key = escape(&edge_key(e));
        let label = edge_label(e);
        let dash = if health == EdgeHealth::Idle {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<g class="edge {h}" id="edge-{key}" data-edge="{key}" data-source="{s}" data-destination="{d}" data-health="{h}" data-reporter="{r}" data-rps="{rps}" data-error-rate="{er}" data-client-error-rate="{cer}" data-p99-ms="{p99}"><title>{s} → {d}: {label_e} (reporter={r})</title><path d="{path}" fill="none" stroke="{c}" stroke-width="2"{dash} marker-end="url(#arrow-{h})"/><text class="edge-label" x="{lx:.1}" y="{ly:.1}" text-anchor="middle">{label_e}</text></g>"#,
            h = health.as_str(),
            s = escape(&e.source),
            d = escape(&e.destination),
            r = e.reporter.as_str(),
            rps = e.rps,
            er = e.error_ratio(),
            cer = e.client_error_ratio(),
            p99 = e.p99_ms.map_or_else(String::new, |p| p.to_string()),
            label_e = escape(&label),
        );
    }

    for n in &g.nodes {
        let Some(&(x, y)) = at.get(n.workload.as_str()) else {
            continue;
        };
        let (status, detail) = node_status(n);
        let (stroke, fill, dash) = match status {
            "ok" => ("#0066cc", "#ffffff", ""),
            "external" => (GREY, "#ffffff", r#" stroke-dasharray="5 3""#),
            _ => (GREY, "#e4e4e4", ""),
        };
        let instances = match n.instances.as_slice() {
            [] => String::new(),
            [one] => one.name.clone(),
            many => format!("{} instances", many.len()),
        };
        let sub = if instances.is_empty() {
            detail.clone()
        } else {
            instances
        };
        let name = escape(&n.workload);
        let _ = write!(
            svg,
            r#"<g class="node {status}" id="node-{name}" data-node="{name}" data-status="{status}"><title>{name}: {detail_e}</title><rect x="{x:.1}" y="{y:.1}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="2"{dash}/><text class="node-name" x="{tx:.1}" y="{ty1:.1}" text-anchor="middle">{name_s}</text><text class="node-sub" x="{tx:.1}" y="{ty2:.1}" text-anchor="middle">{sub_e}</text>"#,
            detail_e = escape(&detail),
            tx = x + NODE_W / 2.0,
            ty1 = y + 22.0,
            ty2 = y + 40.0,
            name_s = escape(&shorten(&n.workload, 24)),
            sub_e = escape(&shorten(&sub, 28)),
        );
        if status != "ok" && status != "external" {
            let _ = write!(
                svg,
                r#"<text class="node-status" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + NODE_W / 2.0,
                y + NODE_H + 14.0,
                escape(&shorten(&detail, 40))
            );
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");

    let when = match (g.at, g.interval) {
        (Some(at), Some(i)) => format!(
            "data from {}; rates over the last {:.1} s",
            utc(at),
            i.as_secs_f64()
        ),
        (Some(at), None) => format!("data from {}; rates after the next scrape", utc(at)),
        (None, _) => "no data yet".to_owned(),
    };

    let mut rows = String::new();
    for e in &g.edges {
        let _ = write!(
            rows,
            r#"<tr data-edge="{k}" class="{h}"><td>{s}</td><td>{d}</td><td>{rps}</td><td>{e5:.1}%</td><td>{e4:.1}%</td><td>{p99}</td><td>{r}</td></tr>"#,
            k = escape(&edge_key(e)),
            h = e.health().as_str(),
            s = escape(&e.source),
            d = escape(&e.destination),
            rps = format_rps(e.rps),
            e5 = e.error_ratio() * 100.0,
            e4 = e.client_error_ratio() * 100.0,
            p99 = e.p99_ms.map_or_else(|| "n/a".to_owned(), format_ms),
            r = e.reporter.as_str(),
        );
    }
    let mut node_rows = String::new();
    for n in &g.nodes {
        let (status, detail) = node_status(n);
        let instances = n
            .instances
            .iter()
            .map(|i| format!("{} ({})", escape(&i.name), escape(&i.url)))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            node_rows,
            r#"<tr data-node="{w}" class="{status}"><td>{w}</td><td>{status}</td><td>{d}</td><td>{instances}</td></tr>"#,
            w = escape(&n.workload),
            d = escape(&detail),
        );
    }
    let refresh = refresh.as_secs().max(1);

    format!(
        r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<title>Bookinfo service graph</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #151515; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
#when {{ color: #555; margin: 0 0 12px; }}
svg text {{ font-size: 12px; }}
.node-name {{ font-weight: 600; font-size: 13px; }}
.node-sub {{ fill: #555; }}
.node-status {{ fill: {RED}; font-size: 11px; }}
.node.waiting .node-status, .node.no-metrics .node-status {{ fill: #555; }}
.edge-label {{ font-size: 11px; paint-order: stroke; stroke: #fff; stroke-width: 4px; stroke-linejoin: round; }}
.legend span {{ display: inline-block; margin-right: 16px; }}
.swatch {{ display: inline-block; width: 24px; height: 3px; vertical-align: middle; margin-right: 4px; }}
table {{ border-collapse: collapse; margin-top: 12px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-size: 13px; }}
tr.degraded td {{ background: #fdf0e3; }} tr.failure td {{ background: #fbe3e3; }}
tr.failed td {{ color: {RED}; }}
</style>
</head>
<body>
<h1>Service graph</h1>
<p id="when">{when} · refreshed every {refresh} s · from each workload's own <code>istio_requests_total</code> and <code>istio_request_duration_milliseconds</code></p>
<div class="legend">
<span><i class="swatch" style="background:{GREEN}"></i>healthy</span>
<span><i class="swatch" style="background:{ORANGE}"></i>5xx ≥ 0.1% or 4xx ≥ 10%</span>
<span><i class="swatch" style="background:{RED}"></i>5xx &gt; 10% or 4xx &gt; 20%</span>
<span><i class="swatch" style="background:{GREY}"></i>idle (no requests)</span>
<span>grey box: not scraped, failing or without metrics · dashed box: only seen in others' metrics</span>
</div>
{svg}
<p>Edge labels: requests per second · share of 5xx responses · 99th percentile of the request duration.</p>
<table id="edges"><thead><tr><th>source</th><th>destination</th><th>rps</th><th>5xx</th><th>4xx</th><th>p99</th><th>reporter</th></tr></thead><tbody>{rows}</tbody></table>
<table id="nodes"><thead><tr><th>workload</th><th>status</th><th>detail</th><th>instances (metrics URL)</th></tr></thead><tbody>{node_rows}</tbody></table>
</body>
</html>
"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::model::{Instance, Reporter};

    fn edge(s: &str, d: &str, rps: f64, r5: f64, p99: Option<f64>) -> Edge {
        Edge {
            source: s.into(),
            destination: d.into(),
            reporter: Reporter::Source,
            rps,
            rps_4xx: 0.0,
            rps_5xx: r5,
            p99_ms: p99,
        }
    }

    fn node(w: &str, status: Option<ScrapeStatus>) -> Node {
        Node {
            workload: w.into(),
            instances: status
                .into_iter()
                .map(|status| Instance {
                    name: format!("{w}-12345"),
                    url: format!("http://127.0.0.1:1/{w}/metrics"),
                    status,
                })
                .collect(),
        }
    }

    fn bookinfo() -> Graph {
        Graph {
            nodes: vec![
                node("details-v1", Some(ScrapeStatus::Ok)),
                node("istio-ingressgateway", Some(ScrapeStatus::Ok)),
                node("productpage-v1", Some(ScrapeStatus::Ok)),
                node(
                    "ratings-v1",
                    Some(ScrapeStatus::Failed("connection refused".into())),
                ),
                node("reviews-v2", Some(ScrapeStatus::Ok)),
                node(UNKNOWN, None),
            ],
            edges: vec![
                edge(
                    "istio-ingressgateway",
                    "productpage-v1",
                    10.0,
                    0.0,
                    Some(12.5),
                ),
                edge("productpage-v1", "details-v1", 10.0, 1.0, Some(3.26)),
                edge("productpage-v1", "reviews-v2", 10.0, 5.0, Some(250.0)),
                edge("reviews-v2", "ratings-v1", 0.0, 0.0, None),
                edge(UNKNOWN, "istio-ingressgateway", 10.0, 0.0, None),
            ],
            at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_224_130)),
            interval: Some(Duration::from_secs(5)),
        }
    }

    #[test]
    fn labels_and_attributes() {
        let html = page(&bookinfo(), Duration::from_secs(5));
        assert!(html.contains(r#"<meta http-equiv="refresh" content="5">"#));
        assert!(
            html.contains(r#"data-edge="productpage-v1-&gt;reviews-v2""#),
            "{html}"
        );
        assert!(html.contains("10.00 rps · 50.0% err · p99 250 ms"));
        assert!(
            html.contains("10.00 rps · 10.0% err · p99 3.3 ms"),
            "{html}"
        );
        assert!(html.contains("0.00 rps · 0.0% err · p99 n/a"));
        assert!(html.contains(r#"data-node="ratings-v1" data-status="failed""#));
        assert!(html.contains("ratings-v1-12345: connection refused"));
        assert!(html.contains(r#"data-node="unknown" data-status="external""#));
        assert!(html.contains(r#"data-health="failure""#));
        assert!(html.contains(r#"data-health="degraded""#));
        assert!(html.contains(r#"data-health="idle""#));
        assert!(html.contains("2025-11-27 06:15:30 UTC"), "{html}");
        assert!(html.contains("rates over the last 5.0 s"));
        // No external asset.
        assert!(!html.contains("src=") && !html.contains("href="));
    }

    #[test]
    fn escapes_every_name() {
        let evil = r#"<script>alert("x")</script>&'"#;
        let g = Graph {
            nodes: vec![node(
                evil,
                Some(ScrapeStatus::Failed(format!("bad {evil}"))),
            )],
            edges: vec![edge(evil, evil, 1.0, 0.0, None)],
            at: None,
            interval: None,
        };
        let html = page(&g, Duration::from_secs(5));
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains(r#"alert("x")"#));
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"));
        assert!(html.contains("no data yet"));
    }

    #[test]
    fn layers_follow_call_depth() {
        let g = bookinfo();
        let at = layout(&g);
        let col = |w: &str| at[w].0;
        assert!(col(UNKNOWN) < col("istio-ingressgateway"));
        assert!(col("istio-ingressgateway") < col("productpage-v1"));
        assert!(col("productpage-v1") < col("details-v1"));
        assert_eq!(col("details-v1"), col("reviews-v2"));
        assert!(col("reviews-v2") < col("ratings-v1"));
        assert!(at["details-v1"].1 < at["reviews-v2"].1);
        // A cycle ends; the page is the same every time.
        let mut g2 = g.clone();
        g2.edges
            .push(edge("ratings-v1", "productpage-v1", 1.0, 0.0, None));
        let _ = layout(&g2);
        assert_eq!(
            page(&g2, Duration::from_secs(5)),
            page(&g2, Duration::from_secs(5))
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661);
        assert_eq!(utc(t), "2000-02-29 01:01:01 UTC");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(format_ms(0.5), "0.50 ms");
    }
}
