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
@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**80,
        1.5,
        float("inf"),
        "text",
        "",
        "ünïcode",
        [1, [2, [3]]],
        (1, "a", None),
        {"a": 1, 2: (3, 4), (5, 6): [7]},
        {1, 2, 3},
        frozenset({"x"}),
        b"\x00\xffbytes",
        3 + 4j,
        slice(1, None, 2),
        range(2, 10, 3),
        Ellipsis,
        torch.float64,
        torch.bfloat16,
        torch.device("cpu"),
        torch.device("meta"),
        torch.Size([2, 3]),
        (),
        [],
        {},
    ],
)
def test_plain_values_round_trip(value):
    got = roundtrip(value)
    assert got == value and type(got) is type(value)


def test_nan_round_trips():
    got = roundtrip(float("nan"))
    assert got != got


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
    ],
)
def test_tensors_round_trip_bit_exact(dtype):
    torch.manual_seed(0)
    x = (torch.randn(3, 4, 5) * 100).to(dtype)
    got = roundtrip(x)
    assert got.dtype == dtype and got.shape == x.shape and got.stride() == x.stride()
    assert torch.equal(
        got.view(-1).view(torch.uint8) if dtype != torch.bool else got,
        x.view(-1).view(torch.uint8) if dtype != torch.bool else x,
    )
    assert got.data_ptr() != x.data_ptr()


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.transpose(1, 2),
        lambda x: x.contiguous(memory_format=torch.channels_last),
        lambda x: x[:, ::2, 1:, ::3],
        lambda x: x[0, 0, 0, 0],  # a 0-d view with an offset
        lambda x: x[:, :1].expand(2, 5, 6, 7),  # zero strides
        lambda x: x[:, :, :0],  # no elements
    ],
)
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
    return (
        struct.pack("<4sII", b"SGR1", len(head), len(buffers))
        + b"".join(struct.pack("<Q", len(b)) for b in buffers)
        + head
        + b"".join(buffers)
    )


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"", "shorter"),
        (b"XXXX" + b"\0" * 8, "magic"),
        (_message({"t": "pickle", "v": "cos\nsystem\n"}), "unknown value kind 'pickle'"),
        (
            _message({"t": "tensor", "dtype": "object", "shape": [1], "strides": [1], "device": "cpu", "b": 0}, [b"x"]),
            "unknown tensor dtype",
        ),
        (
            _message(
                {"t": "tensor", "dtype": "float32", "shape": [4], "strides": [1], "device": "cpu", "b": 0}, [b"x" * 8]
            ),
            "needs 16 bytes",
        ),
        (
            _message(
                {"t": "tensor", "dtype": "float32", "shape": [1 << 40], "strides": [1], "device": "cpu", "b": 0}, [b""]
            ),
            "larger than",
        ),
        (
            _message({"t": "tensor", "dtype": "float32", "shape": [1] * 40, "strides": [1] * 40, "device": "cpu"}),
            "rank",
        ),
        (_message({"t": "tensor", "dtype": "float32", "shape": [-1], "strides": [1], "device": "cpu"}), "non-negative"),
        (
            _message(
                {"t": "tensor", "dtype": "float32", "shape": [1], "strides": [1], "device": "tpu", "b": 0}, [b"\0" * 4]
            ),
            "unknown device",
        ),
        (_message({"t": "bytes", "b": 3}), "outside"),
        (_message([{"t": "bytes", "b": 0}, {"t": "bytes", "b": 0}], [b"ab"]), "used twice"),
        (_message({"t": "dict", "v": [[[1], 2]]}), "not hashable"),
        (_message({"t": "exc", "types": 3, "msg": "x"}), "malformed exception"),
        (_message({"t": "ref", "side": "s", "id": 1, "m": "x", "n": "y", "c": True}), "handle"),
        (_message([1]) + b"trailing", "table says"),
        (struct.pack("<4sII", b"SGR1", 5, 0) + b"{nope", "not valid JSON"),
    ],
)
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


# -- channel, proxies, autograd, probes ------------------------------------------------------------
import contextlib  # noqa: E402
import threading  # noqa: E402

from segutils.grading.remote import probes  # noqa: E402
from segutils.grading.remote.channel import Channel, ChannelError, Endpoint, Policy, socket_pair  # noqa: E402
from segutils.grading.remote.proxy import RemoteObject, grader_side_proxy  # noqa: E402
from segutils.grading.remote.student import serve_session  # noqa: E402


@contextlib.contextmanager
def student(namespace, timeout=30):
    """A student-side session serving ``namespace`` in a thread; yields a lookup function for the grader."""
    grader_sock, student_sock = socket_pair()
    errors = []

    def run():
        try:
            serve_session(student_sock, namespace)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    endpoint = Endpoint(Channel(grader_sock), "g", Policy.grader(), grader_side_proxy, timeout=timeout)

    def lookup(name):
        return endpoint.request("lookup", name=name)

    lookup.endpoint = endpoint
    try:
        yield lookup
    finally:
        try:
            endpoint.request("resume")
        finally:
            endpoint.close()
            thread.join(10)
    assert not errors, errors


def test_proxied_calls_values_and_exceptions():
    def extract(images, p=3):
        if images.ndim != 4:
            raise ValueError(f"images must be 4-D, got {images.ndim}-D")
        return images.transpose(2, 3) * p

    ns = {"extract": extract, "CONSTANT": 7, "table": {"a": [1, 2]}}
    with student(ns) as lookup:
        f = lookup("extract")
        assert isinstance(f, RemoteObject) and type(f).__name__ == "function" and f.__name__ == "extract"
        x = torch.randn(1, 2, 3, 4)
        out = f(x, p=2)
        assert type(out) is torch.Tensor and torch.equal(out, x.transpose(2, 3) * 2)
        assert out.stride() == x.transpose(2, 3).stride()
        with pytest.raises(ValueError, match="4-D"):
            f(torch.zeros(3))
        assert lookup("CONSTANT") == 7 and lookup("table") == {"a": [1, 2]}
        with pytest.raises(NameError, match="nope"):
            lookup("nope")


def test_modules_stay_in_the_student_process_and_are_proxied():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    with student({"net": net}) as lookup:
        remote = lookup("net")
        assert type(remote).__name__ == "Sequential" and type(remote).__module__ == "torch.nn.modules.container"
        x = torch.randn(2, 3, 5, 5)
        with torch.no_grad():
            assert torch.allclose(remote(x), net(x))
        params = list(remote.parameters())
        assert [p.shape for p in params] == [p.shape for p in net.parameters()]
        assert len(remote) == 2 and type(remote[1]).__name__ == "ReLU"
        remote.eval()
        assert net.training is False and remote.training is False
        assert "Conv2d" in repr(remote)


def test_grader_callables_are_called_back_but_not_inspected():
    secret = "hidden test constant 31337"
    sizes = []

    def classifier(windows):  # defined by a test: the student may call it, not read it
        sizes.append(windows.shape[0])
        return windows.mean(dim=(2, 3)) + len(secret) * 0

    def segment(clf, x, chunk):
        return torch.cat([clf(c) for c in x.split(chunk)])

    def snoop(clf):
        return clf.__globals__

    with student({"segment": segment, "snoop": snoop}) as lookup:
        x = torch.randn(10, 2, 3, 3)
        got = lookup("segment")(classifier, x, 4)
        assert torch.allclose(got, x.mean(dim=(2, 3))) and sizes == [4, 4, 2]
        with pytest.raises(AttributeError, match="can only be called"):
            lookup("snoop")(classifier)


def test_the_grader_refuses_anything_but_calls_of_what_it_sent():
    grader_sock, student_sock = socket_pair()
    grader = Endpoint(Channel(grader_sock), "g", Policy.grader(), grader_side_proxy, timeout=10)
    fake = Endpoint(Channel(student_sock), "s", Policy.student(dict), grader_side_proxy, timeout=10)
    results = []

    def attack():
        for op, fields in [("lookup", {"name": "secret"}), ("getattr", {"target": None, "name": "x"}), ("names", {})]:
            try:
                fake.request(op, **fields)
            except Exception as error:  # noqa: BLE001
                results.append(type(error).__name__)
        fake.channel.send(b"\0" * 8)  # an empty, malformed message
        fake.request("resume") if False else None

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    with pytest.raises(ChannelError, match="does not accept"):
        grader.serve(until=lambda m: False)
    thread.join(10)
    assert results == ["PermissionError"] * 3


def test_autograd_bridge_passes_gradcheck_on_a_student_function():
    def extract(images, p):
        n, c, h, w = images.shape
        return torch.nn.functional.unfold(images, p, padding=p // 2).transpose(1, 2).reshape(n * h * w, c, p, p)

    def wrong(images, p):  # a wrong backward: the student's custom Function doubles the gradient
        class Double(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, g):
                return 2 * g

        return Double.apply(images)

    def detached(images, p):
        return images.detach() * 2

    with student({"extract": extract, "wrong": wrong, "detached": detached}) as lookup:
        remote = lookup("extract")
        images = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
        out = remote(images, 3)
        assert out.requires_grad and out.dtype == torch.float64
        assert torch.autograd.gradcheck(lambda t: remote(t, 3), (images,))
        out.sum().backward()
        assert torch.equal(images.grad, torch.autograd.grad(extract(images, 3).sum(), images)[0])
        with pytest.raises(__import__("torch.autograd.gradcheck", fromlist=["GradcheckError"]).GradcheckError):
            torch.autograd.gradcheck(lambda t: lookup("wrong")(t, 3), (images,))
        assert not lookup("detached")(images, 3).requires_grad


def test_probes_measure_in_the_student_process():
    from segutils import testing

    probes.install()
    probes.take_measured()

    def looped(x):
        return torch.stack([x[..., i].sum() for i in range(x.shape[-1])])

    def vectorized(x):
        return x.sum(dim=tuple(range(x.ndim - 1)))

    def fixed_device(x):
        return x + torch.ones(x.shape)  # a CPU tensor: fails on meta

    with student({"looped": looped, "vectorized": vectorized, "fixed_device": fixed_device}) as lookup:
        counts = testing.count_ops(lookup("vectorized"), torch.randn(3, 4))
        assert isinstance(counts, __import__("collections").Counter) and testing.total_ops(counts) >= 1
        testing.assert_vectorized(lookup("vectorized"), lambda size: (torch.randn(size, size),), sizes=(4, 8))
        with pytest.raises(AssertionError):
            testing.assert_vectorized(lookup("looped"), lambda size: (torch.randn(size, size),), sizes=(4, 8))
        out = testing.check_device_agnostic(lookup("vectorized"), torch.randn(2, 3))
        assert out.device.type == "meta"
        with pytest.raises(AssertionError):
            testing.check_device_agnostic(lookup("fixed_device"), torch.randn(2, 3))
        with pytest.raises(AssertionError):
            testing.forbid_ops(lookup("vectorized"), "aten.sum", torch.randn(2, 3))
        with pytest.raises(AssertionError):
            with testing.forbid_ops("aten.sum"):
                lookup("vectorized")(torch.randn(2, 3))
    assert set(probes.take_measured()) == {"count_ops", "assert_vectorized", "check_device_agnostic", "forbid_ops"}
    # Without a proxy the checks are the local ones (the vacuous-pass control: they see local ops).
    with pytest.raises(AssertionError):
        testing.assert_vectorized(looped, lambda size: (torch.randn(size, size),), sizes=(4, 8))
    assert probes.take_measured() == []


def test_grader_modules_travel_as_copies_whose_changes_come_back():
    from segutils.models import PatchClassifier

    torch.manual_seed(0)
    clf = PatchClassifier(2, 3, 3, hidden=()).eval()
    modes = []
    clf.register_forward_pre_hook(lambda module, args: modes.append(module.training))

    def convolutionalize(classifier):  # reads the classifier's attributes: needs a real module
        lin = classifier.layers[1]
        conv = torch.nn.Conv2d(2, 3, classifier.patch_size, padding=classifier.patch_size // 2)
        conv.weight.data = lin.weight.reshape(3, 2, 3, 3).clone()
        conv.bias.data = lin.bias.clone()
        return conv

    def train(model):
        model.train()
        model(torch.randn(4, 2, 3, 3))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return model.to("meta") is model

    with student({"convolutionalize": convolutionalize, "train": train}) as lookup:
        conv = lookup("convolutionalize")(clf)
        assert type(conv).__name__ == "Conv2d"  # the student's module: a proxy
        x = torch.randn(1, 2, 5, 5)
        with torch.no_grad():
            want = (
                torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2) @ clf.layers[1].weight.T
                + clf.layers[1].bias
            )
            assert torch.allclose(conv(x), want.transpose(1, 2).reshape(1, 3, 5, 5), atol=1e-5)
        before = [p.detach().clone() for p in clf.parameters()]
        assert lookup("train")(clf) is True
    assert modes == [True]  # the hook registered in the grader ran (called back) with the student's copy
    assert clf.training and all(p.device.type == "meta" for p in clf.parameters())
    assert [p.shape for p in clf.parameters()] == [b.shape for b in before]


def test_only_the_student_side_accepts_module_copies():
    message = encode(torch.nn.Linear(2, 3), export=lambda o: codec.RefInfo("g", 1, "", "", True), modules_by_value=True)
    with pytest.raises(CodecError, match="module where only data"):
        decode(message, resolve=lambda ref: None)
    got = []
    linear = decode(message, resolve=lambda ref: None, modules=lambda mid, m: got.append(mid))
    assert type(linear) is torch.nn.Linear and got == [1] and linear.weight.shape == (3, 2)
    fake = _message({"t": "module", "m": "os", "n": "system", "mid": None, "state": {"t": "dict", "v": []}})
    with pytest.raises(CodecError, match="not one of torch.nn or segutils"):
        decode(fake, modules=lambda mid, m: None)


def test_a_test_watching_the_dispatcher_around_a_proxied_call_is_told_why_it_cannot():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with student({"double": lambda t: t * 2}) as lookup:
        remote = lookup("double")
        with pytest.raises(RuntimeError, match="watches PyTorch's dispatcher"):
            with Watch():
                remote(torch.ones(2))
        from segutils import testing

        probes.install()
        with testing.forbid_ops("aten.add"):  # segutils.testing's own modes are fine: the call runs under them remotely
            assert torch.equal(remote(torch.ones(2)), torch.full((2,), 2.0))


def test_only_the_students_own_names_are_offered():
    from segutils.grading.remote.student import student_namespace

    ns = {
        "In": [],
        "Out": {},
        "_": 1,
        "__": 2,
        "_i": "",
        "_ii": "",
        "_i7": "",
        "_7": 3,
        "_ih": [],
        "_oh": {},
        "_dh": [],
        "get_ipython": None,
        "_index": 4,
        "_im2col": 5,
        "square": 6,
        "__builtins__": None,
    }
    assert set(student_namespace(ns)) == {"_index", "_im2col", "square", "__builtins__"}


def test_exit_and_interrupt_from_the_student_arrive_as_ordinary_exceptions():
    for error in (SystemExit(3), KeyboardInterrupt(), BaseException("x")):
        got = roundtrip(error)
        assert type(got) is Exception


def test_the_grader_runs_the_locked_cells_that_use_only_its_own_names():
    import nbformat

    from segutils.grading.preprocessors import cell_plan, grader_cells

    def code(source, gid, **flags):
        meta = {"grade_id": gid, "locked": True, "grade": False, "solution": False, "schema_version": 3, **flags}
        return nbformat.v4.new_code_cell(source, metadata={"nbgrader": meta})

    nb = nbformat.v4.new_notebook(
        cells=[
            code("import torch\nfrom torch import nn", "setup"),
            code("def train_model(m):\n    return m", "answer", locked=False, solution=True),
            code("def helper(n):\n    return nn.Linear(n, n)", "helpers"),
            code("model = nn.Linear(2, 2)\nlosses = train_model(model)", "training"),  # the student's train_model
            code(
                "assert helper(2)(torch.ones(2)).shape == (2,)\nassert len(losses) == 2", "test", grade=True, points=1
            ),
            code("%matplotlib inline\nx = (", "broken"),
        ]
    )
    got = grader_cells(nb, cell_plan(nb)[0])
    assert [c["index"] for c in got] == [0, 2, 4]
    assert [c["kind"] for c in got] == ["locked", "locked", "graded"]


def test_two_process_grading_is_chosen_on_the_command_line_or_in_the_course(tmp_path):
    pytest.importorskip("nbgrader")
    import argparse

    from traitlets.config import Config

    from segutils.grading.cli import add_grade_parser
    from segutils.grading.preprocessors import SandboxedExecute
    from segutils.grading.runner import (
        TWO_PROCESS_DEFAULT,
        GradingOptions,
        load_course_config,
        nbgrader_config,
        resolve_two_process,
    )

    config = tmp_path / "nbgrader_config.py"
    config.write_text("c = get_config()\n")
    kwargs = dict(root=tmp_path, db_url="sqlite://", cell_order={}, release_sources={})

    def mode(options):  # what the grading's SandboxedExecute runs with
        return SandboxedExecute(config=nbgrader_config(config, options=options, **kwargs)).two_process

    assert mode(GradingOptions()) is TWO_PROCESS_DEFAULT  # neither the command line nor the course says
    assert mode(GradingOptions(two_process=True)) is True and mode(GradingOptions(two_process=False)) is False
    for course_says in (True, False):
        config.write_text(f"c = get_config()\nc.SandboxedExecute.two_process = {course_says}\n")
        assert mode(GradingOptions()) is course_says
        assert mode(GradingOptions(two_process=not course_says)) is (not course_says)  # the command line wins
        assert resolve_two_process(load_course_config(config), None) is course_says
        assert resolve_two_process(load_course_config(config), not course_says) is (not course_says)
    assert resolve_two_process(Config(), None) is TWO_PROCESS_DEFAULT
    config.write_text("c = get_config()\nc.SandboxedExecute.two_process = 'yes'\n")
    with pytest.raises(ValueError, match="must be True or False, got 'yes'"):
        resolve_two_process(load_course_config(config), None)
    assert GradingOptions(two_process=True).fingerprint() != GradingOptions(two_process=False).fingerprint()
    assert "two_process" not in GradingOptions(two_process=False).fingerprint()  # in-process states stay valid
    parser = argparse.ArgumentParser()
    add_grade_parser(parser.add_subparsers())
    assert parser.parse_args(["grade", "a1", "--two-process"]).two_process is True
    assert parser.parse_args(["grade", "a1", "--in-process"]).two_process is False
    assert parser.parse_args(["grade", "a1", "--no-two-process"]).two_process is False
    assert parser.parse_args(["grade", "a1"]).two_process is None  # resolved against the course config
    with pytest.raises(SystemExit):
        parser.parse_args(["grade", "a1", "--two-process", "--in-process"])


def test_the_batch_resolves_the_mode_once_and_reports_it(tmp_path, monkeypatch):
    # The jobs (and so the state fingerprint) carry the mode that ran, whoever chose it; a bad course value
    # stops the batch with a message naming the setting.
    pytest.importorskip("nbgrader")
    from segutils.grading import batch, pool
    from segutils.grading.runner import TWO_PROCESS_DEFAULT

    seen = []
    monkeypatch.setattr(batch, "_grade_with", lambda pool, options, **kw: seen.append(options.two_process))
    monkeypatch.setattr(pool, "LocalPool", lambda *a, **k: type("NoPool", (), {"close": lambda self: None})())
    config = tmp_path / "nbgrader_config.py"
    for course_line, chosen, expected in [
        ("", None, TWO_PROCESS_DEFAULT),
        ("", True, True),
        ("", False, False),
        ("c.SandboxedExecute.two_process = True", None, True),
        ("c.SandboxedExecute.two_process = True", False, False),
        ("c.SandboxedExecute.two_process = False", None, False),
    ]:
        config.write_text(f"c = get_config()\n{course_line}\n")
        batch.grade_assignment(
            batch.BatchOptions(assignment="mini", course=tmp_path, two_process=chosen, sandbox=False, progress=False)
        )
        assert seen[-1] is expected, (course_line, chosen)
    config.write_text("c = get_config()\nc.SandboxedExecute.two_process = 1\n")
    with pytest.raises(batch.GradingError, match="SandboxedExecute.two_process"):
        batch.grade_assignment(batch.BatchOptions(assignment="mini", course=tmp_path, sandbox=False, progress=False))
    assert batch._note_meta(batch.BatchOptions(assignment="a", two_process=True), [], False)[1].startswith(
        "tests: in a grader process"
    )
    assert "in-process" in batch._note_meta(batch.BatchOptions(assignment="a", two_process=False), [], False)[1]


def test_the_tests_default_dtype_holds_for_the_call_and_copies_are_made_remotely():
    import copy

    net = torch.nn.Linear(2, 2)
    with student({"make": lambda: torch.zeros(2), "net": net}) as lookup:
        torch.set_default_dtype(torch.float64)
        try:
            assert lookup("make")().dtype == torch.float64
        finally:
            torch.set_default_dtype(torch.float32)
        assert lookup("make")().dtype == torch.float32 and torch.get_default_dtype() == torch.float32
        twin = copy.deepcopy(lookup("net"))  # a proxy holds a socket: copied in the student's process
        assert type(twin).__name__ == "Linear"
        twin.eval()
        x = torch.randn(3, 2)
        with torch.no_grad():
            assert torch.allclose(twin(x), net(x))
    assert net.training  # the copy's mode changed, not the original's


def test_the_grader_namespace_reads_the_students_names_lazily():
    from segutils.grading.remote.grader import GraderNamespace

    ns = GraderNamespace()
    with student({"losses": [1.0, 0.5], "tuple": "shadowed"}) as lookup:
        ns.endpoint = lookup.endpoint
        ns["mine"] = 1
        exec(
            "assert 'losses' in globals() and len(losses) == 2\nassert tuple([1]) == (1,)\n"
            "assert 'nope' not in globals()",
            ns,
        )  # noqa: S102
        assert "losses" in ns.fetched
        ns.forget_fetched()
        assert dict.get(ns, "losses") is None and ns["mine"] == 1
        ns.endpoint = None
    with pytest.raises(NameError):
        exec("losses", ns)  # noqa: S102 - no session: a student's name is unknown


def test_a_copy_of_a_grader_module_keeps_its_hooks_in_the_student_process():
    import copy

    seen = []
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))

    def probe(net):  # a student's function that works on a copy of the model it is given
        twin = copy.deepcopy(net)
        return twin(torch.zeros(1, 1, 5, 5)).shape

    with student({"probe": probe}) as lookup:
        assert lookup("probe")(model) == torch.Size([1, 1, 5, 5])
    assert seen == [(1, 1, 5, 5)]


def test_a_grader_module_holding_a_test_defined_module_is_usable_and_the_session_survives():
    class Zero(torch.nn.Module):  # a test's own class: not copied, called back in the grader
        def forward(self, x):
            return x * 0

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), Zero())

    def run(net):
        return net(torch.ones(1, 1, 3, 3)).abs().sum().item()

    def count(net):
        return len(list(net.parameters()))

    with student({"run": run, "count": count}) as lookup:
        assert lookup("run")(model) == 0.0
        with pytest.raises(AttributeError, match="can only be called"):
            lookup("count")(model)
        assert lookup("run")(model) == 0.0  # the channel is still up


def _graded_notebook():
    import nbformat

    def code(source, gid, **flags):
        meta = {"grade_id": gid, "locked": True, "grade": False, "solution": False, "schema_version": 3, **flags}
        return nbformat.v4.new_code_cell(source, metadata={"nbgrader": meta})

    return nbformat.v4.new_notebook(
        cells=[
            code("def double(t):\n    return t * 2", "double", locked=False, solution=True),
            code("testing.assert_vectorized(double, torch.ones(3))", "test_vec", grade=True, points=1),
            code(
                "assert double(1) == 2\n### BEGIN HIDDEN TESTS\nassert double(2) == 4\n### END HIDDEN TESTS",
                "test_value",
                grade=True,
                points=1,
            ),
        ]
    )


@pytest.mark.parametrize("measured", [["assert_vectorized"], []])
def test_points_measured_in_the_student_process_are_marked_in_the_notebook_and_the_feedback(measured):
    # Issue #11: a test whose checks ran in the student's process says so, in the graded notebook (which the
    # feedback page renders, redacted or not) and in the student's state; a test without such a check does not
    # (the parametrized control: the mark comes from the grader's record, not from every test).
    pytest.importorskip("nbgrader")
    from segutils.grading import sandbox
    from segutils.grading.preprocessors import RedactHiddenTests, SandboxedExecute, cell_plan
    from segutils.grading.report import MEASURED_IN_STUDENT

    nb = _graded_notebook()
    plan = cell_plan(nb)[0]
    records = {
        1: {"type": "cell", "index": 1, "status": "ok", "outputs": [], "measured": measured},
        2: {"type": "cell", "index": 2, "status": "ok", "outputs": [], "measured": []},
    }
    info = {"notes": [], "cells": {}}
    SandboxedExecute()._apply(nb, plan, records, {"seconds": 1.0}, "", sandbox.Limits(), info)

    def marked(cell):
        return any(MEASURED_IN_STUDENT in o.get("text", "") for o in cell.outputs)

    assert marked(nb.cells[1]) == bool(measured) and not marked(nb.cells[2])
    assert info["cells"]["test_vec"].get("measured_in_student", []) == measured
    assert "measured_in_student" not in info["cells"]["test_value"]
    redact = RedactHiddenTests(enabled=True)
    resources = {"nbgrader": {"notebook": "marked-feedback"}}
    redact.preprocess(nb, resources)
    assert marked(nb.cells[1]) == bool(measured) and "double(2)" not in nb.cells[2].source


def test_the_report_lists_points_measured_in_the_student_process(tmp_path):
    from segutils.grading import report

    def result(student, measured):
        cell = {"score": 1.0, "max_score": 1.0, "ename": "", "evalue": ""}
        return {
            "student": student,
            "status": "graded",
            "message": "",
            "score": 2.0,
            "max_score": 2.0,
            "seconds": 2.0,
            "exec_seconds": 1.0,
            "notes": [],
            "cells": {
                "test_vec": {**cell, **({"measured_in_student": measured} if measured else {})},
                "test_value": dict(cell),
            },
        }

    results = [result("alice", ["assert_vectorized", "count_ops"]), result("bob", ["count_ops"])]
    summary = report.summarize(results)
    assert summary["measured"] == {"test_vec": ["assert_vectorized", "count_ops"]}
    page = report.write_report(tmp_path / "r.html", "mini", results, {}).read_text()
    section = page.split(f"<h2>Points {report.MEASURED_IN_STUDENT.replace(chr(39), '&#x27;')}</h2>")
    assert len(section) == 2, "no section of points measured in the student's process"
    assert "<td>test_vec</td><td>assert_vectorized, count_ops</td>" in section[1]
    assert "test_value" not in section[1].split("<h2>")[0]
    assert "test_vec: measured in the student&#x27;s process: count_ops" in page  # bob's row
    plain = report.write_report(tmp_path / "p.html", "mini", [result("carol", [])], {}).read_text()
    assert "measured in the student" not in plain  # control: nothing measured there, nothing said


def test_a_tests_binding_of_a_students_name_holds_for_the_students_calls_as_in_one_process():
    # a1's tests run sliding_window_segment "with a correct extract_patches" by rebinding that name in the
    # notebook's globals; two-process, the rebinding must reach the student's namespace for the calls the test
    # makes (the test's function called back, never sent as code), and be undone afterwards.
    from unittest import mock

    from segutils.grading.remote.grader import GraderNamespace

    student_ns: dict = {}
    exec("def helper(x):\n    return x + 1\n\ndef outer(x):\n    return helper(x) * 10\n", student_ns)  # noqa: S102
    ns = GraderNamespace()
    with student(student_ns) as lookup:
        ns.endpoint = lookup.endpoint
        lookup.endpoint.bindings = ns.rebound
        exec("def reference(x):\n    return x + 2\n", ns)  # noqa: S102 - a function of the test's cell
        outer = ns["outer"]
        assert outer(1) == 20  # control: the student's own helper
        with mock.patch.dict(ns, helper=ns["reference"]):
            assert outer(1) == 30
        assert outer(1) == 20 and student_ns["helper"](1) == 2  # undone, in both namespaces
        with mock.patch.dict(ns, helper=abs):  # an imported function would run on copies: not mirrored
            assert outer(-3) == -20  # the student's helper: (-3 + 1) * 10, not abs(-3) * 10
        ns.endpoint = None
