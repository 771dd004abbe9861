"""Upload-archive (`git archive --remote`): the arguments Git sends, the tar from archive.py.

dulwich only takes full ref names and breaks on `--prefix=X`; tree-ishes are resolved the
way Git does for the common forms. The tar stream is `archive.py`'s: dulwich's holds every
file whole, and its refusal of an unsafe path showed as an internal error.
"""

from __future__ import annotations

import time
from typing import ClassVar

from dulwich.errors import GitProtocolError
from dulwich.objects import Commit, Tag, Tree, valid_hexsha
from dulwich.protocol import SIDE_BAND_CHANNEL_DATA
from dulwich.server import Backend, UploadArchiveHandler

from . import archive, storedpacks
from .sideband import DATA_MAX as SIDE_BAND_DATA_MAX


class GatewayUploadArchiveHandler(UploadArchiveHandler):
    FORMATS: ClassVar[dict[str, str]] = {"tar": "", "tgz": "gz", "tar.gz": "gz"}

    def __init__(self, backend: Backend, args: list[str], proto, max_object_bytes: int = 0) -> None:
        super().__init__(backend, args, proto)
        self.max_object_bytes = max_object_bytes  # 0: no limit

    def handle(self) -> None:
        arguments = []
        for pkt in self.proto.read_pkt_seq():
            key, _, value = pkt.rstrip(b"\n").partition(b" ")
            if key != b"argument":
                raise GitProtocolError(f"unknown command {key!r}")
            arguments.append(value.decode("utf-8", "replace"))
        try:
            tree, fmt, prefix = self._parse(arguments)
        except ValueError as exc:
            self.proto.write_pkt_line(f"NACK {exc}".encode())
            self.proto.write_pkt_line(None)
            return
        store = self.repo.object_store
        reader = storedpacks.open_reader(self.repo)
        try:
            # Checked before ACK: a refusal (archive.ArchiveRefused) is then a clean error.
            files = archive.plan(store, reader, tree, prefix.encode(), self.max_object_bytes)
            self.proto.write_pkt_line(b"ACK")
            self.proto.write_pkt_line(None)
            for chunk in archive.stream(store, reader, files, int(time.time()), fmt):
                for at in range(0, len(chunk), SIDE_BAND_DATA_MAX):
                    self.proto.write_sideband(
                        SIDE_BAND_CHANNEL_DATA, chunk[at : at + SIDE_BAND_DATA_MAX]
                    )
        finally:
            if reader is not None:
                reader.close()
        self.proto.write_pkt_line(None)

    def _parse(self, arguments: list[str]) -> tuple[Tree, str, str]:
        fmt, prefix, treeish = "", "", None
        items = iter(arguments)
        for arg in items:
            if arg.startswith("--format="):
                name = arg[len("--format=") :]
                if name not in self.FORMATS:
                    raise ValueError(f"unsupported archive format: {name[:40]}")
                fmt = self.FORMATS[name]
            elif arg.startswith("--prefix="):
                prefix = arg[len("--prefix=") :]
            elif arg == "--prefix":
                prefix = next(items, "")
            elif arg.startswith("-"):
                raise ValueError(f"unsupported option: {arg[:40]}")
            elif treeish is None:
                treeish = arg
            else:
                raise ValueError("paths inside the tree are not supported")
        if treeish is None:
            raise ValueError("no tree-ish given")
        return self._resolve_tree(treeish), fmt, prefix

    def _ref_tips(self) -> set[bytes]:
        tips = set()
        for ref in self.repo.get_refs():
            tips.add(self.repo.refs[ref])
            peeled = self.repo.get_peeled(ref)
            if peeled:
                tips.add(peeled)
        return tips

    def _resolve_tree(self, treeish: str) -> Tree:
        name = treeish.encode()
        store = self.repo.object_store
        sha = None
        for candidate in (name, b"refs/" + name, b"refs/tags/" + name, b"refs/heads/" + name):
            if candidate == b"HEAD" or candidate.startswith(b"refs/"):
                try:
                    sha = self.repo.refs[candidate]
                    break
                except KeyError:
                    continue
        if sha is None and valid_hexsha(name) and name in self._ref_tips():
            sha = name  # like C git: no archives of unreachable objects by raw name
        if sha is None:
            raise ValueError(f"not a valid object name: {treeish[:60]}")
        obj = store[sha]
        while isinstance(obj, Tag):
            obj = store[obj.object[1]]
        if isinstance(obj, Commit):
            obj = store[obj.tree]
        if not isinstance(obj, Tree):
            raise ValueError(f"not a tree object: {treeish[:60]}")
        return obj
