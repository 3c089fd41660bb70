"""`serving local` started and timed the way tensorflow/serving 2.20 is.

- The same command line: the exact arguments serving/Dockerfile gives tensorflow_model_server
  (model_servers/main.cc flags), and the tensorflow/serving image's MODEL_NAME /
  MODEL_BASE_PATH convention (tools/docker/Dockerfile: the model is
  ${MODEL_BASE_PATH}/${MODEL_NAME}).
- Run timeouts: REST calls run with --rest_api_timeout_in_ms (model_servers/server.h,
  http_rest_api_handler.cc); a run past it is DEADLINE_EXCEEDED, 504
  (common_runtime/direct_session.cc); a batch whose tasks all waited past their deadlines
  fails RESOURCE_EXHAUSTED, 429 (batching/batching_session.cc, ProcessBatch).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time

import pytest
import requests
import yaml

from tests.conftest import REPO, link_version
from tests.integration.conftest import CONFIG_DIR
from tests.integration.savedmodels import write_waiting_model
from tools.model_server import LocalServer

pytestmark = pytest.mark.slow
TF_SERVING_IMAGE_ENV = {"MODEL_BASE_PATH": "/models", "MODEL_NAME": "model"}


def dockerfile_server_args() -> list[str]:
    """The flags serving/Dockerfile's ENTRYPOINT gives tensorflow_model_server."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "serving" / "Dockerfile").read_text())
    [entrypoint] = [line.split(None, 1)[1] for line in text.splitlines()
                    if line.startswith("ENTRYPOINT")]
    args = yaml.safe_load(entrypoint)
    return args[args.index("/usr/bin/tensorflow_model_server") + 1:]


class PlainServer(LocalServer):
    """A LocalServer whose command line is exactly `args` (no --port flags added)."""

    def start(self, wait_for_model=None, timeout=180):
        import os
        import subprocess
        import sys

        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "serving", "local", *self.args],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                        env={**os.environ, **self.env})
        log.close()
        if wait_for_model:
            self.wait_available(wait_for_model, timeout)
        return self


def test_the_dockerfiles_exact_arguments_and_the_images_environment(tiny_model, tmp_path):
    models = tmp_path / "models"
    (models / "classifier").mkdir(parents=True)
    link_version(tiny_model.version_dir, models / "classifier", 1)
    config = tmp_path / "etc"
    config.mkdir()
    for name in ("batching.config", "monitoring.config"):
        (config / name).write_text((CONFIG_DIR / name).read_text())
    # /models/models.config is the puller's; without labels it writes serving/config's
    # (tests/k8s/test_containers.py holds it to that).
    (models / "models.config").write_text((CONFIG_DIR / "models.config").read_text().replace(
        '"/models/classifier"', f'"{models / "classifier"}"'))
    server = PlainServer([], tmp_path / "server.log", env=TF_SERVING_IMAGE_ENV)
    args = []
    for arg in dockerfile_server_args():  # paths and ports aside, exactly these
        arg = arg.replace("/etc/tfserving/", f"{config}/").replace("=/models/", f"={models}/")
        arg = re.sub(r"^--port=\d+$", f"--port={server.grpc_port}", arg)
        arg = re.sub(r"^--rest_api_port=\d+$", f"--rest_api_port={server.rest_port}", arg)
        args.append(arg)
    assert "--enable_batching=true" in args and "--enable_grpc_healthcheck_service=true" in args
    server.args = args
    server.start(wait_for_model="classifier")
    try:
        _, image = tiny_model.files[0]
        response = requests.post(f"{server.rest_url}/v1/models/classifier:predict", timeout=60,
                                 json={"instances": [{"b64": base64.b64encode(image).decode()}]})
        assert response.status_code == 200 and response.json()["predictions"][0]["label"]
        metrics = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10)
        assert ":tensorflow:serving:request_count" in metrics.text
    finally:
        assert server.stop() == 0


def test_model_name_and_base_path_mean_what_they_mean_in_the_image(tiny_model, tmp_path):
    """In the tensorflow/serving image MODEL_BASE_PATH is the parent folder."""
    parent = tmp_path / "models"
    (parent / "tiny").mkdir(parents=True)
    link_version(tiny_model.version_dir, parent / "tiny", 1)
    server = PlainServer([], tmp_path / "server.log",
                         env={"MODEL_NAME": "tiny", "MODEL_BASE_PATH": str(parent)})
    server.args = [f"--port={server.grpc_port}", f"--rest_api_port={server.rest_port}",
                   "--file_system_poll_wait_seconds=1"]
    server.start(wait_for_model="tiny")
    assert server.stop() == 0


def test_rest_run_timeouts_and_queue_expiry_answer_504_and_429(tmp_path):
    """A model whose runs last what the request asks (savedmodels.py): one batch thread, a
    3 s run, and a quick request queued behind it, under a 1 s REST timeout."""
    write_waiting_model(tmp_path / "waiting" / "1")
    config = tmp_path / "batching.config"
    config.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 0 }\n"
                      "num_batch_threads { value: 1 }\n")
    server = LocalServer(["--model-name", "waiting", "--model-base-path",
                          str(tmp_path / "waiting"), "--enable_batching",
                          f"--batching_parameters_file={config}",
                          "--rest_api_timeout_in_ms=1000"], tmp_path / "server.log")
    server.start(wait_for_model="waiting")
    url = f"{server.rest_url}/v1/models/waiting:predict"
    results = {}

    def post(name, seconds):
        results[name] = requests.post(url, json={"instances": [seconds]}, timeout=120)

    try:
        # The 3 s run outlasts the timeout; the quick request waits behind it in the queue.
        slow = threading.Thread(target=post, args=("slow", 3.0))
        slow.start()
        time.sleep(0.3)
        post("queued", 0.0)
        slow.join()
        assert results["slow"].status_code == 504, results["slow"].text[:300]
        assert json.loads(results["slow"].text) == {
            "error": "Timed out waiting for notification"}
        assert results["queued"].status_code == 429, results["queued"].text[:300]
        assert results["queued"].json() == {
            "error": "Run() timeout exceeded while waiting in batching queue"}
        # Alone and quick, the same request succeeds, once the 3 s batch (which runs on
        # after its request timed out, as in TF Serving) has left the batch thread.
        deadline = time.monotonic() + 60
        while True:
            quick = requests.post(url, json={"instances": [0.0]}, timeout=60)
            if quick.status_code == 200 or time.monotonic() > deadline:
                break
            assert quick.status_code in (429, 504), quick.text[:300]
            time.sleep(0.5)
        assert quick.status_code == 200, quick.text[:300]
        assert quick.json() == {"predictions": [0.0]}
    finally:
        assert server.stop() == 0
