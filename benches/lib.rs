//! Benchmarks of the mesh. See `README.md` in this directory for what each measures and the
//! latest figures.
//!
//! This library holds the generators the benches share.

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
