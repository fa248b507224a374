"""Benchmark: what the gateway adds in front of an instant OpenAI-compatible backend.

    python bench/bench_gateway.py [--concurrency 1,8,64,256] [--duration 5] [--workers 1,2]
                                  [--loadgen auto|wrk|aiohttp] [--log auto|sqlite|memory]
                                  [--cache] [--profile FILE] [--json]

Starts, as separate processes on free loopback ports:
  1. `bench/stub_openai.py`, a raw-ASGI stub that answers at once;
  2. the gateway app (uvicorn, uvloop + httptools, access log off) with one `openai`
     backend pointing at the stub (`gateway.backends` when present, else a minimal
     aiohttp forwarder defined here), auth on, logging on (the real request log on
     a temporary SQLite when importable, else in memory; the output says which),
     cache off unless `--cache` (the same request would otherwise be a cache hit);
then drives each with a closed loop at each concurrency (wrk when installed, else an
aiohttp load generator in its own process) and reports req/s, p50/p99 latency and
errors, for the stub alone and through the gateway; added latency = the difference.
Every run is bounded by --duration; all processes are stopped by pid at the end.
Prints figures; asserts nothing. Targets reported against: p50 overhead <= 1.5 ms at
c=1, >= 600 req/s at c=8, no errors up to c=256.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

APP_NAME = "bench-app"
API_KEY = "sk-bench-0123456789abcdef"
BODY = {
    "model": APP_NAME,
    "messages": [{"role": "user", "content": "How do I reset my password?"}],
    "max_tokens": 32,
    "temperature": 0,
}
TARGETS = {"p50_overhead_ms_c1": 1.5, "rps_c8": 600.0}


# -- the gateway process -------------------------------------------------------------------------


class _StaticRoutes:
    """One champion route, always healthy."""

    def __init__(self) -> None:
        from gateway.contracts import Route, RouteTable

        self.table = RouteTable(champion=Route(arm="champion", model_name="stub", model_version="1"))

    def current(self) -> Any:
        return self.table

    def health(self) -> Mapping[str, object]:
        return {"registry": "ok"}


class _ForwardingBackend:
    """A minimal aiohttp forwarder, used only when `gateway.backends.openai_compat` is missing."""

    def __init__(self, base_url: str) -> None:
        self.name = "stub"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._session: Any = None

    async def complete(self, request: Any) -> Any:
        import aiohttp
        import orjson

        from gateway.contracts import BackendError, Completion

        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
        started = time.perf_counter()
        payload = orjson.dumps(
            {"model": "stub", "messages": list(request.messages), "max_tokens": request.max_tokens}
        )
        try:
            async with self._session.post(
                self.url, data=payload, headers={"content-type": "application/json"}
            ) as response:
                body = orjson.loads(await response.read())
        except aiohttp.ClientError as error:
            raise BackendError(str(error)) from error
        usage = body.get("usage") or {}
        return Completion(
            text=body["choices"][0]["message"]["content"],
            finish_reason="stop",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            ttft_s=None,
            latency_s=time.perf_counter() - started,
            backend=self.name,
            served_model="stub",
        )

    async def stream(self, request: Any, result: Any) -> AsyncIterator[Any]:
        from gateway.contracts import StreamDelta

        completion = await self.complete(request)
        result.completion = completion
        yield StreamDelta(completion.text)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _backend(stub_url: str, mode: str) -> tuple[Any, str]:
    if mode == "forwarder":
        return _ForwardingBackend(stub_url), "bench aiohttp forwarder (--backend forwarder)"
    try:
        from gateway.backends.fallback import FallbackChain
        from gateway.backends.openai_compat import OpenAICompatBackend
    except ImportError:
        if mode == "gateway":
            raise
        return _ForwardingBackend(stub_url), "bench aiohttp forwarder (gateway.backends missing)"
    backend = OpenAICompatBackend("stub", stub_url, None, "stub", 30.0, 0, 0.0)
    return FallbackChain([backend]), "gateway.backends FallbackChain[OpenAICompatBackend]"


def _sink(mode: str, log_dir: str) -> tuple[Any, str]:
    from gateway.ports import MemorySink

    if mode in ("auto", "sqlite"):
        try:
            from flywheel.requestlog import BatchWriter, open_request_log
            from flywheel.settings import RequestLogParams
            from gateway.requestlog_sink import RequestLogSink
        except ImportError:
            if mode == "sqlite":
                raise
        else:
            # One file per worker process: the figure is the gateway's, not SQLite's lock contention.
            path = Path(log_dir) / f"requests-{os.getpid()}.db"
            log = open_request_log(f"sqlite:///{path}")
            return RequestLogSink(
                BatchWriter(log, RequestLogParams()), log
            ), f"flywheel.requestlog on SQLite {path}"
    return MemorySink(max_records=10_000), "in-memory sink (flywheel.requestlog not importable)"


def gateway_app() -> Any:
    """The uvicorn factory of the gateway process (configured by BENCH_* variables)."""
    from flywheel.settings import CacheParams, GatewayParams
    from gateway.app import GatewayDeps, create_app, protection
    from gateway.auth import ApiKeys

    backend, backend_kind = _backend(os.environ["BENCH_STUB_URL"], os.environ.get("BENCH_BACKEND", "auto"))
    sink, sink_kind = _sink(os.environ.get("BENCH_LOG", "auto"), os.environ["BENCH_LOG_DIR"])
    cache_on = os.environ.get("BENCH_CACHE") == "1"
    params = GatewayParams(
        rate_limit_tokens_per_minute=10**12,  # the bench measures the path, not the limiter refusing
        cache=CacheParams(exact=cache_on, semantic=False),
    )
    redis_url = os.environ.get("BENCH_REDIS") or None
    limiter, cache, closers = protection(params, redis_url)
    deps = GatewayDeps(
        routes=_StaticRoutes(),
        backend=backend,
        sink=sink,
        application=APP_NAME,
        keys=ApiKeys.from_pairs([("bench", API_KEY)]),
        limiter=limiter,
        cache=cache,
        on_close=closers,
    )
    limits = f"Redis {redis_url}" if redis_url else "in memory"
    info = {"backend": backend_kind, "sink": sink_kind, "cache": cache_on, "limits": limits}
    Path(os.environ["BENCH_LOG_DIR"], f"info-{os.getpid()}.json").write_text(json.dumps(info))
    return create_app(params, deps)


def serve_gateway(port: int, workers: int) -> None:
    """Run the gateway under uvicorn (this process is the bench's child)."""
    import uvicorn

    uvicorn.run(
        "bench_gateway:gateway_app",
        factory=True,
        app_dir=str(Path(__file__).parent),
        host="127.0.0.1",
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


# -- load generation -----------------------------------------------------------------------------


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d, " ..
    "\\"non2xx\\": %%d, \\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, \\"timeout\\": %%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def run_wrk(url: str, concurrency: int, duration_s: float, script: Path) -> dict[str, Any]:
    """One closed-loop wrk run; figures from the script's JSON line."""
    argv = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
        "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no figures: {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    errors = raw["non2xx"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": errors,
    }


async def _aiohttp_load(url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    import aiohttp

    payload = json.dumps(BODY).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += 0 if ok else 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "errors": errors,
    }


def run_aiohttp(url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    """One closed-loop run by the aiohttp load generator, in its own process."""
    argv = [sys.executable, __file__, "--loadgen-url", url, "--loadgen-c", str(concurrency),
            "--duration", str(duration_s)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- orchestration -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy within {timeout_s}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn's graceful stop, and cProfile writes its file), then SIGKILL after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _loadavg() -> float:
    return os.getloadavg()[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the processes, drive them, stop them; return the figures."""
    levels = [int(c) for c in args.concurrency.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    loadgen = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    script = tmp / "post.lua"
    script.write_text(_WRK_SCRIPT % {"body": json.dumps(BODY), "key": API_KEY})

    def drive(url: str, concurrency: int, duration: float) -> dict[str, Any]:
        if loadgen == "wrk":
            return run_wrk(url, concurrency, duration, script)
        return run_aiohttp(url, concurrency, duration)

    figures: dict[str, Any] = {"loadgen": loadgen, "loadavg_1m_start": _loadavg(), "rows": []}
    stub_port = _free_port()
    stub = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "stub_openai.py"), "--port", str(stub_port)]
    )
    processes = [stub]
    try:
        _wait_healthy(f"http://127.0.0.1:{stub_port}/healthz", stub)
        stub_url = f"http://127.0.0.1:{stub_port}/v1/chat/completions"
        direct: dict[int, dict[str, Any]] = {}
        for concurrency in levels:
            drive(stub_url, concurrency, 1)  # warm-up
            direct[concurrency] = drive(stub_url, concurrency, args.duration)
            figures["rows"].append({"target": "stub", "workers": 1, "c": concurrency, **direct[concurrency]})
        for workers in worker_counts:
            port = _free_port()
            log_dir = tmp / f"gw-{workers}"
            log_dir.mkdir()
            env = {
                **os.environ,
                "BENCH_STUB_URL": f"http://127.0.0.1:{stub_port}/v1",
                "BENCH_LOG": args.log,
                "BENCH_LOG_DIR": str(log_dir),
                "BENCH_CACHE": "1" if args.cache else "0",
                "BENCH_BACKEND": args.backend,
                "BENCH_REDIS": args.redis or "",
                "PYTHONPATH": str(ROOT),
            }
            argv = [sys.executable, __file__, "--serve-gateway", str(port), "--serve-workers", str(workers)]
            if args.profile and workers == 1:
                argv = [sys.executable, "-m", "cProfile", "-o", args.profile, *argv[1:]]
            gateway = subprocess.Popen(argv, env=env)
            processes.append(gateway)
            try:
                _wait_healthy(f"http://127.0.0.1:{port}/healthz", gateway)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                for concurrency in levels:
                    drive(url, concurrency, 1)  # warm-up
                    row = drive(url, concurrency, args.duration)
                    base = direct[concurrency]
                    row["added_p50_ms"] = row["p50_ms"] - base["p50_ms"]
                    row["added_p99_ms"] = row["p99_ms"] - base["p99_ms"]
                    figures["rows"].append({"target": "gateway", "workers": workers, "c": concurrency, **row})
            finally:
                _stop(gateway)
            infos = [json.loads(p.read_text()) for p in log_dir.glob("info-*.json")]
            figures[f"gateway_{workers}w"] = infos[0] if infos else {}
    finally:
        for process in processes:
            _stop(process)
        shutil.rmtree(tmp, ignore_errors=True)
    figures["loadavg_1m_end"] = _loadavg()
    figures["targets"] = _verdicts(figures["rows"])
    return figures


def _verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    one = [r for r in rows if r["target"] == "gateway" and r["workers"] == 1]
    by_c = {r["c"]: r for r in one}
    verdicts: dict[str, Any] = {}
    if 1 in by_c:
        added = by_c[1]["added_p50_ms"]
        verdicts["p50 overhead at c=1 <= 1.5 ms"] = f"{added:.2f} ms: {'met' if added <= 1.5 else 'NOT met'}"
    if 8 in by_c:
        rps = by_c[8]["rps"]
        verdicts[">= 600 req/s at c=8"] = f"{rps:.0f} req/s: {'met' if rps >= 600 else 'NOT met'}"
    gw_rows = [r for r in rows if r["target"] == "gateway"]
    errors = sum(r["errors"] for r in gw_rows)
    verdicts["no errors up to c=256"] = f"{errors} errors: {'met' if errors == 0 else 'NOT met'}"
    return verdicts


def _print_table(figures: dict[str, Any]) -> None:
    print(f"load generator: {figures['loadgen']}; loadavg 1m at start {figures['loadavg_1m_start']:.2f}")
    for key, info in figures.items():
        if key.startswith("gateway_") and info:
            print(
                f"{key}: backend = {info['backend']}; log = {info['sink']}; "
                f"limits = {info['limits']}; cache = {info['cache']}"
            )
    print()
    print("| target  | workers |   c |   req/s | p50 ms | p99 ms | errors | added p50 ms | added p99 ms |")
    print("|---------|---------|-----|---------|--------|--------|--------|--------------|--------------|")
    for r in figures["rows"]:
        added50 = f"{r['added_p50_ms']:.2f}" if "added_p50_ms" in r else "-"
        added99 = f"{r['added_p99_ms']:.2f}" if "added_p99_ms" in r else "-"
        print(
            f"| {r['target']:<7} | {r['workers']:>7} | {r['c']:>3} | {r['rps']:>7.0f} | {r['p50_ms']:>6.2f} "
            f"| {r['p99_ms']:>6.2f} | {r['errors']:>6} | {added50:>12} | {added99:>12} |"
        )
    print()
    for name, verdict in figures["targets"].items():
        print(f"target {name}: {verdict}")
    print(f"loadavg 1m at end {figures['loadavg_1m_end']:.2f}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,8,64,256", help="closed-loop concurrency levels")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measured run (after 1 s warm-up)"
    )
    parser.add_argument("--workers", default="1,2", help="gateway uvicorn worker counts to try")
    parser.add_argument(
        "--loadgen", choices=["auto", "wrk", "aiohttp"], default="auto", help="auto: wrk if on PATH"
    )
    parser.add_argument(
        "--log", choices=["auto", "sqlite", "memory"], default="auto", help="the gateway's sink"
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "gateway", "forwarder"],
        default="auto",
        help="auto: gateway.backends' chain if importable, else the bench's own aiohttp forwarder",
    )
    parser.add_argument(
        "--cache", action="store_true", help="exact cache on (every request after the first hits)"
    )
    parser.add_argument("--redis", metavar="URL", help="rate limits and exact cache on this Redis (shared)")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the 1-worker gateway into FILE (pstats)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--serve-gateway", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--loadgen-url", help=argparse.SUPPRESS)
    parser.add_argument("--loadgen-c", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point: the benchmark, or one of its child roles."""
    args = _parse_args(argv)
    if args.serve_gateway:
        serve_gateway(args.serve_gateway, args.serve_workers)
        return
    if args.loadgen_url:
        import uvloop

        print(json.dumps(uvloop.run(_aiohttp_load(args.loadgen_url, args.loadgen_c, args.duration))))
        return
    figures = run(args)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print_table(figures)


if __name__ == "__main__":
    main()
