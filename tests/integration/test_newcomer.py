"""What a new user hits in the first hour: each mistake gets one line that says what to do."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from serving.cli import cli as serving_cli
from serving.layout import base_path_problem
from tests.conftest import DATA_BUCKET, MODELS_BUCKET, REPO, link_version, run_cli, unique
from trainer.cli import cli as trainer_cli
from trainer.sample_data import write_sample_data


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


# -- a wrong base path ----------------------------------------------------------------------

@pytest.fixture
def model_tree(tmp_path, tiny_model) -> Path:
    """models/tiny/1/ as the trainer leaves it."""
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    link_version(tiny_model.version_dir, tmp_path / "models" / "tiny", 1)
    return tmp_path / "models"


def test_the_base_path_hint_names_what_was_found(model_tree, tmp_path):
    assert base_path_problem(model_tree / "tiny", "--model-base-path") is None
    assert base_path_problem(model_tree, "--model-base-path") == (
        f"found tiny/ in {model_tree}, which holds versions: did you mean --model-base-path "
        f"{model_tree / 'tiny'}?")
    assert base_path_problem(model_tree / "tiny" / "1", "--model-base-path") == (
        f"{model_tree / 'tiny' / '1'} is itself a version (it has saved_model.pb): point "
        f"--model-base-path at its parent, {model_tree / 'tiny'}")
    (tmp_path / "empty").mkdir()
    assert "holds no numbered version folders (found: nothing)" in base_path_problem(
        tmp_path / "empty", "--model-base-path")
    assert base_path_problem(tmp_path / "nope", "--dest") == f"{tmp_path / 'nope'} does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serving_local_says_where_it_looked_while_it_waits(model_tree, tmp_path, stop):
    """...and stops as cleanly as a serving one, while it waits: Ctrl-C or SIGTERM, exit 0."""
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving", "local", "--model-name",
                                 "tiny", "--model-base-path", str(model_tree), "--port", "0",
                                 "--rest-api-port", "0"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while "did you mean" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.3)
    finally:
        proc.send_signal(stop)
        code = proc.wait(30)
    assert code == 0, log.read_text()[-2000:]
    assert "Aborted!" not in log.read_text() and "Traceback" not in log.read_text()
    [line] = [json.loads(x) for x in log.read_text().splitlines()
              if x.startswith("{") and "waiting for the first version" in x][:1]
    assert line["message"] == (
        f"waiting for the first version of tiny under {model_tree}: found tiny/ in "
        f"{model_tree}, which holds versions: did you mean --model-base-path "
        f"{model_tree / 'tiny'}?")


def test_the_puller_refuses_a_version_folder_or_the_folder_above_as_dest(model_tree):
    for dest, hint in ((model_tree / "tiny" / "1", "is itself a version"),
                       (model_tree, f"did you mean --dest {model_tree / 'tiny'}?")):
        proc = subprocess.run([sys.executable, "-m", "serving", "pull", "--source",
                               str(model_tree / "tiny"), "--dest", str(dest), "-q"],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 2
        assert hint in one_error_line(proc.stderr)


# -- busy ports -----------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["--port", "--rest-api-port"])
def test_a_busy_port_is_one_line_and_exit_2(which, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        other = "--rest-api-port" if which == "--port" else "--port"
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "serving", "local", "--model-name", "m",
                               "--model-base-path", str(tmp_path), which, str(busy), other,
                               "0"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    what = "gRPC" if which == "--port" else "REST"
    assert f"{what} port 127.0.0.1:{busy} is already in use" in line and which in line
    assert time.monotonic() - started < 30  # refused before TensorFlow loads


def test_the_server_starts_without_keras_and_what_keras_pulls_in(server):
    """TensorFlow's import would load Keras 3, and Keras scikit-learn and matplotlib: 2.4 s
    of every `serving local` start, for a server that never uses them."""
    maps = Path(f"/proc/{server.process.pid}/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to see what a process has loaded")
    loaded = maps.read_text()
    assert "_pywrap_tensorflow" in loaded  # TensorFlow is there, as it must be
    for package in ("sklearn", "matplotlib"):
        assert f"/{package}/" not in loaded, package


# -- the client -----------------------------------------------------------------------------

def test_rest_takes_host_port_like_grpc(server):
    host_port = server.rest_url.removeprefix("http://")
    result = CliRunner().invoke(serving_cli, ["status", "--rest", host_port, "--model-name",
                                              "tiny"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(serving_cli, ["status", "--rest", "ftp://x:1", "--model-name",
                                              "tiny"])
    assert result.exit_code == 2 and "expected host:port or http(s)://host:port" in \
        result.output


@pytest.mark.parametrize("transport", ["--grpc", "--rest"])
def test_a_wrong_model_name_says_which_models_are_served(server, transport):
    where = server.grpc_target if transport == "--grpc" else server.rest_url
    result = CliRunner().invoke(serving_cli, ["status", transport, where, "--model-name",
                                              "shapes"])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert "Could not find any versions of model shapes" in line or "shapes" in line
    assert "(this server serves: tiny)" in line


def test_help_shows_the_environment_variables():
    runner = CliRunner()
    train = " ".join(runner.invoke(trainer_cli, ["train", "--help"]).output.split())
    for var in ("DATA_URI", "MODELS_URI", "MODEL_NAME", "FEATURE_CACHE", "REQUIRE_GPU"):
        assert f"env var: {var}" in train, var
    pull = " ".join(runner.invoke(serving_cli, ["pull", "--help"]).output.split())
    for var in ("MODEL_SOURCE", "MODEL_DEST", "PULL_WAIT_TIMEOUT"):
        assert f"env var: {var}" in pull, var


# -- your own photos into the compose store --------------------------------------------------

@pytest.mark.s3
def test_upload_puts_a_folder_in_the_store_and_skips_what_is_there(seaweed, tmp_path):
    photos = tmp_path / "photos"
    write_sample_data(str(photos), num_classes=2, per_class=3, seed=4, quiet=True)
    (photos / ".DS_Store").write_bytes(b"finder junk")
    to = f"s3://{DATA_BUCKET}/{unique('mine')}"
    result = CliRunner().invoke(trainer_cli, ["upload", "--data", str(photos), "--to", to, "-q"])
    assert result.exit_code == 0, result.output
    assert "uploaded 6 files" in result.output and "0 already there" in result.output
    (photos / "circle" / "new.png").write_bytes((photos / "circle").glob("*.png").__next__()
                                                .read_bytes())
    again = CliRunner().invoke(trainer_cli, ["upload", "--data", str(photos), "--to", to, "-q"])
    assert again.exit_code == 0 and "uploaded 1 files" in again.output
    assert "6 already there" in again.output
    from contract.storage import open_location

    names = [f.path for f in open_location(to).list_files()]
    assert len(names) == 7 and not any(".DS_Store" in n for n in names)
    missing = CliRunner().invoke(trainer_cli, ["upload", "--data", str(tmp_path / "nope"),
                                               "--to", to])
    assert missing.exit_code == 2


@pytest.mark.s3
def test_upload_with_read_only_credentials_is_one_line_and_exit_3(seaweed, tmp_path):
    """The puller's identity may read the models bucket but not write it."""
    photos = tmp_path / "photos"
    write_sample_data(str(photos), num_classes=2, per_class=1, seed=4, quiet=True)
    proc = run_cli("trainer", "upload", "--data", str(photos), "--to",
                   f"s3://{MODELS_BUCKET}/{unique('denied')}", "-q", env=seaweed.serving_env())
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert one_error_line(proc.stderr).startswith("error: cannot upload to s3://")
    assert "access denied by the object store (AccessDenied)" in proc.stderr


# -- decoder noise and the progress bar --------------------------------------------------------

@pytest.mark.slow
def test_the_console_script_keeps_decoder_noise_out_of_the_output(tiny_args, tmp_path):
    """Run as `trainer` (the console script, not python -m): TensorFlow's decoder warnings
    ("Premature end of JPEG data") stay out; the file is listed in the report instead."""
    import io

    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    write_sample_data(str(data), num_classes=2, per_class=3, seed=8, quiet=True)
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    (data / "circle" / "cut.jpg").write_bytes(buf.getvalue()[:4000])
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                            "LOG_FORMAT")}
    env["PYTHONPATH"] = str(REPO)  # this checkout's code, whichever the venv was made from
    # stderr on a pseudo-terminal, as a person running it sees it: progress bars and
    # readable log lines are for terminals only.
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, cols
    proc = subprocess.Popen([str(Path(sys.executable).parent / "trainer"), "train", "--data",
                             str(data), "--output", str(tmp_path / "models"), "--model-name",
                             "m", *tiny_args, "--epochs", "1", "--cache",
                             str(tmp_path / "cache"), "--report-dir", str(tmp_path / "report")],
                            stdout=subprocess.PIPE, stderr=terminal, text=True, cwd=tmp_path,
                            env=env)
    os.close(terminal)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    proc.wait(600)
    stderr = seen.decode(errors="replace").replace("\r\n", "\n")
    assert proc.returncode == 0, stderr[-3000:]
    assert "Premature end of JPEG data" not in stderr
    # The progress bar's lines are not broken by the decoder's. (TensorFlow's start-up
    # banner, printed before its logging is set up, is not what this checks.)
    bar = [x for x in stderr.splitlines() if "extracting fc2 features" in x]
    assert bar and all(x.lstrip("\r").startswith("extracting fc2 features") for x in bar)
    # Log lines on a terminal are text, not JSON.
    assert " INFO trainer." in stderr and '{"time"' not in stderr
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert {"path": "circle/cut.jpg",
            "reason": "cannot be decoded by TensorFlow (corrupt or truncated)"} in \
        report["skipped"]


# -- a store without Docker -------------------------------------------------------------------

@pytest.mark.s3
def test_make_s3_runs_a_store_and_prints_how_to_use_it(tmp_path):
    """`python -m tools.seaweed` (`make s3`): the export lines it prints are all a shell
    needs to upload to it; Ctrl-C stops the store, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "tools.seaweed", "--dir", str(tmp_path / "s3"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        lines = [proc.stdout.readline() for _ in range(5)]
        assert lines[0].startswith("# SeaweedFS S3 at http://127.0.0.1:"), lines
        exports = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines[1:])
        assert sorted(exports) == ["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_REGION",
                                   "AWS_SECRET_ACCESS_KEY"]
        photos = tmp_path / "photos"
        write_sample_data(str(photos), num_classes=2, per_class=1, seed=4, quiet=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        upload = run_cli("trainer", "upload", "--data", str(photos), "--to",
                         "s3://datasets/mine", "-q", env={**env, **exports})
        assert upload.returncode == 0, upload.stderr
        assert "uploaded 2 files" in upload.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, proc.stderr.read()[-2000:]
    assert not [p for p in _processes() if str(tmp_path / "s3") in p], "weed left running"


def _processes() -> list[str]:
    """Every process's command line (Linux /proc)."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # ended meanwhile
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


@pytest.mark.s3
def test_a_store_dies_with_the_process_that_started_it(tmp_path):
    """A test run or demo killed outright (SIGKILL: no teardown) leaves no store behind."""
    script = ("import sys, time; from pathlib import Path; from tools.seaweed import SeaweedFS; "
              "s = SeaweedFS(Path(sys.argv[1]), access_key='orphan', secret_key='orphan-key'); "
              "s.start(); print(s.process.pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "store")],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    weed = int(parent.stdout.readline())
    assert Path(f"/proc/{weed}").exists()
    parent.kill()
    parent.wait(30)
    deadline = time.monotonic() + 30
    while _alive(weed):
        assert time.monotonic() < deadline, "the store outlived the process that started it"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (dead) parent's reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# -- labels on a local server, no second copy ---------------------------------------------------

@pytest.mark.slow
def test_a_rollback_shows_on_a_local_server_serving_the_trainers_folder(tiny_model, tmp_path):
    """README, "Labels on a local server": the puller in place (--dest = --source) writes
    only models.config; the server follows label moves; no version is copied or removed."""
    from serving.client import GrpcClient
    from tests.integration.test_reliability import publish_tiny
    from tools.model_server import LocalServer

    models = tmp_path / "models"
    for version in (1, 2, 3):
        publish_tiny(tiny_model, tmp_path, str(models), version)
    source = str(models / "tiny")
    config = str(models / "tiny.config")

    def serving(*args: str) -> None:
        run_cli("serving", *args, check=True)

    serving("label", "set", "--source", source, "stable=2")
    serving("pull", "--source", source, "--dest", source, "--model-config", config, "-q")
    log = (tmp_path / "puller.log").open("w")
    puller = subprocess.Popen([sys.executable, "-m", "serving", "pull", "--source", source,
                               "--dest", source, "--model-config", config, "--watch",
                               "--interval", "0.3"], stdout=log, stderr=subprocess.STDOUT,
                              cwd=REPO)
    server = LocalServer(["--model-config-file", config,
                          "--model_config_file_poll_wait_seconds", "0.5",
                          "--allow_version_labels_for_unavailable_models=true"],
                         tmp_path / "server.log").start(wait_for_model="tiny")
    try:
        with GrpcClient(server.grpc_target) as client:
            def stable() -> int:
                return client.metadata("tiny", label="stable")["version"]

            assert stable() == 2
            def logs() -> str:
                return (f"config:\n{Path(config).read_text()}\npuller:\n"
                        f"{(tmp_path / 'puller.log').read_text()[-3000:]}\nserver:\n"
                        f"{server.log_text()[-3000:]}")

            serving("label", "set", "--source", source, "stable=3")
            deadline = time.monotonic() + 60
            while stable() != 3:
                assert time.monotonic() < deadline, "the label never moved\n" + logs()
                time.sleep(0.2)
            serving("rollback", "--source", source)
            while stable() != 2:
                assert time.monotonic() < deadline, "the rollback never showed\n" + logs()
                time.sleep(0.2)
    finally:
        assert server.stop() == 0
        puller.send_signal(signal.SIGTERM)
        assert puller.wait(60) == 0
    assert sorted(p.name for p in (models / "tiny").iterdir() if p.is_dir()) == ["1", "2", "3"]
    assert not [p for p in (models / "tiny").iterdir() if p.name.startswith(".")]


def test_the_puller_in_place_needs_a_model_config_and_takes_no_verify_key(tmp_path, model_tree):
    source = str(model_tree / "tiny")
    proc = run_cli("serving", "pull", "--source", source, "--dest", source, "-q")
    assert proc.returncode == 2 and "give --model-config FILE" in one_error_line(proc.stderr)


# -- stopping a test run -----------------------------------------------------------------------

STOPPED_RUN = '''
import pathlib, time, pytest

@pytest.fixture
def marked(seaweed, tmp_path):
    yield
    pathlib.Path(MARK).write_text("torn down")

def test_waits(marked, seaweed):
    print(seaweed.process.pid, flush=True)
    pathlib.Path(READY).write_text(str(seaweed.process.pid))
    time.sleep(300)
'''


@pytest.mark.s3
def test_sigterm_stops_a_test_run_with_teardown(tmp_path):
    """CI cancelling a job (SIGTERM): fixtures tear down, the store stops, exit 2."""
    ready, mark = tmp_path / "ready", tmp_path / "mark"
    test = tmp_path / "test_stopped.py"
    test.write_text(f"MARK = {str(mark)!r}\nREADY = {str(ready)!r}\n{STOPPED_RUN}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q",
                             "-p", "no:cacheprovider", "-o", "addopts=", str(test),
                             "--rootdir", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    weed = int(ready.read_text())
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2, output  # pytest's "interrupted"
    assert re.search(r"^\[0:\d\d\] .*test_stopped\.py$", output, re.M), output  # progress
    assert mark.read_text() == "torn down"
    assert not _alive(weed)
