//! `subscribe`: how long a `sub` takes to be answered `ok` (ringcast only). Each `sub`
//! is a new channel, so on NATS each one is a new subscription on the server: the cost of
//! "ok means live". Open loop: subs go out at `--rate` on schedule, spread round-robin over
//! `--conns` connections, whatever the answers do; one thread and one epoll loop.

use super::*;
use crate::cli::SubscribeArgs;
use crate::frame;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};

/// Bytes read per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest a connection's upgrade may take.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn {
    stream: TcpStream,
    inbox: Vec<u8>,
    upgraded: bool,
    /// Subs sent on this connection (the server's per-connection bound applies).
    subs: usize,
}

pub fn subscribe(args: &SubscribeArgs) -> Result<Report> {
    let client = &args.client;
    if client.target != TargetKind::Ringcast {
        bail!("subscribe measures ringcast's sub → ok: drop --target");
    }
    let conns = client.conns.unwrap_or(100).max(1);
    let endpoint = parse_urls(&client.url)?.remove(0);
    let total = (args.rate * args.duration.as_secs_f64()).ceil().max(1.0) as usize;
    let per_conn = total.div_ceil(conns);
    if per_conn > args.max_per_conn {
        bail!(
            "{total} subs over {conns} connections is {per_conn} each, over --max-per-conn {} (the gateway's --max-subscriptions): give --conns {} or more",
            args.max_per_conn,
            total.div_ceil(args.max_per_conn)
        );
    }
    let mut report = Report::new(
        "subscribe",
        json!({"target": "ringcast", "url": client.url, "conns": conns, "rate": args.rate, "duration_s": args.duration.as_secs_f64(), "subs": total, "label": client.label}),
    );
    let mut poll = Poll::new()?;
    let mut table = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut stream = TcpStream::connect(endpoint.addr).with_context(|| format!("connecting to {}", client.url))?;
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        table.push(Conn { stream, inbox: Vec::new(), upgraded: false, subs: 0 });
    }
    let prefix = format!("lt{}s{}", std::process::id(), fastish_random());
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    // Upgrade every connection first.
    let request = frame::handshake_request(&endpoint.host, &endpoint.path, "dGhlIHNhbXBsZSBub25jZQ==", Some("ringcast.v1"));
    let mut sent_upgrade = vec![false; conns];
    let deadline = Instant::now() + UPGRADE_TIMEOUT;
    while table.iter().any(|c| !c.upgraded) {
        if Instant::now() > deadline {
            bail!("{} of {conns} connections did not upgrade within {UPGRADE_TIMEOUT:?}", table.iter().filter(|c| !c.upgraded).count());
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let i = event.token().0;
            let conn = &mut table[i];
            if event.is_writable() && !sent_upgrade[i] {
                conn.stream.write_all(request.as_bytes())?;
                sent_upgrade[i] = true;
            }
            if event.is_readable() {
                read_into(&mut conn.stream, &mut conn.inbox, &mut buf)?;
                if let Some(end) = frame::http_head_end(&conn.inbox) {
                    if frame::http_status(&conn.inbox[..end]) != Some(101) {
                        bail!("upgrade refused: {}", String::from_utf8_lossy(&conn.inbox[..end]).lines().next().unwrap_or(""));
                    }
                    conn.inbox.drain(..end);
                    conn.upgraded = true;
                }
            }
        }
    }
    eprintln!("subscribe: {conns} connections upgraded; sending {total} subs at {}/s", args.rate);
    // Send on schedule, read answers as they come.
    let mut sent_at: Vec<Option<Instant>> = vec![None; total + 1];
    let mut latency = stats::new_histogram();
    let mut errors = 0u64;
    let mut answered = 0usize;
    let mut sent = 0usize;
    let started = Instant::now();
    let end = started + args.duration + args.settle;
    let mut next_progress = started + Duration::from_secs(1);
    let mut out = Vec::with_capacity(256);
    while answered < total && Instant::now() < end {
        let due = ((started.elapsed().as_secs_f64() * args.rate) as usize + 1).min(total);
        while sent < due {
            sent += 1;
            let conn = &mut table[sent % conns];
            let op = format!("{{\"op\":\"sub\",\"ch\":\"{prefix}.c{sent}\",\"id\":{sent}}}");
            out.clear();
            frame::encode_client_frame(&mut out, frame::OPCODE_TEXT, op.as_bytes(), [7, 1, 3, 9]);
            sent_at[sent] = Some(Instant::now());
            write_all_blocking(&mut conn.stream, &out)?;
            conn.subs += 1;
        }
        let wait = if sent < total { Duration::from_micros(200) } else { Duration::from_millis(20) };
        poll.poll(&mut events, Some(wait))?;
        for event in events.iter() {
            if !event.is_readable() {
                continue;
            }
            let conn = &mut table[event.token().0];
            read_into(&mut conn.stream, &mut conn.inbox, &mut buf)?;
            while let Some(header) = frame::parse_header(&conn.inbox) {
                let len = header.frame_len() as usize;
                if conn.inbox.len() < len {
                    break;
                }
                let payload = &conn.inbox[header.header_len..len];
                if header.opcode == frame::OPCODE_TEXT {
                    if let Some(id) = frame::find_u64_field(payload, b"\"id\":") {
                        if let Some(at) = sent_at.get_mut(id as usize).and_then(Option::take) {
                            answered += 1;
                            if frame::contains(payload, b"\"op\":\"ok\"") {
                                let _ = latency.record((at.elapsed().as_nanos() as u64).max(1));
                            } else {
                                errors += 1;
                            }
                        }
                    }
                }
                conn.inbox.drain(..len);
            }
        }
        if Instant::now() >= next_progress {
            eprintln!("subscribe: {:>5.1}s sent {sent} answered {answered} errors {errors}", started.elapsed().as_secs_f64());
            next_progress += Duration::from_secs(1);
        }
    }
    let p = stats::percentiles(&latency);
    report.figure("subs_sent", "subs sent", sent);
    report.figure("subs_answered", "subs answered", answered);
    report.figure("sub_errors", "subs answered err", errors);
    report.figure("sub_ok_p50_ms", "sub → ok p50 (ms)", ms(p.p50_ns));
    report.figure("sub_ok_p99_ms", "sub → ok p99 (ms)", ms(p.p99_ns));
    report.figure("sub_ok_max_ms", "sub → ok max (ms)", ms(p.max_ns));
    report.figure("achieved_rate", "subs/s sent", json!((sent as f64 / args.duration.as_secs_f64()).round()));
    if answered < sent {
        report.notes.push(format!("{} subs were not answered within --settle", sent - answered));
    }
    Ok(report)
}

fn read_into(stream: &mut TcpStream, inbox: &mut Vec<u8>, buf: &mut [u8]) -> Result<()> {
    loop {
        match stream.read(buf) {
            Ok(0) => bail!("the server closed a connection"),
            Ok(n) => inbox.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A sub frame is ~80 bytes: the socket takes it at once unless the server stopped
/// reading, which this waits out (bounded by the run's own end).
fn write_all_blocking(stream: &mut TcpStream, mut bytes: &[u8]) -> Result<()> {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if Instant::now() > give_up {
                    bail!("the server stopped reading for 10 s");
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn fastish_random() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64)
}
