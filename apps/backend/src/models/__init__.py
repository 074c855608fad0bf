"""SQLAlchemy models: they describe the tables; the migrations create them."""

from src.models.access_log import AccessLogEntry, AccessLogPatient
from src.models.base import Base
from src.models.care_team import (
    EVENT_TYPES,
    NOTE_MAX_LENGTH,
    CareTeamAssignment,
    CareTeamEvent,
    CareTeamEventSequence,
    CareTeamPeriod,
    ChangeReason,
    EventType,
    PeriodRole,
    RuleCheck,
    Secret,
)
from src.models.exports import ExportJob
from src.models.records import (
    IdempotencyKey,
    PatientIdentifier,
    RecordAction,
    RecordChange,
    RecordType,
)
from src.models.tenants import (
    ApiKey,
    Gender,
    Organization,
    Patient,
    Provider,
    SmartClient,
    SmartClientAssertion,
)
from src.primary_index import UNIQUE_PRIMARY_INDEX

__all__ = [
    "EVENT_TYPES",
    "NOTE_MAX_LENGTH",
    "UNIQUE_PRIMARY_INDEX",
    "AccessLogEntry",
    "AccessLogPatient",
    "ApiKey",
    "Base",
    "CareTeamAssignment",
    "CareTeamEvent",
    "CareTeamEventSequence",
    "CareTeamPeriod",
    "ChangeReason",
    "EventType",
    "ExportJob",
    "Gender",
    "IdempotencyKey",
    "Organization",
    "Patient",
    "PatientIdentifier",
    "PeriodRole",
    "Provider",
    "RecordAction",
    "RecordChange",
    "RecordType",
    "RuleCheck",
    "Secret",
    "SmartClient",
    "SmartClientAssertion",
]
