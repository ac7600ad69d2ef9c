"""Grading jobs on a Dask distributed cluster (``segutils grade --scheduler tcp://host:8786``).

Each student is one Dask task, :func:`grade_on_worker`, which runs the same grading job as the local
pool (in a fresh interpreter: a Dask worker keeps no job server) on whichever worker Dask picks;
with ``--gpus`` the tasks ask for one unit of the ``GPU`` resource, so start GPU workers as
``dask worker tcp://host:8786 --resources GPU=1`` with ``CUDA_VISIBLE_DEVICES`` naming their GPU.
Jobs carry the submission's bytes and return the autograded and feedback files, so workers need no shared
file system, only the gradebook: with workers on other machines that must be a database server
(PostgreSQL), never a SQLite file.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from dataclasses import replace
from urllib.parse import urlparse

from segutils.grading.pool import failed_result, run_job_subprocess
from segutils.grading.runner import GradingJob, GradingResult

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class ClusterConfigError(RuntimeError):
    """The cluster and the gradebook cannot work together (SQLite with remote workers)."""


def grade_on_worker(job: GradingJob) -> GradingResult:
    """The Dask task: grade ``job`` in a job process on this worker (its GPU: ``CUDA_VISIBLE_DEVICES``)."""
    return run_job_subprocess(job)


def local_addresses() -> set[str]:
    """Addresses of this machine (loopback included)."""
    found = {"127.0.0.1", "::1"} | _LOOPBACK_NAMES
    for name in {socket.gethostname(), socket.getfqdn()}:
        found.add(name)
        try:
            for info in socket.getaddrinfo(name, None):
                found.add(str(info[4][0]))
        except OSError:
            pass
    return found


def is_local_host(host: str, local: set[str] | None = None) -> bool:
    local = local if local is not None else local_addresses()
    if host in local:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_worker_hosts(worker_addresses: Iterable[str], local: set[str] | None = None) -> list[str]:
    """Hosts of the workers (``tcp://host:port``) that are not this machine."""
    hosts = sorted({urlparse(address).hostname or "" for address in worker_addresses})
    return [h for h in hosts if not is_local_host(h, local)]


def check_gradebook_for_cluster(db_url: str, worker_addresses: Iterable[str], local: set[str] | None = None) -> None:
    """Refuse a SQLite gradebook when workers run on other machines.

    Raises:
        ClusterConfigError: naming the remote hosts and what to use instead.
    """
    if not db_url.startswith("sqlite"):
        return
    remote = remote_worker_hosts(worker_addresses, local)
    if remote:
        raise ClusterConfigError(
            f"the gradebook is a SQLite file ({db_url}), but Dask workers run on other machines "
            f"({', '.join(remote)}): several machines cannot write one SQLite file safely. Use a database server, "
            "e.g. --db postgresql+psycopg2://USER:PASSWORD@HOST/DB (pip install psycopg2-binary), reachable from "
            "every worker"
        )


class DaskPool:
    """Jobs as Dask tasks on the cluster behind ``address``."""

    def __init__(self, address: str, db_url: str, gpus: int = 0, connect_timeout: float = 30) -> None:
        try:
            from distributed import Client
        except ImportError as error:
            raise ClusterConfigError("--scheduler needs Dask distributed: pip install 'dask[distributed]'") from error
        self.client = Client(address, timeout=connect_timeout)
        self.gpus = gpus
        workers = self.client.scheduler_info().get("workers", {})
        if not workers:
            self.client.close()
            raise ClusterConfigError(f"the Dask scheduler at {address} has no workers")
        try:
            check_gradebook_for_cluster(db_url, workers)
        except ClusterConfigError:
            self.client.close()
            raise
        if gpus and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
            self.client.close()
            raise ClusterConfigError(
                "--gpus was given, but no Dask worker advertises a GPU resource (start them with --resources GPU=1)"
            )

    def run(self, jobs: Iterable[GradingJob], on_result: Callable[[GradingResult], None]) -> None:
        from distributed import as_completed

        futures = {}
        try:
            for job in jobs:
                if self.gpus:
                    job = replace(job, options=replace(job.options, gpu="inherit"))
                future = self.client.submit(
                    grade_on_worker,
                    job,
                    pure=False,
                    key=f"grade-{job.student}-{job.digest[:12]}",
                    resources={"GPU": 1} if self.gpus else None,
                )
                futures[future] = job
            for future in as_completed(list(futures)):
                job = futures.pop(future)
                try:
                    result = future.result()
                except (CancelledError, Exception) as error:  # noqa: BLE001 - a lost worker fails one job
                    result = failed_result(job, f"the Dask task failed: {type(error).__name__}: {error}")
                on_result(result)
        except BaseException:
            self.client.cancel(list(futures))
            raise

    def close(self) -> None:
        """Disconnect from the cluster (the cluster itself keeps running)."""
        self.client.close()
