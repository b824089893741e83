//! The RabbitMQ Lane backend against the real RabbitMQ (127.0.0.1:5672, guest/guest, as
//! `scripts/services.sh` starts it): accept with confirms, consume, retry through the
//! TTL'd bucket queues, dead-letter, list, replay and purge. Unique queue prefix per test.

use ringcast::backoff::Backoff;
use ringcast::lane::rabbitmq::{RabbitLane, RabbitSource};
use ringcast::lane::{Accepted, DeadAnswer, DeadOp, DeadRecord, Notification, Outcome};
use serde_json::value::RawValue;
use std::time::{Duration, Instant};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn prefix(name: &str) -> String {
    format!("test.{name}.{}.{}", std::process::id(), fastrand::u32(..))
}

fn note(nid: &str) -> Notification {
    let now = ringcast::clock::now_ms();
    Notification { nid: nid.into(), user: "bob".into(), data: RawValue::from_string("{\"n\":1}".into()).unwrap(), ts: now, expires: now + 60_000, attempts: 0, parked: 0 }
}

fn run<F: std::future::Future<Output = ()>>(future: F) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, future);
}

async fn connected(flag: &std::cell::Cell<bool>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !flag.get() {
        assert!(Instant::now() < deadline, "RabbitMQ at {AMQP} did not answer (bash scripts/services.sh starts it)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn accept_retry_dead_replay_purge() {
    run(async {
        let prefix = prefix("cycle");
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400)).unwrap();
        let lane = RabbitLane::start(AMQP, &prefix, &backoff, Default::default(), None, Default::default());
        connected(&lane.connected).await;
        assert_eq!(lane.enqueue(note("r1")).await.unwrap(), Accepted::New);
        assert_eq!(lane.enqueue(note("r1")).await.unwrap(), Accepted::Duplicate, "same nid on the same node");
        let mut source = RabbitSource::start(AMQP, &prefix, &backoff, 16, Default::default());
        let job = tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
        assert_eq!(job.notification.nid, "r1");
        // Retry after 200 ms: it must come back through the bucket queue, not sooner.
        let mut retry = job.notification.clone();
        retry.attempts = 1;
        let delay = backoff.delay(2, 0.99);
        let sent = Instant::now();
        source.finish(job, Outcome::Retry { notification: retry, delay }).await.unwrap();
        let job = tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
        let waited = sent.elapsed();
        assert!(waited >= delay, "came back after {waited:?}, before its {delay:?} bucket");
        assert!(waited < delay + Duration::from_secs(2), "came back only after {waited:?}");
        assert_eq!(job.notification.attempts, 1);
        let record = DeadRecord { notification: job.notification.clone(), reason: "attempts exhausted (1)".into() };
        source.finish(job, Outcome::Dead { record }).await.unwrap();
        // Listing leaves the message in place.
        for round in 0..2 {
            match lane.dead(DeadOp::List { limit: 100 }).await.unwrap() {
                DeadAnswer::List(list) => {
                    assert_eq!(list.len(), 1, "listing round {round}");
                    assert_eq!(list[0].notification.nid, "r1");
                    assert_eq!(list[0].reason, "attempts exhausted (1)");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(lane.dead(DeadOp::Replay { nid: None }).await.unwrap(), DeadAnswer::Count(1)));
        let job = tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
        assert_eq!((job.notification.nid.as_str(), job.notification.attempts), ("r1", 0), "replayed with a fresh count");
        let record = DeadRecord { notification: job.notification.clone(), reason: "expired".into() };
        source.finish(job, Outcome::Dead { record }).await.unwrap();
        assert!(matches!(lane.dead(DeadOp::Purge).await.unwrap(), DeadAnswer::Count(1)));
        assert!(matches!(lane.dead(DeadOp::List { limit: 10 }).await.unwrap(), DeadAnswer::List(l) if l.is_empty()));
        ringcast::lane::rabbitmq::delete_queues(AMQP, &prefix, &backoff).await.unwrap();
    });
}

#[test]
fn unacked_work_is_redelivered_to_the_next_consumer() {
    run(async {
        let prefix = prefix("redeliver");
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400)).unwrap();
        let lane = RabbitLane::start(AMQP, &prefix, &backoff, Default::default(), None, Default::default());
        connected(&lane.connected).await;
        for i in 0..20 {
            lane.enqueue(note(&format!("w{i}"))).await.unwrap();
        }
        {
            // A consumer that takes work and dies without settling it.
            let mut first = RabbitSource::start(AMQP, &prefix, &backoff, 4, Default::default());
            let job = tokio::time::timeout(Duration::from_secs(10), first.next()).await.unwrap().unwrap();
            drop(job);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut second = RabbitSource::start(AMQP, &prefix, &backoff, 64, Default::default());
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 20 {
            let job = tokio::time::timeout(Duration::from_secs(10), second.next()).await.expect("every accepted notification comes back").unwrap();
            seen.insert(job.notification.nid.clone());
            second.finish(job, Outcome::Delivered).await.unwrap();
        }
        ringcast::lane::rabbitmq::delete_queues(AMQP, &prefix, &backoff).await.unwrap();
    });
}

/// Ready messages in a queue, as RabbitMQ counts them.
async fn ready(queue: &str) -> u32 {
    let conn = lapin::Connection::connect(AMQP, Default::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let count = channel.queue_declare(queue.into(), options, Default::default()).await.unwrap().message_count();
    let _ = conn.close(200, "done".into()).await;
    count
}

#[test]
fn concurrent_accepts_share_envelopes_and_every_notification_is_settled() {
    run(async {
        let prefix = prefix("envelope");
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400)).unwrap();
        let metrics = std::sync::Arc::new(ringcast::lane::metrics::LaneMetrics::default());
        let lane = std::rc::Rc::new(RabbitLane::start(AMQP, &prefix, &backoff, Default::default(), None, metrics.clone()));
        connected(&lane.connected).await;
        // 400 accepts at once: while 8 publishes wait for their confirm, the rest queue up
        // and go out together.
        let accepts: Vec<_> = (0..400).map(|i| {
            let lane = lane.clone();
            tokio::task::spawn_local(async move { lane.enqueue(note(&format!("e{i}"))).await })
        }).collect();
        for accept in accepts {
            assert_eq!(accept.await.unwrap().unwrap(), Accepted::New);
        }
        let work = format!("{prefix}.work");
        let messages = ready(&work).await;
        assert!((400 / 64..400).contains(&messages), "400 notifications in {messages} messages");
        let counted = metrics.work_messages.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(counted, u64::from(messages), "ringcast_lane_work_messages_total counts what RabbitMQ holds");
        // A worker sees each notification on its own; a message is acked once all of its
        // notifications are settled, and one left unsettled keeps its whole message.
        let mut source = RabbitSource::start(AMQP, &prefix, &backoff, 64, Default::default());
        let mut seen = std::collections::BTreeSet::new();
        let mut held = None;
        while seen.len() < 400 {
            let job = tokio::time::timeout(Duration::from_secs(10), source.next()).await.expect("every accepted notification").unwrap();
            assert!(seen.insert(job.notification.nid.clone()), "{} twice", job.notification.nid);
            if held.is_none() {
                held = Some(job);
            } else {
                source.finish(job, Outcome::Delivered).await.unwrap();
            }
        }
        drop(source);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let left = ready(&work).await;
        assert_eq!(left, 1, "the message of the unsettled notification went back to the queue, nothing else");
        // Its notifications come again, the unsettled one among them.
        let mut again = RabbitSource::start(AMQP, &prefix, &backoff, 64, Default::default());
        let nid = held.take().unwrap().notification.nid;
        let mut back = Vec::new();
        while !back.contains(&nid) {
            let job = tokio::time::timeout(Duration::from_secs(10), again.next()).await.expect("the unsettled notification comes back").unwrap();
            back.push(job.notification.nid.clone());
            again.finish(job, Outcome::Delivered).await.unwrap();
        }
        assert!(back.len() <= 64);
        ringcast::lane::rabbitmq::delete_queues(AMQP, &prefix, &backoff).await.unwrap();
    });
}
