#!/usr/bin/env node
// A real PouchDB client (pouchdb-core + pouchdb-adapter-http), so that tests can check that
// what libhbsync writes is what a PouchDB client reads, and the other way round.
//
//   node pouch-client.js DB-URL write    < OPERATIONS    writes, prints one result per operation
//   node pouch-client.js DB-URL dump                      prints every document
//
// DB-URL is a database's URL (credentials may be in it: http://user:pass@host:port/db).
//
// write reads a JSON list of operations from stdin and prints a JSON list with one entry per
// operation ({"ok": true, "id", "rev"} or {"error", "reason"}; a "bulk" gives a list):
//   {"op": "put", "doc": {...}}                  db.put (with _rev to update)
//   {"op": "bulk", "docs": [...], "new_edits": false}
//                                               db.bulkDocs; new_edits:false stores the given
//                                               revisions as they are (with _revisions), which
//                                               is how conflicts are made
//   {"op": "delete", "id": "...", "rev": "..."}  db.remove
// The database is created when missing.
//
// dump prints a JSON list sorted by id, of every document the changes feed names, deleted
// ones included:
//   {"id", "winner": REV, "deleted": bool, "conflicts": [REV...] (the winner's _conflicts),
//    "leaves": [every leaf revision with _revisions, sorted by (position, id)]}
'use strict';

const PouchDB = require('pouchdb-core').plugin(require('pouchdb-adapter-http'));

function revKey(rev) {
  const dash = rev.indexOf('-');
  return [Number(rev.slice(0, dash)), rev.slice(dash + 1)];
}

function compareRevs(a, b) {
  const [pa, ia] = revKey(a);
  const [pb, ib] = revKey(b);
  return pa - pb || (ia < ib ? -1 : ia > ib ? 1 : 0);
}

// CouchDB's winner: not deleted before deleted, then the longest path, then the highest id.
function winnerOf(leaves) {
  return leaves.slice().sort((a, b) => {
    if (!!a._deleted !== !!b._deleted) return a._deleted ? 1 : -1;
    return compareRevs(b._rev, a._rev);
  })[0];
}

function asResult(err) {
  return { error: err.name || err.error || 'error', reason: err.message || err.reason || '' };
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function write(db) {
  const ops = await readStdin();
  if (!Array.isArray(ops)) throw new Error('write expects a JSON list of operations on stdin');
  const results = [];
  for (const op of ops) {
    try {
      if (op.op === 'put') {
        results.push(await db.put(op.doc));
      } else if (op.op === 'bulk') {
        const opts = op.new_edits === false ? { new_edits: false } : {};
        results.push((await db.bulkDocs(op.docs, opts)).map((r) => (r.error ? asResult(r) : r)));
      } else if (op.op === 'delete') {
        results.push(await db.remove(op.id, op.rev));
      } else {
        results.push({ error: 'bad_request', reason: `unknown op ${JSON.stringify(op.op)}` });
      }
    } catch (err) {
      results.push(asResult(err));
    }
  }
  return results;
}

async function dump(db) {
  const changes = await db.changes({ style: 'all_docs' });
  const ids = Array.from(new Set(changes.results.map((row) => row.id))).sort();
  const out = [];
  for (const id of ids) {
    const open = await db.get(id, { open_revs: 'all', revs: true });
    const leaves = open.filter((r) => r.ok).map((r) => r.ok);
    leaves.sort((a, b) => compareRevs(a._rev, b._rev));
    const winner = winnerOf(leaves);
    let conflicts = [];
    if (!winner._deleted) {
      const doc = await db.get(id, { conflicts: true });
      conflicts = (doc._conflicts || []).slice().sort(compareRevs);
    }
    out.push({ id, winner: winner._rev, deleted: !!winner._deleted, conflicts, leaves });
  }
  return out;
}

async function main() {
  const [url, cmd] = process.argv.slice(2);
  if (!url || !['write', 'dump'].includes(cmd)) {
    process.stderr.write('usage: node pouch-client.js DB-URL write|dump\n');
    process.exit(2);
  }
  const db = new PouchDB(url, { skip_setup: cmd === 'dump' });
  const result = cmd === 'write' ? await write(db) : await dump(db);
  process.stdout.write(JSON.stringify(result, null, 1) + '\n');
}

main().catch((err) => {
  process.stderr.write(`pouch-client.js: ${err.stack || err.message || JSON.stringify(err)}\n`);
  process.exit(1);
});
