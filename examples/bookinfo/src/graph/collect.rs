//! [`GraphCollector`]: scrapes every workload's metrics in the background and draws the graph
//! on demand.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::task::JoinSet;

use super::{
    model::{self, DURATION_BUCKET, Graph, REQUESTS_TOTAL, Scrape, ScrapeError, WorkloadScrapes},
    parse, render,
};

/// The largest `/metrics` answer read; a longer one is an error.
pub const MAX_BODY: usize = 16 << 20;

/// One workload instance to scrape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The workload, as Istio's labels name it (`reviews-v2`; the gateway
    /// `istio-ingressgateway`): the node it is drawn as.
    pub workload: String,
    /// The instance (`reviews-v2-3fa2c`): the key its scrapes are kept under.
    pub instance: String,
    /// Its Prometheus endpoint (`http://127.0.0.1:41235/metrics`).
    pub url: String,
}

type TargetsFn = dyn Fn() -> Vec<Target> + Send + Sync;

/// Scrapes the workloads' metrics every `interval` in a background task, keeps the last two
/// scrapes of each instance, and draws the graph on demand.
///
/// The list of targets is asked for at every round, so instances that come, go or move to
/// another port are followed. Each scrape has its own deadline (the interval, at most 3 s)
/// and they run in parallel: a workload that does not answer is drawn greyed with its error,
/// never dropped, and never delays the others or the page, which only reads what the last
/// rounds stored.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use bookinfo::graph::{GraphCollector, Target};
/// # async fn f() {
/// let collector = GraphCollector::new(
///     || vec![Target {
///         workload: "details-v1".into(),
///         instance: "details-v1-3fa2c".into(),
///         url: "http://127.0.0.1:15020/metrics".into(),
///     }],
///     Duration::from_secs(5),
/// );
/// let task = collector.spawn();
/// let app = collector.router(); // GET /graph
/// # drop((task, app));
/// # }
/// ```
#[derive(Clone)]
pub struct GraphCollector {
    inner: Arc<Inner>,
}

struct Inner {
    targets: Box<TargetsFn>,
    interval: Duration,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
    state: Mutex<BTreeMap<String, WorkloadScrapes>>,
}

impl fmt::Debug for GraphCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphCollector")
            .field("interval", &self.inner.interval)
            .field("timeout", &self.inner.timeout)
            .field("instances", &self.lock().len())
            .finish_non_exhaustive()
    }
}

// === impl GraphCollector ===

impl GraphCollector {
    /// A collector of the targets `targets` returns, scraped every `interval` (at least
    /// 100 ms) once [`spawned`](Self::spawn).
    pub fn new(
        targets: impl Fn() -> Vec<Target> + Send + Sync + 'static,
        interval: Duration,
    ) -> Self {
        let interval = interval.max(Duration::from_millis(100));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(interval.min(Duration::from_secs(3))));
        Self {
            inner: Arc::new(Inner {
                targets: Box::new(targets),
                interval,
                timeout: interval.min(Duration::from_secs(3)),
                client: Client::builder(TokioExecutor::new()).build(connector),
                state: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// How often the background task scrapes (and the page reloads).
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkloadScrapes>> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the background task: a round of scrapes at once, then one every interval
    /// (rounds that overrun are not made up). Abort the handle to stop it.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.inner.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.scrape_once().await;
            }
        })
    }

    /// One round: scrapes every target in parallel and stores the results.
    pub async fn scrape_once(&self) {
        let targets = (self.inner.targets)();
        let mut round = JoinSet::new();
        for (i, t) in targets.iter().enumerate() {
            let client = self.inner.client.clone();
            let (url, timeout) = (t.url.clone(), self.inner.timeout);
            round.spawn(async move {
                let got = match tokio::time::timeout(timeout, fetch(&client, &url)).await {
                    Ok(got) => got,
                    Err(_) => Err(ScrapeError::Failed(format!(
                        "GET {url}: no answer within {timeout:?}"
                    ))),
                };
                (i, got)
            });
        }
        let mut results: Vec<Option<Result<Scrape, ScrapeError>>> = vec![None; targets.len()];
        while let Some(joined) = round.join_next().await {
            if let Ok((i, got)) = joined
                && let Some(slot) = results.get_mut(i)
            {
                *slot = Some(got);
            }
        }
        let mut state = self.lock();
        state.retain(|instance, _| targets.iter().any(|t| &t.instance == instance));
        for (t, got) in targets.iter().zip(results) {
            let entry = state
                .entry(t.instance.clone())
                .or_insert_with(|| WorkloadScrapes {
                    workload: t.workload.clone(),
                    instance: t.instance.clone(),
                    url: t.url.clone(),
                    previous: None,
                    current: None,
                    error: None,
                });
            entry.workload.clone_from(&t.workload);
            entry.url.clone_from(&t.url);
            match got {
                Some(Ok(scrape)) => {
                    entry.previous = entry.current.take();
                    entry.current = Some(scrape);
                    entry.error = None;
                }
                Some(Err(e)) => entry.error = Some(e),
                None => {
                    entry.error = Some(ScrapeError::Failed(format!(
                        "GET {}: the scrape task failed",
                        t.url
                    )));
                }
            }
        }
    }

    /// The graph from the scrapes stored so far.
    pub fn graph(&self) -> Graph {
        let inputs: Vec<WorkloadScrapes> = self.lock().values().cloned().collect();
        model::build(&inputs)
    }

    /// The HTML page of the graph, reloading itself every interval (at least 1 s).
    pub fn page(&self) -> String {
        render::page(&self.graph(), self.inner.interval)
    }

    /// A router serving the page at `GET /graph`.
    pub fn router(&self) -> axum::Router {
        let this = self.clone();
        axum::Router::new().route(
            "/graph",
            axum::routing::get(move || {
                let this = this.clone();
                async move {
                    (
                        [(http::header::CACHE_CONTROL, "no-store")],
                        axum::response::Html(this.page()),
                    )
                }
            }),
        )
    }
}

/// `GET url`, parsed; only Istio's request metrics are kept.
async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<Scrape, ScrapeError> {
    fetch_text(client, url).await.and_then(|(at, text)| {
        let mut exposition =
            parse::parse(&text).map_err(|e| ScrapeError::Failed(format!("{url}: {e}")))?;
        exposition
            .samples
            .retain(|s| s.name == REQUESTS_TOTAL || s.name == DURATION_BUCKET);
        Ok(Scrape {
            at,
            samples: exposition.samples,
        })
    })
}

/// `GET url`: when the answer arrived and its text.
async fn fetch_text(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<(SystemTime, String), ScrapeError> {
    let failed = ScrapeError::Failed;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| failed(format!("invalid metrics URL {url:?}: {e}")))?;
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "text/plain;version=0.0.4")
        .body(Empty::new())
        .map_err(|e| failed(format!("GET {url}: {e}")))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| failed(format!("GET {url}: {}", chain(&e))))?;
    let status = resp.status();
    if status == http::StatusCode::NOT_FOUND {
        return Err(ScrapeError::NoEndpoint(format!("HTTP 404 from {url}")));
    }
    if !status.is_success() {
        return Err(failed(format!("HTTP {status} from {url}")));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| failed(format!("GET {url}: reading the body: {e}")))?
        .to_bytes();
    let at = SystemTime::now();
    let text = String::from_utf8(body.to_vec())
        .map_err(|e| failed(format!("{url}: the metrics are not UTF-8: {e}")))?;
    Ok((at, text))
}

/// An error and its sources, `a: b: c`, without repeats.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
