"""SQLAlchemy models: they describe the tables; the migrations create them."""

from src.models.base import Base
from src.models.care_team import (
    EVENT_TYPES,
    CareTeamAssignment,
    CareTeamEvent,
    CareTeamEventSequence,
    EventType,
    RuleCheck,
)
from src.models.tenants import ApiKey, Organization, Patient, Provider
from src.primary_index import UNIQUE_PRIMARY_INDEX

__all__ = [
    "EVENT_TYPES",
    "UNIQUE_PRIMARY_INDEX",
    "ApiKey",
    "Base",
    "CareTeamAssignment",
    "CareTeamEvent",
    "CareTeamEventSequence",
    "EventType",
    "Organization",
    "Patient",
    "Provider",
    "RuleCheck",
]
