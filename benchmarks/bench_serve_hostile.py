"""The server under hostile clients: its peak memory and the latency of a small request.

Starts ``python -m affectnet_tf.serve`` on 127.0.0.1 (a subprocess; ``--in-process`` runs it in a
thread of this process instead, with ``affectnet_tf.deploy.serve.ServerThread``) with a tiny
untrained model (``compact_cnn_small`` at 32x32, as the tests build one) and ``--detect-faces``,
then runs each load below for ``--seconds`` while one client sends a 64x64 PNG every 0.1 s and
times the answers. Every load is bounded in clients, requests and time, and only talks to
127.0.0.1:

* ``idle``: nothing else;
* ``huge PNGs, refused``: 2 clients sending the request of issue #21 again and again: 16 PNGs of
  6300x6300 (a 2.8 MB body), over the request's pixel budget;
* ``huge PNGs, served``: 2 clients sending 2 PNGs of 6300x6300 (the astronaut's face pasted in,
  when scikit-image is there), within the budget: decoded, downscaled for MTCNN, cropped;
* ``JPEG XL``: 4 clients sending 16 JPEG XL images of 7000x7000 (72 KB each; made with
  imagecodecs when it is installed, else 21 KB that start as a JPEG XL codestream), which
  TensorFlow decodes and whose header Pillow cannot read;
* ``slow headers``: 32 connections that send a partial header, then a byte a second;
* ``stalled bodies``: 16 connections that announce 8 MiB, send 1 MiB, then nothing;
* ``queue flood``: 48 clients sending requests of 8 JPEGs of 256x256 as fast as they can;
* ``huge-int JSON``: 4 clients sending a 12 MB body of 4300-digit integers ending with one of
  4301 digits (over Python's limit: parsed to the end, then refused).

Per load: the small request's median, 95th percentile and largest latency over its 200
answers, how many it sent and how many were refused (503 when the server is full), the server's
peak resident memory during the load (``VmHWM`` of ``/proc/<pid>/status`` reset through
``clear_refs`` before each load, else the largest of ``VmRSS`` sampled every 50 ms; with
``--in-process`` the whole process's, the clients' payloads included), the hostile requests'
answers, and for the connections that the server must cut, how long they stayed open.

Usage::

    python benchmarks/bench_serve_hostile.py [--seconds 20] [--read-timeout-s 5]
        [--request-timeout-s 30] [--in-process] [--quick] [--only NAME]
        [--baseline CHECKOUT] [--output FILE.json]
"""

import argparse
import base64
import concurrent.futures
import contextlib
import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

HOST = "127.0.0.1"
NAME = "tiny"
ROOT = Path(__file__).resolve().parents[1]


# -- the server and its memory -------------------------------------------------------------------


class Memory:
    """Peak resident memory of a process since the last `reset`, in MiB."""

    def __init__(self, pid):
        self.pid = pid
        self._status = f"/proc/{pid}/status"
        self._peak = 0.0
        self._hwm_resets = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _field(self, name):
        try:
            with open(self._status) as stream:
                for line in stream:
                    if line.startswith(name + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return self._psutil_rss() if name == "VmRSS" else None

    def _psutil_rss(self):
        try:
            import psutil
        except ImportError:
            return 0.0
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def _sample(self):
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, self._field("VmRSS") or 0.0)

    def reset(self):
        self._peak = self._field("VmRSS") or 0.0
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as stream:
                stream.write("5")  # resets VmHWM to the current RSS
            self._hwm_resets = True
        except OSError:
            self._hwm_resets = False

    def peak(self):
        hwm = self._field("VmHWM") if self._hwm_resets else None
        return max(self._peak, hwm or 0.0)

    def current(self):
        return self._field("VmRSS") or 0.0

    def close(self):
        self._stop.set()


def _model_dir(folder):
    import affectnet_tf

    built = affectnet_tf.build_model(
        "compact_cnn_small", task="all", weights=None, image_size=32, dropout=0.0
    )
    run = Path(folder) / NAME
    run.mkdir()
    built.prediction_model.save(run / "model.keras")
    return run


@contextlib.contextmanager
def running_server(run, flags, in_process, root=ROOT):
    """``(url, pid)`` of a server of ``run`` with ``flags`` (the package of the checkout in
    ``root``), until the block ends."""
    if in_process:
        from affectnet_tf import serve as serve_command
        from affectnet_tf.deploy import serve
        from affectnet_tf.inference.predictor import load_run_model

        args = serve_command.build_parser().parse_args(["--model-dir", str(run), *flags])
        app = serve.make_app(
            load_run_model(run),
            NAME,
            detect_faces=args.detect_faces,
            read_timeout_s=args.read_timeout_s,
            request_timeout_s=args.request_timeout_s,
            max_request_pixels=args.max_request_pixels,
        )
        with serve.ServerThread(app) as server:
            yield server.url, os.getpid()
        return
    command = [sys.executable, "-m", "affectnet_tf.serve", "--model-dir", str(run), "--port", "0"]
    process = subprocess.Popen(
        [*command, *flags], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"POST (http://[\d.]+:\d+)/v1/models/", line)
        if not match:
            raise RuntimeError(f"The server did not start: {line!r}")
        yield match.group(1), process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- clients ------------------------------------------------------------------------------------


def _png(image):
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def _jpeg(image):
    return cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def _body(images):
    instances = [{"b64": base64.b64encode(data).decode("ascii")} for data in images]
    return json.dumps({"instances": instances}).encode()


def post(url, body, timeout=120.0):
    """``(status, seconds)`` of one predict request; status 0 when the connection failed."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    start = time.perf_counter()
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(
            "POST",
            f"/v1/models/{NAME}:predict",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        connection.close()
    return status, time.perf_counter() - start


def _address(url):
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    return host, int(port)


def _open_until_closed(url, first, then, every_s, limit_s):
    """Sends ``first``, then ``then`` every ``every_s`` s, until the server closes the
    connection or ``limit_s`` have passed: ``(seconds open, what the server answered)``."""
    start = time.monotonic()
    answer = b""
    try:
        with socket.create_connection(_address(url), timeout=5) as connection:
            connection.sendall(first)
            connection.settimeout(every_s)
            while time.monotonic() - start < limit_s:
                try:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                    continue
                except TimeoutError:
                    pass
                if then:
                    connection.sendall(then)
    except OSError:
        pass
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
    return time.monotonic() - start, status


class Load:
    """One hostile load: ``clients`` threads running ``client(url, stop)`` until ``stop`` is
    set."""

    def __init__(self, name, clients, client):
        self.name, self.clients, self.client = name, clients, client


def _repeat(url, body, stop, count):
    statuses, seconds = [], []
    for _ in range(count):
        if stop.is_set():
            break
        status, took = post(url, body)
        statuses.append(status)
        seconds.append(took)
    return {"statuses": statuses, "seconds": seconds}


def _hold(first, then, every_s, limit_s):
    def client(url, stop):
        seconds, status = _open_until_closed(url, first, then, every_s, limit_s)
        return {"statuses": [status], "open_s": [seconds]}

    return client


def _jpeg_xl(rng, side):
    """A JPEG XL image of ``side`` x ``side`` (imagecodecs, when installed: TensorFlow decodes
    it, Pillow cannot read its header), else bytes that start as one: ``(bytes, what)``."""
    try:
        import imagecodecs

        y, x = np.mgrid[0:side, 0:side]
        image = np.stack([(x // 28) % 256, (y // 28) % 256, ((x + y) // 56) % 256], -1)
        data = imagecodecs.jpegxl_encode(image.astype(np.uint8), effort=3, distance=4.0)
        return data, f"{side}x{side}"
    except (ImportError, AttributeError, RuntimeError, ValueError):
        random = rng.integers(0, 256, 21 * 1024, dtype=np.uint8).tobytes()
        return b"\xff\x0a\xfa\x7f\x39\x0d" + random, "JPEG XL-like bytes"


def make_loads(quick, read_timeout_s, seconds):
    """The loads of the module docstring (smaller images, fewer clients with ``quick``)."""
    rng = np.random.default_rng(0)
    side = 800 if quick else 6300
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[::7] = 200  # a PNG of 127 KB at 6300x6300, as in issue #21
    huge = _png(canvas)
    with contextlib.suppress(ImportError):  # a face MTCNN finds at --detect-max-side 1280
        from skimage import data

        face = cv2.resize(data.astronaut(), (side // 3, side // 3), interpolation=cv2.INTER_CUBIC)
        canvas[side // 3 : side // 3 + face.shape[0], side // 3 : side // 3 + face.shape[1]] = face
    huge_face = _png(canvas)  # 4.9 MB at 6300x6300
    jxl, jxl_kind = _jpeg_xl(rng, 1000 if quick else 7000)
    small_jpeg = _jpeg(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    digits = "1" * 4300
    count = 300 if quick else 2800  # 12 MB
    huge_ints = f'{{"instances": [[[[{", ".join([digits] * count)}, 1{digits}]]]]}}'.encode()
    over_budget = _body([huge] * 16)
    within_budget = _body([huge_face] * 2)
    hold_s = seconds + 2 * read_timeout_s + 5
    partial = f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode()
    stalled = (
        (
            f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: {HOST}\r\n"
            "Content-Type: application/json\r\nContent-Length: 8388608\r\n\r\n"
        ).encode()
        + b'{"instances": [{"b64": "'
        + b"A" * (2**20 - 30)
    )
    slow, stalling, flooding = (8, 4, 8) if quick else (32, 16, 48)
    return [
        Load("idle", 0, None),
        Load(
            f"huge PNGs over the pixel budget: 16 x {side}x{side} "
            f"({len(over_budget) / 1e6:.1f} MB body)",
            2,
            lambda url, stop: _repeat(url, over_budget, stop, 50),
        ),
        Load(
            f"huge PNGs within the budget: 2 x {side}x{side} "
            f"({len(within_budget) / 1e6:.1f} MB body)",
            2,
            lambda url, stop: _repeat(url, within_budget, stop, 2 if quick else 20),
        ),
        Load(
            f"JPEG XL: 16 x {jxl_kind} ({len(jxl) // 1024} KB), no size Pillow can read",
            4,
            lambda url, stop: _repeat(url, _body([jxl] * 16), stop, 20 if quick else 500),
        ),
        Load(
            f"slow headers: {slow} connections",
            slow,
            _hold(partial, b"a", 1.0, hold_s),
        ),
        Load(
            f"stalled bodies: {stalling} x 1 MiB of 8 MiB",
            stalling,
            _hold(stalled, b"", 1.0, hold_s),
        ),
        Load(
            f"queue flood: {flooding} clients x 8 JPEGs of 256x256",
            flooding,
            lambda url, stop: _repeat(url, _body([small_jpeg] * 8), stop, 2 if quick else 400),
        ),
        Load(
            f"huge-int JSON: {len(huge_ints) / 1e6:.1f} MB of 4300-digit integers",
            4,
            lambda url, stop: _repeat(url, huge_ints, stop, 5 if quick else 500),
        ),
    ]


def run_load(load, url, memory, seconds, small_body):
    """Runs ``load`` for ``seconds`` while timing the small request: its results."""
    memory.reset()
    before = memory.current()
    stop = threading.Event()
    latencies, refusals = [], []
    with concurrent.futures.ThreadPoolExecutor(max(1, load.clients)) as pool:
        futures = [pool.submit(load.client, url, stop) for _ in range(load.clients)]
        time.sleep(0.5 if load.clients else 0.0)  # let the load start
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            status, took = post(url, small_body, timeout=seconds + 60)
            (latencies if status == 200 else refusals).append(took)
            time.sleep(0.1)
        stop.set()
        hostile = [future.result() for future in futures]
    peak = memory.peak()
    statuses, open_s, hostile_s = {}, [], []
    for result in hostile:
        for status in result["statuses"]:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        open_s += result.get("open_s", [])
        hostile_s += result.get("seconds", [])
    row = {
        "load": load.name,
        "small_sent": len(latencies) + len(refusals),
        "small_refused": len(refusals),
        "refused_median_ms": 1000 * statistics.median(refusals) if refusals else None,
        "median_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p95_ms": 1000 * float(np.percentile(latencies, 95)) if latencies else None,
        "max_ms": 1000 * max(latencies) if latencies else None,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "hostile_answers": statuses,
        "hostile_median_s": statistics.median(hostile_s) if hostile_s else None,
        "open_max_s": max(open_s) if open_s else None,
    }
    return row


def _fmt(value, spec=".0f"):
    return "" if value is None else format(value, spec)


TABLE_HEADER = (
    "| load | small request: median / p95 / max (ms) | small sent (refused: their median ms) | "
    "server RSS before / peak (MiB) | hostile answers | hostile request / connection (s) |\n"
    "|---|---|---|---|---|---|"
)


def table_row(row):
    """One Markdown row of a load's results."""
    answers = ", ".join(f"{s}: {n}" for s, n in sorted(row["hostile_answers"].items()))
    refused = str(row["small_refused"])
    if row["refused_median_ms"] is not None:
        refused += f": {row['refused_median_ms']:.0f} ms"
    if row["open_max_s"] is not None:
        timing = f"open {row['open_max_s']:.1f} at most"
    elif row["hostile_median_s"] is not None:
        timing = f"{row['hostile_median_s']:.2f} median"
    else:
        timing = "-"
    return (
        f"| {row['load']} | {_fmt(row['median_ms'])} / {_fmt(row['p95_ms'])} / "
        f"{_fmt(row['max_ms'])} | {row['small_sent']} ({refused}) | "
        f"{_fmt(row['rss_before_mib'])} / {_fmt(row['peak_rss_mib'])} | {answers or '-'} | "
        f"{timing} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per load (default: 20)")
    parser.add_argument("--read-timeout-s", type=float, default=5.0)
    parser.add_argument("--request-timeout-s", type=float, default=30.0)
    parser.add_argument("--in-process", action="store_true", help="ServerThread, not a process")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="0.5 s per load, 800x800 PNGs and a 2 MP budget, a 1 s read timeout, fewer clients",
    )
    parser.add_argument("--only", help="run only the loads whose name contains this")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="run the server of another checkout (e.g. one from before issue #21) with "
        "--detect-faces only, its other settings at its defaults",
    )
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.read_timeout_s = 0.5, 1.0
    flags = [
        "--detect-faces",
        "--read-timeout-s",
        str(args.read_timeout_s),
        "--request-timeout-s",
        str(args.request_timeout_s),
    ]
    if args.quick:  # 16 huge PNGs over the budget, 2 within it, as 6300x6300 at the default
        flags += ["--max-request-pixels", "2000000"]
    root = ROOT
    if args.baseline:
        root, flags, args.in_process = Path(args.baseline).resolve(), ["--detect-faces"], False
    small = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    small_body = _body([_png(small)])
    loads = make_loads(args.quick, args.read_timeout_s, args.seconds)
    if args.only:
        loads = [load for load in loads if load.name == "idle" or args.only in load.name]
    print(
        f"Server{f' of {root}' if args.baseline else ''}: "
        f"{'in this process' if args.in_process else 'a fresh subprocess per load'}, "
        f"{' '.join(flags)}, other limits at their defaults; {args.seconds:g} s per load; "
        f"{platform.machine()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    print(TABLE_HEADER, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as folder:
        run = _model_dir(folder)
        # one server for every load in this process; else a fresh one for each, so that no
        # load inherits the work or the memory of the one before
        groups = [loads] if args.in_process else [[load] for load in loads]
        for group in groups:
            with running_server(run, flags, args.in_process, root) as (url, pid):
                memory = Memory(pid)
                for _ in range(3):  # warm: the first requests trace the model
                    post(url, small_body)
                for load in group:
                    rows.append(run_load(load, url, memory, args.seconds, small_body))
                    print(table_row(rows[-1]), flush=True)
                memory.close()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as stream:
            json.dump({"flags": flags, "seconds": args.seconds, "rows": rows}, stream, indent=2)
    return rows


if __name__ == "__main__":
    main()
