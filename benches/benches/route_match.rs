//! Route matching against 1,000 rules on one host.
//!
//! Each rule has two match entries (header + prefix, and a regex), so the worst case (the
//! catch-all after every rule) evaluates 2,000 match entries.

use std::{collections::BTreeMap, hint::black_box};

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_core::{
    config::load_str,
    snapshot::{Caller, RequestInfo, Routing, Snapshot},
};

fn bench(c: &mut Criterion) {
    let loaded = load_str(&benches::virtual_service_yaml("api", "api", 1_000), None);
    assert!(loaded.findings.is_empty());
    let snapshot = Snapshot::build(&loaded.resources).unwrap();
    let labels = BTreeMap::new();
    let caller = Caller::mesh("default", &labels);
    let method = http::Method::GET;
    let mut group = c.benchmark_group("route_match_1000_rules");
    for (name, path, user) in [
        ("first_rule", "/api/0/items", "user-0"),
        ("middle_rule", "/api/500/items", "user-500"),
        ("last_rule_regex", "/re/999/abc", "nobody"),
        ("catch_all", "/nothing", "nobody"),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", user.parse().unwrap());
        group.bench_function(name, |b| {
            b.iter(|| {
                let req = RequestInfo::new(&method, "http", "api:8080", path, None, &headers);
                match snapshot.route(&caller, black_box(&req)) {
                    Routing::Matched(m) => black_box(m.route.index),
                    _ => unreachable!(),
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
