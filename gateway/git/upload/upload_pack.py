"""Upload-pack (clone, fetch, ls-remote): dulwich's negotiation, the gateway's packs.

The traps a measured prototype hit in dulwich's UploadPackHandler, taken out:
- A `.bitmap` beside a pack crashes dulwich's upload-pack (FileNotFoundError on packs that
  lack one) and costs a parse on every request: reachability is always walked instead
  (`open_repo` in ../handlers.py).
- `filter` (partial clone) is advertised but the lazy fetches that follow are refused:
  it is not advertised, and a client's `filter` request is ignored so the clone is full.
- Packs are built by `packwriter` from the stored packs' bytes (pack reuse) rather than
  by dulwich, which inflates and deflates every object; shallow requests and repositories
  whose packs `storedpacks` cannot read still go through dulwich.
"""

from __future__ import annotations

from collections.abc import Iterable

from dulwich.pack import write_pack_from_container
from dulwich.protocol import (
    CAPABILITY_FILTER,
    CAPABILITY_NO_DONE,
    CAPABILITY_OFS_DELTA,
    CAPABILITY_SIDE_BAND_64K,
    CAPABILITY_THIN_PACK,
    COMMAND_DEEPEN,
    COMMAND_SHALLOW,
)
from dulwich.server import UploadPackHandler

from ..dulwich_seam import (
    ProtocolGraphWalker,
    done_received,
    start_have_lines,
    start_pack_send_phase,
)
from . import sideband, storedpacks
from .fetch import Fetch, send_pack


def _without_filter(caps: Iterable[bytes]) -> list[bytes]:
    return [
        c for c in caps if c != CAPABILITY_FILTER and not c.startswith(CAPABILITY_FILTER + b"=")
    ]


class GatewayGraphWalker(ProtocolGraphWalker):
    def _handle_shallow_request(self, wants) -> None:
        # dulwich expects `deepen` after a client's `shallow` lines; a fetch into a shallow
        # clone sends its shallow commits and no `deepen` ("unexpected flush-pkt" before).
        while True:
            command, value = self.read_proto_line((COMMAND_DEEPEN, COMMAND_SHALLOW, None))
            if command is None:
                return  # not deepening: the shallow commits only bound the walk
            if command == COMMAND_DEEPEN:
                self.unread_proto_line(command, value)
                super()._handle_shallow_request(wants)
                return
            self.client_shallow.add(value)


class GatewayUploadPackHandler(UploadPackHandler):
    def capabilities(self) -> list[bytes]:
        return _without_filter(super().capabilities())

    def set_client_capabilities(self, caps: Iterable[bytes]) -> None:
        # git 2.39 sends a bare `filter` even when it was not advertised.
        super().set_client_capabilities(_without_filter(caps))

    @classmethod
    def required_capabilities(cls) -> tuple[bytes, ...]:
        # dulwich requires side-band-64k, thin-pack and ofs-delta because its packs may
        # use them; packwriter uses each only when the client asked for it.
        return ()

    def handle(self) -> None:
        """dulwich's UploadPackHandler.handle, with the pack built by `packwriter`."""
        start_have_lines(self)
        repo, store = self.repo, self.repo.object_store
        walker = GatewayGraphWalker(self, store, repo.get_peeled, repo.refs.get_symrefs)
        refs = {ref: sha for ref, sha in repo.get_refs().items() if sha in store}
        wants = walker.determine_wants(refs, None)
        if not wants:
            return
        reader = None if walker.shallow or walker.unshallow else storedpacks.open_reader(repo)
        if reader is None:
            self._send_with_dulwich(walker, wants)
            return
        try:
            haves = store.find_common_revisions(walker)
            if not walker.handle_done(
                not self.has_capability(CAPABILITY_NO_DONE), done_received(self)
            ):
                return
            start_pack_send_phase(self)
            request = Fetch(
                wants=wants,
                haves=haves,
                tagged=self.get_tagged(refs, repo),
                ofs_delta=self.has_capability(CAPABILITY_OFS_DELTA),
                thin_pack=self.has_capability(CAPABILITY_THIN_PACK),
                client_shallow=frozenset(walker.client_shallow),
            )
            send_pack(repo.path, reader, refs, request, self._pack_writer(), self.progress)
            self.proto.write_pkt_line(None)
        finally:
            reader.close()

    def _pack_writer(self):
        if not self.has_capability(CAPABILITY_SIDE_BAND_64K):
            return self.proto.write
        return sideband.writer(self.proto.write)

    def _send_with_dulwich(self, walker, wants: list[bytes]) -> None:
        # The rest of dulwich's own handle(): shallow and unshallow requests.
        missing = self.repo.find_missing_objects(
            lambda refs, depth=None: wants, walker, self.progress, get_tagged=self.get_tagged
        )
        if missing is None:
            return
        object_ids = list(missing)
        if not walker.handle_done(not self.has_capability(CAPABILITY_NO_DONE), done_received(self)):
            return
        start_pack_send_phase(self)
        self.progress(f"counting objects: {len(object_ids)}, done.\n".encode("ascii"))
        reuse = self.has_capability(CAPABILITY_THIN_PACK) and self.has_capability(
            CAPABILITY_OFS_DELTA
        )
        write_pack_from_container(
            self.write_pack_data,
            self.repo.object_store,
            object_ids,
            object_format=self.repo.object_format,
            reuse_deltas=reuse,
        )
        self.proto.write_pkt_line(None)
