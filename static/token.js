// The bearer token: where it comes from, where it is kept, and the dialog that asks for it.
//
// `chat-service serve` logs a URL ending in #token=...; the fragment never reaches the server
// (nor its access logs), and we take the token out of the address bar at once so it does not
// stay in history or get shared with a copied link. The token lives in sessionStorage: it
// survives a reload but not the tab, and other origins cannot read it.

const STORAGE_KEY = "chat-service.token";
let memoryToken = null; // fallback when storage is disabled (some private modes)

export function getToken() {
  try {
    return sessionStorage.getItem(STORAGE_KEY) || memoryToken;
  } catch {
    return memoryToken;
  }
}

export function setToken(token) {
  memoryToken = token;
  try {
    sessionStorage.setItem(STORAGE_KEY, token);
  } catch {
    // Kept in memory only.
  }
}

export function clearToken() {
  memoryToken = null;
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // Nothing stored.
  }
}

/** Store a token given as #token=... and remove it from the address bar. */
export function takeTokenFromUrl() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token === null) return;
  if (token.trim()) setToken(normalise(token));
  params.delete("token");
  const rest = params.toString();
  const url = location.pathname + location.search + (rest ? `#${rest}` : "");
  history.replaceState(history.state, "", url);
}

function normalise(token) {
  // People paste the whole header value as often as the token itself.
  return token.trim().replace(/^Bearer\s+/i, "");
}

/**
 * Whether `value` has a bearer token's form (a JWT: three base64url parts joined by dots).
 * A message typed into the dialog by mistake must never be kept, and sent, as a token.
 */
function looksLikeToken(value) {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(value);
}

/** The modal dialog asking for a token; ask() resolves to the token, or null if cancelled. */
export class TokenDialog {
  constructor(dialog, { rejectedText, requiredText, malformedText }) {
    this.dialog = dialog;
    this.form = dialog.querySelector("form");
    this.input = dialog.querySelector("input");
    this.error = dialog.querySelector(".token-error");
    this.rejectedText = rejectedText;
    this.requiredText = requiredText;
    this.malformedText = malformedText;
    this.pending = null;

    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = normalise(this.input.value);
      if (!token || !looksLikeToken(token)) {
        this.showError(token ? this.malformedText : this.requiredText);
        this.input.focus();
        return;
      }
      this.finish(token);
    });
    dialog.querySelector("#tokenCancel").addEventListener("click", () => this.finish(null));
    // Escape fires "cancel" and closes the dialog; "close" covers every other way out.
    dialog.addEventListener("close", () => this.finish(null));
  }

  /** @param {{rejected?: boolean}} [options] rejected: the server refused the last token */
  ask({ rejected = false } = {}) {
    if (this.pending) return this.pending.promise;
    let resolve;
    const promise = new Promise((r) => {
      resolve = r;
    });
    this.pending = { promise, resolve };
    this.input.value = "";
    if (rejected) this.showError(this.rejectedText);
    else this.hideError();
    this.dialog.showModal();
    this.input.focus();
    return promise;
  }

  finish(token) {
    if (!this.pending) return;
    const { resolve } = this.pending;
    this.pending = null;
    if (token) setToken(token);
    if (this.dialog.open) this.dialog.close();
    this.input.value = "";
    resolve(token);
  }

  showError(text) {
    this.error.textContent = text;
    this.error.hidden = false;
  }

  hideError() {
    this.error.textContent = "";
    this.error.hidden = true;
  }
}
