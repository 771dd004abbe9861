"""The handler for each Git service, as dulwich's server calls them, and the one
repository they serve.

A worker (workers/worker.py) opens the repository with `open_repo`, looks up the
service in `HANDLERS` and calls `handle()` on what the entry returns. Each entry takes
the repository, the pkt-line protocol and the job (workers/job.py), and gives its
handler only the settings it applies: upload-pack none, upload-archive the object size
limit, receive-pack the push settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dulwich.object_store import GraphTraversalReachability
from dulwich.protocol import Protocol as PktLineProtocol
from dulwich.repo import Repo
from dulwich.server import Backend

from .receive.pipeline import ReceivePack
from .upload.upload_archive import GatewayUploadArchiveHandler
from .upload.upload_pack import GatewayUploadPackHandler

if TYPE_CHECKING:
    from .workers.job import Job


class OneRepoBackend(Backend):
    """Serves the one repository the gateway already resolved and authorised."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    def open_repository(self, path: str) -> Repo:
        return self.repo


def open_repo(path: str) -> Repo:
    """The repository, with reachability always walked: a `.bitmap` beside a pack
    crashes dulwich's upload-pack on packs that lack one, and costs a parse each time."""
    repo = Repo(path)
    store = repo.object_store

    def walk_graph(prefer_bitmaps: bool = True) -> GraphTraversalReachability:
        return GraphTraversalReachability(store)

    store.get_reachability_provider = walk_graph  # type: ignore[method-assign]
    return repo


class Handler(Protocol):
    def handle(self) -> object: ...


def _upload_pack(repo: Repo, proto: PktLineProtocol, job: Job, status_fd: int | None) -> Handler:
    return GatewayUploadPackHandler(OneRepoBackend(repo), [job.repo_dir], proto)


def _upload_archive(repo: Repo, proto: PktLineProtocol, job: Job, status_fd: int | None) -> Handler:
    return GatewayUploadArchiveHandler(
        OneRepoBackend(repo), [job.repo_dir], proto, max_object_bytes=job.max_object_bytes
    )


def _receive_pack(repo: Repo, proto: PktLineProtocol, job: Job, status_fd: int | None) -> Handler:
    return ReceivePack(repo, proto, job.push_settings(status_fd))


HANDLERS: dict[str, Callable[[Repo, PktLineProtocol, Job, int | None], Handler]] = {
    "git-upload-pack": _upload_pack,
    "git-receive-pack": _receive_pack,
    "git-upload-archive": _upload_archive,
}
