"""The business rule's names, shared by the schema, the services and the tools.

A patient has at most one primary provider per organization, enforced by this index.
(No imports: the diagnostic loads this without the ORM, to start fast.)
"""

UNIQUE_PRIMARY_INDEX = "idx_unique_primary_provider_per_patient"

# Whether the index is valid: NULL when it does not exist, false when it is INVALID (a
# concurrent build that failed or was interrupted), true when it enforces the rule.
INDEX_VALID = f"""
SELECT i.indisvalid
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE c.relname = '{UNIQUE_PRIMARY_INDEX}' AND pg_table_is_visible(c.oid)
"""


def index_state(valid: bool | None) -> str:
    """ "valid", "invalid" or "missing", from what INDEX_VALID returned."""
    return "missing" if valid is None else ("valid" if valid else "invalid")
