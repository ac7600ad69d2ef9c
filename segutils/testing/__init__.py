"""Checks for graded tests: what a student's PyTorch code computes, and how it computes it.

The hidden tests of the course's nbgrader assignments and the package's own tests use these
helpers. Every check fails with an :class:`AssertionError` whose message is written for the
student reading autograder feedback: it says what was expected and what came back, never how
the reference solution works. Mistakes of the test author (a wrong argument type, say) raise
``TypeError``/``ValueError`` instead.

- :func:`assert_close`: shape, dtype, device, NaN/inf positions and values of a tensor.
- :func:`devices`: the devices to run a test on (the CPU, plus CUDA when available).
- :func:`count_ops`, :func:`total_ops`, :func:`assert_vectorized`: the aten operators a call
  dispatches; a Python loop over pixels makes their number grow with the image size.
- :func:`forbid_ops` with the operator sets of :mod:`segutils.testing.forbidden`
  (``CONVOLUTION_OPS``, ``INTERPOLATION_OPS``, ``UNPOOL_OPS``, ``CROSS_ENTROPY_OPS``): the
  built-ins a from-scratch implementation must not use.
- :func:`assert_no_delegation`: the function does not call the course package (the answers).
- :func:`check_device_agnostic`: the function runs on the ``meta`` device (no GPU needed).
- :func:`no_host_sync`: on CUDA, the function never makes the host wait for the GPU.
- :func:`seed_everything`: seeds ``random``, NumPy and PyTorch.
- :func:`run_on_fake_cuda`: runs a function on a simulated GPU (tensors that say ``cuda`` and
  hold CPU data): a hard-coded device is caught without a GPU, value-dependent code runs;
  forward only (a backward pass raises :class:`FakeCudaUnsupported`).
- :func:`check_returns_new_tensor`: the output shares no memory with the arguments.
- :func:`trace_feature_maps` (with :func:`coarsest_map`, :func:`encoder_maps_reused`,
  :func:`show_trace`) and :func:`check_parameters_get_gradients`: what a network computes
  inside (downsampling, skip connections, unused layers).

Checks for hidden tests, each one call in a graded cell (every failure message names the call,
with argument shapes, dtypes, layout and device):

- ``check_values(fn, reference, cases, *, vary=(0,), devices=None, rtol=None, atol=None,
  name=None, check_inputs_unchanged=True) -> int``: ``fn`` equals an independent ``reference``
  on every case (:class:`Case` ``(*args, label=None, **kwargs)`` or a tuple), device and memory
  layout of the varied arguments (``layout_variants(x) -> dict[str, Tensor]``: contiguous,
  channels-last, transposed view, strided view), and leaves its inputs unchanged.
- ``check_gradients(fn, *args, wrt=None, name=None, atol=1e-5, rtol=1e-3, **kwargs) -> None``:
  the output requires grad and ``torch.autograd.gradcheck`` passes in float64.
- ``check_devices_and_dtypes(fn, make_args, *, reference=None, dtypes=(float32, float64),
  output_dtype=None, expected_shape=None, meta=True, fake_cuda=True, half_on_cuda=True,
  name=None) -> list[str]``: the output's device, dtype, shape and values on ``meta``, on
  simulated CUDA, on every real device (CUDA under :func:`no_host_sync`, with float16 and
  bfloat16); returns what ran where.
- ``check_no_builtin(fn, ops, *args, backward=True, forbidden_modules=("segutils",
  "torchmetrics"), **kwargs)``: no forbidden operator forward or backward, no delegation.
- ``check_raises(fn, args, problem, *, kwargs=None, exception=ValueError, match=None)``: bad
  input raises the documented exception with a non-empty message.
- ``assert_vectorized(fn, make_inputs, sizes=((8, 8), (16, 16)), name=None, tolerance=0)``: the
  number of operators does not grow with the image size (op growth).

Operator names. An aten operator is named by its overload packet as ``str()`` writes it:
``"aten.convolution"`` (``str(torch.ops.aten.convolution)``), not by overload
(``"aten.convolution.default"``). What the operator counters and :func:`forbid_ops` see is what
reaches PyTorch's Python dispatcher, *after* autograd: high-level composite operators are
already decomposed there (``F.conv2d`` shows up as ``aten.convolution``, ``F.cross_entropy`` as
``aten._log_softmax`` + ``aten.nll_loss2d_forward``) unless autograd is off for good
(``torch.inference_mode``), where ``aten.conv2d`` or ``aten.cross_entropy_loss`` show up
instead. The ``*_OPS`` constants list both levels, and their backward operators.

The code is split into one module per tool: ``values`` (``assert_close``), ``environment``
(``devices``, ``seed_everything``), ``operators`` (``count_ops``, ``total_ops``,
``assert_vectorized``), ``forbidden`` (``forbid_ops`` and the operator sets), ``delegation``
(``assert_no_delegation``), ``device_agnostic`` (``check_device_agnostic``) and ``host_sync``
(``no_host_sync``), ``fake_cuda`` (``run_on_fake_cuda``), ``feature_maps`` (``trace_feature_maps``,
``check_parameters_get_gradients``), ``aliasing`` (``check_returns_new_tensor``), ``variants``
(``check_values``, ``Case``, ``layout_variants``), ``gradients`` (``check_gradients``), ``device_dtype``
(``check_devices_and_dtypes``) and ``validation`` (``check_raises``). Import every name from
``segutils.testing`` itself.
"""

from __future__ import annotations

from .aliasing import check_returns_new_tensor
from .delegation import assert_no_delegation
from .device_agnostic import check_device_agnostic
from .device_dtype import check_devices_and_dtypes
from .environment import devices, seed_everything
from .fake_cuda import FakeCudaUnsupported, run_on_fake_cuda
from .feature_maps import (
    check_parameters_get_gradients,
    coarsest_map,
    encoder_maps_reused,
    show_trace,
    trace_feature_maps,
)
from .forbidden import (
    CONVOLUTION_OPS,
    CROSS_ENTROPY_OPS,
    INTERPOLATION_OPS,
    UNPOOL_OPS,
    check_no_builtin,
    forbid_ops,
)
from .gradients import check_gradients
from .host_sync import no_host_sync
from .operators import assert_vectorized, count_ops, total_ops
from .validation import check_raises
from .values import assert_close
from .variants import Case, check_values, describe_call, layout_variants

__all__ = [
    "CONVOLUTION_OPS",
    "CROSS_ENTROPY_OPS",
    "Case",
    "FakeCudaUnsupported",
    "INTERPOLATION_OPS",
    "UNPOOL_OPS",
    "assert_close",
    "assert_no_delegation",
    "assert_vectorized",
    "check_device_agnostic",
    "check_devices_and_dtypes",
    "check_gradients",
    "check_no_builtin",
    "check_parameters_get_gradients",
    "check_raises",
    "check_returns_new_tensor",
    "check_values",
    "coarsest_map",
    "count_ops",
    "describe_call",
    "devices",
    "encoder_maps_reused",
    "forbid_ops",
    "layout_variants",
    "no_host_sync",
    "run_on_fake_cuda",
    "seed_everything",
    "show_trace",
    "total_ops",
    "trace_feature_maps",
]
