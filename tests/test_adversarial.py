"""The adversarial suite's bounded run (`python -m adversarial --quick`), so that every
`make test`, and so CI, attacks a real server: every class must be handled in full."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bounded_adversarial_suite_handles_every_input():
    result = subprocess.run(
        [sys.executable, "-m", "adversarial", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(table) == 12, result.stdout + result.stderr[-3000:]
    for row in table:
        name, tried, handled = [cell.strip() for cell in row.strip("|").split("|")[:3]]
        assert int(tried) > 0 and tried == handled, row + "\n" + result.stdout
    assert "tracebacks in its log: 0" in result.stdout
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
