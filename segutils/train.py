"""Training and evaluation loops, in the plain style of torchvision's segmentation references."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable  # noqa: UP035  (the model cache is keyed on this module's AST)

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from segutils.data.palette import IGNORE_INDEX
from segutils.device import get_device
from segutils.metrics import ConfusionMatrix

Batch = tuple[torch.Tensor, torch.Tensor]


def _autocast(device: torch.device, amp: bool | str) -> tuple[contextlib.AbstractContextManager, torch.dtype | None]:
    """Mixed precision context for ``device``: on CUDA when ``amp`` is "auto" or True."""
    if amp not in (True, False, "auto"):
        raise ValueError(f"amp should be True, False or 'auto', got {amp!r}")
    if amp is False or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext(), None
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16  # the only autocast type CPUs support well
    return torch.autocast(device_type=device.type, dtype=dtype), dtype


def _check_batch(batch: Any) -> Batch:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("each batch should be a pair (images (N, C, H, W), masks (N, H, W))")
    images, masks = batch
    if images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[1:]:
        raise ValueError(
            f"batch shapes should be images (N, C, H, W) and masks (N, H, W), "
            f"got {tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if masks.is_floating_point():
        raise TypeError(f"masks should hold integer class ids, got dtype {masks.dtype}")
    return images, masks


def _to_device(batch: Batch, device: torch.device, channels_last: bool) -> Batch:
    """``batch`` on ``device``, the images in channels-last (NHWC) memory when ``channels_last``."""
    images, masks = batch
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    return images.to(device, non_blocking=True, memory_format=memory_format), masks.to(device, non_blocking=True)


def _num_batches(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    num_classes: int,
    device: torch.device | str | None = None,
    ignore_index: int = IGNORE_INDEX,
    amp: bool | str = "auto",
    channels_last: bool = False,
) -> dict[str, Any]:
    """Loss and metrics of ``model`` over a whole loader (accumulated, not averaged per image).

    Args:
        model: maps images ``(N, C, H, W)`` to logits ``(N, K, H, W)``.
        loader: yields ``(images (N, C, H, W), masks (N, H, W))``.
        num_classes: ``K``.
        channels_last: pass the images to ``model`` in channels-last (NHWC) memory, for a model whose weights
            are in that format (``model.to(memory_format=torch.channels_last)``, as :func:`fit` does).

    Returns:
        A dict of floats ``"loss"``, ``"pixel_accuracy"`` and ``"mean_iou"``, plus
        ``"iou_per_class"`` (a list of ``K`` floats) and ``"confusion_matrix"`` (a ``(K, K)``
        int64 tensor on the CPU).
    """
    device = torch.device(device) if device is not None else get_device()
    model.eval().to(device)
    autocast, _ = _autocast(device, amp)
    confusion = ConfusionMatrix(num_classes, ignore_index, device=device)
    total_loss, total_pixels = torch.zeros((), device=device), torch.zeros((), device=device)
    for batch in loader:
        images, masks = _to_device(_check_batch(batch), device, channels_last)
        with autocast:
            logits = model(images)
        if logits.shape[1] != num_classes:
            raise ValueError(f"model gives {logits.shape[1]} channels, expected num_classes={num_classes}")
        counted = (masks != ignore_index).sum()
        total_loss += F.cross_entropy(logits.float(), masks, ignore_index=ignore_index, reduction="sum")
        total_pixels += counted
        confusion.update(logits, masks)
    metrics = confusion.compute()
    return {
        "loss": (total_loss / total_pixels.clamp(min=1)).item(),
        "pixel_accuracy": metrics["pixel_accuracy"].item(),
        "mean_iou": metrics["mean_iou"].item(),
        "iou_per_class": metrics["iou_per_class"].tolist(),
        "confusion_matrix": metrics["confusion_matrix"].cpu(),
    }


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str | None = None,
    amp: bool | str = "auto",
    scaler: torch.amp.GradScaler | None = None,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    progress: bool = False,
    desc: str = "train",
    channels_last: bool = False,
) -> dict[str, Any]:
    """One pass over ``loader``: per-pixel cross-entropy, one optimizer step per batch.

    Args:
        model: maps images ``(N, C, H, W)`` to logits ``(N, K, H, W)``; put in train mode.
        loader: yields ``(images (N, C, H, W) float, masks (N, H, W) int64)``.
        optimizer: updates ``model``'s parameters.
        scheduler: stepped after every batch when given (e.g. ``OneCycleLR``).
        amp: mixed precision as in :func:`fit`; ``scaler`` scales float16 gradients.
        num_classes: ``K``; read from the model's first output when None.
        channels_last: images in channels-last (NHWC) memory, as in :func:`evaluate`.

    Returns:
        ``{"loss", "pixel_accuracy", "mean_iou"}`` of the epoch (the loss is the mean over
        batches, the metrics are accumulated over all pixels) and ``"num_classes"``.

    Raises:
        ValueError: the loader yields no batch, or a malformed batch.
    """
    device = torch.device(device) if device is not None else get_device()
    model.train()
    autocast, amp_dtype = _autocast(device, amp)
    if scaler is None:
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    confusion = ConfusionMatrix(num_classes, ignore_index, device=device) if num_classes else None
    loss_sum, batches = torch.zeros((), device=device), 0
    bar = tqdm(loader, total=_num_batches(loader), desc=desc, disable=not progress, leave=False)
    for batch in bar:
        images, masks = _to_device(_check_batch(batch), device, channels_last)
        with autocast:
            logits = model(images)
        loss = F.cross_entropy(logits.float(), masks, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        if confusion is None:
            num_classes = logits.shape[1]
            confusion = ConfusionMatrix(num_classes, ignore_index, device=device)
        confusion.update(logits, masks)
        loss_sum += loss.detach()
        batches += 1
        if progress and batches % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / batches:.3f}")
    if confusion is None:
        raise ValueError("train_loader yielded no batch")
    metrics = confusion.compute()
    return {
        "loss": loss_sum.item() / batches,
        "pixel_accuracy": metrics["pixel_accuracy"].item(),
        "mean_iou": metrics["mean_iou"].item(),
        "num_classes": num_classes,
    }


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch] | None = None,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    device: torch.device | str | None = None,
    amp: bool | str = "auto",
    weight_decay: float = 1e-4,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    seed: int | None = 0,
    max_seconds: float | None = None,
    patience: int | None = None,
    progress: bool = True,
    callback: Callable[[int, nn.Module, dict[str, list[float]]], bool | None] | None = None,
    channels_last: bool = False,
) -> dict[str, list[float]]:
    """Train ``model`` with AdamW and per-pixel cross-entropy: :func:`train_one_epoch`, then
    :func:`evaluate` on ``val_loader``, once per epoch.

    Two schedules:

    - ``patience=None`` (default): ``epochs`` passes with a one-cycle (warm-up, then cosine)
      learning-rate schedule.
    - ``patience=p``: train to a plateau of the validation loss. The learning rate stays at
      ``lr`` until the validation loss has not improved for ``p`` epochs, then drops
      tenfold; training stops at the next such plateau (or after ``epochs`` epochs, the cap),
      and the weights of the epoch with the lowest validation loss are restored.

    Args:
        model: maps images ``(N, C, H, W)`` to logits ``(N, K, H, W)``.
        train_loader: yields ``(images (N, C, H, W) float, masks (N, H, W) int64)``;
            pixels labelled ``ignore_index`` count in neither loss nor metrics.
        val_loader: evaluated after every epoch when given (required with ``patience``).
        epochs: passes over ``train_loader`` (with ``patience``: at most this many).
        lr: peak learning rate.
        device: where to train; :func:`segutils.get_device` when None.
        amp: mixed precision: "auto" uses it on CUDA only (bfloat16 where supported,
            else float16 with gradient scaling).
        num_classes: ``K``; read from the model's first output when None.
        seed: seeds PyTorch before training (initial shuffles, dropout), so a run on
            the CPU repeats exactly; None leaves the global state alone.
        max_seconds: stop after the epoch in which this much time has passed.
        patience: epochs without a lower validation loss that count as a plateau (None:
            the fixed one-cycle schedule).
        progress: show a tqdm progress bar (renders as a widget in notebooks).
        callback: called as ``callback(epoch, model, history)`` after every epoch
            (e.g. to record predictions as training goes); returning True stops
            training after that epoch.
        channels_last: train with the model's 4-D weights and the images in channels-last (NHWC) memory, and
            give the model back in the default (contiguous) format. The same arithmetic in another order: the
            results agree up to float rounding, and the CPU (oneDNN) convolutions of the book's models, dilated
            ones most, train faster (``benchmarks/bench_channels_last.py`` measures by how much). Off by
            default: a model whose ``forward`` calls ``.view`` on its feature maps fails on channels-last ones
            (``.reshape`` works with both).

    Returns:
        The history, one entry per epoch in each of the lists
        ``{"epoch", "lr", "train_loss", "train_pixel_accuracy", "train_mean_iou", "seconds"}``, plus
        ``"val_loss", "val_pixel_accuracy", "val_mean_iou"`` with a ``val_loader``, and with
        ``patience`` ``"best_epoch"``: a one-element list, the epoch whose weights were kept.
    """
    if epochs < 1:
        raise ValueError(f"epochs should be >= 1, got {epochs}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience should be None or an int >= 1, got {patience!r}")
    if patience is not None and val_loader is None:
        raise ValueError("patience needs a val_loader: the plateau is one of the validation loss")
    if seed is not None:
        torch.manual_seed(seed)
    device = torch.device(device) if device is not None else get_device()
    model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    _, amp_dtype = _autocast(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = _num_batches(train_loader)
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
        if steps_per_epoch and patience is None
        else None
    )
    history: dict[str, list[float]] = {
        "epoch": [],
        "lr": [],
        "train_loss": [],
        "train_pixel_accuracy": [],
        "train_mean_iou": [],
        "seconds": [],
    }
    best_loss, best_epoch, best_state, waited, dropped = math.inf, 0, None, 0, False
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        history["lr"].append(optimizer.param_groups[0]["lr"])
        train = train_one_epoch(
            model,
            train_loader,
            optimizer,
            scheduler=scheduler,
            device=device,
            amp=amp,
            scaler=scaler,
            num_classes=num_classes,
            ignore_index=ignore_index,
            progress=progress,
            desc=f"epoch {epoch}/{epochs}",
            channels_last=channels_last,
        )
        num_classes = train["num_classes"]
        history["epoch"].append(epoch)
        for key in ("loss", "pixel_accuracy", "mean_iou"):
            history[f"train_{key}"].append(train[key])
        if val_loader is not None:
            val = evaluate(model, val_loader, num_classes, device, ignore_index, amp, channels_last)
            for key in ("loss", "pixel_accuracy", "mean_iou"):
                history.setdefault(f"val_{key}", []).append(val[key])
        history["seconds"].append(time.perf_counter() - start)
        if not math.isfinite(history["train_loss"][-1]):
            raise FloatingPointError(f"training diverged in epoch {epoch}: loss is {history['train_loss'][-1]}")
        plateau = False
        if patience is not None:
            if history["val_loss"][-1] < best_loss:
                best_loss, best_epoch, waited = history["val_loss"][-1], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
            if waited >= patience:
                if dropped:
                    plateau = True
                else:  # the first plateau: a tenfold smaller step, then wait for the next one
                    for group in optimizer.param_groups:
                        group["lr"] *= 0.1
                    dropped, waited = True, 0
        stop = callback(epoch, model, history) if callback is not None else False
        if stop or plateau or (max_seconds is not None and history["seconds"][-1] >= max_seconds):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        history["best_epoch"] = [best_epoch]
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history


def save_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **extra: Any
) -> Path:
    """Save the model's (and optionally the optimizer's) state plus plain-Python ``extra``
    (e.g. ``model_name="unet"``, ``history=...``) to ``path``; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "extra": extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, path)
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Tensors are mapped to ``map_location`` (CPU by default), so a checkpoint saved on
    a GPU loads on a machine without one. Only tensors and plain Python values are
    unpickled (``weights_only=True``).

    Returns:
        The raw checkpoint, ``{"model": state_dict, "extra": dict, ["optimizer": ...]}``;
        its states are also loaded into ``model`` / ``optimizer`` when given.

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if model is not None:
        model.load_state_dict(state["model"])
    if optimizer is not None:
        if "optimizer" not in state:
            raise KeyError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return state
