"""Argument checks shared by segutils' models and functions: one clear error message for each bad input."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_images", "check_positive_int"]


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int >= minimum`` (``bool`` is refused), else raise a clear error.

    Raises:
        TypeError: ``value`` is not an ``int``.
        ValueError: ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_images(x: object, in_channels: int | None, who: str) -> None:
    """Raise a clear error unless ``x`` is a non-empty float batch of shape ``(N, in_channels, H, W)``.

    Args:
        x: the input to check.
        in_channels: the number of channels ``C`` required; ``None`` accepts any.
        who: the name the message gives the caller (e.g. the model's class name).

    Raises:
        TypeError: ``x`` is not a tensor, or not floating point.
        ValueError: ``x`` is not 4-D, has another number of channels, or has an empty batch or image.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{who} expects a 4-D input (N, C, H, W), got a {x.ndim}-D tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a floating-point input, got dtype {x.dtype}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"{who} expects {in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
    if x.shape[0] == 0:
        raise ValueError(f"{who} got an empty batch (N=0), input shape {tuple(x.shape)}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{who} got an empty image (H or W is 0), input shape {tuple(x.shape)}")
