"""The sample set is deterministic and varied in the ways the trainer must handle."""

from __future__ import annotations

import io

from PIL import Image

from trainer.sample_data import generate, write_sample_data


def test_same_seed_same_images_other_seed_other_images():
    a = list(generate(2, 4, seed=0))
    assert a == list(generate(2, 4, seed=0))
    assert a != list(generate(2, 4, seed=1))
    assert [p.split("/")[0] for p, _ in a] == ["circle"] * 4 + ["square"] * 4


def test_formats_modes_and_sizes_vary():
    items = list(generate(3, 14, seed=0))
    formats, modes, sizes, exts = set(), set(), set(), set()
    for path, data in items:
        with Image.open(io.BytesIO(data)) as im:
            formats.add(im.format)
            modes.add(im.mode)
            sizes.add(im.size)
        exts.add(path.rsplit(".", 1)[1])
    assert formats == {"JPEG", "PNG", "GIF", "BMP"}
    assert {"RGB", "RGBA", "P", "CMYK"} <= modes
    assert len(sizes) > 30
    assert {"jpg", "JPEG", "PNG", "png"} <= exts


def test_write_to_a_local_folder(tmp_path):
    assert write_sample_data(str(tmp_path), 2, 3, seed=0, quiet=True) == 6
    assert sorted(p.parent.name for p in tmp_path.rglob("*.*")) == ["circle"] * 3 + ["square"] * 3
