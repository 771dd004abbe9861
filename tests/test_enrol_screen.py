"""`2sv enable` as a person sees it: the real `ssh` in tmux at 80x24, the screen read back.

The QR code on screen is decoded back into modules (each half-block character holds two)
and compared with segno's matrix for the URI, then read by a real decoder (zxing-cpp):
drawn black on white with explicit colours, with a terminal and without.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time

import pyotp
import zxingcpp

from gateway import qr
from testkit import Gateway, User, make_key, unique
from testkit.waiting import wait_for

PROMPT = "Enter the 6-digit code the app shows:"
HEADER = "Scan this QR code with your authenticator app"
KEY_RE = re.compile(r"Key:\s+((?:[A-Z2-7]{4} ?){8})")
GLYPHS = {" ": (False, False), "▀": (True, False), "▄": (False, True), "█": (True, True)}


class Screen:
    """One tmux server of our own (its own socket), one 80x24 window running a command."""

    def __init__(self, gw: Gateway, command: list[str]) -> None:
        self.gw = gw
        self.socket = unique("tmux")
        config = gw.root / "tmux.conf"  # the window stays when ssh exits, to be read
        config.write_text("set -g remain-on-exit on\n")
        self.tmux(
            "-f",
            str(config),
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            "t",
            shlex.join(command),
        )

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            env=self.gw.env,
            check=True,
            timeout=30,
        ).stdout

    def lines(self, escapes: bool = False) -> list[str]:
        # -N keeps trailing spaces: the QR code's white quiet zone is spaces.
        text = self.tmux("capture-pane", "-p", "-N", *(["-e"] if escapes else []), "-t", "t")
        return text.split("\n")[:24]

    def wait_for(self, text: str, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.lines()
            if any(text in line for line in screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not on screen:\n" + "\n".join(self.lines()))

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)
        self.tmux("send-keys", "-t", "t", "Enter")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def enrol_command(gw: Gateway, user: User, *extra: str) -> list[str]:
    return [*gw.ssh_command(user.key), *extra, "-p", str(gw.port), "git@127.0.0.1", "2sv", "enable"]


def qr_block(screen: list[str]) -> tuple[int, list[str]]:
    """The lines between the header (or an Account line above the code) and the line
    with the Key, and where they start."""
    end = next(i for i, line in enumerate(screen) if KEY_RE.search(line))
    start = end
    while start > 0 and set(screen[start - 1].rstrip("\n")) <= set(GLYPHS):
        start -= 1
    return start, screen[start:end]


def modules(block: list[str], dark_glyphs: bool) -> list[list[bool]]:
    """Each character is two modules, the upper and the lower; True is dark."""
    width = max(len(line) for line in block)
    rows = []
    for line in block:
        pairs = [GLYPHS[ch] for ch in line.ljust(width)]
        for half in (0, 1):
            rows.append([pair[half] == dark_glyphs for pair in pairs])
    return rows


def check_code(rows: list[list[bool]], uri: str, min_border: int) -> None:
    """The symbol on screen is segno's matrix for `uri`, inside a light quiet zone of at
    least `min_border` modules, and a real decoder reads `uri` from it."""
    expected = [[bool(m) for m in row] for row in qr.make(uri).matrix]
    size = len(expected)
    dark = [(y, x) for y, row in enumerate(rows) for x, m in enumerate(row) if m]
    top, left = min(y for y, _ in dark), min(x for _, x in dark)
    assert [row[left : left + size] for row in rows[top : top + size]] == expected
    assert left >= min_border and top >= min_border
    assert len(rows[0]) - left - size >= min_border and len(rows) - top - size >= min_border
    # Every module outside the symbol is light: nothing else is drawn in the quiet zone.
    assert all(top <= y < top + size and left <= x < left + size for y, x in dark)
    scale = 4
    pixels = bytes(
        0 if m else 255 for row in rows for _ in range(scale) for m in row for _ in range(scale)
    )
    image = memoryview(pixels).cast("B", (len(rows) * scale, len(rows[0]) * scale))
    assert [found.text for found in zxingcpp.read_barcodes(image)] == [uri]


SGR_RE = re.compile(r"\x1b\[([0-9;]*)m")


def cell_colours(lines: list[str]) -> list[list[tuple[str | None, str | None]]]:
    """(foreground, background) of each cell, from `capture-pane -e` (which writes a
    change of colour once, where it happens, so the state carries across lines)."""
    fg = bg = None
    out = []
    for line in lines:
        cells, pos = [], 0
        for match in [*SGR_RE.finditer(line), None]:
            end = match.start() if match else len(line)
            cells += [(fg, bg)] * len(line[pos:end])
            if match is None:
                break
            pos = match.end()
            params = match.group(1).split(";") if match.group(1) else ["0"]
            while params:
                p = params.pop(0)
                if p in ("38", "48") and len(params) >= 2 and params[0] == "5":
                    value = params[1]
                    params = params[2:]
                    fg, bg = (value, bg) if p == "38" else (fg, value)
                elif p == "0":
                    fg = bg = None
                elif p == "39":
                    fg = None
                elif p == "49":
                    bg = None
        out.append(cells)
    return out


def expected_uri(user: User, screen: list[str]) -> str:
    secret = KEY_RE.search("\n".join(screen)).group(1).replace(" ", "")
    return f"otpauth://totp/gateway:{user.name}?secret={secret}"


def test_enrolment_fits_80x24_at_a_terminal_black_on_white(gw):
    user = gw.user()
    screen = Screen(gw, enrol_command(gw, user, "-tt"))
    try:
        shown = screen.wait_for(PROMPT)
        assert shown[-1].startswith(PROMPT)  # the cursor's line: nothing scrolled past it
        assert any(HEADER in line for line in shown)
        start, block = qr_block(shown)
        assert len(block) == 21  # version 4, quiet zone of 4 modules, whole on screen
        uri = expected_uri(user, shown)
        check_code(modules(block, dark_glyphs=True), uri, min_border=4)
        check_black_on_white(screen, start, block, uri, border=4)
        # An empty line and a typo are asked again on the same line: the code stays.
        secret = pyotp.parse_uri(uri).secret
        screen.type("")
        # The empty line handled (the screen moved up, the prompt asked again) before the
        # next is typed: typed at once, their echo and the re-asked prompt could interleave.
        assert wait_for(lambda: asked_again(screen)), "\n".join(screen.lines())
        screen.type("12345")
        screen.wait_for("Try again:")
        again = screen.lines()
        # The first Enter on the last line moved the screen up by one, the header out.
        assert qr_block(again) == (start - 1, block), "\n".join(again)
        assert again[-2].startswith("A verification code is six digits. Try again:")
        assert not again[-1].strip()
        screen.type(pyotp.TOTP(secret).now())
        screen.wait_for("Two-step verification is now on.")
    finally:
        screen.close()
    assert "enabled (totp)" in gw.ssh(user, "2sv", "status").stdout


def asked_again(screen: Screen) -> bool:
    """After an empty line at the prompt: the screen moved up by one (the header out)
    and the cursor is back on the prompt's line (the terminal's own echo of Enter left
    it on the line below)."""
    lines = screen.lines()
    row = int(screen.tmux("display-message", "-p", "-t", "t", "#{cursor_y}"))
    return not any(HEADER in line for line in lines) and lines[row].startswith(PROMPT)


def check_black_on_white(screen: Screen, start: int, block: list[str], uri: str, border: int):
    """Explicit colours on every line of the code, its quiet zone of at least `border`
    modules included: black on white, on any background."""
    colours = cell_colours(screen.lines(escapes=True))[start : start + len(block)]
    width = colours[0].count(("16", "231"))
    assert width >= qr.make(uri).symbol_size(border=border)[0]
    assert all(row[:width] == [("16", "231")] * width for row in colours), colours
    assert all(row[width:] in ([], [(None, None)] * len(row[width:])) for row in colours)


def test_enrolment_fits_80x24_without_a_terminal(gw):
    """Plain `ssh ... 2sv enable` (no pty), as every hint prints it: the same black on
    white code, the URI on a plain line of its own."""
    user = gw.user()
    screen = Screen(gw, enrol_command(gw, user))
    try:
        shown = screen.wait_for(PROMPT)
        prompt_at = max(i for i, line in enumerate(shown) if line.startswith(PROMPT))
        assert prompt_at == 22 and not shown[23].strip()  # the answer is typed on line 24
        assert any(HEADER in line for line in shown)
        start, block = qr_block(shown)
        uri = expected_uri(user, shown)
        check_code(modules(block, dark_glyphs=True), uri, min_border=3)
        check_black_on_white(screen, start, block, uri, border=3)
    finally:
        screen.close()
    raw = gw.ssh(user, "2sv", "enable", input="")
    uri_line = next(line for line in raw.stdout.splitlines() if line.startswith("URI: "))
    assert "\x1b" not in uri_line + raw.stderr
    assert pyotp.parse_uri(uri_line[len("URI: ") :]).issuer == "gateway"


def test_enrolment_of_a_long_account_name_still_fits(gw):
    name = "n" + unique("").replace("-", "")[:10] + "x" * 28
    name = name[:39]
    key = make_key(gw.keys_dir, name)
    gw.cli("account", "add", name, "--key", f"{key}.pub")
    user = User(name, key)
    for extra, prompt_line in ((("-tt",), 23), ((), 22)):
        screen = Screen(gw, enrol_command(gw, user, *extra))
        try:
            shown = screen.wait_for(PROMPT)
            assert max(i for i, line in enumerate(shown) if line.startswith(PROMPT)) == prompt_line
            _, block = qr_block(shown)
            check_code(modules(block, dark_glyphs=True), expected_uri(user, shown), min_border=2)
        finally:
            screen.close()
