"""segutils.data: ShapesDataset, palettes, joint transforms, optional VOC."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from segutils.data import (
    CLASSES,
    IGNORE_COLOR,
    IGNORE_INDEX,
    PALETTE,
    ShapesDataset,
    colorize,
    train_transform,
    voc_segmentation,
)
from segutils.data.voc import VOC_VOID_COLOR, voc_palette, voc_target_to_mask


def digest(dataset: ShapesDataset, indices) -> str:
    h = hashlib.sha256()
    for i in indices:
        image, mask = dataset[i]
        h.update(image.numpy().tobytes())
        h.update(mask.numpy().tobytes())
    return h.hexdigest()


# --- ShapesDataset -----------------------------------------------------------


def test_sample_types_shapes_and_ranges():
    image, mask = ShapesDataset(size=3, image_size=(40, 56))[2]
    assert image.shape == (3, 40, 56) and image.dtype == torch.float32
    assert mask.shape == (40, 56) and mask.dtype == torch.int64
    assert 0.0 <= image.min() and image.max() <= 1.0
    ids = set(mask.unique().tolist())
    assert ids <= set(range(len(CLASSES))) | {IGNORE_INDEX}
    assert 0 in ids and ids & {1, 2, 3, 4}, "every scene has background and at least one object"


def test_every_class_appears_with_comparable_frequency():
    _, masks = ShapesDataset(size=200, image_size=32).batch(range(200))
    counts = torch.bincount(masks.flatten(), minlength=256)
    shapes = counts[1:5].double()
    assert (shapes > 0).all()
    assert shapes.max() / shapes.min() < 1.6, f"shape classes unbalanced: {shapes.tolist()}"
    assert 0 < counts[IGNORE_INDEX] < 0.1 * masks.numel(), "the ignore band is thin"


def test_sample_is_a_pure_function_of_seed_split_and_index():
    a = ShapesDataset("train", size=10, seed=3)
    b = ShapesDataset("train", size=10, seed=3)
    assert digest(a, [7, 2]) == digest(b, [7, 2])
    assert digest(a, [7]) == digest(ShapesDataset("train", size=100, seed=3), [7]), "size does not change samples"
    assert digest(a, [7]) != digest(ShapesDataset("val", size=10, seed=3), [7])
    assert digest(a, [7]) != digest(ShapesDataset("train", size=10, seed=4), [7])
    assert digest(a, [-1]) == digest(a, [9])


def test_same_samples_in_another_process_and_in_dataloader_workers():
    dataset = ShapesDataset("val", size=8, image_size=24, seed=5)
    code = (
        "import hashlib\n"
        "from segutils.data import ShapesDataset\n"
        "d = ShapesDataset('val', size=8, image_size=24, seed=5)\n"
        "h = hashlib.sha256()\n"
        "for i in [1, 6]:\n"
        "    x, y = d[i]; h.update(x.numpy().tobytes()); h.update(y.numpy().tobytes())\n"
        "print(h.hexdigest())\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == digest(dataset, [1, 6])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    images, masks = zip(*loader)
    direct_images, direct_masks = dataset.batch(range(8))
    assert torch.equal(torch.cat(images), direct_images) and torch.equal(torch.cat(masks), direct_masks)


def test_ignore_band_marks_only_object_edges():
    with_band = ShapesDataset(size=4, image_size=48, seed=2)
    without = ShapesDataset(size=4, image_size=48, seed=2, ignore_boundary=False)
    for i in range(4):
        image_a, mask_a = with_band[i]
        image_b, mask_b = without[i]
        assert torch.equal(image_a, image_b)
        assert not (mask_b == IGNORE_INDEX).any()
        kept = mask_a != IGNORE_INDEX
        assert torch.equal(mask_a[kept], mask_b[kept])
        # Every ignored pixel touches (8-neighbourhood) a pixel of another class in the majority mask.
        padded = torch.nn.functional.pad(mask_b[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        neighbours = padded.unfold(0, 3, 1).unfold(1, 3, 1).reshape(48, 48, 9)
        on_edge = (neighbours != mask_b[..., None]).any(-1)
        assert on_edge[~kept].all()


def test_outline_detail_adds_edge_detail_and_keeps_the_default_scenes():
    plain = ShapesDataset(size=6, image_size=48, seed=3)
    assert digest(ShapesDataset(size=6, image_size=48, seed=3, outline_detail=0), range(6)) == digest(plain, range(6))
    wavy = ShapesDataset(size=200, image_size=48, seed=3, outline_detail=1.5, ignore_boundary=False)
    straight = ShapesDataset(size=200, image_size=48, seed=3, ignore_boundary=False)

    def edge_per_object_pixel(dataset):
        masks = dataset.batch(range(len(dataset)))[1]
        objects = masks != 0
        edges = (objects[:, 1:] != objects[:, :-1]).sum() + (objects[:, :, 1:] != objects[:, :, :-1]).sum()
        return (edges / objects.sum()).item()

    # Wavy outlines are longer for the same areas: more object/background transitions per object pixel.
    assert edge_per_object_pixel(wavy) > 1.2 * edge_per_object_pixel(straight)
    with pytest.raises(ValueError, match="outline_detail"):
        ShapesDataset(outline_detail=-1)


def test_a_pixel_colour_says_nothing_about_its_class():
    # Each object draws one texture, so the mean over ~600 objects per class has a
    # standard error of about 0.29 / sqrt(600) ~ 0.012 per channel: 0.06 is ~4 sigma of a difference.
    images, masks = ShapesDataset(size=1000, image_size=16, seed=7).batch(range(1000))
    pixels = images.permute(0, 2, 3, 1)
    means = torch.stack([pixels[masks == c].mean(0) for c in range(len(CLASSES))])
    assert (means - means[0]).abs().max() < 0.06, f"class mean colours differ: {means}"
    stds = torch.stack([pixels[masks == c].std(0) for c in range(len(CLASSES))])
    assert (stds - stds[0]).abs().max() < 0.04, f"class colour spreads differ: {stds}"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset(image_size=4)
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="")
    with pytest.raises(ValueError, match="size"):
        ShapesDataset(size=-1)
    with pytest.raises(ValueError, match="max_objects"):
        ShapesDataset(max_objects=0)
    with pytest.raises(IndexError, match="out of range"):
        ShapesDataset(size=3)[3]


# --- palette ------------------------------------------------------------------


def test_colorize_maps_ids_to_palette_and_ignore_to_void_colour():
    mask = torch.tensor([[0, 1, 2], [3, 4, IGNORE_INDEX]])
    rgb = colorize(mask)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == torch.uint8
    assert rgb[0, 1].tolist() == PALETTE[1].tolist()
    assert rgb[1, 1].tolist() == PALETTE[4].tolist()
    assert rgb[1, 2].tolist() == list(IGNORE_COLOR)
    assert colorize(mask[None].expand(2, 2, 3)).shape == (2, 2, 3, 3)
    assert len(set(map(tuple, PALETTE.tolist()))) == len(CLASSES), "colours are distinct"


def test_colorize_rejects_unknown_ids_and_float_masks():
    with pytest.raises(ValueError, match="class id 7"):
        colorize(torch.tensor([[0, 7]]))
    with pytest.raises(TypeError, match="integer class ids"):
        colorize(torch.zeros(2, 2))


# --- joint transforms ---------------------------------------------------------


def test_flips_move_image_and_mask_together():
    torch.manual_seed(0)
    mask = torch.randint(0, 5, (17, 23))
    image = mask[None].repeat(3, 1, 1).float() / 10
    transform = train_transform(color_jitter=0)
    for _ in range(8):
        out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert torch.equal((out_image[0] * 10).round().long(), out_mask)


def test_resized_crop_never_interpolates_mask_values():
    torch.manual_seed(0)
    dataset = ShapesDataset(size=6, image_size=40, transform=train_transform(crop_size=(33, 29)))
    for i in range(6):
        image, mask = dataset[i]
        assert image.shape == (3, 33, 29) and mask.shape == (33, 29)
        assert mask.dtype == torch.int64 and type(mask) is torch.Tensor
        assert set(mask.unique().tolist()) <= set(range(5)) | {IGNORE_INDEX}


# --- VOC (optional real data, from disk only) -----------------------------------


def make_fake_voc(root, ids=("2007_000001", "2007_000002")):
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ids:
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        labels = np.zeros((20, 30), dtype=np.uint8)
        labels[5:10, 5:15] = 15  # person
        labels[4, 4:16] = 255  # void outline
        target = Image.fromarray(labels, mode="P")
        target.putpalette(voc_palette(256).flatten().tolist())
        target.save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")


def test_voc_reads_palette_masks_with_void_as_ignore(tmp_path):
    make_fake_voc(tmp_path)
    dataset = voc_segmentation(tmp_path, "train")
    assert len(dataset) == 2
    image, mask = dataset[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32 and image.max() <= 1
    assert mask.dtype == torch.int64 and mask[7, 7] == 15 and mask[4, 8] == IGNORE_INDEX and mask[0, 0] == 0


def test_voc_rgb_masks_map_back_through_the_colour_map():
    labels = np.array([[0, 15], [15, 1]])
    rgb = voc_palette()[labels]
    rgb[1, 1] = VOC_VOID_COLOR
    mask = voc_target_to_mask(Image.fromarray(rgb.astype(np.uint8), mode="RGB"))
    assert mask.tolist() == [[0, 15], [15, IGNORE_INDEX]]
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        voc_target_to_mask(Image.fromarray(rgb.astype(np.uint8), mode="RGB"))


def test_voc_palette_matches_the_devkit_colours():
    # From the VOC devkit's VOClabelcolormap: aeroplane, bicycle, person, tvmonitor.
    assert voc_palette()[[1, 2, 15, 20]].tolist() == [[128, 0, 0], [0, 128, 0], [192, 128, 128], [0, 64, 128]]


def test_missing_voc_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit.*never downloads"):
        voc_segmentation(tmp_path / "nowhere")
