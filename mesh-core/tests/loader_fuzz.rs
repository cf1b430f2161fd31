//! Property tests: whatever text reaches the loader, loading and validating it never panics.
//!
//! Four generators: arbitrary bytes (as lossy UTF-8), arbitrary strings, valid resources
//! mutated character by character, and valid resources with random JSON values put at random
//! paths (then written as JSON and as YAML). The case counts keep the whole file at a few
//! seconds in a debug build.

use std::path::Path;

use mesh_core::{config::load_str, validate::validate_all};
use proptest::{prelude::*, sample::Index};
use serde_json::{Map, Value};

/// Valid resources of every networking kind: the seeds the structured generators mutate.
const SEEDS: &[&str] = &[
    r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  gateways: [mesh]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
      uri: {prefix: /reviews}
      queryParams: {v: {regex: "[0-9]+"}}
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 100}}
      abort: {httpStatus: 500, percent: 100}
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 80
      headers: {request: {set: {x-v: "2"}}}
    - destination: {host: reviews, subset: v3}
      weight: 20
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset,503"}
    timeout: 0.5s
    mirror: {host: reviews, subset: v1}
    mirrorPercentage: {value: 10}
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}]
      allowMethods: [GET]
      maxAge: 24h
  - redirect: {uri: /v1, redirectCode: 301}
  - directResponse: {status: 503, body: {string: unavailable}}
  tcp:
  - match: [{port: 27017}]
    route:
    - destination: {host: mongo}
"#,
    r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: user, ttl: 0s}, maglev: {tableSize: 65537}}
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 10s}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
"#,
    r#"{"apiVersion":"networking.istio.io/v1alpha3","kind":"Gateway","metadata":{"name":"bookinfo-gateway"},
"spec":{"selector":{"istio":"ingressgateway"},"servers":[{"port":{"number":443,"name":"https","protocol":"HTTPS"},
"hosts":["default/*.example.com"],"tls":{"mode":"SIMPLE","credentialName":"cert"}}]}}"#,
    r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details-svc}
spec:
  hosts: [details.bookinfo.com]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - address: 10.0.0.1
    ports: {http: 8080}
    labels: {app: details}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: details-vm-1}
spec:
  serviceAccount: details-legacy
  address: 127.0.0.1
  labels: {app: details-legacy, version: v1}
"#,
];

/// Loads and validates `text`, and formats every finding: none of it may panic.
fn run(text: &str) {
    let loaded = load_str(text, Some(Path::new("fuzz.yaml")));
    let findings = validate_all(&loaded.resources);
    for f in loaded.findings.iter().chain(&findings.0) {
        let _ = f.to_string();
    }
    for r in &loaded.resources {
        let _ = r.to_yaml();
    }
}

/// Characters that matter to YAML and JSON, and any character.
fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec![
            ' ', '\n', '\t', ':', '-', '[', ']', '{', '}', '"', '\'', '&', '*', '!', '#', '|',
            '>', '%', '@', ',', '?', '\\', '0', '9', '.',
        ]),
        1 => any::<char>(),
    ]
}

/// One edit of a text, at a position chosen relative to its length.
#[derive(Clone, Debug)]
enum Edit {
    Insert(Index, char),
    Delete(Index),
    Replace(Index, char),
    /// Copies a slice of the text to another place.
    Duplicate(Index, Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), interesting_char()).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<Index>().prop_map(Edit::Delete),
        (any::<Index>(), interesting_char()).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<Index>(), any::<Index>(), 1usize..40).prop_map(|(a, b, n)| Edit::Duplicate(a, b, n)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        let len = chars.len();
        match edit {
            Edit::Insert(i, c) => chars.insert(i.index(len + 1), *c),
            Edit::Delete(i) if len > 0 => {
                chars.remove(i.index(len));
            }
            Edit::Replace(i, c) if len > 0 => chars[i.index(len)] = *c,
            Edit::Duplicate(from, to, n) if len > 0 => {
                let start = from.index(len);
                let end = (start + n).min(len);
                let slice: Vec<char> = chars[start..end].to_vec();
                let at = to.index(len + 1);
                chars.splice(at..at, slice);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Field names of Istio's schema (and a few that are not), so generated objects reach deep
/// into the validators.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "hosts", "gateways", "http", "tcp", "tls", "route", "destination", "host", "subset",
            "weight", "match", "uri", "exact", "prefix", "regex", "headers", "queryParams",
            "fault", "delay", "abort", "percent", "percentage", "value", "fixedDelay",
            "httpStatus", "grpcStatus", "retries", "attempts", "perTryTimeout", "retryOn",
            "timeout", "redirect", "redirectCode", "directResponse", "status", "body", "bytes",
            "mirror", "mirrors", "corsPolicy", "allowOrigins", "port", "number", "name",
            "rewrite", "uriRegexRewrite", "delegate", "subsets", "labels", "trafficPolicy",
            "loadBalancer", "simple", "consistentHash", "maglev", "tableSize", "mode",
            "servers", "protocol", "resolution", "endpoints", "address", "ports", "spec",
            "metadata", "kind", "apiVersion", "set", "remove", "end-user", ":authority", "",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z:_.-]{0,8}",
    ]
}

/// Scalars that are valid somewhere in Istio's schema, or nearly.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1000i64..70_000).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "7s",
            "0s",
            "-1s",
            "1x",
            "0.5s",
            "1500us",
            "99999999999999h",
            "([",
            "*",
            "*.com",
            "mesh",
            "v1",
            "ISTIO_MUTUAL",
            "MUTUAL",
            "SIMPLE",
            "ROUND_ROBIN",
            "STATIC",
            "DNS",
            "HTTP",
            "HTTPS",
            "TCP",
            "5xx,reset",
            "14",
            "UNAVAILABLE",
            "aGVsbG8=",
            "unix:///s",
            "10.0.0.0/8",
            "::1",
            "ns/gw",
            "/",
            "",
            "\u{0}",
            "é",
            "reviews.default.svc.cluster.local",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        "[ -~]{0,16}".prop_map(Value::String),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// The JSON pointers of every node of `value`, the root included.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(v, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A seed document as JSON data.
fn seed_value(seed: usize) -> Value {
    let docs = mesh_core::source::parse_documents(SEEDS[seed], None).expect("seeds parse");
    docs[0].value.clone()
}

#[derive(Clone, Debug)]
enum Change {
    /// Replace the node at a pointer.
    Replace(Index, Value),
    /// Add (or overwrite) a key in the object at a pointer (or wrap the node in one).
    Insert(Index, String, Value),
    /// Remove the node at a pointer.
    Remove(Index),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<Index>(), json()).prop_map(|(i, v)| Change::Replace(i, v)),
        (any::<Index>(), key(), json()).prop_map(|(i, k, v)| Change::Insert(i, k, v)),
        any::<Index>().prop_map(Change::Remove),
    ]
}

fn change_value(value: &mut Value, change: &Change) {
    let mut ptrs = Vec::new();
    pointers(value, String::new(), &mut ptrs);
    match change {
        Change::Replace(i, v) => {
            if let Some(node) = value.pointer_mut(&ptrs[i.index(ptrs.len())]) {
                *node = v.clone();
            }
        }
        Change::Insert(i, k, v) => {
            if let Some(node) = value.pointer_mut(&ptrs[i.index(ptrs.len())]) {
                match node {
                    Value::Object(map) => {
                        map.insert(k.clone(), v.clone());
                    }
                    Value::Array(items) => items.push(v.clone()),
                    other => {
                        let mut map = Map::new();
                        map.insert(k.clone(), v.clone());
                        *other = Value::Object(map);
                    }
                }
            }
        }
        Change::Remove(i) => {
            let ptr = &ptrs[i.index(ptrs.len())];
            let Some((parent, last)) = ptr.rsplit_once('/') else {
                return;
            };
            let last = last.replace("~1", "/").replace("~0", "~");
            match value.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        run(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        run(&text);
    }

    #[test]
    fn yaml_shaped_strings_never_panic(text in "([ -~]{0,20}\n){0,20}") {
        run(&text);
    }

    #[test]
    fn mutated_resources_never_panic(
        seed in 0..SEEDS.len(),
        edits in prop::collection::vec(edit(), 1..10),
    ) {
        run(&apply(SEEDS[seed], &edits));
    }

    #[test]
    fn random_values_at_random_paths_never_panic(
        seed in 0..SEEDS.len(),
        changes in prop::collection::vec(change(), 1..5),
    ) {
        let mut value = seed_value(seed);
        for c in &changes {
            change_value(&mut value, c);
        }
        run(&serde_json::to_string(&value).expect("JSON serializes"));
        run(&mesh_core::yaml::to_yaml(&value));
    }

    #[test]
    fn arbitrary_documents_never_panic(value in json()) {
        run(&serde_json::to_string(&value).expect("JSON serializes"));
        run(&mesh_core::yaml::to_yaml(&value));
    }
}

/// The seeds themselves load and validate (so the generators start from real resources).
#[test]
fn seeds_are_valid_resources() {
    for seed in SEEDS {
        let loaded = load_str(seed, None);
        assert!(loaded.findings.is_empty(), "{seed}\n{:?}", loaded.findings);
        assert!(!loaded.resources.is_empty());
        let schema_errors: Vec<String> = loaded
            .resources
            .iter()
            .flat_map(mesh_core::validate::check_resource)
            .filter(|f| f.is_error())
            .map(|f| f.to_string())
            .collect();
        assert!(
            schema_errors.is_empty(),
            "{seed}\n{}",
            schema_errors.join("\n")
        );
    }
}

/// Hand-picked hostile inputs.
#[test]
fn hostile_inputs_never_panic() {
    let deep = "[".repeat(10_000);
    let deep_map = "a:\n".to_owned()
        + &(1..200)
            .map(|i| format!("{}b:\n", " ".repeat(i)))
            .collect::<String>();
    let huge_weight = SEEDS[0]
        .replace("weight: 80", "weight: 2147483647")
        .replace("weight: 20", "weight: 2147483647");
    let huge_table = SEEDS[1].replace("tableSize: 65537", "tableSize: 18446744073709551615");
    let huge_regex = SEEDS[0].replace("\"[0-9]+\"", &format!("\"{}\"", "(a{1000}){1000}"));
    for text in [
        "",
        "---",
        "--- !!binary aGVsbG8=",
        "~",
        "null",
        "[]",
        "{}",
        "\u{feff}apiVersion: v1",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: null\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: null\n",
        "apiVersion: networking.istio.io/v1\nkind: List\nitems: [1, null, {kind: VirtualService}]\n",
        "a: &a [*a]",
        "? [a, b]\n: c\n",
        &deep,
        &deep_map,
        &huge_weight,
        &huge_table,
        &huge_regex,
    ] {
        run(text);
    }
}
