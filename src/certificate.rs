//! The TLS certificate as data and state: the PEM files, loading them into a
//! `rustls::ServerConfig`, the current one (swapped on SIGHUP; each thread caches it per
//! generation) and the TLS counters. The handshake itself runs in `transport::tls`.
//!
//! Owns: `TlsFiles`, `load`, `TlsState`, `TlsMetrics`, `HandshakeFailure`. Must not touch:
//! sockets, shards. Runs on: config validation (a trial load), shards (read), the SIGHUP
//! thread (reload).

use crate::metrics::Counter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

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
    pub files: TlsFiles,
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
    pub fn config(&self) -> Arc<ServerConfig> {
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
