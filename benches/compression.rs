//! permessage-deflate on the fan-out path: one telemetry message to N subscribers,
//! compressed once and shared (what the shard does) versus compressed once per
//! subscriber (what per-connection deflate contexts cost), and the plain frame for scale.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcast::protocol::deflate::Deflater;
use ringcast::protocol::ws::encode_text;
use std::hint::black_box;

/// ~1.5 KB of device readings, as the compression integration test and BENCHMARKS use.
fn telemetry() -> Vec<u8> {
    let mut s = String::from("{\"op\":\"msg\",\"ch\":\"tele.dev-0042\",\"data\":{\"device\":\"dev-0042\",\"site\":\"plant-north\",\"readings\":[");
    for i in 0..12 {
        s.push_str(&format!("{{\"sensor\":\"temperature-{i}\",\"value\":{}.{},\"unit\":\"celsius\",\"status\":\"ok\",\"battery\":{}}},", 20 + i % 4, i, 87 - i));
    }
    s.pop();
    s.push_str("]}}");
    s.into_bytes()
}

fn fanout(c: &mut Criterion) {
    let frame = encode_text(&telemetry());
    let mut deflater = Deflater::new(6);
    let compressed = deflater.compress_frame(&frame, 0).expect("telemetry compresses");
    eprintln!("telemetry frame {} B, compressed {} B ({:.1}x)", frame.len(), compressed.len(), frame.len() as f64 / compressed.len() as f64);
    for subscribers in [100usize, 1000] {
        let mut group = c.benchmark_group(format!("deflate_fanout_{subscribers}"));
        group.throughput(Throughput::Elements(subscribers as u64));
        // Each subscriber's queue entry: a clone of the shared buffer (a refcount).
        group.bench_function("plain_shared", |b| {
            b.iter(|| {
                for _ in 0..subscribers {
                    black_box(frame.clone());
                }
            })
        });
        group.bench_function("compress_once_shared", |b| {
            b.iter(|| {
                let shared = deflater.compress_frame(black_box(&frame), 256).unwrap();
                for _ in 0..subscribers {
                    black_box(shared.clone());
                }
            })
        });
        group.bench_function("compress_per_connection", |b| {
            b.iter(|| {
                for _ in 0..subscribers {
                    black_box(deflater.compress_frame(black_box(&frame), 256).unwrap());
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);
