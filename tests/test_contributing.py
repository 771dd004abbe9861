"""CONTRIBUTING.md stays true: every file or directory it names exists, and every
function or class it names in the form `path.py: name()` is defined in that file.

A newcomer follows it file by file; a rename that forgets it fails here, naming what
went missing, rather than leaving a map that leads nowhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")

# A path anywhere in the text (prose, backticks, the pictures) under the top-level
# directories a newcomer opens.
PATH = re.compile(r"(?<![\w/.])((?:gateway|tests|bench|testkit|adversarial)/[\w./-]*)")
# `some/file.py: name()`, `file.py: Class.method()`, `file.py: Class`, in backticks; the
# file may be named by its tail (`refcheck.py`) when only one file ends so.
DEFINED = re.compile(r"`([\w/]+\.py): ([A-Za-z_][\w.]*)(?:\(\))?`")


def _repository_files() -> list[str]:
    skip = {".git", ".venv", "__pycache__"}
    return [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if not skip.intersection(p.relative_to(ROOT).parts)
    ]


def _named_paths() -> set[str]:
    return {m.rstrip(".") for m in PATH.findall(TEXT)}


def test_it_names_paths_and_definitions() -> None:
    # The checks below would pass on an empty file.
    assert len(_named_paths()) > 40
    assert len(DEFINED.findall(TEXT)) > 40


def test_every_named_path_exists() -> None:
    missing = sorted(p for p in _named_paths() if not (ROOT / p).exists())
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"


def _resolve(named: str, files: list[str]) -> list[str]:
    if "/" in named and (ROOT / named).is_file():
        return [named]
    return [f for f in files if f == named or f.endswith("/" + named)]


def test_every_named_function_is_defined_there() -> None:
    files = _repository_files()
    problems = []
    for named, dotted in DEFINED.findall(TEXT):
        found = _resolve(named, files)
        if len(found) != 1:
            problems.append(f"{named}: {len(found)} files match (want one)")
            continue
        source = (ROOT / found[0]).read_text(encoding="utf-8")
        for part in dotted.split("."):
            pattern = rf"^\s*(?:async\s+def|def|class)\s+{re.escape(part)}\b"
            if not re.search(pattern, source, re.MULTILINE):
                problems.append(f"{found[0]}: no def or class {part!r} (from {dotted})")
    assert not problems, "CONTRIBUTING.md names what is not there:\n" + "\n".join(problems)
