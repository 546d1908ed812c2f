#!/usr/bin/env node
// PouchDB's side of tests/bench-replication.c: one replication, timed, in a process of its own.
//
//   node --expose-gc bench-pouchdb.js push NDJSON DB-URL [BATCH]
//   node --expose-gc bench-pouchdb.js pull DB-URL [BATCH]
//
// push  loads the documents of NDJSON (one JSON document per line, each with _id, _rev and
//       _revisions, the very texts libhbsync's replicator sends) into a fresh memory database
//       with new_edits:false, so that PouchDB holds the same revisions, then times
//       PouchDB.replicate(local, remote) into DB-URL (created when missing).
// pull  times PouchDB.replicate(remote, local) from DB-URL into a fresh memory database.
//
// BATCH is the batch size (100 by default). Setup happens before the clock; then the heap is
// collected (when gc is exposed) and the kernel's peak-RSS mark is reset (/proc/self/clear_refs),
// so the figures cover the replication alone. Prints one line of JSON:
//   {"seconds", "cpu" (user + system seconds, process.cpuUsage), "rss_kib" (VmHWM after the
//    reset), "max_rss_kib" (process.resourceUsage().maxRSS, setup included), "docs_read",
//    "docs_written", "doc_write_failures", "doc_count" (of the local database after a pull)}
// and exits 1 on any failure.
'use strict';

const fs = require('fs');
const readline = require('readline');
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-replication'));

function usage() {
  process.stderr.write(
    'usage: bench-pouchdb.js push NDJSON DB-URL [BATCH] | pull DB-URL [BATCH]\n',
  );
  process.exit(2);
}

async function readDocs(path) {
  const docs = [];
  const lines = readline.createInterface({ input: fs.createReadStream(path), crlfDelay: Infinity });
  for await (const line of lines) if (line.length) docs.push(JSON.parse(line));
  return docs;
}

function resetPeakRss() {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
  } catch (e) {
    // Not Linux, or not allowed: VmHWM then includes the setup.
  }
}

function peakRssKib() {
  try {
    const m = /VmHWM:\s+(\d+)\s+kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]);
  } catch (e) {
    // fall through
  }
  return process.resourceUsage().maxRSS;
}

let counter = 0;
function memoryDb() {
  return new PouchDB(`bench-local-${process.pid}-${counter++}`, { adapter: 'memory' });
}

async function main() {
  const [mode, ...rest] = process.argv.slice(2);
  let source, target, local;
  let batch = 100;
  let expected = -1;

  if (mode === 'push') {
    if (rest.length < 2) usage();
    const docs = await readDocs(rest[0]);
    if (rest[2]) batch = Number(rest[2]);
    local = memoryDb();
    for (let i = 0; i < docs.length; i += 1000) {
      const results = await local.bulkDocs(docs.slice(i, i + 1000), { new_edits: false });
      for (const r of results) if (r.error) throw new Error(`setup: ${r.id}: ${r.error}`);
    }
    expected = docs.length;
    source = local;
    target = new PouchDB(rest[1], { adapter: 'http' });
  } else if (mode === 'pull') {
    if (rest.length < 1) usage();
    if (rest[1]) batch = Number(rest[1]);
    local = memoryDb();
    source = new PouchDB(rest[0], { adapter: 'http', skip_setup: true });
    target = local;
  } else {
    usage();
  }

  if (typeof global.gc === 'function') global.gc();
  resetPeakRss();
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const result = await PouchDB.replicate(source, target, { batch_size: batch });
  const t1 = process.hrtime.bigint();
  const cpu = process.cpuUsage(cpu0);
  const rss = peakRssKib();

  const out = {
    seconds: Number(t1 - t0) / 1e9,
    cpu: (cpu.user + cpu.system) / 1e6,
    rss_kib: rss,
    max_rss_kib: process.resourceUsage().maxRSS,
    docs_read: result.docs_read,
    docs_written: result.docs_written,
    doc_write_failures: result.doc_write_failures,
    ok: result.ok,
  };
  if (mode === 'pull') out.doc_count = (await local.info()).doc_count;
  if (expected >= 0) out.expected = expected;
  process.stdout.write(JSON.stringify(out) + '\n');
  if (!result.ok || result.doc_write_failures) process.exit(1);
}

main().catch((err) => {
  process.stderr.write(`bench-pouchdb.js: ${(err && err.stack) || err}\n`);
  process.exit(1);
});
