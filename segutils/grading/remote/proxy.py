"""Stand-ins for objects that live in the other process.

- :class:`RemoteObject` (grader side): an object of the student's process (a function, an
  ``nn.Module``, a generator...). Calls, attributes, ``len``, iteration, indexing, ``with`` and
  ``repr`` are forwarded; what comes back is data (a copy) or another proxy. Its type is named after
  the remote object's type (``type(proxy).__name__``, ``__module__``), so messages read naturally.
  A call whose tensor arguments require grad goes through :mod:`~segutils.grading.remote.autograd`.
- :class:`GraderCallable` (student side): a callable the test passed to the student's code (a
  classifier, an input factory). It can only be called.
"""

from __future__ import annotations

import functools
from typing import Any

from segutils.grading.remote.codec import RefInfo

# Attributes Python, NumPy or PyTorch probe on any object: answered locally (as missing), never remotely.
_LOCAL_MISSING = frozenset(
    {
        "__torch_function__",
        "__torch_dispatch__",
        "__array__",
        "__array_interface__",
        "__array_struct__",
        "__array_priority__",
        "__length_hint__",
        "__fspath__",
        "__index__",
        "__float__",
        "__int__",
        "__complex__",
        "__getstate__",
        "__reduce_ex__",
        "__reduce__",
        "_ipython_canary_method_should_not_exist_",
        "_repr_html_",
        "_repr_markdown_",
        "_repr_svg_",
        "_repr_png_",
        "_repr_jpeg_",
        "_repr_latex_",
        "_repr_json_",
        "_repr_javascript_",
        "_repr_pdf_",
        "_repr_mimebundle_",
        "_ipython_display_",
    }
)


def ref_of(obj: Any) -> RefInfo | None:
    """The handle a proxy stands for (``None`` for anything else)."""
    if isinstance(obj, (RemoteObject, GraderCallable)):
        return object.__getattribute__(obj, "_ref")
    return None


def endpoint_of(obj: Any) -> Any:
    """The :class:`~segutils.grading.remote.channel.Endpoint` a proxy talks through (``None`` if not a proxy)."""
    if isinstance(obj, (RemoteObject, GraderCallable)):
        return object.__getattribute__(obj, "_endpoint")
    return None


def is_proxy(obj: Any) -> bool:
    return isinstance(obj, RemoteObject)


class RemoteObject:
    """An object of the student's process, seen from the grader (see the module docstring)."""

    __slots__ = ("_endpoint", "_ref")

    def __init__(self, endpoint: Any, ref: RefInfo) -> None:
        object.__setattr__(self, "_endpoint", endpoint)
        object.__setattr__(self, "_ref", ref)

    def _op(self, name: str, *args: Any) -> Any:
        return object.__getattribute__(self, "_endpoint").request("op", target=self, name=name, args=list(args))

    def __getattr__(self, name: str) -> Any:
        if name in _LOCAL_MISSING or name.startswith("_RemoteObject"):
            raise AttributeError(name)
        return object.__getattribute__(self, "_endpoint").request("getattr", target=self, name=name)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__getattribute__(self, "_endpoint").request("setattr", target=self, name=name, value=value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from segutils.grading.remote import autograd

        return autograd.call(object.__getattribute__(self, "_endpoint"), self, args, kwargs)

    def __len__(self) -> int:
        n = self._op("len")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TypeError(f"len() of a student's object gave {n!r}")
        return n

    def __iter__(self) -> Any:
        return self._op("iter")

    def __next__(self) -> Any:
        return self._op("next")

    def __bool__(self) -> bool:
        return self._op("bool") is True

    def __getitem__(self, key: Any) -> Any:
        return self._op("getitem", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._op("setitem", key, value)

    def __contains__(self, item: Any) -> bool:
        return self._op("contains", item) is True

    def __enter__(self) -> Any:
        return self._op("enter")

    def __exit__(self, *exc: Any) -> Any:
        return self._op("exit", *(None for _ in exc))

    def __copy__(self) -> Any:
        return self._op("copy")

    def __deepcopy__(self, memo: dict) -> Any:
        """A deep copy made in the student's process (a copy of a student's model stays the student's)."""
        return self._op("deepcopy")

    def __dir__(self) -> list[str]:
        names = self._op("dir")
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def __repr__(self) -> str:
        try:
            text = self._op("repr")
        except Exception as error:  # noqa: BLE001 - a repr must not raise in a traceback
            ref = object.__getattribute__(self, "_ref")
            return f"<student's {ref.type_name} (repr failed: {type(error).__name__})>"
        return str(text)[:10_000]

    def __str__(self) -> str:
        return str(self._op("str"))[:100_000]


class GraderCallable:
    """A callable of the grader's process, seen from the student's code: it can only be called."""

    __slots__ = ("_endpoint", "_ref")

    def __init__(self, endpoint: Any, ref: RefInfo) -> None:
        object.__setattr__(self, "_endpoint", endpoint)
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return object.__getattribute__(self, "_endpoint").request("call", target=self, args=list(args), kwargs=kwargs)

    @property
    def __signature__(self) -> Any:
        """``arity`` positional parameters when the grader said how many (``inspect.signature`` works)."""
        import inspect

        arity = object.__getattribute__(self, "_ref").arity
        if arity is None:
            return inspect.Signature(
                [
                    inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                    inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
                ]
            )
        return inspect.Signature(
            [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(arity)]
        )

    def __getattr__(self, name: str) -> Any:
        ref = object.__getattribute__(self, "_ref")
        raise AttributeError(f"{name!r}: this {ref.type_name} belongs to the grader; it can only be called")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("this object belongs to the grader; it can only be called")

    def __copy__(self) -> GraderCallable:
        return self  # like a function: a copy of a module holding the grader's hook keeps that hook

    def __deepcopy__(self, memo: dict) -> GraderCallable:
        return self

    def __repr__(self) -> str:
        ref = object.__getattribute__(self, "_ref")
        return f"<grader's {ref.type_name}>"


@functools.lru_cache(maxsize=4096)
def _proxy_class(module: str, qualname: str) -> type:
    name = qualname.rsplit(".", 1)[-1] or "object"
    return type(name, (RemoteObject,), {"__module__": module, "__qualname__": qualname, "__slots__": ()})


def grader_side_proxy(endpoint: Any, ref: RefInfo) -> RemoteObject:
    """The grader's stand-in for a student's object (:class:`RemoteObject` named after its type)."""
    return _proxy_class(ref.type_module, ref.type_name)(endpoint, ref)


def student_side_proxy(endpoint: Any, ref: RefInfo) -> GraderCallable:
    """The student's stand-in for a grader's object (callable only)."""
    if not ref.callable:
        raise TypeError(f"the grader sent a {ref.type_name} that is neither data nor callable")
    return GraderCallable(endpoint, ref)
