"""Tests of segutils.metrics against torchmetrics, PyTorch ops and hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from segutils.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_dice,
    mean_iou,
    pixel_accuracy,
)

IGNORE = 255


def random_batch(
    shape: tuple[int, ...], num_classes: int, ignore_frac: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions that agree with the target on ~half the pixels, plus ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    pred = torch.where(torch.rand(shape, generator=g) < 0.5, target, torch.randint(0, num_classes, shape, generator=g))
    target[torch.rand(shape, generator=g) < ignore_frac] = IGNORE
    return pred, target


def reference_confusion(pred: torch.Tensor, target: torch.Tensor, k: int, ignore_index: int | None) -> torch.Tensor:
    """One boolean comparison per cell: slow, but independent of bincount."""
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    return torch.tensor(
        [[int(((target == t) & (pred == p) & keep).sum()) for p in range(k)] for t in range(k)], dtype=torch.int64
    )


# --- agreement with torchmetrics -------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "k", "seed"), [((4, 32, 48), 21, 0), ((2, 17, 9), 5, 1), ((40, 30), 3, 2), ((3, 8, 8), 2, 3)]
)
def test_matches_torchmetrics(shape: tuple[int, ...], k: int, seed: int) -> None:
    pred, target = random_batch(shape, k, seed=seed)
    conf = confusion_matrix(pred, target, k, ignore_index=IGNORE)

    tm_conf = MulticlassConfusionMatrix(num_classes=k, ignore_index=IGNORE)(pred, target)
    assert conf.dtype == torch.int64 and conf.shape == (k, k)
    assert torch.equal(conf, tm_conf.to(torch.int64))

    tm_miou = MulticlassJaccardIndex(num_classes=k, average="macro", ignore_index=IGNORE)(pred, target)
    torch.testing.assert_close(mean_iou(conf), tm_miou)
    tm_iou = MulticlassJaccardIndex(num_classes=k, average="none", ignore_index=IGNORE)(pred, target)
    torch.testing.assert_close(iou_per_class(conf), tm_iou)
    tm_dice = MulticlassF1Score(num_classes=k, average="none", ignore_index=IGNORE)(pred, target)
    torch.testing.assert_close(dice_per_class(conf), tm_dice)


def test_absent_classes_match_torchmetrics_macro() -> None:
    # Classes 3 and 4 never occur in target nor prediction: torchmetrics' macro average
    # drops them, and so does the nanmean over our NaNs.
    pred, target = random_batch((2, 16, 16), 3, seed=4)
    conf = confusion_matrix(pred, target, 5)
    tm = MulticlassJaccardIndex(num_classes=5, average="macro", ignore_index=IGNORE)(pred, target)
    torch.testing.assert_close(mean_iou(conf), tm)
    assert torch.isnan(iou_per_class(conf)[3:]).all()


def test_matches_per_cell_reference_for_dtypes_and_ignore_settings() -> None:
    pred, target = random_batch((3, 10, 11), 4, seed=5)
    expected = reference_confusion(pred, target, 4, IGNORE)
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        assert torch.equal(confusion_matrix(pred.to(dtype), target.to(dtype), 4), expected), dtype

    valid_pred, valid_target = random_batch((3, 10, 11), 4, ignore_frac=0.0, seed=6)
    assert torch.equal(
        confusion_matrix(valid_pred, valid_target, 4, ignore_index=None),
        reference_confusion(valid_pred, valid_target, 4, None),
    )
    # An ignore label inside [0, K) drops that class's target pixels (its row is zero).
    conf = confusion_matrix(valid_pred, valid_target, 4, ignore_index=2)
    assert torch.equal(conf, reference_confusion(valid_pred, valid_target, 4, 2))
    assert conf[2].sum() == 0 and conf[:, 2].sum() > 0


def test_negative_and_huge_ignore_index() -> None:
    pred, target = random_batch((2, 9, 9), 3, seed=7)
    for ignore in (-1, -100, 2**40):  # 2**40 forces the int64 index path
        relabelled = torch.where(target == IGNORE, ignore, target)
        assert torch.equal(
            confusion_matrix(pred, relabelled, 3, ignore_index=ignore), reference_confusion(pred, target, 3, IGNORE)
        )
    # A uint8 target cannot hold -1, so its 255s are labels, not ignored.
    with pytest.raises(ValueError, match="target contains label 255"):
        confusion_matrix(pred.to(torch.uint8), target.to(torch.uint8), 3, ignore_index=-1)


def test_bool_labels_are_binary_classes() -> None:
    pred = torch.tensor([[True, False], [True, True]])
    target = torch.tensor([[True, True], [False, True]])
    # target 0 -> pred 1 once; target 1 -> pred 0 once, pred 1 twice
    assert torch.equal(confusion_matrix(pred, target, 2), torch.tensor([[0, 1], [1, 2]]))


def test_pixel_accuracy_matches_direct_count() -> None:
    pred, target = random_batch((2, 20, 20), 6, seed=8)
    keep = target != IGNORE
    expected = (pred[keep] == target[keep]).float().mean()
    torch.testing.assert_close(pixel_accuracy(confusion_matrix(pred, target, 6)), expected)


def test_inputs_are_not_modified() -> None:
    for dtype in (torch.int32, torch.int64):  # int32 is the index dtype: no conversion copy
        pred, target = (x.to(dtype) for x in random_batch((2, 6, 6), 3, seed=15))
        pred_before, target_before = pred.clone(), target.clone()
        confusion_matrix(pred, target, 3)
        assert torch.equal(pred, pred_before) and torch.equal(target, target_before)


def test_non_contiguous_inputs() -> None:
    pred, target = random_batch((2, 12, 7), 4, seed=9)
    pt, tt = pred.transpose(1, 2), target.transpose(1, 2)
    assert not pt.is_contiguous()
    assert torch.equal(confusion_matrix(pt, tt, 4), confusion_matrix(pt.contiguous(), tt.contiguous(), 4))


# --- hand-worked cases -----------------------------------------------------------------


def test_hand_worked_2x3() -> None:
    # target          pred        pixels (target, pred): (0,0) (1,1) (2,1) (2,2) ignored (0,0)
    # [[0, 1,   2],   [[0, 1, 1],
    #  [2, 255, 0]]    [2, 2, 0]]
    # matrix rows = target:  t=0: [2, 0, 0]   t=1: [0, 1, 0]   t=2: [0, 1, 1]
    # accuracy = (2 + 1 + 1) / 5 = 0.8
    # IoU_c = TP / (row + col - TP): c0 = 2/(2+2-2) = 1; c1 = 1/(1+2-1) = 0.5; c2 = 1/(2+1-1) = 0.5
    # mean IoU = 2/3; Dice_c = 2TP / (row + col): 1, 2/3, 2/3
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
    target = torch.tensor([[0, 1, 2], [2, 255, 0]])
    conf = confusion_matrix(pred, target, 3)
    assert torch.equal(conf, torch.tensor([[2, 0, 0], [0, 1, 0], [0, 1, 1]]))
    assert pixel_accuracy(conf).item() == pytest.approx(0.8)
    assert iou_per_class(conf).tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert mean_iou(conf).item() == pytest.approx(2 / 3)
    assert dice_per_class(conf).tolist() == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert mean_dice(conf).item() == pytest.approx(7 / 9)


def test_absent_class_is_nan_and_excluded_from_mean() -> None:
    # Class 2 never appears (IoU NaN); class 1 is predicted once but never in the target (IoU 0).
    pred = torch.tensor([0, 1, 3, 3])
    target = torch.tensor([0, 0, 3, 0])
    conf = confusion_matrix(pred, target, 4)
    # rows: t=0: p0 1, p1 1, p3 1;  t=3: p3 1
    assert torch.equal(conf, torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]))
    iou = iou_per_class(conf)
    # c0: 1/(3+1-1) = 1/3;  c1: 0/(0+1-0) = 0;  c2: 0/0 = NaN;  c3: 1/(1+2-1) = 1/2
    assert iou[0].item() == pytest.approx(1 / 3) and iou[1].item() == 0.0 and iou[3].item() == pytest.approx(0.5)
    assert math.isnan(iou[2].item())
    assert mean_iou(conf).item() == pytest.approx((1 / 3 + 0 + 1 / 2) / 3)


def test_all_ignored_and_empty_inputs_give_zero_matrix() -> None:
    target = torch.full((2, 4, 4), IGNORE)
    pred = torch.zeros(2, 4, 4, dtype=torch.int64)
    for p, t in ((pred, target), (pred[:0], target[:0])):
        conf = confusion_matrix(p, t, 3)
        assert torch.equal(conf, torch.zeros(3, 3, dtype=torch.int64))
        assert math.isnan(pixel_accuracy(conf).item()) and math.isnan(mean_iou(conf).item())
        assert torch.isnan(iou_per_class(conf)).all()


def test_pred_at_ignored_pixels_is_not_counted_nor_checked() -> None:
    target = torch.tensor([0, 1, IGNORE, IGNORE])
    pred = torch.tensor([0, 1, -7, 999])
    assert torch.equal(confusion_matrix(pred, target, 2), torch.eye(2, dtype=torch.int64))


# --- additivity and streaming ----------------------------------------------------------


def test_batch_equals_sum_of_per_image_matrices() -> None:
    pred, target = random_batch((5, 13, 11), 7, seed=10)
    per_image = sum(confusion_matrix(pred[i], target[i], 7) for i in range(5))
    assert torch.equal(confusion_matrix(pred, target, 7), per_image)


def test_streaming_equals_one_shot() -> None:
    pred, target = random_batch((6, 16, 16), 5, seed=11)
    metric = ConfusionMatrix(5)
    for i in range(0, 6, 2):
        metric.update(pred[i : i + 2], target[i : i + 2])
    scores = metric.compute()
    conf = confusion_matrix(pred, target, 5)
    assert set(scores) == {"pixel_accuracy", "mean_iou", "iou_per_class", "confusion_matrix"}
    assert torch.equal(scores["confusion_matrix"], conf)
    torch.testing.assert_close(scores["mean_iou"], mean_iou(conf))
    torch.testing.assert_close(scores["pixel_accuracy"], pixel_accuracy(conf))
    torch.testing.assert_close(scores["iou_per_class"], iou_per_class(conf))
    tm = MulticlassJaccardIndex(num_classes=5, average="macro", ignore_index=IGNORE)
    for i in range(0, 6, 2):
        tm.update(pred[i : i + 2], target[i : i + 2])
    torch.testing.assert_close(scores["mean_iou"], tm.compute())


def test_logits_path_equals_argmax_path() -> None:
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 4, 10, 12, generator=g, requires_grad=True)
    _, target = random_batch((3, 10, 12), 4, seed=12)
    from_logits, from_ids = ConfusionMatrix(4), ConfusionMatrix(4)
    from_logits.update(logits, target)  # grad-requiring logits outside no_grad
    with torch.no_grad():
        from_logits.update(logits * 2, target)
    from_ids.update(logits.argmax(dim=1), target)
    from_ids.update(logits.argmax(dim=1), target)
    assert torch.equal(from_logits.matrix, from_ids.matrix)
    assert from_logits.matrix.sum() == 2 * (target != IGNORE).sum()


def test_reset_matrix_copy_and_lazy_device_move() -> None:
    pred, target = random_batch((2, 8, 8), 3, seed=13)
    metric = ConfusionMatrix(3)
    assert metric.device.type == "cpu"
    metric.update(pred, target)
    assert torch.equal(metric.matrix, confusion_matrix(pred, target, 3))
    moved = ConfusionMatrix(3)
    moved.update(pred.to("meta"), target.to("meta"))  # the counts follow the inputs
    assert moved.device.type == "meta"
    metric.matrix.fill_(-1)  # .matrix is a copy
    assert metric.matrix.min() >= 0
    metric.reset()
    assert torch.equal(metric.matrix, torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(metric.compute()["mean_iou"].item())


# --- bad inputs ------------------------------------------------------------------------


ZEROS = torch.zeros(2, 3, dtype=torch.long)


@pytest.mark.parametrize(
    ("pred", "target", "k", "match"),
    [
        (ZEROS.float(), ZEROS, 3, r"pred: expected integer class ids, got float32.*argmax"),
        (ZEROS, ZEROS.double(), 3, r"target: expected integer .* got float64"),
        (ZEROS, ZEROS.T, 3, r"same shape.*\(2, 3\).*\(3, 2\)"),
        (ZEROS[0], torch.tensor([0, 5, 255]), 3, r"target contains label 5, outside \[0, 3\)"),
        (ZEROS[0], torch.tensor([0, -2, 1]), 3, r"target contains label -2"),
        (ZEROS[0, :2], torch.tensor([0, 2**40]), 3, r"target contains label 1099511627776"),
        (torch.tensor([0, 3, 1]), torch.tensor([0, 1, 1]), 3, r"pred contains class id 3, outside \[0, 3\), at 1 pix"),
        (torch.tensor([0, -1, 1]), torch.tensor([0, 1, 255]), 3, r"pred contains class id -1"),
        (ZEROS, ZEROS, 0, r"num_classes must be >= 1, got 0"),
    ],
)
def test_confusion_matrix_rejects_bad_input(pred: torch.Tensor, target: torch.Tensor, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, k)


def test_confusion_matrix_rejects_bad_types_and_devices() -> None:
    ids = torch.zeros(3, dtype=torch.long)
    with pytest.raises(TypeError, match="num_classes must be an int, got float"):
        confusion_matrix(ids, ids, 3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pred must be a torch.Tensor, got list"):
        confusion_matrix([0, 1, 2], ids, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ignore_index must be an int or None"):
        confusion_matrix(ids, ids, 3, ignore_index=255.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same device, got meta and cpu"):
        confusion_matrix(ids.to("meta"), ids, 3)


@pytest.mark.parametrize(
    ("conf", "match"),
    [
        (torch.zeros(3, 4), r"square \(K, K\) matrix, got shape \(3, 4\)"),
        (torch.zeros(2, 3, 3), r"square \(K, K\) matrix, got shape \(2, 3, 3\)"),
        (torch.zeros(0, 0), "at least one class"),
        (torch.zeros(2, 2, dtype=torch.bool), "counts"),
    ],
)
def test_metrics_reject_bad_conf(conf: torch.Tensor, match: str) -> None:
    for fn in (pixel_accuracy, iou_per_class, mean_iou, dice_per_class, mean_dice):
        with pytest.raises(ValueError, match=match):
            fn(conf)


def test_accumulator_rejects_bad_logits_and_args() -> None:
    metric = ConfusionMatrix(4)
    target = torch.zeros(2, 5, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits have 3 channels in dim 1, expected num_classes=4"):
        metric.update(torch.randn(2, 3, 5, 5), target)
    with pytest.raises(ValueError, match=r"logits of shape \(N, K, \*\).*\(2, 4, 5\)"):
        metric.update(torch.randn(2, 4, 5), target)
    with pytest.raises(ValueError, match=r"do not match target"):
        metric.update(torch.randn(2, 4, 5, 6), target)
    with pytest.raises(ValueError, match="target: expected integer class ids, got float32"):
        metric.update(torch.zeros(2, 5, 5, dtype=torch.long), target.float())
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ConfusionMatrix(0)
    assert metric.matrix.sum() == 0  # failed updates leave no trace


# --- device agnosticism ----------------------------------------------------------------


def test_meta_device() -> None:
    pred = torch.empty(2, 64, 64, dtype=torch.int64, device="meta")
    target = torch.empty(2, 64, 64, dtype=torch.uint8, device="meta")
    for validate in (False, True):  # True skips the value check: meta tensors have no values
        conf = confusion_matrix(pred, target, 21, validate=validate)
        assert conf.device.type == "meta" and conf.shape == (21, 21) and conf.dtype == torch.int64
    assert mean_iou(conf).device.type == "meta" and iou_per_class(conf).shape == (21,)
    metric = ConfusionMatrix(21, device="meta")
    metric.update(torch.empty(2, 21, 64, 64, device="meta"), target)
    assert {v.device.type for v in metric.compute().values()} == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    pred, target = random_batch((4, 64, 64), 21, seed=14)
    for validate in (True, False):
        conf = confusion_matrix(pred.cuda(), target.cuda(), 21, validate=validate)
        assert conf.device.type == "cuda"
        assert torch.equal(conf.cpu(), confusion_matrix(pred, target, 21))
    metric = ConfusionMatrix(21)  # starts on the CPU, follows the inputs
    logits = torch.randn(4, 21, 64, 64, device="cuda")
    metric.update(logits, target.cuda())
    assert metric.device.type == "cuda"
    assert torch.equal(metric.matrix.cpu(), confusion_matrix(logits.argmax(1).cpu(), target, 21))
    with pytest.raises(ValueError, match="target contains label 30"):
        confusion_matrix(pred.cuda(), torch.full_like(target, 30).cuda(), 21)


# --- boundary metrics: trimap band and boundary F-score ------------------------------------

from segutils.metrics import BoundaryFScore, boundary_band, label_edges  # noqa: E402

BLOCK = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])[None]
SHIFTED = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])[None]


def test_label_edges_by_hand():
    corners = torch.zeros(1, 4, 4, dtype=torch.bool)
    corners[0, [0, 0, 3, 3], [0, 3, 0, 3]] = True
    assert torch.equal(label_edges(BLOCK), ~corners)  # both sides of every transition, not the corners
    assert not label_edges(torch.zeros(2, 3, 5, dtype=torch.long)).any()


def test_boundary_f_score_by_hand():
    # Shifting the 2x2 block right by one pixel: 10 predicted edge pixels, 12 true ones, 8 shared.
    exact = BoundaryFScore(2, tolerance=0)
    exact.update(SHIFTED, BLOCK)
    got = exact.compute()
    torch.testing.assert_close(got["precision"], torch.tensor([0.8, 0.8], dtype=torch.float64))
    torch.testing.assert_close(got["recall"], torch.tensor([8 / 12, 8 / 12], dtype=torch.float64))
    torch.testing.assert_close(got["mean_f"], torch.tensor(8 / 11, dtype=torch.float64))
    tolerant = BoundaryFScore(2, tolerance=1)
    tolerant.update(SHIFTED, BLOCK)
    torch.testing.assert_close(tolerant.compute()["mean_f"], torch.tensor(1.0, dtype=torch.float64))
    # Accumulated over a data set, not averaged per image: adding a perfect image changes the ratio.
    exact.update(BLOCK, BLOCK)
    torch.testing.assert_close(exact.compute()["mean_f"], torch.tensor(2 * 20 / (22 + 24), dtype=torch.float64))


def test_boundary_f_score_missing_class_ignore_and_logits():
    nothing = BoundaryFScore(3, tolerance=1)
    nothing.update(torch.zeros_like(BLOCK), BLOCK)
    f = nothing.compute()["f_per_class"]
    assert f[0] == 0 and f[1] == 0 and torch.isnan(f[2])  # class 2 has no true boundary: left out
    assert nothing.compute()["mean_f"] == 0
    # An ignored pixel is on neither boundary: ignoring the whole block leaves no class-1 edge at all.
    ignored = BoundaryFScore(2, tolerance=0)
    ignored.update(SHIFTED, torch.where(BLOCK == 1, 255, BLOCK))
    assert ignored.compute()["precision"][1] < 1
    logits = torch.nn.functional.one_hot(SHIFTED, 2).permute(0, 3, 1, 2).float()
    from_logits = BoundaryFScore(2, tolerance=0)
    from_logits.update(logits, BLOCK)
    torch.testing.assert_close(from_logits.compute()["mean_f"], torch.tensor(8 / 11, dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        from_logits.update(SHIFTED[:, :3], BLOCK)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        BoundaryFScore(2, tolerance=-1)


def _brute_band(target: torch.Tensor, width: int, ignore: int) -> torch.Tensor:
    out = torch.zeros_like(target, dtype=torch.bool)
    n, h, w = target.shape
    for k in range(n):
        for i in range(h):
            for j in range(w):
                window = target[k, max(i - width, 0) : i + width + 1, max(j - width, 0) : j + width + 1]
                out[k, i, j] = bool((window != target[k, i, j]).any()) and target[k, i, j] != ignore
    return out


def test_boundary_band_by_hand_and_against_a_loop():
    dot = torch.zeros(1, 5, 5, dtype=torch.long)
    dot[0, 2, 2] = 3
    expected = torch.zeros(1, 5, 5, dtype=torch.bool)
    expected[0, 1:4, 1:4] = True
    assert torch.equal(boundary_band(dot, 1), expected)
    dot[0, 0, 0] = 255  # an ignored pixel is never in the band, but makes its neighbours band pixels
    expected[0, 0, 1] = expected[0, 1, 0] = True
    assert torch.equal(boundary_band(dot, 1), expected)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 9, 11), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    for width in (1, 2, 3):
        assert torch.equal(boundary_band(target, width), _brute_band(target, width, 255))
    with pytest.raises(ValueError, match="width must be >= 1"):
        boundary_band(target, 0)
    with pytest.raises(ValueError, match=r"shape \(N, H, W\)"):
        boundary_band(target[0], 1)
