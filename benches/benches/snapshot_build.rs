//! Building a snapshot of 10,000 routes (500 VirtualServices of 20 rules), and the steps
//! before it: parsing the YAML and validating the whole set, as the store's watcher does on
//! every change.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_core::{config::load_str, snapshot::Snapshot, validate::validate_all};

fn bench(c: &mut Criterion) {
    let yaml: String = (0..500)
        .map(|i| benches::virtual_service_yaml(&format!("svc-{i}"), &format!("svc-{i}"), 19))
        .collect::<Vec<_>>()
        .join("---\n");
    let loaded = load_str(&yaml, None);
    assert!(loaded.findings.is_empty());
    let routes: usize = loaded
        .resources
        .iter()
        .map(|r| match &r.spec {
            mesh_core::config::Spec::VirtualService(vs) => vs.http.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(routes, 10_000);
    let mut group = c.benchmark_group("snapshot_10000_routes");
    group.sample_size(10);
    group.bench_function("parse_yaml", |b| {
        b.iter(|| load_str(black_box(&yaml), None))
    });
    group.bench_function("validate_all", |b| {
        b.iter(|| validate_all(black_box(&loaded.resources)))
    });
    group.bench_function("build", |b| {
        b.iter(|| Snapshot::build(black_box(&loaded.resources)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
