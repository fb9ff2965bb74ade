"""`mm-run demo [--workdir DIR]`: the whole workflow on this CPU in minutes, learning something real.

Draws a small visual question answering set (one coloured shape per image; questions about its
shape, colour and place), creates a tiny Qwen2.5-VL-architecture model from random weights,
converts it with `mm-convert`, trains it with `mm-run finetune`, measures held-out exact-match
accuracy with `mm-run infer` before and after, converts the checkpoint back to HF, checks that
transformers gives the same greedy answers, and draws the loss curve and accuracy.
``--train-images``/``--eval-images``/``--steps`` make a reduced run (the test suite's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mm_core.demo.config import DemoSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    p.add_argument("--workdir", type=Path, default=d.workdir,
                   help=f"where data, checkpoints, answers, the figure and logs go (default: ./{d.workdir})")
    p.add_argument("--train-images", type=int, default=d.train_images, help="training images (3 questions each)")
    p.add_argument("--eval-images", type=int, default=d.eval_images, help="held-out images (3 questions each)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="questions per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--image-size", type=int, default=d.image_size, help="image side in pixels (multiple of 28)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="data loader worker processes")
    p.add_argument("--hf-check-limit", type=int, default=None,
                   help="questions the transformers reload answers (default: all held-out questions)")
    p.add_argument("--quiet", action="store_true", help="show only the steps and the summary (commands' "
                                                        "output still goes to <workdir>/logs)")


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    from mm_core.errors import ConfigError

    for name in ("train_images", "eval_images", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.image_size < 28 or args.image_size % 28:
        raise ConfigError(f"--image-size: must be a multiple of 28 (the ViT's 2x2 merged 14-pixel patches), "
                          f"got {args.image_size}")
    if args.batch_size > 3 * args.train_images:
        raise ConfigError(f"--batch-size {args.batch_size} is more than the {3 * args.train_images} training "
                          "questions; lower it or raise --train-images")
    return DemoSettings(workdir=args.workdir, train_images=args.train_images, eval_images=args.eval_images,
                        steps=args.steps, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                        seed=args.seed, num_workers=args.num_workers, hf_check_limit=args.hf_check_limit)


def run(args: argparse.Namespace) -> int:
    import sys

    from mm_core.demo.run import main_safe
    from mm_core.errors import ConfigError

    try:
        settings = settings_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return main_safe(settings, verbose=not args.quiet)
