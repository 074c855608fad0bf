"""The soak under faults, short mode (about 15 s): the rule holds and nothing
acknowledged is lost while connections are killed and the server restarts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from src.config import BACKEND_DIR

pytestmark = [pytest.mark.slow, pytest.mark.alone]


def test_soak_short_run_passes_every_check():
    result = subprocess.run(
        [sys.executable, "bench/soak.py", "--short"],
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(result.stderr[-3000:])  # shown by pytest when an assertion fails (or no JSON)
    report = json.loads(result.stdout)
    print(json.dumps(report, indent=2))
    checks = report["checks"]
    assert checks["duplicate_primaries_seen_during_run"] == 0
    assert checks["duplicate_primaries_at_end"] == 0
    assert checks["acknowledged_without_event"] == 0
    assert checks["acknowledged_not_reflected"] == 0
    assert checks["failed_with_a_trace"] == 0
    assert checks["replay_matches_table"] is True
    assert checks["recovered_after_last_fault"] is True
    assert checks["unexpected_errors"] == 0
    assert report["faults"]["restarts"] == 1
    # The chaos really reached the service: killed connections it had to recover from.
    assert report["faults"]["connections_terminated"] > 5
    assert report["writes"] > 500 and report["invariant_checks"] > 20
    assert result.returncode == 0 and report["passed"] is True
