"""The course's identity (``course.toml``, :mod:`segutils.course`): one setting, every link generated from it.

The checks of the addresses read the repository's files; the end-to-end checks change the setting in a
temporary course (``segutils course init``) and look at what nbgrader and Jupyter Book produce from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import nbformat
import pytest
import yaml

from segutils import course

REPO = Path(__file__).resolve().parents[1]
OTHER = course.Identity(
    repository="https://git.example.edu/prof/seg-course",
    site="https://prof.example.edu/seg",
    name="Segmentation 101",
    term="Spring 2027",
)
# Files allowed to hold hard-coded copies of the addresses while a conversion is under way (run `segutils course
# apply` on them, then take them off): none now. A file listed after its conversion fails the test.
NOT_YET_CONVERTED: set[str] = set()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


def segutils(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segutils", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900
    )


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    suffixes = {".ipynb", ".md", ".yml", ".yaml", ".py", ".toml", ".txt", ".cfg", ".bib", ".html", ".json"}
    return [REPO / n for n in names if Path(n).suffix in suffixes and (REPO / n).is_file()]


# -- the setting -------------------------------------------------------------------------------------------
def test_the_repository_has_one_valid_setting_and_config_yml_follows_it():
    identity = course.load(REPO)
    assert course.config_problems(REPO / "_config.yml", identity) == []
    data = yaml.safe_load((REPO / "_config.yml").read_text())
    assert data["repository"]["url"] == identity.repository  # read back independently of config_problems
    assert data["html"]["baseurl"] == identity.site + "/"
    assert data["parse"]["myst_substitutions"]["repo_url"] == identity.repository
    assert "substitution" in data["parse"]["myst_enable_extensions"]


def test_no_copy_of_the_addresses_survives_outside_the_setting():
    identity = course.load(REPO)
    allowed = {"course.toml", "_config.yml"}  # _config.yml: generated lines, checked against course.toml above
    generated = {p.relative_to(REPO).as_posix() for p in (REPO / "assignments").glob("*/*.ipynb")}
    copies = course.hard_coded_copies(REPO, identity, _tracked_text_files())
    found = {p.relative_to(REPO).as_posix(): n for p, n in copies.items()}
    unexpected = {p: n for p, n in found.items() if p not in allowed | generated | NOT_YET_CONVERTED}
    assert not unexpected, f"hard-coded course addresses (run `segutils course apply` on them): {unexpected}"
    stale = sorted(NOT_YET_CONVERTED - set(found))
    assert not stale, f"converted already: remove {stale} from NOT_YET_CONVERTED"
    # A release is generated: its copies must come from tokens, so its source holds none.
    for release in generated & set(found):
        aid = Path(release).stem
        source = f"solutions/{aid}/{aid}.ipynb"
        assert source in NOT_YET_CONVERTED or source not in found, f"{source} holds hard-coded addresses"
    # Positive control: the scan does find a copy where there is one.
    assert course.hard_coded_copies(REPO, identity, [REPO / "course.toml"]) == {REPO / "course.toml": 2}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"repository": "github.com/me/x"}, "course repository: expected an http(s) address"),
        ({"site": "https://me.io/a b"}, "course site"),
        ({"name": " "}, "course name: must not be empty"),
        ({"term": 'a "b"'}, "course term"),
        ({"branch": "a b"}, "is not a branch name"),
    ],
)
def test_a_bad_value_is_refused_with_its_name(changes, message):
    with pytest.raises(course.CourseError, match=re.escape(message)):
        course.with_changes(OTHER, **changes)


def test_a_broken_course_file_names_the_problem(tmp_path):
    with pytest.raises(course.CourseError, match="missing: run `segutils course init"):
        course.load(tmp_path)
    (tmp_path / "course.toml").write_text(
        '[course]\nrepository = "https://a.org/x"\nsite = "https://a.org"\nname = "n"\nwebsite = "https://b.org"\n'
    )
    with pytest.raises(course.CourseError, match=r"unknown keys \['website'\]"):
        course.load(tmp_path)
    course.save(tmp_path, OTHER)
    assert course.load(tmp_path) == OTHER


# -- converting copies into tokens ---------------------------------------------------------------------------
def _notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for kind, source in cells:
        cell = (nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell)(source)
        cell.id = f"c{len(nb.cells)}"
        if kind == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{OTHER.repository}\n")]
            cell.metadata["tags"] = ["keep-me"]
        nb.cells.append(cell)
    return nb


CHAPTER = [
    (
        "markdown",
        f"Assignment [a1]({OTHER.repository}/blob/main/assignments/a1/a1.ipynb) and the\n"
        f"[site]({OTHER.site}/book/03.html#x), then bare {OTHER.repository}.\n"
        f"- On Colab:\n\n  ```\n  !pip install git+{OTHER.repository}\n  ```\n",
    ),
    ("markdown", "Nothing to change: [torch](https://pytorch.org), {{ not_ours }}."),
    ("code", f'# !pip install -q "segutils @ git+{OTHER.repository}"\nx = 1'),
]


def test_apply_on_a_chapter_makes_substitutions_that_render_to_the_same_links(tmp_path):
    path = tmp_path / "book" / "ch.ipynb"
    path.parent.mkdir()
    nbformat.write(_notebook(CHAPTER), path)
    before = json.loads(path.read_text())
    assert course.apply_paths([path], tmp_path, OTHER) == [path]
    after = json.loads(path.read_text())
    first = "".join(after["cells"][0]["source"])
    assert OTHER.repository not in first and OTHER.site not in first
    # Everything but the sources of the cells that held a copy is unchanged (outputs keep theirs).
    for cell_before, cell_after in zip(before["cells"], after["cells"]):
        assert {k: v for k, v in cell_before.items() if k != "source"} == {
            k: v for k, v in cell_after.items() if k != "source"
        }
    assert after["cells"][1] == before["cells"][1]
    assert "{{ repo_url }}" in "".join(after["cells"][2]["source"])  # code cells: plain tokens
    # The substitutions, rendered as MyST renders them (Jinja2 with the substitutions as variables).
    rendered = re.sub(
        r"\{\{(.*?)\}\}",
        lambda m: (
            jinja2.Environment(undefined=jinja2.StrictUndefined)
            .from_string("{{" + m.group(1) + "}}")
            .render(OTHER.tokens())
        ),
        first,
        flags=re.S,
    )
    assert f"[a1]({OTHER.repository}/blob/main/assignments/a1/a1.ipynb)" in rendered
    assert f"[site]({OTHER.site}/book/03.html#x)" in rendered
    assert f"bare {OTHER.repository}." in rendered
    assert f"`!pip install git+{OTHER.repository}`" in rendered
    # Idempotent: a second run changes nothing, byte for byte.
    text = path.read_text()
    assert course.apply_paths([path], tmp_path, OTHER) == []
    assert path.read_text() == text


def test_apply_on_an_assignment_source_round_trips_through_fill(tmp_path):
    # The source as it was before the conversion: every token filled in, so it holds the addresses themselves.
    source = REPO / "solutions" / "a1_sliding_window" / "a1_sliding_window.ipynb"
    identity = course.load(REPO)
    filled = nbformat.read(source, as_version=4)
    for cell in filled.cells:
        cell.source = course.fill(cell.source, identity)
    copy = tmp_path / "solutions" / "a1" / "a1.ipynb"
    copy.parent.mkdir(parents=True)
    nbformat.write(filled, copy)
    assert course.hard_coded_copies(tmp_path, identity, [copy]), "control: the filled source holds the addresses"
    course.apply_paths([copy], tmp_path, identity)
    converted = json.loads(copy.read_text())
    assert course.hard_coded_copies(tmp_path, identity, [copy]) == {}
    for cell_filled, cell_converted in zip(filled.cells, converted["cells"]):
        assert course.fill("".join(cell_converted["source"]), identity) == cell_filled.source
    untouched = tmp_path / "solutions" / "plain.ipynb"
    nbformat.write(_notebook([("markdown", "no address")]), untouched)
    text = untouched.read_bytes()
    assert course.apply_paths([untouched], tmp_path, identity) == [] and untouched.read_bytes() == text


def test_apply_refuses_what_it_cannot_convert(tmp_path):
    (tmp_path / "book").mkdir()
    multi = tmp_path / "book" / "multi.ipynb"
    nbformat.write(_notebook([("markdown", f"```\npip install a\npip install git+{OTHER.repository}\n```\n")]), multi)
    with pytest.raises(course.CourseError, match="cell 0: a code block of several lines"):
        course.apply_paths([multi], tmp_path, OTHER)
    broken = tmp_path / "book" / "broken.ipynb"
    broken.write_text("{not json")
    with pytest.raises(course.CourseError, match="not a notebook"):
        course.apply_paths([broken], tmp_path, OTHER)


def test_render_config_rewrites_only_the_generated_lines():
    text = (REPO / "_config.yml").read_text()
    new = course.render_config(text, OTHER)
    data = yaml.safe_load(new)
    assert data["html"]["baseurl"] == OTHER.site + "/"
    assert data["repository"] == {**yaml.safe_load(text)["repository"], "url": OTHER.repository}
    assert data["parse"]["myst_substitutions"] == OTHER.tokens()
    old = yaml.safe_load(text)
    for key in set(old) - {"html", "repository", "parse"}:
        assert data[key] == old[key], key
    assert course.render_config(new, OTHER) == new
    assert course.render_config(new, course.load(REPO)) == text


# -- changing the setting changes every link ------------------------------------------------------------------
@pytest.mark.slow
def test_course_init_regenerates_the_config_and_the_releases(tmp_path):
    root = tmp_path / "course"
    root.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copy(REPO / "_config.yml", root)
    course.save(root, OTHER)
    nb = _notebook(
        [
            ("markdown", f"Read [chapter 3]({OTHER.site}/book/03.html) of {{{{ course_name }}}}."),
            ("code", f'# !pip install "segutils @ git+{OTHER.repository}"\nimport math'),
        ]
    )
    source = root / "solutions" / "demo" / "demo.ipynb"
    source.parent.mkdir(parents=True)
    nbformat.write(nb, source)
    assert course.apply_paths([source], root, OTHER) == [source]
    run = segutils(
        "course",
        "init",
        "--repo",
        "https://example.org/b/repo",
        "--site",
        "https://b.example.org/book",
        "--name",
        "Vision B",
        cwd=root,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    identity = course.load(root)
    assert (identity.repository, identity.site, identity.name, identity.term) == (
        "https://example.org/b/repo",
        "https://b.example.org/book",
        "Vision B",
        OTHER.term,
    )
    assert course.config_problems(root / "_config.yml", identity) == []
    release = (root / "assignments" / "demo" / "demo.ipynb").read_text()
    assert "https://b.example.org/book/book/03.html" in release and "of Vision B." in release
    assert "git+https://example.org/b/repo" in release
    assert "{{" not in release and OTHER.repository not in release and OTHER.site not in release
    bad = segutils("course", "init", "--repo", "not a url", "--no-releases", cwd=root)
    assert bad.returncode == 2 and "course repository: expected an http(s) address" in bad.stderr


@pytest.mark.slow
def test_the_book_build_fills_the_links_from_the_setting(tmp_path):
    """A two-page book converted by `segutils course apply`, built with Jupyter Book under OTHER's setting."""
    book = tmp_path / "book_src"
    (book / "book").mkdir(parents=True)
    nb = _notebook([("markdown", "# Chapter\n\n" + CHAPTER[0][1])])
    nbformat.write(nb, book / "book" / "ch.ipynb")
    course.apply_paths([book / "book" / "ch.ipynb"], book, OTHER)
    extensions = yaml.safe_load((REPO / "_config.yml").read_text())["parse"]["myst_enable_extensions"]
    config = yaml.safe_dump(
        {"title": "t", "execute": {"execute_notebooks": "off"}, "parse": {"myst_enable_extensions": extensions}},
        sort_keys=False,
    )
    (book / "_config.yml").write_text(course.render_config(config, OTHER))
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/ch\n")
    build = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "-W", "-n"],
        cwd=book,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    page = (book / "_build" / "html" / "book" / "ch.html").read_text()
    links = set(re.findall(r'href="(https://[^"]*example\.edu[^"]*)"', page))
    assert links == {
        f"{OTHER.repository}/blob/main/assignments/a1/a1.ipynb",
        f"{OTHER.site}/book/03.html#x",
        OTHER.repository,
    }
    assert f"!pip install git+{OTHER.repository}" in re.sub(r"<[^>]+>", "", page)  # words in <span>s
    assert "{{" not in page and "repo_url" not in page


def test_the_instructor_guides_commands_parse_with_the_real_command_line():
    """Every `segutils ...` command of the guide's term walk-through is accepted by the parser as written."""
    import shlex

    from segutils.cli import build_parser

    guide = (REPO / "book" / "appendix" / "instructor_guide.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", guide, flags=re.S)
    commands = []
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("segutils "):
                commands.append(shlex.split(line)[1:])
    wanted = {"course init", "grade --export", "grade --cell", "grade --release-feedback"}
    seen = {
        " ".join(c[:2])
        if c[0] == "course"
        else next((f"grade {a}" for a in c if a in ("--export", "--cell", "--release-feedback")), "")
        for c in commands
    }
    assert wanted <= seen, f"the guide lacks {wanted - seen}"
    parser = build_parser()
    for command in commands:
        parser.parse_args(command)  # argparse exits (SystemExit) on an option the command does not have
