"""The business rule's names, shared by the schema, the services and the tools.

A patient has at most one primary provider per organization, enforced by this index.
(No imports: the diagnostic loads this without the ORM, to start fast.)
"""

UNIQUE_PRIMARY_INDEX = "idx_unique_primary_provider_per_patient"
