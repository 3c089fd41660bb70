"""fc2 features, computed once per image and kept in a content-addressed cache.

The frozen base is deterministic, so an image's fc2 features depend only on its bytes, the
weights, the preprocessing and the precision of the pass (trainer.precision). The cache key
is exactly that (the weights' fingerprint covers every tensor's shape, so another base is
another namespace): `<cache>/<weights sha256[:16]>-<preprocessing version>-<precision>/
<image sha256[:2]>/<image sha256>.npy`; entries are float32 whatever the precision.
One entry per image, each written atomically, so several workers (for example the shards of
a Kubernetes Indexed Job) can fill the same cache in parallel and an interrupted run leaves
only complete entries behind.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from contract.errors import GateNotMet
from contract.storage import TRANSFER_WORKERS, Location
from trainer.data import Contents, ImageSet, Skipped, take
from trainer.model import FEATURE_DIM, BaseModel, feature_function
from trainer.precision import FEATURE_TOLERANCE
from trainer.preprocessing import (
    PREPROCESSING_VERSION,
    as_graph_code,
    decode_and_resize,
    preprocess_image_bytes,
    traced_once,
)

UNDECODABLE = "cannot be decoded by TensorFlow (corrupt or truncated)"


class FeatureCache:
    """Reads and writes fc2 feature vectors keyed by image content."""

    def __init__(self, location: Location, weights_sha256: str, precision: str = "float32",
                 feature_dim: int = FEATURE_DIM):
        self.location = location
        self.precision = precision
        self.feature_dim = feature_dim
        # Every valid entry has exactly this many bytes: anything else is refused before it
        # is parsed (a 144-byte .npy may declare a shape of 2**40 and ask NumPy for terabytes).
        self.entry_bytes = _entry_bytes(feature_dim)
        self.namespace = f"{weights_sha256[:16]}-{PREPROCESSING_VERSION}-{precision}"

    def key(self, image_sha256: str) -> str:
        return f"{self.namespace}/{image_sha256[:2]}/{image_sha256}.npy"

    def get_many(self, digests: list[str]) -> dict[str, np.ndarray]:
        """Valid cached vectors for the given image hashes; corrupt entries count as misses."""
        found = {}
        entries = self.location.read_many([self.key(d) for d in digests])
        for digest, (_, data) in zip(digests, entries, strict=True):
            vector = self._decode(data)
            if vector is not None:
                found[digest] = vector
        return found

    def put(self, image_sha256: str, vector: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        self.location.write_bytes(self.key(image_sha256), buf.getvalue())


    @classmethod
    def of(cls, location: Location, base: BaseModel, precision: str = "float32"
           ) -> FeatureCache:
        """The cache of `base`'s features: its weights name the namespace, its fc2 the size."""
        return cls(location, base.weights_sha256, precision, base.feature_dim)

    def _decode(self, data: bytes | None) -> np.ndarray | None:
        if data is None or len(data) != self.entry_bytes:
            return None
        # The header is read and checked before any array exists: np.load would allocate
        # whatever shape a (hostile) header declares, 2^40 floats included.
        stream = io.BytesIO(data)
        try:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(stream)
        except (ValueError, OSError, EOFError, SyntaxError):
            return None
        if shape != (self.feature_dim,) or dtype != np.dtype("<f4") or fortran_order or \
                len(data) - stream.tell() != 4 * self.feature_dim:
            return None
        vector = np.frombuffer(data, dtype="<f4", offset=stream.tell()).copy()
        return vector if np.isfinite(vector).all() else None


def _entry_bytes(feature_dim: int) -> int:
    buf = io.BytesIO()
    np.save(buf, np.zeros(feature_dim, np.float32), allow_pickle=False)
    return len(buf.getvalue())


@dataclass
class Features:
    """fc2 features for the usable images of an ImageSet (rows align with `images`)."""

    images: ImageSet  # only images whose features exist (undecodable ones removed)
    vectors: np.ndarray  # [len(images), the base's feature_dim] float32
    from_cache: int
    computed: int
    seconds: float
    spot_checked: int = 0  # cache hits recomputed through the base and found equal


def spot_check_count(hits: int, at_least: int, fraction: float) -> int:
    """How many of `hits` cache hits to recompute: the fraction of them, rounded up, and
    never fewer than `at_least` (nor more than there are)."""
    return min(hits, max(at_least, math.ceil(fraction * hits)))


def spot_check(images: ImageSet, base: BaseModel, vectors: np.ndarray, hits: np.ndarray,
               checks: tuple[int, float], batch_size: int, precision: str = "float32") -> int:
    """Recompute randomly chosen cache hits (`checks`: at least that many, and that share;
    a new choice every run) and compare. Whoever can write the cache could store other
    images' features under these images' keys; a sampled mismatch stops the run (exit 4)
    before anything is trained on them."""
    count = spot_check_count(len(hits), *checks)
    if count <= 0:
        return 0
    rng = np.random.default_rng()  # unseeded on purpose: an attacker cannot predict it
    sample = np.sort(rng.choice(hits, size=min(count, len(hits)), replace=False))
    decoded, fresh = recompute(take(images.contents, sample), base, batch_size, precision)
    rows = sample[decoded]
    apart = features_apart(vectors[rows], fresh)
    bad = [images.paths[r] for r in rows[apart > FEATURE_TOLERANCE[precision]]]
    if bad:
        raise GateNotMet(
            f"feature cache spot check: {len(bad)} of {len(sample)} cache entries checked "
            f"are not their images' features (for example {bad[0]}): the cache holds entries "
            "written by someone else, or stale ones; nothing published. Run with a fresh "
            "--cache to recompute them")
    return len(sample)


def image_pipeline(contents: Sequence[bytes], fn, batch_size: int) -> tf.data.Dataset:
    """(index, fn(image bytes)) batches: parallel decode, order kept, prefetched.

    Images that fail to decode are dropped (their index is missing from the output), so the
    caller learns which ones are unusable without a separate validation pass.
    """
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(contents), dtype=tf.int64), tf.constant(list(contents), dtype=tf.string)))
    return _decoded(ds, fn).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _decoded(indexed: tf.data.Dataset, fn) -> tf.data.Dataset:
    """(index, image bytes) -> (index, fn(bytes)), in parallel and in order; an image `fn`
    fails on is dropped (its index goes missing)."""
    ds = indexed.map(as_graph_code(lambda i, b: (i, traced_once(fn)(b))),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors(log_warning=False)


# Images read on demand enter the pipeline a window of this many batches at a time: memory
# holds a window or two of encoded images (not the dataset). One pipeline takes all the
# windows, so decode stays parallel and prefetched across them (a generator yielding single
# images, or a new pipeline per window, each cost the pass speed on 2 cores).
WINDOW_BATCHES = 2


def image_batches(contents: Sequence[bytes], fn, batch_size: int):
    """(indices into `contents`, batch) for every decodable image, in order; images read on
    demand (data.Contents) are read a window at a time, the next while this one decodes."""
    if not isinstance(contents, Contents):
        for local_idx, batch in image_pipeline(contents, fn, batch_size):
            yield local_idx.numpy(), batch
        return
    window = WINDOW_BATCHES * batch_size
    starts = list(range(0, len(contents), window))

    def windows():
        with ThreadPoolExecutor(1) as reader:
            ahead = reader.submit(contents.__getitem__, slice(0, window)) if starts else None
            for k, start in enumerate(starts):
                part = ahead.result()
                if k + 1 < len(starts):
                    ahead = reader.submit(contents.__getitem__,
                                          slice(starts[k + 1], starts[k + 1] + window))
                yield np.arange(start, start + len(part), dtype=np.int64), np.array(
                    part, dtype=object)

    ds = tf.data.Dataset.from_generator(windows, output_signature=(
        tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string))).unbatch()
    ds = _decoded(ds, fn).batch(batch_size).prefetch(2)
    for idx, batch in ds:
        yield idx.numpy(), batch


def _drop_undecodable(images: ImageSet, ok: np.ndarray) -> ImageSet:
    bad = [Skipped(images.paths[i], UNDECODABLE) for i in np.flatnonzero(~ok)]
    kept = images.subset(np.flatnonzero(ok))
    kept.skipped = sorted(images.skipped + bad, key=lambda s: s.path)
    return kept


def extract_features(images: ImageSet, base: BaseModel, cache: FeatureCache | None,
                     batch_size: int, quiet: bool = False,
                     spot_checks: tuple[int, float] = (0, 0.0)) -> Features:
    """fc2 features for every decodable image: from the cache where possible, else computed
    once through the base (and written to the cache as they come, so progress survives a kill)."""
    start = time.perf_counter()
    n = len(images)
    vectors = np.zeros((n, base.feature_dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)

    precision = cache.precision if cache else "float32"
    cached = cache.get_many(sorted(set(images.sha256))) if cache else {}
    for i, digest in enumerate(images.sha256):
        if digest in cached:
            vectors[i], ok[i] = cached[digest], True
    from_cache = int(ok.sum())
    checked = spot_check(images, base, vectors, np.flatnonzero(ok), spot_checks, batch_size,
                         precision)

    todo = np.flatnonzero(~ok)
    computed = 0
    if len(todo):
        extract = feature_function(base, precision)
        pipeline = image_batches(take(images.contents, todo), preprocess_image_bytes,
                                 batch_size)
        bar = tqdm(total=len(todo), desc="extracting fc2 features", unit="img", disable=quiet)
        with bar, ThreadPoolExecutor(TRANSFER_WORKERS) as writer:
            pending = []
            for local_idx, batch in pipeline:
                feats = extract(batch).numpy()
                rows = todo[local_idx]
                vectors[rows], ok[rows] = feats, True
                computed += len(rows)
                if cache:
                    pending += [writer.submit(cache.put, images.sha256[r], vectors[r])
                                for r in rows]
                bar.update(len(rows))
            if computed < len(todo):  # undecodable images were dropped from the pipeline
                bar.total = computed
                bar.refresh()
            for f in pending:
                f.result()
    usable = _drop_undecodable(images, ok)
    return Features(usable, vectors[ok], from_cache, computed, time.perf_counter() - start,
                    checked)


def recompute(contents: Sequence[bytes], base: BaseModel, batch_size: int, precision: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the images that decode, their fc2 features computed now in `precision`),
    to hold cache entries against (the spot check, the cross-check)."""
    extract = feature_function(base, precision)
    indices, vectors = [np.zeros(0, np.int64)], [np.zeros((0, base.feature_dim), np.float32)]
    for idx, batch in image_batches(contents, preprocess_image_bytes, batch_size):
        indices.append(idx)
        vectors.append(extract(batch).numpy())
    return np.concatenate(indices), np.concatenate(vectors)


def features_apart(stored: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Per image, how far stored features are from freshly computed ones: the largest
    difference, relative to the fresh vector's scale (its largest value, at least 1)."""
    scale = np.maximum(np.abs(fresh).max(axis=1, initial=0.0), 1.0)
    return np.abs(stored - fresh).max(axis=1, initial=0.0) / scale


# Batch of the float32 checking passes. VGG16's float32 activations take about 25 MB an image
# (block 1 alone 13 MB), twice the feature pass's bfloat16: at --batch-size 32 the
# cross-check's first full batch raised a run's peak memory by 0.8 GB, so peak memory grew
# with the validation set until it held 32 images. These passes see only the validation and
# test images, and on a CPU a smaller batch computes as fast.
CHECK_BATCH = 8


def float32_features(contents: Sequence[bytes], base: BaseModel, batch_size: int
                     ) -> np.ndarray:
    """fc2 features in float32, the arithmetic of the exported graph, for images known to
    decode (rows in order): the cross-check's reference and the test set's. In batches of
    at most CHECK_BATCH."""
    decoded, vectors = recompute(contents, base, min(batch_size, CHECK_BATCH), "float32")
    if len(decoded) != len(contents):
        raise RuntimeError(f"{len(contents) - len(decoded)} images no longer decode")
    return vectors


def decodable(images: ImageSet, batch_size: int) -> ImageSet:
    """The --no-cache path's check: which images TensorFlow can decode (no VGG16 pass)."""
    ok = np.zeros(len(images), dtype=bool)
    for idx, _ in image_batches(images.contents, decode_and_resize, batch_size):
        ok[idx] = True
    return _drop_undecodable(images, ok)
