"""The web book: its table of contents, its stored notebooks, and a strict, executed build.

The build test runs the same command as ``make book`` (``jupyter-book build . -W -n --keep-going``
after ``npm ci`` and the model-cache warm-up), reusing the execution cache: any Sphinx warning,
broken reference or failing cell fails it. tests/test_site.py checks the built pages in a browser.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import BOOK_GROUP, ROOT, BookBuild

CHAPTERS = 11
TOC = ROOT / "_toc.yml"
#: jupyter-cache's folder (``execute.cache`` of _config.yml), where the build records each execution.
EXECUTION_CACHE = ROOT / yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]["cache"]


def toc_files() -> list[str]:
    """Every file of ``_toc.yml`` (root first), without suffix, relative to the repository root."""
    toc = yaml.safe_load(TOC.read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return files


def source_of(entry: str) -> Path | None:
    """The source file of a toc entry (a notebook or a MyST page), or None."""
    for suffix in (".ipynb", ".md"):
        if (ROOT / (entry + suffix)).is_file():
            return ROOT / (entry + suffix)
    return None


def chapter_number(entry: str) -> int | None:
    match = re.fullmatch(r"book/(\d\d)_\w+", entry)
    return int(match.group(1)) if match else None


BOOK_NOTEBOOKS = sorted((ROOT / "book").rglob("*.ipynb"))
TOC_NOTEBOOKS = [e for e in toc_files() if (source := source_of(e)) is not None and source.suffix == ".ipynb"]


# ---------------------------------------------------------------- table of contents and sources


def test_toc_lists_every_chapter_once_in_order():
    numbers = [n for n in map(chapter_number, toc_files()) if n is not None]
    assert numbers == list(range(1, CHAPTERS + 1)), f"_toc.yml chapters: {numbers}, expected 1..{CHAPTERS} in order"


@pytest.mark.parametrize("entry", toc_files())
def test_toc_entry_exists(entry):
    assert source_of(entry) is not None, f"_toc.yml lists {entry}, but neither {entry}.ipynb nor {entry}.md exists"


def test_toc_has_appendices():
    appendices = [e for e in toc_files() if e.startswith("book/appendix/")]
    assert {"book/appendix/api", "book/appendix/bibliography", "book/appendix/instructor_guide"} <= set(appendices)


def test_every_chapter_file_is_in_toc():
    listed = set(toc_files())
    # book/_ext and book/_assets hold no pages.
    pages = [
        p
        for p in (ROOT / "book").rglob("*")
        if p.suffix in {".ipynb", ".md"} and not p.relative_to(ROOT).parts[1].startswith("_")
    ]
    missing = [str(p.relative_to(ROOT)) for p in pages if str(p.relative_to(ROOT).with_suffix("")) not in listed]
    assert not missing, f"pages under book/ missing from _toc.yml (Sphinx warns, so the -W build fails): {missing}"


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    stored = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not stored, (
        f"{path.name}: code cells {stored} store outputs or execution counts; every number of the book is "
        "computed at build time. Clear them: jupyter nbconvert --clear-output --inplace " + str(path.relative_to(ROOT))
    )


# ---------------------------------------------------------------- the build


def warnings_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(r"WARNING|ERROR|Error|Traceback", line)]


@pytest.mark.xdist_group(BOOK_GROUP)
@pytest.mark.slow
def test_build_succeeds(book_build: BookBuild):
    assert book_build.returncode == 0, (
        f"`make book` failed (exit {book_build.returncode}) after {book_build.seconds:.0f} s. Warnings and errors:\n"
        + "\n".join(warnings_of(book_build.output)[-60:])
        + "\n--- last lines ---\n"
        + "\n".join(book_build.output.splitlines()[-30:])
    )
    assert (book_build.html / "index.html").is_file()


@pytest.mark.xdist_group(BOOK_GROUP)
@pytest.mark.slow
@pytest.mark.parametrize("entry", TOC_NOTEBOOKS)
def test_chapter_executed(book_build: BookBuild, entry):
    """The chapter, as it stands, ran to the end: every code cell in order, no error, outputs on its page.

    The build reuses jupyter-cache's executions, whose merged notebooks carry no execution counts;
    the cache's own record of the run does, and it matches only the chapter's current code.
    """
    from jupyter_cache import get_cache

    book_build.require_success()
    source = nbformat.read(ROOT / f"{entry}.ipynb", as_version=4)
    cache = get_cache(EXECUTION_CACHE)
    try:
        record = cache.match_cache_notebook(source)
    except KeyError:
        pytest.fail(f"{entry}: {EXECUTION_CACHE} holds no successful execution of its current code")
    notebook = cache.get_cache_bundle(record.pk).nb
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    ran = [cell.get("execution_count") for cell in code if "skip-execution" not in cell.metadata.get("tags", [])]
    assert ran and all(isinstance(c, int) for c in ran), f"{entry}: cells without an execution count: {ran}"
    assert ran == sorted(ran) and len(set(ran)) == len(ran), f"{entry}: cells ran out of order: {ran}"
    errors = [o for cell in code for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{entry}: error outputs: {[e.get('ename') for e in errors]}"

    assert (book_build.executed / f"{entry}.ipynb").is_file(), f"{entry}: myst-nb wrote no executed notebook"
    page = book_build.html / f"{entry}.html"
    assert page.is_file(), f"no page {page.relative_to(ROOT)}"
    if any(cell.get("outputs") for cell in code):
        assert "cell_output" in page.read_text(), f"{page.name} shows no cell output"


class _Assets(HTMLParser):
    """src/href of every script, stylesheet, image and iframe of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in {"script", "img", "iframe", "source"} and attributes.get("src"):
            self.urls.append(attributes["src"])
        elif (
            tag == "link"
            and attributes.get("href")
            and attributes.get("rel") in {"stylesheet", "preload", "icon", "modulepreload"}
        ):
            self.urls.append(attributes["href"])


@pytest.mark.xdist_group(BOOK_GROUP)
@pytest.mark.slow
def test_pages_load_nothing_from_other_hosts(book_build: BookBuild):
    """Scripts, styles and images come from the site itself (links to other sites are fine).

    tests/test_site.py checks what a browser actually requests; this check needs no browser.
    """
    book_build.require_success()
    remote: dict[str, list[str]] = {}
    for page in sorted(book_build.html.rglob("*.html")):
        parser = _Assets()
        parser.feed(page.read_text(errors="replace"))
        urls = [u for u in parser.urls if re.match(r"(https?:)?//", u)]
        if urls:
            remote[str(page.relative_to(book_build.html))] = sorted(set(urls))
    assert not remote, f"pages load assets from other hosts: {remote}"


@pytest.mark.xdist_group(BOOK_GROUP)
@pytest.mark.slow
@pytest.mark.parametrize(
    "chapter", ["04_fully_convolutional", "05_dilated_convolution", "08_encoder_decoder", "09_putting_it_together"]
)
def test_glued_verdicts_follow_the_glued_numbers(book_build: BookBuild, chapter, tmp_path):
    """No sentence claims an improvement (or a difference) that the numbers glued beside it contradict.

    The glued values are read from jupyter-cache's record of the build's execution: the executed
    notebooks myst-nb writes to _build/jupyter_execute drop the outputs of ``glue(..., display=False)``.
    """
    from glue_claims import contradictions
    from jupyter_cache import get_cache

    book_build.require_success()
    source = nbformat.read(ROOT / "book" / f"{chapter}.ipynb", as_version=4)
    cache = get_cache(EXECUTION_CACHE)
    try:
        record = cache.match_cache_notebook(source)
    except KeyError:
        pytest.fail(f"{chapter}: {EXECUTION_CACHE} holds no successful execution of its current code")
    executed = tmp_path / f"{chapter}.ipynb"
    nbformat.write(cache.get_cache_bundle(record.pk).nb, executed)
    assert contradictions(chapter, executed) == []
