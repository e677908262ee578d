// The signed-in user's access token. A sign-in link carries it in the URL fragment, which the
// browser never sends to a server: it is read once, taken out of the address bar and the
// history, and kept in this tab's session storage (gone when the tab closes), then sent only as
// a bearer header to this origin.

const STORAGE_KEY = "poscal.accessToken";
const FRAGMENT_KEY = "access_token";

/** Takes a token from the fragment (`#access_token=...`), if there is one, into storage. */
export function adoptFragmentToken() {
  const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const token = fragment.get(FRAGMENT_KEY);
  if (window.location.hash) {
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  if (token) remember(token);
}

export function remember(token) {
  window.sessionStorage.setItem(STORAGE_KEY, token.trim());
}

export function currentToken() {
  return window.sessionStorage.getItem(STORAGE_KEY);
}

export function forget() {
  window.sessionStorage.removeItem(STORAGE_KEY);
}
