"""Several processes under torchrun: the process group, the collectives the scripts need, and the
model wrapper.

    torchrun --standalone --nproc_per_node 4 train_test_IQA_sparsity.py ...

torchrun starts one process per GPU (or per CPU slot) and sets RANK, WORLD_SIZE and LOCAL_RANK;
`start` joins them into one group (`env://`): NCCL on CUDA, one GPU per local rank, gloo on the CPU.
Without torchrun, `start` returns a group of one process and every collective here is a no-op, so a
single process runs the same code with no torch.distributed at all. Rank 0 alone prints, logs and
writes files. A collective that finds a peer gone raises PeerFailed (a one-line error), so the other
processes stop instead of waiting.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from models import select_device


T = TypeVar("T")


class PeerFailed(ConnectionError):
    """Another process of the run stopped; its own message says why."""


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: rank in [0, world_size), the device it computes on, and whether
    torchrun started it (then a process group exists)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launched: bool = False

    @property
    def is_main(self) -> bool:
        """True in the process that prints, logs and writes files (rank 0)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or any `env://` launcher) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(device_name: str | None = None) -> Processes:
    """Join the run's process group when torchrun started this process, else a group of one.

    device_name: the scripts' --device. Under torchrun, 'auto' or 'cuda' mean this process's GPU
    (cuda:LOCAL_RANK, NCCL) when CUDA is present; 'cpu' (or no CUDA) means the CPU with gloo.
    """
    if not launched_by_torchrun():
        return Processes(device=select_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = select_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                             "start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return Processes(rank, world_size, local_rank, device, launched=True)


def stop(processes: Processes) -> None:
    """Leave the process group (nothing for a single process)."""
    if processes.launched and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_name: str | None = None) -> Iterator[Processes]:
    """`with process_group(args.device) as processes:` `start`, then `stop` at the end. A run that ends
    normally first waits for every process, so that none closes its connections while another still
    reads from them (gloo aborts a process that loses a peer in the middle of an exchange); a run that
    fails leaves at once, as a peer may be waiting in another exchange."""
    processes = start(device_name)
    try:
        yield processes
    except BaseException:
        stop(processes)
        raise
    wait_for_all(processes)
    stop(processes)


def main_first(processes: Processes, build: Callable[[], T]) -> T:
    """`build()` in every process, rank 0's first: what it writes (a generated data set) is complete
    before the others read it."""
    if processes.is_main:
        result = build()
    wait_for_all(processes)
    return result if processes.is_main else build()


def wait_for_all(processes: Processes) -> None:
    """Return when every process has reached this point."""
    if processes.world_size > 1:
        _collective(dist.barrier)


def _collective(operation, *args) -> None:
    try:
        operation(*args)
    except RuntimeError as exc:  # gloo: "Connection closed by peer"; NCCL: a failed communicator
        raise PeerFailed(f"another process of the run stopped, so this one stops too ({str(exc).splitlines()[0][:120]})") from None


def all_sum(processes: Processes, values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over the processes (in place; returned)."""
    if processes.world_size > 1:
        on_device = values.to(processes.device)
        _collective(dist.all_reduce, on_device)
        values.copy_(on_device)
    return values


def all_concatenated(processes: Processes, items: list[Any]) -> list[Any]:
    """Every process's list of picklable `items`, concatenated in rank order (the same on every rank)."""
    if processes.world_size == 1:
        return list(items)
    gathered: list[list[Any] | None] = [None] * processes.world_size
    _collective(dist.all_gather_object, gathered, items)
    return [item for part in gathered for item in part]


def share_buffers_of_rank_zero(processes: Processes, module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process, so that all test and
    save the same model."""
    if processes.world_size > 1:
        for buffer in module.buffers():
            _collective(dist.broadcast, buffer, 0)


def share_state_of_rank_zero(processes: Processes, module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (a network rank 0 alone read from a file)."""
    if processes.world_size > 1:
        with torch.no_grad():
            for tensor in module.state_dict().values():
                _collective(dist.broadcast, tensor, 0)


def wrap_for_training(processes: Processes, network: nn.Module, sync_batchnorm: bool = False) -> nn.Module:
    """`network` in DistributedDataParallel when there are several processes (gradients averaged over
    them after each backward), else `network` itself. BatchNorm uses each process's own batch
    statistics, as a single process of the released code did with its batch; with `sync_batchnorm`,
    statistics over the whole global batch (SyncBatchNorm, CUDA only)."""
    if sync_batchnorm and processes.device.type != "cuda":
        raise ValueError("--sync_bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only)")
    if processes.world_size == 1:  # nothing to average, and no other process's statistics
        return network
    if sync_batchnorm:
        # converted in place (the root is no BatchNorm), so the caller's `network` is the converted one
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    # Buffers are not synchronized at every forward: each process keeps its running statistics and
    # share_buffers_of_rank_zero aligns them before a test or a save (the keyword's name depends on
    # the PyTorch release).
    no_forward_sync = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})
    return nn.parallel.DistributedDataParallel(network, device_ids=device_ids, **no_forward_sync)


@contextlib.contextmanager
def outside_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, the forwards of `model` (a network or its DistributedDataParallel wrapper)
    on a placeholder (the entry a process left without one in an epoch's last batch runs with a loss
    weight of 0, data_loader.share_of) stay out of every BatchNorm layer's batch and running
    statistics. Each layer in training mode runs its own forward on zero entries: a plain BatchNorm
    then changes nothing; a SyncBatchNorm sends the other processes a count of 0, which PyTorch leaves
    out of the global batch statistics and of the running statistics (torch.nn.SyncBatchNorm supports
    empty inputs for this), while it still takes part in every exchange, forward and backward. The
    placeholder itself is normalized with the layer's running statistics (its output only has to be
    finite)."""
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    own = [layer.__dict__.get("forward") for layer in layers]  # a forward set on the instance, if any
    for layer in layers:
        layer.forward = functools.partial(_placeholder_batchnorm, layer, layer.forward)
    try:
        yield
    finally:
        for layer, forward in zip(layers, own):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def _placeholder_batchnorm(layer: nn.modules.batchnorm._BatchNorm, forward: Callable[[torch.Tensor], torch.Tensor],
                           x: torch.Tensor) -> torch.Tensor:
    if not layer.training:
        return forward(x)
    nothing = forward(x[:0])  # the layer's statistics over zero entries (SyncBatchNorm: its part of the exchange)
    if layer.running_mean is None:  # no running statistics to normalize with: the placeholder's own
        normalized = F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
    else:
        normalized = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0,
                                  layer.eps)
    return normalized + nothing.sum()  # in the graph, so that the backward exchange runs here too
