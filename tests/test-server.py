#!/usr/bin/python3
"""The tests' own CouchDB-protocol server, proxy and PouchDB client (tests/server/).

The replication tests lean on these, so each feature is checked here through raw HTTP: the
server's replication endpoints and LevelDB persistence, and every rule and fault of the proxy.
One server and one proxy serve the whole case (each test uses its own database and starts from
a reset proxy); the persistence and exit tests start their own.
"""

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hbtestserver import (  # noqa: E402
    ProxyError,
    TestProxy,
    TestServer,
    node_binary,
    server_dir,
)

OPAQUE_RE = re.compile(r"^[0-9]+-g1AAAAB[A-Za-z0-9_-]{20,}$")


def rev(pos, char):
    return "%d-%s" % (pos, char * 32)


def revisions(*revs):
    """_revisions for a path given leaf first: revisions("3-c..", "2-b..", "1-a..")."""
    return {"start": int(revs[0].split("-")[0]), "ids": [r.split("-", 1)[1] for r in revs]}


class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%d %r>" % (self.status, self.body[:300])


def request(base, method, path, body=None, headers=None, conn=None, timeout=20):
    """One HTTP request on a new connection (or on conn); returns a Response.

    Live feeds get 5 s: every one here ends well within that, and a feed that never ends must
    fail the test rather than hang it on its heartbeats."""
    url = urllib.parse.urlsplit(base)
    if "feed=" in path:
        timeout = min(timeout, 5)
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    all_headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    start = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=all_headers)
        resp = conn.getresponse()
        raw = b""
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            raw += chunk
            if time.monotonic() - start > timeout:
                raise TimeoutError("%s %s: no end after %d s" % (method, path, timeout))
        raw += resp.read()  # marks the response done, so that conn can be used again
        return Response(resp.status, resp.headers, raw, time.monotonic() - start)
    finally:
        if own:
            conn.close()


def basic(user, password):
    token = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
    return {"Authorization": "Basic " + token}


def changes_lines(raw):
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


class ServerTestCase(unittest.TestCase):
    db_counter = 0

    @classmethod
    def setUpClass(cls):
        cls.server = TestServer()
        cls.proxy = TestProxy(cls.server.url)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.server.stop()

    def setUp(self):
        self.proxy.reset()
        self.proxy.clear_stats()
        ServerTestCase.db_counter += 1
        self.db = "db%d" % ServerTestCase.db_counter

    # Helpers -----------------------------------------------------------------------------

    def direct(self, method, path, body=None, **kw):
        return request(self.server.url, method, path, body, **kw)

    def via(self, method, path, body=None, **kw):
        return request(self.proxy.url, method, path, body, **kw)

    def create_db(self, name=None):
        resp = self.direct("PUT", "/" + (name or self.db))
        self.assertEqual(resp.status, 201, resp)

    def put_docs(self, ids, base=None):
        resp = request(base or self.server.url, "POST", "/%s/_bulk_docs" % self.db,
                       {"docs": [{"_id": i, "v": i} for i in ids]})
        self.assertEqual(resp.status, 201, resp)
        return resp.json()

    def assert_dropped(self, method, path, body=None, **kw):
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError,
                                http.client.IncompleteRead, BrokenPipeError)):
            self.via(method, path, body, **kw)

    # The server ---------------------------------------------------------------------------

    def test_server_replication_endpoints(self):
        self.create_db()
        self.assertEqual(self.direct("PUT", "/" + self.db).status, 412)
        self.assertEqual(self.direct("GET", "/nosuchdb").status, 404)

        # Two branches under 1-a, one ending in a deletion, and a plain document.
        a, b, c, d = rev(1, "a"), rev(2, "b"), rev(2, "c"), rev(3, "d")
        docs = [
            {"_id": "x", "_rev": b, "_revisions": revisions(b, a), "v": "b"},
            {"_id": "x", "_rev": c, "_revisions": revisions(c, a), "v": "c"},
            {"_id": "x", "_rev": d, "_deleted": True, "_revisions": revisions(d, c, a)},
            {"_id": "y", "_rev": rev(1, "e"), "_revisions": revisions(rev(1, "e")), "v": "y"},
        ]
        resp = self.direct("POST", "/%s/_bulk_docs" % self.db, {"docs": docs, "new_edits": False})
        self.assertEqual(resp.status, 201, resp)
        self.assertEqual(resp.json(), [])

        info = self.direct("GET", "/" + self.db).json()
        self.assertIsInstance(info["update_seq"], int)
        self.assertIn("instance_start_time", info)

        rows = self.direct("GET", "/%s/_changes?style=all_docs" % self.db).json()["results"]
        by_id = {row["id"]: row for row in rows}
        self.assertEqual(sorted(ch["rev"] for ch in by_id["x"]["changes"]), [b, d])
        self.assertEqual([ch["rev"] for ch in by_id["y"]["changes"]], [rev(1, "e")])
        winner_only = self.direct("GET", "/%s/_changes" % self.db).json()["results"]
        self.assertEqual([len(r["changes"]) for r in winner_only], [1, 1])

        # _bulk_get: revisions with their history, latest=true, a missing revision.
        resp = self.direct("POST", "/%s/_bulk_get?revs=true&latest=true" % self.db,
                           {"docs": [{"id": "x", "rev": b}, {"id": "x", "rev": c},
                                     {"id": "x", "rev": rev(9, "f")}]})
        self.assertEqual(resp.status, 200, resp)
        results = resp.json()["results"]
        self.assertEqual(len(results), 3)
        got_b = results[0]["docs"][0]["ok"]
        self.assertEqual((got_b["_rev"], got_b["v"], got_b["_revisions"]),
                         (b, "b", revisions(b, a)))
        got_latest = results[1]["docs"][0]["ok"]
        self.assertEqual((got_latest["_rev"], got_latest["_deleted"]), (d, True))
        self.assertEqual(got_latest["_revisions"], revisions(d, c, a))
        missing = results[2]["docs"][0]
        self.assertTrue("missing" in missing or "error" in missing, missing)

        # The open_revs fallback, with a revision the server does not have.
        path = "/%s/x?revs=true&latest=true&open_revs=%s" % (
            self.db, urllib.parse.quote(json.dumps([b, rev(5, "f")])))
        resp = self.direct("GET", path)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json(), [{"ok": {"_id": "x", "_rev": b, "v": "b",
                                               "_revisions": revisions(b, a)}},
                                       {"missing": rev(5, "f")}])

        resp = self.direct("POST", "/%s/_revs_diff" % self.db,
                           {"x": [b, rev(3, "f")], "z": [rev(1, "f")]})
        self.assertEqual(resp.json(), {"x": {"missing": [rev(3, "f")]},
                                       "z": {"missing": [rev(1, "f")]}})

        # _local documents: stored, updated with their _rev, never in the changes feed.
        resp = self.direct("PUT", "/%s/_local/checkpoint" % self.db, {"seq": 7})
        self.assertEqual(resp.status, 201, resp)
        local_rev = resp.json()["rev"]
        self.assertEqual(self.direct("PUT", "/%s/_local/checkpoint" % self.db, {"seq": 8}).status,
                         409)
        resp = self.direct("PUT", "/%s/_local/checkpoint" % self.db, {"seq": 8, "_rev": local_rev})
        self.assertEqual(resp.status, 201, resp)
        self.assertEqual(self.direct("GET", "/%s/_local/checkpoint" % self.db).json()["seq"], 8)
        ids = [r["id"] for r in self.direct("GET", "/%s/_changes" % self.db).json()["results"]]
        self.assertNotIn("_local/checkpoint", ids)

    def test_server_live_changes(self):
        self.create_db()
        self.put_docs(["a", "b"])
        # longpoll with nothing new ends at its timeout with well-formed JSON.
        resp = self.direct("GET", "/%s/_changes?feed=longpoll&since=2&timeout=300" % self.db)
        self.assertEqual(resp.json(), {"results": [], "last_seq": 2, "pending": 0})
        self.assertGreaterEqual(resp.elapsed, 0.25)
        # longpoll answers at once when there is something.
        resp = self.direct("GET", "/%s/_changes?feed=longpoll&since=1&style=all_docs" % self.db)
        self.assertEqual([r["id"] for r in resp.json()["results"]], ["b"])
        # continuous: rows, then last_seq at the timeout; limit ends it early.
        resp = self.direct("GET", "/%s/_changes?feed=continuous&timeout=300" % self.db)
        lines = changes_lines(resp.body)
        self.assertEqual([r.get("id") for r in lines[:-1]], ["a", "b"])
        self.assertEqual(lines[-1]["last_seq"], 2)
        resp = self.direct("GET", "/%s/_changes?feed=continuous&limit=1&heartbeat=5000" % self.db)
        self.assertEqual(changes_lines(resp.body), [
            {"id": "a", "changes": lines[0]["changes"], "seq": 1}, {"last_seq": 1, "pending": 0}])
        # POST with doc_ids.
        resp = self.direct("POST", "/%s/_changes?filter=_doc_ids" % self.db, {"doc_ids": ["b"]})
        self.assertEqual([r["id"] for r in resp.json()["results"]], ["b"])

    def test_server_leveldb_persists_across_restart(self):
        with tempfile.TemporaryDirectory() as tmp:
            store = os.path.join(tmp, "level")
            with TestServer(leveldb=store) as server:
                self.assertEqual(request(server.url, "PUT", "/keep").status, 201)
                resp = request(server.url, "PUT", "/keep/doc1", {"v": 1})
                self.assertEqual(resp.status, 201, resp)
                doc_rev = resp.json()["rev"]
                resp = request(server.url, "PUT", "/keep/_local/cp", {"s": 1})
                self.assertEqual(resp.status, 201, resp)
            self.assertEqual(server.process.returncode, 0)
            self.assertTrue(os.listdir(store))
            with TestServer(leveldb=store) as server:
                doc = request(server.url, "GET", "/keep/doc1").json()
                self.assertEqual((doc["_rev"], doc["v"]), (doc_rev, 1))
                self.assertEqual(request(server.url, "GET", "/keep/_local/cp").json()["s"], 1)
                self.assertEqual(request(server.url, "GET", "/keep").json()["update_seq"], 1)
            # The memory server does not keep anything.
            with TestServer() as server:
                self.assertEqual(request(server.url, "GET", "/keep").status, 404)
            self.assertEqual(sorted(os.listdir(tmp)), ["level"])

    def test_children_exit_on_stdin_eof_and_sigterm(self):
        server = TestServer()
        proxy = TestProxy(server.url)
        start = time.monotonic()
        self.assertEqual(proxy.stop(), 0)
        self.assertEqual(server.stop(), 0)
        self.assertLess(time.monotonic() - start, 4)
        for make in (lambda: TestServer(), lambda: TestProxy(self.server.url)):
            child = make()
            child.process.send_signal(signal.SIGTERM)
            self.assertEqual(child.process.wait(5), 0)
            child.stop()

    def test_nothing_written_into_the_source_tree(self):
        before = set(os.listdir(server_dir()))
        with TestServer() as server:
            request(server.url, "PUT", "/quiet")
            request(server.url, "PUT", "/quiet/doc", {"v": 1})
        self.assertEqual(set(os.listdir(server_dir())), before)
        self.assertFalse({"config.json", "log.txt", "_users", "_replicator"} & before)

    def test_pouch_client_write_and_dump(self):
        self.create_db()
        a, b, c = rev(1, "a"), rev(2, "b"), rev(2, "c")
        ops = [
            {"op": "put", "doc": {"_id": "p", "v": 1}},
            {"op": "bulk", "new_edits": False, "docs": [
                {"_id": "k", "_rev": b, "_revisions": revisions(b, a), "v": "b"},
                {"_id": "k", "_rev": c, "_revisions": revisions(c, a), "v": "c"}]},
            {"op": "put", "doc": {"_id": "p", "v": 2}},
            {"op": "put", "doc": {"_id": "gone"}},
        ]
        out = self.pouch(self.server.url, "write", ops)
        self.assertTrue(out[0]["ok"])
        self.assertEqual(out[1], [])
        self.assertEqual(out[2]["error"], "conflict")
        gone_rev = out[3]["rev"]
        out = self.pouch(self.server.url, "write",
                         [{"op": "delete", "id": "gone", "rev": gone_rev}])
        self.assertTrue(out[0]["ok"])

        # Read through the proxy with opaque, per-call sequences: a real client copes.
        self.proxy.config(opaque_seqs="per-call")
        dump = self.pouch(self.proxy.url, "dump")
        self.assertEqual([d["id"] for d in dump], ["gone", "k", "p"])
        gone, k, p = dump
        self.assertTrue(gone["deleted"])
        self.assertEqual([leaf["_deleted"] for leaf in gone["leaves"]], [True])
        self.assertEqual((k["winner"], k["conflicts"]), (c, [b]))
        self.assertEqual([(leaf["_rev"], leaf["v"], leaf["_revisions"]) for leaf in k["leaves"]],
                         [(b, "b", revisions(b, a)), (c, "c", revisions(c, a))])
        self.assertEqual((p["deleted"], p["conflicts"], p["leaves"][0]["v"]), (False, [], 1))
        self.assertEqual(self.pouch(self.server.url, "dump"), dump)

    def pouch(self, base, command, ops=None):
        proc = subprocess.run(
            [node_binary(), os.path.join(server_dir(), "pouch-client.js"),
             "%s/%s" % (base, self.db), command],
            input=json.dumps(ops).encode() if ops is not None else b"",
            stdout=subprocess.PIPE, timeout=60, check=True)
        return json.loads(proc.stdout)

    # The proxy: sequences -----------------------------------------------------------------

    def test_proxy_opaque_seqs_stable(self):
        self.create_db()
        self.put_docs(["a", "b", "c"])
        # Off: numbers pass as they are.
        self.assertEqual(self.via("GET", "/" + self.db).json()["update_seq"], 3)
        self.proxy.config(opaque_seqs=True)
        seq = self.via("GET", "/" + self.db).json()["update_seq"]
        self.assertRegex(seq, OPAQUE_RE)
        self.assertEqual(self.via("GET", "/" + self.db).json()["update_seq"], seq)

        feed = self.via("GET", "/%s/_changes?style=all_docs" % self.db).json()
        for row in feed["results"]:
            self.assertRegex(row["seq"], OPAQUE_RE)
        self.assertEqual(feed["last_seq"], seq)
        self.assertEqual(len({row["seq"] for row in feed["results"]}), 3)

        # since= goes back to the server's own sequence, from the query or a POST body.
        after_a = feed["results"][0]["seq"]
        resp = self.via("GET", "/%s/_changes?since=%s" % (self.db, urllib.parse.quote(after_a)))
        self.assertEqual([r["id"] for r in resp.json()["results"]], ["b", "c"])
        resp = self.via("POST", "/%s/_changes?since=%s" % (self.db, urllib.parse.quote(after_a)),
                        {"doc_ids": ["a", "c"]})
        self.assertEqual([r["id"] for r in resp.json()["results"]], ["c"])
        # A since in a POST body (which CouchDB, like this server, ignores) is checked too.
        resp = self.via("POST", "/%s/_changes" % self.db, {"since": after_a})
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(self.via("POST", "/%s/_changes" % self.db, {"since": "5"}).status, 400)
        resp = self.via("GET", "/%s/_changes?since=0" % self.db)
        self.assertEqual(len(resp.json()["results"]), 3)
        for bad in ("2", "2-g1AAAABforged", "garbage"):
            resp = self.via("GET", "/%s/_changes?since=%s" % (self.db, bad))
            self.assertEqual(resp.status, 400, bad)

        # The same strings from a new proxy (stable mode survives a proxy restart).
        with TestProxy(self.server.url) as other:
            other.config(opaque_seqs="stable")
            self.assertEqual(request(other.url, "GET", "/" + self.db).json()["update_seq"], seq)

        # longpoll and continuous feeds.
        last = feed["last_seq"]
        resp = self.via("GET", "/%s/_changes?feed=longpoll&timeout=200&since=%s" % (
            self.db, urllib.parse.quote(last)))
        self.assertEqual(resp.json()["results"], [])
        self.assertEqual(resp.json()["last_seq"], last)
        resp = self.via("GET", "/%s/_changes?feed=continuous&timeout=200&since=%s" % (
            self.db, urllib.parse.quote(after_a)))
        lines = changes_lines(resp.body)
        self.assertEqual([r.get("id") for r in lines], ["b", "c", None])
        self.assertEqual(lines[-1]["last_seq"], last)
        self.assertEqual(lines[0]["seq"], feed["results"][1]["seq"])

    def test_proxy_opaque_seqs_per_call(self):
        self.create_db()
        self.put_docs(["a", "b"])
        self.proxy.config(opaque_seqs="per-call")
        first = self.via("GET", "/%s/_changes" % self.db).json()
        second = self.via("GET", "/%s/_changes" % self.db).json()
        self.assertRegex(first["last_seq"], OPAQUE_RE)
        self.assertNotEqual(first["last_seq"], second["last_seq"])
        self.assertNotEqual(first["results"][0]["seq"], second["results"][0]["seq"])
        for feed in (first, second):
            since = urllib.parse.quote(feed["results"][0]["seq"])
            resp = self.via("GET", "/%s/_changes?since=%s" % (self.db, since))
            self.assertEqual([r["id"] for r in resp.json()["results"]], ["b"])
        a = self.via("GET", "/" + self.db).json()["update_seq"]
        b = self.via("GET", "/" + self.db).json()["update_seq"]
        self.assertNotEqual(a, b)

    # The proxy: limits, denial, _bulk_get -------------------------------------------------

    def test_proxy_413_by_size_and_count(self):
        self.create_db()
        self.proxy.config(max_body_bytes=2000)
        small = {"docs": [{"_id": "small", "v": "x" * 100}]}
        self.assertEqual(self.via("POST", "/%s/_bulk_docs" % self.db, small).status, 201)
        big = {"docs": [{"_id": "big", "v": "x" * 3000}]}
        resp = self.via("POST", "/%s/_bulk_docs" % self.db, big)
        self.assertEqual(resp.status, 413, resp)
        self.assertEqual(resp.json()["error"], "too_large")
        self.assertEqual(self.direct("GET", "/%s/big" % self.db).status, 404)
        self.assertEqual(self.via("PUT", "/%s/big" % self.db, {"v": "x" * 3000}).status, 413)

        self.proxy.config(max_body_bytes=None, max_docs=2)
        three = {"docs": [{"_id": "d%d" % i} for i in range(3)]}
        resp = self.via("POST", "/%s/_bulk_docs" % self.db, three)
        self.assertEqual((resp.status, resp.json()["error"]), (413, "too_large"))
        self.assertEqual(self.direct("GET", "/%s/d0" % self.db).status, 404)
        self.assertEqual(self.via("POST", "/%s/_bulk_docs" % self.db,
                                  {"docs": three["docs"][:2]}).status, 201)
        resp = self.via("POST", "/%s/_bulk_get" % self.db,
                        {"docs": [{"id": "d0"}, {"id": "d1"}, {"id": "small"}]})
        self.assertEqual(resp.status, 413, resp)
        resp = self.via("POST", "/%s/_bulk_get" % self.db, {"docs": [{"id": "d0"}, {"id": "d1"}]})
        self.assertEqual(resp.status, 200, resp)

    def test_proxy_denies_documents(self):
        self.create_db()
        self.proxy.config(deny_ids=["b", "d"], deny_reason="no b or d")
        resp = self.via("POST", "/%s/_bulk_docs" % self.db,
                        {"docs": [{"_id": i} for i in ("a", "b", "c", "d")]})
        self.assertEqual(resp.status, 201, resp)
        out = resp.json()
        self.assertEqual([e["id"] for e in out], ["a", "b", "c", "d"])
        self.assertTrue(out[0]["ok"] and out[2]["ok"])
        for entry in (out[1], out[3]):
            self.assertEqual((entry["error"], entry["reason"]), ("forbidden", "no b or d"))
        self.assertEqual(self.direct("GET", "/%s/a" % self.db).status, 200)
        self.assertEqual(self.direct("GET", "/%s/b" % self.db).status, 404)
        self.assertEqual(self.proxy.stats()["bulk_docs"]["batches"][0]["ids"],
                         ["a", "b", "c", "d"])

        # new_edits:false answers only failures: the denials, in document order.
        docs = [{"_id": i, "_rev": rev(1, "f"), "_revisions": revisions(rev(1, "f"))}
                for i in ("d", "e", "b")]
        resp = self.via("POST", "/%s/_bulk_docs" % self.db, {"docs": docs, "new_edits": False})
        self.assertEqual([(e["id"], e["error"]) for e in resp.json()],
                         [("d", "forbidden"), ("b", "forbidden")])
        self.assertEqual(self.direct("GET", "/%s/e" % self.db).status, 200)

        # Every document denied: answered by the proxy alone.
        upstream_before = self.direct("GET", "/" + self.db).json()["update_seq"]
        resp = self.via("POST", "/%s/_bulk_docs" % self.db, {"docs": [{"_id": "b"}, {"_id": "d"}]})
        self.assertEqual(resp.status, 201)
        self.assertEqual([(e["id"], e["error"]) for e in resp.json()],
                         [("b", "forbidden"), ("d", "forbidden")])
        self.assertEqual(self.direct("GET", "/" + self.db).json()["update_seq"], upstream_before)
        resp = self.via("PUT", "/%s/d" % self.db, {"v": 1})
        self.assertEqual((resp.status, resp.json()["error"]), (403, "forbidden"))
        self.assertEqual(self.via("PUT", "/%s/f" % self.db, {"v": 1}).status, 201)

    def test_proxy_couchdb_bulk_get_errors(self):
        self.create_db()
        doc_rev = self.put_docs(["a"])[0]["rev"]
        body = {"docs": [{"id": "a", "rev": doc_rev}, {"id": "a", "rev": rev(7, "f")}]}
        self.assertEqual(self.via("POST", "/%s/_bulk_get" % self.db, body).json()["results"][1],
                         {"id": "a", "docs": [{"missing": rev(7, "f")}]})
        self.proxy.config(couchdb_bulk_get_errors=True)
        results = self.via("POST", "/%s/_bulk_get" % self.db, body).json()["results"]
        self.assertEqual(results[0]["docs"][0]["ok"]["_rev"], doc_rev)
        self.assertEqual(results[1]["docs"], [{"error": {"id": "a", "rev": rev(7, "f"),
                                                         "error": "not_found",
                                                         "reason": "missing"}}])

    def test_proxy_bulk_get_disabled(self):
        self.create_db()
        self.put_docs(["a"])
        body = {"docs": [{"id": "a"}]}
        self.assertEqual(self.via("POST", "/%s/_bulk_get" % self.db, body).status, 200)
        for status in (404, 405, 501):
            self.proxy.config(bulk_get_status=status)
            self.assertEqual(self.via("POST", "/%s/_bulk_get" % self.db, body).status, status)
            # The fallback still works.
            resp = self.via("GET", "/%s/a?open_revs=all&revs=true" % self.db)
            self.assertEqual(resp.status, 200)
        self.assertEqual(self.proxy.stats()["by_route"]["POST /%s/_bulk_get" % self.db], 4)

    # The proxy: faults --------------------------------------------------------------------

    def test_fault_drop(self):
        self.create_db()
        path = "/%s/_bulk_docs" % self.db
        self.proxy.fault(action="drop", method="POST", path="/_bulk_docs$", count=2)
        # Forwarded, then the answer lost: the write happened.
        self.assert_dropped("POST", path, {"docs": [{"_id": "w1"}]})
        self.assertEqual(self.via("GET", "/" + self.db).status, 200)
        self.assert_dropped("POST", path, {"docs": [{"_id": "w2"}]})
        self.assertEqual(self.via("POST", path, {"docs": [{"_id": "w3"}]}).status, 201)
        for doc in ("w1", "w2", "w3"):
            self.assertEqual(self.direct("GET", "/%s/%s" % (self.db, doc)).status, 200, doc)

        # Not forwarded at all.
        self.proxy.fault(action="drop", path="/_bulk_docs$", count=1, forward=False)
        self.assert_dropped("POST", path, {"docs": [{"_id": "w4"}]})
        self.assertEqual(self.direct("GET", "/%s/w4" % self.db).status, 404)

        # After a few bytes of the body.
        self.proxy.fault(action="drop", method="GET", path="^/%s$" % self.db, after_bytes=5)
        url = urllib.parse.urlsplit(self.proxy.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", "/" + self.db)
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        with self.assertRaises(http.client.IncompleteRead) as ctx:
            resp.read()
        self.assertEqual(len(ctx.exception.partial), 5)
        conn.close()
        faults = self.proxy.stats()["faults"]
        self.assertEqual([(f["hits"], f["remaining"]) for f in faults],
                         [(2, 0), (1, 0), (1, None)])

    def test_fault_status_burst(self):
        self.create_db()
        self.proxy.fault(action="status", status=503, path="/_changes$", count=2)
        path = "/%s/_changes" % self.db
        self.assertEqual([self.via("GET", path).status for _ in range(3)], [503, 503, 200])
        self.assertEqual(self.via("GET", path).json()["results"], [])

        # 500 after applying the request upstream.
        self.proxy.fault(action="status", status=500, method="PUT", count=1, forward=True)
        resp = self.via("PUT", "/%s/applied" % self.db, {"v": 1})
        self.assertEqual((resp.status, resp.json()["error"]), (500, "internal_server_error"))
        self.assertEqual(self.direct("GET", "/%s/applied" % self.db).status, 200)
        self.proxy.fault(action="status", status=500, method="PUT", count=1)
        self.assertEqual(self.via("PUT", "/%s/not-applied" % self.db, {"v": 1}).status, 500)
        self.assertEqual(self.direct("GET", "/%s/not-applied" % self.db).status, 404)

    def test_fault_delay(self):
        self.create_db()
        self.proxy.fault(action="delay", ms=400, path="/_changes$")
        self.assertLess(self.via("GET", "/" + self.db).elapsed, 0.3)
        slow = self.via("GET", "/%s/_changes" % self.db)
        self.assertEqual(slow.status, 200)
        self.assertGreaterEqual(slow.elapsed, 0.39)

    def test_fault_truncate(self):
        self.create_db()
        self.put_docs(["a", "b", "c"])
        self.proxy.fault(action="truncate", path="/_changes$", count=1)
        url = urllib.parse.urlsplit(self.proxy.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", "/%s/_changes" % self.db)
        resp = conn.getresponse()
        length = int(resp.headers["Content-Length"])
        with self.assertRaises(http.client.IncompleteRead) as ctx:
            resp.read()
        self.assertEqual(len(ctx.exception.partial), length // 2)
        conn.close()
        self.assertEqual(len(self.via("GET", "/%s/_changes" % self.db).json()["results"]), 3)

    def test_fault_duplicate_changes(self):
        self.create_db()
        self.put_docs(["a", "b"])
        self.proxy.fault(action="duplicate_changes", path="/_changes$")
        rows = self.via("GET", "/%s/_changes" % self.db).json()["results"]
        self.assertEqual([r["id"] for r in rows], ["a", "a", "b", "b"])
        resp = self.via("GET", "/%s/_changes?feed=continuous&timeout=200" % self.db)
        self.assertEqual([r.get("id") for r in changes_lines(resp.body)],
                         ["a", "a", "b", "b", None])
        resp = self.via("GET", "/%s/_changes?feed=longpoll&since=1" % self.db)
        self.assertEqual([r["id"] for r in resp.json()["results"]], ["b", "b"])

    def test_fault_matching(self):
        self.create_db()
        self.proxy.fault(action="status", status=503, method="POST", path="/_bulk_docs$",
                         query="batch=1")
        self.assertEqual(self.via("GET", "/" + self.db).status, 200)
        self.assertEqual(self.via("POST", "/%s/_bulk_docs" % self.db, {"docs": []}).status, 201)
        self.assertEqual(self.via("POST", "/%s/_bulk_docs?batch=1" % self.db,
                                  {"docs": []}).status, 503)

    # The proxy: authentication and routing ------------------------------------------------

    def test_basic_auth_and_cookie_session(self):
        self.create_db()
        self.proxy.config(basic_auth="alice:s3cret")
        path = "/" + self.db
        self.assertEqual(self.via("GET", path).status, 401)
        self.assertEqual(self.via("GET", path, headers=basic("alice", "wrong")).status, 401)
        self.assertEqual(self.via("GET", path, headers=basic("alice", "s3cret")).status, 200)
        self.assertNotIn("WWW-Authenticate", self.via("GET", path).headers)
        self.proxy.config(www_authenticate=True)
        self.assertIn("WWW-Authenticate", self.via("GET", path).headers)

        resp = self.via("POST", "/_session", {"name": "alice", "password": "nope"})
        self.assertEqual(resp.status, 401)
        resp = self.via("POST", "/_session", {"name": "alice", "password": "s3cret"})
        self.assertEqual(resp.status, 200, resp)
        cookie = resp.headers["Set-Cookie"].split(";")[0]
        self.assertTrue(cookie.startswith("AuthSession="))
        self.assertEqual(self.via("GET", path, headers={"Cookie": cookie}).status, 200)
        who = self.via("GET", "/_session", headers={"Cookie": cookie}).json()
        self.assertEqual(who["userCtx"]["name"], "alice")
        self.proxy.expire_sessions()
        self.assertEqual(self.via("GET", path, headers={"Cookie": cookie}).status, 401)

    def test_bearer_token(self):
        self.create_db()
        path = "/" + self.db
        self.proxy.set_token("t1")
        self.assertEqual(self.via("GET", path).status, 401)
        self.assertEqual(self.via("GET", path, headers={"Authorization": "Bearer t1"}).status, 200)
        self.proxy.set_token("t2")
        resp = self.via("GET", path, headers={"Authorization": "Bearer t1"})
        self.assertEqual((resp.status, resp.json()["reason"]), (401, "token expired"))
        resp = self.via("GET", path, headers={"Authorization": "Bearer junk"})
        self.assertEqual((resp.status, resp.json()["reason"]), (401, "invalid token"))
        self.assertEqual(self.via("GET", path, headers={"Authorization": "Bearer t2"}).status, 200)
        self.proxy.set_token(None)
        self.assertEqual(self.via("GET", path).status, 200)

    def test_per_user_databases(self):
        self.proxy.config(basic_auth="alice:pw", user_db="mydb")
        self.proxy.set_token("bob-token", user="bob")
        alice = basic("alice", "pw")
        bob = {"Authorization": "Bearer bob-token"}
        for who in (alice, bob):
            self.assertEqual(self.via("GET", "/mydb", headers=who).status, 404)
            self.assertEqual(self.via("PUT", "/mydb", headers=who).status, 201)
        self.assertEqual(self.via("PUT", "/mydb/note", {"by": "alice"}, headers=alice).status, 201)
        self.assertEqual(self.via("PUT", "/mydb/note", {"by": "bob"}, headers=bob).status, 201)
        self.assertEqual(self.via("GET", "/mydb/note", headers=alice).json()["by"], "alice")
        self.assertEqual(self.via("GET", "/mydb/note", headers=bob).json()["by"], "bob")
        self.assertEqual(self.direct("GET", "/userdb-alice/note").json()["by"], "alice")
        self.assertEqual(self.direct("GET", "/userdb-bob/note").json()["by"], "bob")
        self.assertEqual(self.direct("GET", "/mydb").status, 404)
        self.assertEqual(self.via("GET", "/mydb").status, 401)

    # The proxy: statistics, keep-alive, the control channel -------------------------------

    def test_stats(self):
        self.create_db()
        bulk = "/%s/_bulk_docs" % self.db
        self.via("POST", bulk, {"docs": [{"_id": "a"}, {"_id": "b"}, {"_id": "c"}]})
        self.via("POST", bulk, {"docs": [{"_id": "d"}, {"_id": "e"}]})
        self.via("GET", "/%s/a" % self.db)
        self.via("GET", "/%s/_local/cp" % self.db)
        self.via("GET", "/%s/_changes?style=all_docs" % self.db)
        self.via("POST", "/%s/_bulk_get" % self.db, {"docs": [{"id": "a"}, {"id": "e"}]})
        stats = self.proxy.stats()
        self.assertEqual(stats["total"], 6)
        self.assertEqual(stats["by_route"], {
            "POST %s" % bulk: 2,
            "GET /%s/{id}" % self.db: 1,
            "GET /%s/_local/{id}" % self.db: 1,
            "GET /%s/_changes" % self.db: 1,
            "POST /%s/_bulk_get" % self.db: 1,
        })
        self.assertEqual(stats["by_status"], {"201": 2, "200": 3, "404": 1})
        self.assertEqual(stats["bulk_docs"]["requests"], 2)
        self.assertEqual(stats["bulk_docs"]["docs"], 5)
        self.assertEqual([b["ids"] for b in stats["bulk_docs"]["batches"]],
                         [["a", "b", "c"], ["d", "e"]])
        self.assertEqual([b["status"] for b in stats["bulk_docs"]["batches"]], [201, 201])
        self.assertEqual(stats["bulk_get"]["docs"], 2)
        self.assertEqual(stats["requests"][2], {"method": "GET", "url": "/%s/a" % self.db,
                                                "route": "GET /%s/{id}" % self.db, "status": 200})
        self.proxy.clear_stats()
        stats = self.proxy.stats()
        self.assertEqual((stats["total"], stats["by_route"], stats["bulk_docs"]["docs"]),
                         (0, {}, 0))

    def test_keep_alive_through_the_proxy(self):
        self.create_db()
        url = urllib.parse.urlsplit(self.proxy.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.connect()
        sock = conn.sock
        for i in range(5):
            resp = request(self.proxy.url, "PUT", "/%s/k%d" % (self.db, i), {"i": i}, conn=conn)
            self.assertEqual(resp.status, 201)
            self.assertIs(conn.sock, sock)
        conn.close()

    def test_control_channel(self):
        self.assertEqual(self.proxy.command('{"cmd": "ping"}'), {"ok": True})
        for bad in ('{"cmd": "nope"}', "not json", '{"cmd": "config", "rules": {"nope": 1}}',
                    '{"cmd": "fault", "fault": {"action": "explode"}}',
                    '{"cmd": "config", "rules": {"opaque_seqs": "sometimes"}}'):
            with self.assertRaises(ProxyError):
                self.proxy.command(bad)
        rules = self.proxy.config(max_docs=5, deny_ids=["x"])
        self.assertEqual((rules["max_docs"], rules["deny_ids"]), (5, ["x"]))
        rules = self.proxy.config(max_docs=None)
        self.assertEqual((rules["max_docs"], rules["deny_ids"]), (None, ["x"]))
        rules = self.proxy.config(replace=True, bulk_get_status=501)
        self.assertEqual((rules["deny_ids"], rules["bulk_get_status"]), ([], 501))
        self.proxy.reset()
        self.assertEqual(self.proxy.config()["bulk_get_status"], None)


if __name__ == "__main__":
    unittest.main(verbosity=2)
