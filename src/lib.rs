//! ringcast: a thread-per-core io_uring WebSocket gateway with embedded fan-out.
//!
//! # Layout
//! Dependencies point one way, and no two modules import each other (DESIGN.md,
//! "Repository layout"), from the top floor down:
//!
//! ```text
//! main → cmd/ → transport/ → session/ → shard/ → bridge/, sysfeed, admission (never shard)
//!      → node → fanout/ → lane/, presence/ → guard → config/ → certificate, permission
//!      → pure leaves: protocol/, channel, metrics/, auth, limits, clock, backoff, redis_link
//! ```
//!
//! A wire protocol is an adapter in `transport/` (protocol v1 is `transport/v1.rs` over
//! WebSocket and long-poll): it decodes its frames into `session::Op`s and encodes
//! `shard::Reply`s. Adding one touches `transport/` and the registration in
//! `transport::handlers` (plus its route in `transport/http.rs`).
//!
//! | module | its one job |
//! |---|---|
//! | [`cmd`] | the commands (gateway, worker, dlq, doctor): the only code that starts runtimes, installs signal handlers or picks exit codes |
//! | [`transport`] | HTTP routes and server API, TLS handshakes, WebSocket and long-poll, and the protocol v1 wire adapter |
//! | [`session`] | what a client may do, once for every wire: sub (presence, `since`), unsub, pub, ack, presence query, ping |
//! | [`shard`] | one core: connections, subscriptions, outbound queues, heartbeat wheel; handed its transport entry points |
//! | [`bridge`] | the engine thread: interest, broker (embedded or NATS), history, the Lane's in-process worker, cluster-wide channel counts and close orders |
//! | [`sysfeed`] | the `$sys.metrics` snapshot, published once a second |
//! | [`admission`] | the accept-rate bucket and the admission decision |
//! | [`node`] | what one node's threads share |
//! | [`fanout`] | bounded mailboxes between threads and the envelopes in them |
//! | [`lane`] | durable notifications: embedded or RabbitMQ queue, worker, retries, dead letters |
//! | [`presence`] | members and online users: local state, memory or Redis backend |
//! | [`guard`] | node-wide bounds against hostile clients: subscription memory, long-poll sessions, HTTP sockets |
//! | [`config`] | settings as data: CLI/env/file → one validated struct per part; value parsers in `config::value` |
//! | [`certificate`] | the TLS certificate: PEM files, loading, reload state |
//! | [`permission`] | who may subscribe to or publish on what |
//! | [`protocol`] | WebSocket frames, HTTP/1.1 requests, protocol v1 JSON ops |
//! | [`channel`] | channel names, wildcard matching, the subscription index |
//! | [`metrics`] | counters, the fan-out latency histogram, the Prometheus text writer |
//! | [`auth`] | HS256 JWT and API-key checks |
//! | [`limits`] | every bound, its unit and why |
//! | [`clock`] | wall-clock milliseconds |
//! | [`backoff`] | retry schedules and reconnect delays with jitter |
//! | [`redis_link`] | the one way to connect to Redis |

pub mod admission;
pub mod auth;
pub mod backoff;
pub mod bridge;
pub mod certificate;
pub mod channel;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod fanout;
pub mod guard;
pub mod lane;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod permission;
pub mod presence;
pub mod protocol;
pub mod redis_link;
pub mod session;
pub mod shard;
pub mod sysfeed;
pub mod transport;
