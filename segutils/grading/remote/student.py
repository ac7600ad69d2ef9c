"""The student's side of a grading session: answer the grader's requests about the student's names.

The student's executor runs the student's cells in the kernel; where a test cell stands in the
notebook it runs, instead of the test, ``serve(SOCKET)`` (see
:func:`segutils.grading.execute.serve_source`): the kernel connects to the grader, answers its
requests (look up a name, call, get an attribute, run a probe, backward through a graph) and
returns when the grader says the test cell is done. Everything here runs in the student's process
and is the student's to change: the grader trusts none of it, and decodes what it sends as data
only.
"""

from __future__ import annotations

import re
import socket

from segutils.grading.remote.autograd import GraphStore
from segutils.grading.remote.channel import Channel, Endpoint, Policy
from segutils.grading.remote.proxy import student_side_proxy

#: IPython's own names in a kernel's namespace, never offered to the grader.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


#: IPython's history names: ``_``, ``__``, ``___``, ``_i``, ``_ii``, ``_iii``, ``_i3``, ``_3``, ``_ih``, ``_oh``,
#: ``_dh``.
_HISTORY = re.compile(r"^(_{1,3}|_i{1,3}|_i\d+|_\d+|_ih|_oh|_dh)$")


def student_namespace(namespace: dict) -> dict:
    """The names the student's cells bound (IPython's history and helpers left out)."""
    return {
        k: v for k, v in namespace.items() if isinstance(k, str) and k not in _IPYTHON_NAMES and not _HISTORY.match(k)
    }


_ENDPOINT: Endpoint | None = None


def serve_session(sock: socket.socket, namespace: dict, hello: int | None = None) -> None:
    """Answer one test cell's requests on ``sock`` about ``namespace``; return when the grader is done.

    The objects sent to the grader stay valid across sessions (one export table per process), so a
    test may keep a proxy from one cell to the next; ``hello`` first tells the grader which test
    cell this session serves.
    """
    global _ENDPOINT
    from segutils.grading.remote.codec import encode
    from segutils.grading.remote.probes import ProbeRunner

    channel = Channel(sock)
    if hello is not None:
        channel.send(encode({"k": "hello", "cell": int(hello)}))
    if _ENDPOINT is None:
        graphs, probes = GraphStore(), ProbeRunner()
        _ENDPOINT = Endpoint(
            channel,
            "s",
            Policy.student(lambda: student_namespace(namespace)),
            student_side_proxy,
            handlers={**graphs.handlers(), **probes.handlers()},
        )
    endpoint = _ENDPOINT
    endpoint.channel, endpoint.closed = channel, False
    endpoint.policy = Policy.student(lambda: student_namespace(namespace))
    endpoint.student_globals = namespace
    try:
        done = endpoint.serve(until=lambda message: message.get("op") == "resume")
        endpoint.reply(done)
    finally:
        endpoint.close()


def serve(path: str, cell: int, namespace: dict | None = None) -> None:
    """Connect to the grader's socket at ``path`` and serve test cell ``cell`` (called in the student's kernel)."""
    if namespace is None:
        from IPython import get_ipython

        namespace = get_ipython().user_ns
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    serve_session(sock, namespace, hello=cell)
