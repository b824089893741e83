//! TLS termination in the shards: the certificate (re)loaded from PEM, and the handshake
//! run on the shard that accepted the socket, over the same raw non-blocking calls as
//! plain connections (see `shard::tls` for the record I/O after it).
//!
//! Owns: the current `rustls::ServerConfig` (swapped on SIGHUP; each shard caches it and
//! re-reads it only when the generation changes), the handshake, the TLS counters. Must
//! not touch: other shards' connections. Runs on: shards (handshake), the SIGHUP thread
//! (reload).
//!
//! rustls 0.23 with the ring provider (already in the tree through async-nats), TLS 1.3
//! and 1.2, ALPN `http/1.1` (a client offering only `h2` is refused with an alert).

use crate::certificate::HandshakeFailure;
use crate::shard::tls::FdIo;
use crate::shard::Shard;
use monoio::net::TcpStream;
use rustls::ServerConfig;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Runs the server side of the handshake on this shard. `Ok(None)`: TLS is off.
pub async fn accept(shard: &Shard, stream: &TcpStream) -> Result<Option<Box<rustls::ServerConnection>>, ()> {
    let Some(tls) = shard.node.transport.tls.as_ref() else { return Ok(None) };
    let metrics = &shard.node.transport.tls_metrics[shard.id as usize];
    let timeout = shard.node.config.handshake_timeout;
    let outcome = match monoio::time::timeout(timeout, handshake(tls.config(), stream)).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => Err(HandshakeFailure::Timeout),
    };
    match outcome {
        Ok(session) => {
            metrics.handshakes.inc();
            Ok(Some(session))
        }
        Err(why) => {
            metrics.failures[why as usize].inc();
            tracing::debug!(shard = shard.id, reason = why.label(), "TLS handshake failed");
            Err(())
        }
    }
}

async fn handshake(config: Arc<ServerConfig>, stream: &TcpStream) -> Result<Box<rustls::ServerConnection>, HandshakeFailure> {
    let mut session = Box::new(rustls::ServerConnection::new(config).map_err(|_| HandshakeFailure::Protocol)?);
    let fd = stream.as_raw_fd();
    loop {
        write_pending(&mut session, stream).await.map_err(|_| HandshakeFailure::Io)?;
        if !session.is_handshaking() {
            return Ok(session);
        }
        match session.read_tls(&mut FdIo(fd)) {
            Ok(0) => return Err(HandshakeFailure::Io),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.readable(false).await.map_err(|_| HandshakeFailure::Io)?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(HandshakeFailure::Protocol),
            Err(_) => return Err(HandshakeFailure::Io),
        }
        if let Err(error) = session.process_new_packets() {
            // Tell the client why (rustls queued the alert), then give up.
            let _ = write_pending(&mut session, stream).await;
            return Err(match error {
                rustls::Error::AlertReceived(_) => HandshakeFailure::ClientAlert,
                _ => HandshakeFailure::Protocol,
            });
        }
    }
}

/// Writes every TLS record rustls has queued, waiting for room when the socket is full.
pub async fn write_pending(session: &mut rustls::ServerConnection, stream: &TcpStream) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    while session.wants_write() {
        match session.write_tls(&mut FdIo(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.writable(false).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Encrypts and writes `bytes` (an HTTP response) completely.
pub async fn write_all(session: &mut rustls::ServerConnection, stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    while !bytes.is_empty() {
        let n = session.writer().write(bytes)?;
        bytes = &bytes[n..];
        write_pending(session, stream).await?;
    }
    Ok(())
}
