"""``check_gradients``: gradients flow back to the inputs and are right (``torch.autograd.gradcheck``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError

from .variants import describe_call

__all__ = ["check_gradients"]


def check_gradients(
    fn: Callable[..., Any],
    /,
    *args: Any,
    wrt: Sequence[int] | None = None,
    name: str | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    **kwargs: Any,
) -> None:
    """Check ``fn(*args, **kwargs)``'s gradients against finite differences, in float64.

    The floating-point tensors among ``args`` (or those at the positions ``wrt``) are copied as
    float64 leaves that require grad; other arguments (ints, index tensors) are passed as given.
    First the output must require grad (the computation stayed in the autograd graph), then
    :func:`torch.autograd.gradcheck` compares the analytical gradients with numerical ones, in its
    fast mode: it compares ``v^T J u`` for random vectors ``u`` and ``v`` instead of every entry of the
    Jacobian ``J``, so ``fn`` runs a few times instead of twice per input element and once per output
    element. A wrong gradient changes that product unless ``u`` and ``v`` happen to be orthogonal to the
    error, which random vectors almost never are; it matters where every call is a round trip to
    another process (two-process grading).

    Args:
        fn: the function under test.
        args, kwargs: its arguments.
        wrt: positions of the arguments to differentiate (default: every floating-point tensor).
        name: ``fn``'s name in messages.
        atol, rtol: gradcheck's tolerances.

    Raises:
        AssertionError: the output does not require grad, gradients are wrong, or the backward
            pass failed; the message names the call.
        ValueError: no argument to differentiate.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    name = name or getattr(fn, "__name__", type(fn).__name__)
    positions = (
        list(wrt)
        if wrt is not None
        else [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.is_floating_point()]
    )
    if not positions:
        raise ValueError("check_gradients: no floating-point tensor argument to differentiate")
    inputs = list(args)
    for i in positions:
        if not isinstance(inputs[i], Tensor) or not inputs[i].is_floating_point():
            raise ValueError(f"check_gradients: argument {i} is not a floating-point tensor")
        inputs[i] = inputs[i].detach().to(torch.float64).requires_grad_(True)
    call = describe_call(name, inputs, kwargs)
    try:
        out = fn(*inputs, **kwargs)
    except Exception as error:
        raise AssertionError(f"{call} raised {type(error).__name__}: {error}") from None
    outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, Tensor)]
    if not outs or not any(o.requires_grad for o in outs):
        raise AssertionError(
            f"{call}: the output does not require grad: the computation left the autograd graph (a .detach(), "
            f".item(), .numpy(), torch.no_grad(), or a new tensor filled with values read from the inputs); "
            f"build the output from the inputs with tensor operations"
        )

    def differentiable(*diff: Tensor) -> Any:
        full = list(inputs)
        for i, t in zip(positions, diff):
            full[i] = t
        return fn(*full, **kwargs)

    try:
        torch.autograd.gradcheck(
            differentiable, tuple(inputs[i] for i in positions), atol=atol, rtol=rtol, fast_mode=True
        )
    except GradcheckError as error:
        first = str(error).strip().splitlines()[0]
        raise AssertionError(f"{call}: wrong gradients (compared with finite differences): {first}") from None
    except Exception as error:
        raise AssertionError(
            f"{call}: no gradient: the backward pass failed with {type(error).__name__}: {error}"
        ) from None
