"""`signing-key list | add TITLE | remove FINGERPRINT|TITLE`: the keys the caller signs
commits and tags with (git's gpg.format=ssh), checked where a branch rule asks for
signed commits.

`add` reads the key line from stdin (`ssh ... signing-key add laptop < key.pub`). With
two-step verification on, adding one needs a second factor, as adding a security key
does: an open `2sv verify` session of the key in use, a security-key login, or a code on
the line after the key. A stolen login key must not be enough to make "verified"
commits in its owner's name.
"""

from __future__ import annotations

from .. import names, wording
from ..errors import Refusal
from ..kinds import KeyKind
from ..services import accounts as account_service
from ..services import signing_keys as service
from ..store import twosv as twosv_store
from .context import Context
from .suggest import usage
from .twosv import codes_guarded, second_factor, session_window
from .twosv import service as twosv_service


async def list_keys(ctx: Context) -> int:
    found = await service.list_for(ctx.db, ctx.identity.account)
    if not found:
        await ctx.say("No signing keys registered.")
    for key in found:
        await ctx.say(wording.signing_key(key))
    await ctx.say(f"Add one with: {ctx.settings.ssh_command('signing-key add TITLE < KEY.pub')}")
    return 0


async def _fresh_session(ctx: Context) -> bool:
    """A security-key login, or a `2sv verify` session of this key still in its window."""
    if ctx.identity.key_kind == KeyKind.SECURITY_KEY:
        return True
    verified_at = await twosv_store.session_verified_at(
        ctx.db, ctx.identity.key_fingerprint, ctx.identity.account_id
    )
    return verified_at is not None and ctx.clock() - verified_at < await session_window(ctx) * 60


async def add(ctx: Context, title: str) -> int:
    names.title(title, "signing key title")
    line = await ctx.ask(
        "Paste the public key line you sign with (the .pub of user.signingKey):",
        limit=service.MAX_KEY_TEXT,
        too_long=service.TOO_LONG,
    )
    if line is None or not line.strip():
        raise Refusal("No key given; nothing changed.")
    key = service.parse(line)
    svc = twosv_service(ctx)
    if (await svc.state()).enabled and not await _fresh_session(ctx):
        await second_factor(
            ctx,
            svc,
            "Verification code (or run 2sv verify first): ",
            recovery_codes=not await codes_guarded(ctx),
        )
    await ctx.check_still_valid()
    account = await account_service.get(ctx.db, ctx.identity.account)
    added = await service.add(
        ctx.db,
        account,
        key,
        title,
        actor=ctx.identity.account,
        hooks_dir=ctx.settings.hooks_dir,
        key_fingerprint=ctx.identity.key_fingerprint,
        remote_addr=ctx.remote_addr,
    )
    await ctx.say(f'Signing key "{names.shown(added.title)}" ({added.fingerprint}) registered.')
    await ctx.say(
        "Sign with: git config gpg.format ssh; git config user.signingKey PATH-TO-KEY; "
        "git commit -S (or git config commit.gpgSign true)"
    )
    return 0


async def remove(ctx: Context, which: str) -> int:
    await ctx.check_still_valid()
    account = await account_service.get(ctx.db, ctx.identity.account)
    removed = await service.remove(
        ctx.db,
        account,
        which,
        actor=ctx.identity.account,
        hooks_dir=ctx.settings.hooks_dir,
        key_fingerprint=ctx.identity.key_fingerprint,
        remote_addr=ctx.remote_addr,
    )
    await ctx.say(
        f'Signing key "{names.shown(removed.title)}" ({removed.fingerprint}) removed; '
        "what it signed no longer verifies here."
    )
    return 0


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if args in ((), ("list",)):
        return await list_keys(ctx)
    if len(args) == 2 and args[0] == "add":
        return await add(ctx, args[1])
    if len(args) == 2 and args[0] == "remove":
        return await remove(ctx, args[1])
    raise usage(
        ctx,
        "signing-key",
        "list|add TITLE|remove FINGERPRINT|TITLE",
        args,
        ("list", "add", "remove"),
    )
