"""The ``segutils`` command line: ``info``, ``preview``, ``train``, ``weights``, ``segment``, ``grade``, ``course``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path


def _info(_: argparse.Namespace) -> int:
    import torch
    import torchvision

    import segutils

    device = segutils.get_device()
    print(f"segutils     {segutils.__version__}")
    print(f"python       {platform.python_version()}")
    print(f"torch        {torch.__version__}")
    print(f"torchvision  {torchvision.__version__}")
    print(f"device       {device}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}       {torch.cuda.get_device_name(i)}")
    else:
        print("cuda         not available (running on the CPU)")
    return 0


def _preview(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from segutils.data import ShapesDataset
    from segutils.viz import show_samples

    dataset = ShapesDataset(args.split, size=args.count, image_size=args.image_size, seed=args.seed)
    images, masks = dataset.batch(range(args.count))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    show_samples(images, masks, max_items=args.count).savefig(out, dpi=120, bbox_inches="tight")
    print(f"wrote {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from segutils.data import ShapesDataset
    from segutils.device import get_device
    from segutils.models import MODEL_NAMES, build_model, count_parameters
    from segutils.train import fit, save_checkpoint

    device = torch.device(args.device) if args.device else get_device()
    if args.data == "voc":
        from torch.utils.data import Subset

        from segutils.cli_pretrained import voc_training_data
        from segutils.data import VOC_CLASSES

        if not args.voc_root:
            print("segutils train: error: --data voc needs --voc-root PATH", file=sys.stderr)
            return 2
        try:
            train, val = voc_training_data(args.voc_root, args.image_size)
        except FileNotFoundError as error:
            print(f"segutils train: error: {error}", file=sys.stderr)
            return 1
        train = Subset(train, range(min(args.train_size, len(train))))
        val = Subset(val, range(min(args.val_size, len(val))))
        num_classes = len(VOC_CLASSES)
    else:
        train = ShapesDataset("train", size=args.train_size, image_size=args.image_size, seed=args.seed)
        val = ShapesDataset("val", size=args.val_size, image_size=args.image_size, seed=args.seed)
        num_classes = ShapesDataset.num_classes
    if args.model in MODEL_NAMES:
        model = build_model(args.model, in_channels=3, num_classes=num_classes)
    elif args.data != "voc":
        print(
            f"segutils train: error: {args.model} is pretrained on the 21 VOC classes: use --data voc", file=sys.stderr
        )
        return 2
    else:  # fine-tune torchvision's pretrained network (weights from the torch hub cache)
        from segutils.pretrained import LogitsOnly, WeightsNotFoundError, load_pretrained

        try:
            model = LogitsOnly(load_pretrained(args.model))
        except (WeightsNotFoundError, ValueError) as error:
            print(f"segutils train: error: {error}", file=sys.stderr)
            return 1
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    val_loader = DataLoader(val, batch_size=args.batch_size, num_workers=args.workers)
    print(f"training {args.model} ({count_parameters(model):,} parameters) on {device}")
    history = fit(model, train_loader, val_loader, epochs=args.epochs, lr=args.lr, device=device, seed=args.seed)
    final = {k: round(v[-1], 4) for k, v in history.items() if k.startswith("val_")}
    print(json.dumps(final))
    if args.checkpoint:
        path = save_checkpoint(args.checkpoint, model, model_name=args.model, history=history)
        print(f"wrote {path}")
    return 0


def _model_name(value: str) -> str:
    """``--model``: checked on use, so that building the parser does not import PyTorch (``segutils grade``)."""
    from segutils.models import MODEL_NAMES
    from segutils.pretrained import PRETRAINED_NAMES

    if value not in MODEL_NAMES + PRETRAINED_NAMES:
        names = ", ".join(MODEL_NAMES + PRETRAINED_NAMES)
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {names})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segutils", description="Companion tools of the semantic segmentation book.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions and the device segutils will use").set_defaults(run=_info)

    preview = commands.add_parser("preview", help="save a grid of ShapesDataset samples")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--count", type=int, default=8)
    preview.add_argument("--split", default="train")
    preview.add_argument("--image-size", type=int, default=64)
    preview.add_argument("--seed", type=int, default=0)
    preview.set_defaults(run=_preview)

    train = commands.add_parser("train", help="train a model on ShapesDataset, or on PASCAL VOC from disk")
    train.add_argument(
        "--model",
        type=_model_name,
        default="unet",
        metavar="NAME",
        help="a name of segutils.models.MODEL_NAMES (default: unet), or with --data voc a pretrained "
        "network to fine-tune (fcn_resnet50, deeplabv3_resnet50, lraspp_mobilenet_v3_large)",
    )
    train.add_argument(
        "--data",
        choices=("shapes", "voc"),
        default="shapes",
        help="ShapesDataset (default) or PASCAL VOC 2012 (needs --voc-root; --image-size is the crop size)",
    )
    train.add_argument("--voc-root", default=None, metavar="PATH", help="the folder holding VOCdevkit/VOC2012")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument(
        "--train-size", type=int, default=2000, help="with --data voc: at most this many training images"
    )
    train.add_argument("--val-size", type=int, default=200, help="with --data voc: the first this many val images")
    train.add_argument("--image-size", type=int, default=64)
    train.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: segutils.get_device())")
    train.add_argument("--checkpoint", default=None, help="where to save the trained model")
    train.set_defaults(run=_train)

    from segutils.audit.cli import add_audit_parser
    from segutils.cli_pretrained import add_pretrained_parsers
    from segutils.course_cli import add_course_parser
    from segutils.grading.cli import add_grade_parser

    add_pretrained_parsers(commands)

    add_grade_parser(commands)
    add_audit_parser(commands)
    add_course_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segutils`` console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
