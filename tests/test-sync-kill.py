#!/usr/bin/python3
"""`hbsync sync --continuous` killed with SIGKILL at random moments while both sides write.

Twenty times over: the continuous sync starts, the store (through other hbsync processes) and
the server (over HTTP) both gain and edit documents, and after a random delay the sync process
is SIGKILLed: mid-batch, mid-checkpoint, mid-longpoll, wherever it happens to be. Then one last
continuous sync runs until it reports up-to-date, and the store and the server must hold the
same revision trees (every leaf with its _revisions and body) for every document, with no
revision lost and none made twice. The store must open and pass `hbsync stats` after every kill.
"""

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hbtestserver import TestServer  # noqa: E402

CLI = os.environ.get("HBSYNC_CLI")
PIN = "482913"
KILLS = 20


def http_json(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def canonical(doc):
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


class SyncKillTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="hbsync-kill-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = os.path.join(self.dir, "store.db")
        self.server = TestServer()
        self.addCleanup(self.server.stop)
        self.db = self.server.url + "/clinic"
        http_json("PUT", self.db)
        self.env = dict(os.environ, GSETTINGS_BACKEND="memory")
        self.rand = random.Random(int(os.environ.get("HB_TEST_SEED", "20261125")))
        self.local_revs = {}
        self.server_revs = {}
        out = self.cli("init", "--no-device-secret", "--kdf-memory", "8192",
                       "--kdf-iterations", "1")
        self.assertIn("store_uuid", out)

    def cli(self, *args, stdin=None, check=True):
        read_fd, write_fd = os.pipe()
        os.write(write_fd, (PIN + "\n").encode())
        os.close(write_fd)
        try:
            proc = subprocess.run([CLI, "--store", self.store, "--pin-fd", str(read_fd), *args],
                                  input=stdin.encode() if stdin is not None else None,
                                  stdin=None if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, pass_fds=(read_fd,), env=self.env,
                                  timeout=120)
        finally:
            os.close(read_fd)
        if check:
            self.assertEqual(proc.returncode, 0, "hbsync %s: %s" % (args, proc.stderr.decode()))
        out = proc.stdout.decode()
        if "export" in args:
            return [json.loads(line) for line in out.splitlines() if line.strip()]
        return json.loads(out) if out.strip() else None

    def write_local(self, n):
        for _ in range(n):
            doc_id = "note:local-%d" % len(self.local_revs)
            if self.local_revs and self.rand.random() < 0.3:
                doc_id = self.rand.choice(sorted(self.local_revs))
            doc = {"_id": doc_id, "type": "note", "text": "local %f" % self.rand.random()}
            if doc_id in self.local_revs:
                current = self.cli("get", doc_id)
                doc["_rev"] = current["_rev"]
            out = self.cli("put", "-", stdin=json.dumps(doc))
            self.local_revs[doc_id] = out["rev"]

    def write_server(self, n):
        for _ in range(n):
            doc_id = "note:server-%d" % len(self.server_revs)
            doc = {"type": "note", "text": "server %f" % self.rand.random()}
            if self.server_revs and self.rand.random() < 0.3:
                doc_id = self.rand.choice(sorted(self.server_revs))
                doc["_rev"] = http_json("GET", "%s/%s" % (self.db, doc_id))["_rev"]
            out = http_json("PUT", "%s/%s" % (self.db, doc_id), doc)
            self.server_revs[doc_id] = out["rev"]

    def start_sync(self):
        read_fd, write_fd = os.pipe()
        os.write(write_fd, (PIN + "\n").encode())
        os.close(write_fd)
        proc = subprocess.Popen(
            [CLI, "--store", self.store, "--pin-fd", str(read_fd), "sync", self.db,
             "--continuous", "--create", "--poll-ms", "100", "--batch-size", "7"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            pass_fds=(read_fd,), env=self.env)
        os.close(read_fd)
        return proc

    def wait_up_to_date(self, proc, timeout=90):
        deadline = time.monotonic() + timeout
        buffer = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                status = json.loads(line)
                if (status["status"] == "up-to-date" and status["pending_push"] == 0
                        and status["pending_pull"] == 0):
                    return
        self.fail("no up-to-date within %s s" % timeout)

    def store_trees(self):
        trees = {}
        for doc in self.cli("export"):
            doc.pop("_conflicts", None)
            trees.setdefault(doc["_id"], []).append(canonical(doc))
        return {k: sorted(v) for k, v in trees.items()}

    def server_trees(self):
        trees = {}
        rows = http_json("GET", self.db + "/_changes?style=all_docs")["results"]
        for row in rows:
            docs = http_json("POST", self.db + "/_bulk_get?revs=true",
                             {"docs": [{"id": row["id"], "rev": c["rev"]}
                                       for c in row["changes"]]})
            for result in docs["results"]:
                for entry in result["docs"]:
                    self.assertIn("ok", entry)
                    trees.setdefault(row["id"], []).append(canonical(entry["ok"]))
        return {k: sorted(v) for k, v in trees.items()}

    def test_kill_at_random_moments_then_converge(self):
        self.write_local(30)
        self.write_server(30)
        for kill in range(KILLS):
            proc = self.start_sync()
            # Both sides keep writing while the sync runs.
            self.write_local(self.rand.randint(1, 6))
            self.write_server(self.rand.randint(1, 6))
            time.sleep(self.rand.uniform(0.05, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
            self.assertEqual(proc.returncode, -signal.SIGKILL)
            stats = self.cli("stats")
            self.assertIsInstance(stats, dict, "the store must open after kill %d" % kill)

        proc = self.start_sync()
        try:
            self.wait_up_to_date(proc)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            proc.stdout.close()

        local = self.store_trees()
        server = self.server_trees()
        self.assertEqual(sorted(local), sorted(server))
        for doc_id in local:
            self.assertEqual(local[doc_id], server[doc_id], doc_id)
        # Every write of either side is there, with the revision it was given.
        for doc_id, rev in list(self.local_revs.items()) + list(self.server_revs.items()):
            revs = [json.loads(leaf)["_rev"] for leaf in local[doc_id]]
            self.assertIn(rev, revs, doc_id)
        # Nobody wrote a conflict: one leaf per document means no revision was made twice.
        for doc_id, leaves in local.items():
            self.assertEqual(len(leaves), 1, doc_id)


if __name__ == "__main__":
    if not CLI or not os.access(CLI, os.X_OK):
        sys.stderr.write("HBSYNC_CLI must name the hbsync binary\n")
        sys.exit(1)
    unittest.main(verbosity=2)
