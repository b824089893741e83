// The client's protocol logic where the gateway cannot drive it yet: notification
// ack/dedupe, history resume with `since`, the 409 resync, and the long-poll transport.
//
// - Frame-level tests hand frames to a client through a recording transport (the client
//   imports no socket code; its transports are plugged in like this one).
// - The long-poll test runs the client's real HTTP code (node's fetch over loopback)
//   against a small server written here from PROTOCOL.md's long-poll text, including a
//   lost response and a redelivered batch. The same client is tested against the real
//   gateway in browser.test.mjs (fallback when WebSocket is blocked) and tests/longpoll.rs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const ringcast = require("../ringcast.js");

/** A transport that records what the client sends. */
function recorder() {
  return {
    kind: "websocket",
    sent: [],
    onframe: null,
    onclose: null,
    send(frame) { this.sent.push(frame); },
    close() {},
    receive(frame) { this.onframe(frame); },
    ops(op) { return this.sent.filter((f) => f.op === op); },
  };
}

function openClient(options = {}) {
  const client = new ringcast.Client("http://127.0.0.1:9", { reconnect: false, ...options });
  client.state = "connecting";
  const transport = recorder();
  client._opened(transport, { op: "welcome", conn: 1, node: "n", hb: 25 });
  return { client, transport };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

test("notifications: handed over once per nid, acked after the handler resolved, not acked when it fails", async () => {
  const { client, transport } = openClient();
  const seen = [];
  let failNext = false;
  client.onNotify(async (data, meta) => {
    if (failNext) { failNext = false; throw new Error("app failed"); }
    seen.push([meta.nid, data]);
  });
  transport.receive({ op: "notify", nid: "n1", data: { a: 1 }, ts: 5 });
  transport.receive({ op: "notify", nid: "n1", data: { a: 1 }, ts: 5 }); // while the first is in progress
  await tick();
  assert.deepEqual(seen, [["n1", { a: 1 }]]);
  assert.deepEqual(transport.ops("ack"), [{ op: "ack", nid: "n1" }]);
  transport.receive({ op: "notify", nid: "n1", data: { a: 1 }, ts: 5 }); // redelivered: ack again, no second call
  await tick();
  assert.equal(seen.length, 1);
  assert.equal(transport.ops("ack").length, 2);

  client.on("error", () => {});
  failNext = true;
  transport.receive({ op: "notify", nid: "n2", data: 2, ts: 6 });
  await tick();
  assert.equal(transport.ops("ack").length, 2, "a failed handler leaves it unacked for redelivery");
  transport.receive({ op: "notify", nid: "n2", data: 2, ts: 6 });
  await tick();
  assert.deepEqual(seen[1], ["n2", 2], "the redelivery reaches the handler");
  assert.deepEqual(transport.ops("ack")[2], { op: "ack", nid: "n2" });
  client.close();
});

test("notifications before a handler is set are held (unacked, bounded) and handed over later", async () => {
  const { client, transport } = openClient({ pendingNotifyMax: 2 });
  for (const nid of ["a", "b", "c"]) transport.receive({ op: "notify", nid, data: nid, ts: 1 });
  assert.equal(transport.ops("ack").length, 0);
  const seen = [];
  client.onNotify((data) => { seen.push(data); });
  await tick();
  assert.deepEqual(seen, ["b", "c"], "the oldest is dropped past the bound (the server redelivers it)");
  assert.deepEqual(transport.ops("ack").map((f) => f.nid), ["b", "c"]);
  client.close();
});

test("history: duplicates by seq are dropped, a reconnect resumes with since, 409 calls onResync", async () => {
  const { client, transport } = openClient();
  const got = [];
  const resyncs = [];
  client.subscribe("doc.1", (data, meta) => got.push(meta.seq), { since: 10, onResync: (e) => resyncs.push(e.code) });
  const [sub] = transport.ops("sub");
  assert.deepEqual({ ch: sub.ch, since: sub.since }, { ch: "doc.1", since: 10 });
  transport.receive({ op: "ok", id: sub.id });
  for (const seq of [11, 12, 12, 11, 13]) transport.receive({ op: "msg", ch: "doc.1", data: seq, seq });
  assert.deepEqual(got, [11, 12, 13]);

  // The connection drops; the next one resubscribes from the last seq seen.
  const old = transport;
  old.onclose({ code: 1006, reason: "" });
  const next = recorder();
  client.state = "reconnecting";
  client._opened(next, { op: "welcome", conn: 2, node: "n", hb: 25 });
  const [resub] = next.ops("sub");
  assert.equal(resub.since, 13);
  next.receive({ op: "msg", ch: "doc.1", data: 13, seq: 13 });
  next.receive({ op: "msg", ch: "doc.1", data: 14, seq: 14 });
  assert.deepEqual(got, [11, 12, 13, 14], "the replayed seam is not delivered twice");

  // Past retention: 409 → onResync, then a live subscribe without since.
  next.receive({ op: "err", id: resub.id, code: 409, msg: "history no longer reaches seq 13" });
  await tick();
  assert.deepEqual(resyncs, [409]);
  const live = next.ops("sub").at(-1);
  assert.equal(live.ch, "doc.1");
  assert.equal("since" in live, false);
  client.close();
});

test("a refused subscription ends with onError; presence joins and leaves reach their callbacks", async () => {
  const { client, transport } = openClient();
  const errors = [];
  client.on("error", () => {});
  client.subscribe("user.bob", () => {}, { onError: (e) => errors.push(e.code) });
  const changes = [];
  const members = client.subscribe("room.1", () => {}, { presence: true, onJoin: (c) => changes.push(["join", c.user]), onLeave: (c) => changes.push(["leave", c.user]) });
  const [bob, room] = transport.ops("sub");
  assert.equal(room.presence, true);
  transport.receive({ op: "err", id: bob.id, code: 403, msg: "user.bob is private to user bob" });
  await tick();
  assert.deepEqual(errors, [403]);
  transport.receive({ op: "join", ch: "room.1", user: "ann", conn: 7 });
  transport.receive({ op: "leave", ch: "room.1", user: "ann", conn: 7 });
  assert.deepEqual(changes, [["join", "ann"], ["leave", "ann"]]);
  const query = members.presence();
  const [op] = transport.ops("presence");
  transport.receive({ op: "ok", id: op.id, members: [{ user: "ann", conn: 7, info: null }] });
  assert.deepEqual(await query, [{ user: "ann", conn: 7, info: null }]);
  client.close();
});

/** A long-poll server written from PROTOCOL.md: sessions with numbered frames, `ack=n`
 *  confirms all below n, unconfirmed frames are sent again, GET waits for frames. */
function longPollServer() {
  const sessions = new Map();
  let dropNextResponse = false;
  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const send = (status, body) => { res.writeHead(status, { "Content-Type": "application/json" }); res.end(JSON.stringify(body)); };
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      if (req.method === "POST" && url.pathname === "/poll") {
        const sid = `s${sessions.size + 1}`;
        const session = { frames: [{ op: "welcome", conn: 9, node: "lp", hb: 25 }], acked: 1, received: [], waiter: null, subs: new Set(), token: url.searchParams.get("token") };
        sessions.set(sid, session);
        return send(200, { sid, frames: session.frames.slice(0, 1) });
      }
      const match = /^\/poll\/([^/]+)$/.exec(url.pathname);
      const session = match && sessions.get(match[1]);
      if (!session) return send(404, { error: { code: 404, msg: "no such session" } });
      if (req.method === "POST") {
        const parsed = JSON.parse(body);
        for (const frame of Array.isArray(parsed) ? parsed : [parsed]) {
          session.received.push(frame);
          if (frame.op === "sub") session.subs.add(frame.ch);
          if (frame.id !== undefined) session.push({ op: frame.op === "ping" ? "pong" : "ok", id: frame.id });
        }
        return send(202, {});
      }
      const ack = Number(url.searchParams.get("ack"));
      session.acked = Math.max(session.acked, ack);
      const answer = () => {
        const frames = session.frames.slice(session.acked);
        if (dropNextResponse && frames.length) {
          dropNextResponse = false;
          return req.socket.destroy(); // the answer is lost on the way: the client must ask again
        }
        send(200, { frames, next: session.acked + frames.length });
      };
      if (session.frames.length > session.acked) return answer();
      session.waiter = answer;
      setTimeout(() => { if (session.waiter === answer) { session.waiter = null; answer(); } }, 1000);
    });
  });
  const api = {
    server,
    sessions,
    loseNextResponse() { dropNextResponse = true; },
    publish(ch, data) {
      for (const session of sessions.values()) if (session.subs.has(ch)) session.push({ op: "msg", ch, data });
    },
  };
  // Session.push: queue a frame and wake a waiting GET.
  const originalSet = sessions.set.bind(sessions);
  sessions.set = (sid, session) => {
    session.push = (frame) => {
      session.frames.push(frame);
      const waiter = session.waiter;
      session.waiter = null;
      if (waiter) waiter();
    };
    return originalSet(sid, session);
  };
  return api;
}

async function eventually(probe, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (probe()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("long-poll: opens a session with the token, subscribes, acks what it handled, survives a lost answer", async () => {
  const lp = longPollServer();
  await new Promise((r) => lp.server.listen(0, "127.0.0.1", r));
  const { port } = lp.server.address();
  const client = ringcast.connect(`http://127.0.0.1:${port}`, { transports: ["longpoll"], token: "tok en", reconnect: false });
  try {
    const got = [];
    let subscribed = false;
    client.subscribe("feed.1", (data) => got.push(data), { onSubscribed: () => { subscribed = true; } });
    await eventually(() => subscribed, "subscribed over long-poll");
    assert.equal(client.transport.kind, "longpoll");
    const session = lp.sessions.get("s1");
    assert.equal(session.token, "tok en", "the token travels as ?token= on POST /poll");
    lp.publish("feed.1", 1);
    lp.publish("feed.1", 2);
    await eventually(() => got.length === 2, "two messages");
    lp.loseNextResponse();
    lp.publish("feed.1", 3);
    lp.publish("feed.1", 4);
    await eventually(() => got.length >= 4, "the batch after the lost answer");
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(got, [1, 2, 3, 4], "the resent batch is delivered once, in order");
    await eventually(() => session.acked === session.frames.length, "everything acked");
    // The server resends frames the client already handled (as after an ack it never
    // saw): the client recognises them by number and hands over only the new one.
    session.acked -= 2;
    lp.publish("feed.1", 5);
    await eventually(() => got.length >= 5, "the message after the resend");
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    assert.ok(await client.ping() >= 0);
    assert.deepEqual(session.received.map((f) => f.op), ["sub", "ping"]);
  } finally {
    client.close();
    await new Promise((r) => lp.server.close(r));
    lp.server.closeAllConnections?.();
  }
});
