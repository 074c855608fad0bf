"""Settings that depend on each other are refused together, in one line that names them."""

from __future__ import annotations

import pytest

from src.config import ConfigurationError, get_settings


@pytest.fixture
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


class TestExportsAndThePool:
    def test_exports_that_would_hold_every_connection_are_refused(
        self, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
    ):
        """Each running export holds EXPORT_LANES connections: four exports of three
        lanes on a pool of ten would leave none for their access log entries (every
        lane waiting for a connection another lane holds)."""
        monkeypatch.setenv("EXPORT_WORKERS", "4")
        monkeypatch.setenv("DB_POOL_SIZE", "10")
        with pytest.raises(ConfigurationError) as refused:
            get_settings()
        assert str(refused.value) == (
            "invalid settings: EXPORT_WORKERS x EXPORT_LANES (12) must be below "
            "DB_POOL_SIZE + DB_MAX_OVERFLOW (10): each running export holds EXPORT_LANES "
            "connections; lower one, or raise the pool"
        )

    @pytest.mark.parametrize(
        "env",
        [
            {"EXPORT_WORKERS": "4", "DB_POOL_SIZE": "10", "EXPORT_LANES": "2"},
            {"EXPORT_WORKERS": "4", "DB_POOL_SIZE": "10", "DB_MAX_OVERFLOW": "3"},
            {"EXPORT_WORKERS": "0", "DB_POOL_SIZE": "1"},
            {"EXPORT_LANES": "1", "DB_POOL_SIZE": "2"},
        ],
        ids=["fewer-lanes", "overflow", "no-exports", "one-lane"],
    )
    def test_what_leaves_a_connection_is_taken(
        self, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fresh_settings: None
    ):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = get_settings()
        assert (
            settings.export_workers * settings.export_lanes
            < (settings.db_pool_size + settings.db_max_overflow)
            or settings.export_workers == 0
        )

    def test_a_settings_own_problem_still_names_it(
        self, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
    ):
        monkeypatch.setenv("EXPORT_LANES", "4")
        with pytest.raises(ConfigurationError, match=r"^invalid settings: EXPORT_LANES: "):
            get_settings()
