"""A pack's entry order, worked out once and kept beside the repository's objects
(gateway/git/packorder.py), and lookups in a mapped index (gateway/git/packindex.py):
what is kept is what a fresh computation gives, a damaged or foreign file is never
trusted, and a request served from it sends what C git would."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dulwich.repo import Repo

from gateway.git import packorder
from gateway.git.packindex import PackIndex
from gateway.git.upload import storedpacks
from testkit import Gateway, local_git

FILES = 2500  # with their trees and commits: more objects than packorder.KEEP_FROM


def fast_import(repo: Path, commits: int, files: int, branch: str = "main") -> None:
    """A history of `commits` commits, each changing some of `files` files."""
    lines = []
    for c in range(commits):
        lines.append(f"commit refs/heads/{branch}\nmark :{c + 1}\n")
        lines.append(f"committer T <t@example.com> {1_600_000_000 + c} +0000\n")
        lines.append("data 2\nc\n")
        if c:
            lines.append(f"from :{c}\n")
        for f in range(c % 3, files, 1 + c % 5 if c else 1):
            body = f"{branch} file {f} version {c}\n" * 3
            lines.append(f"M 100644 inline d{f % 40}/f{f}.txt\ndata {len(body)}\n{body}\n")
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=repo, input="".join(lines).encode(), check=True
    )


@pytest.fixture
def big(tmp_path: Path) -> Path:
    repo = tmp_path / "big.git"
    local_git("init", "-q", "--bare", "-b", "main", str(repo), cwd=tmp_path)
    fast_import(repo, 4, FILES)
    local_git("--git-dir", str(repo), "repack", "-a", "-d", "-q", cwd=tmp_path)
    return repo


def only_pack(repo: Path) -> str:
    (idx,) = (repo / "objects" / "pack").glob("*.idx")
    return str(idx)[: -len(".idx")]


def kept_files(repo: Path) -> list[Path]:
    return sorted((repo / "objects" / "info" / "gateway").glob("*.order"))


def computed(basename: str) -> tuple[list[int], list[int]]:
    """The pack order as C git's own `show-index` lists it: index positions by offset."""
    idx = Path(basename + ".idx").read_bytes()
    out = subprocess.run(
        ["git", "show-index"], input=idx, capture_output=True, check=True
    ).stdout.decode()
    offsets = [int(line.split()[0]) for line in out.splitlines()]
    order = sorted(range(len(offsets)), key=offsets.__getitem__)
    return order, sorted(offsets)


def open_pack(basename: str) -> storedpacks.StoredPack:
    pack = storedpacks.StoredPack(basename)
    pack.starts  # noqa: B018  (reads the pack order)
    return pack


def test_kept_order_is_the_computed_order_and_is_reused(big):
    basename = only_pack(big)
    pack = open_pack(basename)
    assert pack.count > packorder.KEEP_FROM
    order, offsets = computed(basename)
    assert list(pack.order) == order
    assert list(pack.starts)[:-1] == offsets
    assert all(pack.rank[i] == k for k, i in enumerate(order))
    assert pack.starts[-1] == Path(basename + ".pack").stat().st_size - 20
    pack.close()
    (kept,) = kept_files(big)
    first = kept.stat().st_mtime_ns
    again = open_pack(basename)
    assert again._pack_order is not None and again._pack_order._map is not None  # mapped
    assert list(again.order) == order
    again.close()
    assert kept.stat().st_mtime_ns == first  # read, not written again


def test_every_object_is_found_by_bisection_and_by_dict(big):
    pack = open_pack(only_pack(big))
    names = pack.hex_names_in_pack_order()
    assert pack._bisections_left > 0
    for k in range(0, pack.count, 7):
        assert pack.find(names[k]) == k
        assert pack.at_offset(pack.starts[k]) == k
    assert pack.find(b"0" * 40) is None
    assert pack.find(b"not hex at all, forty characters long!!") is None
    for name in names:  # past the bisection budget: a dict of every name
        pack.find(name)
    assert pack._number is not None
    assert all(pack.find(name) == k for k, name in enumerate(names))
    pack.close()


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "another pack's header"])
def test_a_damaged_order_file_is_not_trusted(big, damage):
    basename = only_pack(big)
    open_pack(basename).close()
    (kept,) = kept_files(big)
    data = bytearray(kept.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        del data[-9:]
    else:
        data[20] ^= 1  # inside the pack checksum
    kept.chmod(0o644)
    kept.write_bytes(bytes(data))
    pack = open_pack(basename)
    assert list(pack.order) == computed(basename)[0]
    pack.close()
    again = open_pack(basename)
    assert again._pack_order is not None and again._pack_order._map is not None  # made again
    again.close()


def test_a_repository_where_no_file_can_be_written_is_served(big):
    (big / "objects" / "info" / "gateway").write_text("not a directory\n")
    pack = open_pack(only_pack(big))
    assert list(pack.order) == computed(only_pack(big))[0]
    pack.close()
    assert (big / "objects" / "info" / "gateway").read_text() == "not a directory\n"


def test_order_files_of_removed_packs_are_swept(big, tmp_path):
    old = only_pack(big)
    open_pack(old).close()
    (stale,) = kept_files(big)
    fast_import(big, 2, FILES, "other")  # a second history, then one pack of everything
    local_git("--git-dir", str(big), "repack", "-a", "-d", "-q", cwd=tmp_path)
    open_pack(only_pack(big)).close()
    (kept,) = kept_files(big)
    assert kept != stale and not stale.exists()


def test_mapped_index_answers_as_dulwich(big):
    index = PackIndex(only_pack(big) + ".idx")
    repo = Repo(str(big))
    theirs = repo.object_store.packs[0].index
    for position, (name, offset, crc) in enumerate(theirs.iterentries()):
        if position % 11 == 0:
            assert index.position(name) == position
            assert index.name(position) == name
            assert index.offset(position) == offset
            assert index.crc(position) == crc
    index.close()
    repo.close()


def test_clone_served_from_a_kept_order_is_complete(gw: Gateway, work: Path):
    alice = gw.user()
    path = gw.repo(gw.workspace((alice, "write")))
    server = gw.repo_dir(path)
    fast_import(server, 4, FILES)
    local_git("--git-dir", str(server), "repack", "-a", "-d", "-q", cwd=work)
    for n in range(2):  # the first makes the order file, the second reads it
        dest = work / f"clone{n}"
        gw.git(alice, "clone", "-q", gw.url(path), str(dest))
        local_git("fsck", "--full", "--strict", cwd=dest)
        assert kept_files(server)
    tip = local_git("rev-parse", "HEAD", cwd=work / "clone1").strip()
    assert tip == local_git("--git-dir", str(server), "rev-parse", "main", cwd=work).strip()
