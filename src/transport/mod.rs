//! Transports on top of a shard: the HTTP/1.1 front door (routes, upgrade, server API),
//! TLS termination, and the WebSocket session that follows an upgrade.
//!
//! Owns: one accepted socket from accept to close. Must not touch: other shards,
//! engines (publishes go to the bridge inbox). Runs on: the shard that accepted it.

mod assets;
mod http;
pub mod longpoll;
mod presence;
pub mod tls;
pub(crate) mod websocket;

pub use http::serve;

