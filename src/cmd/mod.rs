//! The commands: the only code that starts runtimes, installs signal handlers or decides
//! the process's exit code. Each takes its `Config` as a value (built by `config`) and
//! returns the exit code for `main`.
//!
//! | command | what it runs |
//! |---|---|
//! | [`gateway`] | a gateway node: listeners, shard threads, the bridge, signals, drain |
//! | [`worker`] | the notification worker as a sidecar (RabbitMQ Lane + NATS) |
//! | [`dlq`] | the Lane's dead-letter queue: list, replay, purge |
//! | [`doctor`] | host checks for a target connection count |

pub mod dlq;
pub mod doctor;
pub mod gateway;
pub mod worker;
