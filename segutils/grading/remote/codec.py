"""Values as bytes between the grader and the student's process: data only, strictly decoded.

A message is ``MAGIC | u32 header length | u32 buffer count | u64 length per buffer | header | buffers``.
The header is JSON: JSON scalars are themselves (``None``, ``bool``, ``int``, ``float``, ``str``), a
JSON array is a ``list``, and a JSON object is a tagged node ``{"t": kind, ...}``:

========== =================================================================================
kind       value
========== =================================================================================
tuple      ``{"t": "tuple", "v": [...]}`` (``namedtuple`` s arrive as plain tuples)
dict       ``{"t": "dict", "v": [[key, value], ...]}`` (keys may be any hashable value here)
set        ``{"t": "set" | "frozenset", "v": [...]}``
bytes      ``{"t": "bytes", "b": buffer index}``
complex    ``{"t": "complex", "v": [re, im]}``
slice      ``{"t": "slice", "v": [start, stop, step]}``, ``range`` likewise, ``{"t": "ellipsis"}``
dtype      ``{"t": "dtype", "v": "float32"}``; ``device``: ``{"t": "device", "v": "cuda:0"}``
size       ``{"t": "size", "v": [2, 3]}`` (``torch.Size``)
tensor     dtype, shape, strides, device, ``requires_grad``, whether it is a ``Parameter``, and the
           index of the buffer holding the raw bytes of the storage span the strides reach
           (none for ``meta`` tensors). A tensor subclass arrives as a plain ``torch.Tensor``.
exc        an exception: the names of its classes (most derived first), its message and the
           sender's traceback text; decoded as the first *built-in* exception class among them
ref        a handle to an object that stays in the sender's process: ``side``, ``id``, its type's
           name and whether it is callable
odict      an ``OrderedDict``, like dict
module     (grader to student only) an ``nn.Module`` of a class of ``torch.nn`` or ``segutils``:
           its class's import path and its ``__dict__`` (parameters, buffers, child modules,
           hooks as callables of the grader); rebuilt like ``pickle`` would, but only for those
           classes and only from data. Accepted only where the decoder is given ``modules``.
========== =================================================================================

Nothing is unpickled or evaluated. :func:`decode` checks every limit of :class:`CodecLimits` before
allocating, and raises :class:`CodecError` (a ``ValueError`` naming the problem) on anything else.
"""

from __future__ import annotations

import builtins
import collections
import importlib
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MAGIC = b"SGR1"
_PREFIX = struct.Struct("<4sII")
_LENGTH = struct.Struct("<Q")

_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in (
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "bool",
        "uint16",
        "uint32",
        "uint64",
    )
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_DEVICE = re.compile(r"^(cpu|meta|cuda|mps)(:[0-9]{1,3})?$")
#: Built-in exception classes a remote exception may become (anything else: its first such base).
_EXCEPTIONS = {
    name: cls
    for name, cls in vars(builtins).items()
    if isinstance(cls, type) and issubclass(cls, BaseException) and issubclass(cls, Exception)
}  # never SystemExit, KeyboardInterrupt, BaseException itself...


class CodecError(ValueError):
    """A value could not be encoded, or a message is not one this decoder accepts."""


@dataclass(frozen=True)
class CodecLimits:
    """What one message may hold.

    Attributes:
        max_bytes: the whole message.
        max_header_bytes: the JSON header (all numbers, strings and the structure).
        max_depth: nesting of containers.
        max_nodes: values in the message, counting containers and their items.
        max_buffers: raw buffers (tensors and bytes).
        max_rank: dimensions of one tensor.
        max_string: characters of one string.
    """

    max_bytes: int = 2 << 30
    max_header_bytes: int = 64 << 20
    max_depth: int = 64
    max_nodes: int = 1_000_000
    max_buffers: int = 100_000
    max_rank: int = 16
    max_string: int = 16 << 20


DEFAULT_LIMITS = CodecLimits()


@dataclass(frozen=True)
class RefInfo:
    """What a ``ref`` node says about the object it stands for."""

    side: str
    id: int
    type_module: str
    type_name: str
    callable: bool
    arity: int | None = None  # positional parameters a callable requires (None: unknown or *args)


Exporter = Callable[[Any], RefInfo]
Resolver = Callable[[RefInfo], Any]


class RemoteTraceback(str):
    """The sender's traceback text of a remote exception (``error.remote_traceback``)."""


# -- encoding ----------------------------------------------------------------------------------
def encode(
    value: Any, export: Exporter | None = None, limits: CodecLimits = DEFAULT_LIMITS, modules_by_value: bool = False
) -> bytes:
    """``value`` as one message; objects that are not data become handles through ``export``.

    With ``modules_by_value``, modules of ``torch.nn`` and ``segutils`` classes are sent as ``module``
    nodes (a copy), each still exported so that the receiver can name it when it reports its new state.

    Raises:
        CodecError: a value is not data and there is no ``export``, or the message would break ``limits``.
    """
    encoder = _Encoder(export, limits)
    encoder.modules_by_value = modules_by_value
    tree = encoder.node(value, 0)
    header = json.dumps(tree, separators=(",", ":"), allow_nan=True).encode("utf-8")
    if len(header) > limits.max_header_bytes:
        raise CodecError(f"the message header is {len(header)} bytes, more than {limits.max_header_bytes}")
    parts = [_PREFIX.pack(MAGIC, len(header), len(encoder.buffers))]
    parts += [_LENGTH.pack(len(b)) for b in encoder.buffers]
    parts.append(header)
    parts += encoder.buffers
    total = sum(len(p) for p in parts)
    if total > limits.max_bytes:
        raise CodecError(f"the message is {total} bytes, more than {limits.max_bytes}")
    return b"".join(parts)


class _Encoder:
    def __init__(self, export: Exporter | None, limits: CodecLimits) -> None:
        self.export = export
        self.limits = limits
        self.buffers: list[bytes] = []
        self.nodes = 0
        self.modules_by_value = False

    def buffer(self, data: bytes) -> int:
        self.buffers.append(data)
        if len(self.buffers) > self.limits.max_buffers:
            raise CodecError(f"more than {self.limits.max_buffers} tensors or byte strings in one message")
        return len(self.buffers) - 1

    def node(self, value: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise CodecError(f"more than {self.limits.max_nodes} values in one message")
        if depth > self.limits.max_depth:
            raise CodecError(f"values nested deeper than {self.limits.max_depth} levels (a cycle?)")
        if value is None or isinstance(value, bool):
            return bool(value) if value is not None else None
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            if len(value) > self.limits.max_string:
                raise CodecError(f"a string of {len(value)} characters, more than {self.limits.max_string}")
            return str(value)
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if isinstance(value, torch.Size):
            return {"t": "size", "v": [int(s) for s in value]}
        if isinstance(value, list):
            return [self.node(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return {"t": "tuple", "v": [self.node(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            kind = "odict" if isinstance(value, collections.OrderedDict) else "dict"
            return {"t": kind, "v": [[self.node(k, depth + 1), self.node(v, depth + 1)] for k, v in value.items()]}
        if isinstance(value, (set, frozenset)):
            kind = "frozenset" if isinstance(value, frozenset) else "set"
            return {"t": kind, "v": [self.node(v, depth + 1) for v in value]}
        if isinstance(value, (bytes, bytearray)):
            return {"t": "bytes", "b": self.buffer(bytes(value))}
        if isinstance(value, complex):
            return {"t": "complex", "v": [value.real, value.imag]}
        if isinstance(value, slice):
            return {"t": "slice", "v": [self.node(v, depth + 1) for v in (value.start, value.stop, value.step)]}
        if isinstance(value, range):
            return {"t": "range", "v": [value.start, value.stop, value.step]}
        if value is Ellipsis:
            return {"t": "ellipsis"}
        if isinstance(value, torch.dtype):
            if value not in _DTYPE_NAMES:
                raise CodecError(f"the dtype {value} cannot cross the grading channel")
            return {"t": "dtype", "v": _DTYPE_NAMES[value]}
        if isinstance(value, torch.device):
            return {"t": "device", "v": str(value)}
        if isinstance(value, BaseException):
            return self.exception(value)
        if (
            self.modules_by_value
            and isinstance(value, torch.nn.Module)
            and module_class(type(value).__module__, type(value).__qualname__) is type(value)
        ):
            mid = self.export(value).id if self.export is not None else None
            return {
                "t": "module",
                "m": type(value).__module__,
                "n": type(value).__qualname__,
                "mid": mid,
                "state": self.node(dict(vars(value)), depth + 1),
            }
        if self.export is None:
            raise CodecError(f"a {type(value).__name__} is not data and cannot cross the grading channel")
        ref = self.export(value)
        node = {"t": "ref", "side": ref.side, "id": ref.id, "m": ref.type_module, "n": ref.type_name, "c": ref.callable}
        if ref.arity is not None:
            node["a"] = ref.arity
        return node

    def tensor(self, t: torch.Tensor) -> dict:
        t = t.as_subclass(torch.Tensor) if type(t) not in (torch.Tensor, torch.nn.Parameter) else t
        if t.layout != torch.strided or t.is_quantized or getattr(t, "is_nested", False):
            raise CodecError(f"a {t.layout} tensor cannot cross the grading channel (only strided tensors)")
        if t.dtype not in _DTYPE_NAMES:
            raise CodecError(f"a tensor of dtype {t.dtype} cannot cross the grading channel")
        node = {
            "t": "tensor",
            "dtype": _DTYPE_NAMES[t.dtype],
            "device": str(t.device),
            "rg": bool(t.requires_grad),
            "param": isinstance(t, torch.nn.Parameter),
        }
        data = t.detach()
        if data.is_conj():
            data = data.resolve_conj()
        if data.is_neg():
            data = data.resolve_neg()
        shape, strides = list(data.shape), list(data.stride())
        span = _span(shape, strides)
        if span > 2 * data.numel() + 1024:  # a sparse view of a big storage: send its values, not the storage
            data = data.contiguous()
            strides, span = list(data.stride()), data.numel()
        node["shape"], node["strides"] = shape, strides
        if data.device.type == "meta":
            return node
        flat = torch.as_strided(data, (span,), (1,), data.storage_offset()) if span else data.new_empty(0)
        flat = flat.cpu().contiguous()
        node["b"] = self.buffer(flat.view(torch.uint8).numpy().tobytes() if span else b"")
        return node

    def exception(self, error: BaseException) -> dict:
        import traceback

        names = [cls.__name__ for cls in type(error).__mro__ if issubclass(cls, BaseException)]
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return {
            "t": "exc",
            "types": names[:20],
            "msg": str(error)[:20_000],
            "tb": getattr(error, "remote_traceback", "") or text[-20_000:],
        }


def _span(shape: list[int], strides: list[int]) -> int:
    """Elements of storage a tensor of ``shape`` and ``strides`` reaches (0 when it has none)."""
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(shape, strides))


# -- decoding ----------------------------------------------------------------------------------
def decode(
    data: bytes,
    resolve: Resolver | None = None,
    limits: CodecLimits = DEFAULT_LIMITS,
    modules: Callable[[int | None, torch.nn.Module], None] | None = None,
) -> Any:
    """The value of a message made by :func:`encode`; ``resolve`` turns ``ref`` nodes into objects;
    ``modules`` (if given) accepts ``module`` nodes and is told of each module rebuilt.

    Raises:
        CodecError: the message is malformed, breaks ``limits`` or holds anything but the kinds above.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"a message must be bytes, got {type(data).__name__}")
    data = memoryview(data)
    if len(data) > limits.max_bytes:
        raise CodecError(f"the message is {len(data)} bytes, more than {limits.max_bytes}")
    if len(data) < _PREFIX.size:
        raise CodecError("the message is shorter than its prefix")
    magic, header_len, count = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise CodecError("the message does not start with the grading channel's magic bytes")
    if header_len > limits.max_header_bytes:
        raise CodecError(f"the message header is {header_len} bytes, more than {limits.max_header_bytes}")
    if count > limits.max_buffers:
        raise CodecError(f"the message has {count} buffers, more than {limits.max_buffers}")
    offset = _PREFIX.size
    if len(data) < offset + count * _LENGTH.size + header_len:
        raise CodecError("the message is shorter than its buffer table and header")
    lengths = [_LENGTH.unpack_from(data, offset + i * _LENGTH.size)[0] for i in range(count)]
    offset += count * _LENGTH.size
    header = bytes(data[offset : offset + header_len])
    offset += header_len
    if offset + sum(lengths) != len(data):
        raise CodecError(f"the message's buffers hold {len(data) - offset} bytes, its table says {sum(lengths)}")
    buffers = []
    for length in lengths:
        buffers.append(data[offset : offset + length])
        offset += length
    try:
        tree = json.loads(header.decode("utf-8"))
    except RecursionError:
        raise CodecError("the message header is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise CodecError(f"the message header is not valid JSON ({str(error)[:200]})") from None
    decoder = _Decoder(buffers, resolve, limits)
    decoder.modules = modules
    return decoder.node(tree, 0)


class _Decoder:
    def __init__(self, buffers: list[memoryview], resolve: Resolver | None, limits: CodecLimits) -> None:
        self.buffers = buffers
        self.used: set[int] = set()
        self.resolve = resolve
        self.limits = limits
        self.nodes = 0
        self.modules: Callable[[int | None, torch.nn.Module], None] | None = None

    def buffer(self, index: Any) -> memoryview:
        if not _is_int(index) or not 0 <= index < len(self.buffers):
            raise CodecError(f"a buffer index {index!r} outside the message's {len(self.buffers)} buffers")
        if index in self.used:
            raise CodecError(f"buffer {index} is used twice")
        self.used.add(index)
        return self.buffers[index]

    def items(self, node: dict, depth: int, key: str = "v") -> list:
        items = node.get(key)
        if not isinstance(items, list):
            raise CodecError(f"a {node.get('t')} node without its list of items")
        return [self.node(v, depth + 1) for v in items]

    def node(self, node: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise CodecError(f"more than {self.limits.max_nodes} values in one message")
        if depth > self.limits.max_depth:
            raise CodecError(f"values nested deeper than {self.limits.max_depth} levels")
        if node is None or isinstance(node, (bool, int, float)):
            return node
        if isinstance(node, str):
            if len(node) > self.limits.max_string:
                raise CodecError(f"a string of {len(node)} characters, more than {self.limits.max_string}")
            return node
        if isinstance(node, list):
            return [self.node(v, depth + 1) for v in node]
        if not isinstance(node, dict):
            raise CodecError(f"a JSON value of type {type(node).__name__} in the message")
        kind = node.get("t")
        if kind == "tuple":
            return tuple(self.items(node, depth))
        if kind in ("dict", "odict"):
            pairs = node.get("v")
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise CodecError("a dict node whose items are not [key, value] pairs")
            out = {} if kind == "dict" else collections.OrderedDict()
            for k, v in pairs:
                key = self.node(k, depth + 1)
                try:
                    hash(key)
                except TypeError:
                    raise CodecError(f"a dict key of type {type(key).__name__} (not hashable)") from None
                out[key] = self.node(v, depth + 1)
            return out
        if kind in ("set", "frozenset"):
            values = self.items(node, depth)
            try:
                return set(values) if kind == "set" else frozenset(values)
            except TypeError:
                raise CodecError(f"a {kind} holding an unhashable value") from None
        if kind == "bytes":
            return bytes(self.buffer(node.get("b")))
        if kind == "complex":
            re_im = node.get("v")
            if not (isinstance(re_im, list) and len(re_im) == 2 and all(_is_number(x) for x in re_im)):
                raise CodecError("a complex node without [re, im]")
            return complex(*re_im)
        if kind == "slice":
            parts = self.items(node, depth)
            if len(parts) != 3:
                raise CodecError("a slice node without [start, stop, step]")
            return slice(*parts)
        if kind == "range":
            parts = node.get("v")
            if not (isinstance(parts, list) and len(parts) == 3 and all(_is_int(p) for p in parts)) or parts[2] == 0:
                raise CodecError("a range node without [start, stop, step] ints (step not 0)")
            return range(*parts)
        if kind == "ellipsis":
            return Ellipsis
        if kind == "dtype":
            return _dtype(node.get("v"))
        if kind == "device":
            return torch.device(_device(node.get("v")))
        if kind == "size":
            dims = node.get("v")
            if not (
                isinstance(dims, list)
                and len(dims) <= self.limits.max_rank
                and all(_is_int(d) and d >= 0 for d in dims)
            ):
                raise CodecError("a size node that is not a list of non-negative ints")
            return torch.Size(dims)
        if kind == "tensor":
            return self.tensor(node)
        if kind == "exc":
            return _exception(node)
        if kind == "ref":
            return self.ref(node)
        if kind == "module":
            return self.module(node, depth)
        raise CodecError(f"unknown value kind {kind!r} in the message")

    def tensor(self, node: dict) -> torch.Tensor:
        dtype = _dtype(node.get("dtype"))
        device = _device(node.get("device"))
        shape, strides = node.get("shape"), node.get("strides")
        if not (isinstance(shape, list) and isinstance(strides, list) and len(shape) == len(strides)):
            raise CodecError("a tensor node whose shape and strides are not lists of the same length")
        if len(shape) > self.limits.max_rank:
            raise CodecError(f"a tensor of rank {len(shape)}, more than {self.limits.max_rank}")
        if not all(_is_int(s) and 0 <= s < 1 << 48 for s in shape + strides):
            raise CodecError("a tensor whose shape or strides are not non-negative ints")
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        span = _span(shape, strides)
        if max(numel, span) * itemsize > self.limits.max_bytes:
            raise CodecError(f"a tensor of shape {shape} is larger than {self.limits.max_bytes} bytes")
        requires_grad = node.get("rg", False)
        if not isinstance(requires_grad, bool) or not isinstance(node.get("param", False), bool):
            raise CodecError("a tensor node whose requires_grad or param flag is not a bool")
        if requires_grad and not (dtype.is_floating_point or dtype.is_complex):
            raise CodecError(f"a tensor of dtype {dtype} cannot require grad")
        if device.startswith("meta"):
            if "b" in node:
                raise CodecError("a meta tensor with data")
            tensor = torch.empty_strided(shape, strides, dtype=dtype, device="meta")
        else:
            raw = self.buffer(node.get("b"))
            if len(raw) != span * itemsize:
                raise CodecError(
                    f"a tensor of shape {shape} and strides {strides} needs {span * itemsize} bytes, "
                    f"its buffer has {len(raw)}"
                )
            base = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if span else torch.empty(0, dtype=torch.uint8)
            tensor = torch.as_strided(base.view(dtype), shape, strides, 0)
            if device != "cpu":
                try:
                    tensor = _to_device(tensor, torch.device(device))
                except (RuntimeError, AssertionError) as error:
                    raise CodecError(f"a tensor on {device}, which this process cannot use ({error})") from None
        if node.get("param"):
            return torch.nn.Parameter(tensor, requires_grad=requires_grad)
        return tensor.requires_grad_(requires_grad)

    def module(self, node: dict, depth: int) -> torch.nn.Module:
        if self.modules is None:
            raise CodecError("a module where only data is accepted")
        mid = node.get("mid")
        if not (mid is None or _is_int(mid)):
            raise CodecError("a malformed module node")
        cls = module_class(node.get("m"), node.get("n"))
        if cls is None:
            raise CodecError(f"a module of class {node.get('m')!r}.{node.get('n')!r}, not one of torch.nn or segutils")
        state = self.node(node.get("state"), depth + 1)
        if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise CodecError("a module node whose state is not a dict of names")
        module = cls.__new__(cls)
        try:
            module.__setstate__(state)
        except Exception as error:  # noqa: BLE001 - a state this class does not take
            raise CodecError(f"a {cls.__name__} could not be rebuilt ({type(error).__name__}: {error})") from None
        self.modules(mid, module)
        return module

    def ref(self, node: dict) -> Any:
        if self.resolve is None:
            raise CodecError("a handle to a remote object where only data is accepted")
        side, ident, module, name, is_callable, arity = (node.get(k) for k in ("side", "id", "m", "n", "c", "a"))
        if (
            side not in ("s", "g")
            or not _is_int(ident)
            or not isinstance(module, str)
            or not isinstance(name, str)
            or not isinstance(is_callable, bool)
            or len(module) > 200
            or len(name) > 200
            or not (arity is None or (_is_int(arity) and 0 <= arity <= 64))
        ):
            raise CodecError("a malformed handle node")
        return self.resolve(RefInfo(side, ident, module, name, is_callable, arity))


def module_class(module: Any, qualname: Any) -> type | None:
    """The ``nn.Module`` subclass ``module.qualname`` if it is one of ``torch.nn`` or ``segutils`` (not
    ``segutils.grading``) and importable; else ``None``."""
    if not (isinstance(module, str) and isinstance(qualname, str)) or "<" in qualname:
        return None
    if not (module == "torch.nn" or module.startswith(("torch.nn.", "segutils."))) or module.startswith(
        "segutils.grading"
    ):
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, torch.nn.Module) else None


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` with the same strides (``Tensor.to`` would make it contiguous)."""
    out = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=device)
    storage = torch.as_strided(tensor, (_span(list(tensor.shape), list(tensor.stride())),), (1,), 0)
    torch.as_strided(out, storage.shape, (1,), 0).copy_(storage)
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _dtype(name: Any) -> torch.dtype:
    if not isinstance(name, str) or name not in _DTYPES:
        raise CodecError(f"unknown tensor dtype {name!r}")
    return _DTYPES[name]


def _device(name: Any) -> str:
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise CodecError(f"unknown device {name!r}")
    return name


def _exception(node: dict) -> BaseException:
    names, message, tb = node.get("types"), node.get("msg"), node.get("tb", "")
    if not (
        isinstance(names, list)
        and all(isinstance(n, str) for n in names)
        and isinstance(message, str)
        and isinstance(tb, str)
    ):
        raise CodecError("a malformed exception node")
    cls = next((_EXCEPTIONS[n] for n in names if n in _EXCEPTIONS), Exception)
    try:
        error = cls(message)
    except Exception:  # noqa: BLE001 - a built-in class with other constructor arguments (UnicodeError kinds)
        error = Exception(message)
    error.remote_types = tuple(names[:20])  # type: ignore[attr-defined]
    error.remote_traceback = RemoteTraceback(tb)  # type: ignore[attr-defined]
    return error
