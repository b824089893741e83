//! The integration tests, as one test binary (one link instead of one per file; each
//! file is a module). Every test talks to real gateway processes over real sockets, and
//! to real nats-server, Redis and RabbitMQ (`scripts/services.sh` starts them).
//! Run one file's tests with `cargo test --release --test it -- lane_embedded::`.

mod common;
mod conflate;
mod admission;
mod beacon;
mod compression;
mod dashboard;
mod drain;
mod fanout;
mod hostile;
mod http;
mod lane_embedded;
mod lane_nids;
mod lane_rabbitmq;
mod lane_restart;
mod lane_webhook;
mod longpoll;
mod metrics;
mod mqtt;
mod presence;
mod pusher;
mod pusher_presence;
mod pusher_query;
mod seams;
mod tls;
mod websocket;
mod worker_rabbitmq;
