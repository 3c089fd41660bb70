"""`make bench`: performance figures, each a ratio measured side by side in one run.

    python -m tests.benchmarks.run [--quick] [--onednn] [--signing DIR] [--scale] [--precision]
                                   [--extraction]

Prints a table (figure, value, target, met) and writes .bench/results.json. Not part of
`make test`: timings belong here, never in assertions. --quick shrinks the workloads to
check the harness itself in a couple of minutes (its figures are not the targets' figures).
--onednn runs only the comparison behind the trainer's TF_ENABLE_ONEDNN_OPTS=1 default
(about 4 minutes).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".bench"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TQDM_DISABLE": "1"}


@dataclass
class Figure:
    name: str
    value: float
    target: str
    met: bool
    detail: str


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def trainer(*args: str) -> float:
    """Run the trainer CLI; wall seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trainer", *args], env=ENV, cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------
# 1-3: training

def bench_training(data: Path, epochs: int, repeats: int) -> tuple[list[Figure], Path]:
    # float32, like --no-cache and the bare model below: these figures compare the pipelines,
    # not the arithmetic (--precision compares that).
    common = ["train", "--data", str(data), "--model-name", "bench", "--weights", "none",
              "--epochs", str(epochs), "--precision", "float32", "--quiet"]
    cold, warm, features = [], [], []
    output = WORK / "models"
    for i in range(repeats):
        cache = WORK / f"cache-{i}"
        shutil.rmtree(cache, ignore_errors=True)
        report = WORK / f"report-cold-{i}"
        cold.append(trainer(*common, "--output", str(output), "--cache", str(cache),
                            "--version", str(100 + i), "--report-dir", str(report)))
        metrics = json.loads((report / "metrics.json").read_text())
        features.append(metrics["timings_s"]["features"])
        log(f"cached run, cold cache: {cold[-1]:.1f} s (feature extraction {features[-1]:.1f} s)")
        report = WORK / f"report-warm-{i}"
        warm.append(trainer(*common, "--output", str(output), "--cache", str(cache),
                            "--version", str(200 + i), "--report-dir", str(report)))
        metrics = json.loads((report / "metrics.json").read_text())
        assert metrics["features"]["computed"] == 0, "warm run computed features"
        log(f"cached run, warm cache: {warm[-1]:.1f} s (0 features computed)")
    no_cache = trainer(*common, "--output", str(output), "--no-cache", "--version", "300")
    log(f"--no-cache run: {no_cache:.1f} s")
    cold_m, warm_m = statistics.median(cold), statistics.median(warm)
    figures = [
        Figure("training: --no-cache / cached (cold cache), end to end", no_cache / cold_m,
               ">= 6", no_cache / cold_m >= 6,
               f"no-cache {no_cache:.1f} s (1 run) vs cached median {cold_m:.1f} s "
               f"({repeats} runs); {epochs} epochs"),
        Figure("warm cache: second run / first run", warm_m / cold_m, "< 0.25",
               warm_m / cold_m < 0.25,
               f"warm median {warm_m:.1f} s vs cold {cold_m:.1f} s; 0 features computed"),
    ]
    return figures, statistics.median(features)


def extraction_seconds(data: Path, run: int) -> float:
    """The feature pass of one cold-cache `trainer train` (float32, like the bare model)."""
    report = WORK / f"report-extraction-{run}"
    trainer("train", "--data", str(data), "--model-name", "extraction", "--weights", "none",
            "--epochs", "1", "--precision", "float32", "--quiet", "--output",
            str(WORK / "models-extraction"), "--cache", str(WORK / f"cache-extraction-{run}"),
            "--report-dir", str(report))
    seconds = json.loads((report / "metrics.json").read_text())["timings_s"]["features"]
    log(f"trainer extraction, cold cache: {seconds:.1f} s")
    return seconds


BARE_PREDICT = r"""
import sys, time, numpy as np
import trainer.cli  # the trainer's TensorFlow settings, before TensorFlow loads
import tensorflow as tf
from pathlib import Path
from trainer.model import build_base
from trainer.preprocessing import preprocess_image_bytes
files = sorted(p for p in Path(sys.argv[1]).rglob("*") if p.is_file())
x = np.stack([preprocess_image_bytes(tf.constant(p.read_bytes())).numpy() for p in files])
model = build_base("none", 0).features
# Two batch sizes make Keras trace predict once more for any batch size (reduce_retracing),
# so the timed pass runs the network only, as the trainer's traced-once extraction does.
for k in (1, 2):
    model.predict(x[:k], batch_size=32, verbose=0)
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); model.predict(x, batch_size=32, verbose=0)
    times.append(time.perf_counter() - t)
print(sorted(times)[len(times) // 2])
"""


def bench_extraction(data: Path, trainer_seconds: float, repeats: int) -> Figure:
    out = subprocess.run([sys.executable, "-c", BARE_PREDICT, str(data), str(repeats)],
                         env=ENV, cwd=REPO, check=True, capture_output=True, text=True)
    bare = float(out.stdout.strip().splitlines()[-1])
    log(f"bare model.predict over decoded images: {bare:.1f} s; trainer extraction from "
        f"encoded files: {trainer_seconds:.1f} s")
    ratio = bare / trainer_seconds
    return Figure("feature extraction: bare predict / trainer extraction", ratio, ">= 0.85",
                  ratio >= 0.85, f"bare {bare:.1f} s vs trainer {trainer_seconds:.1f} s "
                  "(trainer: median of the cold runs; same images, same weights)")


# The same timing loop as the latency figure, in a process of its own: TensorFlow reads
# TF_ENABLE_ONEDNN_OPTS only when it loads.
SIGNATURE_P50 = r"""
import sys, statistics, tensorflow as tf
from tests.benchmarks.run import latency_in_process
fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
print(statistics.median(latency_in_process(fn, open(sys.argv[2], "rb").read(), int(sys.argv[3]))))
"""


def bench_onednn(data: Path) -> list[Figure]:
    """TensorFlow's oneDNN CPU kernels off vs on: the trainer's feature extraction
    (alternating runs, a cold cache each time), and the served signature on one image."""
    seconds = {"0": [], "1": []}
    for i, setting in enumerate(["0", "1", "0", "1"]):
        report = WORK / f"report-onednn-{i}"
        subprocess.run([sys.executable, "-m", "trainer", "train", "--data", str(data),
                        "--model-name", "onednn", "--weights", "none", "--epochs", "1",
                        "--precision", "float32", "--quiet",
                        "--output", str(WORK / "models-onednn"),
                        "--cache", str(WORK / f"cache-onednn-{i}"), "--report-dir", str(report)],
                       env={**ENV, "TF_ENABLE_ONEDNN_OPTS": setting}, cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        metrics = json.loads((report / "metrics.json").read_text())
        seconds[setting].append(metrics["timings_s"]["features"])
        log(f"trainer extraction, oneDNN {'on' if setting == '1' else 'off'}: "
            f"{seconds[setting][-1]:.1f} s")
    off, on = statistics.median(seconds["0"]), statistics.median(seconds["1"])

    version = min((WORK / "models-onednn" / "onednn").iterdir())
    image = sorted(p for p in data.rglob("*") if p.is_file())[0]
    p50 = {}
    for setting in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", SIGNATURE_P50, str(version), str(image),
                              "50"], env={**ENV, "TF_ENABLE_ONEDNN_OPTS": setting}, cwd=REPO,
                             check=True, capture_output=True, text=True)
        p50[setting] = float(out.stdout.strip().splitlines()[-1])
    log(f"served signature, one image, p50: oneDNN off {p50['0'] * 1e3:.0f} ms, "
        f"on {p50['1'] * 1e3:.0f} ms")
    return [
        Figure("trainer extraction: oneDNN off / on (speed-up)", off / on, "(reported)", True,
               f"off {off:.1f} s vs on {on:.1f} s (medians of 2, alternating)"),
        Figure("served signature, batch 1: oneDNN off / on (speed-up)", p50["0"] / p50["1"],
               "(reported)", True, f"p50 off {p50['0'] * 1e3:.0f} ms vs on "
               f"{p50['1'] * 1e3:.0f} ms; 50 sequential calls each"),
    ]


# ---------------------------------------------------------------------------------------
# 4-6: serving

def images(data: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()]


def timed(call, n: int, warmup: int = 5) -> list[float]:
    """Seconds of each of `n` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


def latency_in_process(fn, image: bytes, n: int) -> list[float]:
    import tensorflow as tf

    return timed(lambda: fn(image_bytes=tf.constant([image]))["scores"].numpy(), n)


def photo_pixels(rng, width: int, height: int, slope: tuple[float, float], noise: float):
    """Photo-like RGB pixels (noise over gradients: a photo's entropy, so a JPEG of them
    weighs what a photo does)."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(*slope) + y * rng.uniform(*slope)) % 256
                     for _ in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def phone_photo(seed: int = 0) -> bytes:
    """A 12 MP JPEG as a phone takes it (4032x3024, about 5 MB)."""
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(photo_pixels(np.random.default_rng(seed), 4032, 3024, (0.02, 0.06), 16)
                    ).save(out, format="JPEG", quality=90)
    return out.getvalue()


def one_image_at_a_time(client, pool: list[bytes]):
    """A call classifying the pool's next image alone (the pool in turn), for throughput()."""
    counter = iter(range(10**9))
    return lambda: client.classify([pool[next(counter) % len(pool)]], "bench")


def network_alone(images: dict[str, bytes], n: int) -> dict[str, float]:
    """p50s of what a served request cannot avoid: VGG16 to fc2 on one image already decoded
    and preprocessed (the network's cost, batch 1), and one decode + resize of each image."""
    import tensorflow as tf

    from trainer.model import build_base
    from trainer.preprocessing import _decode_and_resize_unchecked, preprocess_image_bytes

    base = build_base("none", 0)
    network = tf.function(lambda x: base.features(x, training=False))
    pixels = preprocess_image_bytes(tf.constant(next(iter(images.values()))))[None]
    p50 = {"network": statistics.median(timed(lambda: network(pixels).numpy(), n))}
    decode = tf.function(_decode_and_resize_unchecked)
    for name, data in images.items():
        encoded = tf.constant(data)
        p50[f"decode {name}"] = statistics.median(timed(lambda e=encoded: decode(e).numpy(), n))
    return p50


def latency_grpc(target: str, image: bytes, n: int) -> list[float]:
    from serving.client import GrpcClient

    with GrpcClient(target) as client:
        return timed(lambda: client.classify([image], "bench"), n)


def latency_rest(url: str, image: bytes, n: int) -> list[float]:
    import requests

    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]})
    times = []
    with requests.Session() as session:
        for i in range(n + 5):
            t = time.perf_counter()
            response = session.post(f"{url}/v1/models/bench:predict", data=body, timeout=60)
            response.raise_for_status()
            if i >= 5:
                times.append(time.perf_counter() - t)
    return times


def throughput(call, pool_size: int, seconds: float) -> tuple[float, int]:
    """Images per second with `pool_size` clients each sending one image at a time."""
    stop = time.perf_counter() + seconds
    done, errors = [0], [0]
    lock = threading.Lock()

    def client():
        while time.perf_counter() < stop:
            try:
                call()
                with lock:
                    done[0] += 1
            except Exception:  # counted: the figure requires zero
                with lock:
                    errors[0] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(pool_size) as pool:
        for _ in range(pool_size):
            pool.submit(client)
    return done[0] / (time.perf_counter() - started), errors[0]


def start_server(base: Path, name: str, *extra: str):
    from tools.model_server import LocalServer

    server = LocalServer(["--model-name", "bench", "--model-base-path", str(base), *extra],
                         WORK / f"{name}.log")
    started = time.perf_counter()
    server.start(wait_for_model="bench")
    return server, time.perf_counter() - started


def bench_serving(version_dir: Path, data: Path, n: int, seconds: float) -> list[Figure]:
    import tensorflow as tf

    from serving.client import GrpcClient

    base = WORK / "served" / "bench"
    shutil.rmtree(base.parent, ignore_errors=True)
    base.mkdir(parents=True)
    shutil.copytree(version_dir, base / "1", copy_function=os.link)
    pool = images(data)
    one = pool[0]

    # Loaded once: its latency now, its batched throughput once the servers are stopped.
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    in_process = latency_in_process(fn, one, n)
    log(f"in-process p50 {statistics.median(in_process) * 1e3:.0f} ms")
    phone = phone_photo()
    phone_p50 = statistics.median(latency_in_process(fn, phone, max(n // 4, 5)))
    alone = network_alone({"small": one, "phone": phone}, max(n // 4, 5))
    log(f"phone photo ({len(phone) / 1e6:.1f} MB) p50 {phone_p50 * 1e3:.0f} ms; network alone "
        f"{alone['network'] * 1e3:.0f} ms, one decode: small {alone['decode small'] * 1e3:.1f} "
        f"ms, phone {alone['decode phone'] * 1e3:.0f} ms")
    base_p50 = statistics.median(in_process)
    floor = {"small": alone["network"], "phone": alone["network"] + alone["decode phone"]}
    figures = [
        Figure("latency, batch 1: serving_default / network alone (224x224 JPEG)",
               base_p50 / floor["small"], "<= 1.15", base_p50 / floor["small"] <= 1.15,
               f"p50 {base_p50 * 1e3:.0f} ms vs VGG16 to fc2 on a decoded image "
               f"{floor['small'] * 1e3:.0f} ms ({n} calls; image checks, decode, preprocess "
               "and head are the difference)"),
        Figure("latency, batch 1: serving_default / (network + one decode), 12 MP photo",
               phone_p50 / floor["phone"], "<= 1.15", phone_p50 / floor["phone"] <= 1.15,
               f"p50 {phone_p50 * 1e3:.0f} ms vs {alone['network'] * 1e3:.0f} ms + "
               f"{alone['decode phone'] * 1e3:.0f} ms (decode + resize of the "
               f"{len(phone) / 1e6:.1f} MB 4032x3024 JPEG alone)"),
    ]
    server, startup = start_server(base, "server")
    try:
        by_grpc = latency_grpc(server.grpc_target, one, n)
        log(f"gRPC p50 {statistics.median(by_grpc) * 1e3:.0f} ms")
        phone_grpc = statistics.median(latency_grpc(server.grpc_target, phone,
                                                    max(n // 4, 5)))
        log(f"gRPC phone photo p50 {phone_grpc * 1e3:.0f} ms")
        by_rest = latency_rest(server.rest_url, one, n)
        log(f"REST p50 {statistics.median(by_rest) * 1e3:.0f} ms")
        grpc_p50 = statistics.median(by_grpc)
        figures.append(Figure(
            "latency, batch 1: serving local over gRPC / network alone", grpc_p50 /
            floor["small"], "<= 1.15", grpc_p50 / floor["small"] <= 1.15,
            f"p50 {grpc_p50 * 1e3:.0f} ms vs {floor['small'] * 1e3:.0f} ms"))
        figures.append(Figure(
            "latency, batch 1: serving local over gRPC / (network + one decode), 12 MP photo",
            phone_grpc / floor["phone"], "<= 1.15", phone_grpc / floor["phone"] <= 1.15,
            f"p50 {phone_grpc * 1e3:.0f} ms vs {alone['network'] * 1e3:.0f} ms + "
            f"{alone['decode phone'] * 1e3:.0f} ms"))
        for label, times, limit in (("gRPC", by_grpc, 0.10), ("REST", by_rest, 0.15)):
            overhead = statistics.median(times) / base_p50 - 1
            figures.append(Figure(
                f"latency, batch 1: {label} p50 overhead over in-process", overhead,
                f"<= {limit:.2f}", overhead <= limit,
                f"p50 {statistics.median(times) * 1e3:.0f} ms vs {base_p50 * 1e3:.0f} ms; "
                f"p99 {pct(times, 0.99) * 1e3:.0f} ms vs {pct(in_process, 0.99) * 1e3:.0f} ms; "
                f"{n} sequential requests"))

        with GrpcClient(server.grpc_target, timeout=120) as client:
            off, off_errors = throughput(one_image_at_a_time(client, pool), 8, seconds)
        log(f"8 clients, batching off: {off:.2f} img/s, {off_errors} errors")

        # 6b: a new version appearing -> served.
        appeared = time.perf_counter()
        staging = base / ".incoming-2"
        shutil.copytree(version_dir, staging, copy_function=os.link)
        os.rename(staging, base / "2")
        with GrpcClient(server.grpc_target) as client:
            while not any(v.version == 2 and v.state == "AVAILABLE"
                          for v in client.status("bench")):
                time.sleep(0.05)
        swap = time.perf_counter() - appeared
        log(f"new version served {swap:.1f} s after it appeared")
    finally:
        server.stop()

    batched_server, batched_startup = start_server(
        base, "server-batching", "--enable-batching", "--batching-parameters-file",
        str(REPO / "serving" / "config" / "batching.config"))
    batch = tf.constant((pool * 32)[:32])
    fn(image_bytes=batch)

    def in_process_batched(seconds: float) -> float:
        started, count = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            fn(image_bytes=batch)["scores"].numpy()
            count += 32
        return count / (time.perf_counter() - started)

    # Six alternating pairs of short windows (the idle server costs nothing meanwhile), and
    # the median of the pairs' ratios: this machine's speed changes from one minute to the
    # next by up to 20%, and longer windows compared two moments as much as two ways of
    # serving.
    window, ratios, on_errors = seconds / 2, [], 0
    try:
        with GrpcClient(batched_server.grpc_target, timeout=120) as client:
            call = one_image_at_a_time(client, pool)
            for _ in range(6):
                rate, errors = throughput(call, 8, window)
                on_errors += errors
                in_rate = in_process_batched(window)
                ratios.append((rate, in_rate))
                log(f"8 clients, batching on: {rate:.2f} img/s, {errors} errors; in-process "
                    f"batches of 32: {in_rate:.2f} img/s")
    finally:
        batched_server.stop()
    ratio = statistics.median(on / ins for on, ins in ratios)
    on = statistics.median(on for on, _ in ratios)
    in_batched = statistics.median(ins for _, ins in ratios)

    figures += [
        Figure("throughput, 8 clients: batching on / in-process batched (32)",
               ratio, ">= 0.95 and 0 errors", ratio >= 0.95 and on_errors == 0,
               f"median of 6 alternating pairs of {window:.0f} s windows; on {on:.2f} img/s "
               f"({on_errors} errors), off {off:.2f} img/s ({off_errors} errors), "
               f"in-process {in_batched:.2f} img/s (medians); pair ratios "
               + ", ".join(f"{a / b:.2f}" for a, b in ratios)),
        Figure("server start to model AVAILABLE (s)", statistics.median(
            [startup, batched_startup]), "(reported)", True,
            f"{startup:.1f} s and {batched_startup:.1f} s (process start, TF import, load, "
            "warmup)"),
        Figure("new version appearing to AVAILABLE (s)", swap, "(reported)", True,
               "poll every 1 s, load and warm up while the old version serves"),
    ]
    return figures


def bench_bfloat16(per_class: int, seconds: float) -> list[Figure]:
    """The served model in float32 and with --mixed_precision=bfloat16 (TF Serving's flag,
    grappler's oneDNN bfloat16 rewrite), each behind a batching server: 8 clients'
    throughput, and both servers' answers on held-out images the model never saw."""
    import numpy as np

    from serving.client import GrpcClient

    holdout = WORK / "holdout"
    subprocess.run([sys.executable, "-m", "trainer", "sample-data", "--output", str(holdout),
                    "--per-class", str(per_class), "--seed", "99", "--quiet"], env=ENV,
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    base = WORK / "served" / "bench"
    held_out = images(holdout)
    pool = images(WORK / "data")
    results = {}
    for precision in ("float32", "bfloat16"):
        flags = ["--enable-batching", "--batching-parameters-file",
                 str(REPO / "serving" / "config" / "batching.config")]
        if precision == "bfloat16":
            flags.append("--mixed_precision=bfloat16")
        server, _ = start_server(base, f"server-{precision}", *flags)
        try:
            with GrpcClient(server.grpc_target, timeout=300) as client:
                answers = [a for i in range(0, len(held_out), 16)
                           for a in client.classify(held_out[i:i + 16], "bench")]
                rate, errors = throughput(one_image_at_a_time(client, pool), 8, seconds)
        finally:
            server.stop()
        results[precision] = (np.array([a.scores for a in answers]), rate, errors)
        log(f"{precision} server, batching on, 8 clients: {rate:.2f} img/s, {errors} errors")
    (fp32, fp32_rate, fp32_errors), (bf16, bf16_rate, bf16_errors) = \
        results["float32"], results["bfloat16"]
    agree = float((fp32.argmax(axis=1) == bf16.argmax(axis=1)).mean())
    apart = np.abs(fp32 - bf16).max(axis=1)
    speedup = bf16_rate / fp32_rate
    return [
        Figure("serving, 8 clients batched: bfloat16 / float32 throughput", speedup,
               ">= 1.7 and 0 errors", speedup >= 1.7 and fp32_errors + bf16_errors == 0,
               f"bfloat16 {bf16_rate:.2f} img/s vs float32 {fp32_rate:.2f} img/s "
               f"({bf16_errors} and {fp32_errors} errors); {seconds:.0f} s each"),
        Figure("bfloat16 serving: top-1 agreement with float32 on held-out images (%)",
               100 * agree, ">= 99", agree >= 0.99,
               f"{len(held_out)} images; score difference mean {apart.mean():.4f}, largest "
               f"{apart.max():.4f}"),
    ]


# ---------------------------------------------------------------------------------------
# Signed models: what signing adds to publishing, and verification to pulling

def bench_signing(version_dir: Path, repeats: int) -> list[Figure]:
    """The 0.5 GB version through a real S3 store (SeaweedFS on loopback): publish with and
    without a signature, pull with and without --verify-key, alternating."""
    from contract.manifest import MANIFEST_FILE, list_version_files
    from contract.names import SIGNATURE_FILE
    from contract.signing import SigningKey, VerifyKey, make_key_pair
    from serving.puller import Puller
    from tools.seaweed import SeaweedFS
    from trainer.publish import publish

    store = SeaweedFS(WORK / "s3", access_key="bench", secret_key="bench-secret-0123456789")
    store.start()
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(store.client_env(saved))
        store.create_bucket("models")
        private, public = WORK / "keys" / "k.pem", WORK / "keys" / "k.pub"
        make_key_pair(private, public)
        signer, verifier = SigningKey.load(private), VerifyKey.load(public)
        manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
        size = sum(f["size"] for f in manifest["files"])
        times: dict[str, list[float]] = {k: [] for k in ("sign", "publish", "pull",
                                                         "pull_verified")}
        for i in range(repeats):
            for signed in (False, True):
                work = WORK / f"sign-{i}-{signed}"
                shutil.copytree(version_dir, work, copy_function=os.link)
                (work / MANIFEST_FILE).unlink()
                (work / SIGNATURE_FILE).unlink(missing_ok=True)
                version = 10 * i + 1 + signed
                t = time.perf_counter()
                if signed:
                    signer.sign(work)
                    times["sign"].append(time.perf_counter() - t)
                files = list_version_files(work)  # the trainer hashes for the manifest anyway
                t = time.perf_counter()
                publish(work, files, {**manifest, "version": version, "model_name": "bench",
                                      "files": [vars(f) for f in files]},
                        "s3://models", "bench", version, quiet=True)
                if not signed:
                    times["publish"].append(time.perf_counter() - t)
            for verified in (False, True):
                dest = WORK / f"pulled-{i}-{verified}" / "bench"
                puller = Puller("s3://models/bench", dest, keep=1, quiet=True,
                                verify_key=verifier if verified else None)
                version = 10 * i + 1 + verified
                stored = {e.path: e for e in puller.source.child(str(version)).list_files()}
                t = time.perf_counter()
                puller.install(version, puller.read_manifest(version), stored)
                times["pull_verified" if verified else "pull"].append(time.perf_counter() - t)
                shutil.rmtree(dest.parent)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        store.stop()
    sign, upload = statistics.median(times["sign"]), statistics.median(times["publish"])
    pull, pull_verified = statistics.median(times["pull"]), statistics.median(
        times["pull_verified"])
    log(f"signing {sign:.2f} s, publishing {upload:.2f} s; pull {pull:.2f} s, "
        f"with --verify-key {pull_verified:.2f} s")
    return [
        Figure("signing / publishing the 0.5 GB version", sign / upload, "< 0.5",
               sign / upload < 0.5,
               f"sign {sign:.2f} s vs upload to loopback S3 {upload:.2f} s ({size / 1e6:.0f} MB, "
               f"median of {repeats})"),
        Figure("pull with --verify-key / pull without", pull_verified / pull, "< 1.5",
               pull_verified / pull < 1.5,
               f"{pull_verified:.2f} s vs {pull:.2f} s from loopback S3; a real network "
               "download of 0.5 GB takes longer, verification does not"),
    ]


# ---------------------------------------------------------------------------------------
# scale: peak memory of a training run against the dataset's size (issue 14)

def large_photos(folder: Path, count: int, seed: int = 0) -> None:
    """`count` 1600x1200 JPEGs of about 1 MB (photo_pixels), half in each of two classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        target = folder / ("a" if i % 2 else "b") / f"photo_{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_pixels(rng, 1600, 1200, (0.05, 0.15), 24)).save(target,
                                                                              quality=90)


def peak_rss_mb(*args: str) -> float:
    """Peak resident memory of one `trainer` run, in MB (its own process, measured by a
    parent that runs nothing else)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "trainer", *args],
                         env=ENV, cwd=REPO, check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def bench_scale(sizes: tuple[int, int]) -> list[Figure]:
    """`trainer train` (cached path, --epochs 1) on two sizes of the same kind of large
    photos: the memory each added image costs."""
    small, large = sizes
    data = WORK / f"photos-{large}"
    large_photos(data, large)
    subset = WORK / f"photos-{small}"
    for cls in ("a", "b"):
        (subset / cls).mkdir(parents=True)
        for f in sorted((data / cls).iterdir())[:small // 2]:
            os.link(f, subset / cls / f.name)
    mean_mb = sum(f.stat().st_size for f in data.rglob("*.jpg")) / large / 1e6
    rss = {}
    for n, folder in ((small, subset), (large, data)):
        log(f"scale: training on {n} photos of {mean_mb:.2f} MB")
        rss[n] = peak_rss_mb("train", "--data", str(folder), "--output",
                             str(WORK / "scale-models"), "--model-name", f"scale{n}",
                             "--weights", "none", "--cache", str(WORK / f"scale-cache-{n}"),
                             "--epochs", "1", "--cache-check", "0", "--quiet")
    per_image = (rss[large] - rss[small]) / (large - small)
    return [Figure("train peak RSS per added image (MB)", round(per_image, 2),
                   "<= 0.3 MB (features only)", per_image <= 0.3,
                   f"peak RSS {rss[small]:.0f} MB at {small} photos, {rss[large]:.0f} MB at "
                   f"{large} ({mean_mb:.2f} MB each): the images' bytes are "
                   f"{per_image / mean_mb:.1f}x in memory")]


def cached_features(cache: Path) -> dict:
    """Every entry of a feature cache folder, by image hash."""
    import numpy as np

    return {f.stem: np.load(f) for f in cache.rglob("*.npy")}


def bench_precision(classes: int, per_class: int, epochs: int) -> list[Figure]:
    """The feature pass in float32 and in bfloat16 on the same images (alternating runs, a
    cold cache each): its speed, the features' difference, and the validation accuracy of
    the head trained on each, also as the exported float32 graph scores it."""
    import numpy as np

    data = WORK / f"precision-data-{classes}x{per_class}"
    subprocess.run([sys.executable, "-m", "trainer", "sample-data", "--output", str(data),
                    "--classes", str(classes), "--per-class", str(per_class), "--seed", "7",
                    "--quiet"], env=ENV, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    runs = {"float32": [], "bfloat16": []}
    for i, precision in enumerate(["float32", "bfloat16", "float32", "bfloat16"]):
        report = WORK / f"report-precision-{i}"
        trainer("train", "--data", str(data), "--model-name", f"precision{i}", "--weights",
                "none", "--epochs", str(epochs), "--precision", precision, "--quiet",
                "--output", str(WORK / "models-precision"), "--cache",
                str(WORK / f"cache-precision-{i}"), "--report-dir", str(report))
        m = json.loads((report / "metrics.json").read_text())
        runs[precision].append(m)
        log(f"{precision}: feature pass {m['timings_s']['features']:.1f} s for "
            f"{m['features']['computed']} images; val accuracy "
            f"{m['validation']['accuracy']:.4f} (exported graph: "
            f"{m['cross_check']['served_val_accuracy']:.4f})")
    seconds = {p: statistics.median(r["features"]["computed"] / r["timings_s"]["features"]
                                    for r in rs) for p, rs in runs.items()}
    accuracy = {p: [r["validation"]["accuracy"] for r in rs] for p, rs in runs.items()}
    served = [r["cross_check"]["served_val_accuracy"] for r in runs["bfloat16"]]
    val_images = runs["float32"][0]["images"]["val"]
    fp32, bf16 = cached_features(WORK / "cache-precision-0"), \
        cached_features(WORK / "cache-precision-1")
    rel = [float(np.abs(bf16[k] - v).sum() / max(np.abs(v).sum(), 1e-12))
           for k, v in fp32.items()]
    speedup = seconds["bfloat16"] / seconds["float32"]
    drop = statistics.mean(accuracy["float32"]) - statistics.mean(accuracy["bfloat16"])
    return [
        Figure("feature pass: bfloat16 / float32 images per second", speedup, "(reported)",
               True, f"float32 {seconds['float32']:.1f} img/s vs bfloat16 "
               f"{seconds['bfloat16']:.1f} img/s (medians of 2, alternating, cold caches); "
               f"{len(fp32)} images, batch 32"),
        Figure("fc2 features: bfloat16 vs float32, mean relative difference (%)",
               100 * statistics.mean(rel), "(reported)", True,
               f"over {len(rel)} images; largest {100 * max(rel):.2f}%"),
        Figure("validation accuracy: float32 - bfloat16 (points)", 100 * drop,
               f"<= {100 / val_images:.1f} (one image)", drop <= 1 / val_images + 1e-9,
               f"float32 {accuracy['float32']} vs bfloat16 {accuracy['bfloat16']} on "
               f"{val_images} images ({classes} classes); the bfloat16 head through the "
               f"exported float32 graph: {served}"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny workloads (harness check)")
    parser.add_argument("--onednn", action="store_true",
                        help="only compare TensorFlow's oneDNN kernels off and on (~4 min)")
    parser.add_argument("--scale", action="store_true",
                        help="only peak memory of train at two dataset sizes (120 and 960 "
                             "photos of ~1 MB; ~10 min)")
    parser.add_argument("--extraction", action="store_true",
                        help="only the trainer's feature pass against the bare model on the "
                             "same images (two cold runs and one bare pass; ~3 min)")
    parser.add_argument("--precision", action="store_true",
                        help="only the feature pass in float32 vs bfloat16: speed, features "
                             "and validation accuracy (8 classes x 25 images; ~5 min)")
    parser.add_argument("--serving", action="store_true",
                        help="only the serving figures: latency against the network alone, "
                             "batching, bfloat16 serving (trains one model first; ~6 min)")
    parser.add_argument("--signing", metavar="VERSION_DIR", type=Path,
                        help="only measure signing and verification on this version folder")
    args = parser.parse_args()
    per_class, epochs, repeats, n, seconds = (50, 10, 2, 200, 12.0) if not args.quick else \
        (4, 2, 1, 10, 3.0)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    started = time.perf_counter()
    data = WORK / "data"
    subprocess.run([sys.executable, "-m", "trainer", "sample-data", "--output", str(data),
                    "--per-class", str(per_class), "--quiet"], env=ENV, cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    log(f"{2 * per_class} sample images; {os.cpu_count()} CPUs; {platform.processor() or ''}")

    if args.signing:
        figures = bench_signing(args.signing.absolute(), 3)
    elif args.scale:
        figures = bench_scale((12, 96) if args.quick else (120, 960))
    elif args.extraction:
        figures = [bench_extraction(data, statistics.median(
            extraction_seconds(data, i) for i in range(1 if args.quick else 2)), 1)]
    elif args.precision:
        figures = bench_precision(*((3, 6, 2) if args.quick else (8, 25, 10)))
    elif args.onednn:
        figures = bench_onednn(data)
    elif args.serving:
        trainer("train", "--data", str(data), "--model-name", "bench", "--weights", "none",
                "--epochs", str(epochs), "--quiet", "--output", str(WORK / "models"),
                "--cache", str(WORK / "cache-0"), "--version", "100")
        figures = bench_serving(WORK / "models" / "bench" / "100", data, n, seconds)
        figures += bench_bfloat16(per_class, seconds)
    else:
        figures, trainer_extraction = bench_training(data, epochs, repeats)
        # One bare pass of 100 images (~40 s, itself an average over 4 batches) keeps the
        # whole benchmark under 15 minutes on 2 cores.
        figures.insert(1, bench_extraction(data, trainer_extraction, 1))
        figures += bench_serving(WORK / "models" / "bench" / "100", data, n, seconds)
        figures += bench_bfloat16(per_class, seconds)
        figures += bench_signing(WORK / "models" / "bench" / "100", repeats)

    machine = f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
    results = {"machine": machine, "quick": args.quick,
               "wall_time_s": round(time.perf_counter() - started, 1),
               "figures": [asdict(f) for f in figures]}
    (WORK / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(f.name) for f in figures)
    print(f"\n{'figure':<{width}}  {'value':>7}  {'target':<22} met")
    for f in figures:
        print(f"{f.name:<{width}}  {f.value:7.2f}  {f.target:<22} {'yes' if f.met else 'NO'}")
        print(f"{'':<{width}}    {f.detail}")
    print(f"\n{machine}; wall time {results['wall_time_s']:.0f} s; .bench/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
