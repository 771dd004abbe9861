"""git-receive-pack spoken by hand over the real `ssh`: command lists, packs made with
dulwich, and the report-status read back. For pushes no git client would send."""

from __future__ import annotations

import io
import os
import subprocess
import time

from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.objects import Blob, Commit, ShaFile, Tree
from dulwich.pack import write_pack_objects

from .keys import User
from .pktline import parse_pkts, pkt
from .server import Gateway

ZERO = b"0" * 40


def commands(
    *lines: tuple[bytes, bytes, bytes], caps: bytes = b"report-status delete-refs"
) -> bytes:
    out = b""
    for i, (old, new, ref) in enumerate(lines):
        out += pkt(old + b" " + new + b" " + ref + (b"\x00" + caps if i == 0 else b"") + b"\n")
    return out + b"0000"


def pack_of(*objects: ShaFile) -> bytes:
    buf = io.BytesIO()
    write_pack_objects(buf.write, list(objects), DEFAULT_OBJECT_FORMAT)
    return buf.getvalue()


def make_commit(tree: bytes, parents: list[bytes], message: bytes = b"raw commit\n") -> Commit:
    c = Commit()
    c.tree = tree
    c.parents = parents
    c.author = c.committer = b"Raw <raw@example.com>"
    c.author_time = c.commit_time = int(time.time())
    c.author_timezone = c.commit_timezone = 0
    c.message = message
    return c


def new_history(parent: str) -> tuple[Commit, list]:
    """A commit on top of `parent` with a new tree and blob: (commit, [commit, tree, blob])."""
    blob = Blob.from_string(os.urandom(32).hex().encode() + b"\n")
    tree = Tree()
    tree.add(b"raw.txt", 0o100644, blob.id)
    c = make_commit(tree.id, [parent.encode()])
    return c, [c, tree, blob]


def report_of(stdout: bytes) -> dict[str, str]:
    """The report-status after the advertisement: {"unpack": status, ref: "ok"|"ng reason"}."""
    pkts, _ = parse_pkts(stdout)
    assert None in pkts, f"no advertisement: {stdout[:200]!r}"
    report = {}
    for line in pkts[pkts.index(None) + 1 :]:
        if line is None:
            continue
        text = line.rstrip(b"\n").decode(errors="replace")
        if text.startswith("unpack "):
            report["unpack"] = text[len("unpack ") :]
        elif text.startswith(("ok ", "ng ")):
            kind, _, rest = text.partition(" ")
            if kind == "ok":
                report[rest] = "ok"
            else:
                ref, _, reason = rest.partition(" ")
                report[ref] = "ng " + reason
    return report


def receive_pack(g: Gateway, user: User, path: str, body: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *g.ssh_command(user.key),
            "-p",
            str(g.port),
            "git@127.0.0.1",
            f"git-receive-pack '{path}.git'",
        ],
        input=body,
        capture_output=True,
        env=g.env,
        timeout=60,
    )


class RawObject(Blob):
    """An object of any type with exactly the bytes given (dulwich would parse them)."""

    @classmethod
    def of(cls, kind: type, data: bytes) -> RawObject:
        obj = type(
            f"Raw{kind.__name__}", (cls,), {"type_num": kind.type_num, "type_name": kind.type_name}
        )()
        obj.set_raw_string(data)
        return obj


def tree_bytes(*entries: tuple[bytes, bytes, bytes]) -> bytes:
    return b"".join(mode + b" " + name + b"\0" + sha for mode, name, sha in entries)


def sideband(stdout: bytes) -> tuple[dict[str, str], str]:
    """A raw side-band-64k push's report and its `remote:` text."""
    pkts, _ = parse_pkts(stdout)
    data, progress = b"", b""
    for line in pkts[pkts.index(None) + 1 :]:
        if line and line[0] == 1:
            data += line[1:]
        elif line and line[0] == 2:
            progress += line[1:]
    report = {}
    for line in parse_pkts(data)[0]:
        if line:
            text = line.rstrip(b"\n").decode(errors="replace")
            kind, _, rest = text.partition(" ")
            if kind == "unpack":
                report["unpack"] = rest
            else:
                ref, _, reason = rest.partition(" ")
                report[ref] = "ok" if kind == "ok" else "ng " + reason
    return report, progress.decode(errors="replace")
