"""Hostile packs that are small on the wire and huge once inflated, and a way to watch a
Git worker's memory while one is pushed. Shared by tests/test_bombs.py and the
adversarial suite's "bombs" class.

- delta bomb: one small blob, then COUNT deltas on it whose headers each declare a
  result of SIZE bytes made of copy ops of the whole base (a few hundred bytes each);
- zlib bomb: a blob whose header declares a small size but whose zlib stream inflates
  to far more;
- huge declared size: a blob whose header declares (and whose stream really holds)
  far more bytes than any file should have.
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from .pktline import pkt

MiB = 1024 * 1024
BLOB, REF_DELTA = 3, 7


def _entry_header(type_num: int, size: int) -> bytes:
    byte = (type_num << 4) | (size & 15)
    size >>= 4
    out = bytearray()
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def blob_sha(content: bytes) -> bytes:
    return hashlib.sha1(b"blob %d\x00" % len(content) + content).digest()


def pack(entries: list[bytes]) -> bytes:
    data = b"PACK" + struct.pack(">II", 2, len(entries)) + b"".join(entries)
    return data + hashlib.sha1(data).digest()


def _zeros_stream(size: int) -> bytes:
    """A zlib stream of `size` zero bytes, made without holding them (about size/1000)."""
    comp = zlib.compressobj(9)
    chunk = bytes(MiB)
    parts = [comp.compress(chunk) for _ in range(size // MiB)]
    parts.append(comp.compress(bytes(size % MiB)))
    parts.append(comp.flush())
    return b"".join(parts)


def delta_bomb(count: int = 128, size: int = 16 * MiB) -> tuple[bytes, bytes]:
    """(pack, sha of the base blob): COUNT deltas on a 64 KiB base, each declaring a
    SIZE-byte result of copy ops (one byte each: copy 64 KiB from offset 0) and an insert
    of its number so that each result is a different blob."""
    base = b"A" * 65536
    entries = [_entry_header(BLOB, len(base)) + zlib.compress(base)]
    base_id = blob_sha(base)
    for i in range(count):
        tail = b"%08d" % i
        ops = b"\x80" * (size // 65536) + bytes([len(tail)]) + tail
        delta = _varint(len(base)) + _varint(size // 65536 * 65536 + len(tail)) + ops
        entries.append(_entry_header(REF_DELTA, len(delta)) + base_id + zlib.compress(delta, 9))
    return pack(entries), base_id


def chain_bomb(count: int = 16, size: int = 16 * MiB) -> bytes:
    """A chain of COUNT deltas, each on the one before, each with a second child (a leaf)
    listed first: a depth-first resolver then holds every level's SIZE-byte result at
    once while the leaves wait. Results are SIZE bytes of "A" and a tag."""
    base = b"A" * 65536
    entries = [_entry_header(BLOB, len(base)) + zlib.compress(base)]
    prefix_size = size // 65536 * 65536
    prev, prev_len = blob_sha(base), len(base)
    for i in range(count):
        for kind in (b"L", b"C"):  # the leaf first, then the next link of the chain
            tail = kind + b"%07d" % i
            ops = b"\x80" * (prefix_size // 65536) + bytes([len(tail)]) + tail
            delta = _varint(prev_len) + _varint(prefix_size + len(tail)) + ops
            entries.append(_entry_header(REF_DELTA, len(delta)) + prev + zlib.compress(delta, 9))
        h = hashlib.sha1(b"blob %d\x00" % (prefix_size + len(tail)))
        for _ in range(prefix_size // MiB):
            h.update(b"A" * MiB)
        h.update(tail)
        prev, prev_len = h.digest(), prefix_size + len(tail)
    return pack(entries)


def zlib_bomb(declared: int = 1000, inflates_to: int = 1024 * MiB) -> bytes:
    """A blob whose header says DECLARED bytes and whose stream inflates to INFLATES_TO."""
    return pack([_entry_header(BLOB, declared) + _zeros_stream(inflates_to)])


def huge_blob(size: int = 1024 * MiB) -> bytes:
    """A blob of SIZE zero bytes, honestly declared (about size/1000 on the wire)."""
    return pack([_entry_header(BLOB, size) + _zeros_stream(size)])


def huge_declared(declared: int = 64 * 1024**3) -> bytes:
    """A blob whose header declares DECLARED bytes (64 GiB) with a short stream."""
    return pack([_entry_header(BLOB, declared) + zlib.compress(b"x" * 1000)])


# --- pushing and watching ---------------------------------------------------------------


def push_body(pack_bytes: bytes, new: bytes, ref: bytes = b"refs/heads/bomb") -> bytes:
    """Commands creating REF at NEW (hex), then the pack: what git-receive-pack reads."""
    line = b"0" * 40 + b" " + new + b" " + ref + b"\x00report-status\n"
    return pkt(line) + b"0000" + pack_bytes


def unpack_status(stdout: bytes) -> str:
    """The `unpack ...` line of the report, or "" if there is none."""
    at = stdout.find(b"unpack ")
    if at < 0:
        return ""
    return stdout[at + len(b"unpack ") :].split(b"\n", 1)[0].decode(errors="replace")


PEAK_RE = re.compile(r"event=git\.done .*repository=(\S+) .*peak_mib=([0-9.]+)")


def worker_peak(server_log: Callable[[], str], offset: int, repository: str) -> int:
    """The peak resident memory (bytes) of the worker that served `repository`'s
    request, from its `git.done` line after `offset` in the server log: the kernel's own
    count, which the zygote reads when it reaps the worker (a worker often ends before
    a sampler of /proc could see it). Fails if the line does not come."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for match in PEAK_RE.finditer(server_log()[offset:]):
            if match.group(1) == repository:
                return int(float(match.group(2)) * MiB)
        time.sleep(0.05)
    raise AssertionError(f"no git.done line with a peak for {repository}: not measured")


class PeakWatcher:
    """Samples the peak resident memory (VmHWM) of every Git worker serving a repository
    while it runs; `peak` is the largest seen, in bytes."""

    def __init__(self, find_workers, interval: float = 0.005) -> None:
        self.find_workers = find_workers
        self.interval = interval
        self.peak = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.find_workers():
                self.seen.add(pid)
                self.peak = max(self.peak, vm_hwm(pid))
            time.sleep(self.interval)


def vm_hwm(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def ssh_receive_pack(
    ssh_command: list[str], port: int, path: str, body: bytes, env: dict, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ssh_command, "-p", str(port), "git@127.0.0.1", f"git-receive-pack '{path}.git'"],
        input=body,
        capture_output=True,
        env=env,
        timeout=timeout,
    )


def mb(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


def plant_huge_blob(repo_dir: Path, size: int = 256 * MiB, ref: str = "refs/heads/huge") -> str:
    """Write, on the server's side, a commit whose tree holds `huge.bin`: SIZE bytes made
    by one delta from a 64 KiB blob (16 KB on disk), as a push before the limits could
    leave. Its parent commit holds only the 64 KiB base (`small.txt`). Uses C git's
    index-pack; returns the commit's name."""
    from dulwich.objects import Commit, Tree

    base = b"A" * 65536
    tail = b"huge-end"
    prefix_size = size // 65536 * 65536
    h = hashlib.sha1(b"blob %d\x00" % (prefix_size + len(tail)))
    for _ in range(prefix_size // MiB):
        h.update(b"A" * MiB)
    h.update(tail)
    huge_id = h.hexdigest().encode()
    tree = Tree()
    tree.add(b"huge.bin", 0o100644, huge_id)
    tree.add(b"small.txt", 0o100644, blob_sha(base).hex().encode())
    first_tree = Tree()
    first_tree.add(b"small.txt", 0o100644, blob_sha(base).hex().encode())
    commits = []
    for t, message in ((first_tree, b"the base\n"), (tree, b"a huge blob\n")):
        c = Commit()
        c.tree = t.id
        c.parents = [commits[-1].id] if commits else []
        c.author = c.committer = b"Plant <plant@example.com>"
        c.author_time = c.commit_time = 1700000000
        c.author_timezone = c.commit_timezone = 0
        c.message = message
        commits.append(c)
    ops = b"\x80" * (prefix_size // 65536) + bytes([len(tail)]) + tail
    delta = _varint(len(base)) + _varint(prefix_size + len(tail)) + ops
    entries = [
        _entry_header(BLOB, len(base)) + zlib.compress(base),
        _entry_header(REF_DELTA, len(delta)) + blob_sha(base) + zlib.compress(delta, 9),
    ]
    for obj in (first_tree, tree, *commits):
        raw = obj.as_raw_string()
        entries.append(_entry_header(obj.type_num, len(raw)) + zlib.compress(raw))
    subprocess.run(
        ["git", "index-pack", "--stdin"],
        input=pack(entries),
        cwd=repo_dir,
        check=True,
        capture_output=True,
    )
    subprocess.run(["git", "update-ref", ref, c.id.decode()], cwd=repo_dir, check=True)
    return c.id.decode()
