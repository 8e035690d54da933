// Signing in with the organisation's OpenID provider, when the service names one
// (GET /auth/config): Authorization Code with PKCE (S256), `state` and `nonce` checked, by
// oauth4webapi (vendored from npm; no hand-written protocol or crypto here).
//
// The session (access token, refresh token, ID token, expiry, the person's name) lives in
// sessionStorage, never localStorage: it ends with the tab. The access token is also what
// token.js hands the rest of the page. It is renewed before it expires: with the refresh
// token when the provider gave one, otherwise by signing in again when it is needed.
// Without a provider the page asks for a token as before (token.js).

import * as oauth from "./vendor/oauth4webapi/oauth4webapi.js";
import { clearToken, setToken } from "./token.js";

const SESSION = "chat-service.oidc";
const PENDING = "chat-service.oidc-pending";
// Renew this long before the access token expires.
const RENEW_EARLY_MS = 30_000;

/**
 * The sign-in, or null when the service names no provider (or cannot be asked).
 * @returns {Promise<SignIn|null>}
 */
export async function startSignIn() {
  let config;
  try {
    const response = await fetch(new URL("auth/config", document.baseURI), { cache: "no-store" });
    config = (await response.json()).oidc;
  } catch {
    return null;
  }
  if (!config) return null;
  const signIn = new SignIn(config);
  await signIn.discover();
  return signIn;
}

class SignIn {
  constructor({ issuer, client_id: clientId, scopes }) {
    this.issuer = new URL(issuer);
    this.client = { client_id: clientId };
    this.scopes = scopes;
    this.redirectUri = new URL(document.baseURI).origin + new URL(document.baseURI).pathname;
    // Plain http only for a provider on this machine (development and tests).
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(this.issuer.hostname);
    this.options = loopback ? { [oauth.allowInsecureRequests]: true } : {};
    this.server = null;
    this.timer = null;
    this.onChange = () => {};
  }

  async discover() {
    const response = await oauth.discoveryRequest(this.issuer, {
      ...this.options,
      algorithm: "oidc",
    });
    this.server = await oauth.processDiscoveryResponse(this.issuer, response);
  }

  /** The signed-in session ({name, expiresAt, ...}), or null. */
  get session() {
    try {
      const value = JSON.parse(sessionStorage.getItem(SESSION) || "null");
      return value && typeof value.accessToken === "string" ? value : null;
    } catch {
      return null;
    }
  }

  /**
   * Finish a sign-in the provider just sent us back from (?code=...&state=...), or pick
   * up this tab's session; true when signed in.
   */
  async resume() {
    const url = new URL(location.href);
    const pending = readPending();
    if (pending && (url.searchParams.has("code") || url.searchParams.has("error"))) {
      sessionStorage.removeItem(PENDING);
      history.replaceState(null, "", pending.returnTo || this.redirectUri);
      const params = oauth.validateAuthResponse(this.server, this.client, url, pending.state);
      const response = await oauth.authorizationCodeGrantRequest(
        this.server,
        this.client,
        oauth.None(),
        params,
        this.redirectUri,
        pending.verifier,
        this.options,
      );
      const result = await oauth.processAuthorizationCodeResponse(
        this.server,
        this.client,
        response,
        { expectedNonce: pending.nonce, requireIdToken: true },
      );
      this.keep(result, oauth.getValidatedIdTokenClaims(result));
    }
    const session = this.session;
    if (!session) return false;
    setToken(session.accessToken);
    this.scheduleRenewal();
    return true;
  }

  /** Leave for the provider's sign-in page; back at this page afterwards. */
  async signIn() {
    const verifier = oauth.generateRandomCodeVerifier();
    const state = oauth.generateRandomState();
    const nonce = oauth.generateRandomNonce();
    const returnTo = location.pathname + location.search.replace(/[?&](code|state|iss)=[^&]*/g, "");
    sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state, nonce, returnTo }));
    const url = new URL(this.server.authorization_endpoint);
    url.searchParams.set("client_id", this.client.client_id);
    url.searchParams.set("redirect_uri", this.redirectUri);
    url.searchParams.set("response_type", "code");
    url.searchParams.set("scope", this.scopes);
    url.searchParams.set("state", state);
    url.searchParams.set("nonce", nonce);
    url.searchParams.set("code_challenge", await oauth.calculatePKCECodeChallenge(verifier));
    url.searchParams.set("code_challenge_method", "S256");
    // OpenID Connect gives a refresh token for offline_access only after consent.
    if (this.scopes.split(/\s+/).includes("offline_access")) {
      url.searchParams.set("prompt", "consent");
    }
    location.assign(url.href);
  }

  /**
   * A fresh access token: by the refresh token when there is one; otherwise (or when it
   * is refused) null, and the caller signs in again.
   */
  async renew() {
    const session = this.session;
    if (!session?.refreshToken) return null;
    try {
      const response = await oauth.refreshTokenGrantRequest(
        this.server,
        this.client,
        oauth.None(),
        session.refreshToken,
        this.options,
      );
      const result = await oauth.processRefreshTokenResponse(this.server, this.client, response);
      this.keep(result, oauth.getValidatedIdTokenClaims(result) || { name: session.name });
      setToken(result.access_token);
      this.scheduleRenewal();
      return result.access_token;
    } catch {
      return null;
    }
  }

  /** Forget the session here, and at the provider when it can end sessions. */
  signOut() {
    const session = this.session;
    sessionStorage.removeItem(SESSION);
    clearToken();
    clearTimeout(this.timer);
    const endpoint = this.server.end_session_endpoint;
    if (!endpoint) {
      this.onChange();
      return;
    }
    const url = new URL(endpoint);
    url.searchParams.set("client_id", this.client.client_id);
    url.searchParams.set("post_logout_redirect_uri", this.redirectUri);
    if (session?.idToken) url.searchParams.set("id_token_hint", session.idToken);
    location.assign(url.href);
  }

  keep(result, claims) {
    const previous = this.session;
    const session = {
      accessToken: result.access_token,
      refreshToken: result.refresh_token || previous?.refreshToken || null,
      idToken: result.id_token || previous?.idToken || null,
      expiresAt: Date.now() + (Number(result.expires_in) || 300) * 1000,
      name: String(claims?.name || claims?.preferred_username || claims?.sub || previous?.name || ""),
    };
    sessionStorage.setItem(SESSION, JSON.stringify(session));
    this.onChange();
  }

  scheduleRenewal() {
    clearTimeout(this.timer);
    const session = this.session;
    if (!session?.refreshToken) return;
    const wait = Math.max(1000, session.expiresAt - Date.now() - RENEW_EARLY_MS);
    this.timer = setTimeout(() => this.renew(), wait);
  }
}

function readPending() {
  try {
    return JSON.parse(sessionStorage.getItem(PENDING) || "null");
  } catch {
    return null;
  }
}
