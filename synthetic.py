"""A small synthetic image quality data set, built locally from the photographs in `examples/`.

Nothing is downloaded: each example photo is resized and centre-cropped to 256x256 pixels, then
degraded by four distortion types at four levels each (level 1 mildest):

| type | what changes with the level | strengths at levels 1-4 |
|---|---|---|
| `blur` | Gaussian blur radius, pixels (Pillow) | 1, 2, 3.5, 5 |
| `noise` | std of additive Gaussian noise, 8-bit grey levels | 6, 12, 24, 40 |
| `jpeg` | JPEG quality (Pillow, 4:2:0); decoded and stored as PNG so the artefacts are kept | 40, 20, 10, 5 |
| `contrast` | contrast factor, 1 = unchanged (Pillow `ImageEnhance.Contrast`) | 0.75, 0.55, 0.4, 0.25 |

The undistorted ("pristine") crop of every photo is included too, so 4 photos give 4 x (1 + 4 x 4) =
68 images. Labels are made-up mean opinion scores on 0-100 that fall with the level:

    mos = clip(95 - drop_per_level[type] * level + jitter, 0, 100),  jitter ~ Uniform(-2, 2)

with drop_per_level = 20 (blur), 18 (noise), 16 (jpeg), 12 (contrast); pristine images have level 0.
Because every drop is larger than the jitter's full width (4), the MOS strictly decreases with the
level for each photo and type, and the pristine image has the highest MOS of its photo.

Everything random (noise and jitter) is drawn from a NumPy generator seeded by (seed, photo, type,
level), so a seed always gives the same files. The set is written under `root` as `images/*.png`,
`labels.csv` (columns `image` (path relative to the CSV), `mos`, `content` (the source photo, so
splits keep a photo's images on one side), `distortion`, `level`) and `manifest.json`. Each file is
written atomically and the manifest last: a set is reused only when its manifest matches the seed,
this generator's version and the example photos, so an interrupted build is simply built again.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from atomic_file import write_bytes_atomic
from images import load_image
from seeding import DEFAULT_SEED

GENERATOR_VERSION = 1  # bump whenever the images or labels this module writes change
SYNTHETIC_SCORE_RANGE = (0.0, 100.0)  # (lowest, highest) possible MOS

EXAMPLES_DIR = Path(__file__).parent / "examples"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_SIDE = 256  # pixels; each image is IMAGE_SIDE x IMAGE_SIDE, room for 224x224 patches

IMAGES_DIR = "images"
LABELS_FILE = "labels.csv"
MANIFEST_FILE = "manifest.json"
LABEL_COLUMNS = ("image", "mos", "content", "distortion", "level")

PRISTINE_MOS = 95.0  # MOS of an undistorted photo, before jitter
MOS_JITTER = 2.0  # half-width of the uniform jitter added to every MOS


class Distortion(NamedTuple):
    name: str
    mos_drop_per_level: float  # MOS points lost per level
    strengths: tuple[float, ...]  # the type's parameter at levels 1, 2, ... (units: see the table above)


DISTORTIONS = (
    Distortion("blur", 20.0, (1.0, 2.0, 3.5, 5.0)),
    Distortion("noise", 18.0, (6.0, 12.0, 24.0, 40.0)),
    Distortion("jpeg", 16.0, (40, 20, 10, 5)),
    Distortion("contrast", 12.0, (0.75, 0.55, 0.4, 0.25)),
)
PRISTINE = "pristine"


def example_photos(directory: Path = EXAMPLES_DIR) -> list[Path]:
    """The example photographs in `directory`, sorted by name; raise ValueError if there are none."""
    photos = sorted(p for p in directory.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) if directory.is_dir() else []
    if not photos:
        raise ValueError(f"no example photos ({', '.join(PHOTO_SUFFIXES)}) found in {directory}")
    return photos


def prepare_photo(path: Path) -> Image.Image:
    """Load a photo, resize its short side to IMAGE_SIDE (Lanczos) and centre-crop it to a square."""
    img = load_image(path)
    scale = IMAGE_SIDE / min(img.size)
    width, height = max(IMAGE_SIDE, round(img.width * scale)), max(IMAGE_SIDE, round(img.height * scale))
    img = img.resize((width, height), Image.Resampling.LANCZOS)
    left, top = (width - IMAGE_SIDE) // 2, (height - IMAGE_SIDE) // 2
    return img.crop((left, top, left + IMAGE_SIDE, top + IMAGE_SIDE))


def distort(img: Image.Image, distortion: Distortion, level: int, rng: np.random.Generator) -> Image.Image:
    """Apply `distortion` at `level` (1 = mildest) to an 8-bit RGB image; `rng` draws the noise."""
    strength = distortion.strengths[level - 1]
    if distortion.name == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=strength))
    if distortion.name == "noise":
        pixels = np.asarray(img, dtype=np.float64)
        noisy = pixels + rng.normal(0.0, strength, size=pixels.shape)
        return Image.fromarray(noisy.round().clip(0, 255).astype(np.uint8), mode="RGB")
    if distortion.name == "jpeg":
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=int(strength))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")
    if distortion.name == "contrast":
        return ImageEnhance.Contrast(img).enhance(strength)
    raise ValueError(f"unknown distortion {distortion.name!r}")


def synthetic_mos(level: int, mos_drop_per_level: float, rng: np.random.Generator) -> float:
    """The label of an image at `level` (0 = pristine): see the formula in the module docstring."""
    jitter = rng.uniform(-MOS_JITTER, MOS_JITTER)
    low, high = SYNTHETIC_SCORE_RANGE
    return float(np.clip(PRISTINE_MOS - mos_drop_per_level * level + jitter, low, high))


def build_synthetic_dataset(root: str | os.PathLike, seed: int = DEFAULT_SEED) -> Path:
    """Build the synthetic data set under `root` (reusing a complete one with the same seed) and
    return the path of its labels CSV (columns: see LABEL_COLUMNS; image paths relative to the CSV)."""
    root = Path(root)
    photos = example_photos()
    expected = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "sources": {photo.name: _sha256(photo.read_bytes()) for photo in photos},
    }
    labels_path = root / LABELS_FILE
    if _is_complete(root, expected):
        return labels_path

    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_FILE).unlink(missing_ok=True)  # the set is incomplete until the manifest is back
    rows = []
    for photo_index, photo in enumerate(photos):
        content = photo.stem
        clean = prepare_photo(photo)
        rng = np.random.default_rng([seed, photo_index, 0, 0])
        rows.append(_write_image(root, clean, content, PRISTINE, 0, synthetic_mos(0, 0.0, rng)))
        for type_index, distortion in enumerate(DISTORTIONS, start=1):
            for level in range(1, len(distortion.strengths) + 1):
                rng = np.random.default_rng([seed, photo_index, type_index, level])
                mos = synthetic_mos(level, distortion.mos_drop_per_level, rng)
                rows.append(_write_image(root, distort(clean, distortion, level, rng), content,
                                         distortion.name, level, mos))

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    writer.writerows(rows)
    labels = text.getvalue().encode("utf-8")
    write_bytes_atomic(labels_path, labels)
    manifest = dict(expected, images=[row[0] for row in rows], labels_sha256=_sha256(labels))
    write_bytes_atomic(root / MANIFEST_FILE, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return labels_path


def _write_image(root: Path, img: Image.Image, content: str, distortion: str, level: int, mos: float) -> tuple:
    """Save `img` losslessly as PNG and return its CSV row."""
    name = f"{IMAGES_DIR}/{content}_{distortion}.png" if level == 0 else f"{IMAGES_DIR}/{content}_{distortion}{level}.png"
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    write_bytes_atomic(root / name, buffer.getvalue())
    return (name, f"{mos:.4f}", content, distortion, level)


def _is_complete(root: Path, expected: dict) -> bool:
    """True when `root` holds a finished build with the expected seed, version and source photos."""
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
        labels = (root / LABELS_FILE).read_bytes()
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or any(manifest.get(key) != value for key, value in expected.items()):
        return False
    if manifest.get("labels_sha256") != _sha256(labels):
        return False
    images = manifest.get("images")
    return isinstance(images, list) and bool(images) and all((root / str(name)).is_file() for name in images)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
