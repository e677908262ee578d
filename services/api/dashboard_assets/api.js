// The app API as the signed-in user, on this page's own origin.

import { currentToken } from "./session.js";

/** The token is missing, expired or refused: the user has to sign in (again). */
export class SignInNeeded extends Error {}

/** Any other refusal, with the API's error code and its detail for people. */
export class ApiProblem extends Error {
  constructor(status, code, detail) {
    super(`${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

export async function getJson(path, query = {}) {
  const token = currentToken();
  if (!token) throw new SignInNeeded("not signed in");
  const search = new URLSearchParams(
    Object.entries(query).filter(([, value]) => value !== null && value !== undefined && value !== ""),
  );
  const url = search.size ? `${path}?${search}` : path;
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  if (response.status === 401) throw new SignInNeeded("the token was refused");
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new ApiProblem(response.status, body?.error ?? "error", body?.detail ?? response.statusText);
  }
  return body;
}

/** Every connection of the user's, following the pages. */
export async function allConnections() {
  const connections = [];
  let cursor = null;
  do {
    const page = await getJson("/v1/connections", { limit: 100, cursor });
    connections.push(...page.connections);
    cursor = page.next_cursor;
  } while (cursor);
  return connections;
}

/** Each connection's status, a few at a time (each costs the user's request budget); null for
 * one the API could not answer now (the list's own status still shows). */
export async function statusesOf(connections, atOnce = 3) {
  const statuses = new Map();
  const queue = [...connections];
  async function work() {
    while (queue.length) {
      const connection = queue.shift();
      try {
        statuses.set(connection.id, await getJson(`/v1/connections/${connection.id}/status`));
      } catch (error) {
        if (!(error instanceof ApiProblem)) throw error;
        statuses.set(connection.id, null);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(atOnce, queue.length) }, work));
  return statuses;
}
