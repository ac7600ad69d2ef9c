"""The book's prose states no number by hand: every numeric literal in a markdown cell is glued from the code.

A chapter's markdown may hold a number only where it is not a claim the build could contradict:

- glued (``{glue:text}`key```, ``{glue}`key```...), computed by the chapter's code;
- inside math that defines a formula (math with a letter or a command in it, e.g. ``$H_\\text{out} = sH$``);
- a citation or a year (``{cite}`...```, 1900-2099), a cross-reference, a heading's chapter number, a
  reference to a part of a cited paper ("Section 3.2", "Table 2");
- inside inline code or a fenced block (code, not prose: names such as ``conv1_1``; exercises and their
  solutions, which are fenced directives, are problem statements rather than claims);
- part of a name: digits attached to letters ("VGG16", "FCN-32s", "fc6");
- in the small allow-list below.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

# Chapters this test does not check YET (their prose still holds typed numbers); an entry must name a chapter
# that exists. Empty: every chapter is checked.
NOT_CHECKED_YET: set[str] = set()

# Typed numbers that are not measurements; each entry is a regular expression matched against the prose.
ALLOWED = [
    r"\b([1-7])×\1\b",  # a layer's kernel shape as its name: "1×1 convolution", "3×3", "2×2 pooling"
    r"\b[1-3]-D\b",  # a dimension as a name: "1-D convolution"
]

GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]*`")
ROLE = re.compile(r"\{(?:cite|cite:\w+|ref|doc|numref|eq|download|term)\}`[^`]*`")
FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1\s*$", re.M | re.S)
DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$")
INLINE_CODE = re.compile(r"`[^`]*`")
ANCHOR = re.compile(r"^\(\S+\)=\s*$", re.M)
DIRECTIVE_OPTION = re.compile(r"^:\w[\w-]*:.*$", re.M)
LINK_TARGET = re.compile(r"\]\([^)]*\)")
HTML_TAG = re.compile(r"<[^>]+>")
CHAPTER_HEADING = re.compile(r"^# \d+\.", re.M)
PAPER_PART = re.compile(
    r"\b(?:[Cc]hapters?|[Ii]dea|[Ss]ections?|[Tt]ables?|[Ff]igures?|[Ee]quations?|[Pp]roblems?|"
    r"[Ss]teps?|[Ii]ssue) \d+(?:\.\d+)*(?:(?:,| and| or| to) \d+(?:\.\d+)*)*"
)
YEAR = re.compile(r"\b(?:19|20)\d\d\b")
NUMBER = re.compile(r"(?<![\w.\-])[-−]?\d+(?:[.,]\d+)*(?![\w])")


def _math_without_formula(match: re.Match) -> str:
    body = match.group(1) if match.re is INLINE_MATH else match.group(0)[2:-2]
    return match.group(0) if re.fullmatch(r"[\s\d.,×x*+\-−()]*", body) else " "


def prose_numbers(markdown: str) -> list[str]:
    """The numeric literals of a markdown cell that none of the exceptions covers, in order."""
    text = FENCE.sub(" ", markdown)
    text = GLUE.sub(" ", text)
    text = ROLE.sub(" ", text)
    text = DISPLAY_MATH.sub(_math_without_formula, text)
    text = INLINE_MATH.sub(_math_without_formula, text)
    text = INLINE_CODE.sub(" ", text)
    for pattern in (ANCHOR, DIRECTIVE_OPTION, LINK_TARGET, HTML_TAG, CHAPTER_HEADING, PAPER_PART, YEAR):
        text = pattern.sub(" ", text)
    for allowed in ALLOWED:
        text = re.sub(allowed, " ", text)
    return [m.group(0) for m in NUMBER.finditer(text.replace("$", " "))]


def chapters() -> list[Path]:
    return sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def test_not_checked_yet_names_existing_chapters():
    names = {path.stem for path in chapters()}
    assert NOT_CHECKED_YET <= names, f"unknown chapters in NOT_CHECKED_YET: {NOT_CHECKED_YET - names}"


@pytest.mark.parametrize("path", [p for p in chapters() if p.stem not in NOT_CHECKED_YET], ids=lambda p: p.stem)
def test_chapter_prose_types_no_number(path: Path):
    notebook = nbformat.read(path, as_version=4)
    found = [
        (index, number, cell.source)
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "markdown"
        for number in prose_numbers(cell.source)
    ]
    report = "\n".join(
        f"cell {i}: {number!r} in: {next(line for line in src.splitlines() if number in line)[:110]}"
        for i, number, src in found
    )
    assert not found, f"{path.name}: numbers typed into the prose (glue them or cite them in the data table):\n{report}"


@pytest.mark.parametrize(
    "markdown, expected",
    [
        ("The model reaches 93.5% accuracy.", ["93.5"]),  # a typed measurement
        ("It takes 12 ms, that is 3 times faster.", ["12", "3"]),
        ("A $33$ pixel window.", ["33"]),  # math holding only a number
        ("The loss is {glue:text}`ch_loss:.2f` after {glue:text}`ch_epochs` epochs.", []),
        ("Output $H_\\text{out} = (H - 1)s - 2p + k$ rows.", []),  # a formula
        ("$$\nH = \\lfloor (H + 2p - k)/s \\rfloor + 1\n$$", []),
        ("FCN {cite}`Long2015` (CVPR 2015) uses VGG16, `conv1_1` and FCN-8s.", []),
        ("A 3×3 convolution after a 2×2 pooling, in 1-D.", []),
        ("A 5×7 window.", ["5", "7"]),
        ("Section 3.2 of the paper; chapter 4; Table 2.", []),
        ("```python\nx = torch.rand(2, 3)\n```\nDone.", []),
        ("(ch6-masks)=\n## Label masks", []),
        ("# 6. Downsampling and upsampling", []),
        ("Resize by 4 and compare 1,112 images.", ["4", "1,112"]),
    ],
)
def test_prose_numbers_finds_typed_numbers_only(markdown, expected):
    assert prose_numbers(markdown) == expected
