//! From two scrapes of each workload's metrics to a graph: workloads as nodes, the calls
//! between them as edges with request rate, error rates and p99 latency.
//!
//! # How an edge is computed (Kiali's conventions)
//!
//! - **Edges** are `source_workload → destination_workload` pairs of Istio's
//!   `istio_requests_total` series (a missing or empty label is `unknown`, as in Istio; a
//!   caller outside the mesh shows as the node `unknown`).
//! - **Reporter.** A call between two meshed workloads is counted twice: by the caller
//!   (`reporter="source"`) and by the callee (`reporter="destination"`). As Kiali does, an edge
//!   uses the caller's series when there are any, so a callee that is not in the mesh (or not
//!   scraped) still has its edge, and the callee's (`reporter="destination"`) otherwise, for
//!   callers that report nothing (`unknown`, a client outside the mesh). One reporter per edge:
//!   never the sum of both.
//! - **Rates** are `rate()` over the two scrapes of each workload: the increase of every series
//!   divided by the time between its two samples (their timestamps when the exposition has
//!   them, else the scrape times), summed over the series of the edge and over the replicas of
//!   a workload. A counter that went down was reset (the workload restarted): as Prometheus'
//!   `rate()` does, the increase is then the new value. A series missing from the first scrape
//!   is counted from 0 (Istio creates a series on its first request), where Prometheus would
//!   need a second sample: with only two scrapes the first requests of a new response code
//!   would otherwise go unseen.
//! - **Errors** are Kiali's: for HTTP, `response_code` 5xx are errors (the share shown on the
//!   edge) and 4xx client errors, kept apart. Kiali's default tolerances colour the edge: 5xx
//!   at 0.1 % or more is degraded (orange), over 10 % failure (red); 4xx at 10 % or more is
//!   degraded, over 20 % failure. Response flags are not counted separately: the mesh's local
//!   replies (`UO`, `UH`, `UT`, …) already carry a 5xx code.
//! - **p99** is `histogram_quantile(0.99, …)` over the increase of
//!   `istio_request_duration_milliseconds_bucket` of the same series, with Prometheus'
//!   semantics: buckets with the same `le` summed, cumulative counts made monotonic, linear
//!   interpolation inside the bucket holding the rank (from 0 for the first bucket), the
//!   highest finite bound when the rank falls in the `+Inf` bucket, nothing without requests.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, SystemTime},
};

use super::parse::Sample;

/// Istio's request counter.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
/// The buckets of Istio's request duration histogram, in milliseconds.
pub const DURATION_BUCKET: &str = "istio_request_duration_milliseconds_bucket";
/// The node of callers Istio cannot name.
pub const UNKNOWN: &str = "unknown";

/// One scrape of one workload instance: when, and the samples it returned.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// When the response arrived.
    pub at: SystemTime,
    /// Its samples (those of other metrics may be dropped: only Istio's request metrics are
    /// read).
    pub samples: Vec<Sample>,
}

/// What is known of one workload instance: its last two scrapes and whether the last attempt
/// failed.
#[derive(Clone, Debug)]
pub struct WorkloadScrapes {
    /// The workload, as Istio's `source_workload`/`destination_workload` labels name it
    /// (`reviews-v2`): the node.
    pub workload: String,
    /// The instance (`reviews-v2-3fa2c`), shown under the node.
    pub instance: String,
    /// Where its metrics are scraped.
    pub url: String,
    /// The scrape before `current`.
    pub previous: Option<Scrape>,
    /// The last successful scrape.
    pub current: Option<Scrape>,
    /// Why the last attempt failed, when it did: the instance is then left out of the rates.
    pub error: Option<ScrapeError>,
}

/// Why a scrape failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScrapeError {
    /// The workload answers but has no metrics endpoint (HTTP 404): it does not export
    /// metrics yet.
    NoEndpoint(String),
    /// Anything else: no answer, a bad status, an unreadable exposition.
    Failed(String),
}

/// How one scraped instance stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScrapeStatus {
    /// Two scrapes with Istio's metrics: its rates are in the graph.
    Ok,
    /// Not scraped twice yet.
    Waiting,
    /// It answers, without `istio_requests_total` (no traffic yet, no telemetry, no
    /// `/metrics` at all): why.
    NoMetrics(String),
    /// The last scrape failed: why.
    Failed(String),
}

/// One instance of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Its name (`reviews-v2-3fa2c`).
    pub name: String,
    /// Its metrics URL.
    pub url: String,
    /// How its scrapes went.
    pub status: ScrapeStatus,
}

/// A workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its name, as Istio's labels have it.
    pub workload: String,
    /// Its scraped instances; none for a workload only seen in labels (`unknown`, a workload
    /// that is not scraped).
    pub instances: Vec<Instance>,
}

impl Node {
    /// Whether every instance is [`ScrapeStatus::Ok`] (and there is at least one).
    pub fn is_ok(&self) -> bool {
        !self.instances.is_empty() && self.instances.iter().all(|i| i.status == ScrapeStatus::Ok)
    }

    /// Whether the node is only known from other workloads' labels.
    pub fn is_external(&self) -> bool {
        self.instances.is_empty()
    }
}

/// Which proxy's series an edge was computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reporter {
    /// The caller's (`reporter="source"`).
    Source,
    /// The callee's (`reporter="destination"`).
    Destination,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Kiali's health of an edge, from its error rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeHealth {
    /// No requests in the interval.
    Idle,
    /// Below every tolerance.
    Healthy,
    /// 5xx ≥ 0.1 % or 4xx ≥ 10 %.
    Degraded,
    /// 5xx > 10 % or 4xx > 20 %.
    Failure,
}

impl EdgeHealth {
    /// A lowercase name, for attributes and classes.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeHealth::Idle => "idle",
            EdgeHealth::Healthy => "healthy",
            EdgeHealth::Degraded => "degraded",
            EdgeHealth::Failure => "failure",
        }
    }
}

/// Calls from one workload to another.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// The caller.
    pub source: String,
    /// The callee.
    pub destination: String,
    /// Whose series these numbers come from.
    pub reporter: Reporter,
    /// Requests per second.
    pub rps: f64,
    /// Of which 4xx, per second.
    pub rps_4xx: f64,
    /// Of which 5xx, per second.
    pub rps_5xx: f64,
    /// The 99th percentile of the request duration in the interval, in milliseconds; `None`
    /// without requests or buckets.
    pub p99_ms: Option<f64>,
}

impl Edge {
    /// The share of 5xx responses, 0 to 1 (0 without requests).
    pub fn error_ratio(&self) -> f64 {
        ratio(self.rps_5xx, self.rps)
    }

    /// The share of 4xx responses, 0 to 1.
    pub fn client_error_ratio(&self) -> f64 {
        ratio(self.rps_4xx, self.rps)
    }

    /// Kiali's verdict with its default tolerances.
    pub fn health(&self) -> EdgeHealth {
        if self.rps <= 0.0 {
            return EdgeHealth::Idle;
        }
        let (e5, e4) = (
            self.error_ratio() * 100.0,
            self.client_error_ratio() * 100.0,
        );
        if e5 > 10.0 || e4 > 20.0 {
            EdgeHealth::Failure
        } else if e5 >= 0.1 || e4 >= 10.0 {
            EdgeHealth::Degraded
        } else {
            EdgeHealth::Healthy
        }
    }
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The service graph at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Every workload, by name: the scraped ones and those only named in labels.
    pub nodes: Vec<Node>,
    /// Every pair of workloads with calls, by source then destination.
    pub edges: Vec<Edge>,
    /// The time of the newest scrape.
    pub at: Option<SystemTime>,
    /// The longest interval a rate was computed over.
    pub interval: Option<Duration>,
}

impl Graph {
    /// The node named `workload`.
    pub fn node(&self, workload: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.workload == workload)
    }

    /// The edge `source → destination`.
    pub fn edge(&self, source: &str, destination: &str) -> Option<&Edge> {
        self.edges
            .iter()
            .find(|e| e.source == source && e.destination == destination)
    }
}

/// What one (source, destination, reporter) accumulates.
#[derive(Default)]
struct Acc {
    rps: f64,
    rps_4xx: f64,
    rps_5xx: f64,
    /// `le` → rate of observations at or below it.
    buckets: Vec<(f64, f64)>,
}

type SeriesKey<'a> = (&'a str, Vec<(&'a str, &'a str)>);

fn series_key(s: &Sample) -> SeriesKey<'_> {
    let mut labels: Vec<(&str, &str)> = s
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    labels.sort_unstable();
    (s.name.as_str(), labels)
}

fn workload_label<'a>(s: &'a Sample, name: &str) -> &'a str {
    s.label(name).filter(|v| !v.is_empty()).unwrap_or(UNKNOWN)
}

fn reporter(s: &Sample) -> Option<Reporter> {
    match s.label("reporter") {
        Some("source") => Some(Reporter::Source),
        Some("destination") => Some(Reporter::Destination),
        _ => None,
    }
}

/// The increase of a counter between two samples, `rate()`'s way: a decrease is a reset.
pub fn increase(previous: Option<f64>, current: f64) -> f64 {
    match previous {
        Some(p) if current >= p => current - p,
        _ => current,
    }
}

fn has_istio_metrics(scrape: &Scrape) -> bool {
    scrape.samples.iter().any(|s| s.name == REQUESTS_TOTAL)
}

/// The status of one instance.
pub fn status(w: &WorkloadScrapes) -> ScrapeStatus {
    match (&w.error, &w.current, &w.previous) {
        (Some(ScrapeError::NoEndpoint(e)), _, _) => ScrapeStatus::NoMetrics(e.clone()),
        (Some(ScrapeError::Failed(e)), _, _) => ScrapeStatus::Failed(e.clone()),
        (None, None, _) => ScrapeStatus::Waiting,
        (None, Some(c), _) if !has_istio_metrics(c) => {
            ScrapeStatus::NoMetrics(format!("no {REQUESTS_TOTAL} yet"))
        }
        (None, Some(_), None) => ScrapeStatus::Waiting,
        (None, Some(_), Some(_)) => ScrapeStatus::Ok,
    }
}

/// Builds the graph from the scrapes of every workload instance.
pub fn build(inputs: &[WorkloadScrapes]) -> Graph {
    let mut accs: BTreeMap<(String, String, Reporter), Acc> = BTreeMap::new();
    let mut interval: Option<Duration> = None;
    for w in inputs {
        if w.error.is_some() {
            continue;
        }
        let (Some(prev), Some(cur)) = (&w.previous, &w.current) else {
            continue;
        };
        let scrape_secs = cur
            .at
            .duration_since(prev.at)
            .map_or(0.0, |d| d.as_secs_f64());
        let before: HashMap<SeriesKey<'_>, &Sample> = prev
            .samples
            .iter()
            .filter(|s| s.name == REQUESTS_TOTAL || s.name == DURATION_BUCKET)
            .map(|s| (series_key(s), s))
            .collect();
        for s in &cur.samples {
            let bucket = s.name == DURATION_BUCKET;
            if !(bucket || s.name == REQUESTS_TOTAL) || !s.value.is_finite() {
                continue;
            }
            let Some(rep) = reporter(s) else { continue };
            let old = before.get(&series_key(s)).copied();
            let secs = match (old.and_then(|o| o.timestamp_ms), s.timestamp_ms) {
                (Some(a), Some(b)) if b > a => b.checked_sub(a).map_or(0.0, |d| d as f64 / 1000.0),
                _ => scrape_secs,
            };
            if secs <= 0.0 {
                continue;
            }
            let old_value = old.map(|o| o.value).filter(|v| v.is_finite());
            let rate = increase(old_value, s.value) / secs;
            interval = interval.max(Duration::try_from_secs_f64(secs).ok());
            let key = (
                workload_label(s, "source_workload").to_owned(),
                workload_label(s, "destination_workload").to_owned(),
                rep,
            );
            let acc = accs.entry(key).or_default();
            if bucket {
                let Some(le) = s.label("le").and_then(|le| le.parse::<f64>().ok()) else {
                    continue;
                };
                if le.is_nan() {
                    continue;
                }
                acc.buckets.push((le, rate));
            } else {
                acc.rps += rate;
                match s.label("response_code").and_then(|c| c.as_bytes().first()) {
                    Some(b'5') => acc.rps_5xx += rate,
                    Some(b'4') => acc.rps_4xx += rate,
                    _ => {}
                }
            }
        }
    }

    // One reporter per edge: the source's when it reported anything.
    let mut edges = Vec::new();
    let pairs: BTreeSet<(String, String)> = accs
        .keys()
        .map(|(s, d, _)| (s.clone(), d.clone()))
        .collect();
    for (source, destination) in pairs {
        let chosen = [Reporter::Source, Reporter::Destination]
            .into_iter()
            .find_map(|r| {
                accs.remove(&(source.clone(), destination.clone(), r))
                    .map(|acc| (r, acc))
            });
        let Some((reporter, acc)) = chosen else {
            continue;
        };
        edges.push(Edge {
            p99_ms: histogram_quantile(0.99, acc.buckets),
            source,
            destination,
            reporter,
            rps: acc.rps,
            rps_4xx: acc.rps_4xx,
            rps_5xx: acc.rps_5xx,
        });
    }

    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for w in inputs {
        nodes
            .entry(w.workload.clone())
            .or_insert_with(|| Node {
                workload: w.workload.clone(),
                instances: Vec::new(),
            })
            .instances
            .push(Instance {
                name: w.instance.clone(),
                url: w.url.clone(),
                status: status(w),
            });
    }
    for e in &edges {
        for name in [&e.source, &e.destination] {
            nodes.entry(name.clone()).or_insert_with(|| Node {
                workload: name.clone(),
                instances: Vec::new(),
            });
        }
    }
    let at = inputs
        .iter()
        .filter_map(|w| w.current.as_ref().map(|c| c.at))
        .max();
    Graph {
        nodes: nodes.into_values().collect(),
        edges,
        at,
        interval,
    }
}

/// `histogram_quantile(q, buckets)` as Prometheus computes it, over `(le, cumulative count)`
/// pairs in any order; `None` where Prometheus gives `NaN` (no `+Inf` bucket, fewer than two
/// buckets, no observations).
pub fn histogram_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> Option<f64> {
    if q.is_nan() {
        return None;
    }
    if q < 0.0 {
        return Some(f64::NEG_INFINITY);
    }
    if q > 1.0 {
        return Some(f64::INFINITY);
    }
    buckets.retain(|(le, c)| !le.is_nan() && c.is_finite());
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Coalesce buckets with the same bound (series that differ in other labels).
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (le, c) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    if merged.last().is_none_or(|b| b.0 != f64::INFINITY) || merged.len() < 2 {
        return None;
    }
    // Cumulative counts must not decrease (they may, from rounding in rates).
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        max = max.max(b.1);
        b.1 = max;
    }
    let total = merged[merged.len() - 1].1;
    if total <= 0.0 {
        return None;
    }
    let mut rank = q * total;
    let b = merged
        .iter()
        .position(|b| b.1 >= rank)
        .unwrap_or(merged.len() - 1);
    if b == merged.len() - 1 {
        return Some(merged[merged.len() - 2].0);
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return Some(merged[0].0);
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    if count <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank / count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::parse::parse;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn scrape(secs: u64, text: &str) -> Scrape {
        Scrape {
            at: at(secs),
            samples: parse(text).unwrap().samples,
        }
    }

    fn workload(name: &str, prev: Option<Scrape>, cur: Option<Scrape>) -> WorkloadScrapes {
        WorkloadScrapes {
            workload: name.to_owned(),
            instance: format!("{name}-abcde"),
            url: format!("http://127.0.0.1:1/{name}"),
            previous: prev,
            current: cur,
            error: None,
        }
    }

    fn req(reporter: &str, src: &str, dst: &str, code: &str, v: f64) -> String {
        format!(
            "istio_requests_total{{reporter=\"{reporter}\",source_workload=\"{src}\",destination_workload=\"{dst}\",response_code=\"{code}\",response_flags=\"-\"}} {v}\n"
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rates_and_error_shares_over_the_interval() {
        let before = req("source", "productpage-v1", "reviews-v2", "200", 100.0)
            + &req("source", "productpage-v1", "reviews-v2", "503", 10.0)
            + &req("source", "productpage-v1", "reviews-v2", "404", 0.0);
        let after = req("source", "productpage-v1", "reviews-v2", "200", 190.0)
            + &req("source", "productpage-v1", "reviews-v2", "503", 15.0)
            + &req("source", "productpage-v1", "reviews-v2", "404", 5.0);
        let g = build(&[workload(
            "productpage-v1",
            Some(scrape(0, &before)),
            Some(scrape(10, &after)),
        )]);
        let e = g.edge("productpage-v1", "reviews-v2").unwrap();
        assert!(close(e.rps, 10.0), "{e:?}");
        assert!(close(e.rps_5xx, 0.5) && close(e.rps_4xx, 0.5), "{e:?}");
        assert!(close(e.error_ratio(), 0.05));
        assert_eq!(e.health(), EdgeHealth::Degraded);
        assert_eq!(e.reporter, Reporter::Source);
        assert_eq!(g.interval, Some(Duration::from_secs(10)));
        assert_eq!(g.at, Some(at(10)));
        // reviews-v2 is not scraped: it is a node all the same.
        assert!(g.node("reviews-v2").unwrap().is_external());
        assert!(g.node("productpage-v1").unwrap().is_ok());
    }

    #[test]
    fn a_counter_reset_counts_the_new_value() {
        let g = build(&[workload(
            "a",
            Some(scrape(0, &req("source", "a", "b", "200", 1000.0))),
            Some(scrape(5, &req("source", "a", "b", "200", 20.0))),
        )]);
        assert!(close(g.edge("a", "b").unwrap().rps, 4.0));
        assert_eq!(increase(Some(3.0), 5.0), 2.0);
        assert_eq!(increase(Some(7.0), 5.0), 5.0);
        assert_eq!(increase(None, 5.0), 5.0);
    }

    #[test]
    fn sample_timestamps_win_over_scrape_times() {
        let g = build(&[workload(
            "a",
            Some(scrape(
                0,
                "istio_requests_total{reporter=\"source\",source_workload=\"a\",destination_workload=\"b\",response_code=\"200\"} 0 1000\n",
            )),
            Some(scrape(
                1,
                "istio_requests_total{reporter=\"source\",source_workload=\"a\",destination_workload=\"b\",response_code=\"200\"} 100 21000\n",
            )),
        )]);
        assert!(close(g.edge("a", "b").unwrap().rps, 5.0));
        assert_eq!(g.interval, Some(Duration::from_secs(20)));
    }

    #[test]
    fn source_reporter_preferred_destination_otherwise() {
        // productpage reports its calls to details; details reports them too (counted once),
        // and reports calls from an unmeshed client that reports nothing.
        let pp = |v: f64| req("source", "productpage-v1", "details-v1", "200", v);
        let det = |v: f64, u: f64| {
            req("destination", "productpage-v1", "details-v1", "200", v)
                + &req("destination", "", "details-v1", "200", u)
        };
        let g = build(&[
            workload(
                "productpage-v1",
                Some(scrape(0, &pp(0.0))),
                Some(scrape(10, &pp(20.0))),
            ),
            workload(
                "details-v1",
                Some(scrape(0, &det(0.0, 0.0))),
                Some(scrape(10, &det(30.0, 40.0))),
            ),
        ]);
        let e = g.edge("productpage-v1", "details-v1").unwrap();
        assert_eq!(e.reporter, Reporter::Source);
        assert!(close(e.rps, 2.0), "{e:?}");
        let u = g.edge(UNKNOWN, "details-v1").unwrap();
        assert_eq!(u.reporter, Reporter::Destination);
        assert!(close(u.rps, 4.0));
        assert!(g.node(UNKNOWN).unwrap().is_external());
        assert_eq!(g.edges.len(), 2);
    }

    #[test]
    fn new_series_count_from_zero_and_replicas_add_up() {
        let first = req("source", "a", "b", "200", 10.0);
        let second = first.clone() + &req("source", "a", "b", "500", 10.0);
        let mut w2 = workload("a", Some(scrape(0, &first)), Some(scrape(10, &second)));
        w2.instance = "a-other".to_owned();
        let g = build(&[
            workload("a", Some(scrape(0, &first)), Some(scrape(10, &second))),
            w2,
        ]);
        let e = g.edge("a", "b").unwrap();
        assert!(close(e.rps, 2.0) && close(e.rps_5xx, 2.0), "{e:?}");
        assert_eq!(e.health(), EdgeHealth::Failure);
        assert_eq!(g.node("a").unwrap().instances.len(), 2);
    }

    #[test]
    fn statuses_of_instances() {
        let with = scrape(0, &req("source", "a", "b", "200", 1.0));
        let without = scrape(0, "process_cpu_seconds_total 1\n");
        assert_eq!(status(&workload("a", None, None)), ScrapeStatus::Waiting);
        assert_eq!(
            status(&workload("a", None, Some(with.clone()))),
            ScrapeStatus::Waiting
        );
        assert_eq!(
            status(&workload("a", Some(with.clone()), Some(with.clone()))),
            ScrapeStatus::Ok
        );
        assert_eq!(
            status(&workload("a", None, Some(without))),
            ScrapeStatus::NoMetrics("no istio_requests_total yet".into())
        );
        let mut missing = workload("a", None, None);
        missing.error = Some(ScrapeError::NoEndpoint("HTTP 404".into()));
        assert_eq!(status(&missing), ScrapeStatus::NoMetrics("HTTP 404".into()));
        let mut failed = workload("a", Some(with.clone()), Some(with));
        failed.error = Some(ScrapeError::Failed("connection refused".into()));
        assert_eq!(
            status(&failed),
            ScrapeStatus::Failed("connection refused".into())
        );
        // A failed instance's stale samples are left out of the rates.
        let g = build(&[failed]);
        assert!(g.edges.is_empty());
        assert!(!g.node("a").unwrap().is_ok());
    }

    #[test]
    fn p99_interpolates_inside_the_bucket() {
        // 100 observations: 50 ≤ 10 ms, 90 ≤ 50 ms, 100 ≤ 100 ms. Rank 99 is in (50, 100]:
        // 50 + 50 * (99 - 90) / 10 = 95.
        let b = vec![
            (10.0, 50.0),
            (50.0, 90.0),
            (100.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(histogram_quantile(0.99, b.clone()), Some(95.0));
        // Rank 50 ends exactly at the first bucket: interpolation from 0.
        assert_eq!(histogram_quantile(0.5, b.clone()), Some(10.0));
        assert_eq!(histogram_quantile(0.25, b), Some(5.0));
        // In the +Inf bucket: the highest finite bound.
        let b = vec![(10.0, 1.0), (f64::INFINITY, 100.0)];
        assert_eq!(histogram_quantile(0.99, b), Some(10.0));
        // No observations, no +Inf bucket, a single bucket: NaN in Prometheus.
        assert_eq!(
            histogram_quantile(0.99, vec![(10.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(
            histogram_quantile(0.99, vec![(10.0, 5.0), (20.0, 5.0)]),
            None
        );
        assert_eq!(histogram_quantile(0.99, vec![(f64::INFINITY, 5.0)]), None);
        // Out of order, duplicated bounds (summed), non-monotonic counts (fixed).
        let b = vec![
            (f64::INFINITY, 50.0),
            (100.0, 30.0),
            (10.0, 20.0),
            (100.0, 20.0),
            (f64::INFINITY, 50.0),
            (50.0, 10.0),
        ];
        // Cumulative: 10→20, 50→max(20,10)=20, 100→50, +Inf→100; rank 99 in +Inf → 100.
        assert_eq!(histogram_quantile(0.99, b.clone()), Some(100.0));
        // Rank 30: in (50, 100]: 50 + 50 * (30 - 20) / 30.
        let got = histogram_quantile(0.3, b).unwrap();
        assert!(close(got, 50.0 + 50.0 * 10.0 / 30.0), "{got}");
        // A first bound ≤ 0 is returned as is.
        assert_eq!(
            histogram_quantile(0.5, vec![(0.0, 10.0), (f64::INFINITY, 10.0)]),
            Some(0.0)
        );
        assert_eq!(histogram_quantile(1.5, vec![]), Some(f64::INFINITY));
    }

    #[test]
    fn p99_of_an_edge_from_bucket_deltas() {
        let hist = |n10: f64, n100: f64, ninf: f64| {
            let l = "reporter=\"source\",source_workload=\"a\",destination_workload=\"b\"";
            format!(
                "istio_request_duration_milliseconds_bucket{{{l},le=\"10\"}} {n10}\n\
                 istio_request_duration_milliseconds_bucket{{{l},le=\"100\"}} {n100}\n\
                 istio_request_duration_milliseconds_bucket{{{l},le=\"+Inf\"}} {ninf}\n"
            ) + &req("source", "a", "b", "200", ninf)
        };
        // Before: 1000 fast requests. In the interval: 100 more, 50 ≤ 10 ms, 50 in (10, 100].
        let g = build(&[workload(
            "a",
            Some(scrape(0, &hist(1000.0, 1000.0, 1000.0))),
            Some(scrape(10, &hist(1050.0, 1100.0, 1100.0))),
        )]);
        let e = g.edge("a", "b").unwrap();
        // Rank 99 of 100: 10 + 90 * (99 - 50) / 50.
        let p99 = e.p99_ms.unwrap();
        assert!(close(p99, 10.0 + 90.0 * 49.0 / 50.0), "{p99}");
        assert!(close(e.rps, 10.0));
    }

    #[test]
    fn idle_edges_and_kiali_tolerances() {
        let e = |rps: f64, r4: f64, r5: f64| Edge {
            source: "a".into(),
            destination: "b".into(),
            reporter: Reporter::Source,
            rps,
            rps_4xx: r4,
            rps_5xx: r5,
            p99_ms: None,
        };
        assert_eq!(e(0.0, 0.0, 0.0).health(), EdgeHealth::Idle);
        assert_eq!(e(100.0, 0.0, 0.0).health(), EdgeHealth::Healthy);
        assert_eq!(e(1000.0, 0.0, 0.5).health(), EdgeHealth::Healthy);
        assert_eq!(e(1000.0, 0.0, 1.0).health(), EdgeHealth::Degraded);
        assert_eq!(e(100.0, 0.0, 10.0).health(), EdgeHealth::Degraded);
        assert_eq!(e(100.0, 0.0, 10.5).health(), EdgeHealth::Failure);
        assert_eq!(e(100.0, 9.0, 0.0).health(), EdgeHealth::Healthy);
        assert_eq!(e(100.0, 10.0, 0.0).health(), EdgeHealth::Degraded);
        assert_eq!(e(100.0, 21.0, 0.0).health(), EdgeHealth::Failure);
    }
}
