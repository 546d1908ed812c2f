#!/usr/bin/env node
// A CouchDB-protocol server for libhbsync's tests: express-pouchdb (PouchDB Server's engine)
// on 127.0.0.1.
//
//   node server.js [--port N] [--leveldb DIR]
//
// --port N       listen on N; 0 (the default) picks a free port.
// --leveldb DIR  keep the databases in DIR (LevelDB); a server restarted on the same DIR finds
//                its data again. Without it every database lives in memory.
//
// Once listening it prints one line, {"port": N}, to stdout. It exits when its stdin reaches
// end-of-file (so a test that crashes never leaves a server behind), on SIGTERM and on SIGINT.
//
// express-pouchdb runs in its "minimumForPouchDB" mode: the replication endpoints, documents,
// _local documents, views; no config.json, log.txt or _users database written anywhere.
'use strict';

const http = require('http');
const path = require('path');
const fs = require('fs');
const express = require('express');
const expressPouchDB = require('express-pouchdb');
const PouchDBCore = require('pouchdb-core');
const pouchUtils = require('express-pouchdb/lib/utils');

function usage(message) {
  process.stderr.write(`server.js: ${message}\nusage: node server.js [--port N] [--leveldb DIR]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { port: 0, leveldb: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--port') {
      opts.port = Number(value());
      if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) usage('bad --port');
    } else if (arg === '--leveldb') {
      opts.leveldb = path.resolve(value());
    } else {
      usage(`unknown argument ${arg}`);
    }
  }
  return opts;
}

function makePouchDB(opts) {
  let PouchDB = PouchDBCore.plugin(require('pouchdb-adapter-http'))
    .plugin(require('pouchdb-mapreduce'))
    .plugin(require('pouchdb-replication'));
  if (opts.leveldb) {
    fs.mkdirSync(opts.leveldb, { recursive: true });
    PouchDB = PouchDB.plugin(require('pouchdb-adapter-leveldb'));
    // The prefix keeps every database, and express-pouchdb's list of databases, inside DIR.
    return PouchDB.defaults({ adapter: 'leveldb', prefix: opts.leveldb + path.sep });
  }
  PouchDB = PouchDB.plugin(require('pouchdb-adapter-memory'));
  return PouchDB.defaults({ adapter: 'memory' });
}

// Whether revision REV is in the revision tree TREE (PouchDB's format: a list of
// {pos, ids: [id, opts, children]}).
function treeHasRev(tree, rev) {
  const dash = rev.indexOf('-');
  const wantPos = Number(rev.slice(0, dash));
  const wantId = rev.slice(dash + 1);
  const stack = tree.map((path) => [path.pos, path.ids]);
  while (stack.length) {
    const [pos, node] = stack.pop();
    if (pos === wantPos && node[0] === wantId) return true;
    if (pos < wantPos) for (const child of node[2]) stack.push([pos + 1, child]);
  }
  return false;
}

// PouchDB 9 throws from inside a storage callback, and so kills the whole server, when a
// revision asked for with latest=true is not in the document's tree (_bulk_get or
// GET ?open_revs=[...]&latest=true, both of which a replicator sends). CouchDB answers such a
// revision as missing; ask the adapter without latest for those so it answers the same.
function fixLatestOfMissingRev(name, db, next) {
  const get = db._get;
  db._get = function (id, opts, callback) {
    if (!opts || !opts.latest || !opts.rev) return get.call(this, id, opts, callback);
    this._getRevisionTree(id, (err, tree) => {
      if (err || !treeHasRev(tree, opts.rev)) {
        return get.call(this, id, Object.assign({}, opts, { latest: false }), callback);
      }
      return get.call(this, id, opts, callback);
    });
  };
  return next();
}

function queryValue(value) {
  try {
    return JSON.parse(value);
  } catch (e) {
    return value;
  }
}

// feed=longpoll and feed=continuous, as CouchDB serves them. express-pouchdb's own longpoll
// never ends when nothing changes (it ignores timeout and never closes the JSON), and its
// continuous feed never ends at all; a replicator's timeout and heartbeat handling needs both
// to behave. A normal feed with filter=_selector is served here too: express-pouchdb ignores a
// selector in the POST body, which CouchDB 2+ honours. Other feeds go on to express-pouchdb.
function liveChanges(pouchApp, PouchDB) {
  const jsonBody = express.json({ limit: '64mb' });
  return (req, res, next) => {
    const feed = req.query.feed;
    if (feed !== 'longpoll' && feed !== 'continuous' && req.query.filter !== '_selector')
      return next();
    req.PouchDB = PouchDB;
    jsonBody(req, res, (err) => {
      if (err)
        return pouchUtils.sendJSON(res, 400, { error: 'bad_request', reason: 'invalid_json' });
      pouchUtils.setDBOnReq(req.params.db, pouchApp.dbWrapper, req, res, () => {
        serveLiveChanges(req, res, feed).catch((e) => {
          if (!res.headersSent) pouchUtils.sendError(res, e);
          else res.destroy();
        });
      });
    });
  };
}

async function serveLiveChanges(req, res, feed) {
  const q = {};
  for (const key of Object.keys(req.query)) q[key] = queryValue(req.query[key]);
  const body = req.body && typeof req.body === 'object' && !Array.isArray(req.body) ? req.body : {};
  const opts = {};
  for (const key of ['style', 'include_docs', 'conflicts', 'attachments', 'filter', 'doc_ids']) {
    if (q[key] !== undefined) opts[key] = q[key];
  }
  if (body.doc_ids) opts.doc_ids = body.doc_ids;
  if (body.selector) opts.selector = body.selector;
  const limit = typeof q.limit === 'number' && q.limit > 0 ? q.limit : 0;
  let since = q.since === undefined ? 0 : q.since;
  if (since === 'now') since = (await req.db.info()).update_seq;
  const heartbeat =
    q.heartbeat === true ? 60000 : typeof q.heartbeat === 'number' ? q.heartbeat : 0;
  let timeout = typeof q.timeout === 'number' ? q.timeout : 0;
  if (!heartbeat && !timeout) timeout = 60000;

  if (feed !== 'longpoll' && feed !== 'continuous') {
    const once = await req.db.changes(
      Object.assign({}, opts, { since, limit: limit || undefined }),
    );
    return pouchUtils.sendJSON(res, 200, { results: once.results, last_seq: once.last_seq });
  }
  if (feed === 'longpoll') {
    const first = await req.db.changes(
      Object.assign({}, opts, { since, limit: limit || undefined }),
    );
    if (first.results.length) {
      return pouchUtils.sendJSON(res, 200, { results: first.results, last_seq: first.last_seq });
    }
  }

  res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'must-revalidate' });
  if (feed === 'longpoll') res.write('{"results":[\n');
  let lastSeq = since;
  let count = 0;
  let done = false;
  let timeoutTimer = null;
  const live = req.db.changes(Object.assign({}, opts, { since, live: true }));
  const heartbeatTimer = heartbeat ? setInterval(() => res.write('\n'), heartbeat) : null;

  function finish(rows) {
    if (done) return;
    done = true;
    clearInterval(heartbeatTimer);
    clearTimeout(timeoutTimer);
    live.cancel();
    if (res.destroyed) return;
    if (feed === 'longpoll') {
      const text = rows.map((row) => JSON.stringify(row)).join(',\n');
      res.end(
        `${text}${rows.length ? '\n' : ''}],\n"last_seq":${JSON.stringify(lastSeq)},"pending":0}\n`,
      );
    } else {
      res.end(JSON.stringify({ last_seq: lastSeq, pending: 0 }) + '\n');
    }
  }
  function armTimeout() {
    clearTimeout(timeoutTimer);
    if (timeout) timeoutTimer = setTimeout(() => finish([]), timeout);
  }

  live.on('change', (change) => {
    if (done) return;
    lastSeq = change.seq;
    count++;
    if (feed === 'longpoll') return finish([change]);
    res.write(JSON.stringify(change) + '\n');
    if (limit && count >= limit) return finish([]);
    armTimeout();
  });
  live.on('error', () => finish([]));
  res.on('close', () => finish([]));
  armTimeout();
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const PouchDB = makePouchDB(opts);

  const app = express();
  app.disable('x-powered-by');
  const pouchApp = expressPouchDB(PouchDB, { mode: 'minimumForPouchDB' });
  pouchApp.dbWrapper.registerWrapper(fixLatestOfMissingRev);
  app.all('/:db/_changes', liveChanges(pouchApp, PouchDB));
  app.use('/', pouchApp);

  const server = http.createServer(app);
  server.keepAliveTimeout = 60000;
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  let stopping = false;
  function stop() {
    if (stopping) return;
    stopping = true;
    server.close();
    for (const socket of sockets) socket.destroy();
    // Close the databases so LevelDB releases its lock cleanly; never wait long for it.
    const dbs = PouchDB.__dbCacheMap ? Array.from(PouchDB.__dbCacheMap.values()) : [];
    const closing = Promise.allSettled(dbs.map((db) => db.close()));
    const timer = setTimeout(() => process.exit(0), 2000);
    closing.then(() => {
      clearTimeout(timer);
      process.exit(0);
    });
  }

  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdout.on('error', stop);

  server.listen(opts.port, '127.0.0.1', () => {
    process.stdout.write(`{"port": ${server.address().port}}\n`);
  });
}

main();
