"""The feature pass's arithmetic: float32, or bfloat16 where the hardware computes it natively.

VGG16 to fc2 is where a run's time goes, and it is frozen: its features only have to be good
enough to train a softmax head on. In bfloat16 (Keras' `mixed_bfloat16`: weights kept in
float32, matrix products in bfloat16) it ran 2.0x faster on a CPU with AVX512-BF16 (7.3 vs
14.5 images/s) and 5.3x on an H200 (1,620 vs 8,528 images/s), with fc2 features within 0.75%
(mean relative difference) of float32's. `make bench BENCH_ARGS=--precision` compares both on
one machine, speed and validation accuracy side by side.

Only the feature pass changes. Features are stored as float32 either way, under a cache key
that names the precision; the exported graph, which TF Serving runs on whatever hardware
serves it, stays float32; `--no-cache` (the notebook's way) runs float32.
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("float32", "bfloat16")
CHOICES = ("auto", *PRECISIONS)
KERAS_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}

# How far two computations of one image's fc2 features may be apart, relative to the
# vector's largest value, and still be that image's features (the cache spot check, and the
# cross-check of the validation images' entries before publishing): float
# noise in float32 (batching, kernel order); in bfloat16 also a rounding that differs between
# kernels and devices (a cache filled on GPUs, checked on a CPU; 1.2% measured here against
# float32). Another image's features, what a poisoned entry holds, are further apart still.
FEATURE_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}
# CPU flags (/proc/cpuinfo) for native bfloat16 matrix products: AVX512-BF16, Intel AMX.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # NVIDIA Ampere (A100) and newer: H100, H200, L4...


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def choose(requested: str, gpu_capabilities: list[tuple[int, int] | None],
           flags: set[str]) -> tuple[str, str]:
    """The precision to use and why. `auto`: bfloat16 where every device that computes has it
    natively (emulated, it is slower than float32), else float32."""
    if requested != "auto":
        return requested, "--precision"
    if gpu_capabilities:
        if all(c is not None and c >= BF16_MIN_COMPUTE_CAPABILITY for c in gpu_capabilities):
            return "bfloat16", "auto: the GPU computes bfloat16 natively"
        return "float32", ("auto: a GPU older than compute capability "
                           f"{'.'.join(map(str, BF16_MIN_COMPUTE_CAPABILITY))}")
    if native := sorted(flags & set(BF16_CPU_FLAGS)):
        return "bfloat16", f"auto: the CPU computes bfloat16 natively ({', '.join(native)})"
    return "float32", "auto: the CPU has no native bfloat16"
