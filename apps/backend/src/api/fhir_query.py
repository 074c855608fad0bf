"""A FHIR search's query string, read as FHIR R4's search page defines it, into a
`Search` (src/services/fhir_search.py runs it) and what the Bundle shows.

Strict by default: a parameter this server does not declare is 400, naming it; under
`Prefer: handling=lenient` it is ignored, and the `self` link leaves it out (it shows
exactly what was applied). A modifier we do not support, or one the specification does
not allow on the parameter, is 400 in either mode (search.html: a server SHALL reject
it). Every value is checked: nothing is read as something it is not.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from src.api.fhir_resources import DEFAULT_COUNT, MAX_COUNT, FhirError
from src.api.paging import list_key
from src.services.fhir_search import (
    MAX_INCLUDED,
    PARAMETERS,
    Clause,
    DateRange,
    Param,
    Ref,
    Search,
    Sort,
    Token,
    is_mark,
)
from src.values import Cursors, UnknownCursor, identifier_part

# Result parameters (search.html 3.1.1.5) and paging; `_totalMethod=count` is what the
# fhirpy client's count() sends (an Aidbox name): read as `_total=accurate`.
RESULT = {
    "_pretty",  # whitespace only: accepted (true or false), answered compact
    "_count",
    "_cursor",
    "_format",
    "_summary",
    "_total",
    "_totalMethod",
    "_elements",
    "_sort",
    "_include",
    "_revinclude",
}
# Modifiers by parameter type (search.html 3.1.1.4, R4): those we implement; the
# specification's others are refused as not supported.
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "missing"},
    "reference": {"missing"},  # and the type modifier, one of the parameter's targets
    "date": {"missing"},
}
KNOWN_MODIFIERS = {
    "string": {"exact", "contains", "missing", "text"},
    "token": {"not", "missing", "text", "in", "not-in", "above", "below", "of-type"},
    "reference": {"missing", "identifier", "above", "below"},
    "date": {"missing"},
}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# A date or dateTime of a search: from the left, minutes with an hour, an offset with a
# time (FHIR R4's dateTime: "if hours and minutes are specified, a time zone SHALL be
# populated").
_DATE = re.compile(
    r"(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]{1,6}))?)?(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
_VALUE = re.compile(r"^[^\x00-\x1f\x7f]{1,511}$")
_COUNT = re.compile(r"^[0-9]{1,6}$")
# A query's size: each parameter is a condition on every candidate row, so a query
# string of thousands is refused, never run.
MAX_PARAMETERS = 50
MAX_VALUES = 100  # values of one parameter, separated by commas
SUMMARIES = {"true", "false", "data", "count"}
# What _include and _revinclude may name, by the searched type (source:param[:target]).
INCLUDES = {
    "CareTeam": {
        "CareTeam:participant": "Practitioner",
        "CareTeam:participant:Practitioner": "Practitioner",
        "CareTeam:patient": "Patient",
        "CareTeam:patient:Patient": "Patient",
        "CareTeam:subject": "Patient",
        "CareTeam:subject:Patient": "Patient",
    },
    "Patient": {
        "Patient:general-practitioner": "Practitioner",
        "Patient:general-practitioner:Practitioner": "Practitioner",
    },
    "Practitioner": {},
    "AuditEvent": {},
    "Group": {},
}
REVINCLUDES = {
    "AuditEvent": {},
    "CareTeam": {},
    "Group": {},
    "Patient": {
        "CareTeam:patient": "CareTeam",
        "CareTeam:patient:Patient": "CareTeam",
        "CareTeam:subject": "CareTeam",
        "CareTeam:subject:Patient": "CareTeam",
    },
    "Practitioner": {
        "CareTeam:participant": "CareTeam",
        "CareTeam:participant:Practitioner": "CareTeam",
        "Patient:general-practitioner": "Patient",
        "Patient:general-practitioner:Practitioner": "Patient",
    },
}
# The elements of each resource type (FHIR R4), for _elements: a name outside them is
# 400, never ignored.
ELEMENTS = {
    "Organization": {
        "identifier",
        "active",
        "type",
        "name",
        "alias",
        "telecom",
        "address",
        "partOf",
        "contact",
        "endpoint",
    },
    "Patient": {
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "deceased",
        "address",
        "maritalStatus",
        "multipleBirth",
        "photo",
        "contact",
        "communication",
        "generalPractitioner",
        "managingOrganization",
        "link",
    },
    "Practitioner": {
        "identifier",
        "active",
        "name",
        "telecom",
        "address",
        "gender",
        "birthDate",
        "photo",
        "qualification",
        "communication",
    },
    "AuditEvent": {
        "type",
        "subtype",
        "action",
        "period",
        "recorded",
        "outcome",
        "outcomeDesc",
        "purposeOfEvent",
        "agent",
        "source",
        "entity",
    },
    "Group": {
        "identifier",
        "active",
        "type",
        "actual",
        "code",
        "name",
        "quantity",
        "managingEntity",
        "characteristic",
        "member",
    },
    "CareTeam": {
        "identifier",
        "status",
        "category",
        "name",
        "subject",
        "encounter",
        "period",
        "participant",
        "reasonCode",
        "reasonReference",
        "managingOrganization",
        "telecom",
        "note",
    },
}
BASE_ELEMENTS = {"id", "meta", "implicitRules", "language", "text", "contained", "extension",
                 "modifierExtension"}  # fmt: skip


def invalid(message: str) -> FhirError:
    return FhirError(400, "invalid", message)


class UnknownParameter(FhirError):
    """A parameter a strict search does not understand: where the caller offers
    `Prefer: handling=lenient` (the FHIR search route), it says so in the answer."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid", message)


def not_supported(message: str) -> FhirError:
    return FhirError(400, "not-supported", message)


# FHIR R4's escapes in search values ("Escaping Search Parameters"): a backslash before
# `,` `$` `|` or `\` stands for that character.
_ESCAPED = frozenset(",$|\\")


def split(raw: str, name: str, at: str) -> list[str]:
    """`raw` split at each bare `at` (escapes kept: `\\,` stays two characters)."""
    parts = [""]
    chars = iter(raw)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in _ESCAPED:  # "" too: a backslash at the end
                raise invalid(f"{name}: a backslash escapes , $ | or \\ only (\\\\ is one)")
            parts[-1] += char + escaped
        elif char == at:
            parts.append("")
        else:
            parts[-1] += char
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def fold(text: str) -> str:
    """A string search's value as names are compared: decomposed, without its combining
    marks (accents), in lower case (src/services/fhir_search.py folds the names alike)."""
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not is_mark(c)).lower()


@dataclass
class Query:
    """A search's query string, read: the clauses, the result parameters, and what was
    applied (for the self and next links)."""

    kind: str
    base: str
    cursors: Cursors
    lenient: bool
    values: dict[str, list[str]]
    clauses: list[Clause] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    sort: list[Sort] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    total: bool = False
    summary: str = "false"
    elements: frozenset[str] | None = None
    includes: list[tuple[str, str]] = field(default_factory=list)  # (name, kind)
    revincludes: list[tuple[str, str]] = field(default_factory=list)
    after: tuple[uuid.UUID, int, int] | None = None
    since: datetime.datetime | None = None  # a sorted search's first page's time

    # --- building ---------------------------------------------------------------------

    @classmethod
    def read(
        cls,
        kind: str,
        items: list[tuple[str, str]],
        *,
        base: str,
        cursors: Cursors,
        lenient: bool,
    ) -> Query:
        values: dict[str, list[str]] = {}
        for name, value in items:
            values.setdefault(name, []).append(value)
        query = cls(kind, base, cursors, lenient, values)
        if len(items) > MAX_PARAMETERS:
            raise invalid(f"a search takes at most {MAX_PARAMETERS} parameters")
        for name, value in items:
            if not _VALUE.fullmatch(value) and name != "_cursor":
                raise invalid(f"{name[:64]}: 1 to 511 characters, no control characters")
            if name in RESULT:
                continue
            query._clause(name, value)
        query._results()
        return query

    def _unknown(self, name: str, why: str) -> None:
        if not self.lenient:
            raise UnknownParameter(f"{why}: {name[:64]}")
        self.ignored.append(name)

    def _clause(self, name: str, raw: str) -> None:
        code, colon, modifier = name.partition(":")
        if colon and not modifier:
            raise invalid(f"{name[:64]}: an empty modifier")
        if "." in code:
            return self._unknown(name, "chained search parameters are not supported")
        param = PARAMETERS[self.kind].get(code)
        if param is None:
            return self._unknown(name, f"unknown search parameter for {self.kind}")
        self._check_modifier(param, modifier, name)
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise invalid(f"{name} must be true or false")
            values: tuple[Any, ...] = (raw == "true",)
        else:
            pieces = split(raw, name, ",")
            if len(pieces) > MAX_VALUES:
                raise invalid(f"{name}: at most {MAX_VALUES} values separated by commas")
            values = tuple(self._value(param, modifier, piece) for piece in pieces)
        self.clauses.append(Clause(param, modifier, values))
        self.applied.append((name, raw))
        return None

    def _check_modifier(self, param: Param, modifier: str, name: str) -> None:
        if not modifier:
            return
        if param.type == "reference" and modifier[:1].isupper():
            if modifier not in param.targets:
                raise not_supported(
                    f"{name}: {param.name} refers to {', '.join(param.targets)} only"
                )
            return
        if modifier in MODIFIERS[param.type]:
            return
        if modifier in KNOWN_MODIFIERS[param.type]:
            raise not_supported(f"{name}: the modifier :{modifier} is not supported here")
        raise not_supported(
            f"{name}: :{modifier[:32]} is not a modifier of a {param.type} parameter"
        )

    def _value(self, param: Param, modifier: str, piece: str) -> Any:
        name = param.name
        if not piece:
            raise invalid(f"{name}: an empty value (two commas, or one at an end)")
        if param.type == "token":
            return self._token(param, piece)
        if param.type == "string":
            text = unicodedata.normalize("NFC", unescape(piece))
            if len(text) > 100 or not text.strip():
                raise invalid(f"{name} must be 1 to 100 characters")
            return text if modifier == "exact" else fold(text)
        if param.type == "reference":
            return self._reference(param, modifier, unescape(piece))
        return date_range(name, unescape(piece))

    def _token(self, param: Param, piece: str) -> Token:
        name = param.name
        parts = [unescape(p) for p in split(piece, name, "|")]
        if len(parts) > 2:
            raise invalid(f"{name}: a token has at most one | (escape a | in a value as \\|)")
        if len(parts) == 1:
            system, code = None, parts[0]
        else:
            system, code = parts
        token = Token(system, code or None)
        if not token.system and token.code is None:  # "", or "|": neither system nor code
            raise invalid(f"{name}: a token is code, system|code, |code or system|")
        if name == "identifier":
            try:
                return Token(
                    None if system is None else system and identifier_part(system, system=True),
                    None if token.code is None else identifier_part(token.code, system=False),
                )
            except ValueError as err:
                raise invalid(f"{name}: {err}") from None
        if param.codes is not None and token.code is not None and token.code not in param.codes:
            raise invalid(f"{name} must be among {', '.join(sorted(param.codes))}")
        return token

    def _reference(self, param: Param, modifier: str, text: str) -> Ref:
        name = param.name
        if text.startswith(("http://", "https://")):
            if not text.startswith(self.base + "/"):
                return Ref("", "")  # another server's resource: not one of ours
            text = text.removeprefix(self.base + "/")
        if "/_history/" in text:
            raise not_supported(f"{name}: a reference to a version is not supported")
        kind, slash, ident = text.rpartition("/")
        if not slash:
            return Ref(None, ident)
        if kind not in param.targets or (modifier and kind != modifier):
            raise invalid(
                f"{name}: a reference to a type {name} may not hold (it holds "
                f"{', '.join(param.targets)})"
            )
        return Ref(kind, ident)

    # --- result parameters ---------------------------------------------------------------

    def _one(self, name: str) -> str | None:
        given = self.values.get(name, [])
        if len(given) > 1:
            raise invalid(f"{name} is given more than once")
        return given[0] if given else None

    def _results(self) -> None:
        chosen = self._one("_format")  # checked by the router; kept in self and next links
        if chosen is not None:
            self.applied.append(("_format", chosen))
        check_pretty(self._one("_pretty"))
        count = self._one("_count")
        if count is not None:
            if not _COUNT.fullmatch(count):
                raise invalid(
                    f"_count must be a whole number from 0 (at most {MAX_COUNT} are given)"
                )
            self.count = min(int(count), MAX_COUNT)
            self.applied.append(("_count", str(self.count)))
        summary = self._one("_summary")
        if summary is not None:
            if summary not in SUMMARIES:
                raise not_supported("_summary must be true, false, data or count")
            self.summary = summary
            self.applied.append(("_summary", summary))
        total = self._one("_total")
        method = self._one("_totalMethod")
        if total is not None:
            if total not in ("none", "estimate", "accurate"):
                raise invalid("_total must be none, estimate or accurate")
            self.applied.append(("_total", total))
        if method is not None:
            if method not in ("count", "estimate"):
                raise invalid("_totalMethod must be count or estimate")
            self.applied.append(("_totalMethod", method))
        self.total = (
            total in ("estimate", "accurate")
            or method is not None
            or self.summary == "count"
            or self.count == 0
        ) and total != "none"
        if total == "none" and (self.summary == "count" or self.count == 0):
            raise invalid(
                "_total=none with _summary=count or _count=0 asks for neither entries nor a total"
            )
        if self.summary == "count":
            self.count = 0
        self._elements()
        self._sort()
        self.includes = self._includes("_include", INCLUDES[self.kind])
        self.revincludes = self._includes("_revinclude", REVINCLUDES[self.kind])

    def _elements(self) -> None:
        given = self._one("_elements")
        if given is None:
            return
        if self.summary != "false":
            raise invalid("_elements and _summary cannot be used together")
        self.elements = elements_of(self.kind, given)
        self.applied.append(("_elements", given))

    def _sort(self) -> None:
        given = self._one("_sort")
        if given is None:
            return
        params = PARAMETERS[self.kind]
        for item in given.split(","):
            code = item.removeprefix("-")
            param = params.get(code)
            if param is None or param.sort_key is None:
                sortable = sorted(n for n, p in params.items() if p.sort_key)
                raise invalid(
                    f"_sort: not a sort of {self.kind} (these are: {', '.join(sortable)})"
                )
            if any(s.param is param for s in self.sort):
                raise invalid(f"_sort: {code} is given more than once")
            self.sort.append(Sort(param, item.startswith("-")))
        self.applied.append(("_sort", given))

    def _includes(self, name: str, allowed: dict[str, str]) -> list[tuple[str, str]]:
        chosen = []
        for value in self.values.get(name, []):
            if value not in allowed:
                self._unknown(
                    name,
                    f"a value this server does not support (it supports "
                    f"{', '.join(sorted(allowed)) or 'none'}) in",
                )
                continue
            chosen.append((value, allowed[value]))
            self.applied.append((name, value))
        return chosen

    # --- paging and links ----------------------------------------------------------------

    def _list_key(self) -> str:
        """The search a cursor belongs to: its kind and every parameter applied but the
        paging (what the next link carries: under handling=lenient, what was ignored is
        in neither)."""
        given: dict[str, list[str]] = {}
        for name, value in self.applied:
            if name not in ("_cursor", "_count"):
                given.setdefault(name, []).append(value)
        return list_key(f"fhir:{self.kind}", **{n: "\x1f".join(v) for n, v in given.items()})

    def open_cursor(self) -> None:
        raw = self._one("_cursor")
        if raw is None:
            return
        kinds = (uuid.UUID, int, int, datetime.datetime)
        try:
            after, record, team, since = self.cursors.open(self._list_key(), raw, *kinds)
        except UnknownCursor as err:
            raise invalid(f"_cursor {err}") from None
        self.after = (after, record, team)  # type: ignore[assignment]
        self.since = since  # type: ignore[assignment]
        self.applied.append(("_cursor", raw))

    def search(self) -> Search:
        self.open_cursor()
        return Search(
            self.kind,
            tuple(self.clauses),
            tuple(self.sort),
            self.count,
            self.after,
            self.total,
            self.since,
        )

    def url(self, after: tuple[uuid.UUID, int, int, datetime.datetime] | None = None) -> str:
        """The search's URL: its applied parameters (for `next`: with the next cursor)."""
        params = list(self.applied)
        if after is not None:
            params = [p for p in params if p[0] != "_cursor"]
            params.append(("_cursor", self.cursors.seal(self._list_key(), *after)))
        return f"{self.base}/{self.kind}" + (f"?{urlencode(params)}" if params else "")


def check_pretty(value: str | None) -> None:
    if value not in (None, "true", "false"):
        raise invalid("_pretty must be true or false")


def elements_of(kind: str, given: str) -> frozenset[str]:
    """`_elements`: top-level elements of the type (400 for any other name)."""
    names = {n.strip() for n in given.split(",")}
    # fhirpy's elements() always adds resourceType: not an element, but in every
    # resource's JSON and always shown, so naming it asks for nothing more.
    unknown = names - ELEMENTS[kind] - BASE_ELEMENTS - {"resourceType"}
    if unknown:
        raise invalid(
            f"_elements: {len(unknown)} name(s) that are not elements of {kind} (these are: "
            f"{', '.join(sorted(ELEMENTS[kind]))})"
        )
    return frozenset(names)


def included_limit(count: int) -> None:
    if count > MAX_INCLUDED:
        raise invalid(
            f"the search would include {count} resources, more than {MAX_INCLUDED}: ask for "
            "a smaller _count"
        )


def date_range(name: str, text: str) -> DateRange:
    """A date search value: an optional prefix, then a date or dateTime, as the
    instants it covers (a date without a time: UTC days)."""
    prefix = text[:2] if text[:2] in PREFIXES else "eq"
    value = text[2:] if text[:2] in PREFIXES else text
    match = _DATE.fullmatch(value)
    if match is None:
        # Values are never repeated back (a birth date is health data).
        hint = " (a + sent unescaped arrives as a space: send %2B)" if " " in value else ""
        raise invalid(
            f"{name}: a date is [prefix]YYYY, YYYY-MM, YYYY-MM-DD or "
            "YYYY-MM-DDThh:mm[:ss[.ffffff]] with an offset (Z or +hh:mm); prefixes: "
            + ", ".join(PREFIXES)
            + hint
        )
    g = match.groupdict()
    if g["hour"] is not None and g["zone"] is None:
        raise invalid(f"{name}: a time needs its offset (Z, or +hh:mm / -hh:mm)")
    try:
        return _covered(prefix, g)
    except (ValueError, OverflowError):
        raise invalid(
            f"{name}: not a date and time of the calendar (a month, day, hour or minute out "
            "of range, or a year outside 0001 to 9998)"
        ) from None


def _covered(prefix: str, g: dict[str, str | None]) -> DateRange:
    year = int(g["year"] or 0)
    if g["hour"] is None:
        month, day = int(g["month"] or 1), int(g["day"] or 1)
        start_date = datetime.date(year, month, day)
        if g["day"] is not None:
            end_date = start_date + datetime.timedelta(days=1)
        elif g["month"] is not None:
            end_date = (start_date + datetime.timedelta(days=32)).replace(day=1)
        else:
            end_date = start_date.replace(year=year + 1)
        utc = datetime.UTC
        return DateRange(
            prefix,
            datetime.datetime.combine(start_date, datetime.time(), utc),
            datetime.datetime.combine(end_date, datetime.time(), utc),
        )
    zone = g["zone"] or "Z"
    offset = datetime.UTC
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        offset = datetime.timezone(sign * datetime.timedelta(hours=hours, minutes=minutes))
    fraction = g["fraction"] or ""
    start = datetime.datetime(
        year,
        int(g["month"] or 1),
        int(g["day"] or 1),
        int(g["hour"]),
        int(g["minute"] or 0),
        int(g["second"] or 0),
        int(fraction.ljust(6, "0") or 0),
        offset,
    )
    if g["second"] is None:
        step = datetime.timedelta(minutes=1)
    else:
        step = datetime.timedelta(microseconds=10 ** (6 - len(fraction)))
    return DateRange(prefix, start, start + step)
