"""FHIR Bulk Data export jobs (revision 20261207_bulk_export): one row per `$export`
kick-off, from queued to completed or failed; a cancelled job is deleted. The files
themselves are in the export store (src/services/export_storage.py)."""

import datetime
import uuid

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from src.models.base import Base


class ExportJob(Base):
    """Who asked (`requester`: the key or SMART client that may read it), what (level,
    group, types, since, type filters, the request URL), its state and, once done, its
    transaction time, output files, errors and expiry."""

    __tablename__ = "export_jobs"
    __table_args__ = (
        CheckConstraint(
            "level IN ('system', 'patient', 'group') "
            "AND (group_id IS NOT NULL) = (level = 'group')",
            name="level",
        ),
        CheckConstraint("status IN ('queued', 'running', 'completed', 'failed')", name="status"),
        CheckConstraint("expires_after_s > 0", name="expires_after_s"),
        Index(None, "status", "created_at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
    requester: Mapped[str] = mapped_column(Text)
    level: Mapped[str] = mapped_column(Text)
    group_id: Mapped[uuid.UUID | None]
    types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    since: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    type_filters: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    request: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    attempts: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    heartbeat_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[str | None] = mapped_column(Text)
    transaction_time: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    output: Mapped[list[object]] = mapped_column(JSONB, server_default=text("'[]'"))
    error: Mapped[list[object]] = mapped_column(JSONB, server_default=text("'[]'"))
    expires_after_s: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
    started_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
