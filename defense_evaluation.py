"""The defenses and the certified bounds of evaluate_robustness.py: their flags, their per-image
records, and their tables.

- `--defense NAME[:PARAM]` (defenses.py; `--jpeg_quality Q` is `--defense jpeg:Q`): every view the
  model scores goes through the defense, the clean ones too, and the evaluation's clean and attacked
  columns are the defended images' scores. The undefended scores, and the SSIM and PSNR of the clean
  image against the defended ones, are recorded beside them, for the defense benchmark's scores
  (defense_scores.py; defense_scores.csv). A random defense draws from the seeded stream of the image
  (seeding.DEFENSE_DRAWS, seeding.DEFENDED_IMAGES): the clean image and each of its attacked versions
  meet the same draws, as in the benchmark, and every checkpoint the same.
- `--adaptive`: the attacks are made against the defended model (defenses.DefendedModel: BPDA, EOT
  over `--eot` draws from the stream (seeding.DEFENSE_DRAWS, seeding.ADAPTIVE_ATTACK)); without it,
  against the bare model, the attacked image then defended.
- `--certify` (certify.py): each checkpoint's median-smoothing certificate of every image (the bare
  model, whatever --defense says), at every radius of `--certify_eps`, from one set of
  `--samples` noisy scores per view (seeding.SMOOTHING_NOISE): certified.csv (mean widths per
  checkpoint x radius) and certified_images.csv (per checkpoint x image x radius).
"""
from __future__ import annotations

import argparse
from typing import NamedTuple, Sequence

import numpy as np
import torch

import attacks
import certify
import cli
import defense_scores
import defenses
import seeding
from families.base import QualityModel

DEFENSE_SCORE_COLUMNS = ("model", "defense", "adaptive", "attack", "eps", "images", *defense_scores.SCORES)
IMAGE_COLUMNS = ("model", "image", "radius", "smoothed", "lower", "upper", "width")
CERTIFICATE_ARRAYS = ("smoothed", "lower", "upper")  # in certified_images.csv, not among the per-image scores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the defenses and of the certified bounds; `check_arguments` after parsing."""
    group = parser.add_argument_group("defenses and certified bounds")
    group.add_argument("--defense", default=None, metavar="NAME[:PARAM]",
                       help="input transform before the model, for clean and attacked images alike: jpeg:Q, blur:SIGMA, "
                            "median:K, resize:SCALE, quantize:LEVELS, noise:SIGMA, crop:FRACTION or flip (defenses.py)")
    group.add_argument("--jpeg_quality", type=cli.positive_int, default=None, metavar="Q",
                       help="the same as --defense jpeg:Q (JPEG re-compression at quality Q, 1-95)")
    group.add_argument("--adaptive", action="store_true",
                       help="attack through the defense (gradients: BPDA through jpeg, median and quantize, the mean "
                            "over --eot draws of noise, crop and flip; square: queries of the defended model); "
                            "default: attack the bare model, then defend the attacked image")
    group.add_argument("--eot", type=cli.positive_int, default=defenses.DEFAULT_EOT,
                       help="--adaptive with a random defense: draws averaged per gradient (memory grows with it)")
    group.add_argument("--certify", action="store_true",
                       help="certified score intervals of every checkpoint by median smoothing (the bare model)")
    group.add_argument("--smoothing_sigma", type=cli.positive_float, default=certify.DEFAULT_SIGMA,
                       help="--certify: standard deviation of the Gaussian noise, [0, 1] pixel units")
    group.add_argument("--samples", type=cli.positive_int, default=certify.DEFAULT_SAMPLES,
                       help="--certify: noisy scores per view, drawn once for all the radii")
    group.add_argument("--certify_eps", nargs="+", type=cli.positive_float, default=[certify.DEFAULT_RADIUS],
                       metavar="RADIUS", help="--certify: l2 radii of the certified intervals, [0, 1] pixel units")
    group.add_argument("--confidence", type=cli.fraction, default=certify.DEFAULT_CONFIDENCE,
                       help="--certify: probability (below 1) that an image's certified interval holds")


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse bad combinations (parser.error) and turn args.defense (and --jpeg_quality) into a Defense."""
    if args.jpeg_quality is not None and args.defense is not None:
        parser.error("argument --jpeg_quality: not with --defense (it is --defense jpeg:Q)")
    if args.defense is not None or args.jpeg_quality is not None:
        flag = "--defense" if args.jpeg_quality is None else "--jpeg_quality"
        try:
            args.defense = defenses.parse_defense(args.defense or f"jpeg:{args.jpeg_quality}")
        except ValueError as exc:
            parser.error(f"argument {flag}: {exc}")
    if args.adaptive and args.defense is None:
        parser.error("argument --adaptive: needs a --defense to attack through")
    if args.confidence == 1:
        parser.error("argument --confidence: must be below 1")
    if len(set(args.certify_eps)) != len(args.certify_eps):
        parser.error(f"argument --certify_eps: each radius once, got {' '.join(map(str, args.certify_eps))}")


class Table(NamedTuple):
    """A table of the run: written to `file` (CSV) and to the JSON under the file's stem, printed
    under `title` when it has one."""

    file: str
    title: str
    rows: list[dict]
    columns: tuple[str, ...]


class Records:
    """What the defense and the certificates add to an evaluation, per checkpoint and image; `arrays`
    (float64, zeros until recorded: each image is recorded by one process, so they can be summed over
    processes): with a defense, `undefended_clean`, `ssim_clean`, `psnr_clean` (checkpoints, images)
    and `undefended_attacked`, `ssim_attacked`, `psnr_attacked` (checkpoints, settings, images); with
    --certify, `smoothed` (checkpoints, images), `lower` and `upper` (checkpoints, radii, images)."""

    def __init__(self, args: argparse.Namespace, checkpoints: int, settings: int, images: int):
        self.args, self.defense = args, args.defense
        clean, attacked = (checkpoints, images), (checkpoints, settings, images)
        shapes = {}
        if self.defense:
            shapes.update({f"{kind}_clean": clean for kind in ("undefended", "ssim", "psnr")})
            shapes.update({f"{kind}_attacked": attacked for kind in ("undefended", "ssim", "psnr")})
        if args.certify:
            bounds = (checkpoints, len(args.certify_eps), images)
            shapes.update(smoothed=clean, lower=bounds, upper=bounds)
        self.arrays = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in shapes.items()}

    def _draws(self, index: int, use: int) -> torch.Generator:
        return seeding.seeded_generator(self.args.seed, seeding.DEFENSE_DRAWS, index, use)

    def attack_target(self, model: QualityModel, index: int) -> torch.nn.Module:
        """What the attacks on image `index` attack: the defended model with --adaptive, else `model`."""
        if not self.args.adaptive:
            return model
        return defenses.DefendedModel(model, self.defense, self._draws(index, seeding.ADAPTIVE_ATTACK), self.args.eot)

    def _through_defense(self, model: QualityModel, views: torch.Tensor, clean_views: torch.Tensor, index: int,
                         chunk_size: int | None) -> tuple[float, float, float]:
        """The mean score of `views` (V, 3, H, W) through the defense, and the SSIM and PSNR of the
        clean views against the defended ones."""
        defended = self.defense(views, self._draws(index, seeding.DEFENDED_IMAGES))
        score = attacks.score_patches(model, defended, chunk_size).mean().item()
        return (score, *defense_scores.view_similarity(clean_views.cpu().numpy(), defended.cpu().numpy()))

    def clean(self, k: int, index: int, model: QualityModel, views: torch.Tensor, score: float,
              chunk_size: int | None) -> float:
        """The clean score of the table for checkpoint k and image `index` of bare-model score `score`:
        that of the defended views when there is a defense (recorded with the undefended one)."""
        if not self.defense:
            return score
        self.arrays["undefended_clean"][k, index] = score
        defended, self.arrays["ssim_clean"][k, index], self.arrays["psnr_clean"][k, index] = self._through_defense(
            model, views, views, index, chunk_size)
        return defended

    def attacked(self, k: int, a: int, index: int, model: QualityModel, adversarial: torch.Tensor,
                 clean_views: torch.Tensor, score: float, chunk_size: int | None) -> float:
        """The attacked score of the table for setting a (as `clean`, for the attacked views)."""
        if not self.defense:
            return score
        self.arrays["undefended_attacked"][k, a, index] = score
        defended, self.arrays["ssim_attacked"][k, a, index], self.arrays["psnr_attacked"][k, a, index] = (
            self._through_defense(model, adversarial, clean_views, index, chunk_size))
        return defended

    def certify(self, k: int, index: int, model: QualityModel, views: torch.Tensor, chunk_size: int | None) -> None:
        """With --certify, the certificate of image `index` (its views (V, 3, H, W)) for checkpoint k."""
        if not self.args.certify:
            return
        args = self.args
        certificate = certify.certify_views(model, views, args.certify_eps, args.smoothing_sigma, args.samples,
                                            args.confidence, seeding.seeded_generator(args.seed, seeding.SMOOTHING_NOISE,
                                                                                      index), chunk_size)
        self.arrays["smoothed"][k, index] = certificate.smoothed.item()
        self.arrays["lower"][k, :, index] = certificate.lower[:, 0]
        self.arrays["upper"][k, :, index] = certificate.upper[:, 0]

    def tables(self, names: Sequence[str], score_ranges: Sequence[tuple[float, float]], paths: Sequence[str],
               mos: np.ndarray, settings: Sequence[tuple[str, float]], clean: np.ndarray,
               attacked: np.ndarray) -> list[Table]:
        """The benchmark's scores per checkpoint x setting (attack, eps) with a defense (clean and
        attacked: the table's, defended, scores (checkpoints, [settings,] images)); with --certify,
        the mean widths per checkpoint x radius and the bounds per checkpoint x image x radius."""
        arrays, args, tables = {name: array.numpy() for name, array in self.arrays.items()}, self.args, []
        if self.defense:
            rows = [dict(model=name, defense=str(self.defense), adaptive=args.adaptive, attack=attack, eps=eps,
                         images=len(mos), **defense_scores.benchmark_scores(
                             arrays["undefended_clean"][k], arrays["undefended_attacked"][k, a], clean[k], attacked[k, a],
                             mos, arrays["ssim_attacked"][k, a], arrays["psnr_attacked"][k, a], arrays["ssim_clean"][k],
                             arrays["psnr_clean"][k], high - low))
                    for k, (name, (low, high)) in enumerate(zip(names, score_ranges))
                    for a, (attack, eps) in enumerate(settings)]
            tables.append(Table("defense_scores.csv", f"The defense benchmark's scores, {self.defense}"
                                + (" (adaptive attacks)" if args.adaptive else ""), rows, DEFENSE_SCORE_COLUMNS))
        if args.certify:
            widths, images = [], []
            for k, (name, score_range) in enumerate(zip(names, score_ranges)):
                smoothed, lower, upper = arrays["smoothed"][k], arrays["lower"][k], arrays["upper"][k]
                widths += certify.width_rows(name, smoothed, lower, upper, args.certify_eps, score_range,
                                             sigma=args.smoothing_sigma, samples=args.samples, confidence=args.confidence)
                images += [dict(model=name, image=path, radius=radius, smoothed=smoothed[i], lower=lower[r, i],
                                upper=upper[r, i], width=upper[r, i] - lower[r, i])
                           for i, path in enumerate(paths) for r, radius in enumerate(args.certify_eps)]
            title = (f"Certified score intervals by median smoothing (sigma {args.smoothing_sigma:g}, {args.samples} "
                     f"samples, confidence {args.confidence:g}); width_share: of the score range")
            tables += [Table("certified.csv", title, widths, certify.CERTIFIED_COLUMNS),
                       Table("certified_images.csv", "", images, IMAGE_COLUMNS)]
        return tables

    def per_image(self, k: int) -> dict[str, np.ndarray]:
        """Checkpoint k's per-image arrays for the JSON's scores ([settings,] images), the certificates
        left out (they are in certified_images)."""
        return {name: array[k].numpy() for name, array in self.arrays.items() if name not in CERTIFICATE_ARRAYS}
