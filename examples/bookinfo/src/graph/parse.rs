//! A parser for Prometheus' text exposition format, version 0.0.4: what a workload's
//! `/metrics` serves.
//!
//! It reads what the service graph needs (counters and histograms) and everything else the
//! format allows, so a real exposition never trips it:
//!
//! - `# HELP name text` (`\\` and `\n` escapes) and `# TYPE name counter|gauge|histogram|summary|untyped`;
//!   other `#` lines are comments and blank lines are skipped;
//! - samples `name{label="value",…} value [timestamp]`, labels optional, a trailing comma
//!   allowed, label values with `\\`, `\"` and `\n` escapes (any other byte, `}` and `,`
//!   included, stands for itself), spaces or tabs between the tokens;
//! - values as Go's `ParseFloat` reads them (`1`, `-2.5e3`, `+Inf`, `-Inf`, `NaN`),
//!   timestamps as integer milliseconds since the epoch.
//!
//! Errors name the line (1-based) and what is wrong with it; a duplicate label name or a
//! second `# TYPE` for the same metric is an error, as it is for Prometheus.

use std::{collections::BTreeMap, fmt};

/// A metric family's type, from its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonically increasing count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// `_bucket{le=…}`, `_sum` and `_count` series.
    Histogram,
    /// `{quantile=…}`, `_sum` and `_count` series.
    Summary,
    /// No type given.
    Untyped,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' name (`istio_requests_total`, `…_bucket`).
    pub name: String,
    /// Its labels, in the order of the line.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
    /// Its timestamp, in milliseconds since the Unix epoch, when the line has one.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of the label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition: its samples in order, with the families' types and help texts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    /// Every sample, in the order of the text.
    pub samples: Vec<Sample>,
    /// `# TYPE` per metric family name.
    pub types: BTreeMap<String, MetricType>,
    /// `# HELP` per metric family name (unescaped).
    pub help: BTreeMap<String, String>,
}

/// Why a text is not a valid exposition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Parses `text` (Prometheus text format 0.0.4).
///
/// # Errors
///
/// [`ParseError`] for the first malformed line, naming it.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let err = |message: String| ParseError { line, message };
        let l = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = l.trim_start_matches([' ', '\t']);
        if trimmed.trim_end_matches([' ', '\t']).is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            directive(comment, &mut out).map_err(err)?;
            continue;
        }
        let sample = sample(trimmed).map_err(err)?;
        out.samples.push(sample);
    }
    Ok(out)
}

/// `# HELP …`, `# TYPE …` or a plain comment (ignored).
fn directive(comment: &str, out: &mut Exposition) -> Result<(), String> {
    let rest = comment.trim_start_matches([' ', '\t']);
    let (keyword, rest) = split_token(rest);
    match keyword {
        "HELP" => {
            let (name, text) = split_token(rest);
            check_metric_name(name)?;
            let text = unescape(text, false).map_err(|e| format!("in the HELP of {name}: {e}"))?;
            if out.help.insert(name.to_owned(), text).is_some() {
                return Err(format!("a second HELP line for {name}"));
            }
        }
        "TYPE" => {
            let (name, rest) = split_token(rest);
            check_metric_name(name)?;
            let (kind, extra) = split_token(rest);
            if !extra.is_empty() {
                return Err(format!(
                    "unexpected text after the type of {name}: {extra:?}"
                ));
            }
            let kind = match kind {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                "untyped" => MetricType::Untyped,
                other => return Err(format!("unknown metric type {other:?} for {name}")),
            };
            if out.types.insert(name.to_owned(), kind).is_some() {
                return Err(format!("a second TYPE line for {name}"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The first blank-separated token of `s` and what follows it (leading blanks removed).
fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    match s.find([' ', '\t']) {
        Some(at) => (&s[..at], s[at..].trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else if name.is_empty() {
        Err("a metric name is missing".to_owned())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphabetic() || b == b'_' || (i > 0 && b.is_ascii_digit()))
}

/// Unescapes a HELP text (`\\`, `\n`; another escape stays as written, as Prometheus does) or
/// a label value (`\\`, `\"`, `\n`; another escape is an error).
fn unescape(s: &str, label: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if label => out.push('"'),
            Some(other) if !label => {
                out.push('\\');
                out.push(other);
            }
            Some(other) => return Err(format!("invalid escape \\{other}")),
            None if label => return Err("a backslash at the end".to_owned()),
            None => out.push('\\'),
        }
    }
    Ok(out)
}

/// One sample line (leading blanks already removed).
fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = label_set(after, &mut labels).map_err(|e| format!("{name}: {e}"))?;
    } else {
        rest = rest.trim_start_matches([' ', '\t']);
    }
    let (value, rest) = split_token(rest);
    if value.is_empty() {
        return Err(format!("{name}: the value is missing"));
    }
    let value = parse_value(value).ok_or_else(|| format!("{name}: invalid value {value:?}"))?;
    let (timestamp, extra) = split_token(rest);
    let timestamp_ms = match timestamp {
        "" => None,
        t => Some(
            t.parse::<i64>()
                .map_err(|_| format!("{name}: invalid timestamp {t:?}"))?,
        ),
    };
    if !extra.trim_end_matches([' ', '\t']).is_empty() {
        return Err(format!(
            "{name}: unexpected text after the timestamp: {extra:?}"
        ));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses labels up to and including the closing `}`; returns what follows it, leading
/// blanks removed.
fn label_set<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after.trim_start_matches([' ', '\t']));
        }
        let eq = s
            .find('=')
            .ok_or_else(|| "a label without '=' or an unclosed '{'".to_owned())?;
        let key = s[..eq].trim_end_matches([' ', '\t']);
        if !is_label_name(key) {
            return Err(format!("invalid label name {key:?}"));
        }
        s = s[eq + 1..].trim_start_matches([' ', '\t']);
        let Some(after_quote) = s.strip_prefix('"') else {
            return Err(format!("the value of label {key} does not start with '\"'"));
        };
        // The closing quote is the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, b) in after_quote.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| format!("the value of label {key} is not closed"))?;
        let value = unescape(&after_quote[..end], true)
            .map_err(|e| format!("in the value of label {key}: {e}"))?;
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("label {key} appears twice"));
        }
        labels.push((key.to_owned(), value));
        s = after_quote[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {key}"));
        }
    }
}

/// A value as Go's `strconv.ParseFloat` reads it (decimal forms, `Inf`, `NaN`, any case).
fn parse_value(s: &str) -> Option<f64> {
    // Rust's parser reads the same decimal forms, infinities and NaN (any case); it rejects
    // Go's hex floats, which exporters do not write.
    s.parse::<f64>().ok()
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &Sample) -> Vec<(&str, &str)> {
        s.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn reads_counters_and_histograms_with_help_and_type() {
        let text = "\
# HELP istio_requests_total Total requests.\n\
# TYPE istio_requests_total counter\n\
istio_requests_total{reporter=\"source\",source_workload=\"productpage-v1\",response_code=\"200\"} 1027 1395066363000\n\
\n\
# TYPE istio_request_duration_milliseconds histogram\n\
istio_request_duration_milliseconds_bucket{le=\"0.5\"} 0\n\
istio_request_duration_milliseconds_bucket{le=\"+Inf\"} 3\n\
istio_request_duration_milliseconds_sum 12.5\n\
istio_request_duration_milliseconds_count 3\n";
        let e = parse(text).unwrap();
        assert_eq!(e.types["istio_requests_total"], MetricType::Counter);
        assert_eq!(
            e.types["istio_request_duration_milliseconds"],
            MetricType::Histogram
        );
        assert_eq!(e.help["istio_requests_total"], "Total requests.");
        assert_eq!(e.samples.len(), 5);
        let s = &e.samples[0];
        assert_eq!(s.name, "istio_requests_total");
        assert_eq!(s.value, 1027.0);
        assert_eq!(s.timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(s.label("source_workload"), Some("productpage-v1"));
        assert_eq!(e.samples[2].label("le"), Some("+Inf"));
        assert_eq!(e.samples[3].labels, []);
        assert_eq!(e.samples[3].value, 12.5);
    }

    #[test]
    fn unescapes_label_values_and_help() {
        let text = r#"# HELP m a \\ backslash\nand a newline; \t stays
m{a="quote \" inside",b="back\\slash",c="new\nline",d="} and , and { and =",} 1
"#;
        let e = parse(text).unwrap();
        assert_eq!(e.help["m"], "a \\ backslash\nand a newline; \\t stays");
        assert_eq!(
            labels(&e.samples[0]),
            [
                ("a", "quote \" inside"),
                ("b", "back\\slash"),
                ("c", "new\nline"),
                ("d", "} and , and { and =")
            ]
        );
    }

    #[test]
    fn reads_special_values_blanks_and_crlf() {
        let text = "a +Inf\r\nb -Inf\nc NaN\n\t d{ x = \"1\" , y=\"2\" }\t-1.5e3   17\ne{} 0\n# just a comment\n#TYPE f gauge\nf 1e-3\n";
        let e = parse(text).unwrap();
        let v: Vec<f64> = e.samples.iter().map(|s| s.value).collect();
        assert_eq!(v[0], f64::INFINITY);
        assert_eq!(v[1], f64::NEG_INFINITY);
        assert!(v[2].is_nan());
        assert_eq!(v[3], -1500.0);
        assert_eq!(e.samples[3].timestamp_ms, Some(17));
        assert_eq!(labels(&e.samples[3]), [("x", "1"), ("y", "2")]);
        assert_eq!(e.samples[4].labels, []);
        assert_eq!(e.types["f"], MetricType::Gauge);
        assert_eq!(v[5], 0.001);
        assert_eq!(e.samples[2].timestamp_ms, None);
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("ok 1\nbad{a=\"1\" 2\n", 2, "expected ','"),
            ("ok 1\n\nm{a=\"unclosed} 1\n", 3, "not closed"),
            ("m{a=1} 1", 1, "does not start with"),
            ("m{1a=\"x\"} 1", 1, "invalid label name"),
            ("m{a=\"x\",a=\"y\"} 1", 1, "appears twice"),
            ("m{a=\"bad \\q escape\"} 1", 1, "invalid escape \\q"),
            ("m one", 1, "invalid value \"one\""),
            ("m", 1, "value is missing"),
            ("m 1 1.5", 1, "invalid timestamp"),
            ("m 1 2 3", 1, "unexpected text"),
            ("9m 1", 1, "invalid metric name"),
            ("# TYPE m counter\n# TYPE m gauge", 2, "second TYPE"),
            ("# TYPE m countr", 1, "unknown metric type"),
            ("m{a", 1, "without '='"),
        ];
        for (text, line, msg) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.to_string().contains(msg), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // Cut a valid exposition at every byte boundary and garble it: only Ok or Err.
        let text = "# HELP x h\\\n# TYPE x counter\nx{a=\"\\\\\\\"é\",b=\"\"} 1 2\nx_bucket{le=\"+Inf\"} NaN\n";
        for cut in 0..=text.len() {
            if let Some(prefix) = text.get(..cut) {
                let _ = parse(prefix);
                let _ = parse(&prefix.replace('"', "\\"));
                let _ = parse(&prefix.replace('{', "}"));
            }
        }
    }
}
