"""Speed of this code next to the released code's way of doing the same jobs, measured in one run.

    python benchmark.py                          # batch size 4, CUDA when available; ~4 min on 2 CPU cores
    python benchmark.py --device cpu --quick     # one timed run per job, no memory: a rough look
    python benchmark.py --model dbcnn --device cpu --batch_size 2   # DBCNN's training steps (448x448 crops)
    python benchmark.py --model linearityiqa --batch_size 2 --jobs train_nt_vs_baseline   # its NT step vs its baseline
    python benchmark.py --model maniqa --batch_size 2 --jobs train_nt_vs_baseline --quick   # MANIQA's NT step vs its baseline

Each job is run "ours" (the code path that the training script, the demos and the robustness
evaluation run) and "released" (the same job done the way the released code does it, written out
in released_reference.py). Both get the same inputs on the same device. The model is HyperIQA;
`--model` names another family, whose training steps (the `train_*` jobs, by default all of them)
are then timed the same way, on batches of its LIVEC training views (DBCNN: 448x448 crops), with
its released loss and the optimizer of its last stage (DBCNN: Adam on every layer), the "released"
side running its released loss in the released three-pass NT:

| job | ours | released |
|---|---|---|
| training step, baseline | `training_step.train_step`: channels_last model (CPU), the released Adam (default `--schedule released`) | NCHW model, the released Adam |
| training step, NT | the same, `nt_loss`: one clean forward serves the L1 loss and the penalty | NCHW, three forward passes (`released_three_pass_nt_loss`) |
| NT, same setup | the same | three passes with our model placement: the gain of the shared forward alone |
| training step, NT exact | the same, `nt_loss(mode='exact')` (double backpropagation) | as for NT |
| training step, AT fgsm / pgd | the same, with `--adv_train fgsm` (pgd: 10 steps), half the batch adversarial | OUR baseline step (and, for fgsm, our NT step): AT has no released counterpart, the ratio is its cost over ours |
| training step, NT vs our baseline (`train_nt_vs_baseline`; not in HyperIQA's default list) | our NT step | OUR baseline step: what NT costs on top of the family's own step |
| scoring, gradient norms, I-FGSM on the 25 patches of an image | `attacks`, batched in chunks (`--chunk_size`, default by device) | one patch at a time |
| square attack, 20 queries on the 25 patches of an image (no released counterpart) | `attacks.square`, batched in chunks | the same function, one patch at a time (`chunk_size=1`) |
| data loading, first epoch | a new `data_loader.make_train_loader`: image headers read, each image decoded once and kept, `--num_workers` workers (default none) | every patch decodes its image again (25 times per image) and goes through PIL + torchvision transforms, in a shuffling DataLoader without workers |
| data loading, later epochs | the same loader's next epochs: the decoded images are held in memory, none is decoded again | the same as its first epoch |

Time: the median of `--repeats` timed runs (`--long_repeats` for the 10-step jobs and the square
attack) after `--warmup` runs; ours and released alternate run by run, so load from other programs
hits both alike. With `--model` another family than HyperIQA, its networks are built from scratch and
its labels are on its score scale (MANIQA: [0, 1]). Patches per second = patches of a run / median time (for the square attack: patch
queries, queries x patches); ratio = ours' median time / released median time (below
1: ours is faster). Threads: PyTorch's default.

Peak memory: what one run of a job needs on top of what was held before it (models, optimizer,
inputs; a training step's first run includes Adam's state). CPU (Linux): a fresh process per job
and side builds the job, then runs it once; reported is the peak resident set size during that run
(VmHWM, reset just before through /proc/self/clear_refs) minus the resident size just before it.
Loader worker processes are not included; sides that run the very same code in two jobs share one
measurement. CUDA: torch.cuda.max_memory_allocated during the first run minus memory_allocated before.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

import attacks
import checkpoints
import cli
import distributed
import models
from data_loader import DEFAULT_NUM_WORKERS, make_train_loader
from families.base import BuildOptions
from folders import Sample
from training_step import Crafting, train_step
from images import load_image
from measurement import (SIDES, Call, Job, cpu_peaks_in_fresh_processes, describe_device, measure, probe_peak_mib,
                         run_json, synchronizer, table)
from released_reference import (RELEASED_PATCH_NUM, ReleasedPatchDataset, released_gradient_norms,
                                released_iterative_fgsm, released_scores, released_train_step)
from schedule import build_optimizer
from train_config import TrainConfig

PATCHES_PER_IMAGE = RELEASED_PATCH_NUM  # one image's worth of patches
LIVEC_SIDE = 500  # LIVEC's photos are 500x500 JPEGs
JPEG_QUALITY = 90
SQUARE_BENCH_QUERIES = 20  # queries per patch in the square job: about the work of the 10-step attack
QUICK = dict(repeats=1, long_repeats=1, warmup=1, images=8)
OPTIMIZER_SETTINGS = ("lr", "lr_ratio", "weight_decay")  # taken from the family's released training defaults


# ---------------------------------------------------------------------------------------------
# Shared inputs


def write_livec_like_folder(folder: Path, count: int, seed: int = 0) -> list[Sample]:
    """`count` 500x500 JPEGs (quality 90) like LIVEC's photos in size and format: smooth random colour
    fields with fine grain. Files already there are reused. Returns their samples (MOS 0-100)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        path = folder / f"{index:04d}.jpg"
        coarse = rng.integers(0, 256, (LIVEC_SIDE // 20, LIVEC_SIDE // 20, 3), dtype=np.uint8)
        grain = rng.normal(0.0, 8.0, (LIVEC_SIDE, LIVEC_SIDE, 3))
        if not path.exists():
            smooth = np.asarray(Image.fromarray(coarse).resize((LIVEC_SIDE, LIVEC_SIDE), Image.BICUBIC), np.float64)
            Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=JPEG_QUALITY)
        samples.append(Sample(str(path), float(rng.uniform(0, 100)), str(path)))
    return samples


class Workbench:
    """Models and inputs of the jobs, each built on first use (a memory probe builds only its job's)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, workdir: Path):
        self.args, self.device, self.workdir = args, device, workdir
        self.family = models.get_family(args.model).configured({})  # its own options at their defaults
        self.config = self.training_config()
        self.epoch = 0  # the loaders draw new patches every run, as in training
        self.decodes = {side: 0 for side in SIDES}  # image decodes by the loaders, in this process

    @functools.cached_property
    def checkpoint(self) -> Path:
        path = self.workdir / "hyperiqa.pth"
        if not path.exists():
            torch.manual_seed(0)
            checkpoints.save_checkpoint(path, models.HyperIQA())
        return path

    @functools.cached_property
    def eval_ours(self) -> torch.nn.Module:
        return models.load_hyperiqa(self.checkpoint, self.device)  # as the demos load it

    @functools.cached_property
    def eval_released(self) -> torch.nn.Module:
        model = models.HyperIQA()
        model.load_state_dict(checkpoints.read_checkpoint(self.checkpoint).state)
        return model.to(self.device).eval()  # the released layout: NCHW

    @functools.cached_property
    def patches(self) -> torch.Tensor:
        """The 25 pixel patches (25, 3, 224, 224) in [0, 1] of an 'image'."""
        generator = torch.Generator().manual_seed(1)
        shape = (PATCHES_PER_IMAGE, 3, models.PATCH_SIZE, models.PATCH_SIZE)
        return torch.rand(shape, generator=generator).to(self.device)

    def training_config(self, **settings) -> TrainConfig:
        """The TrainConfig of a training step of the family (its released lr, lr_ratio, weight decay)
        with `settings` (e.g. if_grad=True, adv_train='fgsm')."""
        defaults = {name: self.family.train_defaults[name] for name in OPTIMIZER_SETTINGS
                    if name in self.family.train_defaults}
        return TrainConfig(**{"model": self.family.name, "batch_size": self.args.batch_size, **defaults, **settings})

    def optimizer(self, network: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        """The optimizer of the family's last stage (HyperIQA's only one; DBCNN's, every layer), prepared."""
        stage = self.family.stages(config)[-1]
        stage.prepare(network)
        return stage.optimizer(network, config, 0)

    @functools.cached_property
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch: pixels (B, 3, h, w) in [0, 1], the size of the family's LIVEC training views
        (HyperIQA: 224x224), and mos (B,) on the family's score scale (0-100 for HyperIQA)."""
        generator = torch.Generator().manual_seed(2)
        height, width = self.family.views("livec", True, 1).view_size(LIVEC_SIDE, LIVEC_SIDE)
        pixels = torch.rand((self.args.batch_size, 3, height, width), generator=generator)
        low, high = self.family.score_range or (0.0, 100.0)
        mos = low + (high - low) * torch.rand(self.args.batch_size, generator=generator)
        return pixels.to(self.device), mos.to(self.device)

    @functools.cached_property
    def samples(self) -> list[Sample]:
        return write_livec_like_folder(self.workdir / "livec_like", self.args.images)

    def solver_step(self, **settings) -> Call:
        """Our training step (`training_step.train_step`) of `--model` under the TrainConfig `settings`
        (e.g. if_grad=True, adv_train='fgsm') on a fresh network (backbone from scratch) and the
        optimizer of its family's first stage, built as training builds them."""
        torch.manual_seed(0)
        config = self.training_config(**settings)
        model = models.build_network(config.model, BuildOptions(pretrained=False), self.device).train()
        optimizer = self.optimizer(model, config)
        pixels, mos = self.batch
        generator = torch.Generator()  # PGD's random start under adversarial training
        family = self.family
        return lambda: train_step(model, family, optimizer, pixels, mos, config,
                                  crafting=Crafting(family.quality_model(model), generator.manual_seed(0)))

    def released_step(self, nt: bool, our_setup: bool = False) -> Call:
        """The released training step on a fresh model: NCHW and default Adam, or with `our_setup` our
        model placement and optimizer (so that only the three forward passes differ)."""
        torch.manual_seed(0)
        if our_setup:
            model = models.build_network(self.family.name, BuildOptions(pretrained=False), self.device).train()
        else:
            model = self.family.build(BuildOptions(pretrained=False)).to(self.device).train()
        optimizer = self.optimizer(model, self.config)  # HyperIQA: the released Adam under the released schedule
        pixels, mos = self.batch
        images = self.family.normalization(pixels)  # the released loader hands normalized images
        return lambda: released_train_step(model, optimizer, images, mos, nt, self.config, self.family.released_loss)

    def counted_decode(self, path: str) -> Image.Image:
        """Our loader's decoder, counting in `decodes` (decodes in worker processes are not counted)."""
        self.decodes["ours"] += 1
        return load_image(path)

    def our_epoch(self, num_workers: int, first: bool) -> Call:
        """An epoch of our training loader (HyperIQA's patches, on the device, normalized as the training
        step then does): with `first`, a new loader's first epoch (headers read, every image decoded once);
        else a later epoch, the decoded images held in memory from the warm-up run."""
        views = models.get_family(models.DEFAULT_FAMILY).views("livec", True, PATCHES_PER_IMAGE)

        def new_loader():
            return make_train_loader(self.samples, "livec", views, self.args.batch_size,
                                     num_workers=num_workers, device=self.device, decode=self.counted_decode)
        held = None if first else new_loader()

        def epoch() -> None:
            self.epoch += 1
            for pixels, _, _ in (new_loader() if first else held).batches(self.epoch):
                models.normalize(pixels)
        return epoch

    def released_epoch(self) -> Call:
        """An epoch of the released loader, batches moved to the device as the released solver does."""
        dataset = ReleasedPatchDataset(self.samples)
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.args.batch_size, shuffle=True)

        def epoch() -> None:
            before = dataset.decodes
            for images, mos in loader:
                images.to(self.device), mos.to(self.device)
            self.decodes["released"] += dataset.decodes - before
        return epoch


# ---------------------------------------------------------------------------------------------
# The jobs


def _per_image(bench: Workbench) -> int:
    return PATCHES_PER_IMAGE


def _per_batch(bench: Workbench) -> int:
    return bench.args.batch_size


def _per_epoch(bench: Workbench) -> int:
    return bench.args.images * PATCHES_PER_IMAGE


def _per_square_run(bench: Workbench) -> int:
    return PATCHES_PER_IMAGE * SQUARE_BENCH_QUERIES


def _square(model: torch.nn.Module, pixels: torch.Tensor, chunk_size: int | None) -> attacks.AttackResult:
    return attacks.square(model, pixels, queries=SQUARE_BENCH_QUERIES, generator=torch.Generator().manual_seed(0),
                          chunk_size=chunk_size)


def _ours(run: Callable[[Workbench, torch.nn.Module, torch.Tensor], object]) -> Callable[[Workbench], Call]:
    return lambda b: lambda: run(b, b.eval_ours, b.patches)


def _released(run: Callable[[torch.nn.Module, torch.Tensor], object]) -> Callable[[Workbench], Call]:
    return lambda b: lambda: run(b.eval_released, b.patches)


JOBS = (
    Job("train_baseline", "training step, baseline (L1)", _per_batch,
        lambda b: b.solver_step(), lambda b: b.released_step(False)),
    Job("train_nt", "training step, NT (vs released 3 passes)", _per_batch,
        lambda b: b.solver_step(if_grad=True), lambda b: b.released_step(True)),
    Job("train_nt_same_setup", "  NT vs 3 passes in our setup", _per_batch,
        lambda b: b.solver_step(if_grad=True), lambda b: b.released_step(True, our_setup=True)),
    Job("train_nt_exact", "training step, NT exact (vs released NT)", _per_batch,
        lambda b: b.solver_step(if_grad=True, nt_mode="exact"), lambda b: b.released_step(True)),
    # Adversarial training has no released counterpart: its steps are timed against our own baseline and NT steps.
    Job("train_at_fgsm", "training step, AT fgsm (vs our baseline step)", _per_batch,
        lambda b: b.solver_step(adv_train="fgsm"), lambda b: b.solver_step()),
    Job("train_at_fgsm_vs_nt", "  AT fgsm vs our NT step", _per_batch,
        lambda b: b.solver_step(adv_train="fgsm"), lambda b: b.solver_step(if_grad=True)),
    Job("train_at_pgd", "training step, AT pgd 10 steps (vs our baseline step)", _per_batch,
        lambda b: b.solver_step(adv_train="pgd"), lambda b: b.solver_step(), long=True),
    Job("train_nt_vs_baseline", "training step, NT (vs our baseline step)", _per_batch,
        lambda b: b.solver_step(if_grad=True), lambda b: b.solver_step()),
    Job("score", "scoring, 25 patches", _per_image,
        _ours(lambda b, m, x: attacks.score_patches(m, x, b.args.chunk_size)),
        _released(released_scores)),
    Job("gradnorm", "gradient norms, 25 patches", _per_image,
        _ours(lambda b, m, x: attacks.scores_and_gradient_norms(m, x, b.args.chunk_size)),
        _released(released_gradient_norms)),
    Job("fgsm1", "I-FGSM 1 step, 25 patches", _per_image,
        _ours(lambda b, m, x: attacks.iterative_fgsm(m, x, steps=1, chunk_size=b.args.chunk_size)),
        _released(functools.partial(released_iterative_fgsm, steps=1))),
    Job("fgsm10", "I-FGSM 10 steps, 25 patches", _per_image,
        _ours(lambda b, m, x: attacks.iterative_fgsm(m, x, steps=10, chunk_size=b.args.chunk_size)),
        _released(functools.partial(released_iterative_fgsm, steps=10)), warm_with="fgsm1", long=True),
    Job("square", f"square attack, {SQUARE_BENCH_QUERIES} queries x 25 patches (vs one patch at a time)",
        _per_square_run, _ours(lambda b, m, x: _square(m, x, b.args.chunk_size)),
        _ours(lambda b, m, x: _square(m, x, 1)), warm_with="score", long=True),
    Job("loading", "data loading, first epoch", _per_epoch,
        lambda b: b.our_epoch(b.args.num_workers, first=True), lambda b: b.released_epoch()),
    Job("loading_later", "data loading, later epochs", _per_epoch,
        lambda b: b.our_epoch(b.args.num_workers, first=False), lambda b: b.released_epoch()),
)
JOB_KEYS = tuple(job.key for job in JOBS)
TRAINING_JOBS = tuple(key for key in JOB_KEYS if key.startswith("train_"))  # the jobs that take --model
HYPERIQA_DEFAULT_JOBS = tuple(key for key in JOB_KEYS if key != "train_nt_vs_baseline")  # the README's table
# (job, side) -> the (job, side) that runs the very same code: one memory measurement serves both.
SAME_RUN = {("train_nt_same_setup", "ours"): ("train_nt", "ours"), ("train_nt_exact", "released"): ("train_nt", "released"),
            ("train_at_fgsm", "released"): ("train_baseline", "ours"), ("train_at_fgsm_vs_nt", "ours"): ("train_at_fgsm", "ours"),
            ("train_at_fgsm_vs_nt", "released"): ("train_nt", "ours"), ("train_at_pgd", "released"): ("train_baseline", "ours"),
            ("train_nt_vs_baseline", "ours"): ("train_nt", "ours"), ("train_nt_vs_baseline", "released"): ("train_baseline", "ours")}


def job_list(text: str) -> list[str]:
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in JOB_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown job {', '.join(unknown) or repr(text)}; valid: {', '.join(JOB_KEYS)}")
    return keys


# ---------------------------------------------------------------------------------------------
# Several processes: training throughput with N processes against 1 (for a multi-GPU machine)


def scaling_worker(args: argparse.Namespace) -> None:
    """Under torchrun: `--repeats` timed training steps of HyperIQA (after `--warmup`), each process on
    its share of a global batch of `--batch_size` random patches, in DistributedDataParallel; rank 0
    prints the seconds per step as JSON."""
    with distributed.process_group(args.device) as processes:
        config = TrainConfig(batch_size=args.batch_size, if_grad=args.scaling_loss == "nt")
        family = models.get_family(config.model)
        torch.manual_seed(0)
        network = models.build_model(device=processes.device).train()
        model = distributed.wrap_for_training(processes, network)
        optimizer = build_optimizer(network, config, 0)
        local = args.batch_size // processes.world_size
        generator = torch.Generator().manual_seed(processes.rank)
        images = torch.rand((local, 3, models.PATCH_SIZE, models.PATCH_SIZE), generator=generator)
        images, mos = images.to(processes.device), (100 * torch.rand(local, generator=generator)).to(processes.device)
        sync = synchronizer(processes.device)
        for _ in range(args.warmup):
            train_step(model, family, optimizer, images, mos, config)
        sync()
        distributed.wait_for_all(processes)
        started = time.perf_counter()
        for _ in range(args.repeats):
            train_step(model, family, optimizer, images, mos, config)
        sync()
        distributed.wait_for_all(processes)
        if processes.is_main:
            print(json.dumps({"seconds_per_step": (time.perf_counter() - started) / args.repeats}))


def measure_scaling(args: argparse.Namespace) -> str:
    """Seconds per training step with 1 and with `--scaling` processes on this machine (torchrun,
    one per GPU on CUDA), the same global batch; a Markdown table of throughput, speed-up, efficiency."""
    lines = ["| loss | processes | global batch | steps/s | patches/s | speed-up | efficiency |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for loss in ("baseline", "nt"):
        seconds = {}
        for count in (1, args.scaling):
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(count),
                       os.path.abspath(__file__), "--scaling_worker", "--scaling_loss", loss, "--device", args.device,
                       "--batch_size", str(args.batch_size), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            print(f"timing {loss} training steps with {count} process(es) ...", file=sys.stderr, flush=True)
            seconds[count] = run_json(command, f"the {count}-process run")["seconds_per_step"]
            speedup = seconds[1] / seconds[count]
            lines.append(f"| {loss} | {count} | {args.batch_size} | {1 / seconds[count]:.2f} | "
                         f"{args.batch_size / seconds[count]:.1f} | {speedup:.2f} | {speedup / count:.0%} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_device_argument(parser)
    parser.add_argument("--model", choices=models.FAMILIES, default=models.DEFAULT_FAMILY,
                        help="the family whose training steps the train_* jobs time (the other jobs time HyperIQA's "
                             "released loops and take only hyperiqa); its batches are of its LIVEC training views")
    parser.add_argument("--batch_size", type=cli.positive_int, default=4,
                        help="patches (training views) per training step and per loader batch")
    parser.add_argument("--repeats", type=cli.positive_int, default=3, help="timed runs per job (the median is reported)")
    parser.add_argument("--long_repeats", type=cli.positive_int, default=1,
                        help="timed runs of the 10-step jobs (the attack, warmed up by the 1-step attack, and "
                             "the PGD adversarial-training step) and of the square attack (warmed up by scoring)")
    parser.add_argument("--warmup", type=cli.nonnegative_int, default=1, help="untimed runs per job and side first")
    parser.add_argument("--images", type=cli.positive_int, default=40,
                        help="500x500 JPEGs in the loading epoch (x 25 patches each)")
    parser.add_argument("--num_workers", type=cli.nonnegative_int, default=DEFAULT_NUM_WORKERS,
                        help="our loader's worker processes in the 'loading' job (default: the training script's)")
    parser.add_argument("--chunk_size", type=cli.positive_int, default=None,
                        help="our patches per forward/backward pass in scoring, gradient norms and attacks "
                             "(default by device: attacks.default_chunk_size)")
    parser.add_argument("--jobs", type=job_list, default=None,
                        help=f"comma-separated subset of: {', '.join(JOB_KEYS)} (default: all but train_nt_vs_baseline; "
                             "with another --model, every train_* job)")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--quick", action="store_true",
                        help="a rough look: " + ", ".join(f"--{k} {v}" for k, v in QUICK.items()) + ", --no_memory "
                             "(flags given explicitly win)")
    parser.add_argument("--scaling", type=cli.positive_int, default=None, metavar="N",
                        help="instead of the jobs: training throughput (baseline and NT steps, --batch_size patches "
                             "over all processes, --repeats steps) with N processes (torchrun) against 1; for a "
                             "machine with N GPUs (on a few CPU cores the processes only share the cores)")
    parser.add_argument("--scaling_worker", action="store_true", help=argparse.SUPPRESS)  # one process of --scaling
    parser.add_argument("--scaling_loss", choices=("baseline", "nt"), default="nt", help=argparse.SUPPRESS)
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # JOB:SIDE, run by the memory measurement
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = list(HYPERIQA_DEFAULT_JOBS if args.model == models.DEFAULT_FAMILY else TRAINING_JOBS)
    other = [key for key in args.jobs if key not in TRAINING_JOBS]
    if args.model != models.DEFAULT_FAMILY and other:
        parser.error(f"argument --jobs: {', '.join(other)}: HyperIQA's released loops only; with --model "
                     f"{args.model} only the training-step jobs run: {', '.join(TRAINING_JOBS)}")
    if args.quick:  # its settings, except those given explicitly
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
        args.no_memory = True
    return args


def main(args: argparse.Namespace) -> None:
    if args.scaling_worker:
        scaling_worker(args)
        return
    if args.scaling is not None:
        if args.batch_size % args.scaling:
            raise ValueError(f"--batch_size {args.batch_size} must be divisible by --scaling {args.scaling}")
        started = time.perf_counter()
        print(measure_scaling(args))
        print(f"Total {time.perf_counter() - started:.0f} s: python benchmark.py {' '.join(sys.argv[1:])}")
        return
    device = models.select_device(args.device)
    if args.probe is not None:
        key, side = args.probe.split(":")
        bench = Workbench(args, device, Path(args.workdir))
        print(json.dumps({"peak_mib": probe_peak_mib(next(j for j in JOBS if j.key == key), side, bench)}))
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hyperiqa_benchmark_") as workdir:
        bench = Workbench(args, device, Path(workdir))
        jobs = [job for job in JOBS if job.key in args.jobs]
        results = []
        for job in jobs:
            print(f"timing {job.key} ...", file=sys.stderr, flush=True)
            warm_job = next((j for j in JOBS if j.key == job.warm_with), None)
            results.append(measure(job, bench, args, warm_job))
        if device.type == "cpu" and not args.no_memory:
            peaks = cpu_peaks_in_fresh_processes(os.path.abspath(__file__), [job.key for job in jobs], args,
                                                 Path(workdir), SAME_RUN, ["--model", args.model])
            results = [r._replace(peak_mib={side: peaks[r.job.key, side] for side in SIDES}) for r in results]
    chunk = args.chunk_size or attacks.default_chunk_size(device)
    print(f"Device: {describe_device(device)}; PyTorch {torch.__version__}")
    if args.model != models.DEFAULT_FAMILY:
        height, width = bench.batch[0].shape[-2:]
        print(f"Model: {bench.family.display_name}, training views {width}x{height}")
    print(f"Batch size {args.batch_size}, attack/scoring chunk {chunk}, loader workers {args.num_workers}, "
          f"{args.images} images x {PATCHES_PER_IMAGE} patches per epoch; median of {args.repeats} runs "
          f"({args.long_repeats} for the 10-step and square attacks) after {args.warmup} warm-up")
    print()
    print(table(results))
    print()
    for r in results:
        if r.job.key.startswith("loading"):
            ours = f"{r.decodes['ours']:g}"
            if args.num_workers and r.job.key == "loading":
                ours = "not counted (decoded in worker processes)"
            print(f"Decodes per image and epoch ({r.job.label}): ours {ours}, released {r.decodes['released']:g}")
    print("Seconds per run (ours | released):")
    for r in results:
        print(f"  {r.job.key}: " + " ".join(f"{t:.3f}" for t in r.times["ours"]) + " | "
              + " ".join(f"{t:.3f}" for t in r.times["released"]))
    print(f"Total {time.perf_counter() - started:.0f} s: python benchmark.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    cli.run_main(main, parse_args())
