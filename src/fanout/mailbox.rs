//! A bounded multi-producer, single-consumer mailbox: a crossbeam `ArrayQueue` plus an
//! `AtomicWaker`. Producers never block and never grow it: a full mailbox hands the
//! message back (`Err(Full)`) and counts the drop. The consumer is woken only on the
//! empty → non-empty transition (the `notified` flag), and drains in batches.

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;

/// The message a full mailbox refused.
#[derive(Debug)]
pub struct Full<T>(pub T);

pub struct Mailbox<T> {
    queue: ArrayQueue<T>,
    waker: AtomicWaker,
    /// True from the first push after the consumer went idle until the consumer runs.
    notified: AtomicBool,
    pushed: AtomicU64,
    dropped: AtomicU64,
}

impl<T> Mailbox<T> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "mailbox capacity must be positive");
        Mailbox {
            queue: ArrayQueue::new(capacity),
            waker: AtomicWaker::new(),
            notified: AtomicBool::new(false),
            pushed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `message`, waking the consumer if it may be idle. A full mailbox returns
    /// the message and counts a drop; the caller decides what the drop means.
    pub fn push(&self, message: T) -> Result<(), Full<T>> {
        if let Err(message) = self.queue.push(message) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Full(message));
        }
        self.pushed.fetch_add(1, Ordering::Relaxed);
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
        Ok(())
    }

    /// Waits until at least one message is queued, then moves up to `batch_max` of them
    /// into `out`. Only the single consumer may call this.
    pub async fn recv_batch(&self, out: &mut Vec<T>, batch_max: usize) {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            // Cleared before popping: a push after this point either is popped below or
            // sees `false` and wakes us again.
            self.notified.store(false, Ordering::Release);
            while out.len() < batch_max {
                match self.queue.pop() {
                    Some(message) => out.push(message),
                    None => break,
                }
            }
            if out.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Pops one message without waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.queue.pop()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn full_mailbox_returns_the_message_and_counts_it() {
        let mailbox = Mailbox::new(2);
        mailbox.push(1).unwrap();
        mailbox.push(2).unwrap();
        let Full(refused) = mailbox.push(3).unwrap_err();
        assert_eq!(refused, 3);
        assert_eq!(mailbox.dropped(), 1);
        assert_eq!(mailbox.pushed(), 2);
        assert_eq!(mailbox.len(), 2);
    }

    #[test]
    fn consumer_on_another_runtime_receives_every_message_in_order() {
        let mailbox = Arc::new(Mailbox::new(64));
        let producer = {
            let mailbox = mailbox.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u32 {
                    let mut message = i;
                    loop {
                        match mailbox.push(message) {
                            Ok(()) => break,
                            Err(Full(m)) => {
                                message = m;
                                std::thread::yield_now();
                            }
                        }
                    }
                }
            })
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let received = runtime.block_on(async {
            let mut all = Vec::new();
            let mut batch = Vec::new();
            while all.len() < 10_000 {
                mailbox.recv_batch(&mut batch, 128).await;
                assert!(batch.len() <= 128);
                all.append(&mut batch);
            }
            all
        });
        producer.join().unwrap();
        assert_eq!(received, (0..10_000).collect::<Vec<_>>());
    }
}
