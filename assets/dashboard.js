// The ringcast live dashboard's script (GET /dashboard.js, loaded by GET /). Served as a
// file so the page's CSP can refuse inline script. Every field of a $sys.metrics snapshot
// is shown as text (textContent / createElement), never parsed as HTML: in NATS mode any
// NATS publisher can put a snapshot on the feed.
(function () {
  "use strict";
  // Points kept per chart: two minutes at one snapshot a second.
  var HISTORY_POINTS = 120;
  // Nodes remembered (a cluster's dashboard sees every node's feed through the broker).
  var NODES_MAX = 64;
  var COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#4db6ac", "#f06292", "#aed581"];
  var $ = function (id) { return document.getElementById(id); };

  var nodes = new Map();        // node name -> { points: [snapshot...] }
  var selected = null;
  var state = { snapshots: 0, last: null, error: null, transport: null };
  window.__ringcastDashboard = state;   // read by the browser tests, handy in the console

  function params() {
    var hash = new URLSearchParams(location.hash.replace(/^#/, ""));
    var query = new URLSearchParams(location.search);
    return { token: hash.get("token") || query.get("token") || undefined, node: hash.get("node") || query.get("node") };
  }

  function fmt(n, digits) {
    if (n === null || n === undefined || isNaN(n)) return "–";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return Number(n).toFixed(digits === undefined ? 0 : digits);
  }

  function setStatus(text, cls) {
    var el = $("status");
    el.textContent = text;
    el.className = "pill " + (cls || "");
  }

  // Builds an element whose children are text or elements: feed data only ever becomes
  // text nodes, never markup (a forged snapshot must not run script or draw elements).
  function el(tag, children) {
    var node = document.createElement(tag);
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  // parts: a list of strings and el() nodes; empty hides the banner.
  function banner(parts) {
    var box = $("banner");
    box.replaceChildren.apply(box, parts || []);
    box.style.display = parts && parts.length ? "block" : "none";
  }

  // ---------------------------------------------------------------- charts
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  // integer: whole-number series (connections): at least 0..4, labels without decimals.
  function drawChart(canvas, series, emptyText, integer) {
    var dpr = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var left = 48, right = 8, top = 18, bottom = 20;
    var pw = w - left - right, ph = h - top - bottom;
    var max = 0, any = false;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v !== undefined) { any = true; if (v > max) max = v; } }); });
    max = integer ? Math.max(4, niceMax(max)) : niceMax(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = "#263040";
    ctx.fillStyle = "#8593a3";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (var i = 0; i <= 4; i++) {
      var y = top + ph - (ph * i) / 4;
      ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(left + pw, y + 0.5); ctx.stroke();
      ctx.fillText(fmt((max * i) / 4, integer || max >= 4 ? 0 : 2), left - 6, y);
    }
    ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText("-" + HISTORY_POINTS + "s", left, top + ph + 5);
    ctx.textAlign = "right";
    ctx.fillText("now", left + pw, top + ph + 5);
    if (!any) {
      ctx.textAlign = "center"; ctx.textBaseline = "middle";
      ctx.fillText(emptyText || "waiting for data", left + pw / 2, top + ph / 2);
      return;
    }
    var step = pw / (HISTORY_POINTS - 1);
    var legendX = left + 4;
    series.forEach(function (s) {
      var offset = HISTORY_POINTS - s.values.length;
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.8; ctx.beginPath();
      var pen = false;
      s.values.forEach(function (v, k) {
        if (v === null || v === undefined) { pen = false; return; }
        var x = left + (offset + k) * step, y = top + ph - (v / max) * ph;
        if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        pen = true;
      });
      ctx.stroke();
      var last = s.values[s.values.length - 1];
      var label = s.label + " " + fmt(last, !integer && last !== null && last < 10 ? 1 : 0);
      ctx.fillStyle = s.color; ctx.textAlign = "left"; ctx.textBaseline = "top";
      ctx.fillRect(legendX, 4, 8, 8);
      ctx.fillStyle = "#d8dee6";
      ctx.fillText(label, legendX + 12, 2);
      legendX += ctx.measureText(label).width + 28;
    });
  }

  function column(points, get) { return points.map(get); }

  // Bytes before / after permessage-deflate over the last interval, or since start when
  // nothing was compressed in it; "off" when nothing ever was, "n/a" on older nodes.
  function compressionRatio(s) {
    if (s.compress_bytes_in_total === undefined) return "n/a";
    if (s.compress_bytes_out_per_s > 0) return (s.compress_bytes_in_per_s / s.compress_bytes_out_per_s).toFixed(1);
    if (s.compress_bytes_out_total > 0) return (s.compress_bytes_in_total / s.compress_bytes_out_total).toFixed(1);
    return "off";
  }

  function render() {
    var entry = selected && nodes.get(selected);
    if (!entry) return;
    var points = entry.points;
    var s = points[points.length - 1];
    $("connections").textContent = fmt(s.connections);
    $("capacity").textContent = (s.capacity_ratio * 100).toFixed(s.capacity_ratio < 0.1 ? 2 : 1);
    $("in-rate").textContent = fmt(s.in_per_s, s.in_per_s < 10 ? 1 : 0);
    $("out-rate").textContent = fmt(s.out_per_s, s.out_per_s < 10 ? 1 : 0);
    $("published-rate").textContent = fmt(s.published_per_s, s.published_per_s < 10 ? 1 : 0);
    $("p99").textContent = s.fanout_p99_ms === null || s.fanout_p99_ms === undefined ? "n/a" : fmt(s.fanout_p99_ms, 2);
    $("drops").textContent = fmt(s.drops_per_s, s.drops_per_s < 10 ? 1 : 0);
    // Older nodes' snapshots have no conflation figures.
    var conflated = s.conflated_per_s === undefined ? null : s.conflated_per_s;
    $("conflated").textContent = conflated === null ? "n/a" : fmt(conflated, conflated < 10 ? 1 : 0);
    $("compression").textContent = compressionRatio(s);
    // Connections by protocol; older nodes' snapshots have no split.
    if (s.pusher_connections === undefined) {
      $("protocols").textContent = "n/a";
      $("pusher-events").textContent = "";
    } else {
      $("protocols").textContent = fmt(s.v1_connections) + " · " + (s.pusher_apps > 0 ? fmt(s.pusher_connections) : "off");
      $("pusher-events").textContent = s.pusher_apps > 0 ? fmt(s.pusher_events_per_s, s.pusher_events_per_s < 10 ? 1 : 0) + " Pusher events/s" : "";
    }
    $("node-meta").textContent = s.io + " · " + s.shards.length + " shards · up " + s.uptime_s + " s · max " + fmt(s.connections_max);
    var shardSeries = s.shards.map(function (sh, i) {
      return { label: "shard " + sh.id, color: COLORS[i % COLORS.length], values: column(points, function (p) { return p.shards[i] ? p.shards[i].connections : null; }) };
    });
    if (shardSeries.length > COLORS.length) {
      // Many shards: one line per shard would be unreadable; show the total instead.
      shardSeries = [{ label: "all " + s.shards.length + " shards", color: COLORS[0], values: column(points, function (p) { return p.connections; }) }];
    }
    drawChart($("chart-connections"), shardSeries, undefined, true);
    drawChart($("chart-messages"), [
      { label: "in", color: COLORS[0], values: column(points, function (p) { return p.in_per_s; }) },
      { label: "out", color: COLORS[1], values: column(points, function (p) { return p.out_per_s; }) },
      { label: "published", color: COLORS[2], values: column(points, function (p) { return p.published_per_s; }) },
    ]);
    drawChart($("chart-latency"), [
      { label: "p99", color: COLORS[4], values: column(points, function (p) { return p.fanout_p99_ms; }) },
    ], "this node does not measure fan-out latency yet");
    drawChart($("chart-drops"), [
      { label: "drops", color: COLORS[3], values: column(points, function (p) { return p.drops_per_s; }) },
    ]);
    var rows = s.shards.map(function (sh) {
      var cells = [String(sh.id), fmt(sh.connections), fmt(sh.in_per_s, 1), fmt(sh.out_per_s, 1),
        fmt(sh.deliveries_per_s, 1), fmt(sh.queue_depth), fmt(sh.drops_total)];
      return el("tr", cells.map(function (text) { return el("td", [text]); }));
    });
    var body = $("shards").tBodies[0];
    body.replaceChildren.apply(body, rows);
  }

  function refreshNodeSelect() {
    var select = $("node-select");
    var names = Array.from(nodes.keys()).sort();
    if (select.options.length === names.length) return;
    select.replaceChildren.apply(select, names.map(function (n) {
      var option = el("option", [n]);
      option.selected = n === selected;
      return option;
    }));
  }

  function onSnapshot(snapshot) {
    if (!snapshot || typeof snapshot.node !== "string" || !Array.isArray(snapshot.shards)) return;
    var entry = nodes.get(snapshot.node);
    if (!entry) {
      if (nodes.size >= NODES_MAX) return;
      entry = { points: [] };
      nodes.set(snapshot.node, entry);
      if (!selected) selected = params().node && nodes.has(params().node) ? params().node : snapshot.node;
      refreshNodeSelect();
    }
    entry.points.push(snapshot);
    if (entry.points.length > HISTORY_POINTS) entry.points.shift();
    state.snapshots += 1;
    state.last = snapshot;
    $("snapshots").textContent = state.snapshots;
    if (snapshot.node === selected) render();
  }

  $("node-select").addEventListener("change", function (e) { selected = e.target.value; render(); });
  window.addEventListener("resize", render);

  var client = ringcast.connect(undefined, {
    token: params().token,
    onStateChange: function (s) { if (s !== "open") setStatus(s, s === "closed" ? "bad" : ""); },
    onOpen: function (info) {
      state.transport = info.transport;
      setStatus("live · " + info.transport, "open");
    },
  });
  window.__ringcastClient = client;
  client.subscribe("$sys.metrics", onSnapshot, {
    onSubscribed: function () { banner([]); state.error = null; },
    onError: function (err) {
      state.error = { code: err.code, msg: err.message };
      setStatus("refused", "bad");
      banner(["The gateway refused the ", el("code", ["$sys.metrics"]), " feed (" + err.code + ": " + err.message + ").", el("br"),
        "Start it with ", el("code", ["--sys-subscribe"]), ". With a JWT secret, open this page as ",
        el("code", ["/#token=<JWT>"]), " with a token whose ", el("code", ["chans"]), " claim is absent or includes ",
        el("code", ["$sys.>"]), "."]);
    },
  });
})();
