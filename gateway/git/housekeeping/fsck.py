"""`gateway repo fsck`: every object readable and hash-correct, every ref's history whole.

Each pack's checksum and index are checked (inventory.check_index), each entry read
whole (deltas applied, storedpacks.ObjectReader) and its name computed again from its
type and content; each loose object is read with dulwich and its name checked against
its file's. Then the refs' histories are walked (upload/walk.py, reading every tree, not
the kept lists): a missing commit or tree stops the walk, a missing blob is found by
looking up every name the trees list. Each problem is one line.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

from dulwich.object_store import BaseObjectStore
from dulwich.objects import ShaFile, object_class

from ..upload import walk
from ..upload.storedpacks import ObjectReader, PackError, StoredPack
from . import inventory, reachability
from .gc import open_repo

CHUNK = 1 << 20


@dataclass
class FsckReport:
    objects: int = 0
    packs: int = 0
    loose: int = 0
    refs: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        state = "ok" if not self.problems else f"{len(self.problems)} problem(s)"
        return (
            f"{state}: {self.objects} objects ({self.packs} packs, {self.loose} loose), "
            f"{self.refs} refs, {self.seconds:.2f} s"
        )


def check(repo_dir: str) -> FsckReport:
    """Raises gc.NotARepository."""
    started = time.monotonic()
    report = FsckReport()
    repo = open_repo(repo_dir)
    try:
        objects_dir = os.path.join(repo_dir, "objects")
        found = inventory.take(objects_dir, now=float("inf"))  # a pack without index: now
        report.problems.extend(found.problems)
        names: set[bytes] = set()
        packs = []
        for info in found.packs:
            pack = StoredPack(info.basename)
            packs.append(pack)
            report.packs += 1
            names |= _check_pack(pack, repo.object_store, report)
        for obj in found.loose:
            report.loose += 1
            names.add(obj.sha)
            _check_loose(obj, report)
        report.objects = len(names)
        tips = reachability.ref_tips(repo)
        report.refs = len(tips)
        reader = ObjectReader(repo.object_store, packs)
        try:
            _check_history(reader, tips, names, report)
        finally:
            reader.close()
    finally:
        repo.close()
    report.seconds = time.monotonic() - started
    return report


def _check_pack(pack: StoredPack, store: BaseObjectStore, report: FsckReport) -> set[bytes]:
    label = os.path.basename(pack.basename)
    digest = hashlib.sha1()
    end = pack.size - 20
    at = 0
    while at < end:
        data = os.pread(pack.fd, min(CHUNK, end - at), at)
        if not data:
            break
        digest.update(data)
        at += len(data)
    if os.pread(pack.fd, 20, end) != digest.digest():
        report.problems.append(f"pack {label}: its checksum does not match its contents")
    reader = ObjectReader(store, [pack])
    names = set()
    for sha, k in zip(pack.index.hex_name_list(), pack.rank, strict=True):
        names.add(sha)
        try:
            pack.entry(k)  # the stored bytes against the index's CRC
            type_num, content = reader.read_entry(pack, k)
            kind = object_class(type_num)
            if kind is None:
                raise PackError(f"unknown object type {type_num}")
            header = kind.type_name + b" %d\0" % len(content)
            if hashlib.sha1(header + content).hexdigest().encode() != sha:
                report.problems.append(
                    f"pack {label}: object {sha.decode()} does not match its name"
                )
        except (PackError, KeyError, AttributeError) as exc:
            report.problems.append(f"pack {label}: object {sha.decode()} unreadable: {exc}")
    return names


def _check_loose(obj: inventory.LooseObject, report: FsckReport) -> None:
    try:
        parsed = ShaFile.from_path(obj.path)
        if parsed.id != obj.sha:
            report.problems.append(f"loose object {obj.sha.decode()} does not match its name")
    except Exception as exc:  # dulwich raises many kinds for a damaged file
        report.problems.append(f"loose object {obj.sha.decode()} unreadable: {exc}")


def _check_history(
    reader: ObjectReader, tips: dict[bytes, bytes], names: set[bytes], report: FsckReport
) -> None:
    def missing_from(ref_tips: list[bytes]) -> str | None:
        try:
            shas, _ = walk.objects_to_send(reader, ref_tips, [], {})
        except (KeyError, PackError) as exc:
            return f"object {_shown(exc)} is missing or unreadable"
        lost = sorted(sha for sha in shas if sha not in names)
        return f"object {lost[0].decode()} is missing" if lost else None

    if missing_from(sorted(set(tips.values()))) is None:
        return
    for ref in sorted(tips):  # only when something is wrong: which refs
        problem = missing_from([tips[ref]])
        if problem:
            report.problems.append(
                f"ref {ref.decode(errors='replace')}: history incomplete: {problem}"
            )


def _shown(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, bytes):
        return arg.decode(errors="replace")
    return str(arg)
