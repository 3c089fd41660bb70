"""Commands that load TensorFlow show none of its native start-up noise (the absl warning,
the oneDNN and CUDA banners, cuInit errors) unless --verbose; their own errors still show."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cuda drivers", "cuInit",
         "cpu_feature_guard")


def run(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # no TF_CPP_MIN_LOG_LEVEL set
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def test_the_client_prints_only_its_own_line():
    quiet = run("serving", "status", "--grpc", "127.0.0.1:1", "--model-name", "m",
                "--timeout", "2")
    assert quiet.returncode == 3
    [line] = quiet.stderr.splitlines()
    assert line.startswith("error: model server at 127.0.0.1:1")
    assert not any(n in quiet.stderr for n in NOISE), quiet.stderr


def test_the_trainer_keeps_its_errors_and_drops_the_banner(tmp_path):
    proc = run("trainer", "train", "--data", str(tmp_path / "nope"), "--output",
               str(tmp_path / "m"), "--model-name", "m", "--weights", "none", "--require-gpu",
               "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --data {tmp_path / 'nope'}: location does not exist or is empty"]
    data = tmp_path / "data"
    from trainer.sample_data import write_sample_data

    write_sample_data(str(data), num_classes=2, per_class=2, seed=1, quiet=True)
    gpu = run("trainer", "train", "--data", str(data), "--output", str(tmp_path / "m"),
              "--model-name", "m", "--weights", "none", "--require-gpu", "--quiet")
    assert gpu.returncode == 3  # TensorFlow was loaded and asked for a GPU: still quiet
    assert not any(n in gpu.stderr for n in NOISE), gpu.stderr
    assert "error: --require-gpu: TensorFlow sees no GPU" in gpu.stderr
    verbose = run("trainer", "train", "--data", str(data), "--output", str(tmp_path / "m"),
                  "--model-name", "m", "--weights", "none", "--require-gpu", "--quiet",
                  "--verbose")
    assert verbose.returncode == 3 and any(n in verbose.stderr for n in NOISE)


def test_the_client_commands_never_load_tensorflow():
    """serving classify/status/metadata build TF Serving's messages without TensorFlow
    (serving/protos.py): seconds of start-up saved on every call."""
    code = ("import runpy, sys\n"
            "sys.argv = ['serving', 'status', '--grpc', '127.0.0.1:1', '--model-name', 'm',"
            " '--timeout', '1']\n"
            "try:\n    runpy.run_module('serving', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print(code, sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'tensorflow_serving', 'keras'}), file=sys.__stdout__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.stdout.strip() == "3 []", proc.stdout + proc.stderr[-2000:]
