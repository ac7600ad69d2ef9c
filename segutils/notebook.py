"""Measurement and display helpers shared by the book's chapters.

Each chapter used to carry its own copy of these; they live here so that the chapters show the idea and not
the plumbing:

- :func:`seconds`: median wall time of a call, with ``torch.utils.benchmark.Timer``;
- :func:`flops`: floating-point operations of a call, as ``FlopCounterMode`` counts them;
- :func:`module_flops`: the same, by submodule of a model;
- :func:`output_shapes`: the output shape of every submodule of a model, recorded by forward hooks;
- :func:`training_cost`: activation bytes saved for backward and FLOPs of one training step;
- :class:`PeakTensorMemory` and :func:`peak_forward_bytes`: peak bytes of tensors alive during a forward pass;
- :func:`connected_components`: 8-connected regions of boolean masks;
- :func:`png_base64`, :func:`show`, :func:`html_table`: pictures and tables for the pages;
- :func:`add_to_class`: a method written in a later cell than its class, so that a cell shows one idea.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "seconds",
    "flops",
    "module_flops",
    "output_shapes",
    "training_cost",
    "PeakTensorMemory",
    "peak_forward_bytes",
    "connected_components",
    "png_base64",
    "show",
    "html_table",
    "sample_photograph",
    "add_to_class",
]


def seconds(fn: Callable[[], Any], min_run_time: float = 0.2) -> float:
    """Median wall time of ``fn()`` in seconds, measured by ``torch.utils.benchmark.Timer``.

    ``blocked_autorange`` warms up, then runs ``fn`` in blocks for at least ``min_run_time`` seconds, on the
    number of threads PyTorch uses now (``torch.get_num_threads()``).
    """
    if not callable(fn):
        raise TypeError(f"seconds() needs a callable, got {type(fn).__name__}")
    if min_run_time <= 0:
        raise ValueError(f"min_run_time must be positive, got {min_run_time}")
    logger = logging.getLogger("torch.utils.cpp_extension")  # its import warns on machines without CUDA
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        logger.setLevel(level)

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of ``fn()`` as ``FlopCounterMode`` counts them (2 per multiply-add)."""
    if not callable(fn):
        raise TypeError(f"flops() needs a callable, got {type(fn).__name__}")
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def module_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs of ``model(x)`` by submodule, as ``FlopCounterMode`` counts them (2 per multiply-add).

    x: the model's input, e.g. (N, C, H, W); a ``meta`` tensor with a model on ``meta`` counts without
    computing. Keys are the names of ``model.named_modules()`` (``"stages.0"``, ``"stages.0.1"``...); a
    module's count includes its children's and every call of it; ``""`` holds the total. Submodules that
    do no counted work are left out.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"module_flops() needs an nn.Module, got {type(model).__name__}")
    with FlopCounterMode(display=False) as counter:
        model(x)
    prefix = type(model).__name__ + "."
    by_module = {
        name[len(prefix) :]: sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if name.startswith(prefix)
    }
    return by_module | {"": counter.get_total_flops()}


def output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Shape of every submodule's output without the batch axis, e.g. (C, H, W), on its last call in ``model(x)``.

    x: the model's input (N, ...); keys are the names of ``model.named_modules()``, the model itself left out.
    Recorded by forward hooks, which are removed again, also when ``model(x)`` raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"output_shapes() needs an nn.Module, got {type(model).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            shapes[name] = tuple(output.shape[1:])

        return hook

    hooks = [module.register_forward_hook(recorder(name)) for name, module in model.named_modules() if name]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def training_cost(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> tuple[int, int]:
    """(bytes of tensors saved for backward, FLOPs of forward + backward) of one cross-entropy step.

    images: (N, C, H, W); masks: (N, H, W) class ids. The model's parameters are not counted as saved
    (they exist anyway); each saved storage counts once. The gradients are cleared afterwards.
    """
    if images.ndim != 4 or masks.ndim != 3 or masks.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"training_cost needs images (N, C, H, W) and masks (N, H, W), got "
            f"{tuple(images.shape)} and {tuple(masks.shape)}"
        )
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = F.cross_entropy(model(images), masks)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values()), counter.get_total_flops()


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the ``with`` block and alive at the same time.

    Tensors that exist before the block (weights, the input) are not counted; buffers a kernel allocates and
    frees internally are not seen.
    """

    def __enter__(self) -> PeakTensorMemory:
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}  # storage address -> (weak reference, bytes)
        self.peak = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {ptr: (ref, n) for ptr, (ref, n) in self.live.items() if not ref.expired()}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                self.live.setdefault(storage.data_ptr(), (StorageWeakRef(storage), storage.nbytes()))
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def peak_forward_bytes(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """Peak bytes of the tensors alive at once while ``fn(x)`` runs without autograd."""
    with torch.no_grad(), PeakTensorMemory() as tracker:
        fn(x)
    return tracker.peak


def connected_components(region: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, H, W) int64: 0 outside the region, one id per 8-connected component.

    Ids are not consecutive (each component takes the largest flat index + 1 of its pixels). Computed by
    max-pool flood fill, which takes as many passes as the longest path inside a component.
    """
    if region.ndim != 3 or region.dtype != torch.bool:
        raise ValueError(
            f"connected_components needs an (N, H, W) bool tensor, got {tuple(region.shape)} {region.dtype}"
        )
    mask = region.double()  # float64 holds the ids exactly beyond 2**24 pixels
    ids = torch.arange(1, region.numel() + 1, dtype=torch.float64).view(region.shape) * mask
    while True:
        grown = F.max_pool2d(ids.unsqueeze(1), 3, stride=1, padding=1).squeeze(1) * mask
        if torch.equal(grown, ids):
            return ids.long()
        ids = grown


def sample_photograph(down: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """matplotlib's sample portrait of Grace Hopper (it ships with matplotlib: nothing is downloaded).

    Returns the full photograph ``(3, 600, 512)`` and a ``384 x 384`` square crop around the face (rows
    ``16:400``, columns ``64:448``) averaged down by ``down``, of shape ``(1, 3, 384 // down, 384 // down)``;
    values in ``[0, 1]``.
    """
    import matplotlib.cbook as cbook
    import matplotlib.pyplot as plt

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        full = torch.tensor(plt.imread(file)).permute(2, 0, 1).float() / 255
    return full, F.avg_pool2d(full[None, :, 16:400, 64:448], down)


def png_base64(fig, dpi: int = 80, **savefig_kwargs) -> str:
    """The matplotlib figure as a base64 PNG string (for ``<img>`` tags in widgets); closes the figure.

    Further keyword arguments go to ``fig.savefig`` (e.g. ``bbox_inches="tight"``).
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **savefig_kwargs)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def show(ax, image: torch.Tensor, title: str = "", interpolation: str = "nearest", **kwargs) -> None:
    """imshow of a (C, H, W) image (float in [0, 1], clamped, or uint8) or an (H, W) map with a cmap; no ticks."""
    if image.ndim not in (2, 3):
        raise ValueError(f"show needs a (C, H, W) or (H, W) tensor, got {tuple(image.shape)}")
    picture = image.permute(1, 2, 0) if image.ndim == 3 else image
    picture = picture.detach().cpu()
    ax.imshow(
        picture.clamp(0, 1).numpy() if picture.is_floating_point() else picture.numpy(),
        interpolation=interpolation,
        **kwargs,
    )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]):
    """An HTML table (IPython ``HTML``) with one header row; cells are escaped."""
    from IPython.display import HTML

    rows = [list(row) for row in rows]
    bad = [row for row in rows if len(row) != len(header)]
    if bad:
        raise ValueError(f"html_table: {len(header)} columns in the header, but a row has {len(bad[0])}: {bad[0]}")

    def cells(values, tag):
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values)

    return HTML(
        f"<table><tr>{cells(header, 'th')}</tr>" + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows) + "</table>"
    )


def add_to_class(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that makes the decorated function a method of ``cls``, under the function's own name.

    d2l.ai's device for writing one class across several notebook cells: the constructor in one cell, then
    ``@add_to_class(Net)`` above ``def forward(self, x): ...`` in the next, with prose between. Instances made
    before the method was added get it too. Returns the function unchanged.
    """
    if not isinstance(cls, type):
        raise TypeError(f"add_to_class expects a class, got {type(cls).__name__} {cls!r}")

    def attach(function: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(function) or not hasattr(function, "__name__"):
            raise TypeError(f"add_to_class({cls.__name__}) decorates a named function, got {function!r}")
        setattr(cls, function.__name__, function)
        return function

    return attach
