/* Benchmark: HbStore against plain SQLite, and the cost of unlocking.
 *
 * 10,000 clinical notes of about 1 KB each are put in batches of 100 (hb_store_bulk_docs_sync,
 * new_edits) and read back in batches of 100: as bytes (hb_store_get_many_json_sync, the read
 * that compares with selecting bytes) and as parsed documents (hb_store_get_many_sync). The
 * baseline is plain SQLite in the same temporary directory, configured like the store (WAL,
 * synchronous=FULL), one transaction per batch of 100, table (id TEXT PRIMARY KEY, body BLOB),
 * inserting and selecting the same JSON bytes with no crypto. More rows explain the gap: plain
 * SQLite that also parses what it selects (the fair partner of a parsed read), plain SQLite
 * selecting through a second connection with the memory-mapped reads the store's readers use
 * (so the store's gain from that setting is not mistaken for its own work), and the "schema
 * floor", plain SQLite writing rows of the store's shape into the store's schema with no crypto
 * and no JSON.
 *
 * Within a run the sides take turns batch by batch (see run_interleaved()), each in its own
 * database, so that the moments this shared machine runs slow fall on all of them alike. Each
 * measurement runs 3 times; the best, the median and the ratio of each run are printed. The
 * goal is a store at no less than 0.7 of the baseline; nothing here asserts on speed.
 *
 * Run with `meson test -C BUILDDIR --benchmark -v`, or the bench-store binary directly
 * (`--store-only`: the store alone, once, for a profiler; `--get-only`: the same with the
 * bytes read done twenty times). */

#include <sqlite3.h>
#include <string.h>

#include "hb-keys-vtab-private.h"
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

static void
die_on_error (const char *what, const GError *error)
{
  if (error != NULL)
    g_error ("%s: %s", what, error->message);
}

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

/* Each side of the comparison is a lane with a database of its own, and the lanes take turns
 * batch by batch: batch b is put by every lane, in an order that rotates with b, before batch
 * b + 1 is put by any; then the same for the reads. So a slow second of this shared machine
 * falls on every lane alike instead of on whichever ran then, and the ratios hold from run to
 * run where the rates do not. Each lane times only its own calls (and the freeing of what they
 * return); the checks of what came back run outside the clock. */

/* HbStore */

typedef struct
{
  char *dir;
  HbStore *store;
  GPtrArray *batches; /* of GPtrArray of JsonNode: copies made before any clock */
  gint64 put_us, get_us, get_json_us;
} StoreLane;

static void
store_lane_open (StoreLane *l, const Corpus *corpus)
{
  memset (l, 0, sizeof *l);
  l->store = hb_test_store_new (&l->dir);
  l->batches = g_ptr_array_new_with_free_func ((GDestroyNotify)g_ptr_array_unref);
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    {
      GPtrArray *batch = g_ptr_array_new_full (BATCH, (GDestroyNotify)json_node_unref);

      for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
        g_ptr_array_add (batch, json_node_copy (g_ptr_array_index (corpus->docs, i)));
      g_ptr_array_add (l->batches, batch);
    }
}

static void
store_lane_put (StoreLane *l, guint b)
{
  g_autoptr (GError) error = NULL;
  GPtrArray *results;
  gint64 start = g_get_monotonic_time ();

  results
      = hb_store_bulk_docs_sync (l->store, g_ptr_array_index (l->batches, b), TRUE, NULL, &error);
  l->put_us += g_get_monotonic_time () - start;
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
  l->put_us += g_get_monotonic_time () - start;
}

static void
batch_ids (const Corpus *corpus, guint b, const char *ids[BATCH + 1])
{
  for (guint i = 0; i < BATCH; i++)
    ids[i] = g_ptr_array_index (corpus->ids, b * BATCH + i);
  ids[BATCH] = NULL;
}

/* hb_store_get_many_sync: parsed documents. */
static void
store_lane_get (StoreLane *l, const Corpus *corpus, guint b)
{
  g_autoptr (GError) error = NULL;
  const char *ids[BATCH + 1];
  GPtrArray *docs;
  gint64 start;

  batch_ids (corpus, b, ids);
  start = g_get_monotonic_time ();
  docs = hb_store_get_many_sync (l->store, ids, HB_GET_FLAGS_NONE, NULL, &error);
  l->get_us += g_get_monotonic_time () - start;
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
  l->get_us += g_get_monotonic_time () - start;
}

/* hb_store_get_many_json_sync: the documents as JSON bytes, the read the goal compares. */
static void
store_lane_get_json (StoreLane *l, const Corpus *corpus, guint b)
{
  g_autoptr (GError) error = NULL;
  const char *ids[BATCH + 1];
  GPtrArray *texts;
  gint64 start;

  batch_ids (corpus, b, ids);
  start = g_get_monotonic_time ();
  texts = hb_store_get_many_json_sync (l->store, ids, HB_GET_FLAGS_NONE, NULL, &error);
  l->get_json_us += g_get_monotonic_time () - start;
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
  l->get_json_us += g_get_monotonic_time () - start;
}

static void
store_lane_close (StoreLane *l)
{
  hb_store_close (l->store);
  g_clear_object (&l->store);
  g_clear_pointer (&l->batches, g_ptr_array_unref);
  hb_test_rmdir (l->dir);
  g_clear_pointer (&l->dir, g_free);
}

/* Plain SQLite: the same JSON bytes in (id TEXT PRIMARY KEY, body BLOB), configured like the
 * store (WAL, synchronous=FULL), one transaction per batch, no crypto. Its reads come plain
 * (bytes copied out, as a caller keeping them would) and parsed (each body through JSON-GLib:
 * the fair partner of hb_store_get_many_sync). */

typedef struct
{
  char *dir;
  sqlite3 *db;
  sqlite3_stmt *insert, *select;
  /* A second connection to the same file, reading with the store's memory-mapped I/O. */
  sqlite3 *mmap_db;
  sqlite3_stmt *mmap_select;
  JsonParser *parser;
  gsize checksum;
  gint64 put_us, get_us, parsed_get_us, mmap_get_us;
} SqlLane;

static void
sql_lane_open (SqlLane *l)
{
  g_autofree char *path = NULL;

  memset (l, 0, sizeof *l);
  l->dir = hb_test_mkdtemp ();
  path = g_build_filename (l->dir, "plain.db", NULL);
  if (sqlite3_open (path, &l->db) != SQLITE_OK)
    g_error ("sqlite3_open: %s", sqlite3_errmsg (l->db));
  sql_exec (l->db, "PRAGMA journal_mode=WAL");
  sql_exec (l->db, "PRAGMA synchronous=FULL");
  sql_exec (l->db, "CREATE TABLE docs (id TEXT PRIMARY KEY, body BLOB)");
  l->insert = sql_prepare (l->db, "INSERT INTO docs (id, body) VALUES (?1, ?2)");
  l->select = sql_prepare (l->db, "SELECT body FROM docs WHERE id = ?1");
  if (sqlite3_open (path, &l->mmap_db) != SQLITE_OK)
    g_error ("sqlite3_open: %s", sqlite3_errmsg (l->mmap_db));
  sql_exec (l->mmap_db, "PRAGMA mmap_size=268435456");
  l->mmap_select = sql_prepare (l->mmap_db, "SELECT body FROM docs WHERE id = ?1");
  l->parser = json_parser_new_immutable ();
}

static void
sql_lane_put (SqlLane *l, const Corpus *corpus, guint b)
{
  gint64 start = g_get_monotonic_time ();

  sql_exec (l->db, "BEGIN IMMEDIATE");
  for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
    {
      gsize len;
      const void *body = g_bytes_get_data (g_ptr_array_index (corpus->bodies, i), &len);

      sqlite3_bind_text (l->insert, 1, g_ptr_array_index (corpus->ids, i), -1, SQLITE_STATIC);
      sqlite3_bind_blob (l->insert, 2, body, len, SQLITE_STATIC);
      if (sqlite3_step (l->insert) != SQLITE_DONE)
        g_error ("insert: %s", sqlite3_errmsg (l->db));
      sqlite3_reset (l->insert);
    }
  sql_exec (l->db, "COMMIT");
  l->put_us += g_get_monotonic_time () - start;
}

/* Batch b selected through @db and @select, each body copied out (as a caller keeping the
 * document would) and, with @parser, parsed; returns the microseconds it took. */
static gint64
sql_read_batch (SqlLane *l,
                sqlite3 *db,
                sqlite3_stmt *select,
                const Corpus *corpus,
                guint b,
                JsonParser *parser)
{
  gint64 start = g_get_monotonic_time ();

  sql_exec (db, "BEGIN");
  for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
    {
      g_autoptr (GBytes) body = NULL;

      sqlite3_bind_text (select, 1, g_ptr_array_index (corpus->ids, i), -1, SQLITE_STATIC);
      if (sqlite3_step (select) != SQLITE_ROW)
        g_error ("select: %s", sqlite3_errmsg (db));
      body = g_bytes_new (sqlite3_column_blob (select, 0), sqlite3_column_bytes (select, 0));
      sqlite3_reset (select);
      l->checksum += g_bytes_get_size (body);
      if (parser != NULL)
        {
          g_autoptr (GError) error = NULL;
          gsize len;
          const char *data = g_bytes_get_data (body, &len);

          if (!json_parser_load_from_data (parser, data, len, &error))
            g_error ("parse: %s", error->message);
        }
    }
  sql_exec (db, "COMMIT");
  return g_get_monotonic_time () - start;
}

static void
sql_lane_get (SqlLane *l, const Corpus *corpus, guint b, gboolean parse_json)
{
  gint64 us = sql_read_batch (l, l->db, l->select, corpus, b, parse_json ? l->parser : NULL);

  *(parse_json ? &l->parsed_get_us : &l->get_us) += us;
}

/* The bytes read as sql_lane_get does, through the memory-mapped connection. */
static void
sql_lane_get_mmap (SqlLane *l, const Corpus *corpus, guint b)
{
  l->mmap_get_us += sql_read_batch (l, l->mmap_db, l->mmap_select, corpus, b, NULL);
}

static void
sql_lane_close (SqlLane *l, const Corpus *corpus)
{
  /* Read three times over: plain, parsed, and plain through the memory map. */
  g_assert_cmpuint (l->checksum, ==, 3 * corpus->total_bytes);
  sqlite3_finalize (l->insert);
  sqlite3_finalize (l->select);
  sqlite3_finalize (l->mmap_select);
  sqlite3_close (l->mmap_db);
  sqlite3_close (l->db);
  g_clear_object (&l->parser);
  hb_test_rmdir (l->dir);
  g_clear_pointer (&l->dir, g_free);
}

/* The floor under the store: plain SQLite with the store's schema and row shapes (a random
 * 32-byte row key found through the index on its first 8 bytes as an integer, a sealed-size record and body,
 * three blind-index columns with their partial indexes, the sequence kept in a meta row), the
 * same batches and no crypto, no JSON. What the store costs beyond this is its own work; what
 * this costs beyond the plain baseline is the price of the schema (bigger rows, four indexes
 * instead of one). */

typedef struct
{
  char *dir;
  sqlite3 *db;
  sqlite3_stmt *insert, *select, *seq_update;
  GRand *rand;
  GByteArray *keys;
  guint8 meta[150], macs[3][16];
  guint8 scratch[4096];
  gsize checksum;
  gint64 put_us, get_us;
} FloorLane;

static void
floor_lane_open (FloorLane *l)
{
  g_autofree char *path = NULL;

  memset (l, 0, sizeof *l);
  l->dir = hb_test_mkdtemp ();
  path = g_build_filename (l->dir, "floor.db", NULL);
  l->rand = g_rand_new_with_seed (7);
  l->keys = g_byte_array_new ();
  if (sqlite3_open (path, &l->db) != SQLITE_OK)
    g_error ("sqlite3_open: %s", sqlite3_errmsg (l->db));
  sql_exec (l->db, "PRAGMA journal_mode=WAL");
  sql_exec (l->db, "PRAGMA synchronous=FULL");
  sql_exec (l->db, "PRAGMA cache_size=-2048");
  sql_exec (l->db, "CREATE TABLE hb_meta (key TEXT PRIMARY KEY, value)");
  sql_exec (l->db, "INSERT INTO hb_meta VALUES ('update_seq', 0)");
  sql_exec (l->db,
            "CREATE TABLE docs (seq INTEGER PRIMARY KEY, doc_key BLOB NOT NULL,"
            " meta BLOB NOT NULL, type_mac BLOB, session_mac BLOB, patient_mac BLOB, body BLOB,"
            " key_prefix INTEGER)");
  sql_exec (l->db, "CREATE INDEX docs_key ON docs (key_prefix)");
  sql_exec (l->db, "CREATE INDEX docs_type ON docs (type_mac) WHERE type_mac IS NOT NULL");
  sql_exec (l->db, "CREATE INDEX docs_session ON docs (session_mac) WHERE session_mac IS NOT NULL");
  sql_exec (l->db, "CREATE INDEX docs_patient ON docs (patient_mac) WHERE patient_mac IS NOT NULL");
  l->insert = sql_prepare (l->db, "INSERT INTO docs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
  l->select
      = sql_prepare (l->db, "SELECT seq, doc_key, meta, type_mac, session_mac, patient_mac, body"
                            " FROM docs WHERE key_prefix = ?2 AND doc_key = ?1");
  l->seq_update = sql_prepare (l->db, "UPDATE hb_meta SET value = ?1 WHERE key = 'update_seq'");
  for (guint i = 0; i < N_DOCS * 32; i++)
    {
      guint8 byte = (guint8)g_rand_int (l->rand);
      g_byte_array_append (l->keys, &byte, 1);
    }
  memset (l->meta, 0x5a, sizeof l->meta);
  memset (l->macs, 0x11, sizeof l->macs);
}

static void
floor_lane_put (FloorLane *l, const Corpus *corpus, guint b)
{
  gint64 start = g_get_monotonic_time ();

  sql_exec (l->db, "BEGIN IMMEDIATE");
  for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
    {
      gsize len;
      const guint8 *body = g_bytes_get_data (g_ptr_array_index (corpus->bodies, i), &len);

      g_assert (len + 28 <= sizeof l->scratch);
      memcpy (l->scratch, body, len);
      memset (l->scratch + len, 0, 28);
      /* A session every ten notes, a patient every thirty, as in the corpus; random values,
       * as HMACs are, so each lands at a random place in its index. */
      for (guint f = 1; f < 3 && i % (f == 1 ? 10 : 30) == 0; f++)
        for (guint k = 0; k < 16; k++)
          l->macs[f][k] = (guint8)g_rand_int (l->rand);
      sqlite3_bind_int64 (l->insert, 1, i + 1);
      sqlite3_bind_blob (l->insert, 2, l->keys->data + 32 * i, 32, SQLITE_STATIC);
      sqlite3_bind_blob (l->insert, 3, l->meta, sizeof l->meta, SQLITE_STATIC);
      for (guint f = 0; f < 3; f++)
        sqlite3_bind_blob (l->insert, 4 + f, l->macs[f], 16, SQLITE_STATIC);
      sqlite3_bind_blob (l->insert, 7, l->scratch, len + 28, SQLITE_STATIC);
      sqlite3_bind_int64 (l->insert, 8, hb_keys_prefix (l->keys->data + 32 * i));
      if (sqlite3_step (l->insert) != SQLITE_DONE)
        g_error ("insert: %s", sqlite3_errmsg (l->db));
      sqlite3_reset (l->insert);
    }
  sqlite3_bind_int64 (l->seq_update, 1, (b + 1) * BATCH);
  if (sqlite3_step (l->seq_update) != SQLITE_DONE)
    g_error ("update: %s", sqlite3_errmsg (l->db));
  sqlite3_reset (l->seq_update);
  sql_exec (l->db, "COMMIT");
  l->put_us += g_get_monotonic_time () - start;
}

static void
floor_lane_get (FloorLane *l, guint b)
{
  gint64 start = g_get_monotonic_time ();

  sql_exec (l->db, "BEGIN");
  for (guint i = b * BATCH; i < (b + 1) * BATCH; i++)
    {
      g_autoptr (GBytes) body = NULL;

      sqlite3_bind_blob (l->select, 1, l->keys->data + 32 * i, 32, SQLITE_STATIC);
      sqlite3_bind_int64 (l->select, 2, hb_keys_prefix (l->keys->data + 32 * i));
      if (sqlite3_step (l->select) != SQLITE_ROW)
        g_error ("select: %s", sqlite3_errmsg (l->db));
      body = g_bytes_new (sqlite3_column_blob (l->select, 6), sqlite3_column_bytes (l->select, 6));
      sqlite3_reset (l->select);
      l->checksum += g_bytes_get_size (body) - 28;
    }
  sql_exec (l->db, "COMMIT");
  l->get_us += g_get_monotonic_time () - start;
}

static void
floor_lane_close (FloorLane *l, const Corpus *corpus)
{
  g_assert_cmpuint (l->checksum, ==, corpus->total_bytes);
  sqlite3_finalize (l->insert);
  sqlite3_finalize (l->select);
  sqlite3_finalize (l->seq_update);
  sqlite3_close (l->db);
  g_rand_free (l->rand);
  g_byte_array_unref (l->keys);
  hb_test_rmdir (l->dir);
  g_clear_pointer (&l->dir, g_free);
}

typedef struct
{
  double store_put, store_get, store_get_json;
  double sqlite_put, sqlite_get, sqlite_parsed_get, sqlite_mmap_get;
  double floor_put, floor_get;
} Rates;

static double
rate (gint64 us)
{
  return N_DOCS / (us / (double)G_USEC_PER_SEC);
}

/* One run: the three writers take turns batch by batch, then the six readers. */
static Rates
run_interleaved (const Corpus *corpus)
{
  StoreLane store;
  SqlLane sql;
  FloorLane floor;
  Rates r;

  store_lane_open (&store, corpus);
  sql_lane_open (&sql);
  floor_lane_open (&floor);
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    for (guint k = 0; k < 3; k++)
      switch ((b + k) % 3)
        {
          case 0:
            store_lane_put (&store, b);
            break;
          case 1:
            sql_lane_put (&sql, corpus, b);
            break;
          default:
            floor_lane_put (&floor, corpus, b);
            break;
        }
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    for (guint k = 0; k < 6; k++)
      switch ((b + k) % 6)
        {
          case 0:
            store_lane_get_json (&store, corpus, b);
            break;
          case 1:
            sql_lane_get (&sql, corpus, b, FALSE);
            break;
          case 2:
            store_lane_get (&store, corpus, b);
            break;
          case 3:
            sql_lane_get (&sql, corpus, b, TRUE);
            break;
          case 4:
            sql_lane_get_mmap (&sql, corpus, b);
            break;
          default:
            floor_lane_get (&floor, b);
            break;
        }
  r.store_put = rate (store.put_us);
  r.store_get = rate (store.get_us);
  r.store_get_json = rate (store.get_json_us);
  r.sqlite_put = rate (sql.put_us);
  r.sqlite_get = rate (sql.get_us);
  r.sqlite_parsed_get = rate (sql.parsed_get_us);
  r.sqlite_mmap_get = rate (sql.mmap_get_us);
  r.floor_put = rate (floor.put_us);
  r.floor_get = rate (floor.get_us);
  store_lane_close (&store);
  sql_lane_close (&sql, corpus);
  floor_lane_close (&floor, corpus);
  return r;
}

/* --store-only and --get-only: the store alone, for a profiler; --get-only reads every document
 * twenty times as bytes, so that this read dominates the profile. */
static void
run_store_alone (const Corpus *corpus, guint get_json_rounds)
{
  StoreLane store;

  store_lane_open (&store, corpus);
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    store_lane_put (&store, b);
  for (guint b = 0; b < N_DOCS / BATCH; b++)
    store_lane_get (&store, corpus, b);
  for (guint round = 0; round < get_json_rounds; round++)
    for (guint b = 0; b < N_DOCS / BATCH; b++)
      store_lane_get_json (&store, corpus, b);
  g_print ("store only: put %.0f docs/s, get %.0f docs/s, get (bytes) %.0f docs/s\n",
           rate (store.put_us), rate (store.get_us), rate (store.get_json_us / get_json_rounds));
  store_lane_close (&store);
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

/* Prints a against b: best figures and their ratio, then the medians, then the ratio run by
 * run (the two sides of one run shared its batches' moments, so this one holds best). */
static void
print_comparison (const char *what, const double *a_rates, const double *b_rates, gboolean goal)
{
  Figures a = summarize (a_rates, TRUE);
  Figures b = summarize (b_rates, TRUE);
  double ratio = a.best / b.best;
  double paired[N_RUNS];
  Figures pairs;

  for (guint run = 0; run < N_RUNS; run++)
    paired[run] = a_rates[run] / b_rates[run];
  pairs = summarize (paired, TRUE);
  g_print ("  %s: %.0f vs %.0f docs/s, ratio %.2f", what, a.best, b.best, ratio);
  if (goal)
    g_print (" (goal >= %.2f)%s", GOAL, ratio >= GOAL ? "" : "  BELOW GOAL");
  g_print ("; medians %.0f vs %.0f, ratio %.2f; run by run", a.median, b.median,
           a.median / b.median);
  for (guint run = 0; run < N_RUNS; run++)
    g_print (" %.2f", paired[run]);
  g_print (", median %.2f\n", pairs.median);
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
  double mmap_get[N_RUNS];
  double unlock[N_RUNS];
  g_autofree char *vault_dir = NULL;
  g_autofree char *vault_path = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree char *recovery_key = NULL;
  Figures unlock_figures;

  corpus_init (&corpus);
  g_print ("%u notes, %.0f bytes of JSON each on average, batches of %u; SQLite %s; best of %u "
           "runs, then the median; each run interleaves the store, plain SQLite and the schema "
           "floor batch by batch\n",
           N_DOCS, (double)corpus.total_bytes / N_DOCS, BATCH, sqlite3_libversion (), N_RUNS);
  if (store_only)
    {
      run_store_alone (&corpus, get_only ? 20 : 1);
      corpus_clear (&corpus);
      return 0;
    }

  for (guint run = 0; run < N_RUNS; run++)
    {
      Rates r = run_interleaved (&corpus);

      store_put[run] = r.store_put;
      store_get[run] = r.store_get;
      json_get[run] = r.store_get_json;
      sqlite_put[run] = r.sqlite_put;
      sqlite_get[run] = r.sqlite_get;
      parsed_get[run] = r.sqlite_parsed_get;
      mmap_get[run] = r.sqlite_mmap_get;
      floor_put[run] = r.floor_put;
      floor_get[run] = r.floor_get;
      g_print ("  run %u: put store %.0f / sqlite %.0f docs/s (%.2f), get (bytes) store %.0f / "
               "sqlite %.0f docs/s (%.2f)\n",
               run + 1, store_put[run], sqlite_put[run], store_put[run] / sqlite_put[run],
               json_get[run], sqlite_get[run], json_get[run] / sqlite_get[run]);
    }

  g_print ("The goal (store against plain SQLite, same bytes, same batches):\n");
  print_comparison ("put", store_put, sqlite_put, TRUE);
  print_comparison ("get", json_get, sqlite_get, TRUE);
  g_print ("Where the gap comes from:\n");
  print_comparison ("parsed get (hb_store_get_many_sync) against SQLite that also parses",
                    store_get, parsed_get, FALSE);
  print_comparison ("schema floor put (store schema, no crypto, no JSON) against SQLite", floor_put,
                    sqlite_put, FALSE);
  print_comparison ("get against SQLite reading with the store's memory map (mmap_size)", json_get,
                    mmap_get, FALSE);
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
