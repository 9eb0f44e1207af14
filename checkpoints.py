"""Checkpoint files of every model family: reading them without running code, loading them strictly,
writing them atomically, and naming them.

A checkpoint holds a state_dict, bare or under a key: `{'model': ...}` (our files, the NT and
LinearityIQA releases), `{'params': ...}` (pyiqa's files), `{'state_dict': ...}`; keys saved from
`nn.DataParallel` carry a `module.` prefix, which is stripped. What sits beside the state_dict (our
`family`, `config`, `epoch`; LinearityIQA's `k` and `b`) is kept as the checkpoint's metadata.
Files are read with `torch.load(..., weights_only=True)`. A file that it refuses, because its pickle
names other Python objects (the MANIQA PIPAL22 release is a whole pickled `DataParallel(MANIQA)`),
is read again by the restricted reader of safe_pickle.py, which never imports a class from the file
and keeps only the tensors: from a pickled model its state_dict (and its plain attributes as the
metadata `module_attributes`). A file whose pickle asks to call anything is refused.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn as nn

import safe_pickle
from atomic_file import atomic_write

STATE_KEYS = ("model", "params", "state_dict")  # where the state_dict sits in a wrapped checkpoint
DATAPARALLEL_PREFIX = "module."
ADVERSARIAL_EPS_DECIMALS = 4  # eps in a checkpoint name: 4/255 -> 0.0157
DEFAULT_FAMILY = "hyperiqa"  # the family whose checkpoint names carry no family part (the released names)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


class Checkpoint(NamedTuple):
    state: "OrderedDict[str, torch.Tensor]"  # the state_dict, without `module.` prefixes
    meta: dict[str, Any]  # everything stored beside the state_dict (empty for a bare state_dict)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_checkpoint(path: str | os.PathLike, map_location: torch.device | str = "cpu",
                    missing_help: str = "") -> Checkpoint:
    """The state_dict and metadata stored in `path`, whatever the wrapper (see the module docstring).

    Loads with `weights_only=True`, and a file it refuses with the restricted reader (see the module
    docstring). Raises CheckpointError with a one-line reason: a missing file (followed by
    `missing_help`, e.g. where the authors' checkpoints are found), a directory, a truncated or
    unreadable file, a file whose pickle asks to run code, a file without a state_dict.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}" + (f" ({missing_help})" if missing_help else ""))
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if "weights_only" not in str(exc) and "Unsupported global" not in str(exc):
            raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
        obj = _read_restricted(path)
        if isinstance(obj, safe_pickle.InertObject):
            return _pickled_model(obj, path, map_location)
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        key = next((k for k in STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is not None:
            meta = {k: v for k, v in obj.items() if k != key}
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (expected a dict of tensors, or one under "
                              f"{', '.join(repr(k) for k in STATE_KEYS)})")
    state = strip_dataparallel_prefix(obj)
    return Checkpoint(OrderedDict((key, tensor.to(map_location)) for key, tensor in state.items()), meta)


def _read_restricted(path: Path) -> Any:
    """The object of a checkpoint that weights_only refused, by the restricted reader (tensors on the
    CPU); CheckpointError when that reader refuses it too."""
    try:
        return safe_pickle.load_torch_file(path)
    except safe_pickle.PickleRefused as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: it contains Python objects other than tensors, and "
                              f"loading it could run code ({_first_line(exc)}); refused") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None


def _pickled_model(record: safe_pickle.InertObject, path: Path, map_location: torch.device | str) -> Checkpoint:
    """The checkpoint of a whole pickled model: its state_dict on `map_location`, and as metadata the
    class it was (inside a DataParallel, the wrapped one) and its plain attributes by dotted name."""
    try:
        state = safe_pickle.module_state(record)
    except ValueError:
        raise CheckpointError(f"{path} holds a pickled {record.qualified_name}, neither a model nor a "
                              "state_dict") from None
    inner = record.attributes().get("_modules", {}).get("module") if record.inert_name == "DataParallel" else None
    meta = {"pickled_model": (inner or record).qualified_name,
            "module_attributes": dict(strip_dataparallel_prefix(safe_pickle.module_attributes(record)))}
    state = OrderedDict((key, tensor.to(map_location)) for key, tensor in strip_dataparallel_prefix(state).items())
    return Checkpoint(state, meta)


def strip_dataparallel_prefix(state: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """`state` (a state_dict, or anything keyed by module path) with the `module.` prefix of
    nn.DataParallel removed from every key that has it."""
    return OrderedDict((k[len(DATAPARALLEL_PREFIX):] if k.startswith(DATAPARALLEL_PREFIX) else k, v)
                       for k, v in state.items())


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def state_mismatch(network: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """What keeps `state` from loading strictly into `network` ('' when it fits): missing and
    unexpected keys, and shape mismatches, each with up to five examples."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
                   if k in state and state[k].shape != v.shape]
    parts = [f"{len(missing)} missing keys: {_listed(missing)}" if missing else "",
             f"{len(unexpected)} unexpected keys: {_listed(unexpected)}" if unexpected else "",
             f"{len(wrong_shape)} shape mismatches: {_listed(wrong_shape)}" if wrong_shape else ""]
    return "; ".join(part for part in parts if part)


def load_state_strictly(network: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike,
                        what: str | None = None) -> nn.Module:
    """Load `state` into `network` with strict=True; CheckpointError naming `source` (the file), `what`
    (the model, default the network's class) and what does not fit. Returns `network`."""
    mismatch = state_mismatch(network, state)
    if mismatch:
        raise CheckpointError(f"{source} does not fit {what or type(network).__name__}: {mismatch}")
    network.load_state_dict(state, strict=True)
    return network


def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None, **extra: Any) -> None:
    """Write `{'model': state_dict, 'optimizer': state_dict or None, **extra}` atomically (`optimizer`:
    the optimizer, or its state_dict already, e.g. that of a checkpoint written again).

    The file is written next to `path` under a temporary name, flushed, then renamed over `path`, so an
    interruption never leaves a truncated checkpoint. `extra` must hold only tensors, numbers,
    strings, lists, dicts or None (so it reloads with weights_only=True).
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.state_dict()
    payload = {"model": model.state_dict(), "optimizer": optimizer, **extra}
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def checkpoint_name(dataset: str, batch_size: int, if_grad: bool, weight: float = 0.0, h: float = 0.01,
                    adv_train: str = "none", adv_eps: float | None = None, adv_steps: int | None = None,
                    family: str = DEFAULT_FAMILY) -> str:
    """The checkpoint file name of a training run: the one function that builds these names.

    Released names (HyperIQA): baseline `{dataset}_bs{bs}_grad[0]_weight[0.0].pth`, NT
    `{dataset}_bs{bs}_grad[1]_weight[{weight}]_h[{h}].pth` (the name the released demos load). Any
    other family adds its name after the data set: `livec_dbcnn_bs8_grad[1]_weight[0.001]_h[0.01].pth`.
    Adversarial training adds its attack and eps (pixel units, 4 decimals) before `.pth`:
    `_adv[fgsm-0.0157]`, or with PGD its number of steps, `_adv[pgd10-0.0157]`; e.g. AT with NT:
    `livec_bs16_grad[1]_weight[0.001]_h[0.01]_adv[pgd10-0.0157].pth`.
    """
    run = dataset if family == DEFAULT_FAMILY else f"{dataset}_{family}"
    name = f"{run}_bs{batch_size}_grad[0]_weight[0.0]"
    if if_grad:
        name = f"{run}_bs{batch_size}_grad[1]_weight[{float(weight)}]_h[{float(h)}]"
    if adv_train == "none":
        return name + ".pth"
    if adv_train not in ("fgsm", "pgd") or adv_eps is None or (adv_train == "pgd" and adv_steps is None):
        raise ValueError(f"an adversarial-training name needs fgsm and eps, or pgd, eps and steps; got "
                         f"{adv_train!r}, eps {adv_eps}, steps {adv_steps}")
    attack = "fgsm" if adv_train == "fgsm" else f"pgd{adv_steps}"
    return name + f"_adv[{attack}-{adv_eps:.{ADVERSARIAL_EPS_DECIMALS}f}].pth"


def family_in_name(path: str | os.PathLike, families: tuple[str, ...]) -> str | None:
    """The family a checkpoint file name written by `checkpoint_name` says (`{dataset}_{family}_bs...`),
    or None when it names none of `families` (a released HyperIQA name, or another file)."""
    stem = Path(path).name
    found = [family for family in families if family != DEFAULT_FAMILY and f"_{family}_bs" in stem]
    return found[0] if len(found) == 1 else None
