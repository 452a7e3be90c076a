"""The user docs (README.md, docs/*.md) speak of the repository only: no path outside it, every relative link
points at a file that exists, and every module or file of the repository they name exists (in the configs'
comments too).

The rule for paths: a user has this repository, nothing else of the machine it was written on. So no `shared/`
(a folder beside the repository), no absolute path of a machine (`/work`, `/root`, `/home`, `/Users`), no `../`
that leaves the repository. `/tmp/...` is a user's own choice in an example command, so it may appear inside code
(a fenced block or `inline code`) and nowhere else.
"""

from __future__ import annotations

import ast
import re
from functools import cache
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


# --- Names of the repository's modules and files -------------------------------------------------------------
# A doc names a module or file as a path from the repository's root (`normbench/run/train.py`, `configs/sweep/`,
# `tests/test_norms.py::test_x`), as a path inside the package by layer (`run/train.py`, `launch/start.start_run`:
# a module and one of its names), as a dotted module (`normbench.parts.norms.layers.BatchNorm1d`), or by a bare
# file name (`shares.py`). Each must exist in this checkout. A name inside a longer path, a web address or a user's
# own path (`~/my-normbench/scalenorm.py`, `$HOME/...`, `/tmp/...`, `DIR/train/`) is not the repository's.
_NOT_INSIDE = r"(?<![\w./~$-])"
REPO_PATH = re.compile(_NOT_INSIDE + r"((?:normbench|configs|scripts|tests|docs|hydra_plugins)/[\w.*/-]*)(?:::(\w+))?")
LAYER_PATH = re.compile(_NOT_INSIDE + r"((?:base|cli|launch|run|plan|parts)/[\w.*/-]*)")
DOTTED = re.compile(_NOT_INSIDE + r"(normbench(?:\.\w+)+)")
BARE_PY = re.compile(_NOT_INSIDE + r"(\w+\.py)\b")
BARE_PY_HOMES = ("normbench", "scripts", "tests")  # where a bare `name.py` is looked for, and the root itself
# Names the docs use as examples, not as files of this checkout, and why each is one.
EXAMPLES = {
    "normbench/configs": "where a wheel installs configs/ as package data (docs/configuration.md), not a folder here",
}


@cache
def _top_level_names(module: Path) -> frozenset[str] | None:
    """The names a module defines or imports at its top level; None when it answers any name (`__getattr__`)."""
    names: set[str] = set()
    body = list(ast.parse(module.read_text()).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.If | ast.Try):
            body += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                     *(n for h in getattr(node, "handlers", []) for n in h.body)]  # fmt: skip
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return None if "__getattr__" in names else frozenset(names)


def _module_file(path: str) -> Path | None:
    """`normbench/run/train` -> its file (a module or a package's `__init__.py`), None when there is none."""
    for candidate in (ROOT / f"{path}.py", ROOT / path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(module: Path, name: str) -> bool:
    names = _top_level_names(module)
    return names is None or name in names


def _path_exists(path: str, test: str | None = None) -> bool:
    """A path from the root: a file or folder (a glob: something it matches), or `module.name` (`launch/stop.X`)."""
    path = path.rstrip(".")
    if path in EXAMPLES:
        return True
    if "*" in path:
        return any(ROOT.glob(path))
    if (ROOT / path).exists():
        return test is None or _defines(ROOT / path, test)
    folder, _, last = path.rpartition("/")
    module, dot, name = last.partition(".")
    found = _module_file(f"{folder}/{module}") if dot and name.isidentifier() else None
    return found is not None and _defines(found, name)


def _dotted_exists(dotted: str) -> bool:
    """`normbench.a.b.Name`: the longest prefix that is a module, then (if anything is left) a name it defines."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        found = _module_file("/".join(parts[:end]))
        if found is not None:
            return end == len(parts) or _defines(found, parts[end])
    return False


def _bare_exists(name: str) -> bool:
    return name in EXAMPLES or (ROOT / name).is_file() or any(any((ROOT / h).rglob(name)) for h in BARE_PY_HOMES)


def _missing_names(text: str) -> list[str]:
    """The names of the repository's modules and files in `text` that do not exist in this checkout."""
    missing = [m.group(0) for m in REPO_PATH.finditer(text) if not _path_exists(m.group(1), m.group(2))]
    missing += [m.group(1) for m in LAYER_PATH.finditer(text) if not _path_exists(f"normbench/{m.group(1)}")]
    missing += [m.group(1) for m in DOTTED.finditer(text) if not _dotted_exists(m.group(1))]
    missing += [m.group(1) for m in BARE_PY.finditer(text) if not _bare_exists(m.group(1))]
    return missing


CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))  # their comments and `_target_`s name modules and files too


@pytest.mark.parametrize("doc", [*DOCS, *CONFIGS], ids=_name)
def test_every_module_and_file_a_doc_names_exists(doc: Path) -> None:
    missing = _missing_names(doc.read_text())
    assert not missing, f"{_name(doc)} names modules or files that do not exist: {missing}"


def test_the_names_rule_catches_stale_names_and_leaves_examples_alone() -> None:
    stale = (
        "`run/schema.py`, configs/norm/gn.yaml, `parts/data.py`, `normbench/slurm.py`, docs/workers-processes.md, "
        "`launch/preflight.RunCheck`, normbench.launch.naming, `normbench.plan.plan.NoSuchPlan`, `app.py`, "
        "`tests/test_norms.py::test_no_such_thing`, `configs/sweep/*.toml`"
    )
    assert _missing_names(stale) == [
        "configs/norm/gn.yaml", "normbench/slurm.py", "docs/workers-processes.md",
        "tests/test_norms.py::test_no_such_thing", "configs/sweep/*.toml",
        "run/schema.py", "parts/data.py", "launch/preflight.RunCheck",
        "normbench.launch.naming", "normbench.plan.plan.NoSuchPlan", "app.py",
    ]  # fmt: skip
    fine = (
        "`normbench/plan/schema.py`, normbench/launch/rundir.py., `configs/cell/`, `docs/tensorboard/*.png`, "
        "`tests/test_norms.py::test_notes_worked_example`, `run/train.py`, `parts/models`, `launch/start.start_run`, "
        "`run/references.json`, normbench.parts.norms.layers.BatchNorm1d, `normbench.parts.norms`, `shares.py`, "
        "`normbench/configs`, ~/my-normbench/scalenorm.py, $HOME/my-normbench/my_parts.py, /tmp/x/run.py, "
        "DIR/train/CLASS/IMAGE, https://hydra.cc/docs/advanced/x, multirun/tour, runs/DATE, hydra/launcher=slurm"
    )
    assert _missing_names(fine) == []
