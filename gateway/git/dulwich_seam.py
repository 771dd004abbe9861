"""Every private dulwich name the gateway uses, in one place, each with its reason.

dulwich's public API serves a Git server that trusts its clients and builds its packs
object by object; the gateway needs a few of the steps inside it (the have/want
negotiation without dulwich's pack writing, a pack read under limits, paths of files
in the object store). Those steps have private names, which a dulwich release may
rename without notice: each is reached only through this module, so that an upgrade
breaks here, and `tests/test_seam_dulwich.py` names what went missing.

Two kinds of reliance:
- names called or read from outside dulwich: the functions and aliases below;
- private methods and attributes that the gateway's subclasses override or read from
  `self` (packreader's copier and indexer, upload_pack's handler and graph walker):
  listed in SUBCLASS_INTERNALS, checked by the test, used in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dulwich.archive import _is_unsafe_archive_path
from dulwich.object_store import DiskObjectStore, _bound_read_callables
from dulwich.pack import (
    DeltaChainIterator,
    Pack,
)
from dulwich.server import UploadPackHandler, _ProtocolGraphWalker

# upload/upload_pack.py: dulwich's upload-pack negotiation (wants, haves, shallow, `done`)
# is this class; the gateway keeps it and replaces only the pack writing.
ProtocolGraphWalker = _ProtocolGraphWalker

# receive/packreader.py: dulwich's own guard that stops reading a push's pack after
# max_push_bytes, for both the exact and the "what is there" read callables.
bound_read_callables = _bound_read_callables

# upload/archive.py: dulwich's rule for paths a tar must not hold (`..`, absolute, `.git`),
# so that `git archive --remote` refuses what dulwich's own archiver would.
is_unsafe_archive_path = _is_unsafe_archive_path


def pack_basename(pack: Pack) -> str:
    """A stored pack's path without `.pack`/`.idx`: storedpacks and fsck read the pack
    file's bytes themselves (pack reuse, fsck of delta chains), and dulwich has no public
    attribute for it."""
    return pack._basename


def new_pack_basepath(store: DiskObjectStore, entries: list[Any]) -> str:
    """Where dulwich would name a new pack of `entries` (pack-SHA), so that a pack the
    gateway wrote itself (packreader) lands where dulwich's readers look."""
    return store._get_pack_basepath(entries)


def loose_object_ids(store: DiskObjectStore) -> Iterator[bytes]:
    """The loose objects' names, without reading them: fsck checks a quarantine's (it
    should have none) and asks whether the store has an object."""
    return store._iter_loose_objects()


def loose_object_path(store: DiskObjectStore, sha: bytes) -> str:
    """The file of a loose object: archive streams it in pieces instead of inflating the
    whole object as `store[sha]` does."""
    return store._get_shafile_path(sha)


def start_have_lines(handler: UploadPackHandler) -> None:
    """What dulwich's UploadPackHandler.handle sets first: the graph walker reads `have`
    lines (not a new request) until `done`. The gateway's handle() replaces dulwich's."""
    handler._processing_have_lines = True


def done_received(handler: UploadPackHandler) -> bool:
    """Whether the client sent `done` (set by the graph walker), for `handle_done`."""
    return handler._done_received


def start_pack_send_phase(handler: UploadPackHandler) -> None:
    """dulwich's switch into sending the pack (side-band setup), as its handle() does."""
    handler._start_pack_send_phase()


def forget_packed_refs(refs: Any) -> None:
    """housekeeping/refpacking.py: after packed-refs was rewritten beside dulwich's refs
    container, its cached copy of the file would answer for the old one."""
    refs._invalidate_packed_refs_cache()


# Private members the gateway's subclasses override (methods) or read from `self`
# (attributes set in __init__); why, in the module that does it.
SUBCLASS_INTERNALS: dict[type, dict[str, tuple[str, ...]]] = {
    # upload/upload_pack.py GatewayGraphWalker: determine_wants() reads the lines after
    # the first want through read_proto_line(); the override takes the shallow section
    # (`shallow`, `deepen`, `deepen-since`, `deepen-not`, which dulwich's reading does not
    # all know) into `client_shallow` and shallow.py's request, asking `handler` for the
    # client's deepen-relative.
    _ProtocolGraphWalker: {
        "methods": ("read_proto_line", "determine_wants"),
        "attributes": ("client_shallow", "handler"),
    },
    # receive/packreader.py _Indexer: dulwich's walk over delta chains (_walk_all_chains,
    # _walk_ref_chains) with its own _follow_chain: a bounded cache of bases, each entry
    # read with one pread where the first pass (packstream.py, which fills the pending
    # lists in place of `record`) found it, and a parse of every non-blob object.
    DeltaChainIterator: {
        "methods": ("_follow_chain", "_walk_all_chains", "_walk_ref_chains"),
        "attributes": ("_pending_ofs", "_pending_ref", "_full_ofs", "_resolve_ext_ref"),
    },
}
