"""What a terminal driver would do, for sessions where the client asked for a pty.

With a pty the client's terminal is in raw mode: typed characters are not echoed, Enter
sends `\\r`, and a bare `\\n` does not return the cursor. Nothing else on the path does
the terminal's job (asyncssh's line editor needs text streams, and Git needs bytes), so
these wrappers echo input, assemble lines (with backspace) and write `\\r\\n`.
"""

from __future__ import annotations

import asyncssh

CTRL_C, CTRL_D, BACKSPACE, DELETE = 3, 4, 8, 127
MAX_LINE = 4096


class CrlfWriter:
    def __init__(self, writer) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    async def drain(self) -> None:
        await self._writer.drain()


class CookedReader:
    """Hands out whole lines, as a terminal in canonical mode would; Ctrl-C or Ctrl-D
    on an empty line ends the input."""

    def __init__(self, reader, echo: CrlfWriter) -> None:
        self._reader = reader
        self._echo = echo
        self._line = bytearray()
        self._ready = b""
        self._eof = False
        self._after_cr = False

    async def read(self, n: int = -1) -> bytes:
        while not self._ready and not self._eof:
            try:
                data = await self._reader.read(1024)
            except (asyncssh.TerminalSizeChanged, asyncssh.SignalReceived, asyncssh.BreakReceived):
                continue  # a window resized or a signal sent: keep reading the answer
            if not data:
                self._eof = True
                self._ready, self._line = bytes(self._line), bytearray()
                break
            self._cook(data)
            await self._echo.drain()
        size = len(self._ready) if n < 0 else n
        out, self._ready = self._ready[:size], self._ready[size:]
        return out

    def _cook(self, data: bytes) -> None:
        echo = bytearray()
        try:
            self._cook_into(data, echo)
        finally:
            self._echo.write(bytes(echo))  # one write per chunk, not per byte

    def _cook_into(self, data: bytes, echo: bytearray) -> None:
        for byte in data:
            after_cr, self._after_cr = self._after_cr, byte == 13
            if byte == 10 and after_cr:
                continue  # \r\n is one Enter
            if byte in (10, 13):
                self._ready += bytes(self._line) + b"\n"
                self._line.clear()
                echo += b"\n"
            elif byte in (BACKSPACE, DELETE):
                if self._line:
                    self._line.pop()
                    echo += b"\b \b"
            elif byte in (CTRL_C, CTRL_D):
                self._ready += bytes(self._line)
                self._line.clear()
                self._eof = True
                return
            elif len(self._line) < MAX_LINE:  # longer answers are cut, not stored
                self._line.append(byte)
                echo.append(byte)
