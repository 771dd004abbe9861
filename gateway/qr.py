"""The enrolment QR code, drawn as text (SPEC §5), small enough for an 80x24 terminal.

Two modules a character cell (half blocks). The secret travels in QR's alphanumeric mode
(base32 is upper-case letters and digits: 5.5 bits a character instead of 8), so with
the URI's one needed parameter the code stays at version 4 (33 modules; 21 lines with
a 4-module quiet zone) for account names up to about 23 characters.

The code is drawn black on white with explicit colours (the 256-colour cube's black and
white, which themes do not remap), quiet zone included, so it is the same on dark and
light backgrounds. That holds without a pty too: plain `ssh HOST 2sv enable`, as every
hint prints it, still writes to the user's terminal, and a code drawn for one background
is inverted on the other, which some scanner apps refuse. (Its output in a file then has
the colour codes in it; the URI line above the code is plain.)
"""

from __future__ import annotations

import segno
from segno import consts

TOP, BOTTOM, BOTH, NONE = "▀", "▄", "█", " "
BLACK_ON_WHITE = "\x1b[38;5;16;48;5;231m"
RESET = "\x1b[0m"


def make(uri: str) -> segno.QRCode:
    """The QR code of an otpauth URI whose last parameter is the base32 secret."""
    head, sep, secret = uri.rpartition("secret=")
    if sep and secret and secret.isalnum() and secret.isupper():
        content = [(head + sep, consts.MODE_BYTE), (secret, consts.MODE_ALPHANUMERIC)]
    else:
        content = uri
    return segno.make(content, error="l", micro=False)  # error level boosted where it fits


def lines(code: segno.QRCode, border: int = 4) -> int:
    """How many text lines `render` takes."""
    return (code.symbol_size(border=border)[1] + 1) // 2


def render(code: segno.QRCode, border: int = 4) -> list[str]:
    """The code as text lines: a character shows the module above and the one below;
    glyphs are the dark modules, black on white."""
    rows = [[bool(module) for module in row] for row in code.matrix_iter(border=border)]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))  # the last line's lower half: more quiet zone
    out = []
    for upper, lower in zip(rows[::2], rows[1::2], strict=True):
        cells = []
        for top, bottom in zip(upper, lower, strict=True):
            cells.append(BOTH if top and bottom else TOP if top else BOTTOM if bottom else NONE)
        out.append(f"{BLACK_ON_WHITE}{''.join(cells)}{RESET}")
    return out
