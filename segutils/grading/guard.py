"""Integrity checks inside the grading kernel, around every graded test cell.

A student's code and the hidden tests share one Python process, so a solution cell can replace
what the tests rely on: ``segutils.testing.assert_close``, ``torch.equal``, ``builtins.print``,
IPython's ``showtraceback`` or its input transformers (which could rewrite a test cell into
``pass``). The executor (:mod:`segutils.grading.execute`) installs this module in the kernel
*before* any student code runs, then, through silent executions:

- :func:`restore` before each graded test cell: every watched object that student code replaced
  is put back (the replacement is reported, not penalised: the test then runs against the real thing);
- :func:`check` after it: anything replaced *while the test ran* (say, by the student's function
  when the test called it) is reported, and the executor fails that test with
  ``GradingIntegrityError``;
- :func:`pin` after each locked (instructor) cell: the names it imported (``torch``, ``F``,
  ``testing``...) are restored in the user namespace before tests, too.

Watched: all of ``builtins``; the callables, classes and submodules of the modules the locked
cells import (plus ``segutils.testing``); the class dictionaries of ``torch.Tensor`` and
``torch.nn.Module``; ``sys.excepthook``/``displayhook``/``stdout``/``stderr``, trace and profile
functions, ``sys.modules`` entries; the IPython shell, kernel and session classes and instance
overrides, the shell's input and AST transformers, compiler, custom exception handlers, event
callbacks and the kernel's message handlers.

Not covered, by construction: code in the same process can also reach this module (via
``sys.modules`` or the garbage collector) and disable it, or make objects that lie about
themselves (a ``Tensor`` subclass whose ``__torch_function__`` says every comparison holds).
That takes code written against this grader; the book's grading appendix explains what is and
is not protected.

Every public function returns a JSON string (read by the executor from ``user_expressions``) holding
the nonce it was called with, so that a kernel that no longer runs code cannot fake an answer
without knowing this protocol.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import sys
import types
from typing import Any

_UNDERSCORE_NAMES = {"_", "__", "___"}  # IPython's output history lives in builtins
_WATCHED_CLASSES = ("torch.Tensor", "torch.nn.Module")
_TESTING_PACKAGE = "segutils.testing"
_SYS_HOOKS = ("excepthook", "displayhook", "stdout", "stderr", "breakpointhook")
_SHELL_LISTS = ("input_transformers_cleanup", "input_transformers_post", "ast_transformers")
_SHELL_OBJECTS = (
    "compile",
    "displayhook",
    "display_pub",
    "display_trap",
    "input_transformer_manager",
    "CustomTB",
    "InteractiveTB",
    "SyntaxTB",
    "user_ns",
    "user_global_ns",
)
_MISSING = object()


class _Guard:
    """Snapshot of what tests rely on; ``changes()`` lists (and optionally undoes) every difference."""

    def __init__(self, modules: list[str]) -> None:
        self.trusted_roots = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix, _segutils_dir()})
        self.failed_imports: list[str] = []
        self.modules: dict[str, types.ModuleType] = {}
        for name in dict.fromkeys([_TESTING_PACKAGE, *modules]):
            try:
                self.modules[name] = importlib.import_module(name)
            except Exception as error:  # noqa: BLE001 - a locked cell's import may legitimately fail
                self.failed_imports.append(f"{name}: {type(error).__name__}")
        # segutils.testing is a package: its checks call helpers in its submodules, which a student could
        # replace (e.g. the comparison behind assert_close) without touching the re-exported names.
        for name, module in sorted(sys.modules.items()):
            if name.startswith(_TESTING_PACKAGE + ".") and isinstance(module, types.ModuleType):
                self.modules.setdefault(name, module)
        self.namespaces: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.namespaces["builtins"] = (
            builtins,
            {k: v for k, v in vars(builtins).items() if k not in _UNDERSCORE_NAMES},
        )
        for name, module in self.modules.items():
            self.namespaces[name] = (module, {k: v for k, v in vars(module).items() if _watchable(v)})
        for dotted in _WATCHED_CLASSES:
            cls = _resolve(dotted)
            if isinstance(cls, type):
                self.namespaces[dotted] = (cls, {k: v for k, v in vars(cls).items() if _watchable(v)})
        self.sys_modules = {name: module for name, module in self.modules.items()}
        self.sys_hooks = {name: getattr(sys, name, _MISSING) for name in _SYS_HOOKS}
        self.shell = _shell()
        self.objects: dict[str, Any] = {}
        self.lists: dict[str, list] = {}
        self.callbacks: dict[str, list] = {}
        self.handlers: dict[str, dict] = {}
        self.instance_dicts: dict[str, tuple[Any, dict[str, Any]]] = {}
        if self.shell is not None:
            self._snapshot_ipython()
        self.pinned: dict[str, Any] = {}

    def _snapshot_ipython(self) -> None:
        shell = self.shell
        kernel = getattr(shell, "kernel", None)
        session = getattr(kernel, "session", None)
        owners = {
            "shell": shell,
            "kernel": kernel,
            "session": session,
            "displayhook": getattr(shell, "displayhook", None),
            "display_pub": getattr(shell, "display_pub", None),
        }
        for label, obj in owners.items():
            if obj is None:
                continue
            for cls in type(obj).__mro__:
                if cls is object:
                    continue
                key = f"{cls.__module__}.{cls.__qualname__}"
                if key not in self.namespaces:
                    self.namespaces[key] = (cls, {k: v for k, v in vars(cls).items() if _watchable(v)})
            self.instance_dicts[label] = (obj, {k: v for k, v in vars(obj).items() if callable(v)})
        for name in _SHELL_OBJECTS:
            self.objects[f"shell.{name}"] = getattr(shell, name, _MISSING)
        for name in _SHELL_LISTS:
            value = getattr(shell, name, None)
            if isinstance(value, list):
                self.lists[f"shell.{name}"] = list(value)
        manager = getattr(shell, "input_transformer_manager", None)
        for name in ("cleanup_transforms", "line_transforms", "token_transformers"):
            value = getattr(manager, name, None)
            if isinstance(value, list):
                self.lists[f"input_transformer_manager.{name}"] = list(value)
        self.objects["shell.custom_exceptions"] = getattr(shell, "custom_exceptions", ())
        events = getattr(shell, "events", None)
        for event, callbacks in getattr(events, "callbacks", {}).items():
            self.callbacks[event] = list(callbacks)
        for name in ("shell_handlers", "control_handlers"):
            handlers = getattr(kernel, name, None)
            if isinstance(handlers, dict):
                self.handlers[f"kernel.{name}"] = dict(handlers)

    # -- comparing and restoring -------------------------------------------------------------
    def changes(self, fix: bool) -> list[str]:
        found: list[str] = []
        for label, (owner, saved) in self.namespaces.items():
            current = vars(owner)
            for key, value in saved.items():
                now = current.get(key, _MISSING)
                if now is value:
                    continue
                if self._library_wrapper(now, value):
                    saved[key] = now  # e.g. importing torch._dynamo wraps torch.manual_seed: not the notebook's doing
                    continue
                found.append(f"{label}.{key}")
                if fix:
                    _force_setattr(owner, key, value)
        for name, module in self.sys_modules.items():
            if sys.modules.get(name) is not module:
                found.append(f"sys.modules[{name!r}]")
                if fix:
                    sys.modules[name] = module
        for name, value in self.sys_hooks.items():
            if getattr(sys, name, _MISSING) is not value:
                found.append(f"sys.{name}")
                if fix and value is not _MISSING:
                    setattr(sys, name, value)
        if sys.gettrace() is not None:
            found.append("sys.settrace")
            if fix:
                sys.settrace(None)
        if sys.getprofile() is not None:
            found.append("sys.setprofile")
            if fix:
                sys.setprofile(None)
        if self.shell is not None:
            found += self._ipython_changes(fix)
        for name, value in self.pinned.items():
            ns = self.shell.user_ns if self.shell is not None else {}
            if ns.get(name, _MISSING) is not value:
                found.append(f"the name {name!r} imported by a locked cell")
                if fix:
                    ns[name] = value
        return found

    def _ipython_changes(self, fix: bool) -> list[str]:
        found = []
        shell = self.shell
        for label, (obj, saved) in self.instance_dicts.items():
            current = vars(obj)
            for key in list(current):
                value = current[key]
                if callable(value) and saved.get(key, _MISSING) is not value and hasattr(type(obj), key):
                    found.append(f"IPython {label}.{key} (instance override)")
                    if fix:
                        if key in saved:
                            current[key] = saved[key]
                        else:
                            del current[key]
        for label, value in self.objects.items():
            owner, name = shell, label.split(".", 1)[1]
            current = getattr(owner, name, _MISSING)
            if current is not value and not (name == "custom_exceptions" and current == value):
                found.append(f"IPython {label}")
                if fix and value is not _MISSING:
                    setattr(owner, name, value)
        manager = getattr(shell, "input_transformer_manager", None)
        for label, saved in self.lists.items():
            owner_name, name = label.split(".", 1)
            owner = shell if owner_name == "shell" else manager
            current = getattr(owner, name, None)
            if not isinstance(current, list) or current != saved:
                found.append(f"IPython {label}")
                if fix:
                    if isinstance(current, list):
                        current[:] = saved
                    else:
                        setattr(owner, name, list(saved))
        events = getattr(shell, "events", None)
        for event, callbacks in getattr(events, "callbacks", {}).items():
            saved = self.callbacks.get(event, [])
            extra = [cb for cb in callbacks if cb not in saved and not self._trusted(cb)]
            missing = [cb for cb in saved if cb not in callbacks]
            if extra or missing:
                found.append(f"IPython event callbacks for {event!r}")
                if fix:
                    callbacks[:] = [cb for cb in callbacks if cb in saved or self._trusted(cb)] + missing
        kernel = getattr(shell, "kernel", None)
        for label, saved in self.handlers.items():
            current = getattr(kernel, label.split(".", 1)[1], None)
            if not isinstance(current, dict) or any(current.get(k, _MISSING) is not v for k, v in saved.items()):
                found.append(f"ipykernel {label}")
                if fix and isinstance(current, dict):
                    current.update(saved)
        return found

    def _library_wrapper(self, new: Any, old: Any) -> bool:
        """Whether ``new`` is a wrapper of ``old`` (``functools.wraps``) defined in the installation."""
        if new is _MISSING or not self._trusted(new):
            return False
        fn = new
        for _ in range(20):
            fn = vars(fn).get("__wrapped__", _MISSING) if hasattr(fn, "__dict__") else _MISSING
            if fn is _MISSING:
                return False
            if fn is old:
                return True
        return False

    def _trusted(self, fn: Any) -> bool:
        """Whether ``fn`` was defined in the Python installation or segutils (not by the notebook)."""
        fn = getattr(fn, "__func__", fn)
        code = getattr(fn, "__code__", None)
        if code is None:
            return isinstance(fn, types.BuiltinFunctionType)
        return os.path.realpath(code.co_filename).startswith(self.trusted_roots)

    def pin(self, names: list[str]) -> list[str]:
        ns = self.shell.user_ns if self.shell is not None else {}
        pinned = []
        for name in names:
            value = ns.get(name, _MISSING)
            if value is not _MISSING:
                self.pinned[name] = value
                pinned.append(name)
        return pinned


def _segutils_dir() -> str:
    import segutils

    return os.path.dirname(os.path.realpath(segutils.__file__))


def _watchable(value: Any) -> bool:
    return callable(value) or isinstance(value, (types.ModuleType, classmethod, staticmethod, property))


def _resolve(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None:
        parent, _, child = module_name.rpartition(".")
        module = getattr(sys.modules.get(parent), child, None) if parent else None
    return getattr(module, attr, None)


def _force_setattr(owner: Any, key: str, value: Any) -> None:
    try:
        setattr(owner, key, value)
    except (AttributeError, TypeError):
        vars(owner)[key] = value  # a module's dict is writable even where setattr is hooked


def _shell() -> Any:
    try:
        from IPython.core.getipython import get_ipython
    except ImportError:
        return None
    return get_ipython()


_GUARD: _Guard | None = None


def _answer(nonce: str, **data: Any) -> str:
    return json.dumps({"nonce": nonce, **data})


def install(nonce: str, modules: list[str]) -> str:
    """Import ``modules`` and snapshot everything watched. Returns JSON with the CUDA device count."""
    global _GUARD
    _GUARD = _Guard(list(modules))
    cuda = 0
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            cuda = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
        except Exception:  # noqa: BLE001
            cuda = 0
    return _answer(nonce, cuda_devices=cuda, failed_imports=_GUARD.failed_imports, modules=sorted(_GUARD.modules))


def pin(nonce: str, names: list[str]) -> str:
    """Remember the objects the user namespace binds to ``names`` (after a locked cell ran)."""
    if _GUARD is None:
        return _answer(nonce, error="guard not installed")
    return _answer(nonce, pinned=_GUARD.pin(list(names)))


def restore(nonce: str) -> str:
    """Undo every change to watched objects; return what was changed."""
    if _GUARD is None:
        return _answer(nonce, error="guard not installed")
    return _answer(nonce, changed=_GUARD.changes(fix=True))


def check(nonce: str) -> str:
    """Report (without undoing) every change to watched objects."""
    if _GUARD is None:
        return _answer(nonce, error="guard not installed")
    return _answer(nonce, changed=_GUARD.changes(fix=False))
