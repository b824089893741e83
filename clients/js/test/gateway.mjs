// Test plumbing: a real ringcast gateway process on a free loopback port, and a real
// headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = join(here, "..", "..", "..");
export const binary = process.env.RINGCAST_BIN || join(repoRoot, "target", "release", "ringcast");
export const artifacts = process.env.RINGCAST_ARTIFACTS || join(repoRoot, "target", "artifacts");
export const API_KEY = "browser-test-key";
/** Upper bound for anything a test waits for. */
export const WAIT_MS = 15000;

/** Starts `ringcast gateway` with `--listen 127.0.0.1:<port or 0>`; resolves once it
 *  printed its listening line. */
export function startGateway(extra = [], { port = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const args = ["gateway", "--listen", `127.0.0.1:${port}`, "--api-key", API_KEY, "--log", "warn", ...extra];
    const child = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (chunk) => { stderr = (stderr + chunk).slice(-4000); });
    const timer = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`gateway did not start within ${WAIT_MS} ms: ${stderr}`)); }, WAIT_MS);
    child.on("error", (error) => { clearTimeout(timer); reject(new Error(`cannot run ${binary} (build it with cargo build --release): ${error.message}`)); });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`gateway exited with ${code} before listening: ${stderr}`)); });
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      clearTimeout(timer);
      const match = /http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
      if (!match) return reject(new Error(`unexpected first line: ${line}`));
      child.removeAllListeners("exit");
      const port = Number(match[1]);
      resolve({
        child,
        port,
        url: `http://127.0.0.1:${port}`,
        stderr: () => stderr,
        stop: () => new Promise((done) => {
          if (child.exitCode !== null || child.signalCode !== null) return done();
          child.once("exit", () => done());
          child.kill("SIGKILL");
        }),
      });
    });
  });
}

export async function publish(gateway, ch, data) {
  const response = await fetch(`${gateway.url}/api/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ ch, data }),
  });
  if (response.status !== 202) throw new Error(`publish ${ch}: ${response.status} ${await response.text()}`);
}

/** Chromium as this machine runs it: headless, no sandbox (root), no GPU, and none of
 *  the background services that would try to reach the (closed) network. launch()
 *  gives every browser a fresh, empty profile directory of its own. */
export async function launchBrowser() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 30000,
  });
}

/** A page on the gateway's own origin (so WebSocket and long-poll are same-origin, as
 *  for an application served next to the gateway) with the gateway's /ringcast.js loaded.
 *  The document is the gateway's own /healthz: a real response from the real origin
 *  (a test-fulfilled page would count as a public origin reaching into loopback, which
 *  Chromium's local-network-access checks refuse). */
export async function clientPage(browser, gateway, { blockWebSocket = false } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const logs = [];
  page.on("console", (message) => logs.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => logs.push(`pageerror: ${error.message}`));
  if (blockWebSocket) {
    // What a proxy that kills upgrades looks like to a page: every WebSocket fails
    // before it opens. The client must find its way through long-poll.
    await page.addInitScript(() => {
      window.__webSocketAttempts = 0;
      window.WebSocket = function BlockedWebSocket() {
        window.__webSocketAttempts += 1;
        throw new DOMException("WebSocket blocked by the test", "SecurityError");
      };
    });
  }
  await page.goto(`${gateway.url}/healthz`);
  await page.addScriptTag({ url: "/ringcast.js" });
  return { page, context, logs };
}

/** Polls `probe` (in node) until it returns a truthy value or the time runs out. */
export async function eventually(probe, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await probe();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
