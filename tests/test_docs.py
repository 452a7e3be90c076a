"""The user docs (README.md, docs/*.md) speak of the repository only: no path outside it, and every relative link
points at a file that exists.

The rule for paths: a user has this repository, nothing else of the machine it was written on. So no `shared/`
(a folder beside the repository), no absolute path of a machine (`/work`, `/root`, `/home`, `/Users`), no `../`
that leaves the repository. `/tmp/...` is a user's own choice in an example command, so it may appear inside code
(a fenced block or `inline code`) and nowhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FORBIDDEN = re.compile(r"(?<![\w.])(\.\./)*shared/|(?<![\w.~])/(work|root|home|Users)/")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _relative_links(text: str) -> list[str]:
    """The link targets of `text` that are files of the repository (not web addresses, mail or anchors)."""
    targets = [m.group(1) for m in LINK.finditer(CODE.sub("", text))]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_docs_name_no_path_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    found = [m.group(0) for m in FORBIDDEN.finditer(text)]
    assert not found, f"{_name(doc)} names paths outside the repository: {found}"
    prose = CODE.sub("", text)
    assert "/tmp/" not in prose, f"{_name(doc)}: /tmp/ outside an example command"
    outside = [t for t in re.findall(r"(?:\.\./)+[\w./-]*", prose) if not _inside(doc, t)]
    assert not outside, f"{_name(doc)} points outside the repository: {outside}"


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_relative_link_points_at_a_file_that_exists(doc: Path) -> None:
    missing = [t for t in _relative_links(doc.read_text()) if not (doc.parent / t.split("#")[0]).exists()]
    assert not missing, f"{_name(doc)} links to files that do not exist: {missing}"
    assert all(_inside(doc, t) for t in _relative_links(doc.read_text()))


def _inside(doc: Path, target: str) -> bool:
    return (doc.parent / target.split("#")[0]).resolve().is_relative_to(ROOT)


def test_the_rules_catch_what_they_are_for(tmp_path) -> None:
    bad = "see ../shared/slurm/setup.sh and shared/seed/notes.md, or /work/main/x and /root/.cache"
    assert [m.group(0) for m in FORBIDDEN.finditer(bad)] == ["../shared/", "shared/", "/work/", "/root/"]
    assert not list(FORBIDDEN.finditer("`hydra.sweep.dir=/tmp/sweep`, ~/work/x, docs/workers.md"))
    text = "A [page](docs/a.md#part), a [site](https://x.org), [here](#top), ![p](docs/t/p.png), `[c](no.md)`"
    assert _relative_links(text) == ["docs/a.md#part", "docs/t/p.png"]
    assert "/tmp/" not in CODE.sub("", "run `normbench sweep hydra.sweep.dir=/tmp/s` or\n```\ncd /tmp/x\n```\n")
