"""Attack a quality model (HyperIQA, or any family: --model), with or without NT, with iterative FGSM
on the views of one image.

    python FGSM_demo.py --img_name 123.bmp --attacked_model baseline
    python FGSM_demo.py --img_name examples/chelsea.jpg --checkpoint checkpoints/my_model.pth --step 10
    python FGSM_demo.py --img_name 123.bmp --model dbcnn      # the LIVEC DBCNN+NT checkpoint

Cuts the views the model's family scores an image file by (HyperIQA: `--patch_num` seeded random
224x224 patches, a 224x224 image being its own single patch; DBCNN: the whole image), attacks them
(`--step` steps of `--alp`, within `--eps` of the clean pixels, in [0, 1] pixel units), saves the
adversarial views as PNG and prints the mean scores before and after the attack, as the released
demo did. The attacked score is that of the saved 8-bit images; the unrounded one follows it.
Unless `--no_plot`, comparison.png in the same folder shows, for up to 4 patches, the clean patch |
the saved adversarial patch | the perturbation amplified 10x around mid-grey, with both scores.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import attacks
import cli
import folders
import models
import plots
from images import load_image, tensor_to_image
from seeding import DEFAULT_SEED, seed_everything
from views import image_views

RELEASED_DEMO_MOS = {"123.bmp": 67.29775, "447.bmp": 25.33146}  # LIVEC MOS of the released demo images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--img_name", default="123.bmp", help="path of the image to attack")
    parser.add_argument("--attacked_model", choices=sorted(cli.DEMO_CHECKPOINTS), default="NT",
                        help="which LIVEC model to attack: for HyperIQA, NT loads " + cli.DEMO_CHECKPOINTS["NT"]
                             + ", baseline loads " + cli.DEMO_CHECKPOINTS["baseline"]
                             + " (for another --model, its family's LIVEC checkpoints)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to attack instead of the one chosen by --attacked_model")
    cli.add_model_argument(parser)
    cli.add_attack_arguments(parser)
    parser.add_argument("--patch_num", type=cli.positive_int, default=25,
                        help="number of random patches to attack, for a family that scores patches (HyperIQA: "
                             "224x224; 1 for a 224x224 image); a family that scores the whole image ignores it")
    parser.add_argument("--mos", type=float, default=None,
                        help="the image's MOS, printed for comparison (known for the released 123.bmp and 447.bmp)")
    parser.add_argument("--score_middle", type=float, default=None,
                        help="a patch scored above this is pushed down, otherwise up (default: the middle of the "
                             f"model's score range on LIVEC, {attacks.DEFAULT_SCORE_MIDDLE:g} for HyperIQA)")
    parser.add_argument("--save_dir", default=None,
                        help="where to save the adversarial patches "
                             "(default adv_images_patches/IFGSM_{model}_{eps}_{step}_{patch_num}), with comparison.png")
    cli.add_no_plot_argument(parser)
    cli.add_upscale_small_argument(parser)
    cli.add_chunk_size_argument(parser)
    cli.add_device_argument(parser)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=DEFAULT_SEED, help="seed of the patch positions")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    device = models.select_device(args.device)
    seed_everything(args.seed)
    if not args.no_plot:
        plots.check_matplotlib()
    image = load_image(args.img_name)  # a bad image stops the demo before the model is read
    checkpoint = args.checkpoint or cli.demo_checkpoint(args.model or models.DEFAULT_FAMILY, args.attacked_model == "NT")
    model = models.load_model(checkpoint, args.model, device)
    family = models.get_family(model.family)
    patches = image_views(args.img_name, family.views(None, False, args.patch_num),
                          torch.Generator().manual_seed(args.seed), args.upscale_small, decoded=image)
    family.check_size(*patches.shape[-2:], args.img_name)
    label = Path(checkpoint).stem if args.checkpoint else args.attacked_model
    save_dir = Path(args.save_dir or os.path.join(
        "adv_images_patches", f"IFGSM_{label}_{args.eps}_{args.step}_{args.patch_num}"))
    low, high = folders.score_range("livec", family.score_range)
    middle = (low + high) / 2 if args.score_middle is None else args.score_middle

    name = {"NT": f"{family.display_name}+NT", "baseline": f"{family.display_name} (baseline)"}.get(label, label)
    print(f"Attacking {name} ({checkpoint}) on {device}: I-FGSM "
          f"eps={args.eps} alpha={args.alp} steps={args.step}, {len(patches)} patches of {args.img_name}")
    print(f"attacking {len(patches)} patches ...", file=sys.stderr, flush=True)
    result = attacks.iterative_fgsm(model, patches.to(device), args.eps, args.alp, args.step, middle, args.chunk_size)
    saved = attacks.quantize_8bit(result.adversarial)
    attacked = attacks.score_patches(model, saved, args.chunk_size)
    attacked_unrounded = attacks.score_patches(model, result.adversarial, args.chunk_size)

    save_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(args.img_name).stem
    for index, patch in enumerate(saved):
        tensor_to_image(patch).save(save_dir / f"{stem}_{index}.png")
    if not args.no_plot:
        plots.plot_attack_comparison(save_dir / "comparison.png", patches, saved.cpu(), result.clean_scores.tolist(),
                                     attacked.tolist())

    mos = args.mos if args.mos is not None else RELEASED_DEMO_MOS.get(Path(args.img_name).name)
    if mos is not None:
        print(f"For {args.img_name}, MOS (without normalization):{mos}")
    print(f"Predicted Score (Unattacked):{result.clean_scores.mean().item()}")
    print(f"Predicted Score (Attacked):{attacked.mean().item()}")
    print(f"Predicted Score (Attacked, before rounding to 8 bits):{attacked_unrounded.mean().item()}")
    print(f"Adversarial samples are saved to: {save_dir}")
    if not args.no_plot:
        print(f"Clean | adversarial | perturbation x{plots.PERTURBATION_GAIN:g}: {save_dir / 'comparison.png'}")


if __name__ == "__main__":
    cli.run_main(main, parse_args())
