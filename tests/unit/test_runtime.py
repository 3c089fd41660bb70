"""The trainer sizes TensorFlow's thread pools from the container's CPU limit (cgroup)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.runtime import cgroup_cpu_limit


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("400000 100000\n", 4),   # limits.cpu: 4
    ("150000 100000\n", 2),   # 1.5 CPUs: rounded up, as the downward API's divisor 1 does
    ("50000 100000\n", 1),    # 500m
    ("max 100000\n", None),   # no limit
])
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, expected):
    write(tmp_path, "cpu.max", cpu_max)
    assert cgroup_cpu_limit(tmp_path) == expected


def test_cgroup_v1_quota_and_period(tmp_path):
    write(tmp_path, "cpu/cpu.cfs_quota_us", "300000\n")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    write(tmp_path, "cpu.max", "garbage")
    assert cgroup_cpu_limit(tmp_path) is None


def test_tensorflow_gets_the_limit_when_it_is_below_the_cores(tmp_path):
    """In a fresh process (TensorFlow's pools are fixed once it runs its first op)."""
    import os
    import subprocess
    import sys

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs at least 2 cores to show a limit below them")
    write(tmp_path, "cpu.max", "100000 100000\n")  # 1 CPU
    code = ("from pathlib import Path; from trainer.runtime import configure; "
            f"r = configure(False, Path({str(tmp_path)!r})); import tensorflow as tf; "
            "print(r.threads, tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads(), r.devices)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:3] == ["1", "1", "1"]
    assert "CPU:0" in proc.stdout
