//! The transport settings: TLS termination and the long-poll transport. Their own clap
//! group, flattened into the gateway's flags; parsed into [`TransportConfig`].
//!
//! Owns: the `tls_*`, `poll_*` and `cors_origin` keys. Must not touch: sockets. Runs on:
//! the main thread at start-up (and the SIGHUP thread re-reads the same PEM files).

use super::value::{error, parse_duration, ConfigError};
use clap::Args;
use std::collections::BTreeMap;
use crate::certificate::TlsFiles;
use std::time::Duration;

/// Longest a `GET /poll/{sid}` waits for frames before answering empty. 25 s stays under
/// the 30 s idle timeouts common in proxies and load balancers (like the heartbeat).
pub const POLL_WAIT_MS: u64 = 25_000;
/// A long-poll session nobody polled for this long is gone (a disconnect): the client
/// polls again within milliseconds of an answer, so 60 s means it left.
pub const POLL_TIMEOUT_MS: u64 = 60_000;

#[derive(Args, Debug, Default)]
#[command(next_help_heading = "TLS and long-poll")]
pub struct TransportArgs {
    /// PEM certificate chain (leaf first) to serve TLS on the listen address; with
    /// --tls-key. SIGHUP re-reads both files (a bad file keeps the old certificate).
    /// Unset: plain TCP.
    #[arg(long, env = "RINGCAST_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "RINGCAST_TLS_KEY", value_name = "FILE")]
    tls_key: Option<String>,
    /// Longest a long-poll `GET /poll/{sid}` waits for frames before answering empty. [default: 25s]
    #[arg(long, env = "RINGCAST_POLL_WAIT", value_name = "DURATION")]
    poll_wait: Option<String>,
    /// A long-poll session not polled for this long expires (counted as a disconnect).
    /// Frames a session holds for its client (queued or not yet acked) are bounded by
    /// --outbound-limit, like a WebSocket's backlog (past it: closed with 4008). [default: 60s]
    #[arg(long, env = "RINGCAST_POLL_TIMEOUT", value_name = "DURATION")]
    poll_timeout: Option<String>,
    /// `Access-Control-Allow-Origin` for long-poll requests from pages on another origin:
    /// `*`, a comma-separated list of origins (e.g. `https://app.example.com`), or `none`. [default: *]
    #[arg(long, env = "RINGCAST_CORS_ORIGIN", value_name = "ORIGINS")]
    cors_origin: Option<String>,
}

impl TransportArgs {
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("tls_cert", self.tls_cert.clone()),
            ("tls_key", self.tls_key.clone()),
            ("poll_wait", self.poll_wait.clone()),
            ("poll_timeout", self.poll_timeout.clone()),
            ("cors_origin", self.cors_origin.clone()),
        ]
    }
}

/// Which origins may call the long-poll routes from a browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    None,
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    pub fn allow<'a>(&'a self, origin: Option<&'a str>) -> Option<&'a str> {
        match self {
            CorsOrigins::None => None,
            CorsOrigins::Any => Some("*"),
            CorsOrigins::List(list) => origin.filter(|o| list.iter().any(|allowed| allowed.eq_ignore_ascii_case(o))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub tls: Option<TlsFiles>,
    pub poll_wait: Duration,
    pub poll_timeout: Duration,
    pub cors: CorsOrigins,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            tls: None,
            poll_wait: Duration::from_millis(POLL_WAIT_MS),
            poll_timeout: Duration::from_millis(POLL_TIMEOUT_MS),
            cors: CorsOrigins::Any,
        }
    }
}


pub fn build(values: &BTreeMap<&str, String>) -> Result<TransportConfig, ConfigError> {
    let get = |key: &str| values.get(key).map(String::as_str).filter(|v| !v.is_empty());
    let duration = |key: &str, default_ms: u64| {
        get(key).map_or(Ok(Duration::from_millis(default_ms)), |v| parse_duration(v).map_err(|m| error(key, m)))
    };
    let tls = match (get("tls_cert"), get("tls_key")) {
        (None, None) => None,
        (Some(_), None) => return Err(error("tls_key", "missing: --tls-cert needs --tls-key (the certificate's PEM private key)")),
        (None, Some(_)) => return Err(error("tls_cert", "missing: --tls-key needs --tls-cert (the PEM certificate chain)")),
        (Some(cert), Some(key)) => {
            let files = TlsFiles { cert: cert.into(), key: key.into() };
            // Read now so a bad file stops the start with its flag named, not the first handshake.
            crate::certificate::load(&files).map_err(|e| error(e.key, e.msg))?;
            Some(files)
        }
    };
    let cors = match get("cors_origin").map(str::trim) {
        None | Some("*") => CorsOrigins::Any,
        Some(v) if v.eq_ignore_ascii_case("none") => CorsOrigins::None,
        Some(v) => {
            let list: Vec<String> = v.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect();
            if let Some(bad) = list.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.contains(['\r', '\n', ' '])) {
                return Err(error("cors_origin", format!("{bad:?} is not an origin (write it like https://app.example.com), or use * or none")));
            }
            CorsOrigins::List(list)
        }
    };
    let config = TransportConfig {
        tls,
        poll_wait: duration("poll_wait", POLL_WAIT_MS)?,
        poll_timeout: duration("poll_timeout", POLL_TIMEOUT_MS)?,
        cors,
    };
    if config.poll_wait.is_zero() || config.poll_wait >= config.poll_timeout {
        return Err(error("poll_wait", format!("({:?}) must be above zero and below poll_timeout ({:?})", config.poll_wait, config.poll_timeout)));
    }
    Ok(config)
}
