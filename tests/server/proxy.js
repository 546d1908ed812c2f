#!/usr/bin/env node
// A test proxy in front of server.js (or any CouchDB), for libhbsync's tests: it makes the
// server look like CouchDB 2+ (opaque sequences), like a server with limits and permissions
// (413, per-document forbidden, no _bulk_get, authentication, per-user databases), and like a
// bad network (dropped connections, 5xx bursts, delays, truncated bodies, replayed changes).
//
//   node proxy.js --target URL [--port N]
//
// Listens on 127.0.0.1 (port 0, the default, picks a free one) and prints one line
// {"port": N} to stdout once listening. Exits when stdin reaches end-of-file, on SIGTERM and on
// SIGINT. Keep-alive on both sides. Request bodies are read whole before anything else happens;
// responses are read whole too, except continuous _changes feeds, which are passed on line by
// line.
//
// Control: one JSON command per line on stdin; each gets exactly one JSON line on stdout,
// {"ok": true, ...} or {"error": "..."}.
//
//   {"cmd": "ping"}                         -> {"ok": true}
//   {"cmd": "config", "rules": {...}}       -> {"ok": true, "rules": {...the rules now}}
//       Sets the given rules, leaving the others as they are; a rule set to null goes back to
//       its default. With "replace": true every other rule goes back to its default first.
//   {"cmd": "reset"}                        -> {"ok": true}
//       Every rule back to its default, faults removed, sessions and seen sequences forgotten.
//       Statistics are kept (see clear-stats).
//   {"cmd": "fault", "fault": {...}}        -> {"ok": true, "id": N}   adds one fault (below)
//   {"cmd": "set-token", "token": "T", "user": "U"}  -> {"ok": true}
//       T becomes the only valid bearer token (null: bearer tokens off); the previous one now
//       answers 401 "token expired". "user" (optional) is who the token authenticates.
//   {"cmd": "expire-sessions"}              -> {"ok": true}   every AuthSession cookie -> 401
//   {"cmd": "stats"}                        -> {"ok": true, "stats": STATS}
//   {"cmd": "clear-stats"}                  -> {"ok": true}
//
// Rules (defaults in brackets):
//   "opaque_seqs": false | true | "stable" | "per-call"   [false]
//       Rewrites every seq, last_seq (_changes: normal, longpoll and continuous feeds) and
//       update_seq (GET /db) into an opaque string such as "12-g1AAAAB<43 base64url chars>",
//       and translates since= back (query string, and the body of POST _changes). true or
//       "stable": one string per numeric sequence, the same across calls and proxy restarts.
//       "per-call": a new string every time a sequence is sent, as CouchDB does; each one is
//       remembered and accepted in since=. since=0 and since=now pass through; any other since
//       the proxy did not issue answers 400 bad_request.
//   "max_body_bytes": N | null      [null]  a request body over N bytes: 413 too_large
//   "max_docs": N | null            [null]  more than N docs in one _bulk_docs or _bulk_get: 413
//   "deny_ids": ["id", ...]         [[]]    per-document denial: in _bulk_docs these documents
//       are taken out of the forwarded body and the response gets
//       {"id": ID, "error": "forbidden", "reason": R} for each, at its document's position (if
//       every document is denied, 201 with only the denials, nothing forwarded); PUT or DELETE
//       /db/ID answers 403 with the same error.
//   "deny_reason": "text"           ["denied by the test proxy"]
//   "bulk_get_status": 404|405|501|null  [null]  _bulk_get answers this status, not forwarded
//   "couchdb_bulk_get_errors": bool [false] a missing revision in a _bulk_get answer, which
//       PouchDB writes {"missing": REV}, becomes CouchDB's
//       {"error": {"id", "rev", "error": "not_found", "reason": "missing"}}
//   "basic_auth": "user:pass" | null [null]  requests need these credentials: Basic
//       authorization, or an AuthSession cookie from POST /_session (name/password as JSON or
//       form), which the proxy then serves itself (GET and DELETE /_session too).
//   "cookie_ttl_ms": N              [600000] lifetime of an AuthSession cookie
//   "bearer_token": "T" | null      [null]  Authorization: Bearer T is accepted
//   "bearer_user": "U" | null       [null]  the user a bearer token authenticates
//       With basic_auth and/or bearer_token set, a request carrying none of the accepted
//       credentials answers 401 {"error": "unauthorized", ...}.
//   "www_authenticate": bool        [false] add WWW-Authenticate: Basic realm="couchdb" to 401s
//   "user_db": "db" | null          [null]  per-user routing: /db and /db/... go to
//       /userdb-<user>/... for the authenticated user (401 without one)
//   "faults": [FAULT, ...]          [[]]    replaces the list of faults
//
// A fault: {"action": A, "method": "POST", "path": "REGEX", "query": "REGEX", "count": K, ...}
//   method (exact, optional), path (a regular expression searched in the path, optional) and
//   query (a regular expression searched in the raw query string, optional) select the
//   requests; count K is how many matching requests it acts on (omitted or null: all of them,
//   until removed), after letting the first "skip" S of them through (default 0). Several
//   faults may act on one request. Actions:
//   "status"    answers {"status": 500|503|..., default 500} with {"error": ..., "reason": ...};
//               with "forward": true the request is applied upstream first, its answer lost.
//   "drop"      closes the connection: {"after_bytes": N} after the status line, the headers and
//               N bytes of the body; without after_bytes before any byte of the response.
//               "forward": false drops it without forwarding the request (default true).
//   "truncate"  sends the headers with the full Content-Length, then only {"keep_bytes": N}
//               bytes (default half the body), then closes the connection.
//   "delay"     waits {"ms": D} before sending the response.
//   "duplicate_changes"  every change row of a _changes response (any feed) is sent twice.
//
// STATS: {"total": N,
//         "by_route": {"POST /db/_bulk_docs": N, "GET /db/{id}": N, ...},
//         "by_status": {"201": N, ...},
//         "bulk_docs": {"requests": N, "docs": N, "batches": [{"ids": [...], "status": S}],
//                       "in_flight": N, "max_in_flight": N},
//         "bulk_get": {... the same},
//         "requests": [{"method": M, "url": U, "route": R, "status": S}, ...],  (last 5000)
//         "faults": [{"id": N, "action": A, "remaining": K|null, "hits": N}, ...]}
// Routes keep the database name and name every document "{id}": "/db", "/db/_changes",
// "/db/{id}", "/db/{id}/{attachment}", "/db/_local/{id}", "/db/_design/{id}". Every request is
// counted, those the proxy answers itself included; the documents of a _bulk_docs or _bulk_get
// body are counted as received, before any cap or denial.
'use strict';

const http = require('http');
const crypto = require('crypto');
const readline = require('readline');

const SEQ_KEY = 'hbsync test proxy opaque sequences';
const MAX_LOG = 5000;

function defaultRules() {
  return {
    opaque_seqs: false,
    max_body_bytes: null,
    max_docs: null,
    deny_ids: [],
    deny_reason: 'denied by the test proxy',
    bulk_get_status: null,
    couchdb_bulk_get_errors: false,
    basic_auth: null,
    cookie_ttl_ms: 600000,
    bearer_token: null,
    bearer_user: null,
    www_authenticate: false,
    user_db: null,
    faults: [],
  };
}

let rules = defaultRules();
let nextFaultId = 1;
let previousTokens = new Set();
let sessions = new Map();
let issuedSeqs = new Map();
let seqCounter = 0;
let stats = emptyStats();

function emptyStats() {
  return {
    total: 0,
    by_route: {},
    by_status: {},
    // in_flight / max_in_flight: requests of the kind received and not yet answered, now and
    // at the most (a client that pipelines its writes or reads shows 2).
    bulk_docs: { requests: 0, docs: 0, batches: [], in_flight: 0, max_in_flight: 0 },
    bulk_get: { requests: 0, docs: 0, batches: [], in_flight: 0, max_in_flight: 0 },
    requests: [],
  };
}

// ---- arguments -------------------------------------------------------------------------------

function usage(message) {
  process.stderr.write(`proxy.js: ${message}\nusage: node proxy.js --target URL [--port N]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { port: 0, target: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--port') opts.port = Number(value());
    else if (arg === '--target') opts.target = new URL(value());
    else usage(`unknown argument ${arg}`);
  }
  if (!opts.target) usage('--target is required');
  if (opts.target.protocol !== 'http:') usage('--target must be an http:// URL');
  return opts;
}

// ---- control channel -------------------------------------------------------------------------

function normalizeFault(fault) {
  const actions = ['status', 'drop', 'truncate', 'delay', 'duplicate_changes'];
  if (!fault || typeof fault !== 'object' || !actions.includes(fault.action)) {
    throw new Error(`a fault needs an "action" among ${actions.join(', ')}`);
  }
  return {
    ...fault,
    id: nextFaultId++,
    pathRe: fault.path ? new RegExp(fault.path) : null,
    queryRe: fault.query ? new RegExp(fault.query) : null,
    remaining: fault.count === undefined || fault.count === null ? null : Number(fault.count),
    toSkip: Number(fault.skip || 0),
    hits: 0,
  };
}

function publicRules() {
  const out = { ...rules };
  out.faults = rules.faults.map(publicFault);
  return out;
}

function publicFault(fault) {
  const { pathRe, queryRe, ...rest } = fault;
  return rest;
}

function applyConfig(given, replace) {
  if (!given || typeof given !== 'object') throw new Error('"rules" must be an object');
  const defaults = defaultRules();
  const next = replace ? defaults : { ...rules };
  for (const [key, value] of Object.entries(given)) {
    if (!(key in defaults)) throw new Error(`unknown rule "${key}"`);
    if (value === null) next[key] = defaults[key];
    else if (key === 'faults') {
      if (!Array.isArray(value)) throw new Error('"faults" must be a list');
      next.faults = value.map(normalizeFault);
    } else if (key === 'deny_ids') {
      if (!Array.isArray(value)) throw new Error('"deny_ids" must be a list');
      next.deny_ids = value.map(String);
    } else if (key === 'opaque_seqs') {
      if (![true, false, 'stable', 'per-call'].includes(value)) {
        throw new Error('"opaque_seqs" is one of false, true, "stable", "per-call"');
      }
      next.opaque_seqs = value === true ? 'stable' : value;
    } else {
      next[key] = value;
    }
  }
  if (next.bearer_token !== rules.bearer_token && rules.bearer_token) {
    previousTokens.add(rules.bearer_token);
  }
  rules = next;
}

function command(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return { error: `not JSON: ${e.message}` };
  }
  if (!cmd || typeof cmd !== 'object') return { error: 'a command is a JSON object' };
  try {
    switch (cmd.cmd) {
      case 'ping':
        return { ok: true };
      case 'config':
        applyConfig(cmd.rules, cmd.replace === true);
        return { ok: true, rules: publicRules() };
      case 'reset':
        rules = defaultRules();
        previousTokens = new Set();
        sessions = new Map();
        issuedSeqs = new Map();
        return { ok: true };
      case 'fault': {
        const fault = normalizeFault(cmd.fault);
        rules.faults.push(fault);
        return { ok: true, id: fault.id };
      }
      case 'set-token':
        applyConfig({ bearer_token: cmd.token ?? null, bearer_user: cmd.user ?? null }, false);
        return { ok: true };
      case 'expire-sessions':
        sessions = new Map();
        return { ok: true };
      case 'stats':
        return {
          ok: true,
          stats: {
            ...stats,
            faults: rules.faults.map((f) => ({
              id: f.id,
              action: f.action,
              remaining: f.remaining,
              hits: f.hits,
            })),
          },
        };
      case 'clear-stats':
        stats = emptyStats();
        return { ok: true };
      default:
        return { error: `unknown command ${JSON.stringify(cmd.cmd)}` };
    }
  } catch (e) {
    return { error: e.message };
  }
}

// ---- opaque sequences ------------------------------------------------------------------------

function seqMac(text) {
  return crypto.createHmac('sha256', SEQ_KEY).update(text).digest('base64url');
}

function opaqueSeq(value) {
  if (!rules.opaque_seqs || value === null || value === undefined) return value;
  const n = String(value);
  const variant = rules.opaque_seqs === 'per-call' ? `:${++seqCounter}` : '';
  const opaque = `${n}-g1AAAAB${seqMac(n + variant)}`;
  if (variant) issuedSeqs.set(opaque, value);
  return opaque;
}

// The upstream sequence for a since= value; undefined when the proxy never issued it.
function upstreamSince(value) {
  if (value === 'now' || value === '0' || value === 0) return value;
  const text = String(value);
  if (issuedSeqs.has(text)) return issuedSeqs.get(text);
  const m = /^(\d+)-g1AAAAB([A-Za-z0-9_-]+)$/.exec(text);
  if (m && seqMac(m[1]) === m[2]) return Number(m[1]);
  return undefined;
}

function rewriteChangesObject(obj, duplicate) {
  if (!obj || typeof obj !== 'object') return obj;
  if (Array.isArray(obj.results)) {
    const rows = [];
    for (const row of obj.results) {
      if (row && typeof row === 'object' && 'seq' in row) row.seq = opaqueSeq(row.seq);
      rows.push(row);
      if (duplicate) rows.push(row);
    }
    obj.results = rows;
  }
  if ('last_seq' in obj) obj.last_seq = opaqueSeq(obj.last_seq);
  return obj;
}

// ---- helpers ---------------------------------------------------------------------------------

function routeOf(method, pathname) {
  const parts = pathname.split('/').filter(Boolean);
  if (!parts.length) return `${method} /`;
  const db = parts[0];
  if (db.startsWith('_') || parts.length === 1) return `${method} /${parts.join('/')}`;
  let second = parts[1];
  try {
    second = decodeURIComponent(second);
  } catch (e) {
    /* keep it raw */
  }
  const special = /^(_local|_design)(?:\/|$)/.exec(second);
  if (special) return `${method} /${db}/${special[1]}/{id}${parts.length > 3 ? '/...' : ''}`;
  if (second.startsWith('_')) return `${method} /${db}/${parts.slice(1).join('/')}`;
  return `${method} /${db}/{id}${parts.length > 2 ? '/{attachment}' : ''}`;
}

function count(map, key) {
  map[key] = (map[key] || 0) + 1;
}

function errorBody(status) {
  const names = {
    400: 'bad_request',
    401: 'unauthorized',
    403: 'forbidden',
    404: 'not_found',
    405: 'method_not_allowed',
    413: 'too_large',
    500: 'internal_server_error',
    501: 'not_implemented',
    502: 'bad_gateway',
    503: 'service_unavailable',
  };
  return { error: names[status] || 'error', reason: `injected by the test proxy (${status})` };
}

function sendJSON(res, status, body, headers = {}) {
  const data = Buffer.from(JSON.stringify(body) + '\n');
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': data.length,
    'Cache-Control': 'must-revalidate',
    ...headers,
  });
  res.end(data);
}

function readBody(stream) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    stream.on('data', (chunk) => chunks.push(chunk));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

function parseJSON(buffer) {
  if (!buffer.length) return undefined;
  try {
    return JSON.parse(buffer.toString('utf8'));
  } catch (e) {
    return undefined;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'content-length',
];

function copyHeaders(headers, drop) {
  const out = {};
  for (const [name, value] of Object.entries(headers)) {
    if (!HOP_BY_HOP.includes(name) && !drop.includes(name)) out[name] = value;
  }
  return out;
}

// ---- authentication --------------------------------------------------------------------------

function parseCookies(header) {
  const out = {};
  for (const part of (header || '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

// {user} when the request may pass, {status, reason} when not. user is null when no
// authentication is configured.
function authenticate(req) {
  if (!rules.basic_auth && !rules.bearer_token) return { user: null };
  const header = req.headers.authorization || '';
  if (rules.basic_auth && /^basic /i.test(header)) {
    const given = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    if (given === rules.basic_auth) return { user: given.slice(0, given.indexOf(':')) };
    return { status: 401, reason: 'Name or password is incorrect.' };
  }
  if (/^bearer /i.test(header)) {
    const token = header.slice(7).trim();
    if (rules.bearer_token && token === rules.bearer_token) return { user: rules.bearer_user };
    if (previousTokens.has(token)) return { status: 401, reason: 'token expired' };
    return { status: 401, reason: 'invalid token' };
  }
  const cookie = parseCookies(req.headers.cookie).AuthSession;
  if (cookie && rules.basic_auth) {
    const session = sessions.get(cookie);
    if (session && session.expires > Date.now()) return { user: session.user };
    return { status: 401, reason: 'session expired' };
  }
  return { status: 401, reason: 'You are not authorized to access this db.' };
}

function send401(res, reason) {
  const headers = rules.www_authenticate ? { 'WWW-Authenticate': 'Basic realm="couchdb"' } : {};
  sendJSON(res, 401, { error: 'unauthorized', reason }, headers);
}

function serveSession(req, res, body) {
  if (req.method === 'POST') {
    let creds = parseJSON(body);
    if (!creds || typeof creds !== 'object') {
      creds = Object.fromEntries(new URLSearchParams(body.toString('utf8')));
    }
    const [user, ...pass] = rules.basic_auth.split(':');
    if (creds.name !== user || creds.password !== pass.join(':')) {
      return send401(res, 'Name or password is incorrect.');
    }
    const token = crypto.randomBytes(24).toString('base64url');
    sessions.set(token, { user, expires: Date.now() + Number(rules.cookie_ttl_ms) });
    const cookie = `AuthSession=${token}; Version=1; Path=/; HttpOnly`;
    return sendJSON(res, 200, { ok: true, name: user, roles: [] }, { 'Set-Cookie': cookie });
  }
  if (req.method === 'DELETE') {
    sessions.delete(parseCookies(req.headers.cookie).AuthSession);
    return sendJSON(
      res,
      200,
      { ok: true },
      { 'Set-Cookie': 'AuthSession=; Version=1; Path=/; HttpOnly; Max-Age=0' },
    );
  }
  const auth = authenticate(req);
  return sendJSON(res, 200, {
    ok: true,
    userCtx: { name: auth.user || null, roles: [] },
    info: { authentication_handlers: ['cookie', 'default'] },
  });
}

// ---- faults ----------------------------------------------------------------------------------

function takeFaults(method, pathname, query) {
  const taken = [];
  for (const fault of rules.faults) {
    if (fault.remaining !== null && fault.remaining <= 0) continue;
    if (fault.method && fault.method !== method) continue;
    if (fault.pathRe && !fault.pathRe.test(pathname)) continue;
    if (fault.queryRe && !fault.queryRe.test(query)) continue;
    if (fault.toSkip > 0) {
      fault.toSkip--;
      continue;
    }
    if (fault.remaining !== null) fault.remaining--;
    fault.hits++;
    taken.push(fault);
  }
  const byAction = {};
  for (const fault of taken) if (!byAction[fault.action]) byAction[fault.action] = fault;
  byAction.delayMs = taken
    .filter((f) => f.action === 'delay')
    .reduce((sum, f) => sum + Number(f.ms || 0), 0);
  return byAction;
}

// ---- _bulk_docs denial -----------------------------------------------------------------------

function denial(doc) {
  return { id: doc._id, error: 'forbidden', reason: rules.deny_reason };
}

// Puts the denials back where their documents were. A new_edits:true answer has one entry per
// forwarded document; a new_edits:false answer lists only failures, matched here by id.
function mergeDenials(docs, denied, upstream) {
  if (!Array.isArray(upstream)) return upstream;
  const forwardedCount = docs.length - denied.size;
  const merged = [];
  if (upstream.length === forwardedCount) {
    let k = 0;
    docs.forEach((doc, i) => merged.push(denied.has(i) ? denial(doc) : upstream[k++]));
    return merged;
  }
  const pending = upstream.slice();
  docs.forEach((doc, i) => {
    if (denied.has(i)) return merged.push(denial(doc));
    const j = pending.findIndex((entry) => entry && entry.id === doc._id);
    if (j >= 0) merged.push(pending.splice(j, 1)[0]);
  });
  return merged.concat(pending);
}

function couchdbBulkGetErrors(answer) {
  if (!answer || !Array.isArray(answer.results)) return answer;
  for (const result of answer.results) {
    if (!result || !Array.isArray(result.docs)) continue;
    result.docs = result.docs.map((entry) =>
      entry && typeof entry.missing === 'string'
        ? { error: { id: result.id, rev: entry.missing, error: 'not_found', reason: 'missing' } }
        : entry,
    );
  }
  return answer;
}

// ---- the proxy -------------------------------------------------------------------------------

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });

  async function handle(req, res) {
    const url = new URL(req.url, 'http://proxy');
    const method = req.method;
    let pathname = url.pathname;
    const query = url.search.slice(1);
    const route = routeOf(method, pathname);
    const logEntry = { method, url: req.url, route, status: null };
    stats.total++;
    count(stats.by_route, route);
    stats.requests.push(logEntry);
    if (stats.requests.length > MAX_LOG) stats.requests.shift();
    res.on('finish', () => {
      logEntry.status = res.statusCode;
      count(stats.by_status, String(res.statusCode));
    });
    res.on('close', () => {
      if (!res.writableFinished) logEntry.status = 'dropped';
    });

    let body = await readBody(req);
    const isBulkDocs = method === 'POST' && /^\/[^/]+\/_bulk_docs$/.test(pathname);
    const isBulkGet = method === 'POST' && /^\/[^/]+\/_bulk_get$/.test(pathname);
    const isChanges = /^\/[^/]+\/_changes$/.test(pathname);
    let json = isBulkDocs || isBulkGet || isChanges ? parseJSON(body) : undefined;
    const docs = json && Array.isArray(json.docs) ? json.docs : null;
    let batch = null;
    if (docs && (isBulkDocs || isBulkGet)) {
      const kind = isBulkDocs ? stats.bulk_docs : stats.bulk_get;
      const ids = docs.map((d) =>
        d && typeof d === 'object' ? (isBulkDocs ? d._id : d.id) : null,
      );
      batch = { ids, status: null };
      kind.requests++;
      kind.docs += ids.length;
      kind.batches.push(batch);
      if (kind.batches.length > MAX_LOG) kind.batches.shift();
      kind.in_flight++;
      kind.max_in_flight = Math.max(kind.max_in_flight, kind.in_flight);
      res.on('finish', () => (batch.status = res.statusCode));
      res.on('close', () => kind.in_flight--);
    }

    // Authentication and the proxy's own session endpoint.
    if (rules.basic_auth && pathname === '/_session') return serveSession(req, res, body);
    const auth = authenticate(req);
    if (auth.status) return send401(res, auth.reason);

    const faults = takeFaults(method, pathname, query);
    if (faults.drop && faults.drop.forward === false) return res.socket.destroy();
    if (faults.status && !faults.status.forward) {
      if (faults.delayMs) await sleep(faults.delayMs);
      const status = Number(faults.status.status || 500);
      return sendJSON(res, status, errorBody(status));
    }

    if (rules.max_body_bytes !== null && body.length > rules.max_body_bytes) {
      return sendJSON(res, 413, {
        error: 'too_large',
        reason: `the request body is ${body.length} bytes, over ${rules.max_body_bytes}`,
      });
    }
    if (docs && rules.max_docs !== null && docs.length > rules.max_docs) {
      return sendJSON(res, 413, {
        error: 'too_large',
        reason: `${docs.length} documents in one request, over ${rules.max_docs}`,
      });
    }
    if (isBulkGet && rules.bulk_get_status) {
      return sendJSON(res, rules.bulk_get_status, errorBody(rules.bulk_get_status));
    }

    // Per-document denial.
    const denySet = new Set(rules.deny_ids);
    let denied = null;
    if (isBulkDocs && docs && denySet.size) {
      denied = new Set();
      docs.forEach((doc, i) => doc && denySet.has(doc._id) && denied.add(i));
      if (denied.size === docs.length) return sendJSON(res, 201, docs.map(denial));
      if (denied.size) {
        json.docs = docs.filter((_, i) => !denied.has(i));
        body = Buffer.from(JSON.stringify(json));
      }
    }
    if ((method === 'PUT' || method === 'DELETE') && denySet.size) {
      const m = /^\/[^/]+\/([^_][^/]*)$/.exec(pathname);
      if (m && denySet.has(decodeURIComponent(m[1]))) {
        return sendJSON(res, 403, { error: 'forbidden', reason: rules.deny_reason });
      }
    }

    // Per-user databases.
    if (rules.user_db) {
      const prefix = `/${rules.user_db}`;
      if (pathname === prefix || pathname.startsWith(prefix + '/')) {
        if (!auth.user) return send401(res, 'no user to route to a per-user database');
        pathname = `/userdb-${encodeURIComponent(auth.user)}${pathname.slice(prefix.length)}`;
      }
    }

    // Opaque sequences: since= back to what the server knows.
    if (rules.opaque_seqs && isChanges) {
      const since = url.searchParams.get('since');
      if (since !== null) {
        const upstream = upstreamSince(since);
        if (upstream === undefined) {
          return sendJSON(res, 400, {
            error: 'bad_request',
            reason: "Malformed sequence supplied in 'since' parameter.",
          });
        }
        url.searchParams.set('since', String(upstream));
      }
      if (json && typeof json === 'object' && json.since !== undefined) {
        const upstream = upstreamSince(json.since);
        if (upstream === undefined) {
          return sendJSON(res, 400, {
            error: 'bad_request',
            reason: "Malformed sequence supplied in 'since' parameter.",
          });
        }
        json.since = upstream;
        body = Buffer.from(JSON.stringify(json));
      }
    }

    const headers = copyHeaders(req.headers, [
      'host',
      'authorization',
      'cookie',
      'accept-encoding',
      'expect',
    ]);
    headers.host = opts.target.host;
    if (body.length || !['GET', 'HEAD', 'DELETE'].includes(method))
      headers['content-length'] = body.length;
    const forwardOnce = () =>
      new Promise((resolve, reject) => {
        const upstreamReq = http.request({
          agent,
          host: opts.target.hostname,
          port: opts.target.port,
          method,
          path: pathname + url.search,
          headers,
        });
        upstreamReq.on('response', resolve);
        upstreamReq.on('error', (err) =>
          reject(Object.assign(err, { reused: upstreamReq.reusedSocket })),
        );
        upstreamReq.end(body);
      });
    let upstream;
    try {
      upstream = await forwardOnce();
    } catch (err) {
      // A kept-alive connection the server closed just as it was reused: once more, afresh.
      if (!err.reused) return sendJSON(res, 502, errorBody(502));
      try {
        upstream = await forwardOnce();
      } catch (again) {
        return sendJSON(res, 502, errorBody(502));
      }
    }

    const continuous =
      isChanges && /(^|&)feed=(continuous|eventsource)(&|$)/.test(url.search.slice(1));
    if (continuous && !faults.truncate && !faults.status) {
      return relayContinuous(res, upstream, faults);
    }

    let data = await readBody(upstream);
    const outHeaders = copyHeaders(upstream.headers, []);
    const isJSON = /json|text\/plain/.test(upstream.headers['content-type'] || '');
    if (upstream.statusCode < 300 && isJSON && data.length) {
      let changed = null;
      if (isChanges && (rules.opaque_seqs || faults.duplicate_changes)) {
        changed = rewriteChangesObject(parseJSON(data), !!faults.duplicate_changes);
      } else if (rules.opaque_seqs && method === 'GET' && /^\/[^/]+\/?$/.test(pathname)) {
        changed = parseJSON(data);
        if (changed && 'update_seq' in changed) changed.update_seq = opaqueSeq(changed.update_seq);
      } else if (isBulkGet && rules.couchdb_bulk_get_errors) {
        changed = couchdbBulkGetErrors(parseJSON(data));
      } else if (denied && denied.size) {
        changed = mergeDenials(docs, denied, parseJSON(data));
      }
      if (changed !== null && changed !== undefined)
        data = Buffer.from(JSON.stringify(changed) + '\n');
    }

    if (faults.delayMs) await sleep(faults.delayMs);
    if (faults.status) {
      const status = Number(faults.status.status || 500);
      return sendJSON(res, status, errorBody(status));
    }
    if (method === 'HEAD') {
      outHeaders['content-length'] = upstream.headers['content-length'] || 0;
      res.writeHead(upstream.statusCode, outHeaders);
      return res.end();
    }
    outHeaders['content-length'] = data.length;
    if (faults.drop) {
      const n = faults.drop.after_bytes;
      if (n === undefined || n === null) return res.socket.destroy();
      res.writeHead(upstream.statusCode, outHeaders);
      res.write(data.subarray(0, Number(n)), () => res.socket.destroy());
      return;
    }
    if (faults.truncate) {
      const keep = faults.truncate.keep_bytes ?? Math.floor(data.length / 2);
      res.writeHead(upstream.statusCode, outHeaders);
      res.write(data.subarray(0, Math.min(Number(keep), Math.max(data.length - 1, 0))), () =>
        res.socket.end(),
      );
      return;
    }
    res.writeHead(upstream.statusCode, outHeaders);
    res.end(data);
  }

  // A continuous feed, line by line: heartbeats pass at once, each row is rewritten (and sent
  // twice under duplicate_changes).
  async function relayContinuous(res, upstream, faults) {
    if (faults.delayMs) await sleep(faults.delayMs);
    const headers = copyHeaders(upstream.headers, []);
    if (
      faults.drop &&
      (faults.drop.after_bytes === undefined || faults.drop.after_bytes === null)
    ) {
      upstream.destroy();
      return res.socket.destroy();
    }
    res.writeHead(upstream.statusCode, headers);
    let budget = faults.drop ? Number(faults.drop.after_bytes) : Infinity;
    let pending = '';
    const emit = (text) => {
      if (budget === Infinity) return res.write(text);
      const chunk = Buffer.from(text).subarray(0, budget);
      budget -= chunk.length;
      res.write(chunk);
      if (budget <= 0) {
        upstream.destroy();
        res.socket.destroy();
      }
    };
    upstream.setEncoding('utf8');
    upstream.on('data', (text) => {
      pending += text;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0 && !res.destroyed) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (!line.trim() || upstream.statusCode >= 300) {
          emit(line + '\n');
          continue;
        }
        let row;
        try {
          row = JSON.parse(line);
        } catch (e) {
          emit(line + '\n');
          continue;
        }
        if ('seq' in row) row.seq = opaqueSeq(row.seq);
        if ('last_seq' in row) row.last_seq = opaqueSeq(row.last_seq);
        const out = JSON.stringify(row) + '\n';
        emit(out);
        if (faults.duplicate_changes && 'id' in row && !res.destroyed) emit(out);
      }
    });
    upstream.on('end', () => {
      if (!res.destroyed) res.end(pending);
    });
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e) => {
      process.stderr.write(`proxy.js: ${e.stack || e}\n`);
      if (!res.headersSent) sendJSON(res, 500, { error: 'proxy_error', reason: String(e) });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 60000;
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  function stop() {
    server.close();
    for (const socket of sockets) socket.destroy();
    agent.destroy();
    process.exit(0);
  }
  const input = readline.createInterface({ input: process.stdin, terminal: false });
  input.on('line', (line) => {
    if (!line.trim()) return;
    process.stdout.write(JSON.stringify(command(line)) + '\n');
  });
  input.on('close', stop);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdout.on('error', stop);

  server.listen(opts.port, '127.0.0.1', () => {
    process.stdout.write(`{"port": ${server.address().port}}\n`);
  });
}

main();
