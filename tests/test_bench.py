"""The benchmarks run end to end in a tiny mode, so that they cannot rot; no ratio is asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.mark.bench_smoke
def test_bench_runs_in_tiny_mode():
    result = subprocess.run([sys.executable, "-m", "bench", "--tiny"], cwd=REPOSITORY, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    # The table is the block after the "Medians over" line; notes follow it after a blank line.
    table = result.stdout.split("Medians over", 1)[1].split("\n\n")[1]
    # Every benchmark produced its row with a measured value (performance is judged in bench/, not here).
    for number in ("1.", "2.", "3.", "4.", "5."):
        rows = [line for line in table.splitlines() if line.startswith(number)]
        assert rows, f"benchmark {number} printed no row:\n{result.stdout}"
        for row in rows:
            assert " ms" in row or "msg/s" in row or " MB" in row or "notes/s" in row, row
