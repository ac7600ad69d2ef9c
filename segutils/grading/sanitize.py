"""The feedback page a student's notebook becomes, without anything that runs in a browser.

nbgrader's feedback (nbconvert's HTML exporter, ``feedback`` template) renders a notebook's
Markdown cells and its HTML, Markdown, SVG and JavaScript outputs as they are: a ``<script>`` or an
``<img onerror=...>`` in a submission would run in the browser of whoever opens the feedback (the
student, a teaching assistant, the instructor). :func:`configure_feedback` makes ``GenerateFeedback``
use :class:`FeedbackExporter`: nbconvert's own ``sanitize_html`` switch on (its templates then pass
raw cells and HTML and Markdown outputs through the ``clean_html`` filter and leave out JavaScript
and widget outputs) with :func:`clean_html` as that filter, and Markdown cells cleaned where they are
rendered (nbgrader's feedback template renders them itself, without ``clean_html``). It also adds
:class:`SanitizeFeedback`, which keeps only the output types and metadata the template renders safely.

:func:`clean_html` is `nh3 <https://nh3.readthedocs.io>`_ (the Rust ``ammonia`` sanitizer) with its
default allow-list (formatting, headings, lists, tables, links, images) plus ``class`` and ``id``
(nbconvert's code highlighting and heading anchors), and ``data:`` URLs for images only. Scripts,
styles, event handlers (``onerror``...), ``javascript:`` links, frames and forms are removed.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import nh3
from jinja2 import BytecodeCache, pass_context
from jinja2.bccache import Bucket
from nbconvert.exporters import HTMLExporter, TemplateExporter
from nbconvert.filters.highlight import Highlight2HTML
from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode
from traitlets import Bool

#: Output types the feedback shows; the others (JavaScript, widgets, PDF...) are left out.
SAFE_MIMETYPES = (
    "text/plain",
    "text/html",
    "text/markdown",
    "text/latex",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/svg+xml",
    "application/json",
)
_IMAGE_DATA_URL = re.compile(r"data:image/(png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/=\s]*", re.I)
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")
_TAGS = set(nh3.ALLOWED_TAGS) | {"div", "span", "pre", "code"}
_ATTRIBUTES = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
_ATTRIBUTES["*"] = _ATTRIBUTES.get("*", set()) | {"class", "id"}
_URL_SCHEMES = set(nh3.ALLOWED_URL_SCHEMES) | {"data"}
#: What ``HTMLExporter``'s second parse of a page edits: an ``<img>`` without ``alt``, a JupyterLab cell.
_REPARSE_EDITS = re.compile(r"<img\b(?![^>]*\salt\s*=)|jp-Notebook", re.IGNORECASE)


def _attribute(tag: str, attribute: str, value: str) -> str | None:
    """nh3's ``attribute_filter``: ``data:`` URLs only as the source of an image, and only images."""
    if attribute in ("src", "href", "cite", "srcset") and value.strip().lower().startswith("data:"):
        return value if tag == "img" and attribute == "src" and _IMAGE_DATA_URL.fullmatch(value.strip()) else None
    return value


def clean_html(html: Any) -> str:
    """``html`` without scripts, event handlers, styles or dangerous URLs (see the module docstring)."""
    text = html.decode("utf-8", "replace") if isinstance(html, bytes) else str(html)
    return nh3.clean(
        text,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        attribute_filter=_attribute,
        strip_comments=True,
    )


def _dimension(value: Any) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 100_000 else None


def _clean_metadata(metadata: Any) -> dict:
    """Output metadata the template may put in an attribute: numeric ``width``/``height`` per image type."""
    clean: dict = {}
    for mime, values in metadata.items() if isinstance(metadata, dict) else []:
        if mime in ("image/png", "image/jpeg", "image/gif") and isinstance(values, dict):
            kept = {k: _dimension(values.get(k)) for k in ("width", "height")}
            kept = {k: v for k, v in kept.items() if v is not None}
            if kept:
                clean[mime] = kept
    return clean


def _clean_data(data: Any) -> dict:
    clean = {}
    for mime, value in data.items() if isinstance(data, dict) else []:
        if mime not in SAFE_MIMETYPES:
            continue
        if mime.startswith("image/") and mime != "image/svg+xml":
            if not (isinstance(value, str) and _BASE64.fullmatch(value)):
                continue  # the template builds a data: URL from it
        elif mime == "text/html":
            value = clean_html("".join(value) if isinstance(value, list) else value)
        clean[mime] = value
    return clean


class SanitizeFeedback(Preprocessor):
    """Keep only what the feedback template renders safely (a ``GenerateFeedback`` preprocessor).

    Display outputs keep the types of :data:`SAFE_MIMETYPES` (HTML already cleaned), images only
    as base64 text, and no metadata but numeric image sizes (the template writes those into
    unquoted attributes). Markdown attachments keep images only. Widget state is dropped. Markdown
    cells and HTML/Markdown outputs are cleaned as the template renders them (``clean_html``).
    """

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        nb.metadata.pop("widgets", None)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if "attachments" in cell:
            cell.attachments = {
                name: {
                    m: v
                    for m, v in bundle.items()
                    if m in ("image/png", "image/jpeg", "image/gif") and isinstance(v, str) and _BASE64.fullmatch(v)
                }
                for name, bundle in cell.attachments.items()
                if isinstance(bundle, dict)
            }
        for output in cell.get("outputs", []):
            if output.get("output_type") in ("display_data", "execute_result"):
                output.data = _clean_data(output.get("data"))
                output.metadata = _clean_metadata(output.get("metadata"))
        return cell, resources


class TemplateBytecode(BytecodeCache):
    """Jinja's compiled templates kept in this process's memory, shared by every :class:`FeedbackExporter`.

    Each nbconvert exporter builds its own Jinja environment, so every graded notebook compiled the
    feedback templates again (about 0.2 s). The grading job server fills this cache before it forks
    the jobs (:func:`warm_feedback_exporter`); each job then loads the compiled code. Jinja keys a
    bucket by template name and file and checks the source's checksum, so an edited template is
    compiled again rather than served stale.
    """

    def __init__(self) -> None:
        self.compiled: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        if bucket.key in self.compiled:
            bucket.bytecode_from_string(self.compiled[bucket.key])

    def dump_bytecode(self, bucket: Bucket) -> None:
        self.compiled[bucket.key] = bucket.bytecode_to_string()


#: The process's :class:`TemplateBytecode`.
TEMPLATE_BYTECODE = TemplateBytecode()


class FeedbackExporter(HTMLExporter):
    """nbconvert's HTML exporter that never lets a notebook's HTML run: ``sanitize_html`` on, and every
    Markdown text (cells, outputs, comments) cleaned by :func:`clean_html` as it is rendered."""

    sanitize_html = Bool(True, help="clean the HTML of Markdown cells and outputs (always, for feedback)").tag(
        config=True
    )

    @pass_context
    def markdown2html(self, context, source):
        return clean_html(HTMLExporter.markdown2html(self, context, source))

    def _create_environment(self):
        environment = super()._create_environment()
        environment.bytecode_cache = TEMPLATE_BYTECODE
        return environment

    def default_filters(self):
        for name, value in super().default_filters():
            yield (name, clean_html) if name == "clean_html" else (name, value)

    def from_notebook_node(self, nb: NotebookNode, resources: dict | None = None, **kw: Any) -> tuple[str, dict]:
        """The page :class:`HTMLExporter` writes, without its second parse of the page where that edits nothing.

        After rendering, ``HTMLExporter`` parses the whole page again with BeautifulSoup's
        pure-Python parser only to give ``<img>`` tags without ``alt`` a placeholder text and
        JupyterLab cells a ``tabindex``. On a graded notebook that parse takes longer than the
        rendering (0.5 to 1.1 s of every feedback file). The feedback template has no JupyterLab
        cells, so a page without an ``<img>`` that lacks ``alt`` is returned as rendered (the
        first lines are ``HTMLExporter.from_notebook_node``'s own); any other page is exported by
        ``HTMLExporter`` whole.
        """
        original = copy.deepcopy(resources)
        language = nb.metadata.get("language_info", {})
        lexer = language.get("pygments_lexer", language.get("name", None))
        highlight_code = self.filters.get("highlight_code", Highlight2HTML(pygments_lexer=lexer, parent=self))
        resources = self._init_resources(resources)
        data_types = WidgetsDataTypeFilter(notebook_metadata=self._nb_metadata, parent=self, resources=resources)
        self.register_filter("highlight_code", highlight_code)
        self.register_filter("filter_data_type", data_types)
        html, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
        if _REPARSE_EDITS.search(html):
            return HTMLExporter.from_notebook_node(self, nb, original, **kw)
        return html, resources


def feedback_config() -> Any:
    """A traitlets ``Config`` with :func:`configure_feedback`'s settings and the template set-up nbgrader's
    ``GenerateFeedback`` adds (its ``feedback`` template, template folder and Bootstrap stylesheet)."""
    from pathlib import Path

    from nbgrader import converters
    from traitlets.config import Config

    config = Config()
    configure_feedback(config)
    formgrader = Path(converters.__file__).parent.parent / "server_extensions" / "formgrader"
    config.HTMLExporter.template_name = "feedback"
    config.HTMLExporter.extra_template_basedirs = [str(formgrader / "templates")]
    config.HTMLExporter.extra_template_paths = [
        str(formgrader / "static" / "node_modules" / "bootstrap" / "dist" / "css")
    ]
    return config


def warm_feedback_exporter() -> None:
    """Render a small notebook as ``GenerateFeedback`` renders feedback (:func:`feedback_config`), so that
    this process holds the compiled templates (:data:`TEMPLATE_BYTECODE`), the Python lexer's compiled
    rules and the Markdown parser that every forked grading job would otherwise build for itself."""
    import nbformat

    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Title\n\nSome *text*."), nbformat.v4.new_code_cell("x = 1  # one")],
        metadata={"language_info": {"name": "python", "pygments_lexer": "ipython3"}},
    )
    resources = {"nbgrader": {"notebook": "warm", "score": 0.0, "max_score": 1.0, "late_penalty": 0.0}}
    FeedbackExporter(config=feedback_config()).from_notebook_node(nb, resources)


def configure_feedback(cfg: Any) -> None:
    """Make ``GenerateFeedback`` (configured by ``cfg``, a traitlets ``Config``) write sanitized pages.

    Adds :class:`SanitizeFeedback` before nbconvert's CSS preprocessor (or last) and makes
    :class:`FeedbackExporter` the exporter, with :func:`clean_html` as the templates' ``clean_html`` filter.
    """
    preprocessors = list(cfg.GenerateFeedback.get("preprocessors", []))
    if SanitizeFeedback not in preprocessors:
        at = next(
            (i for i, p in enumerate(preprocessors) if getattr(p, "__name__", "") == "CSSHTMLHeaderPreprocessor"),
            len(preprocessors),
        )
        preprocessors.insert(at, SanitizeFeedback)
    cfg.GenerateFeedback.preprocessors = preprocessors
    cfg.GenerateFeedback.exporter_class = FeedbackExporter
    cfg.HTMLExporter.sanitize_html = True
    cfg.HTMLExporter.filters = {**dict(cfg.HTMLExporter.get("filters", {})), "clean_html": clean_html}
