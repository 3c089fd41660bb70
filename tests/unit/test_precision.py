"""The feature pass's precision: what `auto` picks on which device, and the cache key."""

from __future__ import annotations

import pytest

from contract.storage import open_location
from trainer.features import FeatureCache
from trainer.precision import choose, cpu_flags

SAPPHIRE_RAPIDS = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
SKYLAKE = {"avx2", "avx512f", "fma"}


@pytest.mark.parametrize("gpus, flags, expected", [
    ([(9, 0)], SKYLAKE, "bfloat16"),  # H100/H200: the GPU decides, not the host CPU
    ([(8, 0), (8, 6)], set(), "bfloat16"),  # A100 + A10
    ([(7, 0)], SAPPHIRE_RAPIDS, "float32"),  # V100: no bfloat16 tensor cores
    ([(9, 0), (7, 5)], set(), "float32"),  # mixed nodes: the slowest device decides
    ([None], set(), "float32"),  # a GPU that does not say what it is
    ([], SAPPHIRE_RAPIDS, "bfloat16"),
    ([], {"avx512_bf16"}, "bfloat16"),  # Cooper Lake, Zen 4
    ([], SKYLAKE, "float32"),  # emulated bfloat16 is slower than float32
    ([], set(), "float32"),
])
def test_auto_picks_bfloat16_only_where_it_is_native(gpus, flags, expected):
    precision, why = choose("auto", gpus, flags)
    assert precision == expected and why.startswith("auto: ")


@pytest.mark.parametrize("requested", ["float32", "bfloat16"])
def test_an_explicit_precision_is_kept_on_any_device(requested):
    for gpus, flags in (([(7, 0)], set()), ([], SAPPHIRE_RAPIDS), ([], set())):
        assert choose(requested, gpus, flags) == (requested, "--precision")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()  # not Linux: float32, no error


def test_each_precision_has_its_own_cache_entries(tmp_path):
    location = open_location(str(tmp_path))
    keys = {p: FeatureCache(location, "ab" * 32, p).key("cd" * 32)
            for p in ("float32", "bfloat16")}
    assert keys["float32"] != keys["bfloat16"]
    assert keys["bfloat16"].startswith("abababababababab-") and \
        keys["bfloat16"].split("/")[0].endswith("-bfloat16")
