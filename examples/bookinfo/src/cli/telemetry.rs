//! The telemetry flags every workload takes (and `bookinfo up` passes on): the access log
//! and tracing. Metrics are always on; each workload serves them at `/metrics` on its admin
//! port.

use anyhow::Context as _;
use mesh_tower::{
    mesh::{MeshBuilder, Workload},
    telemetry::{
        access_log::{AccessLogConfig, AccessLogEncoding, AccessLogTarget},
        trace::Tracing,
    },
};

/// Access log and tracing flags.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct TelemetryArgs {
    /// Write one access log line per request, on each side, to `stdout` or to a file
    /// (appended to) [default: off, as in Istio's default profile].
    #[arg(long, value_name = "stdout|FILE")]
    pub(crate) access_log: Option<String>,

    /// The access log's encoding: Istio's default text format or its JSON form.
    #[arg(long, value_enum, default_value_t = Encoding::Text, value_name = "text|json")]
    pub(crate) access_log_encoding: Encoding,

    /// Export spans by OTLP to this collector: `http://HOST:4317` (gRPC) or
    /// `http://HOST:4318/v1/traces` (HTTP/protobuf). Without it trace headers are still
    /// propagated, and no span is built.
    #[arg(long, value_name = "URL")]
    pub(crate) tracing_endpoint: Option<String>,

    /// The percentage of new traces sampled (a caller's decision in its trace headers is
    /// obeyed). 100 is Istio's demo profile, which Bookinfo runs under; Istio's default
    /// profile samples 1.
    #[arg(long, default_value_t = 100.0, value_name = "PERCENT", value_parser = parse_percent)]
    pub(crate) trace_sampling: f64,
}

/// `--access-log-encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Encoding {
    /// Istio's `TEXT` format.
    Text,
    /// Istio's `JSON` encoding.
    Json,
}

impl Default for TelemetryArgs {
    /// What the flags default to.
    fn default() -> Self {
        Self {
            access_log: None,
            access_log_encoding: Encoding::Text,
            tracing_endpoint: None,
            trace_sampling: 100.0,
        }
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a percentage between 0 and 100"))
    }
}

impl TelemetryArgs {
    /// The same flags, for a child's command line.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(log) = &self.access_log {
            out.extend(["--access-log".to_owned(), log.clone()]);
        }
        if self.access_log_encoding == Encoding::Json {
            out.extend(["--access-log-encoding".to_owned(), "json".to_owned()]);
        }
        if let Some(endpoint) = &self.tracing_endpoint {
            out.extend(["--tracing-endpoint".to_owned(), endpoint.clone()]);
        }
        out.extend([
            "--trace-sampling".to_owned(),
            self.trace_sampling.to_string(),
        ]);
        out
    }

    /// Configures `builder` for `workload` with these flags. Must run inside the runtime
    /// (the span exporter and the access log writer are tasks).
    pub(crate) fn apply(
        &self,
        mut builder: MeshBuilder,
        workload: &Workload,
    ) -> anyhow::Result<MeshBuilder> {
        if let Some(log) = &self.access_log {
            builder = builder.access_log(AccessLogConfig {
                encoding: match self.access_log_encoding {
                    Encoding::Text => AccessLogEncoding::Text,
                    Encoding::Json => AccessLogEncoding::Json,
                },
                target: match log.as_str() {
                    "stdout" | "-" => AccessLogTarget::Stdout,
                    path => AccessLogTarget::File(path.into()),
                },
            });
        }
        let mut tracing = Tracing::builder()
            .workload(workload)
            .sampling(self.trace_sampling);
        if let Some(endpoint) = &self.tracing_endpoint {
            tracing = tracing.otlp(endpoint.clone());
        }
        let tracing = tracing
            .build()
            .with_context(|| match &self.tracing_endpoint {
                Some(e) => format!("cannot set up tracing to {e}"),
                None => "cannot set up tracing".to_owned(),
            })?;
        Ok(builder.tracing(tracing))
    }
}

/// The label that makes an instance (`reviews-v1-3fa2c`) report as its workload
/// (`reviews-v1`) in `source_workload`/`destination_workload`, as a pod reports its
/// Deployment under Istio.
pub(crate) use mesh_tower::telemetry::layer::WORKLOAD_NAME_LABEL;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_checked() {
        assert_eq!(parse_percent("1"), Ok(1.0));
        assert_eq!(parse_percent("100"), Ok(100.0));
        assert!(
            parse_percent("101")
                .unwrap_err()
                .contains("between 0 and 100")
        );
        assert!(parse_percent("x").unwrap_err().contains("not a number"));
    }
}
