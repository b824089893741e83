//! Test plumbing for TLS and long-poll: certificates minted with rcgen, a rustls client
//! under tungstenite or plain HTTP, and a small long-poll client over raw HTTP/1.1.

pub use super::http_over;
use super::{Gateway, READ_TIMEOUT};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A CA and a leaf it signed for `localhost` and 127.0.0.1, as PEM.
pub struct Minted {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Mints a CA and a leaf; `expired`: the leaf's validity ended in 2021.
pub fn mint(expired: bool) -> Minted {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("ringcast test CA {}", super::unique()));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let leaf = params.signed_by(&leaf_key, &ca).unwrap();
    Minted { ca_pem: ca.pem(), cert_pem: leaf.pem(), key_pem: leaf_key.serialize_pem() }
}

/// A temporary directory for PEM files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("ringcast-edge-b-{}-{}", std::process::id(), super::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Write then rename, as a certificate manager would: a reload never reads half a file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `minted`'s leaf to cert.pem/key.pem in `dir` and returns the gateway flags.
pub fn tls_flags(dir: &TempDir, minted: &Minted) -> Vec<String> {
    let cert = dir.write("cert.pem", &minted.cert_pem);
    let key = dir.write("key.pem", &minted.key_pem);
    vec!["--tls-cert".into(), path_str(&cert), "--tls-key".into(), path_str(&key)]
}

fn path_str(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

pub fn start_tls(dir: &TempDir, minted: &Minted, extra: &[&str]) -> Gateway {
    let flags = tls_flags(dir, minted);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting only `ca_pem`, offering `alpn`, limited to `versions`.
pub fn client_config(ca_pem: &str, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Accepts any certificate: to reach a gateway whose certificate is deliberately bad.
#[derive(Debug)]
struct TrustAnything;

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything))
        .with_no_client_auth();
    Arc::new(config)
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes the TLS handshake (an error is the handshake's failure).
pub fn tls_connect(port: u16, config: Arc<rustls::ClientConfig>) -> Result<TlsStream, std::io::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(READ_TIMEOUT))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

pub type TlsClient = tungstenite::WebSocket<TlsStream>;

/// A WebSocket over TLS, with its welcome frame.
pub fn wss_connect(port: u16, config: Arc<rustls::ClientConfig>, query: &str) -> Result<(TlsClient, serde_json::Value), String> {
    let stream = tls_connect(port, config).map_err(|e| e.to_string())?;
    let url = format!("wss://localhost:{port}/ws{query}");
    let (mut client, _) = tungstenite::client(url.as_str(), stream).map_err(|e| format!("{e:?}"))?;
    let welcome = recv_json(&mut client);
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    Ok((client, welcome))
}

pub fn send_json<S: Read + Write>(client: &mut tungstenite::WebSocket<S>, value: serde_json::Value) {
    client.send(tungstenite::Message::text(value.to_string())).unwrap();
}

pub fn recv_json<S: Read + Write>(client: &mut tungstenite::WebSocket<S>) -> serde_json::Value {
    loop {
        match client.read().expect("read frame") {
            tungstenite::Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends an op with an id and returns the answer with that id (skipping other frames).
pub fn request<S: Read + Write>(client: &mut tungstenite::WebSocket<S>, mut op: serde_json::Value, id: u32) -> serde_json::Value {
    op["id"] = id.into();
    send_json(client, op);
    loop {
        let frame = recv_json(client);
        if frame["id"] == id {
            return frame;
        }
    }
}

/// `GET /metrics` over TLS (trusting anything) and the value of one sample line.
pub fn tls_metric(port: u16, sample: &str) -> f64 {
    let mut stream = tls_connect(port, insecure_client_config()).expect("TLS connect for /metrics");
    let (status, _, body) = http_over(&mut stream, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    metric_value(&body, sample)
}

/// The value of the sample line starting with `sample ` in a Prometheus text body (0 if absent).
pub fn metric_value(body: &str, sample: &str) -> f64 {
    body.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' '))).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Sum of every sample of a family whose labels contain `label` (e.g. `reason="io"`).
pub fn metric_sum(body: &str, family: &str, label: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}
