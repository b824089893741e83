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

use super::config::TlsFiles;
use crate::metrics::Counter;
use crate::node::Node;
use crate::shard::tls::FdIo;
use crate::shard::Shard;
use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Why a TLS handshake failed; each is counted per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HandshakeFailure {
    /// Not done within `handshake_timeout`.
    Timeout = 0,
    /// The client sent an alert (e.g. it did not trust our certificate).
    ClientAlert,
    /// Not TLS, an unsupported version or cipher, no common ALPN protocol, bad records.
    Protocol,
    /// The socket closed or failed mid-handshake.
    Io,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 4] = [HandshakeFailure::Timeout, HandshakeFailure::ClientAlert, HandshakeFailure::Protocol, HandshakeFailure::Io];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::ClientAlert => "client_alert",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Io => "io",
        }
    }
}

/// One shard's TLS counters (written by that shard only).
#[repr(align(128))]
#[derive(Default)]
pub struct TlsMetrics {
    pub handshakes: Counter,
    pub failures: [Counter; HandshakeFailure::ALL.len()],
}

/// A PEM problem, naming the flag whose file is at fault.
#[derive(Debug)]
pub struct LoadError {
    pub key: &'static str,
    pub msg: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.msg)
    }
}

/// Reads the certificate chain and key and builds the server config.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, LoadError> {
    let cert_error = |msg: String| LoadError { key: "tls_cert", msg };
    let key_error = |msg: String| LoadError { key: "tls_key", msg };
    let cert_pem = std::fs::read(&files.cert).map_err(|e| cert_error(format!("cannot read {}: {e}", files.cert.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(format!("{} is not a PEM certificate chain: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(cert_error(format!("{} holds no PEM CERTIFICATE block", files.cert.display())));
    }
    let key_pem = std::fs::read(&files.key).map_err(|e| key_error(format!("cannot read {}: {e}", files.key.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_error(format!("{} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cert_error(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| key_error(format!("{} does not fit the certificate in {}: {e}", files.key.display(), files.cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The node's current certificate. Shards read it once per generation (a relaxed load per
/// handshake otherwise), the SIGHUP thread replaces it.
pub struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    generation: AtomicU64,
    pub reloads: Counter,
    pub reload_failures: Counter,
}

impl TlsState {
    pub fn new(files: &TlsFiles) -> Result<TlsState, LoadError> {
        Ok(TlsState {
            current: RwLock::new(load(files)?),
            files: files.clone(),
            generation: AtomicU64::new(1),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
        })
    }

    /// Re-reads the PEM files; on any error the old certificate stays.
    pub fn reload(&self) -> Result<(), LoadError> {
        match load(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.reloads.inc();
                Ok(())
            }
            Err(e) => {
                self.reload_failures.inc();
                Err(e)
            }
        }
    }

    /// The config for a new handshake on this thread.
    fn config(&self) -> Arc<ServerConfig> {
        thread_local! {
            static CACHED: RefCell<Option<(u64, Arc<ServerConfig>)>> = const { RefCell::new(None) };
        }
        let generation = self.generation.load(Ordering::Acquire);
        CACHED.with(|cached| {
            if let Some((seen, config)) = &*cached.borrow() {
                if *seen == generation {
                    return config.clone();
                }
            }
            let config = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
            *cached.borrow_mut() = Some((generation, config.clone()));
            config
        })
    }
}

/// SIGHUP → reload the certificate. Existing connections keep the session they have.
pub fn spawn_reload_thread(node: Arc<Node>) {
    if node.transport.tls.is_none() {
        return;
    }
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]).expect("cannot install the SIGHUP handler");
    std::thread::Builder::new()
        .name("ringcast-tls-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                let Some(tls) = node.transport.tls.as_ref() else { continue };
                match tls.reload() {
                    Ok(()) => tracing::info!(cert = %tls.files.cert.display(), "SIGHUP: TLS certificate reloaded; new handshakes use it"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; still serving the previous certificate"),
                }
            }
        })
        .expect("cannot start the TLS reload thread");
}

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
