"""The console (`/console`, issue 27): what it serves and with which headers (in process), and
each page's main task in a real browser against a live `careteam serve`: Debian's
chromium, driven by Playwright, with axe-core's check on every page and a screenshot of
each at 1280x800 in docs/screenshots/ (the README names it)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import async_playwright, expect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src import console
from src.config import BACKEND_DIR
from src.console import ASSETS, CONTENT_SECURITY_POLICY, HEADERS, STATIC
from src.db import Database
from src.services.organization_service import OrganizationService, hash_api_key
from tests.helpers import (
    LiveApi,
    Tenant,
    client_assertion,
    ec_key,
    jwks_of,
    register_client,
    token_form,
)

REPO = BACKEND_DIR.parent.parent
SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
AXE = BACKEND_DIR / "tests" / "console" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
XSS_NAME = "<img src=x onerror=alert(1)>"
# Missing, the browser tests fail and say so (never skip): .ci/run installs both.
HAVE_CHROMIUM, HAVE_AXE = CHROMIUM.exists(), AXE.exists()
AXE_SOURCE = AXE.read_text() if HAVE_AXE else ""


class TestServed:
    def test_the_console_is_matched_after_every_api_route(self, app: FastAPI):
        """An API request never reaches the console's routes (they come after every API
        router, and no middleware of theirs exists): its cost to the API is none by
        construction, which bench/console.py measures."""
        routes = app.router.routes
        position = next(
            n for n, r in enumerate(routes) if getattr(r, "original_router", None) is console.router
        )
        for route in routes[:position]:
            assert getattr(route, "original_router", None) is not console.router
        later = [
            getattr(x, "path", "")
            for r in routes[position + 1 :]
            for x in (r.original_router.routes if hasattr(r, "original_router") else [r])
        ]
        assert later and all(not p.startswith(("/v1", "/fhir")) for p in later), later
        assert not [m for m in app.user_middleware if "console" in m.cls.__module__]

    async def test_the_page_and_its_assets_carry_the_policy_and_the_api_does_not(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        page = await client.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        for name in ASSETS:
            asset = await client.get(f"/console/static/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert asset.headers["x-content-type-options"] == "nosniff"
        api = await client.get("/v1/reports/panels", headers=tenant.headers)
        assert "content-security-policy" not in api.headers

    def test_the_policy_allows_nothing_inline_and_nothing_from_elsewhere(self):
        directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert "unsafe" not in CONTENT_SECURITY_POLICY

    def test_no_inline_script_or_style_and_no_other_origin_in_the_files(self):
        for html in STATIC.glob("*.html"):
            page = html.read_text()
            assert "<style" not in page and " style=" not in page, html
            assert page.count("<script") == page.count('<script type="module" src="/console/')
        for path in STATIC.rglob("*"):
            if path.suffix in {".js", ".css", ".html"} and "vendor" not in path.parts:
                content = path.read_text()
                assert "http://" not in content and "https://" not in content, path
                assert "innerHTML" not in content and "style=" not in content, path

    @pytest.mark.parametrize("path", ["/console/static/../__init__.py", "/console/static/nope.js"])
    async def test_an_asset_it_does_not_have_is_404(self, client: httpx.AsyncClient, path: str):
        assert (await client.get(path)).status_code == 404

    async def test_a_trailing_slash_redirects_to_the_console(self, client: httpx.AsyncClient):
        """`/console/` answered the API's 404 problem JSON; the redirect is a path, never
        built from the Host header."""
        answer = await client.get("/console/", headers={"Host": "evil.example"})
        assert answer.status_code == 308 and answer.headers["location"] == "/console"
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        followed = await client.get("/console/", follow_redirects=True)
        assert followed.status_code == 200 and followed.url.path == "/console"

    @pytest.mark.parametrize("path", ["/console/x", "/console/worklist", "/console/a/b.html"])
    async def test_any_other_page_is_404_in_words_under_the_same_policy(
        self, client: httpx.AsyncClient, path: str
    ):
        """A 404 page in words, linking to the console (it was the API's problem JSON),
        with the console's headers, and nothing inline."""
        answer = await client.get(path)
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        for name, value in HEADERS.items():
            assert answer.headers[name] == value, name
        assert "There is no such page in the console." in answer.text
        assert '<a href="/console">' in answer.text
        assert "<script" not in answer.text and "style=" not in answer.text

    def test_the_vendored_code_keeps_its_licences(self):
        vendor = STATIC / "vendor"
        assert "Apache License" in (vendor / "LICENSE.htm").read_text()
        assert "MIT" in (vendor / "LICENSE.preact").read_text()
        assert "3.1.1" in (vendor / "README.md").read_text()


# --- in a real browser ------------------------------------------------------------------


def _seed(api: LiveApi) -> dict[str, Any]:
    """Providers and patients for every task, in the live server's organization."""

    def provider(last: str, capacity: int | None = None) -> str:
        made = api.post("/v1/providers", {"first_name": "Dr", "last_name": last})
        if capacity is not None:
            _patch(api, f"/v1/providers/{made['id']}", {"panel_capacity": capacity})
        return str(made["id"])

    def patient(first: str, last: str) -> str:
        body = {"first_name": first, "last_name": last, "dob": "1970-05-01"}
        return str(api.post("/v1/patients", body)["id"])

    def assign(patient_id: str, provider_id: str) -> None:
        _put(api, f"/v1/patients/{patient_id}/care-team/primary", {"provider_id": provider_id})

    full, roomy = provider("Fullpanel", capacity=1), provider("Roomy")
    leaving, taking = provider("Leaving"), provider("Taking", capacity=50)
    assign(patient("Filled", "Seat"), full)
    for n in range(3):
        assign(patient(f"Moving{n}", "Transferee"), leaving)
    history = patient("Hanna", "History")
    assign(history, roomy)
    return {
        "full": full,
        "roomy": roomy,
        "leaving": leaving,
        "taking": taking,
        "history": history,
        "unattributed": patient("Una", "Attributed"),
        "xss": patient("Xavier", XSS_NAME),
    }


async def _organization_of(database: Database, key: str) -> uuid.UUID:
    """The organization of an API key (read as the owner)."""
    async with database.owner_engine.connect() as owner:
        found = await owner.execute(
            text("SELECT organization_id FROM api_keys WHERE key_hash = :h"),
            {"h": hash_api_key(key)},
        )
        return uuid.UUID(str(found.scalar_one()))


def _provider(api: LiveApi, last: str) -> str:
    return str(api.post("/v1/providers", {"first_name": "Dr", "last_name": last})["id"])


def _patch(api: LiveApi, path: str, body: dict[str, object]) -> None:
    r = httpx.patch(api.base_url + path, json=body, headers={"Authorization": f"Bearer {api.key}"})
    assert r.status_code == 200, r.text


def _put(api: LiveApi, path: str, body: dict[str, object]) -> None:
    r = httpx.put(api.base_url + path, json=body, headers={"Authorization": f"Bearer {api.key}"})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
async def seeded(live_api: LiveApi, database: Database) -> dict[str, Any]:
    data = _seed(live_api)
    # History with a past: the first primary's period made to start 40 days ago (as the
    # owner: nothing but the periods' own rules applies), then a new primary now.
    async with database.owner_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE care_team_periods SET valid = tstzrange(lower(valid) - interval "
                "'40 days', upper(valid)) WHERE patient_id = :patient"
            ),
            {"patient": uuid.UUID(data["history"])},
        )
    _put(
        live_api,
        f"/v1/patients/{data['history']}/care-team/primary",
        {"provider_id": data["taking"], "reason": "panel_rebalance"},
    )
    return data


@pytest.fixture
async def dated_history(live_api: LiveApi, seeded: dict[str, Any], database: Database) -> str:
    """A patient of its own: Dr Roomy primary from 5 Mar 2025 17:46 UTC (12:46 in New
    York, 02:46 on 6 Mar in Tokyo), then Dr Taking from 6 Mar 2025 14:30 UTC (09:30 in New
    York, 23:30 in Tokyo), Dr Roomy staying as secondary."""
    body = {"first_name": "Dana", "last_name": "Daylong", "dob": "1975-04-05"}
    patient = str(live_api.post("/v1/patients", body)["id"])
    primary = f"/v1/patients/{patient}/care-team/primary"
    _put(live_api, primary, {"provider_id": seeded["roomy"]})
    _put(live_api, primary, {"provider_id": seeded["taking"]})
    params = {
        "began": datetime.datetime(2025, 3, 5, 17, 46, tzinfo=datetime.UTC),
        "changed": datetime.datetime(2025, 3, 6, 14, 30, tzinfo=datetime.UTC),
        "patient": uuid.UUID(patient),
        "roomy": uuid.UUID(seeded["roomy"]),
    }
    async with database.owner_engine.begin() as conn:  # as the owner, one row at a time
        await conn.execute(
            text(
                "UPDATE care_team_periods SET valid = tstzrange(:began, :changed) "
                "WHERE patient_id = :patient AND role = 'primary' AND provider_id = :roomy"
            ),
            params,
        )
        await conn.execute(
            text(
                "UPDATE care_team_periods SET valid = tstzrange(:changed, NULL) "
                "WHERE patient_id = :patient AND NOT (role = 'primary' AND provider_id = :roomy)"
            ),
            params,
        )
    return patient


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless chromium (Debian's) for the module."""
    assert HAVE_CHROMIUM, "the browser tests need Debian's chromium: .ci/run installs it"
    assert HAVE_AXE, f"axe-core is not installed: cd {AXE.parents[2]} && npm install"
    args = ["--headless", "--disable-gpu", "--disable-background-networking"]
    args += ["--disable-component-update", "--disable-sync", "--no-first-run"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield launched
        await launched.close()


async def new_tab(browser: Any, timezone_id: str | None = None) -> Any:
    """A new tab (its own sessionStorage) at 1280x800, in `timezone_id` if given (else the
    machine's); its `problems` list every script error, dialog and console error."""
    options: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
    if timezone_id is not None:
        options["timezone_id"] = timezone_id
    context = await browser.new_context(**options)
    context.set_default_timeout(10_000)
    tab = await context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    tab.on(
        "console",
        lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
    )
    tab.problems = problems
    return tab


@pytest.fixture
async def page(browser: Any, live_api: LiveApi) -> AsyncIterator[Any]:
    """A new tab; any script error or dialog fails the test."""
    tab = await new_tab(browser)
    yield tab
    await tab.context.close()
    assert tab.problems == []


async def sign_in(page: Any, api: LiveApi, credential: str | None = None) -> None:
    """Sign in with the live server's key, or with `credential` (a key or a token)."""
    await page.goto(f"{api.base_url}/console")
    await page.get_by_label("API key").fill(credential or api.key)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Worklist").wait_for()


async def look_up(page: Any, date: str) -> str:
    """The patient page's answer to "who was the primary on `date`", its spaces folded
    (waited for by the day it names: an earlier answer may still be on screen)."""
    day = datetime.date.fromisoformat(date)
    await page.get_by_label("Who was the primary on").fill(date)
    await page.get_by_role("button", name="Look up").click()
    answer = page.locator(".answer").filter(has_text=f"{day.day} {day:%b %Y}")
    await answer.wait_for()
    return " ".join((await answer.inner_text()).split())


async def check_accessibility(page: Any, name: str) -> None:
    """axe-core on the page as it is (run through the DevTools protocol: the page's CSP
    stays in force); no serious or critical violation. Before it, no element of the page
    carries a style attribute, not even an empty one (docs/CONSOLE.md says the script sets
    none)."""
    styled = await page.evaluate(
        "[...document.querySelectorAll('[style]')].map((e) => e.outerHTML.slice(0, 80))"
    )
    assert styled == [], (name, styled)
    await page.evaluate(AXE_SOURCE + "\n;0")
    result = await page.evaluate(
        "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map("
        "v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length})))"
    )
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert bad == [], (name, bad)


async def screenshot(page: Any, name: str) -> None:
    """The page as shown, into docs/screenshots/. The caret is left as it is: Playwright
    hides it by writing each input's style, which leaves `style=""` on them afterwards
    (what a trial saw and took for the console's)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), caret="initial")


@pytest.mark.slow
class TestInTheBrowser:
    async def test_sign_in_is_checked_kept_in_the_tab_and_cleared_on_sign_out(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        await page.goto(f"{live_api.base_url}/console")
        await check_accessibility(page, "sign-in")
        await screenshot(page, "sign-in")
        await page.get_by_label("API key").fill("ctk_not-a-key")
        await page.get_by_role("button", name="Sign in").click()
        alert = page.get_by_role("alert")
        await alert.get_by_text("was not accepted").wait_for()
        # Said on the sign-in screen, which has no "Sign out" (it told to sign out).
        assert (await alert.inner_text()).endswith("Check it and try again.")
        assert "Sign out" not in await alert.inner_text()
        page.problems.clear()  # the browser logs the 401 itself
        await sign_in(page, live_api)
        assert await page.evaluate("sessionStorage.getItem('careteam.apiKey')") == live_api.key
        cookies = await page.context.cookies()
        assert cookies == [] and live_api.key not in page.url
        await page.get_by_role("button", name="Sign out").click()
        await page.get_by_label("API key").wait_for()
        assert await page.evaluate("sessionStorage.length") == 0

    async def test_a_slash_or_an_unknown_path_leads_back_to_the_console(
        self, page: Any, live_api: LiveApi
    ):
        await page.goto(f"{live_api.base_url}/console/")
        await page.get_by_label("API key").wait_for()
        assert page.url == f"{live_api.base_url}/console"
        answer = await page.goto(f"{live_api.base_url}/console/patients")
        assert answer.status == 404
        await page.get_by_text("There is no such page in the console.").wait_for()
        page.problems.clear()  # the browser logs the 404 itself
        await check_accessibility(page, "not found")
        await page.get_by_role("link", name="Open the console").click()
        await page.get_by_label("API key").wait_for()

    async def test_find_an_unattributed_patient_and_assign_a_primary(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        await sign_in(page, live_api)
        # A name that is markup shows as text, and runs nothing.
        await page.get_by_role("link", name=XSS_NAME + ", Xavier").wait_for()
        assert await page.locator("#app img").count() == 0
        await page.get_by_label("Name starts with").fill("Attri")
        await page.get_by_role("button", name="Search").click()
        row = page.get_by_role("row", name="Attributed, Una")
        await row.wait_for()
        await check_accessibility(page, "worklist")
        await screenshot(page, "worklist")
        # Its name begins with the words it shows (it was "Assign a primary provider to...",
        # which a voice-control user saying "click Assign primary" would not reach).
        button = row.get_by_role("button", name="Assign primary… for Attributed, Una", exact=True)
        await button.click()
        chosen = page.get_by_label("Primary provider", exact=True)
        await chosen.select_option(label="Dr Roomy (no limit)")
        await page.get_by_label("Reason").select_option("patient_request")
        await page.get_by_label("Note (optional)").fill("new patient visit")
        await check_accessibility(page, "worklist, assigning")
        await page.get_by_role("button", name="Assign", exact=True).click()
        await (
            page.get_by_role("status")
            .get_by_text("Dr Roomy is now the primary provider of Attributed, Una.")
            .wait_for()
        )
        await page.get_by_text("No patient without a primary provider matches “Attri”.").wait_for()
        team = live_api.get_json(f"/v1/patients/{seeded['unattributed']}")
        assert team["primary_provider_id"] == seeded["roomy"]

    async def test_a_search_that_finds_nobody_says_so_and_offers_no_paging(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """It said "Every patient here has a primary provider." and showed the page
        buttons when a search found nobody."""
        await sign_in(page, live_api)
        await page.get_by_label("Name starts with").fill("zzz")
        await page.get_by_role("button", name="Search").click()
        await page.get_by_text("No patient without a primary provider matches “zzz”.").wait_for()
        await expect(page.get_by_role("navigation", name="Pages")).to_have_count(0)
        await expect(page.get_by_text("Every patient")).to_have_count(0)
        await page.get_by_label("Show").select_option("all")
        await page.get_by_role("button", name="Search").click()
        await page.get_by_text("No patient matches “zzz”.").wait_for()
        await expect(page.get_by_role("button", name="Next page")).to_have_count(0)

    async def test_a_list_answered_late_never_replaces_the_search_asked_after_it(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """The worklist's first list, answered after the search typed meanwhile, took its
        place: the page showed patients the search excludes, with nothing saying so (CI
        saw it once)."""
        # A name with no "Search" in it: her row's button would match the Search button's
        # name in the tests after this one.
        body = {"first_name": "Ann", "last_name": "Tardy", "dob": "1980-01-01"}
        live_api.post("/v1/patients", body)
        first_list_asked = asyncio.Event()
        release = asyncio.Event()
        fulfilled = asyncio.Event()
        released: list[Any] = []

        async def hold_the_first_list(route: Any) -> None:
            if "name=" in route.request.url:
                await route.continue_()
                return
            first_list_asked.set()
            await release.wait()
            answer = await route.fetch()
            await route.fulfill(response=answer)
            released.append(route.request)
            fulfilled.set()

        await page.route("**/v1/patients?*", hold_the_first_list)
        await sign_in(page, live_api)
        await asyncio.wait_for(first_list_asked.wait(), 10)
        await page.get_by_label("Name starts with").fill("Tardy")
        await page.keyboard.press("Enter")
        await page.get_by_role("row", name="Tardy, Ann").wait_for()
        release.set()
        await asyncio.wait_for(fulfilled.wait(), 10)
        # The held answer has reached the page; give its script time to draw it, if it would.
        await (await released[0].response()).finished()
        await page.wait_for_timeout(500)
        await expect(page.get_by_role("row")).to_have_count(2)  # the header, and Ann
        await expect(page.get_by_role("row", name="Tardy, Ann")).to_have_count(1)

    async def test_the_keyboard_goes_on_after_assigning_and_escape_closes_the_form(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """After Assign, focus is on the row now where the assigned one was (it fell to
        <body>, and the next Tab skipped that row); Escape closes the form and gives focus
        back to its button."""
        for first in ("Ada", "Ben", "Cy"):
            body = {"first_name": first, "last_name": "Keyboard", "dob": "1980-01-01"}
            live_api.post("/v1/patients", body)
        await sign_in(page, live_api)
        await page.get_by_label("Name starts with").fill("Keyboard")
        await page.keyboard.press("Enter")
        await page.get_by_role("row", name="Keyboard, Cy").wait_for()
        # The search's own list, not the one before it (which can hold these rows too, and
        # whose replacement would take the focus from the form mid-test): the header row
        # is the only one without "Keyboard".
        await expect(page.get_by_role("row").filter(has_not_text="Keyboard")).to_have_count(1)
        button = [
            page.get_by_role("row", name=f"Keyboard, {first}").get_by_role("button")
            for first in ("Ada", "Ben", "Cy")
        ]
        await button[0].focus()
        await page.keyboard.press("Enter")
        chosen = page.get_by_label("Primary provider", exact=True)
        await expect(chosen).to_be_focused()
        await page.keyboard.press("Escape")
        await expect(chosen).to_have_count(0)
        await expect(button[0]).to_be_focused()
        await page.keyboard.press("Enter")
        await chosen.select_option(label="Dr Roomy (no limit)")
        await page.get_by_role("button", name="Assign", exact=True).click()
        await page.get_by_role("status").get_by_text("is now the primary provider of").wait_for()
        await expect(page.get_by_role("row", name="Keyboard, Ada")).to_have_count(0)
        await expect(button[1]).to_be_focused()  # Ben's row, now where Ada's was
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="Keyboard, Cy")).to_be_focused()

    async def test_a_full_panel_is_marked_and_one_filled_meanwhile_explained(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """A full provider is marked so in the list and cannot be chosen (it read "Dr X
        (3 of 3)", and the API refused it); one that fills after it was chosen is explained
        in words, then marked full."""
        last_seat = _provider(live_api, "Lastseat")
        _patch(live_api, f"/v1/providers/{last_seat}", {"panel_capacity": 1})
        full = _provider(live_api, "Nomore")
        _patch(live_api, f"/v1/providers/{full}", {"panel_capacity": 0})
        await sign_in(page, live_api)
        await page.get_by_label("Name starts with").fill("<img")
        await page.get_by_role("button", name="Search").click()
        row = page.get_by_role("row", name=XSS_NAME + ", Xavier")
        await row.get_by_role("button").click()
        chosen = page.get_by_label("Primary provider", exact=True)
        await expect(chosen.get_by_role("option", name="Dr Nomore (0 of 0, full)")).to_be_disabled()
        await chosen.select_option(label="Dr Lastseat (0 of 1)")
        # Meanwhile, another coordinator gives Dr Lastseat the one patient they may have.
        body = {"first_name": "Taken", "last_name": "Seat", "dob": "1990-01-01"}
        other = str(live_api.post("/v1/patients", body)["id"])
        _put(live_api, f"/v1/patients/{other}/care-team/primary", {"provider_id": last_seat})
        await page.get_by_role("button", name="Assign", exact=True).click()
        alert = page.get_by_role("alert")
        await alert.get_by_text("The panel of Dr Lastseat is full").wait_for()
        assert "Raise their capacity on the Panels page" in await alert.inner_text()
        assert "{" not in await alert.inner_text()  # words, never the raw answer
        page.problems.clear()  # the browser logs the 409 itself
        now_full = chosen.get_by_role("option", name="Dr Lastseat (1 of 1, full)")
        await expect(now_full).to_be_disabled()
        await expect(page.get_by_role("button", name="Assign", exact=True)).to_be_disabled()
        await check_accessibility(page, "worklist, panel full")
        await screenshot(page, "worklist-panel-full")

    async def test_panels_show_full_ones_and_capacity_is_editable(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        # A panel near its capacity (its words were cut: "4/5 Ne"), and a long name.
        nearly = _provider(live_api, "Nearly-Full-Of-Patients With A Very Long Double Name")
        _patch(live_api, f"/v1/providers/{nearly}", {"panel_capacity": 5})
        for n in range(4):
            body = {"first_name": f"Near{n}", "last_name": "Panel", "dob": "1990-01-01"}
            patient = str(live_api.post("/v1/patients", body)["id"])
            _put(live_api, f"/v1/patients/{patient}/care-team/primary", {"provider_id": nearly})
        await sign_in(page, live_api)
        await page.get_by_role("link", name="Panels").click()
        row = page.get_by_role("row", name="Dr Fullpanel")
        await row.get_by_text("Full", exact=True).wait_for()
        await page.locator("svg.chart .bar.full").first.wait_for()
        drawn = await page.evaluate(
            """() => {
                const svg = document.querySelector("svg.chart").getBoundingClientRect();
                const texts = [...document.querySelectorAll("svg.chart text")].map((t) => {
                    const box = t.getBoundingClientRect();
                    return box.left >= svg.left && box.right <= svg.right + 0.5;
                });
                const bars = [...document.querySelectorAll("svg.chart g.bar")].map((g) => ({
                    name: (g.querySelector("text.label title") || {}).textContent,
                    label: (g.querySelector("text.label tspan") || {}).textContent,
                    figure: (g.querySelector("text.figure tspan") || {}).textContent,
                    share: g.querySelector(".fill")
                        ? g.querySelector(".fill").getBBox().width
                            / g.querySelector(".track").getBBox().width
                        : null,
                    open: g.querySelector(".track").classList.contains("open"),
                }));
                return {texts, bars};
            }"""
        )
        assert drawn["texts"] and all(drawn["texts"])  # every text whole, inside the drawing
        bars = {bar["name"]: bar for bar in drawn["bars"]}
        # Each bar is the panel against its own capacity: a panel of 1 of 1 is a full bar.
        assert bars["Dr Fullpanel"]["share"] == 1 and bars["Dr Fullpanel"]["figure"] == (
            "1 of 1, full"
        )
        near = bars["Dr Nearly-Full-Of-Patients With A Very Long Double Name"]
        assert near["share"] == pytest.approx(0.8) and near["figure"] == "4 of 5, near capacity"
        assert near["label"].endswith("…")  # cut to fit, the whole name in its title
        roomy = bars["Dr Roomy"]  # no capacity: an open track, nothing filled
        assert roomy["open"] and roomy["share"] is None
        assert roomy["figure"].endswith("no limit")
        await check_accessibility(page, "panels")
        await screenshot(page, "panels")
        await row.get_by_role("spinbutton", name="Capacity of Dr Fullpanel").fill("3")
        await row.get_by_role("button", name="Save the capacity of Dr Fullpanel").click()
        await page.get_by_role("status").get_by_text("capacity of Dr Fullpanel is now 3").wait_for()
        provider = live_api.get_json(f"/v1/providers/{seeded['full']}")
        assert provider["panel_capacity"] == 3

    async def test_the_timeline_answers_who_was_primary_on_a_past_date(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        await sign_in(page, live_api)
        await page.goto(f"{live_api.base_url}/console#/patient/{seeded['history']}")
        await page.get_by_role("heading", name="History, Hanna").wait_for()
        await expect(page.locator("svg.timeline rect.period.primary")).to_have_count(2)
        await expect(page.locator("svg.timeline rect.period.secondary")).to_have_count(1)
        past = (datetime.date.today() - datetime.timedelta(days=20)).isoformat()
        await page.get_by_label("Who was the primary on").fill(past)
        await page.get_by_role("button", name="Look up").click()
        answer = page.locator(".answer")
        await answer.get_by_text("all day").wait_for()
        await answer.get_by_text("the primary provider was Dr Roomy").wait_for()
        long_ago = (datetime.date.today() - datetime.timedelta(days=400)).isoformat()
        await page.get_by_label("Who was the primary on").fill(long_ago)
        await page.get_by_role("button", name="Look up").click()
        await answer.get_by_text("this patient had no primary provider").wait_for()
        await page.get_by_label("Who was the primary on").fill(past)
        await page.get_by_role("button", name="Look up").click()
        await answer.get_by_text("Dr Roomy").wait_for()
        # Every label of the axis is drawn whole, inside the drawing (the last one was cut).
        inside = await page.evaluate(
            """() => {
                const svg = document.querySelector("svg.timeline").getBoundingClientRect();
                return [...document.querySelectorAll("svg.timeline text")].map((t) => {
                    const box = t.getBoundingClientRect();
                    return box.left >= svg.left && box.right <= svg.right;
                });
            }"""
        )
        assert len(inside) >= 6 and all(inside)
        await check_accessibility(page, "patient")
        await page.evaluate("document.getElementById('history').scrollIntoView()")
        await screenshot(page, "patient")

    async def test_an_answer_for_a_day_looked_up_before_never_replaces_the_later_one(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """Looking up one day and then another, the first day's answer, read late, was
        drawn over the second's (the date field saying the second day)."""
        held: list[Any] = []
        asked = asyncio.Event()
        release = asyncio.Event()

        async def hold_the_first_look_up(route: Any) -> None:
            first = not held
            held.append(route.request)
            if first:
                asked.set()
                await release.wait()
            await route.continue_()

        await page.route("**/care-team?as_of=*", hold_the_first_look_up)
        await sign_in(page, live_api)
        await page.goto(f"{live_api.base_url}/console#/patient/{seeded['history']}")
        await page.get_by_role("heading", name="History, Hanna").wait_for()
        long_ago = (datetime.date.today() - datetime.timedelta(days=400)).isoformat()
        past = (datetime.date.today() - datetime.timedelta(days=20)).isoformat()
        await page.get_by_label("Who was the primary on").fill(long_ago)
        await page.get_by_role("button", name="Look up").click()
        await asyncio.wait_for(asked.wait(), 10)
        assert await look_up(page, past)  # answered while the first is still held
        release.set()
        await (await held[0].response()).finished()
        await page.wait_for_timeout(500)
        answer = page.locator(".answer")
        await expect(answer).to_have_count(1)
        await expect(answer).to_contain_text("the primary provider was Dr Roomy")
        await expect(answer).not_to_contain_text("no primary provider")

    async def test_a_day_looked_up_during_a_change_is_not_replaced_by_the_day_before(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any], database: Database
    ):
        """Day A's answer on screen; a change submitted; while it is under way, day B
        looked up and answered. Once the change was done, the answer recomputed was A's
        (the `answer` of the render the change began in), asked last, so B's was dropped
        while the date field said B (found by a review)."""
        body = {"first_name": "Rhea", "last_name": "Racechange", "dob": "1970-05-01"}
        patient = str(live_api.post("/v1/patients", body)["id"])
        primary = f"/v1/patients/{patient}/care-team/primary"
        _put(live_api, primary, {"provider_id": seeded["roomy"]})
        async with database.owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE care_team_periods SET valid = tstzrange(lower(valid) - interval "
                    "'40 days', upper(valid)) WHERE patient_id = :patient"
                ),
                {"patient": uuid.UUID(patient)},
            )
        asked, release = asyncio.Event(), asyncio.Event()

        async def hold_the_change(route: Any) -> None:
            if route.request.method == "PUT":
                asked.set()
                await release.wait()
            await route.continue_()

        await sign_in(page, live_api)
        await page.goto(f"{live_api.base_url}/console#/patient/{patient}")
        await page.get_by_role("heading", name="Racechange, Rhea").wait_for()
        day_a = datetime.date.today() - datetime.timedelta(days=20)
        day_b = datetime.date.today() - datetime.timedelta(days=10)
        await look_up(page, day_a.isoformat())
        await page.route("**/care-team/primary", hold_the_change)
        await page.get_by_label("New primary provider").select_option(value=seeded["taking"])
        await page.get_by_role("button", name="Make primary").click()
        await asyncio.wait_for(asked.wait(), 10)
        await look_up(page, day_b.isoformat())  # B's answer drawn while the change waits
        release.set()
        await page.get_by_role("row", name="Dr Taking Primary").wait_for()
        await page.wait_for_timeout(1000)
        assert await page.get_by_label("Who was the primary on").input_value() == day_b.isoformat()
        await expect(page.locator(".answer")).to_contain_text(f"{day_b.day} {day_b:%b %Y}")

    async def test_a_look_up_under_way_when_a_change_is_made_is_not_drawn_from_before_it(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """Today looked up, read whole before the change but answered after it (its last
        read held); the change made meanwhile. The change recomputed nothing (no answer
        was shown when it was submitted), and the look-up, still the latest, was drawn
        from before the change beside the team after it, its periods replacing the ones
        read after the change (found by a review)."""
        body = {"first_name": "Omar", "last_name": "Overtaken", "dob": "1970-05-01"}
        patient = str(live_api.post("/v1/patients", body)["id"])
        primary = f"/v1/patients/{patient}/care-team/primary"
        _put(live_api, primary, {"provider_id": seeded["roomy"]})
        asked, release = asyncio.Event(), asyncio.Event()
        held: list[Any] = []

        async def hold_the_look_ups_last_read(route: Any) -> None:
            if held or route.request.method != "GET":
                await route.continue_()
                return
            held.append(route.request)
            answer = await route.fetch()  # read now, before the change
            asked.set()
            await release.wait()
            await route.fulfill(response=answer)

        await sign_in(page, live_api)
        await page.goto(f"{live_api.base_url}/console#/patient/{patient}")
        await page.get_by_role("heading", name="Overtaken, Omar").wait_for()
        await page.get_by_role("row", name="Dr Roomy Primary").wait_for()
        await page.get_by_label("New primary provider").select_option(value=seeded["taking"])
        await page.route("**/care-team", hold_the_look_ups_last_read)
        await page.get_by_label("Who was the primary on").fill(datetime.date.today().isoformat())
        await page.get_by_role("button", name="Look up").click()
        await asyncio.wait_for(asked.wait(), 10)
        await page.get_by_role("button", name="Make primary").click()
        await page.get_by_role("row", name="Dr Taking Primary").wait_for()
        await page.wait_for_timeout(500)
        release.set()
        await page.wait_for_timeout(1500)
        answer = page.locator(".answer")
        await answer.wait_for()
        said = " ".join((await answer.inner_text()).split())
        # Drawn: "...; now (hh:mm): Dr Roomy." beside "Care team now: Dr Taking, Primary",
        # and the timeline's periods replaced by those read before the change.
        assert "Dr Taking" in said, said

    async def test_the_timeline_has_even_ticks_runs_to_now_and_shows_every_period(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """Ticks on whole days (they were five even fractions of the span: 17:46 then
        17:48), an axis ending at "now" that open periods reach, a change made a moment ago
        wide enough to see, and a long name cut with "…", whole in its title."""
        body = {"first_name": "Tim", "last_name": "Line", "dob": "1960-06-07"}
        patient = str(live_api.post("/v1/patients", body)["id"])
        long_name = _provider(live_api, "Bartholomew-Montgomery-Fitzwilliam Esq")
        members = f"/v1/patients/{patient}/care-team/members"
        live_api.post(members, {"provider_id": long_name, "reason": "patient_request"})
        primary = f"/v1/patients/{patient}/care-team/primary"
        _put(live_api, primary, {"provider_id": seeded["roomy"]})
        await sign_in(page, live_api)
        await page.goto(f"{live_api.base_url}/console#/patient/{patient}")
        await expect(page.locator("svg.timeline rect.period")).to_have_count(2)
        drawn = await page.evaluate(
            """() => {
                const svg = document.querySelector("svg.timeline");
                const axis = svg.querySelector("line.axis");
                const ticks = [...svg.querySelectorAll("text.tick[data-at]")].map(
                    (t) => Number(t.dataset.at));
                const periods = [...svg.querySelectorAll("rect.period")].map((r) => ({
                    x: r.getBBox().x, width: r.getBBox().width}));
                const label = svg.querySelector("text.label");
                return {
                    axisEnd: Number(axis.getAttribute("x2")),
                    last: svg.querySelector("text.tick.last").textContent,
                    ticks, periods,
                    minutes: ticks.map((t) => new Date(t).getMinutes()),
                    label: label.querySelector("tspan").textContent,
                    title: label.querySelector("title").textContent,
                };
            }"""
        )
        # The two periods began a moment ago: the span is about an hour, ticked every 15
        # minutes on the quarter hours, evenly.
        assert len(drawn["ticks"]) >= 3 and all(m % 15 == 0 for m in drawn["minutes"])
        steps = {b - a for a, b in itertools.pairwise(drawn["ticks"])}
        assert steps == {15 * 60_000}
        assert drawn["last"] == "now"
        for period in drawn["periods"]:  # open: each runs to the axis's end, visibly
            assert period["x"] + period["width"] == pytest.approx(drawn["axisEnd"])
            assert period["width"] >= 6
        assert drawn["title"].startswith("Dr Bartholomew-Montgomery-Fitzwilliam Esq")
        assert drawn["label"].endswith("…") and len(drawn["label"]) < len(drawn["title"])

    async def test_who_was_the_primary_is_told_for_the_whole_day_in_the_browsers_zone(
        self, browser: Any, live_api: LiveApi, seeded: dict[str, Any], dated_history: str
    ):
        """The day's start, each change within it and its end, in the browser's time zone
        (named): it asked for local noon only, so a primary from 17:46 UTC was "no primary"
        that day in New York. A future day is refused; a change made on the page recomputes
        the answer shown."""
        page = await new_tab(browser, "America/New_York")
        try:
            await sign_in(page, live_api)
            await page.goto(f"{live_api.base_url}/console#/patient/{dated_history}")
            await page.get_by_role("heading", name="Daylong, Dana").wait_for()
            zone = "times in America/New_York, this browser's time zone"
            assert await look_up(page, "2025-03-04") == (
                f"On 4 Mar 2025, all day (00:00 to midnight, {zone}), "
                "this patient had no primary provider."
            )
            assert await look_up(page, "2025-03-05") == (
                f"On 5 Mar 2025 ({zone}), the primary provider changed: "
                "at the start of the day (00:00): no primary provider; "
                "at 12:46: Dr Roomy became the primary provider; "
                "at the end of the day (midnight): Dr Roomy."
            )
            assert await look_up(page, "2025-03-06") == (
                f"On 6 Mar 2025 ({zone}), the primary provider changed: "
                "at the start of the day (00:00): Dr Roomy; "
                "at 09:30: Dr Taking became the primary provider; "
                "at the end of the day (midnight): Dr Taking."
            )
            await check_accessibility(page, "patient, who was the primary")
            await page.evaluate("document.getElementById('history').scrollIntoView()")
            await screenshot(page, "patient-day")
            # A day to come is refused in words, and no answer stays on screen.
            today = datetime.datetime.now(ZoneInfo("America/New_York")).date()
            await page.get_by_label("Who was the primary on").fill(
                (today + datetime.timedelta(days=1)).isoformat()
            )
            await page.get_by_role("button", name="Look up").click()
            await page.get_by_role("alert").get_by_text("is in the future").wait_for()
            await expect(page.locator(".answer")).to_have_count(0)
            said = await look_up(page, today.isoformat())
            assert said.startswith(f"Today, {today.day} {today:%b %Y}, from 00:00 until now ")
            assert said.endswith(f"{zone}), the primary provider has been Dr Taking.")
            # A change made here: the answer is recomputed, never left contradicting it.
            await page.get_by_label("New primary provider").select_option(value=seeded["roomy"])
            await page.get_by_role("button", name="Make primary").click()
            answer = page.locator(".answer")
            await answer.get_by_text("Dr Roomy became the primary provider").wait_for()
            said = " ".join((await answer.inner_text()).split())
            assert "at the start of the day (00:00): Dr Taking;" in said
            assert said.endswith(": Dr Roomy.") and "now (" in said
            assert page.problems == []
        finally:
            await page.context.close()

    async def test_the_browsers_time_zone_decides_the_day(
        self, browser: Any, live_api: LiveApi, seeded: dict[str, Any], dated_history: str
    ):
        """The same instants, in Tokyo: both changes fall on 6 Mar."""
        page = await new_tab(browser, "Asia/Tokyo")
        try:
            await sign_in(page, live_api)
            await page.goto(f"{live_api.base_url}/console#/patient/{dated_history}")
            assert await look_up(page, "2025-03-06") == (
                "On 6 Mar 2025 (times in Asia/Tokyo, this browser's time zone), the primary "
                "provider changed: at the start of the day (00:00): no primary provider; "
                "at 02:46: Dr Roomy became the primary provider; "
                "at 23:30: Dr Taking became the primary provider; "
                "at the end of the day (midnight): Dr Taking."
            )
            assert page.problems == []
        finally:
            await page.context.close()

    async def test_a_primary_changed_by_someone_else_first_is_said_plainly(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """On a patient and two providers of its own (with a capacity, so the list shows
        their counts): the test does not depend on which of this class's tests ran before
        it in its worker. After the 412, the team and the providers' counts are read again
        (the counts were stale: the provider who lost the patient still showed it)."""
        before = _provider(live_api, "Before")
        after = _provider(live_api, "After")
        for provider in (before, after):
            _patch(live_api, f"/v1/providers/{provider}", {"panel_capacity": 5})
        body = {"first_name": "Carla", "last_name": "Concurrent", "dob": "1980-02-03"}
        patient = str(live_api.post("/v1/patients", body)["id"])
        primary = f"/v1/patients/{patient}/care-team/primary"
        _put(live_api, primary, {"provider_id": before})
        await sign_in(page, live_api)
        await page.goto(f"{live_api.base_url}/console#/patient/{patient}")
        await page.get_by_role("row", name="Dr Before Primary").wait_for()
        chosen = page.get_by_label("New primary provider")
        await chosen.select_option(label="Dr After (0 of 5)")
        # Meanwhile, another coordinator changes the team (to the same provider, even).
        _put(live_api, primary, {"provider_id": after})
        await page.get_by_role("button", name="Make primary").click()
        alert = page.get_by_role("alert")
        await alert.get_by_text("Someone else changed this care team").wait_for()
        page.problems.clear()  # the browser logs the 412 itself
        # Read again, counts included, the change goes through.
        await page.get_by_role("row", name="Dr After Primary").wait_for()
        await chosen.select_option(label="Dr Before (0 of 5)")
        await page.get_by_role("button", name="Make primary").click()
        # The old primary stays on the team (the API's default), and the message says so.
        await (
            page.get_by_role("status")
            .get_by_text(
                "Dr Before is now the primary provider. Dr After stays on the care team as a "
                "secondary provider."
            )
            .wait_for()
        )
        await page.get_by_role("row", name="Dr After Secondary").wait_for()
        team = live_api.get_json(f"/v1/patients/{patient}/care-team")
        assert team["primary_provider_id"] == before

    async def test_one_patient_is_one_patient_and_roles_are_capitalised(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """The transfer list read "(1 patients)"; the period table wrote "primary"."""
        single = _provider(live_api, "Single")
        body = {"first_name": "Only", "last_name": "One", "dob": "1990-01-01"}
        patient = str(live_api.post("/v1/patients", body)["id"])
        _put(live_api, f"/v1/patients/{patient}/care-team/primary", {"provider_id": single})
        await sign_in(page, live_api)
        await page.get_by_role("link", name="Transfer").click()
        await page.get_by_label("From").select_option(label="Dr Single (1 patient)")
        await page.goto(f"{live_api.base_url}/console#/patient/{patient}")
        await page.get_by_text("Every period as a table").click()
        row = page.get_by_role("row", name="Dr Single")
        await expect(row.get_by_role("cell").first).to_have_text("Primary")

    @pytest.mark.parametrize("patient", ["not-a-patient", "7d6b0c7e-1f0a-4c3e-9d55-0a1b2c3d4e5f"])
    async def test_an_address_naming_no_patient_says_so_in_words(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any], patient: str
    ):
        """It said "Some of what was sent was not accepted (patient_id: must be a UUID
        (8-4-4-4-12 hexadecimal digits))"."""
        await sign_in(page, live_api)
        await page.goto(f"{live_api.base_url}/console#/patient/{patient}")
        await page.get_by_role("heading", name="No such patient").wait_for()
        shown = await page.locator("main").inner_text()
        assert "There is no such patient in your organization" in shown
        assert "UUID" not in shown and "not accepted" not in shown
        page.problems.clear()  # the browser logs a 404 itself

    async def test_a_credential_without_a_scope_is_told_in_words(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any], database: Database
    ):
        """Issue 26's scopes: a key that may read care teams and providers but not search
        patients signs in, and the worklist says what it lacks, in words."""
        organization = await _organization_of(database, live_api.key)
        async with AsyncSession(database.owner_engine) as owner:
            issued = await OrganizationService.create_api_key(
                db=owner,
                organization_id=organization,
                scopes=["system/CareTeam.rs", "system/Practitioner.rs"],
            )
        await sign_in(page, live_api, issued.key)
        alert = page.get_by_role("alert")
        await alert.get_by_text("is not allowed to do this").wait_for()
        shown = await alert.inner_text()
        assert "system/Patient.s" in shown and "{" not in shown
        page.problems.clear()  # the browser logs the 403 itself

    async def test_a_smart_access_token_signs_in_too(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any], database: Database
    ):
        """A SMART Backend Services access token pasted instead of a key works the same
        (read-only here: system/*.rs)."""
        organization = await _organization_of(database, live_api.key)
        key = ec_key()
        client_id = await register_client(
            database, organization, ["system/*.rs"], jwks=jwks_of(key)
        )
        token_url = f"{live_api.base_url}/auth/token"
        assertion = client_assertion(key, client_id, aud=token_url)
        async with httpx.AsyncClient() as http:
            answer = await http.post(token_url, data=token_form(assertion, "system/*.rs"))
        assert answer.status_code == 200, answer.text
        token = answer.json()["access_token"]
        await sign_in(page, live_api, token)
        await page.get_by_role("link", name=XSS_NAME + ", Xavier").wait_for()
        assert await page.evaluate("sessionStorage.getItem('careteam.apiKey')") == token

    async def test_a_transfer_previewed_confirmed_and_followed_to_the_end(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        await sign_in(page, live_api)
        await page.get_by_role("link", name="Transfer").click()
        await page.get_by_label("From").select_option(label="Dr Leaving (3 patients)")
        await page.get_by_label("To", exact=True).select_option(value=seeded["taking"])
        await page.get_by_role("button", name="Preview (dry run)").click()
        plan = page.locator("section.plan")
        await plan.get_by_text("Would move").wait_for()
        assert "3" in await plan.locator("dd").first.inner_text()
        await check_accessibility(page, "transfer")
        await screenshot(page, "transfer")
        await page.get_by_role("button", name="Confirm: move 3 patients").click()
        await page.get_by_role("heading", name="Transfer finished").wait_for()
        await page.get_by_text("Done: 3 patients moved to Dr Taking.").wait_for()
        assert await page.locator("progress").get_attribute("value") == "3"
        assert live_api.get_json(f"/v1/providers/{seeded['leaving']}")["panel_size"] == 0
        # The provider transferred from stays chosen, now with none (the list was blank).
        chosen = page.get_by_label("From").locator("option:checked")
        await expect(chosen).to_have_text("Dr Leaving (0 patients)")
        await check_accessibility(page, "transfer, done")
        await screenshot(page, "transfer-done")

    async def test_a_running_transfer_shows_what_it_has_moved_so_far(
        self, page: Any, live_api: LiveApi, seeded: dict[str, Any]
    ):
        """The transfer is one POST, committed batch by batch: the page reads the source's
        panel while it runs. Held here until the page has polled, with a panel that shrank
        after the page opened: the start is read when the transfer starts (it was the
        list's stale figure, so the page said "Moved 1 of 2" before anything moved). A
        poll's figure is shown, and the end is the transfer's own."""
        source = _provider(live_api, "Polled")
        target = _provider(live_api, "Gaining")
        patients = []
        for n in range(3):
            body = {"first_name": f"Polled{n}", "last_name": "Panel", "dob": "1990-01-01"}
            patients.append(str(live_api.post("/v1/patients", body)["id"]))
            primary = f"/v1/patients/{patients[-1]}/care-team/primary"
            _put(live_api, primary, {"provider_id": source})
        polls: list[int] = []
        polled = asyncio.Event()  # the start and two polls read while the POST is held
        figure: dict[str, int] = {}  # a panel size to answer instead of the server's
        release = asyncio.Event()

        async def provider_read(route: Any) -> None:
            answer = await route.fetch()
            polls.append(answer.status)
            if len(polls) >= 3:
                polled.set()
            body = await answer.json()
            await route.fulfill(response=answer, json={**body, **figure})

        async def transfer(route: Any) -> None:
            if route.request.post_data_json["dry_run"] is False:
                await release.wait()
            await route.continue_()

        await page.route(f"**/v1/providers/{source}", provider_read)
        await page.route(f"**/v1/providers/{source}/panel/transfer", transfer)
        await sign_in(page, live_api)
        await page.get_by_role("link", name="Transfer").click()
        await page.get_by_label("From").select_option(value=source)
        # Another coordinator moves one of the three away after the page has read the list.
        _put(live_api, f"/v1/patients/{patients[0]}/care-team/primary", {"provider_id": target})
        await page.get_by_label("To", exact=True).select_option(value=target)
        await page.get_by_role("button", name="Preview (dry run)").click()
        await page.get_by_role("button", name="Confirm: move 2 patients").click()
        label = page.locator("label[for=transfer-progress]")
        await asyncio.wait_for(polled.wait(), 10)
        await expect(label).to_have_text("Moved 0 of 2 so far")
        figure["panel_size"] = 1  # as if a first batch had moved one
        await expect(label).to_have_text("Moved 1 of 2 so far")
        progress = page.locator("progress")
        assert await progress.get_attribute("value") == "1"
        assert await progress.get_attribute("max") == "2"
        figure.clear()
        release.set()
        await page.get_by_role("heading", name="Transfer finished").wait_for()
        await expect(label).to_have_text("Moved 2 of 2")
        assert await progress.get_attribute("value") == "2"
        await page.get_by_text("Done: 2 patients moved to Dr Gaining.").wait_for()
        assert live_api.get_json(f"/v1/providers/{source}")["panel_size"] == 0
