"""Drawing one synthetic scene: textured shapes on a textured background.

Every texture (the background's and each object's) is drawn from the SAME
distribution, so a pixel's colour, or a small patch of it, says nothing about its
class: only an object's outline, seen with enough context, does. Scenes are drawn
at ``SUPERSAMPLE`` times the resolution and averaged down, so edges are
anti-aliased, and a pixel whose sub-samples disagree on the class is a boundary
pixel.
"""

from __future__ import annotations

import math

import numpy as np

SUPERSAMPLE = 2
#: Object area as a fraction of the image area, drawn log-uniformly from this range.
AREA_FRACTION = (0.04, 0.2)
#: Texture period in pixels, drawn uniformly from this range.
TEXTURE_PERIOD = (4.0, 16.0)
NOISE_STD = 0.02
#: Period in pixels of the waves along outlines (``outline_detail`` > 0), drawn uniformly from this range.
OUTLINE_PERIOD = (4.0, 8.0)
#: Standard deviation of the second colour of a texture around the first.
TEXTURE_CONTRAST = 0.08


def _inside_disc(u: np.ndarray, v: np.ndarray, area: float) -> np.ndarray:
    return u**2 + v**2 <= area / math.pi


def _inside_square(u: np.ndarray, v: np.ndarray, area: float) -> np.ndarray:
    half_side = math.sqrt(area) / 2
    return np.maximum(np.abs(u), np.abs(v)) <= half_side


def _inside_triangle(u: np.ndarray, v: np.ndarray, area: float) -> np.ndarray:
    side = math.sqrt(4 * area / math.sqrt(3))
    inradius = side / (2 * math.sqrt(3))
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):  # equilateral triangle = intersection of three half-planes
        angle = math.pi / 2 + 2 * math.pi * k / 3
        inside &= u * math.cos(angle) + v * math.sin(angle) <= inradius
    return inside


def _inside_cross(u: np.ndarray, v: np.ndarray, area: float) -> np.ndarray:
    # Arms of half-length a and half-width a/3 cover 20 a^2 / 9 of area.
    arm = math.sqrt(9 * area / 20)
    width = arm / 3
    au, av = np.abs(u), np.abs(v)
    return ((au <= arm) & (av <= width)) | ((au <= width) & (av <= arm))


#: Shape tests indexed by class id - 1; every shape of a given ``area`` covers that many pixels.
SHAPES = (_inside_disc, _inside_square, _inside_triangle, _inside_cross)


def random_texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A random two-colour texture (stripes, checks or blotches) sampled at ``(yy, xx)``.

    Returns:
        float32 array ``(*yy.shape, 3)`` in ``[0, 1]``.
    """
    base = rng.uniform(0.0, 1.0, size=3)
    # A second colour near the first: the pattern stays subtle, so an object's edge
    # shows as a change of colour while its class still needs the outline.
    colors = np.stack([base, np.clip(base + rng.normal(0.0, TEXTURE_CONTRAST, size=3), 0.0, 1.0)])
    kind = rng.integers(3)
    period = rng.uniform(*TEXTURE_PERIOD)
    theta, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
    u = math.cos(theta) * xx + math.sin(theta) * yy
    if kind == 0:  # stripes
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + phase)
    elif kind == 1:  # checks
        v = -math.sin(theta) * xx + math.cos(theta) * yy
        t = (np.floor(u / period + phase) + np.floor(v / period)) % 2
    else:  # blotches: a few crossing waves
        t = np.zeros_like(xx)
        for _ in range(3):
            angle, offset = rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)
            t += np.sin(2 * math.pi * (math.cos(angle) * xx + math.sin(angle) * yy) / (2 * period) + offset)
        t = (t > 0).astype(xx.dtype)
    return (colors[0] + (colors[1] - colors[0]) * t[..., None]).astype(np.float32)


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_objects: int,
    num_shape_classes: int = len(SHAPES),
    outline_detail: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene of 1..``max_objects`` overlapping shapes.

    ``outline_detail > 0`` makes every outline wavy: the shape is drawn in coordinates
    displaced by up to ``outline_detail`` pixels along waves of period
    :data:`OUTLINE_PERIOD` pixels, so edges carry detail finer than a coarse stride while
    the overall shape (and so the class) stays recognisable. With 0 (the default) no extra
    random numbers are drawn, so the scenes are those of earlier versions.

    Returns:
        ``(image, labels)``: image float32 ``(height, width, 3)`` in ``[0, 1]``;
        labels int64 ``(height * SUPERSAMPLE, width * SUPERSAMPLE)`` at sub-pixel
        resolution (0 = background, ``c`` = ``SHAPES[c - 1]``).
    """
    s = SUPERSAMPLE
    yy, xx = np.meshgrid((np.arange(height * s) + 0.5) / s, (np.arange(width * s) + 0.5) / s, indexing="ij")
    image = random_texture(rng, yy, xx)
    labels = np.zeros(yy.shape, dtype=np.int64)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        class_id = int(rng.integers(1, num_shape_classes + 1))
        low, high = AREA_FRACTION
        area = math.exp(rng.uniform(math.log(low), math.log(high))) * height * width
        cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        angle = rng.uniform(0, 2 * math.pi)
        u = math.cos(angle) * (xx - cx) + math.sin(angle) * (yy - cy)
        v = -math.sin(angle) * (xx - cx) + math.cos(angle) * (yy - cy)
        if outline_detail > 0:
            period = rng.uniform(*OUTLINE_PERIOD)
            phase_u, phase_v = rng.uniform(0, 2 * math.pi, size=2)
            u, v = (
                u + outline_detail * np.sin(2 * math.pi * v / period + phase_u),
                v + outline_detail * np.sin(2 * math.pi * u / period + phase_v),
            )
        inside = SHAPES[class_id - 1](u, v, area)
        texture = random_texture(rng, yy, xx)
        image[inside] = texture[inside]
        labels[inside] = class_id
    image = image.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    image += rng.normal(0.0, NOISE_STD, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0), labels


def downsample_labels(labels: np.ndarray, factor: int, ignore_index: int | None) -> np.ndarray:
    """Pixel labels from sub-pixel labels ``(H * factor, W * factor)`` -> ``(H, W)``.

    A pixel whose sub-samples all agree takes their label. A mixed (boundary) pixel
    gets ``ignore_index``, or, when ``ignore_index`` is None, its most common label.
    """
    height, width = labels.shape[0] // factor, labels.shape[1] // factor
    blocks = labels.reshape(height, factor, width, factor).transpose(0, 2, 1, 3).reshape(height, width, -1)
    first = blocks[..., 0]
    agree = (blocks == first[..., None]).all(axis=-1)
    if ignore_index is not None:
        return np.where(agree, first, ignore_index)
    counts = np.stack([(blocks == c).sum(-1) for c in range(int(labels.max()) + 1)], axis=-1)
    return counts.argmax(-1)
