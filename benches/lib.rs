//! Benchmarks of the mesh. See `README.md` in this directory for what each measures and the
//! latest figures.
//!
//! This library holds the generators the benches share.

#[path = "tls.rs"]
pub mod tls;

use std::fmt::Write as _;

/// A VirtualService for `host` with `rules` header-matched rules followed by a catch-all,
/// plus a DestinationRule defining the subsets it uses, as YAML.
pub fn virtual_service_yaml(name: &str, host: &str, rules: usize) -> String {
    let mut y = String::new();
    let _ = write!(
        y,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: {name} }}\nspec:\n  hosts: [{host}]\n  http:\n"
    );
    for i in 0..rules {
        let _ = write!(
            y,
            "  - name: r{i}\n    match:\n    - headers: {{ x-user: {{ exact: user-{i} }} }}\n      uri: {{ prefix: /api/{i}/ }}\n    - uri: {{ regex: \"/re/{i}/[a-z]+\" }}\n    timeout: 3s\n    retries: {{ attempts: 2, perTryTimeout: 1s, retryOn: \"5xx,reset\" }}\n    route:\n    - destination: {{ host: {host}, subset: v1 }}\n      weight: 80\n    - destination: {{ host: {host}, subset: v2 }}\n      weight: 20\n"
        );
    }
    let _ = write!(
        y,
        "  - route:\n    - destination: {{ host: {host}, subset: v1 }}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: {name} }}\nspec:\n  host: {host}\n  subsets:\n  - name: v1\n    labels: {{ version: v1 }}\n  - name: v2\n    labels: {{ version: v2 }}\n"
    );
    y
}

/// Bookinfo's reviews service as the layer benches route it: three endpoints in two subsets,
/// a header match for `end-user: jason` and an 80/20 split.
pub const BOOKINFO_REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1-a }
spec: { address: 127.0.0.1, ports: { http: 20001 }, labels: { app: reviews, version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1-b }
spec: { address: 127.0.0.1, ports: { http: 20002 }, labels: { app: reviews, version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v2 }
spec: { address: 127.0.0.1, ports: { http: 20003 }, labels: { app: reviews, version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews }
spec:
  host: reviews
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - match: [{ headers: { end-user: { exact: jason } } }]
    route:
    - { destination: { host: reviews, subset: v1 }, weight: 80 }
    - { destination: { host: reviews, subset: v2 }, weight: 20 }
  - route: [{ destination: { host: reviews, subset: v1 } }]
"#;
