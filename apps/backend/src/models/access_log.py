"""The access log: who read or changed which patient's data (revision 20261207_access_log).

Append-only to the application role (INSERT and SELECT only); the owner prunes it. An
entry holds ids, a route template, parameter names and counts, never a value a client
sent (a name searched for, a birth date, a note).
"""

import datetime
import uuid

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from src.models.base import Base


class AccessLogEntry(Base):
    """One request to a route that reads or changes patient data: who asked (an API key,
    or a SMART client; or, for an operator's command, who ran it: revision
    20261207_access_log_operator), the route and FHIR interaction, the query parameters'
    names, the status answered, a search's result count, and the patients it named."""

    __tablename__ = "access_log"
    __table_args__ = (
        CheckConstraint(
            "(operator IS NULL AND (api_key_id IS NOT NULL OR client_id IS NOT NULL)) "
            "OR (operator IS NOT NULL AND api_key_id IS NULL AND client_id IS NULL "
            "AND length(operator) BETWEEN 1 AND 200)",
            name="who_or_operator",
        ),
        CheckConstraint("action IN ('C', 'R', 'U', 'D', 'E')", name="action"),
        CheckConstraint("status BETWEEN 100 AND 599", name="status"),
        CheckConstraint("result_count >= 0", name="result_count"),
        Index(None, "organization_id", "recorded_at", "id"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    recorded_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    api_key_id: Mapped[uuid.UUID | None]
    client_id: Mapped[uuid.UUID | None]
    operator: Mapped[str | None] = mapped_column(Text)
    route: Mapped[str] = mapped_column(Text)
    interaction: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    parameters: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    status: Mapped[int] = mapped_column(BigInteger)
    result_count: Mapped[int | None] = mapped_column(BigInteger)
    patient_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)), server_default=text("'{}'")
    )


class AccessLogPatient(Base):
    """A patient an entry names: the index "which requests touched this patient" is read
    from (a btree on plain columns, usable under row-level security)."""

    __tablename__ = "access_log_patients"

    organization_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    recorded_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), primary_key=True
    )
    entry_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
