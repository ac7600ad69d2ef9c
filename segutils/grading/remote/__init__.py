"""Two-process grading: the tests run in a grader process, the student's code in the student's process.

A student's code and the hidden tests never share an interpreter. The student's process runs the
student's cells; the grader process runs the test cells, where every name the student defined is a
proxy whose calls run in the student's process. Between them is a channel that carries *data*
only (never code, never a pickle):

- :mod:`~segutils.grading.remote.codec`: values as bytes (tensors as raw bytes with dtype, shape,
  strides, device and ``requires_grad``; numbers, strings, containers; handles for everything else)
  and a strict decoder with limits on size, depth and count;
- :mod:`~segutils.grading.remote.channel`: framed messages over a socket and a symmetric RPC
  endpoint (a call may call back, to any depth);
- :mod:`~segutils.grading.remote.proxy`: the grader-side proxies of the student's objects;
- :mod:`~segutils.grading.remote.autograd`: gradients across the boundary (a ``torch.autograd.Function``
  whose backward asks the student's process for the input gradients);
- :mod:`~segutils.grading.remote.probes`: what only the student's process can observe (ATen ops,
  ``meta`` tensors, host syncs, delegation), measured there around one proxied call;
- :mod:`~segutils.grading.remote.student`: the student-side server;
- :mod:`~segutils.grading.remote.grader`: the grader-side cell runner;
- :mod:`~segutils.grading.remote.warm`: a worker slot's warm grader, which forks the grader processes.
"""
