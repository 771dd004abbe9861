"""The private dulwich names the gateway relies on (gateway/git/dulwich_seam.py) are
still there. A dulwich upgrade that renames one fails here, naming it, rather than as a
broken clone or push somewhere in the end-to-end tests."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEAMS = {ROOT / "gateway/git/dulwich_seam.py", ROOT / "gateway/git/workers/asyncio_seam.py"}

# Module-level private names the seam imports.
MODULE_NAMES = [
    ("dulwich.server", "_ProtocolGraphWalker"),
    ("dulwich.object_store", "_bound_read_callables"),
    ("dulwich.archive", "_is_unsafe_archive_path"),
]
# Private members the seam's functions call or read: (module, class, name, kind).
MEMBERS = [
    ("dulwich.pack", "Pack", "_basename", "attribute"),
    ("dulwich.object_store", "DiskObjectStore", "_get_pack_basepath", "method"),
    ("dulwich.object_store", "DiskObjectStore", "_iter_loose_objects", "method"),
    ("dulwich.object_store", "DiskObjectStore", "_get_shafile_path", "method"),
    ("dulwich.server", "UploadPackHandler", "_processing_have_lines", "attribute"),
    ("dulwich.server", "UploadPackHandler", "_done_received", "attribute"),
    ("dulwich.server", "UploadPackHandler", "_start_pack_send_phase", "method"),
    ("dulwich.refs", "DiskRefsContainer", "_invalidate_packed_refs_cache", "method"),
]


def missing_member(cls: type, name: str, kind: str) -> bool:
    if kind == "method":
        return not callable(getattr(cls, name, None))
    # An attribute set on `self` somewhere in the class or a base it inherits from.
    pattern = re.compile(rf"self\.{re.escape(name)}\b")
    for klass in cls.__mro__:
        if klass.__module__.startswith("dulwich") and pattern.search(inspect.getsource(klass)):
            return False
    return True


@pytest.mark.parametrize("module, name", MODULE_NAMES, ids=[n for _, n in MODULE_NAMES])
def test_module_level_internals_exist(module, name):
    assert hasattr(importlib.import_module(module), name), (
        f"dulwich no longer has {module}.{name}, which gateway/git/dulwich_seam.py uses: "
        "see the reason there and replace it"
    )


@pytest.mark.parametrize(
    "module, cls, name, kind", MEMBERS, ids=[f"{c}.{n}" for _, c, n, _ in MEMBERS]
)
def test_members_the_seam_reaches_exist(module, cls, name, kind):
    klass = getattr(importlib.import_module(module), cls)
    assert not missing_member(klass, name, kind), (
        f"dulwich's {module}.{cls} no longer has the {kind} {name}, which "
        "gateway/git/dulwich_seam.py uses: see the reason there and replace it"
    )


def test_members_the_subclasses_rely_on_exist():
    from gateway.git.dulwich_seam import SUBCLASS_INTERNALS

    gone = [
        f"{cls.__module__}.{cls.__name__}.{name} ({kind[:-1]})"
        for cls, wanted in SUBCLASS_INTERNALS.items()
        for kind, names in wanted.items()
        for name in names
        if missing_member(cls, name, kind[:-1])
    ]
    assert not gone, (
        "dulwich no longer has what the gateway's subclasses override or read "
        f"(gateway/git/dulwich_seam.py SUBCLASS_INTERNALS): {', '.join(gone)}"
    )


def test_private_names_are_reached_only_through_the_seams():
    """`from dulwich... import _x` and `obj._x` on something not our own (self, cls,
    super()) appear only in the seam modules."""
    private_import = re.compile(r"^from dulwich[\w.]* import .*\b_[a-z]", re.M)
    # What stands right before `._x`: a name, a call's `()`, or an index's `]`.
    private_access = re.compile(r"(\w+(?:\(\))?|[)\]])\._[a-z]\w*")
    found = []
    for path in [*(ROOT / "gateway/git").rglob("*.py"), ROOT / "gateway/commands/git.py"]:
        if path in SEAMS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if private_import.search(code) or any(
                not _own(code, m) for m in private_access.finditer(code)
            ):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "private names outside the seam modules:\n" + "\n".join(found)


def _own(code: str, match: re.Match) -> bool:
    """`self._x`, `cls._x`, `super()._x`: our own object (not `self.repo._x`); and
    `os._exit`, the documented way for a forked child to end (workers/zygote.py)."""
    before = code[: match.start(1)]
    if match.group(0) == "os._exit" and not before.endswith("."):
        return True
    return match.group(1) in ("self", "cls", "super()") and not before.endswith(".")
