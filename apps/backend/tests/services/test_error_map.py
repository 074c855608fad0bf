"""The one error map: the SQLSTATEs the database code raises (sql/errcodes.csv), the
domain errors they become, and the answers those get on /v1 and FHIR."""

from __future__ import annotations

import csv
import re
import uuid

import pytest

from src.api.errors import UNEXPECTED, answer_of
from src.database_code import SQL_DIR
from src.services import errors
from src.services.errors import DATABASE_ERRORS, ERRCODES_FILE, Subject, from_database

RAISED = re.compile(r"ERRCODE\s*=\s*'([0-9A-Z]{5})'")


def raised_in_sql() -> dict[str, set[str]]:
    """Each SQLSTATE a file under sql/ raises, and the files raising it."""
    found: dict[str, set[str]] = {}
    for path in SQL_DIR.rglob("*.sql"):
        for code in RAISED.findall(path.read_text(encoding="utf-8")):
            found.setdefault(code, set()).add(str(path.relative_to(SQL_DIR)))
    return found


class TestTheList:
    def test_every_sqlstate_the_sql_raises_is_listed(self):
        raised = raised_in_sql()
        assert raised, "the SQL files raise errors of their own"
        unlisted = {code: files for code, files in raised.items() if code not in DATABASE_ERRORS}
        assert not unlisted, f"raised in sql/ but not in sql/errcodes.csv: {unlisted}"

    def test_every_listed_sqlstate_is_raised_somewhere(self):
        unused = set(DATABASE_ERRORS) - set(raised_in_sql())
        assert not unused, f"listed in sql/errcodes.csv but raised by no file: {unused}"

    def test_each_row_names_a_domain_error_and_says_what_it_means(self):
        with ERRCODES_FILE.open(newline="", encoding="utf-8") as listing:
            rows = list(csv.DictReader(listing))
        assert [r["sqlstate"] for r in rows] == sorted({r["sqlstate"] for r in rows})
        for row in rows:
            assert re.fullmatch(r"CT[0-9]{3}", row["sqlstate"]), row
            assert getattr(errors, row["domain_error"]) is DATABASE_ERRORS[row["sqlstate"]]
            assert row["meaning"].strip(), row


class TestFromTheDatabaseToAnAnswer:
    @pytest.mark.parametrize("sqlstate", sorted(DATABASE_ERRORS))
    def test_each_becomes_its_domain_error_naming_the_subject(self, sqlstate: str):
        patient, provider = uuid.uuid4(), uuid.uuid4()
        subject = Subject(patient_id=patient, provider_id=provider, provider_field="to_provider_id")
        error = from_database(sqlstate, "3 of 3", subject)
        assert type(error) is DATABASE_ERRORS[sqlstate]
        assert answer_of(type(error)) is not UNEXPECTED
        if sqlstate not in ("CT007", "CT009", "CT010", "CT011", "CT012"):  # not about the subject
            assert str(provider) in error.message or str(patient) in error.message
        if isinstance(error, errors.InvalidArgument):
            assert error.field == "to_provider_id"

    def test_a_transfer_batch_error_names_the_target_provider_not_a_patient(self):
        """panel_service passed the target provider as the patient id: the error's
        Subject now names the provider only."""
        target = uuid.uuid4()
        error = from_database("CT003", "", Subject(provider_id=target))
        assert error is not None
        assert error.message == f"provider {target} is inactive and cannot join a care team"

    def test_other_sqlstates_are_not_ours(self):
        assert from_database("23505", "", Subject()) is None
        assert from_database(None, None, Subject()) is None
