// The dashboard: sign in, then the user's connections with their sync status, and the analytics
// of the accounts picked. Each section says where it stands in data-state (loading, ready,
// empty, error), which is what a test waits for.

import { ApiProblem, SignInNeeded, allConnections, getJson, statusesOf } from "./api.js";
import { renderAnalytics } from "./analytics.js";
import { byId, el, replace, show } from "./dom.js";
import { adoptFragmentToken, currentToken, forget, remember } from "./session.js";

const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

function when(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  const text = new Intl.DateTimeFormat("en-CA", {
    timeZone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    hourCycle: "h23",
  }).format(moment);
  return el("time", { datetime: iso }, text.replace(",", ""));
}

function setState(node, state) {
  node.dataset.state = state;
}

function signInNeeded(reason) {
  forget();
  show(byId("signed-in"), false);
  show(byId("who"), false);
  byId("sign-in-reason").textContent = reason;
  show(byId("sign-in"));
  setState(document.body, "signed-out");
}

function problem(error) {
  const node = byId("problem");
  node.textContent =
    error instanceof ApiProblem
      ? `The API refused: ${error.detail} (${error.code})`
      : `Something went wrong: ${error.message}`;
  show(node);
}

/** What the state column says: how sync is doing, then what the connection is. */
function syncState(connection, status) {
  const state = status?.status ?? connection.status;
  const lifecycle = status?.lifecycle ?? connection.lifecycle;
  return el(
    "td",
    { "data-field": "status" },
    el("span", { class: `badge status-${state}`, "data-status": state }, state),
    lifecycle === "active" ? null : el("span", { class: `badge lifecycle-${lifecycle}`, "data-lifecycle": lifecycle }, lifecycle),
  );
}

function credentialsState(status) {
  if (status === null || status === undefined) return "—";
  const parts = [];
  if (status.sync_state && status.sync_state !== "scheduled") parts.push(status.sync_state.replaceAll("_", " "));
  parts.push(`rotation ${status.rotation.state}`);
  return parts.join(" · ");
}

function connectionRow(connection, status) {
  const polled = connection.poll !== null;
  const failures = status?.consecutive_failures ?? connection.poll?.consecutive_failures ?? 0;
  const lastError = status?.last_error ?? connection.last_error;
  return el(
    "tr",
    { "data-connection-id": connection.id },
    el("td", { "data-field": "label" }, connection.account_label),
    el("td", { "data-field": "broker" }, connection.broker),
    el("td", { "data-field": "type" }, connection.connection_type),
    el("td", { "data-field": "account" }, connection.account_number, connection.server ? el("span", { class: "quiet" }, ` @ ${connection.server}`) : null),
    el("td", { "data-field": "sync" }, polled ? `polled every ${connection.poll.interval_seconds} s` : "webhooks"),
    syncState(connection, status),
    el("td", { "data-field": "last-sync" }, when(status?.last_sync_at ?? connection.last_sync_at)),
    el("td", { "data-field": "next-sync" }, when(status?.next_sync_at ?? connection.poll?.next_sync_at)),
    el(
      "td",
      { "data-field": "failures", class: failures ? "down" : null, title: lastError ?? null },
      String(failures),
    ),
    el("td", { "data-field": "credentials" }, credentialsState(status)),
  );
}

async function loadConnections() {
  const table = byId("connections");
  setState(table, "loading");
  const connections = await allConnections();
  const statuses = await statusesOf(connections);
  replace(table.tBodies[0], connections.map((c) => connectionRow(c, statuses.get(c.id))));
  show(byId("connections-empty"), connections.length === 0);
  setState(table, connections.length ? "ready" : "empty");
  return connections;
}

function filters() {
  return {
    connection_type: byId("filter-type").value,
    broker: byId("filter-broker").value || null,
    from_date: byId("filter-from").value || null,
    to_date: byId("filter-to").value || null,
    time_zone: timeZone,
  };
}

let analyticsRequest = 0;

async function loadAnalytics() {
  const section = byId("analytics");
  const status = byId("analytics-status");
  const request = ++analyticsRequest;
  const query = filters();
  setState(section, "loading");
  status.textContent = "Loading…";
  try {
    const analytics = await getJson("/v1/analytics", query);
    if (request !== analyticsRequest) return; // a later filter change is on its way
    const shown = renderAnalytics(analytics);
    section.dataset.query = new URLSearchParams(Object.entries(query).filter(([, v]) => v)).toString();
    status.textContent = shown ? "" : "No closed trades for these accounts and dates yet.";
    show(section, shown);
    setState(section, shown ? "ready" : "empty");
  } catch (error) {
    if (request !== analyticsRequest) return;
    setState(section, "error");
    status.textContent = "";
    if (error instanceof SignInNeeded) return signInNeeded("Your sign-in has ended: sign in again.");
    problem(error);
  }
}

async function start() {
  adoptFragmentToken();
  if (!currentToken()) return signInNeeded("");
  let me;
  try {
    me = await getJson("/v1/me");
  } catch (error) {
    if (error instanceof SignInNeeded) return signInNeeded("That token is not valid (expired?): sign in again.");
    throw error;
  }
  show(byId("sign-in"), false);
  byId("who-user").textContent = `user ${me.user_id} · until ${new Date(me.token_expires_at).toLocaleTimeString()}`;
  byId("who-user").dataset.userId = me.user_id;
  show(byId("who"));
  show(byId("signed-in"));
  byId("time-zone").textContent = timeZone;
  setState(document.body, "signed-in");
  const connections = await loadConnections();
  // Demo accounts are never mixed into live figures: live when there are any, else demo.
  const hasLive = connections.some((c) => c.connection_type === "live");
  byId("filter-type").value = hasLive ? "live" : "demo";
  const brokers = [...new Set(connections.map((c) => c.broker))].sort();
  replace(byId("filter-broker"), el("option", { value: "" }, "All"), brokers.map((b) => el("option", { value: b }, b)));
  await loadAnalytics();
}

function wire() {
  byId("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = byId("token-input");
    remember(input.value);
    input.value = "";
    run();
  });
  byId("sign-out").addEventListener("click", () => signInNeeded("Signed out."));
  byId("filters").addEventListener("change", () => loadAnalytics());
  byId("filters").addEventListener("submit", (event) => event.preventDefault());
}

function run() {
  byId("problem").hidden = true;
  start().catch((error) => {
    if (error instanceof SignInNeeded) return signInNeeded("Your sign-in has ended: sign in again.");
    problem(error);
  });
}

wire();
run();
