"""``FillCourseIdentity``: nbgrader fills the course's addresses into a release (``make assignments``).

``nbgrader_config.py`` puts it first among ``GenerateAssignment``'s preprocessors, so the locked cells
nbgrader stores in the gradebook (and restores in a submission) hold the filled text, the same as the release.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor

from segutils import course


def _repository_root() -> Path:
    return Path(course.__file__).resolve().parents[1]


class FillCourseIdentity(NbGraderPreprocessor):
    """Replace ``{{ repo_url }}``, ``{{ site_url }}``, ``{{ course_name }}``, ``{{ course_term }}`` and
    ``{{ branch }}`` in every cell with the values of the nearest ``course.toml`` above the source notebook
    (else the one of this checkout of segutils)."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        if not any(course.TOKEN.search(cell.source) for cell in nb.cells):
            return nb, resources
        start = Path(resources.get("metadata", {}).get("path") or ".")
        found = course.find_course_file(start) or course.find_course_file(_repository_root())
        if found is None:
            raise course.CourseError(
                f"the notebook in {start} uses course tokens ({{{{ repo_url }}}}...) but no "
                "course.toml was found above it: run `segutils course init`"
            )
        identity = course.load(found.parent)
        for cell in nb.cells:
            cell.source = course.fill(cell.source, identity)
        return nb, resources
