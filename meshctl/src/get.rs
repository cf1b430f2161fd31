//! `meshctl get`.

use std::{path::PathBuf, process::ExitCode, time::SystemTime};

use mesh_core::config::{Kind, Resource, Spec};

use crate::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The kind (`virtualservices`, `vs`, `DestinationRule`, ...).
    kind: String,

    /// Show only this resource.
    name: Option<String>,

    /// The namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,

    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,

    /// Output format: a table, or the resources as YAML or JSON.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

pub(crate) async fn run(
    args: Args,
    store: Option<&str>,
    dir: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let kind: Kind = args.kind.parse()?;
    let store = crate::require_store(store, dir)?;
    let listing = store.list().await?;
    for f in listing.findings.errors() {
        eprintln!("warning: the store has unreadable content: {f}");
    }
    let items: Vec<&Resource> = listing
        .resources
        .iter()
        .filter(|r| r.kind() == kind)
        .filter(|r| args.all_namespaces || r.namespace() == args.namespace)
        .filter(|r| args.name.as_ref().is_none_or(|n| *n == r.metadata.name))
        .collect();
    if let Some(name) = &args.name
        && items.is_empty()
    {
        eprintln!(
            "error: {}.{} {name:?} not found in namespace {:?}",
            kind.plural(),
            kind.group(),
            args.namespace
        );
        return Ok(ExitCode::FAILURE);
    }
    match args.output {
        Output::Yaml => {
            let docs: Vec<String> = items.iter().map(|r| r.to_yaml()).collect();
            print!("{}", docs.join("---\n"));
        }
        Output::Json => {
            let value = if args.name.is_some() && items.len() == 1 {
                items[0].to_value()
            } else {
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": items.iter().map(|r| r.to_value()).collect::<Vec<_>>(),
                })
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Text => {
            if items.is_empty() {
                let scope = if args.all_namespaces {
                    "any namespace".to_owned()
                } else {
                    format!("namespace {}", args.namespace)
                };
                eprintln!("No {} found in {scope}.", kind.plural());
                return Ok(ExitCode::SUCCESS);
            }
            print_table(&items, args.all_namespaces);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(r: &Resource) -> (&'static str, String) {
    match &r.spec {
        Spec::VirtualService(vs) => (
            "HOSTS",
            format!(
                "[{}]{}",
                vs.hosts.join(","),
                if vs.gateways.is_empty() {
                    String::new()
                } else {
                    format!(" gateways=[{}]", vs.gateways.join(","))
                }
            ),
        ),
        Spec::DestinationRule(dr) => (
            "HOST",
            format!(
                "{} subsets=[{}]",
                dr.host,
                dr.subsets
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        Spec::Gateway(gw) => (
            "SERVERS",
            gw.servers
                .iter()
                .map(|s| {
                    format!(
                        "{}:{}",
                        s.port.as_ref().map(|p| p.protocol.as_str()).unwrap_or("?"),
                        s.port.as_ref().map_or(0, |p| p.number)
                    )
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        Spec::ServiceEntry(se) => ("HOSTS", format!("[{}]", se.hosts.join(","))),
        Spec::WorkloadEntry(we) => (
            "ADDRESS",
            format!(
                "{} {}",
                we.address,
                we.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        Spec::PeerAuthentication(_)
        | Spec::AuthorizationPolicy(_)
        | Spec::RequestAuthentication(_) => ("", String::new()),
    }
}

/// `2024-01-02T03:04:05Z` → age like kubectl's `5m`, `3h`, `2d`.
fn age(ts: Option<&str>) -> String {
    let Some(ts) = ts else {
        return "<unknown>".to_owned();
    };
    let Some(then) = parse_rfc3339(ts) else {
        return "<unknown>".to_owned();
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(then);
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

fn parse_rfc3339(ts: &str) -> Option<u64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time
        .split(':')
        .map(|p| p.split('.').next()?.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3_600 + mm * 60 + ss).ok()
}

fn print_table(items: &[&Resource], with_ns: bool) {
    let header = summary(items[0]).0;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = Vec::new();
    if with_ns {
        head.push("NAMESPACE".to_owned());
    }
    head.push("NAME".to_owned());
    if !header.is_empty() {
        head.push(header.to_owned());
    }
    head.push("AGE".to_owned());
    rows.push(head);
    for r in items {
        let mut row = Vec::new();
        if with_ns {
            row.push(r.namespace().to_owned());
        }
        row.push(r.metadata.name.clone());
        let (h, s) = summary(r);
        if !h.is_empty() {
            row.push(s);
        }
        row.push(age(r.metadata.creation_timestamp.as_deref()));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_timestamps() {
        assert_eq!(super::parse_rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(
            super::parse_rfc3339("2000-03-01T00:00:00Z"),
            Some(951_868_800)
        );
        assert_eq!(super::parse_rfc3339("nope"), None);
    }
}
