"""`trainer extract`: one shard of the feature pass, into the shared feature cache.

The dataset is listed (names only) and each image is assigned to a shard by a hash of its
path: every shard computes the same assignment, and adding images never moves the others.
A shard reads only its own images, looks them up in the content-addressed cache, computes
the missing ones through the base (VGG16) and writes each entry atomically as it comes, so a shard
killed mid-way and run again computes only what is still missing, and several shards (the
indexes of a Kubernetes Indexed Job) can run at once. A later `trainer train` on the same
data finds every feature in the cache and trains the head on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass

from contract.errors import InputError
from contract.storage import open_location

log = logging.getLogger(__name__)
SHARD_COUNT_ENV = "SHARD_COUNT"  # with JOB_COMPLETION_INDEX (set by an Indexed Job)
INDEX_ENV = "JOB_COMPLETION_INDEX"


def shard_of(path: str, count: int) -> int:
    """The shard an image belongs to: a hash of its path within the dataset, so the choice
    is the same in every process and stable as images are added or removed."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % count


def parse_shard(text: str | None, environ=os.environ) -> tuple[int, int]:
    """`--shard I/N` (0 <= I < N); without it, JOB_COMPLETION_INDEX and SHARD_COUNT from the
    environment (an Indexed Job's pod needs no wrapper); without those, 0/1 (everything)."""
    if text is None:
        index, count = environ.get(INDEX_ENV), environ.get(SHARD_COUNT_ENV)
        if index is None and count is None:
            return 0, 1
        if index is None or count is None:
            raise InputError(f"{INDEX_ENV} and {SHARD_COUNT_ENV} go together (got "
                             f"{INDEX_ENV}={index!r}, {SHARD_COUNT_ENV}={count!r})")
        text, where = f"{index}/{count}", f"{INDEX_ENV}/{SHARD_COUNT_ENV}"
    else:
        where = "--shard"
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not \
            0 <= int(index) < int(count):
        raise InputError(f"{where} {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


@dataclass
class ExtractResult:
    index: int
    count: int
    images: int  # this shard's usable images
    from_cache: int
    computed: int
    skipped: list  # this shard's files that are not usable images, with the reason
    seconds: float
    precision: str = "float32"


def preflight(data: str, cache_uri: str, base_model: str, weights: str | None) -> None:
    """Seconds, before TensorFlow: the data is there, the cache writable, the base found."""
    from trainer.preflight import about, check_base_files

    if open_location(data).is_empty():
        raise InputError(f"--data {data}: location does not exist or is empty")
    about("--cache", cache_uri, open_location(cache_uri).check_writable)
    check_base_files(base_model, weights)


def run_extract(data: str, cache_uri: str, index: int, count: int, weights: str | None,
                seed: int, batch_size: int, quiet: bool = False, require_gpu: bool = False,
                precision: str = "auto", base_model: str = "vgg16") -> ExtractResult:
    from trainer.data import load_images
    from trainer.features import FeatureCache, extract_features
    from trainer.model import build_base
    from trainer.runtime import configure

    started = time.perf_counter()
    runtime = configure(require_gpu, precision=precision)
    images = load_images(data, quiet=quiet, select=lambda p: shard_of(p, count) == index)
    log.info("shard %d/%d: %d images of %s (%d files skipped)", index, count, len(images),
             data, len(images.skipped))
    base = build_base(weights, seed, base_model)
    cache = FeatureCache.of(open_location(cache_uri), base, runtime.precision)
    features = extract_features(images, base, cache, batch_size, quiet)
    usable = features.images
    log.info("shard %d/%d: features %d from cache, %d computed; %d files skipped", index,
             count, features.from_cache, features.computed, len(usable.skipped))
    return ExtractResult(index, count, len(usable), features.from_cache, features.computed,
                         usable.skipped, time.perf_counter() - started, runtime.precision)
