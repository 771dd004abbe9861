"""The upload side's pack writer over a repository of several packs, in process: what it
writes is checked by C git's `index-pack --strict`, a stored pack whose every entry is
sent goes in one piece, and a damaged one is caught. Housekeeping's geometric repack
leaves out what the largest pack already holds. (End to end: test_upload_pack.py and
test_housekeeping.py.)"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from dulwich.repo import Repo

from gateway.git.housekeeping import gc
from gateway.git.upload.packwriter import write_pack
from gateway.git.upload.storedpacks import PackError, open_reader
from testkit import local_git
from testkit.localgit import commit


def text(seed: int) -> str:
    return "".join(f"line {i} {seed if i % 50 == seed % 50 else ''}\n" for i in range(800))


@pytest.fixture
def server(work: Path) -> Path:
    """A bare repository of three packs without a repeat between them: a large one
    repacked by C git (OFS deltas), then two small ones of loose objects (`repack -d`)."""
    tree = work / "tree"
    local_git("init", "-q", "-b", "main", str(tree), cwd=work)
    bare = work / "server.git"
    for batch, commits in enumerate((12, 2, 2)):
        for i in range(commits):
            commit(tree, "big.txt", text(batch * 100 + i))
            commit(tree, f"dir{batch}/f{i}.txt", f"file {batch} {i}\n")
        if batch == 0:
            # Bulk that only the first pack holds, so that it stays the largest by far.
            commit(tree, "noise.bin", random.Random(1).randbytes(100_000))
            local_git("clone", "-q", "--bare", str(tree), str(bare), cwd=work)
            local_git("repack", "-a", "-d", "-f", "-q", cwd=bare)
        else:
            local_git("push", "-q", str(bare), "main", cwd=tree)
            local_git("repack", "-d", "-q", cwd=bare)
    assert len(stored_packs(bare)) == 3
    return bare


def stored_packs(bare: Path) -> list[Path]:
    return sorted((bare / "objects" / "pack").glob("*.pack"))


def everything(bare: Path) -> list[str]:
    out = local_git("rev-list", "--objects", "--all", cwd=bare)
    return [line.split()[0] for line in out.splitlines()]


def written(bare: Path, shas: list[str], ofs_delta: bool = True) -> tuple[bytes, list]:
    reader = open_reader(Repo(str(bare)))
    assert reader is not None
    pieces: list[bytes] = []
    entries: list[tuple[bytes, int]] = []
    try:
        write_pack(pieces.append, reader, [s.encode() for s in shas], ofs_delta, set(), entries)
    finally:
        reader.close()
    return b"".join(pieces), entries


def indexed(pack: bytes, work: Path, strict: bool = True) -> dict[str, tuple[int, int]]:
    """C git's index-pack (--strict: and everything the objects name is there) of
    `pack`: each object's offset and entry type."""
    repo = work / f"check{len(list(work.glob('check*')))}"
    local_git("init", "-q", "--bare", str(repo), cwd=work)
    (repo / "in.pack").write_bytes(pack)
    local_git("index-pack", *(["--strict"] if strict else []), str(repo / "in.pack"), cwd=repo)
    with open(repo / "in.idx", "rb") as idx:
        listing = subprocess.run(
            ["git", "show-index"], stdin=idx, capture_output=True, text=True, check=True
        ).stdout
    return {
        sha: (int(offset), (pack[int(offset)] >> 4) & 7)
        for offset, sha, *_ in (line.split() for line in listing.splitlines())
    }


def test_every_pack_whole_goes_in_one_piece_each(server, work):
    shas = everything(server)
    pack, entries = written(server, shas)
    found = indexed(pack, work)
    assert set(found) == set(shas) and len(found) == len(shas)
    for stored in stored_packs(server):
        data = stored.read_bytes()
        assert data[12:-20] in pack  # its entries as they are stored
    assert {name.hex(): offset for name, offset in entries} == {
        sha: offset for sha, (offset, _) in found.items()
    }
    assert 6 in {kind for _, kind in found.values()}  # C git's OFS deltas kept


def test_a_pack_partly_sent_goes_entry_by_entry_beside_whole_ones(server, work):
    shas = everything(server)
    largest = max(stored_packs(server), key=lambda p: p.stat().st_size)
    in_largest = indexed(largest.read_bytes(), work, strict=False)
    blobs = [s for s in in_largest if local_git("cat-file", "-t", s, cwd=server).strip() == "blob"]
    keep = [s for s in shas if s != blobs[0]]
    pack, _ = written(server, keep)
    found = indexed(pack, work, strict=False)  # a tree names the blob left out
    assert set(found) == set(keep)
    assert largest.read_bytes()[12:-20] not in pack
    for stored in stored_packs(server):
        if stored != largest:
            assert stored.read_bytes()[12:-20] in pack


def test_no_ofs_delta_for_a_client_that_does_not_ask(server, work):
    shas = everything(server)
    pack, _ = written(server, shas, ofs_delta=False)
    found = indexed(pack, work)
    assert set(found) == set(shas)
    assert 6 not in {kind for _, kind in found.values()}


def test_a_damaged_pack_sent_whole_is_caught(server, work):
    smallest = min(stored_packs(server), key=lambda p: p.stat().st_size)
    data = bytearray(smallest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    smallest.chmod(0o644)
    smallest.write_bytes(bytes(data))
    with pytest.raises(PackError):
        written(server, everything(server))


def test_a_geometric_repack_leaves_out_what_the_largest_pack_holds(server, work):
    # A thin push's pack holds copies of its deltas' bases: made here by hand, a pack of
    # one old big.txt that the largest pack holds already.
    largest = max(stored_packs(server), key=lambda p: p.stat().st_size)
    in_largest = set(indexed(largest.read_bytes(), work, strict=False))
    old_blob = local_git("rev-parse", "main~12:big.txt", cwd=server).strip()
    assert old_blob in in_largest
    subprocess.run(
        ["git", "pack-objects", "-q", "objects/pack/pack"],
        cwd=server,
        input=old_blob + "\n",
        text=True,
        check=True,
        capture_output=True,
    )
    assert len(stored_packs(server)) == 4
    report = gc.run(str(server), gc.Options())
    assert report.mode == "geometric repack"
    after = stored_packs(server)
    assert len(after) == 2 and largest in after
    (folded,) = [p for p in after if p != largest]
    folded_names = set(indexed(folded.read_bytes(), work, strict=False))
    assert not folded_names & in_largest
    assert folded_names | in_largest == set(everything(server))
    local_git("fsck", "--full", "--strict", cwd=server)
