"""Trained models for the book, trained once and cached on disk.

Several chapters compare the same trained models; training each once per build keeps
the book's execution short. A cached model is reused only when everything that
shaped it is unchanged: the model name and arguments, the training configuration,
and the source code of segutils' data, models and training loop (so a code change
retrains). The cache lives in ``$SEGUTILS_CACHE`` (default ``~/.cache/segutils``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from segutils.data import ShapesDataset
from segutils.models import build_model
from segutils.train import fit, load_checkpoint, save_checkpoint

CACHE_ENV_VAR = "SEGUTILS_CACHE"
_SOURCES = ("data", "models", "train.py", "metrics.py")
#: CPU threads every training run uses, whatever the machine has. Float sums are split between threads, so
#: weights trained with another thread count differ in the last bits, and after many steps visibly. One thread:
#: on a busy machine (a test worker beside the build) a two-thread run waits for its second thread and took
#: 12-30 times as long; on two idle cores, one model per core (book/_ext/warm_models.py) trains 1.4-1.7x as
#: many of the small study models per minute as one model on two threads, and about as many 48x48 ones.
TRAINING_THREADS = 1
#: Train in channels-last (NHWC) memory (``fit(channels_last=...)``): the CPU convolutions of the book's models run
#: 1.1-1.6x as fast so (``benchmarks/bench_channels_last.py``), dilated ones most. Part of the cache key: the
#: weights differ from contiguous training in the last bits, and after many steps visibly.
TRAINING_CHANNELS_LAST = True


@dataclass(frozen=True)
class TrainingConfig:
    """How the book's reference models are trained on :class:`~segutils.data.ShapesDataset`."""

    image_size: int = 48
    train_size: int = 1600
    val_size: int = 256
    batch_size: int = 16
    epochs: int = 4
    lr: float = 3e-3
    seed: int = 0
    #: ``ShapesDataset(outline_detail=...)``: amplitude of waves along the outlines (0: none).
    outline_detail: float = 0.0
    #: ``fit(patience=...)``: train to a plateau of the validation loss, ``epochs`` being the cap (None: fixed epochs).
    patience: int | None = None
    #: Added to the red channel of every object pixel by :func:`tint_objects`, a cue that a few pixels show, so
    #: that shallow features can tell object from background (0 for none, the scenes as rendered).
    object_tint: float = 0.0


def cache_dir() -> Path:
    """Folder of cached checkpoints: ``$SEGUTILS_CACHE`` or ``~/.cache/segutils``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "segutils").expanduser()


def _code_fingerprint(source: str) -> str:
    """The code of a module without its docstrings and comments: what training depends on."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):  # drop docstrings, and attribute docstrings (bare strings) too
            node.body = [
                stmt
                for stmt in body
                if not (
                    isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                )
            ] or [ast.Pass()]
    return ast.dump(tree)


def _source_digest() -> str:
    """Digest of the code the cached models depend on; editing a docstring or comment keeps the cache."""
    package = Path(__file__).parent
    sources = []
    for entry in _SOURCES:
        path = package / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            sources.append((file.relative_to(package).as_posix(), file.read_text()))
    return _digest_of(tuple(sources))


@functools.lru_cache(maxsize=8)
def _digest_of(sources: tuple[tuple[str, str], ...]) -> str:
    """The digest of ``(name, text)`` source files, parsed once per process for the same texts (reading them is
    quick; parsing them for every model a warm ``warm_models`` looks up took most of its time)."""
    digest = hashlib.sha256()
    for name, text in sources:
        digest.update(name.encode())
        digest.update(_code_fingerprint(text).encode())
    return digest.hexdigest()


def tint_objects(images: Tensor, objects: Tensor, amount: float) -> Tensor:
    """``images`` ``(N, 3, H, W)`` in ``[0, 1]`` with ``amount`` added to the red channel where ``objects``
    ``(N, H, W)`` (bool) is true, clipped to ``[0, 1]``; a new tensor."""
    if images.dim() != 4 or images.shape[1] != 3 or objects.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"expected images (N, 3, H, W) and objects (N, H, W), got {tuple(images.shape)} and {tuple(objects.shape)}"
        )
    red = torch.zeros_like(images)
    red[:, 0] = amount * objects.to(images.dtype)
    return (images + red).clamp(0.0, 1.0)


@functools.lru_cache(maxsize=4)
def rendered(
    split: str, size: int, image_size: int, seed: int, outline_detail: float = 0.0, object_tint: float = 0.0
) -> tuple[Tensor, Tensor]:
    """All samples of a :class:`~segutils.data.ShapesDataset`, rendered once per process and kept in memory,
    the objects tinted by ``object_tint`` (:func:`tint_objects`; an object pixel is one whose majority label
    is an object).

    Several models trained in one process (``book/_ext/warm_models.py``) share one rendering
    instead of drawing every image again in every epoch.

    Returns:
        ``(images (N, 3, H, W), masks (N, H, W))``; do not modify them in place.
    """
    options = dict(size=size, image_size=image_size, seed=seed, outline_detail=outline_detail)
    images, masks = ShapesDataset(split, **options).batch(range(size))
    if object_tint:
        objects = ShapesDataset(split, ignore_boundary=False, **options).batch(range(size))[1] != 0
        images = tint_objects(images, objects, object_tint)
    return images, masks


def loaders(config: TrainingConfig) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of ShapesDataset as ``config`` describes (rendered in memory)."""
    look = (config.image_size, config.seed, config.outline_detail, config.object_tint)
    train = TensorDataset(*rendered("train", config.train_size, *look))
    val = TensorDataset(*rendered("val", config.val_size, *look))
    return DataLoader(train, batch_size=config.batch_size, shuffle=True), DataLoader(val, batch_size=64)


def checkpoint_path(
    name: str, config: TrainingConfig = TrainingConfig(), random_upsampling_init: bool = False, **model_kwargs: Any
) -> Path:
    """Where :func:`trained_model` keeps the model these arguments describe (the file exists once it is trained):
    in :func:`cache_dir`, named by a hash of the arguments, :data:`TRAINING_THREADS`,
    :data:`TRAINING_CHANNELS_LAST` and segutils' data, model and training code."""
    config_fields = asdict(config)
    if not config.object_tint:  # keyed only when set, so that the keys of untinted models stay as they were
        del config_fields["object_tint"]
    fields = {"name": name, "kwargs": model_kwargs, "config": config_fields, "source": _source_digest()}
    fields["threads"] = TRAINING_THREADS
    fields["channels_last"] = TRAINING_CHANNELS_LAST
    if random_upsampling_init:  # only when set, so that the keys of every other model stay as they were
        fields["random_upsampling_init"] = True
    key = json.dumps(fields, sort_keys=True)
    return cache_dir() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def trained_model(
    name: str,
    config: TrainingConfig = TrainingConfig(),
    device: torch.device | str | None = "cpu",
    progress: bool = True,
    random_upsampling_init: bool = False,
    **model_kwargs: Any,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """A model from :func:`segutils.models.build_model` trained with ``config``, from the cache when possible.

    Training runs on ``device`` (the CPU by default) with :data:`TRAINING_THREADS` threads, so that
    a configuration gives the same weights in every process (a notebook, a test worker) on the same
    kind of CPU and PyTorch build; the returned model is in eval mode on the CPU.

    Args:
        random_upsampling_init: give every ``nn.ConvTranspose2d`` PyTorch's default (random)
            initialisation before training, instead of the model's own (FCN's bilinear kernels
            in ``"fcn"``): the initialisation experiment of chapter 8. ``ValueError`` if the
            model has no transposed convolution.

    Returns:
        ``(model, history)`` where ``history`` is :func:`segutils.train.fit`'s.
    """
    path = checkpoint_path(name, config, random_upsampling_init, **model_kwargs)
    torch.manual_seed(config.seed)
    model = build_model(name, **model_kwargs)
    if random_upsampling_init:
        upsamplers = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
        if not upsamplers:
            raise ValueError(f"random_upsampling_init: {name!r} with {model_kwargs} has no ConvTranspose2d")
        for upsampler in upsamplers:
            upsampler.reset_parameters()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # One process trains a configuration while the others that want it (test workers, a notebook beside
        # the build) wait here and then read its checkpoint, instead of training it again beside it.
        with FileLock(path.with_suffix(".lock")):
            if not path.is_file():
                _train_into(path, model, name, config, device, progress)
    history = load_checkpoint(path, model)["extra"]["history"]
    return model.cpu().eval(), history


def ensure_trained(
    name: str, config: TrainingConfig = TrainingConfig(), random_upsampling_init: bool = False, **model_kwargs: Any
) -> tuple[Path, float]:
    """Train the model :func:`trained_model` returns for these arguments into the cache unless it is there.
    For worker processes that train side by side (``book/_ext/warm_models.py``): a path, unlike a model, costs
    nothing to send back.

    Returns:
        ``(checkpoint path, seconds this call took)``: the training time, or about nothing when cached.
    """
    start = time.perf_counter()
    trained_model(name, config, progress=False, random_upsampling_init=random_upsampling_init, **model_kwargs)
    return checkpoint_path(name, config, random_upsampling_init, **model_kwargs), time.perf_counter() - start


def _train_into(
    path: Path, model: nn.Module, name: str, config: TrainingConfig, device: torch.device | str | None, progress: bool
) -> None:
    """Train ``model`` with ``config`` on :data:`TRAINING_THREADS` threads and save it to ``path``."""
    train_loader, val_loader = loaders(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        history = fit(
            model,
            train_loader,
            val_loader,
            epochs=config.epochs,
            lr=config.lr,
            device=device,
            seed=config.seed,
            patience=config.patience,
            progress=progress,
            channels_last=TRAINING_CHANNELS_LAST,
        )
    finally:
        torch.set_num_threads(threads)
    model.cpu()
    tmp = path.with_suffix(".tmp")
    save_checkpoint(tmp, model, history=history, name=name)
    tmp.replace(path)  # atomic: a crash never leaves half a checkpoint behind
