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
(``no_host_sync``). Import every name from ``segutils.testing`` itself.
"""
from __future__ import annotations

from .delegation import assert_no_delegation
from .device_agnostic import check_device_agnostic
from .environment import devices, seed_everything
from .forbidden import CONVOLUTION_OPS, CROSS_ENTROPY_OPS, INTERPOLATION_OPS, UNPOOL_OPS, forbid_ops
from .host_sync import no_host_sync
from .operators import assert_vectorized, count_ops, total_ops
from .values import assert_close

__all__ = [
    "CONVOLUTION_OPS",
    "CROSS_ENTROPY_OPS",
    "INTERPOLATION_OPS",
    "UNPOOL_OPS",
    "assert_close",
    "assert_no_delegation",
    "assert_vectorized",
    "check_device_agnostic",
    "count_ops",
    "devices",
    "forbid_ops",
    "no_host_sync",
    "seed_everything",
    "total_ops",
]
