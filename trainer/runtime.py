"""What the run executes on: the devices TensorFlow sees, and threads sized to the container.

TensorFlow sizes its thread pools from the node's cores. In a container limited to 4 CPUs on a
64-core node that means 64 busy threads sharing a 4-CPU quota: throttling and stalls. The
limit is read from the container's cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), which is
what Kubernetes' `resources.limits.cpu` and `docker run --cpus` set.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from contract.errors import EnvironmentFailure

log = logging.getLogger(__name__)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """Whole CPUs the container may use (rounded up), or None when it is not limited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else max(1, math.ceil(quota / period))


@dataclass(frozen=True)
class Runtime:
    devices: list[str]  # e.g. ["CPU:0", "GPU:0"]
    threads: int | None  # TensorFlow's intra/inter-op pool size, None: TensorFlow's default
    threads_from: str
    precision: str = "float32"  # the feature pass's (trainer.precision)
    precision_from: str = "default"


def configure(require_gpu: bool, cgroup_root: Path = CGROUP_ROOT,
              precision: str = "float32") -> Runtime:
    """Size TensorFlow's thread pools to the CPU limit, list the devices, refuse to run on
    the CPU when a GPU was required (a CUDA mismatch otherwise trains on CPU silently), and
    resolve the feature pass's precision (`auto`: per device, trainer.precision).
    Must run before TensorFlow executes its first op."""
    import tensorflow as tf

    from trainer.precision import choose, cpu_flags

    cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    threads, source = None, f"TensorFlow's default ({cores} cores)"
    if limit is not None and limit < cores:
        threads, source = limit, f"the container's CPU limit ({limit} of {cores} cores)"
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # a second run in one process: TensorFlow's pools already exist
            threads, source = None, "already set by an earlier run in this process"
    physical = tf.config.list_physical_devices()
    devices = [d.name.removeprefix("/physical_device:") for d in physical]
    gpus = [d for d in devices if d.startswith("GPU")]
    log.info("devices: %s; threads: %s", ", ".join(devices), source)
    if require_gpu and not gpus:
        raise EnvironmentFailure(
            "--require-gpu: TensorFlow sees no GPU (devices: " + ", ".join(devices) + "); "
            "check the NVIDIA driver and CUDA libraries against TensorFlow "
            f"{tf.__version__}'s, or run without --require-gpu to train on the CPU")
    capabilities = [tf.config.experimental.get_device_details(d).get("compute_capability")
                    for d in physical if d.device_type == "GPU"]
    chosen, why = choose(precision, capabilities, cpu_flags())
    log.info("feature pass precision: %s (%s)", chosen, why)
    return Runtime(devices, threads, source, chosen, why)
