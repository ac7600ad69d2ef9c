"""Segmentation metrics computed from a dataset-level confusion matrix.

Every metric here is a function of one ``(K, K)`` confusion matrix whose rows are the
target class and whose columns are the predicted class. The matrix is summed over the
whole dataset before any ratio is taken (as in the FCN paper and torchvision's reference
scripts), so the mean IoU is *not* an average of per-image IoUs.

Typical use::

    metric = ConfusionMatrix(num_classes=21)
    with torch.no_grad():
        for images, masks in loader:
            metric.update(model(images), masks)   # logits (N, K, H, W), masks (N, H, W)
    scores = metric.compute()                      # scores["mean_iou"], ...

Boundary metrics measure what the overall mIoU dilutes, the placement of edges:
:func:`boundary_band` selects the pixels near a label edge (the "trimap" band in which
DeepLab reports mIoU), and :class:`BoundaryFScore` matches predicted and true edge pixels
within a distance tolerance (the boundary F-score of Csurka et al., 2013, as used for
DAVIS and Cityscapes-style boundary evaluation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BoundaryFScore",
    "ConfusionMatrix",
    "boundary_band",
    "confusion_matrix",
    "dice_per_class",
    "iou_per_class",
    "label_edges",
    "mean_dice",
    "mean_iou",
    "pixel_accuracy",
]

_INT32_MAX = torch.iinfo(torch.int32).max
_INT32_MIN = torch.iinfo(torch.int32).min
_WIDE_UNSIGNED = tuple(getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name))


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


def _check_ignore_index(ignore_index: int | None) -> None:
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")


def _as_labels(x: Tensor, name: str) -> Tensor:
    """Check that ``x`` holds integer class ids; bool becomes uint8 (a free view)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        dtype = str(x.dtype).removeprefix("torch.")
        raise ValueError(
            f"{name}: expected integer class ids, got {dtype}; "
            "for logits of shape (N, K, H, W) pass logits.argmax(dim=1)"
        )
    if x.dtype == torch.bool:
        return x.view(torch.uint8)
    if x.dtype in _WIDE_UNSIGNED:  # few kernels (not even aminmax) support these
        return x.to(torch.int64)
    return x


def _index_dtype(num_classes: int, ignore_index: int | None) -> torch.dtype:
    # int32 halves the memory traffic and bincount runs ~2x faster on it; it is safe
    # when every bin index and the ignore label fit.
    fits = num_classes * num_classes + 1 <= _INT32_MAX
    if ignore_index is not None:
        fits = fits and _INT32_MIN <= ignore_index <= _INT32_MAX
    return torch.int32 if fits else torch.int64


def _label_bounds(pred: Tensor, target: Tensor) -> tuple[int, int, int, int]:
    """``(pred.min(), pred.max(), target.min(), target.max())`` with one host sync."""
    bounds = [b.to(torch.int64) for x in (pred, target) for b in torch.aminmax(x)]
    pmin, pmax, tmin, tmax = torch.stack(bounds).tolist()
    return pmin, pmax, tmin, tmax


def _first_bad(labels: Tensor, low: int, high: int, num_classes: int, ignored: Tensor | None) -> tuple[int, int] | None:
    """First label outside ``[0, num_classes)`` at a non-ignored pixel, and how many there are.

    ``low``/``high`` are the known minimum and maximum, used to skip a comparison that
    cannot find anything.
    """
    bad = labels < 0 if low < 0 else None
    if high >= num_classes:
        bad = labels >= num_classes if bad is None else bad | (labels >= num_classes)
    if bad is None:
        return None
    if ignored is not None:
        bad &= ~ignored
    if not bad.any():
        return None
    return int(labels[bad][0]), int(bad.count_nonzero())


def _check_label_values(
    pred: Tensor,
    target: Tensor,
    bounds: tuple[int, int, int, int],
    num_classes: int,
    ignore_index: int | None,
    ignored: Tensor | None,
) -> None:
    """Raise if ``target`` or (at non-ignored pixels) ``pred`` leaves ``[0, num_classes)``.

    ``pred`` and ``target`` are the converted index-dtype copies; ``bounds`` were taken
    before conversion, so a value the conversion could not hold is reported from them.
    """
    pmin, pmax, tmin, tmax = bounds
    info = torch.iinfo(pred.dtype)
    expected = f"outside [0, {num_classes})"
    if tmin < info.min or tmax > info.max:
        value = tmin if tmin < info.min else tmax
        raise ValueError(f"target contains label {value}, {expected} and not ignore_index={ignore_index}")
    found = _first_bad(target, tmin, tmax, num_classes, ignored)
    if found is not None:
        value, count = found
        raise ValueError(
            f"target contains label {value}, {expected} and not ignore_index={ignore_index} ({count} pixel(s) in total)"
        )
    if pmin < info.min or pmax > info.max:
        raise ValueError(f"pred contains class id {pmin if pmin < info.min else pmax}, {expected}")
    found = _first_bad(pred, pmin, pmax, num_classes, ignored)
    if found is not None:
        value, count = found
        raise ValueError(
            f"pred contains class id {value}, {expected}, at {count} pixel(s) whose target is "
            "not ignored; predictions must be class ids (argmax of the logits)"
        )


def _bincount(index: Tensor, length: int) -> Tensor:
    if index.device.type == "meta":
        # bincount has no meta kernel (its output length depends on the data);
        # scatter_add_ gives the same shape and dtype with a fixed length.
        counts = torch.zeros(length, dtype=torch.int64, device=index.device)
        return counts.scatter_add_(0, index.long(), torch.ones_like(index, dtype=torch.int64))
    return torch.bincount(index, minlength=length)


def confusion_matrix(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
    validate: bool = True,
) -> Tensor:
    r"""Count pixels per (target class, predicted class) pair.

    Computed with one :func:`torch.bincount` on the inputs' device: pixel ``i`` goes to
    bin ``K * target[i] + pred[i]``, and ignored pixels go to an extra bin ``K * K`` that is
    dropped (a ``masked_fill_`` on the index is ~3x faster than boolean indexing on CPU).

    Args:
        pred: predicted class ids, any integer dtype (bool counts as 0/1), shape ``(*)``,
            e.g. ``(N, H, W)`` or ``(H, W)``. At pixels whose target is ``ignore_index``
            its values are not counted and not range-checked.
        target: ground-truth class ids, same shape and device as ``pred``.
        num_classes: ``K``, the number of classes; labels are ``0 .. K - 1``.
        ignore_index: target label whose pixels are left out (e.g. object borders in
            Pascal VOC). ``None`` counts every pixel.
        validate: check that every target label is in ``[0, K)`` or ``ignore_index``, and
            every counted prediction is in ``[0, K)``. This reads the values, so it costs
            a few passes over the data and a host-device synchronisation or two; pass
            ``False`` to skip it when the labels are known to be valid (out-of-range labels
            are then counted in a wrong cell, dropped, or make ``bincount`` fail). On the
            ``meta`` device there are no values, so the value check is skipped there, and
            since ``bincount`` has no meta kernel the counts come from ``scatter_add_``
            (same shape and dtype).

    Returns:
        Tensor of shape ``(K, K)``, dtype ``int64``, on the inputs' device: entry ``[t, p]``
        counts the pixels of target class ``t`` predicted as ``p``. Empty or all-ignored
        inputs give zeros.

    Raises:
        TypeError: an input is not a tensor, or ``num_classes``/``ignore_index`` not an int.
        ValueError: float (or complex) inputs, mismatched shapes or devices,
            ``num_classes < 1``, or (with ``validate``) a label out of range.

    Example::

        >>> pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
        >>> target = torch.tensor([[0, 1, 2], [2, 255, 0]])
        >>> confusion_matrix(pred, target, num_classes=3)
        tensor([[2, 0, 0],
                [0, 1, 0],
                [0, 1, 1]])
    """
    _check_num_classes(num_classes)
    _check_ignore_index(ignore_index)
    pred = _as_labels(pred, "pred")
    target = _as_labels(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    if pred.device != target.device:
        raise ValueError(f"pred and target must be on the same device, got {pred.device} and {target.device}")

    k = num_classes
    index_dtype = _index_dtype(k, ignore_index)
    check_values = validate and target.device.type != "meta" and target.numel() > 0
    bounds = _label_bounds(pred, target) if check_values else None
    p = pred.to(index_dtype, copy=True)
    t = target.to(index_dtype)
    ignored = None
    if ignore_index is not None and (bounds is None or bounds[2] <= ignore_index <= bounds[3]):
        ignored = t == ignore_index
    if bounds is not None:
        _check_label_values(p, t, bounds, k, ignore_index, ignored)

    # p is our own copy, so the index is built in place (one 4-byte-per-pixel
    # allocation fewer, which is measurable on CPU).
    index = p.add_(t, alpha=k)
    if ignored is not None:
        index.masked_fill_(ignored, k * k)
    counts = _bincount(index.reshape(-1), k * k + 1)
    return counts[: k * k].reshape(k, k)


def _check_conf(conf: Tensor) -> Tensor:
    """Validate a confusion matrix and return it as floating point."""
    if not isinstance(conf, Tensor):
        raise TypeError(f"conf must be a torch.Tensor, got {type(conf).__name__}")
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"conf must be a square (K, K) matrix, got shape {tuple(conf.shape)}")
    if conf.shape[0] == 0:
        raise ValueError("conf must have at least one class, got shape (0, 0)")
    if conf.is_complex() or conf.dtype == torch.bool:
        raise ValueError(f"conf must hold counts (integer or float), got {conf.dtype}")
    return conf if conf.is_floating_point() else conf.to(torch.get_default_dtype())


def pixel_accuracy(conf: Tensor) -> Tensor:
    """Fraction of counted pixels whose prediction equals the target.

    Args:
        conf: confusion matrix ``(K, K)``, rows = target, columns = prediction.

    Returns:
        0-dim floating tensor; NaN when no pixel was counted.
    """
    conf = _check_conf(conf)
    return conf.diagonal().sum() / conf.sum()


def iou_per_class(conf: Tensor) -> Tensor:
    r"""Intersection over union of every class, :math:`TP / (TP + FP + FN)`.

    Args:
        conf: confusion matrix ``(K, K)``, rows = target, columns = prediction.

    Returns:
        Tensor of shape ``(K,)``; NaN for a class absent from both target and prediction.
    """
    conf = _check_conf(conf)
    tp = conf.diagonal()
    return tp / (conf.sum(0) + conf.sum(1) - tp)


def mean_iou(conf: Tensor) -> Tensor:
    """Mean of :func:`iou_per_class` over the classes present in target or prediction.

    Args:
        conf: confusion matrix ``(K, K)``, rows = target, columns = prediction.

    Returns:
        0-dim floating tensor; NaN when no class is present.
    """
    return iou_per_class(conf).nanmean()


def dice_per_class(conf: Tensor) -> Tensor:
    r"""Dice coefficient (F1) of every class, :math:`2 TP / (2 TP + FP + FN)`.

    Args:
        conf: confusion matrix ``(K, K)``, rows = target, columns = prediction.

    Returns:
        Tensor of shape ``(K,)``; NaN for a class absent from both target and prediction.
    """
    conf = _check_conf(conf)
    return 2 * conf.diagonal() / (conf.sum(0) + conf.sum(1))


def mean_dice(conf: Tensor) -> Tensor:
    """Mean of :func:`dice_per_class` over the present classes (NaN when none is).

    Args:
        conf: confusion matrix ``(K, K)``, rows = target, columns = prediction.
    """
    return dice_per_class(conf).nanmean()


class ConfusionMatrix:
    """Streaming confusion matrix: accumulate batches, then read the metrics.

    The ``(K, K)`` int64 matrix lives on the device of the inputs it last received: it
    starts on ``device`` (CPU when ``None``) and moves there lazily at :meth:`update`
    (moving ``K * K`` counts is cheap; moving the batches would not be). Nothing here
    builds an autograd graph, so it works the same inside ``torch.no_grad()``.

    Args:
        num_classes: ``K``.
        ignore_index: target label to leave out; ``None`` counts every pixel.
        device: where the empty matrix is created.
        validate: range-check the labels of every batch (see :func:`confusion_matrix`).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        device: torch.device | str | None = None,
        *,
        validate: bool = True,
    ) -> None:
        _check_num_classes(num_classes)
        _check_ignore_index(ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.validate = validate
        self._matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"device={self._matrix.device})"
        )

    def _labels(self, pred_or_logits: Tensor, target: Tensor) -> Tensor:
        """Turn logits ``(N, K, *)`` into class ids ``(N, *)``; pass integer ids through."""
        if not isinstance(pred_or_logits, Tensor):
            raise TypeError(f"pred_or_logits must be a torch.Tensor, got {type(pred_or_logits).__name__}")
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if not pred_or_logits.is_floating_point():
            return pred_or_logits
        logits = pred_or_logits
        if logits.ndim != target.ndim + 1 or target.ndim < 1:
            raise ValueError(
                f"float input is taken as logits of shape (N, K, *) for a target of shape (N, *), "
                f"got logits {tuple(logits.shape)} and target {tuple(target.shape)}"
            )
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} channels in dim 1, expected num_classes={self.num_classes} "
                f"(logits shape {tuple(logits.shape)})"
            )
        if logits.shape[:1] + logits.shape[2:] != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}: "
                "expected logits (N, K, *) for target (N, *)"
            )
        return logits.detach().argmax(dim=1)

    def update(self, pred_or_logits: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred_or_logits: integer class ids of the same shape as ``target`` (e.g.
                ``(N, H, W)``), or float logits ``(N, K, H, W)`` (argmax over dim 1).
            target: integer labels ``(N, H, W)`` (any shape ``(N, *)``).
        """
        pred = self._labels(pred_or_logits, target)
        conf = confusion_matrix(pred, target, self.num_classes, self.ignore_index, self.validate)
        if self._matrix.device != conf.device:
            self._matrix = self._matrix.to(conf.device)
        self._matrix += conf

    def reset(self) -> None:
        """Zero the counts (the matrix stays on its current device)."""
        self._matrix.zero_()

    @property
    def matrix(self) -> Tensor:
        """A copy of the accumulated ``(K, K)`` int64 matrix (rows = target)."""
        return self._matrix.clone()

    @property
    def device(self) -> torch.device:
        """The device the counts currently live on."""
        return self._matrix.device

    def compute(self) -> dict[str, Tensor]:
        """Metrics of everything accumulated since construction or :meth:`reset`.

        Returns:
            A dict of 0-dim ``"pixel_accuracy"`` and ``"mean_iou"``, ``"iou_per_class"`` of
            shape ``(K,)`` and an int64 copy ``"confusion_matrix"`` ``(K, K)``; NaN where nothing
            was counted.
        """
        conf = self.matrix
        return {
            "pixel_accuracy": pixel_accuracy(conf),
            "mean_iou": mean_iou(conf),
            "iou_per_class": iou_per_class(conf),
            "confusion_matrix": conf,
        }


def _check_label_map(labels: Tensor, name: str) -> Tensor:
    """``labels`` as an integer ``(N, H, W)`` tensor, or a clear error."""
    labels = _as_labels(labels, name)
    if labels.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {tuple(labels.shape)}")
    return labels


def _dilate(region: Tensor, radius: int) -> Tensor:
    """``(N, H, W)`` bool: pixels within ``radius`` (max-norm, i.e. a ``2r+1`` square) of ``region``."""
    if radius == 0:
        return region
    grown = F.max_pool2d(region[:, None].to(torch.float32), 2 * radius + 1, stride=1, padding=radius)
    return grown[:, 0] > 0


def _check_width(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def label_edges(labels: Tensor) -> Tensor:
    """Edge pixels of a label map: those with a 4-neighbour of another label.

    Both sides of every transition are edge pixels; the image border is not an edge.

    Args:
        labels: ``(N, H, W)`` integer (or bool) labels.

    Returns:
        ``(N, H, W)`` bool.
    """
    labels = _check_label_map(labels, "labels")
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    vertical = labels[:, 1:, :] != labels[:, :-1, :]
    horizontal = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    return edge


def boundary_band(target: Tensor, width: int, ignore_index: int | None = 255) -> Tensor:
    """The trimap band: labelled pixels within ``width`` pixels of a pixel with another label.

    Distance is the max-norm (a ``(2 * width + 1)``-pixel square around each pixel), and an
    ignored pixel counts as another label, so a band of ignore labels along every edge (as
    in PASCAL VOC) is surrounded by the band. Restrict a confusion matrix to the band by
    setting the other pixels to ``ignore_index``, e.g.
    ``torch.where(boundary_band(t, 2), t, 255)``, to get the band mIoU DeepLab reports.

    Args:
        target: ``(N, H, W)`` integer labels.
        width: ``w >= 1``.
        ignore_index: label of unlabelled pixels (never in the band); None if there is none.

    Returns:
        ``(N, H, W)`` bool.
    """
    target = _check_label_map(target, "target")
    _check_width(width, "width", 1)
    _check_ignore_index(ignore_index)
    as_float = target[:, None].to(torch.float64)  # float64 holds every int32 label exactly
    high = F.max_pool2d(as_float, 2 * width + 1, stride=1, padding=width)
    low = -F.max_pool2d(-as_float, 2 * width + 1, stride=1, padding=width)
    band = (high != low)[:, 0]
    return band if ignore_index is None else band & (target != ignore_index)


class BoundaryFScore:
    """Per-class boundary F-score, accumulated over a data set.

    For class ``c``, the predicted boundary is :func:`label_edges` of ``pred == c`` and the
    true boundary that of ``target == c``. A predicted boundary pixel is *matched* when a
    true one lies within ``tolerance`` pixels (max-norm), and vice versa. Over the whole
    data set, precision = matched predicted / predicted and recall = matched true / true
    boundary pixels; ``F = 2PR / (P + R)``. Pixels whose target is ``ignore_index`` belong
    to neither boundary (use targets without an ignore band where possible, e.g.
    ``ShapesDataset(ignore_boundary=False)``).

    ``compute()["mean_f"]`` averages over the classes that have true boundary pixels. For a
    class-agnostic score (object against background) pass ``(pred != 0)`` and
    ``(target != 0)`` with ``num_classes=2`` and read class 1.

    Args:
        num_classes: ``K``.
        tolerance: distance in pixels within which boundary pixels match (0 = exact).
        ignore_index: target label to leave out; None for none.
    """

    def __init__(self, num_classes: int, tolerance: int = 1, ignore_index: int | None = 255) -> None:
        _check_num_classes(num_classes)
        _check_width(tolerance, "tolerance", 0)
        _check_ignore_index(ignore_index)
        self.num_classes, self.tolerance, self.ignore_index = num_classes, tolerance, ignore_index
        # Per class: matched predicted, predicted, matched true, true boundary pixels.
        self._counts = torch.zeros(num_classes, 4, dtype=torch.int64)

    def update(self, pred_or_logits: Tensor, target: Tensor) -> None:
        """Add a batch: class ids ``(N, H, W)`` or logits ``(N, K, H, W)``, and target ``(N, H, W)``."""
        if isinstance(pred_or_logits, Tensor) and pred_or_logits.is_floating_point():
            if pred_or_logits.ndim != 4 or pred_or_logits.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits must have shape (N, {self.num_classes}, H, W), got {tuple(pred_or_logits.shape)}"
                )
            pred_or_logits = pred_or_logits.detach().argmax(1)
        pred, target = _check_label_map(pred_or_logits, "pred"), _check_label_map(target, "target")
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
        keep = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        counts = []
        for c in range(self.num_classes):
            pred_edge = label_edges(pred == c) & keep
            true_edge = label_edges(target == c) & keep
            counts.append(
                torch.stack(
                    [
                        (pred_edge & _dilate(true_edge, self.tolerance)).sum(),
                        pred_edge.sum(),
                        (true_edge & _dilate(pred_edge, self.tolerance)).sum(),
                        true_edge.sum(),
                    ]
                )
            )
        self._counts += torch.stack(counts).cpu()

    def reset(self) -> None:
        """Zero the counts."""
        self._counts.zero_()

    def compute(self) -> dict[str, Tensor]:
        """``"precision"``, ``"recall"``, ``"f_per_class"`` (each ``(K,)``, NaN where undefined) and ``"mean_f"``.

        A class with true boundary pixels but no predicted ones has recall 0 and F = 0.
        """
        counts = self._counts.to(torch.float64)
        precision = counts[:, 0] / counts[:, 1]
        recall = counts[:, 2] / counts[:, 3]
        f = 2 * precision * recall / (precision + recall)
        has_truth = counts[:, 3] > 0
        f = torch.where(has_truth & ~(counts[:, 1] > 0), torch.zeros_like(f), f)  # nothing predicted: F = 0
        f = torch.where(has_truth & (precision + recall == 0), torch.zeros_like(f), f)
        f = torch.where(has_truth, f, torch.full_like(f, float("nan")))
        return {"precision": precision, "recall": recall, "f_per_class": f, "mean_f": f.nanmean()}
