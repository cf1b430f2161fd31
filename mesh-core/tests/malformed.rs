//! Malformed Istio configuration: every row is rejected with an error that names the right
//! field (and, for some rows, the right line), and nothing panics.
//!
//! Each row is a small YAML (or JSON) text run through the loader and the validator, as
//! `meshctl analyze` runs them. Cross-resource analysis (an unknown subset, IST0101) is
//! covered by the analysis tests, not here.

use std::path::Path;

use mesh_core::{
    config::load_str,
    validate::{Finding, Severity, check_resource, validate_all},
};

/// One malformed input and the error it must produce.
struct Case {
    /// What is wrong, for the failure report.
    name: &'static str,
    /// The text.
    yaml: String,
    /// The field path of the error (`None` for errors about the text, such as syntax errors).
    path: Option<&'static str>,
    /// A substring of the error's message.
    message: Option<&'static str>,
    /// The line of the error in the text.
    line: Option<usize>,
    /// The finding's code, where another check could report at the same field.
    code: Option<&'static str>,
}

fn case(name: &'static str, yaml: String, path: &'static str) -> Case {
    Case {
        name,
        yaml,
        path: Some(path),
        message: None,
        line: None,
        code: None,
    }
}

impl Case {
    fn message(mut self, m: &'static str) -> Self {
        self.message = Some(m);
        self
    }

    fn line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

/// Indents every line of `text` by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A resource of `kind` named `reviews` whose spec is `spec` (written without indentation).
/// The spec's first line is line 6.
fn resource(kind: &str, spec: &str) -> String {
    let group = match kind {
        "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
            "security.istio.io"
        }
        _ => "networking.istio.io",
    };
    format!(
        "apiVersion: {group}/v1\nkind: {kind}\nmetadata:\n  name: reviews\nspec:\n{}",
        indent(spec, 2)
    )
}

fn vs(spec: &str) -> String {
    resource("VirtualService", spec)
}

/// A VirtualService for `reviews` whose only HTTP route is `route` (written without
/// indentation, as the fields of one list item). The route's first line is line 8.
fn route(route: &str) -> String {
    vs(&format!(
        "hosts: [reviews]\nhttp:\n- {}",
        indent(route, 2).trim_start()
    ))
}

fn dr(spec: &str) -> String {
    resource("DestinationRule", spec)
}

fn cases() -> Vec<Case> {
    let dest = "route:\n- destination: {host: reviews, subset: v1}\n";
    vec![
        // --- text ---
        Case {
            name: "YAML syntax error (unclosed flow sequence)",
            yaml: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews\n  http: []\n".into(),
            path: None,
            message: Some("column"),
            line: None,
            code: Some("MESH0002"),
        },
        Case {
            name: "YAML syntax error (bad indentation)",
            yaml: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n   namespace: x\nspec: {}\n".into(),
            path: None,
            message: Some("column"),
            line: Some(5),
            code: Some("MESH0002"),
        },
        Case {
            name: "tab indentation",
            yaml: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n\tname: reviews\nspec: {}\n".into(),
            path: None,
            message: Some("column"),
            line: Some(4),
            code: Some("MESH0002"),
        },
        Case {
            name: "duplicate key",
            yaml: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nkind: VirtualService\nmetadata: {name: reviews}\n".into(),
            path: None,
            message: Some("duplicate"),
            line: None,
            code: Some("MESH0002"),
        },
        // --- envelope ---
        case(
            "wrong apiVersion",
            vs("hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n")
                .replace("networking.istio.io/v1", "networking.istio.io/v2"),
            "apiVersion",
        )
        .message("networking.istio.io/v1beta1")
        .line(1),
        case(
            "missing apiVersion",
            "kind: VirtualService\nmetadata: {name: reviews}\nspec: {hosts: [reviews]}\n".into(),
            "apiVersion",
        )
        .message("required"),
        case(
            "kind is not a string",
            "apiVersion: networking.istio.io/v1\nkind: [VirtualService]\nmetadata: {name: reviews}\nspec: {}\n".into(),
            "kind",
        )
        .line(2),
        case(
            "missing metadata.name",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n".into(),
            "metadata.name",
        )
        .message("required"),
        case(
            "invalid name Bad_Name",
            vs("hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n")
                .replace("name: reviews", "name: Bad_Name"),
            "metadata.name",
        )
        .message("Bad_Name")
        .line(4),
        case(
            "unknown top-level field",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspecs: {}\n".into(),
            "specs",
        )
        .message("unknown field"),
        // --- schema (types, unknown fields) ---
        case(
            "unknown field at the top of spec",
            vs("hots: [reviews]\n"),
            "spec.hots",
        )
        .message("unknown field")
        .line(6),
        case(
            "unknown field deep inside",
            route("route:\n- destination:\n    hots: reviews\n"),
            "spec.http[0].route[0].destination.hots",
        )
        .message("unknown field")
        .line(10),
        case(
            "weight is a string",
            route("route:\n- destination: {host: reviews}\n  weight: \"80\"\n"),
            "spec.http[0].route[0].weight",
        )
        .message("string"),
        case(
            "unknown enum value",
            dr("host: reviews\ntrafficPolicy:\n  loadBalancer:\n    simple: FASTEST\n"),
            "spec.trafficPolicy.loadBalancer.simple",
        )
        .message("FASTEST"),
        case(
            "JSON with an unknown field",
            r#"{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule","metadata":{"name":"reviews"},"spec":{"host":"reviews","subset":[]}}"#.into(),
            "spec.subset",
        )
        .message("unknown field"),
        // --- durations ---
        case(
            "timeout without a unit",
            route(&format!("{dest}timeout: 7\n")),
            "spec.http[0].timeout",
        )
        .message("duration")
        .line(10),
        case(
            "timeout with an unknown unit",
            route(&format!("{dest}timeout: 1x\n")),
            "spec.http[0].timeout",
        )
        .message("invalid duration"),
        case(
            "negative timeout",
            route(&format!("{dest}timeout: -1s\n")),
            "spec.http[0].timeout",
        )
        .message("negative"),
        case(
            "zero timeout",
            route(&format!("{dest}timeout: 0s\n")),
            "spec.http[0].timeout",
        )
        .message("at least 1ms"),
        case(
            "zero perTryTimeout",
            route(&format!("{dest}retries:\n  attempts: 3\n  perTryTimeout: 0s\n")),
            "spec.http[0].retries.perTryTimeout",
        )
        .message("at least 1ms")
        .line(12),
        case(
            "sub-millisecond fixedDelay",
            route(&format!("{dest}fault:\n  delay:\n    fixedDelay: 1500us\n    percentage: {{value: 10}}\n")),
            "spec.http[0].fault.delay.fixedDelay",
        )
        .message("milliseconds"),
        // --- percentages and weights ---
        case(
            "percentage.value above 100",
            route(&format!("{dest}fault:\n  delay:\n    fixedDelay: 7s\n    percentage: {{value: 101}}\n")),
            "spec.http[0].fault.delay.percentage.value",
        )
        .message("101"),
        case(
            "deprecated percent above 100",
            route(&format!("{dest}fault:\n  abort:\n    httpStatus: 500\n    percent: 150\n")),
            "spec.http[0].fault.abort.percent",
        )
        .message("150"),
        case(
            "mirrorPercentage above 100",
            route(&format!("{dest}mirror: {{host: reviews, subset: v2}}\nmirrorPercentage: {{value: 150.5}}\n")),
            "spec.http[0].mirrorPercentage.value",
        ),
        case(
            "negative weight",
            route("route:\n- destination: {host: reviews, subset: v1}\n  weight: 110\n- destination: {host: reviews, subset: v2}\n  weight: -10\n"),
            "spec.http[0].route[1].weight",
        )
        .message("-10")
        .line(12),
        case(
            "all weights zero",
            route("route:\n- destination: {host: reviews, subset: v1}\n  weight: 0\n- destination: {host: reviews, subset: v2}\n"),
            "spec.http[0].route",
        )
        .message("add up to 0"),
        // --- destinations ---
        case(
            "missing destination host",
            route("route:\n- destination: {subset: v1}\n"),
            "spec.http[0].route[0].destination.host",
        )
        .message("required"),
        case(
            "destination port 0",
            route("route:\n- destination: {host: reviews, port: {number: 0}}\n"),
            "spec.http[0].route[0].destination.port.number",
        ),
        case(
            "invalid subset name",
            route("route:\n- destination: {host: reviews, subset: v1_beta}\n"),
            "spec.http[0].route[0].destination.subset",
        )
        .message("not a valid subset name")
        .code("IST0106"),
        // --- matches ---
        case(
            "bad regex",
            route(&format!("match:\n- uri: {{regex: \"([\"}}\n{dest}")),
            "spec.http[0].match[0].uri.regex",
        )
        .message("invalid regular expression"),
        case(
            "empty match entry",
            route(&format!("match: [{{}}]\n{dest}")),
            "spec.http[0].match[0]",
        )
        .message("empty match"),
        case(
            "empty uri StringMatch",
            route(&format!("match:\n- uri: {{}}\n{dest}")),
            "spec.http[0].match[0].uri",
        )
        .message("found none"),
        case(
            "uppercase header name in a match",
            route(&format!("match:\n- headers:\n    End-User: {{exact: jason}}\n{dest}")),
            "spec.http[0].match[0].headers[\"End-User\"]",
        )
        .message("lowercase"),
        case(
            "match port out of range",
            route(&format!("match:\n- port: 0\n{dest}")),
            "spec.http[0].match[0].port",
        ),
        // --- route actions ---
        case(
            "route and redirect together",
            route(&format!("{dest}redirect: {{uri: /v1/reviews}}\n")),
            "spec.http[0]",
        )
        .message("route and redirect"),
        case(
            "no action",
            route("match:\n- uri: {prefix: /a}\ntimeout: 1s\n"),
            "spec.http[0]",
        )
        .message("one of route, redirect, directResponse or delegate is required"),
        case(
            "rewrite with redirect",
            route("redirect: {uri: /b}\nrewrite: {uri: /c}\n"),
            "spec.http[0].rewrite",
        ),
        case(
            "invalid uriRegexRewrite",
            route(&format!("{dest}rewrite:\n  uriRegexRewrite: {{match: \"(\", rewrite: /x}}\n")),
            "spec.http[0].rewrite.uriRegexRewrite.match",
        ),
        case(
            "redirect code 200",
            route("redirect: {uri: /new, redirectCode: 200}\n"),
            "spec.http[0].redirect.redirectCode",
        )
        .message("301"),
        case(
            "directResponse status 0",
            route("directResponse:\n  body: {string: hello}\n"),
            "spec.http[0].directResponse.status",
        ),
        case(
            "directResponse bytes not base64",
            route("directResponse:\n  status: 200\n  body: {bytes: \"not base64!\"}\n"),
            "spec.http[0].directResponse.body.bytes",
        ),
        // --- fault injection ---
        case(
            "fault without delay or abort",
            route(&format!("{dest}fault: {{}}\n")),
            "spec.http[0].fault",
        )
        .message("delay or abort"),
        case(
            "delay without fixedDelay",
            route(&format!("{dest}fault:\n  delay: {{percentage: {{value: 10}}}}\n")),
            "spec.http[0].fault.delay.fixedDelay",
        ),
        case(
            "exponentialDelay",
            route(&format!("{dest}fault:\n  delay: {{exponentialDelay: 1s}}\n")),
            "spec.http[0].fault.delay.exponentialDelay",
        ),
        case(
            "abort status 99",
            route(&format!("{dest}fault:\n  abort:\n    httpStatus: 99\n    percentage: {{value: 100}}\n")),
            "spec.http[0].fault.abort.httpStatus",
        )
        .message("between 200 and 599, got 99")
        .line(12),
        case(
            "abort status 600",
            route(&format!("{dest}fault:\n  abort: {{httpStatus: 600}}\n")),
            "spec.http[0].fault.abort.httpStatus",
        ),
        case(
            "abort grpcStatus as a number",
            route(&format!("{dest}fault:\n  abort: {{grpcStatus: \"14\"}}\n")),
            "spec.http[0].fault.abort.grpcStatus",
        )
        .message("UNAVAILABLE"),
        case(
            "abort with two error types",
            route(&format!("{dest}fault:\n  abort: {{httpStatus: 503, grpcStatus: UNAVAILABLE}}\n")),
            "spec.http[0].fault.abort",
        )
        .message("only one of"),
        // --- retries ---
        case(
            "unknown retryOn item",
            route(&format!("{dest}retries:\n  attempts: 3\n  retryOn: 5xx,gateway-eror\n")),
            "spec.http[0].retries.retryOn",
        )
        .message("\"gateway-eror\""),
        case(
            "negative attempts",
            route(&format!("{dest}retries: {{attempts: -1}}\n")),
            "spec.http[0].retries.attempts",
        ),
        // --- CORS and headers ---
        case(
            "CORS origin with two alternatives",
            route(&format!("{dest}corsPolicy:\n  allowOrigins:\n  - {{exact: https://a.example, prefix: https://b}}\n")),
            "spec.http[0].corsPolicy.allowOrigins[0]",
        )
        .message("only one of"),
        case(
            "CORS unknown method",
            route(&format!("{dest}corsPolicy:\n  allowMethods: [GET, FETCH]\n")),
            "spec.http[0].corsPolicy.allowMethods[1]",
        ),
        case(
            "removing :authority",
            route(&format!("{dest}headers:\n  request:\n    remove: [\":authority\"]\n")),
            "spec.http[0].headers.request.remove[0]",
        )
        .message(":authority"),
        case(
            "setting a pseudo-header",
            route(&format!("{dest}headers:\n  request:\n    set: {{\":path\": /x}}\n")),
            "spec.http[0].headers.request.set[\":path\"]",
        ),
        case(
            "setting host on a response",
            route(&format!("{dest}headers:\n  response:\n    set: {{host: x}}\n")),
            "spec.http[0].headers.response.set.host",
        ),
        // --- VirtualService hosts and gateways ---
        case(
            "invalid host",
            vs("hosts: [rev_iews]\nhttp:\n- route:\n  - destination: {host: reviews}\n"),
            "spec.hosts[0]",
        )
        .message("rev_iews"),
        case(
            "duplicate hosts",
            vs("hosts: [reviews, reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n"),
            "spec.hosts[1]",
        ),
        case(
            "gateway reference with an empty name",
            vs("hosts: [reviews]\ngateways: [\"istio-system/\"]\nhttp:\n- route:\n  - destination: {host: reviews}\n"),
            "spec.gateways[0]",
        )
        .message("neither part empty")
        .code("IST0106"),
        case(
            "no routes",
            vs("hosts: [reviews]\n"),
            "spec.http",
        ),
        // --- DestinationRule ---
        case(
            "DestinationRule without host",
            dr("subsets:\n- name: v1\n  labels: {version: v1}\n"),
            "spec.host",
        )
        .message("required"),
        case(
            "duplicate subset names",
            dr("host: reviews\nsubsets:\n- name: v1\n  labels: {version: v1}\n- name: v1\n  labels: {version: v2}\n"),
            "spec.subsets[1].name",
        )
        .message("duplicate")
        .line(10),
        case(
            "simple and consistentHash together",
            dr("host: reviews\ntrafficPolicy:\n  loadBalancer:\n    simple: ROUND_ROBIN\n    consistentHash: {httpHeaderName: end-user}\n"),
            "spec.trafficPolicy.loadBalancer",
        )
        .message("mutually exclusive"),
        case(
            "consistentHash without a key",
            dr("host: reviews\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: {maglev: {tableSize: 65537}}\n"),
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        case(
            "maglev table size not prime",
            dr("host: reviews\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      useSourceIp: true\n      maglev: {tableSize: 65536}\n"),
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        )
        .message("prime"),
        case(
            "ISTIO_MUTUAL with a client certificate",
            dr("host: reviews\ntrafficPolicy:\n  tls:\n    mode: ISTIO_MUTUAL\n    clientCertificate: /etc/certs/cert.pem\n"),
            "spec.trafficPolicy.tls.clientCertificate",
        )
        .message("ISTIO_MUTUAL"),
        case(
            "MUTUAL without a private key",
            dr("host: reviews\ntrafficPolicy:\n  tls:\n    mode: MUTUAL\n    clientCertificate: /etc/certs/cert.pem\n"),
            "spec.trafficPolicy.tls.privateKey",
        ),
        case(
            "negative maxConnections",
            dr("host: reviews\ntrafficPolicy:\n  connectionPool:\n    tcp: {maxConnections: -1}\n"),
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        ),
        case(
            "maxEjectionPercent above 100",
            dr("host: reviews\ntrafficPolicy:\n  outlierDetection: {maxEjectionPercent: 150}\n"),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        case(
            "port-level setting without a port",
            dr("host: reviews\ntrafficPolicy:\n  portLevelSettings:\n  - loadBalancer: {simple: RANDOM}\n"),
            "spec.trafficPolicy.portLevelSettings[0].port",
        ),
        case(
            "invalid subset label key",
            dr("host: reviews\nsubsets:\n- name: v1\n  labels: {\"-version\": v1}\n"),
            "spec.subsets[0].labels[\"-version\"]",
        ),
        // --- Gateway ---
        case(
            "Gateway server without a port",
            resource("Gateway", "selector: {istio: ingressgateway}\nservers:\n- hosts: [\"*\"]\n"),
            "spec.servers[0].port",
        )
        .message("required"),
        case(
            "Gateway unknown protocol",
            resource("Gateway", "servers:\n- port: {number: 80, name: http, protocol: HTTP3}\n  hosts: [\"*\"]\n"),
            "spec.servers[0].port.protocol",
        ),
        case(
            "Gateway HTTPS server without tls",
            resource("Gateway", "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [\"*\"]\n"),
            "spec.servers[0].tls",
        ),
        case(
            "Gateway SIMPLE TLS without credentials",
            resource("Gateway", "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [\"*\"]\n  tls: {mode: SIMPLE}\n"),
            "spec.servers[0].tls.serverCertificate",
        ),
        case(
            "Gateway server without hosts",
            resource("Gateway", "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n"),
            "spec.servers[0].hosts",
        ),
        // --- ServiceEntry ---
        case(
            "ServiceEntry port 70000",
            resource("ServiceEntry", "hosts: [api.example.com]\nports:\n- {number: 70000, name: http, protocol: HTTP}\nresolution: DNS\n"),
            "spec.ports[0].number",
        )
        .message("70000"),
        case(
            "ServiceEntry duplicate port numbers",
            resource("ServiceEntry", "hosts: [api.example.com]\nports:\n- {number: 80, name: http, protocol: HTTP}\n- {number: 80, name: http2, protocol: HTTP2}\nresolution: DNS\n"),
            "spec.ports[1].number",
        ),
        case(
            "ServiceEntry wildcard host",
            resource("ServiceEntry", "hosts: [\"*\"]\nports:\n- {number: 80, name: http, protocol: HTTP}\n"),
            "spec.hosts[0]",
        ),
        case(
            "ServiceEntry STATIC endpoint with a DNS name",
            resource("ServiceEntry", "hosts: [api.example.com]\nports:\n- {number: 80, name: http, protocol: HTTP}\nresolution: STATIC\nendpoints:\n- address: api.internal\n"),
            "spec.endpoints[0].address",
        )
        .message("IP"),
        case(
            "ServiceEntry DNS with a wildcard host and no endpoints",
            resource("ServiceEntry", "hosts: [\"*.example.com\"]\nports:\n- {number: 80, name: http, protocol: HTTP}\nresolution: DNS\n"),
            "spec.hosts[0]",
        ),
        // --- WorkloadEntry ---
        case(
            "WorkloadEntry without address",
            resource("WorkloadEntry", "labels: {app: details-legacy}\nserviceAccount: details-legacy\n"),
            "spec.address",
        )
        .message("required"),
        case(
            "WorkloadEntry port 0",
            resource("WorkloadEntry", "address: 10.0.0.1\nports: {http: 0}\n"),
            "spec.ports.http",
        ),
        case(
            "WorkloadEntry invalid service account",
            resource("WorkloadEntry", "address: 10.0.0.1\nserviceAccount: Details_Legacy\n"),
            "spec.serviceAccount",
        ),
        // --- several documents ---
        case(
            "error in the second document",
            format!(
                "{}---\n{}",
                vs("hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n"),
                dr("host: reviews\nsubsets:\n- name: v1\n  labels: {version: v1}\n- name: v1\n")
            ),
            "spec.subsets[1].name",
        )
        .line(20),
    ]
}

/// Loads `text` and validates it as `meshctl analyze` does: load findings, schema and
/// analysis.
fn errors(text: &str) -> Vec<Finding> {
    let loaded = load_str(text, Some(Path::new("t.yaml")));
    let mut findings = loaded.findings;
    findings.extend(validate_all(&loaded.resources).0);
    findings
}

/// Loads `text` and schema-checks each resource (no analysis across resources).
fn schema_findings(text: &str) -> Vec<Finding> {
    let loaded = load_str(text, Some(Path::new("t.yaml")));
    let mut findings = loaded.findings;
    findings.extend(loaded.resources.iter().flat_map(check_resource));
    findings
}

#[test]
fn malformed_inputs_are_rejected_at_the_right_field() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let findings = errors(&case.yaml);
        let errors: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        let hit = errors.iter().find(|f| {
            f.field.as_ref().map(|p| p.as_str()) == case.path
                && case.message.is_none_or(|m| f.message.contains(m))
                && case.code.is_none_or(|c| f.code.id == c)
        });
        match hit {
            None => failures.push(format!(
                "{}: no error at {:?} with message containing {:?} (code {:?}); got:\n    {}",
                case.name,
                case.path,
                case.message,
                case.code,
                findings
                    .iter()
                    .map(|f| format!("{f} [field {:?}]", f.field.as_ref().map(|p| p.as_str())))
                    .collect::<Vec<_>>()
                    .join("\n    ")
            )),
            Some(f) => {
                if let Some(line) = case.line
                    && f.line != Some(line)
                {
                    failures.push(format!(
                        "{}: error on line {:?}, expected line {line}: {f}",
                        case.name, f.line
                    ));
                }
                let file = f.file.as_ref().and_then(|o| o.file.as_deref());
                if file != Some(Path::new("t.yaml")) {
                    failures.push(format!("{}: error does not name the file: {f}", case.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The valid variants of a few rows load with no errors, so the rows fail for the reason
/// they name.
#[test]
fn fixed_variants_are_accepted() {
    let dest = "route:\n- destination: {host: reviews, subset: v1}\n";
    let valid = [
        route(&format!("{dest}timeout: 7s\n")),
        route(&format!(
            "{dest}retries:\n  attempts: 3\n  perTryTimeout: 2s\n  retryOn: 5xx,gateway-error,503\n"
        )),
        route(&format!(
            "{dest}fault:\n  abort:\n    httpStatus: 500\n    percentage: {{value: 100}}\n"
        )),
        route(&format!(
            "{dest}fault:\n  abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 10}}}}\n"
        )),
        route(&format!(
            "match:\n- uri: {{regex: \"/api/v[0-9]+\"}}\n  headers:\n    end-user: {{exact: jason}}\n    x-present: {{}}\n{dest}"
        )),
        route(
            "route:\n- destination: {host: reviews, subset: v1}\n  weight: 80\n- destination: {host: reviews, subset: v2}\n  weight: 20\n",
        ),
        route("redirect: {uri: /new, redirectCode: 308}\n"),
        route("directResponse:\n  status: 503\n  body: {bytes: aGVsbG8=}\n"),
        route(&format!(
            "{dest}corsPolicy:\n  allowOrigins:\n  - exact: https://a.example\n  - regex: \"https://.*\\\\.example\"\n  allowMethods: [GET, POST]\n  maxAge: 24h\n"
        )),
        route(&format!(
            "{dest}headers:\n  request:\n    set: {{x-version: v1}}\n    remove: [x-debug]\n  response:\n    add: {{x-served-by: mesh}}\n"
        )),
        dr(
            "host: reviews\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      useSourceIp: true\n      maglev: {tableSize: 65537}\n",
        ),
        dr(
            "host: reviews\ntrafficPolicy:\n  tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}\n",
        ),
        resource(
            "Gateway",
            "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [\"default/*.example.com\"]\n  tls: {mode: SIMPLE, credentialName: example-cert}\n",
        ),
        resource(
            "ServiceEntry",
            "hosts: [api.example.com]\nports:\n- {number: 443, name: https, protocol: TLS}\nresolution: DNS\nlocation: MESH_EXTERNAL\n",
        ),
        resource(
            "WorkloadEntry",
            "address: 10.0.0.1\nports: {http: 8080}\nlabels: {app: details}\nserviceAccount: details\n",
        ),
    ];
    for text in valid {
        let errors: Vec<String> = schema_findings(&text)
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        assert!(errors.is_empty(), "{text}\n{}", errors.join("\n"));
    }
}
