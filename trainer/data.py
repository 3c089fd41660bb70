"""The labelled image set: `<data_uri>/<class_name>/<image files>`, read and split.

Class names are the top-level folder names, sorted. Images anywhere below a class folder
belong to it (nested folders are walked). Files that are not images are skipped and listed;
images TensorFlow cannot decode are found during feature extraction and skipped the same way.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from contract.errors import InputError
from contract.image_formats import (
    ERROR_NOT_AN_IMAGE,
    MAX_IMAGE_PIXELS,
    gif_frame_pixels,
    sniff,
)
from contract.storage import Location, open_location

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
MIN_IMAGES_PER_CLASS = 2
MIN_CLASSES = 2


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


class Contents(Sequence):
    """The encoded images of an ImageSet, read from the dataset location when asked for and
    not kept: memory does not grow with the dataset's bytes. `read(indices)` streams many
    (concurrent reads, a bounded number ahead); an index or a slice reads those."""

    def __init__(self, location: Location, paths: list[str]):
        self.location = location
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(self.read(range(*i.indices(len(self.paths)))))
        return next(self.read([i]))

    def __iter__(self) -> Iterator[bytes]:
        return self.read(range(len(self.paths)))

    def read(self, indices: Iterable[int]) -> Iterator[bytes]:
        for path, data in self.location.read_many(self.paths[int(i)] for i in indices):
            if data is None:
                raise InputError(f"{self.location.uri}/{path} disappeared during the run")
            yield data

    def subset(self, idx: list[int]) -> Contents:
        return Contents(self.location, [self.paths[i] for i in idx])


def take(contents: Sequence[bytes], idx) -> Sequence[bytes]:
    """The images at `idx`, still read on demand when `contents` is."""
    idx = [int(i) for i in idx]
    return contents.subset(idx) if isinstance(contents, Contents) else \
        [contents[i] for i in idx]


@dataclass
class ImageSet:
    """The usable images (paths, labels, content hashes); their bytes are read on demand."""

    classes: list[str]
    paths: list[str]  # relative to the dataset location, e.g. "stegosaurus/img01.jpg"
    labels: np.ndarray  # int class index per image
    contents: Sequence[bytes]  # Contents (read on demand), or a list in memory
    sha256: list[str]
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: np.ndarray) -> ImageSet:
        idx = [int(i) for i in keep]
        return ImageSet(self.classes, [self.paths[i] for i in idx], self.labels[idx],
                        take(self.contents, idx), [self.sha256[i] for i in idx],
                        list(self.skipped))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}

    def fingerprint(self) -> str:
        """sha256 over sorted (relative path, file sha256): what the manifest records."""
        h = hashlib.sha256()
        for path, digest in sorted(zip(self.paths, self.sha256, strict=True)):
            h.update(f"{path}\0{digest}\n".encode())
        return h.hexdigest()


def _check_header(data: bytes) -> str | None:
    """Cheap sanity check with Pillow's header parser; a reason string when unusable."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty file"
    fmt = sniff(data)
    if fmt is None:  # the very rule the exported graph applies (WebP too is refused)
        return ERROR_NOT_AN_IMAGE
    if fmt == "gif":  # frames, not the logical screen, are what decoding allocates
        try:
            pixels = gif_frame_pixels(data)
        except ValueError as e:
            return f"not a readable image ({e})"
        if pixels > MAX_IMAGE_PIXELS:
            return f"image too large ({pixels} pixels in its frames, limit {MAX_IMAGE_PIXELS})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"image too large (more than {MAX_IMAGE_PIXELS} pixels declared)"
    except UnidentifiedImageError as e:
        return f"not a readable image ({type(e).__name__})"
    except (OSError, ValueError, SyntaxError) as e:
        return f"not a readable image ({e})"
    if width * height > MAX_IMAGE_PIXELS:
        return f"image too large ({width}x{height} pixels, limit {MAX_IMAGE_PIXELS})"
    return None


def load_images(data_uri: str, quiet: bool = False, select=None) -> ImageSet:
    """List, read and sanity-check every image below `data_uri`. Raises InputError (exit 2).

    `select(relative path) -> bool` reads only some of the images (a shard of the feature
    pass): the classes are still every class folder, and class sizes are not checked."""
    location: Location = open_location(data_uri)
    files = location.list_files()
    if not files:
        raise InputError(f"--data {data_uri}: location does not exist or is empty")

    by_class: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    for entry in files:
        parts = entry.path.split("/")
        if any(part in ("", ".", "..") for part in parts):
            # An object key like cat//x.png or cat/../x.png: S3 allows it, a path cannot
            # name it; it would abort the run at the first read.
            skipped.append(Skipped(entry.path, "not a usable path (an empty, '.' or '..' "
                                               "part)"))
            continue
        if len(parts) < 2:
            skipped.append(Skipped(entry.path, "not inside a class folder"))
            continue
        if parts[0].startswith("."):
            skipped.append(Skipped(entry.path, "inside a hidden folder"))
            continue
        images_of_class = by_class.setdefault(parts[0], [])  # a class folder, even if empty
        if not entry.path.lower().endswith(IMAGE_EXTENSIONS):
            skipped.append(Skipped(entry.path, "not an image file extension"))
            continue
        images_of_class.append(entry.path)

    classes = sorted(by_class)
    if len(classes) < MIN_CLASSES:
        found = ", ".join(classes) or "none"
        raise InputError(f"--data {data_uri}: need at least {MIN_CLASSES} class folders with "
                         f"images, found {len(classes)} ({found})")

    ordered = [(c, p) for c in classes for p in by_class[c] if select is None or select(p)]
    paths, labels, digests = [], [], []
    bar = tqdm(total=len(ordered), desc="reading images", unit="img", disable=quiet)
    with bar:
        for (cls, path), (_, data) in zip(ordered, location.read_many([p for _, p in ordered]),
                                          strict=True):
            bar.update()
            reason = "unreadable (missing or broken link)" if data is None else _check_header(data)
            if reason:
                skipped.append(Skipped(path, reason))
                continue
            paths.append(path)
            labels.append(classes.index(cls))
            digests.append(hashlib.sha256(data).hexdigest())  # the bytes are not kept

    if select is not None:
        skipped = [s for s in skipped if select(s.path)]
    images = ImageSet(classes, paths, np.asarray(labels, dtype=np.int64),
                      Contents(location, paths), digests, sorted(skipped, key=lambda s: s.path))
    if select is None:
        check_class_sizes(images, data_uri)
    return images


def check_class_sizes(images: ImageSet, data_uri: str, with_test: bool = False) -> None:
    """Every class needs at least MIN_IMAGES_PER_CLASS usable images (one to train, one to
    validate), and one more with a test split."""
    needed = MIN_IMAGES_PER_CLASS + (1 if with_test else 0)
    small = {c: n for c, n in images.class_counts().items() if n < needed}
    if small:
        detail = ", ".join(f"{c}: {n}" for c, n in small.items())
        raise InputError(f"--data {data_uri}: every class needs at least {needed} usable "
                         f"images{' with --test-split' if with_test else ''}; too few in "
                         f"{detail}")


def split_with_test(labels: np.ndarray, val_split: float, test_split: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) indices, each sorted, stratified per class; the fractions
    are of each class's images. Without a test split it is exactly stratified_split (the
    same seed gives the same train and validation sets as before there was a test split).
    With one, every class keeps at least one image in each of the three sets."""
    if test_split <= 0:
        train, val = stratified_split(labels, val_split, seed)
        return train, val, np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 2])  # its own stream: the splits cannot overlap
    train, val, test = [], [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(max(1, round(len(idx) * test_split)), len(idx) - 2)
        n_val = min(max(1, round(len(idx) * val_split)), len(idx) - n_test - 1)
        test.extend(idx[:n_test])
        val.extend(idx[n_test:n_test + n_val])
        train.extend(idx[n_test + n_val:])
    return tuple(np.sort(np.asarray(part, dtype=np.int64)) for part in (train, val, test))


def stratified_split(labels: np.ndarray, val_split: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split: (train indices, validation indices), each sorted.

    Every class keeps at least one training and one validation image.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(max(1, round(len(idx) * val_split)), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))
