"""Serve every script, style and font of the book from the built site itself.

Jupyter Book 1 pages load MathJax, RequireJS and the Jupyter widgets HTML manager from
CDNs, and matplotlib's ``Animation.to_jshtml()`` links Font Awesome 4 from one. This
extension copies those files from ``node_modules`` (installed by ``npm ci`` from the
committed ``package-lock.json``) into ``_static/offline/`` of the HTML output, and
points the pages at them:

- ``mathjax_path`` and myst-nb's ``nb_ipywidgets_js`` (set in ``_config.yml``) name files
  under ``_static/offline/``; this extension fails the build early, with the command to
  run, when ``node_modules`` lacks one of them;
- the Font Awesome 4 link of ``to_jshtml`` animations is rewritten to the local copy;
- each page's scripts are de-duplicated: Sphinx < 8.2 can list sphinx-thebe's inline
  configuration twice, and the second ``const THEBE_JS_URL`` is a console error;
- the widget scripts keep the order of ``nb_ipywidgets_js`` as ``_config.yml`` writes it
  (``widgets-config.js``, RequireJS, then the manager): Jupyter Book hands the setting to
  myst-nb with its keys sorted, which would load the manager, an AMD module, before RequireJS;
- ``window.FontAwesomeConfig`` keeps the theme's Font Awesome 6 script from replacing
  the icons inside widget buttons (that breaks ``ipywidgets.Play``);
- bibliography entries get the ARIA role ``listitem`` instead of docutils'
  ``doc-biblioentry`` (deprecated in DPUB-ARIA 1.1): their ``role="list"`` container
  must contain list items, and axe-core reports it as a critical violation otherwise.

The copy happens after every build, not through ``html_static_path``: Sphinx 7.4 does
not overwrite static files that already exist in the output. For the same reason the
folders of ``html_static_path`` (``book/_assets``) are copied again after every build: an
incremental build in which no page changed skips Sphinx's own copy.

Configuration: ``offline_assets_node_modules`` (default ``"node_modules"``, relative to
the folder of ``_config.yml``; the ``BOOK_NODE_MODULES`` environment variable wins).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Folder under the output's ``_static/`` that receives the vendored files.
OFFLINE_DIR = "offline"

#: The CDN stylesheet ``Animation.to_jshtml()`` writes, and the local file replacing it.
CDN_REWRITES = {
    "https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/font-awesome.min.css": (
        f"_static/{OFFLINE_DIR}/font-awesome/css/font-awesome.min.css"
    ),
}

FONT_SUFFIXES = (".woff2", ".woff", ".ttf", ".eot", ".svg")


@dataclass(frozen=True)
class Asset:
    """One file or folder of an npm package copied to ``_static/offline/<target>``.

    ``suffixes``: for a folder, copy only files ending so (all files when empty).
    """

    source: str
    target: str
    suffixes: tuple[str, ...] = ()


ASSETS = (
    # MathJax loads its fonts, TeX extensions, menu and accessibility code lazily, relative to itself.
    Asset("mathjax/es5", "mathjax"),
    Asset("mathjax/LICENSE", "mathjax/LICENSE"),
    Asset("requirejs/require.js", "require.js"),
    Asset("@jupyter-widgets/html-manager/dist/embed-amd.js", "html-manager/embed-amd.js"),
    # The widget CSS names its fonts by content hash, next to embed-amd.js.
    Asset("@jupyter-widgets/html-manager/dist", "html-manager", FONT_SUFFIXES),
    Asset("font-awesome/css", "font-awesome/css"),
    Asset("font-awesome/fonts", "font-awesome/fonts"),
)

FONTAWESOME_CONFIG = 'window.FontAwesomeConfig = {autoReplaceSvg: "nest"};'

#: Load order of the widget scripts on a page (as Sphinx names them: ``nb_ipywidgets_js`` under ``_static/``).
WIDGET_SCRIPT_ORDER = tuple(
    f"_static/{name}"
    for name in ("widgets-config.js", f"{OFFLINE_DIR}/require.js", f"{OFFLINE_DIR}/html-manager/embed-amd.js")
)

#: Replacements in every page body, after the CDN links: (old, new).
BODY_FIXES = ((' role="doc-biblioentry"', ' role="listitem"'),)


def node_modules(app: Sphinx) -> Path:
    """The ``node_modules`` folder the assets are copied from."""
    folder = os.environ.get("BOOK_NODE_MODULES") or app.config.offline_assets_node_modules
    return (Path(app.confdir) / folder).resolve()


def check_assets(app: Sphinx) -> None:
    """Fail early, with the fix, when ``npm ci`` has not been run."""
    if app.builder.format != "html":
        return
    root = node_modules(app)
    missing = [asset.source for asset in ASSETS if not (root / asset.source).exists()]
    if missing:
        raise ExtensionError(
            f"offline_assets: {root} lacks {', '.join(missing)}; run `npm ci` in the repository root "
            "(or `make book`, which does)"
        )


def copy_assets(app: Sphinx, exception: Exception | None) -> None:
    """Copy the vendored files into ``<outdir>/_static/offline/``."""
    if exception is not None or app.builder.format != "html":
        return
    root = node_modules(app)
    destination = Path(app.outdir) / "_static" / OFFLINE_DIR
    for asset in ASSETS:
        source, target = root / asset.source, destination / asset.target
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif asset.suffixes:
            target.mkdir(parents=True, exist_ok=True)
            for file in source.iterdir():
                if file.is_file() and file.name.endswith(asset.suffixes):
                    shutil.copy2(file, target / file.name)
        else:
            shutil.copytree(source, target, dirs_exist_ok=True)
    for folder in app.config.html_static_path:
        source = Path(app.confdir) / folder
        if source.is_dir():
            shutil.copytree(source, Path(app.outdir) / "_static", dirs_exist_ok=True)
    logger.info(f"offline_assets: copied {len(ASSETS)} vendored assets into {destination}")


def fix_page(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    """De-duplicate the page's scripts and point CDN links in its body at local copies."""
    scripts = context.get("script_files")
    if scripts:
        seen: set[tuple[Any, ...]] = set()
        unique = []
        for script in scripts:
            # Two copies of one script may differ in priority only.
            key = (os.fspath(script.filename or ""), tuple(sorted(script.attributes.items())))
            if key not in seen:
                seen.add(key)
                unique.append(script)
        # The widget scripts trade places among the slots they occupy; everything else stays put.
        slots = [i for i, script in enumerate(unique) if os.fspath(script.filename or "") in WIDGET_SCRIPT_ORDER]
        ordered = sorted(
            (unique[i] for i in slots), key=lambda script: WIDGET_SCRIPT_ORDER.index(os.fspath(script.filename))
        )
        for i, script in zip(slots, ordered):
            unique[i] = script
        scripts[:] = unique
    body = context.get("body")
    if body:
        for cdn_url, local in CDN_REWRITES.items():
            if cdn_url in body:
                body = body.replace(cdn_url, context["pathto"](local, 1))
        for old, new in BODY_FIXES:
            body = body.replace(old, new)
        context["body"] = body


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("offline_assets_node_modules", "node_modules", "html", types=[str])
    app.add_js_file(None, body=FONTAWESOME_CONFIG, priority=1)
    app.connect("builder-inited", check_assets)
    # Late, so that scripts other extensions add to the page (myst-nb's widget loaders) are seen.
    app.connect("html-page-context", fix_page, priority=900)
    app.connect("build-finished", copy_assets)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
