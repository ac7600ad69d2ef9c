"""``segutils weights`` and ``segutils segment``: torchvision's pretrained networks from the command line,
and the PASCAL VOC data of ``segutils train --data voc``.

Building these parsers imports neither PyTorch nor torchvision (``segutils grade`` starts without them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def _error(command: str, error: Exception) -> int:
    print(f"segutils {command}: error: {error}", file=sys.stderr)
    return 1


def pretrained_name(value: str) -> str:
    """``--model`` / ``MODEL`` of the pretrained networks, checked on use."""
    from segutils.pretrained import PRETRAINED_NAMES

    if value not in PRETRAINED_NAMES:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(PRETRAINED_NAMES)})")
    return value


def _weights_list(_: argparse.Namespace) -> int:
    from segutils import pretrained

    for name in pretrained.PRETRAINED_NAMES:
        state = "present" if pretrained.available(name) else "missing"
        print(f"{name:<28} {state:<8} {pretrained.checkpoint_path(name)}")
    return 0


def _weights_fetch(args: argparse.Namespace) -> int:
    from segutils import pretrained

    failed = False
    for name in pretrained.names_or_all(args.models):
        path = pretrained.checkpoint_path(name)
        if path.is_file():
            print(f"{name}: already in the cache, checking {path}")
        else:
            print(f"{name}: downloading {pretrained.weights_of(name).url} to {path}", flush=True)
        try:
            pretrained.fetch(name, progress=not args.quiet)
        except (pretrained.WeightsDownloadError, pretrained.WeightsFileError) as error:
            _error("weights fetch", error)
            failed = True
            continue
        print(f"{name}: ok")
    return 1 if failed else 0


def _segment(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from segutils import pretrained
    from segutils.device import get_device
    from segutils.photos import VOC_PALETTE, read_image
    from segutils.viz import overlay

    start = time.perf_counter()
    device = torch.device(args.device) if args.device else get_device()
    try:
        image = read_image(args.image)
        print(f"read {args.image}: {image.shape[2]}x{image.shape[1]} pixels", flush=True)
        model = pretrained.load_pretrained(args.model, device=device)
        print(
            f"loaded {args.model} from {pretrained.checkpoint_path(args.model)} onto {device} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    except (FileNotFoundError, ValueError) as error:  # the weights errors are subclasses of these
        return _error("segment", error)
    begin = time.perf_counter()
    logits = pretrained.predict(model, image, args.model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"segmented in {time.perf_counter() - begin:.2f} s", flush=True)
    labels = logits.argmax(1)[0].cpu()
    classes = pretrained.categories(args.model)
    counts = torch.bincount(labels.flatten(), minlength=len(classes))
    found = [
        f"{classes[c]} {counts[c] / labels.numel():.1%}" for c in counts.argsort(descending=True).tolist() if counts[c]
    ]
    print("classes by area: " + ", ".join(found))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = overlay(image, labels, alpha=args.alpha, palette=VOC_PALETTE)
    Image.fromarray(picture.permute(1, 2, 0).numpy()).save(out)
    print(f"wrote {out} ({picture.shape[2]}x{picture.shape[1]}) in {time.perf_counter() - start:.1f} s in all")
    return 0


def add_pretrained_parsers(commands: Any) -> None:
    """Add ``weights`` and ``segment`` to the ``segutils`` subcommands."""
    weights = commands.add_parser(
        "weights", help="torchvision's pretrained segmentation weights in the torch hub cache"
    )
    actions = weights.add_subparsers(dest="weights_command", required=True)
    actions.add_parser("list", help="where each network's weights go, and whether they are there").set_defaults(
        run=_weights_list
    )
    fetch = actions.add_parser("fetch", help="download weights with torchvision (needs network access)")
    fetch.add_argument(
        "models",
        nargs="*",
        type=pretrained_name,
        metavar="MODEL",
        help="fcn_resnet50, deeplabv3_resnet50, lraspp_mobilenet_v3_large (default: all)",
    )
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(run=_weights_fetch)

    segment = commands.add_parser("segment", help="segment a photograph with a pretrained network")
    segment.add_argument("image", help="an image file (PNG, JPEG, ...)")
    segment.add_argument(
        "--model",
        type=pretrained_name,
        default="fcn_resnet50",
        metavar="NAME",
        help="fcn_resnet50 (default), deeplabv3_resnet50 or lraspp_mobilenet_v3_large",
    )
    segment.add_argument("--out", required=True, help="where to write the overlay (PNG), at the image's size")
    segment.add_argument("--alpha", type=float, default=0.6, help="opacity of the class colours")
    segment.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: segutils.get_device())")
    segment.set_defaults(run=_segment)


def voc_training_data(root: str | Path, size: int) -> tuple[Any, Any]:
    """PASCAL VOC 2012 ``train`` and ``val`` for ``segutils train --data voc``.

    Training items are random resized crops of ``size x size`` (with flips and colour jitter); validation
    items are resized (shorter side ``size``) and centre-cropped to ``size x size``, so that both batch.
    Masks are resampled by nearest neighbour; void stays 255.
    """
    from torchvision.transforms import v2

    from segutils.data import train_transform, voc_segmentation

    train = voc_segmentation(root, "train", transform=train_transform(crop_size=size))
    val = voc_segmentation(root, "val", transform=v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)]))
    return train, val
