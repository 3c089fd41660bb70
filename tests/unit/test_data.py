"""Dataset listing, header checks and the stratified split."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract.errors import InputError
from trainer.data import MAX_IMAGE_PIXELS, load_images, split_with_test, stratified_split


def png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_split_is_stratified_deterministic_and_complete():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    train, val = stratified_split(labels, 0.2, seed=1)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(17))
    assert np.bincount(labels[val]).tolist() == [2, 1, 1]  # every class validated
    assert np.bincount(labels[train]).tolist() == [8, 4, 1]  # and trained
    again = stratified_split(labels, 0.2, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again, strict=True))
    other = stratified_split(labels, 0.2, seed=2)
    assert not np.array_equal(val, other[1])


def test_the_test_split_is_disjoint_stratified_and_leaves_the_old_split_alone():
    labels = np.array([0] * 20 + [1] * 10 + [2] * 3)
    train, val, test = split_with_test(labels, 0.15, 0.15, seed=4)
    parts = [set(train.tolist()), set(val.tolist()), set(test.tolist())]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(len(labels)))
    # Per class: 15% held out for test (at least one), 15% validated, the rest trained.
    assert np.bincount(labels[test]).tolist() == [3, 2, 1]
    assert np.bincount(labels[val]).tolist() == [3, 2, 1]
    assert np.bincount(labels[train]).tolist() == [14, 6, 1]
    again = split_with_test(labels, 0.15, 0.15, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    # No test split: exactly the split every earlier run made with the same seed.
    train0, val0, test0 = split_with_test(labels, 0.2, 0.0, seed=4)
    old_train, old_val = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(train0, old_train) and np.array_equal(val0, old_val)
    assert len(test0) == 0


def test_classes_are_sorted_folder_names_and_extensions_any_case(tmp_path):
    for cls, name in [("zebra", "a.JPG"), ("zebra", "b.png"), ("apple", "c.Png"),
                      ("apple", "d.bmp"), ("apple", "e.GIF")]:
        (tmp_path / cls).mkdir(exist_ok=True)
        fmt = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF"}[name[-3:].lower()]
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, fmt)
        (tmp_path / cls / name).write_bytes(buf.getvalue())
    images = load_images(str(tmp_path), quiet=True)
    assert images.classes == ["apple", "zebra"]
    assert images.class_counts() == {"apple": 3, "zebra": 2}
    assert images.paths[0] == "apple/c.Png"
    assert len(images.fingerprint()) == 64


def test_hidden_folders_are_not_classes(tmp_path):
    for cls in ("a", "b", ".ipynb_checkpoints"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.png").write_bytes(png())
    images = load_images(str(tmp_path), quiet=True)
    assert images.classes == ["a", "b"]
    assert {s.reason for s in images.skipped} == {"inside a hidden folder"}


def test_a_class_folder_without_images_is_an_error(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "0.png").write_bytes(png())
        (tmp_path / cls / "1.png").write_bytes(png())
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="too few in c: 0"):
        load_images(str(tmp_path), quiet=True)


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 100
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")  # 1-bit: tiny file, huge declared size
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "0.png").write_bytes(png())
        (tmp_path / cls / "1.png").write_bytes(png())
    (tmp_path / "a" / "bomb.png").write_bytes(buf.getvalue())
    # A GIF whose header says 1x1 and whose twelve frames hold 108 MP (the header is what
    # Pillow reports as its size), and one of 25,000 one-byte blocks.
    from tests.unit.test_preprocessing import MANY_BLOCKS, hostile_gif

    (tmp_path / "b" / "frames.gif").write_bytes(hostile_gif(3000, 12))
    (tmp_path / "b" / "blocks.gif").write_bytes(MANY_BLOCKS)
    images = load_images(str(tmp_path), quiet=True)
    reasons = {s.path: s.reason for s in images.skipped}
    assert reasons["a/bomb.png"].startswith("image too large")
    assert reasons["b/frames.gif"] == ("image too large (108000000 pixels in its frames, "
                                       "limit 100000000)")
    assert reasons["b/blocks.gif"] == "not a readable image (more than 1024 GIF blocks)"
    assert len(images.skipped) == 3


def test_a_cache_entry_of_the_wrong_size_is_a_miss_before_it_is_parsed():
    """A tiny .npy may declare a shape of 2**40: parsing it would ask for terabytes."""
    import io

    import numpy as np
    from numpy.lib import format as npy

    from contract.storage import open_location
    from trainer.features import FeatureCache

    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                     "shape": (2**40,)})
    hostile = buf.getvalue()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for width in (4096, 512):  # VGG16's fc2, and another base's
            cache = FeatureCache(open_location(tmp), f"{width:x}" * 16, feature_dim=width)
            assert len(hostile) < 200 != cache.entry_bytes
            cache.location.write_bytes(cache.key("a" * 64), hostile)
            cache.put("b" * 64, np.ones(width, np.float32))
            cache.put("c" * 64, np.ones(width + 1, np.float32))  # another width: not ours
            found = cache.get_many(["a" * 64, "b" * 64, "c" * 64])
            # The hostile entry and the wrong width are misses, the good one a hit.
            assert list(found) == ["b" * 64] and found["b" * 64].shape == (width,)
            # The same header padded to exactly the entry's size (issue 27's .npy bomb):
            # np.load would allocate 4 TiB and crash the run; it is a miss.
            padded = hostile + b"\0" * (cache.entry_bytes - len(hostile))
            cache.location.write_bytes(cache.key("d" * 64), padded)
            # ...and a header of the right shape but another dtype or order.
            for i, header in enumerate(({"descr": "<f8", "fortran_order": False,
                                         "shape": (width // 2,)},
                                        {"descr": ">f4", "fortran_order": False,
                                         "shape": (width,)})):
                other = io.BytesIO()
                npy.write_array_header_1_0(other, header)
                entry = other.getvalue()
                cache.location.write_bytes(
                    cache.key(str(i) * 64), entry + b"\0" * (cache.entry_bytes - len(entry)))
            found = cache.get_many(["b" * 64, "d" * 64, "0" * 64, "1" * 64])
            assert list(found) == ["b" * 64]


def test_an_object_key_no_path_can_name_is_skipped_not_fatal(tmp_path, monkeypatch):
    """S3 (AWS) keeps keys like circle//x.png; a listing that holds one skips it with the
    reason instead of aborting the run at its first read (issue 27, item 13). SeaweedFS
    folds '//' and refuses '/./', so the listing is extended here, over real files."""
    import trainer.data as data_module
    from contract.storage import FileEntry, LocalLocation
    from trainer.data import load_images
    from trainer.sample_data import write_sample_data

    write_sample_data(str(tmp_path), num_classes=2, per_class=2, seed=3, quiet=True)

    class OddKeys(LocalLocation):
        def list_files(self):
            return super().list_files() + [FileEntry(k, 10, "") for k in
                                           ("circle//x.png", "square/./y.png",
                                            "square/../z.png")]

    monkeypatch.setattr(data_module, "open_location", lambda uri: OddKeys(tmp_path))
    images = load_images(str(tmp_path), quiet=True)
    assert len(images.paths) == 4
    assert [(s.path, s.reason) for s in images.skipped] == [
        (k, "not a usable path (an empty, '.' or '..' part)")
        for k in ("circle//x.png", "square/../z.png", "square/./y.png")]


def test_the_spot_check_recomputes_a_share_of_the_cache_hits_with_a_floor():
    """Issue 27: 8 checks whatever the cache held caught 1% poisoning 7.7% of the time.
    Now 5% of the hits by default (50 of 1,000: 10 poisoned entries are caught 40% of the
    time, 50 of them 92%), and never fewer than --cache-check."""
    from trainer.config import DEFAULT_CACHE_CHECK, DEFAULT_CACHE_CHECK_FRACTION
    from trainer.features import spot_check_count

    defaults = (DEFAULT_CACHE_CHECK, DEFAULT_CACHE_CHECK_FRACTION)
    assert spot_check_count(1000, *defaults) == 50
    assert spot_check_count(20_000, *defaults) == 1000
    assert spot_check_count(100, *defaults) == 8  # the floor
    assert spot_check_count(5, *defaults) == 5  # never more than there are
    assert spot_check_count(1000, 0, 0.0) == 0  # both 0: off
