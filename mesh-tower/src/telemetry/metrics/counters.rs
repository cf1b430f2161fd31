//! The mesh's own counters, read where they already live at scrape time.

use std::{sync::Arc, time::SystemTime};

use mesh_core::store::ConfigStatus;
use opentelemetry::metrics::{Meter, ObservableCounter, ObservableGauge};

use super::{IstioMetrics, seconds_until};
use crate::{
    balance::EndpointStats, breaker::CircuitBreakers, retry::RetryStats,
    telemetry::access_log::AccessLogSink, tls::IdentityWatch,
};

/// The mesh's counters as observable instruments on an [`IstioMetrics`] provider: each is
/// created once and its callback reads the number where it already lives (the retry layer's
/// [`RetryStats`], the [`CircuitBreakers`], the balancer's [`EndpointStats`], the config
/// watcher's [`ConfigStatus`], the certificate in an [`IdentityWatch`], the access log's
/// [`AccessLogSink`]), so nothing is counted twice on the request path.
///
/// | name | type | what |
/// |---|---|---|
/// | `mesh_retries_total` | counter | retries sent (Envoy `upstream_rq_retry`) |
/// | `mesh_retry_budget_exhausted_total` | counter | retries refused by the retry budget (`upstream_rq_retry_overflow`) |
/// | `mesh_retry_limit_exceeded_total` | counter | retries refused by `attempts` (`upstream_rq_retry_limit_exceeded`) |
/// | `mesh_upstream_rq_pending_overflow_total` | counter | tries refused by a circuit-breaker limit: requests over `maxConnections` + pending, `http2MaxRequests` (503 `UO`), and retries over `maxRetries` (not made; the response at hand flagged `UO`) |
/// | `mesh_outlier_ejections_total` | counter | outlier-detection ejections, over the endpoints tracked |
/// | `mesh_config_generation` | gauge | snapshots built from the store so far |
/// | `mesh_config_reload_errors_total` | counter | configuration changes refused |
/// | `mesh_config_last_reload_failed` | gauge | 1 while the latest change is refused or the store unreadable |
/// | `mesh_certificate_expiry_seconds` | gauge | seconds until the workload certificate expires (negative once expired) |
/// | `mesh_certificate_expiry_timestamp_seconds` | gauge | the certificate's `notAfter`, Unix seconds |
/// | `mesh_access_log_dropped_total` | counter | access log lines dropped (queue full) |
/// | `mesh_access_log_written_total` | counter | access log lines written |
///
/// The instruments live as long as this value; drop it to stop reporting them.
#[derive(Debug, Default)]
#[must_use = "the counters are reported only while this value lives"]
pub struct MeshCounters {
    counters: Vec<ObservableCounter<u64>>,
    gauges: Vec<ObservableGauge<f64>>,
}

impl MeshCounters {
    /// No counters yet; add them with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    fn counter(
        mut self,
        meter: &Meter,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.counters.push(
            meter
                .u64_observable_counter(name)
                .with_description(help)
                .with_callback(move |o| o.observe(read(), &[]))
                .build(),
        );
        self
    }

    fn gauge(
        mut self,
        meter: &Meter,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> Option<f64> + Send + Sync + 'static,
    ) -> Self {
        self.gauges.push(
            meter
                .f64_observable_gauge(name)
                .with_description(help)
                .with_callback(move |o| {
                    if let Some(v) = read() {
                        o.observe(v, &[]);
                    }
                })
                .build(),
        );
        self
    }

    /// Reports the retry layer's counters.
    pub fn retries(self, metrics: &IstioMetrics, stats: Arc<RetryStats>) -> Self {
        let m = metrics.meter();
        let (a, b, c) = (stats.clone(), stats.clone(), stats);
        self.counter(m, "mesh_retries_total", "Retries sent", move || a.retries())
            .counter(
                m,
                "mesh_retry_budget_exhausted_total",
                "Retries refused because the retry budget was spent",
                move || b.budget_exhausted(),
            )
            .counter(
                m,
                "mesh_retry_limit_exceeded_total",
                "Retries refused because the attempts were used up",
                move || c.limit_exceeded(),
            )
    }

    /// Reports circuit-breaker overflows.
    pub fn breakers(self, metrics: &IstioMetrics, breakers: CircuitBreakers) -> Self {
        self.counter(
            metrics.meter(),
            "mesh_upstream_rq_pending_overflow_total",
            "Tries refused by a circuit-breaker limit (requests answered 503 UO, retries over maxRetries not made)",
            move || breakers.overflows(),
        )
    }

    /// Reports outlier-detection ejections.
    pub fn outlier(self, metrics: &IstioMetrics, stats: EndpointStats) -> Self {
        self.counter(
            metrics.meter(),
            "mesh_outlier_ejections_total",
            "Endpoints ejected by outlier detection",
            move || stats.total_ejections(),
        )
    }

    /// Reports the configuration's generation and reload errors, from `status` (e.g.
    /// `move || mesh.status()`), called once per scrape.
    pub fn config(
        self,
        metrics: &IstioMetrics,
        status: impl Fn() -> ConfigStatus + Send + Sync + 'static,
    ) -> Self {
        let status = Arc::new(status);
        let (a, b, c) = (status.clone(), status.clone(), status);
        let m = metrics.meter();
        self.gauge(
            m,
            "mesh_config_generation",
            "Snapshots built from the config store",
            move || Some(a().generation as f64),
        )
        .counter(
            m,
            "mesh_config_reload_errors_total",
            "Configuration changes refused",
            move || b().rejected_count,
        )
        .gauge(
            m,
            "mesh_config_last_reload_failed",
            "1 while the latest configuration change is refused or the store cannot be read",
            move || {
                let s = c();
                Some(if s.last_error.is_some() || s.store_error.is_some() {
                    1.0
                } else {
                    0.0
                })
            },
        )
    }

    /// Reports the expiry of the certificate in `identity` (nothing until one arrives).
    pub fn certificate(self, metrics: &IstioMetrics, identity: IdentityWatch) -> Self {
        let m = metrics.meter();
        let a = identity.clone();
        self.gauge(
            m,
            "mesh_certificate_expiry_seconds",
            "Seconds until the workload certificate expires",
            move || {
                let not_after = a.borrow().as_ref().map(|id| id.not_after())?;
                Some(seconds_until(not_after, SystemTime::now()))
            },
        )
        .gauge(
            m,
            "mesh_certificate_expiry_timestamp_seconds",
            "When the workload certificate expires, in Unix seconds",
            move || {
                let not_after = identity.borrow().as_ref().map(|id| id.not_after())?;
                Some(seconds_until(not_after, SystemTime::UNIX_EPOCH))
            },
        )
    }

    /// Reports the access log's dropped and written lines.
    pub fn access_log(self, metrics: &IstioMetrics, sink: AccessLogSink) -> Self {
        let m = metrics.meter();
        let a = sink.clone();
        self.counter(
            m,
            "mesh_access_log_dropped_total",
            "Access log lines dropped because the queue was full",
            move || a.stats().dropped,
        )
        .counter(
            m,
            "mesh_access_log_written_total",
            "Access log lines written",
            move || sink.stats().written,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_counters_at_scrape_time() {
        let metrics = IstioMetrics::new();
        let retry = Arc::new(RetryStats::new());
        let _counters = MeshCounters::new()
            .retries(&metrics, retry.clone())
            .breakers(&metrics, CircuitBreakers::new())
            .outlier(&metrics, EndpointStats::new())
            .config(&metrics, || {
                let mut s = ConfigStatus::default();
                s.generation = 7;
                s.rejected_count = 2;
                s
            })
            .certificate(&metrics, tokio::sync::watch::channel(None).1)
            .access_log(&metrics, AccessLogSink::off());
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE mesh_retries_total counter\nmesh_retries_total 0\n"),
            "{text}"
        );
        assert!(text.contains("mesh_config_generation 7\n"), "{text}");
        assert!(text.contains("mesh_config_reload_errors_total 2\n"));
        assert!(text.contains("mesh_config_last_reload_failed 0\n"));
        assert!(text.contains("mesh_upstream_rq_pending_overflow_total 0\n"));
        assert!(text.contains("mesh_outlier_ejections_total 0\n"));
        assert!(text.contains("mesh_access_log_dropped_total 0\n"));
        assert!(!text.contains("mesh_certificate_expiry_seconds "));
    }
}
