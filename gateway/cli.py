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
from dataclasses import asdict
from pathlib import Path

from . import access, config, datadir, events, keydir, names, sshkeys, workspace_text
from .commands import login_keys
from .errors import Refusal, UsageError
from .names import shown
from .git import repos as disk
from .store import access_keys, accounts, audit, keys, repos, workspaces
from .store import db as store_db
from .twosv.service import TwoStep


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _read_key_source(source: str) -> list[sshkeys.PublicKey]:
    if source == "-":
        text = sys.stdin.read()
    else:
        shown_path = names.printable(source, None)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise Refusal(f"Cannot read key file: no such file: {shown_path}") from None
        except OSError as exc:
            raise Refusal(f"Cannot read key file {shown_path}: "
                          f"{exc.strerror or exc.__class__.__name__}") from None
        except UnicodeDecodeError:
            raise Refusal(f"Cannot read key file {shown_path}: it is not UTF-8 text "
                          "(expected an OpenSSH public key, the .pub file)") from None
    return sshkeys.parse_text(text)


async def _tell_hooks_of_new_keys(settings, account: str, fingerprints: list[str]) -> None:
    """Every key that can log in reaches the 2sv-event.d hooks, as the owner's own do."""
    for fingerprint in fingerprints:
        await events.notify(settings.hooks_dir, account, "key.add", detail=fingerprint)


def _login_key_line(key: keys.StoredKey) -> str:
    return "  " + login_keys.describe(key)


async def _add_keys(db, account: accounts.Account, parsed: list[sshkeys.PublicKey],
                    title: str | None) -> list[str]:
    """Add keys (uncommitted: the caller commits, then prints what this returns)."""
    done = []
    for key in parsed:
        key_title = title or key.comment or f"key-{key.fingerprint[7:15]}"
        await keys.add(db, account.id, key, key_title, say_where=True)
        await audit.write(db, "operator", "key.add", account.name, detail=key.fingerprint)
        done.append(f"Added key {key.fingerprint} ({key_title}) to {account.name}")
    return done


# --- accounts -------------------------------------------------------------------------


async def cmd_account_add(settings, args, db):
    name = names.account_name(args.name)
    parsed = [key for source in args.key for key in _read_key_source(source)]
    account = await accounts.add(db, name, args.email)
    await audit.write(db, "operator", "account.add", name)
    added = await _add_keys(db, account, parsed, None)
    await db.commit()
    await _tell_hooks_of_new_keys(settings, name, [k.fingerprint for k in parsed])
    print("\n".join([f"Created account {name}", *added]))


async def cmd_account_list(settings, args, db):
    found = await accounts.list_all(db)
    if args.json:
        return _print_json([{"name": a.name, "email": a.email, "disabled": a.disabled}
                            for a in found])
    for account in found:
        state = "disabled" if account.disabled else "active"
        print(f"{account.name}\t{shown(account.email) or '-'}\t{state}")


async def cmd_account_show(settings, args, db):
    account = await accounts.get(db, names.account_name(args.name))
    account_keys = await keys.list_for(db, account.name)
    twosv = await TwoStep(db, None, account.id, account.name).state()
    if args.json:
        return _print_json({
            "name": account.name, "email": account.email, "disabled": account.disabled,
            "two_step": {"enabled": twosv.enabled, "methods": twosv.methods,
                         "recovery_codes_left": twosv.codes_left},
            "keys": [{"fingerprint": k.fingerprint, "title": k.title, "algorithm": k.algorithm,
                      "kind": k.kind, "source": k.source, "created_at": k.created_at}
                     for k in account_keys],
        })
    print(f"account:  {account.name}")
    print(f"email:    {shown(account.email) or '-'}")
    print(f"state:    {'disabled' if account.disabled else 'active'}")
    print(f"two-step verification: {'enabled (' + ', '.join(twosv.methods) + ')' if twosv.enabled else 'disabled'}")
    print(f"keys that log in: {len(account_keys)}")
    for key in account_keys:
        print(_login_key_line(key))


async def _set_disabled(args, db, disabled: bool):
    name = names.account_name(args.name)
    await accounts.set_disabled(db, name, disabled)
    await audit.write(db, "operator", "account.disable" if disabled else "account.enable", name)
    await db.commit()
    print(f"{'Disabled' if disabled else 'Enabled'} account {name}")


async def cmd_account_disable(settings, args, db):
    await _set_disabled(args, db, True)


async def cmd_account_enable(settings, args, db):
    await _set_disabled(args, db, False)


# --- keys -----------------------------------------------------------------------------


async def cmd_key_add(settings, args, db):
    account = await accounts.get(db, names.account_name(args.account))
    parsed = _read_key_source(args.file)
    added = await _add_keys(db, account, parsed, args.title)
    await db.commit()
    await _tell_hooks_of_new_keys(settings, account.name, [k.fingerprint for k in parsed])
    print("\n".join(added))


async def cmd_key_list(settings, args, db):
    if args.account is not None:
        await accounts.get(db, names.account_name(args.account))
    found = await keys.list_for(db, args.account)
    if args.json:
        return _print_json([{"account": k.account, "fingerprint": k.fingerprint, "title": k.title,
                             "algorithm": k.algorithm, "kind": k.kind, "source": k.source}
                            for k in found])
    for key in found:
        print(f"{key.account}\t{key.fingerprint}\t{key.algorithm}\t{shown(key.title)}\t{key.source}"
              f"\t{key.kind}")


async def cmd_key_remove(settings, args, db):
    found = await keys.find(db, args.fingerprint)
    if found is None and await access_keys.find(db, args.fingerprint) is not None:
        raise Refusal(f"{names.printable(args.fingerprint)} is an access key: "
                      f"gateway access-key remove {names.printable(args.fingerprint)}")
    if found is not None and found.kind == "security-key":
        # No operator command turns off someone's 2SV (SPEC §5): the owner removes it.
        raise Refusal(f"{found.fingerprint} is a security key, a two-step method of "
                      f"{found.account}; only its owner can remove it: "
                      f"{settings.ssh_command('security-key remove ' + found.fingerprint)}")
    removed = await keys.remove(db, args.fingerprint)
    await audit.write(db, "operator", "key.remove", removed.account, detail=removed.fingerprint)
    await db.commit()
    print(f"Removed key {removed.fingerprint} ({shown(removed.title)}) from {removed.account}")
    # A stolen key's holder may have added keys of their own: show what still logs in.
    left = await keys.list_for(db, removed.account)
    print(f"{removed.account} still has {len(left)} key(s) that log in:" if left
          else f"{removed.account} has no key left that logs in.")
    for key in left:
        print(_login_key_line(key))
    if any(k.kind == "security-key" for k in left):
        print("Security keys are removed by their owner (security-key remove, with a code); "
              f"to stop every login at once: gateway account disable {removed.account}")


async def cmd_keys_sync(settings, args, db):
    report = await keydir.sync(db, Path(args.keydir) if args.keydir else settings.keydir,
                               settings.hooks_dir)
    for name in report.created_accounts:
        print(f"created account {name}")
    for line in report.added:
        print(f"added {line}")
    for line in report.removed:
        print(f"removed {line}")
    for line in report.errors:
        print(f"ERROR: {line}", file=sys.stderr)
    print(f"{len(report.added)} added, {len(report.removed)} removed, {len(report.errors)} errors")
    return 1 if report.errors else 0


# --- workspaces and members -----------------------------------------------------------


async def cmd_workspace_add(settings, args, db):
    name = names.workspace_name(args.name)
    workspace = await workspaces.add(db, name)
    await audit.write(db, "operator", "workspace.add", name)
    if args.require_2sv:
        await workspaces.set_policy(db, workspace.id, "on", workspace.session_window)
        await audit.write(db, "operator", "workspace.require_2sv", name, detail="off -> on")
    await db.commit()
    print(f"Created workspace {name}" + (" (requires two-step verification)" if args.require_2sv else ""))


async def cmd_workspace_require_2sv(settings, args, db):
    workspace = await workspaces.get(db, names.workspace_name(args.name))
    access.check_policy(args.policy, args.window)
    lacking = await access.members_without_2sv(db, workspace.id) if args.policy != "off" else []
    if lacking:
        print(workspace_text.lacking_2sv(lacking, applied=False))
    elif args.policy != "off":
        print("Every member has two-step verification.")
    if args.dry_run:
        print(f"Dry run: {workspace.name} stays at require-2sv={workspace.require_2sv}.")
        return 0
    await access.set_policy(db, workspace, args.policy, args.window, "operator")
    window = args.window if args.window is not None else workspace.session_window
    print(workspace_text.policy_changed(workspace.name, args.policy, window))


async def cmd_access_key_add(settings, args, db):
    path = names.repo_path(args.repo)
    repo = await repos.find(db, path.workspace, path.name)
    if repo is None:
        raise Refusal(f"No such repository: {path} ('gateway repo list' shows them)")
    added, bound = [], []
    for key in _read_key_source(args.file):
        bound.append(key.fingerprint)
        title = args.title or key.comment or f"access-{key.fingerprint[7:15]}"
        await access_keys.add(db, repo.id, key, title, args.write)
        await audit.write(db, "operator", "access_key.add", repo.full_name,
                          detail=f"{key.fingerprint} {'write' if args.write else 'read'}")
        added.append(f"Added access key {key.fingerprint} ({title}) to {repo.full_name}, "
                     f"{'read and write' if args.write else 'read-only'}")
    await db.commit()
    for fingerprint in bound:
        await events.notify(settings.hooks_dir, f"access-key:{repo.full_name}", "access_key.add",
                            detail=fingerprint)
    print("\n".join(added))


async def cmd_access_key_list(settings, args, db):
    found = await access_keys.list_all(db)
    if args.json:
        return _print_json([{"repository": k.repository, "fingerprint": k.fingerprint,
                             "title": k.title, "write": k.write} for k in found])
    for key in found:
        print(f"{key.repository}\t{key.fingerprint}\t{shown(key.title)}\t{'write' if key.write else 'read'}")


async def cmd_access_key_remove(settings, args, db):
    removed = await access_keys.remove(db, args.fingerprint)
    await audit.write(db, "operator", "access_key.remove", removed.repository, detail=removed.fingerprint)
    await db.commit()
    print(f"Removed access key {removed.fingerprint} ({shown(removed.title)}) from {removed.repository}")


async def cmd_workspace_list(settings, args, db):
    found = await workspaces.list_all(db)
    if args.json:
        return _print_json([{"name": w.name, "require_2sv": w.require_2sv} for w in found])
    for workspace in found:
        print(f"{workspace.name}\trequire-2sv={workspace.require_2sv}")


async def cmd_workspace_show(settings, args, db):
    workspace = await workspaces.get(db, names.workspace_name(args.name))
    members = await workspaces.members(db, workspace.id)
    repo_list = await repos.list_all(db, workspace.name)
    lacking = set(await access.members_without_2sv(db, workspace.id))
    if args.json:
        return _print_json({
            "name": workspace.name, "require_2sv": workspace.require_2sv,
            "session_window": workspace.session_window,
            "members": [asdict(m) | {"two_step": m.account not in lacking} for m in members],
            "repositories": [{"name": r.name, "public": r.public} for r in repo_list],
        })
    print("\n".join(workspace_text.show(workspace, members, lacking)))
    print(f"repositories: {len(repo_list)}")
    for repo in repo_list:
        print(f"  {repo.name}\t{'public' if repo.public else 'private'}")


async def cmd_member_add(settings, args, db):
    workspace = await workspaces.get(db, names.workspace_name(args.workspace))
    account = await accounts.get(db, names.account_name(args.account))
    role = names.role(args.role)
    await workspaces.set_member(db, workspace.id, account.id, role)
    await audit.write(db, "operator", "member.add", account.name, detail=f"{workspace.name} {role}")
    await db.commit()
    print(f"{account.name} is now a member of {workspace.name} with role {role}")


async def cmd_member_remove(settings, args, db):
    workspace = await workspaces.get(db, names.workspace_name(args.workspace))
    account = await accounts.get(db, names.account_name(args.account))
    if not await workspaces.remove_member(db, workspace.id, account.id):
        raise Refusal(f"{account.name} is not a member of {workspace.name}")
    await audit.write(db, "operator", "member.remove", account.name, detail=workspace.name)
    await db.commit()
    print(f"Removed {account.name} from {workspace.name}")


# --- repositories ---------------------------------------------------------------------


async def cmd_repo_add(settings, args, db):
    path = names.repo_path(args.repo)
    branch = names.branch_name(args.default_branch)
    workspace = await workspaces.get(db, path.workspace)
    existing = await repos.find(db, workspace.name, path.name)
    if existing is not None:  # names match case-insensitively: say the stored spelling
        raise Refusal(f"Repository already exists: {existing.full_name}")
    # The record and the directory must appear together: insert, create on disk, and
    # commit only once the repository exists.
    await repos.add(db, workspace.id, path.name, args.public, branch, workspace.name)
    try:
        disk.create(settings.repos_dir, workspace.name, path.name, branch)
    except BaseException:
        await db.rollback()
        raise
    await audit.write(db, "operator", "repo.add", str(path),
                      detail="public" if args.public else "private")
    await db.commit()
    url = f"ssh://{settings.ssh_user}@{settings.public_host}:{settings.public_port}/{path}.git"
    print(f"Created repository {path} ({'public' if args.public else 'private'})")
    print(f"Clone it with: git clone {url}")


async def cmd_repo_list(settings, args, db):
    workspace = None
    if args.workspace is not None:
        workspace = (await workspaces.get(db, names.workspace_name(args.workspace))).name
    found = await repos.list_all(db, workspace)
    if args.json:
        return _print_json([{"repository": r.full_name, "public": r.public,
                             "default_branch": r.default_branch} for r in found])
    for repo in found:
        print(f"{repo.full_name}\t{'public' if repo.public else 'private'}\t{repo.default_branch}")


async def cmd_repo_remove(settings, args, db):
    path = names.repo_path(args.repo)
    repo = await repos.find(db, path.workspace, path.name)
    if repo is None:
        raise Refusal(f"No such repository: {path} ('gateway repo list' shows them)")
    await repos.remove(db, repo.id)
    moved = disk.move_aside(settings.repos_dir, settings.trash_dir, repo.workspace, repo.name)
    await audit.write(db, "operator", "repo.remove", repo.full_name, detail=str(moved or ""))
    await db.commit()
    print(f"Removed repository {repo.full_name}" + (f"; its data was moved to {moved}" if moved else ""))


# --- audit ----------------------------------------------------------------------------


async def cmd_audit(settings, args, db):
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    actor = names.account_name(args.account) if args.account else None
    entries = await audit.read(db, actor, args.limit)
    if actor and not entries and await accounts.find(db, actor) is None:
        raise Refusal(f"No such account: {actor} ('gateway account list' shows them)")
    if args.json:
        return _print_json([asdict(e) for e in entries])
    for entry in entries:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.at))
        detail = f" {shown(entry.detail)}" if entry.detail else ""
        print(f"{stamp} {shown(entry.actor)} {shown(entry.action)} {shown(entry.target)} "
              f"{shown(entry.outcome)}{detail}")


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
    if await datadir.initialise(settings):
        # The first ssh asks the user to trust one of these: show them where they start.
        print(f"New host keys in {settings.host_keys_dir} (the first ssh asks to trust one):")
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
    datadir.check(settings)
    print(f"# OK: settings valid; data directory {settings.data_dir.resolve()} usable")


async def cmd_backup(settings, args):
    from .backup import backup

    for line in backup(settings, Path(args.dest)):
        print(line)


async def cmd_authorized_keys(settings, args, db):
    from .transport.openssh import authorized_keys

    line = await authorized_keys(settings, db, args.config, args.user, args.key_type, args.key_blob)
    if line:
        print(line)


async def cmd_shell(settings, args):
    from .transport.openssh import shell

    return await shell(settings, args.key, args.config)


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
    p = command(sub, "backup", cmd_backup,
                help="copy the database, host keys and master key while the gateway runs")
    p.add_argument("dest", help="a new or empty directory")
    p = command(sub, "authorized-keys", cmd_authorized_keys,
                help="for sshd's AuthorizedKeysCommand: the line for a known key, else nothing")
    p.add_argument("user", help="the login name (%%u)")
    p.add_argument("key_type", help="the key's type (%%t)")
    p.add_argument("key_blob", help="the key, base64 (%%k)")
    p = command(sub, "shell", cmd_shell, help="sshd's forced command for a gateway key")
    p.add_argument("--key", required=True, help="the verified key's SHA256 fingerprint")
    g = group("config", "settings")
    command(g, "check", cmd_config_check,
            help="print the effective settings and where each comes from; check the data dir")

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
    p = command(g, "list", cmd_key_list)
    p.add_argument("account", nargs="?")
    p.add_argument("--json", action="store_true")
    command(g, "remove", cmd_key_remove).add_argument("fingerprint")

    g = group("keys", "the keydir")
    p = command(g, "sync", cmd_keys_sync)
    p.add_argument("--keydir", help="default ./keys (setting keydir)")

    g = group("workspace", "manage workspaces")
    p = command(g, "add", cmd_workspace_add)
    p.add_argument("name")
    p.add_argument("--require-2sv", action="store_true", help="start with policy on")
    p = command(g, "require-2sv", cmd_workspace_require_2sv)
    p.add_argument("name")
    p.add_argument("policy", choices=access.POLICIES)
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
    p.add_argument("--role", default="write", choices=names.ROLES)
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

    g = group("access-key", "keys bound to one repository, with no account")
    p = command(g, "add", cmd_access_key_add)
    p.add_argument("repo", metavar="WORKSPACE/NAME")
    p.add_argument("file", help="public key file, or - for stdin")
    p.add_argument("--write", action="store_true", help="allow pushes (default read-only)")
    p.add_argument("--title")
    p = command(g, "list", cmd_access_key_list)
    p.add_argument("--json", action="store_true")
    command(g, "remove", cmd_access_key_remove).add_argument("fingerprint")

    p = command(sub, "audit", cmd_audit, help="read the audit log")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    return parser


async def _run(args) -> int:
    settings = config.load(args.data_dir, args.config)
    if args.func in (cmd_init, cmd_serve, cmd_config_check, cmd_backup, cmd_shell):
        return await args.func(settings, args) or 0
    if not settings.db_path.exists():
        raise Refusal(f"No gateway data in {settings.data_dir} (run 'gateway init' first)")
    db = await store_db.connect(settings.db_path)
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
