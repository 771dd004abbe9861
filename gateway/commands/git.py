"""Serving a Git request: one access decision, a worker slot (slots.py), then a worker
process speaks Git; the decision is made again when the client's first command arrives
(and, in protocol v2, where one connection carries several commands, at each of them)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import access, decision, metrics
from ..errors import Refusal
from ..git import layout, protocol
from ..git.housekeeping import scheduler as housekeeping
from ..git.workers.asyncio_seam import close_pipes
from ..git.workers.job import Job
from ..git.workers.pool import WorkerProcess, read_status
from ..git.workers.slots import Full
from ..logs import log_event
from ..names import printable
from ..store import audit
from ..store.database import DatabaseError
from .context import Context, Reader, Writer
from .parse import GitRequest

log = logging.getLogger("gateway.git")

CHUNK = 256 * 1024
AUDIT_PATIENCE = 30  # seconds a moved ref's audit rows wait for the database to answer
ACTIONS = {
    "git-upload-pack": decision.Action.READ,
    "git-upload-archive": decision.Action.READ,
    "git-receive-pack": decision.Action.WRITE,
}


async def run(ctx: Context, request: GitRequest) -> int:
    action = ACTIONS[request.service]
    verdict, facts, repo = await _decide(ctx, request, action)
    if isinstance(verdict, decision.Deny):
        await _audit_denied(ctx, action, facts, verdict.reason)
        raise Refusal(verdict.message)
    assert repo is not None
    repo_dir = layout.resolve(ctx.settings.repos_dir, repo.workspace, repo.name)
    push = None
    if action is decision.Action.WRITE:
        push = await access.push_facts(ctx.db, ctx.identity, facts, repo)
    job = Job(
        service=request.service,
        repo_dir=str(repo_dir),
        account=ctx.identity.account,
        workspace=repo.workspace,
        repository=repo.full_name,
        key_fingerprint=ctx.identity.key_fingerprint,
        remote_addr=ctx.remote_addr,
        path=os.environ.get("PATH", "/usr/bin:/bin"),
        hooks_dir=str(ctx.settings.hooks_dir.resolve()),
        hook_timeout=ctx.settings.hook_timeout,
        max_push_bytes=ctx.settings.max_push_bytes,
        max_object_bytes=ctx.settings.max_object_bytes,
        max_push_inflated_bytes=ctx.settings.max_push_inflated_bytes,
        fsck_objects=ctx.settings.fsck_objects,
        push_ref_namespaces=tuple(ctx.settings.push_ref_namespaces),
        allow_unusual_ref_names=ctx.settings.allow_unusual_ref_names,
        log_level=ctx.settings.log_level,
        log_format=ctx.settings.log_format,
        worker_memory_limit=ctx.settings.worker_memory_limit,
        git_protocol=ctx.git_protocol,
        **(
            dict(
                branch_rules=push.rules,
                pusher=push.pusher,
                signing_keys=push.signing_keys,
                ssh_command=ctx.settings.ssh_command(""),
            )
            if push is not None
            else {}
        ),
        database_url=ctx.settings.database_url,
    )

    async def recheck() -> str | None:
        """At the client's first bytes after the advertisement: the key, membership and
        2SV policy again, since a session may have sat there since before a removal."""
        if not await access.still_valid(ctx.db, ctx.identity):
            message, reason = "This key is no longer accepted", "key no longer accepted"
        else:
            again, again_facts, _ = await _decide(ctx, request, action, "first-command")
            if isinstance(again, decision.Allow) and again_facts.repo_id == repo.id:
                return None
            if isinstance(again, decision.Deny):
                message, reason = again.message, again.reason
            else:  # removed and made again under the same name: not the one advertised
                message, reason = f"Repository not found: {facts.asked_as}", "repository replaced"
        metrics.GIT_REQUESTS_REFUSED.labels("access_changed").inc()
        await _audit_denied(ctx, action, facts, f"{reason} (at the first command)")
        return message

    try:
        held = await ctx.app.git.slots.acquire(
            _owner(ctx.identity),
            ctx.identity.is_access_key,
            ctx.settings.max_git_workers,
            ctx.settings.max_git_workers_per_account,
            ctx.settings.git_queue_timeout,
        )
    except Full as full:
        log_event(
            log,
            "git.refused",
            logging.WARNING,
            account=ctx.identity.account,
            repository=repo.full_name,
            reason=full.reason,
        )
        raise
    try:
        proc = await ctx.app.git.pool.start_job(job)
        try:
            outcome = await relay(
                proc,
                ctx.stdin,
                ctx.stdout,
                ctx.stderr,
                idle_timeout=ctx.settings.idle_timeout,
                request_timeout=ctx.settings.request_timeout,
                service=request.service,
                first_bytes=recheck,
                git_protocol=job.git_protocol,
            )
        finally:
            status = read_status(proc)
            await _audit_push(ctx, action, repo.full_name, status, push)
            housekeeping.SCHEDULER.after_push(str(repo_dir), repo.full_name, ctx.settings, status)
    finally:
        held.release()
    peak = getattr(proc, "peak_kib", None)  # known for a forked worker (zygote.py)
    log_event(
        log,
        "git.done",
        account=ctx.identity.account,
        repository=repo.full_name,
        service=request.service,
        exit=proc.returncode,
        **({"peak_mib": round(peak / 1024, 1)} if peak is not None else {}),
    )
    if outcome.cut is not None:
        log_event(
            log,
            "git.cut",
            logging.WARNING,
            account=ctx.identity.account,
            repository=repo.full_name,
            reason=outcome.cut,
        )
    if outcome.refusal is not None:
        raise Refusal(outcome.refusal)
    return outcome.status


async def _decide(
    ctx: Context, request: GitRequest, action: decision.Action, stage: str = "request"
):
    facts, repo = await access.repo_facts(ctx.db, ctx.identity, request.path)
    # The account's 2SV state costs several queries; only a policy that applies reads it.
    twosv = (
        await access.twosv_facts(ctx.db, ctx.identity)
        if decision.requirement_applies(facts, action)
        else decision.TwoSVFacts()
    )
    verdict = decision.decide(
        ctx.identity, twosv, facts, action, ctx.clock(), ssh=ctx.settings.ssh_command("")
    )
    log_event(
        log,
        "decision",
        account=ctx.identity.account,
        action=action.value,
        repository=facts.asked_as,
        result="deny" if isinstance(verdict, decision.Deny) else "allow",
        reason=getattr(verdict, "reason", ""),
        stage=stage,
    )
    return verdict, facts, repo


async def _audit_denied(
    ctx: Context, action: decision.Action, facts: decision.RepoFacts, reason: str
) -> None:
    await audit.write(
        ctx.db,
        ctx.identity.account,
        f"repo.{action.value}",
        facts.asked_as,
        outcome="denied",
        detail=reason,
    )
    await ctx.db.commit()


def _owner(identity: decision.Identity) -> str:
    """Whose share of the workers a request uses: an account's, or an access key's own."""
    if identity.is_access_key:
        return f"access-key {identity.key_fingerprint}"
    return f"account {identity.account_id}"


async def _audit_push(
    ctx: Context,
    action: decision.Action,
    repository: str,
    report: dict,
    push: access.PushFacts | None,
) -> None:
    """A push is audited by the refs it moved, which the worker reports as soon as they
    have moved (before it answers the client): whatever its exit status, and even if the
    client went away after that. The row keeps the facts of the decision (the pusher,
    each ref's kind of update) for `branch-rule --dry-run`. A push whose refs were all
    refused leaves no `repo.push` row; each refused ref gets a `repo.write` denied row."""
    if action is not decision.Action.WRITE:
        return
    rows: list[dict[str, str]] = []
    moved = report.get("moved")
    if isinstance(moved, int) and moved > 0:
        rows.append(
            {
                "action": "repo.push",
                "detail": moved_detail(report),
                "facts": push_facts_json(report, push),
            }
        )
    refused = report.get("refused")
    for item in refused if isinstance(refused, list) else []:
        if isinstance(item, list) and len(item) == 2 and all(isinstance(i, str) for i in item):
            rows.append(
                {
                    "action": "repo.write",
                    "outcome": "denied",
                    "detail": f"{_escaped(item[0])}: {printable(item[1], None)}",
                }
            )
    if rows:
        await _write_audit_rows(ctx, repository, rows)


async def _write_audit_rows(ctx: Context, repository: str, rows: list[dict[str, str]]) -> None:
    """The refs have moved whatever the database does: if it does not answer (a
    PostgreSQL restart) the rows are tried again for AUDIT_PATIENCE seconds, then kept
    whole in the log (`audit.unwritten`) rather than lost."""
    deadline = time.monotonic() + AUDIT_PATIENCE
    while True:
        try:
            for row in rows:
                await audit.write(ctx.db, ctx.identity.account, target=repository, **row)
            await ctx.db.commit()
            return
        except DatabaseError as exc:
            with contextlib.suppress(DatabaseError):
                await ctx.db.rollback()
            if time.monotonic() >= deadline:
                for row in rows:
                    log_event(
                        log,
                        "audit.unwritten",
                        logging.ERROR,
                        account=ctx.identity.account,
                        repository=repository,
                        error=str(exc),
                        **row,
                    )
                return
            await asyncio.sleep(1)


def push_facts_json(report: dict, push: access.PushFacts | None) -> str:
    """The facts `branch-rule --dry-run` reads back: who pushed (as decision.Pusher)
    and, for each ref named, its kind of update."""
    refs, kinds = report.get("refs", []), report.get("kinds", [])
    if not isinstance(refs, list) or not isinstance(kinds, list) or push is None:
        return ""
    updates = [
        [r, k]
        for r, k in zip(refs, kinds, strict=False)
        if isinstance(r, str) and isinstance(k, str)
    ]
    return json.dumps({"pusher": dataclasses.asdict(push.pusher), "updates": updates})


def _escaped(text: str) -> str:
    """Anything that does not print, escaped: the audit is read at a terminal."""
    return "".join(c if c.isprintable() and c != " " else f"\\u{ord(c):04x}" for c in text)


def moved_detail(report: dict) -> str:
    """`N refs: NAME ...` with anything that does not print escaped (a ref name may hold
    bidi controls if the operator allows them; the audit is read at a terminal)."""
    refs = [r for r in report.get("refs", []) if isinstance(r, str)]
    names = " ".join(_escaped(r) for r in refs)
    more = " ..." if report["moved"] > len(refs) else ""
    return f"{report['moved']} ref{'s' if report['moved'] != 1 else ''}: {names}{more}"


@dataclass
class Outcome:
    status: int
    refusal: str | None = None  # set when the first-command re-check refused
    cut: str | None = None  # why the worker was killed: idle_timeout or request_timeout


async def relay(
    proc: WorkerProcess,
    stdin: Reader,
    stdout: Writer,
    stderr: Writer,
    idle_timeout: int = 0,
    request_timeout: int = 0,
    service: str = "",
    first_bytes: Callable[[], Awaitable[str | None]] | None = None,
    git_protocol: str = "",
) -> Outcome:
    """Pass bytes between the client and a worker until it exits; kill it if we are cut
    off, if no byte has moved either way for `idle_timeout` seconds, or if the client has
    not sent its whole request (RequestWatch) `request_timeout` seconds after the relay
    began (0: never, for both). `first_bytes` runs when the client's first bytes arrive,
    before the worker sees them, and again at each later protocol v2 command: a message
    it returns refuses the request."""
    last_moved = time.monotonic()
    watch = RequestWatch(service, protocol.version(git_protocol))
    request_done = asyncio.Event()
    refusal: str | None = None
    cut: str | None = None

    async def feed() -> None:
        nonlocal last_moved, refusal
        checked = first_bytes is None
        checked_at = 0  # v2 commands seen when access was last checked
        try:
            while data := await stdin.read(CHUNK):
                last_moved = time.monotonic()
                if watch.feed(data):
                    request_done.set()
                if first_bytes is not None and (not checked or watch.commands > checked_at):
                    checked, checked_at = True, watch.commands
                    refusal = await _checked(first_bytes)
                    if refusal is not None:
                        _kill(proc)
                        return
                proc.stdin.write(data)
                await proc.stdin.drain()
        except Exception:
            pass  # the client went away, or the worker finished without reading everything
        finally:
            request_done.set()  # at end of input there is nothing more to wait for
            # EOF for the worker in every case, so that it never waits for input for ever.
            proc.stdin.close()

    async def copy(source: asyncio.StreamReader, sink: Writer) -> None:
        nonlocal last_moved
        while data := await source.read(CHUNK):
            last_moved = time.monotonic()
            sink.write(data)
            await sink.drain()

    def cut_off(reason: str, message: str) -> None:
        nonlocal cut
        if cut:
            return  # one line, even if both timers fire
        cut = reason
        stderr.write(f"ERROR: {message}; closing\n".encode())
        _kill(proc)

    async def watch_idle() -> None:
        while True:
            await asyncio.sleep(min(idle_timeout, 5))
            if time.monotonic() - last_moved > idle_timeout:
                cut_off("idle_timeout", f"Nothing sent or received for {idle_timeout} seconds")
                return

    async def watch_request() -> None:
        # Bytes trickling in keep the idle timer quiet; this one counts from the start.
        try:
            await asyncio.wait_for(request_done.wait(), request_timeout)
        except TimeoutError:
            metrics.GIT_REQUESTS_REFUSED.labels("request_timeout").inc()
            cut_off(
                "request_timeout",
                f"The Git request did not arrive in full within {request_timeout} seconds",
            )

    feeder = asyncio.create_task(feed())
    watchers = [
        asyncio.create_task(watch_idle()) if idle_timeout else None,
        asyncio.create_task(watch_request()) if request_timeout else None,
    ]
    copies = [
        asyncio.create_task(copy(proc.stdout, stdout)),
        asyncio.create_task(copy(proc.stderr, stderr)),
    ]
    try:
        await asyncio.gather(*copies)
        status = await proc.wait()
        if refusal is not None or cut:
            status = 1  # not the worker's own status: it was killed
        return Outcome(status, refusal, cut)
    finally:
        for task in (feeder, *watchers, *copies):
            if task is not None:
                task.cancel()
        if proc.returncode is None:
            proc.kill()
        # Close the pipes before waiting, or wait() may wait for ever (asyncio_seam.py).
        close_pipes(proc)
        await proc.wait()


def _kill(proc: WorkerProcess) -> None:
    try:
        proc.kill()
    except ProcessLookupError:
        pass  # it has just exited


async def _checked(check: Callable[[], Awaitable[str | None]]) -> str | None:
    """The re-check's answer; a failure in it refuses, as a bug does elsewhere."""
    try:
        return await check()
    except Exception as exc:
        log_event(
            log, "git.recheck_failed", logging.ERROR, error=f"{exc.__class__.__name__}: {exc}"
        )
        log.debug("re-check failure details", exc_info=True)
        return "internal error; the operator has the details"


HEX = frozenset(b"0123456789abcdefABCDEF")


class RequestWatch:
    """Tells when a client has sent its whole request, from its pkt-lines' 4-byte lengths
    alone (and the bytes of lines short enough to be `done` or `command=...`):
    upload-pack's ends with `done` (or is one flush-pkt: nothing wanted), receive-pack's
    commands and upload-archive's arguments with the first flush-pkt. What comes after (a
    push's pack) is the idle timeout's. Bytes that are not pkt-lines end the watch: the
    worker refuses them itself.

    In protocol v2 (upload-pack only) a connection carries commands, each ended by a
    flush-pkt, with delim-pkts (`0001`) inside: the request is whole at the end of a
    `fetch` command (after it the server may answer `ready` and send the pack without
    the client's `done`) or at an empty request (a flush-pkt alone: the client is done).
    The watch keeps counting commands after that (`commands`), for the re-check at each."""

    SHORT = 16  # the longest line whose bytes are kept: `command=ls-refs\n`

    def __init__(self, service: str, version: int = 0) -> None:
        self._upload_pack = service == "git-upload-pack"
        self._v2 = self._upload_pack and version == 2
        self._head = b""
        self._left = 0  # payload bytes of the current line still to come
        self._short: bytearray | None = None  # the payload, kept only for short lines
        self._lines = 0
        self._in_request = 0  # v2: lines of the current command so far
        self._fetch = False  # v2: the current command is a fetch
        self._lost = False  # not pkt-lines: nothing more to follow
        self.commands = 0  # v2: `command=` lines seen
        self.done = False

    def feed(self, data: bytes) -> bool:
        i = 0
        while i < len(data) and not self._lost and (self._v2 or not self.done):
            if self._left:
                take = min(self._left, len(data) - i)
                if self._short is not None:
                    self._short += data[i : i + take]
                self._left -= take
                i += take
                if not self._left:
                    self._line_ended()
                continue
            need = 4 - len(self._head)
            self._head += data[i : i + need]
            i += need
            if len(self._head) < 4:
                break
            head, self._head = self._head, b""
            if not HEX.issuperset(head):
                self.done = self._lost = True
                break
            length = int(head, 16)
            if length == 0:
                self._flush()
            elif length == 1 and self._v2:
                self._in_request += 1  # a delim-pkt, inside a command
            elif length < 4:
                self.done = self._lost = True  # the worker refuses it
            else:
                self._left = length - 4
                self._short = bytearray() if self._left <= self.SHORT else None
                if not self._left:
                    self._line_ended()
        return self.done

    def _flush(self) -> None:
        if not self._v2:
            self.done = self.done or not self._upload_pack or self._lines == 0
            return
        if self._fetch or not self._in_request:
            self.done = True
        self._in_request, self._fetch = 0, False

    def _line_ended(self) -> None:
        self._lines += 1
        self._in_request += 1
        line = bytes(self._short).removesuffix(b"\n") if self._short is not None else None
        self._short = None
        if self._upload_pack and line == b"done":
            self.done = True
        if self._v2 and line is not None and line.startswith(b"command="):
            self.commands += 1
            self._fetch = line == b"command=fetch"
