// A real OpenID Connect provider for the gateway's test suite: panva's `oidc-provider` (the
// library Logto is built on), with users that have passwords and groups, a plain HTML login
// form, automatic consent, and RP-initiated logout.
//
//   node tests/oidc/provider.mjs config.json        (or OIDC_CONFIG=config.json)
//
// Config (JSON):
//   port       integer; 0 or absent: any free port on 127.0.0.1
//   issuer     "http://127.0.0.1:PORT" (origin only, no path); absent: derived from the port
//   clients    oidc-provider client metadata objects (client_id, client_secret, redirect_uris,
//              post_logout_redirect_uris, grant_types, response_types, token_endpoint_auth_method)
//   users      [{sub, username, password, email, name, groups: [...]}]
//   groups_in  "id_token" | "userinfo" | "both" (default "both"): where the `groups` claim goes
//   jwks       optional {"keys": [private JWKs]}; absent: one RS256 key generated at start
//
// stdout carries exactly one line, `READY <issuer>`, once the socket listens; everything else
// (oidc-provider notices, errors) goes to stderr. SIGTERM/SIGINT close the server and exit 0.

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import process from 'node:process';

// oidc-provider prints its notices with console.info (stdout); keep stdout for READY only.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const { default: Provider } = await import('oidc-provider');

const GROUPS_IN = new Set(['id_token', 'userinfo', 'both']);
const LOGIN_ERROR = 'Invalid username or password';
const MAX_BODY = 64 * 1024;

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

function loadConfig() {
  const path = process.argv[2] || process.env.OIDC_CONFIG;
  if (!path) fail('usage: node provider.mjs CONFIG.json (or set OIDC_CONFIG)');
  let config;
  try {
    config = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`cannot read config ${path}: ${err.message}`);
  }
  const port = config.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad port: ${config.port}`);
  if (config.issuer !== undefined) {
    const url = new URL(config.issuer);
    if (url.pathname !== '/' || url.search || url.hash) {
      fail(`issuer must be an origin without a path: ${config.issuer}`);
    }
    if (port === 0) fail('an explicit issuer needs an explicit port');
  }
  const groupsIn = config.groups_in ?? 'both';
  if (!GROUPS_IN.has(groupsIn)) fail(`groups_in must be one of ${[...GROUPS_IN].join(', ')}`);
  if (!Array.isArray(config.clients) || config.clients.length === 0) fail('clients: need at least one');
  if (!Array.isArray(config.users)) fail('users: need an array');
  const users = new Map();
  for (const user of config.users) {
    for (const key of ['sub', 'username', 'password']) {
      if (typeof user[key] !== 'string' || !user[key]) fail(`user needs a string ${key}: ${JSON.stringify(user)}`);
    }
    if (users.has(user.sub)) fail(`duplicate user sub ${user.sub}`);
    users.set(user.sub, { groups: [], ...user });
  }
  return { ...config, port, groupsIn, users };
}

function generatedJwks() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' }] };
}

function esc(value) {
  return String(value ?? '')
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
<main>
<h1>${esc(title)}</h1>
${body}
</main>
</body>
</html>
`;
}

function send(res, status, html, headers = {}) {
  const body = Buffer.from(html, 'utf8');
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': body.length,
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(body);
}

function loginPage(details, { error, username } = {}) {
  const { uid, params } = details;
  const errorHtml = error ? `<p class="error" role="alert">${esc(error)}</p>\n` : '';
  return page('Sign in', `<p>Sign in to continue to <strong>${esc(params.client_id)}</strong>.</p>
${errorHtml}<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label>Username <input type="text" name="username" value="${esc(username)}" autofocus required></label>
<label>Password <input type="password" name="password" required></label>
<button type="submit">Sign in</button>
</form>
<p><a href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw Object.assign(new Error('request body too large'), { statusCode: 413 });
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const config = loadConfig();
const cookieKeys = [randomBytes(32).toString('hex')];

function accountFor(sub) {
  const user = config.users.get(sub);
  if (!user) return undefined;
  return {
    accountId: sub,
    // `use` is "id_token" or "userinfo"; oidc-provider filters the result by granted scopes.
    async claims(use) {
      const claims = {
        sub,
        preferred_username: user.username,
        name: user.name ?? user.username,
        email: user.email,
        email_verified: user.email ? (user.email_verified ?? true) : undefined,
      };
      if (config.groupsIn === 'both' || config.groupsIn === use) claims.groups = [...user.groups];
      return claims;
    },
  };
}

async function logoutSource(ctx, form) {
  // The provider's form carries the xsrf token; add `logout=yes` (end the whole session) and a
  // submit button inside the form, so a client without JavaScript can submit it as is.
  const filled = form.replace(
    '</form>',
    '<input type="hidden" name="logout" value="yes"/><button type="submit">Yes, sign me out</button></form>',
  );
  ctx.type = 'html';
  ctx.body = page('Sign out', `<p>Do you want to sign out from ${esc(ctx.host)}?</p>\n${filled}`);
}

async function postLogoutSuccessSource(ctx) {
  const display = ctx.oidc.client?.clientName || ctx.oidc.client?.clientId;
  ctx.type = 'html';
  ctx.body = page('Signed out', `<p>Your sign-out${display ? ` with ${esc(display)}` : ''} was successful.</p>`);
}

async function renderError(ctx, out, error) {
  process.stderr.write(`oidc-provider error page: ${JSON.stringify(out)}${error?.stack ? `\n${error.stack}` : ''}\n`);
  ctx.type = 'html';
  ctx.body = page(
    'oops! something went wrong',
    Object.entries(out).map(([key, value]) => `<pre><strong>${esc(key)}</strong>: ${esc(value)}</pre>`).join('\n'),
  );
}

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port, '127.0.0.1', () => {
    server.off('error', reject);
    resolve();
  });
});
const issuer = config.issuer ?? `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: config.jwks ?? generatedJwks(),
  // Cookies ignore ports: the gateway under test shares 127.0.0.1, so use distinct names.
  cookies: {
    keys: cookieKeys,
    names: { session: 'op_session', interaction: 'op_interaction', resume: 'op_interaction_resume' },
  },
  findAccount: async (_ctx, sub) => accountFor(sub),
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Release scope claims in the ID token of the code flow too (not only from userinfo), so
  // `groups_in` alone decides where `groups` goes.
  conformIdTokenClaims: false,
  pkce: { required: () => true }, // oidc-provider 9 supports S256 only
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
  },
  interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError,
  clientBasedCORS: () => false,
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    IdToken: 600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
});
provider.proxy = false;
provider.on('server_error', (_ctx, err) => process.stderr.write(`oidc-provider server_error: ${err.stack}\n`));

async function autoConsent(req, res, details) {
  const { prompt, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
  if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
  if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const consent = details.grantId ? {} : { grantId };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

function checkPassword(username, password) {
  for (const user of config.users.values()) {
    if (user.username === username && user.password === password) return user;
  }
  return undefined;
}

async function interaction(req, res, pathname) {
  const match = /^\/interaction\/([^/]+)(?:\/(login|abort))?$/.exec(pathname);
  if (!match) return send(res, 404, page('Not found', '<p>No such page.</p>'));
  const [, uid, action] = match;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    return send(res, 400, page('oops! something went wrong', '<p>interaction mismatch: start the sign-in again.</p>'));
  }
  const method = req.method ?? 'GET';
  if (action === undefined && method === 'GET') {
    if (details.prompt.name === 'consent') return autoConsent(req, res, details);
    if (details.prompt.name === 'login') return send(res, 200, loginPage(details));
    return send(res, 400, page('oops! something went wrong', `<p>unsupported prompt ${esc(details.prompt.name)}</p>`));
  }
  if (action === 'login' && method === 'POST') {
    const form = await readForm(req);
    const username = form.get('username') ?? '';
    const user = checkPassword(username, form.get('password') ?? '');
    if (!user) return send(res, 200, loginPage(details, { error: LOGIN_ERROR, username }));
    return provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
  }
  if (action === 'abort' && method === 'GET') {
    const result = { error: 'access_denied', error_description: 'End-User aborted interaction' };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }
  return send(res, 405, page('Method not allowed', '<p>Method not allowed.</p>'), { Allow: action === 'login' ? 'POST' : 'GET' });
}

const providerCallback = provider.callback();
server.on('request', (req, res) => {
  const { pathname } = new URL(req.url ?? '/', issuer);
  if (pathname !== '/interaction' && !pathname.startsWith('/interaction/')) {
    providerCallback(req, res);
    return;
  }
  interaction(req, res, pathname).catch((err) => {
    const status = err.statusCode ?? err.status ?? 500;
    if (status >= 500) process.stderr.write(`interaction error: ${err.stack}\n`);
    const text = err.error ? `${err.error}: ${err.error_description ?? err.message}` : err.message;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    send(res, status, page('oops! something went wrong', `<pre>${esc(text)}</pre>`));
  });
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(`READY ${issuer}\n`);
