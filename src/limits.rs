//! Every bound in one place, with its unit last in the name and why it has that value.
//! The config module turns each into a flag/env/file key; the metrics module shows how
//! close each one is. Relations between them are checked at compile time below.

/// WebSocket connections per node. 100k is a safe default for a small host; a tuned
/// host goes to 1M (see tuning/README.md), each costing one descriptor.
pub const CONNECTIONS_MAX: usize = 100_000;
/// New sessions (WebSocket upgrades, long-poll opens) per shard per second, burst one
/// second's worth. 2,000/s lets a 2-shard node take back 100k clients in ~25 s after a
/// restart, while handshakes (tens of µs plain, a few hundred with TLS) stay a small share
/// of the core that also fans out to the connections it already holds.
pub const ACCEPT_RATE_PER_SHARD: u32 = 2_000;
/// Highest configurable accept rate: the token bucket's integer math stays exact up to
/// here, and it is far above what one core can handshake.
pub const ACCEPT_RATE_PER_SHARD_MAX: u32 = 10_000_000;
/// Drain window: 1012 closes are spread over it so clients reconnect elsewhere without a
/// thundering herd. 30 s fits Kubernetes' default grace period pattern (deploy/).
pub const DRAIN_MS: u64 = 30_000;
/// Longest drain: beyond an hour an orchestrator has long since killed the process.
pub const DRAIN_MS_MAX: u64 = 3_600_000;
/// Shards per node: shard ids travel as u16 and the bridge's shard set is 256 bits.
pub const SHARD_COUNT_MAX: usize = 256;
/// One WebSocket frame. 64 KiB covers any sane JSON op while bounding what one read can
/// make us buffer for a partial frame.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;
/// One reassembled (fragmented) message. Also the largest `data` a publish may carry.
/// Every message must fit a subscriber's outbound backlog (OUTBOUND_BYTES_MAX), or its
/// delivery closes every subscriber with 4008 (and, on a history channel, again on each
/// resume). 128 KiB (it was 1 MiB) is half that backlog: one largest message still leaves
/// room for the traffic queued ahead of it. Bigger payloads belong in object storage, with
/// a link on the channel.
pub const MESSAGE_BYTES_MAX: usize = 128 * 1024;
/// Outbound backlog per connection. 256 KiB holds ~1,000 typical 200-byte messages of
/// burst for a reader that is briefly slow; past it the reader is closed with 4008.
pub const OUTBOUND_BYTES_MAX: usize = 256 * 1024;
/// Quiet time before the server pings. 25 s stays under the 30 s idle timeouts common in
/// proxies and load balancers.
pub const HEARTBEAT_MS: u64 = 25_000;
/// Silence after which a peer is dead: two missed heartbeats plus slack.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 60_000;
/// Time for a request head (or an upgrade) to arrive: slowloris protection.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Time for clients to answer the 1001 close at shutdown before sockets are dropped.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Bridge → shard queue, in messages. 64k absorbs a ~100 ms stall of the shard at 600k
/// publishes/s before drops start (counted per shard).
pub const SHARD_INBOX_MESSAGES_MAX: usize = 65_536;
/// Upper bound for `coalesce_delay` (µs): past it the wait is latency a person notices
/// more than syscalls saved.
pub const COALESCE_DELAY_US_MAX: u64 = 1_000;
/// Default for `coalesce_bytes`: consecutive messages on one channel in one shard turn
/// go to each subscriber as one buffer up to this size. A turn takes at most 256
/// messages, so 64KiB holds a whole turn of ~250-byte messages.
pub const COALESCE_BYTES: usize = 64 * 1024;
/// Upper bound for `coalesce_bytes`.
pub const COALESCE_BYTES_MAX: usize = 1 << 20;
/// Default for `compression_threshold`: smaller messages go out uncompressed. Deflate's
/// block and Huffman-table overhead eats most of the gain below a few hundred bytes.
pub const COMPRESSION_THRESHOLD_BYTES: usize = 256;
/// Default for `compression_level` (zlib's default: most of 9's ratio at a third of its cost).
pub const COMPRESSION_LEVEL: u32 = 6;
/// Backlog of one subscriber from which messages of `--conflate` channels replace their
/// queued predecessor: a quarter of the default outbound bound, so a dashboard on a slow
/// link stays well clear of the 4008 close.
pub const CONFLATE_THRESHOLD_BYTES: usize = 64 * 1024;
/// Conflated channels one backlog tracks (a wildcard subscription can match many); each
/// entry is a channel name and a pointer. Past it messages queue as usual, counted in
/// `ringcast_conflate_channels_full_total` (config key `conflate_channels`).
pub const CONFLATE_CHANNELS_MAX: usize = 1024;
pub const CONFLATE_CHANNELS_MAX_MAX: usize = 65_536;
/// Shard → bridge queue (publishes and interest changes), in messages.
pub const BRIDGE_INBOX_MESSAGES_MAX: usize = 65_536;
/// Smallest queue a user may configure: below this, ordinary bursts drop.
pub const INBOX_MESSAGES_MIN: usize = 64;
/// The shard's one receive buffer, shared by every connection it owns.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Buffers per vectored send. The kernel's IOV_MAX is 1024; 64 frames per call already
/// amortises the syscall, and keeps the iovec array on the stack.
pub const WRITE_IOVECS_MAX: usize = 64;
/// Subscriptions one connection may hold.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 1024;
/// Client ops per second per connection (token bucket, burst twice this).
pub const CLIENT_MESSAGES_PER_SECOND_MAX: u32 = 1000;
/// io_uring submission queue entries per shard.
pub const URING_ENTRIES: u32 = 4096;
/// Longest `--sqpoll` idle time: past a second of no work the poller should sleep anyway.
pub const SQPOLL_IDLE_MS_MAX: u64 = 1000;
/// HTTP request line, header count, whole head and body: room for long JWTs in the query
/// string while keeping a hostile client's cost small.
pub const REQUEST_LINE_BYTES_MAX: usize = 8 * 1024;
pub const HEADER_COUNT_MAX: usize = 64;
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;
/// NATS mode: publishes waiting for the NATS client. 64k rides out a ~100 ms NATS stall
/// at 600k publishes/s; past it publishes are refused and counted.
pub const NATS_PUBLISH_QUEUE_MESSAGES: usize = 65_536;
/// Messages kept per history channel: enough for a client that was away for a few
/// minutes on a busy channel, small enough to replay in one go.
pub const HISTORY_MESSAGES_PER_CHANNEL: usize = 1000;
/// History age: a client gone longer than an hour resyncs instead of replaying.
pub const HISTORY_AGE_MS: u64 = 3_600_000;
/// Most messages one resume may replay: a bigger gap is cheaper to resync than to replay
/// (it would also need that much outbound room on the connection).
pub const HISTORY_REPLAY_MESSAGES_MAX: usize = 10_000;
/// Embedded mode: channels with a history ring (each up to HISTORY_MESSAGES_PER_CHANNEL).
pub const HISTORY_CHANNELS_MAX: usize = 100_000;
/// Replicas a JetStream stream may have (the server's own limit).
pub const HISTORY_REPLICAS_MAX: usize = 5;
/// Replays running at once on the bridge; more answer 503 (retry) rather than queue.
pub const REPLAYS_CONCURRENT_MAX: usize = 256;
/// Replayed frames per bridge → shard message, so one replay cannot fill a shard inbox.
pub const REPLAY_CHUNK_FRAMES: usize = 256;
/// NATS mode (default of `nats_sub_confirm_timeout`): how long a `sub` waits for its
/// subscription to be confirmed on the server before it is answered 503 and undone. A healthy round trip takes well under a
/// millisecond; this rides out a short reconnect.
pub const SUB_CONFIRM_TIMEOUT_MS: u64 = 5_000;
/// Default of `nats_cluster_query_timeout`: how long a cluster-wide query (the Pusher
/// channel API, terminate_connections) waits for every node's answer before it is
/// answered 503. A healthy node answers in a few milliseconds (one turn of its bridge
/// and of each shard); 2 s rides out a busy turn and stays well under the Pusher server
/// libraries' request timeouts (5 s and more).
pub const CLUSTER_QUERY_TIMEOUT_MS: u64 = 2_000;
/// NATS mode (default of `nats_sub_confirms_waiting`): `sub`s waiting for that
/// confirmation on one node. Each costs a small task
/// on the bridge; past it a `sub` answers 503 at once (counted): a node this far behind
/// is not confirming anything anyway.
pub const SUB_CONFIRMS_WAITING_MAX: usize = 65_536;
/// How long one confirming round trip to NATS may take before it is tried again.
pub const SUB_CONFIRM_ROUND_TRIP_TIMEOUT_MS: u64 = 2_000;

/// Hostile-client bounds (`guard` module; issue 18).
/// Subscriptions on one node. 1M is ten per connection at CONNECTIONS_MAX; what they cost
/// is bounded by NODE_SUBSCRIPTION_BYTES_MAX whatever their count.
pub const NODE_SUBSCRIPTIONS_MAX: usize = 1_000_000;
/// Estimated memory of a node's subscription indexes. 256 MiB holds a million
/// subscriptions to shared channels, or ~500k with a unique 40-byte name each; an attacker
/// filling it grows the node by about that much, not by gigabytes.
pub const NODE_SUBSCRIPTION_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Sum of one connection's pattern lengths: SUBSCRIPTIONS_PER_CONNECTION_MAX patterns of
/// 64 bytes; a client of 1,024 200-byte names would hold 200 KB of names alone.
pub const PATTERN_BYTES_PER_CONNECTION_MAX: usize = 64 * 1024;
/// A long-poll client polls within milliseconds of opening; a session not polled within
/// 10 s was opened only to hold a slot.
pub const POLL_OPEN_TIMEOUT_MS: u64 = 10_000;
/// A browser opens one session per tab; 16 covers a few tabs of one user or one address.
pub const POLL_SESSIONS_PER_CLIENT_MAX: usize = 16;
/// Writing one HTTP response (the largest is a /metrics scrape or an asset) takes
/// milliseconds for a reader; 30 s rides out a stalled mobile link.
pub const HTTP_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Longest configurable http_write_timeout.
pub const HTTP_WRITE_TIMEOUT_MS_MAX: u64 = 600_000;
/// Sockets in the HTTP phase per node (handshakes, API calls, long-poll requests). Each
/// can hold a response in kernel buffers (~MBs) until http_write_timeout.
pub const HTTP_CONNECTIONS_MAX: usize = 10_000;
/// Requests answered back to back from one socket's already-received input. Browsers do
/// not pipeline; a client that does and never reads gets cut here.
pub const PIPELINED_REQUESTS_MAX: usize = 16;

/// WebSocket frame header, largest form (2 + 8 length bytes; server frames are unmasked).
pub const FRAME_HEADER_BYTES_MAX: usize = 14;

const _: () = assert!(FRAME_BYTES_MAX <= MESSAGE_BYTES_MAX);
const _: () = assert!(HISTORY_REPLAY_MESSAGES_MAX >= HISTORY_MESSAGES_PER_CHANNEL);
const _: () = assert!(HEARTBEAT_MS < HEARTBEAT_TIMEOUT_MS);
const _: () = assert!(OUTBOUND_BYTES_MAX >= FRAME_BYTES_MAX + FRAME_HEADER_BYTES_MAX);
const _: () = assert!(OUTBOUND_BYTES_MAX >= MESSAGE_BYTES_MAX + FRAME_HEADER_BYTES_MAX);
const _: () = assert!(WRITE_IOVECS_MAX <= 1024);
const _: () = assert!(REQUEST_LINE_BYTES_MAX <= REQUEST_HEAD_BYTES_MAX);
const _: () = assert!(SHARD_COUNT_MAX <= u16::MAX as usize + 1);

/// Cores the kernel reports online.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as usize
    }
}
