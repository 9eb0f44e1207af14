"""Adversarial attacks on quality models, and the batched scoring and gradient norms of patches.

Every function takes a score model that maps NORMALIZED images (B, 3, H, W) to scores (B,) (e.g.
`models.HyperIQA`) and PIXEL images (B, 3, H, W) in [0, 1]; the ImageNet normalization
(`models.normalize`) is applied inside. Inputs are never modified; the model is put in eval mode and
its previous mode restored; gradients are taken with `torch.autograd.grad`, so no parameter `.grad`
accumulates. Large batches are processed in chunks of `chunk_size` images (the result does not
depend on it: in eval mode each image is scored on its own); `chunk_size=None` picks the chunk by
device (`default_chunk_size`).

Attacks (untargeted, l_inf, pixel space):
- `iterative_fgsm`: the released FGSM demo's attack (Kurakin et al., "Adversarial examples in the
  physical world", 2016): `steps` steps of `alpha * sign(grad)`, each followed by projection onto
  the eps-ball around the clean image and clipping to [0, 1].
- `fgsm`: one step of size eps (Goodfellow et al., "Explaining and Harnessing Adversarial
  Examples", ICLR 2015).
- `pgd`: iterative FGSM from a uniform random start in the eps-ball (Madry et al., "Towards Deep
  Learning Models Resistant to Adversarial Attacks", ICLR 2018); with `restarts`, several starts, and
  per image the one that moved the score most.
- `mifgsm`: iterative FGSM along the sign of a momentum of l1-normalized gradients (Dong et al.,
  "Boosting Adversarial Attacks with Momentum", CVPR 2018).
- `square`: the Square Attack (Andriushchenko et al., "Square Attack: a query-efficient black-box
  adversarial attack via random search", ECCV 2020), l_inf: score queries only, no gradient. A model
  that hides its gradient (gradient masking) stops the four attacks above but not this one.

Direction, per image: lower the score when the clean score is above the middle of the score range
(50 by default), raise it otherwise, as released; every attack maximizes the score change in that
direction. The released demo judged the clean score of the un-normalized image; here it is the
model's real score of the normalized image.

Example:
    model = models.load_hyperiqa("checkpoints/livec_bs16_grad[0]_weight[0.0].pth")
    result = iterative_fgsm(model, patches, eps=0.03, alpha=0.01, steps=1)   # patches in [0, 1]
    attacked = score_patches(model, quantize_8bit(result.adversarial))
    gradient_free = square(model, patches, eps=0.03, queries=1000, generator=torch.Generator().manual_seed(0))
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Iterator, NamedTuple

import torch
from PIL import Image

import models
from images import image_to_tensor, tensor_to_image
from models import ScoreModel

DEFAULT_SCORE_MIDDLE = 50.0  # middle of LIVEC's 0-100 MOS range: the released direction threshold
DEFAULT_EPS = 0.03  # l_inf radius in [0, 1] pixel units (about 8 / 255), the released default
DEFAULT_ALPHA = 0.01  # step size in pixel units, the released default
DEFAULT_STEPS = 1  # the released default: one step of 0.01
PGD_STEPS = 10  # PGD's default number of steps in a sweep
PGD_STEP_FRACTION = 2.5  # PGD's default step size: 2.5 * eps / steps (Madry et al.), so the steps can cross the ball
MIFGSM_STEPS = 10  # MI-FGSM's default: 10 steps of eps / 10 (Dong et al.)
MIFGSM_MOMENTUM = 1.0  # decay factor mu of the accumulated gradient (Dong et al.)
SQUARE_QUERIES = 1000  # the square attack's default budget: score queries per image
SQUARE_P_INIT = 0.05  # initial fraction of an image's pixels in a square: the paper's value for l_inf on ImageNet
# The paper's schedule of the square size is written for 10000 queries and rescaled to the budget: the
# fraction p_init is halved each time the rescaled query index passes one of these milestones.
SQUARE_SCHEDULE_QUERIES = 10000
SQUARE_HALVING_MILESTONES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Images per forward/backward pass, by device (`default_chunk_size`). CPU: on 2 cores of an Intel Xeon,
# chunks of 1, 2, 4, 8, 13 and 25 HyperIQA patches gave 6.4, 7.7, 8.7, 9.7, 9.3 and 8.3 input gradients
# per second; a chunk of 8 needs about 1.1 GB for its backward.
CPU_CHUNK_SIZE = 8
# CUDA: the 25 patches of an image in one pass; the input-gradient pass of 32 HyperIQA patches holds
# about 3 GB of activations, which any recent GPU has.
CUDA_CHUNK_SIZE = 32
LOWER, RAISE = -1.0, 1.0


class AttackResult(NamedTuple):
    adversarial: torch.Tensor  # (B, 3, H, W) in [0, 1], detached, unrounded
    clean_scores: torch.Tensor  # (B,) scores of the clean images that chose each direction


@contextlib.contextmanager
def _eval_mode(model: ScoreModel) -> Iterator[None]:
    """Run the block with `model` (if it is an nn.Module) in eval mode, then restore its mode."""
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        yield
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)


def default_chunk_size(device: torch.device | str) -> int:
    """Images per forward/backward pass on `device`: CUDA_CHUNK_SIZE on CUDA, CPU_CHUNK_SIZE elsewhere."""
    return CUDA_CHUNK_SIZE if torch.device(device).type == "cuda" else CPU_CHUNK_SIZE


def _chunks(pixels: torch.Tensor, chunk_size: int | None) -> list[torch.Tensor]:
    if chunk_size is None:
        chunk_size = default_chunk_size(pixels.device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return list(pixels.split(chunk_size))


def _check_pixels(pixels: torch.Tensor) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixel images of shape (B, 3, H, W), got {tuple(pixels.shape)}")


def attack_direction(clean_scores: torch.Tensor, middle: float = DEFAULT_SCORE_MIDDLE) -> torch.Tensor:
    """Per-image step direction (B,): -1 (lower the score) where the clean score is above `middle`,
    +1 (raise it) otherwise."""
    return torch.where(clean_scores > middle, LOWER, RAISE).to(clean_scores.dtype)


def _projected_sign_steps(model: ScoreModel, pixels: torch.Tensor, eps: float, alpha: float, steps: int,
                          middle: float, start: torch.Tensor | None, momentum: float | None = None) -> AttackResult:
    """The attack on one chunk (B, 3, H, W) in [0, 1]; `start`: None (the clean image) or a start point;
    `momentum`: None (step along the gradient's sign) or MI-FGSM's decay factor."""
    clean = pixels.detach()
    direction = None
    if start is not None:
        with torch.inference_mode():
            clean_scores = model(models.normalize(clean))
        clean_scores = clean_scores.clone()
        direction = attack_direction(clean_scores, middle)
    adversarial = clean.clone() if start is None else start.detach().clone()
    accumulated = torch.zeros_like(clean)  # MI-FGSM's momentum of l1-normalized gradients
    for _ in range(steps):
        adversarial.requires_grad_(True)
        scores = model(models.normalize(adversarial))
        if direction is None:  # first step from the clean image: its scores choose the directions
            clean_scores = scores.detach().clone()
            direction = attack_direction(clean_scores, middle)
        (grad,) = torch.autograd.grad((scores * direction).sum(), adversarial)
        with torch.no_grad():
            if momentum is not None:  # a vanishing gradient adds nothing (rather than 0 / 0)
                l1 = grad.abs().sum(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
                accumulated = momentum * accumulated + grad / l1
                grad = accumulated
            adversarial = adversarial + alpha * grad.sign()
            adversarial = torch.min(torch.max(adversarial, clean - eps), clean + eps).clamp_(0.0, 1.0)
    return AttackResult(adversarial.detach(), clean_scores)


def _check_budget(eps: float, alpha: float, steps: int) -> None:
    if not eps > 0 or not alpha > 0:
        raise ValueError(f"eps and alpha must be > 0, got eps={eps}, alpha={alpha}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def _attack(model: ScoreModel, pixels: torch.Tensor, eps: float, alpha: float, steps: int, middle: float,
            chunk_size: int | None, start: torch.Tensor | None = None, momentum: float | None = None) -> AttackResult:
    _check_pixels(pixels)
    _check_budget(eps, alpha, steps)
    starts = [None] * len(_chunks(pixels, chunk_size)) if start is None else _chunks(start, chunk_size)
    with _eval_mode(model):
        results = [_projected_sign_steps(model, chunk, eps, alpha, steps, middle, chunk_start, momentum)
                   for chunk, chunk_start in zip(_chunks(pixels, chunk_size), starts)]
    return AttackResult(torch.cat([r.adversarial for r in results]), torch.cat([r.clean_scores for r in results]))


def iterative_fgsm(model: ScoreModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, alpha: float = DEFAULT_ALPHA,
                   steps: int = DEFAULT_STEPS, middle: float = DEFAULT_SCORE_MIDDLE,
                   chunk_size: int | None = None) -> AttackResult:
    """Iterative FGSM, the released demo's attack, on pixel images (B, 3, H, W) in [0, 1].

    eps: l_inf radius (pixel units); alpha: step size (pixel units); steps: number of steps;
    middle: the score above which an image's score is pushed down (else up). Returns the adversarial
    images (unrounded) and the clean scores.
    """
    return _attack(model, pixels, eps, alpha, steps, middle, chunk_size)


def fgsm(model: ScoreModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, middle: float = DEFAULT_SCORE_MIDDLE,
         chunk_size: int | None = None) -> AttackResult:
    """FGSM: one step of size `eps` (pixel units) along the gradient sign, clipped to [0, 1]."""
    return _attack(model, pixels, eps, eps, 1, middle, chunk_size)


def pgd(model: ScoreModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, alpha: float = DEFAULT_ALPHA,
        steps: int = PGD_STEPS, middle: float = DEFAULT_SCORE_MIDDLE, generator: torch.Generator | None = None,
        chunk_size: int | None = None, restarts: int = 1) -> AttackResult:
    """PGD: iterative FGSM from a start drawn uniformly in the eps-ball (clipped to [0, 1]).

    The start is drawn for the whole batch from `generator` (on the CPU), so the result does not
    depend on `chunk_size`. Directions come from the clean images' scores. With `restarts` > 1 the
    attack runs from that many starts (drawn one after the other, the first one as with one restart)
    and keeps, per image, the adversarial image whose (unrounded) score moved most in its direction:
    one extra forward pass per restart.
    """
    _check_pixels(pixels)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    best, best_gain = None, None
    for _ in range(restarts):
        noise = torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype).to(pixels.device)
        start = (pixels.detach() + (2 * noise - 1) * eps).clamp(0.0, 1.0)
        result = _attack(model, pixels, eps, alpha, steps, middle, chunk_size, start)
        if restarts == 1:
            return result
        gain = attack_direction(result.clean_scores, middle) * (
            score_patches(model, result.adversarial, chunk_size) - result.clean_scores)
        if best is None:
            best, best_gain = result.adversarial, gain
        else:
            best, best_gain = _keep_better(best, best_gain, result.adversarial, gain)
    return AttackResult(best, result.clean_scores)


def _keep_better(best: torch.Tensor, best_gain: torch.Tensor, candidate: torch.Tensor,
                 gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, `candidate` (B, 3, H, W) where its gain (B,) beats `best_gain`, else `best`: the
    images and their gains."""
    better = gain > best_gain
    return torch.where(better[:, None, None, None], candidate, best), torch.where(better, gain, best_gain)


def mifgsm(model: ScoreModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, alpha: float | None = None,
           steps: int = MIFGSM_STEPS, middle: float = DEFAULT_SCORE_MIDDLE, chunk_size: int | None = None,
           momentum: float = MIFGSM_MOMENTUM) -> AttackResult:
    """MI-FGSM on pixel images (B, 3, H, W) in [0, 1]: `steps` steps of `alpha` (default eps / steps,
    pixel units) along the sign of g_t = momentum * g_(t-1) + grad_t / ||grad_t||_1 (l1 norm per
    image), each followed by projection onto the eps-ball and clipping to [0, 1]. With momentum 0
    it is iterative FGSM."""
    alpha = eps / steps if alpha is None else alpha
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    return _attack(model, pixels, eps, alpha, steps, middle, chunk_size, momentum=momentum)


def square_fraction(query: int, queries: int, p_init: float = SQUARE_P_INIT) -> float:
    """Fraction of an image's pixels covered by the square of window query `query` (0-based) out of a
    budget of `queries`: the paper's schedule, p_init halved at each of SQUARE_HALVING_MILESTONES that
    the query index, rescaled to SQUARE_SCHEDULE_QUERIES, has passed (p_init / 512 at the end)."""
    rescaled = int(query / queries * SQUARE_SCHEDULE_QUERIES)
    return p_init / 2 ** sum(rescaled > milestone for milestone in SQUARE_HALVING_MILESTONES)


def square_side(fraction: float, height: int, width: int) -> int:
    """Side (pixels) of a square covering `fraction` of a height x width image: at least 1, and
    smaller than the image, so that it has more than one place to go."""
    return max(1, min(round(math.sqrt(fraction * height * width)), min(height, width) - 1))


def _random_signs(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """-1 or +1 with equal chance, drawn on the CPU from `generator`, as `like`'s dtype and device."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(like.device, like.dtype)


def square(model: ScoreModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, queries: int = SQUARE_QUERIES,
           middle: float = DEFAULT_SCORE_MIDDLE, generator: torch.Generator | None = None,
           chunk_size: int | None = None, p_init: float = SQUARE_P_INIT) -> AttackResult:
    """The l_inf Square Attack on pixel images (B, 3, H, W) in [0, 1]: random search on the vertices of
    the eps-ball (pixel units), with `queries` score queries per image and no gradient.

    Query 1 scores the start: vertical stripes, each column of each channel moved by +eps or -eps.
    Each further query scores, for every image, a candidate whose square window (side from
    `square_fraction`, at a random place) is set to clean + eps or clean - eps, one sign per channel;
    an image takes its candidate only where the score moved further in its direction. Every image
    stays in the eps-ball and in [0, 1]. The clean images' scores, which choose the directions, are
    not counted as queries. All random draws come from `generator` (on the CPU), for the whole batch
    at once, so the result does not depend on `chunk_size`. Unlike the paper's code, a window whose
    new signs change nothing is not redrawn: it costs its query.
    """
    _check_pixels(pixels)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be a fraction of the image in (0, 1], got {p_init}")
    clean = pixels.detach()
    batch, channels, height, width = clean.shape
    rows = torch.arange(height, device=clean.device)
    columns = torch.arange(width, device=clean.device)

    with _eval_mode(model), torch.no_grad():
        clean_scores = score_patches(model, clean, chunk_size)  # each call: one query for every image
        direction = attack_direction(clean_scores, middle)
        stripes = _random_signs((batch, channels, 1, width), generator, clean)
        best = (clean + eps * stripes).clamp(0.0, 1.0)
        best_gain = direction * (score_patches(model, best, chunk_size) - clean_scores)
        for query in range(queries - 1):
            side = square_side(square_fraction(query, queries, p_init), height, width)
            top = torch.randint(0, height - side + 1, (batch, 1), generator=generator).to(clean.device)
            left = torch.randint(0, width - side + 1, (batch, 1), generator=generator).to(clean.device)
            signs = _random_signs((batch, channels, 1, 1), generator, clean)
            in_rows = (rows >= top) & (rows < top + side)  # (B, H)
            in_columns = (columns >= left) & (columns < left + side)  # (B, W)
            window = (in_rows[:, :, None] & in_columns[:, None, :])[:, None]  # (B, 1, H, W)
            candidate = torch.where(window, (clean + eps * signs).clamp(0.0, 1.0), best)
            gain = direction * (score_patches(model, candidate, chunk_size) - clean_scores)
            best, best_gain = _keep_better(best, best_gain, candidate, gain)
    return AttackResult(best, clean_scores)


ATTACKS = ("fgsm", "ifgsm", "pgd", "mifgsm", "square")


def attack_settings(name: str, eps: float, alpha: float | None = None, steps: int | None = None,
                    queries: int | None = None) -> tuple[float, int]:
    """(step size, steps) that attack `name` runs with at `eps`, `alpha`, `steps` and `queries` filling
    in what is given: fgsm is one step of eps; ifgsm defaults to the released demo's one step of 0.01;
    pgd to PGD_STEPS steps of PGD_STEP_FRACTION * eps / steps; mifgsm to MIFGSM_STEPS steps of
    eps / steps. square has no step size (NaN; each pixel sits at clean +- eps) and runs `queries`
    queries (default SQUARE_QUERIES) whatever `alpha` and `steps` say."""
    if name == "fgsm":
        return eps, 1
    if name == "ifgsm":
        return (DEFAULT_ALPHA if alpha is None else alpha), (DEFAULT_STEPS if steps is None else steps)
    if name == "pgd":
        steps = PGD_STEPS if steps is None else steps
        return (PGD_STEP_FRACTION * eps / steps if alpha is None else alpha), steps
    if name == "mifgsm":
        steps = MIFGSM_STEPS if steps is None else steps
        return (eps / steps if alpha is None else alpha), steps
    if name == "square":
        return math.nan, (SQUARE_QUERIES if queries is None else queries)
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")


def run_attack(name: str, model: ScoreModel, pixels: torch.Tensor, eps: float, alpha: float, steps: int,
               middle: float = DEFAULT_SCORE_MIDDLE, generator: torch.Generator | None = None,
               chunk_size: int | None = None, *, restarts: int = 1) -> AttackResult:
    """Run attack `name` (one of ATTACKS) at l_inf radius `eps` with step size `alpha` (both pixel
    units) and `steps` steps; for square, `steps` is the number of queries per image and `alpha` is
    ignored. fgsm ignores alpha and steps; only pgd and square draw from `generator`; only pgd uses
    `restarts`. The other settings (momentum, p_init) are the defaults of `mifgsm` and `square`."""
    if name == "fgsm":
        return fgsm(model, pixels, eps, middle, chunk_size)
    if name == "ifgsm":
        return iterative_fgsm(model, pixels, eps, alpha, steps, middle, chunk_size)
    if name == "pgd":
        return pgd(model, pixels, eps, alpha, steps, middle, generator, chunk_size, restarts)
    if name == "mifgsm":
        return mifgsm(model, pixels, eps, alpha, steps, middle, chunk_size)
    if name == "square":
        return square(model, pixels, eps, steps, middle, generator, chunk_size)
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")


# ---------------------------------------------------------------------------------------------
# Scores and gradient norms of patches


def score_patches(model: ScoreModel, pixels: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Scores (B,) of pixel images (B, 3, H, W) in [0, 1], without gradients."""
    _check_pixels(pixels)
    with _eval_mode(model), torch.inference_mode():
        scores = torch.cat([model(models.normalize(chunk)) for chunk in _chunks(pixels, chunk_size)])
    return scores.clone()  # a normal tensor again, usable outside inference mode


def scores_and_gradient_norms(model: ScoreModel, pixels: torch.Tensor,
                              chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) and the l1 norms (B,) of d score / d input, with the input in NORMALIZED space
    (the quantity the released quality-and-norm demo prints), of pixel images (B, 3, H, W) in [0, 1]."""
    _check_pixels(pixels)
    scores, norms = [], []
    with _eval_mode(model):
        for chunk in _chunks(pixels, chunk_size):
            normalized = models.normalize(chunk.detach()).requires_grad_(True)
            chunk_scores = model(normalized)
            (grad,) = torch.autograd.grad(chunk_scores.sum(), normalized)  # each score sees only its image
            scores.append(chunk_scores.detach())
            norms.append(grad.abs().flatten(1).sum(dim=1))
    return torch.cat(scores), torch.cat(norms)


# ---------------------------------------------------------------------------------------------
# Adversarial images as they are saved or re-compressed


def quantize_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """Round pixel images in [0, 1] to the nearest of the 256 levels an 8-bit file stores (same shape)."""
    return torch.round(pixels.clamp(0.0, 1.0) * 255.0) / 255.0


def jpeg_recompress(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """Each pixel image (B, 3, H, W) in [0, 1] encoded as a JPEG of `quality` (1-95) and decoded again:
    the JPEG defense of the NT authors' follow-up work. Returns (B, 3, H, W) in [0, 1]."""
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be between 1 and 95, got {quality}")
    _check_pixels(pixels)
    decoded = []
    for image in pixels.detach().cpu():
        buffer = io.BytesIO()
        tensor_to_image(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as jpeg:
            decoded.append(image_to_tensor(jpeg.convert("RGB")))
    return torch.stack(decoded).to(pixels.device)
