"""Re-execute the chapters when the code they import changes.

myst-nb's ``cache`` execution mode (jupyter-cache) reuses a notebook's outputs while the
notebook's own code cells are unchanged. The chapters import ``segutils``: an edit there
can change their numbers or make a cell raise, and a cached build would not notice. This
extension keys the cache on the files matching ``execution_cache_sources`` (globs relative
to the folder of ``_config.yml``, minus ``execution_cache_exclude``) as well: when
their digest differs from the one recorded in the cache folder, the cache is emptied and
every page is marked out of date (so an incremental build re-reads, hence re-executes, every
notebook, and autodoc pages pick up the new docstrings).

It also resolves a relative ``execute.cache`` (``nb_execution_cache_path``) against the
folder of ``_config.yml`` instead of the working directory, so builds into another output
folder (``--path-output``) share one cache.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

DIGEST_FILE = "sources.sha256"


def sources_digest(root: Path, patterns: list[str], exclude: list[str] = ()) -> str:
    """SHA-256 over the paths and contents of the files under ``root`` matching ``patterns``.

    ``exclude``: ``fnmatch`` patterns of POSIX paths relative to ``root`` (``*`` spans folders).
    """
    digest = hashlib.sha256()
    files = sorted({path for pattern in patterns for path in root.glob(pattern) if path.is_file()})
    for path in files:
        relative = path.relative_to(root).as_posix()
        if "__pycache__" in path.parts or any(fnmatch.fnmatch(relative, pattern) for pattern in exclude):
            continue
        digest.update(relative.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def key_cache(app: Sphinx, config: Config) -> None:
    cache = config.nb_execution_cache_path
    if not cache:
        return
    root = Path(app.confdir)
    cache_path = (root / cache).resolve()
    config.nb_execution_cache_path = str(cache_path)
    digest = sources_digest(root, list(config.execution_cache_sources), list(config.execution_cache_exclude))
    marker = cache_path / DIGEST_FILE
    recorded = marker.read_text().strip() if marker.is_file() else None
    if recorded == digest:
        return
    if cache_path.exists():
        logger.info(f"execution_cache: imported sources changed, emptying {cache_path}")
        shutil.rmtree(cache_path)
        app._execution_cache_emptied = True  # type: ignore[attr-defined]
    cache_path.mkdir(parents=True)
    marker.write_text(digest + "\n")


def outdated(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    """Every page, when :func:`key_cache` emptied the cache; none otherwise."""
    if getattr(app, "_execution_cache_emptied", False):
        return sorted(env.found_docs - added - changed - removed)
    return []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("execution_cache_sources", ["requirements.txt"], "env", types=[list])
    app.add_config_value("execution_cache_exclude", [], "env", types=[list])
    # Before myst-nb reads nb_execution_cache_path (it does on builder-inited).
    app.connect("config-inited", key_cache)
    app.connect("env-get-outdated", outdated)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
