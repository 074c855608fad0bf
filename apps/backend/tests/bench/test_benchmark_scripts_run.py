"""The benchmark scripts work end to end (on a tiny table). Not a timed test: the
figures are not asserted, only that the run completed and left the rule in force."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from src.config import BACKEND_DIR


def run_script(*args: str) -> dict[str, Any]:
    """Run a benchmark script as an operator does; the JSON figures it printed."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def test_migration_scale_benchmark_runs_and_leaves_the_rule_in_force():
    figures = run_script("bench/migration_scale.py", "--patients-per-org", "100")
    assert figures["assignments"] == 100 * 100 * 4
    assert figures["after"]["patients_with_two_primaries"] == 0
    assert figures["after"]["index_valid"] is True
    # Every seeded duplicate was either demoted by the migration (with an event) or
    # fixed earlier by the concurrent writer assigning that patient a new primary.
    assert 0 < figures["after"]["migration_dedupe_events"] <= figures["patients_with_two_primaries"]
    assert figures["migration"]["writer"]["errors"] == 0
    assert figures["diagnostic"]["script_peak_rss_mb"] > 0


def test_throughput_benchmark_runs_every_measure():
    """One second per measure: the pgbench baseline, the service, HTTP, hot spot, reads."""
    figures = run_script("bench/throughput.py", "--seconds", "1", "--clients", "8")
    eight = figures["assign"]["8"]
    assert eight["pgbench"]["ops_per_s"] > 0 and eight["service"]["ops_per_s"] > 0
    assert eight["service"]["errors"] == 0
    assert eight["service_held_session"]["errors"] == 0
    assert figures["hot_spot_8"]["primaries_at_end"] == 1
    assert figures["hot_spot_8"]["service"]["errors"] == 0
    reads = figures["reads_8"]
    for name in (
        "get_primary_provider",
        "get_care_team",
        "get_primary_provider_held_session",
        "get_care_team_held_session",
        "driver_alone_held_connection",
    ):
        assert reads[name]["ops_per_s"] > 0 and reads[name]["errors"] == 0, name
    for load in ("assign", "get_care_team", "healthz"):
        assert figures["http_8"][load]["ops_per_s"] > 0, load
        assert figures["http_8"][load]["errors"] == 0, load
