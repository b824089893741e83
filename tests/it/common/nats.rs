//! NATS plumbing for tests: private nats-server processes (for tests that kill or restart
//! the server, or read its monitoring endpoint), a minimal synchronous NATS client speaking
//! the real protocol over a real socket, and a TCP proxy that can cut a link.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The machine's shared NATS (scripts/services.sh starts it); tests that only publish and
/// subscribe use it with a unique prefix.
pub const SHARED_NATS: &str = "nats://127.0.0.1:4222";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private nats-server with JetStream (store in a temp dir) and monitoring.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub monitor: u16,
    dir: PathBuf,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_on(free_port())
    }

    pub fn start_on(port: u16) -> NatsServer {
        let dir = std::env::temp_dir().join(format!("ringcast-nats-{}-{}", std::process::id(), super::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = NatsServer { child: None, port, monitor: free_port(), dir };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-m", &self.monitor.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/services.sh installs it)");
        self.child = Some(child);
        assert!(wait_for_port(self.port, Duration::from_secs(10)), "private nats-server did not listen on {}", self.port);
        assert!(wait_for_port(self.monitor, Duration::from_secs(10)), "nats-server monitoring did not listen");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// kill -9, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same JetStream store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Every subscription subject the server holds, over all connections (`/connz?subs=1`).
    pub fn subscriptions(&self) -> Vec<String> {
        let (status, _, body) = super::http(self.monitor, "GET", "/connz?subs=1&limit=1024", &[], b"");
        assert_eq!(status, 200, "connz: {body}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut subjects = Vec::new();
        for connection in value["connections"].as_array().into_iter().flatten() {
            for subject in connection["subscriptions_list"].as_array().into_iter().flatten() {
                subjects.push(subject.as_str().unwrap().to_string());
            }
        }
        subjects
    }

    /// Number of subscriptions the server holds in all (`/varz`), for large counts.
    pub fn subscription_count(&self) -> u64 {
        let (_, _, body) = super::http(self.monitor, "GET", "/varz", &[], b"");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        value["subscriptions"].as_u64().unwrap_or(0)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private three-server (or n-server) nats-server cluster with JetStream, on free
/// ports; every process is stopped when it is dropped.
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    pub monitors: Vec<u16>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Starts `n` servers; a start whose free ports were taken meanwhile (by another
    /// test's sockets) is retried with new ones.
    pub fn start(n: usize) -> NatsCluster {
        for _ in 0..3 {
            if let Some(cluster) = NatsCluster::try_start(n) {
                return cluster;
            }
        }
        panic!("a {n}-server nats-server cluster did not start on free ports three times");
    }

    fn try_start(n: usize) -> Option<NatsCluster> {
        let dir = std::env::temp_dir().join(format!("ringcast-nats-cluster-{}-{}", std::process::id(), super::unique()));
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let all_routes = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let name = format!("rc{}", super::unique());
        let mut servers = Vec::new();
        for i in 0..n {
            let store = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&store).unwrap();
            let child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &ports[i].to_string(), "-m", &monitors[i].to_string(), "-js", "-sd"])
                .arg(&store)
                .args(["--server_name", &format!("{name}-n{i}"), "--cluster_name", &name])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", routes[i]), "--routes", &all_routes])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server must be installed (scripts/services.sh installs it)");
            servers.push(Some(child));
        }
        // Dropped (every process stopped) on any early return.
        let cluster = NatsCluster { servers, ports, monitors, dir };
        for port in cluster.ports.iter().chain(&cluster.monitors) {
            if !wait_for_port(*port, Duration::from_secs(10)) {
                return None;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.has_meta_leader() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(cluster)
    }

    /// Every URL, comma-separated (the form `--nats` takes).
    pub fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    fn has_meta_leader(&self) -> bool {
        self.monitors.iter().enumerate().any(|(i, monitor)| {
            self.servers[i].is_some() && {
                let (status, _, body) = super::http(*monitor, "GET", "/jsz", &[], b"");
                status == 200
                    && serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["meta_cluster"]["leader"].as_str().map(|l| !l.is_empty()))
                        .unwrap_or(false)
            }
        })
    }

    /// The server whose clients include one named `name` (`/connz`), if any.
    pub fn server_with_client(&self, name: &str) -> Option<usize> {
        (0..self.ports.len()).find(|&i| {
            self.servers[i].is_some() && {
                let (_, _, body) = super::http(self.monitors[i], "GET", "/connz?limit=1024", &[], b"");
                let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                value["connections"].as_array().into_iter().flatten().any(|c| c["name"] == name)
            }
        })
    }

    /// kill -9 of one server, as a crash.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal NATS client: the text protocol over a blocking socket.
pub struct NatsClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    next_sid: u32,
}

impl NatsClient {
    pub fn connect(port: u16) -> NatsClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to NATS");
        stream.set_read_timeout(Some(super::READ_TIMEOUT)).unwrap();
        let mut client = NatsClient { reader: BufReader::new(stream.try_clone().unwrap()), stream, next_sid: 1 };
        let info = client.line();
        assert!(info.starts_with("INFO"), "not a NATS server: {info}");
        client.stream.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"name\":\"ringcast-test\"}\r\n").unwrap();
        client.flush();
        client
    }

    pub fn connect_url(url: &str) -> NatsClient {
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        NatsClient::connect(port)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read from NATS");
        line.trim_end().to_string()
    }

    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.stream.write_all(&out).unwrap();
    }

    pub fn publish_with_headers(&mut self, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
        let mut head = String::from("NATS/1.0\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = format!("HPUB {subject} {} {}\r\n", head.len(), head.len() + payload.len()).into_bytes();
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.stream.write_all(&out).unwrap();
    }

    /// PING → PONG: everything written before has been processed by the server.
    pub fn flush(&mut self) {
        self.stream.write_all(b"PING\r\n").unwrap();
        loop {
            let line = self.line();
            if line == "PONG" {
                return;
            }
            assert!(!line.starts_with("-ERR"), "NATS error: {line}");
        }
    }

    /// Request/reply (for the JetStream API); returns the reply payload.
    pub fn request(&mut self, subject: &str, payload: &[u8]) -> Vec<u8> {
        let sid = self.next_sid;
        self.next_sid += 1;
        let inbox = format!("_INBOX.test.{}", super::unique());
        let mut out = format!("SUB {inbox} {sid}\r\nPUB {subject} {inbox} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.stream.write_all(&out).unwrap();
        loop {
            let line = self.line();
            if let Some(rest) = line.strip_prefix("MSG ") {
                let size: usize = rest.rsplit(' ').next().unwrap().parse().unwrap();
                let mut body = vec![0u8; size + 2];
                self.reader.read_exact(&mut body).unwrap();
                body.truncate(size);
                self.stream.write_all(format!("UNSUB {sid}\r\n").as_bytes()).unwrap();
                return body;
            }
            if line == "PING" {
                self.stream.write_all(b"PONG\r\n").unwrap();
            }
        }
    }
}

/// A TCP proxy in front of a server port whose links a test can cut (every connection
/// closed, new ones refused) and restore: a network fault, not a mock.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut2, links2, stop2) = (cut.clone(), links.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if cut2.load(Ordering::Relaxed) {
                            drop(client);
                            continue;
                        }
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                        links2.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, cut, links, stop }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for link in self.links.lock().unwrap().drain(..) {
            let _ = link.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// Publishes a probe on `subject` over NATS until `client` (subscribed to it) receives it:
/// the gateway's NATS subscription is live. Late probe copies are drained.
pub fn wait_live(client: &mut super::Client, nats_port: u16, subject: &str) {
    let mut nats = NatsClient::connect(nats_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    client.get_mut().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    loop {
        assert!(Instant::now() < deadline, "subscription to {subject} never became live");
        nats.publish(subject, br#"{"probe":true}"#);
        nats.flush();
        match client.read() {
            Ok(tungstenite::Message::Text(text)) if text.contains("probe") => break,
            _ => {}
        }
    }
    while let Ok(tungstenite::Message::Text(_)) = client.read() {}
    client.get_mut().set_read_timeout(Some(super::READ_TIMEOUT)).unwrap();
}
