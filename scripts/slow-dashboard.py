#!/usr/bin/env python3
"""A dashboard on a slow link, for scripts/bench-mqtt.sh: subscribes to PATTERN with a 4 KiB
receive buffer, stops reading until the file GO exists (the script creates it when the
devices have stopped publishing; at most HOLD_MAX_S), then reads what the gateway still
has for it (until nothing comes for IDLE_END_S, at most DRAIN_S) and prints one JSON line:
whether the gateway closed it (and the code), the messages read, and the lowest and
highest last message number (`lt_n`) read per device channel: a dashboard that ends on
the latest values has them all at the devices' last number.

    slow-dashboard.py PORT PATTERN GO
"""
import base64, json, os, socket, struct, sys, time

HOLD_MAX_S = 300  # bound on the wait for GO
DRAIN_S = 30      # bound on reading what is left once GO exists
IDLE_END_S = 2.0  # the backlog is drained once nothing has come for this long

port, pattern, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("slow-dashboard: no upgrade answer")
    buf += chunk
head, buf = buf.split(b"\r\n\r\n", 1)
if not head.startswith(b"HTTP/1.1 101"):
    sys.exit(f"slow-dashboard: upgrade refused: {head[:80]!r}")

def send_text(text):
    payload, mask = text.encode(), os.urandom(4)
    header = bytes([0x81, 0x80 | len(payload)]) + mask  # sub frames are < 126 bytes
    s.sendall(header + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

def frames():
    """Yields (opcode, payload) of server frames until the socket ends or DRAIN_S passes."""
    global buf
    deadline = time.time() + DRAIN_S
    heard = time.time()
    s.settimeout(0.5)
    while time.time() < deadline and time.time() - heard < IDLE_END_S:
        while len(buf) >= 2:
            n, at = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4: break
                n, at = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10: break
                n, at = struct.unpack(">Q", buf[2:10])[0], 10
            if len(buf) < at + n: break
            op, payload, buf = buf[0] & 0x0F, buf[at:at + n], buf[at + n:]
            yield op, payload
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return
        heard = time.time()
        buf += chunk

send_text(json.dumps({"op": "sub", "ch": pattern, "id": 1}))
# Wait for the `ok` (reading the welcome and the answer), then stop reading.
for op, payload in frames():
    if op == 1 and json.loads(payload).get("op") == "ok":
        break
print("slow-dashboard: subscribed, not reading", file=sys.stderr, flush=True)
waited = time.time()
while not os.path.exists(go) and time.time() - waited < HOLD_MAX_S:
    time.sleep(0.2)
messages, last, closed = 0, {}, None
for op, payload in frames():
    if op == 8:
        closed = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        break
    if op == 9:  # answer pings so the heartbeat does not close us while draining
        mask = os.urandom(4)
        s.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    if op == 1:
        frame = json.loads(payload)
        if frame.get("op") == "msg":
            messages += 1
            last[frame["ch"]] = frame["data"].get("lt_n")
print(json.dumps({"closed": closed, "messages": messages, "channels": len(last),
                  "last_n_min": min(last.values(), default=None), "last_n_max": max(last.values(), default=None)}))
