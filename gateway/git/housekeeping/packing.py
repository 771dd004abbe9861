"""One new pack from the stored packs' entries, put in place so that a crash never hurts.

The entries are copied as they are stored (packwriter.write_pack, the upload side's
writer: deltas stay deltas, so a 130 MB pack stays about 130 MB), indexed with dulwich
(a v2 index with each entry's CRC), and put in place as C git does: written under
temporary names, fsynced, then renamed in, the pack first and its index last (readers
find packs by their index). Only then may what they replace go: old packs (the pack
file first, its index last, so that a half-removed pack is just an index left over)
and loose objects.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass

from .. import packindex
from ..upload.packwriter import write_pack
from ..upload.storedpacks import ObjectReader
from . import faults
from .inventory import SHA_LEN, TEMP_PREFIX, check_index

BUFFER = 1 << 20
CRC_WINDOW = 8 << 20


@dataclass
class NewPack:
    basename: str
    count: int
    size: int


def write_new_pack(pack_dir: str, reader: ObjectReader, shas: list[bytes]) -> NewPack:
    """Write a pack of `shas` (hex, no repeats) and its index, and put both in place.
    On any error (a full disk) the temporary files are removed and nothing changed."""
    # Not named *.pack / *.idx until whole: C git reads any index in the directory.
    fd, tmp_pack = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix="_pack", dir=pack_dir)
    tmp_idx = tmp_pack[: -len("_pack")] + "_idx"
    try:
        entries: list[tuple[bytes, int]] = []
        with os.fdopen(fd, "wb", buffering=BUFFER) as out:
            faults.reached("write-pack")
            write_pack(out.write, reader, shas, True, set(), entries)
            out.flush()
            os.fsync(out.fileno())
        if len(entries) != len(shas):
            raise OSError(f"the new pack has {len(entries)} entries, not {len(shas)}")
        checksum, indexed = _crcs(tmp_pack, entries)
        with open(tmp_idx, "wb") as f:
            faults.reached("write-index")
            packindex.write_index(f, indexed, checksum)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_pack, 0o444)
        os.chmod(tmp_idx, 0o444)
        faults.reached("written")
        basename = os.path.join(pack_dir, "pack-" + checksum.hex())
        size = os.path.getsize(tmp_pack)
        if os.path.exists(basename + ".idx") and os.path.exists(basename + ".pack"):
            _remove(tmp_pack, tmp_idx)  # the same pack is there already
            return NewPack(basename, len(entries), size)
        os.rename(tmp_pack, basename + ".pack")
        _sync_dir(pack_dir)
        faults.reached("pack-renamed")
        os.rename(tmp_idx, basename + ".idx")
        _sync_dir(pack_dir)
        faults.reached("installed")
        return NewPack(basename, len(entries), size)
    except BaseException:
        _remove(tmp_pack, tmp_idx)
        raise


def _crcs(
    path: str, entries: list[tuple[bytes, int]]
) -> tuple[bytes, list[tuple[bytes, int, int]]]:
    """The pack's checksum and (name, offset, CRC-32) of each entry, read back from the
    file in large pieces: an entry ends where the next one (by offset) starts."""
    by_offset = sorted(entries, key=lambda entry: entry[1])
    out: list[tuple[bytes, int, int]] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        end_of_entries = size - SHA_LEN
        window, window_start = b"", 0
        for i, (name, start) in enumerate(by_offset):
            end = by_offset[i + 1][1] if i + 1 < len(by_offset) else end_of_entries
            if end > window_start + len(window):
                window_start = start
                f.seek(start)
                window = f.read(max(end - start, CRC_WINDOW))
            out.append((name, start, zlib.crc32(window[start - window_start : end - window_start])))
        f.seek(end_of_entries)
        checksum = f.read(SHA_LEN)
    out.sort()
    return checksum, out


def finish_interrupted(pack_dir: str) -> int:
    """Put in place the index of a pack renamed in by a run killed before its index was:
    the temporary index names its pack's checksum. The number of packs finished."""
    finished = 0
    try:
        names = os.listdir(pack_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if not (name.startswith(TEMP_PREFIX) and name.endswith("_idx")):
            continue
        tmp_idx = os.path.join(pack_dir, name)
        try:
            with open(tmp_idx, "rb") as f:
                f.seek(-2 * SHA_LEN, os.SEEK_END)
                checksum = f.read(SHA_LEN)
        except OSError:
            continue  # too short: a half-written index, removed as a leftover
        basename = os.path.join(pack_dir, "pack-" + checksum.hex())
        if os.path.exists(basename + ".pack") and not os.path.exists(basename + ".idx"):
            os.rename(tmp_idx, basename + ".idx")
            if check_index(basename)[1] is None:
                finished += 1
            else:
                os.rename(basename + ".idx", tmp_idx)  # not its index after all
    if finished:
        _sync_dir(pack_dir)
    return finished


def remove_packs(basenames: list[str]) -> None:
    """Remove whole packs: the pack file first, then every file beside it (a .bitmap or
    .rev of a removed pack must not outlive it), the index last."""
    for basename in basenames:
        directory, prefix = os.path.split(basename)
        _remove(basename + ".pack")
        faults.reached("removing-old")
        others = [
            os.path.join(directory, name)
            for name in os.listdir(directory)
            if name.startswith(prefix + ".") and name not in (prefix + ".idx", prefix + ".keep")
        ]
        _remove(*others)
        _remove(basename + ".idx")
    if basenames:
        _sync_dir(os.path.dirname(basenames[0]))


def remove_loose(paths: list[str]) -> None:
    dirs = set()
    for path in paths:
        _remove(path)
        dirs.add(os.path.dirname(path))
    for directory in dirs:
        try:
            os.rmdir(directory)
        except OSError:
            pass  # not empty: other objects are there


def remove_leftovers(paths: list[str]) -> None:
    _remove(*paths)


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
