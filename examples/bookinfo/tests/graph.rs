//! The service graph end to end: fake Bookinfo workloads serve Istio's metrics (Prometheus
//! text, counters growing between scrapes), a `GraphCollector` scrapes them, serves
//! `/graph`, and real headless Chromium renders the page; every node and edge must be in
//! its DOM with the right label.
//!
//! Needs Debian's `chromium` (`apt-get install chromium`; `scripts/test` installs it). The
//! test fails, rather than skips, without it.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

mod support;

use axum::{Router, routing::get};
use bookinfo::graph::{GraphCollector, Target};
use support::rendered_svg_page;
use tokio::net::TcpListener;

/// One series of calls a fake workload reports, per scrape.
struct Calls {
    reporter: &'static str,
    source: &'static str,
    destination: &'static str,
    /// `(response_code, requests per scrape)`.
    codes: &'static [(&'static str, u64)],
    /// `(le, cumulative observations per scrape)`, the last `+Inf`.
    buckets: &'static [(&'static str, u64)],
}

/// A fake workload: its series grow by the same amount at every scrape, 10 s apart by their
/// timestamps, so every rate is exact.
struct Fake {
    scrapes: AtomicU64,
    calls: Vec<Calls>,
}

const T0_MS: u64 = 1_764_000_000_000;

fn app_of(workload: &str) -> (&str, &str) {
    match workload.rsplit_once('-') {
        Some((app, v)) if v.starts_with('v') => (app, v),
        _ => (workload, "unknown"),
    }
}

impl Fake {
    fn exposition(&self) -> String {
        let n = self.scrapes.fetch_add(1, Ordering::SeqCst) + 1;
        let ts = T0_MS + n * 10_000;
        let mut out = String::from(
            "# HELP istio_requests_total Total requests.\n# TYPE istio_requests_total counter\n",
        );
        let labels = |c: &Calls| {
            let (sapp, sver) = app_of(c.source);
            let (dapp, dver) = app_of(c.destination);
            format!(
                "reporter=\"{}\",source_workload=\"{}\",source_workload_namespace=\"default\",source_app=\"{sapp}\",source_version=\"{sver}\",source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-{sapp}\",destination_workload=\"{}\",destination_workload_namespace=\"default\",destination_app=\"{dapp}\",destination_version=\"{dver}\",destination_service=\"{dapp}.default.svc.cluster.local\",destination_service_name=\"{dapp}\",request_protocol=\"http\",connection_security_policy=\"unknown\"",
                c.reporter, c.source, c.destination
            )
        };
        for c in &self.calls {
            for (code, per) in c.codes {
                let flags = if code.starts_with('5') { "URX" } else { "-" };
                let _ = writeln!(
                    out,
                    "istio_requests_total{{{},response_code=\"{code}\",response_flags=\"{flags}\"}} {} {ts}",
                    labels(c),
                    1000 + n * per
                );
            }
        }
        out.push_str("# HELP istio_request_duration_milliseconds Request duration.\n# TYPE istio_request_duration_milliseconds histogram\n");
        for c in &self.calls {
            let l = labels(c);
            for (le, per) in c.buckets {
                let _ = writeln!(
                    out,
                    "istio_request_duration_milliseconds_bucket{{{l},le=\"{le}\"}} {} {ts}",
                    500 + n * per
                );
            }
            let total = c.buckets.last().map_or(0, |b| b.1);
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_sum{{{l}}} {}\nistio_request_duration_milliseconds_count{{{l}}} {}",
                n * total * 7,
                500 + n * total
            );
        }
        // Something the graph ignores, with a tricky label value.
        let _ = writeln!(
            out,
            "# TYPE process_info gauge\nprocess_info{{cmdline=\"bookinfo \\\"x\\\"\\\\y\\nz\"}} 1"
        );
        out
    }
}

/// Bookinfo's traffic, reported as Istio's proxies would: each caller with
/// `reporter="source"`, each callee with `reporter="destination"` (different numbers, so a
/// graph that used them instead would show it).
fn bookinfo() -> Vec<(&'static str, Vec<Calls>)> {
    const OK100: &[(&str, u64)] = &[("200", 100)];
    vec![
        (
            "istio-ingressgateway",
            vec![
                Calls {
                    reporter: "destination",
                    source: "unknown",
                    destination: "istio-ingressgateway",
                    codes: OK100,
                    buckets: &[("5", 50), ("10", 100), ("+Inf", 100)],
                },
                Calls {
                    reporter: "source",
                    source: "istio-ingressgateway",
                    destination: "productpage-v1",
                    codes: OK100,
                    buckets: &[("10", 90), ("25", 100), ("+Inf", 100)],
                },
            ],
        ),
        (
            "productpage-v1",
            vec![
                Calls {
                    reporter: "destination",
                    source: "istio-ingressgateway",
                    destination: "productpage-v1",
                    codes: &[("200", 999)],
                    buckets: &[("1", 999), ("+Inf", 999)],
                },
                Calls {
                    reporter: "source",
                    source: "productpage-v1",
                    destination: "details-v1",
                    codes: &[("200", 95), ("503", 5)],
                    buckets: &[("1", 50), ("5", 100), ("+Inf", 100)],
                },
                Calls {
                    reporter: "source",
                    source: "productpage-v1",
                    destination: "reviews-v1",
                    codes: &[("200", 30)],
                    buckets: &[("5", 15), ("10", 30), ("+Inf", 30)],
                },
                Calls {
                    reporter: "source",
                    source: "productpage-v1",
                    destination: "reviews-v2",
                    codes: &[("200", 30)],
                    buckets: &[("100", 10), ("250", 30), ("+Inf", 30)],
                },
                Calls {
                    reporter: "source",
                    source: "productpage-v1",
                    destination: "reviews-v3",
                    codes: &[("200", 20), ("500", 20)],
                    buckets: &[("1000", 20), ("2500", 40), ("+Inf", 40)],
                },
            ],
        ),
        (
            "details-v1",
            vec![Calls {
                reporter: "destination",
                source: "productpage-v1",
                destination: "details-v1",
                codes: &[("200", 1)],
                buckets: &[("+Inf", 1)],
            }],
        ),
        (
            "reviews-v1",
            vec![Calls {
                reporter: "destination",
                source: "productpage-v1",
                destination: "reviews-v1",
                codes: &[("200", 1)],
                buckets: &[("+Inf", 1)],
            }],
        ),
        (
            "reviews-v2",
            vec![
                Calls {
                    reporter: "destination",
                    source: "productpage-v1",
                    destination: "reviews-v2",
                    codes: &[("200", 1)],
                    buckets: &[("+Inf", 1)],
                },
                Calls {
                    reporter: "source",
                    source: "reviews-v2",
                    destination: "ratings-v1",
                    codes: &[("200", 30)],
                    buckets: &[("1", 30), ("+Inf", 30)],
                },
            ],
        ),
        (
            "reviews-v3",
            vec![
                Calls {
                    reporter: "destination",
                    source: "productpage-v1",
                    destination: "reviews-v3",
                    codes: &[("200", 1)],
                    buckets: &[("+Inf", 1)],
                },
                Calls {
                    reporter: "source",
                    source: "reviews-v3",
                    destination: "ratings-v1",
                    codes: &[("200", 40)],
                    buckets: &[("10", 39), ("+Inf", 40)],
                },
            ],
        ),
        (
            "ratings-v1",
            vec![Calls {
                reporter: "destination",
                source: "reviews-v2",
                destination: "ratings-v1",
                codes: &[("200", 1)],
                buckets: &[("+Inf", 1)],
            }],
        ),
    ]
}

/// The edges and labels the page must show: rate per scrape / 10 s; p99 by
/// `histogram_quantile` over the per-scrape bucket increments.
const EXPECTED: &[(&str, &str, &str)] = &[
    (
        "unknown",
        "istio-ingressgateway",
        "10.00 rps · 0.0% err · p99 9.9 ms",
    ),
    (
        "istio-ingressgateway",
        "productpage-v1",
        "10.00 rps · 0.0% err · p99 23.5 ms",
    ),
    (
        "productpage-v1",
        "details-v1",
        "10.00 rps · 5.0% err · p99 4.9 ms",
    ),
    (
        "productpage-v1",
        "reviews-v1",
        "3.00 rps · 0.0% err · p99 9.9 ms",
    ),
    (
        "productpage-v1",
        "reviews-v2",
        "3.00 rps · 0.0% err · p99 248 ms",
    ),
    (
        "productpage-v1",
        "reviews-v3",
        "4.00 rps · 50.0% err · p99 2470 ms",
    ),
    (
        "reviews-v2",
        "ratings-v1",
        "3.00 rps · 0.0% err · p99 0.99 ms",
    ),
    (
        "reviews-v3",
        "ratings-v1",
        "4.00 rps · 0.0% err · p99 10.0 ms",
    ),
];

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// Undoes the entities Chromium's serializer writes in text and attributes.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_every_workload_and_call() {
    let mut targets = Vec::new();
    for (workload, calls) in bookinfo() {
        let fake = Arc::new(Fake {
            scrapes: AtomicU64::new(0),
            calls,
        });
        let addr = serve(Router::new().route(
            "/metrics",
            get(move || {
                let fake = fake.clone();
                async move { fake.exposition() }
            }),
        ))
        .await;
        targets.push(Target {
            workload: workload.to_owned(),
            instance: format!("{workload}-0a1b2"),
            url: format!("http://{addr}/metrics"),
        });
    }
    // A workload without a metrics endpoint yet (404), and one that is down.
    let no_metrics = serve(Router::new()).await;
    targets.push(Target {
        workload: "details-v2".into(),
        instance: "details-v2-3c4d5".into(),
        url: format!("http://{no_metrics}/metrics"),
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    targets.push(Target {
        workload: "httpbin-v1".into(),
        instance: "httpbin-v1-6e7f8".into(),
        url: format!("http://{closed}/metrics"),
    });

    let collector = GraphCollector::new(move || targets.clone(), Duration::from_millis(200));
    let task = collector.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let g = collector.graph();
        if g.edges.len() == EXPECTED.len() && g.edges.iter().all(|e| e.rps > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the graph is incomplete after 20 s: {g:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = serve(collector.router()).await;

    let dom = rendered_svg_page(&format!("http://{page}/graph")).await;
    task.abort();
    let dom = unescape(&dom);

    for workload in [
        "unknown",
        "istio-ingressgateway",
        "productpage-v1",
        "details-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
        "ratings-v1",
        "details-v2",
        "httpbin-v1",
    ] {
        assert!(
            dom.contains(&format!("id=\"node-{workload}\" data-node=\"{workload}\"")),
            "node {workload} missing from the DOM:\n{dom}"
        );
    }
    let status = |w: &str| {
        let at = dom
            .find(&format!("data-node=\"{w}\" data-status=\""))
            .unwrap_or_else(|| panic!("no status for {w}:\n{dom}"));
        let rest = &dom[at..];
        let start = rest.find("data-status=\"").unwrap() + "data-status=\"".len();
        rest[start..].split('"').next().unwrap().to_owned()
    };
    assert_eq!(status("productpage-v1"), "ok");
    assert_eq!(status("unknown"), "external");
    assert_eq!(status("details-v2"), "no-metrics");
    assert_eq!(status("httpbin-v1"), "failed");
    assert!(dom.contains("no metrics yet: HTTP 404 from"), "{dom}");
    assert!(
        dom.contains(&format!("httpbin-v1-6e7f8: GET http://{closed}/metrics")),
        "{dom}"
    );

    for (source, destination, label) in EXPECTED {
        let key = format!("data-edge=\"{source}->{destination}\"");
        let at = dom
            .find(&key)
            .unwrap_or_else(|| panic!("edge {source} -> {destination} missing:\n{dom}"));
        let group = &dom[at..];
        let group = &group[..group.find("</g>").unwrap_or(group.len())];
        assert!(
            group.contains(&format!(">{label}</text>")),
            "edge {source} -> {destination}: expected label {label:?} in\n{group}"
        );
    }
    // The gateway → productpage edge uses the gateway's numbers, not productpage's.
    assert!(dom.contains("data-reporter=\"source\""));
    assert!(!dom.contains("99.90 rps"));
    // Colours by Kiali's tolerances.
    let health = |s: &str, d: &str| {
        let at = dom.find(&format!("data-edge=\"{s}->{d}\"")).unwrap();
        let rest = &dom[at..];
        let start = rest.find("data-health=\"").unwrap() + "data-health=\"".len();
        rest[start..].split('"').next().unwrap().to_owned()
    };
    assert_eq!(health("productpage-v1", "reviews-v3"), "failure");
    assert_eq!(health("productpage-v1", "details-v1"), "degraded");
    assert_eq!(health("productpage-v1", "reviews-v2"), "healthy");
    assert!(dom.contains("data from 20"), "no time of the data:\n{dom}");
    assert!(dom.contains("http-equiv=\"refresh\""));
}
