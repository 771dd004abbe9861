"""`git push`, with Git's semantics, built on dulwich's primitives (SPEC §7).

dulwich's own ReceivePackHandler runs pre-receive before the pack is read, ignores the
result of its compare-and-swap, has no connectivity check and leaves a truncated pack
behind. This handler does, in order:

1. read the commands (after a shallow clone's `shallow` lines, and with push options),
   then the pack into a quarantine directory that fetches cannot see (quarantine.py:
   `objects/incoming-PID-*`, the store its alternate);
2. check connectivity: every object a new tip needs is in the quarantine or the store
   (a push whose history stops at the client's shallow boundary is refused, as C git's
   `shallow update not allowed`: the repository never becomes shallow);
3. decide each ref by the branch rules (branchrules.py: kind of update, the one
   decision per ref, signatures where asked), then run `pre-receive` (it can read the
   quarantined objects, as Git's hooks can) and `update` for each ref;
4. move the new packs into the store, then update refs by compare-and-swap under a
   per-repository lock (all or none with `--atomic`);
5. report per ref the way C git does, then run `post-receive` and `post-update`.

The quarantine is removed whatever happens.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

from dulwich.errors import GitProtocolError
from dulwich.file import FileLocked
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, Commit, Tag, Tree, valid_hexsha
from dulwich.protocol import (
    CAPABILITIES_REF,
    SIDE_BAND_CHANNEL_DATA,
    SIDE_BAND_CHANNEL_PROGRESS,
    extract_capabilities,
    format_ref_line,
    pkt_line,
    symref_capabilities,
)
from dulwich.repo import Repo

from ...decision import Pusher, RefRule
from ...logs import log_event
from ...store import nodelock
from ..upload.refs import head_target, list_refs
from . import branchrules, connectivity, fsck, hooks, newobjects, packedwrite, packreader, refcheck
from . import quarantine as quarantines
from .limits import Limits
from .signed import SigningKey

ZERO = b"0" * 40
CAPABILITIES = [
    b"report-status",
    b"delete-refs",
    b"quiet",
    b"atomic",
    b"ofs-delta",
    b"side-band-64k",
    b"push-options",
    b"agent=gateway",
]
GITLINK_MODE = 0o160000
MAX_PUSH_OPTIONS = 100
MAX_SHALLOW_LINES = 100_000
# From this many new refs in one push, they are written into packed-refs at once: one
# rewrite and one fsync instead of one lock file and one fsync each.
PACK_CREATIONS = 16
SHALLOW_UPDATE = b"shallow update not allowed"
log = logging.getLogger("gateway.git")


@dataclass
class Command:
    old: bytes
    new: bytes
    ref: bytes
    error: bytes | None = None  # set once the ref is refused
    kind: str = ""  # decision.UpdateKind, once the branch rules have looked at it

    @property
    def is_delete(self) -> bool:
        return self.new == ZERO

    def line(self) -> bytes:
        return self.old + b" " + self.new + b" " + self.ref + b"\n"


# How many moved refs the worker names to the server (pool.py's status pipe), and how
# much of each name: well under a pipe's 64 KiB, so that the one write never waits.
STATUS_REFS = 50
STATUS_REF_CHARS = 100
# Refused refs are named with their reason, fewer of them: even all in 4-byte UTF-8,
# the whole report stays under the 64 KiB.
STATUS_REFUSED = 20
STATUS_REASON_CHARS = 150


@dataclass
class PushSettings:
    """What the push pipeline applies, from the worker's job (workers/job.py)."""

    hooks_dir: str | None = None
    hook_timeout: float = 60.0
    max_push_bytes: int | None = None
    hook_env: dict[str, str] = field(default_factory=dict)  # every hook starts from it
    namespaces: tuple[str, ...] = refcheck.DEFAULT_NAMESPACES
    allow_unusual_ref_names: bool = False
    status_fd: int | None = None  # the pool's status pipe (workers/pool.py)
    fsck_objects: bool = True
    limits: Limits = field(default_factory=Limits)
    # Branch rules (branchrules.py): none, by default, as for a job without them.
    rules: tuple[RefRule, ...] = ()
    pusher: Pusher = field(default_factory=Pusher)
    signing_keys: tuple[SigningKey, ...] = ()
    ssh_command: str = "ssh git@HOST"
    # PostgreSQL: the ref updates also run under its advisory lock (store/nodelock.py),
    # so that gateways on other machines sharing the repositories wait too.
    database_url: str = ""


class ReceivePack:
    def __init__(self, repo: Repo, proto, settings: PushSettings) -> None:
        self.repo = repo
        self.proto = proto
        self.settings = settings
        self.caps: set[bytes] = set()
        self.client_shallow: set[bytes] = set()  # the pushing clone's shallow commits
        self._tip_types: dict[bytes, int] = {}  # types of the new tips read with the pack
        self._new_commits = 0  # commits the push brought (told to the server)

    # --- the conversation ----------------------------------------------------------------

    def handle(self) -> bool:
        """Serve one push; True when some ref moved."""
        self._advertise()
        commands, options = self._read_commands()
        if not commands:
            return False
        seen: set[bytes] = set()
        for command in commands:
            command.error = self._check_command(command, seen)
            seen.add(command.ref)
        self._check_conflicts(commands)
        unpack_status = b"ok"
        quarantine = None
        try:
            if any(not c.is_delete for c in commands):
                links = connectivity.Links(c.new for c in commands if not c.is_delete)
                checker = None
                if self.settings.fsck_objects:
                    checker = fsck.Checker(fsck.levels_from_config(self.repo.get_config()))
                seen = newobjects.NewObjects(self.repo.object_store, links, checker)
                try:
                    quarantine = self._receive_pack(seen)
                except Exception as exc:  # a broken, truncated or oversized pack
                    unpack_status = _one_line(exc) or b"unpacker error"
                    self._refuse_all(commands, b"unpacker error")
                if quarantine is not None:
                    unpack_status = self._fsck(commands, seen.finish(quarantine))
                    self._new_commits = seen.commits
                    if unpack_status == b"ok":
                        self._check_connectivity(commands, quarantine, links)
                    self._tip_types = links.tip_types
            if unpack_status == b"ok":
                self._check_branch_rules(commands, quarantine)
                self._run_checks_and_update(commands, options, quarantine)
        finally:
            if quarantine is not None:
                quarantines.remove(quarantine)
        updated = [c for c in commands if c.error is None]
        self._tell_server(updated, commands)  # before the report: the client may be gone
        self._report(unpack_status, commands)
        if updated:
            self._hook("post-receive", b"".join(c.line() for c in updated), options=options)
            self._hook("post-update", b"", args=[c.ref.decode() for c in updated], options=options)
        if self._sideband:
            self.proto.write_pkt_line(None)
        return bool(updated)

    def _advertise(self) -> None:
        # upload/refs.py reads 20,000 refs in milliseconds where dulwich takes a second;
        # HEAD's symref only, as upload-pack (see upload_pack.symrefs).
        refs = [
            (ref.name, ref.sha)
            for ref in list_refs(self.repo.controldir(), store=self.repo.object_store)
        ]
        head = head_target(self.repo.controldir())
        symrefs = [] if head is None else [(b"HEAD", head)]
        if not refs:
            refs = [(CAPABILITIES_REF, ZERO)]
        caps = CAPABILITIES + symref_capabilities(symrefs)
        self.proto.write_pkt_line(format_ref_line(refs[0][0], refs[0][1], caps))
        for name, sha in refs[1:]:
            self.proto.write_pkt_line(format_ref_line(name, sha))
        self.proto.write_pkt_line(None)

    def _read_commands(self) -> tuple[list[Command], list[bytes]]:
        commands = []
        line = self._read_shallow_lines()
        if line is None:
            return [], []
        line, caps = extract_capabilities(line)
        self.caps = set(caps)
        while line:
            # As C git: the ref name is the rest of the line, so that a name with a
            # space in it is that ref's `funny refname`, not a broken push.
            parts = line.rstrip(b"\n").split(b" ", 2)
            if len(parts) != 3 or not valid_hexsha(parts[0]) or not valid_hexsha(parts[1]):
                raise GitProtocolError("invalid ref update line from the client")
            commands.append(Command(parts[0], parts[1], parts[2]))
            line = self.proto.read_pkt_line()
        options = []
        if b"push-options" in self.caps:
            options = [opt.rstrip(b"\n") for opt in self.proto.read_pkt_seq()]
            if len(options) > MAX_PUSH_OPTIONS or not all(_is_option(o) for o in options):
                raise GitProtocolError(
                    f"push options must be at most {MAX_PUSH_OPTIONS} lines of printable UTF-8"
                )
        return commands, options

    def _read_shallow_lines(self) -> bytes | None:
        """A push from a shallow clone starts with its shallow commits (`shallow X`), as C
        git's send-pack sends them; the first line after them is the first command."""
        line = self.proto.read_pkt_line()
        while line is not None and line.startswith(b"shallow "):
            sha = line[8:].rstrip(b"\n")
            if len(sha) != 40 or not valid_hexsha(sha):
                raise GitProtocolError("expected a shallow commit's name after `shallow`")
            if len(self.client_shallow) >= MAX_SHALLOW_LINES:
                raise GitProtocolError(f"more than {MAX_SHALLOW_LINES} shallow lines")
            self.client_shallow.add(sha.lower())
            line = self.proto.read_pkt_line()
        return line

    @property
    def _sideband(self) -> bool:
        return b"side-band-64k" in self.caps

    def _say(self, text: bytes) -> None:
        """Text the client shows as `remote:` lines (needs side-band)."""
        if self._sideband and text:
            self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS, text)

    # --- checks ----------------------------------------------------------------------

    def _check_command(self, command: Command, earlier: set[bytes]) -> bytes | None:
        problem = refcheck.name_problem(
            command.ref, self.settings.namespaces, self.settings.allow_unusual_ref_names
        )
        if problem is not None:
            return problem
        if command.ref in earlier:
            return b"duplicate ref"
        if command.old == ZERO and command.is_delete:
            return b"nothing to do"
        if command.is_delete and command.ref not in self.repo.refs:
            return b"no such ref"
        return None

    def _check_conflicts(self, commands: list[Command]) -> None:
        """Directory/file conflicts with the refs there are now (loose and packed) and
        within the push: the ref gets C git's `failed to update ref` and its message."""
        live = [c for c in commands if c.error is None]
        existing = [r for r in self.repo.refs.allkeys() if r.startswith(b"refs/")]
        found = refcheck.conflicts(existing, [(c.ref, c.is_delete) for c in live])
        for command in live:
            if command.ref in found:
                command.error = b"failed to update ref"
                self._say(b"error: " + found[command.ref] + b"\n")

    def _receive_pack(self, visit: newobjects.NewObjects) -> DiskObjectStore:
        quarantine = quarantines.create(self.repo.object_store.path)
        try:
            packreader.receive_pack(
                quarantine,
                self.proto.read,
                self.proto.recv,
                self.settings.max_push_bytes,
                self.settings.limits,
                visit,
            )
        except BaseException:
            quarantines.remove(quarantine)
            raise
        return quarantine

    def _fsck(self, commands: list[Command], problems: list[fsck.Problem]) -> bytes:
        """What C git's fsck found in the new objects (fsck.py, seen as the pack was
        indexed); an error refuses the whole push."""
        self._say(fsck.report(problems))
        if not any(p.is_error for p in problems):
            return b"ok"
        log_event(
            log,
            "push.fsck",
            level=logging.WARNING,
            repository=self.repo.controldir(),
            objects=len({p.sha for p in problems if p.is_error}),
            first=next(f"{p.sha.decode()}:{p.msg_id}" for p in problems if p.is_error),
        )
        self._refuse_all(commands, b"unpacker error")
        return b"fsck error in packed object"

    def _check_connectivity(
        self, commands: list[Command], quarantine: DiskObjectStore, links: connectivity.Links
    ) -> None:
        """Every object a new object names, and every new tip, is either new (in the
        quarantine) or already in the store, whose objects were all checked when they
        came in (connectivity.py). Only a push that fails it is walked from each tip, for
        each ref's own message."""
        store = self.repo.object_store
        live = [c for c in commands if c.error is None and not c.is_delete]
        missing = connectivity.first_missing(links, (c.new for c in live), quarantine, store)
        if missing is None:
            for command in live:
                if command.ref.startswith(b"refs/heads/") and not _is_commit(
                    command.new, links, quarantine
                ):
                    command.error = b"not a commit"
            return
        complete: set[bytes] = set()  # objects whose whole history is here, walked once
        for command in live:
            if not _complete(command.new, quarantine, store, complete):
                command.error = b"missing necessary objects"
                if _reaches_new_shallow(command.new, quarantine, store, self.client_shallow):
                    # As C git (receive.shallowUpdate false): the repository itself
                    # would become shallow.
                    command.error = SHALLOW_UPDATE
            elif command.ref.startswith(b"refs/heads/") and not isinstance(
                quarantine[command.new], Commit
            ):
                command.error = b"not a commit"
        if any(c.error == SHALLOW_UPDATE for c in commands) and not any(
            c.error == b"missing necessary objects" for c in commands
        ):
            self._refuse_all(commands, SHALLOW_UPDATE)
        else:
            # The store's objects are trusted to be complete: an incomplete pack never
            # moves in, so nothing of this push is accepted (an object no tip reaches
            # that names a missing one included, as C git's index-pack --strict).
            self._refuse_all(commands, b"missing necessary objects")

    def _check_branch_rules(
        self, commands: list[Command], quarantine: DiskObjectStore | None
    ) -> None:
        """Each ref that passed the checks so far, by the rules of its repository (and
        its workspace); a refused ref gets the rule's reason as its `ng` status."""
        live = [c for c in commands if c.error is None]
        store = self.repo.object_store
        settings = branchrules.Settings(
            self.settings.rules,
            self.settings.pusher,
            self.settings.signing_keys,
            self.settings.ssh_command,
        )
        kinds, refused = branchrules.check(
            [(c.old, c.new, c.ref) for c in live],
            settings,
            quarantine if quarantine is not None else store,
            self.repo.get_refs,
            self._say,
        )
        for command in live:
            command.kind = kinds.get(command.ref, "")
            command.error = refused.get(command.ref)

    def _run_checks_and_update(
        self, commands: list[Command], options: list[bytes], quarantine: DiskObjectStore | None
    ) -> None:
        atomic = b"atomic" in self.caps
        if atomic and any(c.error for c in commands):
            self._refuse_all(commands, b"atomic push failed")
            return
        env = {}
        if quarantine is not None:
            env = {
                "GIT_QUARANTINE_PATH": quarantine.path,
                "GIT_OBJECT_DIRECTORY": quarantine.path,
                "GIT_ALTERNATE_OBJECT_DIRECTORIES": os.path.abspath(self.repo.object_store.path),
            }
        pending = [c for c in commands if c.error is None]
        if pending and not self._hook(
            "pre-receive", b"".join(c.line() for c in pending), options=options, extra_env=env
        ):
            self._refuse_all(commands, b"pre-receive hook declined")
            return
        for command in pending:
            if not self._hook(
                "update",
                b"",
                args=[command.ref.decode(), command.old.decode(), command.new.decode()],
                options=options,
                extra_env=env,
            ):
                command.error = b"hook declined"
        if atomic and any(c.error for c in commands):
            self._refuse_all(commands, b"atomic push failed")
            return
        try:
            with self._refs_lock():
                self._update_refs([c for c in commands if c.error is None], atomic, quarantine)
        except nodelock.LockUnavailable as exc:
            # Without the lock other gateways honour, no ref may move.
            log.warning("cannot lock the refs of %s: %s", self.repo.controldir(), exc)
            self._refuse_all(commands, b"cannot lock the repository; try again later")

    def _update_refs(
        self, commands: list[Command], atomic: bool, quarantine: DiskObjectStore | None
    ) -> None:
        """Compare-and-swap each ref; the objects move in only if some ref will move.
        Under the lock, the old values and the conflicts are checked again (another push
        may have moved refs since) before any ref moves."""
        refs = self.repo.refs

        def current(ref: bytes) -> bytes:
            try:
                return refs[ref]
            except KeyError:
                return ZERO

        for command in commands:
            if current(command.ref) != command.old:
                command.error = b"failed to update ref"
        self._check_conflicts(commands)
        if atomic and any(c.error for c in commands):
            self._refuse_all(commands, b"atomic push failed")
            return
        moving = [c for c in commands if c.error is None]
        if quarantine is not None and moving:
            quarantines.move_in(quarantine, self.repo.object_store.path)
        # Deletions first: `refs/heads/a` gives way to `refs/heads/a/b` in one push; then
        # updates; creations last, many of them in one packed-refs write (packedwrite.py),
        # which is then the last step and never has to be undone.
        moving.sort(key=lambda c: (not c.is_delete, c.old == ZERO))
        git_dir = os.fsencode(self.repo.controldir())
        # (A dangling symbolic ref reads as absent but is a file: such a ref goes loose.)
        creations = [
            c
            for c in moving
            if c.old == ZERO
            and not c.is_delete
            and not os.path.lexists(os.path.join(git_dir, c.ref))
        ]
        if len(creations) < PACK_CREATIONS:
            creations = []
        moved: list[Command] = []
        packing = {id(c) for c in creations}
        if not self._move_each(
            [c for c in moving if id(c) not in packing], moved, atomic, commands
        ):
            return
        if creations and not self._create_packed(creations):
            self._move_each(creations, moved, atomic, commands)

    def _move_each(
        self, todo: list[Command], moved: list[Command], atomic: bool, commands: list[Command]
    ) -> bool:
        """Move each ref in turn (adding it to `moved`); False when an atomic push failed
        and every ref in `moved` was put back."""
        for command in todo:
            if self._move_ref(command, command.old, command.new):
                moved.append(command)
                continue
            command.error = b"failed to update ref"
            if atomic:
                for done in reversed(moved):  # all or none: put back what moved
                    self._move_ref(done, done.new, done.old)
                self._refuse_all(commands, b"atomic push failed")
                return False
        return True

    def _create_packed(self, creations: list[Command]) -> bool:
        """The refs, none of which exists, in one packed-refs write; False (nothing
        written) if another writer holds packed-refs.lock."""
        store = self.repo.object_store
        types = self._tip_types

        def peel(sha: bytes) -> bytes | None:
            type_num = types.get(sha)
            if type_num is None:
                type_num = store.get_raw(sha)[0]
            if type_num != Tag.type_num:
                return None
            obj = store[sha]
            while isinstance(obj, Tag):
                obj = store[obj.object[1]]
            return obj.id

        try:
            return packedwrite.rewrite(
                self.repo.controldir(), {c.ref: c.new for c in creations}, peel=peel
            )
        except OSError as exc:
            log.warning(
                "cannot write packed-refs in %s: %s", self.repo.controldir(), exc.__class__.__name__
            )
            return False

    def _move_ref(self, command: Command, old: bytes, new: bytes) -> bool:
        """One compare-and-swap; False (with C git's message) if it could not be made."""
        refs = self.repo.refs
        try:
            if new == ZERO:
                return refs.remove_if_equals(command.ref, None if old == ZERO else old)
            return refs.set_if_equals(command.ref, None if old == ZERO else old, new)
        except (OSError, FileLocked) as exc:
            # A lock file or a directory in the way that the checks could not see (a
            # writer other than the gateway): the ref stays as it was.
            log.warning(
                "cannot update ref %r in %s: %s",
                command.ref,
                self.repo.controldir(),
                exc.__class__.__name__,
            )
            self._say(b"error: cannot lock ref '" + command.ref + b"'\n")
            return False

    def _refuse_all(self, commands: list[Command], reason: bytes) -> None:
        for command in commands:
            if command.error is None:
                command.error = reason

    # --- side effects ----------------------------------------------------------------

    @contextmanager
    def _refs_lock(self):
        """One push at a time updates a repository's refs, so that checking the old values
        and writing the new ones is one step for `--atomic` as for single refs: the flock
        for this machine (housekeeping takes it too), then, on PostgreSQL, the lock every
        gateway sharing the database sees. LockUnavailable before anything moved."""
        git_dir = self.repo.controldir()
        with open(os.path.join(git_dir, "gateway-refs.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                name = nodelock.refs_lock_name(git_dir)
                with nodelock.held(self.settings.database_url, name):
                    yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _hook(
        self,
        name: str,
        stdin: bytes,
        *,
        args: Iterable[str] = (),
        options: list[bytes] = (),
        extra_env: dict | None = None,
    ) -> bool:
        env = dict(self.settings.hook_env)
        env["GIT_DIR"] = os.path.abspath(self.repo.controldir())
        # A hook's git must see the objects as they are: a pushed refs/replace/ ref would
        # otherwise rewrite history for `git merge-base` and friends.
        env["GIT_NO_REPLACE_OBJECTS"] = "1"
        if b"push-options" in self.caps:
            env["GIT_PUSH_OPTION_COUNT"] = str(len(options))
            for i, option in enumerate(options):
                env[f"GIT_PUSH_OPTION_{i}"] = option.decode("utf-8", "replace")
        env.update(extra_env or {})
        return hooks.run(
            self.settings.hooks_dir,
            name,
            list(args),
            stdin,
            env,
            self.settings.hook_timeout,
            self._say,
        )

    def _tell_server(self, moved: list[Command], commands: list[Command]) -> None:
        """The refs that moved (and how), and those refused (and why), for the server's
        audit rows (see pool.py): one write, well under a pipe's capacity."""
        refused = [c for c in commands if c.error is not None]
        if self.settings.status_fd is None or not (moved or refused):
            return

        def name(command: Command) -> str:
            return command.ref.decode("utf-8", "replace")[:STATUS_REF_CHARS]

        status = {
            "moved": len(moved),
            "commits": self._new_commits if moved else 0,
            "refs": [name(c) for c in moved[:STATUS_REFS]],
            "kinds": [c.kind for c in moved[:STATUS_REFS]],
            "refused": [
                [name(c), (c.error or b"").decode("utf-8", "replace")[:STATUS_REASON_CHARS]]
                for c in refused[:STATUS_REFUSED]
            ],
        }
        try:
            os.write(self.settings.status_fd, json.dumps(status, ensure_ascii=False).encode())
        except OSError:
            pass  # the server is gone; nobody is left to tell

    def _report(self, unpack_status: bytes, commands: list[Command]) -> None:
        if b"report-status" not in self.caps:
            return
        lines = [b"unpack " + unpack_status + b"\n"]
        for command in commands:
            if command.error is None:
                lines.append(b"ok " + command.ref + b"\n")
            else:
                lines.append(b"ng " + command.ref + b" " + command.error + b"\n")
        report = b"".join(pkt_line(line) for line in lines) + pkt_line(None)
        if self._sideband:
            self.proto.write_sideband(SIDE_BAND_CHANNEL_DATA, report)
        else:
            self.proto.write(report)


def _is_commit(tip: bytes, links: connectivity.Links, quarantine: DiskObjectStore) -> bool:
    type_num = links.tip_types.get(tip)
    if type_num is None:  # a stored object, or a new blob (blobs are not read)
        type_num = quarantine[tip].type_num
    return type_num == Commit.type_num


def _complete(tip: bytes, quarantine: DiskObjectStore, store, complete: set[bytes]) -> bool:
    """Is everything `tip` reaches here? `complete`: objects known to be, from the walks
    before, and where this walk adds what it found complete."""
    stack, seen = [tip], set()
    while stack:
        sha = stack.pop()
        if sha in seen or sha in complete:
            continue
        seen.add(sha)
        if sha in store:
            continue  # already in the store, and complete
        try:
            obj = quarantine[sha]
        except KeyError:
            return False
        if isinstance(obj, Commit):
            stack.append(obj.tree)
            stack.extend(obj.parents)
        elif isinstance(obj, Tree):
            for entry in obj.iteritems():
                if entry.mode == GITLINK_MODE:
                    continue  # a submodule's commit lives elsewhere
                if stat.S_ISDIR(entry.mode):
                    stack.append(entry.sha)
                elif entry.sha not in seen and entry.sha not in quarantine:
                    return False  # a blob: its presence is enough, no need to read it
        elif isinstance(obj, Tag):
            stack.append(obj.object[1])
        elif not isinstance(obj, Blob):
            return False
    complete.update(seen)
    return True


def _reaches_new_shallow(
    tip: bytes, quarantine: DiskObjectStore, store, shallow: set[bytes]
) -> bool:
    """Does `tip`'s history, through the pushed commits, stop at one of the client's
    shallow commits that the store did not have (one whose parents it lacks)?"""
    if not shallow:
        return False
    stack, seen = [tip], set()
    while stack:
        sha = stack.pop()
        if sha in seen or sha in store:
            continue
        seen.add(sha)
        if sha in shallow:
            return True
        try:
            obj = quarantine[sha]
        except KeyError:
            continue
        if isinstance(obj, Commit):
            stack.extend(obj.parents)
        elif isinstance(obj, Tag):
            stack.append(obj.object[1])
    return False


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_option(option: bytes) -> bool:
    return len(option) <= 1024 and _is_utf8(option) and option.decode().isprintable()


def _one_line(exc: BaseException) -> bytes:
    return str(exc).replace("\n", " ")[:200].encode("utf-8", "replace")


def sweep_ref_locks(git_dir: str) -> None:
    """Remove ref lock files a killed push left. Only when the server starts: then no
    push of ours can be holding one."""
    for parent, _dirs, files in os.walk(os.path.join(git_dir, "refs")):
        for name in files:
            if name.endswith(".lock"):
                _unlink(os.path.join(parent, name))
    _unlink(os.path.join(git_dir, "packed-refs.lock"))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
