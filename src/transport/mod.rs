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
pub mod pusher;
pub mod tls;
pub mod v1;
pub mod websocket;

pub use http::serve;

use crate::shard::{Conn, Handlers, Reply, Shard, Wire};
use std::rc::Rc;

/// The entry points a shard is handed at start-up: protocol v1 over HTTP, WebSocket and
/// long-poll, and Pusher protocol 7 over WebSocket. A new wire protocol registers here
/// (its routes live behind `serve`, its answers behind [`answer`]).
pub fn handlers() -> Handlers {
    Handlers {
        serve: |shard: Rc<Shard>, stream| Box::pin(serve(shard, stream)),
        poll_forwarded: longpoll::serve_forwarded,
        sub_confirmed: crate::session::on_confirmed,
        answer,
        token_expired,
        closed,
        wire_presence: pusher::presence::on_frame,
        close_user,
    }
}

fn wire(conn: &Conn) -> Wire {
    conn.state.borrow().wire
}

/// A session answer, encoded by the connection's wire.
fn answer(shard: &Shard, conn: &Conn, reply: Reply<'_>) {
    match wire(conn) {
        Wire::V1 => v1::answer(shard, conn, reply),
        Wire::Pusher { app } => pusher::answer(shard, conn, app, reply),
    }
}

fn token_expired(shard: &Shard, conn: &Conn) {
    match wire(conn) {
        Wire::V1 => v1::token_expired(shard, conn),
        Wire::Pusher { .. } => pusher::token_expired(shard, conn),
    }
}

fn closed(shard: &Shard, conn: &Conn) {
    if let Wire::Pusher { app } = wire(conn) {
        if conn.state.borrow().closing.map(|(why, _)| why) != Some(crate::metrics::CloseReason::Refused) {
            pusher::on_close(shard, app);
        }
        pusher::presence::on_close(shard, conn);
    }
}

/// A cluster-wide close order (`fanout::cluster::CloseUser`): only Pusher connections
/// have a signed-in user to match.
fn close_user(shard: &Shard, conn: &Conn, scope: &str, user: &str) {
    if let Wire::Pusher { app } = wire(conn) {
        pusher::query::close_if_user(shard, conn, app, scope, user);
    }
}
