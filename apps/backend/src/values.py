"""Values every layer reads the same way: instants, cursors and identifiers.

Each is parsed and validated here, once, below the API: the HTTP API (src/api/fields.py
wraps these in its request types), FHIR searches and the CLI all use these functions, so
a value means the same wherever it is given. Errors are ValueError with a message that
names the rule, never the value given (it may be health information).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import re
import unicodedata
import uuid
from dataclasses import dataclass

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
# A UUID as RFC 9562 writes it: 8-4-4-4-12 hexadecimal digits (either case on input).
# Python's and pydantic's readers also take it without hyphens, in braces or as a URN:
# an id written another way is refused, never read as one.
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)
UUID_RULE = "must be a UUID (8-4-4-4-12 hexadecimal digits)"


def is_uuid_text(value: object) -> bool:
    """Whether `value` is a UUID written 8-4-4-4-12 (any case)."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


INSTANT_RULE = (
    "must be an RFC 3339 instant with its offset, from the year 1900, e.g. 2026-03-01T09:30:00Z"
)


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

# A cursor is opaque to clients: a position in one list of one organization, sealed with
# the server's key (HMAC-SHA256, `careteam_secrets`), so that a cursor is read only by
# the list and the organization it was issued for. Another organization's cursor,
# another list's, a forged one, or one of the release before is UnknownCursor (422
# invalid_cursor), never read as a position: a position read wrongly skips rows silently.
CURSOR_MAX_LENGTH = 400
CURSOR_PATTERN = f"^[A-Za-z0-9_-]{{1,{CURSOR_MAX_LENGTH}}}$"
_TAG_BYTES = 16
_SEPARATOR = "\x1f"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
Position = int | uuid.UUID | datetime.datetime


class UnknownCursor(ValueError):
    """A cursor this server did not issue for this organization and this list."""

    def __init__(self) -> None:
        super().__init__(
            "is not a cursor this server gave for this list: a cursor belongs to one "
            "organization and one list (and those of the release before are not read: "
            "start the list again)"
        )


def _text(part: Position) -> str:
    if isinstance(part, datetime.datetime):
        return str((part - _EPOCH) // datetime.timedelta(microseconds=1))
    if isinstance(part, uuid.UUID):
        return part.hex
    return str(part)


def _part(text: str, kind: type[Position]) -> Position:
    if kind is datetime.datetime:
        return _EPOCH + datetime.timedelta(microseconds=int(text))
    if kind is uuid.UUID:
        return uuid.UUID(hex=text)
    return int(text)


@dataclass(frozen=True)
class Cursors:
    """The cursors of one organization: `seal` a position of a list, `open` a cursor of
    that list. `secret`: the server's cursor key; `list_key`: what names the list (its
    kind, the record it belongs to, its filters)."""

    secret: bytes
    organization_id: uuid.UUID

    def _tag(self, list_key: str, payload: bytes) -> bytes:
        message = b"careteam-cursor:1\x00" + self.organization_id.bytes
        message += list_key.encode() + b"\x00" + payload
        return hmac.new(self.secret, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def seal(self, list_key: str, *position: Position) -> str:
        payload = _SEPARATOR.join(_text(part) for part in position).encode()
        token = payload + self._tag(list_key, payload)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode()

    def open(self, list_key: str, cursor: str, *kinds: type[Position]) -> tuple[Position, ...]:
        """The position sealed in `cursor` for `list_key`, as `kinds`; UnknownCursor if
        this organization's list did not issue it."""
        try:
            token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (ValueError, binascii.Error):
            raise UnknownCursor() from None
        payload, tag = token[:-_TAG_BYTES], token[-_TAG_BYTES:]
        if len(token) <= _TAG_BYTES or not hmac.compare_digest(tag, self._tag(list_key, payload)):
            raise UnknownCursor()
        parts = payload.decode().split(_SEPARATOR)
        if len(parts) != len(kinds):
            raise UnknownCursor()
        try:
            return tuple(_part(text, kind) for text, kind in zip(parts, kinds, strict=True))
        except (ValueError, OverflowError):
            raise UnknownCursor() from None


# --- text: identifiers (and names, src/api/fields.py) --------------------------------------

# What text people and systems give may hold: letters, marks, numbers, punctuation and
# symbols (Unicode categories L, M, N, P, S), and space separators (Zs) inside it, never
# at either end. Control, format, surrogate, private-use and unassigned characters (Cc,
# Cf, Cs, Co, Cn: C1 controls such as U+0085 and U+009B included) and line or paragraph
# separators (Zl, Zp) are refused: they are invisible, and two values that look the same
# must be the same.
_TEXT_CATEGORIES = frozenset("LMNPS")


def text_char(char: str) -> bool:
    """May be part of a name or an identifier."""
    category = unicodedata.category(char)
    return category[0] in _TEXT_CATEGORIES or category == "Zs"


def edge_char(char: str) -> bool:
    """May start or end a name or an identifier: a text character that is not a space."""
    return unicodedata.category(char)[0] in _TEXT_CATEGORIES


def refused_char(text: str, in_what: str = "") -> str | None:
    """Why `text` holds a character it may not (by code point, never quoting it);
    `in_what` (" in a name") says where."""
    for char in text:
        if not text_char(char):
            return (
                f"must not contain U+{ord(char):04X} ({unicodedata.category(char)}: control, "
                "format, unassigned, private-use or line/paragraph separator characters are "
                f"not allowed{in_what})"
            )
    return None


IDENTIFIER_MAX_LENGTH = 255


def identifier_part(text: str, *, system: bool) -> str:
    """An identifier's system (`system`) or value, as stored and compared: in Unicode NFC,
    so that the composed and decomposed spellings of "José" are one identifier. The rule
    (ValueError saying which part it breaks): 1 to IDENTIFIER_MAX_LENGTH characters of
    text (refused_char), no space at either end (so that "MRN-x" and "MRN-x " are not two
    identifiers: the second is refused, not trimmed), and no "|" in a system (the
    separator of `system|value` searches)."""
    problem = refused_char(text)
    if problem:
        raise ValueError(problem)
    if system and "|" in text:
        raise ValueError('must not contain "|" (it separates system|value in a search)')
    if not text or not edge_char(text[0]) or not edge_char(text[-1]):
        raise ValueError("must not be blank, nor start or end with a space")
    stored = unicodedata.normalize("NFC", text)
    if len(stored) > IDENTIFIER_MAX_LENGTH:
        raise ValueError(f"must be at most {IDENTIFIER_MAX_LENGTH} characters (in NFC)")
    return stored


def parse_identifier(token: str) -> tuple[str, str]:
    """`system|value` (an identifier search on /v1) into its two parts, each as
    identifier_part reads it; ValueError unless both are given and valid."""
    system, bar, value = token.partition("|")
    if not bar:
        raise ValueError("must be system|value")
    return identifier_parts(system, value)


def identifier_parts(system: str, value: str) -> tuple[str, str]:
    """An identifier's system and value (of a search, /v1 and FHIR alike), each as
    identifier_part reads it; ValueError saying which is wrong."""
    parts = []
    for part, is_system in ((system, True), (value, False)):
        try:
            parts.append(identifier_part(part, system=is_system))
        except ValueError as err:
            what = "system" if is_system else "value"
            raise ValueError(f"must be system|value, and its {what} {err}") from None
    return parts[0], parts[1]


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
