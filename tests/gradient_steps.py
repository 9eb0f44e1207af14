"""The parameter gradients of training steps on each global batch, through the solver's own functions,
in one process or in each of several: what tests/test_distributed.py compares between 2 processes
(tests/run_with_stand_in.py `gradients`, under torchrun) and 1 (in the test).

Float64, the stand-in with BatchNorm in eval mode (so that each score depends on its own patch only:
the only thing that may differ between processes is which process computes what)."""
from __future__ import annotations

from typing import Sequence

import torch

import distributed
import folders
import training_step
import models
from adversarial_training import label_range, share_crafting
from data_loader import make_train_loader
from tests.stand_in import StandInScoreModel
from train_config import TrainConfig

# The steps compared: NT, and adversarial training with 2-step PGD on 3 of every 4 patches (on the
# shares of 2 of each of 2 processes, a share's own 75% would attack 2 + 2)
STEP_CONFIGS = {
    "nt": dict(if_grad=True, weight=0.5),
    "pgd": dict(adv_train="pgd", adv_steps=2, adv_ratio=0.75, adv_eps=8 / 255),
}


def step_config(name: str, batch_size: int) -> TrainConfig:
    return TrainConfig(dataset="csv", batch_size=batch_size, train_patch_num=1, **STEP_CONFIGS[name])


def gradients_of_each_step(processes: distributed.Processes, samples: Sequence[folders.Sample], batch_size: int,
                           counts: Sequence[int], name: str) -> list[list[torch.Tensor]]:
    """For the first `count` samples of each of `counts` (a training set each), one step of the
    `name` config (STEP_CONFIGS) on every global batch of epoch 0, this process taking its share
    (training_step.share_step, adversarial views by adversarial_training.share_crafting): the averaged
    parameter gradients of every step."""
    config = step_config(name, batch_size)
    family = models.get_family("hyperiqa")
    network = StandInScoreModel().double().eval()
    model = distributed.wrap_for_training(processes, network)
    quality = family.quality_model(network).eval()  # the attacks restore eval mode
    optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    steps = []
    for count in counts:
        loader = make_train_loader(samples[:count], "csv", family.views("csv", True, 1), batch_size,
                                   rank=processes.rank, world_size=processes.world_size)
        labels = label_range(config, [sample.mos for sample in samples[:count]], (0.0, 100.0))
        for step, (images, mos, index) in enumerate(loader.batches(0)):
            length, crafting = loader.global_batch_length(step), None
            if config.adv_train != "none":
                share = share_crafting(config, (0, 0, step), length, processes.rank, processes.world_size)
                crafting = training_step.Crafting(quality, share.generators, share.views, labels)
            training_step.share_step(model, family, optimizer, images.double(), mos.double(), index, length,
                                      processes.world_size, config, crafting=crafting)
            steps.append([p.grad.clone() for p in network.parameters()])
    return steps
