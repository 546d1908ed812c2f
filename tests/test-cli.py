#!/usr/bin/python3
"""The hbsync command-line tool: every command and every documented exit code.

Runs the binary named by $HBSYNC_CLI in a fresh directory per test. Secrets go through
--pin-fd (a pipe), except in the terminal test, which drives the no-echo prompt through a pty.

Lockout: the vault delays attempts after the 4th failure (1, 2, 4, 8, 16, 32 s). The "too soon"
answer is tested for real, inside the 2 s delay after the 5th failure (about 3.4 s of sleeps).
The full lockout test skips the delays by rewinding the vault's last-failure time in the SQLite
file (the column is found from the schema at run time), as if the time had passed, instead of
sleeping 63 s; if no such column exists it falls back to waiting as long as the tool says.
"""

import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hbtestserver import TestProxy, TestServer  # noqa: E402

CLI = os.environ.get("HBSYNC_CLI")
# GLib's proxy resolver reads GSettings: the memory backend keeps the tool away from dconf.
os.environ["GSETTINGS_BACKEND"] = "memory"

PIN = "482913"
NEW_PIN = "739154"
FAST_KDF = ["--kdf-memory", "8192", "--kdf-iterations", "1"]
REV_RE = re.compile(r"^[1-9][0-9]*-[0-9a-f]{32}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Document content used below; none of it may ever reach stderr.
SECRET_NAME = "Zebulon"
SECRET_NOTE = "Quillfeather reports dizziness"

COMMANDS = ["init", "put", "get", "delete", "list", "changes", "import", "export", "stats",
            "change-pin", "recover", "push", "pull", "sync", "status", "diagnose", "session-sync"]
SERVER_OPTIONS = ["--user", "--password-fd", "--cookie", "--token-fd", "--ca-file", "--pin-sha256",
                  "--insecure-http"]


def rev_of(pos, char):
    return "%d-%s" % (pos, char * 32)


class Result:
    def __init__(self, args, proc):
        self.args = args
        self.code = proc.returncode
        self.stdout = proc.stdout.decode("utf-8")
        self.stderr = proc.stderr.decode("utf-8")

    def json(self):
        return json.loads(self.stdout)

    def ndjson(self):
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __str__(self):
        return "hbsync %s → %d\nstdout: %s\nstderr: %s" % (
            " ".join(self.args), self.code, self.stdout[:2000], self.stderr[:2000])


class CliTestCase(unittest.TestCase):
    def start_server(self):
        """A test server for this test, stopped after it; self.db is a database URL on it."""
        self.server = TestServer()
        self.addCleanup(self.server.stop)
        self.db = self.server.url + "/clinic"

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="hbsync-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = self.path("store.db")
        self.never_on_stderr = [PIN, NEW_PIN, SECRET_NAME, SECRET_NOTE]

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, text):
        with open(self.path(name), "w", encoding="utf-8") as f:
            f.write(text)
        return self.path(name)

    # ---- running the tool ------------------------------------------------------------------

    def run_cli(self, *args, secrets=(PIN,), store=None, stdin_data=None, env=None):
        """Runs hbsync; each of secrets is one line on the --pin-fd pipe (None: no --pin-fd)."""
        cmd = [CLI]
        if store is not False:
            cmd += ["--store", store or self.store]
        read_fd = None
        if secrets is not None:
            read_fd, write_fd = os.pipe()
            os.write(write_fd, "".join(s + "\n" for s in secrets).encode())
            os.close(write_fd)
            cmd += ["--pin-fd", str(read_fd)]
        cmd += list(args)
        try:
            proc = subprocess.run(
                cmd,
                input=stdin_data.encode() if stdin_data is not None else None,
                stdin=subprocess.DEVNULL if stdin_data is None else None,
                capture_output=True,
                pass_fds=(read_fd,) if read_fd is not None else (),
                env=env,
                start_new_session=True,  # no controlling terminal: nothing may prompt
                timeout=int(os.environ.get("HB_CLI_TIMEOUT", "120")),
            )
        finally:
            if read_fd is not None:
                os.close(read_fd)
        result = Result(cmd[1:], proc)
        self.check_result(result)
        return result

    def check_result(self, result):
        for secret in self.never_on_stderr:
            self.assertNotIn(secret, result.stderr, "secret on stderr:\n%s" % result)
        if result.code == 0:
            if "export" in result.args:
                result.ndjson()
            elif "--help" not in result.args and "--version" not in result.args:
                try:
                    result.json()
                except ValueError as e:
                    self.fail("stdout is not one JSON value (%s):\n%s" % (e, result))
        else:
            lines = result.stderr.splitlines()
            self.assertTrue(lines and lines[0].startswith("hbsync: "),
                            "no error line on stderr:\n%s" % result)

    def ok(self, *args, **kwargs):
        result = self.run_cli(*args, **kwargs)
        self.assertEqual(result.code, 0, str(result))
        return result.ndjson() if "export" in args else result.json()

    def fails(self, code, *args, **kwargs):
        result = self.run_cli(*args, **kwargs)
        self.assertEqual(result.code, code, str(result))
        return result

    def init(self, store=None, device_secret=False, pin=PIN):
        args = ["init"] + FAST_KDF + ([] if device_secret else ["--no-device-secret"])
        result = self.run_cli(*args, secrets=(pin,), store=store)
        self.assertEqual(result.code, 0, str(result))
        out = result.json()
        self.assertEqual(set(out), {"store_uuid", "recovery_key"})
        self.assertRegex(out["store_uuid"], UUID_RE)
        self.assertGreaterEqual(len(out["recovery_key"]), 32)
        self.assertIn("recovery key", result.stderr)
        self.never_on_stderr.append(out["recovery_key"])
        return out

    def put(self, doc, **kwargs):
        out = self.ok("put", "-", stdin_data=json.dumps(doc), **kwargs)
        self.assertTrue(out["ok"])
        self.assertRegex(out["rev"], REV_RE)
        return out["rev"]

    def get(self, doc_id, *args, **kwargs):
        return self.ok("get", doc_id, *args, **kwargs)

    def import_text(self, text, expect=0, **kwargs):
        name = self.write("import-%d.json" % time.monotonic_ns(), text)
        result = self.run_cli("import", name, **kwargs)
        self.assertEqual(result.code, expect, str(result))
        return result.json()

    # ---- SQLite helpers (tamper, skip delays) ----------------------------------------------

    def tables(self, con):
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: con.execute('PRAGMA table_info("%s")' % n).fetchall() for n in names}

    def body_column(self, con):
        """The table and column holding the sealed winning bodies (docs.body)."""
        cols = [c[1] for c in con.execute('PRAGMA table_info("docs")').fetchall()]
        self.assertIn("body", cols, "the store schema changed: docs.body is gone")
        return "docs", "body"

    def body_blobs(self, path):
        con = sqlite3.connect(path)
        try:
            table, col = self.body_column(con)
            return {bytes(r[0]) for r in con.execute('SELECT "%s" FROM "%s"' % (col, table))}
        finally:
            con.close()

    def flip_byte(self, path, blob):
        con = sqlite3.connect(path)
        try:
            table, col = self.body_column(con)
            damaged = bytearray(blob)
            damaged[len(damaged) // 2] ^= 0x01
            cur = con.execute('UPDATE "%s" SET "%s" = ? WHERE "%s" = ?' % (table, col, col),
                              (bytes(damaged), blob))
            self.assertEqual(cur.rowcount, 1)
            con.commit()
        finally:
            con.close()

    def rewind_failure_clock(self, path):
        """Pretends the escalating delay has passed; False if the schema has no such time."""
        con = sqlite3.connect(path)
        try:
            for name, cols in self.tables(con).items():
                if "last_failure_at" in [c[1] for c in cols]:
                    con.execute('UPDATE "%s" SET last_failure_at = 0' % name)
                    con.commit()
                    return True
            return False
        finally:
            con.close()

    def fail_pin(self, store=None):
        """One counted wrong-PIN attempt, getting past the escalating delay if it is running."""
        store = store or self.store
        for _ in range(3):
            result = self.run_cli("stats", secrets=("000000",), store=store)
            self.assertEqual(result.code, 3, str(result))
            wait = re.search(r"try again in (\d+) second", result.stderr)
            if wait is None:
                return result
            if not self.rewind_failure_clock(store):
                time.sleep(int(wait.group(1)) + 0.2)
        self.fail("the delay never passed:\n%s" % result)

    # ---- terminal --------------------------------------------------------------------------

    def run_on_tty(self, args, answers):
        """Runs hbsync with a pty as its controlling terminal; answers are (prompt, reply)."""
        master, slave = os.openpty()
        self.addCleanup(os.close, master)

        def make_controlling_tty():
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen([CLI, "--store", self.store] + args,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                pass_fds=(slave,), preexec_fn=make_controlling_tty)
        transcript = b""
        try:
            for prompt, reply in answers:
                deadline = time.monotonic() + 30
                while prompt.encode() not in transcript:
                    ready, _, _ = select.select([master], [], [], 0.5)
                    if ready:
                        transcript += os.read(master, 4096)
                    self.assertLess(time.monotonic(), deadline,
                                    "no prompt %r; terminal: %r" % (prompt, transcript))
                # The prompt is consumed so that the next one has to appear anew.
                transcript = transcript.replace(prompt.encode(), b"<prompt>", 1)
                os.write(master, (reply + "\n").encode())
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        while select.select([master], [], [], 0.1)[0]:
            try:
                transcript += os.read(master, 4096)
            except OSError:
                break
        echo_restored = bool(termios.tcgetattr(slave)[3] & termios.ECHO)
        os.close(slave)
        result = Result(args, subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
        self.check_result(result)
        return result, transcript.decode("utf-8", "replace"), echo_restored


class TestHelpAndUsage(CliTestCase):
    def test_help_lists_commands_and_exit_codes(self):
        result = self.run_cli("--help", secrets=None, store=False)
        self.assertEqual(result.code, 0, str(result))
        for command in COMMANDS:
            self.assertRegex(result.stdout, r"\n  %s\b" % re.escape(command))
        for code in range(7):
            self.assertRegex(result.stdout, r"\n  %d  \w" % code)
        for option in ("--store", "--pin-fd", "--version"):
            self.assertIn(option, result.stdout)

    def test_command_help(self):
        result = self.run_cli("get", "--help", secrets=None, store=False)
        self.assertEqual(result.code, 0, str(result))
        for option in ("--rev", "--conflicts", "--revs"):
            self.assertIn(option, result.stdout)
        result = self.run_cli("init", "--help", secrets=None, store=False)
        for option in ("--no-device-secret", "--kdf-memory", "--kdf-iterations"):
            self.assertIn(option, result.stdout)
        for command, options in (("sync", ["--continuous", "--poll-ms", "--create"]),
                                 ("push", []), ("pull", []), ("status", ["--local"]),
                                 ("diagnose", []), ("session-sync", ["--timeout"])):
            result = self.run_cli(command, "--help", secrets=None, store=False)
            self.assertEqual(result.code, 0, str(result))
            for option in SERVER_OPTIONS + options:
                self.assertIn(option, result.stdout, command)

    def test_version(self):
        result = self.run_cli("--version", secrets=None, store=False)
        self.assertEqual(result.code, 0, str(result))
        self.assertRegex(result.stdout, r"^hbsync \d+\.\d+\.\d+\n$")

    def test_usage_errors(self):
        self.init()
        cases = [
            ([], {"store": False}),
            (["frobnicate"], {}),
            (["get"], {}),
            (["get", "a", "b"], {}),
            (["delete", "patient:1"], {}),
            (["list", "--bogus"], {}),
            (["list", "--type", "patient", "--patient-id", "x"], {}),
            (["changes", "--since", "soon"], {}),
            (["changes", "--limit", "-1"], {}),
            (["import"], {}),
            (["stats", "extra"], {}),
            (["get", "patient:1"], {"store": False}),
            (["init", "--kdf-memory", "1024"], {"store": self.path("other.db")}),
            (["init", "--kdf-iterations", "0"], {"store": self.path("other.db")}),
            (["--pin-fd", "three", "stats"], {"secrets": None}),
            (["--pin-fd", "999", "stats"], {"secrets": None}),
            (["--bogus", "stats"], {}),
        ]
        for args, kwargs in cases:
            with self.subTest(args=args):
                result = self.fails(2, *args, **kwargs)
                self.assertIn("Usage:", result.stderr)
                self.assertEqual(result.stdout, "")
        self.assertFalse(os.path.exists(self.path("other.db")))

    def test_no_terminal_and_no_pin_fd(self):
        self.init()
        result = self.fails(2, "stats", secrets=None)
        self.assertIn("--pin-fd", result.stderr)

    def test_global_options_after_command(self):
        self.init()
        rev = self.put({"_id": "patient:1", "type": "patient"})
        read_fd, write_fd = os.pipe()
        os.write(write_fd, (PIN + "\n").encode())
        os.close(write_fd)
        proc = subprocess.run([CLI, "get", "patient:1", "--store", self.store,
                               "--pin-fd", str(read_fd)], capture_output=True,
                              pass_fds=(read_fd,), stdin=subprocess.DEVNULL, timeout=60)
        os.close(read_fd)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(json.loads(proc.stdout)["_rev"], rev)


class TestInit(CliTestCase):
    def test_init_prints_uuid_and_recovery_key_once(self):
        out = self.init()
        stats = self.ok("stats")
        self.assertEqual(stats.get("store_uuid", out["store_uuid"]), out["store_uuid"])
        # A second init must not overwrite the vault.
        result = self.fails(1, "init", "--no-device-secret", *FAST_KDF)
        self.assertIn("already", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_weak_pin_refused(self):
        self.fails(1, "init", "--no-device-secret", *FAST_KDF, secrets=("123",))
        self.fails(1, "init", "--no-device-secret", *FAST_KDF, secrets=("",))
        self.fails(1, "init", "--no-device-secret", *FAST_KDF, secrets=())

    def test_missing_store(self):
        result = self.fails(4, "get", "patient:1", store=self.path("nothing.db"))
        self.assertIn("init", result.stderr)
        self.write("not-a-store.db", "hello")
        self.fails(4, "stats", store=self.path("not-a-store.db"))

    def test_device_secret(self):
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            self.skipTest("no D-Bus session (run inside dbus-run-session with gnome-keyring)")
        self.init(device_secret=True)
        rev = self.put({"_id": "patient:ds", "type": "patient", "given_name": SECRET_NAME})
        self.assertEqual(self.get("patient:ds")["_rev"], rev)

        # Without the Secret Service the vault cannot be opened, nor one created by default.
        env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS="unix:path=%s" % self.path("no-bus"))
        self.fails(1, "get", "patient:ds", env=env)
        result = self.fails(1, "init", *FAST_KDF, store=self.path("other.db"), env=env)
        self.assertIn("--no-device-secret", result.stderr)
        self.init(store=self.path("third.db"))


class TestDocuments(CliTestCase):
    def setUp(self):
        super().setUp()
        self.init()

    def test_put_and_get(self):
        doc = {"_id": "patient:p1", "type": "patient", "given_name": SECRET_NAME,
               "family_name": "Doe", "birth_date": "1980-02-03"}
        path = self.write("doc.json", json.dumps(doc))
        out = self.ok("put", path)
        self.assertEqual(out["id"], "patient:p1")
        rev1 = out["rev"]
        self.assertRegex(rev1, r"^1-")
        self.assertEqual(self.get("patient:p1"), dict(doc, _rev=rev1))

        doc2 = dict(doc, _rev=rev1, phone="555-0100")
        rev2 = self.put(doc2)
        self.assertRegex(rev2, r"^2-")
        self.assertEqual(self.get("patient:p1")["phone"], "555-0100")

        old = self.get("patient:p1", "--rev", rev1)
        self.assertEqual(old["_rev"], rev1)
        self.assertNotIn("phone", old)

        revs = self.get("patient:p1", "--revs")
        self.assertEqual(revs["_revisions"], {"start": 2, "ids": [rev2[2:], rev1[2:]]})
        self.assertNotIn("_conflicts", self.get("patient:p1", "--conflicts"))

        self.fails(5, "put", path)  # no _rev for an existing document
        self.fails(5, "put", "-", stdin_data=json.dumps(dict(doc, _rev=rev1)))  # stale
        self.fails(4, "get", "patient:nobody")
        self.fails(4, "get", "patient:p1", "--rev", rev_of(1, "f"))

    def test_put_generates_id_and_reads_pin_and_document_from_one_fd(self):
        out = self.ok("put", stdin_data=json.dumps({"type": "note", "text": SECRET_NOTE}))
        self.assertRegex(out["id"], r"^note:[0-9a-f-]{36}$")
        self.assertEqual(self.get(out["id"])["text"], SECRET_NOTE)

        doc = {"_id": "patient:fd0", "type": "patient"}
        result = self.run_cli("--pin-fd", "0", "put", "-", secrets=None,
                              stdin_data=PIN + "\n" + json.dumps(doc))
        self.assertEqual(result.code, 0, str(result))
        self.assertEqual(result.json()["id"], "patient:fd0")

    def test_put_invalid(self):
        self.fails(1, "put", "-", stdin_data="{not json")
        self.fails(1, "put", "-", stdin_data="[1, 2]")
        self.fails(1, "put", "-", stdin_data="")
        self.fails(1, "put", "-", stdin_data=json.dumps({"_id": "x", "_bogus": 1}))
        self.fails(1, "put", self.path("missing.json"))

    def test_delete(self):
        rev1 = self.put({"_id": "patient:d", "type": "patient", "given_name": SECRET_NAME})
        rev2 = self.put({"_id": "patient:d", "_rev": rev1, "type": "patient"})
        self.fails(5, "delete", "patient:d", "--rev", rev1)
        out = self.ok("delete", "patient:d", "--rev", rev2)
        self.assertTrue(out["ok"])
        self.assertEqual(out["id"], "patient:d")
        self.assertRegex(out["rev"], r"^3-")
        self.fails(4, "get", "patient:d")
        tomb = self.get("patient:d", "--rev", out["rev"])
        self.assertTrue(tomb.get("_deleted"))
        change = self.ok("changes")["results"][-1]
        self.assertEqual(change["id"], "patient:d")
        self.assertTrue(change.get("deleted"))

    def test_conflicts(self):
        a, b = rev_of(1, "a"), rev_of(1, "b")
        lines = [
            {"_id": "patient:c", "_rev": a, "_revisions": {"start": 1, "ids": ["a" * 32]},
             "type": "patient", "v": "a"},
            {"_id": "patient:c", "_rev": b, "_revisions": {"start": 1, "ids": ["b" * 32]},
             "type": "patient", "v": "b"},
        ]
        out = self.import_text("\n".join(json.dumps(d) for d in lines) + "\n")
        self.assertEqual(out, {"imported": 2, "errors": []})

        winner = self.get("patient:c", "--conflicts")
        self.assertEqual(winner["_rev"], b)  # the highest revision id wins
        self.assertEqual(winner["_conflicts"], [a])
        self.assertNotIn("_conflicts", self.get("patient:c"))
        self.assertEqual(self.get("patient:c", "--rev", a)["v"], "a")
        change = self.ok("changes")["results"][0]
        self.assertEqual(sorted(c["rev"] for c in change["changes"]), [a, b])

        # Deleting the winner lets the other branch win.
        self.ok("delete", "patient:c", "--rev", b)
        self.assertEqual(self.get("patient:c", "--conflicts")["_rev"], a)

    def test_list(self):
        self.put({"_id": "patient:1", "type": "patient", "given_name": SECRET_NAME})
        self.put({"_id": "patient:2", "type": "patient"})
        self.put({"_id": "session:1", "type": "session", "patient_id": "patient:1"})
        self.put({"_id": "note:1", "type": "note", "session_id": "session:1",
                  "patient_id": "patient:1", "text": SECRET_NOTE})
        gone = self.put({"_id": "patient:3", "type": "patient"})
        self.ok("delete", "patient:3", "--rev", gone)

        def ids(*args):
            docs = self.ok("list", *args)
            self.assertIsInstance(docs, list)
            return sorted(d["_id"] for d in docs)

        self.assertEqual(ids(), ["note:1", "patient:1", "patient:2", "session:1"])
        self.assertEqual(ids("--type", "patient"), ["patient:1", "patient:2"])
        self.assertEqual(ids("--type", "session"), ["session:1"])
        self.assertEqual(ids("--type", "observation"), [])
        self.assertEqual(ids("--patient-id", "patient:1"), ["note:1", "session:1"])
        self.assertEqual(ids("--session-id", "session:1"), ["note:1"])
        full = self.ok("list", "--type", "note")[0]
        self.assertEqual(full["text"], SECRET_NOTE)

    def test_changes(self):
        revs = [self.put({"_id": "patient:%d" % i, "type": "patient"}) for i in range(3)]
        feed = self.ok("changes")
        self.assertEqual([r["seq"] for r in feed["results"]], [1, 2, 3])
        self.assertEqual([r["id"] for r in feed["results"]],
                         ["patient:0", "patient:1", "patient:2"])
        self.assertEqual(feed["results"][0]["changes"], [{"rev": revs[0]}])
        self.assertEqual(feed["last_seq"], 3)

        since = self.ok("changes", "--since", "1")
        self.assertEqual([r["seq"] for r in since["results"]], [2, 3])
        limited = self.ok("changes", "--limit", "1")
        self.assertEqual([r["seq"] for r in limited["results"]], [1])
        self.assertEqual(limited["last_seq"], 1)
        page = self.ok("changes", "--since", "1", "--limit", "1")
        self.assertEqual([r["id"] for r in page["results"]], ["patient:1"])
        empty = self.ok("changes", "--since", "3")
        self.assertEqual(empty["results"], [])

        # An edit moves the document to the end of the feed; it appears once.
        self.put({"_id": "patient:0", "_rev": revs[0], "type": "patient"})
        feed = self.ok("changes")
        self.assertEqual([r["id"] for r in feed["results"]],
                         ["patient:1", "patient:2", "patient:0"])
        self.assertEqual(feed["results"][-1]["seq"], 4)

    def test_stats(self):
        self.put({"_id": "patient:1", "type": "patient"})
        self.put({"_id": "patient:2", "type": "patient"})
        stats = self.ok("stats")
        self.assertIsInstance(stats, dict)
        self.assertEqual(stats["doc_count"], 2)
        for value in stats.values():
            self.assertIsInstance(value, (int, float, str))


class TestImportExport(CliTestCase):
    def setUp(self):
        super().setUp()
        self.init()

    def test_import_ndjson(self):
        h3 = ["3" * 32, "2" * 32, "1" * 32]
        lines = [
            json.dumps({"_id": "patient:new", "type": "patient", "given_name": SECRET_NAME}),
            "",
            json.dumps({"_id": "patient:hist", "_rev": "3-" + h3[0], "type": "patient",
                        "_revisions": {"start": 3, "ids": h3}}),
            json.dumps({"_id": "patient:bare", "_rev": "2-" + "e" * 32, "type": "patient"}),
            "   ",
        ]
        out = self.import_text("\n".join(lines) + "\n")
        self.assertEqual(out, {"imported": 3, "errors": []})

        self.assertRegex(self.get("patient:new")["_rev"], r"^1-")
        hist = self.get("patient:hist", "--revs")
        self.assertEqual(hist["_rev"], "3-" + h3[0])
        self.assertEqual(hist["_revisions"], {"start": 3, "ids": h3})
        bare = self.get("patient:bare", "--revs")
        self.assertEqual(bare["_rev"], "2-" + "e" * 32)
        self.assertEqual(bare["_revisions"], {"start": 2, "ids": ["e" * 32]})

        # From standard input, with one bad line: the rest is imported, the error reported.
        text = "{broken\n" + json.dumps({"_id": "patient:ok", "type": "patient"}) + "\n"
        result = self.fails(1, "import", "-", stdin_data=text)
        out = result.json()
        self.assertEqual(out["imported"], 1)
        self.assertEqual(len(out["errors"]), 1)
        self.assertEqual(out["errors"][0]["line"], 1)
        self.get("patient:ok")

        # A new edit of an existing document is a conflict, exit code 5.
        text = json.dumps({"_id": "patient:new", "type": "patient"}) + "\n"
        out = self.import_text(text + text, expect=5)
        self.assertEqual(out["imported"], 0)
        self.assertEqual([e["error"] for e in out["errors"]], ["conflict", "conflict"])
        self.assertEqual(out["errors"][0]["id"], "patient:new")

        self.fails(1, "import", self.path("missing.ndjson"))

    def all_docs_dump(self, docs):
        rows = [{"id": d["_id"], "key": d["_id"], "value": {"rev": d["_rev"]}, "doc": d}
                for d in docs]
        # CouchDB writes one row per line, lines ending in \r\n.
        return ('{"total_rows":%d,"offset":0,"rows":[\r\n' % len(rows)
                + ",\r\n".join(json.dumps(r) for r in rows) + "\r\n]}\n")

    def test_import_all_docs_dump(self):
        docs = [
            {"_id": "patient:%d" % i, "_rev": "%d-%s" % (i + 1, "%x" % (i + 10) * 32),
             "type": "patient", "given_name": SECRET_NAME, "n": i}
            for i in range(3)
        ]
        out = self.import_text(self.all_docs_dump(docs))
        self.assertEqual(out, {"imported": 3, "errors": []})
        for doc in docs:
            self.assertEqual(self.get(doc["_id"]), doc)

        # The same dump pretty-printed, or on one line, into fresh stores.
        for i, text in enumerate([
            json.dumps({"total_rows": 3, "offset": 0, "rows": json.loads(
                self.all_docs_dump(docs))["rows"]}, indent=2),
            json.dumps(json.loads(self.all_docs_dump(docs))),
        ]):
            store = self.path("dump-%d.db" % i)
            self.init(store=store)
            out = self.import_text(text, store=store)
            self.assertEqual(out, {"imported": 3, "errors": []})
            self.assertEqual(self.ok("list", store=store), docs)

    def test_import_refuses_what_it_cannot_import(self):
        # A dump made without include_docs: no row may vanish silently.
        dump = json.dumps({"total_rows": 2, "rows": [
            {"id": "patient:1", "key": "patient:1", "value": {"rev": rev_of(1, "a")}},
            {"id": "patient:2", "key": "patient:2", "value": {"rev": rev_of(1, "b")},
             "doc": {"_id": "patient:2", "_rev": rev_of(1, "b"), "type": "patient"}},
        ]})
        out = self.import_text(dump, expect=1)
        self.assertEqual(out["imported"], 1)
        self.assertEqual(len(out["errors"]), 1)
        self.assertIn("include_docs", json.dumps(out["errors"]))
        # Text after a NUL byte would be cut off: the whole input is refused instead.
        name = self.write("nul.ndjson", '{"_id":"a"}\n\0{"_id":"b"}\n')
        result = self.fails(1, "import", name)
        self.assertIn("NUL", result.stderr)

    def test_parse_errors_do_not_echo_content(self):
        name = self.write("bad.json", '{"_id": "x", "family_name" "%s"}' % SECRET_NAME)
        result = self.fails(1, "put", name)
        self.assertNotIn(SECRET_NAME, result.stderr)
        self.assertIn("line 1", result.stderr)

    def test_export_round_trip(self):
        rev = self.put({"_id": "patient:1", "type": "patient", "given_name": SECRET_NAME})
        rev = self.put({"_id": "patient:1", "_rev": rev, "type": "patient",
                        "given_name": SECRET_NAME, "phone": "555"})
        self.put({"_id": "patient:1", "_rev": rev, "type": "patient", "given_name": "X"})
        self.put({"_id": "session:1", "type": "session", "patient_id": "patient:1"})
        self.put({"_id": "note:1", "type": "note", "session_id": "session:1",
                  "text": SECRET_NOTE, "nested": {"a": [1, 2.5, None, True]}})
        gone = self.put({"_id": "observation:1", "type": "observation", "value": 37.2})
        self.ok("delete", "observation:1", "--rev", gone)
        self.import_text("\n".join(json.dumps(d) for d in [
            {"_id": "patient:c", "_rev": rev_of(1, "a"), "type": "patient",
             "_revisions": {"start": 1, "ids": ["a" * 32]}},
            {"_id": "patient:c", "_rev": rev_of(1, "b"), "type": "patient",
             "_revisions": {"start": 1, "ids": ["b" * 32]}},
            {"_id": "patient:c", "_rev": rev_of(2, "d"), "_deleted": True,
             "_revisions": {"start": 2, "ids": ["d" * 32, "c" * 32]}},
        ]) + "\n")
        conflicted = self.get("patient:c", "--conflicts")
        self.assertEqual(conflicted["_rev"], rev_of(1, "b"))
        self.assertEqual(conflicted["_conflicts"], [rev_of(1, "a")])
        self.assertEqual(conflicted["_deleted_conflicts"], [rev_of(2, "d")])

        # Every leaf, not just the winner: patient:c has three.
        exported = self.ok("export")
        self.assertEqual(len(exported), 7)
        for doc in exported:
            self.assertRegex(doc["_rev"], REV_RE)
            self.assertEqual(doc["_revisions"]["start"], int(doc["_rev"].split("-")[0]))
            self.assertEqual(doc["_revisions"]["ids"][0], doc["_rev"].split("-")[1])
        self.assertTrue(any(d.get("_deleted") for d in exported))

        result = self.run_cli("export")
        other = self.path("copy.db")
        self.init(store=other)
        dump = self.write("export.ndjson", result.stdout)
        out = self.ok("import", dump, store=other)
        self.assertEqual(out, {"imported": 7, "errors": []})

        by_id = lambda docs: sorted(docs, key=lambda d: d["_id"])
        self.assertEqual(by_id(self.ok("export", store=other)), by_id(exported))
        self.assertEqual(self.ok("list", store=other), self.ok("list"))
        for doc in exported:
            if not doc.get("_deleted"):
                self.assertEqual(self.get(doc["_id"], "--revs", store=other),
                                 self.get(doc["_id"], "--revs"))
        self.fails(4, "get", "observation:1", store=other)
        # Conflicts and deleted conflicts survive the round trip.
        self.assertEqual(self.get("patient:c", "--conflicts", store=other), conflicted)


class TestPin(CliTestCase):
    def setUp(self):
        super().setUp()
        self.recovery_key = self.init()["recovery_key"]
        self.put({"_id": "patient:1", "type": "patient", "given_name": SECRET_NAME})

    def test_wrong_pin(self):
        result = self.fails(3, "get", "patient:1", secrets=("111111",))
        self.assertRegex(result.stderr, r"9 attempts? left")
        self.assertEqual(result.stdout, "")
        self.get("patient:1")
        # A success resets the count; an empty PIN is refused without counting.
        self.fails(1, "get", "patient:1", secrets=("",))
        result = self.fails(3, "get", "patient:1", secrets=("111111",))
        self.assertRegex(result.stderr, r"9 attempts? left")

    def test_too_soon_during_the_delay(self):
        for i in range(4):
            result = self.fails(3, "stats", secrets=("000000",))
            self.assertRegex(result.stderr, r"%d attempts? left" % (9 - i))
        # After the 4th failure the delay starts at 1 s; the 5th doubles it, which leaves a
        # slow (sanitizer) build time to be refused within it.
        time.sleep(1.2)
        result = self.fails(3, "stats", secrets=("000000",))
        self.assertRegex(result.stderr, r"5 attempts? left")
        # Even the right PIN is not tried during the delay.
        result = self.fails(3, "get", "patient:1")
        self.assertRegex(result.stderr, r"try again in \d+ second")
        time.sleep(2.2)
        self.get("patient:1")

    def test_lockout_then_recover(self):
        for _ in range(10):
            result = self.fail_pin()
        self.assertRegex(result.stderr, r"no attempts left|recovery key")

        result = self.fails(3, "get", "patient:1")
        self.assertIn("recover", result.stderr)
        self.fails(3, "change-pin", *FAST_KDF, secrets=(PIN, NEW_PIN))

        other_key = self.init(store=self.path("other.db"))["recovery_key"]
        self.fails(3, "recover", *FAST_KDF, secrets=(other_key, NEW_PIN))
        self.fails(3, "recover", *FAST_KDF, secrets=("not-a-recovery-key", NEW_PIN))

        self.assertEqual(self.ok("recover", *FAST_KDF, secrets=(self.recovery_key, NEW_PIN)),
                         {"ok": True})
        self.assertEqual(self.get("patient:1", secrets=(NEW_PIN,))["given_name"], SECRET_NAME)
        result = self.fails(3, "get", "patient:1", secrets=(PIN,))
        self.assertRegex(result.stderr, r"9 attempts? left")

    def test_change_pin(self):
        self.assertEqual(self.ok("change-pin", *FAST_KDF, secrets=(PIN, NEW_PIN)), {"ok": True})
        self.fails(3, "get", "patient:1", secrets=(PIN,))
        self.assertEqual(self.get("patient:1", secrets=(NEW_PIN,))["given_name"], SECRET_NAME)
        self.fails(3, "change-pin", *FAST_KDF, secrets=(PIN, "246813"))
        self.fails(1, "change-pin", *FAST_KDF, secrets=(NEW_PIN, "12"))
        self.fails(1, "change-pin", *FAST_KDF, secrets=(NEW_PIN,))
        self.get("patient:1", secrets=(NEW_PIN,))


class TestCorrupt(CliTestCase):
    def test_flipped_byte_in_a_sealed_body(self):
        self.init()
        self.put({"_id": "patient:keep", "type": "patient", "given_name": "Keep"})
        before = self.body_blobs(self.store)
        self.put({"_id": "patient:hit", "type": "patient", "given_name": SECRET_NAME})
        new = self.body_blobs(self.store) - before
        self.assertEqual(len(new), 1)
        self.flip_byte(self.store, new.pop())

        result = self.fails(6, "get", "patient:hit")
        self.assertEqual(result.stdout, "")
        self.assertEqual(self.get("patient:keep")["given_name"], "Keep")

        # The readable rest is still listed and exported, and the failure still reported.
        result = self.fails(6, "list")
        self.assertEqual([d["_id"] for d in result.json()], ["patient:keep"])
        result = self.fails(6, "export")
        self.assertEqual([d["_id"] for d in result.ndjson()], ["patient:keep"])


class TestTerminal(CliTestCase):
    def test_pin_asked_on_terminal_without_echo(self):
        result, transcript, echo = self.run_on_tty(
            ["init", "--no-device-secret"] + FAST_KDF,
            [("New PIN:", PIN), ("Repeat the new PIN:", PIN)])
        self.assertEqual(result.code, 0, str(result))
        self.never_on_stderr.append(result.json()["recovery_key"])
        self.assertNotIn(PIN, transcript)
        self.assertTrue(echo, "echo not restored")

        self.put({"_id": "patient:1", "type": "patient"})
        result, transcript, echo = self.run_on_tty(["get", "patient:1"], [("PIN:", PIN)])
        self.assertEqual(result.code, 0, str(result))
        self.assertEqual(result.json()["_id"], "patient:1")
        self.assertNotIn(PIN, transcript)
        self.assertTrue(echo, "echo not restored")

        result, transcript, _ = self.run_on_tty(["get", "patient:1"], [("PIN:", "111111")])
        self.assertEqual(result.code, 3, str(result))

    def test_new_pin_confirmation_must_match(self):
        result, _, _ = self.run_on_tty(
            ["init", "--no-device-secret"] + FAST_KDF,
            [("New PIN:", PIN), ("Repeat the new PIN:", NEW_PIN)])
        self.assertEqual(result.code, 1, str(result))
        self.assertIn("differ", result.stderr)
        self.fails(4, "stats")


def http_json(method, url, body=None, auth=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    if auth:
        import base64
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class TestReplication(CliTestCase):
    """push, pull and sync against the tests' CouchDB-protocol server."""

    def setUp(self):
        super().setUp()
        self.start_server()
        self.init()
        self.ids = []
        for i in range(25):
            doc = {"_id": "note:%02d" % i, "type": "note", "session_id": "session:s1",
                   "patient_id": "patient:p1", "text": "%s %d" % (SECRET_NOTE, i)}
            self.put(doc)
            self.ids.append(doc["_id"])
        self.put({"_id": "session:s1", "type": "session", "patient_id": "patient:p1"})
        self.put({"_id": "patient:p1", "type": "patient", "given_name": SECRET_NAME})
        self.put({"_id": "patient:p2", "type": "patient", "given_name": "Other"})

    def server_ids(self, db=None):
        rows = http_json("GET", (db or self.db) + "/_all_docs")["rows"]
        return sorted(row["id"] for row in rows)

    def test_push_then_pull_into_another_store(self):
        self.fails(7, "push", self.db)  # no database, and no --create
        out = self.ok("push", self.db, "--create", "--batch-size", "7")
        self.assertTrue(out["ok"])
        self.assertEqual(out["push"]["docs_written"], 28)
        self.assertEqual(out["push"]["doc_write_failures"], 0)
        self.assertEqual(out["push"]["batches"], 4)
        self.assertEqual(out["push"]["last_seq"], 28)
        self.assertRegex(out["push"]["replication_id"], r"^[0-9a-f]{32}$")
        self.assertEqual(len(self.server_ids()), 28)
        doc = http_json("GET", self.db + "/patient:p1")
        self.assertEqual(doc["given_name"], SECRET_NAME)  # plaintext on the server, by design

        again = self.ok("push", self.db)
        self.assertEqual(again["push"]["docs_written"], 0)
        self.assertEqual(again["push"]["missing_checked"], 0)

        other = self.path("other.db")
        self.init(store=other)
        pulled = self.ok("pull", self.db, store=other)
        self.assertEqual(pulled["pull"]["docs_written"], 28)
        self.assertEqual(self.get("note:03", store=other)["text"], SECRET_NOTE + " 3")
        with open(other, "rb") as f:
            self.assertNotIn(SECRET_NOTE.encode(), f.read())

    def test_sync_both_ways(self):
        self.ok("push", self.db, "--create")
        other = self.path("other.db")
        self.init(store=other)
        self.ok("pull", self.db, store=other)
        rev = self.get("patient:p2", store=other)["_rev"]
        self.put({"_id": "patient:p2", "_rev": rev, "type": "patient", "given_name": "Edited"},
                 store=other)
        self.put({"_id": "note:new", "type": "note", "text": "new here"})
        out = self.ok("sync", self.db, store=other)
        self.assertEqual(out["push"]["docs_written"], 1)
        out = self.ok("sync", self.db)
        self.assertEqual(out["pull"]["docs_written"], 1)
        self.assertEqual(out["push"]["docs_written"], 1)
        self.assertEqual(self.get("patient:p2")["given_name"], "Edited")
        self.ok("sync", self.db, store=other)
        self.assertEqual(self.get("note:new", store=other)["text"], "new here")

    def test_session_filter(self):
        out = self.ok("push", self.db, "--create", "--session", "session:s1")
        self.assertEqual(out["push"]["docs_written"], 27)
        self.assertNotIn("patient:p2", self.server_ids())
        self.assertIn("patient:p1", self.server_ids())

    def test_network_failures_exit_7(self):
        self.fails(7, "push", "http://127.0.0.1:1/clinic")
        self.fails(7, "pull", self.server.url + "/missing")
        self.fails(2, "push")
        self.fails(2, "push", self.db, "--batch-size", "0")
        self.fails(2, "push", "ftp://example/clinic")

    def test_basic_auth_through_proxy(self):
        http_json("PUT", self.db)
        with TestProxy(self.server.url) as proxy:
            proxy.config(basic_auth="nurse:s3cret pass")
            url = proxy.url + "/clinic"
            result = self.fails(7, "push", url)
            self.assertIn("401", result.stderr)
            self.fails(7, "push", url, "--user", "nurse", "--password-fd", "0",
                       stdin_data="wrong\n")
            out = self.ok("push", url, "--user", "nurse", "--password-fd", "0",
                          stdin_data="s3cret pass\n")
            self.assertEqual(out["push"]["docs_written"], 28)
            self.fails(2, "push", url, "--password-fd", "0", stdin_data="x\n")
        self.assertEqual(len(self.server_ids()), 28)

    def test_denied_documents_are_reported_and_the_rest_goes(self):
        http_json("PUT", self.db)
        with TestProxy(self.server.url) as proxy:
            proxy.config(deny_ids=["note:04", "note:05"])
            result = self.run_cli("push", proxy.url + "/clinic")
            self.assertEqual(result.code, 0, str(result))
            out = result.json()
            self.assertEqual(out["push"]["docs_denied"], 2)
            self.assertEqual(out["push"]["doc_write_failures"], 2)
            self.assertEqual(out["push"]["docs_written"], 26)
            self.assertIn("note:04", result.stderr)
            self.assertIn("forbidden", result.stderr)



# ---- the sync manager's commands --------------------------------------------------------------

ISO_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
STATUS_KEYS = {"status", "pending_push", "pending_pull", "last_error", "time"}
STATUSES = {"disabled", "offline", "connecting", "syncing", "up-to-date", "auth-failed", "error"}
DIAGNOSTIC_CHECKS = ["network_available", "server_reachable", "tls_ok", "authenticated",
                     "database_present", "vault_unlocked"]
DEAD_URL = "http://127.0.0.1:1/clinic"


def wait_until(predicate, timeout, what, interval=0.2):
    """Calls predicate until it returns something true; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %s s waiting for %s" % (timeout, what))
        time.sleep(interval)


class ContinuousSync:
    """`hbsync sync URL --continuous` as a child process; its status lines as they come."""

    def __init__(self, test, url, *args, secrets=(PIN,), stdin_data=None, store=None):
        self.test = test
        read_fd, write_fd = os.pipe()
        os.write(write_fd, "".join(s + "\n" for s in secrets).encode())
        os.close(write_fd)
        self.stderr_file = tempfile.TemporaryFile()
        self.args = ["--store", store or test.store, "--pin-fd", str(read_fd), "sync", url,
                     "--continuous", *args]
        try:
            self.process = subprocess.Popen(
                [CLI, *self.args],
                stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=self.stderr_file, pass_fds=(read_fd,),
                start_new_session=True)
        finally:
            os.close(read_fd)
        if stdin_data is not None:
            self.process.stdin.write(stdin_data.encode())
            self.process.stdin.close()
        self.lines = []
        self._buffer = b""
        test.addCleanup(self.kill)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.stderr_file.close()

    def _read(self, timeout):
        """Reads what is there within timeout; returns False at end of output."""
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            status = json.loads(line.decode("utf-8"))
            self.check_line(status)
            self.lines.append(status)
        return True

    def check_line(self, status):
        self.test.assertTrue(STATUS_KEYS <= set(status), status)
        self.test.assertIn(status["status"], STATUSES)
        self.test.assertRegex(status["time"], ISO_TIME_RE)
        for key in ("pending_push", "pending_pull"):
            self.test.assertTrue(status[key] is None or status[key] >= 0, status)
        if status["last_error"] is not None:
            for secret in self.test.never_on_stderr:
                self.test.assertNotIn(secret, status["last_error"])

    def wait_for(self, predicate, timeout=30, what="a status line"):
        """Reads lines until one satisfies predicate; returns it."""
        start = len(self.lines)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                if predicate(line):
                    return line
            start = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                raise AssertionError("no %s within %s s; lines so far:\n%s\nstderr: %s" % (
                    what, timeout, "\n".join(json.dumps(x) for x in self.lines), self.stderr()))

    def wait_status(self, status, timeout=30):
        return self.wait_for(lambda line: line["status"] == status, timeout, repr(status))

    def read_for(self, seconds):
        """Collects the lines printed in the next seconds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass

    def statuses(self):
        return [line["status"] for line in self.lines]

    def stderr(self):
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGINT, timeout=30):
        """Sends sig; returns the exit status once every line is read."""
        self.process.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            if time.monotonic() > deadline:
                raise AssertionError("still running %s s after the signal" % timeout)
        code = self.process.wait(timeout=max(1, deadline - time.monotonic()))
        stderr = self.stderr()
        for secret in self.test.never_on_stderr:
            self.test.assertNotIn(secret, stderr)
        return code


class ServerTestCase(CliTestCase):
    """A store with a few documents of one clinical session, and a server with a database."""

    def setUp(self):
        super().setUp()
        self.start_server()
        http_json("PUT", self.db)
        self.init()
        self.put({"_id": "session:s1", "type": "session", "patient_id": "patient:p1"})
        self.put({"_id": "patient:p1", "type": "patient", "given_name": SECRET_NAME})
        for i in range(3):
            self.put({"_id": "note:s1-%d" % i, "type": "note", "session_id": "session:s1",
                      "patient_id": "patient:p1", "text": "%s %d" % (SECRET_NOTE, i)})
        self.put({"_id": "patient:p2", "type": "patient", "given_name": "Other"})

    def server_ids(self, db=None):
        rows = http_json("GET", (db or self.db) + "/_all_docs")["rows"]
        return sorted(row["id"] for row in rows)

    def store_has(self, doc_id, **kwargs):
        result = self.run_cli("get", doc_id, **kwargs)
        if result.code == 4:
            return None
        self.assertEqual(result.code, 0, str(result))
        return result.json()

    def proxy(self):
        proxy = TestProxy(self.server.url)
        self.addCleanup(proxy.stop)
        return proxy

    def requests_to(self, proxy, route):
        return proxy.stats()["by_route"].get(route, 0)


class TestContinuousSync(ServerTestCase):
    def test_both_ways_until_interrupted(self):
        sync = ContinuousSync(self, self.db)
        first = sync.wait_status("up-to-date")
        self.assertEqual((first["pending_push"], first["pending_pull"]), (0, 0))
        self.assertIn(sync.lines[0]["status"], ("connecting", "syncing"))
        self.assertEqual(len(self.server_ids()), 6)

        # A document written by another process reaches the server: nothing in this one
        # announces it (the first phase, so that no pull's write triggers a push instead).
        sync.read_for(1)
        self.put({"_id": "note:from-cli", "type": "note", "text": "written elsewhere"})
        wait_until(lambda: "note:from-cli" in self.server_ids(), 30, "the pushed document")
        self.assertEqual(http_json("GET", self.db + "/note:from-cli")["text"], "written elsewhere")

        # A server change arrives through the changes feed (read here by a second process).
        http_json("PUT", self.db + "/note:from-server", {"type": "note", "text": "hello"})
        doc = wait_until(lambda: self.store_has("note:from-server"), 30, "the pulled document")
        self.assertEqual(doc["text"], "hello")
        # The pulled document is behind the push checkpoint too once the manager's next push
        # has looked at it; then nothing is pending either way.
        wait_until(lambda: self.ok("status", self.db, "--local")["pending_push"] == 0, 30,
                   "the push checkpoint to pass the pulled document")
        sync.wait_for(lambda line: line["status"] == "up-to-date" and line["pending_push"] == 0,
                      what="up-to-date after the pull")

        self.assertEqual(sync.stop(signal.SIGINT), 0, sync.stderr())
        final = sync.lines[-1]
        self.assertTrue(final.get("final"), final)
        self.assertEqual(final["status"], "disabled")
        self.assertEqual(sum(1 for line in sync.lines if line.get("final")), 1)
        self.assertNotIn("error", sync.statuses())
        self.assertTrue(all(line["last_error"] is None for line in sync.lines), sync.lines)
        self.assertNotRegex(sync.stderr(), r"hbsync:|CRITICAL|WARNING")

        # Nothing is left for the next run, which resumes from the checkpoints.
        status = self.ok("status", self.db)
        self.assertEqual((status["pending_push"], status["pending_pull"]), (0, 0))
        out = self.ok("sync", self.db)
        self.assertEqual(out["pull"]["docs_written"] + out["push"]["docs_written"], 0)

    def test_sigterm_and_create(self):
        db = self.server.url + "/created"
        sync = ContinuousSync(self, db, "--create", "--poll-ms", "0")
        sync.wait_status("up-to-date")
        self.assertEqual(len(self.server_ids(db)), 6)
        self.assertEqual(sync.stop(signal.SIGTERM), 0, sync.stderr())
        self.assertEqual(sync.lines[-1]["status"], "disabled")
        self.assertTrue(sync.lines[-1]["final"])

    def test_interrupted_mid_sync_resumes_from_the_checkpoint(self):
        notes = "\n".join(json.dumps({"_id": "note:bulk-%03d" % i, "type": "note", "text": "n"})
                          for i in range(200))
        self.assertEqual(self.import_text(notes + "\n")["imported"], 200)
        proxy = self.proxy()
        proxy.fault(action="delay", method="POST", path="_bulk_docs", ms=500)
        sync = ContinuousSync(self, proxy.url + "/clinic", "--batch-size", "10")
        sync.wait_status("syncing")
        # The push checkpoints where a page of changes is all written (pages of 50 changes).
        wait_until(lambda: len(self.server_ids()) >= 80, 60, "a few batches on the server")
        start = time.monotonic()
        self.assertEqual(sync.stop(signal.SIGINT), 0, sync.stderr())
        self.assertLess(time.monotonic() - start, 10, "the interrupt waited for the sync")
        self.assertEqual(sync.lines[-1]["status"], "disabled")
        self.assertTrue(sync.lines[-1]["final"])
        self.assertNotIn("error", sync.statuses())
        self.assertNotIn("up-to-date", sync.statuses())

        self.assertLess(len(self.server_ids()), 206)
        # The checkpoints belong to the URL synced with: the proxy's.
        url = proxy.url + "/clinic"
        proxy.reset()
        pending = self.ok("status", url, "--local")["pending_push"]
        self.assertGreater(pending, 0)
        self.assertLessEqual(pending, 206 - 50)
        out = self.ok("push", url)
        # Resumed from the checkpoint: what was already sent is not offered again.
        self.assertLessEqual(out["push"]["missing_checked"], 206 - 50)
        self.assertEqual(len(self.server_ids()), 206)
        self.assertEqual(self.ok("status", url)["pending_push"], 0)

    def test_dead_port_is_offline_not_error(self):
        sync = ContinuousSync(self, DEAD_URL)
        line = sync.wait_status("offline")
        self.assertIsNotNone(line["last_error"])
        sync.read_for(2)
        self.assertNotIn("error", sync.statuses())
        self.assertNotIn("up-to-date", sync.statuses())
        self.assertEqual(sync.stop(), 0, sync.stderr())
        self.assertTrue(sync.lines[-1]["final"])

    def test_server_going_away_is_offline_then_back(self):
        directory = self.path("leveldb")
        server = TestServer(leveldb=directory)
        port = server.port
        db = server.url + "/clinic"
        try:
            http_json("PUT", db)
            sync = ContinuousSync(self, db)
            sync.wait_status("up-to-date")
        finally:
            server.stop()
        sync.wait_status("offline")
        server = TestServer(leveldb=directory, port=port)
        self.addCleanup(server.stop)
        sync.wait_status("up-to-date", timeout=60)
        self.put({"_id": "note:after", "type": "note"})
        wait_until(lambda: "note:after" in self.server_ids(db), 30, "the pushed document")
        self.assertNotIn("error", sync.statuses())
        self.assertEqual(sync.stop(), 0, sync.stderr())

    def test_wrong_credentials_are_auth_failed_without_a_retry_storm(self):
        proxy = self.proxy()
        proxy.config(basic_auth="nurse:s3cret pass")
        url = proxy.url + "/clinic"
        self.never_on_stderr.append("wrong pass")
        sync = ContinuousSync(self, url, "--user", "nurse", "--password-fd", "0",
                              stdin_data="wrong pass\n")
        line = sync.wait_status("auth-failed")
        self.assertIsNotNone(line["last_error"])
        proxy.clear_stats()
        sync.read_for(4)
        self.assertLessEqual(proxy.stats()["total"], 3, "retried against a refusing server")
        self.assertEqual(sync.statuses()[-1], "auth-failed")
        self.assertNotIn("error", sync.statuses())
        self.assertNotIn("offline", sync.statuses())
        self.assertEqual(sync.stop(), 0, sync.stderr())

    def test_right_credentials_through_the_proxy(self):
        proxy = self.proxy()
        proxy.config(basic_auth="nurse:s3cret pass")
        self.never_on_stderr.append("s3cret pass")
        sync = ContinuousSync(self, proxy.url + "/clinic", "--user", "nurse", "--password-fd",
                              "0", stdin_data="s3cret pass\n")
        sync.wait_status("up-to-date")
        self.assertEqual(len(self.server_ids()), 6)
        self.assertEqual(sync.stop(), 0, sync.stderr())
        for line in sync.lines:
            self.assertNotIn("s3cret", json.dumps(line))

    def test_usage(self):
        self.fails(2, "sync", self.db, "--continuous", "--session", "session:s1")
        self.fails(2, "sync", self.db, "--poll-ms", "100")
        self.fails(2, "sync", self.db, "--continuous", "--poll-ms", "soon")
        self.fails(2, "push", self.db, "--continuous")


class TestStatus(ServerTestCase):
    def test_pending_counts_and_checkpoints(self):
        status = self.ok("status", self.db)
        self.assertEqual(status["pending_push"], 6)
        self.assertEqual(status["pending_pull"], 0)
        self.assertIsNone(status["last_sync_time"])
        self.assertEqual(status["update_seq"], 6)
        for direction in ("push", "pull"):
            self.assertRegex(status[direction]["replication_id"], r"^[0-9a-f]{32}$")
            self.assertIsNone(status[direction]["checkpoint_seq"])
            self.assertIsNone(status[direction]["checkpoint_time"])
        self.assertNotEqual(status["push"]["replication_id"], status["pull"]["replication_id"])

        out = self.ok("sync", self.db)
        after = self.ok("status", self.db)
        # The same replications as push, pull and the sync manager: the same checkpoints.
        self.assertEqual(after["push"]["replication_id"], out["push"]["replication_id"])
        self.assertEqual(after["pull"]["replication_id"], out["pull"]["replication_id"])
        self.assertEqual((after["pending_push"], after["pending_pull"]), (0, 0))
        self.assertEqual(after["push"]["checkpoint_seq"], 6)
        self.assertRegex(after["push"]["checkpoint_time"], ISO_TIME_RE)
        self.assertRegex(after["last_sync_time"], ISO_TIME_RE)

        self.put({"_id": "note:local", "type": "note"})
        http_json("PUT", self.db + "/note:remote-1", {"type": "note"})
        http_json("PUT", self.db + "/note:remote-2", {"type": "note"})
        now = self.ok("status", self.db)
        self.assertEqual((now["pending_push"], now["pending_pull"]), (1, 2))
        self.assertNotIn("server_error", now)

        local = self.ok("status", self.db, "--local")
        self.assertEqual(local["pending_push"], 1)
        self.assertIsNone(local["pending_pull"])

    def test_server_unreachable(self):
        status = self.ok("status", DEAD_URL)
        self.assertEqual(status["pending_push"], 6)
        self.assertIsNone(status["pending_pull"])
        self.assertIn("server_error", status)
        self.ok("status", DEAD_URL, "--local")
        self.fails(2, "status")
        self.fails(3, "status", self.db, secrets=("000000",))


class TestDiagnose(ServerTestCase):
    def check_shape(self, out):
        for check in DIAGNOSTIC_CHECKS:
            self.assertIsInstance(out[check], bool, check)
        self.assertEqual(set(out["cache"]), {"entries", "unwritten", "bytes", "peak_bytes", "hits",
                                             "misses", "evictions", "wipes"})
        self.assertIn("last_error", out)
        self.assertIsInstance(out["detail"], str)
        self.assertEqual(out["ok"], all(out[check] for check in DIAGNOSTIC_CHECKS))

    def test_live_server(self):
        out = self.ok("diagnose", self.db)
        self.check_shape(out)
        self.assertTrue(out["ok"])
        for check in DIAGNOSTIC_CHECKS:
            self.assertTrue(out[check], check)

    def test_dead_port(self):
        result = self.fails(7, "diagnose", DEAD_URL)
        out = result.json()
        self.check_shape(out)
        self.assertFalse(out["server_reachable"])
        self.assertFalse(out["ok"])
        self.assertTrue(out["vault_unlocked"])

    def test_missing_database(self):
        out = self.fails(7, "diagnose", self.server.url + "/missing").json()
        self.check_shape(out)
        self.assertTrue(out["server_reachable"])
        self.assertTrue(out["authenticated"])
        self.assertFalse(out["database_present"])

    def test_credentials_through_the_proxy(self):
        proxy = self.proxy()
        proxy.config(basic_auth="nurse:s3cret pass")
        url = proxy.url + "/clinic"
        self.never_on_stderr += ["s3cret pass", "wrong pass"]
        for args, stdin in ((["--user", "nurse", "--password-fd", "0"], "wrong pass\n"),
                            ([], None)):
            with self.subTest(args=args):
                result = self.fails(7, "diagnose", url, *args, stdin_data=stdin)
                out = result.json()
                self.check_shape(out)
                self.assertTrue(out["server_reachable"])
                self.assertFalse(out["authenticated"])
                self.assertNotIn("wrong pass", result.stdout)
        out = self.ok("diagnose", url, "--user", "nurse", "--password-fd", "0",
                      stdin_data="s3cret pass\n")
        self.assertTrue(out["authenticated"])
        self.assertTrue(out["ok"])


class TestSessionSync(ServerTestCase):
    def test_synced(self):
        out = self.ok("session-sync", self.db, "session:s1", "--timeout", "20000")
        self.assertEqual(set(out), {"session_id", "synced", "elapsed_ms"})
        self.assertEqual(out["session_id"], "session:s1")
        self.assertIs(out["synced"], True)
        self.assertLess(out["elapsed_ms"], 20000)
        self.assertEqual(self.server_ids(), ["note:s1-0", "note:s1-1", "note:s1-2", "patient:p1",
                                             "session:s1"])
        self.assertEqual(http_json("GET", self.db + "/note:s1-2")["text"], SECRET_NOTE + " 2")
        # Already there: still synced.
        self.assertTrue(self.ok("session-sync", self.db, "session:s1")["synced"])

    def test_dead_server_answers_within_the_timeout(self):
        start = time.monotonic()
        result = self.fails(7, "session-sync", DEAD_URL, "session:s1", "--timeout", "1500")
        wall = time.monotonic() - start
        out = result.json()
        self.assertIs(out["synced"], False)
        self.assertLess(out["elapsed_ms"], 1500 + 1500)
        self.assertLess(wall, 1.5 + 10)
        self.assertIn("session:s1", result.stderr)

    def test_usage(self):
        self.fails(2, "session-sync", self.db)
        self.fails(2, "session-sync", self.db, "session:s1", "--timeout", "0")
        self.fails(2, "session-sync", self.db, "session:s1", "extra")


class TestServerOptions(ServerTestCase):
    def test_bearer_token(self):
        proxy = self.proxy()
        proxy.config(bearer_token="tok-5a1e2b")
        url = proxy.url + "/clinic"
        self.never_on_stderr += ["tok-5a1e2b", "tok-stale"]
        result = self.fails(7, "push", url, "--token-fd", "0", stdin_data="tok-stale\n")
        self.assertIn("401", result.stderr)
        out = self.ok("push", url, "--token-fd", "0", stdin_data="tok-5a1e2b\n")
        self.assertEqual(out["push"]["docs_written"], 6)
        self.assertNotIn("tok-5a1e2b", json.dumps(out))
        out = self.ok("diagnose", url, "--token-fd", "0", stdin_data="tok-5a1e2b\n")
        self.assertTrue(out["authenticated"])
        self.assertTrue(self.ok("session-sync", url, "session:s1", "--token-fd", "0",
                                stdin_data="tok-5a1e2b\n")["synced"])
        sync = ContinuousSync(self, url, "--token-fd", "0", stdin_data="tok-5a1e2b\n")
        sync.wait_status("up-to-date")
        self.assertEqual(sync.stop(), 0, sync.stderr())
        self.fails(1, "push", url, "--token-fd", "0", stdin_data="\n")
        self.fails(1, "push", url, "--token-fd", "0", stdin_data="tok\x01en\n")

    def test_cookie_session(self):
        proxy = self.proxy()
        proxy.config(basic_auth="nurse:s3cret pass")
        url = proxy.url + "/clinic"
        self.never_on_stderr.append("s3cret pass")
        out = self.ok("push", url, "--user", "nurse", "--cookie", "--password-fd", "0",
                      stdin_data="s3cret pass\n")
        self.assertEqual(out["push"]["docs_written"], 6)
        stats = proxy.stats()
        self.assertGreaterEqual(stats["by_route"].get("POST /_session", 0), 1, stats["by_route"])
        # One login serves the whole run.
        self.assertLessEqual(stats["by_route"].get("POST /_session", 0), 2, stats["by_route"])

        proxy.clear_stats()
        sync = ContinuousSync(self, url, "--user", "nurse", "--cookie", "--password-fd", "0",
                              stdin_data="s3cret pass\n")
        sync.wait_status("up-to-date")
        self.assertEqual(sync.stop(), 0, sync.stderr())
        self.assertGreaterEqual(self.requests_to(proxy, "POST /_session"), 1)

        proxy.clear_stats()
        result = self.fails(7, "diagnose", url, "--user", "nurse", "--cookie", "--password-fd",
                            "0", stdin_data="wrong\n")
        self.assertFalse(result.json()["authenticated"])

    def test_usage_errors_before_any_secret(self):
        cases = [
            ["diagnose", self.db, "--cookie"],
            ["diagnose", self.db, "--password-fd", "0"],
            ["diagnose", self.db, "--user", "nurse", "--token-fd", "0"],
            ["diagnose", self.db, "--pin-sha256", "00:11"],
            ["diagnose", self.db, "--pin-sha256", "z" * 64],
            ["diagnose", self.db, "--ca-file", self.path("missing.pem")],
            ["diagnose", self.db, "--token-fd", "999"],
            ["diagnose", "http://clinic.invalid/clinic"],
            ["push", "http://clinic.invalid/clinic"],
            ["status", "http://clinic.invalid/clinic"],
        ]
        for args in cases:
            with self.subTest(args=args):
                result = self.fails(2, *args, stdin_data="")
                self.assertIn("Usage:", result.stderr)
                self.assertEqual(result.stdout, "")
        result = self.fails(2, "sync", "http://clinic.invalid/clinic", "--continuous")
        self.assertIn("--insecure-http", result.stderr)

    def test_insecure_http_is_allowed_when_asked(self):
        # Allowed, and then only unreachable: the name does not resolve.
        out = self.fails(7, "diagnose", "http://clinic.invalid/clinic", "--insecure-http").json()
        self.assertFalse(out["server_reachable"])
        self.assertFalse(out["ok"])


class TlsFront:
    """A TLS listener on 127.0.0.1 in front of a plain http server, with a self-signed
    certificate for 127.0.0.1 made by openssl. .port, .cert (PEM file), .sha256 (hex)."""

    def __init__(self, target_port, directory):
        self.cert = os.path.join(directory, "server.pem")
        key = os.path.join(directory, "server.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", self.cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        with open(self.cert, encoding="ascii") as f:
            self.sha256 = hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert, key)
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        tls = plain = None
        try:
            conn.settimeout(30)
            tls = self.context.wrap_socket(conn, server_side=True)
            plain = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
            while not self.closed:
                readable = [tls] if tls.pending() else \
                    select.select([tls, plain], [], [], 1.0)[0]
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (plain if source is tls else tls).sendall(data)
        except (OSError, ssl.SSLError):
            pass  # a refused handshake, or a side that went away
        finally:
            for s in (tls or conn, plain):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def close(self):
        self.closed = True
        self.listener.close()


@unittest.skipUnless(shutil.which("openssl"), "openssl makes the test certificate")
class TestTls(ServerTestCase):
    def setUp(self):
        super().setUp()
        self.front = TlsFront(self.server.port, self.dir)
        self.addCleanup(self.front.close)
        self.https = "https://127.0.0.1:%d/clinic" % self.front.port

    def test_untrusted_certificate_is_refused(self):
        out = self.fails(7, "diagnose", self.https).json()
        self.assertFalse(out["tls_ok"])
        self.assertFalse(out["ok"])
        self.fails(7, "push", self.https)
        self.assertEqual(self.server_ids(), [])

    def test_ca_file(self):
        out = self.ok("diagnose", self.https, "--ca-file", self.front.cert)
        self.assertTrue(out["tls_ok"])
        self.assertTrue(out["ok"])
        self.assertEqual(self.ok("push", self.https, "--ca-file", self.front.cert)
                         ["push"]["docs_written"], 6)

    def test_pinned_fingerprint(self):
        pin = ":".join(self.front.sha256[i:i + 2].upper() for i in range(0, 64, 2))
        out = self.ok("diagnose", self.https, "--ca-file", self.front.cert, "--pin-sha256", pin)
        self.assertTrue(out["tls_ok"])
        wrong = "%064x" % (int(self.front.sha256, 16) ^ 1)
        out = self.fails(7, "diagnose", self.https, "--ca-file", self.front.cert,
                         "--pin-sha256", wrong).json()
        self.assertFalse(out["tls_ok"])
        self.fails(7, "push", self.https, "--ca-file", self.front.cert, "--pin-sha256", wrong)
        self.assertEqual(self.server_ids(), [])


# ---- the progress line of push, pull and sync -------------------------------------------------

PROGRESS_DOCS = 300
PROGRESS_BATCH = "20"
# "push [#####.........]  33%  100/300 docs": the source said how much it has (the store does).
KNOWN_RE = re.compile(
    r"^(push|pull)(?: \[([#.]+)\])? +(\d+)%  (\d+)/(\d+) docs(?:, (\d+) failed)?$")
# "pull 120 read, 100 written": the source did not say (the tests' server sends no "pending").
UNKNOWN_RE = re.compile(r"^(push|pull) (\d+) read, (\d+) written(?:, (\d+) failed)?$")


def terminal_screen(transcript, columns, test):
    """Plays the transcript on a terminal columns wide that knows \\r and \\n (the pty turns \\n
    into \\r\\n) and nothing else: returns the screen's lines, the last one the cursor's."""
    lines = [""]
    col = 0
    for ch in transcript:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("")
            col = 0
        elif " " <= ch <= "~":
            test.assertLess(col, columns - 1, "the line reaches the terminal's edge or wraps:\n%r"
                            % transcript)
            line = lines[-1].ljust(col)
            lines[-1] = line[:col] + ch + line[col + 1:]
            col += 1
        else:
            test.fail("%r on the terminal:\n%r" % (ch, transcript))
    return [line.rstrip() for line in lines]


class TestProgress(CliTestCase):
    """The progress line on stderr: drawn on a terminal, redrawn in place with \\r, finished with
    a newline, never on a pipe, never on stdout.

    The tool draws the first state at once, later ones at most every 100 ms (a state that came
    too soon is drawn when due), and on success a last line with the final counts. So at least
    two lines are always drawn for a run of several batches, the first before the end; how many
    in between depends on the machine's speed and is not counted."""

    def setUp(self):
        super().setUp()
        self.start_server()
        self.init()
        lines = [json.dumps({"_id": "note:%03d" % i, "type": "note", "session_id": "session:s1",
                             "text": "%s %d" % (SECRET_NOTE, i)}) for i in range(PROGRESS_DOCS)]
        out = self.import_text("\n".join(lines) + "\n")
        self.assertEqual(out["imported"], PROGRESS_DOCS)

    def run_with_stderr_on_tty(self, *args, columns=80, store=None):
        """Runs hbsync with stderr on a pty `columns` wide and stdout on a pipe; returns the
        result and all the terminal got, read until the tool is gone."""
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        read_fd, write_fd = os.pipe()
        os.write(write_fd, (PIN + "\n").encode())
        os.close(write_fd)
        cmd = [CLI, "--store", store or self.store, "--pin-fd", str(read_fd)] + list(args)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=slave, pass_fds=(read_fd,), start_new_session=True)
        finally:
            os.close(slave)
            os.close(read_fd)
        stdout = []
        reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()))
        reader.start()
        transcript = b""
        deadline = time.monotonic() + int(os.environ.get("HB_CLI_TIMEOUT", "120"))
        try:
            while True:
                self.assertLess(time.monotonic(), deadline, "hbsync %s hangs" % " ".join(args))
                if not select.select([master], [], [], 0.5)[0]:
                    continue
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the last holder of the pty's other end is gone
                    break
                if not chunk:
                    break
                transcript += chunk
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join()
            proc.stdout.close()
        # The terminal is the stderr of the result, for the failure reports.
        result = Result(cmd[1:], subprocess.CompletedProcess(cmd, proc.returncode, stdout[0],
                                                             transcript))
        text = result.stderr
        for secret in self.never_on_stderr:
            self.assertNotIn(secret, text)
        self.assertEqual(result.code, 0, str(result))
        try:
            result.json()
        except ValueError as e:
            self.fail("stdout is not one JSON value (%s):\n%s" % (e, result))
        self.assertNotIn("\r", result.stdout, "progress on stdout")
        self.assertNotRegex(result.stdout, r"\d+/\d+ docs|\d+ read, \d+ written",
                            "progress on stdout")
        self.assertNotIn("{", text, "JSON on the terminal")
        return result, text

    def drawn(self, text):
        """Each state drawn: what stands between two \\r or \\n, less the blanks over the
        longer line before it."""
        return [part.rstrip() for part in re.split(r"[\r\n]", text) if part.strip()]

    def check_lines(self, text, columns, expected):
        """Checks the screen: one finished line per direction in expected, in that order, each
        the last state drawn for it. Returns the states drawn, by direction."""
        screen = terminal_screen(text, columns, self)
        # Every line ends with a newline: the cursor is at the start of an empty line, where the
        # shell's prompt goes.
        self.assertTrue(text.endswith("\n"), "the last line is not finished: %r" % text)
        self.assertEqual(screen[-1], "", screen)
        states = {}
        for part in self.drawn(text):
            match = KNOWN_RE.match(part) or UNKNOWN_RE.match(part)
            self.assertIsNotNone(match, "not a progress line: %r in\n%r" % (part, text))
            states.setdefault(match.group(1), []).append(part)
        # Redrawn in place: one line on the screen per direction, the last state drawn.
        self.assertEqual(screen[:-1], [states[name][-1] for name in expected], text)
        self.assertEqual(list(states), list(expected))
        return states

    def check_known(self, states, total):
        """Lines with a bar and a total: done never goes back and never passes the total, and
        only the last line, all done, says 100%. The total is what was read plus what the source
        says it still has after its last page, which may not all be read yet: for a moment it
        may fall short of the documents, never above."""
        self.assertGreaterEqual(len(states), 2, "one state drawn: %r" % states)
        previous = -1
        for line in states[:-1]:
            name, bar, percent, done, shown_total, failed = KNOWN_RE.match(line).groups()
            percent, done, shown_total = int(percent), int(done), int(shown_total)
            self.assertLessEqual(shown_total, total, line)
            self.assertLessEqual(done, shown_total, line)
            # All may be written before the run ends (its checkpoint is still being saved):
            # the line then says 99%, and only the final one 100%.
            self.assertLessEqual(done, total, states)
            self.assertGreaterEqual(done, previous, states)
            previous = done
            self.assertEqual(percent, min(done * 100 // shown_total, 99), line)
            if bar is not None:
                self.assertRegex(bar, r"^#*\.+$", line)
                self.assertEqual(bar.count("#"), min(done * len(bar) // shown_total,
                                                     len(bar) - 1), line)
        last = KNOWN_RE.match(states[-1])
        self.assertEqual(last.group(3, 4, 5), ("100", str(total), str(total)), states)
        self.assertNotIn(".", last.group(2) or "", states)

    def test_push_draws_a_bar_to_the_total(self):
        result, text = self.run_with_stderr_on_tty("push", self.db, "--create",
                                                   "--batch-size", PROGRESS_BATCH)
        out = result.json()
        self.assertTrue(out["ok"])
        self.assertEqual(out["push"]["docs_written"], PROGRESS_DOCS)
        states = self.check_lines(text, 80, ["push"])
        self.check_known(states["push"], PROGRESS_DOCS)
        self.assertTrue(all(KNOWN_RE.match(s).group(2) for s in states["push"]),
                        "no bar on an 80-column terminal: %r" % states)

    def test_pull_without_a_total_counts_up(self):
        self.ok("push", self.db, "--create")
        other = self.path("other.db")
        self.init(store=other)
        result, text = self.run_with_stderr_on_tty("pull", self.db, "--batch-size",
                                                   PROGRESS_BATCH, store=other)
        self.assertEqual(result.json()["pull"]["docs_written"], PROGRESS_DOCS)
        states = self.check_lines(text, 80, ["pull"])["pull"]
        self.assertGreaterEqual(len(states), 2, states)
        previous = (-1, -1)
        for line in states:
            match = UNKNOWN_RE.match(line)
            self.assertIsNotNone(match, "a bar with no total to measure it: %r" % states)
            counts = (int(match.group(2)), int(match.group(3)))
            self.assertLessEqual(counts[1], counts[0], line)
            self.assertGreaterEqual(counts, previous, states)
            previous = counts
        self.assertLess(int(UNKNOWN_RE.match(states[0]).group(3)), PROGRESS_DOCS, states)
        self.assertEqual(states[-1], "pull %d read, %d written" % (PROGRESS_DOCS, PROGRESS_DOCS))

    def test_sync_on_a_narrow_terminal(self):
        # 40 columns: a shorter bar; 24: no bar; both lines stay inside the terminal.
        # sync pulls, then pushes; the pull finds nothing, and may or may not draw a line.
        for columns, db in ((40, "narrow"), (24, "narrower")):
            url = self.server.url + "/" + db
            http_json("PUT", url)
            result, text = self.run_with_stderr_on_tty("sync", url, "--batch-size",
                                                       PROGRESS_BATCH, columns=columns)
            out = result.json()
            self.assertEqual(out["push"]["docs_written"], PROGRESS_DOCS)
            self.assertEqual(out["pull"]["docs_written"], 0)
            expected = (["pull"] if "pull" in text else []) + ["push"]
            states = self.check_lines(text, columns, expected)
            self.check_known(states["push"], PROGRESS_DOCS)
            bars = [KNOWN_RE.match(s).group(2) for s in states["push"]]
            if columns == 40:
                self.assertTrue(all(bar and 10 <= len(bar) < 30 for bar in bars), states)
                self.assertEqual(len(set(map(len, bars))), 1,
                                 "the bar changes width: %r" % states)
            else:
                self.assertEqual(bars, [None] * len(bars), states)

    def test_denied_message_on_its_own_line(self):
        http_json("PUT", self.db)
        with TestProxy(self.server.url) as proxy:
            proxy.config(deny_ids=["note:150"])
            result, text = self.run_with_stderr_on_tty("push", proxy.url + "/clinic",
                                                       "--batch-size", PROGRESS_BATCH)
        self.assertEqual(result.json()["push"]["doc_write_failures"], 1)
        screen = terminal_screen(text, 80, self)
        self.assertEqual(screen[-1], "", text)
        # The message takes the line's place; the line comes back under it, and ends at 100%.
        self.assertEqual(len(screen), 3, screen)
        self.assertRegex(screen[0], r"^hbsync: push: the server refused note:150 \(forbidden")
        self.assertEqual(KNOWN_RE.match(screen[1]).groups()[2:],
                         ("100", str(PROGRESS_DOCS), str(PROGRESS_DOCS), "1"), screen)

    def test_nothing_drawn_on_a_pipe(self):
        for command in ("push", "sync"):
            result = self.run_cli(command, self.db, "--create", "--batch-size", PROGRESS_BATCH)
            self.assertEqual(result.code, 0, str(result))
            self.assertEqual(result.stderr, "", str(result))
        other = self.path("other.db")
        self.init(store=other)
        result = self.run_cli("pull", self.db, "--batch-size", PROGRESS_BATCH, store=other)
        self.assertEqual(result.code, 0, str(result))
        self.assertEqual(result.json()["pull"]["docs_written"], PROGRESS_DOCS)
        self.assertEqual(result.stderr, "", str(result))


if __name__ == "__main__":
    if not CLI or not os.access(CLI, os.X_OK):
        sys.stderr.write("HBSYNC_CLI must name the hbsync binary\n")
        sys.exit(1)
    unittest.main(verbosity=2)
