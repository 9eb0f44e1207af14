"""Timing and peak memory of paired jobs, ours against the released way, and their report (the
machinery of benchmark.py, which defines the jobs).

Time: the median of the timed runs after warm-up runs; ours and released alternate run by run, so
load from other programs hits both alike. Peak memory: what one run of a job needs on top of what
was held before it; on the CPU measured in a fresh process per job and side (VmHWM, reset through
/proc/self/clear_refs, minus the resident size before), on CUDA by torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

Call = Callable[[], object]
SIDES = ("ours", "released")


class Job(NamedTuple):
    key: str  # name for --jobs
    label: str  # row of the table
    patches: Callable[[object], int]  # patches processed by one run
    ours: Callable[[object], Call]
    released: Callable[[object], Call]
    warm_with: str | None = None  # warm up with this (cheaper) job's runs instead
    long: bool = False  # timed --long_repeats times


class Result(NamedTuple):
    job: Job
    patches: int
    times: dict[str, list[float]]  # seconds of each timed run, per side
    peak_mib: dict[str, float | None]  # per side; None when not measured
    decodes: dict[str, float]  # image decodes per image and epoch counted in this process, per side


def run_json(command: list[str], what: str) -> dict:
    """Run `command` and return the JSON object its last line of output prints; RuntimeError naming
    `what` with the last line of its error output if it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A call that waits for the device's queued work (CUDA), or does nothing (CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _timed(call: Call, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    call()
    sync()
    return time.perf_counter() - start


def _cuda_peak_mib(call: Call) -> float:
    """Extra CUDA memory (MiB) allocated at the peak of one run of `call`."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2 ** 20


def measure(job: Job, bench, args: argparse.Namespace, warm_job: Job | None = None) -> Result:
    """Warm up (with `warm_job`'s runs if given), then time ours and released alternately; on CUDA,
    peak memory of each side's first run. `bench` builds the calls and counts decodes."""
    sync = synchronizer(bench.device)
    calls = {"ours": job.ours(bench), "released": job.released(bench)}
    warm = calls
    if warm_job is not None:
        warm = {"ours": warm_job.ours(bench), "released": warm_job.released(bench)}
    peak: dict[str, float | None] = {side: None for side in SIDES}
    if bench.device.type == "cuda" and not args.no_memory:
        for side in SIDES:
            peak[side] = _cuda_peak_mib(calls[side])
    for side in SIDES:
        for _ in range(args.warmup):
            warm[side]()
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    decodes_before = dict(bench.decodes)
    for run in range(args.long_repeats if job.long else args.repeats):
        for side in SIDES if run % 2 == 0 else SIDES[::-1]:
            times[side].append(_timed(calls[side], sync))
    decodes = {side: (bench.decodes[side] - decodes_before[side]) / (len(times[side]) * args.images) for side in SIDES}
    return Result(job, job.patches(bench), times, peak, decodes)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def probe_peak_mib(job: Job, side: str, bench) -> float:
    """In this (fresh) process: peak resident memory (MiB) of one run of the job above the resident
    memory just before it. The peak counter (VmHWM) is reset through /proc/self/clear_refs; where
    that is refused, the process's lifetime peak (ru_maxrss) stands in."""
    call = job.ours(bench) if side == "ours" else job.released(bench)
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    call()
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, peak - before) / 1024


def cpu_peaks_in_fresh_processes(script: str, keys: list[str], args: argparse.Namespace, workdir: Path,
                                 same_run: dict[tuple[str, str], tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Peak memory (MiB) of each job and side, each in its own fresh process of `script --probe
    JOB:SIDE` (see `probe_peak_mib`); `same_run` maps a (job, side) to the one running the very same
    code, whose measurement serves both."""
    peaks = {}
    for key, side in dict.fromkeys(same_run.get((key, side), (key, side)) for key in keys for side in SIDES):
        command = [sys.executable, script, "--probe", f"{key}:{side}", "--workdir", str(workdir),
                   "--device", "cpu", "--batch_size", str(args.batch_size), "--images", str(args.images),
                   "--num_workers", str(args.num_workers)]
        if getattr(args, "model", None) is not None:
            command += ["--model", args.model]
        if args.chunk_size is not None:
            command += ["--chunk_size", str(args.chunk_size)]
        peaks[key, side] = run_json(command, f"memory probe {key}:{side}")["peak_mib"]
        print(f"  memory {key} {side}: {peaks[key, side]:.0f} MiB", file=sys.stderr, flush=True)
    return {(key, side): peaks[same_run.get((key, side), (key, side))] for key in keys for side in SIDES}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    name = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores, {torch.get_num_threads()} PyTorch threads"


def table(results: list[Result]) -> str:
    """The results as a Markdown table: patches/s of each side, time ratio, peak memory."""
    lines = ["| job | patches | ours patches/s | released patches/s | time ours/released | peak MiB ours | peak MiB released |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        median = {side: statistics.median(r.times[side]) for side in SIDES}
        memory = ["-" if r.peak_mib[side] is None else f"{r.peak_mib[side]:.0f}" for side in SIDES]
        lines.append(f"| {r.job.label.strip()} | {r.patches} | {r.patches / median['ours']:.2f} | "
                     f"{r.patches / median['released']:.2f} | {median['ours'] / median['released']:.2f} | "
                     f"{memory[0]} | {memory[1]} |")
    return "\n".join(lines)
