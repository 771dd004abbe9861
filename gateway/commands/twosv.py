"""`2sv status | enable | disable | replace | verify` (SPEC §5).

Answers are read from stdin, one per line, with or without a terminal, so every flow
can be scripted: `echo 123456 | ssh -p 2222 git@host 2sv disable`.
"""

from __future__ import annotations

from .. import events, expiry, qr, wording
from ..errors import Refusal
from ..kinds import Factor, KeyKind, Requirement
from ..names import shown
from ..store import twosv as twosv_store
from ..store import workspaces
from ..twosv import recovery, totp
from ..twosv.service import PENDING_SECONDS, Accepted, CodeRefused, Throttled, TwoSV
from .context import Context
from .suggest import usage

ENROL_ATTEMPTS = 3


def service(ctx: Context) -> TwoSV:
    if ctx.sealer is None:
        raise Refusal("Two-step verification is not available on this server")
    return TwoSV(
        ctx.db,
        ctx.sealer,
        ctx.identity.account_id,
        ctx.identity.account,
        backoff_base=ctx.settings.twosv_backoff_seconds,
        clock=ctx.clock,
    )


async def event(ctx: Context, name: str, outcome: str = "ok", detail: str = "") -> None:
    await events.twosv_event(
        ctx.db,
        ctx.settings.hooks_dir,
        ctx.identity.account,
        name,
        outcome=outcome,
        detail=detail,
        key_fingerprint=ctx.identity.key_fingerprint,
        remote_addr=ctx.remote_addr,
    )


async def codes_guarded(ctx: Context) -> bool:
    """Whether the recovery codes are kept from the SSH key alone (SPEC §5): under a
    workspace with the `session` policy, or by the setting. Where they are not, a key's
    holder can read them, so a recovery code proves nothing beyond the key."""
    if ctx.settings.recovery_codes_need_second_factor:
        return True
    return any(
        workspace.require_2sv == Requirement.SESSION
        for workspace, _role in await workspaces.memberships(ctx.db, ctx.identity.account_id)
    )


async def second_factor(
    ctx: Context,
    svc: TwoSV,
    prompt: str = "Verification code or recovery code: ",
    *,
    recovery_codes: bool = True,
    security_key_login: bool = True,
) -> Accepted:
    """Ask for a code, unless this login was made with a registered security key (and
    `security_key_login` lets it count). Without `recovery_codes`, only a code from the
    authenticator app (or that login) will do: for what a stolen SSH key must not reach."""
    if security_key_login and ctx.identity.key_kind == KeyKind.SECURITY_KEY:
        return Accepted(Factor.SECURITY_KEY)
    if not recovery_codes:
        if not (await svc.state()).totp:
            raise Refusal(
                "This needs a code from your authenticator app or a login with one of "
                "your security keys (ssh -i ~/.ssh/id_ed25519_sk ...); a recovery code "
                "is not enough here."
            )
        prompt = "Code from your authenticator app: "
    answer = await ctx.ask(prompt)
    if answer is None:
        raise Refusal("No code given; nothing changed.")
    if not recovery_codes and totp.normalise(answer) is None:
        if recovery.normalise(answer) is None:
            raise Refusal("A verification code is six digits.")
        raise Refusal(
            "A recovery code is not enough here: type the code from your "
            "authenticator app, or log in with one of your security keys."
        )
    try:
        accepted = await svc.check(answer)
    except CodeRefused as refused:
        await event(
            ctx, "2sv.code_refused", outcome="denied", detail=f"failures={refused.failures}"
        )
        raise
    except Throttled:  # refused unseen during the back-off: audited too (SPEC §5)
        await event(ctx, "2sv.code_refused", outcome="denied", detail="back-off")
        raise
    if accepted.kind == Factor.RECOVERY_CODE:
        await event(ctx, "2sv.recovery_code_used", detail=f"left={accepted.codes_left}")
        if accepted.codes_left < 2:
            await ctx.say(
                wording.few_codes_left(accepted.codes_left or 0, ctx.settings.ssh_command)
            )
    return accepted


# The smallest terminal the enrolment screen is laid out for.
SCREEN_LINES, SCREEN_COLUMNS = 24, 80
# Answers that are not codes at all (empty, malformed) are asked again, not counted as
# tries; past this many in one enrolment the command gives up.
MAX_NON_CODES = 10
UP_AND_CLEAR = "\x1b[A\r\x1b[K"  # back to the line of the last answer, erased


def enrol_screen(uri: str, account_label: str, secret: str, terminal: bool) -> list[str]:
    """What `2sv enable` shows before its prompt, laid out so that in an 80x24 terminal the
    whole QR code (quiet zone too), the Account and Key and the prompt are on screen at
    once: the URI (for apps that take a link) comes first, where it may scroll off. The
    quiet zone shrinks from 4 modules (towards 2) only where a long name needs it."""
    key = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    above = ["Scan this QR code with your authenticator app, or type in the Account and Key:"]
    below = [f"Account: {account_label}   Key: {key}"]
    if len(below[0]) >= SCREEN_COLUMNS:  # a long name: the Key stays next to the prompt
        above, below = [*above, f"Account: {account_label}"], [f"Key:     {key}"]
    # Without a terminal the prompt has a line of its own and the answer is typed below it.
    # With one the answer follows the prompt, but its Enter still moves down a line (and
    # the screen once, when the prompt is on the last line): the lines above may go.
    code = qr.make(uri)

    def fits(border: int) -> bool:
        kept = qr.lines(code, border) + len(below) + 2
        return kept + (len(above) - 1 if terminal else len(above)) <= SCREEN_LINES

    border = next((b for b in (4, 3, 2) if fits(b)), 2)
    return [f"URI: {uri}", *above, *qr.render(code, border), *below]


async def enrol_app(ctx: Context, svc: TwoSV) -> tuple[str, int]:
    """Show a secret as QR code and text; return it with the step of a correct code.

    The caller makes it the account's secret only after a correct code, so an interrupted
    enrolment leaves 2SV as it was. Every try is for the secret shown: a wrong code, an
    empty line or a typo does not bring a new one, nor does running the command again
    within PENDING_SECONDS (the entry added to the app keeps working)."""
    secret = await svc.enrolment_secret(ctx.identity.key_fingerprint)
    uri = totp.provisioning_uri(secret, ctx.identity.account, ctx.settings.issuer)
    label = f"{ctx.settings.issuer}:{ctx.identity.account}"
    for line in enrol_screen(uri, label, secret, ctx.terminal):
        await ctx.say(line)
    tries = non_codes = 0
    prompt = "Enter the 6-digit code the app shows:"
    while tries < ENROL_ATTEMPTS:
        answer = await ctx.ask(prompt)
        if answer is None:
            raise Refusal("No code given; nothing changed.")
        try:
            step = svc.check_new_secret(secret, answer)
        except Refusal as refusal:  # not a code at all (an empty line too): not a try
            non_codes += 1
            if non_codes > MAX_NON_CODES:
                raise Refusal("No code given; nothing changed.") from None
            prompt = await _again(ctx, refusal.message if answer.strip() else "")
            continue
        if step is not None:
            return secret, step
        tries += 1
        if tries < ENROL_ATTEMPTS:
            prompt = await _again(ctx, "That code does not match; check the time on your device.")
    raise Refusal(
        "No correct code; nothing changed. Run the command again within "
        f"{PENDING_SECONDS // 60} minutes and it shows the same key."
    )


async def _again(ctx: Context, message: str) -> str:
    """Say why the answer is asked again; return the prompt to ask it with. At a terminal
    the message and prompt replace the last answer's line, so nothing scrolls."""
    if not ctx.terminal:
        if message:
            await ctx.say(f"{message} Try again.")
        return "Enter the 6-digit code the app shows:"
    ctx.stdout.write(f"{UP_AND_CLEAR}{message}{' ' if message else ''}".encode())
    await ctx.stdout.drain()
    return "Try again:" if message else "Enter the 6-digit code the app shows:"


async def guarded_factor(ctx: Context, svc: TwoSV) -> Accepted:
    """The second factor for showing or replacing recovery codes and adding a security key:
    where the codes are guarded, a recovery code does not count (SPEC §5)."""
    return await second_factor(ctx, svc, recovery_codes=not await codes_guarded(ctx))


async def show_new_codes(ctx: Context, codes: list[str]) -> None:
    await ctx.say("\nYour recovery codes (each works once):")
    for code in codes:
        await ctx.say(f"  {code}")
    await ctx.say(
        "Store them somewhere safe, such as a password manager or on paper: if you lose your "
        "device they are how you get back in.\n"
        f"You can see them again with: {ctx.settings.ssh_command('recovery-codes')}"
    )


async def status(ctx: Context, svc: TwoSV) -> int:
    for line in wording.twosv_state(await svc.state(), ctx.settings.ssh_command):
        await ctx.say(line)
    return 0


async def enable(ctx: Context, svc: TwoSV) -> int:
    state = await svc.state()
    if state.totp:
        raise Refusal(
            "Two-step verification with an authenticator app is already on. To move "
            f"to a new device: {ctx.settings.ssh_command('2sv replace')}"
        )
    if state.enabled:
        await second_factor(ctx, svc)  # adding a method to 2SV that is on
    secret, step = await enrol_app(ctx, svc)
    await ctx.check_still_valid()
    codes = await svc.enrol(
        secret, step, 0 if state.enabled else ctx.settings.recovery_codes, state
    )
    await event(ctx, "2sv.enable", detail=Factor.TOTP)
    await ctx.say("Two-step verification is now on.")
    if codes:
        await show_new_codes(ctx, codes)
    return 0


async def disable(ctx: Context, svc: TwoSV) -> int:
    if not (await svc.state()).enabled:
        raise Refusal("Two-step verification is not enabled.")
    await second_factor(ctx, svc)
    await ctx.check_still_valid()
    await svc.disable()
    await event(ctx, "2sv.disable")
    await ctx.say("Two-step verification is now off. Your recovery codes no longer work.")
    return 0


async def replace(ctx: Context, svc: TwoSV) -> int:
    state = await svc.state()
    if not state.totp:
        raise Refusal(
            "There is no authenticator app to replace; to add one: "
            f"{ctx.settings.ssh_command('2sv enable')}"
        )
    # The old device's code or a recovery code, even after a security-key login: a
    # security key planted with a stolen SSH key must not be enough to take the app over.
    await second_factor(
        ctx, svc, "Code from your old device, or a recovery code: ", security_key_login=False
    )
    # The old secret keeps working until the new device has shown a correct code.
    secret, step = await enrol_app(ctx, svc)
    await ctx.check_still_valid()
    await svc.enrol(secret, step, 0, state)
    await event(ctx, "2sv.replace")
    await ctx.say("Your new device is set up; codes from the old one no longer work.")
    return 0


async def verify(ctx: Context, svc: TwoSV) -> int:
    if not (await svc.state()).enabled:
        raise Refusal(
            "Two-step verification is not enabled. Turn it on with: "
            f"{ctx.settings.ssh_command('2sv enable')}"
        )
    accepted = await second_factor(ctx, svc)
    await ctx.check_still_valid()
    await svc.open_session(ctx.identity.key_fingerprint, accepted.kind)
    await event(ctx, "2sv.verify")
    until = ctx.clock() + await session_window(ctx) * 60
    await ctx.say(
        f'Verified. Two-step session open for key "{shown(ctx.identity.key_title)}" '
        f"({ctx.identity.key_fingerprint}) until {expiry.shown_time(until)}."
    )
    return 0


# A session counts for workspace policy changes for this long, whatever the policies.
POLICY_CHANGE_MINUTES = 15


async def session_window(ctx: Context) -> int:
    """Minutes a two-step session of this account counts for: the longest window of its
    workspaces with the `session` policy (each counts it for its own window), and at least
    the window of workspace policy changes."""
    windows = [
        workspace.session_window
        for workspace, _role in await workspaces.memberships(ctx.db, ctx.identity.account_id)
        if workspace.require_2sv == Requirement.SESSION
    ]
    return max([POLICY_CHANGE_MINUTES, *windows])


async def sessions(ctx: Context, args: tuple[str, ...]) -> int:
    """`2sv sessions`: the open two-step sessions of the account's keys (any key: one
    opened with a stolen key shows here); `2sv sessions revoke` closes them all."""
    if args == ("revoke",):
        await ctx.check_still_valid()
        closed = await twosv_store.close_sessions(ctx.db, ctx.identity.account_id)
        await event(ctx, "2sv.sessions_revoke", detail=f"closed={closed}")
        await ctx.say(f"Closed {closed} two-step session(s) of your keys.")
        return 0
    if args:
        raise usage(ctx, "2sv", "sessions [revoke]", args, {"revoke": None})
    now, window = ctx.clock(), await session_window(ctx) * 60
    found = [
        s
        for s in await twosv_store.sessions_of(ctx.db, ctx.identity.account_id)
        if s.verified_at <= now < s.verified_at + window
    ]
    if not found:
        await ctx.say("No open two-step sessions.")
        return 0
    await ctx.say("Open two-step sessions (key, opened, until):")
    for s in found:
        title = f'"{shown(s.key_title)}"' if s.key_title is not None else "(a certificate)"
        this = "  (this login)" if s.key_fingerprint == ctx.identity.key_fingerprint else ""
        await ctx.say(
            f"  {s.key_fingerprint}  {title}  opened {expiry.shown_time(s.verified_at)}"
            f" with {s.method}  until {expiry.shown_time(s.verified_at + window)}{this}"
        )
    return 0


SUBCOMMANDS = {
    "status": status,
    "enable": enable,
    "disable": disable,
    "replace": replace,
    "verify": verify,
}


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if args and args[0] == "sessions":
        return await sessions(ctx, args[1:])
    if len(args) != 1 or args[0] not in SUBCOMMANDS:
        raise usage(
            ctx,
            "2sv",
            "status|enable|disable|replace|verify|sessions [revoke]",
            args,
            {**SUBCOMMANDS, "sessions": None},
        )
    return await SUBCOMMANDS[args[0]](ctx, service(ctx))
