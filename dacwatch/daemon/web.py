"""The daemon's HTTP listener (``metrics.listen``, loopback by default): ``/metrics``,
``/healthz``, ``/readyz``, ``/api/status`` and a read-only status page at ``/``.

Nothing here touches the queue: health is asked of the service's threads (in
memory), and the status is the report the service's loop builds once a second,
so a page load costs the daemon a dictionary lookup and a little formatting.
Every name on the page comes from the inbox and is escaped; the page's only
script is ``/app.js`` (same origin, so the policy forbids inline script), and it
writes names with ``textContent`` only.
"""

from __future__ import annotations

import html
import http.server
import json
import socket
import threading
from importlib import resources
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dacwatch.daemon.report import duration

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Site(Protocol):
    """What the listener asks of the service."""

    def problems(self) -> list[str]:
        """Why the daemon is not healthy (empty: healthy); in memory, never the queue."""
        ...

    def readiness(self) -> str | None:
        """None once READY was sent and until stopping begins; else why not ready."""
        ...

    def snapshot(self) -> tuple[bytes, dict[str, Any]] | None:
        """The last status report (JSON bytes and the report), None before the first."""
        ...


def _asset(name: str) -> bytes:
    return resources.files("dacwatch.daemon").joinpath("static", name).read_bytes()


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "dacwatch"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a dashboard polling every 2 s would fill the journal."""

    def do_HEAD(self) -> None:
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:
        path = self.path.split("?", 1)[0]
        route = {
            "/": self._page,
            "/index.html": self._page,
            "/app.js": lambda: (200, "text/javascript; charset=utf-8", self.server.script),
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)),
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/api/status": self._status,
        }.get(path)
        if route is None or (self.server.site is None and path != "/metrics"):
            code, kind, data = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            code, kind, data = route()
        self._send(code, kind, data if body else b"", len(data))

    def _refuse(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"read-only\n", 10, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _send(self, code: int, kind: str, data: bytes, length: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (SECURITY_HEADERS | (extra or {})).items():
            self.send_header(key, value)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if data:
            self.wfile.write(data)

    @property
    def site(self) -> Site:
        assert self.server.site is not None
        return self.server.site

    def _healthz(self) -> tuple[int, str, bytes]:
        problems = self.site.problems()
        text = "ok\n" if not problems else "".join(f"{p}\n" for p in problems)
        return (200 if not problems else 503), "text/plain; charset=utf-8", text.encode("utf-8", "backslashreplace")

    def _readyz(self) -> tuple[int, str, bytes]:
        why = self.site.readiness()
        return (
            (200, "text/plain; charset=utf-8", b"ready\n") if why is None else (503, "text/plain", f"{why}\n".encode())
        )

    def _status(self) -> tuple[int, str, bytes]:
        snap = self.site.snapshot()
        if snap is None:
            return 503, "application/json", json.dumps({"error": self.site.readiness() or "starting"}).encode()
        return 200, "application/json", snap[0]

    def _page(self) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", self.server.page(self.site.snapshot())


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a slow client never holds up shutdown
    block_on_close = False

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, site: Site | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.registry = registry
        self.site = site
        self.script = _asset("app.js")
        self._page_lock = threading.Lock()
        self._page_cache: tuple[int, bytes] = (0, b"")

    def page(self, snap: tuple[bytes, dict[str, Any]] | None) -> bytes:
        """The page for this snapshot, rendered once per snapshot whatever the number of loads."""
        if snap is None:
            return render(None)
        with self._page_lock:
            if self._page_cache[0] != id(snap):
                self._page_cache = (id(snap), render(snap[1]))
            return self._page_cache[1]


def serve(listen: str, registry: CollectorRegistry, site: Site | None = None) -> Server:
    """Start the listener on ``host:port`` (``[v6]:port``) in a thread of its own."""
    host, _, port = listen.rpartition(":")
    server = Server((host.strip("[]") or "127.0.0.1", int(port)), registry, site)
    threading.Thread(target=server.serve_forever, name="dacwatch-http", daemon=True).start()
    return server


# ---------------------------------------------------------------------- the page


def e(value: Any) -> str:
    """Escaped text (names arrive printable from the report; html.escape does the rest)."""
    return html.escape("" if value is None else str(value), quote=True)


def _bar(job: dict[str, Any]) -> str:
    p = job.get("progress")
    if p is None:
        return "<td>…</td>"
    total = job.get("total_s") or 0.0
    return (
        f'<td><progress max="1" value="{p:.4f}">{p:.0%}</progress> <span>{p:.0%}, '
        f"{job.get('done_s', 0):.1f} of {total:.1f} s</span></td>"
    )


def chart(per_minute: list[float], width: int = 600, height: int = 120) -> str:
    """An inline SVG line of audio seconds per minute over the last hour."""
    top = max(per_minute, default=0.0) or 1.0
    n = max(1, len(per_minute) - 1)
    points = " ".join(
        f"{i * width / n:.1f},{height - 4 - v / top * (height - 20):.1f}" for i, v in enumerate(per_minute)
    )
    return (
        f'<svg id="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="audio seconds converted per minute, last hour">'
        f'<line x1="0" y1="{height - 4}" x2="{width}" y2="{height - 4}" stroke="#bbb"/>'
        f'<polyline id="line" fill="none" stroke="#2a6fdb" stroke-width="2" points="{points}"/>'
        f'<text id="chart-top" x="4" y="12" font-size="11">{top:.0f} s/min</text></svg>'
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:70em}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.2em .5em;border-bottom:1px solid #ddd;
vertical-align:top;overflow-wrap:anywhere}th{background:#f4f4f4}
.counts td{font-size:1.3em;font-weight:600}.bad{color:#b00020}.ok{color:#1b7f3b}
progress{width:10em}pre{white-space:pre-wrap;margin:.2em 0;font-size:12px}small{color:#666}
"""


def render(r: dict[str, Any] | None) -> bytes:
    """The whole page, readable without script (a terminal browser); app.js refreshes it."""
    head = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>dacwatch</title><style>{STYLE}</style><script src="/app.js" defer></script></head><body>'
    )
    if r is None:
        return (head + '<h1>dacwatch</h1><p id="health">starting…</p></body></html>').encode()
    health = r.get("health") or {}
    problems = health.get("problems") or []
    state = "ready" if health.get("ready") else (health.get("readiness") or "not ready")
    out = [head, f'<h1>dacwatch <small id="node">{e(r.get("node"))}</small></h1>']
    out.append(
        f'<p id="health" class="{"bad" if problems else "ok"}">'
        + e(f"{state}; " + ("; ".join(problems) if problems else "healthy"))
        + f' <small id="generated">as of {e(r["generated_at"])}</small></p>'
    )
    counts = r["counts"]
    out.append('<h2>Queue</h2><table class="counts"><tr>' + "".join(f"<th>{e(k)}</th>" for k in counts) + "</tr><tr>")
    out.append("".join(f'<td id="count-{e(k)}">{int(v)}</td>' for k, v in counts.items()) + "</tr></table>")
    out.append(f'<p id="drain">{e(_drain_text(r["drain"]))}</p>')
    out.append("<h2>Running</h2><table><thead><tr><th>file</th><th>host, worker</th><th>progress</th><th>left</th>")
    out.append('</tr></thead><tbody id="running">')
    for job in r["running"]:
        where = ", ".join(str(x) for x in (job.get("node"), job.get("worker"), job.get("device")) if x)
        left = duration(job.get("eta_s")) if job.get("progress") is not None else "…"
        out.append(f"<tr><td>{e(job['path'])}</td><td>{e(where)}</td>{_bar(job)}<td>{e(left)}</td></tr>")
    out.append("</tbody></table>")
    tp = r["throughput"]
    out.append(f"<h2>Throughput <small>({e(tp['of'] or '')}, audio seconds per minute, last hour)</small></h2>")
    out.append(chart(tp["audio_s_per_minute"]))
    out.append(f'<p id="throughput">{tp["audio_s_last_hour"]:.1f} s of audio in the last hour</p>')
    out.append("<h2>Finished</h2><table><thead><tr><th>file</th><th>output</th><th>finished</th><th>wall</th>")
    out.append('<th>audio</th><th>realtime</th></tr></thead><tbody id="done">')
    for job in r["recent_done"]:
        cells = (job["path"], job.get("output"), job.get("finished_at"), _s(job.get("wall_s")), _s(job.get("audio_s")))
        rtf = job.get("rtf")
        out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + f"<td>{e(f'{rtf}x' if rtf else '')}</td></tr>")
    out.append("</tbody></table><h2>Failed</h2><table><thead><tr><th>file</th><th>when</th><th>reason</th></tr>")
    out.append('</thead><tbody id="failed">')
    for job in r["recent_failures"]:
        note = job.get("error_note")
        detail = ""
        if note is not None:
            body = note if isinstance(note, str) else json.dumps(note, indent=2, ensure_ascii=False)
            detail = f"<details><summary>.error.json</summary><pre>{e(body)}</pre></details>"
        out.append(
            f"<tr><td>{e(job['path'])}</td><td>{e(job.get('finished_at'))}</td>"
            f"<td>{e(job.get('last_error'))}{detail}</td></tr>"
        )
    out.append("</tbody></table><h2>Hosts</h2><table><thead><tr><th>node</th><th>running</th>")
    out.append('<th>last heartbeat</th></tr></thead><tbody id="hosts">')
    for host in r["hosts"]:
        jobs = ", ".join(host["jobs"])
        out.append(f"<tr><td>{e(host['node'])}</td><td>{e(jobs)}</td><td>{e(host.get('heartbeat_at'))}</td></tr>")
    out.append("</tbody></table></body></html>")
    return "".join(out).encode("utf-8", "backslashreplace")


def _s(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f} s"


def _drain_text(d: dict[str, Any]) -> str:
    if d["pending_bytes"] == 0:
        return "Nothing queued."
    if d["eta_s"] is None:
        return "The queue's drain time is unknown: nothing finished in the last hour to measure the rate by."
    return (
        f"The queue drains in about {duration(d['eta_s'])} at the last hour's rate "
        f"({d['bytes_per_s'] * 60 / 1e6:.1f} MB/min)."
    )


__all__ = ["CSP", "Server", "Site", "render", "serve"]
