"""The benchmark scripts work end to end (on a tiny table). Not a timed test: the
figures are not asserted, only that the run completed and left the rule in force."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from src.config import BACKEND_DIR

# Not `alone`: no figure is asserted, so sharing the cores with other tests changes
# nothing they check (the soak, whose faults are timed, runs alone).
pytestmark = pytest.mark.slow


def run_script(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a benchmark script as an operator does; the JSON figures it printed."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
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
    assert figures["migration"]["writer"]["errors"] == 0, figures["migration"]["writer"]
    assert figures["baseline"]["writer"]["errors"] == 0, figures["baseline"]["writer"]
    assert figures["diagnostic"]["script_peak_rss_mb"] > 0
    # The periods were built while the writer wrote, and say what the care teams say.
    assert figures["periods_backfill"]["writer"]["errors"] == 0
    assert figures["periods_backfill"]["periods"] >= figures["assignments"]
    assert figures["after"]["periods_out_of_step"] == 0
    assert figures["after"]["diagnostic_exit_code"] == 0


def test_attribution_benchmark_runs():
    """On a small organization, and against this very commit as "the release before"
    (a clone may not hold the earlier commit): every part runs and nothing fails."""
    figures = run_script(
        "bench/attribution.py",
        *("--seconds", "1", "--clients", "2", "--patients", "400", "--panel", "100"),
        *("--before", "HEAD"),
    )
    for read in ("current_read", "as_of_read", "panel_page"):
        assert figures["reads"][read]["operations"] > 0
        assert figures["reads"][read]["errors"] == 0, figures["reads"][read]
    transfer = figures["transfer"]
    assert transfer["writer_errors"] == 0 and transfer["writer_calls"] > 0
    assert (transfer["moved"], transfer["remaining"]) == (100, 0)
    for round_ in figures["assign"]["rounds"]:
        assert round_["before"]["errors"] == round_["with_periods"]["errors"] == 0
        assert round_["before"]["operations"] > 0 and round_["with_periods"]["operations"] > 0


def test_patient_history_benchmark_runs_both_definitions():
    figures = run_script(
        "bench/patient_history.py", "--periods", "400", "--step", "100", "--other-patients", "50"
    )
    for definition in ("head", "before"):
        steps = figures[definition]["steps"]
        assert [step["periods"] for step in steps] == [199, 399], steps
        assert all(step["ms_per_assignment"] > 0 for step in steps)


def test_search_benchmark_runs_and_uses_the_name_indexes():
    figures = run_script(
        "bench/search.py", *("--patients", "3000", "--seconds", "1", "--clients", "2")
    )
    for measure in ("care_team_read", "name_search", "list_page"):
        assert figures[measure]["operations"] > 0
        assert figures[measure]["errors"] == 0, figures[measure]
    assert "ix_patients_organization_id_last_name_key" in figures["plans"]["name_search"]
    assert "ix_patients_organization_id_first_name_key" in figures["plans"]["name_search"]


def test_smart_benchmark_runs():
    figures = run_script(
        "bench/smart.py", *("--tokens", "5", "--patients", "50", "--seconds", "1", "--clients", "2")
    )
    assert figures["token_request"]["requests"] == 5
    assert figures["token_request"]["median_ms"] > 0
    for round_ in figures["rounds"]:
        for credential in ("api_key", "access_token"):
            assert round_[credential]["operations"] > 0
            assert round_[credential]["errors"] == 0, round_[credential]
        assert round_["ratio"] > 0


def test_fhir_benchmark_runs():
    figures = run_script(
        "bench/fhir.py", *("--patients", "200", "--seconds", "1", "--clients", "2")
    )
    for round_ in figures["rounds"]:
        for read in ("v1_care_team", "fhir_care_team"):
            assert round_[read]["operations"] > 0 and round_[read]["errors"] == 0, round_[read]


def test_access_log_benchmark_runs():
    figures = run_script(
        "bench/access_log.py",
        *("--patients", "100", "--seconds", "1", "--clients", "2", "--rounds", "1"),
    )
    (round_,) = figures["rounds_by_clients"]["2"]
    for name in ("v1_care_team_read", "v1_care_team_put", "fhir_care_team_read"):
        for label in ("with_log", "without_log"):
            measured = round_[f"{name}_{label}"]
            assert measured["operations"] > 0 and measured["errors"] == 0, measured
    assert figures["plans"]["entries"] > 0


def test_console_benchmark_runs_with_and_without_the_console():
    figures = run_script(
        "bench/console.py",
        *("--patients", "100", "--seconds", "1", "--clients", "2", "--rounds", "2"),
    )
    assert len(figures["rounds"]) == 2
    for round_ in figures["rounds"]:
        for name in ("v1_care_team_read", "v1_care_team_put", "fhir_care_team_read"):
            for label in ("with_console", "without_console"):
                measured = round_[f"{name}_{label}"]
                assert measured["operations"] > 0 and measured["errors"] == 0, measured
            assert round_[f"{name}_ratio"] > 0


def test_export_benchmark_runs():
    figures = run_script(
        "bench/export.py",
        *("--patients", "300", "--history", "30", "--providers", "10"),
        *("--writers", "1", "--baseline-s", "1"),
    )
    alone, during = figures["export"], figures["export_with_writers"]
    assert alone["by_type"]["Patient"] == 300 and alone["by_type"]["CareTeam"] == 300
    assert alone["notices"] == []
    # With the writers: a resource they changed between the transaction time and the
    # snapshot is left out, and said in a notice, never missing silently.
    whole = during["by_type"]["Patient"] == 300 and during["by_type"]["CareTeam"] == 300
    assert whole or during["notices"]
    assert during["writers"]["writes"] > 0
    assert figures["copy"]["rows"] > 0
    assert figures["group_export"]["by_type"]["Group"] == 1
    assert figures["export_time_ratio_to_copy"] > 0


def path_without(program: str) -> str:
    """PATH with every directory that holds `program` left out: as on a machine without it."""
    return os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not os.access(os.path.join(entry, program), os.X_OK)
    )


LOAD_GENERATORS = [
    # The fallback, always: a machine without wrk must pass (it once failed on every one).
    pytest.param("python", id="python-load-generator-wrk-hidden"),
    pytest.param(
        "wrk",
        id="wrk",
        marks=pytest.mark.skipif(
            shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)"
        ),
    ),
]


@pytest.mark.parametrize("generator", LOAD_GENERATORS)
def test_throughput_benchmark_runs_every_measure(generator: str):
    """One second per measure: the pgbench baseline, the service, HTTP, hot spot, reads;
    the HTTP loads from wrk, and from the Python load generator where wrk is missing."""
    env = dict(os.environ)
    if generator == "python":
        env["PATH"] = path_without("wrk")
    figures = run_script("bench/throughput.py", "--seconds", "1", "--clients", "8", env=env)
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
    assert reads["pgbench_in_transaction"]["ops_per_s"] > 0
    for load in ("floor_empty", "floor_team"):
        assert figures["http_8"][load]["ops_per_s"] > 0, load
        assert figures["http_8"][load]["errors"] == 0, load
    for server in ("http_8", "http_8_two_workers"):
        for load in ("assign", "get_care_team", "healthz"):
            measure = figures[server][load]
            assert measure["load_generator"].startswith(generator), measure
            assert measure["ops_per_s"] > 0, measure
            assert measure["errors"] == 0, measure
            assert measure["server_cpu_ms_per_request"] > 0, measure
