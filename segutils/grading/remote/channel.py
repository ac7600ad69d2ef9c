"""Framed messages over a socket, and a symmetric request/reply endpoint on top of them.

A frame is ``u64 length | message`` (a :mod:`~segutils.grading.remote.codec` message). An
:class:`Endpoint` sends a request and, while it waits for the reply, serves the requests the
other side sends meanwhile (a student's function calling back a classifier the test passed it, which
calls the student's process again...), to any depth.

Requests (``{"k": "req", "id": n, "op": ..., ...}``) act on objects the receiving side *exported*
(sent as handles). What a side lets the other do with its exports is its :class:`Policy`: the
student's process answers anything about its own objects; the grader answers only calls of the
callables a test passed (never an attribute: a test function's ``__globals__`` or ``__code__`` would
leak the hidden tests).
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from segutils.grading.remote.codec import DEFAULT_LIMITS, CodecError, CodecLimits, RefInfo, decode, encode

_FRAME = struct.Struct("<Q")


#: Probes (checks of segutils.testing) that run the student's code on fake tensors of a simulated CUDA device.
_SIMULATED_CUDA = frozenset({"check_devices_and_dtypes", "run_on_fake_cuda"})


class ChannelError(RuntimeError):
    """The other side broke the protocol, went away, or did not answer in time."""


class RemoteError(Exception):
    """Base of exceptions that name a problem of the channel rather than of the code it ran."""


class Channel:
    """Length-prefixed messages over a connected stream socket, bounded by ``limits.max_bytes``."""

    def __init__(self, sock: socket.socket, limits: CodecLimits = DEFAULT_LIMITS) -> None:
        self.sock = sock
        self.limits = limits
        self.sock.setblocking(True)

    def send(self, data: bytes) -> None:
        try:
            if len(data) < 1 << 16:
                self.sock.sendall(_FRAME.pack(len(data)) + data)
            else:  # no copy of a large message just to prepend its length
                self.sock.sendall(_FRAME.pack(len(data)))
                self.sock.sendall(data)
        except OSError as error:
            raise ChannelError(f"the other process went away ({error})") from None

    def receive(self, timeout: float | None) -> bytes:
        header = self._exactly(_FRAME.size, timeout)
        (length,) = _FRAME.unpack(header)
        if length > self.limits.max_bytes:
            raise ChannelError(f"the other process sent a message of {length} bytes, more than {self.limits.max_bytes}")
        return self._exactly(length, timeout)

    def _exactly(self, size: int, timeout: float | None) -> bytes:
        chunks, got = [], 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while got < size:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ChannelError(f"the other process did not answer within {timeout:g} s")
            if not select.select([self.sock], [], [], remaining)[0]:
                continue
            try:
                chunk = self.sock.recv(min(size - got, 1 << 22))
            except OSError as error:
                raise ChannelError(f"the other process went away ({error})") from None
            if not chunk:
                raise ChannelError("the other process closed the channel")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Policy:
    """What the other side may do with this side's exported objects (``ops``) and namespace."""

    ops: frozenset[str]
    namespace: Callable[[], dict] = dict

    @classmethod
    def student(cls, namespace: Callable[[], dict]) -> Policy:
        """Anything about the student's own objects; ``namespace()`` gives the names it may look up."""
        return cls(frozenset({"call", "getattr", "setattr", "op", "lookup", "release", "names"}), namespace)

    @classmethod
    def grader(cls) -> Policy:
        return cls(frozenset({"call", "release"}))


#: Dunder operations a proxy forwards (``op`` requests): name -> how the exporter applies it.
OPERATIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "iter": iter,
    "next": next,
    "bool": bool,
    "repr": repr,
    "str": str,
    "getitem": lambda obj, key: obj[key],
    "setitem": lambda obj, key, value: obj.__setitem__(key, value),
    "contains": lambda obj, item: item in obj,
    "enter": lambda obj: obj.__enter__(),
    "exit": lambda obj, *exc: obj.__exit__(*exc),
    "dir": lambda obj: sorted(dir(obj)),
    "copy": lambda obj: __import__("copy").copy(obj),
    "deepcopy": lambda obj: __import__("copy").deepcopy(obj),
}


@dataclass
class Endpoint:
    """One side of the channel: exports, proxies, requests and the loop that serves the other side.

    Args:
        channel: the connection.
        side: ``"s"`` (student) or ``"g"`` (grader); handles name the side that holds the object.
        policy: what the other side may ask of this one.
        make_proxy: builds this side's stand-in for an object the other side holds.
        timeout: seconds to wait for any one message (``None``: forever).
    """

    channel: Channel
    side: str
    policy: Policy
    make_proxy: Callable[[Endpoint, RefInfo], Any]
    timeout: float | None = None
    limits: CodecLimits = DEFAULT_LIMITS
    handlers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    exports: dict[int, Any] = field(default_factory=dict)
    _export_ids: dict[int, int] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _requests: Any = field(default_factory=lambda: itertools.count(1))
    closed: bool = False
    _received: list = field(default_factory=list)
    #: Grader side: the test's own bindings of the student's names, sent with every call (see :func:`rebound`).
    bindings: Callable[[], dict] | None = None
    #: Student side: the namespace the student's code runs in, where those bindings apply during the call.
    student_globals: dict | None = None

    # -- handles ------------------------------------------------------------------------------
    def export(self, obj: Any) -> RefInfo:
        from segutils.grading.remote.proxy import ref_of

        ref = ref_of(obj)
        if ref is not None:  # a proxy goes back as the handle it stands for
            return ref
        key = id(obj)
        ident = self._export_ids.get(key)
        if ident is None or self.exports.get(ident) is not obj:
            ident = next(self._ids)
            self.exports[ident] = obj
            self._export_ids[key] = ident
        cls = type(obj)
        arity = _arity(obj) if self.side == "g" and callable(obj) else None
        return RefInfo(
            self.side, ident, str(getattr(cls, "__module__", "") or ""), str(cls.__qualname__), callable(obj), arity
        )

    def resolve(self, ref: RefInfo) -> Any:
        if ref.side == self.side:
            if ref.id not in self.exports:
                raise CodecError(f"a handle to object {ref.id}, which this process never sent")
            return self.exports[ref.id]
        return self.make_proxy(self, ref)

    def encode(self, value: Any) -> bytes:
        # The grader's modules (a classifier a test built) travel as copies the student's code can inspect.
        # The channel's own tensor operations are outside any dispatch mode a check has active.
        with _no_dispatch_modes():
            return encode(value, export=self.export, limits=self.limits, modules_by_value=self.side == "g")

    def decode(self, data: bytes) -> Any:
        with _no_dispatch_modes():
            return decode(
                data, resolve=self.resolve, limits=self.limits, modules=self._on_module if self.side == "s" else None
            )

    def _on_module(self, mid: int | None, module: Any) -> None:
        self._received.append((mid, module))

    # -- requests -----------------------------------------------------------------------------
    def request(self, op: str, **fields: Any) -> Any:
        """Ask the other side to do ``op``; serve its requests until the answer comes. Raises what it raised."""
        if self.closed:
            raise ChannelError("the grading channel is closed")
        rid = next(self._requests)
        if self.side == "g" and op in ("call", "gcall", "probe"):
            import torch

            fields["ddt"] = torch.get_default_dtype()  # the test's torch.set_default_dtype holds for the call
            # The test's bindings of the student's names go with the call, except into the checks that run the
            # student's code on simulated CUDA tensors: those cannot travel back to a function of the grader.
            bound = self.bindings() if self.bindings is not None and fields.get("check") not in _SIMULATED_CUDA else {}
            if bound:
                fields["bind"] = bound
        self.channel.send(self.encode({"k": "req", "id": rid, "op": op, **fields}))
        while True:
            message = self._receive()
            kind = message.get("k")
            if kind == "req":
                self._answer(message)
            elif kind in ("ok", "err") and message.get("id") == rid:
                if self.side == "g" and message.get("sync"):
                    self._apply_sync(message["sync"])
                if kind == "err":
                    error = message.get("e")
                    if not isinstance(error, BaseException):
                        raise ChannelError("the other process answered an error that is not an exception")
                    raise error
                return message.get("v")
            else:
                raise ChannelError(f"the other process sent an unexpected message ({kind!r})")

    def serve(self, until: Callable[[dict], bool]) -> dict:
        """Answer requests until one for which ``until(message)`` holds arrives; return that one."""
        while True:
            message = self._receive()
            if message.get("k") != "req":
                raise ChannelError(f"the other process sent an unexpected message ({message.get('k')!r})")
            if until(message):
                return message
            self._answer(message)

    def reply(self, message: dict, value: Any = None) -> None:
        self.channel.send(self.encode({"k": "ok", "id": message.get("id"), "v": value}))

    def _receive(self) -> dict:
        try:
            message = self.decode(self.channel.receive(self.timeout))
        except CodecError as error:
            raise ChannelError(f"the other process sent a message this grader does not accept: {error}") from None
        if not isinstance(message, dict):
            raise ChannelError("the other process sent a message that is not a dict")
        return message

    def _answer(self, message: dict) -> None:
        received, self._received = self._received, []  # the grader's modules this request brought
        reply: dict = {"k": "ok", "id": message.get("id")}
        try:
            reply["v"] = self._perform(message)
            data = self.encode({**reply, **self._sync(received)})
        except ChannelError:
            raise
        except BaseException as error:  # noqa: BLE001 - the other side gets it as its exception
            if isinstance(error, (KeyboardInterrupt, SystemExit)) and self.side == "g":
                raise
            reply = {"k": "err", "id": message.get("id")}
            try:
                data = self.encode({**reply, "e": error, **self._sync(received)})
            except CodecError as codec_error:
                data = self.encode({**reply, "e": RuntimeError(str(codec_error))})
        self.channel.send(data)

    @staticmethod
    def _sync(received: list) -> dict:
        """Student side: the new state of the grader's modules a request brought (their copies here)."""
        states = []
        for mid, module in received:
            if mid is None:
                continue
            try:  # a module holding one of the grader's callables (a test's own module class) has no full state
                states.append(
                    [
                        mid,
                        {
                            "p": {n: p.detach() for n, p in module.named_parameters()},
                            "b": {n: b for n, b in module.named_buffers()},
                            "t": {n: m.training for n, m in module.named_modules()},
                        },
                    ]
                )
            except Exception:  # noqa: BLE001 - its state does not come back; the call's answer still does
                continue
        return {"sync": states} if states else {}

    def _apply_sync(self, states: Any) -> None:
        """Grader side: what the student's code did to copies of the grader's modules (moved them to a
        device, trained them, switched their mode) happens to the originals, as it would in one process."""
        import torch

        if not isinstance(states, list):
            return
        for entry in states[:1000]:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
                continue
            module = self.exports.get(entry[0])
            if not isinstance(module, torch.nn.Module):
                continue
            state = entry[1]
            for name, value in (state.get("p") or {}).items():
                try:
                    param = module.get_parameter(name)
                except AttributeError:
                    continue
                if not isinstance(value, torch.Tensor):
                    continue
                try:
                    param.data = value
                except (TypeError, RuntimeError):  # another kind of tensor (cpu -> meta): as Module.to does it
                    owner_name, _, attr = str(name).rpartition(".")
                    owner = module.get_submodule(owner_name) if owner_name else module
                    owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=param.requires_grad)
            for name, value in (state.get("b") or {}).items():
                owner_name, _, attr = str(name).rpartition(".")
                try:
                    owner = module.get_submodule(owner_name) if owner_name else module
                    if attr in owner._buffers and isinstance(value, torch.Tensor):
                        owner._buffers[attr] = value
                except (AttributeError, TypeError):
                    continue
            for name, flag in (state.get("t") or {}).items():
                try:
                    if isinstance(flag, bool):
                        (module.get_submodule(name) if name else module).training = flag
                except AttributeError:
                    continue

    def _perform(self, message: dict) -> Any:
        bind = message.get("bind")
        if bind is not None and self.side == "s" and message.get("op") in ("call", "gcall", "probe"):
            with rebound(self.student_globals, bind):
                return self._perform_unbound(message)
        return self._perform_unbound(message)

    def _perform_unbound(self, message: dict) -> Any:
        op = message.get("op")
        if not isinstance(op, str) or (op not in self.policy.ops and op not in self.handlers):
            raise PermissionError(f"the grading channel does not allow {op!r} here")
        if op in self.handlers:
            with default_dtype(message.get("ddt")):
                return self.handlers[op](self, message)
        target = message.get("target")
        if op == "call":
            args, kwargs = message.get("args", []), message.get("kwargs", {})
            if (
                not isinstance(args, list)
                or not isinstance(kwargs, dict)
                or not all(isinstance(k, str) for k in kwargs)
            ):
                raise ChannelError("a call request with malformed arguments")
            with default_dtype(message.get("ddt")):
                return target(*args, **kwargs)
        if op == "getattr":
            return getattr(target, _name(message))
        if op == "setattr":
            setattr(target, _name(message), message.get("value"))
            return None
        if op == "op":
            name = message.get("name")
            if name not in OPERATIONS:
                raise PermissionError(f"unknown operation {name!r}")
            args = message.get("args", [])
            return OPERATIONS[name](target, *(args if isinstance(args, list) else []))
        if op == "lookup":
            namespace = self.policy.namespace()
            name = _name(message)
            if name not in namespace:
                raise NameError(f"name {name!r} is not defined")
            return namespace[name]
        if op == "names":
            return sorted(k for k in self.policy.namespace() if isinstance(k, str))
        if op == "release":
            for ident in message.get("ids", []):
                obj = self.exports.pop(ident, None)
                if obj is not None:
                    self._export_ids.pop(id(obj), None)
            return None
        raise PermissionError(f"the grading channel does not allow {op!r} here")

    def close(self) -> None:
        self.closed = True
        self.channel.close()


@contextlib.contextmanager
def rebound(namespace: dict | None, bindings: Any) -> Iterator[None]:
    """Student side: the test's bindings of the student's names, in place for one call, then undone.

    In one process a test that rebinds a name the student defined (``mock.patch.dict(globals(),
    extract_patches=reference)``) changes what the student's functions call; two-process, the test's
    namespace is the grader's. The grader sends such bindings with each call (its callables as handles
    that call back, never as code), and they apply here only while the call runs.
    """
    if namespace is None or not bindings:
        yield
        return
    if not isinstance(bindings, dict) or not all(isinstance(k, str) and k.isidentifier() for k in bindings):
        raise ChannelError("a call request with malformed bindings")
    missing = object()
    saved = {name: namespace.get(name, missing) for name in bindings}
    namespace.update(bindings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                namespace.pop(name, None)
            else:
                namespace[name] = value


class default_dtype:  # noqa: N801 - used like contextlib's helpers
    """``with default_dtype(dtype):`` PyTorch's default dtype for the block (``None``: unchanged)."""

    def __init__(self, dtype: Any) -> None:
        import torch

        self.dtype = dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else None
        self.saved = None

    def __enter__(self) -> None:
        import torch

        if self.dtype is not None:
            self.saved = torch.get_default_dtype()
            torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.saved is not None:
            torch.set_default_dtype(self.saved)


def _no_dispatch_modes() -> Any:
    """A context without the active ``TorchDispatchMode`` s (operator counters see only the code under test)."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def _arity(fn: Any) -> int | None:
    """How many positional parameters ``fn`` requires (``None``: unknown or ``*args``); the only thing
    about a grader's callable the student's process learns besides its type's name."""
    from segutils.testing._common import _positional_arity

    return _positional_arity(fn)


def _name(message: dict) -> str:
    name = message.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ChannelError(f"a request naming {name!r}, not an identifier")
    return name


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected Unix stream sockets (tests, and a grader and student in one process tree)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
