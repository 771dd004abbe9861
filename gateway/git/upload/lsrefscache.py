"""The answer to an `ls-refs`, kept until a ref changes: the last full listing (no
`ref-prefix`: what `git ls-remote` asks), and the last one with prefixes (what `git
fetch` asks: `refs/heads/`, `refs/tags/`, HEAD), each in a file of its own.

Listing 20,000 refs costs a worker about 0.15 s of CPU in Python, every time, where C git
takes a fraction of that; most repositories' refs change far less often than they are
listed. So the encoded answer is kept in the repository, under a key of everything it
was made from: the request's flags and prefixes; HEAD's content and that of the loose
refs under the directories the prefixes reach (read, as the listing reads them), with
the targets of the symbolic ones; `packed-refs`' identity (it is only ever replaced by
a rename: a new inode) and the pack directory's (whether a ref's object exists is read
from the packs). Any ref change gives another key, so a stale answer is never sent. The
key is taken again after listing, and the answer kept only if nothing moved in between.
"""

from __future__ import annotations

import hashlib
import os

from .clonecache import write_whole
from .refs import iter_loose_refs, read_ref_file, symref_chain

FILE = "gateway-ls-refs"
PREFIXED_FILE = "gateway-ls-refs-prefixed"
MAGIC = b"GWLSREFS1\n"  # and the format of what follows: change it with the answer's


def key(git_dir: bytes, flags: bytes, prefixes: list[bytes]) -> bytes:
    """`flags` names the request (its prefixes included); only the loose refs under the
    directories `prefixes` reach are read (all of refs/ for none)."""
    digest = hashlib.sha256(MAGIC + flags + b"\n")
    for name in (b"packed-refs", b"objects/pack"):
        try:
            st = os.stat(os.path.join(git_dir, name))
            digest.update(b"%s %d %d %d\n" % (name, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            digest.update(b"%s -\n" % name)
    loose = sorted(iter_loose_refs(git_dir, prefixes))
    head = read_ref_file(os.path.join(git_dir, b"HEAD")) or b"-"
    for name, content in [(b"HEAD", head), *loose]:
        digest.update(b"%s\0%s\n" % (name, content))
        # A symbolic ref is listed with its target's object, which may be outside the
        # directories read (HEAD's, always).
        for target in symref_chain(git_dir, content):
            digest.update(b" -> %s\n" % target)
    return digest.hexdigest().encode()


def file_for(prefixes: list[bytes]) -> str:
    return PREFIXED_FILE if prefixes else FILE


def load(git_dir: bytes, name: str, cache_key: bytes) -> bytes | None:
    """The kept answer (pkt-lines, without the final flush) if its key is `cache_key`."""
    try:
        with open(os.path.join(git_dir, name.encode()), "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = MAGIC + cache_key + b"\n"
    return data[len(head) :] if data.startswith(head) else None


def save(git_dir: bytes, name: str, cache_key: bytes, answer: bytes) -> None:
    write_whole(os.fsdecode(git_dir), name, MAGIC + cache_key + b"\n" + answer)
