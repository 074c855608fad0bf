"""Prometheus metrics: what operators watch to see the rule working (GET /metrics).

Labels carry routes, statuses and outcomes only: never ids, names or dates.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "careteam_http_requests_total",
    "HTTP requests by route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "careteam_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route"],
)
ASSIGNMENTS = Counter(
    "careteam_primary_assignments_total",
    "assign_primary_provider calls by outcome: changed, unchanged, or the error code",
    ["outcome"],
)
INDEX_REFUSALS = Counter(
    "careteam_primary_index_refusals_total",
    "Writes refused by idx_unique_primary_provider_per_patient (IntegrityError)",
)
LOCK_WAIT = Histogram(
    "careteam_patient_lock_wait_seconds",
    "Time to obtain the per-patient writer lock",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DB_POOL = Gauge(
    "careteam_db_pool_connections",
    "Application connection pool: in use, idle, capacity",
    ["state"],
)
VIOLATION_CHECK = Gauge(
    "careteam_violation_check_patients",
    "Last violation check: patients with several primaries, or with none",
    ["kind"],
)
VIOLATION_CHECK_TIME = Gauge(
    "careteam_violation_check_timestamp_seconds", "When the last violation check finished"
)
PRIMARY_INDEX_VALID = Gauge(
    "careteam_primary_index_valid",
    "1 when idx_unique_primary_provider_per_patient exists and is valid, at the last check",
)


def track_pool(pool: Any) -> None:
    """Read the pool's usage at every scrape."""
    DB_POOL.labels(state="in_use").set_function(pool.checkedout)
    DB_POOL.labels(state="idle").set_function(pool.checkedin)
    DB_POOL.labels(state="capacity").set_function(lambda: pool.size() + pool._max_overflow)


def record_check(
    violations: int, without_primary: int, index_state: str, checked_at: float | None = None
) -> None:
    VIOLATION_CHECK.labels(kind="several_primaries").set(violations)
    VIOLATION_CHECK.labels(kind="no_primary").set(without_primary)
    PRIMARY_INDEX_VALID.set(1 if index_state == "valid" else 0)
    VIOLATION_CHECK_TIME.set(time.time() if checked_at is None else checked_at)
