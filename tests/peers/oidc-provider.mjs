// A real OpenID provider for the tests: `oidc-provider` (a certified implementation) on
// 127.0.0.1, with its own development login and consent pages.
//
//   node oidc-provider.mjs <port> <redirect-uri> [<redirect-uri> ...]
//
// Clients: `chat-page` (public, PKCE, code + refresh_token; the page's) and `other-app` (the
// same, for another application: its tokens must be refused by the service). Access
// tokens are JWTs (RS256) for a resource (RFC 8707): the page's are for the API,
// `urn:chat-service`, their audience; the other app's for `urn:other-app`. ID tokens carry
// the client id as their audience, as OpenID Connect says, so an API that checks its own
// audience never takes one. The service verifies tokens through the provider's JWKS. Any login name signs in as that user, with any password.
// ACCESS_TOKEN_TTL (seconds, default 3600) lets a test make tokens expire soon.
// Prints `READY <issuer>` once it listens.

import Provider from "oidc-provider";

const [port, ...redirectUris] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const accessTokenTtl = Number(process.env.ACCESS_TOKEN_TTL || 3600);

const client = (clientId) => ({
  client_id: clientId,
  token_endpoint_auth_method: "none",
  grant_types: ["authorization_code", "refresh_token"],
  response_types: ["code"],
  redirect_uris: redirectUris,
  post_logout_redirect_uris: redirectUris,
});

const provider = new Provider(issuer, {
  clients: [client("chat-page"), client("other-app")],
  pkce: { required: () => true },
  // The page calls the token endpoint from its own origin (a public client in a browser).
  clientBasedCORS: () => true,
  scopes: ["openid", "profile", "offline_access"],
  claims: { openid: ["sub"], profile: ["name", "preferred_username"] },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, oidcClient) =>
        oidcClient.clientId === "chat-page" ? "urn:chat-service" : `urn:${oidcClient.clientId}`,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: "openid profile",
        audience: resource,
        accessTokenFormat: "jwt",
        accessTokenTTL: accessTokenTtl,
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  // Refresh tokens for every public client that asks with offline_access, or not at all.
  issueRefreshToken: async (ctx, oidcClient, code) =>
    oidcClient.grantTypeAllowed("refresh_token") && code.scopes.has("offline_access"),
  ttl: { AccessToken: accessTokenTtl, IdToken: accessTokenTtl },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: id.charAt(0).toUpperCase() + id.slice(1), preferred_username: id };
      },
    };
  },
  // The test pages run on plain http://127.0.0.1.
  cookies: { keys: ["test-only-cookie-key"] },
});
provider.proxy = false;

// Local development over plain HTTP: the provider otherwise refuses http redirect URIs
// for public clients only in production mode, which a test is not.
provider.listen(Number(port), "127.0.0.1", () => {
  console.log(`READY ${issuer}`);
});
