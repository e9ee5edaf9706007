"""Load test of ``leader serve``: a fixed number of single-patient requests, N concurrent clients.

Starts the service on 127.0.0.1 (a free port) as its own process, drives it with a bounded
load from keep-alive connections (a minimal asyncio HTTP/1.1 client, so the client spends
little of the shared CPU), then prints requests/s, latency percentiles and errors.
Targets (issues 6 and 12, 2-core machine): no errors, p99 < 50 ms, >= 1,000 requests/s
at 50 clients.

    .venv/bin/python benchmarks/serve.py --run runs/student --requests 5000 --clients 50

``--probes`` then sends the worst-case requests of issue 12 one at a time (the 980 KB body
of integer codes, 330 visits of 1,001 empty codes, deep nesting, a 4,400-digit id, lone
surrogates, a request at the code cap whose only error is at its end, 1,000 patients with
every drug ranked) and, while each runs, asks ``/v1/health`` every 5 ms on another
connection: its latency must stay under 50 ms, and the server's peak memory (VmHWM) under
twice its idle size (VmRSS before the probes).

Request bodies are synthetic patients drawn from the run's own vocabulary (1-3 visits,
MIMIC-like code counts) unless ``--patients FILE`` gives real ones. Only loopback is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def synthetic_patients(run: Path, count: int, seed: int) -> list[dict[str, Any]]:
    """Patients with codes drawn from the run's vocabulary (a few unknown ones mixed in)."""
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    dx, px, rx = (vocab[k]["codes"] for k in ("diagnosis", "procedure", "medication"))
    rng = random.Random(seed)

    def visit(current: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "diagnoses": rng.sample(dx, min(len(dx), rng.randint(5, 20))),
            "procedures": rng.sample(px, min(len(px), rng.randint(0, 6))),
        }
        if rng.random() < 0.05:
            out["diagnoses"].append("UNKNOWN9")
        if not current:
            out["medications"] = rng.sample(rx, min(len(rx), rng.randint(5, 20)))
        return out

    patients = []
    for i in range(count):
        n = rng.choice([1, 1, 1, 2, 3])
        patients.append({"id": i, "visits": [visit(k == n - 1) for k in range(n)]})
    return patients


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "leader", "serve", "--run", str(args.run),
        "--host", HOST, "--port", str(port), "--threads", str(args.threads),
        "--batching" if args.batching else "--no-batching",
    ]  # fmt: skip
    env = {**os.environ}
    if args.token:
        env["LEADER_TOKEN"] = args.token
    log = subprocess.DEVNULL if not args.server_log else open(args.server_log, "wb")  # noqa: SIM115
    return subprocess.Popen(command, env=env, stdout=log, stderr=log)


async def wait_ready(port: int, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with code {server.returncode}")
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(f"GET /v1/health HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            await writer.drain()
            status, _ = await read_response(reader)
            writer.close()
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("server did not become ready")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


def request_bytes(body: bytes, port: int, token: str | None, query: str) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST /v1/recommend{query} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def client(
    port: int,
    requests: list[bytes],
    queue: asyncio.Queue[int],
    latencies: list[float],
    errors: list[str],
    timeout: float,
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            try:
                writer.write(requests[i % len(requests)])
                status, body = await asyncio.wait_for(read_response(reader), timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                errors.append(f"request {i}: {type(exc).__name__}")
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors.append(f"request {i}: HTTP {status} {body[:120]!r}")
            elif b'"ranked"' not in body:
                errors.append(f"request {i}: unexpected body {body[:120]!r}")
    finally:
        writer.close()


async def drive(
    args: argparse.Namespace, port: int, bodies: list[bytes], count: int
) -> dict[str, Any]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(client(port, bodies, queue, latencies, errors, args.timeout) for _ in range(args.clients))
    )
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return (
            round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)
            if ordered
            else 0.0
        )

    return {
        "requests": count,
        "clients": args.clients,
        "seconds": round(seconds, 3),
        "requests_per_s": round(count / seconds, 1),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else 0.0,
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if ordered else 0.0,
        "errors": len(errors),
        "first_errors": errors[:5],
    }


def worst_cases(run: Path) -> dict[str, tuple[str, bytes]]:
    """Issue 12's probes and the costliest requests within the limits: name -> (query, body)."""
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    dx = vocab["diagnosis"]["codes"]
    codes = [dx[i % len(dx)] for i in range(1000)]
    rng = random.Random(1)

    def compact(data: Any) -> bytes:
        return json.dumps(data, separators=(",", ":")).encode()

    late_error = [{"diagnoses": codes} for _ in range(49)] + [{"diagnoses": codes[:999] + [1]}]
    batch = [
        {"id": i, "visits": [{"diagnoses": rng.sample(dx, min(20, len(dx)))} for _ in range(2)]}
        for i in range(1000)
    ]
    return {
        "980 KB of integer codes": ("", compact({"visits": [{"diagnoses": [1] * 1000}] * 490})),
        "330 visits x 1001 empty codes": (
            "",
            compact({"visits": [{"diagnoses": [""] * 1001}] * 330}),
        ),
        "nesting 400,000 deep": ("", b"[" * 400_000 + b"]" * 400_000),
        "4,400-digit id": ("", b'{"id":' + b"9" * 4400 + b',"visits":[{"diagnoses":[]}]}'),
        "50,000 lone surrogates": (
            "",
            compact({"visits": [{"diagnoses": ["\ud800"] * 1000}] * 50}),
        ),
        "50,000 codes, last one bad": ("", compact({"visits": late_error})),
        "1,000 patients x 2 visits, top=0": ("?top=0&ddi_safe=true", compact({"patients": batch})),
    }


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


async def probe(
    port: int, query: str, body: bytes, token: str | None, small: bytes
) -> dict[str, Any]:
    """Send one request; meanwhile GET /v1/health every 5 ms on another connection, and
    one small recommendation after each health answer on a third."""
    reader, writer = await asyncio.open_connection(HOST, port)
    h_reader, h_writer = await asyncio.open_connection(HOST, port)
    s_reader, s_writer = await asyncio.open_connection(HOST, port)
    health = f"GET /v1/health HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    start = time.perf_counter()
    writer.write(request_bytes(body, port, token, query))
    answer = asyncio.ensure_future(read_response(reader))
    latencies: list[float] = []
    others: list[float] = []
    while not answer.done():
        sent = time.perf_counter()
        h_writer.write(health)
        status, _ = await read_response(h_reader)
        if status != 200:
            raise SystemExit(f"/v1/health answered {status} during a probe")
        latencies.append(time.perf_counter() - sent)
        sent = time.perf_counter()
        s_writer.write(small)
        status, _ = await read_response(s_reader)
        if status != 200:
            raise SystemExit(f"a small recommendation got {status} during a probe")
        others.append(time.perf_counter() - sent)
        await asyncio.sleep(0.005)
    status, reply = await answer
    seconds = time.perf_counter() - start
    for w in (writer, h_writer, s_writer):
        w.close()
    latencies.sort()
    others.sort()
    return {
        "status": status,
        "ms": round(seconds * 1000, 1),
        "answer_bytes": len(reply),
        "health_n": len(latencies),
        "health_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "health_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
        "health_max_ms": round(latencies[-1] * 1000, 2),
        "other_request_max_ms": round(others[-1] * 1000, 2),
    }


def run_probes(
    args: argparse.Namespace, port: int, server: subprocess.Popen[bytes]
) -> dict[str, Any]:
    idle = memory_kb(server.pid)
    small = request_bytes(
        json.dumps(synthetic_patients(args.run, 1, 2)[0]).encode(), port, args.token, ""
    )
    results = {}
    for name, (query, body) in worst_cases(args.run).items():
        measured = asyncio.run(probe(port, query, body, args.token, small))
        results[name] = {"bytes": len(body), **measured}
    peak = memory_kb(server.pid)
    return {
        "probes": results,
        "idle_rss_mb": round(idle["VmRSS"] / 1024, 1),
        "peak_rss_mb": round(peak["VmHWM"] / 1024, 1),
        "health_max_ms": max(r["health_max_ms"] for r in results.values()),
        "other_request_max_ms": max(r["other_request_max_ms"] for r in results.values()),
        "any_5xx": any(r["status"] >= 500 for r in results.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="student run folder")
    parser.add_argument("--requests", type=int, default=5000, help="requests measured")
    parser.add_argument("--warmup", type=int, default=300, help="requests before measuring")
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections")
    parser.add_argument("--patients", type=Path, help="JSON/JSONL patients (default: synthetic)")
    parser.add_argument("--distinct", type=int, default=500, help="distinct synthetic patients")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ddi-safe", action="store_true", help="ask for the DDI-safe selection")
    parser.add_argument("--top", type=int, default=20, help="ranked drugs per answer")
    parser.add_argument("--token", default=None, help="run the server with this bearer token")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--server-log", type=Path, help="write the server's stderr here")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--probes", action="store_true", help="then the worst-case probes")
    args = parser.parse_args()
    if not 1 <= args.clients <= 1000 or not 1 <= args.requests <= 1_000_000:
        parser.error("--clients in 1..1000, --requests in 1..1000000 (a bounded load)")

    if args.patients:
        from leader.recommend import read_patients

        patients = read_patients(args.patients)
    else:
        patients = synthetic_patients(args.run, args.distinct, seed=0)
    port = free_port()
    query = f"?top={args.top}" + ("&ddi_safe=true" if args.ddi_safe else "")
    bodies = [request_bytes(json.dumps(p).encode(), port, args.token, query) for p in patients]
    server = start_server(args, port)
    try:
        asyncio.run(wait_ready(port, server))
        if args.warmup:
            asyncio.run(drive(args, port, bodies, args.warmup))
        server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
        result = asyncio.run(drive(args, port, bodies, args.requests))
        server_cpu = cpu_seconds(server.pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        probes = run_probes(args, port, server) if args.probes else None
    finally:
        server.terminate()
        server.wait(timeout=30)
    result.update(
        server_cpu_ms_per_request=round(server_cpu / args.requests * 1000, 3),
        client_cpu_ms_per_request=round(client_cpu / args.requests * 1000, 3),
        load_average_1m=round(os.getloadavg()[0], 2),
        batching=args.batching,
        threads=args.threads,
        cpus=os.cpu_count(),
        ddi_safe=args.ddi_safe,
    )
    if probes is not None:
        result["worst_cases"] = probes
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['requests']} requests, {result['clients']} clients, "
        f"batching={'on' if args.batching else 'off'}: {result['requests_per_s']} req/s, "
        f"p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms, "
        f"max {result['max_ms']} ms, errors {result['errors']}\n"
        f"server CPU {result['server_cpu_ms_per_request']} ms/request, client CPU "
        f"{result['client_cpu_ms_per_request']} ms/request, {result['cpus']} CPUs, "
        f"load average {result['load_average_1m']}"
    )
    for line in result["first_errors"]:
        print("  " + line)
    if probes is None:
        return
    print(
        f"worst cases: /v1/health max {probes['health_max_ms']} ms while each ran; server "
        f"memory idle {probes['idle_rss_mb']} MB, peak {probes['peak_rss_mb']} MB"
    )
    for name, r in probes["probes"].items():
        print(
            f"  {name} ({r['bytes']:,} bytes): HTTP {r['status']} in {r['ms']} ms; health "
            f"n={r['health_n']} p50 {r['health_p50_ms']} p99 {r['health_p99_ms']} max "
            f"{r['health_max_ms']} ms; a small recommendation meanwhile: max "
            f"{r['other_request_max_ms']} ms"
        )


if __name__ == "__main__":
    main()
