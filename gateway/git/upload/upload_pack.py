"""Upload-pack (clone, fetch, ls-remote): dulwich's negotiation, the gateway's packs.

The traps a measured prototype hit in dulwich's UploadPackHandler, taken out:
- A `.bitmap` beside a pack crashes dulwich's upload-pack (FileNotFoundError on packs that
  lack one) and costs a parse on every request: reachability is always walked instead
  (`open_repo` in ../handlers.py).
- `filter` (partial clone) is advertised but dulwich builds the whole pack and then drops
  objects, and the lazy fetches that follow (wants that are not ref tips) are refused:
  the client's `filter` line is read here (filters.parse) and applied by walk.py, and
  any want a ref reaches is served (`allow-reachable-sha1-in-want`, reachable.py).
- Packs are built by `packwriter` from the stored packs' bytes (pack reuse) rather than
  by dulwich, which inflates and deflates every object; shallow requests and repositories
  whose packs `storedpacks` cannot read still go through dulwich.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from dulwich.pack import write_pack_from_container
from dulwich.protocol import (
    CAPABILITY_ALLOW_REACHABLE_SHA1_IN_WANT,
    CAPABILITY_FILTER,
    CAPABILITY_INCLUDE_TAG,
    CAPABILITY_NO_DONE,
    CAPABILITY_OFS_DELTA,
    CAPABILITY_SIDE_BAND_64K,
    CAPABILITY_THIN_PACK,
    COMMAND_DEEPEN,
    COMMAND_FILTER,
    COMMAND_SHALLOW,
    COMMAND_WANT,
    SIDE_BAND_CHANNEL_DATA,
    ack_type,
    extract_want_line_capabilities,
)
from dulwich.server import PackHandler, UploadPackHandler

from ..dulwich_seam import (
    ProtocolGraphWalker,
    done_received,
    start_have_lines,
    start_pack_send_phase,
)
from . import filters, reachable, storedpacks
from .fetch import Fetch, send_pack
from .filters import FilterError, ObjectFilter
from .reachable import NotReachable
from .refs import Ref, head_target, list_refs

log = logging.getLogger(__name__)

SIDE_BAND_DATA_MAX = 65515  # a pkt-line's 65520 bytes less its length and channel


def symrefs(repo) -> dict[bytes, bytes]:
    """The `symref=` capability: HEAD's target, even when it does not exist yet (as dulwich
    gives it). Only HEAD's, as C git: git 2.39 spins for ever on a v0 advertisement that
    names another symbolic ref (refs/remotes/origin/HEAD in a mirror)."""
    head = head_target(repo.controldir())
    return {} if head is None else {b"HEAD": head}


class GatewayGraphWalker(ProtocolGraphWalker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.object_filter: ObjectFilter | None = None
        self._reading_request = False

    def determine_wants(self, heads, depth=None) -> list[bytes]:
        """dulwich's advertisement, then the request read here: dulwich refuses a want
        that is not a ref tip (a partial clone's lazy fetch); reachable.check_wants
        decides instead."""
        if self.advertise_refs or not self.stateless_rpc:
            advertise_only = self.advertise_refs
            self.advertise_refs = True  # dulwich's determine_wants stops after advertising
            try:
                super().determine_wants(heads, depth)
            finally:
                self.advertise_refs = advertise_only
            if advertise_only:
                return []
        first = self.proto.read_pkt_line()
        if not first:
            return []
        line, caps = extract_want_line_capabilities(first)
        self.handler.set_client_capabilities(caps)
        self.set_ack_type(ack_type(caps))
        self._reading_request = True
        try:
            self.proto.unread_pkt_line(line)
            allowed = (COMMAND_WANT, COMMAND_SHALLOW, COMMAND_DEEPEN, None)
            wants: list[bytes] = []
            command, value = self.read_proto_line(allowed)
            while command == COMMAND_WANT:
                assert isinstance(value, bytes)
                wants.append(value)
                command, value = self.read_proto_line(allowed)
            self.set_wants(wants)
            if command in (COMMAND_SHALLOW, COMMAND_DEEPEN):
                assert value is not None
                self.unread_proto_line(command, value)
                self._handle_shallow_request(wants)
        finally:
            self._reading_request = False
        if self.stateless_rpc and self.proto.eof():
            return []
        return wants

    def read_proto_line(self, allowed):
        # A `filter` line may come after the wants or after the shallow and deepen lines
        # (Git sends it last); it is taken here so that dulwich's readers never see it.
        while self._reading_request:
            line = self.proto.read_pkt_line()
            if line is None or not line.startswith(COMMAND_FILTER + b" "):
                self.proto.unread_pkt_line(line)
                break
            if not self.handler.has_capability(CAPABILITY_FILTER):
                raise FilterError("a filter line without the filter capability")
            if self.object_filter is not None:
                raise FilterError("more than one filter line")
            self.object_filter = filters.parse(line[len(COMMAND_FILTER) + 1 :].rstrip(b"\n"))
        return super().read_proto_line(allowed)

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
        # Wants by id (a partial clone's lazy fetches) are served when a ref reaches them.
        return [*super().capabilities(), CAPABILITY_ALLOW_REACHABLE_SHA1_IN_WANT]

    def set_client_capabilities(self, caps: Iterable[bytes]) -> None:
        # Not dulwich's: it parses a `filter=` capability with its own filter code.
        PackHandler.set_client_capabilities(self, caps)

    @classmethod
    def required_capabilities(cls) -> tuple[bytes, ...]:
        # dulwich requires side-band-64k, thin-pack and ofs-delta because its packs may
        # use them; packwriter uses each only when the client asked for it.
        return ()

    def handle(self) -> None:
        """dulwich's UploadPackHandler.handle, with the pack built by `packwriter`."""
        start_have_lines(self)
        repo, store = self.repo, self.repo.object_store
        listed = list_refs(repo.controldir(), store=store)
        refs = {ref.name: ref.sha for ref in listed}
        peeled = {ref.name: ref.peeled for ref in listed if ref.peeled is not None}
        walker = GatewayGraphWalker(self, store, peeled.get, lambda: symrefs(repo))
        try:
            wants = walker.determine_wants(refs, None)
        except FilterError as exc:
            self._refuse(str(exc))
            return
        if not wants:
            return
        reader = storedpacks.open_reader(repo)
        if reader is not None:
            try:
                reachable.check_wants(repo.path, reader, refs, wants)
            except NotReachable as exc:
                reader.close()
                self._refuse(str(exc))
                return
        elif not set(refs.values()).issuperset(wants):
            self._refuse(str(NotReachable(next(w for w in wants if w not in refs.values()))))
            return
        if walker.shallow or walker.unshallow or reader is None:
            if reader is not None:
                reader.close()
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
                tagged=self._tagged(listed),
                ofs_delta=self.has_capability(CAPABILITY_OFS_DELTA),
                thin_pack=self.has_capability(CAPABILITY_THIN_PACK),
                client_shallow=frozenset(walker.client_shallow),
                object_filter=walker.object_filter,
            )
            send_pack(repo.path, reader, refs, request, self._pack_writer(), self.progress)
            self.proto.write_pkt_line(None)
        finally:
            reader.close()

    def _tagged(self, listed: list[Ref]) -> dict[bytes, bytes]:
        """What include-tag needs: peeled object -> annotated tag (dulwich's get_tagged,
        from the listed refs instead of a peel per ref)."""
        if not self.has_capability(CAPABILITY_INCLUDE_TAG):
            return {}
        return {ref.peeled: ref.sha for ref in listed if ref.peeled is not None}

    def _refuse(self, message: str) -> None:
        """One ERR pkt-line (git prints it as `fatal: remote error: ...`), then stop."""
        log.info("upload-pack refused: %s", message)
        self.proto.write_pkt_line(b"ERR " + message.encode("ascii", "backslashreplace"))

    def _pack_writer(self):
        # Not dulwich's write_sideband: it copies the rest of the data for every pkt-line.
        if not self.has_capability(CAPABILITY_SIDE_BAND_64K):
            return self.proto.write
        write = self.proto.write
        header = b"%04x" % (SIDE_BAND_DATA_MAX + 5) + bytes([SIDE_BAND_CHANNEL_DATA])

        def write_sideband(data: bytes) -> None:
            view = memoryview(data)
            for at in range(0, len(view), SIDE_BAND_DATA_MAX):
                piece = view[at : at + SIDE_BAND_DATA_MAX]
                if len(piece) == SIDE_BAND_DATA_MAX:
                    write(header + piece)  # one write: a pkt-line is larger than the buffer
                else:
                    write(b"%04x" % (len(piece) + 5) + bytes([SIDE_BAND_CHANNEL_DATA]) + piece)

        return write_sideband

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
