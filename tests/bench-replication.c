/* Benchmark: HbReplicator against PouchDB and against the raw HTTP limit.
 *
 * 10,000 clinical notes of about 1 KB (the generator and seed of bench-store) are written into
 * a store before any clock starts. Then, for each client, against a fresh test server
 * (tests/server/server.js, memory adapter) started for that client alone:
 *
 *   push  the 10,000 documents into a fresh database (created by the client),
 *   pull  that database into a fresh local database,
 *
 * all in batches of 100. The clients:
 *
 *   ours     HbReplicator (push with create-target; pull into a new store made with the tests'
 *            fast KDF), in a child process (this binary, `--child push|pull`) that times the
 *            replication alone: wall clock, getrusage(RUSAGE_SELF) user+system around it (the
 *            store is in-process, so its SQLite and crypto count as client work), and peak RSS
 *            as VmHWM after resetting the mark (/proc/self/clear_refs) just before the clock.
 *   PouchDB  node tests/server/bench-pouchdb.js: pouchdb-core, memory adapter, http adapter,
 *            PouchDB.replicate({batch_size: 100}); the local database is loaded (new_edits:false)
 *            from an NDJSON file holding exactly the document texts our replicator sends, so
 *            both send the same revisions; cpu from process.cpuUsage, RSS measured like ours.
 *   raw      curl, one process per direction, one kept-alive connection for every request:
 *            push = POST the same `_bulk_docs` bodies our replicator sends (built here from the
 *            store with hb_store_get_revs_json_sync: one body per changes page of 100, documents
 *            sorted by id, `{"new_edits":false,"docs":[...]}`) back to back, into a database
 *            created before the clock; pull = the request sequence of a paging replicator,
 *            `_changes?style=all_docs&feed=normal&limit=100[&since=S]` then
 *            `_bulk_get?revs=true&latest=true` for its rows, page after page, then the final
 *            empty `_changes`. Since curl cannot read one answer before forming the next
 *            request, the page boundaries (the sequences S, opaque, taken verbatim from the
 *            server) come from one full `_changes` read before the clock. Every client's pull
 *            starts after that same read, so every client meets a server in the same state (the
 *            read warms it: without it, ours met a server that answered `_changes` pages in 10
 *            to 20 ms where raw's took 4, and spent 2.0 s of server CPU to raw's 1.5). No
 *            `_revs_diff`, no checkpoints, no parsing: the limit of the server and the
 *            loopback. Requests carry the headers ours sends (Accept, Content-Type) but no
 *            Accept-Encoding, so answers come uncompressed (libsoup and node-fetch ask for gzip,
 *            and express-pouchdb compresses for them). CPU and peak RSS are curl's own, from
 *            GNU time (curl reads every @body of its config up front, so its push RSS holds all
 *            the bodies); the wall clock includes starting curl.
 *
 *   raw, feed docs  the same for the pull ours makes into an empty store: the `_changes` pages
 *            with `include_docs=true` (first revisions, each its document's only leaf, need
 *            nothing more; see HbReplicator:feed-documents) and no `_bulk_get`. Its push is
 *            raw's again, only to fill its server, and is not reported.
 *
 * A last column gives the server's CPU time (/proc/PID/stat) over the same span: on a small
 * machine the server shares the cores with the client, so what a client makes the server do
 * (`_revs_diff`, checkpoints, compression) shows up in its docs/s.
 *
 * Each run does ours, PouchDB, raw, raw with feed docs in turn; 3 runs (--runs N); best and
 * median are printed, with the goals of the issue: ours >= 0.8 of raw docs/s, >= 2.5x PouchDB
 * docs/s, <= 0.3x PouchDB client CPU, each direction. Raw is the issue's raw, with `_bulk_get`;
 * ours against raw with feed docs is printed beside it, with no goal: it is what ours costs over
 * the requests it makes. Nothing here asserts on speed; every run checks that all
 * 10,000 documents arrived (docs_written, and the server's or the store's doc count).
 *
 *   meson test -C BUILDDIR --benchmark -v bench-replication
 *   G_TEST_SRCDIR=tests BUILDDIR/tests/bench-replication [--runs N] [--only ours,pouchdb,raw,rawfeed]
 *                                                        [--perf-dir DIR] [--ours-bulk-get]
 *
 * --ours-bulk-get makes ours' pull read every revision through `_bulk_get` (feed-documents off),
 * the pattern raw's pull times.
 *
 * --perf-dir DIR runs each of our children under `perf record --call-graph dwarf` and leaves
 * DIR/ours-{push,pull}-RUN.data (the timings are then perf's, not ours). */

#include <errno.h>
#include <fcntl.h>
#include <libsoup/soup.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hb-json-private.h"
#include "hb-test-server.h"
#include "hb-test-utils.h"

#define N_DOCS 10000
#define BATCH 100
#define N_RUNS_DEFAULT 3
#define MAX_RUNS 20
#define GOAL_RAW_RATE 0.8
#define GOAL_POUCH_RATE 2.5
#define GOAL_POUCH_CPU 0.3

extern char **environ;

typedef enum
{
  CLIENT_OURS,
  CLIENT_POUCHDB,
  CLIENT_RAW,
  CLIENT_RAW_FEED, /* a pull only: its push is raw's again, to fill its server */
  N_CLIENTS
} Client;

static const char *const client_names[N_CLIENTS]
    = { "ours", "PouchDB", "raw (curl)", "raw, feed docs" };
static const char *const client_keys[N_CLIENTS] = { "ours", "pouchdb", "raw", "rawfeed" };

typedef enum
{
  DIR_PUSH,
  DIR_PULL,
  N_DIRS
} Direction;

static const char *const dir_names[N_DIRS] = { "push", "pull" };

typedef struct
{
  double seconds;
  double cpu;        /* client user + system seconds */
  double rss_mib;    /* client peak RSS */
  double server_cpu; /* the server's user + system seconds over the same span */
} Measure;

static void
die_on_error (const char *what, const GError *error)
{
  if (error != NULL)
    g_error ("%s: %s", what, error->message);
}

/* ---- process figures ------------------------------------------------------------------- */

static double
self_cpu_seconds (void)
{
  struct rusage ru;

  getrusage (RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec
         + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Resets the kernel's peak-RSS mark (VmHWM) to the current RSS. */
static void
reset_peak_rss (void)
{
  int fd = open ("/proc/self/clear_refs", O_WRONLY);

  if (fd >= 0)
    {
      if (write (fd, "5", 1) != 1)
        g_warning ("could not reset the peak RSS: %s", g_strerror (errno));
      close (fd);
    }
}

static gint64
peak_rss_kib (void)
{
  g_autofree char *status = NULL;
  const char *line;

  if (g_file_get_contents ("/proc/self/status", &status, NULL, NULL)
      && (line = strstr (status, "VmHWM:")) != NULL)
    return g_ascii_strtoll (line + 6, NULL, 10);
  {
    struct rusage ru;

    getrusage (RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
  }
}

/* user + system seconds of process @pid so far, from /proc/PID/stat; -1 if unknown. */
static double
process_cpu_seconds (const char *pid)
{
  g_autofree char *path = g_strdup_printf ("/proc/%s/stat", pid);
  g_autofree char *stat = NULL;
  g_auto (GStrv) fields = NULL;
  const char *after;

  if (pid == NULL || !g_file_get_contents (path, &stat, NULL, NULL)
      || (after = strrchr (stat, ')')) == NULL)
    return -1;
  /* After "pid (comm) ": state is field 3, utime 14, stime 15. */
  fields = g_strsplit (after + 2, " ", 0);
  if (g_strv_length (fields) < 13)
    return -1;
  return (g_ascii_strtoull (fields[11], NULL, 10) + g_ascii_strtoull (fields[12], NULL, 10))
         / (double)sysconf (_SC_CLK_TCK);
}

/* ---- our child: one replication, timed ------------------------------------------------- */

typedef struct
{
  gboolean done;
  HbReplicationResult *result;
  GError *error;
} RunWait;

static void
on_run_done (GObject *source, GAsyncResult *res, gpointer data)
{
  RunWait *w = data;

  w->result = hb_replicator_run_finish (HB_REPLICATOR (source), res, &w->error);
  w->done = TRUE;
}

static HbStore *
open_store (const char *path)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (path);
  HbStore *store;

  hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error);
  die_on_error ("unlock", error);
  store = hb_store_open_sync (vault, NULL, &error);
  die_on_error ("open store", error);
  return store;
}

/* --child push STORE_PATH DB_URL | --child pull DB_URL: prints one line of JSON. */
static int
child_main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbStore) store = NULL;
  g_autoptr (HbRemote) remote = NULL;
  g_autoptr (HbSyncCache) cache = NULL;
  g_autoptr (HbReplicator) replicator = NULL;
  g_autofree char *dir = NULL;
  gboolean push, feed_documents = TRUE;
  const char *url;
  RunWait w = { 0 };
  gint64 start, end;
  double cpu0, cpu1;
  gint64 rss, doc_count = -1;

  if (argc == 4 && strcmp (argv[1], "push") == 0)
    {
      push = TRUE;
      store = open_store (argv[2]);
      url = argv[3];
    }
  else if ((argc == 3 || (argc == 4 && strcmp (argv[3], "bulk-get") == 0))
           && strcmp (argv[1], "pull") == 0)
    {
      push = FALSE;
      store = hb_test_store_new (&dir);
      url = argv[2];
      feed_documents = argc == 3;
    }
  else
    {
      g_printerr ("usage: --child push STORE DB-URL | --child pull DB-URL [bulk-get]\n");
      return 2;
    }

  remote = hb_remote_new (url, &error);
  die_on_error ("remote", error);
  cache = hb_sync_cache_new ();
  replicator = hb_replicator_new (
      store, remote, cache, push ? HB_REPLICATION_DIRECTION_PUSH : HB_REPLICATION_DIRECTION_PULL);
  hb_replicator_set_batch_size (replicator, BATCH);
  hb_replicator_set_create_target (replicator, push);
  hb_replicator_set_feed_documents (replicator, feed_documents);

  reset_peak_rss ();
  cpu0 = self_cpu_seconds ();
  start = g_get_monotonic_time ();
  hb_replicator_run_async (replicator, NULL, on_run_done, &w);
  hb_test_wait_for (&w.done);
  end = g_get_monotonic_time ();
  cpu1 = self_cpu_seconds ();
  rss = peak_rss_kib ();

  die_on_error ("replication", w.error);
  if (!push)
    {
      g_autoptr (JsonNode) stats = hb_store_get_stats_sync (store, NULL, &error);

      die_on_error ("stats", error);
      doc_count = json_object_get_int_member (json_node_get_object (stats), "doc_count");
    }
  g_print ("{\"seconds\":%.6f,\"cpu\":%.6f,\"rss_kib\":%" G_GINT64_FORMAT
           ",\"docs_read\":%" G_GUINT64_FORMAT ",\"docs_written\":%" G_GUINT64_FORMAT
           ",\"doc_write_failures\":%" G_GUINT64_FORMAT ",\"batches\":%" G_GUINT64_FORMAT
           ",\"doc_count\":%" G_GINT64_FORMAT "}\n",
           (end - start) / (double)G_USEC_PER_SEC, cpu1 - cpu0, rss, w.result->docs_read,
           w.result->docs_written, w.result->doc_write_failures, w.result->batches, doc_count);
  hb_replication_result_free (w.result);
  hb_store_close (store);
  if (dir != NULL)
    hb_test_rmdir (dir);
  return 0;
}

/* ---- the corpus ------------------------------------------------------------------------ */

/* As bench-store makes them. */
static char *
random_uuid (GRand *rand)
{
  return g_strdup_printf ("%08x-%04x-4%03x-%04x-%08x%04x", g_rand_int (rand),
                          g_rand_int (rand) & 0xffff, g_rand_int (rand) & 0xfff,
                          (g_rand_int (rand) & 0x3fff) | 0x8000, g_rand_int (rand),
                          g_rand_int (rand) & 0xffff);
}

static void
write_corpus (HbStore *store)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (20240502);
  g_autoptr (GError) error = NULL;
  g_autofree char *session_id = NULL;
  g_autofree char *patient_id = NULL;
  g_autoptr (GPtrArray) batch = NULL;

  for (guint i = 0; i < N_DOCS; i++)
    {
      g_autofree char *uuid = random_uuid (rand);
      g_autofree char *id = g_strconcat ("note:", uuid, NULL);
      g_autofree char *written_at = g_strdup_printf ("2024-%02u-%02uT%02u:%02u:00Z", 1 + i % 12,
                                                     1 + i % 28, i % 24, i % 60);

      if (i % 10 == 0)
        {
          g_autofree char *session_uuid = random_uuid (rand);

          g_free (session_id);
          session_id = g_strconcat ("session:", session_uuid, NULL);
        }
      if (i % 30 == 0)
        {
          g_autofree char *patient_uuid = random_uuid (rand);

          g_free (patient_id);
          patient_id = g_strconcat ("patient:", patient_uuid, NULL);
        }
      if (batch == NULL)
        batch = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
      g_ptr_array_add (batch, hb_test_note (rand, id, session_id, patient_id, written_at, 820));
      if (batch->len == BATCH || i == N_DOCS - 1)
        {
          g_autoptr (GPtrArray) results
              = hb_store_bulk_docs_sync (store, batch, TRUE, NULL, &error);

          die_on_error ("bulk_docs", error);
          for (guint r = 0; r < results->len; r++)
            {
              JsonNode *result = g_ptr_array_index (results, r);

              if (result == NULL || !JSON_NODE_HOLDS_OBJECT (result)
                  || json_object_has_member (json_node_get_object (result), "error"))
                g_error ("bulk_docs: a document was not written");
            }
          g_clear_pointer (&batch, g_ptr_array_unref);
        }
    }
}

static gint
compare_strings (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *)a, *(const char *const *)b);
}

/* Exports, page by page as our replicator reads them (changes pages of BATCH, each page's
 * documents sorted by id, read with hb_store_get_revs_json_sync): every document text as a line
 * of docs.ndjson, and each page's `_bulk_docs` body as push-NNN.json. Returns the number of
 * pages; *out_bytes receives the documents' total size. */
static guint
export_corpus (HbStore *store, const char *dir, gsize *out_bytes)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *ndjson_path = g_build_filename (dir, "docs.ndjson", NULL);
  g_autoptr (GString) ndjson = g_string_new (NULL);
  guint64 since = 0;
  guint pages = 0;
  gsize total = 0;
  guint n_docs = 0;

  for (;;)
    {
      g_autoptr (JsonNode) changes = hb_store_changes_sync (store, since, BATCH, NULL, &error);
      JsonObject *obj;
      JsonArray *rows;
      g_autoptr (GPtrArray) ids = g_ptr_array_new ();
      g_autoptr (GHashTable) revs = g_hash_table_new (g_str_hash, g_str_equal);
      g_autoptr (JsonObject) request = json_object_new ();
      g_autoptr (JsonNode) request_node = json_node_new (JSON_NODE_OBJECT);
      g_autoptr (GPtrArray) texts = NULL;
      g_autoptr (GString) body = g_string_new ("{\"new_edits\":false,\"docs\":[");
      g_autofree char *name = NULL;
      g_autofree char *path = NULL;

      die_on_error ("changes", error);
      obj = json_node_get_object (changes);
      rows = json_object_get_array_member (obj, "results");
      if (json_array_get_length (rows) == 0)
        break;
      since = json_object_get_int_member (obj, "last_seq");
      for (guint i = 0; i < json_array_get_length (rows); i++)
        {
          JsonObject *row = json_array_get_object_element (rows, i);
          JsonArray *leaves = json_object_get_array_member (row, "changes");
          const char *id = json_object_get_string_member (row, "id");

          g_assert_cmpuint (json_array_get_length (leaves), ==, 1);
          g_ptr_array_add (ids, (gpointer)id);
          g_hash_table_insert (revs, (gpointer)id,
                               (gpointer)json_object_get_string_member (
                                   json_array_get_object_element (leaves, 0), "rev"));
        }
      g_ptr_array_sort (ids, compare_strings);
      for (guint i = 0; i < ids->len; i++)
        {
          JsonArray *list = json_array_new ();

          json_array_add_string_element (list, g_hash_table_lookup (revs, ids->pdata[i]));
          json_object_set_array_member (request, ids->pdata[i], list);
        }
      json_node_set_object (request_node, request);
      texts = hb_store_get_revs_json_sync (store, request_node, NULL, &error);
      die_on_error ("get_revs_json", error);
      g_assert_cmpuint (texts->len, ==, ids->len);
      for (guint i = 0; i < texts->len; i++)
        {
          gsize len;
          const char *data = g_bytes_get_data (g_ptr_array_index (texts, i), &len);

          if (len < 4 || data[2] != '_' || memchr (data, '\n', len) != NULL)
            g_error ("get_revs_json: %s could not be read", (const char *)ids->pdata[i]);
          if (i > 0)
            g_string_append_c (body, ',');
          g_string_append_len (body, data, len);
          g_string_append_len (ndjson, data, len);
          g_string_append_c (ndjson, '\n');
          total += len;
          n_docs++;
        }
      g_string_append (body, "]}");
      name = g_strdup_printf ("push-%03u.json", pages);
      path = g_build_filename (dir, name, NULL);
      g_file_set_contents (path, body->str, body->len, &error);
      die_on_error ("write body", error);
      pages++;
    }
  g_assert_cmpuint (n_docs, ==, N_DOCS);
  g_file_set_contents (ndjson_path, ndjson->str, ndjson->len, &error);
  die_on_error ("write ndjson", error);
  *out_bytes = total;
  return pages;
}

/* ---- HTTP from the parent (setup and checks, never timed) ------------------------------- */

static JsonNode *
http_json (SoupSession *session, const char *method, const char *url, guint expect_status)
{
  g_autoptr (SoupMessage) msg = soup_message_new (method, url);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) body = NULL;
  JsonNode *node;

  soup_message_headers_replace (soup_message_get_request_headers (msg), "Accept",
                                "application/json");
  body = soup_session_send_and_read (session, msg, NULL, &error);
  die_on_error (url, error);
  if (soup_message_get_status (msg) != expect_status)
    g_error ("%s %s: HTTP %u", method, url, soup_message_get_status (msg));
  node = json_from_string (g_bytes_get_data (body, NULL), &error);
  die_on_error ("parse", error);
  return node;
}

static gint64
server_doc_count (SoupSession *session, const char *db_url)
{
  g_autoptr (JsonNode) info = http_json (session, "GET", db_url, 200);

  return json_object_get_int_member (json_node_get_object (info), "doc_count");
}

/* ---- running the clients --------------------------------------------------------------- */

typedef struct
{
  char *self_exe;
  char *node;
  char *server_dir;
  char *work_dir; /* bodies, NDJSON, curl configs and outputs */
  char *store_path;
  char *perf_dir;
  gboolean ours_bulk_get; /* ours pulls with every revision through _bulk_get */
  const char *server_pid; /* the running server's, for its CPU time */
  guint n_pages;
  SoupSession *session;
} Bench;

static JsonObject *
parse_child_line (const char *what, const char *out)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) node = NULL;
  const char *line = out;
  const char *last;

  /* The last line that looks like JSON: whatever else a child printed comes before. */
  if ((last = g_strrstr (out, "\n{")) != NULL)
    line = last + 1;
  node = json_from_string (line, &error);
  if (node == NULL || !JSON_NODE_HOLDS_OBJECT (node))
    g_error ("%s printed no result: %s", what, error != NULL ? error->message : out);
  return json_object_ref (json_node_get_object (node));
}

static JsonObject *
run_child (const char *what, const char *const *argv, const char *cwd)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSubprocessLauncher) launcher
      = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDOUT_PIPE);
  g_autoptr (GSubprocess) process = NULL;
  g_autofree char *out = NULL;

  if (cwd != NULL)
    g_subprocess_launcher_set_cwd (launcher, cwd);
  process = g_subprocess_launcher_spawnv (launcher, argv, &error);
  die_on_error (what, error);
  g_subprocess_communicate_utf8 (process, NULL, NULL, &out, NULL, &error);
  die_on_error (what, error);
  if (!g_subprocess_get_successful (process))
    g_error ("%s failed; it printed: %s", what, out != NULL ? out : "");
  return parse_child_line (what, out);
}

static Measure
measure_from (JsonObject *obj)
{
  Measure m = { 0 };

  m.seconds = json_object_get_double_member (obj, "seconds");
  m.cpu = json_object_get_double_member (obj, "cpu");
  m.rss_mib = json_object_get_int_member (obj, "rss_kib") / 1024.0;
  return m;
}

static void
check_written (const char *what, JsonObject *obj)
{
  gint64 written = json_object_get_int_member_with_default (obj, "docs_written", -1);
  gint64 failures = json_object_get_int_member_with_default (obj, "doc_write_failures", -1);

  if (written != N_DOCS || failures != 0)
    g_error ("%s: %" G_GINT64_FORMAT " documents written, %" G_GINT64_FORMAT " failures", what,
             written, failures);
}

static Measure
run_ours (Bench *bench, Direction dir, const char *db_url, guint run)
{
  g_autoptr (GPtrArray) argv = g_ptr_array_new_with_free_func (g_free);
  g_autoptr (JsonObject) obj = NULL;
  g_autofree char *what = g_strdup_printf ("ours %s", dir_names[dir]);
  Measure m;

  if (bench->perf_dir != NULL)
    {
      g_autofree char *name = g_strdup_printf ("ours-%s-%u.data", dir_names[dir], run + 1);

      g_ptr_array_add (argv, g_strdup ("perf"));
      g_ptr_array_add (argv, g_strdup ("record"));
      g_ptr_array_add (argv, g_strdup ("-q"));
      g_ptr_array_add (argv, g_strdup ("--call-graph"));
      g_ptr_array_add (argv, g_strdup ("dwarf"));
      g_ptr_array_add (argv, g_strdup ("-F"));
      g_ptr_array_add (argv, g_strdup ("999"));
      g_ptr_array_add (argv, g_strdup ("-o"));
      g_ptr_array_add (argv, g_build_filename (bench->perf_dir, name, NULL));
      g_ptr_array_add (argv, g_strdup ("--"));
    }
  g_ptr_array_add (argv, g_strdup (bench->self_exe));
  g_ptr_array_add (argv, g_strdup ("--child"));
  g_ptr_array_add (argv, g_strdup (dir_names[dir]));
  if (dir == DIR_PUSH)
    g_ptr_array_add (argv, g_strdup (bench->store_path));
  g_ptr_array_add (argv, g_strdup (db_url));
  if (dir == DIR_PULL && bench->ours_bulk_get)
    g_ptr_array_add (argv, g_strdup ("bulk-get"));
  g_ptr_array_add (argv, NULL);
  obj = run_child (what, (const char *const *)argv->pdata, NULL);
  check_written (what, obj);
  if (dir == DIR_PULL && json_object_get_int_member (obj, "doc_count") != N_DOCS)
    g_error ("%s: the store holds %" G_GINT64_FORMAT " documents", what,
             json_object_get_int_member (obj, "doc_count"));
  m = measure_from (obj);
  return m;
}

static Measure
run_pouchdb (Bench *bench, Direction dir, const char *db_url)
{
  g_autofree char *script = g_build_filename (bench->server_dir, "bench-pouchdb.js", NULL);
  g_autofree char *ndjson = g_build_filename (bench->work_dir, "docs.ndjson", NULL);
  g_autofree char *batch = g_strdup_printf ("%u", BATCH);
  g_autoptr (JsonObject) obj = NULL;
  g_autofree char *what = g_strdup_printf ("PouchDB %s", dir_names[dir]);

  if (dir == DIR_PUSH)
    {
      const char *argv[]
          = { bench->node, "--expose-gc", script, "push", ndjson, db_url, batch, NULL };
      obj = run_child (what, argv, bench->server_dir);
    }
  else
    {
      const char *argv[] = { bench->node, "--expose-gc", script, "pull", db_url, batch, NULL };
      obj = run_child (what, argv, bench->server_dir);
      if (json_object_get_int_member (obj, "doc_count") != N_DOCS)
        g_error ("%s: the local database holds %" G_GINT64_FORMAT " documents", what,
                 json_object_get_int_member (obj, "doc_count"));
    }
  check_written (what, obj);
  return measure_from (obj);
}

/* A double-quoted string for a curl config file. */
static void
append_quoted (GString *config, const char *key, const char *value)
{
  g_string_append_printf (config, "%s = \"", key);
  for (const char *p = value; *p != '\0'; p++)
    {
      if (*p == '\n')
        {
          g_string_append (config, "\\n");
          continue;
        }
      if (*p == '"' || *p == '\\')
        g_string_append_c (config, '\\');
      g_string_append_c (config, *p);
    }
  g_string_append (config, "\"\n");
}

#define CURL_MARK "\n@@HB "

static void
append_transfer (GString *config, const char *url, const char *body_path)
{
  if (config->len > 0)
    g_string_append (config, "next\n");
  append_quoted (config, "url", url);
  append_quoted (config, "header", "Accept: application/json");
  if (body_path != NULL)
    {
      g_autofree char *at = g_strconcat ("@", body_path, NULL);

      append_quoted (config, "header", "Content-Type: application/json");
      /* No Expect: 100-continue round trip: neither libsoup nor PouchDB waits for one. */
      append_quoted (config, "header", "Expect:");
      append_quoted (config, "data-binary", at);
    }
  append_quoted (config, "write-out", CURL_MARK "%{http_code} %{num_connects}\n");
}

/* Runs curl -K config, its output into out_path; fills wall time, CPU and peak RSS.
 *
 * A process exec'd straight from this one would report this one's peak RSS as its own (Linux
 * keeps the peak of the memory image exec replaces), so curl runs under GNU time, which forks
 * it from a small image and reports curl's own rusage. Without /usr/bin/time, wait4 gives the
 * CPU and the RSS figure is an upper bound. */
static void
run_curl (Bench *bench, const char *config_path, const char *out_path, Measure *m)
{
  g_autofree char *rusage_path = g_strconcat (out_path, ".rusage", NULL);
  const char *time_argv[]
      = { "/usr/bin/time", "-f",           "%U %S %M", "-o",        rusage_path, "curl",
          "--silent",      "--show-error", "-K",       config_path, NULL };
  const char *const *argv = time_argv;
  gboolean timed = g_file_test ("/usr/bin/time", G_FILE_TEST_IS_EXECUTABLE);
  posix_spawn_file_actions_t actions;
  struct rusage ru;
  gint64 start;
  double server0;
  pid_t pid;
  int status, rc;

  if (!timed)
    argv = time_argv + 5;
  posix_spawn_file_actions_init (&actions);
  posix_spawn_file_actions_addopen (&actions, STDOUT_FILENO, out_path, O_WRONLY | O_CREAT | O_TRUNC,
                                    0600);
  server0 = process_cpu_seconds (bench->server_pid);
  start = g_get_monotonic_time ();
  rc = posix_spawnp (&pid, argv[0], &actions, NULL, (char *const *)argv, environ);
  if (rc != 0)
    g_error ("%s: %s", argv[0], g_strerror (rc));
  while (wait4 (pid, &status, 0, &ru) < 0)
    if (errno != EINTR)
      g_error ("wait4: %s", g_strerror (errno));
  m->seconds = (g_get_monotonic_time () - start) / (double)G_USEC_PER_SEC;
  m->server_cpu = server0 >= 0 ? process_cpu_seconds (bench->server_pid) - server0 : -1;
  posix_spawn_file_actions_destroy (&actions);
  if (!WIFEXITED (status) || WEXITSTATUS (status) != 0)
    g_error ("curl failed (status %d)", status);
  if (timed)
    {
      g_autoptr (GError) error = NULL;
      g_autofree char *text = NULL;
      double user, sys;
      long max_rss_kib;

      g_file_get_contents (rusage_path, &text, NULL, &error);
      die_on_error ("curl rusage", error);
      if (sscanf (text, "%lf %lf %ld", &user, &sys, &max_rss_kib) != 3)
        g_error ("curl rusage: %s", text);
      m->cpu = user + sys;
      m->rss_mib = max_rss_kib / 1024.0;
    }
  else
    {
      m->cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec
               + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
      m->rss_mib = ru.ru_maxrss / 1024.0;
    }
}

/* Checks curl's output: every transfer answered @expect_status, all on one connection.
 * Returns how many times @needle occurs in the answers. */
static guint
check_curl_output (const char *out_path, guint transfers, guint expect_status, const char *needle)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *out = NULL;
  guint seen = 0, connects = 0, found = 0;

  g_file_get_contents (out_path, &out, NULL, &error);
  die_on_error ("curl output", error);
  for (const char *p = out; (p = strstr (p, CURL_MARK)) != NULL; p += strlen (CURL_MARK))
    {
      guint status = 0, c = 0;

      if (sscanf (p + strlen (CURL_MARK), "%u %u", &status, &c) != 2 || status != expect_status)
        g_error ("curl: transfer %u answered HTTP %u", seen + 1, status);
      connects += c;
      seen++;
    }
  if (seen != transfers)
    g_error ("curl made %u transfers, not %u", seen, transfers);
  if (connects != 1)
    g_error ("curl opened %u connections, not 1: no keep-alive", connects);
  for (const char *p = out; (p = strstr (p, needle)) != NULL; p += strlen (needle))
    found++;
  return found;
}

static Measure
run_raw_push (Bench *bench, const char *db_url)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GString) config = g_string_new (NULL);
  g_autofree char *config_path = g_build_filename (bench->work_dir, "push.curl", NULL);
  g_autofree char *out_path = g_build_filename (bench->work_dir, "push.out", NULL);
  g_autofree char *url = g_strconcat (db_url, "/_bulk_docs", NULL);
  g_autoptr (JsonNode) created = http_json (bench->session, "PUT", db_url, 201);
  Measure m = { 0 };

  for (guint i = 0; i < bench->n_pages; i++)
    {
      g_autofree char *name = g_strdup_printf ("push-%03u.json", i);
      g_autofree char *body = g_build_filename (bench->work_dir, name, NULL);

      append_transfer (config, url, body);
    }
  g_file_set_contents (config_path, config->str, config->len, &error);
  die_on_error ("curl config", error);
  run_curl (bench, config_path, out_path, &m);
  if (check_curl_output (out_path, bench->n_pages, 201, "\"error\"") != 0)
    g_error ("raw push: the server refused documents");
  return m;
}

/* The pull's request plan needs the page boundaries: @feed is the whole feed, read before the
 * clock. */
static Measure
run_raw_pull (Bench *bench, const char *db_url, JsonNode *feed, gboolean feed_docs)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GString) config = g_string_new (NULL);
  g_autofree char *config_path = g_build_filename (bench->work_dir, "pull.curl", NULL);
  g_autofree char *out_path = g_build_filename (bench->work_dir, "pull.out", NULL);
  g_autofree char *bulk_get_url = g_strconcat (db_url, "/_bulk_get?revs=true&latest=true", NULL);
  JsonArray *rows = json_object_get_array_member (json_node_get_object (feed), "results");
  guint n_rows = json_array_get_length (rows);
  g_autofree char *since = NULL;
  guint transfers = 0, page = 0, found;
  Measure m = { 0 };

  g_assert_cmpuint (n_rows, ==, N_DOCS);
  for (guint start = 0; start <= n_rows; start += BATCH, page++)
    {
      g_autoptr (GString) changes_url = g_string_new (db_url);
      g_autoptr (GString) body = g_string_new ("{\"docs\":[");
      g_autofree char *name = g_strdup_printf ("pull-%03u.json", page);
      g_autofree char *body_path = g_build_filename (bench->work_dir, name, NULL);
      guint end = MIN (start + BATCH, n_rows);

      g_string_append_printf (changes_url, "/_changes?style=all_docs&feed=normal&limit=%u", BATCH);
      if (feed_docs)
        g_string_append (changes_url, "&include_docs=true");
      if (since != NULL)
        {
          g_string_append (changes_url, "&since=");
          g_string_append_uri_escaped (changes_url, since, NULL, FALSE);
        }
      append_transfer (config, changes_url->str, NULL);
      transfers++;
      if (start == n_rows)
        break; /* the last, empty page tells the replicator it is done */
      for (guint i = start; i < end && !feed_docs; i++)
        {
          JsonObject *row = json_array_get_object_element (rows, i);
          JsonArray *leaves = json_object_get_array_member (row, "changes");

          for (guint r = 0; r < json_array_get_length (leaves); r++)
            {
              JsonObject *leaf = json_array_get_object_element (leaves, r);

              if (body->len > strlen ("{\"docs\":["))
                g_string_append_c (body, ',');
              g_string_append (body, "{\"id\":");
              hb_json_append_string (body, json_object_get_string_member (row, "id"));
              g_string_append (body, ",\"rev\":");
              hb_json_append_string (body, json_object_get_string_member (leaf, "rev"));
              g_string_append_c (body, '}');
            }
        }
      g_string_append (body, "]}");
      if (!feed_docs)
        {
          g_file_set_contents (body_path, body->str, body->len, &error);
          die_on_error ("bulk_get body", error);
          append_transfer (config, bulk_get_url, body_path);
          transfers++;
        }
      {
        /* The sequence of the page's last row is the page's last_seq: opaque, verbatim. */
        JsonNode *seq
            = json_object_get_member (json_array_get_object_element (rows, end - 1), "seq");

        g_free (since);
        since = JSON_NODE_HOLDS_VALUE (seq) && json_node_get_value_type (seq) == G_TYPE_STRING
                    ? g_strdup (json_node_get_string (seq))
                    : json_to_string (seq, FALSE);
      }
    }
  g_file_set_contents (config_path, config->str, config->len, &error);
  die_on_error ("curl config", error);
  run_curl (bench, config_path, out_path, &m);
  found = check_curl_output (out_path, transfers, 200, feed_docs ? "\"doc\":{" : "\"_revisions\"");
  if (found != N_DOCS)
    g_error ("raw pull: %u documents read, not %u", found, N_DOCS);
  return m;
}

/* One client, both directions, on a server of its own. */
static void
run_client (Bench *bench, Client client, guint run, Measure out[N_DIRS])
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbTestServer) server = hb_test_server_start (NULL, &error);
  g_autofree char *pid = NULL;
  g_autofree char *db_url = NULL;

  die_on_error ("server", error);
  pid = g_strdup (g_subprocess_get_identifier (server->process));
  bench->server_pid = pid;
  db_url = g_strdup_printf ("%s/bench-%s-%u", server->url, client_keys[client], run + 1);
  for (Direction dir = 0; dir < N_DIRS; dir++)
    {
      g_autoptr (JsonNode) feed = NULL;
      double server0;
      Measure m = { 0 };

      if (dir == DIR_PULL)
        {
          /* The same full read of the feed before every client's pull: raw needs it to form its
           * requests, and it warms the server (its feed code compiled, its pages touched), which
           * then answers a `_changes` page in about 4 ms instead of 10 to 20. */
          g_autofree char *feed_url = g_strconcat (db_url, "/_changes?style=all_docs", NULL);

          feed = http_json (bench->session, "GET", feed_url, 200);
        }
      server0 = process_cpu_seconds (pid);

      switch (client)
        {
          case CLIENT_OURS:
            m = run_ours (bench, dir, db_url, run);
            break;
          case CLIENT_POUCHDB:
            m = run_pouchdb (bench, dir, db_url);
            break;
          case CLIENT_RAW:
            m = dir == DIR_PUSH ? run_raw_push (bench, db_url)
                                : run_raw_pull (bench, db_url, feed, FALSE);
            break;
          case CLIENT_RAW_FEED:
            m = dir == DIR_PUSH ? run_raw_push (bench, db_url)
                                : run_raw_pull (bench, db_url, feed, TRUE);
            break;
          default:
            g_assert_not_reached ();
        }
      /* Raw measures the server around curl alone, not around the setup requests. */
      if (client != CLIENT_RAW && client != CLIENT_RAW_FEED)
        m.server_cpu = server0 >= 0 ? process_cpu_seconds (pid) - server0 : -1;
      if (dir == DIR_PUSH && server_doc_count (bench->session, db_url) != N_DOCS)
        g_error ("%s push: the server holds %" G_GINT64_FORMAT " documents", client_names[client],
                 server_doc_count (bench->session, db_url));
      out[dir] = m;
    }
  bench->server_pid = NULL;
}

/* ---- reporting ------------------------------------------------------------------------- */

static int
compare_doubles (gconstpointer a, gconstpointer b)
{
  double x = *(const double *)a, y = *(const double *)b;

  return (x > y) - (x < y);
}

typedef struct
{
  double best;
  double median;
} Figures;

/* Best and median of n figures; @higher_is_better picks the end that is "best". */
static Figures
summarize (const double *values, guint n, gboolean higher_is_better)
{
  double sorted[MAX_RUNS];
  Figures figures;

  memcpy (sorted, values, n * sizeof (double));
  qsort (sorted, n, sizeof (double), compare_doubles);
  figures.best = higher_is_better ? sorted[n - 1] : sorted[0];
  figures.median = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  return figures;
}

typedef enum
{
  FIG_RATE,
  FIG_CPU,
  FIG_RSS,
  FIG_SERVER,
  N_FIGS
} Fig;

static double
figure_of (const Measure *m, Fig fig)
{
  switch (fig)
    {
      case FIG_RATE:
        return N_DOCS / m->seconds;
      case FIG_CPU:
        return m->cpu;
      case FIG_RSS:
        return m->rss_mib;
      case FIG_SERVER:
      default:
        return m->server_cpu;
    }
}

static Figures
figures (Measure (*m)[N_CLIENTS][N_DIRS], guint n_runs, Client c, Direction d, Fig fig)
{
  double values[MAX_RUNS];

  for (guint r = 0; r < n_runs; r++)
    values[r] = figure_of (&m[r][c][d], fig);
  return summarize (values, n_runs, fig == FIG_RATE);
}

/* Client @a against client @b in direction @d: best against best, then medians, then run by
 * run (the two ran minutes apart at most, so a slow spell of the machine weighs on that ratio
 * least); goal_min/goal_max 0 when there is none. */
static void
print_ratio (const char *what,
             Measure (*m)[N_CLIENTS][N_DIRS],
             guint n_runs,
             Client a_client,
             Client b_client,
             Direction d,
             Fig fig,
             double goal_min,
             double goal_max)
{
  Figures a = figures (m, n_runs, a_client, d, fig);
  Figures b = figures (m, n_runs, b_client, d, fig);
  double ratio = a.best / b.best;
  double paired[MAX_RUNS];

  g_print ("  %-28s %5.2f", what, ratio);
  if (goal_min > 0)
    g_print (" (goal >= %.2f)%s", goal_min, ratio >= goal_min ? "" : "  BELOW GOAL");
  if (goal_max > 0)
    g_print (" (goal <= %.2f)%s", goal_max, ratio <= goal_max ? "" : "  BELOW GOAL");
  g_print ("; medians %.2f; run by run", a.median / b.median);
  for (guint r = 0; r < n_runs; r++)
    {
      paired[r] = figure_of (&m[r][a_client][d], fig) / figure_of (&m[r][b_client][d], fig);
      g_print (" %.2f", paired[r]);
    }
  g_print (" (median %.2f)\n", summarize (paired, n_runs, TRUE).median);
}

static void
print_direction (Measure (*m)[N_CLIENTS][N_DIRS],
                 guint n_runs,
                 const gboolean enabled[N_CLIENTS],
                 Direction d)
{
  g_print ("%s: %u documents, batches of %u; best of %u runs [median]\n", dir_names[d], N_DOCS,
           BATCH, n_runs);
  g_print ("  %-14s %20s %20s %20s %20s\n", "", "docs/s", "client CPU s", "peak RSS MiB",
           "server CPU s");
  for (Client c = 0; c < N_CLIENTS; c++)
    {
      Figures rate, cpu, rss, server;

      if (!enabled[c] || (c == CLIENT_RAW_FEED && d == DIR_PUSH))
        continue;
      rate = figures (m, n_runs, c, d, FIG_RATE);
      cpu = figures (m, n_runs, c, d, FIG_CPU);
      rss = figures (m, n_runs, c, d, FIG_RSS);
      server = figures (m, n_runs, c, d, FIG_SERVER);
      g_print ("  %-14s %10.0f [%7.0f] %10.3f [%7.3f] %10.1f [%7.1f] %10.3f [%7.3f]\n",
               client_names[c], rate.best, rate.median, cpu.best, cpu.median, rss.best, rss.median,
               server.best, server.median);
    }
  if (enabled[CLIENT_OURS] && enabled[CLIENT_RAW])
    print_ratio ("ours/raw docs/s", m, n_runs, CLIENT_OURS, CLIENT_RAW, d, FIG_RATE, GOAL_RAW_RATE,
                 0);
  if (enabled[CLIENT_OURS] && enabled[CLIENT_RAW_FEED] && d == DIR_PULL)
    print_ratio ("ours/raw, feed docs docs/s", m, n_runs, CLIENT_OURS, CLIENT_RAW_FEED, d, FIG_RATE,
                 0, 0);
  if (enabled[CLIENT_OURS] && enabled[CLIENT_POUCHDB])
    {
      print_ratio ("ours/PouchDB docs/s", m, n_runs, CLIENT_OURS, CLIENT_POUCHDB, d, FIG_RATE,
                   GOAL_POUCH_RATE, 0);
      print_ratio ("ours/PouchDB client CPU", m, n_runs, CLIENT_OURS, CLIENT_POUCHDB, d, FIG_CPU, 0,
                   GOAL_POUCH_CPU);
      print_ratio ("ours/PouchDB peak RSS", m, n_runs, CLIENT_OURS, CLIENT_POUCHDB, d, FIG_RSS, 0,
                   0);
    }
}

/* ---- main ------------------------------------------------------------------------------ */

static char *
find_node (void)
{
  const char *env = g_getenv ("HB_TEST_NODE");
  char *node;

  if (env != NULL && *env != '\0')
    return g_strdup (env);
  node = g_find_program_in_path ("node");
  if (node == NULL)
    g_error ("node not found: set HB_TEST_NODE or put node on PATH");
  return node;
}

/* The machine may be shared: say how busy it was. */
static void
print_load (const char *when)
{
  g_autofree char *text = NULL;

  if (g_file_get_contents ("/proc/loadavg", &text, NULL, NULL))
    g_print ("load average %s: %s", when, text);
}

static void
usage (void)
{
  g_printerr ("usage: bench-replication [--runs N] [--only ours,pouchdb,raw,rawfeed] "
              "[--perf-dir DIR] [--ours-bulk-get]\n");
  exit (2);
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *store_dir = NULL;
  Measure (*m)[N_CLIENTS][N_DIRS] = NULL;
  gboolean enabled[N_CLIENTS] = { TRUE, TRUE, TRUE, TRUE };
  guint n_runs = N_RUNS_DEFAULT;
  Bench bench = { 0 };
  gsize total_bytes = 0;
  const char *srcdir;

  if (argc >= 2 && strcmp (argv[1], "--child") == 0)
    return child_main (argc - 1, argv + 1);

  for (int i = 1; i < argc; i++)
    {
      if (strcmp (argv[i], "--runs") == 0 && i + 1 < argc)
        {
          n_runs = (guint)g_ascii_strtoull (argv[++i], NULL, 10);
          if (n_runs < 1 || n_runs > MAX_RUNS)
            usage ();
        }
      else if (strcmp (argv[i], "--only") == 0 && i + 1 < argc)
        {
          g_auto (GStrv) keys = g_strsplit (argv[++i], ",", 0);

          for (Client c = 0; c < N_CLIENTS; c++)
            enabled[c] = g_strv_contains ((const char *const *)keys, client_keys[c]);
        }
      else if (strcmp (argv[i], "--perf-dir") == 0 && i + 1 < argc)
        bench.perf_dir = g_canonicalize_filename (argv[++i], NULL);
      else if (strcmp (argv[i], "--ours-bulk-get") == 0)
        bench.ours_bulk_get = TRUE;
      else
        usage ();
    }

  srcdir = g_getenv ("G_TEST_SRCDIR");
  if (srcdir == NULL)
    g_error ("G_TEST_SRCDIR is not set (run through meson test --benchmark, or set it to tests/)");
  bench.self_exe = g_file_read_link ("/proc/self/exe", &error);
  die_on_error ("/proc/self/exe", error);
  bench.server_dir = g_build_filename (srcdir, "server", NULL);
  bench.node = find_node ();
  bench.work_dir = hb_test_mkdtemp ();
  bench.session = soup_session_new ();

  /* The store, its documents and their exports, before any clock. */
  {
    g_autoptr (HbStore) store = hb_test_store_new (&store_dir);

    write_corpus (store);
    bench.n_pages = export_corpus (store, bench.work_dir, &total_bytes);
    bench.store_path = g_build_filename (store_dir, "store.db", NULL);
    hb_store_close (store);
  }
  g_print ("%u notes, %.0f bytes of JSON each on average (as sent, with _rev and _revisions), "
           "batches of %u; a fresh server (express-pouchdb, memory adapter) per client and run; "
           "%u runs\n",
           N_DOCS, (double)total_bytes / N_DOCS, BATCH, n_runs);

  print_load ("before the runs");
  m = g_malloc0_n (n_runs, sizeof *m);
  for (guint run = 0; run < n_runs; run++)
    {
      g_print ("  run %u:", run + 1);
      for (Client c = 0; c < N_CLIENTS; c++)
        {
          if (!enabled[c])
            continue;
          run_client (&bench, c, run, m[run][c]);
          if (c == CLIENT_RAW_FEED)
            g_print ("  %s pull %.0f docs/s (CPU %.2f s)", client_names[c],
                     N_DOCS / m[run][c][DIR_PULL].seconds, m[run][c][DIR_PULL].cpu);
          else
            g_print ("  %s push %.0f / pull %.0f docs/s (CPU %.2f / %.2f s)", client_names[c],
                     N_DOCS / m[run][c][DIR_PUSH].seconds, N_DOCS / m[run][c][DIR_PULL].seconds,
                     m[run][c][DIR_PUSH].cpu, m[run][c][DIR_PULL].cpu);
        }
      g_print ("\n");
    }

  print_load ("after the runs");
  for (Direction d = 0; d < N_DIRS; d++)
    print_direction (m, n_runs, enabled, d);
  if (bench.perf_dir != NULL)
    g_print ("perf data in %s (timings of ours include perf's overhead)\n", bench.perf_dir);

  g_free (m);
  hb_test_rmdir (store_dir);
  hb_test_rmdir (bench.work_dir);
  g_object_unref (bench.session);
  g_free (bench.self_exe);
  g_free (bench.node);
  g_free (bench.server_dir);
  g_free (bench.work_dir);
  g_free (bench.store_path);
  g_free (bench.perf_dir);
  return 0;
}
