"""The course's identity, kept in one place: ``course.toml`` at the repository root.

An instructor who forks the course changes its repository address, its published site, its name and its
term there, once (``segutils course init --repo URL --site URL --name NAME [--term TERM]``), and everything
that shows them is generated from it:

- the book: ``_config.yml`` gets ``html.baseurl``, ``repository.url``/``branch`` and the MyST substitutions
  (``parse.myst_substitutions``) that the chapters' Markdown uses, e.g.
  ``{{ "[a1](" ~ repo_url ~ "/blob/" ~ branch ~ "/assignments/a1/a1.ipynb)" }}`` (MyST cannot substitute
  inside a link target, so the whole link is one Jinja expression);
- the assignments: the sources in ``solutions/`` hold ``{{ site_url }}``, ``{{ repo_url }}``...; nbgrader's
  ``generate_assignment`` (``make assignments``) fills them in the releases through the preprocessor
  :class:`segutils.grading.course_identity.FillCourseIdentity` that ``nbgrader_config.py`` puts first.

:func:`apply_paths` (``segutils course apply PATH...``) turns hard-coded copies of the addresses that
``course.toml`` holds (run it before changing them) in notebooks and Markdown into those tokens. It is
idempotent, changes only the ``source`` of the cells that hold a copy, and writes a notebook the way
Jupyter and nbformat do (one-space indent, sorted keys).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import tomllib

COURSE_FILE = "course.toml"
_URL = re.compile(r"^https?://[^\s\"'<>{}|\\^`]+$")
_FROM = "# from course.toml (segutils course init)"
_GENERATED = "# generated from course.toml by `segutils course init`: edit course.toml instead"


class CourseError(ValueError):
    """course.toml is missing or wrong, or a file cannot be converted."""


@dataclass(frozen=True)
class Identity:
    """What makes a copy of the course someone's course.

    Attributes:
        repository: the Git repository's web address, no trailing slash (``https://github.com/me/course``).
        site: the address of the published book, no trailing slash (``https://me.github.io/course``).
        name: the course's name as students know it.
        term: the term it runs in (``"Spring 2027"``), or ``""``.
        branch: the branch the book's links to files point at.
    """

    repository: str
    site: str
    name: str
    term: str = ""
    branch: str = "main"

    def __post_init__(self) -> None:
        for key in ("repository", "site"):
            value = getattr(self, key)
            if not isinstance(value, str) or not _URL.match(value):
                raise CourseError(
                    f"course {key}: expected an http(s) address without spaces, quotes or braces, got {value!r}"
                )
            if value.endswith("/"):
                object.__setattr__(self, key, value.rstrip("/"))
        for key in ("name", "term", "branch"):
            value = getattr(self, key)
            if not isinstance(value, str) or any(ch in value for ch in '"\\\n{}'):
                raise CourseError(
                    f"course {key}: expected one line of text without quotes, backslashes or braces, got {value!r}"
                )
        if not self.name.strip():
            raise CourseError("course name: must not be empty")
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", self.branch):
            raise CourseError(f"course branch: {self.branch!r} is not a branch name")

    def tokens(self) -> dict[str, str]:
        """The names the book's substitutions and the assignments' ``{{ name }}`` tokens use."""
        return {
            "repo_url": self.repository,
            "site_url": self.site,
            "course_name": self.name,
            "course_term": self.term,
            "branch": self.branch,
        }


def find_course_file(start: Path) -> Path | None:
    """``course.toml`` in ``start`` or the nearest folder above it, else ``None``."""
    start = Path(start).resolve()
    for folder in [start, *start.parents]:
        if (folder / COURSE_FILE).is_file():
            return folder / COURSE_FILE
    return None


def load(root: Path) -> Identity:
    """The identity in ``root/course.toml``; :class:`CourseError` naming the problem when it is unusable."""
    path = Path(root) / COURSE_FILE
    if not path.is_file():
        raise CourseError(f"{path} is missing: run `segutils course init --repo URL --site URL --name NAME`")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise CourseError(f"{path}: not valid TOML: {error}") from None
    table = data.get("course")
    if not isinstance(table, dict):
        raise CourseError(f"{path}: needs a [course] table")
    known = {f.name for f in fields(Identity)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise CourseError(f"{path}: unknown keys {unknown} in [course] (known: {sorted(known)})")
    try:
        return Identity(**table)
    except CourseError as error:
        raise CourseError(f"{path}: {error}") from None


def dumps(identity: Identity) -> str:
    """``course.toml``'s text for ``identity`` (every value a TOML basic string)."""
    lines = [
        "# The course's identity: the one place for its addresses, its name and its term.",
        "# Change it with `segutils course init --repo URL --site URL --name NAME [--term TERM]`, which",
        "# regenerates _config.yml's generated lines and the assignment releases (see the instructor guide).",
        "[course]",
    ]
    lines += [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in asdict(identity).items()]
    return "\n".join(lines) + "\n"


def save(root: Path, identity: Identity) -> Path:
    path = Path(root) / COURSE_FILE
    path.write_text(dumps(identity), encoding="utf-8")
    return path


# -- filling tokens ---------------------------------------------------------------------------------------
def _token_pattern(names: Iterable[str]) -> re.Pattern:
    return re.compile(r"\{\{\s*(" + "|".join(map(re.escape, names)) + r")\s*\}\}")


TOKEN = _token_pattern(["repo_url", "site_url", "course_name", "course_term", "branch"])


def fill(text: str, identity: Identity) -> str:
    """``text`` with every ``{{ repo_url }}``, ``{{ site_url }}``... replaced by its value (other braces kept)."""
    values = identity.tokens()
    return TOKEN.sub(lambda m: values[m.group(1)], text)


# -- _config.yml ------------------------------------------------------------------------------------------
def _yaml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def render_config(text: str, identity: Identity) -> str:
    """``_config.yml``'s ``text`` with the lines generated from ``identity`` rewritten: ``html.baseurl``,
    ``repository.url`` and ``repository.branch``, and the ``parse.myst_substitutions`` block."""
    lines = text.split("\n")
    section = None
    out: list[str] = []
    skipping = False
    for line in lines:
        top = re.match(r"^([A-Za-z_]\w*):", line)
        if skipping:
            if line.startswith("    ") or (line.strip().startswith("#") and line.startswith("  ")):
                continue
            skipping = False
        if top:
            section = top.group(1)
        if line.strip() == _GENERATED:
            continue
        if section == "html" and re.match(r"^  baseurl:", line):
            line = f"  baseurl: {identity.site}/  {_FROM}"
        elif section == "repository" and re.match(r"^  url:", line):
            line = f"  url: {identity.repository}  {_FROM}"
        elif section == "repository" and re.match(r"^  branch:", line):
            line = f"  branch: {identity.branch}  {_FROM}"
        elif section == "parse" and re.match(r"^  myst_substitutions:", line):
            skipping = True
            continue
        out.append(line)
        if top and section == "parse":
            out.append(f"  {_GENERATED}")
            out.append("  myst_substitutions:")
            out += [f"    {key}: {_yaml_string(value)}" for key, value in identity.tokens().items()]
    if "parse" not in {m.group(1) for m in (re.match(r"^([A-Za-z_]\w*):", x) for x in lines) if m}:
        while out and out[-1] == "":
            out.pop()
        out += ["", "parse:", f"  {_GENERATED}", "  myst_substitutions:"]
        out += [f"    {key}: {_yaml_string(value)}" for key, value in identity.tokens().items()]
        out.append("")
    return "\n".join(out)


def config_problems(config: Path, identity: Identity) -> list[str]:
    """What in ``_config.yml`` disagrees with ``identity`` (empty when it was generated from it)."""
    import yaml

    data = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    problems = []
    expected = {
        ("html", "baseurl"): identity.site + "/",
        ("repository", "url"): identity.repository,
        ("repository", "branch"): identity.branch,
    }
    for (section, key), value in expected.items():
        got = (data.get(section) or {}).get(key)
        if got != value:
            problems.append(f"{config}: {section}.{key} is {got!r}, course.toml says {value!r}")
    substitutions = (data.get("parse") or {}).get("myst_substitutions")
    if substitutions != identity.tokens():
        problems.append(
            f"{config}: parse.myst_substitutions is {substitutions!r}, course.toml says {identity.tokens()!r}"
        )
    return problems


# -- converting hard-coded copies into tokens ----------------------------------------------------------------
def _jinja_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _address_pattern(identity: Identity) -> re.Pattern:
    addresses = sorted({identity.repository, identity.site}, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, addresses)) + r")(?![\w-]|\.\w)")


def _token_for(address: str, identity: Identity) -> str:
    return "repo_url" if address == identity.repository else "site_url"


def _blob(rest: str, identity: Identity) -> tuple[str, str] | None:
    """``(before, after)`` of ``rest`` around ``/blob/<branch>/``, when it points into the branch."""
    for branch in {identity.branch, "main"}:
        marker = f"/blob/{branch}/"
        if rest.startswith(marker):
            return "/blob/", "/" + rest[len(marker) :]
    return None


def convert_plain(text: str, identity: Identity) -> str:
    """Hard-coded addresses in ``text`` as ``{{ repo_url }}``/``{{ site_url }}`` tokens (nbgrader sources and
    anything else that :func:`fill` fills literally)."""
    return _address_pattern(identity).sub(lambda m: "{{ " + _token_for(m.group(1), identity) + " }}", text)


_LINK = re.compile(r"\[(?P<text>[^\[\]\n]*)\]\((?P<url>[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)\)")
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S
)


def _jinja_url(url: str, identity: Identity, pattern: re.Pattern) -> str | None:
    """A Jinja expression for ``url`` when it starts with a course address, else ``None``."""
    match = pattern.match(url)
    if not match:
        return None
    rest = url[match.end() :]
    parts = [_token_for(match.group(1), identity)]
    blob = _blob(rest, identity)
    if blob:
        parts += [_jinja_literal(blob[0]), "branch", _jinja_literal(blob[1])]
    elif rest:
        parts.append(_jinja_literal(rest))
    return " ~ ".join(parts)


def convert_myst(text: str, identity: Identity) -> str:
    """Hard-coded addresses in MyST Markdown ``text`` (a book chapter's Markdown cell) as substitutions.

    A link ``[t](URL/x)`` becomes ``{{ "[t](" ~ repo_url ~ "/x)" }}``; a fenced code block of one line that
    holds an address becomes one line of inline code built the same way (substitutions do not reach inside
    code blocks); any other copy ``URL/x`` becomes ``{{ repo_url ~ "/x" }}``.

    Raises:
        CourseError: a code block of several lines holds an address (convert it by hand).
    """
    pattern = _address_pattern(identity)

    def fence(m: re.Match) -> str:
        body = m.group("body")
        if not pattern.search(body):
            return m.group(0)
        content = body.strip()
        if "\n" in content or "`" in content:
            raise CourseError(f"a code block of several lines holds a course address; convert it by hand:\n{body}")
        url = pattern.search(content)
        before, after = content[: url.start()], content[url.start() :]
        expression = _jinja_url(after.split()[0], identity, pattern)
        tail = after[len(after.split()[0]) :]
        code = f"{_jinja_literal('`' + before)} ~ {expression} ~ {_jinja_literal(tail + '`')}"
        return f"{m.group('indent')}{{{{ {code} }}}}"

    def link(m: re.Match) -> str:
        expression = _jinja_url(m.group("url"), identity, pattern)
        if expression is None:
            return m.group(0)
        return "{{ " + f"{_jinja_literal('[' + m.group('text') + '](')} ~ {expression} ~ {_jinja_literal(')')}" + " }}"

    def bare(m: re.Match) -> str:
        url = m.group(0).rstrip(".,;:!?")
        return "{{ " + _jinja_url(url, identity, pattern) + " }}" + m.group(0)[len(url) :]

    text = _FENCE.sub(fence, text)
    text = _LINK.sub(link, text)
    # What is left: bare copies outside links and outside substitutions already written.
    pieces = re.split(r"(\{\{.*?\}\})", text, flags=re.S)
    for i in range(0, len(pieces), 2):
        pieces[i] = re.sub(r"(?:" + pattern.pattern + r")[^\s)<>\]\"'`]*", bare, pieces[i])
    return "".join(pieces)


def _source_text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source)


def _source_like(original, text: str):
    """``text`` in the form ``original`` had (a list of lines, as Jupyter writes, or one string)."""
    return text.splitlines(keepends=True) if isinstance(original, list) else text


def convert_notebook(path: Path, identity: Identity, *, myst: bool) -> bool:
    """Convert the hard-coded addresses in the cells of the notebook at ``path``; ``True`` when it changed.

    Only ``source`` entries change; outputs, metadata, ids and formatting stay as they were. Markdown cells
    of a book chapter (``myst=True``) get MyST substitutions (:func:`convert_myst`), other cells and other
    notebooks get ``{{ repo_url }}``-style tokens (:func:`convert_plain`).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as error:
        raise CourseError(f"{path}: not a notebook (invalid JSON: {error})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise CourseError(f"{path}: not a notebook (no list of cells)")
    changed = False
    for index, cell in enumerate(nb["cells"]):
        old = _source_text(cell.get("source", ""))
        try:
            new = (convert_myst if myst and cell.get("cell_type") == "markdown" else convert_plain)(old, identity)
        except CourseError as error:
            raise CourseError(f"{path}, cell {index}: {error}") from None
        if new != old:
            cell["source"] = _source_like(cell.get("source", ""), new)
            changed = True
    if changed:
        Path(path).write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


def is_book_page(path: Path, root: Path) -> bool:
    """Book pages are rendered by MyST (substitutions); everything else is filled literally."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).parts[0] == "book"
    except (ValueError, IndexError):
        return False


def apply_paths(paths: Iterable[Path], root: Path, identity: Identity) -> list[Path]:
    """Convert the hard-coded addresses of ``paths`` (``.ipynb`` and ``.md``) into tokens; the files changed."""
    changed = []
    for path in map(Path, paths):
        if not path.is_file():
            raise CourseError(f"{path}: no such file")
        myst = is_book_page(path, root)
        if path.suffix == ".ipynb":
            if convert_notebook(path, identity, myst=myst):
                changed.append(path)
        elif path.suffix == ".md":
            old = path.read_text(encoding="utf-8")
            new = convert_myst(old, identity) if myst else old
            if not myst and _address_pattern(identity).search(old):
                raise CourseError(
                    f"{path}: Markdown outside the book is not rendered by MyST: "
                    "write its addresses with `segutils course init` in mind (see the guide)"
                )
            if new != old:
                path.write_text(new, encoding="utf-8")
                changed.append(path)
        else:
            raise CourseError(f"{path}: only notebooks (.ipynb) and Markdown (.md) are converted")
    return changed


def hard_coded_copies(root: Path, identity: Identity, paths: Iterable[Path]) -> dict[Path, int]:
    """How many copies of the course's addresses each of ``paths`` holds."""
    pattern = _address_pattern(identity)
    found = {}
    for path in paths:
        count = len(pattern.findall(Path(path).read_text(encoding="utf-8", errors="replace")))
        if count:
            found[Path(path)] = count
    return found


# -- regenerating -------------------------------------------------------------------------------------------
def regenerate(root: Path, identity: Identity, *, releases: bool = True) -> list[str]:
    """Write ``course.toml`` and ``_config.yml``'s generated lines, then (``releases``) every release with
    ``nbgrader generate_assignment``; returns what was done, one line each."""
    import os
    import subprocess
    import sys

    root = Path(root)
    done = [f"wrote {save(root, identity)}"]
    config = root / "_config.yml"
    if config.is_file():
        text = config.read_text(encoding="utf-8")
        new = render_config(text, identity)
        if new != text:
            config.write_text(new, encoding="utf-8")
        done.append(f"updated {config}")
    if releases:
        sources = sorted(p for p in (root / "solutions").glob("*/*.ipynb") if p.stem == p.parent.name)
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)  # nbgrader runs alembic from PATH
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        for source in sources:
            result = subprocess.run(
                [str(Path(bin_dir) / "nbgrader"), "generate_assignment", source.stem, "--force", "--log-level=ERROR"],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise CourseError(f"nbgrader generate_assignment {source.stem} failed:\n{result.stderr[-3000:]}")
            done.append(f"regenerated the release of {source.stem}")
    return done


def with_changes(identity: Identity, **changes: str | None) -> Identity:
    """``identity`` with the given fields changed (``None`` leaves one as it is)."""
    return replace(identity, **{k: v for k, v in changes.items() if v is not None})
