"""Predicted quality and gradient norm of one image under HyperIQA and HyperIQA+NT.

    python quality_and_norm_demo.py --img_name 123.bmp
    python quality_and_norm_demo.py --img examples/chelsea.jpg --patch_num 10 \\
        --baseline_checkpoint checkpoints/a.pth --nt_checkpoint checkpoints/b.pth

For each model, prints the l1 norm of the gradient of the score with respect to the input image (in
ImageNet-normalized input space, as released), then the predicted score, both averaged over the
image's patches. NT is expected to give the lower gradient norm.

Patches: as released, the saved crops `{crop_dir}/{name}_0.bmp ... _{N-1}.bmp` are used when all
exist; otherwise `--patch_num` seeded random 224x224 crops of the image (a 224x224 image is its own
single patch). `--regenerate_crops` always crops the image afresh and saves those crops there.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import attacks
import cli
import models
from images import image_to_tensor, load_image, tensor_to_image
from patches import image_patches
from seeding import DEFAULT_SEED, seed_everything


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--img_name", "--img", dest="img_name", default="123.bmp", help="path of the image")
    parser.add_argument("--patch_num", "--patch_size", dest="patch_num", type=cli.positive_int, default=25,
                        help="number of 224x224 patches to average over (--patch_size is the released "
                             "name; it counts patches, it is not their size)")
    parser.add_argument("--regenerate_crops", action="store_true",
                        help="crop the image afresh and save the crops in --crop_dir (overwriting), "
                             "instead of using crops saved there")
    parser.add_argument("--crop_dir", default="images_fixedcrop",
                        help="folder of saved crops {name}_{index}.bmp (the released demo's fixed crops)")
    parser.add_argument("--baseline_checkpoint", default=cli.DEMO_CHECKPOINTS["baseline"], help="HyperIQA checkpoint")
    parser.add_argument("--nt_checkpoint", default=cli.DEMO_CHECKPOINTS["NT"], help="HyperIQA+NT checkpoint")
    cli.add_upscale_small_argument(parser)
    cli.add_chunk_size_argument(parser)
    cli.add_device_argument(parser)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=DEFAULT_SEED, help="seed of the patch positions")
    return parser.parse_args(argv)


def demo_patches(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """The patches (N, 3, 224, 224) in [0, 1] and a line saying where they came from."""
    stem = Path(args.img_name).stem
    crop_paths = [Path(args.crop_dir) / f"{stem}_{index}.bmp" for index in range(args.patch_num)]
    if not args.regenerate_crops and all(path.is_file() for path in crop_paths):
        patches = [image_to_tensor(load_image(path)) for path in crop_paths]
        for path, patch in zip(crop_paths, patches):
            if patch.shape[1:] != (models.PATCH_SIZE, models.PATCH_SIZE):
                raise ValueError(f"saved crop {path} is {patch.shape[2]}x{patch.shape[1]} pixels, not "
                                 f"{models.PATCH_SIZE}x{models.PATCH_SIZE}; use --regenerate_crops")
        return torch.stack(patches), f"{len(patches)} saved crops {args.crop_dir}/{stem}_*.bmp"
    patches = image_patches(args.img_name, args.patch_num, models.PATCH_SIZE,
                            torch.Generator().manual_seed(args.seed), args.upscale_small)
    source = f"{len(patches)} random {models.PATCH_SIZE}x{models.PATCH_SIZE} crops of {args.img_name} (seed {args.seed})"
    if args.regenerate_crops:
        Path(args.crop_dir).mkdir(parents=True, exist_ok=True)
        for path, patch in zip(crop_paths, patches):
            tensor_to_image(patch).save(path)
        source += f", saved to {args.crop_dir}/{stem}_*.bmp"
    return patches, source


def main(args: argparse.Namespace) -> None:
    device = models.select_device(args.device)
    seed_everything(args.seed)
    patches, source = demo_patches(args)
    baseline = models.load_hyperiqa(args.baseline_checkpoint, device)
    nt = models.load_hyperiqa(args.nt_checkpoint, device)
    print(f"Patches: {source}")

    patches = patches.to(device)
    baseline_scores, baseline_norms = attacks.scores_and_gradient_norms(baseline, patches, args.chunk_size)
    nt_scores, nt_norms = attacks.scores_and_gradient_norms(nt, patches, args.chunk_size)

    print(f"For {args.img_name}, the L_1 norm of the score's gradient with respect to the (normalized) input image:")
    print("HyperIQA:{:.4f}".format(baseline_norms.mean().item()))
    print("HyperIQA+NT:{:.4f}".format(nt_norms.mean().item()))
    print(f"For {args.img_name}, the predicted score of the image:")
    print("HyperIQA:{:.4f}".format(baseline_scores.mean().item()))
    print("HyperIQA+NT:{:.4f}".format(nt_scores.mean().item()))


if __name__ == "__main__":
    cli.run_main(main, parse_args())
