"""Tiny stand-ins for the released data set layouts (DESIGN section 5), written into a test's tmp_path.

Images are 240x240 (room for 224x224 patches) seeded noise over a colour ramp, so every image differs.
Each builder returns the list of (image file name, label, content) it wrote, in label-file order.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

SIDE = 240  # pixels


def write_image(path: Path, seed: int, size: tuple[int, int] = (SIDE, SIDE)) -> None:
    """An RGB image (width, height) = `size`, in the format of the file extension."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] * rng.uniform(0.2, 1.0, size=(1, 1, 3))
    pixels = (ramp + rng.normal(0, 25, size=(height, width, 3))).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path)


def _cells(names: list[str], shape: tuple[int, int]) -> np.ndarray:
    """A MATLAB cell array of strings for scipy.io.savemat."""
    cells = np.empty(shape, dtype=object)
    for i, name in enumerate(names):
        cells.flat[i] = name
    return cells


def make_livec(root: Path, count: int = 4, size: tuple[int, int] = (SIDE, SIDE)) -> list[tuple[str, float, str]]:
    """ChallengeDB_release: 7 skipped entries (no files), then `count` images of `size` (width, height) with MOS."""
    skipped = [f"trainingImages/t{i}.bmp" for i in range(1, 8)]
    names = [f"{i + 10}.JPG" for i in range(count)]
    mos = [90.0, 70.0, 20.0, 30.0, 55.0, 61.5, 44.0, 12.0, 80.0, 33.0][:count]
    (root / "Data").mkdir(parents=True, exist_ok=True)
    all_names = skipped + names
    scipy.io.savemat(root / "Data" / "AllImages_release.mat",
                     {"AllImages_release": _cells(all_names, (len(all_names), 1))})
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat",
                     {"AllMOS_release": np.array([[1.0] * 7 + mos])})
    for i, name in enumerate(names):
        write_image(root / "Images" / name, seed=i, size=size)
    return [(name, m, name) for name, m in zip(names, mos)]


def make_koniq(root: Path) -> list[tuple[str, float, str]]:
    rows = [("a.jpg", 61.2), ("b.jpg", 12.5), ("c.jpg", 80.0)]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "koniq10k_scores_and_distributions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_name", "c1", "c2", "MOS", "SD", "MOS_zscore"])
        for i, (name, mos) in enumerate(rows):
            writer.writerow([name, 0, 0, 3.1, 0.5, mos])
            write_image(root / "1024x768" / name, seed=20 + i, size=(256, 192))
    return [(name, mos, name) for name, mos in rows]


def make_bid(root: Path) -> list[tuple[str, float, str]]:
    from openpyxl import Workbook

    grades = [(1, 3.5), (2, 1.25), (7, 4.0)]
    root.mkdir(parents=True, exist_ok=True)
    book = Workbook()
    sheet = book.active
    sheet.append(["Image", "Average Subjective Grade"])
    for number, mos in grades:
        sheet.append([number, mos])
        write_image(root / ("DatabaseImage%04d.JPG" % number), seed=30 + number, size=(200, 150))
    book.save(root / "DatabaseGrades.xlsx")
    return [("DatabaseImage%04d.JPG" % n, mos, "DatabaseImage%04d.JPG" % n) for n, mos in grades]


LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


def make_live(root: Path) -> list[tuple[str, float, str]]:
    """databaserelease2 with the full 982-entry DMOS files; all entries but six are flagged as
    reference copies (`orgs`), so only six images need files: two per reference image."""
    entries = [(folder, number) for folder, count in LIVE_FOLDERS for number in range(1, count + 1)]
    used = {0: "bikes.bmp", 1: "bikes.bmp", 227: "house.bmp", 460: "house.bmp", 634: "sail.bmp", 808: "sail.bmp"}
    dmos = np.zeros(len(entries))
    orgs = np.ones(len(entries))
    refnames = ["parrots.bmp"] * len(entries)
    written = []
    for k, (position, ref) in enumerate(sorted(used.items())):
        folder, number = entries[position]
        dmos[position], orgs[position], refnames[position] = 20.0 + 10 * k, 0.0, ref
        write_image(root / folder / f"img{number}.bmp", seed=40 + k)
        written.append((f"{folder}/img{number}.bmp", 20.0 + 10 * k, ref))
    for ref in sorted(set(used.values())):
        write_image(root / "refimgs" / ref, seed=50)
    scipy.io.savemat(root / "dmos_realigned.mat", {"dmos_new": dmos[None, :], "orgs": orgs[None, :]})
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": _cells(refnames, (1, len(entries)))})
    return written


def make_csiq(root: Path) -> list[tuple[str, float, str]]:
    rows = [("1600.AWGN.1.png", 0.06), ("1600.JPEG.2.png", 0.07), ("boston.AWGN.1.png", 0.03),
            ("boston.jpeg2000.5.png", 0.9), ("fisher.fnoise.3.png", 0.4), ("fisher.BLUR.1.png", 0.1)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "csiq_label.txt").write_text("".join(f"{name} {dmos:.6f}\n" for name, dmos in rows))
    for i, (name, _) in enumerate(rows):
        write_image(root / "dst_imgs_all" / name, seed=60 + i)
    for ref in ("1600.png", "boston.png", "fisher.png"):
        write_image(root / "src_imgs" / ref, seed=70)
    return [(name, dmos, name.split(".")[0] + ".png") for name, dmos in rows]


def make_tid2013(root: Path) -> list[tuple[str, float, str]]:
    rows = [(5.51429, "i01_01_1.bmp"), (5.56757, "i01_02_3.bmp"), (4.0, "i02_01_1.bmp"),
            (3.2, "i02_05_4.bmp"), (6.1, "I03_01_1.bmp"), (2.25, "i03_24_5.bmp")]
    root.mkdir(parents=True, exist_ok=True)
    (root / "mos_with_names.txt").write_text("".join(f"{mos} {name}\n" for mos, name in rows))
    for i, (_, name) in enumerate(rows):
        write_image(root / "distorted_images" / name, seed=80 + i)
    for ref in ("I01.BMP", "I02.BMP", "I03.BMP"):
        write_image(root / "reference_images" / ref, seed=90)
    return [(name, mos, name[1:3]) for mos, name in rows]


def make_csv(root: Path, count: int = 4, contents: list[str] | None = None, labels_name: str = "labels.csv",
             seed: int = 100) -> list[tuple[str, float, str]]:
    """`count` images under root/images and a CSV (image, mos[, content]) at root/labels_name."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"images/img{i:02d}.png"
        write_image(root / name, seed=seed + i)
        rows.append((name, round(10.0 + 80.0 * ((i * 7) % count) / max(1, count - 1), 2),
                     contents[i] if contents else None))
    with open(root / labels_name, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mos"] + (["content"] if contents else []))
        for name, mos, content in rows:
            writer.writerow([name, mos] + ([content] if contents else []))
    return [(name, mos, content if content else name) for name, mos, content in rows]
