"""``check_raises``: bad input raises the documented exception, with a message."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["check_raises"]


def check_raises(
    fn: Callable[..., Any],
    args: Sequence[Any],
    problem: str,
    *,
    kwargs: dict[str, Any] | None = None,
    exception: type[BaseException] | tuple[type[BaseException], ...] = ValueError,
    match: str | None = None,
) -> BaseException:
    """Check that ``fn(*args, **kwargs)`` raises ``exception`` with a non-empty message; return it.

    Args:
        fn: the function under test.
        args, kwargs: a call with bad input.
        problem: what is wrong with the input, in the student's terms (``"dilation 0"``).
        exception: the exception class (or classes) the assignment asks for.
        match: a substring the message must contain (case-insensitive), if the release asks
            for particular words.

    Raises:
        AssertionError: ``fn`` returned, raised another exception, or raised with an empty message.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of arguments, got {type(args).__name__}")
    name = getattr(fn, "__name__", type(fn).__name__)
    wanted = exception if isinstance(exception, tuple) else (exception,)
    wanted_name = " or ".join(e.__name__ for e in wanted)
    try:
        fn(*args, **(kwargs or {}))
    except wanted as error:
        text = str(error).strip()
        if not text:
            raise AssertionError(
                f"{name} raised {type(error).__name__} for {problem}, but with an empty message: "
                f"say what is wrong with the input"
            ) from None
        if match is not None and match.lower() not in text.lower():
            raise AssertionError(
                f"{name} raised {type(error).__name__} for {problem}, but its message "
                f"({text!r}) does not mention {match!r}"
            ) from None
        return error
    except Exception as error:
        raise AssertionError(f"expected {wanted_name} for {problem}, got {type(error).__name__}: {error}") from None
    raise AssertionError(f"expected {wanted_name} for {problem}, but {name} returned")
