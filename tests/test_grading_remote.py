"""The two-process grading layer: codec, channel, proxies, autograd bridge, probes."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from segutils.grading.remote import codec
from segutils.grading.remote.codec import CodecError, CodecLimits, decode, encode


def roundtrip(value, **kwargs):
    return decode(encode(value, **kwargs), **kwargs)


# -- codec ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2**80, 1.5, float("inf"), "text", "", "ünïcode", [1, [2, [3]]], (1, "a", None),
    {"a": 1, 2: (3, 4), (5, 6): [7]}, {1, 2, 3}, frozenset({"x"}), b"\x00\xffbytes", 3 + 4j, slice(1, None, 2),
    range(2, 10, 3), Ellipsis, torch.float64, torch.bfloat16, torch.device("cpu"), torch.device("meta"),
    torch.Size([2, 3]), (), [], {},
])
def test_plain_values_round_trip(value):
    got = roundtrip(value)
    assert got == value and type(got) is type(value)


def test_nan_round_trips():
    got = roundtrip(float("nan"))
    assert got != got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int8, torch.uint8, torch.bool, torch.complex64])
def test_tensors_round_trip_bit_exact(dtype):
    torch.manual_seed(0)
    x = (torch.randn(3, 4, 5) * 100).to(dtype)
    got = roundtrip(x)
    assert got.dtype == dtype and got.shape == x.shape and got.stride() == x.stride()
    assert torch.equal(got.view(-1).view(torch.uint8) if dtype != torch.bool else got, x.view(-1).view(torch.uint8)
                       if dtype != torch.bool else x)
    assert got.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("make", [
    lambda x: x.transpose(1, 2),
    lambda x: x.contiguous(memory_format=torch.channels_last),
    lambda x: x[:, ::2, 1:, ::3],
    lambda x: x[0, 0, 0, 0],  # a 0-d view with an offset
    lambda x: x[:, :1].expand(2, 5, 6, 7),  # zero strides
    lambda x: x[:, :, :0],  # no elements
])
def test_non_contiguous_strides_are_kept(make):
    x = make(torch.arange(2 * 3 * 6 * 7, dtype=torch.float64).reshape(2, 3, 6, 7))
    got = roundtrip(x)
    assert torch.equal(got, x) and got.shape == x.shape and got.stride() == x.stride()


def test_a_sparse_view_of_a_big_storage_sends_its_values_only():
    big = torch.randn(1000, 1000)
    view = big[::500, ::500]
    message = encode(view)
    assert len(message) < 10_000
    assert torch.equal(decode(message), view)


def test_meta_tensors_requires_grad_and_parameters():
    meta = torch.empty_strided((2, 3), (1, 2), device="meta", dtype=torch.float16)
    got = roundtrip(meta)
    assert got.device.type == "meta" and got.shape == (2, 3) and got.stride() == (1, 2) and got.dtype == torch.float16
    x = torch.randn(2, 2, requires_grad=True)
    got = roundtrip({"x": x, "p": torch.nn.Parameter(torch.ones(3))})
    assert got["x"].requires_grad and got["x"].is_leaf and torch.equal(got["x"], x)
    assert isinstance(got["p"], torch.nn.Parameter) and got["p"].requires_grad


def test_tensor_subclasses_arrive_as_plain_tensors():
    class Liar(torch.Tensor):
        def __eq__(self, other):  # noqa: D105
            return True

    x = torch.arange(4.0).as_subclass(Liar)
    got = roundtrip(x)
    assert type(got) is torch.Tensor and torch.equal(got, torch.arange(4.0))


def test_exceptions_become_builtin_classes_with_the_message():
    class MyError(ValueError):
        pass

    try:
        raise MyError("patch_size must be odd")
    except MyError as error:
        got = roundtrip(error)
    assert type(got) is ValueError and str(got) == "patch_size must be odd"
    assert got.remote_types[0] == "MyError" and "patch_size must be odd" in got.remote_traceback
    assert type(roundtrip(torch.cuda.OutOfMemoryError("oom"))) is RuntimeError


def test_objects_that_are_not_data_need_an_exporter():
    with pytest.raises(CodecError, match="not data"):
        encode(object())
    seen = []

    def export(obj):
        seen.append(obj)
        return codec.RefInfo("s", 7, type(obj).__module__, type(obj).__qualname__, callable(obj))

    message = encode([print, 1], export=export)
    assert seen == [print]
    with pytest.raises(CodecError, match="handle"):
        decode(message)
    got = decode(message, resolve=lambda ref: ("proxy", ref.side, ref.id, ref.type_name, ref.callable))
    assert got == [("proxy", "s", 7, "builtin_function_or_method", True), 1]


def _message(header, buffers=()):
    head = json.dumps(header).encode()
    return (struct.pack("<4sII", b"SGR1", len(head), len(buffers)) + b"".join(struct.pack("<Q", len(b)) for b in buffers)
            + head + b"".join(buffers))


@pytest.mark.parametrize("data, problem", [
    (b"", "shorter"),
    (b"XXXX" + b"\0" * 8, "magic"),
    (_message({"t": "pickle", "v": "cos\nsystem\n"}), "unknown value kind 'pickle'"),
    (_message({"t": "tensor", "dtype": "object", "shape": [1], "strides": [1], "device": "cpu", "b": 0}, [b"x"]),
     "unknown tensor dtype"),
    (_message({"t": "tensor", "dtype": "float32", "shape": [4], "strides": [1], "device": "cpu", "b": 0}, [b"x" * 8]),
     "needs 16 bytes"),
    (_message({"t": "tensor", "dtype": "float32", "shape": [1 << 40], "strides": [1], "device": "cpu", "b": 0}, [b""]),
     "larger than"),
    (_message({"t": "tensor", "dtype": "float32", "shape": [1] * 40, "strides": [1] * 40, "device": "cpu"}), "rank"),
    (_message({"t": "tensor", "dtype": "float32", "shape": [-1], "strides": [1], "device": "cpu"}), "non-negative"),
    (_message({"t": "tensor", "dtype": "float32", "shape": [1], "strides": [1], "device": "tpu", "b": 0},
              [b"\0" * 4]), "unknown device"),
    (_message({"t": "bytes", "b": 3}), "outside"),
    (_message([{"t": "bytes", "b": 0}, {"t": "bytes", "b": 0}], [b"ab"]), "used twice"),
    (_message({"t": "dict", "v": [[[1], 2]]}), "not hashable"),
    (_message({"t": "exc", "types": 3, "msg": "x"}), "malformed exception"),
    (_message({"t": "ref", "side": "s", "id": 1, "m": "x", "n": "y", "c": True}), "handle"),
    (_message([1]) + b"trailing", "table says"),
    (struct.pack("<4sII", b"SGR1", 5, 0) + b"{nope", "not valid JSON"),
])
def test_the_decoder_rejects_bad_messages_with_a_message(data, problem):
    with pytest.raises(CodecError, match=problem):
        decode(data)


def test_the_decoder_enforces_depth_count_and_size_limits():
    deep = [[[[[[1]]]]]]
    limits = CodecLimits(max_depth=4)
    with pytest.raises(CodecError, match="nested deeper"):
        decode(encode(deep), limits=limits)
    with pytest.raises(CodecError, match="nested"):
        decode(_raw_header("[" * 100_000 + "]" * 100_000))
    with pytest.raises(CodecError, match="values in one message"):
        decode(encode(list(range(100))), limits=CodecLimits(max_nodes=50))
    with pytest.raises(CodecError, match="bytes, more than"):
        decode(encode(torch.zeros(1000)), limits=CodecLimits(max_bytes=1000))
    with pytest.raises(CodecError, match="characters"):
        decode(encode("x" * 100), limits=CodecLimits(max_string=10))
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(CodecError, match="deeper"):
        encode(cycle)


def _raw_header(text):
    head = text.encode()
    return struct.pack("<4sII", b"SGR1", len(head), 0) + head
