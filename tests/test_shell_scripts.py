"""The checkpoint paths that quickstart.sh and compare_defenses.sh compute are the names the training
script writes (each script runs a Python one-liner for them, which nothing else exercises)."""
import subprocess
import sys
from pathlib import Path

import checkpoints

MAIN = Path(__file__).resolve().parents[1]


def shell_function(script: str, name: str, variables: dict[str, str], call: str) -> str:
    """The output of `call` after defining `name` (a function of `script`) with `variables` set."""
    text = (MAIN / script).read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith(f"{name}()"))
    end = next(i for i in range(start, len(text)) if text[i] == "}")
    body = "\n".join(text[start:end + 1])
    assignments = "\n".join(f"{key}={value}" for key, value in {"PY": sys.executable, **variables}.items())
    done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{assignments}\n{body}\n{call}"], cwd=MAIN,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_quickstart_finds_the_checkpoints_the_training_wrote():
    variables = {"BATCH_SIZE": "8", "NT_WEIGHT": "0.01", "NT_H": "0.01"}
    assert shell_function("quickstart.sh", "checkpoint", variables, "checkpoint 0; checkpoint 1").splitlines() == [
        checkpoints.checkpoint_name("synthetic", 8, False), checkpoints.checkpoint_name("synthetic", 8, True, 0.01, 0.01)]


def test_compare_defenses_finds_the_checkpoints_the_training_wrote():
    call = """name '"if_grad": true, "weight": 0.01'; name '"adv_train": "pgd"'"""
    assert shell_function("compare_defenses.sh", "name", {"BATCH_SIZE": "8"}, call).splitlines() == [
        checkpoints.checkpoint_name("synthetic", 8, True, 0.01, 0.01),
        checkpoints.checkpoint_name("synthetic", 8, False, adv_train="pgd", adv_eps=4 / 255, adv_steps=10)]
