// Local OpenID Provider for Heimdall integration tests (loopback only). See README.md.
// One process = one issuer shape. Prints exactly one stdout line, `OP_ISSUER=<issuer>`, once listening.
//
// Env:
//   OP_PORT           listen port on 127.0.0.1 (default 0 = a free port)
//   OP_PATH           issuer path: "" plain, "/oauth2/default" Okta-shaped, "/<tid>/v2.0" Entra-shaped
//   OP_AUDIENCE       "aud" of JWT access tokens (default api://gateway)
//   OP_REDIRECT       comma-separated redirect URIs of the client (default http://127.0.0.1:8080/auth/callback)
//   OP_CLIENT_ID      confidential client id (default gateway)
//   OP_CLIENT_SECRET  its secret (default gateway-secret); client_secret_basic and client_secret_post both work
//   OP_USERS_FILE     JSON users file (default users.json beside this file)
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import Provider, { interactionPolicy } from 'oidc-provider';
// the stock in-memory adapter, created once so that the provider rebuilt by /__test/rotate keeps sessions and tokens
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const env = process.env;
const PORT = Number(env.OP_PORT || 0);
const PATH = (env.OP_PATH || '').replace(/\/+$/, '');
const AUDIENCE = env.OP_AUDIENCE || 'api://gateway';
// RFC 8707 resource indicators must be absolute URIs; an Entra API audience is a bare GUID.
const RESOURCE = AUDIENCE.includes(':') ? AUDIENCE : `api://${AUDIENCE}`;
const REDIRECTS = (env.OP_REDIRECT || 'http://127.0.0.1:8080/auth/callback').split(',').map((s) => s.trim()).filter(Boolean);
const CLIENT_ID = env.OP_CLIENT_ID || 'gateway';
const CLIENT_SECRET = env.OP_CLIENT_SECRET || 'gateway-secret';
const USERS = JSON.parse(fs.readFileSync(env.OP_USERS_FILE || new URL('./users.json', import.meta.url), 'utf8'));
let ISSUER; // known after listen() (OP_PORT=0)

// ---- users -> claims. Every field of a user is a claim, except `overage` (a switch, see below).
const RESERVED = new Set(['sub', 'iss', 'aud', 'exp', 'iat', 'nbf', 'jti', 'client_id', 'scope', 'overage']);
const overageUrl = (sub) => `${ISSUER}/graph/v1.0/users/${USERS[sub].oid || sub}/getMemberObjects`;
function userClaims(sub) {
  const u = USERS[sub];
  if (!u) return {};
  const c = Object.fromEntries(Object.entries(u).filter(([k, v]) => !RESERVED.has(k) && v != null));
  if (u.overage) { // Entra groups overage: no `groups`, a pointer to where they can be fetched instead
    delete c.groups;
    c._claim_names = { groups: 'src1' };
    c._claim_sources = { src1: { endpoint: overageUrl(sub) } };
  }
  return c;
}

// ---- signing keys. keys[0] signs; all of `keys` are published in the JWKS; `allKeys` remembers dropped ones.
let keyCounter = 0;
const allKeys = new Map();
function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `op-key-${++keyCounter}-${crypto.randomBytes(3).toString('hex')}`;
  const key = { kid, privateKey, jwk: { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' } };
  allKeys.set(kid, key);
  return key;
}
let keys = [newKey()];
const ADAPTER = createMemoryAdapter();

// ---- non-interactive login: a session for another user than login_hint forces a new login.
const { base, Check } = interactionPolicy;
const policy = base();
policy.get('login').checks.push(new Check('login_hint_mismatch', 'login_hint names another user than the session',
  (ctx) => {
    const { params, session, result } = ctx.oidc;
    if (result?.login || !params.login_hint || !session.accountId) return Check.NO_NEED_TO_PROMPT;
    return params.login_hint === session.accountId ? Check.NO_NEED_TO_PROMPT : Check.REQUEST_PROMPT;
  }));

const configuration = () => ({
  adapter: ADAPTER,
  clients: [{
    client_id: CLIENT_ID, client_secret: CLIENT_SECRET, redirect_uris: REDIRECTS, response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'], token_endpoint_auth_method: 'client_secret_basic',
  }],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  jwks: { keys: keys.map((k) => k.jwk) },
  cookies: { keys: ['heimdall-test-op-cookie-key'] },
  pkce: { required: () => true }, // S256 only (oidc-provider default), required for every request
  scopes: ['openid', 'profile', 'email', 'groups', 'roles', 'offline_access', 'api'],
  claims: { // claims only reach the ID token when a requested scope names them
    openid: ['sub', 'amr', 'acr', 'auth_time', 'acrs', 'tid', 'oid', 'groups', 'roles'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    roles: ['roles'],
  },
  conformIdTokenClaims: false, // custom claims in the ID token, as Okta and Entra do
  async findAccount(ctx, sub) {
    if (!USERS[sub]) return undefined;
    return { accountId: sub, claims: async () => ({ ...userClaims(sub), sub, email_verified: USERS[sub].email ? true : undefined }) };
  },
  // first-party client: consent is implied, for what was requested plus the API resource
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(`openid profile email groups roles offline_access ${ctx.oidc.params.scope || ''}`.trim());
    grant.addResourceScope(RESOURCE, 'api');
    await grant.save();
    return grant;
  },
  // refresh tokens whenever the client may use them (no prompt=consent needed, like Okta/Entra)
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  extraTokenClaims: async (ctx, token) => (USERS[token.accountId] ? userClaims(token.accountId) : undefined),
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: { // every access token is an RS256 JWT for the gateway API
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api', audience: AUDIENCE, accessTokenTTL: 3600, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  interactions: { policy, url: (ctx, interaction) => `${PATH}/interaction/${interaction.uid}` },
  ttl: { AccessToken: 3600, IdToken: 3600, RefreshToken: 86400, Interaction: 600, Session: 86400, Grant: 86400 },
  renderError(ctx, out) { ctx.type = 'json'; ctx.body = out; },
});

let provider;
let callback;
function startProvider() { // rotate rebuilds the provider with the new key list (ADAPTER keeps the state)
  provider = new Provider(ISSUER, configuration());
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  callback = provider.callback();
}

// ---- helpers for the raw endpoints
const b64u = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
function signJwt(header, payload, key) {
  const input = `${b64u(header)}.${b64u(payload)}`;
  return `${input}.${crypto.sign('sha256', Buffer.from(input), key.privateKey).toString('base64url')}`;
}
function send(res, status, body, type = 'application/json') {
  res.statusCode = status;
  res.setHeader('content-type', type);
  res.setHeader('cache-control', 'no-store');
  res.end(type === 'application/json' ? JSON.stringify(body) : body);
}
async function readJson(req) {
  let raw = '';
  for await (const chunk of req) raw += chunk;
  return raw.trim() ? JSON.parse(raw) : {};
}

let overageFail = false;

async function testApi(req, res, url) {
  const route = `${req.method} ${url.pathname}`;
  const body = req.method === 'POST' ? await readJson(req) : {};
  switch (route) {
    case 'POST /__test/rotate': {
      keys = url.searchParams.get('drop_old') === '1' ? [newKey()] : [newKey(), ...keys];
      startProvider();
      return send(res, 200, { kid: keys[0].kid, published: keys.map((k) => k.kid) });
    }
    case 'POST /__test/token': {
      if (typeof body.sub !== 'string') return send(res, 400, { error: 'sub (string) is required' });
      const now = Math.floor(Date.now() / 1000);
      const expIn = Number(body.exp_in ?? 3600);
      const exp = now + expIn;
      const key = allKeys.get(body.kid) || keys[0]; // a known kid signs with that key; an unknown one is only a header value
      const payload = {
        ...userClaims(body.sub),
        iss: body.iss ?? ISSUER, sub: body.sub, aud: body.aud ?? AUDIENCE,
        iat: expIn > 0 ? now : exp - 60, exp, jti: crypto.randomUUID(), client_id: CLIENT_ID,
        ...(body.claims || {}),
      };
      for (const k of Object.keys(payload)) if (payload[k] === null) delete payload[k]; // null removes a claim
      const header = { alg: 'RS256', typ: 'at+jwt', kid: body.kid ?? key.kid };
      return send(res, 200, { access_token: signJwt(header, payload, key) });
    }
    case 'GET /__test/public_pem':
      return send(res, 200, crypto.createPublicKey(keys[0].privateKey).export({ type: 'spki', format: 'pem' }), 'application/x-pem-file');
    case 'POST /__test/overage_fail':
      overageFail = typeof body.fail === 'boolean' ? body.fail : !overageFail;
      return send(res, 200, { overage_fail: overageFail });
    case 'POST /__test/user': {
      const { sub, ...fields } = body;
      if (typeof sub !== 'string') return send(res, 400, { error: 'sub (string) is required' });
      USERS[sub] = { ...(USERS[sub] || {}), ...fields };
      for (const k of Object.keys(USERS[sub])) if (USERS[sub][k] === null) delete USERS[sub][k];
      return send(res, 200, { sub, ...USERS[sub] });
    }
    default:
      return send(res, 404, { error: `no test endpoint ${route}` });
  }
}

async function interaction(req, res) { // no pages: login from login_hint (unknown -> access_denied), consent implied
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'consent') { // only when asked for (prompt=consent) or for more than loadExistingGrant gave
    const grant = (details.grantId && await provider.Grant.find(details.grantId))
      || new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = details.prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes || {})) grant.addResourceScope(indicator, scopes.join(' '));
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  }
  const hint = details.params.login_hint;
  const u = USERS[hint];
  if (!u) {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: hint ? `unknown test user ${hint}` : 'login_hint is required',
    }, { mergeWithLastSubmission: false });
  }
  const session = details.session?.cookie && await provider.Session.find(details.session.cookie);
  if (session?.accountId && session.accountId !== hint) { // user switch in one cookie jar: forget the old login
    for (const k of ['accountId', 'loginTs', 'amr', 'acr']) delete session[k]; // (instead of a logout form to POST)
    session.authorizations = {};
    await session.persist();
    details.session = { uid: details.session.uid, cookie: details.session.cookie };
    await details.save(details.exp - Math.floor(Date.now() / 1000));
  }
  return provider.interactionFinished(req, res, {
    login: { accountId: hint, amr: u.amr ?? undefined, acr: u.acr ?? undefined, remember: false },
  }, { mergeWithLastSubmission: false });
}

const server = http.createServer(async (req, res) => {
  try {
    if (!callback) return send(res, 503, { error: 'starting' });
    if (PATH) { // issuer path prefix, mounted like express does it
      if (req.url !== PATH && !req.url.startsWith(`${PATH}/`) && !req.url.startsWith(`${PATH}?`)) return send(res, 404, { error: 'not under issuer path' });
      req.originalUrl = req.url;
      req.url = req.url.slice(PATH.length) || '/';
    }
    const url = new URL(req.url, 'http://op');
    if (url.pathname.startsWith('/__test/')) return await testApi(req, res, url);
    if (/^\/interaction\/[^/]+$/.test(url.pathname) && req.method === 'GET') return await interaction(req, res);
    const ov = url.pathname.match(/^\/graph\/v1\.0\/users\/([^/]+)\/getMemberObjects$/);
    if (ov && (req.method === 'GET' || req.method === 'POST')) { // Microsoft Graph getMemberObjects stand-in
      if (overageFail) return send(res, 503, { error: { code: 'serviceNotAvailable', message: 'overage_fail is set' } });
      const sub = Object.keys(USERS).find((s) => s === ov[1] || USERS[s].oid === ov[1]);
      if (!sub) return send(res, 404, { error: { code: 'Request_ResourceNotFound', message: `no user ${ov[1]}` } });
      return send(res, 200, { value: USERS[sub].groups || [] });
    }
    return callback(req, res);
  } catch (e) {
    console.error(e);
    if (!res.headersSent) send(res, 400, { error: String(e.message || e) });
  }
});

server.listen(PORT, '127.0.0.1', () => {
  ISSUER = `http://127.0.0.1:${server.address().port}${PATH}`;
  startProvider();
  process.stdout.write(`OP_ISSUER=${ISSUER}\n`);
});
