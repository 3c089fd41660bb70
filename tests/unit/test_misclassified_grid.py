"""The misclassified grid: sized to what it shows, each thumbnail named."""

from __future__ import annotations

import io

from PIL import Image

from trainer.evaluate import _file_name, _grid_png


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def wrong(n: int) -> list[dict]:
    return [{"path": f"holdout/cat/photo_{i}.jpg", "true": "cat", "predicted": "dog",
             "score": 0.9, "error": "", "data": jpeg()} for i in range(n)]


def test_one_image_makes_a_small_picture_and_many_a_grid_of_six_columns(tmp_path):
    metrics = {"model": "m", "version": 1, "images": 10, "unclassified": []}
    _grid_png(wrong(1), tmp_path / "one.png", metrics)
    _grid_png(wrong(12), tmp_path / "twelve.png", metrics)
    with Image.open(tmp_path / "one.png") as one, Image.open(tmp_path / "twelve.png") as grid:
        assert one.size[0] < 500 < grid.size[0]  # not six empty columns for one image
        assert grid.size[1] > one.size[1]


def test_thumbnails_are_named_by_their_file():
    assert _file_name("holdout/cat/photo_1.jpg") == "photo_1.jpg"
    long = _file_name("a/" + "x" * 40 + ".jpeg")
    assert len(long) <= 26 and long.endswith(".jpeg") and "..." in long
