"""Checkpoint files shared by the tests (written once per test session), and a runner of the scripts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoints
import models
from tests import recipe


@pytest.fixture(scope="session")
def hyperiqa_checkpoint(tmp_path_factory) -> Path:
    """A freshly initialized HyperIQA saved as {'model': state_dict, 'optimizer': None}."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoints") / "hyperiqa.pth"
    checkpoints.save_checkpoint(path, models.HyperIQA())
    return path


@pytest.fixture(scope="session")
def recipe_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The fixture recipe weights per variant of recipe.OFFSETS, in the two released forms:
    'fc5b_offset_50' as {'model': state_dict, 'optimizer': None} (NT release), 'fc5b_offset_40' as a
    bare state_dict (HyperIQA release)."""
    folder = tmp_path_factory.mktemp("recipe_checkpoints")
    template = models.HyperIQA().state_dict()
    paths = {}
    for variant, offset in recipe.OFFSETS.items():
        state = recipe.recipe_state_dict(template, offset)
        paths[variant] = folder / f"{variant}.pth"
        torch.save({"model": state, "optimizer": None} if offset == 50.0 else state, paths[variant])
    return paths


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def run_cli():
    """Run scripts of the repository through the real command line, in parallel:
    `run_cli(["FGSM_demo.py", "--eps", "0"], [...], ...)` -> one CompletedProcess per command, in order
    (text stdout/stderr, cwd = the repository root)."""
    def run(*commands: list, timeout: float = 600) -> list[subprocess.CompletedProcess]:
        env = {k: v for k, v in os.environ.items() if k != "HYPERIQA_DEBUG"}
        started = [(command, subprocess.Popen([sys.executable, *map(str, command)], cwd=REPO, env=env, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for command in commands]
        results = []
        for command, process in started:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
        return results
    return run
