//! Consistent hashing: Envoy's ring hash and Google's Maglev, over a stable hash function.
//!
//! A [`ConsistentTable`] is built once per endpoint list (the balancer caches it per snapshot)
//! and answers each request with a lookup: O(log n) on the ring, O(1) in the Maglev table.
//! Both keep most keys on the same endpoint when the list changes: adding one endpoint to
//! *N* moves about 1/(*N*+1) of the keys, all of them to the new endpoint.
//!
//! # The hash function
//!
//! Keys (a header value, a cookie, an address) and ring points are hashed with
//! [`xxh64`], the 64-bit xxHash that Envoy uses for the same purpose. It is implemented here
//! from the published specification rather than taken from a dependency: the ring must stay
//! the same across builds, processes and crate upgrades (a hasher such as foldhash makes no
//! such promise), otherwise two clients of one service would disagree on where a key lives.
//!
//! # Ring hash
//!
//! As Envoy's `RING_HASH`: every endpoint gets points on a ring of 2⁶⁴ in proportion to its
//! weight, at least [`minimum_ring_size`](HashTable::RingHash) points in total, at most
//! [`MAX_RING_SIZE`]. Point *i* of an endpoint is the hash of `"<key>_<i>"`, where the key
//! is the endpoint's `address:port`. A request goes to the first point at or after its
//! hash, wrapping around.
//!
//! One deliberate difference: Envoy gives the lightest endpoint `ceil(minimumRingSize ×
//! its share)` points, so adding a tenth endpoint to a 1,024-point ring takes 9 of the 103
//! points of every other endpoint and moves about twice the keys it must. We round that
//! count up to a power of two (the ring has between one and two times `minimumRingSize`
//! points), so membership changes keep the other endpoints' points where they were.
//!
//! # Maglev
//!
//! As the Maglev paper (Eisenbud et al., NSDI 2016) and Envoy's weighted variant: each
//! endpoint has a permutation of the table's slots (`offset = h₀ mod M`,
//! `skip = h₁ mod (M − 1) + 1`, with `h₀`, `h₁` the key's hash under seeds 0 and 1) and the
//! endpoints take turns claiming their next free slot, an endpoint of half the largest weight
//! taking every other turn. `M` (`tableSize`) must be prime so that every permutation visits
//! every slot; a size that is not (rejected by validation) is replaced by the default.
//!
//! # Excluded endpoints
//!
//! [`ConsistentTable::lookup`] takes a predicate of acceptable endpoints (not ejected, not
//! already tried by this request): it walks the ring, or the table's following slots, from
//! the key's position to the first acceptable endpoint. Envoy rebuilds the ring without
//! unhealthy hosts instead; both keep every other key where it was, and the keys of a
//! skipped endpoint move to its ring successors.
//!
//! # Examples
//! ```
//! use mesh_core::policy::hash::{ConsistentTable, HashTable, xxh64};
//! let hosts = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)];
//! let ring = ConsistentTable::build(HashTable::RingHash { minimum_ring_size: 1024 }, &hosts);
//! let key = xxh64(b"user-42", 0);
//! let first = ring.lookup(key, |_| true).unwrap();
//! assert_eq!(ring.lookup(key, |_| true), Some(first)); // the same key, the same endpoint
//! // With that endpoint excluded, the key goes to another one.
//! assert_ne!(ring.lookup(key, |i| i != first), Some(first));
//! ```

use std::fmt;

use crate::config::networking::destination_rule::ConsistentHashLb;

/// Istio's default ring size (`ringHash.minimumRingSize`).
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// The largest ring (Envoy's default `maximum_ring_size`, 8 M points).
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Istio's default Maglev table size (`maglev.tableSize`), a prime.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65_537;
/// Maglev table sizes must be primes below this (Envoy's limit).
pub const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

/// Which consistent-hash structure a DestinationRule asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashTable {
    /// Envoy's ring hash (`ringHash`, Istio's default for `consistentHash`).
    RingHash {
        /// The least number of points on the ring.
        minimum_ring_size: u64,
    },
    /// Maglev (`maglev`).
    Maglev {
        /// The number of slots, a prime.
        table_size: u64,
    },
}

impl Default for HashTable {
    fn default() -> Self {
        Self::RingHash {
            minimum_ring_size: DEFAULT_MINIMUM_RING_SIZE,
        }
    }
}

impl HashTable {
    /// The structure `consistentHash` asks for: `maglev` if set, else `ringHash` (or the
    /// deprecated `minimumRingSize`), with Istio's defaults. Out-of-range sizes are replaced
    /// by safe ones (validation reports them): a ring is at least 1 and at most
    /// [`MAX_RING_SIZE`] points, a Maglev table size that is not a prime below
    /// [`MAGLEV_MAX_TABLE_SIZE`] becomes [`DEFAULT_MAGLEV_TABLE_SIZE`].
    ///
    /// # Examples
    /// ```
    /// use mesh_core::config::networking::destination_rule::{ConsistentHashLb, MagLev};
    /// use mesh_core::policy::hash::HashTable;
    /// let ch = ConsistentHashLb { maglev: Some(MagLev { table_size: Some(65536) }), ..Default::default() };
    /// assert_eq!(HashTable::from_settings(&ch), HashTable::Maglev { table_size: 65537 });
    /// ```
    pub fn from_settings(ch: &ConsistentHashLb) -> Self {
        if let Some(maglev) = &ch.maglev {
            let size = maglev.table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE);
            let size = if size < MAGLEV_MAX_TABLE_SIZE && is_prime(size) {
                size
            } else {
                DEFAULT_MAGLEV_TABLE_SIZE
            };
            return Self::Maglev { table_size: size };
        }
        let size = ch
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .or(ch.minimum_ring_size)
            .unwrap_or(DEFAULT_MINIMUM_RING_SIZE);
        Self::RingHash {
            minimum_ring_size: size.clamp(1, MAX_RING_SIZE),
        }
    }
}

/// True if `n` is prime (trial division; sizes here are below [`MAGLEV_MAX_TABLE_SIZE`]).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut f = 3;
    while f * f <= n {
        if n.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

/// A ring or Maglev table over a list of endpoints; lookups return indexes into that list.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsistentTable {
    kind: Kind,
    hosts: usize,
}

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    /// Points sorted by hash: (point hash, endpoint index).
    Ring(Vec<(u64, u32)>),
    /// Slot → endpoint index.
    Maglev(Vec<u32>),
}

impl fmt::Debug for ConsistentTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, len) = match &self.kind {
            Kind::Ring(r) => ("ring", r.len()),
            Kind::Maglev(t) => ("maglev", t.len()),
        };
        f.debug_struct("ConsistentTable")
            .field("kind", &kind)
            .field("entries", &len)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl ConsistentTable {
    /// Builds the structure for `hosts`: each host's stable key (its `address:port`) and
    /// weight (0 counts as 1). Lookups return indexes into `hosts`. An empty list gives an
    /// empty table whose lookups return `None`.
    pub fn build<K: AsRef<str>>(table: HashTable, hosts: &[(K, u32)]) -> Self {
        let kind = match table {
            HashTable::RingHash { minimum_ring_size } => {
                Kind::Ring(build_ring(hosts, minimum_ring_size.clamp(1, MAX_RING_SIZE)))
            }
            HashTable::Maglev { table_size } => {
                let size = if table_size < MAGLEV_MAX_TABLE_SIZE && is_prime(table_size) {
                    table_size
                } else {
                    DEFAULT_MAGLEV_TABLE_SIZE
                };
                Kind::Maglev(build_maglev(hosts, size))
            }
        };
        Self {
            kind,
            hosts: hosts.len(),
        }
    }

    /// The number of ring points or table slots.
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Ring(r) => r.len(),
            Kind::Maglev(t) => t.len(),
        }
    }

    /// True if the table has no entries (no hosts).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of hosts the table was built for.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The host for key hash `hash`: the first acceptable host from the key's position (the
    /// ring's next point, the table's next slot). `None` if no host is acceptable.
    ///
    /// `acceptable` is asked at most once per host: when the first entry is acceptable (the
    /// common case) the lookup allocates nothing; otherwise it remembers the hosts it
    /// rejected and stops once every host was.
    pub fn lookup(&self, hash: u64, mut acceptable: impl FnMut(usize) -> bool) -> Option<usize> {
        let (entries, start): (&[u32], usize) = match &self.kind {
            Kind::Ring(ring) => {
                if ring.is_empty() {
                    return None;
                }
                let start = ring.partition_point(|(h, _)| *h < hash) % ring.len();
                return walk(
                    ring[start..]
                        .iter()
                        .chain(&ring[..start])
                        .map(|(_, i)| *i as usize),
                    self.hosts,
                    &mut acceptable,
                );
            }
            Kind::Maglev(table) => {
                if table.is_empty() {
                    return None;
                }
                (table, (hash % table.len() as u64) as usize)
            }
        };
        walk(
            entries[start..]
                .iter()
                .chain(&entries[..start])
                .map(|i| *i as usize),
            self.hosts,
            &mut acceptable,
        )
    }
}

/// The first acceptable host of `entries`, asking about each host once.
fn walk(
    mut entries: impl Iterator<Item = usize>,
    hosts: usize,
    acceptable: &mut impl FnMut(usize) -> bool,
) -> Option<usize> {
    let first = entries.next()?;
    if acceptable(first) {
        return Some(first);
    }
    let mut rejected = vec![false; hosts];
    let mut left = hosts;
    let mut reject = |i: usize, rejected: &mut Vec<bool>| {
        if let Some(r) = rejected.get_mut(i)
            && !*r
        {
            *r = true;
            left -= 1;
        }
        left == 0
    };
    if reject(first, &mut rejected) {
        return None;
    }
    for i in entries {
        if rejected.get(i).copied().unwrap_or(true) {
            continue;
        }
        if acceptable(i) {
            return Some(i);
        }
        if reject(i, &mut rejected) {
            return None;
        }
    }
    None
}

/// Envoy's ring, with the lightest host's point count rounded up to a power of two (module
/// docs): host *i* gets `base × weight_i / weight_min` points.
fn build_ring<K: AsRef<str>>(hosts: &[(K, u32)], min_size: u64) -> Vec<(u64, u32)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let weight = |w: u32| f64::from(w.max(1));
    let total: f64 = hosts.iter().map(|(_, w)| weight(*w)).sum();
    let min_weight = hosts
        .iter()
        .map(|(_, w)| weight(*w))
        .fold(f64::INFINITY, f64::min);
    // Envoy: the lightest host gets ceil(min_size × its share) points.
    let base = (min_size as f64 * min_weight / total).ceil().max(1.0) as u64;
    let base = base.checked_next_power_of_two().unwrap_or(base) as f64;
    let mut per_weight = base / min_weight;
    if per_weight * total > MAX_RING_SIZE as f64 {
        per_weight = MAX_RING_SIZE as f64 / total;
    }
    let mut ring = Vec::with_capacity((per_weight * total).ceil() as usize + hosts.len());
    let mut key = String::new();
    for (index, (name, w)) in hosts.iter().enumerate() {
        let points = (per_weight * weight(*w)).ceil().max(1.0) as u64;
        for point in 0..points {
            key.clear();
            key.push_str(name.as_ref());
            key.push('_');
            push_decimal(&mut key, point);
            ring.push((xxh64(key.as_bytes(), 0), index as u32));
        }
    }
    ring.sort_unstable();
    ring
}

fn push_decimal(s: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.extend(buf[i..].iter().map(|b| char::from(*b)));
}

/// Weighted Maglev population (Envoy's `MaglevTable`). `size` is a prime.
fn build_maglev<K: AsRef<str>>(hosts: &[(K, u32)], size: u64) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    if hosts.is_empty() {
        return Vec::new();
    }
    struct Entry {
        offset: u64,
        skip: u64,
        weight: u64,
        target: u64,
        next: u64,
    }
    let mut entries: Vec<Entry> = hosts
        .iter()
        .map(|(name, w)| {
            let bytes = name.as_ref().as_bytes();
            Entry {
                offset: xxh64(bytes, 0) % size,
                skip: xxh64(bytes, 1) % (size - 1).max(1) + 1,
                weight: u64::from((*w).max(1)),
                target: 0,
                next: 0,
            }
        })
        .collect();
    let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1);
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    let mut table = vec![EMPTY; len];
    let mut filled = 0usize;
    let mut iteration = 1u64;
    while filled < len {
        for (index, e) in entries.iter_mut().enumerate() {
            if filled == len {
                break;
            }
            if iteration * e.weight < e.target {
                continue;
            }
            e.target += max_weight;
            // The permutation visits every slot when `size` is prime; the bound guards the
            // loop in any case.
            let mut slot = (e.offset + e.skip * e.next) % size;
            let mut probes = 0u64;
            while table[slot as usize] != EMPTY {
                e.next += 1;
                probes += 1;
                slot = if probes < size {
                    (e.offset + e.skip.wrapping_mul(e.next)) % size
                } else {
                    (slot + 1) % size
                };
            }
            table[slot as usize] = index as u32;
            e.next += 1;
            filled += 1;
        }
        iteration += 1;
    }
    table
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn read64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn read32(b: &[u8]) -> u64 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u64::from(u32::from_le_bytes(a))
}

fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge_round(acc: u64, val: u64) -> u64 {
    (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 of `input` with `seed`: the 64-bit xxHash, as specified by its author and used by
/// Envoy for hash-based load balancing. Stable across platforms and versions.
///
/// # Examples
/// ```
/// use mesh_core::policy::hash::xxh64;
/// assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
/// ```
pub fn xxh64(input: &[u8], seed: u64) -> u64 {
    let len = input.len() as u64;
    let mut p = input;
    let mut h = if p.len() >= 32 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        while p.len() >= 32 {
            v1 = round(v1, read64(p));
            v2 = round(v2, read64(&p[8..]));
            v3 = round(v3, read64(&p[16..]));
            v4 = round(v4, read64(&p[24..]));
            p = &p[32..];
        }
        let mut h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        for v in [v1, v2, v3, v4] {
            h = merge_round(h, v);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);
    while p.len() >= 8 {
        h ^= round(0, read64(p));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        p = &p[8..];
    }
    if p.len() >= 4 {
        h ^= read32(p).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        p = &p[4..];
    }
    for b in p {
        h ^= u64::from(*b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::networking::destination_rule::{MagLev, RingHash};

    const RING: HashTable = HashTable::RingHash {
        minimum_ring_size: 1024,
    };
    const MAGLEV: HashTable = HashTable::Maglev {
        table_size: DEFAULT_MAGLEV_TABLE_SIZE,
    };

    fn hosts(n: usize) -> Vec<(String, u32)> {
        (0..n)
            .map(|i| (format!("10.0.{}.{}:8080", i / 256, i % 256), 1))
            .collect()
    }

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|k| xxh64(format!("user-{k}").as_bytes(), 0))
    }

    fn shares(table: &ConsistentTable, n: usize, samples: u64) -> Vec<u64> {
        let mut counts = vec![0; n];
        for h in keys(samples) {
            counts[table.lookup(h, |_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        // 39 bytes: the 32-byte stripe loop, an 8-byte lane and the byte tail.
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
        assert_ne!(xxh64(b"abc", 1), xxh64(b"abc", 0));
    }

    #[test]
    fn settings_map_to_tables_with_safe_sizes() {
        let table = |ch: ConsistentHashLb| HashTable::from_settings(&ch);
        assert_eq!(table(ConsistentHashLb::default()), RING);
        let ring = |size| ConsistentHashLb {
            ring_hash: Some(RingHash {
                minimum_ring_size: Some(size),
            }),
            ..Default::default()
        };
        assert_eq!(
            table(ring(10)),
            HashTable::RingHash {
                minimum_ring_size: 10
            }
        );
        assert_eq!(
            table(ring(u64::MAX)),
            HashTable::RingHash {
                minimum_ring_size: MAX_RING_SIZE
            }
        );
        assert_eq!(
            table(ring(0)),
            HashTable::RingHash {
                minimum_ring_size: 1
            }
        );
        let deprecated = ConsistentHashLb {
            minimum_ring_size: Some(2048),
            ..Default::default()
        };
        assert_eq!(
            table(deprecated),
            HashTable::RingHash {
                minimum_ring_size: 2048
            }
        );
        let maglev = |size| ConsistentHashLb {
            maglev: Some(MagLev { table_size: size }),
            ..Default::default()
        };
        assert_eq!(table(maglev(None)), MAGLEV);
        assert_eq!(
            table(maglev(Some(251))),
            HashTable::Maglev { table_size: 251 }
        );
        for bad in [0, 1, 65_536, MAGLEV_MAX_TABLE_SIZE, u64::MAX] {
            assert_eq!(table(maglev(Some(bad))), MAGLEV, "{bad}");
        }
    }

    #[test]
    fn empty_tables_pick_nothing() {
        for kind in [RING, MAGLEV] {
            let t = ConsistentTable::build::<&str>(kind, &[]);
            assert!(t.is_empty());
            assert_eq!(t.lookup(42, |_| true), None);
        }
    }

    #[test]
    fn builds_are_deterministic_and_keys_stay_put() {
        for kind in [RING, MAGLEV] {
            let a = ConsistentTable::build(kind, &hosts(7));
            let b = ConsistentTable::build(kind, &hosts(7));
            assert!(a == b, "{kind:?}");
            for h in keys(1_000) {
                let first = a.lookup(h, |_| true);
                assert!(first.is_some());
                assert_eq!(first, a.lookup(h, |_| true));
                assert_eq!(first, b.lookup(h, |_| true));
            }
        }
    }

    #[test]
    fn ring_size_follows_the_minimum_and_weights() {
        let ring = ConsistentTable::build(RING, &hosts(3));
        // ceil(1024 / 3) = 342 points each, rounded up to 512.
        assert_eq!(ring.len(), 3 * 512);
        // The lightest host gets at least ceil(min × share) points.
        let weighted = [("a:1", 1), ("b:1", 3)];
        let ring = ConsistentTable::build(RING, &weighted);
        assert!(ring.len() >= 4 * 256, "{}", ring.len());
        let maglev = ConsistentTable::build(MAGLEV, &hosts(3));
        assert_eq!(maglev.len(), 65_537);
        assert!(format!("{maglev:?}").contains("maglev"));
    }

    #[test]
    fn keys_spread_evenly() {
        for kind in [RING, MAGLEV] {
            let n = 5;
            let counts = shares(&ConsistentTable::build(kind, &hosts(n)), n, 50_000);
            // 10,000 expected each; a 1,024-point ring is within ±15 %.
            for c in &counts {
                assert!((8_500..=11_500).contains(c), "{kind:?}: {counts:?}");
            }
        }
    }

    #[test]
    fn weights_are_respected() {
        for kind in [RING, MAGLEV] {
            let weighted = [("10.0.0.1:80", 1), ("10.0.0.2:80", 3)];
            let counts = shares(&ConsistentTable::build(kind, &weighted), 2, 40_000);
            // 3:1 → 30,000 expected for the heavy one.
            assert!(
                (28_000..=32_000).contains(&counts[1]),
                "{kind:?}: {counts:?}"
            );
        }
    }

    #[test]
    fn adding_an_endpoint_moves_about_one_nth_of_the_keys() {
        for kind in [RING, MAGLEV] {
            let n = 10;
            let before = ConsistentTable::build(kind, &hosts(n));
            let after = ConsistentTable::build(kind, &hosts(n + 1));
            let mut moved = 0;
            let mut moved_elsewhere = 0;
            let samples = 20_000;
            for h in keys(samples) {
                let (a, b) = (before.lookup(h, |_| true), after.lookup(h, |_| true));
                if a != b {
                    moved += 1;
                    if b != Some(n) {
                        moved_elsewhere += 1;
                    }
                }
            }
            // 1/11 ≈ 1,818 expected.
            assert!((1_300..=2_400).contains(&moved), "{kind:?}: {moved}");
            // The ring moves keys only to the new endpoint; Maglev almost only.
            assert!(
                moved_elsewhere <= samples / 100,
                "{kind:?}: {moved_elsewhere}"
            );
        }
    }

    #[test]
    fn excluded_hosts_are_walked_past() {
        for kind in [RING, MAGLEV] {
            let table = ConsistentTable::build(kind, &hosts(4));
            let mut others = [0u64; 4];
            for h in keys(4_000) {
                let first = table.lookup(h, |_| true).unwrap();
                let next = table.lookup(h, |i| i != first).unwrap();
                assert_ne!(next, first);
                // Deterministic: the same key finds the same replacement.
                assert_eq!(Some(next), table.lookup(h, |i| i != first));
                if first == 0 {
                    others[next] += 1;
                }
                // Keys of other hosts stay put when host 0 is excluded.
                if first != 0 {
                    assert_eq!(table.lookup(h, |i| i != 0), Some(first));
                }
            }
            // Host 0's keys spread over the others.
            assert!(others[1..].iter().all(|c| *c > 100), "{kind:?}: {others:?}");
            assert_eq!(table.lookup(7, |_| false), None);
            // Each host is asked about once, even when all are rejected.
            let mut asked = 0;
            assert_eq!(
                table.lookup(7, |_| {
                    asked += 1;
                    false
                }),
                None
            );
            assert_eq!(asked, 4, "{kind:?}");
        }
    }

    #[test]
    fn odd_sizes_do_not_panic() {
        // More hosts than slots, a tiny ring, a non-prime size passed directly.
        let many = hosts(300);
        for kind in [
            HashTable::Maglev { table_size: 251 },
            HashTable::Maglev { table_size: 100 },
            HashTable::RingHash {
                minimum_ring_size: 1,
            },
        ] {
            let t = ConsistentTable::build(kind, &many);
            assert!(t.lookup(12345, |_| true).is_some(), "{kind:?}");
        }
    }

    #[test]
    fn primes() {
        let small: Vec<u64> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_536));
    }
}
