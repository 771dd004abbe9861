"""2SV logic with an injected clock: RFC vectors through the gateway's verifier, drift,
replay, back-off, recovery codes, sealing."""

from __future__ import annotations

import asyncio
import base64

import pyotp
import pytest

from gateway.errors import Refusal
from gateway.store import accounts
from gateway.twosv import recovery, throttle, totp
from gateway.twosv.sealing import Sealer
from gateway.twosv.service import CodeRefused, TwoSV
from testkit import Clock

RFC_SEED = base64.b32encode(b"12345678901234567890").decode()


@pytest.mark.parametrize(
    "when,code",
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_rfc6238_sha1_vectors(when, code):
    assert totp.matching_step(RFC_SEED, code, when, digits=8, drift=0) == when // 30
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    assert totp.matching_step(RFC_SEED, wrong, when, digits=8, drift=0) is None


def test_rfc4226_hotp_values():
    expected = [
        "755224",
        "287082",
        "359152",
        "969429",
        "338314",
        "254676",
        "287922",
        "162583",
        "399871",
        "520489",
    ]
    for counter, code in enumerate(expected):
        assert totp.hotp_matches(RFC_SEED, code, counter)
        assert not totp.hotp_matches(RFC_SEED, code, counter + 1)


def test_drift_is_one_step_each_way():
    secret = totp.new_secret()
    now = 1_700_000_000.0
    step = totp.time_step(now)
    for offset in (-1, 0, 1):
        code = pyotp.TOTP(secret).at(now + 30 * offset)
        assert totp.matching_step(secret, code, now) == step + offset
    for offset in (-2, 2):
        code = pyotp.TOTP(secret).at(now + 30 * offset)
        assert totp.matching_step(secret, code, now) is None


@pytest.mark.parametrize(
    "typed,expected",
    [
        ("123456", "123456"),
        ("123 456", "123456"),
        (" 123456 ", "123456"),
        ("１２３４５６", None),
        ("12345", None),
        ("1234567", None),
        ("12345a", None),
        ("١٢٣٤٥٦", None),
        ("", None),
        ("123-456", None),
    ],
)
def test_code_input_discipline(typed, expected):
    assert totp.normalise(typed) == expected


def test_secret_is_160_bits():
    secret = totp.new_secret()
    assert len(base64.b32decode(secret)) == 20
    assert secret != totp.new_secret()


def test_recovery_code_format_and_entropy():
    code = recovery.new_code()
    assert len(code) == 10 and set(code) <= set(recovery.ALPHABET)
    assert len(recovery.ALPHABET) ** recovery.LENGTH >= 2**50
    shown = recovery.display(code)
    assert shown[5] == "-"
    assert recovery.normalise(shown.upper()) == code
    assert recovery.normalise(code) == code
    assert recovery.normalise(shown + "x") is None


def test_backoff_schedule():
    assert [throttle.backoff_after(n, 30) for n in range(1, 5)] == [0, 0, 0, 0]
    assert [throttle.backoff_after(n, 30) for n in range(5, 9)] == [30, 60, 120, 240]
    assert throttle.backoff_after(20, 30) == 3600


def test_sealing_binds_context():
    sealer = Sealer(b"k" * 32)
    sealed = sealer.seal(b"secret", "totp:1")
    assert b"secret" not in sealed
    assert sealer.open(sealed, "totp:1") == b"secret"
    with pytest.raises(RuntimeError):
        sealer.open(sealed, "totp:2")
    with pytest.raises(Refusal):
        Sealer(b"short")


@pytest.fixture
async def twosv(backend):
    db = await backend.connect()
    account = await accounts.add(db, "alice", None)
    await db.commit()
    clock = Clock(1_700_000_000.0)
    svc = TwoSV(db, Sealer(b"m" * 32), account.id, "alice", backoff_base=30, clock=clock)
    yield svc, clock, db
    await db.close()


async def _enrol(svc: TwoSV, clock: Clock) -> tuple[str, list[str]]:
    secret = totp.new_secret()
    step = svc.check_new_secret(secret, pyotp.TOTP(secret).at(clock.now))
    codes = await svc.enrol(secret, step, 6, await svc.state())
    return secret, codes


async def test_a_step_is_accepted_once(twosv):
    svc, clock, _ = twosv
    secret, _ = await _enrol(svc, clock)
    with pytest.raises(CodeRefused, match="already used"):
        await svc.check(pyotp.TOTP(secret).at(clock.now))  # the enrolment used this step
    next_code = pyotp.TOTP(secret).at(clock.now + 30)
    assert (await svc.check(next_code)).kind == "totp"
    with pytest.raises(CodeRefused, match="already used"):
        await svc.check(next_code)
    clock.now += 60  # an older step than the last accepted one stays refused
    with pytest.raises(CodeRefused):
        await svc.check(pyotp.TOTP(secret).at(clock.now - 30))
    assert (await svc.check(pyotp.TOTP(secret).at(clock.now))).kind == "totp"


async def test_backoff_with_clock(twosv):
    svc, clock, _ = twosv
    secret, codes = await _enrol(svc, clock)
    for _ in range(4):
        with pytest.raises(CodeRefused):
            await svc.check("000000" if pyotp.TOTP(secret).at(clock.now) != "000000" else "111111")
    for typed in ("１２３４５６", "abc", "12 34"):
        with pytest.raises(Refusal) as caught:
            await svc.check(typed)
        assert not isinstance(caught.value, CodeRefused)  # not counted
    with pytest.raises(CodeRefused):
        await svc.check(recovery.display("0" * 10))  # a wrong recovery code counts too
    with pytest.raises(Refusal, match="Try again in 30 seconds"):
        await svc.check(codes[0])
    clock.now += 31
    with pytest.raises(CodeRefused):
        await svc.check("999999" if pyotp.TOTP(secret).at(clock.now) != "999999" else "888888")
    with pytest.raises(Refusal, match="Try again in 60 seconds"):
        await svc.check(codes[0])
    clock.now += 61
    assert (await svc.check(codes[0])).kind == "recovery-code"
    row_failures = (await svc.db.fetch_one("SELECT failures FROM twosv"))[0]
    assert row_failures == 0


async def test_recovery_codes_once_each_and_parallel(twosv, backend):
    svc, clock, _ = twosv
    _, codes = await _enrol(svc, clock)
    assert len(codes) == 6
    accepted = await svc.check(codes[0].upper().replace("-", ""))
    assert accepted.kind == "recovery-code" and accepted.codes_left == 5
    with pytest.raises(CodeRefused):
        await svc.check(codes[0])
    # Twenty sessions, each with its own connection as in the server, use one code.
    others = [await backend.connect() for _ in range(20)]
    try:
        services = [TwoSV(db, svc.sealer, svc.account_id, "alice", clock=clock) for db in others]
        results = await asyncio.gather(
            *(s.check(codes[1]) for s in services), return_exceptions=True
        )
    finally:
        for db in others:
            await db.close()
    assert sum(not isinstance(r, Exception) for r in results) == 1
    listed = await svc.recovery_codes()
    assert [used for _, used in listed] == [True, True, False, False, False, False]


async def test_parallel_guesses_cannot_pass_the_backoff(twosv, backend):
    svc, clock, _ = twosv
    secret, _ = await _enrol(svc, clock)
    wrong = "000000" if pyotp.TOTP(secret).at(clock.now) != "000000" else "111111"
    others = [await backend.connect() for _ in range(30)]
    try:
        services = [TwoSV(db, svc.sealer, svc.account_id, "alice", clock=clock) for db in others]
        results = await asyncio.gather(*(s.check(wrong) for s in services), return_exceptions=True)
    finally:
        for db in others:
            await db.close()
    counted = [r for r in results if isinstance(r, CodeRefused)]
    locked = [r for r in results if isinstance(r, Refusal) and not isinstance(r, CodeRefused)]
    assert len(counted) == 5 and len(locked) == 25  # guesses past the fifth were not evaluated


async def test_enrolment_refused_if_2sv_changed_meanwhile(twosv):
    svc, clock, _ = twosv
    before = await svc.state()  # off: the user started `2sv enable`
    await _enrol(svc, clock)  # meanwhile another session turned 2SV on
    intruder_secret = totp.new_secret()
    step = svc.check_new_secret(intruder_secret, pyotp.TOTP(intruder_secret).at(clock.now))
    with pytest.raises(Refusal, match="changed in another session"):
        await svc.enrol(intruder_secret, step, 6, before)
    assert (await svc.state()).codes_total == 6
