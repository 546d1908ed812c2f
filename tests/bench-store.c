/* Benchmark: HbStore against plain SQLite, and the cost of unlocking.
 *
 * 10,000 clinical notes of about 1 KB each are put in batches of 100 (hb_store_bulk_docs_sync,
 * new_edits) and read back in batches of 100: as bytes (hb_store_get_many_json_sync, the read
 * that compares with selecting bytes) and as parsed documents (hb_store_get_many_sync). The
 * baseline is plain SQLite in the same temporary directory, configured like the store (WAL,
 * synchronous=FULL), one transaction per batch of 100, table (id TEXT PRIMARY KEY, body BLOB),
 * inserting and selecting the same JSON bytes with no crypto. Two more rows explain the gap:
 * plain SQLite that also parses what it selects (the fair partner of a parsed read), and the
 * "schema floor", plain SQLite writing rows of the store's shape into the store's schema with no
 * crypto and no JSON. Each measurement runs 3 times; the best and the median are printed. The
 * goal is a store at no less than 0.7 of the baseline; nothing here asserts on speed.
 *
 * Run with `meson test -C BUILDDIR --benchmark -v`, or the bench-store binary directly
 * (`--store-only`: the store alone, once, for a profiler). */

#include <sqlite3.h>
#include <string.h>

#include "hb-test-utils.h"

#define N_DOCS 10000
#define BATCH 100
#define N_RUNS 3
#define GOAL 0.70

typedef struct
{
  GPtrArray *ids;    /* char*, N_DOCS */
  GPtrArray *docs;   /* JsonNode*, N_DOCS */
  GPtrArray *bodies; /* GBytes*, the same documents serialized, N_DOCS */
  gsize total_bytes;
} Corpus;

static char *
random_uuid (GRand *rand)
{
  return g_strdup_printf ("%08x-%04x-4%03x-%04x-%08x%04x", g_rand_int (rand),
                          g_rand_int (rand) & 0xffff, g_rand_int (rand) & 0xfff,
                          (g_rand_int (rand) & 0x3fff) | 0x8000, g_rand_int (rand),
                          g_rand_int (rand) & 0xffff);
}

static JsonNode *
make_note (GRand *rand, const char *id, const char *session_id, const char *patient_id, guint n)
{
  g_autofree char *written_at
      = g_strdup_printf ("2024-%02u-%02uT%02u:%02u:00Z", 1 + n % 12, 1 + n % 28, n % 24, n % 60);

  return hb_test_note (rand, id, session_id, patient_id, written_at, 820);
}

static void
corpus_init (Corpus *corpus)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (20240502);
  g_autofree char *session_id = NULL;
  g_autofree char *patient_id = NULL;

  corpus->ids = g_ptr_array_new_with_free_func (g_free);
  corpus->docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
  corpus->bodies = g_ptr_array_new_with_free_func ((GDestroyNotify)g_bytes_unref);
  corpus->total_bytes = 0;

  for (guint i = 0; i < N_DOCS; i++)
    {
      g_autofree char *uuid = random_uuid (rand);
      char *id = g_strconcat ("note:", uuid, NULL);
      JsonNode *doc;
      char *json;
      gsize len;

      /* About ten notes per clinical session, three sessions per patient. */
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

      doc = make_note (rand, id, session_id, patient_id, i);
      json = json_to_string (doc, FALSE);
      len = strlen (json);
      corpus->total_bytes += len;
      g_ptr_array_add (corpus->ids, id);
      g_ptr_array_add (corpus->docs, doc);
      g_ptr_array_add (corpus->bodies, g_bytes_new_take (json, len));
    }
}

static void
corpus_clear (Corpus *corpus)
{
  g_clear_pointer (&corpus->ids, g_ptr_array_unref);
  g_clear_pointer (&corpus->docs, g_ptr_array_unref);
  g_clear_pointer (&corpus->bodies, g_ptr_array_unref);
}

typedef struct
{
  double put_seconds;
  double get_seconds;
  double get_json_seconds; /* the store only: hb_store_get_many_json_sync */
} Timing;

static double
elapsed_since (gint64 start)
{
  return (g_get_monotonic_time () - start) / (double)G_USEC_PER_SEC;
}

static void
die_on_error (const char *what, const GError *error)
{
  if (error != NULL)
    g_error ("%s: %s", what, error->message);
}

/* HbStore */

/* How many times the store's bytes get reads every document: more than once only with
 * --get-only, to profile that path alone. */
static guint get_json_rounds = 1;

static Timing
run_store (const Corpus *corpus)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = NULL;
  g_autoptr (HbStore) store = hb_test_store_new (&dir);
  /* Batches prepared before the clock starts: copies, in case the store annotates them. */
  g_autoptr (GPtrArray) batches
      = g_ptr_array_new_with_free_func ((GDestroyNotify)g_ptr_array_unref);
  Timing timing;
  /* Only the store's calls and the freeing of what they return are timed, as only SQLite's are
   * on the other side; the checks of what came back are not. */
  gint64 start, spent;

  for (guint b = 0; b < N_DOCS / BATCH; b++)
    {
      GPtrArray *batch = g_ptr_array_new_full (BATCH, (GDestroyNotify)json_node_unref);

      for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
        g_ptr_array_add (batch, json_node_copy (g_ptr_array_index (corpus->docs, i)));
      g_ptr_array_add (batches, batch);
    }

  spent = 0;
  for (guint b = 0; b < batches->len; b++)
    {
      GPtrArray *results;

      start = g_get_monotonic_time ();
      results = hb_store_bulk_docs_sync (store, g_ptr_array_index (batches, b), TRUE, NULL, &error);
      spent += g_get_monotonic_time () - start;
      die_on_error ("bulk_docs", error);
      g_assert_cmpuint (results->len, ==, BATCH);
      for (guint i = 0; i < results->len; i++)
        {
          JsonNode *result = g_ptr_array_index (results, i);

          if (result == NULL || !JSON_NODE_HOLDS_OBJECT (result)
              || json_object_has_member (json_node_get_object (result), "error"))
            g_error ("bulk_docs: document %u of batch %u was not written", i, b);
        }
      start = g_get_monotonic_time ();
      g_ptr_array_unref (results);
      spent += g_get_monotonic_time () - start;
    }
  timing.put_seconds = spent / (double)G_USEC_PER_SEC;

  spent = 0;
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    {
      const char *ids[BATCH + 1];
      GPtrArray *docs;

      for (guint i = 0; i < BATCH; i++)
        ids[i] = g_ptr_array_index (corpus->ids, b * BATCH + i);
      ids[BATCH] = NULL;
      start = g_get_monotonic_time ();
      docs = hb_store_get_many_sync (store, ids, HB_GET_FLAGS_NONE, NULL, &error);
      spent += g_get_monotonic_time () - start;
      die_on_error ("get_many", error);
      g_assert_cmpuint (docs->len, ==, BATCH);
      for (guint i = 0; i < BATCH; i++)
        {
          JsonNode *doc = g_ptr_array_index (docs, i);

          if (doc == NULL || !JSON_NODE_HOLDS_OBJECT (doc)
              || g_strcmp0 (json_object_get_string_member_with_default (json_node_get_object (doc),
                                                                        "_id", NULL),
                            ids[i])
                     != 0)
            g_error ("get_many: document %s missing or wrong", ids[i]);
        }
      start = g_get_monotonic_time ();
      g_ptr_array_unref (docs);
      spent += g_get_monotonic_time () - start;
    }
  timing.get_seconds = spent / (double)G_USEC_PER_SEC;

  spent = 0;
  for (guint b = 0; b < get_json_rounds * (N_DOCS / BATCH); b++)
    {
      const char *ids[BATCH + 1];
      GPtrArray *texts;

      for (guint i = 0; i < BATCH; i++)
        ids[i] = g_ptr_array_index (corpus->ids, (b % (N_DOCS / BATCH)) * BATCH + i);
      ids[BATCH] = NULL;
      start = g_get_monotonic_time ();
      texts = hb_store_get_many_json_sync (store, ids, HB_GET_FLAGS_NONE, NULL, &error);
      spent += g_get_monotonic_time () - start;
      die_on_error ("get_many_json", error);
      g_assert_cmpuint (texts->len, ==, BATCH);
      for (guint i = 0; i < BATCH; i++)
        {
          GBytes *text = g_ptr_array_index (texts, i);
          gsize len = 0;
          const char *data = text != NULL ? g_bytes_get_data (text, &len) : NULL;

          if (data == NULL || g_strstr_len (data, len, ids[i]) == NULL
              || g_strstr_len (data, len, "\"error\"") != NULL)
            g_error ("get_many_json: document %s missing or wrong", ids[i]);
        }
      start = g_get_monotonic_time ();
      g_ptr_array_unref (texts);
      spent += g_get_monotonic_time () - start;
    }
  timing.get_json_seconds = spent / (double)G_USEC_PER_SEC / get_json_rounds;

  hb_store_close (store);
  hb_test_rmdir (dir);
  return timing;
}

/* Plain SQLite */

static void
sql_exec (sqlite3 *db, const char *sql)
{
  char *message = NULL;

  if (sqlite3_exec (db, sql, NULL, NULL, &message) != SQLITE_OK)
    g_error ("%s: %s", sql, message);
}

static sqlite3_stmt *
sql_prepare (sqlite3 *db, const char *sql)
{
  sqlite3_stmt *stmt = NULL;

  if (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL) != SQLITE_OK)
    g_error ("%s: %s", sql, sqlite3_errmsg (db));
  return stmt;
}

static Timing
run_sqlite (const Corpus *corpus, gboolean parse_json)
{
  g_autofree char *dir = hb_test_mkdtemp ();
  g_autofree char *path = g_build_filename (dir, "plain.db", NULL);
  g_autoptr (JsonParser) parser = json_parser_new_immutable ();
  sqlite3 *db = NULL;
  sqlite3_stmt *insert, *select;
  Timing timing;
  gint64 start;
  gsize checksum = 0;

  if (sqlite3_open (path, &db) != SQLITE_OK)
    g_error ("sqlite3_open: %s", sqlite3_errmsg (db));
  sql_exec (db, "PRAGMA journal_mode=WAL");
  sql_exec (db, "PRAGMA synchronous=FULL");
  sql_exec (db, "CREATE TABLE docs (id TEXT PRIMARY KEY, body BLOB)");
  insert = sql_prepare (db, "INSERT INTO docs (id, body) VALUES (?1, ?2)");
  select = sql_prepare (db, "SELECT body FROM docs WHERE id = ?1");

  start = g_get_monotonic_time ();
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    {
      sql_exec (db, "BEGIN IMMEDIATE");
      for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
        {
          gsize len;
          const void *body = g_bytes_get_data (g_ptr_array_index (corpus->bodies, i), &len);

          sqlite3_bind_text (insert, 1, g_ptr_array_index (corpus->ids, i), -1, SQLITE_STATIC);
          sqlite3_bind_blob (insert, 2, body, len, SQLITE_STATIC);
          if (sqlite3_step (insert) != SQLITE_DONE)
            g_error ("insert: %s", sqlite3_errmsg (db));
          sqlite3_reset (insert);
        }
      sql_exec (db, "COMMIT");
    }
  timing.put_seconds = elapsed_since (start);

  start = g_get_monotonic_time ();
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    {
      sql_exec (db, "BEGIN");
      for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
        {
          g_autoptr (GBytes) body = NULL;

          sqlite3_bind_text (select, 1, g_ptr_array_index (corpus->ids, i), -1, SQLITE_STATIC);
          if (sqlite3_step (select) != SQLITE_ROW)
            g_error ("select: %s", sqlite3_errmsg (db));
          /* Copy the bytes out, as a caller keeping the document would. */
          body = g_bytes_new (sqlite3_column_blob (select, 0), sqlite3_column_bytes (select, 0));
          sqlite3_reset (select);
          checksum += g_bytes_get_size (body);
          if (parse_json)
            {
              g_autoptr (GError) error = NULL;
              gsize len;
              const char *data = g_bytes_get_data (body, &len);

              if (!json_parser_load_from_data (parser, data, len, &error))
                g_error ("parse: %s", error->message);
            }
        }
      sql_exec (db, "COMMIT");
    }
  timing.get_seconds = elapsed_since (start);
  g_assert_cmpuint (checksum, ==, corpus->total_bytes);

  sqlite3_finalize (insert);
  sqlite3_finalize (select);
  sqlite3_close (db);
  hb_test_rmdir (dir);
  return timing;
}

/* The floor under the store: plain SQLite with the store's schema and row shapes (a random
 * 32-byte row key found through the index on its first 8 bytes, a sealed-size record and body,
 * three blind-index columns with their partial indexes, the sequence kept in a meta row), the
 * same batches and no crypto, no JSON. What the store costs beyond this is its own work; what
 * this costs beyond the plain baseline is the price of the schema (bigger rows, four indexes
 * instead of one). */
static Timing
run_floor (const Corpus *corpus)
{
  g_autofree char *dir = hb_test_mkdtemp ();
  g_autofree char *path = g_build_filename (dir, "floor.db", NULL);
  g_autoptr (GRand) rand = g_rand_new_with_seed (7);
  g_autoptr (GByteArray) keys = g_byte_array_new ();
  guint8 meta[150], macs[3][16];
  sqlite3 *db = NULL;
  sqlite3_stmt *insert, *select, *seq_update;
  Timing timing;
  gint64 start;
  gsize checksum = 0;
  guint8 scratch[4096];

  if (sqlite3_open (path, &db) != SQLITE_OK)
    g_error ("sqlite3_open: %s", sqlite3_errmsg (db));
  sql_exec (db, "PRAGMA journal_mode=WAL");
  sql_exec (db, "PRAGMA synchronous=FULL");
  sql_exec (db, "PRAGMA cache_size=-2048");
  sql_exec (db, "CREATE TABLE hb_meta (key TEXT PRIMARY KEY, value)");
  sql_exec (db, "INSERT INTO hb_meta VALUES ('update_seq', 0)");
  sql_exec (db,
            "CREATE TABLE docs (seq INTEGER PRIMARY KEY, doc_key BLOB NOT NULL,"
            " meta BLOB NOT NULL, type_mac BLOB, session_mac BLOB, patient_mac BLOB, body BLOB)");
  sql_exec (db, "CREATE INDEX docs_key ON docs (substr(doc_key, 1, 8))");
  sql_exec (db, "CREATE INDEX docs_type ON docs (type_mac) WHERE type_mac IS NOT NULL");
  sql_exec (db, "CREATE INDEX docs_session ON docs (session_mac) WHERE session_mac IS NOT NULL");
  sql_exec (db, "CREATE INDEX docs_patient ON docs (patient_mac) WHERE patient_mac IS NOT NULL");
  insert = sql_prepare (db, "INSERT INTO docs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  select = sql_prepare (db, "SELECT seq, doc_key, meta, type_mac, session_mac, patient_mac, body"
                            " FROM docs WHERE substr(doc_key, 1, 8) = substr(?1, 1, 8)"
                            " AND doc_key = ?1");
  seq_update = sql_prepare (db, "UPDATE hb_meta SET value = ?1 WHERE key = 'update_seq'");

  for (guint i = 0; i < N_DOCS * 32; i++)
    {
      guint8 b = (guint8)g_rand_int (rand);
      g_byte_array_append (keys, &b, 1);
    }
  memset (meta, 0x5a, sizeof meta);
  memset (macs, 0x11, sizeof macs);

  start = g_get_monotonic_time ();
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    {
      sql_exec (db, "BEGIN IMMEDIATE");
      for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
        {
          gsize len;
          const guint8 *body = g_bytes_get_data (g_ptr_array_index (corpus->bodies, i), &len);

          g_assert (len + 28 <= sizeof scratch);
          memcpy (scratch, body, len);
          memset (scratch + len, 0, 28);
          /* A session every ten notes, a patient every thirty, as in the corpus; random values,
           * as HMACs are, so each lands at a random place in its index. */
          for (guint f = 1; f < 3 && i % (f == 1 ? 10 : 30) == 0; f++)
            for (guint k = 0; k < 16; k++)
              macs[f][k] = (guint8)g_rand_int (rand);
          sqlite3_bind_int64 (insert, 1, i + 1);
          sqlite3_bind_blob (insert, 2, keys->data + 32 * i, 32, SQLITE_STATIC);
          sqlite3_bind_blob (insert, 3, meta, sizeof meta, SQLITE_STATIC);
          for (guint f = 0; f < 3; f++)
            sqlite3_bind_blob (insert, 4 + f, macs[f], 16, SQLITE_STATIC);
          sqlite3_bind_blob (insert, 7, scratch, len + 28, SQLITE_STATIC);
          if (sqlite3_step (insert) != SQLITE_DONE)
            g_error ("insert: %s", sqlite3_errmsg (db));
          sqlite3_reset (insert);
        }
      sqlite3_bind_int64 (seq_update, 1, (b + 1) * BATCH);
      if (sqlite3_step (seq_update) != SQLITE_DONE)
        g_error ("update: %s", sqlite3_errmsg (db));
      sqlite3_reset (seq_update);
      sql_exec (db, "COMMIT");
    }
  timing.put_seconds = elapsed_since (start);

  start = g_get_monotonic_time ();
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    {
      sql_exec (db, "BEGIN");
      for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
        {
          g_autoptr (GBytes) body = NULL;

          sqlite3_bind_blob (select, 1, keys->data + 32 * i, 32, SQLITE_STATIC);
          if (sqlite3_step (select) != SQLITE_ROW)
            g_error ("select: %s", sqlite3_errmsg (db));
          body = g_bytes_new (sqlite3_column_blob (select, 6), sqlite3_column_bytes (select, 6));
          sqlite3_reset (select);
          checksum += g_bytes_get_size (body) - 28;
        }
      sql_exec (db, "COMMIT");
    }
  timing.get_seconds = elapsed_since (start);
  timing.get_json_seconds = 0;
  g_assert_cmpuint (checksum, ==, corpus->total_bytes);

  sqlite3_finalize (insert);
  sqlite3_finalize (select);
  sqlite3_finalize (seq_update);
  sqlite3_close (db);
  hb_test_rmdir (dir);
  return timing;
}

/* Unlock */

static double
run_unlock (const char *path)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (path);
  double seconds;

  hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error);
  die_on_error ("unlock", error);
  seconds = hb_vault_get_last_unlock_seconds (vault);
  hb_vault_lock (vault);
  return seconds;
}

/* Reporting */

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

/* Best and median of N_RUNS figures; @higher_is_better picks the end that is "best". */
static Figures
summarize (const double *values, gboolean higher_is_better)
{
  double sorted[N_RUNS];
  Figures figures;

  memcpy (sorted, values, sizeof sorted);
  qsort (sorted, N_RUNS, sizeof (double), compare_doubles);
  figures.best = higher_is_better ? sorted[N_RUNS - 1] : sorted[0];
  figures.median = sorted[N_RUNS / 2];
  return figures;
}

/* Prints a against b: best figures and their ratio, then the medians. */
static void
print_comparison (const char *what, const double *a_rates, const double *b_rates, gboolean goal)
{
  Figures a = summarize (a_rates, TRUE);
  Figures b = summarize (b_rates, TRUE);
  double ratio = a.best / b.best;

  g_print ("  %s: %.0f vs %.0f docs/s, ratio %.2f", what, a.best, b.best, ratio);
  if (goal)
    g_print (" (goal >= %.2f)%s", GOAL, ratio >= GOAL ? "" : "  BELOW GOAL");
  g_print ("; medians %.0f vs %.0f, ratio %.2f\n", a.median, b.median, a.median / b.median);
}

int
main (int argc, char **argv)
{
  /* --store-only: only the store's put and get, once (for profiling: perf record ...). */
  /* --get-only: the same, with the bytes get run twenty times, so that it dominates a profile. */
  gboolean get_only = argc > 1 && g_strcmp0 (argv[1], "--get-only") == 0;
  gboolean store_only = get_only || (argc > 1 && g_strcmp0 (argv[1], "--store-only") == 0);
  Corpus corpus;
  double store_put[N_RUNS], store_get[N_RUNS], sqlite_put[N_RUNS], sqlite_get[N_RUNS];
  double json_get[N_RUNS], parsed_get[N_RUNS], floor_put[N_RUNS], floor_get[N_RUNS];
  double unlock[N_RUNS];
  g_autofree char *vault_dir = NULL;
  g_autofree char *vault_path = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree char *recovery_key = NULL;
  Figures unlock_figures;

  corpus_init (&corpus);
  g_print ("%u notes, %.0f bytes of JSON each on average, batches of %u; SQLite %s; best of %u "
           "runs, then the median\n",
           N_DOCS, (double)corpus.total_bytes / N_DOCS, BATCH, sqlite3_libversion (), N_RUNS);
  if (get_only)
    get_json_rounds = 20;
  if (store_only)
    {
      Timing store = run_store (&corpus);

      g_print ("store only: put %.0f docs/s, get %.0f docs/s, get (bytes) %.0f docs/s\n",
               N_DOCS / store.put_seconds, N_DOCS / store.get_seconds,
               N_DOCS / store.get_json_seconds);
      corpus_clear (&corpus);
      return 0;
    }

  for (guint run = 0; run < N_RUNS; run++)
    {
      Timing store = run_store (&corpus);
      Timing sqlite = run_sqlite (&corpus, FALSE);
      Timing sqlite_parsed = run_sqlite (&corpus, TRUE);
      Timing floor = run_floor (&corpus);

      store_put[run] = N_DOCS / store.put_seconds;
      store_get[run] = N_DOCS / store.get_seconds;
      json_get[run] = N_DOCS / store.get_json_seconds;
      sqlite_put[run] = N_DOCS / sqlite.put_seconds;
      sqlite_get[run] = N_DOCS / sqlite.get_seconds;
      parsed_get[run] = N_DOCS / sqlite_parsed.get_seconds;
      floor_put[run] = N_DOCS / floor.put_seconds;
      floor_get[run] = N_DOCS / floor.get_seconds;
      g_print ("  run %u: put store %.0f / sqlite %.0f docs/s, get (bytes) store %.0f / sqlite "
               "%.0f docs/s\n",
               run + 1, store_put[run], sqlite_put[run], json_get[run], sqlite_get[run]);
    }

  g_print ("The goal (store against plain SQLite, same bytes, same batches):\n");
  print_comparison ("put", store_put, sqlite_put, TRUE);
  print_comparison ("get", json_get, sqlite_get, TRUE);
  g_print ("Where the gap comes from:\n");
  print_comparison ("parsed get (hb_store_get_many_sync) against SQLite that also parses",
                    store_get, parsed_get, FALSE);
  print_comparison ("schema floor put (store schema, no crypto, no JSON) against SQLite", floor_put,
                    sqlite_put, FALSE);
  print_comparison ("schema floor get against SQLite", floor_get, sqlite_get, FALSE);
  print_comparison ("store put against the schema floor", store_put, floor_put, FALSE);
  print_comparison ("store get against the schema floor", json_get, floor_get, FALSE);

  /* Unlock with the library's default Argon2id parameters and no device secret. */
  vault_dir = hb_test_mkdtemp ();
  vault_path = g_build_filename (vault_dir, "vault.db", NULL);
  {
    g_autoptr (HbVault) vault = hb_vault_new (vault_path);

    hb_vault_create_sync (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET, &recovery_key, NULL,
                          &error);
    die_on_error ("create", error);
    hb_vault_lock (vault);
  }
  for (guint run = 0; run < N_RUNS; run++)
    unlock[run] = run_unlock (vault_path);
  unlock_figures = summarize (unlock, FALSE);
  g_print ("unlock (default KDF parameters, no device secret): best %.3f s, median %.3f s\n",
           unlock_figures.best, unlock_figures.median);
  hb_test_rmdir (vault_dir);

  corpus_clear (&corpus);
  return 0;
}
