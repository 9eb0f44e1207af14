"""The Norm-in-Norm loss of LinearityIQA (Li, Jiang, Jiang, "Norm-in-Norm Loss with Faster Convergence
and Better Performance for Image Quality Assessment", ACM MM 2020; code lidq92/LinearityIQA,
IQAloss.py), and its monotonicity term, for predictions and targets of one batch.

The loss compares the batch's predictions and targets after both are centred and divided by their
l_q norm, so it ignores the shift and the scale of the predictions: a network trained with it scores
on a scale of its own, which a linear map fitted after training brings to the MOS scale
(families/linearityiqa.py). For a batch of N > 1 (eps = 1e-8, the released constant):

    a = (yhat - mean(yhat)) / (eps + ||yhat - mean(yhat)||_q),  c = (y - mean(y)) / (eps + ||y - mean(y)||_q)
    s = 2 ** max(1, 1/q) * N ** max(0, 1/p - 1/q)
    l0 = (||a - c||_p / s) ** p,  l1 = (||rho a - c||_p / s) ** p,  rho = cos(a, c)
    l = (alpha0 l0 + alpha1 l1) / (alpha0 + alpha1)        (a term with alpha_i = 0 is not computed)

and 0 for N = 1 (with the graph kept, as released). The released defaults are p = 1, q = 2, alpha = [1, 0]:
l = ||a - c||_1 / (2 sqrt(N)). Gradients flow through the mean and the norm of the predictions (the
released `detach` off).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8  # IQAloss.py's eps, added to the norms
RELEASED_P, RELEASED_Q = 1.0, 2.0
RELEASED_ALPHA = (1.0, 0.0)
MONOTONICITY_GAMMA = 0.1  # weight of the monotonicity term when it is on (main.py's --gamma default)


def _zero_with_graph(prediction: torch.Tensor) -> torch.Tensor:
    """0, attached to `prediction`'s graph (the released value of both terms for a batch of one)."""
    return F.l1_loss(prediction, prediction.detach())


def _normalized(values: torch.Tensor, q: float) -> torch.Tensor:
    centred = values - values.mean()
    return centred / (EPS + torch.linalg.vector_norm(centred, ord=q))


def _power_norm(error: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    if p < 1:  # the released guard against infinite gradients at 0 for p < 1
        error = error + EPS
    return (torch.linalg.vector_norm(error, ord=p) / scale) ** p


def norm_in_norm(prediction: torch.Tensor, target: torch.Tensor, alpha: tuple[float, float] = RELEASED_ALPHA,
                 p: float = RELEASED_P, q: float = RELEASED_Q) -> torch.Tensor:
    """The Norm-in-Norm loss (scalar) of predictions (N,) against targets (N,) of one batch (see the
    module docstring); alpha: the weights of the plain and the rho-scaled terms (not both 0)."""
    if alpha[0] < 0 or alpha[1] < 0 or alpha[0] + alpha[1] <= 0:
        raise ValueError(f"the Norm-in-Norm alpha must be two weights >= 0, not both 0; got {alpha}")
    count = prediction.shape[0]
    if count < 2:
        return _zero_with_graph(prediction)
    a, c = _normalized(prediction, q), _normalized(target.to(prediction.dtype), q)
    scale = 2 ** max(1.0, 1.0 / q) * count ** max(0.0, 1.0 / p - 1.0 / q)
    loss = prediction.new_zeros(())
    if alpha[0] > 0:
        loss = loss + alpha[0] * _power_norm(a - c, p, scale)
    if alpha[1] > 0:
        rho = F.cosine_similarity(a, c, dim=0)
        loss = loss + alpha[1] * _power_norm(rho * a - c, p, scale)
    return loss / (alpha[0] + alpha[1])


def monotonicity(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The released monotonicity term (scalar): the mean over ordered pairs i != j of
    relu((yhat_i - yhat_j) sign(y_j - y_i)), the pairs the predictions rank the wrong way, divided by
    1 + its largest entry; 0 for a batch of one."""
    count = prediction.shape[0]
    if count < 2:
        return _zero_with_graph(prediction)
    target = target.to(prediction.dtype)
    wrong = F.relu((prediction[:, None] - prediction[None, :]) * torch.sign(target[None, :] - target[:, None]))
    return wrong.sum() / count / (count - 1) / (1 + wrong.max())
