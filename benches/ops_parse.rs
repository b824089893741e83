//! Hot-path costs of protocol v1 JSON frames: parsing the ops clients send most (`pub`
//! with a typical 200-byte payload, `sub`) and encoding the `msg` frame every subscriber
//! receives.
//!
//! Run: `cargo bench --bench ops_parse`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringcast::protocol::ops::{msg_into, parse_client_op, ClientOp};

/// A JSON object of exactly `bytes_len` bytes, shaped like an app event.
fn data_of_len(bytes_len: usize) -> String {
    let prefix = r#"{"type":"chat","user":"u-1842","text":""#;
    let suffix = r#"","ts":1718000000123}"#;
    let fill = bytes_len - prefix.len() - suffix.len();
    format!("{prefix}{}{suffix}", "x".repeat(fill))
}

fn bench_parse(c: &mut Criterion) {
    let data = data_of_len(200);
    assert_eq!(data.len(), 200);
    let pub_frame = format!(r#"{{"op":"pub","id":17,"ch":"room.lobby.chat","data":{data}}}"#);
    let sub_frame = r#"{"op":"sub","id":3,"ch":"room.lobby.*","since":1234,"presence":true}"#;

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(pub_frame.len() as u64));
    group.bench_function("pub_200b_data", |b| {
        b.iter(|| match parse_client_op(black_box(&pub_frame)) {
            Ok(ClientOp::Pub { data, .. }) => black_box(data.get().len()),
            other => panic!("{other:?}"),
        })
    });
    group.throughput(Throughput::Bytes(sub_frame.len() as u64));
    group.bench_function("sub", |b| {
        b.iter(|| match parse_client_op(black_box(sub_frame)) {
            Ok(op @ ClientOp::Sub { .. }) => black_box(op.id()),
            other => panic!("{other:?}"),
        })
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let data = data_of_len(200);
    let mut out = Vec::with_capacity(512);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("msg_200b_data", |b| {
        b.iter(|| {
            out.clear();
            msg_into(
                &mut out,
                black_box("room.lobby.chat"),
                black_box(data.as_bytes()),
                Some(981_234),
            );
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_parse, bench_encode);
criterion_main!(benches);
