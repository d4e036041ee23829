// dacwatch status page: fetch /api/status every 2 s while the tab is visible and
// re-render. Names are attacker-controlled: they are only ever set as textContent.
"use strict";
(function () {
  var PERIOD_MS = 2000;
  var timer = null;

  function duration(s) {
    if (s === null || s === undefined) return "unknown";
    s = Math.round(s);
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    if (s >= 3600) return Math.floor(s / 3600) + " h " + two(Math.floor((s % 3600) / 60)) + " min";
    if (s >= 60) return Math.floor(s / 60) + " min " + two(s % 60) + " s";
    return s + " s";
  }
  function secs(v) { return v === null || v === undefined ? "" : v.toFixed(1) + " s"; }
  function pct(p) { return Math.round(p * 100) + "%"; }
  function set(id, text) { var n = document.getElementById(id); if (n) n.textContent = text; }
  function td(content) {
    var c = document.createElement("td");
    if (content instanceof Node) c.appendChild(content); else c.textContent = content === null || content === undefined ? "" : String(content);
    return c;
  }
  function fill(id, rows) {
    var body = document.getElementById(id);
    if (!body) return;
    var fresh = document.createElement("tbody");
    fresh.id = id;
    rows.forEach(function (cells) {
      var tr = document.createElement("tr");
      cells.forEach(function (c) { tr.appendChild(td(c)); });
      fresh.appendChild(tr);
    });
    body.parentNode.replaceChild(fresh, body);
  }
  function bar(job) {
    var span = document.createElement("span");
    if (job.progress === null || job.progress === undefined) { span.textContent = "…"; return span; }
    var p = document.createElement("progress");
    p.max = 1;
    p.value = job.progress;
    p.setAttribute("value", job.progress.toFixed(4));
    p.textContent = pct(job.progress);
    span.appendChild(p);
    span.appendChild(document.createTextNode(" " + pct(job.progress) + ", " + (job.done_s || 0).toFixed(1) + " of " + (job.total_s || 0).toFixed(1) + " s"));
    return span;
  }
  function drainText(d) {
    if (d.pending_bytes === 0) return "Nothing queued.";
    if (d.eta_s === null) return "The queue's drain time is unknown: nothing finished in the last hour to measure the rate by.";
    return "The queue drains in about " + duration(d.eta_s) + " at the last hour's rate (" + (d.bytes_per_s * 60 / 1e6).toFixed(1) + " MB/min).";
  }
  function chart(perMinute) {
    var line = document.getElementById("line");
    if (!line || !perMinute.length) return;
    var w = 600, h = 120, top = Math.max.apply(null, perMinute) || 1, n = Math.max(1, perMinute.length - 1);
    line.setAttribute("points", perMinute.map(function (v, i) {
      return (i * w / n).toFixed(1) + "," + (h - 4 - v / top * (h - 20)).toFixed(1);
    }).join(" "));
    set("chart-top", top.toFixed(0) + " s/min");
  }
  function render(r) {
    var h = r.health || {}, problems = h.problems || [];
    var state = h.ready ? "ready" : (h.readiness || "not ready");
    var health = document.getElementById("health");
    if (health && health.firstChild) {
      health.firstChild.textContent = state + "; " + (problems.length ? problems.join("; ") : "healthy") + " ";
      health.className = problems.length ? "bad" : "ok";
    }
    set("generated", "as of " + r.generated_at);
    Object.keys(r.counts).forEach(function (k) { set("count-" + k, String(r.counts[k])); });
    set("drain", drainText(r.drain));
    fill("running", r.running.map(function (j) {
      var where = [j.node, j.worker, j.device].filter(Boolean).join(", ");
      return [j.path, where, bar(j), j.progress === null || j.progress === undefined ? "…" : duration(j.eta_s)];
    }));
    chart(r.throughput.audio_s_per_minute);
    set("throughput", r.throughput.audio_s_last_hour.toFixed(1) + " s of audio in the last hour");
    fill("done", r.recent_done.map(function (j) {
      return [j.path, j.output, j.finished_at, secs(j.wall_s), secs(j.audio_s), j.rtf ? j.rtf + "x" : ""];
    }));
    fill("failed", r.recent_failures.map(function (j) {
      var reason = document.createElement("div");
      reason.appendChild(document.createTextNode(j.last_error || ""));
      if (j.error_note !== null && j.error_note !== undefined) {
        var d = document.createElement("details"), s = document.createElement("summary"), pre = document.createElement("pre");
        s.textContent = ".error.json";
        pre.textContent = typeof j.error_note === "string" ? j.error_note : JSON.stringify(j.error_note, null, 2);
        d.appendChild(s); d.appendChild(pre); reason.appendChild(d);
      }
      return [j.path, j.finished_at, reason];
    }));
    fill("hosts", r.hosts.map(function (hst) { return [hst.node, hst.jobs.join(", "), hst.heartbeat_at]; }));
    document.body.setAttribute("data-refreshed", String(Number(document.body.getAttribute("data-refreshed") || 0) + 1));
  }
  function refresh() {
    timer = null;
    if (document.visibilityState !== "visible") return; // resumed by visibilitychange
    fetch("/api/status", { cache: "no-store" })
      .then(function (resp) { return resp.ok ? resp.json() : null; })
      .then(function (r) { if (r && r.counts) render(r); })
      .catch(function () { set("generated", "(daemon unreachable)"); })
      .then(schedule, schedule);
  }
  function schedule() { if (timer === null) timer = setTimeout(refresh, PERIOD_MS); }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && timer === null) refresh();
  });
  refresh();
})();
