// The care team console: one page, its screens chosen by the URL's fragment
// (#/worklist, #/panels, #/patient/<id>, #/transfer). A client of the /v1 API like any
// other: every call carries the API key (or SMART access token) the user pasted, kept in
// this tab's sessionStorage only (never a cookie, never the URL). Preact and htm render
// every value as text (never as HTML), so a name such as <img src=x onerror=...> shows
// as written.
import {
  html,
  render,
  useCallback,
  useEffect,
  useLayoutEffect,
  useRef,
  useState,
} from "./vendor/htm-preact-standalone.module.js";

const KEY = "careteam.apiKey";
const REASONS = [
  ["patient_request", "Patient request"],
  ["provider_request", "Provider request"],
  ["provider_left", "Provider left"],
  ["panel_rebalance", "Panel rebalance"],
  ["data_correction", "Data correction"],
  ["other", "Other"],
];
const PAGE_SIZE = 20;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const POLL_MS = 500; // a running transfer's progress is read this often

// --- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

// What the console itself refuses to answer, in words (never sent to the API).
class Refusal extends Error {}

function apiKey() {
  return sessionStorage.getItem(KEY);
}

async function api(method, path, { body, headers = {} } = {}) {
  const sent = { ...headers, Authorization: `Bearer ${apiKey()}` };
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, { error: "network" });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (err) {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, etag: response.headers.get("ETag") };
}

function query(params) {
  const given = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return given.length ? "?" + new URLSearchParams(given).toString() : "";
}

async function allPages(path, params = {}) {
  const items = [];
  let cursor;
  for (;;) {
    const { data } = await api("GET", path + query({ ...params, limit: 200, cursor }));
    items.push(...data.items);
    if (!data.next_cursor) return items;
    cursor = data.next_cursor;
  }
}

// --- words ------------------------------------------------------------------------------

function personName(p) {
  if (!p) return "an unknown provider";
  const first = p.first_name || "";
  const last = p.last_name || "";
  return `${first} ${last}`.trim() || "(no name)";
}

function patientName(p) {
  const last = p.last_name || "";
  const first = p.first_name || "";
  return last && first ? `${last}, ${first}` : last || first || "(no name)";
}

// What a change of primary did, from the team the API answered after it: the old primary
// stays on the team as a secondary (the API's default), or is no longer on it.
function primaryChanged(team, byId, newId, oldId, ofPatient = "") {
  const said = `${personName(byId[newId])} is now the primary provider${ofPatient}.`;
  if (!oldId || oldId === newId) return said;
  const old = personName(byId[oldId]);
  const stays = team.members.some((m) => m.provider_id === oldId);
  return `${said} ${old} ${stays ? "stays on the care team as a secondary provider" : "is no longer on the care team"}.`;
}

// "1 patient", "2 patients".
function patients(n) {
  return `${n} patient${n === 1 ? "" : "s"}`;
}

const ROLES = { primary: "Primary", secondary: "Secondary" };

function reasonLabel(value) {
  const found = REASONS.find(([v]) => v === value);
  return found ? found[1] : value || "";
}

function formatDate(value) {
  if (!value) return "";
  const date = new Date(value.length === 10 ? `${value}T00:00:00` : value);
  return date.toLocaleDateString("en-GB", { year: "numeric", month: "short", day: "numeric" });
}

// What went wrong, in words: never the raw answer. `signingIn`: said on the sign-in screen
// (which has no "Sign out").
function describe(err, providers = {}, signingIn = false) {
  if (err instanceof Refusal) return err.message;
  if (!(err instanceof ApiError)) return `Something went wrong in the console: ${err.message}`;
  const p = err.problem;
  const code = p.error;
  const provider = p.detail && /provider ([0-9a-f-]{36})/.exec(p.detail);
  const who = provider && providers[provider[1]] ? personName(providers[provider[1]]) : "that provider";
  switch (code) {
    case "network":
      return "The server could not be reached. Check your connection and try again.";
    case "unauthorized":
      return `Your API key or access token was not accepted (mistyped, revoked, or an access token that has expired). ${signingIn ? "Check it and try again." : "Sign out and sign in again with a valid one."}`;
    case "insufficient_scope": {
      const needed = /needs: (\S+)$/.exec(p.detail || "");
      const scope = needed ? ` (it lacks the scope ${needed[1]})` : "";
      return `Your API key or access token is not allowed to do this${scope}. Ask your administrator for one that is, then ${signingIn ? "" : "sign out and "}sign in with it.`;
    }
    case "panel_full": {
      const counts = /\(([^)]*) patients\)/.exec(p.detail || "");
      const figure = counts ? ` (${counts[1]} patients)` : "";
      return `The panel of ${who} is full${figure}: they cannot take another primary patient. Raise their capacity on the Panels page, or choose another provider.`;
    }
    case "precondition_failed":
      return "Someone else changed this care team after you opened it, so nothing was changed. The team shown now is the current one: check it and try again.";
    case "provider_inactive":
      return `${who[0].toUpperCase() + who.slice(1)} is inactive and cannot be given patients.`;
    case "provider_already_primary":
      return `${who[0].toUpperCase() + who.slice(1)} is already this patient's primary provider.`;
    case "transfer_in_progress":
      return "Another transfer of one of these providers is running. Wait until it has finished, then try again.";
    case "provider_has_patients":
      return `${who[0].toUpperCase() + who.slice(1)} is still the primary provider of some patients: transfer the panel first.`;
    case "patient_not_found":
      return "This patient was not found in your organization.";
    case "provider_not_found":
      return "That provider was not found in your organization.";
    case "invalid_cursor":
      return "The list changed while you were paging through it. Go back to the first page.";
    case "busy":
    case "database_unavailable":
    case "outcome_unknown":
      return "The service is busy or briefly unavailable. Wait a few seconds and try again (reload first if you were saving).";
    case "validation_error":
    case "invalid_argument": {
      const fields = (p.errors || []).map((e) => `${e.field}: ${e.detail}`).join("; ");
      return `Some of what was sent was not accepted${fields ? ` (${fields})` : p.detail ? ` (${p.detail})` : ""}.`;
    }
    default:
      if (err.status >= 500) return "The server failed to answer. Try again; if it keeps failing, tell your administrator.";
      return [p.title, p.detail].filter(Boolean).join(": ") || `The request failed (status ${err.status}).`;
  }
}

function Problem({ error, providers, signingIn = false }) {
  if (!error) return null;
  return html`<div class="problem" role="alert">${describe(error, providers, signingIn)}</div>`;
}

function Notice({ text }) {
  if (!text) return null;
  return html`<div class="notice" role="status" tabindex="-1">${text}</div>`;
}

// --- shared data --------------------------------------------------------------------------

// Answers can come back in another order than they were asked for. `latest()` is called
// as a read is asked for, and gives a check that is true while no later read has been
// asked for: an answer that fails it is dropped, never drawn over the one asked after it.
function useLatest() {
  const asked = useRef(0);
  return useCallback(() => {
    const mine = ++asked.current;
    return () => mine === asked.current;
  }, []);
}

function useProviders() {
  const [list, setList] = useState(null);
  const [error, setError] = useState(null);
  const reload = useCallback(async () => {
    try {
      setList(await allPages("/v1/providers"));
    } catch (err) {
      setError(err);
    }
  }, []);
  useEffect(() => {
    reload();
  }, [reload]);
  const byId = {};
  for (const p of list || []) byId[p.id] = p;
  return { list: list || [], byId, error, reload, loaded: list !== null };
}

// The active providers to choose from, each with their panel against their capacity; a
// full one is marked so and cannot be chosen (the API would refuse it: 409 panel_full).
function ProviderOptions({ providers, exclude }) {
  return providers
    .filter((p) => p.active && p.id !== exclude)
    .sort((a, b) => personName(a).localeCompare(personName(b)))
    .map((p) => {
      const full = p.panel_capacity !== null && p.panel_size >= p.panel_capacity;
      const capacity = p.panel_capacity === null ? "no limit" : `${p.panel_size} of ${p.panel_capacity}${full ? ", full" : ""}`;
      return html`<option value=${p.id} disabled=${full}>${personName(p)} (${capacity})</option>`;
    });
}

function ReasonSelect({ id, value, onChange }) {
  return html`<select id=${id} value=${value} onChange=${(e) => onChange(e.target.value)}>
    ${REASONS.map(([v, label]) => html`<option value=${v}>${label}</option>`)}
  </select>`;
}

// --- sign-in ----------------------------------------------------------------------------

function SignIn({ onSignedIn }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    sessionStorage.setItem(KEY, key.trim());
    try {
      await api("GET", "/v1/reports/panels");
      onSignedIn();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  return html`<main id="content" class="page narrow">
    <h1>Care team console</h1>
    <p>Paste an API key of your organization (the one <code>careteam serve</code> printed, or one from <code>careteam key create</code>),
      or a SMART access token of one of its clients.
      It is kept in this browser tab only, until you sign out or close the tab.</p>
    <form onSubmit=${submit} class="stack">
      <label for="api-key">API key or access token</label>
      <input id="api-key" type="password" autocomplete="off" spellcheck="false" required
        value=${key} onInput=${(e) => setKey(e.target.value)} />
      <button type="submit" disabled=${busy || !key.trim()}>Sign in</button>
    </form>
    <${Problem} error=${error} signingIn=${true} />
  </main>`;
}

// --- worklist ---------------------------------------------------------------------------

function AssignForm({ patient, providers, onDone, onCancel }) {
  const [provider, setProvider] = useState("");
  const [reason, setReason] = useState("patient_request");
  const [note, setNote] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const first = useRef(null);
  useEffect(() => first.current && first.current.focus(), []);
  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body = { provider_id: provider, reason, ...(note.trim() ? { note: note.trim() } : {}) };
      const { data } = await api("PUT", `/v1/patients/${patient.id}/care-team/primary`, { body });
      onDone(primaryChanged(data, providers.byId, provider, patient.primary_provider_id, ` of ${patientName(patient)}`));
    } catch (err) {
      setError(err);
      if (err.problem && err.problem.error === "panel_full") {
        setProvider(""); // now marked full, and not to be chosen again
        providers.reload();
      }
    } finally {
      setBusy(false);
    }
  }
  const id = patient.id;
  function escape(event) {
    if (event.key === "Escape") {
      event.preventDefault();
      onCancel();
    }
  }
  return html`<form class="assign" onSubmit=${submit} onKeyDown=${escape} aria-label=${`Assign a primary provider to ${patientName(patient)}`}>
    <div class="fields">
      <div><label for=${`provider-${id}`}>Primary provider</label>
        <select id=${`provider-${id}`} ref=${first} required value=${provider} onChange=${(e) => setProvider(e.target.value)}>
          <option value="">Choose a provider…</option>
          <${ProviderOptions} providers=${providers.list} />
        </select></div>
      <div><label for=${`reason-${id}`}>Reason</label>
        <${ReasonSelect} id=${`reason-${id}`} value=${reason} onChange=${setReason} /></div>
      <div class="wide"><label for=${`note-${id}`}>Note (optional)</label>
        <input id=${`note-${id}`} maxlength="500" value=${note} onInput=${(e) => setNote(e.target.value)} /></div>
    </div>
    <div class="actions">
      <button type="submit" disabled=${busy || !provider}>Assign</button>
      <button type="button" class="secondary" onClick=${onCancel}>Cancel</button>
    </div>
    <${Problem} error=${error} providers=${providers.byId} />
  </form>`;
}

// What an empty page of the worklist means, in words: never "everyone has a primary"
// when only a search found nobody.
function emptyWords(shown, pageNumber) {
  if (pageNumber > 1) return "Nothing more on this page: go back to the previous page.";
  if (shown.name) {
    return shown.filter === "none"
      ? `No patient without a primary provider matches “${shown.name}”.`
      : `No patient matches “${shown.name}”.`;
  }
  return shown.filter === "none" ? "Every patient of your organization has a primary provider." : "Your organization has no patients yet.";
}

function Worklist() {
  const providers = useProviders();
  const [search, setSearch] = useState("");
  const [which, setWhich] = useState("none");
  const [pages, setPages] = useState([undefined]); // the cursors of the pages seen
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const [open, setOpen] = useState(null);
  const [notice, setNotice] = useState("");
  // Where the keyboard's focus goes once the page has been drawn: a row's Assign button
  // ({ patient }), or after an assignment the row now where that one was ({ index,
  // assigned }); with no row left, the message saying what was done.
  const [focus, setFocus] = useState(null);
  useEffect(() => {
    if (!focus) return;
    setFocus(null);
    const buttons = [...document.querySelectorAll("#content button[data-assign]")];
    let target;
    if (focus.patient) target = buttons.find((b) => b.dataset.assign === focus.patient);
    else {
      const at = buttons[focus.index] && buttons[focus.index].dataset.assign === focus.assigned ? focus.index + 1 : focus.index;
      target = buttons[Math.min(at, buttons.length - 1)] || document.querySelector("#content .notice");
    }
    if (target) target.focus();
  }, [focus]);
  // The search the page shows (the form's fields may have changed since).
  const [shown, setShown] = useState({ name: "", filter: "none" });
  const latest = useLatest();

  const load = useCallback(async (cursor, name, filter) => {
    const current = latest();
    setError(null);
    setShown({ name: name.trim(), filter });
    try {
      const params = { sort: "name", limit: PAGE_SIZE, name: name.trim() || undefined, cursor };
      if (filter === "none") params.primary = "none";
      const { data } = await api("GET", "/v1/patients" + query(params));
      if (current()) setPage(data);
    } catch (err) {
      if (!current()) return;
      setError(err);
      setPage({ items: [], next_cursor: null });
    }
  }, []);
  useEffect(() => {
    load(undefined, "", "none");
  }, [load]);

  function restart(event) {
    if (event) event.preventDefault();
    setPages([undefined]);
    setOpen(null);
    load(undefined, search, which);
  }
  function next() {
    setPages([...pages, page.next_cursor]);
    setOpen(null);
    load(page.next_cursor, shown.name, shown.filter);
  }
  function previous() {
    const earlier = pages.slice(0, -1);
    setPages(earlier);
    setOpen(null);
    load(earlier[earlier.length - 1], shown.name, shown.filter);
  }
  async function assigned(text, patientId, index) {
    setNotice(text);
    setOpen(null);
    providers.reload();
    await load(pages[pages.length - 1], shown.name, shown.filter);
    setFocus({ index, assigned: patientId });
  }
  function closeForm(patientId) {
    setOpen(null);
    setFocus({ patient: patientId });
  }

  return html`<main id="content" class="page">
    <h1>Worklist</h1>
    <p>Patients ${shown.filter === "none" ? "without a primary provider" : "of your organization"}, by name. Assign a primary provider from the row.</p>
    <form class="toolbar" onSubmit=${restart} role="search">
      <div><label for="search">Name starts with</label>
        <input id="search" type="search" value=${search} onInput=${(e) => setSearch(e.target.value)} /></div>
      <div><label for="which">Show</label>
        <select id="which" value=${which} onChange=${(e) => setWhich(e.target.value)}>
          <option value="none">Patients without a primary</option>
          <option value="all">All patients</option>
        </select></div>
      <button type="submit">Search</button>
    </form>
    <${Notice} text=${notice} />
    <${Problem} error=${error || providers.error} providers=${providers.byId} />
    ${page === null
      ? html`<p>Loading…</p>`
      : page.items.length === 0
        ? html`<p class="empty">${emptyWords(shown, pages.length)}</p>`
        : html`<table class="list">
      <caption class="visually-hidden">Patients, page ${pages.length}</caption>
      <thead><tr><th scope="col">Patient</th><th scope="col">Born</th><th scope="col">Primary provider</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>
        ${page.items.map((p, i) => html`
          <tr key=${p.id}>
            <th scope="row"><a href=${`#/patient/${p.id}`}>${patientName(p)}</a></th>
            <td>${formatDate(p.dob)}</td>
            <td>${p.primary_provider_id ? personName(providers.byId[p.primary_provider_id]) : html`<span class="badge">None</span>`}</td>
            <td>${open === p.id ? null : html`<button type="button" data-assign=${p.id} onClick=${() => { setNotice(""); setOpen(p.id); }}>Assign primary…<span class="visually-hidden"> for ${patientName(p)}</span></button>`}</td>
          </tr>
          ${open === p.id ? html`<tr class="form-row"><td colspan="4">
            <${AssignForm} patient=${p} providers=${providers} onDone=${(text) => assigned(text, p.id, i)} onCancel=${() => closeForm(p.id)} />
          </td></tr>` : null}`)}
      </tbody>
    </table>`}
    ${page && (pages.length > 1 || page.next_cursor)
      ? html`<nav class="pager" aria-label="Pages">
      <button type="button" class="secondary" disabled=${pages.length <= 1} onClick=${previous}>Previous page</button>
      <span>Page ${pages.length}</span>
      <button type="button" class="secondary" disabled=${!page.next_cursor} onClick=${next}>Next page</button>
    </nav>`
      : null}
  </main>`;
}

// --- panels -----------------------------------------------------------------------------

function status(p) {
  if (p.panel_capacity === null) return ["nolimit", "No limit"];
  if (p.panel_size >= p.panel_capacity) return ["full", "Full"];
  if (p.panel_size >= 0.8 * p.panel_capacity) return ["near", "Near capacity"];
  return ["ok", "Room"];
}

// A line of text in a drawing, kept within `width` (its box measured once drawn): cut with
// "…" if it is longer, the whole of it in its title (shown on hover, read by the chart's
// label as well).
function FitText({ text, width, x, y, className }) {
  const ref = useRef(null);
  const [kept, setKept] = useState(text.length);
  const cut = (n) => (n >= text.length ? text : `${text.slice(0, n).trimEnd()}…`);
  useLayoutEffect(() => {
    const span = ref.current;
    if (!span || !span.firstChild || typeof span.getComputedTextLength !== "function") return;
    const fits = (n) => {
      span.firstChild.data = cut(n); // the node Preact drew: it is redrawn as cut(kept)
      return span.getComputedTextLength() <= width;
    };
    let n = text.length;
    if (!fits(n)) {
      let low = 0;
      let high = n - 1;
      while (low < high) {
        const mid = Math.ceil((low + high) / 2);
        if (fits(mid)) low = mid;
        else high = mid - 1;
      }
      n = low;
    }
    fits(n);
    if (n !== kept) setKept(n);
  }, [text, width]);
  return html`<text x=${x} y=${y} class=${className}><title>${text}</title><tspan ref=${ref}>${cut(kept)}</tspan></text>`;
}

// Each bar is a panel against its own capacity (a full panel is a full bar, whatever its
// size), with the figure in words beside it; a provider without a capacity has an open
// track and no fill (there is nothing to fill), and says "no limit".
function PanelChart({ rows }) {
  const nameWidth = 210;
  const left = 220;
  const width = 380;
  const figureAt = left + width + 12;
  const total = 980;
  const rowHeight = 34;
  const height = rows.length * rowHeight + 10;
  const words = (r) => {
    const [kind] = status(r);
    const figure = `${r.panel_size} of ${r.panel_capacity}`;
    if (kind === "nolimit") return `${patients(r.panel_size)}, no limit`;
    if (kind === "full") return `${figure}, full${r.panel_size > r.panel_capacity ? " (over capacity)" : ""}`;
    return kind === "near" ? `${figure}, near capacity` : figure;
  };
  const summary = rows.map((r) => `${r.name}: ${words(r)}`).join("; ");
  return html`<svg class="chart" viewBox=${`0 0 ${total} ${height}`} role="img" aria-label=${`Each provider's panel against their own capacity. ${summary}`}>
    ${rows.map((r, i) => {
      const y = 6 + i * rowHeight;
      const [kind] = status(r);
      const share = r.panel_capacity === null ? 0 : r.panel_capacity === 0 ? 1 : Math.min(1, r.panel_size / r.panel_capacity);
      return html`<g class=${`bar ${kind}`} key=${r.provider_id}>
        <${FitText} text=${r.name} width=${nameWidth} x="0" y=${y + 17} className="label" />
        <rect x=${left} y=${y} width=${width} height="22" class=${kind === "nolimit" ? "track open" : "track"} />
        ${share > 0 ? html`<rect x=${left} y=${y} width=${Math.max(share * width, 2)} height="22" class="fill" />` : null}
        <${FitText} text=${words(r)} width=${total - figureAt - 4} x=${figureAt} y=${y + 17} className="figure" />
      </g>`;
    })}
  </svg>`;
}

function CapacityEditor({ row, onSaved }) {
  const [value, setValue] = useState(row.panel_capacity === null ? "" : String(row.panel_capacity));
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  async function save(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const capacity = value.trim() === "" ? null : Number(value);
      await api("PATCH", `/v1/providers/${row.provider_id}`, { body: { panel_capacity: capacity } });
      onSaved(`The capacity of ${row.name} is now ${capacity === null ? "unlimited" : capacity}.`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  const id = `capacity-${row.provider_id}`;
  return html`<form class="inline" onSubmit=${save}>
    <label for=${id} class="visually-hidden">Capacity of ${row.name} (empty: no limit)</label>
    <input id=${id} type="number" min="0" step="1" inputmode="numeric" placeholder="no limit"
      value=${value} onInput=${(e) => setValue(e.target.value)} />
    <button type="submit" class="secondary" disabled=${busy} aria-label=${`Save the capacity of ${row.name}`}>Save</button>
    <${Problem} error=${error} />
  </form>`;
}

function Panels() {
  const providers = useProviders();
  const [report, setReport] = useState(null);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState("");
  const load = useCallback(async () => {
    try {
      setReport((await api("GET", "/v1/reports/panels")).data);
    } catch (err) {
      setError(err);
    }
  }, []);
  useEffect(() => {
    load();
  }, [load]);
  const rows = (report ? report.items : [])
    .map((r) => ({ ...r, name: personName(providers.byId[r.provider_id]) }))
    .sort((a, b) => a.name.localeCompare(b.name));
  function saved(text) {
    setNotice(text);
    providers.reload();
    load();
  }
  return html`<main id="content" class="page">
    <h1>Panels</h1>
    <p>Each provider's panel (the patients they are the primary provider of) against their own capacity: a bar is full when the panel is, and a dashed, empty bar is a provider with no limit. <span class="key full">Full</span> and <span class="key near">near capacity</span> (80% or more) stand out.</p>
    <${Notice} text=${notice} />
    <${Problem} error=${error || providers.error} />
    ${report && html`<p>${report.patients_without_primary} patient${report.patients_without_primary === 1 ? " has" : "s have"} no primary provider: <a href="#/worklist">open the worklist</a>.</p>`}
    ${report && providers.loaded && html`
      <${PanelChart} rows=${rows.filter((r) => r.active)} />
      <table class="list">
        <caption>Panels and capacity (leave the capacity empty for no limit)</caption>
        <thead><tr><th scope="col">Provider</th><th scope="col">Active</th><th scope="col">Panel</th><th scope="col">Status</th><th scope="col">Capacity</th></tr></thead>
        <tbody>${rows.map((r) => html`<tr key=${r.provider_id}>
          <th scope="row">${r.name}</th>
          <td>${r.active ? "Yes" : "No"}</td>
          <td>${r.panel_size}</td>
          <td><span class=${`badge ${status(r)[0]}`}>${status(r)[1]}</span></td>
          <td><${CapacityEditor} row=${r} onSaved=${saved} key=${`${r.provider_id}-${r.panel_capacity}`} /></td>
        </tr>`)}</tbody>
      </table>`}
  </main>`;
}

// --- patient ----------------------------------------------------------------------------

const DAY = 86400000;

// Even ticks on the browser's calendar: the first step of these (minutes, hours, days,
// months, years) that puts at most six on the span, at whole multiples of it.
const MINUTE = 60000;
const HOUR = 60 * MINUTE;
const TICK_STEPS = [
  ...[1, 2, 5, 10, 15, 30].map((n) => ["minute", n, n * MINUTE]),
  ...[1, 2, 3, 6, 12].map((n) => ["hour", n, n * HOUR]),
  ...[1, 2, 7, 14].map((n) => ["day", n, n * DAY]),
  ...[1, 2, 3, 6].map((n) => ["month", n, n * 30 * DAY]),
  ...[1, 2, 5, 10, 20, 50, 100].map((n) => ["year", n, n * 365 * DAY]),
];

function timeTicks(from, to) {
  const [unit, n] = TICK_STEPS.find(([, , ms]) => (to - from) / ms <= 6) || TICK_STEPS[TICK_STEPS.length - 1];
  // The unit's first boundary at or after `from`, then on to a whole multiple of n.
  const d = new Date(from);
  const units = {
    minute: [() => d.setSeconds(0, 0), (k) => d.setMinutes(d.getMinutes() + k), () => d.getMinutes()],
    hour: [() => d.setMinutes(0, 0, 0), (k) => d.setHours(d.getHours() + k), () => d.getHours()],
    // a week's ticks on Mondays
    day: [() => d.setHours(0, 0, 0, 0), (k) => d.setDate(d.getDate() + k), () => (n >= 7 ? (d.getDay() + 6) % 7 : 0)],
    month: [() => d.setTime(new Date(d.getFullYear(), d.getMonth(), 1).getTime()), (k) => d.setMonth(d.getMonth() + k), () => d.getMonth()],
    year: [() => d.setTime(new Date(d.getFullYear(), 0, 1).getTime()), (k) => d.setFullYear(d.getFullYear() + k), () => d.getFullYear()],
  };
  const [floor, add, count] = units[unit];
  floor();
  if (d.getTime() < from) add(1);
  for (let guard = 0; count() % n !== 0 && guard < 100; guard += 1) add(1);
  const ticks = [];
  while (d.getTime() <= to && ticks.length < 20) {
    ticks.push(d.getTime());
    add(n);
  }
  const years = new Date(from).getFullYear() !== new Date(to).getFullYear();
  const label = (t) => {
    const at = new Date(t);
    const midnight = at.getHours() === 0 && at.getMinutes() === 0;
    if (unit === "year") return String(at.getFullYear());
    if (unit === "month") return at.toLocaleDateString("en-GB", { month: "short", year: "numeric" });
    if (unit === "day" || midnight) {
      return at.toLocaleDateString("en-GB", { day: "numeric", month: "short", ...(years ? { year: "numeric" } : {}) });
    }
    return at.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  };
  return ticks.map((t) => ({ at: t, label: label(t) }));
}

// The care team's periods on one axis that ends now (an open period runs to its end); a
// period too short to see is drawn a few pixels wide.
function Timeline({ periods, providers, day }) {
  if (!periods.length) return html`<p>No care team yet: nothing to draw.</p>`;
  const now = Date.now();
  const starts = periods.map((p) => Date.parse(p.valid_from));
  const to = now;
  let from = Math.min(...starts, day ? day.from : Infinity, to - HOUR);
  from -= (to - from) * 0.03; // the first period starts a little after the axis does
  const order = [];
  for (const p of periods) if (!order.includes(p.provider_id)) order.push(p.provider_id);
  const left = 200;
  const width = 600;
  const total = 820;
  const shortest = 6;
  const rowHeight = 30;
  const axisY = order.length * rowHeight + 6;
  const height = axisY + 30;
  const x = (t) => left + ((Math.min(t, to) - from) / (to - from)) * width;
  // Each tick's label takes about 70 pixels: none closer than that to "now" at the end.
  const ticks = timeTicks(from, to).filter((t) => x(to) - x(t.at) >= 70);
  const summary = periods
    .map((p) => `${personName(providers[p.provider_id])}, ${p.role}, from ${formatDate(p.valid_from)} ${p.valid_to ? `to ${formatDate(p.valid_to)}` : "until now"}`)
    .join("; ");
  return html`<svg class="timeline" viewBox=${`0 0 ${total} ${height}`} role="img" aria-label=${`Care team timeline, until now. ${summary}`}>
    <defs>
      <pattern id="stripes" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
        <rect width="6" height="6" class="stripe-back" /><line x1="0" y1="0" x2="0" y2="6" class="stripe" />
      </pattern>
    </defs>
    ${order.map((id, i) => html`<${FitText} key=${`l-${id}`} text=${personName(providers[id])} width=${left - 12} x="0" y=${i * rowHeight + 20} className="label" />`)}
    ${periods.map((p, n) => {
      const i = order.indexOf(p.provider_id);
      const start = x(Date.parse(p.valid_from));
      const end = p.valid_to ? x(Date.parse(p.valid_to)) : x(to);
      const drawn = Math.max(end - start, shortest);
      return html`<rect key=${`p-${n}`} x=${Math.min(start, left + width - drawn)} y=${i * rowHeight + 6} width=${drawn} height="20"
        class=${p.role === "primary" ? "period primary" : "period secondary"} />`;
    })}
    <line x1=${left} x2=${left + width} y1=${axisY} y2=${axisY} class="axis" />
    ${ticks.map((t) => html`<line key=${`m-${t.at}`} x1=${x(t.at)} x2=${x(t.at)} y1=${axisY} y2=${axisY + 4} class="axis" />
      <text key=${`t-${t.at}`} x=${x(t.at)} y=${axisY + 20} class="tick" data-at=${t.at}>${t.label}</text>`)}
    <line x1=${left + width} x2=${left + width} y1="0" y2=${axisY + 4} class="now" />
    <text x=${left + width} y=${axisY + 20} class="tick last">now</text>
    ${day ? html`<rect x=${x(day.from)} width=${Math.max(x(day.to) - x(day.from), 2)} y="0" height=${axisY + 2} class="day" />
      <line x1=${x(day.from)} x2=${x(day.from)} y1="0" y2=${axisY + 2} class="marker" />
      <line x1=${x(day.to)} x2=${x(day.to)} y1="0" y2=${axisY + 2} class="marker" />` : null}
  </svg>`;
}

// --- who was the primary on a date -------------------------------------------------------

// The answer is about a whole day of this browser's calendar (its time zone, named in the
// answer): the primary at the day's start, every change within it, and the primary at its
// end (or now, today). The changes come from the periods; the API's own `as_of` reads at
// the two ends must agree with them, or nothing is said (the team changed meanwhile).

const TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "this browser's time zone";

// An API instant ("2026-12-07T17:46:12.345678Z", or with +00:00) in microseconds since the
// epoch: Date keeps milliseconds only, and a change 0.4 ms after midnight is in that day.
function micros(instant) {
  const fraction = /\.(\d+)/.exec(instant);
  const whole = Date.parse(instant.replace(/\.\d+/, ""));
  return whole * 1000 + (fraction ? Number((fraction[1] + "000000").slice(0, 6)) : 0);
}

// Microseconds since the epoch as an RFC 3339 instant (UTC, six digits).
function instantOf(us) {
  const ms = Math.floor(us / 1000);
  return new Date(ms).toISOString().replace("Z", `${String(us - ms * 1000).padStart(3, "0")}Z`);
}

function localDate(when = new Date()) {
  const two = (n) => String(n).padStart(2, "0");
  return `${when.getFullYear()}-${two(when.getMonth() + 1)}-${two(when.getDate())}`;
}

function clock(us) {
  return new Date(Math.floor(us / 1000)).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
}

async function primaryOn(patientId, date) {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(date) || date < "1900-01-01") {
    throw new Refusal("Choose a date from 1 Jan 1900 on.");
  }
  const today = localDate();
  if (date > today) {
    throw new Refusal(`${formatDate(date)} is in the future: the console can say who the primary was up to now, not who it will be.`);
  }
  const [y, m, d] = date.split("-").map(Number);
  const start = new Date(y, m - 1, d).getTime() * 1000; // local midnight
  const end = new Date(y, m - 1, d + 1).getTime() * 1000; // the next one
  const isToday = date === today;
  const periods = await allPages(`/v1/patients/${patientId}/care-team/periods`);
  const atStart = (await api("GET", `/v1/patients/${patientId}/care-team${query({ as_of: instantOf(start) })}`)).data;
  // Today, the end is now: the current team, read after the periods.
  const endPath = isToday ? "" : query({ as_of: instantOf(end - 1) });
  const atEnd = (await api("GET", `/v1/patients/${patientId}/care-team${endPath}`)).data;

  const primaries = periods
    .filter((p) => p.role === "primary")
    .map((p) => ({ id: p.provider_id, from: micros(p.valid_from), to: p.valid_to ? micros(p.valid_to) : Infinity }));
  const primaryAt = (t) => {
    const held = primaries.filter((p) => p.from <= t && t < p.to);
    if (held.length > 1) throw new Refusal("The periods of this care team overlap, so the console cannot say; tell your administrator.");
    return held.length ? held[0].id : null;
  };
  const bounds = [...new Set(primaries.flatMap((p) => [p.from, p.to]))]
    .filter((t) => t > start && t !== Infinity)
    .sort((a, b) => a - b);
  if (isToday && bounds.some((t) => t >= end)) {
    throw new Refusal("This computer's clock is behind the server's, so the console cannot say which day a change fell on. Check the clock and look up again.");
  }
  const first = primaryAt(start);
  const changes = [];
  let current = first;
  for (const t of bounds.filter((b) => b < end)) {
    const next = primaryAt(t);
    if (next !== current) changes.push({ at: t, provider: next });
    current = next;
  }
  const primaryOf = (team) => {
    const found = team.members.find((member) => member.is_primary_provider);
    return found ? found.provider_id : null;
  };
  if (primaryOf(atStart) !== first || primaryOf(atEnd) !== current) {
    throw new Refusal("The care team changed while the console was looking this up, so it says nothing rather than something wrong. Look up again.");
  }
  return { date, zone: TIME_ZONE, isToday, start, end, first, changes, last: current, now: Date.now() * 1000, periods };
}

function PrimaryOnAnswer({ answer, providers }) {
  const who = (id) => (id === null ? null : html`<strong>${personName(providers[id])}</strong>`);
  const zone = `times in ${answer.zone}, this browser's time zone`;
  const day = answer.isToday ? `Today, ${formatDate(answer.date)}` : `On ${formatDate(answer.date)}`;
  if (answer.changes.length === 0) {
    const span = answer.isToday ? `from 00:00 until now (${clock(answer.now)}; ${zone})` : `all day (00:00 to midnight, ${zone})`;
    const verb = answer.isToday ? "has been" : "was";
    return html`<p class="answer" role="status">${day}, ${span}, ${answer.first === null
      ? `this patient ${answer.isToday ? "has had" : "had"} no primary provider`
      : html`the primary provider ${verb} ${who(answer.first)}`}.</p>`;
  }
  const state = (id) => (id === null ? "no primary provider" : who(id));
  return html`<div class="answer" role="status">
    <p>${day} (${zone}), the primary provider changed:</p>
    <ul>
      <li>at the start of the day (00:00): ${state(answer.first)};</li>
      ${answer.changes.map((c) => html`<li key=${c.at}>at ${clock(c.at)}: ${c.provider === null
        ? "the patient was left with no primary provider"
        : html`${who(c.provider)} became the primary provider`};</li>`)}
      <li>${answer.isToday ? `now (${clock(answer.now)})` : "at the end of the day (midnight)"}: ${state(answer.last)}.</li>
    </ul>
  </div>`;
}

function Patient({ id }) {
  const providers = useProviders();
  const [patient, setPatient] = useState(null);
  const [team, setTeam] = useState(null);
  const [etag, setEtag] = useState(null);
  const [periods, setPeriods] = useState([]);
  const [error, setError] = useState(null);
  const [date, setDate] = useState("");
  const [answer, setAnswer] = useState(null);
  const [answerError, setAnswerError] = useState(null);
  const [provider, setProvider] = useState("");
  const [reason, setReason] = useState("patient_request");
  const [note, setNote] = useState("");
  const [changeError, setChangeError] = useState(null);
  const [notice, setNotice] = useState("");
  const latestAnswer = useLatest();
  const lastDay = useRef(null); // the day last looked up

  const load = useCallback(async () => {
    if (!UUID.test(id)) return; // no such patient: nothing to ask
    try {
      setPatient((await api("GET", `/v1/patients/${id}`)).data);
      const read = await api("GET", `/v1/patients/${id}/care-team`);
      setTeam(read.data);
      setEtag(read.etag);
      setPeriods(await allPages(`/v1/patients/${id}/care-team/periods`));
    } catch (err) {
      setError(err);
    }
  }, [id]);
  useEffect(() => {
    load();
  }, [load]);

  // The answer for `day`, read afresh; none on screen while it is read (an answer from
  // before a change must never stand beside the team after it).
  async function answerFor(day) {
    lastDay.current = day;
    const current = latestAnswer();
    setAnswer(null);
    setAnswerError(null);
    try {
      const found = await primaryOn(id, day);
      if (!current()) return;
      setPeriods(found.periods);
      setAnswer(found);
    } catch (err) {
      if (current()) setAnswerError(err);
    }
  }
  function lookUp(event) {
    event.preventDefault();
    answerFor(date);
  }
  // After any change to the team: the answer is recomputed for the day last looked up
  // (not the one of the render the change began in: another day may have been looked up
  // since), and a look-up still under way, read before the change, is dropped for it.
  function recomputeAnswer() {
    if (lastDay.current) answerFor(lastDay.current);
  }

  async function change(event) {
    event.preventDefault();
    setChangeError(null);
    setNotice("");
    try {
      const body = { provider_id: provider, reason, ...(note.trim() ? { note: note.trim() } : {}) };
      const { data, etag: next } = await api("PUT", `/v1/patients/${id}/care-team/primary`, {
        body,
        headers: etag ? { "If-Match": etag } : {},
      });
      setNotice(primaryChanged(data, providers.byId, provider, team.primary_provider_id));
      setTeam(data);
      setEtag(next);
      setProvider("");
      setNote("");
      providers.reload();
      setPeriods(await allPages(`/v1/patients/${id}/care-team/periods`));
      const read = await api("GET", `/v1/patients/${id}/care-team`);
      setEtag(read.etag);
      recomputeAnswer();
    } catch (err) {
      setChangeError(err);
      if (err.problem && err.problem.error === "precondition_failed") {
        providers.reload(); // the other change moved a patient between panels
        await load();
        recomputeAnswer();
      }
    }
  }

  // An address that names no patient (not an id, or none of this organization's), said
  // in words: never the API's "must be a UUID".
  if (!UUID.test(id) || (error && error.problem && error.problem.error === "patient_not_found")) {
    return html`<main id="content" class="page"><h1>No such patient</h1>
      <p>There is no such patient in your organization: <a href="#/worklist">go to the worklist</a>.</p></main>`;
  }
  if (error) return html`<main id="content" class="page"><h1>Patient</h1><${Problem} error=${error} /></main>`;
  if (!patient || !team) return html`<main id="content" class="page"><h1>Patient</h1><p>Loading…</p></main>`;
  const day = answer && { from: answer.start / 1000, to: Math.min(answer.end / 1000, Date.now()) };
  return html`<main id="content" class="page">
    <h1>${patientName(patient)}</h1>
    <p>Born ${formatDate(patient.dob)}${patient.identifiers.length ? html` · ${patient.identifiers.map((i) => `${i.value}`).join(", ")}` : null}</p>
    <section aria-labelledby="team-now">
      <h2 id="team-now">Care team now</h2>
      ${team.members.length === 0
        ? html`<p class="empty">No care team yet.</p>`
        : html`<table class="list"><thead><tr><th scope="col">Provider</th><th scope="col">Role</th><th scope="col">Since</th></tr></thead>
          <tbody>${team.members.map((m) => html`<tr key=${m.provider_id}>
            <th scope="row">${personName(m)}${m.active ? "" : " (inactive)"}</th>
            <td>${m.is_primary_provider ? html`<span class="badge primary">Primary</span>` : "Secondary"}</td>
            <td>${formatDate(m.since)}</td></tr>`)}</tbody></table>`}
    </section>
    <section aria-labelledby="change">
      <h2 id="change">Change the primary provider</h2>
      <form class="fields" onSubmit=${change}>
        <div><label for="new-primary">New primary provider</label>
          <select id="new-primary" required value=${provider} onChange=${(e) => setProvider(e.target.value)}>
            <option value="">Choose a provider…</option>
            <${ProviderOptions} providers=${providers.list} exclude=${team.primary_provider_id} />
          </select></div>
        <div><label for="change-reason">Reason</label>
          <${ReasonSelect} id="change-reason" value=${reason} onChange=${setReason} /></div>
        <div class="wide"><label for="change-note">Note (optional)</label>
          <input id="change-note" maxlength="500" value=${note} onInput=${(e) => setNote(e.target.value)} /></div>
        <div class="actions"><button type="submit" disabled=${!provider}>Make primary</button></div>
      </form>
      <${Notice} text=${notice} />
      <${Problem} error=${changeError} providers=${providers.byId} />
    </section>
    <section aria-labelledby="history">
      <h2 id="history">History</h2>
      <p class="legend"><span class="swatch primary"></span> Primary <span class="swatch secondary"></span> Secondary${answer ? html` <span class="swatch marker"></span> ${formatDate(answer.date)}` : null}</p>
      <${Timeline} periods=${periods} providers=${providers.byId} day=${day} />
      <form class="toolbar" onSubmit=${lookUp} novalidate>
        <div><label for="as-of">Who was the primary on</label>
          <input id="as-of" type="date" min="1900-01-01" max=${localDate()} value=${date} onInput=${(e) => setDate(e.target.value)} /></div>
        <button type="submit" disabled=${!date}>Look up</button>
      </form>
      <p class="hint">The whole day in this browser's time zone (${TIME_ZONE}): who was the primary at its start, each change, and at its end.</p>
      <${Problem} error=${answerError} />
      ${answer && html`<${PrimaryOnAnswer} answer=${answer} providers=${providers.byId} />`}
      <details>
        <summary>Every period as a table</summary>
        <table class="list"><thead><tr><th scope="col">Provider</th><th scope="col">Role</th><th scope="col">From</th><th scope="col">To</th><th scope="col">Why it started</th><th scope="col">Why it ended</th></tr></thead>
          <tbody>${periods.map((p, n) => html`<tr key=${n}>
            <th scope="row">${personName(providers.byId[p.provider_id])}</th><td>${ROLES[p.role] || p.role}</td>
            <td>${formatDate(p.valid_from)}</td><td>${p.valid_to ? formatDate(p.valid_to) : "now"}</td>
            <td>${reasonLabel(p.start_reason)}</td><td>${reasonLabel(p.end_reason)}</td></tr>`)}</tbody></table>
      </details>
    </section>
  </main>`;
}

// --- transfer ---------------------------------------------------------------------------

function Transfer() {
  const providers = useProviders();
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const [reason, setReason] = useState("provider_left");
  const [note, setNote] = useState("");
  const [previous, setPrevious] = useState("keep_as_secondary");
  const [plan, setPlan] = useState(null);
  const [progress, setProgress] = useState(null);
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const body = (dryRun) => ({
    to_provider_id: to,
    reason,
    previous_provider: previous,
    dry_run: dryRun,
    ...(note.trim() ? { note: note.trim() } : {}),
  });
  function changed(setter) {
    return (e) => {
      setter(e.target.value);
      setPlan(null);
      setResult(null);
    };
  }
  async function preview(event) {
    event.preventDefault();
    setError(null);
    setResult(null);
    setBusy(true);
    try {
      const { data } = await api("POST", `/v1/providers/${from}/panel/transfer`, { body: body(true) });
      setPlan(data);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  // The transfer is one POST that commits batch by batch: while it runs, the source's
  // panel is read every half second, and what it lost since the transfer began is shown
  // as moved so far. The start is read just before the POST (the list the page opened
  // with may be stale), and no figure is shown before it is read.
  async function run() {
    setError(null);
    setBusy(true);
    const source = from;
    const total = plan.moved;
    setProgress({ moved: null, total });
    let start;
    try {
      start = (await api("GET", `/v1/providers/${source}`)).data.panel_size;
    } catch (err) {
      setError(err);
      setProgress(null);
      setBusy(false);
      return;
    }
    setProgress({ moved: 0, total });
    let polling = true;
    const poll = async () => {
      while (polling) {
        await new Promise((r) => setTimeout(r, POLL_MS));
        if (!polling) return;
        try {
          const { data } = await api("GET", `/v1/providers/${source}`);
          const moved = Math.min(total, Math.max(0, start - data.panel_size));
          if (polling) setProgress({ moved, total });
        } catch (err) {
          // the next poll tries again; the transfer's own answer says how it ended
        }
      }
    };
    poll();
    try {
      const { data } = await api("POST", `/v1/providers/${source}/panel/transfer`, {
        body: body(false),
        headers: { "Idempotency-Key": crypto.randomUUID() },
      });
      polling = false;
      setResult(data);
      setProgress({ moved: data.moved, total: Math.max(total, data.moved) });
      setPlan(null);
      providers.reload();
    } catch (err) {
      setError(err);
    } finally {
      polling = false;
      setBusy(false);
    }
  }
  const fromName = personName(providers.byId[from]);
  const toName = personName(providers.byId[to]);
  return html`<main id="content" class="page">
    <h1>Transfer a panel</h1>
    <p>Move every patient whose primary provider is one provider to another, for example when a provider leaves. Preview it first: nothing changes until you confirm.</p>
    <form class="fields" onSubmit=${preview}>
      <div><label for="from">From</label>
        <select id="from" required value=${from} onChange=${changed(setFrom)}>
          <option value="">Choose a provider…</option>
          ${providers.list.filter((p) => p.panel_size > 0 || p.id === from).sort((a, b) => personName(a).localeCompare(personName(b)))
            .map((p) => html`<option value=${p.id}>${personName(p)} (${patients(p.panel_size)})</option>`)}
        </select></div>
      <div><label for="to">To</label>
        <select id="to" required value=${to} onChange=${changed(setTo)}>
          <option value="">Choose a provider…</option>
          <${ProviderOptions} providers=${providers.list} exclude=${from} />
        </select></div>
      <div><label for="transfer-reason">Reason</label>
        <${ReasonSelect} id="transfer-reason" value=${reason} onChange=${(v) => { setReason(v); setPlan(null); }} /></div>
      <div><label for="previous">The provider they leave</label>
        <select id="previous" value=${previous} onChange=${changed(setPrevious)}>
          <option value="keep_as_secondary">Stays on their care teams as secondary</option>
          <option value="remove">Leaves their care teams</option>
        </select></div>
      <div class="wide"><label for="transfer-note">Note (optional)</label>
        <input id="transfer-note" maxlength="500" value=${note} onInput=${changed(setNote)} /></div>
      <div class="actions"><button type="submit" disabled=${busy || !from || !to}>Preview (dry run)</button></div>
    </form>
    <${Problem} error=${error || providers.error} providers=${providers.byId} />
    ${plan && html`<section class="plan" aria-labelledby="plan-title">
      <h2 id="plan-title">What the transfer would do</h2>
      <dl class="figures">
        <div><dt>Would move</dt><dd>${plan.moved}</dd></div>
        <div><dt>Would remain with ${fromName}</dt><dd>${plan.remaining}</dd></div>
        <div><dt>Refused for ${toName}'s capacity</dt><dd>${plan.refused_capacity}</dd></div>
      </dl>
      ${plan.refused_capacity ? html`<p>${toName}'s capacity leaves ${patients(plan.refused_capacity)} with ${fromName}; raise it on the Panels page to move them all.</p>` : null}
      <button type="button" onClick=${run} disabled=${busy || plan.moved === 0}>Confirm: move ${patients(plan.moved)}</button>
    </section>`}
    ${progress && html`<section aria-labelledby="progress-title">
      <h2 id="progress-title">${result ? "Transfer finished" : "Transfer running…"}</h2>
      <label for="transfer-progress">${progress.moved === null
        ? "Starting the transfer…"
        : result
          ? `Moved ${progress.moved} of ${progress.total}`
          : `Moved ${progress.moved} of ${progress.total} so far`}</label>
      ${progress.moved === null
        ? html`<progress id="transfer-progress"></progress>`
        : html`<progress id="transfer-progress" max=${Math.max(progress.total, 1)} value=${progress.moved}></progress>`}
      ${result && html`<p class="notice" role="status">Done: ${patients(result.moved)} moved to ${toName}. ${result.remaining} remain${result.remaining === 1 ? "s" : ""} with ${fromName}${result.refused_capacity ? ` (${result.refused_capacity} refused for capacity)` : ""}.</p>`}
    </section>`}
  </main>`;
}

// --- the shell --------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  return { name: parts[0] || "worklist", id: parts[1] };
}

function App() {
  const [signedIn, setSignedIn] = useState(Boolean(apiKey()));
  const [where, setWhere] = useState(route());
  useEffect(() => {
    const moved = () => setWhere(route());
    addEventListener("hashchange", moved);
    return () => removeEventListener("hashchange", moved);
  }, []);
  useEffect(() => {
    const titles = { worklist: "Worklist", panels: "Panels", patient: "Patient", transfer: "Transfer" };
    document.title = `${signedIn ? titles[where.name] || "Not found" : "Sign in"} · Care team console`;
  }, [signedIn, where]);
  if (!signedIn) return html`<${SignIn} onSignedIn=${() => setSignedIn(true)} />`;
  function signOut() {
    sessionStorage.removeItem(KEY);
    location.hash = "";
    setSignedIn(false);
  }
  const link = (name, label) => html`<a href=${`#/${name}`} aria-current=${where.name === name ? "page" : undefined}>${label}</a>`;
  let page;
  if (where.name === "worklist") page = html`<${Worklist} />`;
  else if (where.name === "panels") page = html`<${Panels} />`;
  else if (where.name === "transfer") page = html`<${Transfer} />`;
  else if (where.name === "patient" && where.id) page = html`<${Patient} id=${where.id} key=${where.id} />`;
  else page = html`<main id="content" class="page"><h1>Not found</h1><p>There is no such page: <a href="#/worklist">go to the worklist</a>.</p></main>`;
  function skip(event) {
    event.preventDefault(); // the fragment names screens: focus the content instead
    const main = document.getElementById("content");
    main.setAttribute("tabindex", "-1");
    main.focus();
  }
  return html`<a class="skip" href="#content" onClick=${skip}>Skip to content</a>
    <header class="bar">
      <span class="brand">Care team console</span>
      <nav aria-label="Main">${link("worklist", "Worklist")}${link("panels", "Panels")}${link("transfer", "Transfer")}</nav>
      <button type="button" class="secondary" onClick=${signOut}>Sign out</button>
    </header>
    ${page}`;
}

render(html`<${App} />`, document.getElementById("app"));
