"""A synthetic, visually separable labelled image set for demos and tests.

Each class is a shape with its own colour family and texture, drawn at a random place, size
and angle on a random gradient-and-noise background. Sizes, aspect ratios, file formats
(JPEG, PNG, GIF, BMP, with varied extension case) and colour modes vary, so the trainer's
decoding and resizing paths are all exercised.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from contract.errors import InputError
from contract.storage import TRANSFER_WORKERS, open_location

# (class name, base hue in degrees, texture)
CLASSES = [
    ("circle", 0, "plain"),
    ("square", 210, "stripes"),
    ("triangle", 120, "dots"),
    ("star", 50, "plain"),
    ("cross", 280, "stripes"),
    ("ring", 170, "dots"),
    ("diamond", 25, "stripes"),
    ("hexagon", 320, "dots"),
]
MAX_CLASSES = len(CLASSES)
# (format, extension) cycled through; extensions vary in case on purpose.
FORMATS = [("JPEG", ".jpg"), ("PNG", ".png"), ("JPEG", ".JPEG"), ("GIF", ".gif"),
           ("BMP", ".bmp"), ("PNG", ".PNG"), ("JPEG", ".jpeg")]


def _hsv(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((hue % 360) / 360, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        n, radii = 4, [r]
    elif kind == "triangle":
        n, radii = 3, [r]
    elif kind == "hexagon":
        n, radii = 6, [r]
    elif kind == "diamond":
        n, radii = 4, [r, r * 0.55]
    elif kind == "star":
        n, radii = 10, [r, r * 0.45]
    elif kind == "cross":
        n, radii = 12, [r, r * 0.42, r * 0.42]
    else:
        raise ValueError(kind)
    pts = []
    for i in range(n):
        rr = radii[i % len(radii)]
        a = angle + 2 * math.pi * i / n
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def render(class_index: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class `class_index`."""
    name, hue, texture = CLASSES[class_index]
    width, height = int(rng.integers(160, 420)), int(rng.integers(160, 420))
    # Background: a gradient between two random muted colours plus noise.
    c1 = np.array(_hsv(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.3, 0.9)))
    c2 = np.array(_hsv(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.3, 0.9)))
    t = np.linspace(0, 1, width)[None, :, None]
    bg = c1 * (1 - t) + c2 * t
    bg = np.repeat(bg, height, axis=0) + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(image)
    # One large shape, sometimes with a smaller sibling, so the class dominates the frame.
    for scale in (1.0, 0.5)[: 1 + int(rng.uniform() < 0.4)]:
        colour = _hsv(hue + rng.uniform(-15, 15), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
        r = min(width, height) * rng.uniform(0.3, 0.45) * scale
        cx = rng.uniform(r, width - r)
        cy = rng.uniform(r, height - r)
        _draw_shape(draw, name, texture, colour, cx, cy, r, rng.uniform(0, 2 * math.pi))
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, texture: str,
                colour: tuple[int, int, int], cx: float, cy: float, r: float,
                angle: float) -> None:
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(4, int(r / 3)))
    else:
        draw.polygon(_polygon(name, cx, cy, r, angle), fill=colour)
    # Texture over the shape's bounding box, in a darker shade of the class colour.
    shade = tuple(int(v * 0.55) for v in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if texture == "stripes":
        step = max(6, int(r / 5))
        for x in range(int(box[0]), int(box[2]), step * 2):
            draw.line([(x, box[1]), (x + r / 2, box[3])], fill=shade, width=max(2, step // 2))
    elif texture == "dots":
        step = max(8, int(r / 4))
        for x in range(int(box[0]), int(box[2]), step):
            for y in range(int(box[1]), int(box[3]), step):
                draw.ellipse([x, y, x + step / 3, y + step / 3], fill=shade)


def encode(image: Image.Image, index: int, rng: np.random.Generator) -> tuple[bytes, str]:
    """Encode in a format chosen by `index`, sometimes with an unusual colour mode."""
    fmt, ext = FORMATS[index % len(FORMATS)]
    roll = rng.uniform()
    if fmt == "PNG" and roll < 0.3:
        image = image.convert("RGBA")
    elif fmt == "JPEG" and roll < 0.15:
        image = image.convert("CMYK")  # colour survives; grayscale would erase the cue
    elif fmt == "GIF":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": int(rng.integers(70, 95))} if fmt == "JPEG" else {}))
    return buf.getvalue(), ext


def generate(num_classes: int, per_class: int, seed: int):
    """Yields (relative path, encoded bytes) for the whole set, deterministically."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise InputError(f"--classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
    if per_class < 1:
        raise InputError(f"--per-class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        name = CLASSES[c][0]
        for i in range(per_class):
            data, ext = encode(render(c, rng), i + c, rng)
            yield f"{name}/{name}_{i:04d}{ext}", data


def write_sample_data(output_uri: str, num_classes: int, per_class: int, seed: int,
                      quiet: bool = False) -> int:
    """Write the set to a local folder or s3:// prefix; returns the number of files."""
    location = open_location(output_uri)
    total = num_classes * per_class
    with tqdm(total=total, desc="writing sample images", unit="img", disable=quiet) as bar, \
            ThreadPoolExecutor(TRANSFER_WORKERS) as pool:
        futures = [pool.submit(location.write_bytes, path, data)
                   for path, data in generate(num_classes, per_class, seed)]
        for f in futures:
            f.result()
            bar.update()
    return total


def warmup_images(count: int = 3, seed: int = 0) -> list[bytes]:
    """Synthetic images in the contract's formats for a model's warmup records (JPEG, PNG,
    GIF...), so no training image is ever published inside a model."""
    rng = np.random.default_rng(seed)
    return [encode(render(i % MAX_CLASSES, rng), i, rng)[0] for i in range(count)]
