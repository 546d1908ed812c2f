#!/usr/bin/python3
# Introspection: the library used from Python through GObject Introspection.
#
# Run by meson with /usr/bin/python3 (the system interpreter, which has PyGObject) and
# GI_TYPELIB_PATH / LD_LIBRARY_PATH pointing at the build tree.

import os
import re
import subprocess
import sys


def _sanitizer_runtimes():
    """The sanitizer runtimes libhbsync is linked with, if this is a sanitizer build."""
    for directory in os.environ.get('LD_LIBRARY_PATH', '').split(os.pathsep):
        library = os.path.join(directory, 'libhbsync-1.so.0')
        if os.path.exists(library):
            break
    else:
        return []
    try:
        ldd = subprocess.run(['ldd', library], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    # libasan must come first in the process; libubsan is loaded next to it.
    runtimes = []
    for name in ('libasan', 'libubsan'):
        match = re.search(r'^\s*' + name + r'\.so[.\d]*\s+=>\s+(\S+)', ldd, re.MULTILINE)
        if match:
            runtimes.append(match.group(1))
    return runtimes


def _reexec_with_sanitizer_runtime():
    """Under an ASan build the interpreter must have libasan loaded before anything else, which
    only LD_PRELOAD can do; restart this script with it. Memory errors and undefined behaviour
    in the library are then caught as in the C tests. Leak checking is off for this process
    only: CPython and PyGObject do not free everything at exit (`python3 -c 'import gi'` alone
    shows leaks; when checked, none of those reported for this test had a libhbsync frame); the
    C tests check the library for leaks."""
    runtimes = _sanitizer_runtimes()
    if not runtimes or os.environ.get('HB_TEST_GI_PRELOADED') == '1':
        return
    env = dict(os.environ)
    env['HB_TEST_GI_PRELOADED'] = '1'
    env['LD_PRELOAD'] = ' '.join(runtimes + ([env['LD_PRELOAD']] if env.get('LD_PRELOAD') else []))
    asan_options = env.get('ASAN_OPTIONS', '')
    env['ASAN_OPTIONS'] = ':'.join(o for o in (asan_options, 'verify_asan_link_order=0',
                                                'detect_leaks=0') if o)
    print('# sanitizer build: running with LD_PRELOAD=%s, leak detection off for the '
          'Python interpreter' % env['LD_PRELOAD'], file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


_reexec_with_sanitizer_runtime()

import shutil  # noqa: E402
import tempfile  # noqa: E402
import unittest  # noqa: E402

import gi  # noqa: E402

gi.require_version('GLib', '2.0')
gi.require_version('Json', '1.0')
gi.require_version('Hbsync', '1')
from gi.repository import GLib, Hbsync, Json  # noqa: E402

PIN = '123456'
REV_RE = re.compile(r'^1-[0-9a-f]{32}$')
PATIENT = '''{
  "_id": "patient:0f3c2a9e-5d1b-4c7e-9a2f-6b8d4e1c7a30",
  "type": "patient",
  "given_name": "Amara",
  "family_name": "Okonkwo",
  "birth_date": "1984-03-17",
  "sex": "female",
  "phone": "+234 803 555 0142",
  "address": "12 Marina Road, Lagos",
  "national_id": "NG-58219734",
  "created_at": "2024-05-02T09:14:00Z",
  "updated_at": "2024-05-02T09:14:00Z"
}'''


def _result_of(value):
    """A `gboolean f (..., out x, GError **)` comes back as (True, x) or as x alone,
    depending on the annotations; return x either way."""
    if isinstance(value, tuple):
        ok, out = value
        assert ok
        return out
    return value


class StoreTest(unittest.TestCase):
    def setUp(self):
        self.tmpdir = tempfile.mkdtemp(prefix='hbsync-test-gi-')
        self.path = os.path.join(self.tmpdir, 'store.db')
        self.vault = Hbsync.Vault.new(self.path)
        self.vault.set_kdf_params(8192, 1, 1)
        recovery_key = _result_of(
            self.vault.create_sync(PIN, Hbsync.VaultFlags.NO_DEVICE_SECRET, None))
        self.assertTrue(recovery_key)
        self.assertFalse(self.vault.get_locked())
        self.assertFalse(self.vault.get_uses_device_secret())
        self.store = Hbsync.Store.open_sync(self.vault, None)

    def tearDown(self):
        self.store.close()
        self.vault.lock()
        del self.store
        del self.vault
        shutil.rmtree(self.tmpdir)

    def test_put_get(self):
        doc = Json.from_string(PATIENT)
        rev = self.store.put_sync(doc, None)
        self.assertRegex(rev, REV_RE)

        got = self.store.get_sync('patient:0f3c2a9e-5d1b-4c7e-9a2f-6b8d4e1c7a30', None,
                                  Hbsync.GetFlags.NONE, None)
        self.assertIsInstance(got, Json.Node)
        obj = got.get_object()
        expected = Json.from_string(PATIENT).get_object()
        for member in expected.get_members():
            self.assertEqual(obj.get_string_member(member), expected.get_string_member(member),
                             member)
        self.assertEqual(obj.get_string_member('_rev'), rev)

        # The same revision asked for by its id gives the same document.
        again = self.store.get_sync(obj.get_string_member('_id'), rev, Hbsync.GetFlags.NONE, None)
        self.assertEqual(again.get_object().get_string_member('national_id'), 'NG-58219734')

    def test_missing_document_is_not_found(self):
        with self.assertRaises(GLib.Error) as caught:
            self.store.get_sync('patient:does-not-exist', None, Hbsync.GetFlags.NONE, None)
        error = caught.exception
        self.assertTrue(error.matches(Hbsync.store_error_quark(), Hbsync.StoreError.NOT_FOUND),
                        '%s %d %s' % (error.domain, error.code, error.message))
        self.assertEqual(error.code, int(Hbsync.StoreError.NOT_FOUND))

    def test_stale_rev_is_conflict(self):
        self.store.put_sync(Json.from_string(PATIENT), None)
        with self.assertRaises(GLib.Error) as caught:
            self.store.put_sync(Json.from_string(PATIENT), None)
        self.assertTrue(caught.exception.matches(Hbsync.store_error_quark(),
                                                 Hbsync.StoreError.CONFLICT))

    def test_wrong_pin(self):
        other = Hbsync.Vault.new(self.path)
        with self.assertRaises(GLib.Error) as caught:
            other.unlock_sync('654321', None)
        self.assertTrue(caught.exception.matches(Hbsync.vault_error_quark(),
                                                 Hbsync.VaultError.WRONG_PIN))
        self.assertTrue(other.get_locked())

    def test_put_async(self):
        loop = GLib.MainLoop()
        outcome = {}

        def done(store, result, user_data):
            try:
                outcome['rev'] = store.put_finish(result)
            except GLib.Error as error:
                outcome['error'] = error
            outcome['user_data'] = user_data
            loop.quit()

        doc = Json.from_string('{"_id": "note:5b1e", "type": "note", '
                               '"patient_id": "patient:0f3c", "author": "Dr. Mensah", '
                               '"text": "Afebrile, tolerating oral fluids.", '
                               '"written_at": "2024-05-02T10:30:00Z"}')
        self.store.put_async(doc, None, done, 'token')

        def give_up():
            outcome['timed_out'] = True
            loop.quit()
            return GLib.SOURCE_REMOVE

        timeout = GLib.timeout_add_seconds(30, give_up)
        loop.run()
        if 'timed_out' not in outcome:
            GLib.source_remove(timeout)

        self.assertNotIn('error', outcome)
        self.assertIn('rev', outcome, 'put_async did not complete within 30 s')
        self.assertRegex(outcome['rev'], REV_RE)
        self.assertEqual(outcome['user_data'], 'token')
        got = self.store.get_sync('note:5b1e', None, Hbsync.GetFlags.NONE, None)
        self.assertEqual(got.get_object().get_string_member('text'),
                         'Afebrile, tolerating oral fluids.')


class SyncCacheTest(unittest.TestCase):
    def test_add_lookup_stats(self):
        doc_id = 'patient:0f3c2a9e-5d1b-4c7e-9a2f-6b8d4e1c7a30'
        plaintext = PATIENT.encode('utf-8')
        cache = Hbsync.SyncCache.new()
        cache.configure(2, 1024 * 1024)
        self.assertEqual(cache.props.max_documents, 2)
        self.assertEqual(cache.props.max_bytes, 1024 * 1024)

        self.assertTrue(cache.add_sync(doc_id, '1-abc', GLib.Bytes.new(plaintext),
                                       Hbsync.SyncCacheFlags.NONE, None))
        self.assertEqual(cache.lookup(doc_id, '1-abc').get_data(), plaintext)
        self.assertIsNone(cache.lookup(doc_id, '2-def'))
        self.assertEqual(cache.get_unwritten_count(), 1)
        self.assertTrue(cache.mark_written(doc_id, '1-abc'))

        stats = cache.get_stats()
        self.assertIsInstance(stats, Hbsync.SyncCacheStats)
        self.assertEqual(stats.entries, 1)
        self.assertEqual(stats.unwritten, 0)
        self.assertEqual(stats.hits, 1)
        self.assertEqual(stats.misses, 1)
        self.assertGreater(stats.bytes, len(plaintext))
        self.assertEqual(stats.bytes, cache.get_bytes())
        self.assertGreaterEqual(stats.peak_bytes, stats.bytes)
        self.assertEqual(stats.evictions, 0)
        self.assertEqual(stats.wipes, 0)

        entries = cache.get_all()
        self.assertEqual([e.get_id() for e in entries], [doc_id])
        self.assertEqual(entries[0].get_rev(), '1-abc')
        self.assertTrue(entries[0].get_written())
        self.assertEqual(entries[0].get_plaintext().get_data(), plaintext)

        self.assertTrue(cache.remove(doc_id, '1-abc'))
        self.assertEqual(cache.get_stats().wipes, 1)
        self.assertEqual(cache.get_stats().entries, 0)


class ReplicationTest(unittest.TestCase):
    """Push and pull from Python, through the tests' CouchDB-protocol server."""

    def setUp(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from hbtestserver import TestServer
        self.server = TestServer()
        self.tmpdir = tempfile.mkdtemp(prefix='hbsync-test-gi-')
        self.stores = []

    def tearDown(self):
        for store, vault in self.stores:
            store.close()
            vault.lock()
        self.stores = []
        self.server.stop()
        shutil.rmtree(self.tmpdir)

    def new_store(self, name):
        vault = Hbsync.Vault.new(os.path.join(self.tmpdir, name))
        vault.set_kdf_params(8192, 1, 1)
        _result_of(vault.create_sync(PIN, Hbsync.VaultFlags.NO_DEVICE_SECRET, None))
        store = Hbsync.Store.open_sync(vault, None)
        self.stores.append((store, vault))
        return store

    def replicate(self, store, url, direction):
        remote = Hbsync.Remote.new(url)
        cache = Hbsync.SyncCache.new()
        replicator = Hbsync.Replicator.new(store, remote, cache, direction)
        replicator.set_create_target(True)
        loop = GLib.MainLoop()
        outcome = {}
        progress = []
        replicator.connect('progress', lambda r, read, written, failed, pending:
                           progress.append(written))

        def done(source, result):
            try:
                outcome['result'] = source.run_finish(result)
            except GLib.Error as e:
                outcome['error'] = e
            loop.quit()

        replicator.run_async(None, done)
        GLib.timeout_add_seconds(60, loop.quit)
        loop.run()
        self.assertNotIn('error', outcome)
        self.assertEqual(replicator.get_state(), Hbsync.ReplicatorState.COMPLETE)
        self.assertTrue(progress)
        return outcome['result']

    def test_push_then_pull(self):
        url = self.server.url + '/clinic'
        source = self.new_store('a.db')
        source.put_sync(Json.from_string(PATIENT), None)
        pushed = self.replicate(source, url, Hbsync.ReplicationDirection.PUSH)
        self.assertEqual(pushed.docs_written, 1)
        self.assertRegex(pushed.replication_id, r'^[0-9a-f]{32}$')

        target = self.new_store('b.db')
        pulled = self.replicate(target, url, Hbsync.ReplicationDirection.PULL)
        self.assertEqual(pulled.docs_written, 1)
        got = target.get_sync('patient:0f3c2a9e-5d1b-4c7e-9a2f-6b8d4e1c7a30', None,
                              Hbsync.GetFlags.NONE, None)
        self.assertEqual(got.get_object().get_string_member('national_id'), 'NG-58219734')


class SyncConfigSecretTest(unittest.TestCase):
    """Server credentials live in the Secret Service (the suite's gnome-keyring), never in a
    property or a file."""

    def test_secret_round_trip_through_the_keyring(self):
        url = 'https://clinic.example/db-%d' % os.getpid()
        config = Hbsync.SyncConfig.new(url)
        config.set_auth_method(Hbsync.AuthMethod.COOKIE)
        config.set_username('nurse')
        self.assertFalse(config.has_secret())
        names = [p.name for p in config.list_properties()]
        self.assertFalse(any('secret' in n or 'password' in n for n in names), names)

        config.set_secret('s3cret pass')
        self.assertTrue(config.save_secret_sync(None))

        again = Hbsync.SyncConfig.new(url)
        again.set_auth_method(Hbsync.AuthMethod.COOKIE)
        again.set_username('nurse')
        self.assertTrue(again.load_secret_sync(None))
        self.assertTrue(again.has_secret())

        other_user = Hbsync.SyncConfig.new(url)
        other_user.set_auth_method(Hbsync.AuthMethod.COOKIE)
        other_user.set_username('doctor')
        self.assertFalse(other_user.load_secret_sync(None))

        self.assertTrue(again.forget_secret_sync(None))
        self.assertFalse(again.has_secret())
        third = Hbsync.SyncConfig.new(url)
        third.set_auth_method(Hbsync.AuthMethod.COOKIE)
        third.set_username('nurse')
        self.assertFalse(third.load_secret_sync(None))


if __name__ == '__main__':
    unittest.main(verbosity=2)
