"""The operator's command line (SPEC §3).

Exit status 0 on success, 1 on a refused or failed operation, 2 on bad usage; errors are
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

from . import config, datadir, expiry, keydir, names, sshkeys, wording
from .config import Settings
from .errors import Refusal, UsageError
from .kinds import AccessMode, Requirement, Role
from .names import shown
from .services import OPERATOR
from .services import accounts as account_service
from .services import audit as audit_service
from .services import branch_rules as rule_service
from .services import keys as key_service
from .services import repos as repo_service
from .services import signing_keys as signing_key_service
from .services import workspaces as workspace_service
from .services.keys import AddedKey
from .store import db as store_db
from .store import keys
from .store import url as database_url
from .store.database import Database


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _read_key_source(source: str) -> list[sshkeys.PublicKey]:
    return sshkeys.parse_text(_read_key_text(source))


def _read_key_text(source: str) -> str:
    if source == "-":
        text = sys.stdin.read()
    else:
        shown_path = names.printable(source, None)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise Refusal(f"Cannot read key file: no such file: {shown_path}") from None
        except OSError as exc:
            raise Refusal(
                f"Cannot read key file {shown_path}: {exc.strerror or exc.__class__.__name__}"
            ) from None
        except UnicodeDecodeError:
            raise Refusal(
                f"Cannot read key file {shown_path}: it is not UTF-8 text "
                "(expected an OpenSSH public key, the .pub file)"
            ) from None
    return text


def _print_login_keys(found: list[keys.StoredKey]) -> None:
    for line in wording.login_key_lines(found):
        print(line)


def _added_lines(added: list[AddedKey]) -> list[str]:
    return [f"Added key {k.fingerprint} ({k.title}) to {k.account}" for k in added]


# --- accounts -------------------------------------------------------------------------


async def cmd_account_add(settings: Settings, args: Namespace, db: Database) -> int | None:
    name = names.account_name(args.name)  # before the key files are read
    parsed = [key for source in args.key for key in _read_key_source(source)]
    created = await account_service.create(
        db, name, args.email, parsed, actor=OPERATOR, hooks_dir=settings.hooks_dir
    )
    print("\n".join([f"Created account {created.account.name}", *_added_lines(created.keys)]))


async def cmd_account_list(settings: Settings, args: Namespace, db: Database) -> int | None:
    found = await account_service.list_all(db)
    if args.json:
        return _print_json(
            [{"name": a.name, "email": a.email, "disabled": a.disabled} for a in found]
        )
    for account in found:
        state = "disabled" if account.disabled else "active"
        print(f"{account.name}\t{shown(account.email) or '-'}\t{state}")


async def cmd_account_show(settings: Settings, args: Namespace, db: Database) -> int | None:
    shown_account = await account_service.view(db, args.name)
    account, account_keys, twosv = shown_account.account, shown_account.keys, shown_account.twosv
    if args.json:
        return _print_json(
            {
                "name": account.name,
                "email": account.email,
                "disabled": account.disabled,
                "two_step": {
                    "enabled": twosv.enabled,
                    "methods": twosv.methods,
                    "recovery_codes_left": twosv.codes_left,
                },
                "keys": [_key_json(k) for k in account_keys],
            }
        )
    print(f"account:  {account.name}")
    print(f"email:    {shown(account.email) or '-'}")
    print(f"state:    {'disabled' if account.disabled else 'active'}")
    methods = ", ".join(twosv.methods)
    print(f"two-step verification: {f'enabled ({methods})' if twosv.enabled else 'disabled'}")
    print(f"keys that log in: {len(account_keys)}")
    _print_login_keys(account_keys)


async def _set_disabled(args: Namespace, db: Database, disabled: bool) -> None:
    name = await account_service.set_disabled(db, args.name, disabled, actor=OPERATOR)
    print(f"{'Disabled' if disabled else 'Enabled'} account {name}")


async def cmd_account_disable(settings: Settings, args: Namespace, db: Database) -> int | None:
    await _set_disabled(args, db, True)


async def cmd_account_enable(settings: Settings, args: Namespace, db: Database) -> int | None:
    await _set_disabled(args, db, False)


# --- keys -----------------------------------------------------------------------------


async def cmd_key_add(settings: Settings, args: Namespace, db: Database) -> int | None:
    # The date first: a mistyped date is bad usage, whatever the account or the file.
    ends = expiry.parse_date(args.expires, time.time()) if args.expires is not None else None
    account = await account_service.get(db, args.account)  # before the key file is read
    parsed = _read_key_source(args.file)
    added = await key_service.add(
        db,
        account,
        parsed,
        args.title,
        actor=OPERATOR,
        hooks_dir=settings.hooks_dir,
        expires_at=ends,
    )
    print("\n".join(_added_lines(added)))
    if ends is not None:
        print(f"It stops logging in at {expiry.shown_time(ends)}.")


def _key_json(key: keys.StoredKey) -> dict[str, object]:
    return {
        "fingerprint": key.fingerprint,
        "title": key.title,
        "algorithm": key.algorithm,
        "kind": key.kind,
        "source": key.source,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "expired": key.expired(time.time()),
        "last_used_at": key.last_used_at,
    }


async def cmd_key_list(settings: Settings, args: Namespace, db: Database) -> int | None:
    if args.account is not None:
        await account_service.get(db, args.account)
    found = await key_service.list_for(db, args.account)
    if args.unused_since is not None:
        before = int(time.time()) - expiry.parse_age(args.unused_since)
        stale = {k.fingerprint for k in await key_service.unused_since(db, before)}
        found = [k for k in found if k.fingerprint in stale]
    if args.json:
        return _print_json([{"account": k.account} | _key_json(k) for k in found])
    now = time.time()
    for key in found:
        print(
            f"{key.account}\t{key.fingerprint}\t{key.algorithm}\t{shown(key.title)}\t{key.source}"
            f"\t{key.kind}\t{', '.join(wording.key_life(key, now))}"
        )


async def cmd_key_remove(settings: Settings, args: Namespace, db: Database) -> int | None:
    done = await key_service.remove_by_operator(
        db, args.fingerprint, actor=OPERATOR, ssh_command=settings.ssh_command
    )
    removed = done.key
    print(f"Removed key {removed.fingerprint} ({shown(removed.title)}) from {removed.account}")
    for line in wording.keys_left(removed.account, done.left):
        print(line)


async def cmd_signing_key_add(settings: Settings, args: Namespace, db: Database) -> int | None:
    account = await account_service.get(db, args.account)  # before the key file is read
    key = signing_key_service.parse(_read_key_text(args.file))
    added = await signing_key_service.add(
        db, account, key, args.title, actor=OPERATOR, hooks_dir=settings.hooks_dir
    )
    print(f"Added signing key {added.fingerprint} ({shown(added.title)}) to {added.account}")


async def cmd_signing_key_list(settings: Settings, args: Namespace, db: Database) -> int | None:
    if args.account is not None:
        await account_service.get(db, args.account)
    found = await signing_key_service.list_for(db, args.account)
    if args.json:
        return _print_json(
            [
                {
                    "account": k.account,
                    "fingerprint": k.fingerprint,
                    "algorithm": k.algorithm,
                    "title": k.title,
                    "public_key": k.public_key,
                    "created_at": k.created_at,
                }
                for k in found
            ]
        )
    for key in found:
        print(f"{key.account}\t{wording.signing_key(key)}")


async def cmd_signing_key_remove(settings: Settings, args: Namespace, db: Database) -> int | None:
    """`remove FINGERPRINT` (SPEC) or `remove ACCOUNT FINGERPRINT|TITLE`."""
    if len(args.which) == 1:
        found = await signing_key_service.find(db, args.which[0])
        if found is None:
            raise Refusal(f"No such signing key: {names.printable(args.which[0])}")
        account_name, which = found.account, found.fingerprint
    elif len(args.which) == 2:
        account_name, which = args.which
    else:
        raise UsageError("signing-key remove takes FINGERPRINT or ACCOUNT FINGERPRINT|TITLE")
    account = await account_service.get(db, account_name)
    removed = await signing_key_service.remove(
        db, account, which, actor=OPERATOR, hooks_dir=settings.hooks_dir
    )
    print(
        f"Removed signing key {removed.fingerprint} ({shown(removed.title)}) from {removed.account}"
    )


async def cmd_keys_sync(settings: Settings, args: Namespace, db: Database) -> int | None:
    report = await keydir.sync(
        db, Path(args.keydir) if args.keydir else settings.keydir, settings.hooks_dir
    )
    for name in report.created_accounts:
        print(f"created account {name}")
    for line in report.added:
        print(f"added {line}")
    for line in report.removed:
        print(f"removed {line}")
    for line in report.changed:
        print(f"expiry changed {line}")
    for line in report.errors:
        print(f"ERROR: {line}", file=sys.stderr)
    print(f"{len(report.added)} added, {len(report.removed)} removed, {len(report.errors)} errors")
    return 1 if report.errors else 0


# --- workspaces and members -----------------------------------------------------------


async def cmd_workspace_add(settings: Settings, args: Namespace, db: Database) -> int | None:
    workspace = await workspace_service.create(db, args.name, args.require_2sv, actor=OPERATOR)
    print(
        f"Created workspace {workspace.name}"
        + (" (requires two-step verification)" if args.require_2sv else "")
    )


async def cmd_workspace_require_2sv(
    settings: Settings, args: Namespace, db: Database
) -> int | None:
    workspace = await workspace_service.get(db, args.name)
    requirement = workspace_service.check_requirement(args.policy, args.window)
    lacking: list[str] = []
    if requirement != Requirement.OFF:
        lacking = await workspace_service.members_without_2sv(db, workspace.id)
    for line in wording.preview(lacking, requirement != Requirement.OFF):
        print(line)
    if args.dry_run:
        print(wording.dry_run(workspace))
        return 0
    change = await workspace_service.set_requirement(
        db, workspace, requirement, args.window, actor=OPERATOR
    )
    print(wording.policy_changed(change.workspace, change.after, change.window))


async def cmd_access_key_add(settings: Settings, args: Namespace, db: Database) -> int | None:
    repo = await repo_service.get(db, args.repo)  # before the key file is read
    added = await workspace_service.add_access_keys(
        db,
        repo,
        _read_key_source(args.file),
        args.title,
        args.write,
        actor=OPERATOR,
        hooks_dir=settings.hooks_dir,
    )
    print(
        "\n".join(
            f"Added access key {k.fingerprint} ({k.title}) to {k.repository}, "
            f"{'read and write' if k.mode == AccessMode.WRITE else 'read-only'}"
            for k in added
        )
    )


async def cmd_access_key_list(settings: Settings, args: Namespace, db: Database) -> int | None:
    found = await workspace_service.list_access_keys(db)
    if args.json:
        return _print_json(
            [
                {
                    "repository": k.repository,
                    "fingerprint": k.fingerprint,
                    "title": k.title,
                    "write": k.write,
                }
                for k in found
            ]
        )
    for key in found:
        print(
            f"{key.repository}\t{key.fingerprint}\t{shown(key.title)}\t{AccessMode.of(key.write)}"
        )


async def cmd_access_key_remove(settings: Settings, args: Namespace, db: Database) -> int | None:
    removed = await workspace_service.remove_access_key(db, args.fingerprint, actor=OPERATOR)
    print(
        f"Removed access key {removed.fingerprint} ({shown(removed.title)}) "
        f"from {removed.repository}"
    )


async def cmd_workspace_list(settings: Settings, args: Namespace, db: Database) -> int | None:
    found = await workspace_service.list_all(db)
    if args.json:
        return _print_json([{"name": w.name, "require_2sv": w.require_2sv} for w in found])
    for workspace in found:
        print(f"{workspace.name}\trequire-2sv={workspace.require_2sv}")


async def cmd_workspace_show(settings: Settings, args: Namespace, db: Database) -> int | None:
    view = await workspace_service.view(db, args.name)
    workspace, lacking = view.workspace, view.lacking_2sv
    if args.json:
        return _print_json(
            {
                "name": workspace.name,
                "require_2sv": workspace.require_2sv,
                "session_window": workspace.session_window,
                "members": [
                    asdict(m) | {"two_step": m.account not in lacking} for m in view.members
                ],
                "repositories": [{"name": r.name, "public": r.public} for r in view.repositories],
            }
        )
    print("\n".join(wording.show(workspace, view.members, lacking)))
    print(f"repositories: {len(view.repositories)}")
    for repo in view.repositories:
        print(f"  {repo.name}\t{'public' if repo.public else 'private'}")


async def cmd_member_add(settings: Settings, args: Namespace, db: Database) -> int | None:
    member = await workspace_service.add_member(
        db, args.workspace, args.account, args.role, actor=OPERATOR
    )
    print(f"{member.account} is now a member of {member.workspace} with role {member.role}")


async def cmd_member_remove(settings: Settings, args: Namespace, db: Database) -> int | None:
    member = await workspace_service.remove_member(db, args.workspace, args.account, actor=OPERATOR)
    print(f"Removed {member.account} from {member.workspace}")


# --- repositories ---------------------------------------------------------------------


async def cmd_repo_add(settings: Settings, args: Namespace, db: Database) -> int | None:
    path = await repo_service.create(
        db, settings.repos_dir, args.repo, args.public, args.default_branch, actor=OPERATOR
    )
    url = f"ssh://{settings.ssh_user}@{settings.public_host}:{settings.public_port}/{path}.git"
    print(f"Created repository {path} ({'public' if args.public else 'private'})")
    print(f"Clone it with: git clone {url}")


async def cmd_repo_list(settings: Settings, args: Namespace, db: Database) -> int | None:
    found = await repo_service.list_all(db, args.workspace)
    if args.json:
        return _print_json(
            [
                {"repository": r.full_name, "public": r.public, "default_branch": r.default_branch}
                for r in found
            ]
        )
    for repo in found:
        print(f"{repo.full_name}\t{'public' if repo.public else 'private'}\t{repo.default_branch}")


async def _repo_dirs(settings: Settings, args: Namespace, db: Database) -> list[tuple[str, Path]]:
    """(WORKSPACE/NAME, directory) of the one repository named, or of all with --all."""
    from .git import layout

    if args.all == bool(args.repo):
        raise UsageError("name one repository (WORKSPACE/NAME) or give --all")
    found = await repo_service.list_all(db) if args.all else [await repo_service.get(db, args.repo)]
    return [(r.full_name, layout.disk_path(settings.repos_dir, r.workspace, r.name)) for r in found]


def _housekept_dir(settings: Settings, name: str, path: Path) -> str:
    from .git import layout

    workspace, _, repo = name.partition("/")
    return str(layout.resolve(settings.repos_dir, workspace, repo))


async def cmd_repo_gc(settings: Settings, args: Namespace, db: Database) -> int | None:
    from .git.housekeeping import gc
    from .git.housekeeping.lock import Busy

    failed = False
    for name, path in await _repo_dirs(settings, args, db):
        try:
            report = gc.run(
                _housekept_dir(settings, name, path),
                gc.Options(
                    full=True,
                    prune_after=settings.gc_prune_after,
                    database_url=settings.database_url,
                ),
            )
        except (Refusal, gc.NotARepository):
            print(f"{name}: ERROR: not a Git repository: {path}")
            failed = True
            continue
        except Busy:
            print(f"{name}: ERROR: another housekeeper is working on it; try again later")
            failed = True
            continue
        failed = _print_report(name, report) or failed
    return 1 if failed else None


def _print_report(name: str, report) -> bool:
    """A gc or fsck run's notes, problems and summary; whether it found problems."""
    for note in getattr(report, "notes", ()):
        print(f"{name}: {note}")
    for problem in report.problems:
        print(f"{name}: ERROR: {problem}")
    print(f"{name}: {report.summary()}")
    return bool(report.problems)


async def cmd_repo_fsck(settings: Settings, args: Namespace, db: Database) -> int | None:
    from .git.housekeeping import fsck, gc

    failed = False
    for name, path in await _repo_dirs(settings, args, db):
        try:
            report = fsck.check(_housekept_dir(settings, name, path))
        except (Refusal, gc.NotARepository):
            print(f"{name}: ERROR: not a Git repository: {path}")
            failed = True
            continue
        failed = _print_report(name, report) or failed
    return 1 if failed else None


async def cmd_repo_remove(settings: Settings, args: Namespace, db: Database) -> int | None:
    removed = await repo_service.remove(
        db, settings.repos_dir, settings.trash_dir, args.repo, actor=OPERATOR
    )
    moved = removed.moved_to
    print(
        f"Removed repository {removed.full_name}"
        + (f"; its data was moved to {moved}" if moved else "")
    )


# --- branch rules ---------------------------------------------------------------------

RULE_FLAGS = ("no_force", "no_delete", "no_create", "require_2sv_session", "require_signed")


async def cmd_branch_rule_add(settings: Settings, args: Namespace, db: Database) -> int | None:
    where = await rule_service.scope(db, args.target)
    rule = await rule_service.make_rule(
        db,
        args.pattern,
        args.push,
        **{flag: getattr(args, flag) for flag in RULE_FLAGS},
        own_keys=args.own_keys,
    )
    if args.dry_run:
        print("\n".join(wording.would_refuse(await rule_service.dry_run(db, where, rule), rule)))
        return 0
    change = await rule_service.add(db, where, rule, actor=OPERATOR)
    print(wording.branch_rule_added(change.scope, change.rule, change.replaced is not None))


async def cmd_branch_rule_list(settings: Settings, args: Namespace, db: Database) -> int | None:
    where = await rule_service.scope(db, args.target)
    rules = await rule_service.listed(db, where)
    if args.json:
        return _print_json([asdict(r) for r in rules])
    print("\n".join(wording.branch_rules(where.label, rules)))


async def cmd_branch_rule_remove(settings: Settings, args: Namespace, db: Database) -> int | None:
    where = await rule_service.scope(db, args.target)
    change = await rule_service.remove(db, where, args.pattern, actor=OPERATOR)
    print(wording.branch_rule_removed(change.scope, change.rule))


# --- audit ----------------------------------------------------------------------------


async def cmd_audit(settings: Settings, args: Namespace, db: Database) -> int | None:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    entries = await audit_service.read(db, args.account, args.limit)
    if args.json:
        return _print_json([asdict(e) for e in entries])
    for entry in entries:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.at))
        detail = f" {shown(entry.detail)}" if entry.detail else ""
        print(
            f"{stamp} {shown(entry.actor)} {shown(entry.action)} {shown(entry.target)} "
            f"{shown(entry.outcome)}{detail}"
        )


# --- init and serve -------------------------------------------------------------------


async def cmd_init(settings, args):
    await datadir.initialise(settings)
    print(f"Data directory: {settings.data_dir.resolve()}")
    for line in datadir.host_key_fingerprints(settings):
        print(f"Host key: {line}")


async def cmd_serve(settings, args):
    from .transport import lifecycle  # imported here: the other commands do not need the server

    def with_listen(loaded):
        if args.listen:
            loaded.listen = config.parse_listen(args.listen)
        return loaded

    settings = with_listen(settings)
    if await datadir.initialise(settings, database=False):
        # The first ssh asks the user to trust one of these: show them where they start.
        print(f"New host keys in {settings.host_keys_path} (the first ssh asks to trust one):")
        for line in datadir.host_key_fingerprints(settings):
            print(f"Host key: {line}", flush=True)
    await lifecycle.run(settings, lambda: with_listen(config.load(args.data_dir, args.config)))


async def cmd_config_check(settings, args):
    settings, sources = config.load_with_sources(args.data_dir, args.config)
    for line in config.render(settings, sources):
        print(line)
    print(f"# messages users copy say: {settings.ssh_command('...')}")
    warning = settings.loopback_host_warning()
    if warning:
        print(f"# WARNING: {warning}")
    print(f"# database: {_database_line(settings)}")
    datadir.check(settings)
    from . import certificates

    certificates.load(settings.trusted_user_ca_keys, settings.revoked_user_certificates)
    print(f"# OK: settings valid; data directory {settings.data_dir.resolve()} usable")


def _database_line(settings: Settings) -> str:
    if not settings.database_url:
        return f"SQLite, {settings.db_path.resolve()}"
    return (
        f"PostgreSQL, {database_url.masked(settings.database_url)}, a pool of up to "
        f"{settings.database_pool_size} connections a process"
    )


async def cmd_backup(settings, args):
    from .backup import backup

    for line in backup(settings, Path(args.dest)):
        print(line)


async def cmd_db_copy(settings, args):
    from .store import copy as store_copy
    from .store import sqlite as store_sqlite

    if settings.database_url:
        raise Refusal(
            "db copy moves an SQLite installation, and database_url already names "
            f"{database_url.masked(settings.database_url)}: unset it to copy the SQLite file"
        )
    problem = database_url.problem(args.to)
    if problem or not args.to:
        raise Refusal(f"--to {database_url.masked(args.to)} {problem or 'is empty'}")
    if not settings.db_path.exists():
        raise Refusal(f"No gateway database at {settings.db_path} (nothing to copy)")
    source = store_sqlite.SqliteBackend(settings.db_path)
    counts = await store_copy.copy(source, args.to, settings.database_pool_size)
    for table, rows in counts:
        print(f"{table}: {rows} rows")
    print(
        f"Copied {sum(rows for _, rows in counts)} rows in {len(counts)} tables to "
        f"{database_url.masked(args.to)}; the counts match. Set database_url to it "
        "(the data directory, master key and repositories stay where they are)."
    )


async def cmd_authorized_keys(settings, args, db):
    from .transport.openssh import authorized_keys

    line = await authorized_keys(settings, db, args.config, args.user, args.key_type, args.key_blob)
    if line:
        print(line)


async def cmd_authorized_principals(settings, args, db):
    from .transport.openssh import authorized_principals

    line = await authorized_principals(settings, db, args.config, args.user, args.cert_blob)
    if line:
        print(line)


async def cmd_shell(settings, args):
    from .transport.openssh import shell

    return await shell(settings, args.key, args.config, certificate=args.certificate)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gateway", description="SSH and Git-over-SSH gateway")
    parser.add_argument("--data-dir", help="data directory (env GATEWAY_DATA_DIR, default ./var)")
    parser.add_argument("--config", help="settings file (env GATEWAY_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(parent, name, func, **kw):
        p = parent.add_parser(name, **kw)
        p.set_defaults(func=func)
        return p

    def group(name, help_text):
        p = sub.add_parser(name, help=help_text)
        return p.add_subparsers(dest="action", required=True, parser_class=_Parser)

    command(sub, "init", cmd_init, help="create the data directory; idempotent")
    p = command(sub, "serve", cmd_serve, help="run the SSH server")
    p.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:2222)")
    p = command(
        sub,
        "backup",
        cmd_backup,
        help="copy the database, host keys and master key while the gateway runs",
    )
    p.add_argument("dest", help="a new or empty directory")
    p = command(
        sub,
        "authorized-keys",
        cmd_authorized_keys,
        help="for sshd's AuthorizedKeysCommand: the line for a known key, else nothing",
    )
    p.add_argument("user", help="the login name (%%u)")
    p.add_argument("key_type", help="the key's type (%%t)")
    p.add_argument("key_blob", help="the key, base64 (%%k)")
    p = command(
        sub,
        "authorized-principals",
        cmd_authorized_principals,
        help="for sshd's AuthorizedPrincipalsCommand: the line for a certificate, else nothing",
    )
    p.add_argument("user", help="the login name (%%u)")
    p.add_argument("cert_blob", help="the certificate, base64 (%%k)")
    p = command(sub, "shell", cmd_shell, help="sshd's forced command for a gateway key")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", help="the verified key's SHA256 fingerprint")
    who.add_argument("--certificate", help="the verified certificate, base64")
    g = group("config", "settings")
    command(
        g,
        "check",
        cmd_config_check,
        help="print the effective settings and where each comes from; check the data dir",
    )

    g = group("db", "the database")
    p = command(
        g,
        "copy",
        cmd_db_copy,
        help="copy this SQLite installation into an empty PostgreSQL database",
    )
    p.add_argument("--to", required=True, metavar="postgresql://...", help="the empty database")

    g = group("account", "manage accounts")
    p = command(g, "add", cmd_account_add)
    p.add_argument("name")
    p.add_argument("--email")
    p.add_argument("--key", action="append", default=[], help="public key file, or - for stdin")
    p = command(g, "list", cmd_account_list)
    p.add_argument("--json", action="store_true")
    p = command(g, "show", cmd_account_show)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    command(g, "disable", cmd_account_disable).add_argument("name")
    command(g, "enable", cmd_account_enable).add_argument("name")

    g = group("key", "manage accounts' SSH keys")
    p = command(g, "add", cmd_key_add)
    p.add_argument("account")
    p.add_argument("file", help="public key file, or - for stdin")
    p.add_argument("--title")
    p.add_argument(
        "--expires", metavar="DATE", help="YYYY-MM-DD or an ISO datetime (UTC unless zoned)"
    )
    p = command(g, "list", cmd_key_list)
    p.add_argument("account", nargs="?")
    p.add_argument(
        "--unused-since", metavar="AGE", help="only keys not used for AGE (90d, 12h, 2w)"
    )
    p.add_argument("--json", action="store_true")
    command(g, "remove", cmd_key_remove).add_argument("fingerprint")

    g = group("signing-key", "keys accounts sign commits and tags with (gpg.format=ssh)")
    p = command(g, "add", cmd_signing_key_add)
    p.add_argument("account")
    p.add_argument("file", help="public key file, or - for stdin")
    p.add_argument("--title")
    p = command(g, "list", cmd_signing_key_list)
    p.add_argument("account", nargs="?")
    p.add_argument("--json", action="store_true")
    p = command(g, "remove", cmd_signing_key_remove)
    p.add_argument("which", nargs="+", metavar="[ACCOUNT] FINGERPRINT|TITLE")

    g = group("keys", "the keydir")
    p = command(g, "sync", cmd_keys_sync)
    p.add_argument("--keydir", help="default ./keys (setting keydir)")

    g = group("workspace", "manage workspaces")
    p = command(g, "add", cmd_workspace_add)
    p.add_argument("name")
    p.add_argument("--require-2sv", action="store_true", help="start with policy on")
    p = command(g, "require-2sv", cmd_workspace_require_2sv)
    p.add_argument("name")
    p.add_argument("policy", choices=workspace_service.REQUIREMENTS)
    p.add_argument("--window", type=int, help="session window in minutes (1 to 10080)")
    p.add_argument("--dry-run", action="store_true", help="only list who would lose access")
    p = command(g, "list", cmd_workspace_list)
    p.add_argument("--json", action="store_true")
    p = command(g, "show", cmd_workspace_show)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    g = group("member", "manage workspace members")
    p = command(g, "add", cmd_member_add)
    p.add_argument("workspace")
    p.add_argument("account")
    p.add_argument("--role", default=str(Role.WRITE), choices=names.ROLES)
    p = command(g, "remove", cmd_member_remove)
    p.add_argument("workspace")
    p.add_argument("account")

    g = group("repo", "manage repositories")
    p = command(g, "add", cmd_repo_add)
    p.add_argument("repo", metavar="WORKSPACE/NAME")
    p.add_argument("--public", action="store_true")
    p.add_argument("--default-branch", default="main")
    p = command(g, "list", cmd_repo_list)
    p.add_argument("workspace", nargs="?")
    p.add_argument("--json", action="store_true")
    command(g, "remove", cmd_repo_remove).add_argument("repo", metavar="WORKSPACE/NAME")
    for name, func, what in (
        ("gc", cmd_repo_gc, "repack into one pack, pack refs, prune what is unreachable"),
        ("fsck", cmd_repo_fsck, "check every object and every ref's history"),
    ):
        p = command(g, name, func, help=what)
        p.add_argument("repo", metavar="WORKSPACE/NAME", nargs="?")
        p.add_argument("--all", action="store_true", help="every repository")

    g = group("access-key", "keys bound to one repository, with no account")
    p = command(g, "add", cmd_access_key_add)
    p.add_argument("repo", metavar="WORKSPACE/NAME")
    p.add_argument("file", help="public key file, or - for stdin")
    p.add_argument("--write", action="store_true", help="allow pushes (default read-only)")
    p.add_argument("--title")
    p = command(g, "list", cmd_access_key_list)
    p.add_argument("--json", action="store_true")
    command(g, "remove", cmd_access_key_remove).add_argument("fingerprint")

    g = group("branch-rule", "ref-level rules: a repository's, or a workspace's defaults")
    target = dict(metavar="WORKSPACE[/NAME]", help="a repository, or a workspace's defaults")
    p = command(g, "add", cmd_branch_rule_add, help="add a rule, or replace the pattern's")
    p.add_argument("target", **target)
    p.add_argument("pattern", help="main, release/*, refs/tags/v* (refs/heads/ implied)")
    p.add_argument(
        "--push", action="append", default=[], metavar="WHO", help="write, admin or an account"
    )
    for flag in RULE_FLAGS:
        p.add_argument("--" + flag.replace("_", "-"), action="store_true")
    p.add_argument("--own-keys", action="store_true", help="with --require-signed")
    p.add_argument("--dry-run", action="store_true", help="list recent pushes it would refuse")
    p = command(g, "list", cmd_branch_rule_list)
    p.add_argument("target", **target)
    p.add_argument("--json", action="store_true")
    p = command(g, "remove", cmd_branch_rule_remove)
    p.add_argument("target", **target)
    p.add_argument("pattern")

    p = command(sub, "audit", cmd_audit, help="read the audit log")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    return parser


async def _run(args) -> int:
    settings = config.load(args.data_dir, args.config)
    if args.func in (cmd_init, cmd_serve, cmd_config_check, cmd_backup, cmd_shell, cmd_db_copy):
        return await args.func(settings, args) or 0
    if not (settings.db_path if not settings.database_url else settings.data_dir).exists():
        raise Refusal(f"No gateway data in {settings.data_dir} (run 'gateway init' first)")
    async with await store_db.open_backend(settings) as backend:
        db = await backend.connect()
        try:
            return await args.func(settings, args, db) or 0
        finally:
            await db.close()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return asyncio.run(_run(args))
    except Refusal as refusal:
        print(f"ERROR: {refusal.message}", file=sys.stderr)
        return refusal.status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: a short line for the operator, details on request
        logging.getLogger("gateway").debug("internal error", exc_info=True)
        print(f"ERROR: internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
