"""Values every layer reads the same way: instants, cursors and identifiers.

Each is parsed and validated here, once, below the API: the HTTP API (src/api/fields.py
wraps these in its request types), FHIR searches and the CLI all use these functions, so
a value means the same wherever it is given. Errors are ValueError with a message that
names the rule, never the value given (it may be health information).
"""

from __future__ import annotations

import datetime
import re
import uuid

# --- instants --------------------------------------------------------------------------------

# RFC 3339 (section 5.6) with its offset, from year 1900: an instant, never a local time.
# As RFC 3339 allows: any number of digits after the second, `t` and `z` in lower case,
# and a leap second (:60). Hours 00-23, minutes 00-59, an offset within +-23:59.
INSTANT_PATTERN = (
    r"^(19|[2-9][0-9])[0-9]{2}-[0-9]{2}-[0-9]{2}[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_INSTANT = re.compile(INSTANT_PATTERN)
# What a `+` offset becomes in a query string when it was not encoded: a space.
_PLUS_AS_SPACE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9:.]+ [0-9]{2}:[0-9]{2}$")
_LEAP_SECOND = re.compile(r":60(?=[.Zz+-])")
INSTANT_RULE = "must be an RFC 3339 instant with its offset, e.g. 2026-03-01T09:30:00Z"


def parse_instant(value: str) -> datetime.datetime:
    """An RFC 3339 instant, e.g. 2026-03-01T09:30:00Z; ValueError otherwise (saying why).

    Digits finer than a microsecond are dropped (PostgreSQL keeps microseconds). A leap
    second (23:59:60 UTC, as RFC 3339 writes one) is read as PostgreSQL and POSIX time
    read it, which have no 61st second: as the next minute's first second (23:59:60.5Z
    is 00:00:00.5Z of the next day); :60 anywhere else is refused."""
    if _PLUS_AS_SPACE.fullmatch(value):
        raise ValueError(
            f"{INSTANT_RULE}: its offset's `+` arrived as a space; a `+` in a URL must be "
            "sent encoded, as %2B"
        )
    if not _INSTANT.fullmatch(value):
        raise ValueError(f"{INSTANT_RULE} (hours 00-23, minutes 00-59, offset within 23:59)")
    leap = _LEAP_SECOND.search(value) is not None
    try:
        # Python 3.11+ reads `Z` and any number of digits, keeping microseconds.
        instant = datetime.datetime.fromisoformat(_LEAP_SECOND.sub(":59", value.upper()))
    except ValueError:
        raise ValueError("must be a real date and time, RFC 3339") from None
    try:
        utc = instant.astimezone(datetime.UTC)  # 9999-12-31T23:59:59-01:00 is past 9999
    except OverflowError:
        raise ValueError("must be an instant before the year 10000 (UTC)") from None
    if leap:
        if (utc.hour, utc.minute) != (23, 59):
            raise ValueError("a leap second (:60) is the last second of a UTC day, 23:59:60Z")
        if utc.year == 9999 and (utc.month, utc.day) == (12, 31):
            raise ValueError("must be an instant before the year 10000 (UTC)")
        instant += datetime.timedelta(seconds=1)
    return instant


# --- cursors -------------------------------------------------------------------------------

# Opaque to clients; inside, a position within the caller's own organization (never a
# value shared with other tenants). Every string of this form is a position, so any
# cursor the schema admits is answered with a page (perhaps empty), never an error.
_CURSOR_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CURSOR_MAX_LENGTH = 10  # 62**10 < 2**63: every cursor fits a bigint
CURSOR_PATTERN = f"^[0-9A-Za-z]{{1,{CURSOR_MAX_LENGTH}}}$"


def encode_cursor(position: int) -> str:
    digits = []
    while True:
        position, digit = divmod(position, len(_CURSOR_ALPHABET))
        digits.append(_CURSOR_ALPHABET[digit])
        if position == 0:
            return "".join(reversed(digits))


def decode_cursor(cursor: str) -> int:
    position = 0
    for char in cursor:
        position = position * len(_CURSOR_ALPHABET) + _CURSOR_ALPHABET.index(char)
    return position


# A cursor that is a patient (or any) id: 128 bits, 22 base-62 digits at most.
UUID_CURSOR_MAX_LENGTH = 22
UUID_CURSOR_PATTERN = f"^[0-9A-Za-z]{{1,{UUID_CURSOR_MAX_LENGTH}}}$"


def encode_uuid_cursor(value: uuid.UUID) -> str:
    return encode_cursor(value.int)


def decode_uuid_cursor(cursor: str) -> uuid.UUID:
    return uuid.UUID(int=decode_cursor(cursor) % (1 << 128))


# A cursor that is (an instant, an id): microseconds since 1900 in the high bits, the id
# in the low 128; 33 base-62 digits at most. Instants past year 9999 read as its end.
TIME_UUID_CURSOR_MAX_LENGTH = 33
TIME_UUID_CURSOR_PATTERN = f"^[0-9A-Za-z]{{1,{TIME_UUID_CURSOR_MAX_LENGTH}}}$"
_EPOCH = datetime.datetime(1900, 1, 1, tzinfo=datetime.UTC)
_LAST = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC)


def encode_time_uuid_cursor(at: datetime.datetime, value: uuid.UUID) -> str:
    micros = (at - _EPOCH) // datetime.timedelta(microseconds=1)
    return encode_cursor((micros << 128) | value.int)


def decode_time_uuid_cursor(cursor: str) -> tuple[datetime.datetime, uuid.UUID]:
    position = decode_cursor(cursor)
    micros, low = position >> 128, position & ((1 << 128) - 1)
    last = (_LAST - _EPOCH) // datetime.timedelta(microseconds=1)
    at = _EPOCH + datetime.timedelta(microseconds=min(micros, last))
    return at, uuid.UUID(int=low)


# --- identifiers -----------------------------------------------------------------------------

IDENTIFIER_MAX_LENGTH = 255

# An identifier's system (a URI, such as a clinic's MRN namespace) and value: printable
# text without control characters, 1 to 255 characters; the system holds no "|" (the
# separator of `identifier=system|value` searches).
IDENTIFIER_SYSTEM_PATTERN = r"^[^|\x00-\x1f\x7f]+$"
IDENTIFIER_VALUE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
IDENTIFIER_QUERY_PATTERN = r"^[^|\x00-\x1f\x7f]+\|[^\x00-\x1f\x7f]+$"


_IDENTIFIER_QUERY = re.compile(IDENTIFIER_QUERY_PATTERN)


def parse_identifier(token: str) -> tuple[str, str]:
    """`system|value` (an identifier search, /v1 and FHIR alike) into its two parts;
    ValueError unless both are given, within the identifier rules (the system holds no
    "|"; no control characters; at most IDENTIFIER_MAX_LENGTH characters each)."""
    if not _IDENTIFIER_QUERY.fullmatch(token):
        raise ValueError("must be system|value, both given, without control characters")
    system, _, value = token.partition("|")
    if len(system) > IDENTIFIER_MAX_LENGTH or len(value) > IDENTIFIER_MAX_LENGTH:
        raise ValueError(f"system and value are at most {IDENTIFIER_MAX_LENGTH} characters each")
    return system, value


NPI_PATTERN = r"^[0-9]{10}$"
_NPI = re.compile(NPI_PATTERN)


def npi_check_digit_ok(npi: str) -> bool:
    """CMS's rule: the Luhn check over the NPI prefixed with 80840 (the health industry
    card issuer prefix) holds, i.e. the tenth digit is the check digit of the first nine."""
    total = 0
    for position, char in enumerate(reversed("80840" + npi)):
        digit = int(char)
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def parse_npi(text: str) -> str:
    """An NPI: 10 digits whose last is the check digit; ValueError otherwise."""
    if not _NPI.fullmatch(text):
        raise ValueError("must be an NPI: 10 digits")
    if not npi_check_digit_ok(text):
        raise ValueError("is not an NPI: its check digit (Luhn, with the 80840 prefix) is wrong")
    return text
