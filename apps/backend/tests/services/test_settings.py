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
        """Each running export holds EXPORT_LANES connections and takes one more to record
        its entries: three exports of three lanes on a pool of twelve would leave none for
        the API (found by a review: a pool of EXPORT_WORKERS x EXPORT_LANES + 1 left
        the lanes one connection to share for their entries, the heartbeats and the
        API)."""
        monkeypatch.setenv("EXPORT_WORKERS", "3")
        monkeypatch.setenv("DB_POOL_SIZE", "12")
        with pytest.raises(ConfigurationError) as refused:
            get_settings()
        assert str(refused.value) == (
            "invalid settings: the exports need 13 connections, above DB_POOL_SIZE + "
            "DB_MAX_OVERFLOW (12): each of the EXPORT_WORKERS holds EXPORT_LANES, and one "
            "more to record its access log entries, and the API needs one; lower "
            "EXPORT_LANES or EXPORT_WORKERS, or raise DB_POOL_SIZE"
        )

    @pytest.mark.parametrize(
        "env",
        [
            {"EXPORT_WORKERS": "3", "DB_POOL_SIZE": "12", "EXPORT_LANES": "2"},
            {"EXPORT_WORKERS": "3", "DB_POOL_SIZE": "12", "DB_MAX_OVERFLOW": "1"},
            {"EXPORT_WORKERS": "0", "DB_POOL_SIZE": "1"},
            {"EXPORT_LANES": "1", "DB_POOL_SIZE": "4"},
            {},
        ],
        ids=["fewer-lanes", "overflow", "no-exports", "one-lane-small-pool", "defaults"],
    )
    def test_what_leaves_a_connection_is_taken(
        self, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fresh_settings: None
    ):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = get_settings()
        held = settings.export_workers * (settings.export_lanes + 1)
        assert held < settings.db_pool_size + settings.db_max_overflow

    def test_careteam_export_sizes_its_own_pool_for_its_lanes(
        self, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
    ):
        """`careteam export` runs one export and serves nothing else: its pool holds its
        lanes, one connection to record and one for the rest, whatever DB_POOL_SIZE says
        for the server (found by a review: with EXPORT_WORKERS=0 and a pool of three,
        three lanes left its entries waiting until they failed)."""
        monkeypatch.setenv("EXPORT_WORKERS", "0")
        monkeypatch.setenv("DB_POOL_SIZE", "3")
        assert get_settings().export_pool_size == 5
        monkeypatch.setenv("DB_POOL_SIZE", "10")
        get_settings.cache_clear()
        assert get_settings().export_pool_size == 10

    def test_a_settings_own_problem_still_names_it(
        self, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
    ):
        monkeypatch.setenv("EXPORT_LANES", "4")
        with pytest.raises(ConfigurationError, match=r"^invalid settings: EXPORT_LANES: "):
            get_settings()
