"""HyperIQA's released optimizer and its learning-rate schedules ('released' and 'corrected').

The functions read the TrainConfig fields lr, lr_ratio, weight_decay and schedule of `config`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

LR_DECAY_EPOCHS = 6  # the hyper-network lr is divided by 10 every 6 epochs
LAST_EPOCH_WITH_LR_RATIO = 8  # after the update at the end of 0-based epoch 8, the lr ratio is 1


def hyper_network_lr(config, epoch: int) -> float:
    """Learning rate of the hyper-network group during `epoch` (0-based).

    Released rule, applied at the end of epoch t for the next one: lr / 10 ** (t // 6), times lr_ratio
    while t <= 8, times 1 afterwards. Epoch 0 uses lr * lr_ratio.
    """
    if epoch == 0:
        return config.lr * config.lr_ratio
    t = epoch - 1
    ratio = config.lr_ratio if t <= LAST_EPOCH_WITH_LR_RATIO else 1.0
    return config.lr / 10 ** (t // LR_DECAY_EPOCHS) * ratio


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hyper-network parameters, backbone parameters): the backbone is `model.res`, the rest is the
    hyper network (its 1x1 convs and the weight generators)."""
    backbone = list(model.res.parameters())
    in_backbone = {id(p) for p in backbone}
    return [p for p in model.parameters() if id(p) not in in_backbone], backbone


def build_optimizer(model: nn.Module, config, epoch: int) -> torch.optim.Adam:
    """The Adam optimizer in use during `epoch`: groups [hyper network, backbone].

    'released': the released code rebuilt Adam at the end of every epoch from the same one-shot
    iterator of hyper-network parameters, which the first Adam had consumed; so from epoch 1 on the
    hyper-network group is EMPTY (those weights never change again), only the backbone trains, at a
    constant lr, and Adam's moments restart each epoch. The paper's numbers were obtained this way.
    'corrected': one Adam for the whole run (moments kept), both groups train; the hyper-network lr
    follows `hyper_network_lr` (see `advance_schedule`), the backbone lr stays at lr, as written in
    the released update rule.

    Under 'released' Adam is built by the released call, `torch.optim.Adam(groups, weight_decay=...)`:
    PyTorch's default update for the device (a loop over tensors on the CPU, the multi-tensor update
    on CUDA), the arithmetic of the released code. Under 'corrected' the fused update is used where
    PyTorch has it: the same mathematics in one pass over memory, equal to the default update up to
    rounding (about 1e-10 relative after 20 steps).
    """
    hyper, backbone = parameter_groups(model)
    if config.schedule == "released" and epoch > 0:
        hyper = []
    groups = [{"params": hyper, "lr": hyper_network_lr(config, epoch)}, {"params": backbone, "lr": config.lr}]
    if config.schedule == "released":
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)
    try:
        return torch.optim.Adam(groups, weight_decay=config.weight_decay, fused=True)
    except RuntimeError:  # this PyTorch has no fused Adam for the parameters' device
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)


def advance_schedule(optimizer: torch.optim.Adam, model: nn.Module, config, epoch: int) -> torch.optim.Adam:
    """The optimizer for `epoch`, from the one used in epoch - 1 (a new one under 'released')."""
    if config.schedule == "released":
        return build_optimizer(model, config, epoch)
    optimizer.param_groups[0]["lr"] = hyper_network_lr(config, epoch)
    return optimizer
