"""The sandbox a student's notebook runs in: a bubblewrap command line plus resource limits.

What the sandbox gives the notebook (see ``book/appendix/grading.md`` for the threat model):

- new user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``): no network at all
  (only a private loopback), no view of the grader's or anyone else's processes;
- a file system of read-only binds: ``/usr``, a few files of ``/etc``, the Python installation
  (``sys.prefix``, ``sys.base_prefix``) and the ``segutils`` package directory, nothing else of the
  course (no ``solutions/``, no gradebook, no other student's files);
- ``/grading/input`` (read-only): the one notebook to run and the files released with it;
- ``/tmp`` and ``/dev/shm`` (tmpfs of ``tmp_bytes`` and ``shm_bytes``): the only writable file
  systems: the work directory, the kernel's home and runtime files, shared memory. ``/`` and ``/dev``
  (bubblewrap's own tmpfs, sized at half the host's memory) are remounted read-only, so what a
  notebook can store in memory through files is bounded by the limits too;
- per-process limits applied by the executor before any student code runs (:func:`apply_limits`):
  data memory, processes/threads, CPU seconds, file size, open files, no core dumps;
- ``--die-with-parent`` and ``--as-pid-1``: the executor is PID 1 of the namespace, so student code
  can neither signal it nor outlive it.

This module is imported inside the sandbox too (by :mod:`segutils.grading.execute`): keep it free
of heavy imports.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

#: Where the executor sees its inputs inside the sandbox.
SANDBOX_INPUT = "/grading/input"
#: The writable tmpfs inside the sandbox; the notebook runs in ``SANDBOX_TMP/work``.
SANDBOX_TMP = "/tmp"
#: Where a grader running as root makes a pids cgroup per sandbox (cgroup v1, then v2).
CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))

_ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "nsswitch.conf",
    "passwd",
    "group",
    "mime.types",
)
_GIB = 1 << 30
_MIB = 1 << 20


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces on this machine."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one notebook run.

    Attributes:
        memory_bytes: ``RLIMIT_DATA`` of every process (heap and private writable mappings; unlike
            ``RLIMIT_AS`` it leaves room for CUDA's large address-space reservations).
        processes: ``RLIMIT_NPROC``: processes *and threads* inside the sandbox (counted per sandbox).
        cpu_seconds: ``RLIMIT_CPU`` of every process.
        cell_timeout: wall seconds one cell may run before it is interrupted (then killed).
        notebook_timeout: wall seconds the whole notebook may take; then the sandbox is killed.
        file_bytes: ``RLIMIT_FSIZE``: the largest file a process may write.
        open_files: ``RLIMIT_NOFILE``.
        tmp_bytes: size of the sandbox's writable ``/tmp`` (a tmpfs: it is held in memory).
        shm_bytes: size of the sandbox's ``/dev/shm`` (a tmpfs too).
        cell_output_bytes: output kept per cell; a cell printing more is stopped.
        notebook_output_bytes: output kept for the whole notebook.
        threads: ``OMP_NUM_THREADS`` and friends inside the sandbox.
    """

    memory_bytes: int = 4 * _GIB
    processes: int = 256
    cpu_seconds: int = 3600
    cell_timeout: float = 300.0
    notebook_timeout: float = 1800.0
    file_bytes: int = 256 * _MIB
    open_files: int = 1024
    tmp_bytes: int = 1 * _GIB
    shm_bytes: int = 64 * _MIB
    cell_output_bytes: int = 1 * _MIB
    notebook_output_bytes: int = 8 * _MIB
    threads: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Limits.{f.name} must be a positive number, got {value!r}")
        for name in (
            "memory_bytes",
            "processes",
            "cpu_seconds",
            "file_bytes",
            "open_files",
            "tmp_bytes",
            "shm_bytes",
            "cell_output_bytes",
            "notebook_output_bytes",
            "threads",
        ):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"Limits.{name} must be an int, got {getattr(self, name)!r}")
        if self.processes < 16:
            raise ValueError(
                f"Limits.processes must be at least 16 (a kernel needs a few threads), got {self.processes}"
            )
        if self.cell_output_bytes > self.notebook_output_bytes:
            raise ValueError(
                f"Limits.cell_output_bytes ({self.cell_output_bytes}) exceeds notebook_output_bytes "
                f"({self.notebook_output_bytes})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Limits:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Limits fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class GpuDevice:
    """One NVIDIA GPU as the driver lists it in ``/proc/driver/nvidia/gpus/<bus id>/information``."""

    bus_id: str
    minor: int
    uuid: str


def discover_gpus(root: Path = Path("/proc/driver/nvidia/gpus")) -> list[GpuDevice]:
    """The NVIDIA GPUs of this machine in PCI bus order (``[]`` without the driver)."""
    gpus = []
    if not root.is_dir():
        return gpus
    for folder in sorted(root.iterdir()):
        info = folder / "information"
        try:
            lines = info.read_text().splitlines()
        except OSError:
            continue
        values = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        try:
            gpus.append(GpuDevice(folder.name, int(values["Device Minor"]), values["GPU UUID"]))
        except (KeyError, ValueError):
            continue
    return gpus


def gpu_device_nodes(gpu: GpuDevice, dev: Path = Path("/dev")) -> list[Path]:
    """The device nodes a sandbox needs to use ``gpu`` and no other GPU: its own ``nvidia<minor>``
    plus the driver's shared control nodes, those of them that exist under ``dev``."""
    names = [f"nvidia{gpu.minor}", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-caps"]
    return [dev / name for name in names if (dev / name).exists()]


def find_bwrap() -> str | None:
    """Path of the ``bwrap`` executable, or ``None``."""
    return shutil.which("bwrap")


@functools.cache
def check_sandbox(bwrap: str | None = None) -> str:
    """Return the ``bwrap`` path after checking that it can create the sandbox's namespaces.

    Raises:
        SandboxUnavailable: with what to do about it (install bubblewrap, allow user namespaces,
            or grade with ``--no-sandbox``).
    """
    bwrap = bwrap or find_bwrap()
    if bwrap is None or not os.access(bwrap, os.X_OK):
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: apt-get install bubblewrap) "
            "or grade without a sandbox with --no-sandbox (student code then runs with your rights)"
        )
    probe = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--",
        "/bin/true" if Path("/bin/true").exists() else "true",
    ]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SandboxUnavailable(
            f"bubblewrap ({bwrap}) could not be run: {error}; or grade with --no-sandbox"
        ) from None
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here ({result.stderr.strip() or 'exit ' + str(result.returncode)}); "
            "unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1, or "
            "user.max_user_namespaces > 0), or a container's seccomp profile forbids them; "
            "or grade with --no-sandbox"
        )
    return bwrap


class PidsCgroup:
    """A pids cgroup holding one sandbox, for a grader running as root.

    ``RLIMIT_NPROC`` never applies to processes of the host's root user, even inside a user
    namespace, so as root the process limit comes from a cgroup (when one can be created; the
    executor's own watchdog is the fallback). Use as a context manager; :meth:`enter` is the
    ``preexec_fn`` that puts the sandbox in it before ``bwrap`` starts.
    """

    def __init__(self, limit: int) -> None:
        self.path: Path | None = None
        if os.geteuid() != 0:
            return
        for root in CGROUP_ROOTS:
            if not (root / "cgroup.procs").exists():
                continue
            if root.name != "pids" and "pids" not in _read(root / "cgroup.subtree_control").split():
                continue
            path = root / f"segutils-{os.getpid()}-{id(self):x}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(limit))
            except OSError:
                if path.is_dir():
                    _rmdir_cgroup(path)
                continue
            self.path = path
            return

    def enter(self) -> None:
        if self.path is not None:
            with open(self.path / "cgroup.procs", "w") as procs:
                procs.write(str(os.getpid()))

    def __enter__(self) -> PidsCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            _rmdir_cgroup(self.path)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _rmdir_cgroup(path: Path) -> None:
    import signal
    import time

    for _ in range(50):
        pids = [int(p) for p in _read(path / "cgroup.procs").split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def package_dir() -> Path:
    """The directory of the ``segutils`` package (bound read-only into the sandbox)."""
    return Path(__file__).resolve().parents[1]


_BOOT = """import sys, types
sys.modules.setdefault("rfc3987_syntax", None)
if "segutils" not in sys.modules:
    package = types.ModuleType("segutils")
    package.__path__ = [{package!r}]
    sys.modules["segutils"] = package
from segutils.grading.{module} import main
sys.exit(main())
"""


def bootstrap_command(python: str, module: str, args: list[str]) -> list[str]:
    """``python -c BOOT *args``: run ``segutils.grading.<module>.main()`` in a fresh interpreter, fast.

    The grading side's processes (job server, job, executor) import ``segutils.grading`` only, under a
    stub ``segutils`` package, and without the ``rfc3987_syntax`` plug-in of jsonschema (it builds a
    grammar at import, about a second; nbformat never uses it). The kernel imports ``segutils`` normally.
    """
    if module not in ("runner", "execute", "jobserver"):
        raise ValueError(f"bootstrap_command: unknown module {module!r}")
    return [python, "-c", _BOOT.format(package=str(package_dir()), module=module), *args]


def readonly_roots() -> list[Path]:
    """The Python installation and the ``segutils`` package: what the kernel needs to import."""
    roots = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent, package_dir()]
    unique: list[Path] = []
    for root in roots:
        root = root.resolve()
        if root == Path("/usr") or root.is_relative_to(Path("/usr")):
            continue  # bound as a whole anyway
        if not any(root.is_relative_to(u) for u in unique):
            unique = [u for u in unique if not u.is_relative_to(root)] + [root]
    return unique


def sandbox_env(limits: Limits, gpu: GpuDevice | None, use_cuda: bool) -> dict[str, str]:
    """The environment of the executor and kernel (inside the sandbox or not)."""
    threads = str(limits.threads)
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": f"{SANDBOX_TMP}/home",
        "PYTHONPATH": str(package_dir().parent),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{SANDBOX_TMP}/home/.matplotlib",
        "IPYTHONDIR": f"{SANDBOX_TMP}/home/.ipython",
        "JUPYTER_RUNTIME_DIR": f"{SANDBOX_TMP}/home/.jupyter-runtime",
        "JUPYTER_PLATFORM_DIRS": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "NBGRADER_EXECUTION": "autograde",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": gpu.uuid if (gpu is not None and use_cuda) else "",
    }
    return env


def sandbox_command(
    inner: list[str],
    *,
    input_dir: Path,
    limits: Limits,
    env: dict[str, str],
    gpu: GpuDevice | None = None,
    bwrap: str | None = None,
) -> list[str]:
    """The ``bwrap`` command line that runs ``inner`` in the sandbox.

    Args:
        inner: the command to run inside (``[python, -m, segutils.grading.execute, ...]``).
        input_dir: host directory bound read-only at :data:`SANDBOX_INPUT`.
        limits: only ``tmp_bytes`` and ``shm_bytes`` are used here; the executor applies the rest
            itself (inside the new user namespace, so that process counts are per sandbox).
        env: the environment inside (the grader's own environment is cleared).
        gpu: the one GPU this sandbox may open (its device node is the only one bound).
        bwrap: path of ``bwrap`` (default: checked with :func:`check_sandbox`).
    """
    if not inner:
        raise ValueError("sandbox_command: the inner command is empty")
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ValueError(f"sandbox_command: input_dir {input_dir} is not a directory")
    bwrap = bwrap or check_sandbox()
    cmd = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--clearenv",
    ]
    if os.geteuid() == 0:
        cmd += ["--cap-drop", "ALL"]  # bwrap started by root keeps every capability in its namespace otherwise
    cmd += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib32", "lib64", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            cmd += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            cmd += ["--ro-bind", str(path), str(path)]
    for name in _ETC_FILES:
        path = Path("/etc") / name
        if path.exists():
            cmd += ["--ro-bind", str(path), str(path)]
    cpu_info = Path("/sys/devices/system/cpu")
    if cpu_info.is_dir():
        cmd += ["--ro-bind", str(cpu_info), str(cpu_info)]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.shm_bytes), "--tmpfs", "/dev/shm"]
    cmd += ["--size", str(limits.tmp_bytes), "--tmpfs", SANDBOX_TMP]
    # After the tmpfs: a checkout (and its .venv) under /tmp must stay visible on top of it.
    for root in readonly_roots():
        cmd += ["--ro-bind", str(root), str(root)]
    cmd += ["--ro-bind", str(input_dir.resolve()), SANDBOX_INPUT]
    if gpu is not None:
        for node in gpu_device_nodes(gpu):
            cmd += ["--dev-bind", str(node), str(node)]
        cmd += ["--ro-bind", "/sys", "/sys"]
    # Last, once every mount point exists: bubblewrap's own tmpfs (/ and /dev, each sized at half the
    # host's memory) read-only; /tmp and /dev/shm, mounted on them, stay writable within their sizes.
    cmd += ["--remount-ro", "/dev", "--remount-ro", "/"]
    for key, value in sorted(env.items()):
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", SANDBOX_TMP, "--", *inner]
    return cmd


#: Placeholders in :func:`execute_command`'s arguments: the input folder and the scratch folder, as the
#: process sees them (inside the sandbox or not).
INPUT, SCRATCH = "{input}", "{scratch}"


def execute_command(
    python: str,
    args: list[str],
    *,
    sandboxed: bool,
    input_dir: Path,
    scratch: Path,
    limits: Limits,
    env: dict[str, str],
    gpu: GpuDevice | None = None,
) -> tuple[list[str], dict[str, str] | None]:
    """``python -m segutils.grading.execute ARGS`` (through :func:`bootstrap_command`), in the sandbox or not.

    :data:`INPUT` and :data:`SCRATCH` in ``args`` become the input folder (``input_dir``, bound read-only at
    :data:`SANDBOX_INPUT` in the sandbox) and a scratch folder (the sandbox's own ``/tmp``, else
    ``scratch``); ``--sandboxed`` is added in the sandbox. Returns the command and the environment to start
    it with: ``None`` in the sandbox (``env`` is set inside it), else ``env`` with its home folders moved
    under ``scratch/home``.
    """
    inside = (
        {INPUT: SANDBOX_INPUT, SCRATCH: SANDBOX_TMP} if sandboxed else {INPUT: str(input_dir), SCRATCH: str(scratch)}
    )
    resolved = [a.replace(INPUT, inside[INPUT]).replace(SCRATCH, inside[SCRATCH]) for a in args]
    if sandboxed:
        inner = bootstrap_command(python, "execute", [*resolved, "--sandboxed"])
        return sandbox_command(inner, input_dir=input_dir, limits=limits, env=env, gpu=gpu), None
    moved = dict(env)
    home = Path(scratch) / "home"
    for key in ("HOME", "MPLCONFIGDIR", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR"):
        moved[key] = str(home / Path(env[key]).relative_to(f"{SANDBOX_TMP}/home")) if key != "HOME" else str(home)
    return bootstrap_command(python, "execute", resolved), moved


_RLIMITS = {
    "memory_bytes": resource.RLIMIT_DATA,
    "processes": resource.RLIMIT_NPROC,
    "cpu_seconds": resource.RLIMIT_CPU,
    "file_bytes": resource.RLIMIT_FSIZE,
    "open_files": resource.RLIMIT_NOFILE,
}


def apply_limits(limits: Limits, *, processes: bool = True) -> None:
    """Set this process's rlimits (soft = hard, so children cannot raise them) and forbid core dumps.

    ``processes=False`` leaves ``RLIMIT_NPROC`` alone: outside a user namespace it would count every
    process of the grading user, not just this notebook's.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, which in _RLIMITS.items():
        if which == resource.RLIMIT_NPROC and not processes:
            continue
        value = int(getattr(limits, name))
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def make_undumpable() -> None:
    """``prctl(PR_SET_DUMPABLE, 0)``: processes of the same user (student code) can neither ptrace this
    process nor open its ``/proc/<pid>/fd``, ``mem`` or ``environ``."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_dumpable = 4
    if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
