"""A pushed pack read off the wire in any cut (packstream.py, packreader.py): the index
the gateway writes names the objects, offsets and CRCs C git's index-pack finds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gateway.git.receive import packreader, quarantine
from testkit import local_git


def git_pack(tmp_path: Path) -> bytes:
    """A pack as C git sends one: deltas (OFS_DELTA), a blob larger than the reader's
    blocks, many small objects."""
    work = tmp_path / "work"
    local_git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    for n in range(12):
        (work / "big.bin").write_bytes(os.urandom(200_000) + b"%d" % n)
        (work / "text.txt").write_text("".join(f"line {i} {n}\n" for i in range(400)))
        local_git("add", "-A", cwd=work)
        local_git("commit", "-q", "-m", f"c{n}", cwd=work)
    revs = local_git("rev-list", "--objects", "main", cwd=work).encode()
    return subprocess.run(
        ["git", "pack-objects", "--stdout", "-q"],
        cwd=work,
        input=revs,
        capture_output=True,
        check=True,
    ).stdout


def index_entries(idx: Path) -> list[str]:
    with open(idx, "rb") as f:
        return sorted(
            subprocess.run(
                ["git", "show-index"], stdin=f, capture_output=True, check=True, text=True
            ).stdout.splitlines()
        )


@pytest.fixture(params=["one process", "two processes"])
def walkers(request, monkeypatch):
    """The delta chains walked by one process, or (from any size) by two."""
    if request.param == "two processes":
        monkeypatch.setattr(packreader, "PARALLEL_FROM", 1)
    return request.param


@pytest.mark.parametrize("cut", [1, 7, 4096, 1 << 20])
def test_any_cut_of_the_wire_gives_c_gits_index(tmp_path, cut, walkers):
    pack = git_pack(tmp_path)
    store = tmp_path / "repo.git"
    local_git("init", "-q", "--bare", str(store), cwd=tmp_path)
    expected_dir = tmp_path / "expected"
    expected_dir.mkdir()
    (expected_dir / "p.pack").write_bytes(pack)
    subprocess.run(
        ["git", "index-pack", str(expected_dir / "p.pack")], check=True, capture_output=True
    )
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        piece = pack[pos : pos + min(n, cut)]
        pos += len(piece)
        return piece

    q = quarantine.create(str(store / "objects"))
    try:
        base = packreader.receive_pack(q, read, None, None)
        assert Path(base + ".pack").read_bytes() == pack
        assert index_entries(Path(base + ".idx")) == index_entries(expected_dir / "p.idx")
    finally:
        quarantine.remove(q)


def test_a_pack_with_bytes_missing_is_refused_and_leaves_nothing(tmp_path):
    pack = git_pack(tmp_path)
    store = tmp_path / "repo.git"
    local_git("init", "-q", "--bare", str(store), cwd=tmp_path)
    q = quarantine.create(str(store / "objects"))
    try:
        for cut in (5, 12, len(pack) // 3, len(pack) - 21, len(pack) - 1):
            data = iter([pack[:cut]])
            with pytest.raises(Exception, match=r"ends before|EOF|zlib|checksum|truncated"):
                packreader.receive_pack(q, lambda n, d=data: next(d, b""), None, None)
            assert os.listdir(os.path.join(q.path, "pack")) == []
    finally:
        quarantine.remove(q)


def test_the_index_is_byte_for_byte_dulwichs():
    """packindex.write_index writes what dulwich's v2 writer does, large offsets too."""
    import hashlib
    import io
    import random

    from dulwich.pack import write_pack_index_v2

    from gateway.git import packindex

    rng = random.Random(3)
    for count, biggest in ((0, 10), (1, 10), (5000, 2**31 - 1), (3000, 2**40)):
        entries = sorted(
            (
                hashlib.sha1(b"%d" % i).digest(),
                rng.randrange(biggest),
                rng.randrange(2**32),
            )
            for i in range(count)
        )
        ours, theirs = io.BytesIO(), io.BytesIO()
        packindex.write_index(ours, entries, b"p" * 20)
        write_pack_index_v2(theirs, entries, b"p" * 20)
        assert ours.getvalue() == theirs.getvalue(), (count, biggest)


def test_an_object_the_second_process_cannot_parse_refuses_the_pack(tmp_path, monkeypatch):
    """The forked half's error is the push's error, and nothing is left behind."""
    from dulwich.errors import ObjectFormatException
    from dulwich.objects import Blob, Tree

    from testkit.receivepack import RawObject, pack_of

    monkeypatch.setattr(packreader, "PARALLEL_FROM", 1)
    blobs = [Blob.from_string(b"blob %d" % i) for i in range(6)]
    broken = RawObject.of(Tree, b"100644 no-nul-and-no-sha")
    for objects in ([broken, *blobs], [*blobs, broken]):  # first whole object, or last
        store = tmp_path / f"repo{len(list(tmp_path.iterdir()))}.git"
        local_git("init", "-q", "--bare", str(store), cwd=tmp_path)
        q = quarantine.create(str(store / "objects"))
        try:
            data = iter([pack_of(*objects)])
            with pytest.raises(ObjectFormatException):
                packreader.receive_pack(q, lambda n, d=data: next(d, b""), None, None)
            assert os.listdir(os.path.join(q.path, "pack")) == []
        finally:
            quarantine.remove(q)
