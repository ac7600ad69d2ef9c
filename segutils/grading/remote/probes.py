"""What only the student's process can observe, measured there around one proxied call.

The ATen operators a call dispatches, whether it runs on ``meta`` tensors, host syncs on CUDA and
calls into ``segutils`` happen in the process that runs the student's code; the grader cannot see
them. In the grader, :func:`install` makes the checks of :mod:`segutils.testing` proxy-aware:
when the function under test is a proxy (:class:`~segutils.grading.remote.proxy.RemoteObject`), the
whole check (``count_ops``, ``assert_vectorized``, ``forbid_ops``, ``assert_no_delegation``,
``check_device_agnostic``, ``no_host_sync``, ``check_no_builtin``, ``check_devices_and_dtypes`` with its
simulated CUDA, ``run_on_fake_cuda``) runs in the student's process (:class:`ProbeRunner`)
and only its verdict and return value come back, as data. The context-manager forms
(``with testing.no_host_sync():``, ``with testing.forbid_ops(ops):``) wrap every proxied call made
inside the block the same way.

Such a verdict comes from the student's process, which the student controls: each is recorded in
:data:`MEASURED` and the grader marks the test's points as "measured in the student's process".
Values, shapes, dtypes, gradients and trained-model quality are never judged there.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from typing import Any

#: The checks that run in the student's process when their function is a proxy.
CHECKS = (
    "count_ops",
    "assert_vectorized",
    "forbid_ops",
    "assert_no_delegation",
    "check_device_agnostic",
    "no_host_sync",
    "check_no_builtin",
    "check_devices_and_dtypes",
    "run_on_fake_cuda",
    "trace_feature_maps",
    "check_parameters_get_gradients",
    "check_returns_new_tensor",
)
#: Checks that also have a context-manager form.
CONTEXT_CHECKS = ("no_host_sync", "forbid_ops")

#: Context-manager checks active in the grader (name, args), applied to proxied calls in their block.
ACTIVE: list[tuple[str, list]] = []
#: Checks measured in the student's process since the last :func:`take_measured`.
MEASURED: list[str] = []


def take_measured() -> list[str]:
    """The checks measured in the student's process since the last call (and forget them)."""
    names = list(dict.fromkeys(MEASURED))
    MEASURED.clear()
    return names


def remote_call(endpoint: Any, target: Any, args: tuple, kwargs: dict) -> Any:
    """A proxied call inside active context-manager checks: run under them in the student's process."""
    MEASURED.extend(name for name, _ in ACTIVE)
    return endpoint.request(
        "probe", check="call", contexts=[[n, a] for n, a in ACTIVE], args=[target, *args], kwargs=kwargs
    )


def _is_ops_spec(value: Any) -> bool:
    return isinstance(value, (str, frozenset, set, tuple, list))


def _wrap(name: str, original: Any) -> Any:
    from segutils.grading.remote.proxy import endpoint_of, is_proxy

    @functools.wraps(original)
    def check(*args: Any, **kwargs: Any) -> Any:
        if args and is_proxy(args[0]):
            MEASURED.append(name)
            answer = endpoint_of(args[0]).request("probe", check=name, args=list(args), kwargs=kwargs)
            if name == "count_ops" and isinstance(answer, dict):
                return collections.Counter(answer)
            return answer
        context_form = (name == "no_host_sync" and not args) or (
            name == "forbid_ops" and len(args) == 1 and _is_ops_spec(args[0])
        )
        if context_form:
            return _RemoteContext(name, list(args), original(*args, **kwargs))
        return original(*args, **kwargs)

    check.__segutils_remote_aware__ = True  # type: ignore[attr-defined]
    return check


class _RemoteContext(contextlib.AbstractContextManager):
    """A check's context manager in the grader that also applies to proxied calls in its block."""

    def __init__(self, name: str, args: list, local: Any) -> None:
        self.entry = (name, args)
        self.local = local

    def __enter__(self) -> Any:
        value = self.local.__enter__()
        ACTIVE.append(self.entry)
        return value

    def __exit__(self, *exc: Any) -> Any:
        if ACTIVE and ACTIVE[-1] is self.entry:
            ACTIVE.pop()
        return self.local.__exit__(*exc)


def install() -> None:
    """Make :mod:`segutils.testing`'s checks proxy-aware in this (the grader's) process."""
    import segutils.testing as testing

    for name in CHECKS:
        original = getattr(testing, name, None)
        if original is None:
            continue
        if not getattr(original, "__segutils_remote_aware__", False):
            setattr(testing, name, _wrap(name, original))


class ProbeRunner:
    """Student side: run a check of :mod:`segutils.testing` (or a plain call) under the requested contexts."""

    def probe(self, endpoint: Any, message: dict) -> Any:
        import segutils.testing as testing

        check, args, kwargs = message.get("check"), message.get("args", []), message.get("kwargs", {})
        contexts = message.get("contexts", [])
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(contexts, list):
            raise TypeError("a probe request with malformed arguments")
        if check != "call" and check not in CHECKS:
            raise PermissionError(f"unknown probe {check!r}")
        with contextlib.ExitStack() as stack:
            for entry in contexts:
                if not (
                    isinstance(entry, list)
                    and len(entry) == 2
                    and entry[0] in CONTEXT_CHECKS
                    and isinstance(entry[1], list)
                ):
                    raise PermissionError(f"unknown probe context {entry!r}")
                stack.enter_context(getattr(testing, entry[0])(*entry[1]))
            if check == "call":
                if not args:
                    raise TypeError("a probed call without its function")
                return args[0](*args[1:], **kwargs)
            return getattr(testing, check)(*args, **kwargs)

    def handlers(self) -> dict:
        return {"probe": self.probe}
