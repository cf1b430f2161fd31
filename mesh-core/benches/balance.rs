//! The cost of one load-balancing decision: the pure pick of each simple algorithm, and a
//! consistent-hash lookup (ring hash and Maglev), at 10, 100 and 1,000 endpoints.
//!
//! Run with `cargo bench -p mesh-core --bench balance` (`-- --test` runs each once).

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mesh_core::policy::{
    balance::{Algorithm, Candidate, pick},
    hash::{ConsistentTable, HashTable, xxh64},
};

const SIZES: [usize; 3] = [10, 100, 1_000];

/// SplitMix64: a cheap deterministic generator, so the bench measures the pick.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn candidates(n: usize, weighted: bool) -> Vec<Candidate> {
    (0..n)
        .map(|i| {
            let weight = if weighted { 1 + (i % 4) as u32 } else { 1 };
            Candidate::new((i % 7) as u64, weight)
        })
        .collect()
}

fn simple(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::LeastRequest,
        Algorithm::Random,
    ] {
        for weighted in [false, true] {
            for n in SIZES {
                let cands = candidates(n, weighted);
                let mut rng = SplitMix(7);
                let mut cursor = 0u64;
                let name = format!("{algorithm}{}", if weighted { "/weighted" } else { "" });
                group.bench_with_input(BenchmarkId::new(name, n), &cands, |b, cands| {
                    b.iter(|| {
                        cursor += 1;
                        pick(
                            algorithm,
                            black_box(cands),
                            |_| false,
                            cursor,
                            &mut |bound| rng.next() % bound,
                        )
                    });
                });
            }
        }
    }
    group.finish();
}

fn consistent(c: &mut Criterion) {
    let mut group = c.benchmark_group("consistent_hash");
    for (name, kind) in [
        ("ring_hash", HashTable::default()),
        ("maglev", HashTable::Maglev { table_size: 65_537 }),
    ] {
        for n in SIZES {
            let hosts: Vec<(String, u32)> = (0..n)
                .map(|i| {
                    (
                        format!("10.{}.{}.{}:8080", i / 65_536, (i / 256) % 256, i % 256),
                        1,
                    )
                })
                .collect();
            let table = ConsistentTable::build(kind, &hosts);
            let mut k = 0u64;
            group.bench_with_input(BenchmarkId::new(name, n), &table, |b, table| {
                b.iter(|| {
                    k += 1;
                    let hash = xxh64(&k.to_le_bytes(), 0);
                    table.lookup(black_box(hash), |_| true)
                });
            });
        }
    }
    group.bench_function("xxh64/user-id", |b| {
        b.iter(|| xxh64(black_box(b"8c1d9f6e-user-1234"), 0));
    });
    group.finish();
}

criterion_group!(benches, simple, consistent);
criterion_main!(benches);
