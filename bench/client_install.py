"""Install throughput and memory of the vehicle client, beside a baseline of the same run.

Serves one image over HTTP on loopback and installs it into a file slot the way the agent
does (ImageDownloader into SlotWriter: stream, hash, checkpoint, verify, fsync), in a child
process whose peak RSS is measured. The baseline copies the same image into a slot file
with ``cat`` and hashes it with ``sha256sum``. Goals: throughput >= 0.8 x baseline, peak
RSS <= 64 MiB.

    python bench/client_install.py          # 1 GiB
    python bench/client_install.py --small  # 64 MiB
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from client.images import Image
from client.install import SlotWriter
from client.transfer import ImageDownloader

MIB = 1024 * 1024
RSS_GOAL_MIB = 64
THROUGHPUT_GOAL = 0.8


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _make_image(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with path.open("wb") as out:
        for offset in range(0, size, MIB):
            chunk = block[: min(MIB, size - offset)]
            # Vary each MiB so that nothing downstream can deduplicate it.
            chunk = offset.to_bytes(8, "big") + chunk[8:]
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _child(url: str, slot: str, image_json: str) -> None:
    image = Image.from_json(json.loads(image_json))
    downloader = ImageDownloader([url], timeout_seconds=30)
    started = time.perf_counter()
    with SlotWriter(Path(slot), image, progress_path=Path(slot + ".progress")) as writer:
        downloader.download(image, writer)
        writer.finish()
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))


def _baseline(image: Path, slot: Path) -> float:
    started = time.perf_counter()
    with slot.open("wb") as out:
        subprocess.run(["cat", str(image)], stdout=out, check=True)
    subprocess.run(["sha256sum", str(slot)], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    """Run the benchmark and print the figures; exit 1 when a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="64 MiB instead of 1 GiB")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    size = 64 * MIB if args.small else 1024 * MIB
    with tempfile.TemporaryDirectory(dir=os.environ.get("STAFFEL_BENCH_DIR")) as work:
        root = Path(work)
        targets = root / "served" / "image" / "targets"
        targets.mkdir(parents=True)
        blob = root / "image.bin"
        sha256 = _make_image(blob, size)
        image = Image(target="bench-1.0", length=size, sha256=sha256, release_counter=1)
        os.link(blob, targets / f"{sha256}.bench-1.0")
        server = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(_Quiet, directory=str(root / "served"))
        )
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        baseline = _baseline(blob, root / "baseline.img")
        (root / "baseline.img").unlink()
        command = [sys.executable, __file__, "--child", url, str(root / "B.img")]
        child = subprocess.run(
            [*command, json.dumps(image.to_json())], capture_output=True, text=True, check=True
        )
        server.shutdown()
        result = json.loads(child.stdout)
    ours = size / MIB / result["seconds"]
    base = size / MIB / baseline
    ratio = ours / base
    rss = result["peak_rss_mib"]
    print(f"image: {size // MIB} MiB into a file slot")
    print(f"baseline (cat into the slot + sha256sum): {base:8.1f} MiB/s")
    print(f"staffel-client install (HTTP, hash, verify, fsync): {ours:8.1f} MiB/s ({ratio:.2f} x)")
    print(f"peak RSS of the installing process: {rss:.1f} MiB (goal <= {RSS_GOAL_MIB} MiB)")
    ok = ratio >= THROUGHPUT_GOAL and rss <= RSS_GOAL_MIB
    print("goals met" if ok else f"goal missed (throughput >= {THROUGHPUT_GOAL} x, RSS <= 64 MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
