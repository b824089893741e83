/*! ringcast.js 0.1.0: browser client for the ringcast real-time gateway (protocol v1). Apache-2.0. */
// One file, no dependencies, no build step: the gateway serves this exact file at
// /ringcast.js, and the npm package ships it. It works as a plain <script> (global
// `ringcast`), as CommonJS (`require("ringcast")`) and through ringcast.mjs as an ES module.
//
// What it does for you (PROTOCOL.md is the contract it follows):
// - connects over WebSocket (`/ws`, subprotocol ringcast.v1) with a token, and falls back
//   to long-poll (`POST /poll`, `GET /poll/{sid}?ack=n`, `POST /poll/{sid}`) when the
//   WebSocket cannot be opened (blocked by a proxy, no WebSocket in the runtime, ...);
// - reconnects by itself with jittered exponential backoff (a drain's 1012 close gets a
//   random delay inside `drainJitterMs`, so a node's clients do not all come back at once);
// - resubscribes after a reconnect, with `since` on channels whose messages carry `seq`
//   (history channels), drops replayed duplicates, and calls `onResync` on `err` 409;
// - acknowledges notifications after your handler ran, and hands each `nid` to it once;
// - keeps every queue bounded (options below), and says what went wrong in each error.
(function (root, factory) {
  if (typeof module === "object" && module.exports) {
    module.exports = factory();
  } else {
    root.ringcast = factory();
  }
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
  "use strict";

  var VERSION = "0.1.0";
  /** An empty long-poll answer faster than this is followed by a pause of the other. */
  var POLL_EMPTY_FAST_MS = 100;
  var POLL_EMPTY_PAUSE_MS = 250;

  /** Every bound and timing, with its unit last. Override any of them in `connect`'s options. */
  var DEFAULTS = {
    /** Transports to try, in order, on each connection attempt. */
    transports: ["websocket", "longpoll"],
    /** Reconnect by itself after the connection drops. */
    reconnect: true,
    /** First reconnect delay ceiling; doubles per failed attempt up to backoffMaxMs. */
    backoffBaseMs: 500,
    backoffMaxMs: 30000,
    /** Consecutive failed attempts before giving up (state "closed"). */
    maxAttempts: Infinity,
    /** A connection that stayed open this long resets the backoff to its base. */
    stableAfterMs: 5000,
    /** On a 1012 close (the node drains), reconnect after a random delay up to this. */
    drainJitterMs: 5000,
    /** Time for a transport to deliver its `welcome`. */
    connectTimeoutMs: 10000,
    /** Time for the server to answer an op that carries an id. */
    requestTimeoutMs: 10000,
    /** Ops (publish, presence) queued while not connected; past it they fail at once. */
    outboxMax: 1000,
    /** Notification ids remembered for dedupe (the oldest are forgotten first). */
    nidMemory: 1000,
    /** Notifications held while no onNotify handler is set (not acked: the server retries). */
    pendingNotifyMax: 256,
    /** Long-poll: client-side limit on one GET (the server answers within 25 s). */
    pollTimeoutMs: 35000,
    /** Long-poll: consecutive failed requests before the session counts as lost. */
    pollRetries: 3,
    /** Subscribe retries on 429/503 before the subscription fails. */
    subscribeRetries: 5,
  };

  // ---------------------------------------------------------------------------------
  // Pure helpers (exported for tests and for applications that want the same policy).

  /** Equal-jitter exponential backoff: a delay in [ceiling/2, ceiling], ceiling doubling
   *  from `baseMs` per attempt up to `maxMs`. Never zero, so failing servers are not hammered. */
  function backoffDelay(attempt, baseMs, maxMs, random) {
    var rnd = random || Math.random;
    var ceiling = Math.min(maxMs, baseMs * Math.pow(2, Math.min(attempt, 30)));
    return Math.round(ceiling / 2 + rnd() * (ceiling / 2));
  }

  /** Does subscription `pattern` (NATS wildcards `*` and `>`) match concrete `channel`?
   *  A pattern starting with a wildcard never matches `$sys.*` (as on the server). */
  function matches(pattern, channel) {
    if (pattern === channel) return true;
    var p = pattern.split(".");
    var c = channel.split(".");
    for (var i = 0; i < p.length; i++) {
      if (i >= c.length) return false;
      var wild = p[i] === "*" || p[i] === ">";
      if (wild && i === 0 && c[0] === "$sys") return false;
      if (p[i] === ">") return c.length > i;
      if (p[i] !== "*" && p[i] !== c[i]) return false;
    }
    return p.length === c.length;
  }

  function isPattern(channel) {
    return channel.split(".").some(function (t) { return t === "*" || t === ">"; });
  }

  /** A bounded set that forgets its oldest entries first. */
  function BoundedSet(max) {
    this.max = max;
    this.map = new Map();
  }
  BoundedSet.prototype.has = function (key) { return this.map.has(key); };
  BoundedSet.prototype.add = function (key) {
    if (this.map.has(key)) return;
    this.map.set(key, true);
    while (this.map.size > this.max) this.map.delete(this.map.keys().next().value);
  };
  Object.defineProperty(BoundedSet.prototype, "size", { get: function () { return this.map.size; } });

  /** Endpoints from what the caller gave: nothing (this page's origin), an http(s) base
   *  (`https://rt.example.com`, `https://example.com/rt/`) or a ws(s) URL ending in /ws. */
  function endpoints(url) {
    var loc = typeof location !== "undefined" ? location : null;
    if (!url) {
      if (!loc) throw new RingcastError(0, "no URL given and no page location to derive one from; pass e.g. \"http://127.0.0.1:8080\"");
      url = loc.origin;
    }
    var u = new URL(url, loc ? loc.href : undefined);
    var secure = u.protocol === "https:" || u.protocol === "wss:";
    var path = u.pathname.replace(/\/+$/, "");
    if ((u.protocol === "ws:" || u.protocol === "wss:") && /\/ws$/.test(path)) path = path.slice(0, -3);
    var host = u.host;
    return {
      ws: (secure ? "wss://" : "ws://") + host + path + "/ws",
      http: (secure ? "https://" : "http://") + host + path,
    };
  }

  function RingcastError(code, message, frame) {
    var error = new Error(message);
    Object.setPrototypeOf(error, RingcastError.prototype);
    error.name = "RingcastError";
    error.code = code;
    if (frame !== undefined) error.frame = frame;
    return error;
  }
  RingcastError.prototype = Object.create(Error.prototype);
  RingcastError.prototype.constructor = RingcastError;

  function withToken(url, token) {
    if (!token) return url;
    return url + (url.indexOf("?") < 0 ? "?" : "&") + "token=" + encodeURIComponent(token);
  }

  function parseFrame(data) {
    if (typeof data !== "string") return data && typeof data === "object" ? data : null;
    try {
      var frame = JSON.parse(data);
      return frame && typeof frame === "object" ? frame : null;
    } catch (e) {
      return null;
    }
  }

  // ---------------------------------------------------------------------------------
  // Transports: each resolves with {transport, welcome} once the server's `welcome`
  // arrived, or rejects; afterwards it reports frames and its close through callbacks.

  function openWebSocket(client, token) {
    return new Promise(function (resolve, reject) {
      var Ctor = client.options.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
      if (!Ctor) return reject(new RingcastError(0, "this runtime has no WebSocket"));
      var ws;
      try {
        ws = new Ctor(withToken(client.urls.ws, token), "ringcast.v1");
      } catch (e) {
        return reject(new RingcastError(0, "WebSocket could not be created: " + (e && e.message)));
      }
      var settled = false;
      var transport = {
        kind: "websocket",
        onframe: null,
        onclose: null,
        send: function (frame) { ws.send(JSON.stringify(frame)); },
        close: function (code, reason) {
          try { ws.close(code || 1000, reason || ""); } catch (e) { /* already closed */ }
        },
      };
      var timer = setTimeout(function () {
        if (settled) return;
        settled = true;
        transport.close(1000, "connect timeout");
        reject(new RingcastError(0, "WebSocket gave no welcome within " + client.options.connectTimeoutMs + " ms"));
      }, client.options.connectTimeoutMs);
      ws.onmessage = function (event) {
        var frame = parseFrame(event.data);
        if (!frame) return;
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          if (frame.op !== "welcome") {
            transport.close(1002, "expected welcome");
            return reject(new RingcastError(1002, "the server's first frame was not welcome", frame));
          }
          return resolve({ transport: transport, welcome: frame });
        }
        if (transport.onframe) transport.onframe(frame);
      };
      ws.onclose = function (event) {
        clearTimeout(timer);
        if (!settled) {
          settled = true;
          return reject(new RingcastError(event.code || 1006, "WebSocket closed before welcome (" + (event.code || 1006) + (event.reason ? " " + event.reason : "") + ")"));
        }
        if (transport.onclose) transport.onclose({ code: event.code || 1006, reason: event.reason || "" });
      };
      ws.onerror = function () { /* a close event follows with the details we can get */ };
    });
  }

  function fetchJson(client, url, init, timeoutMs) {
    var fetchFn = client.options.fetch || (typeof fetch !== "undefined" ? fetch.bind(globalThis) : null);
    if (!fetchFn) return Promise.reject(new RingcastError(0, "this runtime has no fetch for long-poll"));
    var controller = typeof AbortController !== "undefined" ? new AbortController() : null;
    var timer = setTimeout(function () { if (controller) controller.abort(); }, timeoutMs);
    var request = Object.assign({ credentials: "omit" }, init, controller ? { signal: controller.signal } : {});
    var result = fetchFn(url, request).then(function (response) {
      return response.text().then(function (text) {
        var body = text ? parseFrame(text) : null;
        if (!response.ok) {
          var msg = body && body.error && body.error.msg ? body.error.msg : "HTTP " + response.status;
          throw new RingcastError(response.status, msg, body);
        }
        return body || {};
      });
    });
    var settled = result.finally(function () { clearTimeout(timer); });
    settled.abort = function () { if (controller) controller.abort(); };
    return settled;
  }

  function openLongPoll(client, token) {
    var base = client.urls.http;
    var opts = client.options;
    return fetchJson(client, withToken(base + "/poll", token), { method: "POST" }, opts.connectTimeoutMs).then(function (opened) {
      var frames = Array.isArray(opened.frames) ? opened.frames.map(parseFrame) : [];
      if (typeof opened.sid !== "string" && typeof opened.sid !== "number") throw new RingcastError(0, "long-poll open answered without a sid");
      if (!frames[0] || frames[0].op !== "welcome") throw new RingcastError(1002, "long-poll session did not start with welcome", opened);
      var transport = new LongPoll(client, String(opened.sid), typeof opened.next === "number" ? opened.next : frames.length);
      // Frames after the welcome in the same answer go out once the client is listening.
      transport.backlog = frames.slice(1);
      return { transport: transport, welcome: frames[0] };
    });
  }

  /** One long-poll session: a GET loop that acknowledges what it processed, and a POST
   *  queue that sends client frames in order, one request at a time. */
  function LongPoll(client, sid, next) {
    this.kind = "longpoll";
    this.client = client;
    this.sid = sid;
    this.next = next;
    this.outbox = [];
    this.sending = false;
    this.closed = false;
    this.failures = 0;
    this.inflight = null;
    this.backlog = [];
    this.onframe = null;
    this.onclose = null;
  }
  LongPoll.prototype.url = function (query) {
    return this.client.urls.http + "/poll/" + encodeURIComponent(this.sid) + (query || "");
  };
  LongPoll.prototype.start = function () {
    var self = this;
    var backlog = this.backlog;
    this.backlog = [];
    backlog.forEach(function (frame) { if (frame && self.onframe && !self.closed) self.onframe(frame); });
    this.loop();
  };
  LongPoll.prototype.loop = function () {
    var self = this;
    if (this.closed) return;
    var opts = this.client.options;
    var started = Date.now();
    this.inflight = fetchJson(this.client, this.url("?ack=" + this.next), { method: "GET" }, opts.pollTimeoutMs);
    this.inflight.then(function (body) {
      if (self.closed) return;
      self.failures = 0;
      self.client._heard();
      var frames = Array.isArray(body.frames) ? body.frames : [];
      var next = typeof body.next === "number" ? body.next : self.next + frames.length;
      var first = next - frames.length;
      for (var i = 0; i < frames.length && !self.closed; i++) {
        // A resent batch may overlap what we already handled: skip by frame number.
        if (first + i < self.next) continue;
        var frame = parseFrame(frames[i]);
        if (frame && frame.op === "close") return self.end(frame.code || 1000, frame.reason || frame.msg || "");
        if (frame && self.onframe) self.onframe(frame);
      }
      self.next = Math.max(self.next, next);
      // A server answering empty at once, again and again, must not spin us.
      if (frames.length === 0 && Date.now() - started < POLL_EMPTY_FAST_MS) {
        return setTimeout(function () { self.loop(); }, POLL_EMPTY_PAUSE_MS);
      }
      self.loop();
    }, function (error) {
      if (self.closed) return;
      if (error && (error.code === 404 || error.code === 410)) return self.end(1001, "long-poll session expired");
      self.failures += 1;
      if (self.failures > opts.pollRetries) return self.end(1006, "long-poll failed: " + (error && error.message));
      setTimeout(function () { self.loop(); }, backoffDelay(self.failures - 1, 250, 2000));
    });
  };
  LongPoll.prototype.send = function (frame) {
    if (this.closed) throw new RingcastError(0, "long-poll session is closed");
    this.outbox.push(frame);
    this.flush();
  };
  LongPoll.prototype.flush = function () {
    var self = this;
    if (this.sending || this.closed || this.outbox.length === 0) return;
    this.sending = true;
    var batch = this.outbox.splice(0, this.outbox.length);
    var body = JSON.stringify(batch.length === 1 ? batch[0] : batch);
    var opts = this.client.options;
    var attempt = function (tries) {
      fetchJson(self.client, self.url(""), { method: "POST", headers: { "Content-Type": "application/json" }, body: body }, opts.requestTimeoutMs).then(function () {
        self.sending = false;
        self.flush();
      }, function (error) {
        if (self.closed) return;
        if (error && (error.code === 404 || error.code === 410)) return self.end(1001, "long-poll session expired");
        if (tries >= opts.pollRetries) return self.end(1006, "long-poll send failed: " + (error && error.message));
        setTimeout(function () { attempt(tries + 1); }, backoffDelay(tries, 250, 2000));
      });
    };
    attempt(0);
  };
  LongPoll.prototype.end = function (code, reason) {
    if (this.closed) return;
    this.closed = true;
    if (this.inflight) this.inflight.abort();
    if (this.onclose) this.onclose({ code: code, reason: reason });
  };
  LongPoll.prototype.close = function () {
    // The protocol has no close op: stop polling and the server expires the session.
    this.closed = true;
    if (this.inflight) this.inflight.abort();
  };

  // ---------------------------------------------------------------------------------
  // Subscriptions: one server-side subscription per channel or pattern, any number of
  // local Subscription handles on it.

  function Subscription(client, channel, onMessage, options) {
    this.client = client;
    this.channel = channel;
    this.onMessage = onMessage;
    this.options = options || {};
    this.active = true;
  }
  Subscription.prototype.unsubscribe = function () {
    if (!this.active) return;
    this.active = false;
    this.client._dropSubscription(this);
  };
  /** Presence members of this subscription's channel. */
  Subscription.prototype.presence = function () { return this.client.presence(this.channel); };

  function ChannelState(channel) {
    this.channel = channel;
    this.exact = !isPattern(channel);
    this.subs = new Set();
    /** Last `seq` seen (history channels), for resume and dedupe. Kept for exact channels
     *  only: a pattern can span several streams, each with its own sequence. */
    this.lastSeq = undefined;
    /** `since` for the first subscribe, from the caller's options. */
    this.initialSince = undefined;
    this.confirmed = false;
    this.retries = 0;
  }
  ChannelState.prototype.wantsPresence = function () {
    var want = false;
    this.subs.forEach(function (s) { if (s.options.presence) want = true; });
    return want;
  };
  /** `since` to send: the last seq seen (exact channels only: one sequence per stream),
   *  else the caller's initial `since`, else none (live only). */
  ChannelState.prototype.since = function () {
    return this.lastSeq !== undefined ? this.lastSeq : this.initialSince;
  };

  // ---------------------------------------------------------------------------------
  // The client.

  function Client(url, options) {
    this.options = Object.assign({}, DEFAULTS, options || {});
    this.urls = endpoints(url);
    this.state = "idle";
    this.transport = null;
    this.connId = null;
    this.node = null;
    this._channels = new Map();
    this._pending = new Map();
    this._outbox = [];
    this._nextId = 1;
    this._attempt = 0;
    this._closedByUser = false;
    this._retryTimer = null;
    this._heartbeat = null;
    this._lastHeard = 0;
    this._openedAt = 0;
    this._hbMs = 25000;
    this._listeners = {};
    this._nids = new BoundedSet(this.options.nidMemory);
    this._nidsInProgress = new Set();
    this._unhandledNotifies = [];
    this._notifyHandler = this.options.onNotify || null;
  }

  Client.prototype.on = function (event, fn) {
    var list = this._listeners[event] || (this._listeners[event] = []);
    list.push(fn);
    var self = this;
    return function off() {
      self._listeners[event] = (self._listeners[event] || []).filter(function (f) { return f !== fn; });
    };
  };

  Client.prototype._emit = function (event, a, b) {
    var option = this.options["on" + event.charAt(0).toUpperCase() + event.slice(1)];
    var handlers = (this._listeners[event] || []).slice();
    if (typeof option === "function" && event !== "notify") handlers.unshift(option);
    if (event === "error" && handlers.length === 0 && typeof console !== "undefined") {
      // Nobody listens: say it somewhere a developer looks rather than lose it.
      console.warn("ringcast: " + (a && a.message ? a.message : a));
      return;
    }
    for (var i = 0; i < handlers.length; i++) {
      try {
        handlers[i](a, b);
      } catch (e) {
        if (event !== "error") this._emit("error", e);
      }
    }
  };

  Client.prototype._setState = function (state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("stateChange", state);
  };

  /** Starts connecting (called by `ringcast.connect`). Resolves once the first
   *  connection is open; rejects if the client closes before that. */
  Client.prototype.connect = function () {
    if (this.state === "idle" || this.state === "closed") {
      this._closedByUser = false;
      this._attempt = 0;
      this._connect();
    }
    return this.ready();
  };

  /** Resolves when the client is connected (now or later); rejects if it closes first. */
  Client.prototype.ready = function () {
    var self = this;
    if (this.state === "open") return Promise.resolve(this);
    return new Promise(function (resolve, reject) {
      var offOpen = self.on("open", function () { offOpen(); offState(); resolve(self); });
      var offState = self.on("stateChange", function (state) {
        if (state === "closed") { offOpen(); offState(); reject(new RingcastError(0, "the client closed before it connected")); }
      });
    });
  };

  Client.prototype._token = function () {
    var token = this.options.token;
    return Promise.resolve(typeof token === "function" ? token() : token);
  };

  Client.prototype._connect = function () {
    var self = this;
    this._retryTimer = null;
    this._setState(this._attempt === 0 && !this._everOpened ? "connecting" : "reconnecting");
    var errors = [];
    var kinds = this.options.transports.slice();
    var tryNext = function (token) {
      if (self._closedByUser) return;
      var kind = kinds.shift();
      if (!kind) return self._connectFailed(errors);
      var open = kind === "websocket" ? openWebSocket : kind === "longpoll" ? openLongPoll : null;
      if (!open) {
        errors.push(new RingcastError(0, "unknown transport " + kind));
        return tryNext(token);
      }
      open(self, token).then(function (opened) {
        if (self._closedByUser) return opened.transport.close(1000, "closed by the application");
        self._opened(opened.transport, opened.welcome);
      }, function (error) {
        errors.push(error);
        self._emit("transportError", error, kind);
        // A refused token will not get better on another transport.
        if (error && error.code === 401) return self._connectFailed(errors);
        tryNext(token);
      });
    };
    this._token().then(tryNext, function (error) {
      errors.push(new RingcastError(0, "the token function failed: " + (error && error.message)));
      self._connectFailed(errors);
    });
  };

  Client.prototype._connectFailed = function (errors) {
    var last = errors[errors.length - 1] || new RingcastError(0, "no transport to try");
    var unauthorized = errors.some(function (e) { return e && e.code === 401; });
    if (unauthorized && typeof this.options.token !== "function") {
      this._emit("error", new RingcastError(401, "the server refused the token (" + last.message + "); pass a fresh token or a token function"));
      return this._finalClose({ code: 1008, reason: "unauthorized" });
    }
    this._emit("error", last);
    this._scheduleReconnect(null);
  };

  Client.prototype._scheduleReconnect = function (closeCode) {
    var opts = this.options;
    if (this._closedByUser) return;
    if (!opts.reconnect || this._attempt >= opts.maxAttempts) {
      return this._finalClose({ code: closeCode || 1006, reason: opts.reconnect ? "gave up after " + this._attempt + " attempts" : "reconnect is off" });
    }
    var delay = closeCode === 1012
      ? Math.round(Math.random() * opts.drainJitterMs)
      : backoffDelay(this._attempt, opts.backoffBaseMs, opts.backoffMaxMs);
    this._attempt += 1;
    this._setState("reconnecting");
    this._emit("reconnecting", { attempt: this._attempt, delayMs: delay });
    var self = this;
    this._retryTimer = setTimeout(function () { self._connect(); }, delay);
  };

  Client.prototype._opened = function (transport, welcome) {
    var self = this;
    this.transport = transport;
    this.connId = welcome.conn;
    this.node = welcome.node;
    this._hbMs = Math.max(1, Number(welcome.hb) || 25) * 1000;
    this._openedAt = Date.now();
    this._everOpened = true;
    this._heard();
    transport.onframe = function (frame) { self._heard(); self._onFrame(frame); };
    transport.onclose = function (info) { self._closed(transport, info); };
    this._setState("open");
    this._startHeartbeat();
    this._channels.forEach(function (state) { state.confirmed = false; state.retries = 0; self._sendSub(state); });
    var queued = this._outbox.splice(0, this._outbox.length);
    queued.forEach(function (item) { self._sendRequest(item); });
    if (transport.start) transport.start();
    this._emit("open", { conn: welcome.conn, node: welcome.node, transport: transport.kind });
  };

  Client.prototype._closed = function (transport, info) {
    if (this.transport !== transport) return;
    this.transport = null;
    this._stopHeartbeat();
    if (Date.now() - this._openedAt >= this.options.stableAfterMs) this._attempt = 0;
    var lost = new RingcastError(0, "connection lost before the server answered (" + info.code + "); the op may or may not have taken effect");
    this._pending.forEach(function (entry) { clearTimeout(entry.timer); entry.reject(lost); });
    this._pending.clear();
    this._emit("close", info);
    if (this._closedByUser) return this._finalClose(info);
    if (info.code === 1008 && typeof this.options.token !== "function") {
      this._emit("error", new RingcastError(1008, "closed by policy (" + (info.reason || "token expired or forbidden") + "); pass a token function to reconnect with a fresh token"));
      return this._finalClose(info);
    }
    this._scheduleReconnect(info.code);
  };

  Client.prototype._finalClose = function (info) {
    this._stopHeartbeat();
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    var failed = new RingcastError(0, "the client is closed");
    this._outbox.splice(0).forEach(function (item) { item.reject(failed); });
    this._setState("closed");
    this._emit("closed", info);
  };

  /** Closes for good (no reconnect). Subscriptions are kept: `connect()` again restores them. */
  Client.prototype.close = function () {
    this._closedByUser = true;
    var transport = this.transport;
    this.transport = null;
    if (transport) transport.close(1000, "closed by the application");
    var pending = this._pending;
    var closed = new RingcastError(0, "the client was closed");
    pending.forEach(function (entry) { clearTimeout(entry.timer); entry.reject(closed); });
    pending.clear();
    this._finalClose({ code: 1000, reason: "closed by the application" });
  };

  Client.prototype._heard = function () { this._lastHeard = Date.now(); };

  /** Browsers answer WebSocket pings without telling the page, so the page cannot see a
   *  dead link by itself: when nothing arrived for a heartbeat, ask with a `ping` op, and
   *  drop the connection when nothing arrives for two heartbeats plus slack. */
  Client.prototype._startHeartbeat = function () {
    var self = this;
    this._stopHeartbeat();
    var period = this._hbMs;
    this._heartbeat = setInterval(function () {
      var quiet = Date.now() - self._lastHeard;
      if (!self.transport) return;
      if (quiet > period * 2 + 5000) {
        var transport = self.transport;
        transport.close(4000, "no traffic from the server");
        return self._closed(transport, { code: 1006, reason: "no traffic from the server for " + quiet + " ms" });
      }
      if (quiet >= period && self.transport.kind === "websocket") self.ping().catch(function () {});
    }, Math.max(1000, Math.floor(period / 2)));
  };

  Client.prototype._stopHeartbeat = function () {
    if (this._heartbeat) clearInterval(this._heartbeat);
    this._heartbeat = null;
  };

  Client.prototype._id = function () {
    var id = this._nextId;
    this._nextId = id >= 0xffffffff ? 1 : id + 1;
    return id;
  };

  /** Sends a frame now if connected; returns false otherwise. */
  Client.prototype._sendNow = function (frame) {
    if (!this.transport || this.state !== "open") return false;
    try {
      this.transport.send(frame);
      return true;
    } catch (e) {
      return false;
    }
  };

  /** An op with an id: resolves with the `ok` frame, rejects with the `err` (as a
   *  RingcastError with the server's code). Queued (bounded) while not connected. */
  Client.prototype._request = function (frame) {
    var self = this;
    return new Promise(function (resolve, reject) {
      var item = { frame: frame, resolve: resolve, reject: reject };
      if (self.state === "open" && self.transport) return self._sendRequest(item);
      if (self.state === "closed" || self.state === "idle") return reject(new RingcastError(0, "not connected: call connect() first"));
      if (self._outbox.length >= self.options.outboxMax) {
        return reject(new RingcastError(503, "outbox full (" + self.options.outboxMax + " ops queued while disconnected, outboxMax)"));
      }
      self._outbox.push(item);
    });
  };

  Client.prototype._sendRequest = function (item) {
    var self = this;
    var id = this._id();
    var frame = Object.assign({}, item.frame, { id: id });
    var timer = setTimeout(function () {
      if (!self._pending.has(id)) return;
      self._pending.delete(id);
      item.reject(new RingcastError(408, "no answer to " + frame.op + " within " + self.options.requestTimeoutMs + " ms"));
    }, this.options.requestTimeoutMs);
    this._pending.set(id, { resolve: item.resolve, reject: item.reject, timer: timer });
    if (!this._sendNow(frame)) {
      clearTimeout(timer);
      this._pending.delete(id);
      item.reject(new RingcastError(0, "could not send " + frame.op + ": connection lost"));
    }
  };

  Client.prototype._onFrame = function (frame) {
    switch (frame.op) {
      case "msg": return this._onMsg(frame);
      case "ok":
      case "pong":
      case "err": return this._onReply(frame);
      case "join":
      case "leave": return this._onPresence(frame);
      case "notify": return this._onNotify(frame);
      default: return; // welcome again, or an op from a newer server: ignore (PROTOCOL.md)
    }
  };

  Client.prototype._onReply = function (frame) {
    var entry = frame.id !== undefined ? this._pending.get(frame.id) : undefined;
    if (!entry) {
      if (frame.op === "err") this._emit("error", new RingcastError(frame.code || 0, frame.msg || "error from the server", frame));
      return;
    }
    this._pending.delete(frame.id);
    clearTimeout(entry.timer);
    if (frame.op === "err") entry.reject(new RingcastError(frame.code || 0, frame.msg || "error from the server", frame));
    else entry.resolve(frame);
  };

  Client.prototype._onMsg = function (frame) {
    var self = this;
    if (typeof frame.ch !== "string") return;
    this._channels.forEach(function (state) {
      if (!matches(state.channel, frame.ch)) return;
      if (state.exact && typeof frame.seq === "number") {
        // A replay that overlaps what we already had: deliver each seq once.
        if (state.lastSeq !== undefined && frame.seq <= state.lastSeq) return;
        state.lastSeq = frame.seq;
      }
      var meta = { channel: frame.ch };
      if (typeof frame.seq === "number") meta.seq = frame.seq;
      state.subs.forEach(function (sub) {
        if (!sub.active) return;
        try {
          sub.onMessage(frame.data, meta);
        } catch (e) {
          self._emit("error", e);
        }
      });
    });
  };

  Client.prototype._onPresence = function (frame) {
    var self = this;
    var change = { channel: frame.ch, user: frame.user, conn: frame.conn };
    this._channels.forEach(function (state) {
      if (!matches(state.channel, frame.ch)) return;
      state.subs.forEach(function (sub) {
        var fn = frame.op === "join" ? sub.options.onJoin : sub.options.onLeave;
        if (!sub.active || typeof fn !== "function") return;
        try {
          fn(change);
        } catch (e) {
          self._emit("error", e);
        }
      });
    });
  };

  /** At-least-once notifications: ack after the handler finished (a returned promise
   *  resolved); a handler that throws leaves it unacked so the server delivers it again.
   *  A `nid` already handled is acked again and not handed over twice. */
  Client.prototype._onNotify = function (frame) {
    var nid = frame.nid;
    if (nid === undefined || nid === null) return;
    if (this._nids.has(nid)) return this._ack(nid);
    if (this._nidsInProgress.has(nid)) return;
    if (!this._notifyHandler) {
      // Unacked on purpose: the server keeps it and retries if we drop it here.
      if (this._unhandledNotifies.length >= this.options.pendingNotifyMax) this._unhandledNotifies.shift();
      if (!this._unhandledNotifies.some(function (f) { return f.nid === nid; })) this._unhandledNotifies.push(frame);
      return;
    }
    this._deliverNotify(frame);
  };

  Client.prototype._deliverNotify = function (frame) {
    var self = this;
    var nid = frame.nid;
    this._nidsInProgress.add(nid);
    var result;
    try {
      result = this._notifyHandler(frame.data, { nid: nid, ts: frame.ts });
    } catch (e) {
      this._nidsInProgress.delete(nid);
      return this._emit("error", e);
    }
    Promise.resolve(result).then(function () {
      self._nidsInProgress.delete(nid);
      self._nids.add(nid);
      self._ack(nid);
    }, function (e) {
      self._nidsInProgress.delete(nid);
      self._emit("error", e);
    });
  };

  Client.prototype._ack = function (nid) {
    // An ack lost with the connection is fine: the server redelivers, we dedupe and re-ack.
    this._sendNow({ op: "ack", nid: nid });
  };

  /** Sets the notification handler `(data, {nid, ts}) => void | Promise`; notifications
   *  that arrived before it are handed over now. */
  Client.prototype.onNotify = function (handler) {
    var self = this;
    this._notifyHandler = handler;
    if (!handler) return;
    var held = this._unhandledNotifies.splice(0);
    held.forEach(function (frame) { self._onNotify(frame); });
  };

  Client.prototype._sendSub = function (state) {
    var self = this;
    if (!this.transport) return;
    var frame = { op: "sub", ch: state.channel };
    var since = state.since();
    if (since !== undefined && since !== null) frame.since = since;
    if (state.wantsPresence()) frame.presence = true;
    this._request(frame).then(function () {
      state.confirmed = true;
      state.retries = 0;
      state.subs.forEach(function (sub) { if (typeof sub.options.onSubscribed === "function") sub.options.onSubscribed(); });
    }, function (error) {
      if (self._channels.get(state.channel) !== state) return;
      if (error.code === 409) return self._resync(state, error);
      if ((error.code === 429 || error.code === 503) && state.retries < self.options.subscribeRetries) {
        var delay = backoffDelay(state.retries, self.options.backoffBaseMs, self.options.backoffMaxMs);
        state.retries += 1;
        return setTimeout(function () { if (self._channels.get(state.channel) === state) self._sendSub(state); }, delay);
      }
      if (error.code === 0 || error.code === 408) return; // connection lost: resubscribed on reconnect
      self._channels.delete(state.channel);
      state.subs.forEach(function (sub) {
        sub.active = false;
        if (typeof sub.options.onError === "function") sub.options.onError(error);
      });
      self._emit("error", error);
    });
  };

  /** `err` 409: the history no longer reaches back to our `since`. Tell the application
   *  (it reloads its state), forget the position and subscribe live. */
  Client.prototype._resync = function (state, error) {
    state.lastSeq = undefined;
    state.initialSince = undefined;
    state.subs.forEach(function (sub) {
      if (typeof sub.options.onResync === "function") {
        try { sub.options.onResync(error); } catch (e) { /* the resubscribe below still happens */ }
      }
    });
    this._emit("resync", { channel: state.channel, error: error });
    this._sendSub(state);
  };

  /** Subscribes `onMessage(data, {channel, seq})` to a channel or pattern. Options:
   *  `since` (resume after this seq on a history channel), `presence` (join presence;
   *  `onJoin`/`onLeave` get `{channel, user, conn}`), `onResync(err)` on 409,
   *  `onSubscribed()`, `onError(err)` when the server refuses (the subscription ends). */
  Client.prototype.subscribe = function (channel, onMessage, options) {
    if (typeof channel !== "string" || !channel) throw new RingcastError(400, "subscribe needs a channel name");
    if (typeof onMessage !== "function") throw new RingcastError(400, "subscribe needs a message callback");
    var sub = new Subscription(this, channel, onMessage, options);
    var state = this._channels.get(channel);
    var fresh = !state;
    if (fresh) {
      state = new ChannelState(channel);
      if (options && typeof options.since === "number") state.initialSince = options.since;
      this._channels.set(channel, state);
    }
    var hadPresence = state.wantsPresence();
    state.subs.add(sub);
    if (this.state === "open" && (fresh || (!hadPresence && state.wantsPresence()))) this._sendSub(state);
    else if (sub.options.onSubscribed && state.confirmed) sub.options.onSubscribed();
    return sub;
  };

  Client.prototype._dropSubscription = function (sub) {
    var state = this._channels.get(sub.channel);
    if (!state) return;
    state.subs.delete(sub);
    if (state.subs.size > 0) return;
    this._channels.delete(sub.channel);
    if (this.state === "open") this._request({ op: "unsub", ch: sub.channel }).catch(function () { /* 404: already gone */ });
  };

  /** Publishes `data` (any JSON value) on a channel; resolves when the server accepted
   *  it. Queued (up to outboxMax) while reconnecting. */
  Client.prototype.publish = function (channel, data) {
    return this._request({ op: "pub", ch: channel, data: data === undefined ? null : data }).then(function () {});
  };

  /** Members present on a channel: `[{user, conn, info}]`. */
  Client.prototype.presence = function (channel) {
    return this._request({ op: "presence", ch: channel }).then(function (ok) { return ok.members || []; });
  };

  /** Round trip to the server in milliseconds. */
  Client.prototype.ping = function () {
    var started = Date.now();
    return this._request({ op: "ping" }).then(function () { return Date.now() - started; });
  };

  /** Creates a client and starts connecting. `url`: the gateway (`http://host:port`,
   *  `wss://host/ws`, or nothing for this page's origin). */
  function connect(url, options) {
    if (url && typeof url === "object" && !(typeof URL !== "undefined" && url instanceof URL)) {
      options = url;
      url = options.url;
    }
    var client = new Client(url, options);
    client.connect().catch(function () { /* reported through "error"/"closed" events */ });
    return client;
  }

  return {
    VERSION: VERSION,
    DEFAULTS: DEFAULTS,
    connect: connect,
    Client: Client,
    Subscription: Subscription,
    RingcastError: RingcastError,
    backoffDelay: backoffDelay,
    matches: matches,
    endpoints: endpoints,
    BoundedSet: BoundedSet,
  };
});
