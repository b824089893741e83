#!/usr/bin/env python3
"""Idle memory per connection, plain vs TLS: the gateway's RSS before and after N idle
WebSockets (one shard), once over plain TCP and once over TLS. Prints bytes per
connection. Numbers on a shared CI host are noisy: say "machine loaded" when quoting them.

Usage: tuning/tls-idle-memory.py [RINGCAST_BINARY] [N]   (needs the openssl CLI)
"""
import os, re, socket, ssl, subprocess, sys, tempfile, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/ringcast"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def rss_bytes(pid):
    return 1024 * int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))


def per_connection(tls_files):
    args = [BIN, "gateway", "--listen", "127.0.0.1:0", "--shards", "1", "--log", "warn"]
    if tls_files:
        args += ["--tls-cert", tls_files[0], "--tls-key", tls_files[1]]
    gateway = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(re.search(r"127\.0\.0\.1:(\d+)", gateway.stdout.readline()).group(1))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def connect():
        sock = socket.create_connection(("127.0.0.1", port))
        if tls_files:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(UPGRADE)
        seen = b""
        while b"welcome" not in seen:
            seen += sock.recv(4096)
        return sock

    try:
        warm = [connect() for _ in range(50)]  # first-use allocations are not per connection
        time.sleep(1)
        before = rss_bytes(gateway.pid)
        held = [connect() for _ in range(N)]
        time.sleep(2)
        return (rss_bytes(gateway.pid) - before) / N
    finally:
        gateway.kill()
        gateway.wait()


with tempfile.TemporaryDirectory() as tmp:
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    plain = per_connection(None)
    tls = per_connection((cert, key))
print(f"{N} idle WebSockets, bytes per connection: plain {plain:.0f}, TLS {tls:.0f} (TLS adds {tls - plain:.0f})")
