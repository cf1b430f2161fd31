//! Telemetry end to end on a running `bookinfo up` (mutual TLS on, as by default):
//!
//! - a real Prometheus (Debian's `prometheus`, started here on a free loopback port) scrapes
//!   every workload's `/metrics`, and its query API returns `istio_requests_total` for
//!   productpage → reviews, from both reporters, with Istio's labels and counts that match
//!   the pages loaded;
//! - a real OTLP collector (`testkit::otlp`) receives the workloads' spans: a request that
//!   enters the gateway without trace headers is one trace across every hop, with parent
//!   links that form a tree rooted at the gateway; a B3-only caller is continued;
//! - the service graph at the supervisor's `/graph`, rendered by headless Chromium, shows
//!   every Bookinfo edge from the workloads' real metrics.
//!
//! Needs Debian's `prometheus` and `chromium` (`scripts/test` installs them); the test fails,
//! rather than skips, without them.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use http_body_util::Full;
use serde_json::Value;
use support::*;
use testkit::otlp::{OtlpReceiver, ReceivedSpan};

const PAGES: usize = 30;
const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// A Prometheus server scraping `targets` every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let bin = find_on_path(&["prometheus"]).unwrap_or_else(|| {
            panic!(
                "Prometheus is needed for this test: install Debian's `prometheus` (`sudo \
                 apt-get install prometheus`; scripts/test does it)"
            )
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = String::from(
            "global: { scrape_interval: 1s, evaluation_interval: 1s }\nscrape_configs:\n- job_name: bookinfo\n  metrics_path: /metrics\n  static_configs:\n  - targets:\n",
        );
        for t in targets {
            let _ = writeln!(config, "    - '{t}'");
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of an instant query that returns one sample, or `None` (no data yet).
    async fn scalar(&self, up: &Up, query: &str) -> Option<f64> {
        let rows = self.query(up, query).await?;
        let row = rows.first()?;
        row["value"][1].as_str()?.parse().ok()
    }

    async fn query(&self, up: &Up, query: &str) -> Option<Vec<Value>> {
        let url = format!("http://{}/api/v1/query?query={}", self.addr, encode(query));
        let (status, body) = up.get_url(&url).await.ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// Sums the samples of `metric` whose labels include every pair of `want`, from Prometheus
/// text read straight off a workload.
fn sum_series(text: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn admin_of<'a>(rows: &'a [Value], app: &str, version: &str) -> &'a str {
    rows.iter()
        .find(|r| r["app"] == app && (version.is_empty() || r["version"] == version))
        .and_then(|r| r["admin"].as_str())
        .unwrap_or_else(|| panic!("no {app} {version} in {rows:?}"))
}

/// GETs the page with extra headers.
async fn page_with(up: &Up, headers: &[(&str, &str)]) -> u16 {
    let mut req = http::Request::get(format!("http://{}/productpage", up.gateway));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    up.request(req.body(Full::default()).unwrap())
        .await
        .map_or(0, |(s, _, _)| s)
}

/// True once `spans` hold at least `n` spans forming a tree whose only root is the gateway's
/// server span (spans are exported as they end, the root last, in batches).
fn complete(spans: &[&ReceivedSpan], n: usize) -> bool {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
        .collect();
    spans.len() >= n
        && roots.len() == 1
        && roots[0].kind == "SERVER"
        && roots[0].service.starts_with("istio-ingressgateway")
}

/// Checks that `spans` are one trace: one root (the gateway's server span) and every other
/// span's parent among them; returns the services seen.
fn one_tree(spans: &[&ReceivedSpan]) -> BTreeSet<String> {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let trace_ids: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), 1, "several trace ids: {spans:#?}");
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
        .collect();
    assert_eq!(roots.len(), 1, "not one root: {roots:#?}");
    assert_eq!(roots[0].kind, "SERVER");
    assert!(
        roots[0].service.starts_with("istio-ingressgateway"),
        "{roots:#?}"
    );
    spans.iter().map(|s| s.service.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_traces_and_the_graph_on_a_running_bookinfo() {
    let collector = OtlpReceiver::start().await.expect("OTLP receiver");
    let endpoint = collector.endpoint();
    let mut up = Up::start(
        &["--tracing-endpoint", &endpoint, "--trace-sampling", "100"],
        &[],
    )
    .await;
    let rows = up.wait_ready().await;
    let targets: Vec<String> = rows
        .iter()
        .filter_map(|r| r["admin"].as_str())
        .map(|a| {
            a.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    assert_eq!(targets.len(), 7);
    let prometheus = Prometheus::start(&targets);

    // --- Metrics: counts read off productpage, then the same numbers through Prometheus.
    let productpage = admin_of(&rows, "productpage", "v1");
    let metrics_url = format!("{productpage}metrics");
    // Only answered calls: while the mesh starts, productpage may call reviews before it
    // listens (those calls carry a 503 and never reach reviews, so the destination side
    // cannot count them).
    let source = [
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("destination_service", REVIEWS),
        ("response_code", "200"),
    ];
    let before = sum_series(
        &up.get_url(&metrics_url).await.expect("metrics").1,
        "istio_requests_total",
        &source,
    );
    for _ in 0..PAGES {
        let (_, page, _) = up.page(None).await;
        assert!(version(&page).is_some(), "a page without reviews");
    }
    let text = up.get_url(&metrics_url).await.expect("metrics").1;
    let after = sum_series(&text, "istio_requests_total", &source);
    assert_eq!(after - before, PAGES as f64, "productpage's own count");
    // The series carry Istio's labels: the picked reviews workload, its SPIFFE id, 200.
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains(&format!("destination_service=\"{REVIEWS}\""))
        })
        .expect("a productpage -> reviews series");
    for label in [
        "source_workload_namespace=\"default\"",
        "source_app=\"productpage\"",
        "destination_service_name=\"reviews\"",
        "destination_service_namespace=\"default\"",
        "destination_app=\"reviews\"",
        "response_code=\"200\"",
        "request_protocol=\"http\"",
        "connection_security_policy=\"unknown\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-reviews\"",
    ] {
        assert!(line.contains(label), "{label} missing from {line}");
    }

    let total = |reporter: &str| {
        format!(
            "sum(istio_requests_total{{reporter=\"{reporter}\",source_workload=\"productpage-v1\",destination_service=\"{REVIEWS}\",response_code=\"200\"}})"
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut by_source, mut by_destination) = (None, None);
    while Instant::now() < deadline {
        by_source = prometheus.scalar(&up, &total("source")).await;
        by_destination = prometheus.scalar(&up, &total("destination")).await;
        if by_source == Some(after) && by_destination == Some(after) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        (by_source, by_destination),
        (Some(after), Some(after)),
        "Prometheus' totals for productpage -> reviews (both reporters) against productpage's own count; productpage's series:\n{}",
        text.lines()
            .filter(|l| l.starts_with("istio_requests_total{") && l.contains(REVIEWS))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The destination side names each reviews workload that answered, with mutual TLS.
    let by_workload = prometheus
        .query(
            &up,
            &format!(
                "sum by (destination_workload, connection_security_policy) (istio_requests_total{{reporter=\"destination\",source_workload=\"productpage-v1\",destination_service=\"{REVIEWS}\"}})"
            ),
        )
        .await
        .expect("query");
    let workloads: BTreeMap<String, String> = by_workload
        .iter()
        .map(|r| {
            (
                r["metric"]["destination_workload"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                r["metric"]["connection_security_policy"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    for v in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        assert_eq!(
            workloads.get(v).map(String::as_str),
            Some("mutual_tls"),
            "{workloads:?}"
        );
    }

    // --- Traces: one request without trace headers, found by its request id.
    let request_id = "5b0c8d6e-2f4a-4c1e-9a7b-3d2e1f0a9b8c";
    assert_eq!(page_with(&up, &[("x-request-id", request_id)]).await, 200);
    let of_request = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|s| {
                s.attributes.get("guid:x-request-id").map(String::as_str) == Some(request_id)
            })
            .cloned()
            .collect()
    };
    // gateway (server, client), productpage (server, 2 clients), details, reviews (server).
    let spans = collector
        .wait_for(Duration::from_secs(30), |s| {
            complete(&of_request(s).iter().collect::<Vec<_>>(), 7)
        })
        .await;
    let mine = of_request(&spans);
    let refs: Vec<&ReceivedSpan> = mine.iter().collect();
    let services = one_tree(&refs);
    for s in [
        "istio-ingressgateway.istio-system",
        "productpage.default",
        "details.default",
        "reviews.default",
    ] {
        assert!(services.contains(s), "no span from {s}: {services:?}");
    }
    // Every trace id the collector saw for this request is the one of the gateway's root.
    let client_to_reviews = mine
        .iter()
        .find(|s| s.kind == "CLIENT" && s.name.starts_with(&format!("{REVIEWS}:9080")))
        .unwrap_or_else(|| panic!("no client span to reviews: {mine:#?}"));
    assert_eq!(client_to_reviews.service, "productpage.default");
    assert!(
        client_to_reviews
            .attributes
            .get("upstream_cluster")
            .is_some_and(|c| c.starts_with("outbound|9080|")),
        "{client_to_reviews:#?}"
    );

    // A B3-only caller: its trace id is kept at every hop.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    assert_eq!(
        page_with(
            &up,
            &[
                ("x-b3-traceid", b3_trace),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-sampled", "1"),
            ]
        )
        .await,
        200
    );
    let spans = collector
        .wait_for(Duration::from_secs(30), |s| {
            // The caller's span is the root's parent, outside the set.
            let b3: Vec<&ReceivedSpan> = s.iter().filter(|s| s.trace_id == b3_trace).collect();
            complete(&b3, 7)
        })
        .await;
    let b3: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == b3_trace).collect();
    assert!(b3.len() >= 7, "{} spans with the B3 trace id", b3.len());
    let gateway_server = b3
        .iter()
        .find(|s| s.kind == "SERVER" && s.service.starts_with("istio-ingressgateway"))
        .expect("the gateway's server span");
    assert_eq!(gateway_server.parent_span_id, "e457b5a2e4d86bd1");

    // --- The service graph, from the workloads' real metrics, in headless Chromium.
    graph_shows_every_edge(&up).await;
    drop(prometheus);
    collector.stop().await;
}

/// True if the page has the edge `source -> destination` (`>` is written as `&gt;` in
/// attributes).
fn has_edge(html: &str, source: &str, destination: &str) -> bool {
    html.contains(&format!("data-edge=\"{source}-&gt;{destination}\""))
        || html.contains(&format!("data-edge=\"{source}->{destination}\""))
}

async fn graph_shows_every_edge(up: &Up) {
    let browser = chromium();
    let edges = [
        ("unknown", "istio-ingressgateway"),
        ("istio-ingressgateway", "productpage-v1"),
        ("productpage-v1", "details-v1"),
        ("productpage-v1", "reviews-v1"),
        ("productpage-v1", "reviews-v2"),
        ("productpage-v1", "reviews-v3"),
        ("reviews-v2", "ratings-v1"),
        ("reviews-v3", "ratings-v1"),
    ];
    // The graph needs two scrapes (5 s apart) with traffic between them for rates.
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://{}/graph", up.admin);
    loop {
        for _ in 0..6 {
            let _ = up.page(None).await;
        }
        let (_, html) = up.get_url(&url).await.expect("graph page");
        if edges.iter().all(|(s, d)| has_edge(&html, s, d)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the graph never showed every edge:\n{html}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dom = rendered_svg_page(&url).await;
    for (s, d) in edges {
        assert!(
            has_edge(&dom, s, d),
            "edge {s} -> {d} missing from the rendered page"
        );
    }
    for node in ["productpage-v1", "reviews-v3", "ratings-v1", "details-v1"] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\" data-status=\"ok\"")),
            "{node} is not shown with metrics"
        );
    }
    if let Ok(path) = std::env::var("BOOKINFO_GRAPH_SCREENSHOT") {
        let profile = tempfile::tempdir().unwrap();
        let status = tokio::process::Command::new(&browser)
            .args([
                "--headless=new",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1200,800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--screenshot={path}"))
            .arg(&url)
            .kill_on_drop(true)
            .status()
            .await
            .expect("chromium runs");
        assert!(status.success());
    }
}
