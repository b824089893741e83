// The client's pure parts in node (no network): backoff policy, wildcard matching (the
// same rules as the server's channel.rs), endpoint derivation, the bounded nid memory,
// and the TypeScript declarations against a usage file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esm from "../ringcast.mjs";

const require = createRequire(import.meta.url);
const ringcast = require("../ringcast.js");
const here = dirname(fileURLToPath(import.meta.url));

test("backoff doubles from its base, stays within [ceiling/2, ceiling] and stops at its cap", () => {
  const { backoffDelay } = ringcast;
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(30000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 500, 30000, () => 0), ceiling / 2);
    assert.equal(backoffDelay(attempt, 500, 30000, () => 1), ceiling);
    const random = backoffDelay(attempt, 500, 30000);
    assert.ok(random >= ceiling / 2 && random <= ceiling, `${random} for attempt ${attempt}`);
  }
  assert.equal(backoffDelay(1000, 500, 30000, () => 1), 30000, "huge attempt counts do not overflow");
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(4, 500, 30000)));
  assert.ok(spread.size > 10, "jittered: clients that failed together do not retry together");
});

test("wildcard matching follows the server's rules", () => {
  const table = [
    ["a.b", "a.b", true], ["a.*", "a.b", true], ["a.*", "a.b.c", false], ["a.>", "a.b.c", true],
    ["a.>", "a", false], ["*.b", "a.b", true], [">", "a", true], [">", "$sys.metrics", false],
    ["*.metrics", "$sys.metrics", false], ["$sys.>", "$sys.metrics", true], ["$sys.metrics", "$sys.metrics", true],
    ["a.b", "a.c", false], ["a.b.c", "a.b", false], ["user.*", "user.bob", true],
  ];
  for (const [pattern, channel, expected] of table) assert.equal(ringcast.matches(pattern, channel), expected, `${pattern} ~ ${channel}`);
});

test("endpoints come from an http base, a ws URL, or a path prefix", () => {
  const { endpoints } = ringcast;
  assert.deepEqual(endpoints("http://127.0.0.1:8080"), { ws: "ws://127.0.0.1:8080/ws", http: "http://127.0.0.1:8080" });
  assert.deepEqual(endpoints("https://rt.example.com/"), { ws: "wss://rt.example.com/ws", http: "https://rt.example.com" });
  assert.deepEqual(endpoints("wss://example.com/rt/ws"), { ws: "wss://example.com/rt/ws", http: "https://example.com/rt" });
  assert.deepEqual(endpoints("https://example.com/rt/"), { ws: "wss://example.com/rt/ws", http: "https://example.com/rt" });
  assert.throws(() => endpoints(undefined), /no URL given/);
});

test("the nid memory is bounded and forgets the oldest first", () => {
  const seen = new ringcast.BoundedSet(3);
  ["a", "b", "c", "a", "d"].forEach((nid) => seen.add(nid));
  assert.equal(seen.size, 3);
  assert.equal(seen.has("a"), false);
  assert.ok(seen.has("b") && seen.has("c") && seen.has("d"));
});

test("the ES module entry exports the same client", () => {
  assert.equal(esm.connect, ringcast.connect);
  assert.equal(esm.default, ringcast);
  assert.equal(esm.VERSION, JSON.parse(readFileSync(join(here, "..", "package.json"), "utf8")).version);
});

test("ops before connect() fail with a message that says what to do", async () => {
  const client = new ringcast.Client("http://127.0.0.1:9");
  await assert.rejects(client.publish("a.b", 1), /call connect\(\) first/);
  assert.equal(client.state, "idle");
});

test("the TypeScript declarations type-check a typical use", () => {
  const tsc = join(here, "..", "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", join(here, "tsconfig.json")], { stdio: "pipe" });
});
