"""An in-process benchmark harness: drives ASGI apps and WSGI callables directly.

Every figure is a ratio against the bare app measured in the same run, in CPU time of the
benchmark process (so other load on the machine barely moves it): rounds are interleaved
(each round times every scenario once, starting with another one each round, after a few
untimed requests of its own) and the median per-request time across rounds is reported,
which keeps a noisy machine, or a scenario's place in the round, from moving a figure.

A benchmark module ``bench_*.py`` exposes ``scenarios() -> list[Scenario]``; ``run.py``
collects them all and prints one table. Start-up work (loading a definition) is not per
request: a module may also expose ``timings() -> list[Timing]``, each timed as a whole.
"""

from __future__ import annotations

import asyncio
import gc
import io
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# CPU time of this process, not wall time: on a shared machine other processes' load then
# barely moves the figures (the benchmark itself is single-threaded).
_clock = time.process_time


@dataclass
class Call:
    """One request to send: method, path, query, headers and body."""

    method: str = "GET"
    path: str = "/"
    query: bytes = b""
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: bytes = b""
    client: str = "127.0.0.1"


@dataclass
class Scenario:
    """A named app plus the requests to drive it with.

    ``baseline`` names the scenario this one is compared with (its ratio and added
    microseconds are printed); ``calls`` is cycled through, so several distinct requests
    (distinct keys, tokens, clients) can be spread over a run. ``budget`` is the largest
    ratio (or added-ratio, see ``budget_kind``) the project promises, shown beside the figure.
    """

    name: str
    kind: str  # "asgi" or "wsgi"
    app: Any
    calls: Sequence[Call] | Callable[[int], Call] = field(default_factory=lambda: [Call()])
    baseline: str | None = None
    group: str = "core"
    budget: float | None = None
    budget_kind: str = "ratio"  # "ratio": t/base <= budget; "added": (t-base)/ref <= budget
    budget_ref: str | None = None  # for "added": the scenario whose cost is the unit
    expect_status: int | None = 200
    setup: Callable[[], None] | None = None


def _call_at(calls: Sequence[Call] | Callable[[int], Call], i: int) -> Call:
    if callable(calls):
        return calls(i)
    return calls[i % len(calls)]


def _scope(call: Call) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": call.method,
        "scheme": "http",
        "path": call.path,
        "raw_path": call.path.encode(),
        "root_path": "",
        "query_string": call.query,
        "headers": [(b"host", b"bench"), *call.headers],
        "client": (call.client, 40000),
        "server": ("bench", 80),
    }


async def _asgi_batch(app: Any, calls: Any, start: int, n: int) -> tuple[float, int]:
    status = 0
    prepared = [(_scope(c), c.body) for c in (_call_at(calls, start + i) for i in range(n))]

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    t0 = _clock()
    for scope, body in prepared:
        msg = {"type": "http.request", "body": body, "more_body": False}

        async def receive(msg: dict[str, Any] = msg) -> dict[str, Any]:
            return msg

        await app(scope, receive, send)
    return _clock() - t0, status


def _environ(call: Call) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": call.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": call.path,
        "QUERY_STRING": call.query.decode("latin-1"),
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": call.client,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(call.body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "HTTP_HOST": "bench",
    }
    if call.body:
        env["CONTENT_LENGTH"] = str(len(call.body))
    for k, v in call.headers:
        name = k.decode("latin-1").upper().replace("-", "_")
        if name == "CONTENT_TYPE":
            env["CONTENT_TYPE"] = v.decode("latin-1")
        elif name == "CONTENT_LENGTH":
            env["CONTENT_LENGTH"] = v.decode("latin-1")
        else:
            env["HTTP_" + name] = v.decode("latin-1")
    return env


def _wsgi_batch(app: Any, calls: Any, start: int, n: int) -> tuple[float, int]:
    status = 0
    envs = [_environ(_call_at(calls, start + i)) for i in range(n)]

    def start_response(s: str, headers: Any, exc_info: Any = None) -> Any:
        nonlocal status
        status = int(s[:3])
        return lambda data: None

    t0 = _clock()
    for env in envs:
        result = app(env, start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return _clock() - t0, status


@dataclass
class Figure:
    scenario: Scenario
    us: float
    samples: list[float]


def run(
    scenarios: Iterable[Scenario],
    *,
    rounds: int = 15,
    batch: int = 400,
    warmup: int = 200,
    settle: int = 40,
) -> dict[str, Figure]:
    """Time every scenario, interleaved; return median microseconds per request.

    Each timed batch follows ``settle`` untimed requests of the same scenario.
    """
    items = list(scenarios)
    loop = asyncio.new_event_loop()
    samples: dict[str, list[float]] = {s.name: [] for s in items}
    offsets = dict.fromkeys(samples, 0)
    try:
        for s in items:
            if s.setup is not None:
                s.setup()
            # Warm caches (JWT, JWKS, routes) and check the scenario answers as expected.
            if s.kind == "asgi":
                _, status = loop.run_until_complete(_asgi_batch(s.app, s.calls, 0, warmup))
            else:
                _, status = _wsgi_batch(s.app, s.calls, 0, warmup)
            if s.expect_status is not None and status != s.expect_status:
                raise RuntimeError(f"{s.name}: expected status {s.expect_status}, got {status}")
            offsets[s.name] = warmup
        gc.collect()
        gc.disable()
        for r in range(rounds):
            # Each round starts with another scenario: none is always first after the
            # collection below.
            shift = r % len(items)
            for s in items[shift:] + items[:shift]:
                # An untimed run first: the scenario's code and data are back in the CPU's
                # caches, so its place in the round (first after a collection, or after a
                # scenario that touched other memory) does not move its figure.
                start = offsets[s.name]
                if s.kind == "asgi":
                    loop.run_until_complete(_asgi_batch(s.app, s.calls, start, settle))
                else:
                    _wsgi_batch(s.app, s.calls, start, settle)
                start += settle
                if s.kind == "asgi":
                    elapsed, _ = loop.run_until_complete(_asgi_batch(s.app, s.calls, start, batch))
                else:
                    elapsed, _ = _wsgi_batch(s.app, s.calls, start, batch)
                offsets[s.name] = start + batch
                samples[s.name].append(elapsed / batch * 1e6)
            gc.collect()
    finally:
        gc.enable()
        loop.close()
    return {s.name: Figure(s, statistics.median(samples[s.name]), samples[s.name]) for s in items}


def report(figures: dict[str, Figure]) -> str:
    """A table: us/request, ratio to baseline, added us, and the budget verdict."""
    lines = [
        f"{'scenario':<48} {'us/req':>8} {'ratio':>7} {'added':>8}  budget",
        "-" * 92,
    ]
    group = None
    for name, fig in figures.items():
        s = fig.scenario
        if s.group != group:
            group = s.group
            lines.append(f"[{group}]")
        ratio = added = ""
        verdict = ""
        if s.baseline and s.baseline in figures:
            base = figures[s.baseline].us
            ratio = f"{fig.us / base:.3f}"
            added = f"{fig.us - base:+.1f}"
            if s.budget is not None:
                if s.budget_kind == "ratio":
                    ok = fig.us / base <= s.budget
                    verdict = f"<= {s.budget:.2f}x  {'ok' if ok else 'OVER'}"
                else:
                    ref = figures[s.budget_ref or s.baseline].us
                    share = (fig.us - base) / ref
                    ok = share <= s.budget
                    verdict = (
                        f"adds {share:.3f} of {s.budget_ref or s.baseline} "
                        f"(<= {s.budget:.2f})  {'ok' if ok else 'OVER'}"
                    )
        lines.append(f"  {name:<46} {fig.us:>8.1f} {ratio:>7} {added:>8}  {verdict}")
    return "\n".join(lines)


@dataclass
class Timing:
    """A one-off operation (start-up work such as loading a definition), timed as a whole.

    ``func`` runs ``repeat`` times after one warm-up run; the median CPU time is reported
    against ``budget`` seconds.
    """

    name: str
    func: Callable[[], object]
    group: str = "core"
    budget: float | None = None
    repeat: int = 5


def run_timings(timings: Iterable[Timing]) -> dict[str, tuple[Timing, float]]:
    """Median CPU seconds of each timing."""
    out: dict[str, tuple[Timing, float]] = {}
    for t in timings:
        t.func()
        samples = []
        for _ in range(t.repeat):
            t0 = _clock()
            t.func()
            samples.append(_clock() - t0)
        out[t.name] = (t, statistics.median(samples))
    return out


def report_timings(results: dict[str, tuple[Timing, float]]) -> str:
    """A table: seconds (median) and the budget verdict."""
    lines = [f"{'one-off operation':<66} {'seconds':>8}  budget", "-" * 92]
    for name, (t, seconds) in results.items():
        verdict = ""
        if t.budget is not None:
            verdict = f"<= {t.budget:g} s  {'ok' if seconds <= t.budget else 'OVER'}"
        lines.append(f"  {name:<64} {seconds:>8.3f}  {verdict}")
    return "\n".join(lines)
