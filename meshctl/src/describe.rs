//! `meshctl describe`: which rule a request would match, and what would happen to it.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, process::ExitCode};

use mesh_core::{
    config::Resource,
    policy::{
        fault::AbortWith,
        retry::{DEFAULT_ATTEMPTS, RetryPolicy},
    },
    snapshot::{Action, Caller, RequestInfo, Routing, Snapshot, route::Route},
    validate::validate_all,
};

use crate::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The request: a path (`/reviews/0`, with --host) or a URL (`http://reviews:9080/reviews/0`).
    #[arg(default_value = "/")]
    target: String,

    /// The host the request is for (`reviews`, `reviews:9080`), when the target is a path.
    #[arg(long)]
    host: Option<String>,

    /// A request header, `Name: value`. Repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,

    /// The method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,

    /// The calling workload's namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,

    /// The calling workload's labels, `k=v,k2=v2`.
    #[arg(long, value_name = "K=V,...")]
    labels: Option<String>,

    /// Describe as the gateway workload with these labels sees it (e.g. `--gateway istio=ingressgateway`).
    #[arg(long, value_name = "K=V,...")]
    gateway: Option<String>,

    /// Files to use in addition to (or instead of) the store; a file's resource replaces the
    /// stored one with the same key.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    files: Vec<String>,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Output,
}

fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("label {p:?} is not k=v"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

pub(crate) async fn run(
    args: Args,
    store: Option<&str>,
    dir: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    // The configuration: store plus files.
    let loaded = crate::input::load(&args.files)?;
    let mut resources: Vec<Resource> = Vec::new();
    if let Some(store) = crate::open_store(store, dir)? {
        let listing = store.list().await?;
        let keys: std::collections::HashSet<_> =
            loaded.resources.iter().map(Resource::key).collect();
        resources.extend(
            listing
                .resources
                .into_iter()
                .filter(|r| !keys.contains(&r.key())),
        );
    } else if args.files.is_empty() {
        anyhow::bail!("no configuration: pass --config-dir DIR or -f FILE");
    }
    // Later files replace earlier resources with the same key, as successive applies would.
    for r in loaded.resources {
        resources.retain(|x| x.key() != r.key());
        resources.push(r);
    }
    let findings = validate_all(&resources);
    if findings.has_errors() {
        eprintln!(
            "warning: the configuration has {} error(s) (run `meshctl analyze`); a running mesh would keep its last good snapshot instead",
            findings.errors().count()
        );
    }
    let snapshot = Snapshot::build(&resources)?;

    // The request.
    let (authority, path_and_query, scheme) = match args.target.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, pq) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
            (auth.to_owned(), pq.to_owned(), scheme.to_owned())
        }
        None => {
            let host = args
                .host
                .clone()
                .ok_or_else(|| anyhow::anyhow!("give --host HOST, or a URL"))?;
            (host, args.target.clone(), "http".to_owned())
        }
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path_and_query.clone(), None),
    };
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("header {h:?} is not `Name: value`"))?;
        headers.append(
            http::HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes())?,
            http::HeaderValue::from_str(v.trim())?,
        );
    }
    let method: http::Method = args.method.to_ascii_uppercase().parse()?;
    let info = RequestInfo::new(
        &method,
        &scheme,
        &authority,
        &path,
        query.as_deref(),
        &headers,
    );
    let (labels, gateways) = match &args.gateway {
        Some(g) => {
            let labels = parse_labels(g)?;
            let gws = snapshot.gateways_for(&labels);
            if gws.is_empty() {
                anyhow::bail!("no Gateway selects a workload with labels {g}");
            }
            (labels, gws)
        }
        None => (
            args.labels
                .as_deref()
                .map(parse_labels)
                .transpose()?
                .unwrap_or_default(),
            Vec::new(),
        ),
    };
    let caller = Caller {
        namespace: &args.namespace,
        labels: &labels,
        gateways: &gateways,
    };
    let explanation = snapshot.explain(&caller, &info);

    let mut text = String::new();
    let w = &mut text;
    let _ = writeln!(
        w,
        "Request:   {method} {scheme}://{authority}{path_and_query}"
    );
    let _ = writeln!(
        w,
        "Caller:    namespace {}{}{}",
        args.namespace,
        if labels.is_empty() {
            String::new()
        } else {
            format!(", labels {}", fmt_labels(&labels))
        },
        if gateways.is_empty() {
            String::new()
        } else {
            format!(", gateway {}", gateways.join(","))
        }
    );
    let _ = writeln!(w, "Host:      {}", explanation.host);
    let mut json_rules = Vec::new();
    for t in &explanation.tried {
        let r = &t.route;
        let _ = writeln!(
            w,
            "Rule:      VirtualService {}/{} spec.http[{}]{} {}",
            r.virtual_service.namespace,
            r.virtual_service.name,
            r.index,
            r.name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            if t.matched { "MATCHED" } else { "not matched" }
        );
        if t.matches.is_empty() {
            let _ = writeln!(w, "             no match conditions: matches every request");
        }
        for (i, conds) in t.matches.iter().enumerate() {
            let all = conds.iter().all(|(_, ok)| *ok);
            let _ = writeln!(
                w,
                "             match {i}: {}",
                if all { "yes" } else { "no" }
            );
            for (desc, ok) in conds {
                let _ = writeln!(w, "               [{}] {desc}", if *ok { "x" } else { " " });
            }
        }
        json_rules.push(serde_json::json!({
            "virtualService": format!("{}/{}", r.virtual_service.namespace, r.virtual_service.name),
            "rule": r.index,
            "name": r.name,
            "matched": t.matched,
            "matches": t.matches.iter().map(|c| c.iter().map(|(d, ok)| serde_json::json!({"condition": d, "ok": ok})).collect::<Vec<_>>()).collect::<Vec<_>>(),
        }));
    }
    let mut json = serde_json::json!({
        "request": { "method": method.as_str(), "url": format!("{scheme}://{authority}{path_and_query}") },
        "host": explanation.host,
        "rules": json_rules,
    });
    let code = match &explanation.routing {
        Routing::Matched(m) => {
            describe_route(w, &mut json, &snapshot, m.route);
            ExitCode::SUCCESS
        }
        Routing::Default { host } => {
            let _ = writeln!(
                w,
                "Outcome:   no VirtualService for {host}: the default route, to every endpoint of the host"
            );
            describe_endpoints(w, &snapshot, host, None);
            let _ = writeln!(w, "Timeout:   none");
            let _ = writeln!(
                w,
                "Retries:   {}",
                describe_retries(&RetryPolicy::MeshDefault)
            );
            json["outcome"] = "default-route".into();
            ExitCode::SUCCESS
        }
        Routing::NoMatch { host, .. } => {
            let _ = writeln!(
                w,
                "Outcome:   no rule matches: 404 with response flag NR (Envoy's answer) for {host}"
            );
            json["outcome"] = "no-route".into();
            ExitCode::SUCCESS
        }
        Routing::NoRoute { host } => {
            let _ = writeln!(
                w,
                "Outcome:   the gateway has no route for host {host}: 404 (NR)"
            );
            json["outcome"] = "no-route".into();
            ExitCode::SUCCESS
        }
    };
    match args.output {
        Output::Text => print!("{text}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Yaml => print!("{}", mesh_core::yaml::to_yaml(&json)),
    }
    Ok(code)
}

fn fmt_labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn describe_endpoints(w: &mut String, snapshot: &Snapshot, host: &str, subset: Option<&str>) {
    let eps = snapshot.endpoints(host, subset);
    if eps.is_empty() {
        let cluster_local =
            mesh_core::host::namespace_of(host, &snapshot.settings().domain).is_some();
        let why = if snapshot.service(host).is_none() && !cluster_local {
            "the registry does not know the host: passthrough to it as addressed"
        } else if snapshot.service(host).is_none() {
            "none (no workload of this service is registered): requests fail with 503 (UH)"
        } else {
            "none: requests fail with 503 (UH)"
        };
        let _ = writeln!(w, "             endpoints: {why}");
    }
    for e in eps {
        let _ = writeln!(
            w,
            "             endpoint {} ports {:?} {}{}",
            e.address,
            e.ports,
            fmt_labels(&e.labels),
            e.workload
                .as_ref()
                .map(|k| format!(" (WorkloadEntry {}/{})", k.namespace, k.name))
                .unwrap_or_default()
        );
    }
}

fn describe_retries(p: &RetryPolicy) -> String {
    match p {
        RetryPolicy::MeshDefault => format!(
            "mesh default: up to {DEFAULT_ATTEMPTS} retries when the request never reached the application (connect failure, refused stream), and on 503 for idempotent methods"
        ),
        RetryPolicy::Disabled => "disabled (attempts: 0)".to_owned(),
        RetryPolicy::Explicit(e) => format!(
            "{} attempts on {}{}, backoff base {:?}",
            e.attempts,
            e.retry_on,
            e.per_try_timeout
                .map(|t| format!(", per try timeout {t:?}"))
                .unwrap_or_default(),
            e.backoff
        ),
    }
}

fn describe_route(w: &mut String, json: &mut serde_json::Value, snapshot: &Snapshot, r: &Route) {
    match &r.action {
        Action::Forward(dests) => {
            let total: u32 = dests.iter().map(|d| d.weight).sum();
            let _ = writeln!(w, "Outcome:   forward");
            let mut jd = Vec::new();
            for d in dests {
                let share = if total == 0 {
                    0.0
                } else {
                    f64::from(d.weight) * 100.0 / f64::from(total)
                };
                let _ = writeln!(
                    w,
                    "Destination: {}{}{} weight {} ({share:.1}%)",
                    d.host,
                    d.subset
                        .as_ref()
                        .map(|s| format!(" subset {s}"))
                        .unwrap_or_default(),
                    d.port.map(|p| format!(" port {p}")).unwrap_or_default(),
                    d.weight
                );
                describe_endpoints(w, snapshot, &d.host, d.subset.as_deref());
                if let Some(policy) = snapshot.traffic_policy(&d.host, d.subset.as_deref())
                    && let Ok(p) = serde_json::to_string(&policy)
                {
                    let _ = writeln!(w, "             traffic policy {p}");
                }
                jd.push(serde_json::json!({"host": &*d.host, "subset": d.subset.as_deref(), "port": d.port, "weight": d.weight, "percent": share}));
            }
            json["outcome"] = "forward".into();
            json["destinations"] = jd.into();
        }
        Action::Redirect(rd) => {
            let _ = writeln!(
                w,
                "Outcome:   redirect {} to {}{}{}",
                rd.code,
                rd.authority.clone().unwrap_or_default(),
                rd.uri.clone().unwrap_or_default(),
                rd.prefix_rewrite
                    .as_ref()
                    .map(|p| format!(" (prefix rewritten to {p})"))
                    .unwrap_or_default()
            );
            json["outcome"] = "redirect".into();
        }
        Action::DirectResponse { status, body } => {
            let _ = writeln!(
                w,
                "Outcome:   direct response {status} ({} bytes)",
                body.len()
            );
            json["outcome"] = "direct-response".into();
        }
        Action::Delegate(k) => {
            let _ = writeln!(
                w,
                "Outcome:   delegate to {}/{} (not implemented by the mesh: 404)",
                k.namespace, k.name
            );
            json["outcome"] = "no-route".into();
        }
    }
    let timeout = r
        .timeout
        .map_or("none (Istio's default: disabled)".to_owned(), |t| {
            format!("{t:?}")
        });
    let _ = writeln!(w, "Timeout:   {timeout}");
    let retries = describe_retries(&r.retries);
    let _ = writeln!(w, "Retries:   {retries}");
    json["timeout"] = r.timeout.map(|t| format!("{t:?}")).into();
    json["retries"] = retries.into();
    if let Some(f) = &r.fault {
        let mut parts = Vec::new();
        if let Some((d, share)) = &f.delay {
            parts.push(format!(
                "delay {d:?} for {}% of requests",
                share.as_percent()
            ));
        }
        if let Some((a, share)) = &f.abort {
            let what = match a {
                AbortWith::Http(s) => format!("HTTP {s}"),
                AbortWith::Grpc(c, n) => format!("gRPC {n} ({c})"),
            };
            parts.push(format!(
                "abort with {what} for {}% of requests",
                share.as_percent()
            ));
        }
        let fault = parts.join("; ");
        let _ = writeln!(w, "Fault:     {fault}");
        json["fault"] = fault.into();
    }
    for m in &r.mirrors {
        let _ = writeln!(
            w,
            "Mirror:    {}{} for {}% of requests",
            m.host,
            m.subset
                .as_ref()
                .map(|s| format!(" subset {s}"))
                .unwrap_or_default(),
            m.share.as_percent()
        );
    }
    if let Some(rw) = &r.rewrite {
        let _ = writeln!(
            w,
            "Rewrite:   {}{}",
            rw.uri
                .as_ref()
                .map(|u| format!("uri {u} "))
                .unwrap_or_default(),
            rw.authority
                .as_ref()
                .map(|a| format!("authority {a}"))
                .unwrap_or_default()
        );
    }
    if !r.headers.is_empty() {
        let _ = writeln!(w, "Headers:   {:?}", r.headers);
    }
}
