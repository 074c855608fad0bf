"""Two FHIR clients nobody on the team wrote, used as their own documentation shows,
against a real `careteam serve`: fhirpy (async, dict-like resources) and SMART on FHIR's
fhirclient (sync, strict R4 models that refuse any element R4 does not define).

Each test makes its own organization (the `tenant` fixture: a key the live server
reads from the same database), so every count and total below is exact."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from fhirclient.client import FHIRClient
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.careteam import CareTeam
from fhirclient.models.fhirsearch import FHIRSearch
from fhirclient.models.operationoutcome import OperationOutcome
from fhirclient.models.organization import Organization
from fhirclient.models.patient import Patient
from fhirclient.models.practitioner import Practitioner
from fhirclient.server import FHIRNotFoundException, FHIRServer, FHIRUnauthorizedException
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from tests.helpers import LiveApi, Tenant, http_json, npi

PRIMARY_CARE = "453231000124104"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"


@dataclass
class Clinic:
    """One organization on the live server, written to through /v1 as its users do."""

    base_url: str
    key: str
    organization_id: str

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir/R4"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = http_json(method, self.base_url + path, body, key=self.key)
        assert status in (200, 201, 204), (method, path, status, answer)
        return answer

    def patient(self, **overrides: Any) -> str:
        body = {"first_name": "Alice", "last_name": "Example", "dob": "1984-02-29", **overrides}
        return str(self.call("POST", "/v1/patients", body)["id"])

    def provider(self, **overrides: Any) -> str:
        body = {"first_name": "Grace", "last_name": "Doctor", **overrides}
        return str(self.call("POST", "/v1/providers", body)["id"])

    def team(self, patient: str, primary: str, *secondaries: str) -> None:
        """`primary` the primary provider, `secondaries` the other members."""
        url = f"/v1/patients/{patient}/care-team"
        self.call("PUT", f"{url}/primary", {"provider_id": primary})
        for other in secondaries:
            self.call("POST", f"{url}/members", {"provider_id": other})

    def leave(self, patient: str, provider: str) -> None:
        self.call("DELETE", f"/v1/patients/{patient}/care-team/members/{provider}")


@pytest.fixture
def clinic(live_api: LiveApi, tenant: Tenant) -> Clinic:
    return Clinic(live_api.base_url, tenant.key, str(tenant.organization_id))


@pytest.fixture
def fhirpy_client(clinic: Clinic) -> AsyncFHIRClient:
    return AsyncFHIRClient(clinic.fhir_base, authorization=f"Bearer {clinic.key}")


def smart_client(clinic: Clinic) -> FHIRClient:
    """fhirclient holding an access token already, as a restored state gives it one:
    its OAuth2 auth then signs every request `Authorization: Bearer <token>`.

    (Reading `server.capabilityStatement` would replace that auth with the one the
    CapabilityStatement's `rest.security` describes, SMART's oauth-uris, for the App
    Launch flow fhirclient knows (this server issues tokens to Backend Services only:
    tests/api/test_smart.py), and drop the header: these tests read /metadata as a plain
    resource instead.)"""
    return FHIRClient(
        state={
            "app_id": "careteam-tests",
            "server": {
                # A state's base is taken as it is: without the slash FHIRServer.__init__
                # adds to a `base_uri`, urljoin would drop the last segment (R4).
                "base_uri": clinic.fhir_base + "/",
                "auth_type": "oauth2",
                "auth": {"access_token": clinic.key},
            },
        }
    )


@pytest.fixture
def smart(clinic: Clinic) -> Iterator[FHIRServer]:
    server: FHIRServer = smart_client(clinic).server
    yield server
    server.session.close()


def today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


# --- fhirpy ------------------------------------------------------------------------------


class TestFhirpyCount:
    async def test_count_sends_count_0_and_reads_the_real_total(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        """count() asks `_count=0&_totalMethod=count` and reads Bundle.total."""
        for family in ("Lovelace", "Lovelace", "Lovelace", "Hopper"):
            clinic.patient(last_name=family)
        provider = clinic.provider()
        patients = fhirpy_client.resources("Patient")
        assert await patients.count() == 4
        assert await patients.search(family="Lovelace").count() == 3
        assert await patients.search(family="Nobody").count() == 0
        teams = fhirpy_client.resources("CareTeam")
        assert await teams.count() == 0
        for _ in range(3):
            clinic.team(clinic.patient(), provider)
        assert await teams.search(participant=f"Practitioner/{provider}").count() == 3
        # The total counts every match, not the one page a search would show.
        assert await patients.limit(2).count() == 7

    async def test_a_search_asking_for_no_entries_has_the_total_and_no_entry(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        for _ in range(3):
            clinic.patient()
        bundle = await fhirpy_client.resources("Patient").limit(0).fetch_raw()
        assert bundle["total"] == 3 and "entry" not in bundle
        summary = await fhirpy_client.resources("Patient").search(_summary="count").fetch_raw()
        assert summary["total"] == 3 and "entry" not in summary


class TestFhirpyDates:
    async def test_birthdate_ranges_with_ge_and_le(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        born = {day: clinic.patient(dob=day) for day in ("1960-05-01", "1970-01-02", "1980-12-31")}
        patients = fhirpy_client.resources("Patient")

        async def found(**params: Any) -> list[str]:
            return sorted(p["id"] for p in await patients.search(**params).fetch_all())

        assert await found(birthdate__ge="1965", birthdate__le="1975") == [born["1970-01-02"]]
        assert await found(birthdate__ge="1970-01-02") == sorted(
            [born["1970-01-02"], born["1980-12-31"]]
        )
        assert await found(birthdate__le="1970-01") == sorted(
            [born["1960-05-01"], born["1970-01-02"]]
        )
        assert await found(birthdate__gt="1980-12-31") == []
        # fhirpy writes a datetime.date as YYYY-MM-DD.
        assert await found(
            birthdate__ge=datetime.date(1960, 5, 1), birthdate__lt=datetime.date(1970, 1, 2)
        ) == [born["1960-05-01"]]
        assert await found(birthdate=datetime.date(1980, 12, 31)) == [born["1980-12-31"]]

    async def test_care_team_date_ranges_against_open_and_closed_periods(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        """Both teams began today; one ended today. `ge` tomorrow finds only the open one
        (its period has no end); a window around today finds both; one before, neither."""
        provider = clinic.provider()
        open_team, closed_team = clinic.patient(), clinic.patient()
        clinic.team(open_team, provider)
        clinic.team(closed_team, provider)
        clinic.leave(closed_team, provider)
        day = datetime.timedelta(days=1)
        yesterday, tomorrow = today() - day, today() + day
        teams = fhirpy_client.resources("CareTeam")

        async def found(**params: Any) -> list[str]:
            return sorted(t["id"] for t in await teams.search(**params).fetch_all())

        assert await found(date__ge=yesterday, date__le=tomorrow) == sorted(
            [open_team, closed_team]
        )
        assert await found(date__ge=tomorrow) == [open_team]
        assert await found(date__le=yesterday) == []
        assert await found(date__ge=yesterday, status="inactive") == [closed_team]


class TestFhirpyTokens:
    async def test_a_comma_is_or_and_a_list_is_and(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        """fhirpy's documentation: `name='John,Eva'` sends one parameter with a comma (OR);
        `name=['John', 'Rivera']` sends the parameter twice (AND)."""
        a = clinic.patient(identifiers=[{"system": "urn:mrn", "value": "A-1"}])
        b = clinic.patient(identifiers=[{"system": "urn:mrn", "value": "B-2"}])
        both = clinic.patient(
            identifiers=[
                {"system": "urn:mrn", "value": "C-3"},
                {"system": "urn:other", "value": "A-1"},
            ]
        )
        clinic.patient(identifiers=[{"system": "urn:mrn", "value": "D-4"}])
        patients = fhirpy_client.resources("Patient")
        either = await patients.search(identifier="urn:mrn|A-1,urn:mrn|B-2").fetch_all()
        assert sorted(p["id"] for p in either) == sorted([a, b])
        same_value = await patients.search(identifier="A-1").fetch_all()
        assert sorted(p["id"] for p in same_value) == sorted([a, both])
        all_of = await patients.search(identifier=["urn:mrn|C-3", "urn:other|A-1"]).fetch_all()
        assert [p["id"] for p in all_of] == [both]
        assert await patients.search(identifier=["urn:mrn|A-1", "urn:mrn|B-2"]).fetch_all() == []

    async def test_practitioners_by_npi_or_list_and_active(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        first = clinic.provider(npi=npi(1))
        second = clinic.provider(npi=npi(2))
        clinic.provider(npi=npi(3))
        practitioners = fhirpy_client.resources("Practitioner")
        found = await practitioners.search(
            identifier=f"{NPI_SYSTEM}|{npi(1)},{NPI_SYSTEM}|{npi(2)}", active=True
        ).fetch_all()
        assert sorted(p["id"] for p in found) == sorted([first, second])
        one = await practitioners.search(identifier=npi(2)).get()
        assert one["id"] == second
        assert one["identifier"] == [{"system": NPI_SYSTEM, "value": npi(2)}]


class TestFhirpyPaging:
    async def test_fetch_all_follows_next_links_with_a_small_limit(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        made = {clinic.patient(first_name=f"Page{n}") for n in range(5)}
        fetched = await fhirpy_client.resources("Patient").limit(2).fetch_all()
        assert len(fetched) == 5 and {p["id"] for p in fetched} == made
        one_page = await fhirpy_client.resources("Patient").limit(2).fetch()
        assert len(one_page) == 2
        iterated = [p["id"] async for p in fhirpy_client.resources("Patient").limit(3)]
        assert sorted(iterated) == sorted(made)

    async def test_a_sorted_search_pages_in_its_order(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        by_day = {
            day: clinic.patient(dob=day)
            for day in ("1990-03-03", "1950-01-01", "1970-07-07", "2001-11-11", "1960-06-06")
        }
        oldest_first = [by_day[d] for d in sorted(by_day)]
        patients = fhirpy_client.resources("Patient")
        ascending = await patients.sort("birthdate").limit(2).fetch_all()
        assert [p["id"] for p in ascending] == oldest_first
        descending = await patients.sort("-birthdate").limit(2).fetch_all()
        assert [p["id"] for p in descending] == oldest_first[::-1]
        youngest = await patients.sort("-birthdate").first()
        assert youngest is not None and youngest["birthDate"] == "2001-11-11"

    async def test_sort_by_two_keys(self, clinic: Clinic, fhirpy_client: AsyncFHIRClient):
        ada_b = clinic.patient(first_name="Ada", last_name="Byron")
        bob_a = clinic.patient(first_name="Bob", last_name="Adams")
        ada_a = clinic.patient(first_name="Ada", last_name="Adams")
        patients = fhirpy_client.resources("Patient")
        by_family = await patients.sort("family", "given").fetch_all()
        assert [p["id"] for p in by_family] == [ada_a, bob_a, ada_b]
        by_given = await patients.sort("given", "-family").fetch_all()
        assert [p["id"] for p in by_given] == [ada_b, ada_a, bob_a]


class TestFhirpyIncludesAndReferences:
    async def test_include_care_team_participants(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        """fhirpy's documented include; fetch_raw() keeps the included resources."""
        primary, secondary, elsewhere = (clinic.provider() for _ in range(3))
        patients = [clinic.patient() for _ in range(2)]
        for patient in patients:
            clinic.team(patient, primary, secondary)
        clinic.team(clinic.patient(), elsewhere)
        bundle = (
            await fhirpy_client.resources("CareTeam")
            .search(participant=f"Practitioner/{primary}")
            .include("CareTeam", "participant", target_resource_type="Practitioner")
            .fetch_raw()
        )
        modes: dict[str, list[tuple[str, str]]] = {"match": [], "include": []}
        for entry in bundle["entry"]:
            modes[entry["search"]["mode"]].append(
                (entry["resource"]["resourceType"], entry["resource"]["id"])
            )
        assert sorted(modes["match"]) == sorted(("CareTeam", p) for p in patients)
        assert sorted(modes["include"]) == sorted(
            [("Practitioner", primary), ("Practitioner", secondary)]
        )
        # fetch()/fetch_all() keep only the searched type, as fhirpy documents.
        teams = (
            await fhirpy_client.resources("CareTeam")
            .search(participant=f"Practitioner/{primary}")
            .include("CareTeam", "participant")
            .fetch_all()
        )
        assert sorted(t["id"] for t in teams) == sorted(patients)

    async def test_revinclude_care_teams_of_patients(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        provider = clinic.provider()
        with_team, without = clinic.patient(last_name="Teamed"), clinic.patient(last_name="Alone")
        clinic.team(with_team, provider)
        bundle = (
            await fhirpy_client.resources("Patient")
            .search(_id=f"{with_team},{without}")
            .revinclude("CareTeam", "patient")
            .fetch_raw()
        )
        entries = [
            (e["search"]["mode"], e["resource"]["resourceType"], e["resource"]["id"])
            for e in bundle["entry"]
        ]
        assert sorted(entries) == sorted(
            [
                ("include", "CareTeam", with_team),
                ("match", "Patient", with_team),
                ("match", "Patient", without),
            ]
        )

    async def test_references_resolve_with_to_resource(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        provider = clinic.provider(first_name="Grace", last_name="Hopper", npi=npi(7))
        patient_id = clinic.patient()
        clinic.team(patient_id, provider)
        patient = await fhirpy_client.reference("Patient", patient_id).to_resource()
        doctor = await patient["generalPractitioner"][0].to_resource()
        assert doctor["id"] == provider and doctor["name"][0]["family"] == "Hopper"
        team = await fhirpy_client.resources("CareTeam").search(patient=patient_id).get()
        member = await team["participant"][0]["member"].to_resource()
        assert member["id"] == provider
        assert team["participant"][0]["role"][0]["coding"][0]["code"] == PRIMARY_CARE
        subject = await team["subject"].to_resource()
        assert subject["id"] == patient_id

    async def test_the_managing_organization_resolves(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        """Patient.managingOrganization and CareTeam.managingOrganization name the key's
        organization, which /fhir/R4/Organization/{id} serves."""
        patient_id = clinic.patient()
        clinic.team(patient_id, clinic.provider())
        patient = await fhirpy_client.reference("Patient", patient_id).to_resource()
        organization = await patient["managingOrganization"].to_resource()
        assert organization["resourceType"] == "Organization"
        assert organization["id"] == clinic.organization_id
        assert organization["name"] == "API Clinic" and organization["active"] is True
        team = await fhirpy_client.reference("CareTeam", patient_id).to_resource()
        (team_organization,) = team["managingOrganization"]
        assert (await team_organization.to_resource())["id"] == clinic.organization_id

    async def test_an_unknown_id_is_resource_not_found(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        patient = clinic.patient()  # a patient without a team has no CareTeam
        with pytest.raises(ResourceNotFound):
            await fhirpy_client.reference("CareTeam", patient).to_resource()
        with pytest.raises(ResourceNotFound):
            await fhirpy_client.resources("Patient").search(_id=clinic.provider()).get()


class TestFhirpyVersions:
    async def test_refresh_sees_a_change_and_the_version_moves(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        """refresh() sends If-None-Match with meta.versionId and keeps what it has on a
        304; after a change it must read the new version."""
        patient_id = clinic.patient(first_name="Before")
        patient = await fhirpy_client.reference("Patient", patient_id).to_resource()
        first_version = patient["meta"]["versionId"]
        await patient.refresh()
        assert patient["name"][0]["given"] == ["Before"]
        assert patient["meta"]["versionId"] == first_version
        clinic.call("PATCH", f"/v1/patients/{patient_id}", {"first_name": "After"})
        await patient.refresh()
        assert patient["name"][0]["given"] == ["After"]
        assert patient["meta"]["versionId"] != first_version
        old = await fhirpy_client.execute(
            f"Patient/{patient_id}/_history/{first_version}", method="get"
        )
        assert old["name"][0]["given"] == ["Before"]
        assert old["meta"]["versionId"] == first_version
        history = await fhirpy_client.execute(f"Patient/{patient_id}/_history", method="get")
        assert history["type"] == "history" and history["total"] == 2
        assert [e["resource"]["name"][0]["given"] for e in history["entry"]] == [
            ["After"],
            ["Before"],
        ]

    async def test_elements_as_fhirpy_sends_them(
        self, clinic: Clinic, fhirpy_client: AsyncFHIRClient
    ):
        """fhirpy's documented `.elements('name')` sends `_elements=name,id,resourceType`
        (it always adds id and resourceType)."""
        patient_id = clinic.patient(first_name="Ada", last_name="Lovelace")
        (patient,) = await fhirpy_client.resources("Patient").elements("name").fetch_all()
        assert patient["id"] == patient_id
        assert patient["name"][0]["family"] == "Lovelace"
        assert "birthDate" not in patient and "managingOrganization" not in patient


# --- fhirclient ----------------------------------------------------------------------------


def search_ids(search: FHIRSearch, server: FHIRServer) -> list[str]:
    """The ids of every resource of every page, in order (perform_resources_iter follows
    the `next` links)."""
    return [str(r.id) for r in search.perform_resources_iter(server)]


class TestFhirclientReads:
    def test_every_resource_read_parses_as_its_strict_r4_model(
        self, clinic: Clinic, smart: FHIRServer
    ):
        first = clinic.provider(first_name="Grace", last_name="Hopper", npi=npi(11))
        second = clinic.provider(first_name="Ada", last_name="Lovelace")
        patient_id = clinic.patient(
            first_name="Alan",
            last_name="Turing",
            dob="1912-06-23",
            identifiers=[{"system": "urn:mrn", "value": "T-1"}],
        )
        clinic.team(patient_id, first, second)
        clinic.team(patient_id, second)  # second becomes the primary, first stays a member

        patient = Patient.read(patient_id, smart)
        assert patient.id == patient_id
        assert patient.birthDate.date == datetime.date(1912, 6, 23)
        assert patient.name[0].family == "Turing" and patient.name[0].given == ["Alan"]
        assert [(i.system, i.value) for i in patient.identifier] == [("urn:mrn", "T-1")]
        assert patient.generalPractitioner[0].reference == f"Practitioner/{second}"
        assert patient.managingOrganization.reference == f"Organization/{clinic.organization_id}"

        practitioner = Practitioner.read(first, smart)
        assert practitioner.id == first and practitioner.active is True
        assert [(i.system, i.value) for i in practitioner.identifier] == [(NPI_SYSTEM, npi(11))]

        team = CareTeam.read(patient_id, smart)
        assert team.id == patient_id and team.status == "active"
        assert team.subject.reference == f"Patient/{patient_id}"
        periods = [
            (p.member.reference, p.role[0].coding[0].code, p.period.end is None)
            for p in team.participant
        ]
        # first: a primary period (ended) and a secondary one (open); second: secondary
        # (ended) then primary (open).
        assert len(periods) == 4
        open_primaries = [m for m, code, is_open in periods if code == PRIMARY_CARE and is_open]
        assert open_primaries == [f"Practitioner/{second}"]
        assert team.period.start.datetime <= datetime.datetime.now(datetime.UTC)

        statement = CapabilityStatement.read_from("metadata", smart)
        assert statement.fhirVersion == "4.0.1"
        assert {r.type for r in statement.rest[0].resource} == {
            "AuditEvent",
            "CareTeam",
            "Group",
            "Organization",
            "Patient",
            "Practitioner",
        }

    def test_references_resolve_on_the_same_server(self, clinic: Clinic, smart: FHIRServer):
        provider = clinic.provider(last_name="Hopper")
        patient_id = clinic.patient()
        clinic.team(patient_id, provider)
        patient = Patient.read(patient_id, smart)
        doctor = patient.generalPractitioner[0].resolved(Practitioner)
        assert doctor.id == provider and doctor.name[0].family == "Hopper"
        team = CareTeam.read(patient_id, smart)
        assert team.subject.resolved(Patient).id == patient_id

    def test_the_organization_reads_and_resolves(self, clinic: Clinic, smart: FHIRServer):
        organization = Organization.read(clinic.organization_id, smart)
        assert organization.id == clinic.organization_id and organization.name == "API Clinic"
        assert organization.active is True
        patient = Patient.read(clinic.patient(), smart)
        resolved = patient.managingOrganization.resolved(Organization)
        assert resolved.id == clinic.organization_id

    def test_versions_and_history_parse(self, clinic: Clinic, smart: FHIRServer):
        provider_id = clinic.provider(first_name="Before")
        first = Practitioner.read(provider_id, smart)
        clinic.call("PATCH", f"/v1/providers/{provider_id}", {"first_name": "After"})
        current = Practitioner.read(provider_id, smart)
        assert current.meta.versionId != first.meta.versionId
        assert current.meta.lastUpdated.datetime >= first.meta.lastUpdated.datetime
        old = Practitioner.read_from(
            f"Practitioner/{provider_id}/_history/{first.meta.versionId}", smart
        )
        assert old.name[0].given == ["Before"] and current.name[0].given == ["After"]
        history = Bundle.read_from(f"Practitioner/{provider_id}/_history", smart)
        assert history.type == "history" and history.total == 2
        assert [e.resource.meta.versionId for e in history.entry] == [
            current.meta.versionId,
            first.meta.versionId,
        ]
        assert [e.request.method for e in history.entry] == ["PUT", "POST"]

    def test_unknown_ids_and_a_wrong_key(self, clinic: Clinic, smart: FHIRServer):
        patient = clinic.patient()  # no team: no CareTeam
        with pytest.raises(FHIRNotFoundException):
            CareTeam.read(patient, smart)
        with pytest.raises(FHIRNotFoundException):
            Practitioner.read(patient, smart)
        with pytest.raises(FHIRNotFoundException) as unknown:
            Patient.read(str(uuid.uuid4()), smart)
        outcome = OperationOutcome(unknown.value.response.json())
        assert outcome.issue[0].code == "not-found"
        stranger = smart_client(Clinic(clinic.base_url, "not-a-key", "")).server
        with pytest.raises(FHIRUnauthorizedException) as refused:
            Patient.read(patient, stranger)
        assert OperationOutcome(refused.value.response.json()).issue[0].code == "login"


class TestFhirclientSearches:
    def test_where_struct_searches_parse_and_page(self, clinic: Clinic, smart: FHIRServer):
        made = sorted(clinic.patient(last_name="Struct", first_name=f"N{n}") for n in range(5))
        other = clinic.patient(last_name="Else")
        assert sorted(search_ids(Patient.where(struct={"family": "struct"}), smart)) == made
        # Five matches, two a page: perform_iter follows `next` to the third page.
        pages = list(Patient.where(struct={"family": "Struct", "_count": "2"}).perform_iter(smart))
        assert [len(page.entry) for page in pages] == [2, 2, 1]
        assert sorted(str(e.resource.id) for p in pages for e in p.entry) == made
        assert all(isinstance(e.resource, Patient) for p in pages for e in p.entry)
        assert pages[0].link[1].relation == "next"
        assert search_ids(Patient.where(struct={"_id": other}), smart) == [other]

    def test_or_and_and_in_a_struct(self, clinic: Clinic, smart: FHIRServer):
        """fhirclient's `$or` joins the values with a comma; `$and` repeats the parameter.
        Its `$gte`/`$lt` operators write `>=` and `<` (DSTU1's syntax, which R4 has no
        more): a date prefix of R4 goes in the value itself."""
        a = clinic.patient(dob="1960-01-01", identifiers=[{"system": "urn:mrn", "value": "A"}])
        b = clinic.patient(dob="1970-01-01", identifiers=[{"system": "urn:mrn", "value": "B"}])
        clinic.patient(dob="1980-01-01", identifiers=[{"system": "urn:mrn", "value": "C"}])
        either = Patient.where(struct={"identifier": {"$or": ["urn:mrn|A", "urn:mrn|B"]}})
        assert sorted(search_ids(either, smart)) == sorted([a, b])
        window = Patient.where(struct={"birthdate": {"$and": ["ge1965", "lt1975"]}})
        assert search_ids(window, smart) == [b]
        assert sorted(search_ids(Patient.where(struct={"birthdate": "le1970"}), smart)) == sorted(
            [a, b]
        )
        # `birthdate=>=1965`: refused as malformed, never read as something else.
        old_syntax = Patient.where(struct={"birthdate": {"$gte": "1965"}})
        with pytest.raises(requests.HTTPError) as refused:
            search_ids(old_syntax, smart)
        assert refused.value.response.status_code == 400

    def test_care_team_searches_with_includes(self, clinic: Clinic, smart: FHIRServer):
        """fhirclient's include() takes an element of Reference type: CareTeam.subject
        (`_include=CareTeam:subject`) works; participant.member, nested in a
        BackboneElement, cannot be named (include('participant') only logs a warning and
        adds nothing), so that include is sent as a plain struct parameter."""
        primary, secondary = clinic.provider(), clinic.provider()
        patients = sorted(clinic.patient() for _ in range(3))
        for patient in patients:
            clinic.team(patient, primary, secondary)
        by_member = {"participant": f"Practitioner/{primary}"}
        teams = list(CareTeam.where(struct=by_member).perform_resources_iter(smart))
        assert sorted(str(t.id) for t in teams) == patients
        assert all(isinstance(t, CareTeam) and t.status == "active" for t in teams)

        with_subjects = CareTeam.where(struct=dict(by_member)).include("subject")
        assert with_subjects.construct().endswith("&_include=CareTeam:subject")
        (bundle,) = with_subjects.perform_iter(smart)
        included = [e.resource for e in bundle.entry if e.search.mode == "include"]
        assert sorted(str(p.id) for p in included) == patients
        assert all(isinstance(p, Patient) for p in included)

        struct = {**by_member, "_include": "CareTeam:participant:Practitioner"}
        (bundle,) = CareTeam.where(struct=struct).perform_iter(smart)
        members = [e.resource for e in bundle.entry if e.search.mode == "include"]
        assert sorted(str(p.id) for p in members) == sorted([primary, secondary])
        # A reference resolves from the Bundle it came in (its fullUrl), without a request.
        team = next(e.resource for e in bundle.entry if e.search.mode == "match")
        assert isinstance(team, CareTeam)
        member = team.participant[0].member.resolved(Practitioner)
        assert member is not None and member in members

    def test_revinclude_and_count(self, clinic: Clinic, smart: FHIRServer):
        provider = clinic.provider()
        teamed, alone = clinic.patient(last_name="Rev"), clinic.patient(last_name="Rev")
        clinic.team(teamed, provider)
        search = Patient.where(struct={"family": "Rev"}).include("subject", CareTeam, reverse=True)
        assert search.construct().endswith("&_revinclude=CareTeam:subject")
        (bundle,) = search.perform_iter(smart)
        found = sorted(
            (e.search.mode, e.resource.resource_type, str(e.resource.id)) for e in bundle.entry
        )
        assert found == sorted(
            [
                ("match", "Patient", teamed),
                ("match", "Patient", alone),
                ("include", "CareTeam", teamed),
            ]
        )
        (counted,) = Patient.where(struct={"family": "Rev", "_summary": "count"}).perform_iter(
            smart
        )
        assert counted.total == 2 and counted.entry is None

    def test_practitioner_search_by_npi(self, clinic: Clinic, smart: FHIRServer):
        wanted = clinic.provider(npi=npi(21))
        clinic.provider(npi=npi(22))
        search = Practitioner.where(struct={"identifier": f"{NPI_SYSTEM}|{npi(21)}"})
        (found,) = search.perform_resources_iter(smart)
        assert isinstance(found, Practitioner) and found.id == wanted
        assert found.identifier[0].value == npi(21)
