"""`make demo`: the whole system end to end on one machine, on embedded defaults.

Starts a real S3 store (SeaweedFS) on loopback, writes a sample dataset into it, trains and
publishes a model version, pulls it with the puller, serves it with `serving local`, and
classifies held-out images over gRPC and REST. Every step is the real CLI a user would run;
the commands are printed as they run. Everything started is stopped at the end, also on
Ctrl-C or failure.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tools.model_server import LocalServer
from tools.seaweed import SeaweedFS

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".demo"
MODEL = "shapes"
# Keras' own download location for the VGG16 ImageNet weights (keras.applications.vgg16).
IMAGENET_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{IMAGENET_FILE}"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def imagenet_weights_available() -> bool:
    """Already in Keras' cache, or downloadable right now."""
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    if (keras_home / "models" / IMAGENET_FILE).is_file():
        return True
    try:
        request = urllib.request.Request(IMAGENET_URL, method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


class Demo:
    def __init__(self) -> None:
        WORK.mkdir(exist_ok=True)
        self.store = SeaweedFS(WORK / "s3", access_key="demo-" + secrets.token_hex(4),
                               secret_key=secrets.token_hex(16),
                               serving_key=("demo-serving-" + secrets.token_hex(4),
                                            secrets.token_hex(16)))
        self.server: LocalServer | None = None
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        # Paths below the repository are shown and passed relative to it (the steps run
        # there), so the transcript is the same on every machine.
        args = tuple(a.relative_to(REPO) if isinstance(a, Path) and a.is_relative_to(REPO)
                     else a for a in args)
        # `trainer` and `serving` are console scripts; other modules are shown as run.
        shown = ("python", "-m", *args) if "." in str(args[0]) else args
        print(f"$ {' '.join(shlex.quote(str(a)) for a in shown)}", flush=True)
        return subprocess.run([sys.executable, "-m", *map(str, args)], env=env or self.env,
                              cwd=REPO, check=True)

    def main(self) -> None:
        started = time.perf_counter()
        banner("1/6 object store: SeaweedFS S3 on loopback")
        self.store.start()
        for bucket in ("datasets", "models"):
            self.store.create_bucket(bucket)
        # Nothing S3-related from the user's shell (an AWS_ENDPOINT_URL_S3 for MinIO, a
        # profile, a session token...): every step talks only to the demo's own store.
        self.env = self.store.client_env(self.env)
        print(f"S3 endpoint {self.store.endpoint} (buckets: datasets, models; "
              f"data in {self.store.data_dir.relative_to(REPO)})")

        banner("2/6 sample dataset, and held-out images the model never sees")
        data = "s3://datasets/shapes"
        holdout = WORK / "holdout"
        self.run("trainer", "sample-data", "--output", data, "--classes", "2",
                 "--per-class", "50", "--quiet")
        self.run("trainer", "sample-data", "--output", holdout, "--classes", "2",
                 "--per-class", "3", "--seed", "99", "--quiet")

        banner("3/6 training and publishing to S3")
        weights, epochs = "imagenet", "10"
        if not imagenet_weights_available():
            # Random fc2 features are weak and small, so the head needs more passes; they
            # cost about a second each, the features being computed once.
            weights, epochs = "none", "30"
            print("\n" + "!" * 78 + "\n!! ImageNet weights are not available (no network and "
                  "none cached):\n!! training on RANDOM VGG16 weights (--weights none, "
                  "--epochs 30). The\n!! pipeline is the same; with real weights the features "
                  "are far better.\n" + "!" * 78 + "\n", flush=True)
        report = WORK / "report"
        # The trainer signs what it publishes; the puller installs only what this key signed.
        keys = WORK / "keys"
        signing_key, verify_key = keys / "signing-key.pem", keys / "verify-key.pub"
        self.run("contract.signing", "--private", signing_key, "--public", verify_key)
        self.run("trainer", "train", "--data", data, "--output", "s3://models",
                 "--model-name", MODEL, "--weights", weights, "--epochs", epochs,
                 "--cache", WORK / "cache", "--report-dir", report, "--signing-key",
                 signing_key, "--quiet")

        banner("4/6 pulling signed, verified versions to the serving folder")
        models = WORK / "models" / MODEL
        # With the store's read-only serving identity, as the deployments run the puller.
        self.run("serving", "pull", "--source", f"s3://models/{MODEL}", "--dest", models,
                 "--verify-key", verify_key, "--quiet",
                 env={**self.env, **self.store.serving_env()})

        banner("5/6 serving (development server: TF Serving's gRPC and REST API)")
        self.server = LocalServer(
            ["--model-name", MODEL, "--model-base-path", str(models),
             "--monitoring-config-file", str(REPO / "serving/config/monitoring.config")],
            WORK / "server.log")
        print(f"$ serving local --model-name {MODEL} --model-base-path "
              f"{models.relative_to(REPO)} --port {self.server.grpc_port} --rest-api-port "
              f"{self.server.rest_port} ...   (log: {self.server.log_path.relative_to(REPO)})",
              flush=True)
        self.server.start(wait_for_model=MODEL)
        self.run("serving", "status", "--grpc", self.server.grpc_target, "--model-name", MODEL)

        banner("6/6 classifying the held-out images")
        images = sorted(str(p.relative_to(REPO)) for p in holdout.rglob("*.*"))
        self.run("serving", "classify", "--grpc", self.server.grpc_target, "--model-name",
                 MODEL, "--top-k", "2", *images)
        self.run("serving", "classify", "--rest", self.server.rest_url, "--model-name", MODEL,
                 "--json", images[0])

        banner("done")
        print(f"report:   {report.relative_to(REPO)}/ (metrics.json, training_curves.png, "
              "confusion_matrix.png, config.json)")
        print(f"model:    s3://models/{MODEL}/<version>/ in the demo store, pulled to "
              f"{models.relative_to(REPO)}/")
        print(f"wall time {time.perf_counter() - started:.0f} s")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.store.stop()


def main() -> int:
    demo = Demo()
    try:
        demo.main()
    except subprocess.CalledProcessError as e:
        print(f"\ndemo failed: step exited with {e.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
