// The dashboard and ringcast.js in a real headless Chromium against a real gateway
// process: nothing here is mocked but the one thing a test must break on purpose (the
// page's WebSocket constructor, to prove the long-poll fallback).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { connect as tcpConnect } from "node:net";
import { mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { startGateway, publish, launchBrowser, clientPage, eventually, artifacts } from "./gateway.mjs";

let browser;
const unique = () => `${process.pid}${Math.floor(Math.random() * 1e9)}`;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
});

function jwt(secret, claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** Counts pixels of about this colour in a canvas: proof a series was really drawn. */
async function pixelsOfColour(page, canvasId, [r, g, b]) {
  return page.evaluate(({ canvasId, r, g, b }) => {
    const canvas = document.getElementById(canvasId);
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] > 200 && Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40 && Math.abs(data[i + 2] - b) < 40) n++;
    }
    return n;
  }, { canvasId, r, g, b });
}

test("the dashboard shows live numbers and charts from $sys.metrics", async () => {
  const gateway = await startGateway(["--sys-subscribe", "--shards", "2"]);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    const response = await page.goto(`${gateway.url}/`);
    assert.equal(response.status(), 200);
    assert.match(response.headers()["content-type"], /^text\/html/);
    await eventually(() => page.evaluate(() => window.__ringcastDashboard.snapshots >= 2), "two snapshots");
    assert.equal(await page.evaluate(() => window.__ringcastDashboard.transport), "websocket");
    assert.match(await page.textContent("#status"), /live · websocket/);

    // Traffic the dashboard must show: a subscriber in another page, 10 publishes a second.
    const channel = `load.${unique()}`;
    const { page: subscriber } = await clientPage(browser, gateway);
    await subscriber.evaluate((ch) => {
      window.got = 0;
      window.c = ringcast.connect();
      window.c.subscribe(ch, () => { window.got += 1; }, { onSubscribed: () => { window.subscribed = true; } });
    }, channel);
    await eventually(() => subscriber.evaluate(() => window.subscribed === true), "the subscriber's ok");
    for (let i = 0; i < 40; i++) {
      await publish(gateway, channel, { i });
      await new Promise((r) => setTimeout(r, 100));
    }
    await eventually(() => subscriber.evaluate(() => window.got === 40), "40 messages in the subscriber page");
    const seen = await eventually(() => page.evaluate(() => {
      const s = window.__ringcastDashboard.last;
      return s.connections >= 2 && s.published_per_s >= 3 && s.out_per_s >= 3 ? s : null;
    }), "the publish rate and both connections in a snapshot");
    assert.equal(seen.shards.length, 2);
    assert.equal(seen.shards.reduce((n, s) => n + s.connections, 0), seen.connections);
    assert.equal(seen.io.length > 0, true);

    // The same numbers are on screen, in the tiles, the shard table and the charts.
    assert.ok(Number(await page.textContent("#connections")) >= 2);
    assert.ok(Number(await page.textContent("#snapshots")) >= 3);
    await eventually(async () => Number(await page.textContent("#published-rate")) > 0, "a non-zero published tile");
    assert.equal(await page.locator("#shards tbody tr").count(), 2);
    assert.ok(await pixelsOfColour(page, "chart-messages", [0x4f, 0xc3, 0xf7]) > 30, "the 'in' line is drawn");
    assert.ok(await pixelsOfColour(page, "chart-messages", [0xff, 0xb7, 0x4d]) > 30, "the 'out' line is drawn");
    assert.ok(await pixelsOfColour(page, "chart-connections", [0x4f, 0xc3, 0xf7]) > 30, "shard 0's connections are drawn");

    mkdirSync(artifacts, { recursive: true });
    const shot = join(artifacts, "dashboard.png");
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 20000, "a real screenshot, not an empty page");
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await gateway.stop();
  }
});

test("a message published through /api/publish appears in a page using ringcast.js", async () => {
  const gateway = await startGateway(["--shards", "2"]);
  try {
    const { page, context, logs } = await clientPage(browser, gateway);
    const channel = `news.${unique()}`;
    await page.evaluate((ch) => {
      window.got = [];
      window.c = ringcast.connect();
      window.c.subscribe(ch, (data, meta) => window.got.push({ data, meta }), { onSubscribed: () => { window.subscribed = true; } });
    }, channel);
    await eventually(() => page.evaluate(() => window.subscribed === true), "subscribed");
    assert.equal(await page.evaluate(() => window.c.transport.kind), "websocket");
    await publish(gateway, channel, { hello: "browser", n: 1 });
    const got = await eventually(() => page.evaluate(() => window.got.length ? window.got : null), "the message");
    assert.deepEqual(got, [{ data: { hello: "browser", n: 1 }, meta: { channel } }]);
    // A wildcard subscription gets it too; the server's refusal of an anonymous publish
    // comes back as a rejected promise with the server's code.
    const prefix = channel.split(".")[0];
    await page.evaluate((p) => {
      window.wild = [];
      window.c.subscribe(`${p}.*`, (data) => window.wild.push(data), { onSubscribed: () => { window.wildOk = true; } });
    }, prefix);
    await eventually(() => page.evaluate(() => window.wildOk === true), "wildcard subscribed");
    await publish(gateway, channel, "second");
    await eventually(() => page.evaluate(() => window.wild.includes("second") && window.got.length === 2), "both subscriptions got it");
    const refused = await page.evaluate(() => window.c.publish("news.x", 1).then(() => null, (e) => ({ code: e.code, msg: e.message })));
    assert.equal(refused.code, 403, JSON.stringify(refused));
    assert.match(refused.msg, /anonymous/);
    assert.ok(!logs.some((l) => l.startsWith("pageerror")), logs.join("\n"));
    await context.close();
  } finally {
    await gateway.stop();
  }
});

test("the client reconnects with backoff and resubscribes when the gateway restarts", async () => {
  let gateway = await startGateway(["--shards", "1"]);
  const port = gateway.port;
  try {
    const { page, context } = await clientPage(browser, gateway);
    const channel = `restart.${unique()}`;
    await page.evaluate((ch) => {
      window.got = [];
      window.states = [];
      window.subscribedCount = 0;
      window.c = ringcast.connect(undefined, { backoffBaseMs: 200, backoffMaxMs: 1000, onStateChange: (s) => window.states.push(s) });
      window.c.subscribe(ch, (data) => window.got.push(data), { onSubscribed: () => { window.subscribedCount += 1; } });
    }, channel);
    await eventually(() => page.evaluate(() => window.subscribedCount === 1), "first subscribe");
    await gateway.stop();
    await eventually(() => page.evaluate(() => window.states.includes("reconnecting")), "the client noticed");
    gateway = await startGateway(["--shards", "1"], { port });
    await eventually(() => page.evaluate(() => window.subscribedCount === 2), "resubscribed on the new process", 20000);
    assert.equal(await page.evaluate(() => window.c.state), "open");
    const states = await page.evaluate(() => window.states);
    assert.deepEqual(states.slice(0, 2), ["connecting", "open"]);
    assert.equal(states[states.length - 1], "open");
    await publish(gateway, channel, { after: "restart" });
    await eventually(() => page.evaluate(() => window.got.some((d) => d && d.after === "restart")), "a message after the restart");
    await context.close();
  } finally {
    await gateway.stop();
  }
});

test("the dashboard needs a token when the gateway has a JWT secret", async () => {
  const secret = "browser-test-secret";
  const gateway = await startGateway(["--sys-subscribe", "--jwt-secret", secret, "--allow-anonymous", "--shards", "1"]);
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(`${gateway.url}/`);
    const error = await eventually(() => page.evaluate(() => window.__ringcastDashboard.error), "the refusal");
    assert.equal(error.code, 403);
    assert.ok(await page.isVisible("#banner"));
    assert.match(await page.textContent("#banner"), /#token=/);
    const token = jwt(secret, { sub: "ops", exp: Math.floor(Date.now() / 1000) + 600, chans: ["$sys.>"] });
    const withToken = await context.newPage();
    await withToken.goto(`${gateway.url}/#token=${token}`);
    await eventually(() => withToken.evaluate(() => window.__ringcastDashboard.snapshots >= 1), "a snapshot with the token");
    assert.equal(await withToken.isVisible("#banner"), false);
  } finally {
    await context.close();
    await gateway.stop();
  }
});

test("the client falls back to long-poll when WebSocket is blocked", async () => {
  const gateway = await startGateway(["--shards", "2"]);
  try {
    const { page, context } = await clientPage(browser, gateway, { blockWebSocket: true });
    const channel = `poll.${unique()}`;
    await page.evaluate((ch) => {
      window.got = [];
      window.c = ringcast.connect();
      window.c.subscribe(ch, (data) => window.got.push(data), { onSubscribed: () => { window.subscribed = true; } });
    }, channel);
    await eventually(() => page.evaluate(() => window.subscribed === true), "subscribed over long-poll");
    assert.equal(await page.evaluate(() => window.c.transport.kind), "longpoll");
    assert.ok(await page.evaluate(() => window.__webSocketAttempts) >= 1, "WebSocket was tried first");
    for (let i = 0; i < 3; i++) await publish(gateway, channel, { i });
    await eventually(() => page.evaluate(() => window.got.length === 3), "three messages over long-poll");
    assert.deepEqual(await page.evaluate(() => window.got), [{ i: 0 }, { i: 1 }, { i: 2 }]);
    const rtt = await page.evaluate(() => window.c.ping());
    assert.ok(rtt >= 0);
    await context.close();
  } finally {
    await gateway.stop();
  }
});

/** One raw NATS publish (protocol text over TCP; no client library in the dev deps):
 *  CONNECT, PUB, then PING, resolving on the PONG that proves the server took it. */
function natsPublish(subject, payload, port = 4222) {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect(port, "127.0.0.1");
    const body = Buffer.from(payload);
    let seen = "";
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no PONG from NATS: ${seen}`)); }, 5000);
    socket.on("error", (error) => { clearTimeout(timer); reject(error); });
    socket.on("data", (chunk) => {
      seen += chunk.toString();
      if (seen.includes("INFO") && !socket.sent) {
        socket.sent = true;
        socket.write(`CONNECT {"verbose":false,"pedantic":false}\r\nPUB ${subject} ${body.length}\r\n`);
        socket.write(body);
        socket.write("\r\nPING\r\n");
      }
      if (seen.includes("PONG")) { clearTimeout(timer); socket.end(); resolve(); }
      if (seen.includes("-ERR")) { clearTimeout(timer); socket.destroy(); reject(new Error(seen)); }
    });
  });
}

test("a forged $sys.metrics snapshot from NATS shows as text and runs no script", async () => {
  // The one path that can still deliver a forged snapshot: any NATS publisher on the
  // prefix (the API and pub refuse $ channels). The dashboard must render it as text.
  const prefix = `b${unique()}`;
  const node = `node-${unique()}`;
  const gateway = await startGateway(["--sys-subscribe", "--shards", "1", "--nats", "nats://127.0.0.1:4222", "--nats-prefix", prefix, "--node", node]);
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    const response = await page.goto(`${gateway.url}/`);
    const csp = response.headers()["content-security-policy"];
    const scriptSrc = csp.split(";").find((d) => d.trim().startsWith("script-src"));
    assert.doesNotMatch(scriptSrc, /unsafe-inline/);
    await eventually(() => page.evaluate(() => window.__ringcastDashboard.snapshots >= 1), "a real snapshot");
    const hostile = `<img src=x onerror="window.__pwned=1">`;
    const forged = JSON.stringify({
      v: 1, node, ts: Date.now(), interval_ms: 1000, io: `<b id="bold">io</b>`, uptime_s: 1,
      connections: 1, connections_max: 10, capacity_ratio: 0.1, in_per_s: 0, out_per_s: 0,
      published_per_s: 0, deliveries_per_s: 0, bytes_in_per_s: 0, bytes_out_per_s: 0,
      fanout_p99_ms: null, drops_per_s: 0, drops_total: 0, slow_consumer_closes_total: 0,
      shards: [{ id: hostile, connections: 1, in_per_s: 0, out_per_s: 0, deliveries_per_s: 0, queue_depth: 0, drops_total: 0 }],
    });
    // The real node publishes once a second and redraws the table: keep forging until the
    // forged row is on screen, then look.
    const shown = await eventually(async () => {
      await natsPublish(`${prefix}.$sys.metrics`, forged);
      return page.evaluate((text) => {
        const cell = document.querySelector("#shards tbody td");
        return cell && cell.textContent === text ? { img: document.querySelectorAll("img").length, bold: document.getElementById("bold") !== null, meta: document.getElementById("node-meta").textContent } : null;
      }, hostile);
    }, "the forged shard id shown literally");
    assert.equal(shown.img, 0, "no element was made from the shard id");
    assert.equal(shown.bold, false, "no element was made from the io field");
    assert.match(shown.meta, /<b id="bold">io<\/b>/);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await page.evaluate(() => window.__pwned), undefined, "no script ran");
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await gateway.stop();
  }
});
