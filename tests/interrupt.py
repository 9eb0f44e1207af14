"""Ctrl-C in the middle of a run, as a user presses it: SIGINT once a line of the run's stderr says so."""
import signal
import subprocess
from pathlib import Path


def interrupt_when(command: list, marker: str, cwd: Path, env: dict[str, str] | None = None,
                   timeout: float = 240) -> tuple[int, str]:
    """Start `command`, send it SIGINT when a line of its stderr contains `marker`, and return its exit
    status and its whole stderr."""
    process = subprocess.Popen([str(part) for part in command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if marker in line:
            process.send_signal(signal.SIGINT)
            break
    _, rest = process.communicate(timeout=timeout)
    return process.returncode, "".join(seen) + rest
