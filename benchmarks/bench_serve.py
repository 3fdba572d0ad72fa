"""Load test of `headstart serve` on loopback: a bounded number of requests (one image each) from a fixed
number of concurrent clients; reports p50/p99 latency, images/s, how many images each engine call ran, and
the process's resident memory before and after (flat = no leak per request).

    python benchmarks/bench_serve.py --run RUN_DIR --images DIR [--requests 2000] [--concurrency 16]

Server and clients share the process (and its two cores): the figures are a floor for a separate client.
The result goes to benchmarks/results/serve/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

from headstart.serve import create_app

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="a folder of images to send (recursively)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--name", default="")
    args = ap.parse_args()
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:200]
    payloads = [(p.name, p.read_bytes()) for p in files]
    app = create_app(args.run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/predict"
    clients = [httpx.Client(timeout=120) for _ in range(args.concurrency)]

    def one(i: int) -> float:
        name, data = payloads[i % len(payloads)]
        t0 = time.perf_counter()
        r = clients[i % args.concurrency].post(url, files=[("file", (name, data, "image/jpeg"))])
        r.raise_for_status()
        return time.perf_counter() - t0

    with ThreadPoolExecutor(args.concurrency) as pool:  # warm-up: engine, allocator, connection pools
        list(pool.map(one, range(2 * args.concurrency)))
    batches0, rss0 = app.state.batcher.batches, rss_mb()
    t0, lat, rss = time.perf_counter(), [], []
    quarter = args.requests // 4
    with ThreadPoolExecutor(args.concurrency) as pool:
        for q in range(4):  # memory after each quarter: flat once warm, or growing per request
            lat += pool.map(one, range(q * quarter, (q + 1) * quarter))
            rss.append(round(rss_mb(), 1))
    wall = time.perf_counter() - t0
    lat.sort()
    rss1, batches = rss[-1], app.state.batcher.batches - batches0
    server.should_exit = True
    rec = {"run": str(args.run), "requests": 4 * quarter, "concurrency": args.concurrency, "errors": 0,
           "p50_ms": round(1000 * statistics.median(lat), 1), "p99_ms": round(1000 * lat[int(0.99 * len(lat))], 1),
           "images_per_s": round(4 * quarter / wall, 1), "images_per_engine_call": round(4 * quarter / batches, 2),
           "rss_mb_before": round(rss0, 1), "rss_mb_after_each_quarter": rss, "rss_mb_after": rss1,
           "wall_s": round(wall, 1)}
    out = ROOT / "benchmarks" / "results" / "serve" / f"{args.name or args.run.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
