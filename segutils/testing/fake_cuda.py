"""``run_on_fake_cuda``: run a function with its tensors on a simulated CUDA device, without a GPU.

The tensors the function receives say ``device(type='cuda', index=0)`` but hold their data on
the CPU; every operator runs on that data, so code whose control flow or output size depends on
values (``bincount``, ``nonzero``, ``x[mask]``, a Python ``if`` on a tensor, ``.item()``) runs as it
would on a GPU. An operator that mixes them with a CPU tensor (other than a 0-dim one, which
CUDA accepts too) fails, as on a real GPU, and so does returning a CPU tensor: a hard-coded
``device="cpu"``, a ``torch.zeros(n)`` without ``device=``, ``.cpu()`` or ``.numpy()`` is caught on
a grader without a GPU. This complements :func:`~segutils.testing.check_device_agnostic`
(``meta`` tensors have no data, so value-dependent operators cannot run there).

Factory calls that name the device (``torch.zeros(n, device=x.device)``, ``device="cuda"``)
create simulated CUDA tensors too: while the check runs, a ``FakeTensorMode`` is entered only
for what it tells PyTorch's Python bindings (that no CUDA driver is needed); no fake tensor is
made. Not simulated: CUDA streams and the autograd engine's device threads (``backward()`` on
simulated tensors fails, so the check is for forward computations), and ``torch.cuda.*`` calls.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from ._common import _describe, _op_name

__all__ = ["FakeCudaUnsupported", "run_on_fake_cuda"]

_CUDA = torch.device("cuda", 0)
_CPU = torch.device("cpu")
# Operators that accept tensors on another device by design: copies, and CPU index tensors.
_COPY_OPS = ("aten._to_copy", "aten.copy_", "aten.copy", "aten.lift_fresh", "aten.lift_fresh_copy")
_INDEX_OPS = ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_")
_CREATE_ON_DEVICE_HINT = (
    "pass device=x.device (and dtype=x.dtype) when you create a tensor, or use x.new_zeros(...), "
    "torch.zeros_like(x), ...; do not move tensors to the CPU (.cpu(), .numpy())"
)


class FakeCudaUnsupported(NotImplementedError):
    """The function needs something the simulated GPU does not have (autograd's backward pass):
    a limit of the check, not a mistake of the student."""


class _FakeCudaTensor(Tensor):
    """A tensor that says it is on ``cuda:0`` and keeps its data (``elem``) on the CPU."""

    elem: Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem: Tensor, requires_grad: bool = False) -> _FakeCudaTensor:
        out = Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=_CUDA,
            requires_grad=requires_grad,
        )
        out.elem = elem
        return out

    def __repr__(self) -> str:  # printing a GPU tensor copies it to the host; allowed
        return f"{self.elem!r} (simulated on cuda:0)"

    def tolist(self) -> Any:
        return self.elem.tolist()

    def numpy(self, *, force: bool = False) -> Any:
        raise TypeError(
            "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
            "to host memory first."
        )

    def __array__(self, dtype: Any = None) -> Any:
        return self.numpy()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _is_fake(t: Any) -> bool:
    return isinstance(t, _FakeCudaTensor)


def _device_type(device: Any) -> str | None:
    return None if device is None else torch.device(device).type


def _dispatch(func: Any, args: tuple, kwargs: dict) -> Any:
    """Run ``func`` on the CPU data; wrap the outputs when they belong on the simulated GPU."""
    name = _op_name(func)
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, Tensor)]
    target = _device_type(kwargs.get("device"))
    on_cuda = target == "cuda" or (target is None and any(_is_fake(t) for t in tensors))
    if any(_is_fake(t) for t in tensors) or target == "cuda":
        if name in _INDEX_OPS:  # the indices may be on the CPU; self and values may not
            checked = [a for i, a in enumerate(args) if i != 1 and isinstance(a, Tensor)]
        elif name in _COPY_OPS:
            checked = []
        else:
            checked = tensors
        stray = [t for t in checked if not _is_fake(t) and not (t.device.type == "cpu" and t.dim() == 0)]
        if stray:
            raise AssertionError(
                f"a tensor on {stray[0].device} (shape {tuple(stray[0].shape)}) met tensors on the inputs' "
                f"device (cuda) in {name}: on a GPU this fails with 'Expected all tensors to be on the same "
                f"device'; {_CREATE_ON_DEVICE_HINT}"
            )
    if name in ("aten.copy_", "aten.index_put_", "aten._index_put_impl_") and args:
        on_cuda = _is_fake(args[0])  # in place: the result is the destination
    if target == "cuda":
        kwargs = {**kwargs, "device": _CPU}
    args, kwargs = tree_map(lambda a: a.elem if _is_fake(a) else a, (args, kwargs))
    with unset_fake_temporarily():
        out = func(*args, **kwargs)
    if not on_cuda:
        return out
    return tree_map(lambda o: _FakeCudaTensor(o) if isinstance(o, Tensor) else o, out)


class _FakeCudaMode(TorchDispatchMode):
    """Routes every operator through :func:`_dispatch` (factories with ``device="cuda"`` included)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _to_fake(obj: Any) -> Any:
    """A copy of ``obj`` with every tensor (and module) on the simulated GPU."""
    if isinstance(obj, nn.Module):
        module = copy.deepcopy(obj)
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None:  # Parameter() of a wrapper tensor keeps the wrapper (a flag marks it)
                    sub._parameters[name] = nn.Parameter(_FakeCudaTensor(param.detach()), param.requires_grad)
            for name, buf in list(sub._buffers.items()):
                if buf is not None:
                    sub._buffers[name] = _FakeCudaTensor(buf)
        return module
    if isinstance(obj, Tensor):
        return _FakeCudaTensor(obj.detach(), requires_grad=obj.requires_grad and obj.is_leaf)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_to_fake(x) for x in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_fake(x) for x in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _to_fake(v)) for k, v in obj.items())
    return obj


def _from_fake(obj: Any, path: str, what: str) -> Any:
    """``obj`` with its simulated tensors back on the CPU; a real (CPU) tensor in it is a mistake."""
    if _is_fake(obj):
        return obj.elem
    if isinstance(obj, Tensor):
        place = f" (output{path})" if path else ""
        raise AssertionError(
            f"{what} returned a tensor on {obj.device}{place} although its inputs were on a GPU "
            f"(cuda): {_CREATE_ON_DEVICE_HINT}"
        )
    if isinstance(obj, nn.Module):
        for name, t in [*obj.named_parameters(), *obj.named_buffers()]:
            if not _is_fake(t):
                raise AssertionError(
                    f"{what} returned a module whose {name} is on {t.device} although its inputs "
                    f"were on a GPU (cuda): {_CREATE_ON_DEVICE_HINT}"
                )
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_from_fake(x, f"{path}[{i}]", what) for i, x in enumerate(obj)))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_fake(x, f"{path}[{i}]", what) for i, x in enumerate(obj))
    if isinstance(obj, dict):
        return type(obj)((k, _from_fake(v, f"{path}[{k!r}]", what)) for k, v in obj.items())
    return obj


def run_on_fake_cuda(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` with its tensors and modules on a simulated GPU; return its output on the CPU.

    Every tensor in ``args``/``kwargs`` (nested lists, tuples and dicts too) and every module
    (``fn`` itself when it is an ``nn.Module``) is copied to a simulated ``cuda:0`` device whose
    data stays on the CPU (see the module docstring). ``fn`` must create its tensors on the
    inputs' device and return tensors there. Needs no GPU, and works on machines that have one.

    Returns:
        ``fn``'s output with each tensor back as an ordinary CPU tensor (values can be compared).

    Raises:
        AssertionError: an operator mixed a CPU tensor with the GPU inputs (a tensor created
            without ``device=``, on a hard-coded device, or moved with ``.cpu()``), ``.numpy()``
            was called on a GPU tensor, or the output holds a CPU tensor. Any other exception of
            ``fn`` propagates unchanged (with its type), so that value errors are told apart.
        FakeCudaUnsupported: ``fn`` runs autograd's backward pass, which is not simulated.
        TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    what = _describe(fn)
    fake_fn, fake_args, fake_kwargs = _to_fake(fn), _to_fake(args), _to_fake(kwargs)
    # Module conversions (model.to(torch.float64)) swap parameters instead of assigning .data, which
    # would change the wrapper's metadata without its data.
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        output = _run(fake_fn, fake_args, fake_kwargs, what)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    return _from_fake(output, "", what)


def _run(fake_fn: Callable[..., Any], fake_args: Any, fake_kwargs: Any, what: str) -> Any:
    # FakeTensorMode is entered only so that PyTorch's Python bindings create "cuda" factories
    # without a CUDA driver; _FakeCudaMode, above it, handles every operator on real CPU data.
    # cuDNN off: composite operators (batch_norm) would otherwise pick cuDNN kernels for "cuda" inputs.
    with FakeTensorMode(), _FakeCudaMode(), torch.backends.cudnn.flags(enabled=False):
        try:
            output = fake_fn(*fake_args, **fake_kwargs)
        except RuntimeError as error:
            if "hasPrimaryContext" in str(error) or "device_index" in str(error):
                raise FakeCudaUnsupported(
                    "run_on_fake_cuda does not simulate autograd's backward pass on a GPU (backward(), "
                    "torch.autograd.grad): check this function's devices without it (fake_cuda=False)"
                ) from error
            raise
        except TypeError as error:
            if "numpy" in str(error) and "cuda" in str(error):
                raise AssertionError(
                    f"{what} called .numpy() on a GPU tensor ({error}): keep the computation in "
                    f"tensor operations on the inputs' device"
                ) from error
            raise
    return output
