//! Start-up and shutdown of one gateway node: bind every shard's SO_REUSEPORT listener
//! (so a bad address fails before any thread starts), start the bridge and the pinned
//! shard threads, wait for a signal, shut down in order.
//!
//! Owns: threads and their lifetimes. Runs on: the main thread.

use crate::bridge;
use crate::config::GatewayConfig;
use crate::fanout::{ToBridge, ToShard};
use crate::node::Node;
use crate::shard::{self, Shard};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Kernel accept queue per listener: a connect burst waits here, not in SYN retries.
const LISTEN_BACKLOG: i32 = 4096;

/// Runs a gateway until SIGINT/SIGTERM; returns the process exit code.
pub fn run(config: GatewayConfig) -> i32 {
    init_logging(&config);
    raise_fd_limit();
    if !config.admission.share_port && crate::admission::port_in_use(config.listen) {
        eprintln!(
            "ringcast: another process is already listening on {} (a gateway still running?); SO_REUSEPORT would silently split connections with it. Stop it, pick another --listen, or pass --share-port to run several processes on one port on purpose",
            config.listen
        );
        return 1;
    }
    let listeners = match bind_listeners(config.listen, config.shards) {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!("ringcast: cannot listen on {}: {error} (is another process using the port? try --listen 127.0.0.1:0)", config.listen);
            return 1;
        }
    };
    let address = listeners[0].local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(config.listen);
    let mut fd_limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut fd_limit) };
    let fds_needed = config.max_connections + config.guard.http_connections_max;
    if (fd_limit.rlim_cur as usize) < fds_needed {
        tracing::warn!(
            fd_limit = fd_limit.rlim_cur,
            max_connections = config.max_connections,
            max_http_connections = config.guard.http_connections_max,
            "the open-file limit is below max_connections + max_http_connections: accepts can fail with EMFILE before either bound answers 503 (lower them, raise the limit, or run more processes on the same port; `ringcast doctor --connections N --http-connections M` says which)"
        );
    }
    let node = match Node::new(config) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("ringcast: config error: {e}");
            return 2;
        }
    };
    let bridge_thread = match spawn_bridge(node.clone()) {
        Ok(thread) => thread,
        Err(error) => {
            eprintln!("ringcast: {error}");
            return 1;
        }
    };
    if node.config.sys_subscribe {
        {
            let node = node.clone();
            std::thread::Builder::new().name("ringcast-sysfeed".into()).spawn(move || crate::sysfeed::run(node)).expect("cannot start the $sys.metrics feed thread");
        }
    }
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let shard_threads: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(id, listener)| spawn_shard(id as u16, node.clone(), listener, started_tx.clone()))
        .collect();
    for _ in 0..shard_threads.len() {
        if let Ok(Err(error)) = started_rx.recv() {
            eprintln!("ringcast: a shard failed to start: {error}");
            return 1;
        }
    }
    // Before the "listening" line: whoever reads it may signal at once.
    spawn_signal_thread(node.clone());
    let mode = node.io_mode.get().copied().unwrap_or("unknown");
    let scheme = if node.transport.tls.is_some() { "https" } else { "http" };
    println!("ringcast gateway listening on {scheme}://{address} ({} shards, {mode}, node {})", node.config.shards, node.config.node);
    let _ = std::io::stdout().flush();
    tracing::info!(%address, shards = node.config.shards, io = mode, "gateway started");
    spawn_reload_thread(node.clone());
    for thread in shard_threads {
        let _ = thread.join();
    }
    let _ = node.bridge_inbox.push(ToBridge::Stop);
    let _ = bridge_thread.join();
    tracing::info!("gateway stopped");
    0
}

/// Each connection is a descriptor: take the whole hard limit, and say when it is small
/// compared with `max_connections`.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn init_logging(config: &GatewayConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if config.log_json { builder.json().try_init() } else { builder.try_init() };
}

/// One listener per shard on the same address. Port 0 is resolved by the first bind so
/// every shard shares the port the kernel picked.
fn bind_listeners(address: SocketAddr, count: usize) -> std::io::Result<Vec<Socket>> {
    let mut listeners: Vec<Socket> = Vec::with_capacity(count);
    let mut address = address;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&address.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        if let Some(bound) = socket.local_addr()?.as_socket() {
            address = bound;
        }
        listeners.push(socket);
    }
    Ok(listeners)
}

fn spawn_shard(
    id: u16,
    node: Arc<Node>,
    listener: Socket,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("ringcast-shard-{id}"))
        .spawn(move || {
            let cpus = crate::limits::online_cpus();
            let cpu = node.config.pin.as_ref().map(|pin| pin[id as usize]).unwrap_or(id as usize % cpus.max(1));
            if let Err(error) = monoio::utils::bind_to_cpu_set([cpu]) {
                tracing::warn!(shard = id, cpu, ?error, "could not pin shard to its core");
            }
            let use_uring = !node.config.force_epoll && monoio::utils::detect_uring();
            if use_uring {
                let mut builder = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(node.config.uring_entries).enable_timer();
                if !node.config.sqpoll.is_zero() {
                    let mut uring = io_uring::IoUring::builder();
                    uring.setup_sqpoll(node.config.sqpoll.as_millis().max(1) as u32);
                    builder = builder.uring_builder(uring);
                }
                let runtime = builder.build();
                match runtime {
                    Ok(mut runtime) => {
                        let _ = node.io_mode.set("io_uring");
                        return runtime.block_on(serve(id, node, listener, false, started));
                    }
                    Err(error) => tracing::warn!(shard = id, %error, "io_uring runtime failed; falling back to epoll"),
                }
            } else if id == 0 && !node.config.force_epoll {
                tracing::warn!("io_uring is unavailable (old kernel or blocked by seccomp): using epoll; `ringcast doctor` tells why");
            }
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("cannot start an epoll runtime");
            let _ = node.io_mode.set("epoll");
            runtime.block_on(serve(id, node, listener, true, started));
        })
        .expect("cannot start a shard thread")
}

async fn serve(id: u16, node: Arc<Node>, listener: Socket, nonblocking: bool, started: std::sync::mpsc::Sender<Result<(), String>>) {
    let prepared = listener.set_nonblocking(nonblocking).and_then(|_| monoio::net::TcpListener::from_std(listener.into()));
    let listener = match prepared {
        Ok(listener) => listener,
        Err(error) => {
            let _ = started.send(Err(format!("shard {id}: {error}")));
            return;
        }
    };
    let _ = started.send(Ok(()));
    shard::run(Shard::new(id, node, crate::transport::handlers()), listener).await;
}

/// First SIGTERM: drain (readyz 503, 1012 closes spread over `drain_seconds`, exit 0).
/// First SIGINT: the quick stop (close every connection with 1001, exit 0). Any second
/// signal exits at once (code 1). A SIGTERM after `POST /admin/drain` started a drain
/// counts as the first signal: the drain goes on.
fn spawn_signal_thread(node: Arc<Node>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).expect("cannot install signal handlers");
    std::thread::Builder::new()
        .name("ringcast-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen > 1 {
                    eprintln!("ringcast: second signal {signal}: exiting now");
                    std::process::exit(1);
                }
                if signal == SIGTERM {
                    if !crate::shard::drain::start(&node) {
                        tracing::info!("SIGTERM while already stopping: carrying on (another signal exits at once)");
                    }
                    continue;
                }
                if node.shutting_down.swap(true, Ordering::AcqRel) {
                    tracing::info!("SIGINT while already stopping: carrying on (another signal exits at once)");
                    continue;
                }
                tracing::info!(signal, "shutting down: closing connections with 1001");
                for inbox in &node.shard_inboxes {
                    // Shutdown must not be lost to a full inbox: retry until it fits.
                    while inbox.push(ToShard::Shutdown).is_err() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })
        .expect("cannot start the signal thread");
}

/// Starts the bridge on its own thread (current-thread tokio runtime + `LocalSet`) and
/// waits until its broker is set up; an error (bad NATS credentials, say) is returned
/// before any shard starts.
fn spawn_bridge(node: Arc<Node>) -> Result<std::thread::JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ringcast-bridge".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the bridge's tokio runtime could not start");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                match bridge::Bridge::start(node).await {
                    Ok(bridge) => {
                        let _ = ready_tx.send(Ok(()));
                        bridge.run().await;
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            });
        })
        .map_err(|e| format!("cannot start the bridge thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(error)) => Err(error),
        Err(_) => Err("the bridge thread died while starting".into()),
    }
}

/// SIGHUP → reload the certificate. Existing connections keep the session they have.
fn spawn_reload_thread(node: Arc<Node>) {
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

