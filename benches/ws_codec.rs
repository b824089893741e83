//! WebSocket codec hot paths: decoding masked client frames in place, encoding server
//! frames, unmasking.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::protocol::ws::{encode_client_frame, encode_text, unmask, Flow, WsLimits, WsReader};
use std::hint::black_box;

const LIMITS: WsLimits = WsLimits { max_frame_bytes: 64 * 1024, max_message_bytes: 1024 * 1024 };

fn decode(c: &mut Criterion) {
    let payload = vec![b'x'; 200];
    let one = encode_client_frame(1, true, &payload, [1, 2, 3, 4]);
    let many: Vec<u8> = (0..64).flat_map(|_| encode_client_frame(1, true, b"{\"op\":\"ping\",\"id\":1}", [9, 8, 7, 6])).collect();
    let mut group = c.benchmark_group("ws_decode");
    for (name, frames, bytes) in [("text_200B", 1u64, &one), ("64_small_frames", 64, &many)] {
        group.throughput(Throughput::Elements(frames));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || bytes.clone(),
                |buf| {
                    WsReader::default().feed(buf, &LIMITS, &mut |m| {
                        black_box(m);
                        Flow::Continue
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let payload = vec![b'x'; 200];
    c.bench_function("ws_encode_text_200B", |b| b.iter(|| encode_text(black_box(&payload))));
    let mut block = vec![7u8; 64 * 1024];
    let mut group = c.benchmark_group("ws_unmask");
    group.throughput(Throughput::Bytes(block.len() as u64));
    group.bench_function("64KiB", |b| b.iter(|| unmask(black_box(&mut block), [1, 2, 3, 4])));
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
