//! Transports on top of a shard: the HTTP/1.1 front door (routes, upgrade, server API),
//! TLS termination, and the WebSocket session that follows an upgrade.
//!
//! Owns: one accepted socket from accept to close. Must not touch: other shards,
//! engines (publishes go to the bridge inbox). Runs on: the shard that accepted it.

mod assets;
mod http;
pub mod identity;
pub mod longpoll;
pub mod notify;
pub mod tls;
pub mod v1;
pub mod websocket;

pub use http::serve;

use crate::shard::{Handlers, Shard};
use std::rc::Rc;

/// The entry points a shard is handed at start-up: protocol v1 over HTTP, WebSocket and
/// long-poll. A new wire protocol registers here (its routes live behind `serve`).
pub fn handlers() -> Handlers {
    Handlers {
        serve: |shard: Rc<Shard>, stream| Box::pin(serve(shard, stream)),
        poll_forwarded: longpoll::serve_forwarded,
        sub_confirmed: crate::session::on_confirmed,
        answer: v1::answer,
        token_expired: v1::token_expired,
    }
}

