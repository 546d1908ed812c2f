/* hb_keys(): the keys of a batch as rows, on its own and joined as the store's batch read
 * joins it. */

#include <sqlite3.h>
#include <string.h>

#include "hb-keys-vtab-private.h"

static sqlite3 *
open_db (void)
{
  sqlite3 *db = NULL;

  g_assert_cmpint (sqlite3_open (":memory:", &db), ==, SQLITE_OK);
  g_assert_cmpint (hb_keys_vtab_register (db), ==, SQLITE_OK);
  return db;
}

static sqlite3_stmt *
prepare (sqlite3 *db, const char *sql)
{
  sqlite3_stmt *stmt = NULL;

  if (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL) != SQLITE_OK)
    g_error ("%s: %s", sql, sqlite3_errmsg (db));
  return stmt;
}

static void
fill_keys (guint8 *keys, guint n)
{
  for (guint i = 0; i < n * HB_KEYS_KEY_LEN; i++)
    keys[i] = (guint8)(i * 7 + i / HB_KEYS_KEY_LEN);
}

static void
test_rows (void)
{
  sqlite3 *db = open_db ();
  sqlite3_stmt *stmt = prepare (db, "SELECT i, prefix, key FROM hb_keys(?1)");
  guint8 keys[5 * HB_KEYS_KEY_LEN];

  fill_keys (keys, 5);
  /* Run twice, the second time with fewer keys: each run sees only its own. */
  for (guint run = 0; run < 2; run++)
    {
      guint n = run == 0 ? 5 : 2, rows = 0;

      sqlite3_bind_blob (stmt, 1, keys + run * HB_KEYS_KEY_LEN, (int)(n * HB_KEYS_KEY_LEN),
                         SQLITE_TRANSIENT);
      while (sqlite3_step (stmt) == SQLITE_ROW)
        {
          const guint8 *key = keys + (run + rows) * HB_KEYS_KEY_LEN;

          g_assert_cmpint (sqlite3_column_int64 (stmt, 0), ==, rows);
          g_assert_cmpint (sqlite3_column_type (stmt, 1), ==, SQLITE_INTEGER);
          g_assert_cmpint (sqlite3_column_int64 (stmt, 1), ==, hb_keys_prefix (key));
          g_assert_cmpmem (sqlite3_column_blob (stmt, 2), sqlite3_column_bytes (stmt, 2), key,
                           HB_KEYS_KEY_LEN);
          rows++;
        }
      g_assert_cmpuint (rows, ==, n);
      sqlite3_reset (stmt);
    }
  sqlite3_finalize (stmt);
  sqlite3_close (db);
}

/* The values of one step for @sql with ?1 bound to @len bytes of @keys (or NULL), as a code. */
static int
step_with (sqlite3 *db, const char *sql, const guint8 *keys, int len)
{
  sqlite3_stmt *stmt = prepare (db, sql);
  int rc;

  if (keys != NULL)
    sqlite3_bind_blob (stmt, 1, keys, len, SQLITE_STATIC);
  rc = sqlite3_step (stmt);
  sqlite3_finalize (stmt);
  return rc;
}

static void
test_bad_arguments (void)
{
  sqlite3 *db = open_db ();
  sqlite3_stmt *stmt = NULL;
  guint8 keys[2 * HB_KEYS_KEY_LEN];

  fill_keys (keys, 2);
  /* No keys (NULL, or an empty blob): no rows. */
  g_assert_cmpint (step_with (db, "SELECT i FROM hb_keys(?1)", NULL, 0), ==, SQLITE_DONE);
  g_assert_cmpint (step_with (db, "SELECT i FROM hb_keys(?1)", keys, 0), ==, SQLITE_DONE);
  /* Not whole keys, or not a blob: an error that says so. */
  g_assert_cmpint (step_with (db, "SELECT i FROM hb_keys(?1)", keys, HB_KEYS_KEY_LEN + 1), ==,
                   SQLITE_ERROR);
  g_assert_nonnull (strstr (sqlite3_errmsg (db), "whole keys"));
  g_assert_cmpint (step_with (db, "SELECT i FROM hb_keys('text')", NULL, 0), ==, SQLITE_ERROR);
  g_assert_nonnull (strstr (sqlite3_errmsg (db), "blob of keys"));
  /* Without its argument it has nothing to give. */
  g_assert_cmpint (step_with (db, "SELECT i FROM hb_keys", NULL, 0), ==, SQLITE_DONE);
  /* It is a function of the connection, never a table in the file. */
  g_assert_cmpint (sqlite3_prepare_v2 (db, "CREATE VIRTUAL TABLE t USING hb_keys", -1, &stmt, NULL),
                   ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ERROR);
  sqlite3_finalize (stmt);
  sqlite3_close (db);
}

/* The prefix is the first eight bytes, big-endian, as a signed integer. */
static void
test_prefix (void)
{
  const guint8 high[8] = { 0x80, 0, 0, 0, 0, 0, 0, 1 };
  const guint8 low[8] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08 };
  const guint8 ones[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

  g_assert_cmpint (hb_keys_prefix (high), ==, G_MININT64 + 1);
  g_assert_cmpint (hb_keys_prefix (low), ==, 0x0102030405060708);
  g_assert_cmpint (hb_keys_prefix (ones), ==, -1);
}

/* The store's batch read: rows in the keys' order, a missing key giving no row, a key given
 * twice giving its row twice, through the index on the prefix (the plan says so). */
static void
test_join (void)
{
  sqlite3 *db = open_db ();
  sqlite3_stmt *insert = NULL;
  sqlite3_stmt *select = NULL;
  sqlite3_stmt *plan = NULL;
  guint8 stored[50 * HB_KEYS_KEY_LEN];
  guint8 wanted[4 * HB_KEYS_KEY_LEN];
  const guint picks[] = { 31, 7, 999, 31 };
  const char *sql = "SELECT d.seq, k.i FROM hb_keys(?1) AS k CROSS JOIN docs AS d"
                    " WHERE d.key_prefix = k.prefix AND d.doc_key = k.key";
  g_autoptr (GString) details = g_string_new (NULL);
  guint rows = 0;

  fill_keys (stored, 50);
  g_assert_cmpint (sqlite3_exec (db,
                                 "CREATE TABLE docs (seq INTEGER PRIMARY KEY, doc_key BLOB,"
                                 " key_prefix INTEGER);"
                                 "CREATE INDEX docs_key ON docs (key_prefix);",
                                 NULL, NULL, NULL),
                   ==, SQLITE_OK);
  insert = prepare (db, "INSERT INTO docs (seq, doc_key, key_prefix) VALUES (?1, ?2, ?3)");
  for (guint i = 0; i < 50; i++)
    {
      sqlite3_bind_int64 (insert, 1, 100 + i);
      sqlite3_bind_blob (insert, 2, stored + i * HB_KEYS_KEY_LEN, HB_KEYS_KEY_LEN, SQLITE_STATIC);
      sqlite3_bind_int64 (insert, 3, hb_keys_prefix (stored + i * HB_KEYS_KEY_LEN));
      g_assert_cmpint (sqlite3_step (insert), ==, SQLITE_DONE);
      sqlite3_reset (insert);
    }
  sqlite3_finalize (insert);
  for (guint i = 0; i < G_N_ELEMENTS (picks); i++)
    {
      if (picks[i] < 50)
        memcpy (wanted + i * HB_KEYS_KEY_LEN, stored + picks[i] * HB_KEYS_KEY_LEN, HB_KEYS_KEY_LEN);
      else
        memset (wanted + i * HB_KEYS_KEY_LEN, 0xee, HB_KEYS_KEY_LEN);
    }

  select = prepare (db, sql);
  sqlite3_bind_blob (select, 1, wanted, sizeof wanted, SQLITE_STATIC);
  while (sqlite3_step (select) == SQLITE_ROW)
    {
      static const gint64 expect_seq[] = { 131, 107, 131 };
      static const gint64 expect_i[] = { 0, 1, 3 };

      g_assert_cmpuint (rows, <, G_N_ELEMENTS (expect_seq));
      g_assert_cmpint (sqlite3_column_int64 (select, 0), ==, expect_seq[rows]);
      g_assert_cmpint (sqlite3_column_int64 (select, 1), ==, expect_i[rows]);
      rows++;
    }
  g_assert_cmpuint (rows, ==, 3);
  sqlite3_finalize (select);

  {
    g_autofree char *explain = g_strconcat ("EXPLAIN QUERY PLAN ", sql, NULL);

    plan = prepare (db, explain);
    while (sqlite3_step (plan) == SQLITE_ROW)
      g_string_append_printf (details, "%s\n", (const char *)sqlite3_column_text (plan, 3));
    sqlite3_finalize (plan);
  }
  g_assert_nonnull (strstr (details->str, "USING INDEX docs_key"));
  sqlite3_close (db);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/keys-vtab/prefix", test_prefix);
  g_test_add_func ("/keys-vtab/rows", test_rows);
  g_test_add_func ("/keys-vtab/bad-arguments", test_bad_arguments);
  g_test_add_func ("/keys-vtab/join", test_join);
  return g_test_run ();
}
