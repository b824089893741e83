//! ringcast: a thread-per-core io_uring WebSocket gateway with embedded fan-out.
//!
//! # Layout
//! Dependencies point inward: `protocol`, `channel`, `permission` and `limits` are pure
//! (no sockets, no threads); `fanout` is the only code that crosses threads; a `shard`
//! owns its connections; the `bridge` owns the outside engines and never a socket.
//!
//! | module | its one job |
//! |---|---|
//! | [`limits`] | every bound, its unit and why |
//! | [`admission`] | accept rate, max connections, drain and port-sharing settings |
//! | [`guard`] | node-wide bounds against hostile clients: subscription memory, long-poll sessions, HTTP sockets |
//! | [`config`] | CLI/env/file → one validated struct |
//! | [`auth`] | HS256 JWT and API-key checks |
//! | [`protocol`] | WebSocket frames, HTTP/1.1 requests, protocol v1 JSON ops |
//! | [`channel`] | channel names, wildcard matching, the subscription index |
//! | [`permission`] | who may subscribe to or publish on what |
//! | [`fanout`] | bounded mailboxes between threads and the envelopes in them |
//! | [`metrics`] | per-shard counters and the Prometheus rendering |
//! | [`histogram`] | the fan-out latency histogram (broker receipt → socket write) |
//! | [`node`] | what one node's threads share |
//! | [`shard`] | one core: connections, outbound queues, heartbeat wheel |
//! | [`transport`] | HTTP routes and the WebSocket session on top of a shard |
//! | [`bridge`] | the engine thread: interest, broker, encode-once |
//! | [`presence`] | members and online users: local state, memory or Redis backend |
//! | [`gateway`] | start-up wiring: listeners, threads, signals, shutdown |
//! | [`sysfeed`] | the `$sys.metrics` snapshot, published once a second |
//! | [`doctor`] | host checks for a target connection count |
//! | [`lane`] | durable notifications: embedded or RabbitMQ queue, worker, retries, dead letters |

pub mod admission;
pub mod auth;
pub mod backoff;
pub mod bridge;
pub mod certificate;
pub mod channel;
pub mod cmd;
pub mod clock;
pub mod config;
pub mod fanout;
pub mod guard;
pub mod lane;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod permission;
pub mod presence;
pub mod session;
pub mod protocol;
pub mod redis_link;
pub mod shard;
pub mod sysfeed;
pub mod transport;
