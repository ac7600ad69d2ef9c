"""``check_values``: a function against a reference over many cases, devices and memory layouts.

A hidden value test is a list of cases and one call::

    check_values(dilated_conv2d, F.conv2d,
                 [Case(x, w, b, padding=1, dilation=2), Case(x2, w2, None, padding=0, dilation=3)],
                 devices=testing.devices())

Each case runs on each device; the varied arguments (the first one by default) are also passed
as a channels-last tensor, a transposed view and a strided view (:func:`layout_variants`), since
a student's code must not assume a contiguous input.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .values import assert_close

__all__ = ["Case", "check_values", "describe_call", "layout_variants"]


class Case:
    """The arguments of one call: ``Case(x, weight, padding=1)``; ``label`` names it in messages."""

    def __init__(self, *args: Any, label: str | None = None, **kwargs: Any) -> None:
        self.args, self.kwargs, self.label = args, kwargs, label

    @classmethod
    def of(cls, case: Any) -> Case:
        """A :class:`Case` from a ``Case``, a tuple of positional arguments or a single argument."""
        if isinstance(case, Case):
            return case
        if isinstance(case, tuple):
            return cls(*case)
        return cls(case)

    def __repr__(self) -> str:
        return f"Case({describe_call('', self.args, self.kwargs)[1:-1]})"


def layout_variants(x: Tensor) -> dict[str, Tensor]:
    """The same values as ``x`` in other memory layouts, by name.

    ``"contiguous"`` (``x`` itself), ``"channels_last"`` (4-D ``x`` only), ``"transposed view"``
    (the last two dimensions swapped in memory, ``x.dim() >= 2``) and ``"strided view"`` (every
    other element of a larger tensor, ``x.dim() >= 1``). Each compares equal to ``x``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"layout_variants needs a tensor, got {type(x).__name__}")
    out = {"contiguous": x}
    if x.dim() == 4:
        out["channels_last"] = x.contiguous(memory_format=torch.channels_last)
    if x.dim() >= 2:
        out["transposed view"] = x.transpose(-2, -1).contiguous().transpose(-2, -1)
    if x.dim() >= 1 and x.numel() > 0:
        out["strided view"] = torch.stack([x, x], dim=-1).flatten(-2)[..., ::2]
    return out


def _describe_value(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"a {str(v.dtype).removeprefix('torch.')} tensor of shape {tuple(v.shape)}"
    return reprlib.repr(v)


def describe_call(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """``"f(a float32 tensor of shape (1, 2), 3, padding=1)"``: a call, as a student reads it."""
    parts = [_describe_value(a) for a in args] + [f"{k}={_describe_value(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to(x, device) for x in obj)
    return obj


def _clone(obj: Any) -> Any:
    return obj.clone() if isinstance(obj, Tensor) else obj


def _same(a: Tensor, b: Tensor) -> bool:
    equal = a == b
    if a.is_floating_point() or a.is_complex():
        equal |= a.isnan() & b.isnan()
    return bool(equal.all())


def _check_unchanged(
    args: list[Any], kwargs: dict[str, Any], before: tuple[list[Any], dict[str, Any]], where: str, name: str
) -> None:
    pairs = [(f"argument {i}", a, b) for i, (a, b) in enumerate(zip(args, before[0]))]
    pairs += [(f"argument {k}", kwargs[k], before[1][k]) for k in kwargs]
    for label, a, b in pairs:
        if isinstance(a, Tensor) and not _same(a, b):
            raise AssertionError(
                f"{where}: {name} changed its {label} in place; leave the inputs unchanged (work on a copy)"
            )


def _compare(got: Any, want: Any, rtol: float | None, atol: float | None, msg: str) -> None:
    if isinstance(want, Tensor):
        assert_close(got, want, rtol=rtol, atol=atol, msg=msg)
    elif isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            raise AssertionError(f"{msg}: expected {len(want)} outputs, got {_describe_value(got)}")
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, rtol, atol, f"{msg}, output {i}")
    elif isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        if not abs(got - want) <= (atol if atol is not None else 1e-7) + (rtol if rtol is not None else 1e-7) * abs(
            want
        ):
            raise AssertionError(f"{msg}: expected {want!r}, got {got!r}")
    elif got != want:
        raise AssertionError(f"{msg}: expected {want!r}, got {_describe_value(got)}")


def check_values(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Iterable[Any],
    *,
    vary: Sequence[int | str] = (0,),
    devices: Sequence[torch.device | str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    name: str | None = None,
    check_inputs_unchanged: bool = True,
) -> None:
    """Check ``fn`` against ``reference`` on every case, device and memory layout.

    For each case (a :class:`Case`, a tuple of positional arguments, or one argument) and each
    device, the tensors of the case are moved to the device, ``reference`` computes the expected
    output, and ``fn`` is called once per layout of each argument named in ``vary`` (see
    :func:`layout_variants`); the other arguments are passed as given. Outputs are compared with
    :func:`assert_close` (tensors; tuples of outputs element by element; numbers and other values
    with ``==``). ``fn`` must leave its tensor arguments unchanged.

    Args:
        fn: the student's function.
        reference: an independent implementation with the same signature (``F.conv2d``, a
            ``lambda`` around a built-in...).
        cases: the calls to make.
        vary: positions (ints) or keyword names of the tensor arguments passed in every layout; a case
            without such a tensor (ints only, say) is called once, as given.
        devices: where to run (default: the CPU only; pass :func:`devices` for the GPU too).
        rtol, atol: tolerances for :func:`assert_close` (default: by dtype).
        name: ``fn``'s name in messages (default: its ``__name__``).
        check_inputs_unchanged: fail if ``fn`` modifies an argument in place.

    Nothing is returned, on purpose. nbgrader reads a number shown as a test cell's last value as
    partial credit, so a check that returned its count would turn "passed" into "count points" (or an
    error when the count exceeds the cell's points) in every cell that ends with the call.

    Raises:
        AssertionError: ``fn`` raised, returned a different output, or modified its input; the
            message names the call (argument shapes and dtypes, the layout, the device).
        ValueError: ``cases`` is empty.
    """
    if not callable(fn) or not callable(reference):
        raise TypeError("check_values(fn, reference, cases, ...) needs two callables")
    name = name or getattr(fn, "__name__", type(fn).__name__)
    cases = [Case.of(c) for c in cases]
    if not cases:
        raise ValueError("check_values needs at least one case")
    places = [torch.device(d) for d in (devices if devices is not None else ["cpu"])]
    for case in cases:
        for device in places:
            args, kwargs = [_to(a, device) for a in case.args], {k: _to(v, device) for k, v in case.kwargs.items()}
            want = reference(*args, **kwargs)
            call = describe_call(name, args, kwargs)
            label = f" [{case.label}]" if case.label else ""
            trials = []  # (argument, layout, tensor): every layout of every varied tensor argument
            for key in vary:
                holder = args if isinstance(key, int) else kwargs
                if (isinstance(key, int) and key >= len(args)) or (isinstance(key, str) and key not in kwargs):
                    continue
                if isinstance(holder[key], Tensor):
                    trials += [(key, layout, variant) for layout, variant in layout_variants(holder[key]).items()]
            for key, layout, variant in trials or [(None, "contiguous", None)]:  # no tensor to vary: one call
                trial_args, trial_kwargs = list(args), dict(kwargs)
                if key is not None:
                    (trial_args if isinstance(key, int) else trial_kwargs)[key] = variant
                before = [_clone(a) for a in trial_args], {k: _clone(v) for k, v in trial_kwargs.items()}
                where = f"{call}{label}" + (f" with argument {key} as a {layout}" if layout != "contiguous" else "")
                where += f" on {device}" if len(places) > 1 or device.type != "cpu" else ""
                try:
                    got = fn(*trial_args, **trial_kwargs)
                except Exception as error:
                    raise AssertionError(
                        f"{where}: expected {_describe_value(want)}, but it raised {type(error).__name__}: {error}"
                    ) from None
                _compare(got, want, rtol, atol, where)
                if check_inputs_unchanged:
                    _check_unchanged(trial_args, trial_kwargs, before, where, name)
