"""Pictures of a robustness evaluation and of an attack, drawn with matplotlib into PNG files.

matplotlib is imported only inside the functions that draw, so that everything else runs without it;
figures are built without pyplot (no window, no global state: PNGs come from matplotlib's Agg canvas).

- `plot_robustness_curves`: SROCC(clean, attacked) and mean |score change| against eps, one line per
  model x attack (robustness_vs_eps.png of evaluate_robustness.py);
- `plot_score_shifts`: histograms of the per-image score changes, one panel per model
  (score_shift.png);
- `plot_attack_comparison`: clean | adversarial | amplified perturbation, per patch, with their
  scores (comparison.png of FGSM_demo.py).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

DPI = 100
PANEL_INCHES = 2.4  # side of one image panel of the attack comparison
MAX_COMPARISON_PATCHES = 4
PERTURBATION_GAIN = 10.0  # the comparison shows 0.5 + 10 * (adversarial - clean): mid-grey is no change
PIXELS_PER_EPS_UNIT = 255  # eps axes in 1/255 units, as attacks are usually quoted
LINE_STYLES = ("-", "--", ":", "-.")  # one per model
SROCC_AXIS_BOTTOM = 0.8  # the SROCC axis shows at least [0.8, 1]
NO_PLOT_HINT = "install it (pip install -r requirements.txt) or pass --no_plot"


class Curve(NamedTuple):
    """One model x attack over an eps sweep (the points at eps 0 are implied: SROCC 1, change 0)."""
    model: str
    attack: str
    eps: Sequence[float]  # attack radii, [0, 1] pixel units, increasing
    srocc: Sequence[float]  # SROCC between clean and attacked predictions at each eps (NaN: undefined)
    mean_abs_change: Sequence[float]  # mean |s' - s| over the images at each eps, score units


def check_matplotlib() -> None:
    """Raise ImportError (saying what to do) now, before any work, if matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(f"the plots need matplotlib: {NO_PLOT_HINT}")


def _figure(width_inches: float, height_inches: float):
    check_matplotlib()
    from matplotlib.figure import Figure
    return Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _colors(names: Sequence[str]) -> dict[str, str]:
    """A colour of matplotlib's default cycle per distinct name, in order of first appearance."""
    return {name: f"C{index % 10}" for index, name in enumerate(dict.fromkeys(names))}


def plot_robustness_curves(path: Path | str, curves: Sequence[Curve]) -> Path:
    """robustness_vs_eps.png: left, SROCC between clean and attacked predictions; right, mean |score
    change|; both against eps (in 1/255), from eps 0. Colour: attack; line style: model."""
    colors = _colors([curve.attack for curve in curves])
    models = dict.fromkeys(curve.model for curve in curves)
    styles = {model: LINE_STYLES[index % len(LINE_STYLES)] for index, model in enumerate(models)}
    model_columns = min(2, len(models))  # checkpoint names are long: two to a row fit the width
    figure = _figure(10.0, 4.0 + 0.25 * -(-len(models) // model_columns))  # room for the models' legend below
    srocc_axes, change_axes = figure.subplots(1, 2)
    for curve in curves:
        eps = PIXELS_PER_EPS_UNIT * np.concatenate([[0.0], np.asarray(curve.eps, dtype=np.float64)])
        style = dict(color=colors[curve.attack], linestyle=styles[curve.model], marker="o", markersize=3)
        srocc_axes.plot(eps, np.concatenate([[1.0], curve.srocc]), **style)
        change_axes.plot(eps, np.concatenate([[0.0], curve.mean_abs_change]), **style)
    lowest = np.nanmin([np.nanmin(np.asarray(curve.srocc, dtype=np.float64), initial=1.0) for curve in curves])
    srocc_axes.set_ylim(min(SROCC_AXIS_BOTTOM, lowest - 0.02), 1.01)  # a flat line at 1 reads as "nothing moved"
    srocc_axes.set(xlabel="eps (1/255)", ylabel="SROCC(clean, attacked)", title="Ranking kept")
    change_axes.set(xlabel="eps (1/255)", ylabel="mean |attacked - clean| (score units)", title="Score change")
    for axes in (srocc_axes, change_axes):
        axes.grid(alpha=0.3)
    # Two short legends instead of one entry per model x attack: colour names the attack, style the model.
    from matplotlib.lines import Line2D
    change_axes.legend([Line2D([], [], color=color, marker="o", markersize=3) for color in colors.values()],
                       list(colors), title="attack", fontsize="small", loc="best")
    figure.legend([Line2D([], [], color="black", linestyle=style) for style in styles.values()], list(styles),
                  loc="outside lower center", ncols=model_columns, fontsize="small")
    return _save(figure, path)


def plot_score_shifts(path: Path | str, shifts: dict[str, dict[str, np.ndarray]], eps: float) -> Path:
    """score_shift.png: per model (one panel each, same axes), a histogram per attack of the
    per-image score changes s' - s (N,) at radius `eps` ([0, 1] pixel units). shifts: model ->
    attack -> changes."""
    values = np.concatenate([np.ravel(v) for per_attack in shifts.values() for v in per_attack.values()])
    low, high = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
    low, high = min(low, 0.0), max(high, 0.0)
    bins = np.linspace(low, high if high > low else low + 1.0, 21)
    colors = _colors([attack for per_attack in shifts.values() for attack in per_attack])
    figure = _figure(4.5 * len(shifts), 3.6)
    panels = np.atleast_1d(figure.subplots(1, len(shifts), sharex=True, sharey=True))
    for axes, (model, per_attack) in zip(panels, shifts.items()):
        for attack, change in per_attack.items():
            axes.hist(np.ravel(change), bins=bins, histtype="step", linewidth=1.5, color=colors[attack], label=attack)
        axes.axvline(0.0, color="grey", linewidth=0.8)
        axes.set(title=model, xlabel="attacked - clean score (score units)", ylabel="images")
        axes.legend(fontsize="small")
    figure.suptitle(f"Per-image score change at eps {eps * PIXELS_PER_EPS_UNIT:.3g}/255")
    return _save(figure, path)


def _as_image(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) for imshow."""
    return pixels.detach().float().clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy()


def plot_attack_comparison(path: Path | str, clean: torch.Tensor, adversarial: torch.Tensor,
                           clean_scores: Sequence[float], attacked_scores: Sequence[float]) -> Path:
    """comparison.png: for the first MAX_COMPARISON_PATCHES patches, one row each: the clean patch,
    the adversarial patch and the perturbation amplified PERTURBATION_GAIN times around mid-grey, with
    the clean and attacked scores. clean, adversarial: (N, 3, H, W) in [0, 1]. The picture is
    3 x rows panels of PANEL_INCHES at DPI."""
    rows = min(len(clean), MAX_COMPARISON_PATCHES)
    if rows == 0:
        raise ValueError("no patches to draw")
    figure = _figure(3 * PANEL_INCHES, rows * PANEL_INCHES)
    panels = np.atleast_2d(figure.subplots(rows, 3))
    for row in range(rows):
        perturbation = 0.5 + PERTURBATION_GAIN * (adversarial[row] - clean[row])
        change = float(attacked_scores[row]) - float(clean_scores[row])
        titles = (f"clean: {float(clean_scores[row]):.2f}",
                  f"attacked: {float(attacked_scores[row]):.2f} ({change:+.2f})", f"perturbation x{PERTURBATION_GAIN:g}")
        for axes, image, title in zip(panels[row], (clean[row], adversarial[row], perturbation), titles):
            axes.imshow(_as_image(image), interpolation="nearest")
            axes.set_title(title, fontsize="medium")
            axes.set_axis_off()
    return _save(figure, path)
