"""`modelseek eval` end to end on a tiny zoo: Ray indexing, every method, the report on disk."""

import re
import subprocess
import sys

import pytest

from tests.tiny_zoo import TINY_MODELS, write_tiny_zoo

pytest.importorskip("ray")

# The report's title of each scoring method, as rows of the image and sketch tables.
METHOD_ROWS = (
    "Monte-Carlo (",
    "1st moment",
    "1st + 2nd moment (low-rank Σ",
    "1st + 2nd moment (full Σ)",
    "Gaussian density (low-rank Σ",
    "Gaussian density (full Σ)",
    "Baseline: keyword match",
)


def _run_eval(zoo, out, work) -> str:
    # A process of its own: the command starts and stops its private Ray, which must not meet
    # the session's Ray of the other integration tests.
    command = [sys.executable, "-m", "modelseek.cli", "eval", str(zoo), "--encoders", "hermetic"]
    command += ["--samples-per-model", "32", "--out", str(out), "--work-dir", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _first_table(report: str, title: str) -> str:
    """The main table under a `## title` heading (the breakdown tables after it left out)."""
    return report.split(f"## {title}\n", 1)[1].strip().split("\n\n", 1)[0]


@pytest.mark.timeout(900)
def test_eval_writes_every_method_row_and_image_top1_beats_chance(tmp_path):
    zoo = write_tiny_zoo(tmp_path / "zoo", samples=32, queries=6)
    out = tmp_path / "eval" / "RESULTS.md"

    stdout = _run_eval(zoo, out, tmp_path / "work")

    report = out.read_text()
    assert (out.parent / "dropoff.png").stat().st_size > 10_000
    assert "](dropoff.png)" in report and "Targets" in stdout
    for title in ("Image queries", "Sketch queries"):
        rows = [
            ln for ln in _first_table(report, title).splitlines() if ln.startswith("| hermetic |")
        ]
        assert len(rows) == len(METHOD_ROWS), rows
        for row, method in zip(rows, METHOD_ROWS, strict=True):
            assert row.startswith(f"| hermetic | {method}"), row
    # The hermetic text tower has random weights: no text rows, said so.
    assert "## Text queries" not in report and "left out of text queries" in report

    gaussian = next(
        ln
        for ln in _first_table(report, "Image queries").splitlines()
        if ln.startswith("| hermetic | Gaussian density (low-rank")
    )
    queries, top1 = re.match(r"\| hermetic \| [^|]+ \| (\d+) \| \**([0-9.]+)", gaussian).groups()
    assert int(queries) == 6 * len(TINY_MODELS)
    assert float(top1) > 1 / len(TINY_MODELS)

    # A rerun reuses the cached index: no model is sampled again.
    _run_eval(zoo, out, tmp_path / "work")
    assert "hermetic: version 000001, 0 models sampled" in out.read_text()
