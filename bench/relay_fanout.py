"""Relay fan-out: aggregate throughput of N concurrent downloads of one cached blob, beside nginx.

    python bench/relay_fanout.py [--small] [--size-mib N]

Everything runs on loopback in a temporary folder:
- an nginx "upstream" (Debian's nginx, installed with apt-get when absent, run unprivileged
  with its own config) serves the blob under the Image repository's path and logs each copy;
- ``staffel-relay`` (a real process) sits in front of it with a cold cache;
- a cold fan-out (N vehicles at once) counts the copies the upstream served;
- then 50 and 200 concurrent downloads of the cached blob, through the relay and straight from
  an nginx serving the same file, by the same client processes, in the same run.

Prints a table and exits 0 (non-zero only when a copy is wrong or the relay fetched twice).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from debian_tools import debian_tool  # bench/, the script's own folder

NGINX_CONF = """
daemon off;
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{upstream_port};
        root {root}/upstream;
        access_log {root}/upstream-access.log;
    }}
    server {{
        listen 127.0.0.1:{direct_port};
        root {root}/direct;
    }}
}}
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def find_nginx() -> str:
    """Debian's nginx binary, installed with apt-get when it is missing."""
    return debian_tool("nginx", ("nginx-light", "nginx"))


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Waits until something accepts connections on ``port``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


async def _download_many(url: str, count: int) -> tuple[int, set[str]]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(check: bool) -> tuple[int, str]:
            digest = hashlib.sha256() if check else None
            size = 0
            async with session.get(url) as response:
                response.raise_for_status()
                async for chunk in response.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
            return size, digest.hexdigest() if digest is not None else ""

        results = await asyncio.gather(*(one(i == 0) for i in range(count)))
    return sum(size for size, _ in results), {d for _, d in results if d}


def _worker(url: str, count: int, start: float, out: multiprocessing.Queue[object]) -> None:
    while time.time() < start:
        time.sleep(0.001)
    try:
        out.put(asyncio.run(_download_many(url, count)))
    except Exception as exc:
        out.put(f"{type(exc).__name__}: {exc}")


def fan_out(url: str, downloads: int, processes: int) -> tuple[float, int, set[str]]:
    """Runs ``downloads`` concurrent GETs spread over client processes.

    Returns:
        Seconds from the common start to the last byte, total bytes, hashes seen.
    """
    queue: multiprocessing.Queue[object] = multiprocessing.Queue()
    start = time.time() + 0.5
    shares = [downloads // processes + (i < downloads % processes) for i in range(processes)]
    workers = [
        multiprocessing.Process(target=_worker, args=(url, share, start, queue))
        for share in shares
        if share
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    elapsed = time.time() - start
    for worker in workers:
        worker.join()
    total = 0
    hashes: set[str] = set()
    for result in results:
        if isinstance(result, str):
            sys.exit(f"a download failed: {result}")
        size, seen = result  # type: ignore[misc]
        total += size
        hashes |= seen
    return elapsed, total, hashes


def main() -> int:  # noqa: PLR0912 - one linear script: set up, measure, print
    """Runs the benchmark and prints its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="16 MiB blob, for a quick run")
    parser.add_argument("--size-mib", type=int, help="blob size in MiB (default 64, --small 16)")
    args = parser.parse_args()
    size = (args.size_mib or (16 if args.small else 64)) * 1024 * 1024
    processes = max(2, min(8, os.cpu_count() or 2))
    nginx = find_nginx()
    root = Path(tempfile.mkdtemp(prefix="staffel-bench-"))
    root.chmod(0o755)  # nginx workers run as another user when started by root
    started: list[subprocess.Popen[bytes]] = []
    try:
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        name = f"{sha}.bench-image-1.0"
        for folder in ("upstream/image/targets", "direct/image/targets", "tmp"):
            (root / folder).mkdir(parents=True)
        (root / "upstream/image/targets" / name).write_bytes(data)
        (root / "direct/image/targets" / name).write_bytes(data)
        del data
        for dirpath, dirnames, filenames in os.walk(root):
            for entry in dirnames:
                Path(dirpath, entry).chmod(0o755)
            for entry in filenames:
                Path(dirpath, entry).chmod(0o644)
        upstream_port, direct_port = free_port(), free_port()
        (root / "nginx.conf").write_text(
            NGINX_CONF.format(root=root, upstream_port=upstream_port, direct_port=direct_port)
        )
        web = subprocess.Popen(
            [nginx, "-c", str(root / "nginx.conf"), "-p", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(web)
        wait_for_port(direct_port, web, "nginx")
        relay_bin = Path(sys.executable).parent / "staffel-relay"
        relay = subprocess.Popen(
            [
                str(relay_bin),
                "--upstream", f"http://127.0.0.1:{upstream_port}",
                "--upstream-grpc", f"127.0.0.1:{free_port()}",
                "--cache-dir", str(root / "relay-cache"),
                "--grpc-listen", "127.0.0.1:0",
                "--http-listen", "127.0.0.1:0",
                "--ready-file", str(root / "relay.ready"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(root / "relay.log").open("wb"),
        )  # fmt: skip
        started.append(relay)
        for _ in range(600):
            if (root / "relay.ready").exists() or relay.poll() is not None:
                break
            time.sleep(0.05)
        relay_http = json.loads((root / "relay.ready").read_text())["http"]
        path = f"/image/targets/{name}"
        relay_url = f"{relay_http}{path}"
        direct_url = f"http://127.0.0.1:{direct_port}{path}"

        cold_downloads = 50 if args.small else 200
        elapsed, total, hashes = fan_out(relay_url, cold_downloads, processes)
        copies = sum(
            1 for line in (root / "upstream-access.log").read_text().splitlines() if path in line
        )
        ok = hashes == {sha} and total == cold_downloads * size and copies == 1
        rows = [("relay, cold cache", cold_downloads, total, elapsed)]
        for downloads in (50, 200):
            for label, url in (("relay, cached", relay_url), ("nginx", direct_url)):
                elapsed, total, hashes = fan_out(url, downloads, processes)
                ok = ok and hashes == {sha} and total == downloads * size
                rows.append((label, downloads, total, elapsed))
    finally:
        for process in reversed(started):
            process.send_signal(signal.SIGTERM if process is not started[0] else signal.SIGQUIT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if os.environ.get("KEEP"):
            print(root)
        else:
            shutil.rmtree(root, ignore_errors=True)

    cpus = os.cpu_count()
    print(f"blob {size / 2**20:.0f} MiB, {processes} client processes, loopback, {cpus} CPUs")
    print(f"{'server':<20} {'downloads':>9} {'GiB':>8} {'seconds':>8} {'MiB/s':>9}")
    speed: dict[tuple[str, int], float] = {}
    for label, downloads, total, elapsed in rows:
        rate = total / elapsed / 2**20
        speed[(label, downloads)] = rate
        print(f"{label:<20} {downloads:>9} {total / 2**30:>8.2f} {elapsed:>8.2f} {rate:>9.0f}")
    for downloads in (50, 200):
        ratio = speed[("relay, cached", downloads)] / speed[("nginx", downloads)]
        print(f"relay / nginx at {downloads:>3} concurrent downloads: {ratio:.2f} (goal >= 0.5)")
    print(f"upstream copies of the blob for {cold_downloads} cold downloads: {copies} (goal 1)")
    if not ok:
        print("FAILED: a copy differed, was short, or the upstream served more than one copy")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
