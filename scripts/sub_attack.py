#!/usr/bin/env python3
"""Issue 18, item 1 at the review's scale: SESSIONS anonymous long-poll sessions each
POST SUBS `sub` frames for unique 16-token channel names; prints the gateway's RSS before
and after, and how the subs were answered.

usage: scripts/sub_attack.py path/to/ringcast [sessions=100] [subs=1000] [extra gateway flags...]
"""
import http.client, json, socket, subprocess, sys, time, collections

binary = sys.argv[1]
sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 100
subs = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
extra = sys.argv[4:]

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
gw = subprocess.Popen([binary, "gateway", "--listen", f"127.0.0.1:{port}", "--log", "warn", *extra],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def rss_kib():
    for line in open(f"/proc/{gw.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def conn():
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)

for _ in range(100):
    try:
        c = conn(); c.request("GET", "/healthz"); c.getresponse().read(); break
    except OSError:
        time.sleep(0.05)
time.sleep(0.5)
before = rss_kib()
started = time.time()
answers = collections.Counter()
c = conn()  # one keep-alive socket for the whole attack
sids = []
for session in range(sessions):
    c.request("POST", "/poll", body=b"")
    r = c.getresponse(); body = r.read()
    if r.status != 200:
        answers[f"open {r.status}"] += 1
        continue
    sid = json.loads(body)["sid"]; sids.append(sid)
    frames = [{"op": "sub", "id": i + 1,
               "ch": ".".join([f"s{session}x{i}t{t}" for t in range(15)] + [f"end{i}"])}
              for i in range(subs)]
    c.request("POST", f"/poll/{sid}", body=json.dumps(frames).encode(), headers={"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    answers[f"post {r.status}"] += 1
took = time.time() - started
time.sleep(1.0)
after = rss_kib()
# How the subs were answered (first session's frames): one GET.
if sids:
    c.request("GET", f"/poll/{sids[-1]}?ack=0"); r = c.getresponse(); frames = json.loads(r.read())["frames"]
    for f in frames:
        if "id" in f:
            answers[f"last session sub {f.get('code', 'ok')}"] += 1
c.request("GET", "/metrics"); m = c.getresponse().read().decode()
for line in m.splitlines():
    if line.startswith(("ringcast_node_subscription", "ringcast_subscriptions_refused_total", "ringcast_shard_subscriptions")):
        print("  ", line)
print(f"sessions={sessions} subs/session={subs} attack took {took:.1f}s")
print(f"RSS before {before/1024:.1f} MiB, after {after/1024:.1f} MiB, growth {(after-before)/1024:.1f} MiB")
print(dict(answers))
gw.terminate(); gw.wait()
