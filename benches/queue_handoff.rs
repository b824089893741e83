//! Cross-thread hand-off through a `fanout::Mailbox`: one producer thread, one consumer
//! draining in batches (as a shard drains its inbox). Reports time per message.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcast::fanout::{Full, Mailbox};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESSAGES: u64 = 100_000;

fn handoff(capacity: usize, batch: usize, iterations: u64) -> Duration {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let mailbox = Arc::new(Mailbox::new(capacity));
        let producer_box = mailbox.clone();
        let start = Instant::now();
        let producer = std::thread::spawn(move || {
            for i in 0..MESSAGES {
                let mut message = i;
                while let Err(Full(m)) = producer_box.push(message) {
                    message = m;
                    std::hint::spin_loop();
                }
            }
        });
        runtime.block_on(async {
            let mut received = 0u64;
            let mut out = Vec::with_capacity(batch);
            while received < MESSAGES {
                mailbox.recv_batch(&mut out, batch).await;
                received += out.len() as u64;
                out.clear();
            }
        });
        producer.join().unwrap();
        total += start.elapsed();
    }
    total
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("mailbox_handoff");
    group.throughput(Throughput::Elements(MESSAGES));
    group.sample_size(10);
    for batch in [1usize, 256] {
        group.bench_function(format!("cap65536_batch{batch}"), |b| b.iter_custom(|iters| handoff(65_536, batch, iters)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
