"""Predicted quality and gradient norm of one image under a model and its NT version (HyperIQA and
HyperIQA+NT by default; any family with --model or with checkpoints of that family).

    python quality_and_norm_demo.py --img_name 123.bmp
    python quality_and_norm_demo.py --img examples/chelsea.jpg --patch_num 10 \\
        --baseline_checkpoint checkpoints/a.pth --nt_checkpoint checkpoints/b.pth
    python quality_and_norm_demo.py --img_name 123.bmp --model dbcnn

For each model, prints the l1 norm of the gradient of the score with respect to the model's input
(the image after its family's normalization; ImageNet-normalized for HyperIQA, as released), then
the predicted score, both averaged over the image's views. NT is expected to give the lower
gradient norm. Both checkpoints must be of one family.

Views: for a family that scores patches, as released, the saved crops `{crop_dir}/{name}_0.bmp ...
_{N-1}.bmp` are used when all exist; otherwise `--patch_num` seeded random crops of the image
(HyperIQA: 224x224; a 224x224 image is its own single patch). `--regenerate_crops` always crops the
image afresh and saves those crops there. A family that scores the whole image uses the image.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

import attacks
import cli
import models
from images import image_to_tensor, load_image, tensor_to_image
from seeding import DEFAULT_SEED, seed_everything
from views import Views, image_views


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--img_name", "--img", dest="img_name", default="123.bmp", help="path of the image")
    parser.add_argument("--patch_num", "--patch_size", dest="patch_num", type=cli.positive_int, default=25,
                        help="number of patches to average over, for a family that scores patches (HyperIQA: "
                             "224x224; --patch_size is the released name; it counts patches, it is not their size)")
    parser.add_argument("--regenerate_crops", action="store_true",
                        help="crop the image afresh and save the crops in --crop_dir (overwriting), "
                             "instead of using crops saved there")
    parser.add_argument("--crop_dir", default="images_fixedcrop",
                        help="folder of saved crops {name}_{index}.bmp (the released demo's fixed crops)")
    parser.add_argument("--baseline_checkpoint", default=None,
                        help="the model without NT (default: the family's LIVEC baseline, for HyperIQA "
                             + cli.DEMO_CHECKPOINTS["baseline"] + ")")
    parser.add_argument("--nt_checkpoint", default=None,
                        help="the model with NT (default: the family's LIVEC NT model, for HyperIQA "
                             + cli.DEMO_CHECKPOINTS["NT"] + ")")
    cli.add_model_argument(parser)
    cli.add_upscale_small_argument(parser)
    cli.add_chunk_size_argument(parser)
    cli.add_device_argument(parser)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=DEFAULT_SEED, help="seed of the patch positions")
    return parser.parse_args(argv)


def saved_crop_paths(args: argparse.Namespace) -> list[Path]:
    """Where the released demo's fixed crops of the image are kept: {crop_dir}/{name}_{index}.bmp."""
    stem = Path(args.img_name).stem
    return [Path(args.crop_dir) / f"{stem}_{index}.bmp" for index in range(args.patch_num)]


def use_saved_crops(args: argparse.Namespace) -> bool:
    return not args.regenerate_crops and all(path.is_file() for path in saved_crop_paths(args))


def demo_patches(args: argparse.Namespace, views: Views, decoded: Image.Image | None = None) -> tuple[torch.Tensor, str]:
    """The views (N, 3, h, w) in [0, 1] of the family's protocol `views` (`decoded`: the image, when
    already decoded), and a line saying where they came from."""
    if views.crop is None:
        return image_views(args.img_name, views, decoded=decoded), f"{views.describe()} {args.img_name}"
    stem = Path(args.img_name).stem
    crop_paths = saved_crop_paths(args)
    crop_height, crop_width = views.crop
    if use_saved_crops(args):
        patches = [image_to_tensor(load_image(path)) for path in crop_paths]
        for path, patch in zip(crop_paths, patches):
            if patch.shape[1:] != views.crop:
                raise ValueError(f"saved crop {path} is {patch.shape[2]}x{patch.shape[1]} pixels, not "
                                 f"{crop_width}x{crop_height}; use --regenerate_crops")
        return torch.stack(patches), f"{len(patches)} saved crops {args.crop_dir}/{stem}_*.bmp"
    patches = image_views(args.img_name, views, torch.Generator().manual_seed(args.seed), args.upscale_small, decoded)
    source = f"{len(patches)} random {crop_width}x{crop_height} crops of {args.img_name} (seed {args.seed})"
    if args.regenerate_crops:
        Path(args.crop_dir).mkdir(parents=True, exist_ok=True)
        for path, patch in zip(crop_paths, patches):
            tensor_to_image(patch).save(path)
        source += f", saved to {args.crop_dir}/{stem}_*.bmp"
    return patches, source


def main(args: argparse.Namespace) -> None:
    device = models.select_device(args.device)
    seed_everything(args.seed)
    image = None if use_saved_crops(args) else load_image(args.img_name)  # a bad image stops before the models
    model = args.model or models.DEFAULT_FAMILY
    baseline = models.load_model(args.baseline_checkpoint or cli.demo_checkpoint(model, False), args.model, device)
    nt = models.load_model(args.nt_checkpoint or cli.demo_checkpoint(model, True), args.model, device)
    if baseline.family != nt.family:
        raise ValueError(f"the two checkpoints are of different families ({baseline.family} and {nt.family}): "
                         "compare a model with its own NT version")
    family = models.get_family(baseline.family)
    patches, source = demo_patches(args, family.views(None, False, args.patch_num), image)
    family.check_size(*patches.shape[-2:], args.img_name)
    print(f"Patches: {source}")

    patches = patches.to(device)
    baseline_scores, baseline_norms = attacks.scores_and_gradient_norms(baseline, patches, args.chunk_size)
    nt_scores, nt_norms = attacks.scores_and_gradient_norms(nt, patches, args.chunk_size)

    print(f"For {args.img_name}, the L_1 norm of the score's gradient with respect to the (normalized) input image:")
    name = family.display_name
    print(f"{name}:{baseline_norms.mean().item():.4f}")
    print(f"{name}+NT:{nt_norms.mean().item():.4f}")
    print(f"For {args.img_name}, the predicted score of the image:")
    print(f"{name}:{baseline_scores.mean().item():.4f}")
    print(f"{name}+NT:{nt_scores.mean().item():.4f}")


if __name__ == "__main__":
    cli.run_main(main, parse_args())
