"""torchvision's pretrained segmentation networks, loaded from the local torch hub cache only.

Three networks trained by torchvision on the subset of COCO labelled with the 20 PASCAL VOC classes
(plus background): ``fcn_resnet50``, ``deeplabv3_resnet50`` and ``lraspp_mobilenet_v3_large``.
Nothing here downloads implicitly. The weights are read from the file torchvision itself would
use, ``torch.hub.get_dir()/checkpoints/<file name of the weights' url>`` (``$TORCH_HOME/hub``,
``~/.cache/torch/hub`` by default); :func:`fetch` (``segutils weights fetch``) downloads them
where the network allows. A missing file raises :class:`WeightsNotFoundError` naming that command;
a corrupt file or the weights of another architecture raise :class:`WeightsFileError`.

The published accuracy and the class names come from the weights' own metadata
(:func:`published_metrics`, :func:`categories`), which torchvision ships with its code.

Typical use::

    model = load_pretrained("fcn_resnet50")              # eval mode, on the CPU
    logits = predict(model, images, "fcn_resnet50")      # (N, 21, H, W) for images (N, 3, H, W) in [0, 1]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import WeightsEnum
from torchvision.models.segmentation import (
    LRASPP,
    DeepLabV3_ResNet50_Weights,
    FCN_ResNet50_Weights,
    LRASPP_MobileNet_V3_Large_Weights,
    deeplabv3_resnet50,
    fcn_resnet50,
    lraspp_mobilenet_v3_large,
)

__all__ = [
    "PRETRAINED_NAMES",
    "VOC_ROOT_ENV",
    "FETCH_COMMAND",
    "LogitsOnly",
    "WeightsDownloadError",
    "WeightsFileError",
    "WeightsNotFoundError",
    "available",
    "build_architecture",
    "categories",
    "checkpoint_path",
    "Segmentation",
    "coarse_logits",
    "missing_voc_note",
    "missing_weights_note",
    "segment",
    "evaluate_on",
    "fetch",
    "load_pretrained",
    "names_or_all",
    "predict",
    "preprocess",
    "published_metrics",
    "voc_root",
    "weights_of",
]

#: The networks segutils knows, in the order the book shows them.
PRETRAINED_NAMES: tuple[str, ...] = ("fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large")

#: The command that downloads the weights (named in every "weights missing" message).
FETCH_COMMAND = "segutils weights fetch"

_BUILDERS: dict[str, tuple[Callable[..., nn.Module], WeightsEnum, bool]] = {
    # name: (torchvision builder, weights, whether the published state dict holds an auxiliary head)
    "fcn_resnet50": (fcn_resnet50, FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1, True),
    "deeplabv3_resnet50": (deeplabv3_resnet50, DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1, True),
    "lraspp_mobilenet_v3_large": (
        lraspp_mobilenet_v3_large,
        LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
        False,
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """The weights file is not in the torch hub cache; the message names the command that fetches it."""


class WeightsFileError(ValueError):
    """The weights file exists but is corrupt, or holds the weights of another architecture."""


class WeightsDownloadError(RuntimeError):
    """:func:`fetch` could not download the weights (typically: no network)."""


def _check_name(name: str) -> str:
    if name not in _BUILDERS:
        raise ValueError(f"unknown pretrained model {name!r}; choose from {', '.join(PRETRAINED_NAMES)}")
    return name


def weights_of(name: str) -> WeightsEnum:
    """The torchvision weights entry of ``name`` (its url, transforms and metadata; nothing is downloaded)."""
    return _BUILDERS[_check_name(name)][1]


def checkpoint_path(name: str) -> Path:
    """Where torchvision keeps ``name``'s weights: ``torch.hub.get_dir()/checkpoints/<file of the url>``."""
    file_name = os.path.basename(urlparse(weights_of(name).url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def available(name: str) -> bool:
    """Whether ``name``'s weights file is cached (not whether it is valid: :func:`load_pretrained` checks that)."""
    return checkpoint_path(name).is_file()


def categories(name: str) -> list[str]:
    """Class names of ``name``'s output channels, index = class id (from the weights' metadata)."""
    return list(weights_of(name).meta["categories"])


def published_metrics(name: str) -> dict[str, dict[str, float]]:
    """The accuracy torchvision publishes for ``name``'s weights, from their metadata.

    Returns:
        ``{dataset: {metric: value}}``, e.g. ``{"COCO-val2017-VOC-labels": {"miou": 60.5, "pixel_acc": 91.4}}``
        (percentages), plus ``"num_params"`` and ``"GFLOPs"`` under the key ``"model"``.
    """
    meta = weights_of(name).meta
    result = {dataset: dict(values) for dataset, values in meta["_metrics"].items()}
    result["model"] = {"num_params": meta["num_params"], "GFLOPs": meta["_ops"]}
    return result


def build_architecture(name: str, num_classes: int | None = None, aux: bool = True) -> nn.Module:
    """``name``'s network with random weights, exactly as its pretrained state dict expects.

    Built with ``weights=None, weights_backbone=None`` (so nothing downloads), with the auxiliary
    head the published state dict holds (``aux=False`` removes it, as :func:`load_pretrained` does
    by default). ``num_classes`` defaults to the weights' categories.
    """
    builder, weights, aux_head = _BUILDERS[_check_name(name)]
    num_classes = len(weights.meta["categories"]) if num_classes is None else num_classes
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if aux_head:
        kwargs["aux_loss"] = True
    model = builder(**kwargs)
    if aux_head and not aux:
        model.aux_classifier = None
    return model


def _missing_message(name: str, path: Path) -> str:
    return (
        f"the pretrained weights of {name} are not in the torch hub cache: no file {path}. "
        f"segutils never downloads implicitly; fetch them with `{FETCH_COMMAND} {name}` "
        "(on a machine with network access; copy the file to the same place otherwise)"
    )


def _read_state_dict(path: Path, name: str) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...)
        detail = (str(error).strip().splitlines() or ["no detail"])[0][:200]
        raise WeightsFileError(
            f"{path} is not a readable PyTorch state dict ({type(error).__name__}: {detail}); "
            f"the file is corrupt or truncated: delete it and run `{FETCH_COMMAND} {name}`"
        ) from error
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsFileError(
            f"{path} does not hold a state dict (a mapping of names to tensors) but a {type(state).__name__}"
        )
    return dict(state)


def _check_architecture(state: Mapping[str, Tensor], model: nn.Module, path: Path, name: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = []
        for what, items in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", shapes)):
            if items:
                problems.append(f"{len(items)} {what} (e.g. {', '.join(items[:2])})")
        raise WeightsFileError(
            f"{path} does not hold the weights of {name}: parameters {'; '.join(problems)}. "
            f"Delete it and run `{FETCH_COMMAND} {name}`"
        )


def load_pretrained(name: str, device: torch.device | str = "cpu", aux: bool = False) -> nn.Module:
    """``name`` with its pretrained weights from the torch hub cache, in eval mode.

    Args:
        name: one of :data:`PRETRAINED_NAMES`.
        device: where to put the model.
        aux: keep the auxiliary head (FCN, DeepLabv3). It is only used for training; without it
            ``model(x)`` returns ``{"out": logits}`` and costs a little less.

    Returns:
        The torchvision model, whose ``model(x)["out"]`` maps normalised images ``(N, 3, H, W)`` (see
        :func:`preprocess`) to logits ``(N, K, H, W)``, ``K = len(categories(name))``.

    Raises:
        WeightsNotFoundError: no weights file in the cache (the message names ``segutils weights fetch``).
        WeightsFileError: the file is corrupt, or holds another architecture's weights.
    """
    path = checkpoint_path(name)
    if not path.is_file():
        raise WeightsNotFoundError(_missing_message(name, path))
    model = build_architecture(name)
    state = _read_state_dict(path, name)
    _check_architecture(state, model, path, name)
    model.load_state_dict(state)
    if not aux and hasattr(model, "aux_classifier"):
        model.aux_classifier = None
    return model.eval().to(device)


def fetch(name: str, progress: bool = True) -> Path:
    """Download ``name``'s weights into the torch hub cache with torchvision's own downloader.

    Nothing happens when the file is already there. The download is checked against the hash
    prefix in the file name (``check_hash=True``, as torchvision does), then loaded once to check it.

    Returns:
        The path of the weights file.

    Raises:
        WeightsDownloadError: the download failed (no network, proxy, HTTP error, hash mismatch).
    """
    path = checkpoint_path(name)
    if not path.is_file():
        weights = weights_of(name)
        try:
            weights.get_state_dict(progress=progress, check_hash=True)
        except Exception as error:  # urllib's URLError/HTTPError, OSError, RuntimeError (hash) ...
            reason = getattr(error, "reason", None) or error
            raise WeightsDownloadError(
                f"could not download the weights of {name} from {weights.url}: {reason}. "
                f"Without network access, download that file elsewhere and copy it to {path}"
            ) from error
    load_pretrained(name)
    return path


def preprocess(images: Tensor, name: str) -> Tensor:
    """Images ``(N, 3, H, W)`` or ``(3, H, W)`` in ``[0, 1]`` -> the network's input ``(N, 3, h, w)``.

    The weights' own transforms: shorter side resized to 520 pixels (bilinear, antialiased), then
    normalised with the ImageNet mean and standard deviation.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images should have shape (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    return weights_of(name).transforms()(images)


def coarse_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The logits ``(N, K, h, w)`` before the network's final bilinear upsampling, for input ``x (N, 3, H, W)``.

    ``model(x)["out"]`` equals ``F.interpolate(coarse_logits(model, x), size=(H, W), mode="bilinear",
    align_corners=False)``: torchvision's segmentation models end with exactly that upsampling.
    """
    features = model.backbone(x)
    if isinstance(model, LRASPP):
        return model.classifier(features)  # LR-ASPP combines the stride-8 ("low") and stride-16 ("high") features
    return model.classifier(features["out"])


@dataclass(frozen=True)
class Segmentation:
    """One image through a pretrained network: what it saw, its coarse logits, and its logits at the image's size."""

    input: Tensor  #: the network's input ``(1, 3, h, w)`` (resized, normalised)
    coarse: Tensor  #: logits before the final upsampling ``(1, K, h', w')``
    logits: Tensor  #: ``(1, K, H, W)`` at the image's size: the model's own output, resized bilinearly

    @property
    def labels(self) -> Tensor:
        """Class ids ``(H, W)``: the argmax of :attr:`logits`."""
        return self.logits.argmax(1)[0]


def segment(model: nn.Module, image: Tensor, name: str) -> Segmentation:
    """Run ``model`` once on an image ``(3, H, W)`` in ``[0, 1]`` and keep its intermediate results (on the CPU)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        x = preprocess(image, name)
        coarse = coarse_logits(model, x.to(device)).cpu()
        own = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)  # = model(x)["out"]
        logits = F.interpolate(own, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return Segmentation(x, coarse, logits)


def missing_weights_note(names: Sequence[str], needs: str) -> str:
    """A MyST admonition saying that ``needs`` requires the weights of ``names``, and the command that fetches them."""
    listed = ", ".join(f"`{n}`" for n in names)
    megabytes = sum(weights_of(n).meta["_file_size"] for n in names)
    return (
        ":::{admonition} Pretrained weights needed\n:class: note\n"
        f"{needs} needs the pretrained weights of {listed}, which were not in the torch hub cache "
        f"(`{Path(torch.hub.get_dir()) / 'checkpoints'}`) when this page was built, so this section shows no "
        f"result. Fetch them ({megabytes:.0f} MB, with network access) with\n\n"
        f"```bash\n{FETCH_COMMAND} {' '.join(names)}\n```\n\n"
        "and build the book again after emptying its execution cache (`rm -r _build/.jupyter_cache`), "
        "which does not notice new weights by itself.\n:::"
    )


def predict(model: nn.Module, images: Tensor, name: str) -> Tensor:
    """Logits ``(N, K, H, W)`` at the size of ``images`` ``(N, 3, H, W)`` (or ``(3, H, W)``) in ``[0, 1]``.

    :func:`preprocess` resizes the images for the network; its logits, which come back at that size,
    are resized bilinearly to the original ``(H, W)``.
    """
    size = images.shape[-2:]
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(preprocess(images, name).to(device))["out"]
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class LogitsOnly(nn.Module):
    """A torchvision segmentation model as ``(N, 3, H, W)`` images in ``[0, 1]`` -> logits ``(N, K, H, W)``.

    Normalises with the ImageNet statistics (no resizing) and returns ``model(x)["out"]``, so that
    :func:`segutils.train.fit` and :func:`segutils.train.evaluate` can train and score it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)["out"]


def evaluate_on(
    model: nn.Module, name: str, dataset: Sequence[tuple[Tensor, Tensor]], indices: Sequence[int]
) -> dict[str, Any]:
    """Pixel accuracy and mean IoU of a pretrained network on ``dataset[i]`` for ``i`` in ``indices``.

    Each image ``(3, H, W)`` in ``[0, 1]`` goes through :func:`predict` (the weights' own resizing, logits
    resized back to ``(H, W)``); one :class:`segutils.metrics.ConfusionMatrix` is accumulated over all
    of them, with the masks' ``255`` (VOC's "void") ignored.

    Returns:
        ``{"mean_iou", "pixel_accuracy"}`` as floats in ``[0, 1]``, ``"iou_per_class"`` (a list) and
        ``"images"`` (how many were scored).
    """
    from segutils.metrics import ConfusionMatrix

    metric = ConfusionMatrix(len(categories(name)), ignore_index=255)
    for i in indices:
        image, mask = dataset[i]
        metric.update(predict(model, image, name).cpu(), mask.unsqueeze(0))
    scores = metric.compute()
    return {
        "mean_iou": scores["mean_iou"].item(),
        "pixel_accuracy": scores["pixel_accuracy"].item(),
        "iou_per_class": scores["iou_per_class"].tolist(),
        "images": len(indices),
    }


#: Environment variable naming the folder that holds ``VOCdevkit/VOC2012`` (default ``~/data/voc``).
VOC_ROOT_ENV = "SEGUTILS_VOC_ROOT"


def voc_root() -> Path:
    """Where the book looks for PASCAL VOC: ``$SEGUTILS_VOC_ROOT``, else ``~/data/voc``."""
    return Path(os.environ.get(VOC_ROOT_ENV) or "~/data/voc").expanduser()


def missing_voc_note(root: Path) -> str:
    """A MyST admonition saying that PASCAL VOC 2012 was not found under ``root`` and where to put it."""
    return (
        ":::{admonition} PASCAL VOC needed\n:class: note\n"
        f"This section scores the networks on PASCAL VOC 2012 val, which was not found under `{root}` when this "
        "page was built, so it shows no score. `segutils` never downloads data: unpack the VOC 2012 "
        f"training/validation archive so that `VOCdevkit/VOC2012` lies in a folder, set `{VOC_ROOT_ENV}` to that "
        "folder and build the book again (after `rm -r _build/.jupyter_cache`).\n:::"
    )


def names_or_all(names: Sequence[str] | None) -> list[str]:
    """``names`` checked, or every name of :data:`PRETRAINED_NAMES` when empty."""
    return [_check_name(n) for n in names] if names else list(PRETRAINED_NAMES)
