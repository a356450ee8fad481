"""Latency and load of the inpainting page's API (project issue 23): ``python -m psm_jax.serve`` over HTTP.

    .venv/bin/python bench/serve.py --workdir runs/demo [--repeats 20] [--concurrent 50] [--markdown]
    .venv/bin/python bench/serve.py --artifact psm.jaxexport ...

Starts the server in a subprocess on a free loopback port and measures, warm (each request shape is sent
once, untimed, first: that compiles its spread):

* ``32px T=4 png``: a 32x32 image (held-out image 0 if the run's images are 32 px) with a centred box hole,
  ``POST /api/inpaint`` answered with a PNG, ``--repeats`` times in a row: p50 and p95 latency;
* ``32px T=4 json``: the same as the page sends it (``trajectory=1``: JSON with every iteration's panels);
* ``256px T=4 png``: a 256x256 image, ``pad`` strategy (the generator runs at 256 x 256);
* ``50 concurrent``: ``--concurrent`` clients each send one 32 px request at the same moment; how many were
  answered 200, how many failed (any other status or a connection error), the wall time until the last answer,
  and the server's peak resident memory (``VmHWM``) at the end.

T is the model's own for an artifact (fixed at export). Every row carries load1: the machine may be shared.
"""
from __future__ import annotations

import io
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SCRIPT = "bench/serve.py"
MD_COLUMNS = ("device", "model", "request", "n", "p50_s", "p95_s", "ok", "failed", "wall_s", "peak_rss_mib",
              "load1")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _multipart(files: dict[str, bytes], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(url: str, body: bytes, content_type: str, timeout: float = 600) -> tuple[int, bytes]:
    req = urllib.request.Request(url + "/api/inpaint", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get(url: str, path: str) -> bytes:
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return r.read()


def _request(image: np.ndarray, iters: int, trajectory: bool) -> tuple[bytes, str]:
    h, w = image.shape[:2]
    hole = np.zeros((h, w), np.uint8)
    hole[h // 4:3 * h // 4, w // 3:2 * w // 3] = 255          # white = hole
    return _multipart({"image": _png(image), "mask": _png(hole)},
                      {"iters": str(iters), "seed": "0", "trajectory": "1" if trajectory else "0"})


def _image(url: str, size: int, resolution: int, examples: int) -> np.ndarray:
    if size == resolution and examples:
        return np.asarray(Image.open(io.BytesIO(_get(url, "/api/examples/0"))).convert("RGB"))
    rng = np.random.default_rng(size)
    base = rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3)).astype(np.uint8)
    return np.repeat(np.repeat(base, 8, 0), 8, 1)[:size, :size]


def _start(args) -> tuple[subprocess.Popen, str]:
    src = ["--workdir", args.workdir] if args.workdir else ["--artifact", args.artifact]
    cmd = [sys.executable, "-m", "psm_jax.serve", *src, "--port", "0", "--max_queue", str(max(64, args.concurrent)),
           "--max_pixels", str(max(2**20, 256 * 256))]
    proc = subprocess.Popen(cmd, cwd=common.REPO, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        m = re.search(r"(http://\S+?)/?\s", line + " ")
        if m:
            return proc, m.group(1)
    proc.wait()
    common.fail(SCRIPT, f"the server did not start (exit {proc.returncode}); run `{' '.join(cmd[1:])}` to see why")
    raise AssertionError  # unreachable


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _latency(url: str, name: str, body: tuple[bytes, str], repeats: int, base: dict) -> dict:
    status, answer = _post(url, *body)                             # warm-up: compiles this shape
    if status != 200:
        common.fail(SCRIPT, f"{name}: warm-up request answered {status}: {answer[:200]!r}")
    load = [common.load1()]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        status, _ = _post(url, *body)
        times.append(time.perf_counter() - t0)
        if status != 200:
            common.fail(SCRIPT, f"{name}: answered {status}")
    load.append(common.load1())
    p95 = float(np.percentile(times, 95)) if len(times) > 1 else times[0]
    row = {**base, "request": name, "n": repeats, "p50_s": round(statistics.median(times), 4),
           "p95_s": round(p95, 4), "load1": max(x for x in load if x is not None) if any(load) else None}
    common.emit(row)
    return row


def _concurrent(url: str, body: tuple[bytes, str], n: int, pid: int, base: dict) -> dict:
    statuses: list = [None] * n
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        barrier.wait()
        try:
            statuses[i] = _post(url, *body)[0]
        except OSError as e:       # refused or reset connections count as failures
            statuses[i] = type(e).__name__

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    load0 = common.load1()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sum(s == 200 for s in statuses)
    loads = [x for x in (load0, common.load1()) if x is not None]
    row = {**base, "request": f"{n} concurrent 32px", "n": n, "ok": ok, "failed": n - ok, "wall_s": round(wall, 2),
           "peak_rss_mib": _peak_rss_mib(pid), "load1": max(loads) if loads else None,
           "statuses": sorted({str(s) for s in statuses})}
    common.emit(row)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(prog=SCRIPT, description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--workdir", help="training workdir (default: runs/demo)")
    src.add_argument("--artifact", help="exported model instead of a workdir")
    ap.add_argument("--repeats", type=int, default=20, help="timed requests per latency row")
    ap.add_argument("--concurrent", type=int, default=50, help="simultaneous clients of the load row")
    ap.add_argument("--iters", type=int, default=4, help="T of the requests (an artifact uses its own)")
    ap.add_argument("--big", type=int, default=256, help="side of the large request")
    ap.add_argument("--markdown", action="store_true", help="update the serve table of docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.concurrent < 1 or args.iters < 1 or args.big < 1:
        common.fail(SCRIPT, "need --repeats, --concurrent, --iters and --big >= 1")
    if not args.artifact:
        args.workdir = args.workdir or str(common.REPO / "runs" / "demo")
    path = Path(args.workdir or args.artifact)
    if not path.exists():
        common.fail(SCRIPT, f"{'--workdir' if args.workdir else '--artifact'} {path}: does not exist "
                            "(make demo trains runs/demo)")

    proc, url = _start(args)
    try:
        info = json.loads(_get(url, "/api/info"))
        T = args.iters if info["iters_range"][0] <= args.iters <= info["iters_range"][1] else info["default_iters"]
        base = {"device": common.device_name(), "model": f"{info['name']} ({info['kind']}, {info['resolution']}px)"}
        small = _image(url, 32, info["resolution"], info["examples"])
        big = _image(url, args.big, info["resolution"], 0)
        rows = [_latency(url, f"32px T={T} png", _request(small, T, False), args.repeats, base),
                _latency(url, f"32px T={T} json", _request(small, T, True), args.repeats, base),
                _latency(url, f"{args.big}px T={T} png", _request(big, T, False), max(1, args.repeats // 4), base),
                _concurrent(url, _request(small, T, False), args.concurrent, proc.pid, base)]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.markdown:
        common.update_markdown("serve", rows, key=("device", "model", "request"), columns=MD_COLUMNS,
                               title="Inpainting page API: latency and load (bench/serve.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
