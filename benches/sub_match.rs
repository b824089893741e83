//! Subscription-index cost on the publish hot path: match one channel against an index
//! of 100,000 subscriptions (90k distinct literal `room.{i}.events`, 9k `room.{i}.*`,
//! 1k wildcard patterns in the style of `dev.*.temp` and `…>`), plus insert/remove cost.
//!
//! Needs `[[bench]] name = "sub_match" harness = false` in Cargo.toml.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringcast::channel::{matches, SubIndex};
use std::time::Duration;

const LITERAL_PATTERNS: u32 = 90_000;
const SINGLE_WILDCARD_PATTERNS: u32 = 9_000;
const OTHER_WILDCARD_PATTERNS: u32 = 1_000;

fn build_index() -> SubIndex<u32> {
    let mut index = SubIndex::new();
    let mut key = 0u32;
    for i in 0..LITERAL_PATTERNS {
        index.insert(&format!("room.{i}.events"), key);
        key += 1;
    }
    for i in 0..SINGLE_WILDCARD_PATTERNS {
        index.insert(&format!("room.{i}.*"), key);
        key += 1;
    }
    for j in 0..OTHER_WILDCARD_PATTERNS {
        let pattern = match j % 4 {
            0 => format!("dev.*.temp.{j}"),
            1 => format!("dev.{j}.>"),
            2 => format!("*.{j}.events"),
            _ => format!("room.{j}.>"),
        };
        index.insert(&pattern, key);
        key += 1;
    }
    assert_eq!(index.patterns(), 100_000);
    index
}

fn count_matches(index: &SubIndex<u32>, channel: &str) -> u32 {
    let mut count = 0u32;
    index.for_each_match(channel, |key| count = count.wrapping_add(key | 1));
    count
}

fn bench_match(c: &mut Criterion) {
    let index = build_index();
    let mut group = c.benchmark_group("sub_match_100k");
    // Hits: literal + room.{i}.* (+ *.{i}.events / room.{i}.> where present).
    for channel in [
        "room.4242.events",
        "room.3.events",
        "room.77777.events",
        "dev.9.temp.8",
        "room.123456.events",
        "$sys.metrics",
    ] {
        let mut n = 0;
        index.for_each_match(channel, |_| n += 1);
        group.bench_function(format!("{channel} ({n} matches)"), |b| {
            b.iter(|| count_matches(&index, black_box(channel)))
        });
    }
    group.finish();

    c.bench_function("matches_fn/room.*.events", |b| {
        b.iter(|| matches(black_box("room.*.events"), black_box("room.4242.events")))
    });
}

fn bench_churn(c: &mut Criterion) {
    let mut index = build_index();
    let mut group = c.benchmark_group("sub_churn_100k");
    group.bench_function("insert+remove literal (new 2 nodes)", |b| {
        b.iter(|| {
            index.insert(black_box("room.999999.events"), 7);
            index.remove(black_box("room.999999.events"), 7)
        })
    });
    group.bench_function("insert+remove key on existing pattern", |b| {
        b.iter(|| {
            index.insert(black_box("room.4242.events"), 999_999);
            index.remove(black_box("room.4242.events"), 999_999)
        })
    });
    group.bench_function("insert+remove wildcard (new node)", |b| {
        b.iter(|| {
            index.insert(black_box("dev.*.humidity"), 7);
            index.remove(black_box("dev.*.humidity"), 7)
        })
    });
    group.finish();
    assert_eq!(index.patterns(), 100_000);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = bench_match, bench_churn
}
criterion_main!(benches);
