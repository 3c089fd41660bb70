"""The TensorFlow that tensorflow/serving 2.20.0 runs (TF 2.20), in a virtual environment of
its own inside the project's venv, installed from requirements/tf-serving-runtime.lock
(hashes required). `make test` builds it before the tests start (`python -m
tests.compat.runtime`), so the version-skew test does not install 0.6 GB of wheels inside
the timed run; it is rebuilt only when the lock changes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "tf-serving-runtime.lock"
RUNTIME = Path(sys.prefix) / "tf-serving-runtime"


def serving_runtime_python() -> Path:
    """The runtime's Python, installed first if it is missing or older than the lock."""
    python = RUNTIME / "bin" / "python"
    stamp = RUNTIME / ".lock-sha256"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == digest):
        uv = Path(sys.executable).parent / "uv"
        subprocess.run([str(uv), "venv", "--quiet", "--allow-existing", "--python",
                        sys._base_executable, str(RUNTIME)], check=True, timeout=300)
        subprocess.run([str(uv), "pip", "install", "--quiet", "--require-hashes", "--python",
                        str(python), "-r", str(LOCK)], check=True, timeout=1800)
        stamp.write_text(digest)
    return python


if __name__ == "__main__":
    print(f"TF Serving's TensorFlow: {serving_runtime_python()}")
