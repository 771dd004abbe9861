"""What a repository's object directory holds, as housekeeping sees it.

A pack counts only with its index beside it, and only if that index is whole (its own
checksum holds, and it names the pack's checksum): a pack whose index is missing or
damaged is reported and left as it is, never rewritten or removed. Files of a pack that
is gone (a .bitmap, a .rev, an index without its pack) and our own temporary files are
what a killed housekeeper leaves; `leftovers` lists them for removal.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field

IDX_V2 = b"\377tOc\x00\x00\x00\x02"
SHA_LEN = 20
TEMP_PREFIX = "tmp_gc_"  # packing.py's temporary pack and index
# A pack whose index has not come after this long is not a push still moving in.
INDEX_WAIT = 3600
_LOOSE_DIR = re.compile(r"[0-9a-f]{2}")
_LOOSE_FILE = re.compile(r"[0-9a-f]{38}")


@dataclass
class PackFile:
    basename: str  # path without .pack / .idx
    size: int  # bytes of the .pack
    mtime: float
    count: int
    kept: bool  # a .keep beside it: never repacked (as C git)


@dataclass
class LooseObject:
    sha: bytes  # hex
    path: str
    mtime: float


@dataclass
class Inventory:
    pack_dir: str
    packs: list[PackFile] = field(default_factory=list)
    loose: list[LooseObject] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each
    leftovers: list[str] = field(default_factory=list)  # paths safe to remove

    @property
    def pack_bytes(self) -> int:
        return sum(pack.size for pack in self.packs)


def take(objects_dir: str, now: float | None = None) -> Inventory:
    now = time.time() if now is None else now
    pack_dir = os.path.join(objects_dir, "pack")
    found = Inventory(pack_dir)
    try:
        names = set(os.listdir(pack_dir))
    except FileNotFoundError:
        names = set()
    bases: dict[str, set[str]] = {}
    for name in names:
        if name.startswith(TEMP_PREFIX):
            found.leftovers.append(os.path.join(pack_dir, name))
            continue
        base, dot, ext = name.partition(".")  # pack-X.idx.order: pack-X's too
        if dot:
            bases.setdefault(base, set()).add(ext)
    for base in sorted(bases):
        exts = bases[base]
        path = os.path.join(pack_dir, base)
        if "pack" not in exts:
            if "keep" not in exts:  # a removed pack's index, bitmap, reverse index...
                found.leftovers.extend(f"{path}.{ext}" for ext in sorted(exts))
            continue
        try:
            st = os.stat(path + ".pack")
        except FileNotFoundError:
            continue  # removed while we looked
        if "idx" not in exts:
            if now - st.st_mtime > INDEX_WAIT:
                found.problems.append(f"pack {base}.pack has no index: left as it is")
            continue
        count, problem = check_index(path)
        if problem:
            found.problems.append(f"pack {base}: {problem}: left as it is")
            continue
        found.packs.append(PackFile(path, st.st_size, st.st_mtime, count, "keep" in exts))
    found.loose = loose_objects(objects_dir)
    return found


def check_index(basename: str) -> tuple[int, str | None]:
    """(object count, None) for a whole v2 index of a whole pack; else (0, what is wrong)."""
    try:
        with open(basename + ".idx", "rb") as f:
            idx = f.read()
        with open(basename + ".pack", "rb") as f:
            f.seek(-SHA_LEN, os.SEEK_END)
            pack_trailer = f.read(SHA_LEN)
    except OSError as exc:
        return 0, f"cannot be read ({exc.strerror})"
    if idx[:8] != IDX_V2 or len(idx) < 8 + 1024 + 2 * SHA_LEN:
        return 0, "its index is not a v2 pack index"
    if hashlib.sha1(idx[:-SHA_LEN]).digest() != idx[-SHA_LEN:]:
        return 0, "its index is damaged (checksum mismatch)"
    count = int.from_bytes(idx[8 + 255 * 4 : 8 + 256 * 4], "big")
    if len(idx) < 8 + 1024 + count * (SHA_LEN + 8) + 2 * SHA_LEN:
        return 0, "its index is damaged (too short)"
    if idx[-2 * SHA_LEN : -SHA_LEN] != pack_trailer:
        return 0, "its index is not the pack's (checksum differs)"
    return count, None


def loose_objects(objects_dir: str) -> list[LooseObject]:
    found: list[LooseObject] = []
    try:
        dirs = os.listdir(objects_dir)
    except FileNotFoundError:
        return found
    for d in sorted(dirs):
        if not _LOOSE_DIR.fullmatch(d):
            continue
        try:
            entries = list(os.scandir(os.path.join(objects_dir, d)))
        except OSError:
            continue
        for entry in entries:
            if _LOOSE_FILE.fullmatch(entry.name):
                try:
                    mtime = entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                found.append(LooseObject((d + entry.name).encode(), entry.path, mtime))
    return found


def pack_count(objects_dir: str) -> int:
    """Packs with an index (cheap: one listdir), for the scheduler."""
    try:
        names = os.listdir(os.path.join(objects_dir, "pack"))
    except OSError:
        return 0
    return sum(1 for name in names if name.endswith(".idx"))


def loose_estimate(objects_dir: str) -> int:
    """Loose objects, estimated from one fan-out directory as C git's gc --auto does."""
    try:
        return 256 * sum(
            1 for name in os.listdir(os.path.join(objects_dir, "17")) if _LOOSE_FILE.fullmatch(name)
        )
    except OSError:
        return 0
