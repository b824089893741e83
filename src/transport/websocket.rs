//! The WebSocket transport: reads land in the shard's shared buffer, frames are decoded
//! in place, text frames go to the connection's wire adapter (protocol v1 in
//! `transport::v1`, Pusher in `transport::pusher`), and replies are queued and flushed
//! once per read.

use crate::metrics::CloseReason;
use crate::protocol::ops::{self};
use crate::protocol::ws::{self, Flow, WsMessage};
use crate::shard::{sys, tls, Conn, Identity, Shard, Wire};
use monoio::net::TcpStream;
use std::rc::Rc;

/// Registers an upgraded connection, greets it and handles any frames that arrived
/// with the upgrade request. Synchronous, so none of this lives in the session task.
pub fn start(
    shard: &Rc<Shard>,
    stream: TcpStream,
    identity: Option<Box<Identity>>,
    leftover: Option<Vec<u8>>,
    tls: Option<Box<rustls::ServerConnection>>,
    deflate: bool,
    wire: Wire,
    refusal: Option<super::pusher::Refusal>,
) -> Rc<Conn> {
    let conn = shard.register(stream, identity);
    let tls_on = tls.is_some();
    {
        let mut st = conn.state.borrow_mut();
        st.tls = tls;
        st.deflate = deflate;
        st.wire = wire;
    }
    if deflate {
        shard.metrics.deflate_negotiated.inc();
    }
    match wire {
        Wire::V1 => {
            let hb = shard.node.config.heartbeat.as_secs().max(1);
            shard.send(&conn, ws::encode_text(&ops::welcome(conn.id, &shard.node.config.node, hb)));
        }
        Wire::Pusher { app } => {
            if let Some(refusal) = super::pusher::greet(shard, &conn, app, refusal) {
                shard.flush(&conn);
                super::pusher::refuse(shard, &conn, refusal);
                shard.flush(&conn);
                return conn;
            }
        }
    }
    if let Some(mut bytes) = leftover {
        handle_bytes(shard, &conn, &mut bytes);
    }
    if tls_on {
        // rustls may already hold decrypted frames that came with the upgrade request.
        read_available(shard, &conn);
    }
    if shard.stop.is_set() {
        shard.close(&conn, ws::close_code::GOING_AWAY, "server shutting down", CloseReason::Shutdown);
    }
    shard.flush(&conn);
    conn
}

/// The connection's one long-lived task: wait until readable, handle what arrived.
/// Kept to two pointers and the poll op, because a node holds a million of these.
pub async fn session(shard: Rc<Shard>, conn: Rc<Conn>) {
    while conn.state.borrow().finished.is_none() {
        let Some(stream) = conn.stream.as_ref() else { break };
        if stream.readable(false).await.is_err() {
            conn.finish(CloseReason::IoError);
            break;
        }
        read_available(&shard, &conn);
    }
    shard.unregister(&conn);
}

/// Reads until the socket is drained, handling every complete frame.
fn read_available(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    loop {
        let mut buf = shard.read_buf.borrow_mut();
        let capacity = buf.len();
        let (outcome, tls) = {
            let mut st = conn.state.borrow_mut();
            match st.tls.as_mut() {
                Some(session) => {
                    let mut ciphertext = 0;
                    let outcome = tls::read_plain(session, conn.fd, &mut buf, &mut ciphertext);
                    shard.metrics.bytes_in.add(ciphertext);
                    (outcome, true)
                }
                None => (sys::recv(conn.fd, &mut buf), false),
            }
        };
        let n = match outcome {
            Ok(sys::ReadOutcome::Data(n)) => n,
            Ok(sys::ReadOutcome::WouldBlock) => break,
            Ok(sys::ReadOutcome::Eof) => {
                let why = conn.state.borrow().closing.map(|(why, _)| why).unwrap_or(CloseReason::ClientClosed);
                conn.finish(why);
                break;
            }
            Err(_) => {
                conn.finish(CloseReason::IoError);
                break;
            }
        };
        if !tls {
            shard.metrics.bytes_in.add(n as u64);
        }
        {
            let mut st = conn.state.borrow_mut();
            st.last_seen_ms = shard.now_ms();
            st.ping_outstanding = false;
        }
        let carry = conn.state.borrow_mut().carry.take();
        match carry {
            Some(mut carried) => {
                carried.extend_from_slice(&buf[..n]);
                drop(buf);
                handle_bytes(shard, conn, &mut carried);
            }
            None => {
                let consumed = decode(shard, conn, &mut buf[..n]);
                if consumed < n && conn.state.borrow().finished.is_none() {
                    conn.state.borrow_mut().carry = Some(buf[consumed..n].to_vec());
                }
            }
        }
        // A short plain read drained the socket; rustls may still hold decrypted bytes.
        if conn.state.borrow().finished.is_some() || (n < capacity && !tls) {
            break;
        }
    }
    shard.flush(conn);
}

/// Decodes an owned buffer (a carried partial frame plus new bytes), keeping the tail.
fn handle_bytes(shard: &Rc<Shard>, conn: &Rc<Conn>, bytes: &mut Vec<u8>) {
    let consumed = decode(shard, conn, bytes);
    bytes.drain(..consumed);
    if !bytes.is_empty() && conn.state.borrow().finished.is_none() {
        conn.state.borrow_mut().carry = Some(std::mem::take(bytes));
    }
}

/// Runs the frame decoder over `buf`; returns bytes consumed.
fn decode(shard: &Rc<Shard>, conn: &Rc<Conn>, buf: &mut [u8]) -> usize {
    let (mut reader, deflate) = {
        let mut st = conn.state.borrow_mut();
        (std::mem::take(&mut st.reader), st.deflate)
    };
    let result = if deflate {
        // The shard's one inflater: messages are inflated one at a time, no context kept.
        let mut inflater = shard.inflater.borrow_mut();
        let inflater = inflater.get_or_insert_with(Default::default);
        let before = inflater.inflated;
        let result = reader.feed_with(buf, &shard.ws_limits, Some(&mut *inflater), &mut |message| on_message(shard, conn, message));
        shard.metrics.inflated_messages.add(inflater.inflated - before);
        result
    } else {
        reader.feed(buf, &shard.ws_limits, &mut |message| on_message(shard, conn, message))
    };
    conn.state.borrow_mut().reader = reader;
    match result {
        Ok(consumed) => consumed,
        Err(error) => {
            let why = CloseReason::from_close_code(error.close_code);
            shard.close(conn, error.close_code, error.reason, why);
            buf.len()
        }
    }
}

fn on_message(shard: &Rc<Shard>, conn: &Rc<Conn>, message: WsMessage<'_>) -> Flow {
    shard.metrics.frames_in.inc();
    let closing = conn.state.borrow().closing;
    if let WsMessage::Close { code, .. } = message {
        match closing {
            // Our close was answered: the handshake is complete.
            Some((why, _)) => conn.finish(why),
            None => {
                // Echo the client's code, as RFC 6455 §5.5.1 asks.
                let code = code.unwrap_or(ws::close_code::NORMAL);
                shard.close(conn, code, "", CloseReason::ClientClosed);
                shard.flush(conn);
                conn.finish(CloseReason::ClientClosed);
            }
        }
        return Flow::Stop;
    }
    if closing.is_some() {
        return Flow::Continue;
    }
    let wire = conn.state.borrow().wire;
    match message {
        WsMessage::Text(text) => match wire {
            Wire::V1 => super::v1::on_text(shard, conn, text),
            Wire::Pusher { app } => super::pusher::on_text(shard, conn, app, text),
        },
        WsMessage::Binary(_) => crate::session::reply_err(shard, conn, None, 400, "binary frames are not part of this protocol; send JSON text frames"),
        WsMessage::Ping(payload) => shard.send(conn, ws::encode_pong(payload)),
        WsMessage::Pong(_) | WsMessage::Close { .. } => {}
    }
    Flow::Continue
}

