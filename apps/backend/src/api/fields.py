"""The rules of request fields, each stated once: the validator and the OpenAPI schema are
built from the same definition, so the document says exactly what the server accepts.

- A person's name is text a person could have: 1 to 100 characters, at least one letter,
  no space at either end, and only characters of the Unicode categories letters (L),
  marks (M), numbers (N), punctuation (P), symbols (S) and space separators (Zs). Control
  and format characters (Cc, Cf: U+0085, U+202E bidi override, U+200B ...), surrogates
  (Cs), private use (Co), unassigned code points (Cn, U+FFFF) and line or paragraph
  separators (Zl, Zp: U+2028) are refused. It is stored in NFC.
- A birth date is a calendar date written YYYY-MM-DD, from 1900-01-01 to today (UTC).
  Numbers, timestamps and other date forms are refused.

The name rule is also written as a regular expression (character classes built from this
Python's Unicode database), published once in the OpenAPI document as the
`PersonName` schema; the date rule's pattern names today's date, so the document is
rebuilt when the date changes (see src/api/openapi.py).
"""

from __future__ import annotations

import datetime
import functools
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, StringConstraints, WithJsonSchema

from src.scopes import InvalidScope, parse_scope
from src.values import (
    IDENTIFIER_MAX_LENGTH,
    INSTANT_PATTERN,
    INSTANT_RULE,
    NPI_PATTERN,
    UUID_RULE,
    edge_char,
    identifier_part,
    is_uuid_text,
    parse_identifier,
    parse_instant,
    parse_npi,
    refused_char,
    text_char,
)

NAME_MAX_LENGTH = 100
OLDEST_BIRTH_DATE = datetime.date(1900, 1, 1)

# --- names ---------------------------------------------------------------------------------

# A name's characters are text's (src/values.py: text_char, edge_char).


def _letter(char: str) -> bool:
    return unicodedata.category(char)[0] == "L"


def _ranges(predicate: Callable[[str], bool]) -> Iterator[tuple[int, int]]:
    start = None
    for code in range(0x110000):
        if predicate(chr(code)):
            if start is None:
                start = code
        elif start is not None:
            yield start, code - 1
            start = None
    if start is not None:
        yield start, 0x10FFFF


def _literal(code: int) -> str:
    char = chr(code)
    return "\\" + char if char in "\\]^-[" else char


def _character_class(predicate: Callable[[str], bool]) -> str:
    """A regex class of every code point the predicate admits, as literal characters (so
    it reads the same in Python's re and in ECMA-262 with the u flag)."""
    parts = (
        _literal(low) if low == high else f"{_literal(low)}-{_literal(high)}"
        for low, high in _ranges(predicate)
    )
    return "[" + "".join(parts) + "]"


@functools.cache
def name_pattern() -> str:
    """The name rule as one anchored regex: an optional run that starts with a non-space,
    then a letter, then an optional run that ends with a non-space."""
    allowed, edge, letter = (_character_class(p) for p in (text_char, edge_char, _letter))
    return f"^(?:{edge}{allowed}*)?{letter}(?:{allowed}*{edge})?$"


def check_person_name(value: str) -> str:
    """The value in NFC, or ValueError saying which part of the rule it breaks (by code
    point, never by quoting the name)."""
    problem = refused_char(value, in_what=" in a name")
    if problem:
        raise ValueError(problem)
    if not edge_char(value[0]) or not edge_char(value[-1]):
        raise ValueError("must not start or end with a space")
    if not any(_letter(char) for char in value):
        raise ValueError("must contain at least one letter")
    return unicodedata.normalize("NFC", value)


PERSON_NAME_SCHEMA_NAME = "PersonName"
# Stands in a model's schema for a shared one; src/api/openapi.py turns it into a $ref.
SHARED_SCHEMA_MARK = "x-careteam-shared-schema"


def person_name_schema() -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": NAME_MAX_LENGTH,
        "pattern": name_pattern(),
        "description": (
            "A person's name: 1 to 100 characters, at least one letter, no space at either "
            "end; letters, marks, numbers, punctuation, symbols and spaces only (no control, "
            "format, unassigned, private-use or line/paragraph separator characters). "
            "Stored in Unicode NFC."
        ),
    }


PersonName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX_LENGTH),
    AfterValidator(check_person_name),
    WithJsonSchema({SHARED_SCHEMA_MARK: PERSON_NAME_SCHEMA_NAME}),
]

# --- birth dates -----------------------------------------------------------------------------

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _date_string(value: object) -> datetime.date:
    """Only the YYYY-MM-DD form: never a number or a timestamp read as one."""
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a calendar date written YYYY-MM-DD, for example 1984-02-29")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a real calendar date, YYYY-MM-DD") from None


def _plausible_birth_date(value: datetime.date) -> datetime.date:
    if value > today():
        raise ValueError("date of birth must not be in the future")
    if value < OLDEST_BIRTH_DATE:
        raise ValueError(f"date of birth must not be before {OLDEST_BIRTH_DATE.isoformat()}")
    return value


def _alternatives(values: Iterator[str]) -> str:
    return "(?:" + "|".join(values) + ")"


def _days(last: int) -> str:
    return _alternatives(f"{d:02d}" for d in range(1, last + 1))


def _month_days(year: int, month: int) -> int:
    following = datetime.date(year + month // 12, month % 12 + 1, 1)
    return (following - datetime.timedelta(days=1)).day


@functools.cache
def birth_date_pattern(until: datetime.date) -> str:
    """Every real date from OLDEST_BIRTH_DATE to `until`, as one anchored regex: the
    OpenAPI document can then state the range and the calendar exactly."""
    common = _alternatives(
        f"{m:02d}-{_days(_month_days(2001, m))}" for m in range(1, 13)
    )  # 2001: not a leap year
    leap_years = [y for y in range(OLDEST_BIRTH_DATE.year, until.year) if _month_days(y, 2) == 29]
    whole_years = f"{_alternatives(str(y) for y in range(OLDEST_BIRTH_DATE.year, until.year))}"
    parts = []
    if until.year > OLDEST_BIRTH_DATE.year:
        parts.append(f"{whole_years}-{common}")
        if leap_years:
            parts.append(f"{_alternatives(str(y) for y in leap_years)}-02-29")
    this_year = [f"{m:02d}-{_days(_month_days(until.year, m))}" for m in range(1, until.month)] + [
        f"{until.month:02d}-{_days(until.day)}"
    ]
    parts.append(f"{until.year}-{_alternatives(iter(this_year))}")
    return "^" + _alternatives(iter(parts)) + "$"


def birth_date_schema(until: datetime.date) -> dict[str, Any]:
    return {
        "type": "string",
        "format": "date",
        "pattern": birth_date_pattern(until),
        "description": (
            f"Date of birth, YYYY-MM-DD, from {OLDEST_BIRTH_DATE.isoformat()} to today (UTC)."
        ),
    }


BIRTH_DATE_SCHEMA_NAME = "BirthDate"

BirthDate = Annotated[
    datetime.date,
    BeforeValidator(_date_string),
    AfterValidator(_plausible_birth_date),
    WithJsonSchema({SHARED_SCHEMA_MARK: BIRTH_DATE_SCHEMA_NAME}),
]


def shared_schemas() -> dict[str, dict[str, Any]]:
    """The field schemas the API's models refer to, as of today."""
    return {
        PERSON_NAME_SCHEMA_NAME: person_name_schema(),
        BIRTH_DATE_SCHEMA_NAME: birth_date_schema(today()),
        IDENTIFIER_SYSTEM_SCHEMA_NAME: identifier_schema(system=True),
        IDENTIFIER_VALUE_SCHEMA_NAME: identifier_schema(system=False),
        CREDENTIAL_NAME_SCHEMA_NAME: credential_name_schema(),
    }


# --- instants and notes --------------------------------------------------------------------


def _instant_string(value: object) -> datetime.datetime:
    if not isinstance(value, str):
        raise ValueError(INSTANT_RULE)
    return parse_instant(value)


Instant = Annotated[
    datetime.datetime,
    BeforeValidator(_instant_string),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": INSTANT_PATTERN,
            "description": (
                "An RFC 3339 instant with its offset (Z or +hh:mm), from 1900; digits "
                "finer than a microsecond are dropped"
            ),
        }
    ),
]

NOTE_PATTERN = "^[^\\x00]*$"  # any text PostgreSQL can store (no NUL)


def _json_integer(value: object) -> object:
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


# A JSON integer: 1500 or 1500.0 (JSON Schema counts both), never "1500" or true. Put it
# after an int's Field constraints (`Annotated[int, Field(ge=0), JSON_INTEGER]`), so
# that they stay in its schema.
JSON_INTEGER = BeforeValidator(_json_integer)


# --- NPIs and identifiers ------------------------------------------------------------------


def _valid_npi(value: str) -> str:
    return parse_npi(value)


Npi = Annotated[
    str,
    StringConstraints(pattern=NPI_PATTERN),
    AfterValidator(_valid_npi),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": NPI_PATTERN,
            "description": "A 10-digit NPI whose last digit is its check digit (Luhn over "
            "80840 and the first nine digits, as CMS publishes it)",
            "examples": ["1234567893"],
        }
    ),
]


@functools.cache
def identifier_pattern(*, system: bool) -> str:
    """The identifier rule (values.identifier_part) as one anchored regex: text
    characters, no space at either end, no "|" in a system."""

    def pipe_free(predicate: Callable[[str], bool]) -> Callable[[str], bool]:
        return lambda char: predicate(char) and (not system or char != "|")

    allowed, edge = (_character_class(pipe_free(p)) for p in (text_char, edge_char))
    return f"{edge}(?:{allowed}*{edge})?"


def identifier_schema(*, system: bool) -> dict[str, Any]:
    what = "system (a URI, e.g. of an MRN's namespace; no `|`)" if system else "value"
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": IDENTIFIER_MAX_LENGTH,
        "pattern": f"^{identifier_pattern(system=system)}$",
        "description": (
            f"An identifier's {what}: 1 to {IDENTIFIER_MAX_LENGTH} characters, no space at "
            "either end; letters, marks, numbers, punctuation, symbols and spaces only (no "
            "control, format, unassigned, private-use or line/paragraph separator "
            "characters). Stored and compared in Unicode NFC."
        ),
    }


def identifier_query_pattern() -> str:
    """`system|value`, as an identifier search takes it."""
    return f"^{identifier_pattern(system=True)}\\|{identifier_pattern(system=False)}$"


def _identifier_search(token: str) -> str:
    """The search as stored identifiers are (NFC); parse_identifier's ValueError says
    which part is wrong, and why."""
    return "|".join(parse_identifier(token))


# An identifier search, `system|value`: refused with parse_identifier's reason (the
# pattern it publishes is some 12,000 characters, no message to quote). Its value is
# the search in stored form, whose first "|" separates the two (a system holds none).
IdentifierSearch = Annotated[
    str,
    StringConstraints(max_length=2 * IDENTIFIER_MAX_LENGTH + 1),
    AfterValidator(_identifier_search),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 2 * IDENTIFIER_MAX_LENGTH + 1,
            "pattern": identifier_query_pattern(),
        }
    ),
]


IDENTIFIER_SYSTEM_SCHEMA_NAME = "IdentifierSystem"
IDENTIFIER_VALUE_SCHEMA_NAME = "IdentifierValue"

IdentifierSystem = Annotated[
    str,
    StringConstraints(min_length=1, max_length=IDENTIFIER_MAX_LENGTH),
    AfterValidator(lambda text: identifier_part(text, system=True)),
    WithJsonSchema({SHARED_SCHEMA_MARK: IDENTIFIER_SYSTEM_SCHEMA_NAME}),
]
IdentifierValue = Annotated[
    str,
    StringConstraints(min_length=1, max_length=IDENTIFIER_MAX_LENGTH),
    AfterValidator(lambda text: identifier_part(text, system=False)),
    WithJsonSchema({SHARED_SCHEMA_MARK: IDENTIFIER_VALUE_SCHEMA_NAME}),
]


# --- ids -------------------------------------------------------------------------------------


def _uuid_text(value: object) -> object:
    if not is_uuid_text(value):
        raise ValueError(UUID_RULE)
    return value


# An id, in a path or a body: 8-4-4-4-12 only (pydantic alone also reads it without
# hyphens, in braces or as a URN).
Uuid = Annotated[
    uuid.UUID,
    BeforeValidator(_uuid_text),
    WithJsonSchema({"type": "string", "format": "uuid"}),
]


# --- credentials (keys and SMART clients) ---------------------------------------------------

CREDENTIAL_NAME_MAX_LENGTH = 200
CREDENTIAL_NAME_SCHEMA_NAME = "CredentialName"


def _credential_name(text: str) -> str:
    """A key's or a client's name: what it is for, as identifier values are written (1
    to 200 characters of text, no space at either end: refused, not trimmed), in NFC."""
    problem = refused_char(text)
    if problem:
        raise ValueError(problem)
    if not text or not edge_char(text[0]) or not edge_char(text[-1]):
        raise ValueError("must not be blank, nor start or end with a space")
    stored = unicodedata.normalize("NFC", text)
    if len(stored) > CREDENTIAL_NAME_MAX_LENGTH:
        raise ValueError(f"must be at most {CREDENTIAL_NAME_MAX_LENGTH} characters (in NFC)")
    return stored


def credential_name_schema() -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": CREDENTIAL_NAME_MAX_LENGTH,
        "pattern": f"^{identifier_pattern(system=False)}$",
        "description": (
            f"What the key or client is for: 1 to {CREDENTIAL_NAME_MAX_LENGTH} characters, no "
            "space at either end, of the characters an identifier may hold. A label, not an "
            "id: two may have the same name (a key made to replace another, say)."
        ),
    }


CredentialName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=CREDENTIAL_NAME_MAX_LENGTH),
    AfterValidator(_credential_name),
    WithJsonSchema({SHARED_SCHEMA_MARK: CREDENTIAL_NAME_SCHEMA_NAME}),
]

SCOPE_MAX_LENGTH = 100
SCOPE_PATTERN = (
    r"^(careteam/admin|system/(\*|CareTeam|Patient|Practitioner|Organization)\."
    r"(cr?u?d?s?|ru?d?s?|ud?s?|ds?|s|read|write|\*))$"
)


def _scope(text: str) -> str:
    try:
        return parse_scope(text)
    except InvalidScope as err:
        raise ValueError(str(err)) from None


# A scope a key or a client is given: SMART v2 (system/CareTeam.rs) or v1 (system/*.read)
# syntax, or careteam/admin; read as src/scopes.py reads it, into its v2 form.
Scope = Annotated[
    str,
    StringConstraints(max_length=SCOPE_MAX_LENGTH),
    AfterValidator(_scope),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": SCOPE_MAX_LENGTH,
            "pattern": SCOPE_PATTERN,
            "description": (
                "system/<type>.<permissions> (type CareTeam, Patient, Practitioner, "
                "Organization or *; permissions one or more of c, r, u, d, s in that order, "
                "or the v1 read, write, *), or careteam/admin"
            ),
            "examples": ["system/CareTeam.rs", "system/*.cruds", "careteam/admin"],
        }
    ),
]
