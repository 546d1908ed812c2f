/* The store's VFS (libhbsync/hb-wal-vfs.c): WAL writes gathered into few calls, and nothing a
 * second connection (default VFS) or a reopened file should see goes missing. */

#include <sqlite3.h>
#include <string.h>

#include "hb-test-utils.h"
#include "hb-wal-vfs-private.h"

#define ROW_BYTES 4000

typedef struct
{
  char *dir;
  char *path;
  sqlite3 *db;    /* through hbsync-wal */
  sqlite3 *other; /* the default VFS, as another program would open the file */
} Fixture;

static void
exec_ok (sqlite3 *db, const char *sql)
{
  char *message = NULL;

  if (sqlite3_exec (db, sql, NULL, NULL, &message) != SQLITE_OK)
    g_error ("%s: %s", sql, message);
}

static void
assert_integrity (sqlite3 *db)
{
  sqlite3_stmt *stmt = NULL;

  g_assert_cmpint (sqlite3_prepare_v2 (db, "PRAGMA integrity_check", -1, &stmt, NULL), ==,
                   SQLITE_OK);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
  g_assert_cmpstr ((const char *)sqlite3_column_text (stmt, 0), ==, "ok");
  sqlite3_finalize (stmt);
}

static sqlite3 *
open_db (const char *path, const char *vfs)
{
  sqlite3 *db = NULL;

  g_assert_cmpint (sqlite3_open_v2 (path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs), ==,
                   SQLITE_OK);
  exec_ok (db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0");
  return db;
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_assert_nonnull (hb_wal_vfs_name ());
  f->dir = hb_test_mkdtemp ();
  f->path = g_build_filename (f->dir, "wal.db", NULL);
  f->db = open_db (f->path, hb_wal_vfs_name ());
  exec_ok (f->db, "CREATE TABLE t (n INTEGER PRIMARY KEY, sum INTEGER, data BLOB)");
  f->other = open_db (f->path, NULL);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_assert_cmpint (sqlite3_close (f->other), ==, SQLITE_OK);
  if (f->db != NULL)
    g_assert_cmpint (sqlite3_close (f->db), ==, SQLITE_OK);
  hb_test_rmdir (f->dir);
  g_free (f->dir);
  g_free (f->path);
}

/* Inserts rows first..first+n-1, each ROW_BYTES of bytes derived from its number, whose sum is
 * stored beside them. */
static void
insert_rows (sqlite3 *db, gint64 first, guint n)
{
  sqlite3_stmt *stmt = NULL;
  guint8 data[ROW_BYTES];

  g_assert_cmpint (sqlite3_prepare_v2 (db, "INSERT INTO t VALUES (?, ?, ?)", -1, &stmt, NULL), ==,
                   SQLITE_OK);
  for (gint64 row = first; row < first + n; row++)
    {
      g_autoptr (GRand) rand = g_rand_new_with_seed ((guint32)row);
      gint64 sum = 0;

      for (guint i = 0; i < ROW_BYTES; i++)
        {
          data[i] = (guint8)g_rand_int (rand);
          sum += data[i];
        }
      sqlite3_bind_int64 (stmt, 1, row);
      sqlite3_bind_int64 (stmt, 2, sum);
      sqlite3_bind_blob (stmt, 3, data, ROW_BYTES, SQLITE_STATIC);
      g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_DONE);
      sqlite3_reset (stmt);
    }
  sqlite3_finalize (stmt);
}

/* Every row 1..n is there, whole, read through @db. */
static void
assert_rows (sqlite3 *db, gint64 n)
{
  sqlite3_stmt *stmt = NULL;
  gint64 seen = 0;

  g_assert_cmpint (
      sqlite3_prepare_v2 (db, "SELECT n, sum, data FROM t ORDER BY n", -1, &stmt, NULL), ==,
      SQLITE_OK);
  while (sqlite3_step (stmt) == SQLITE_ROW)
    {
      const guint8 *data = sqlite3_column_blob (stmt, 2);
      gint64 sum = 0;

      seen++;
      g_assert_cmpint (sqlite3_column_int64 (stmt, 0), ==, seen);
      g_assert_cmpint (sqlite3_column_bytes (stmt, 2), ==, ROW_BYTES);
      for (guint i = 0; i < ROW_BYTES; i++)
        sum += data[i];
      g_assert_cmpint (sum, ==, sqlite3_column_int64 (stmt, 1));
    }
  sqlite3_finalize (stmt);
  g_assert_cmpint (seen, ==, n);
}

/* A commit of ~100 pages reaches the real file in a handful of writes, not two per frame; and
 * another connection sees each commit whole as soon as it returns. */
static void
test_commits (Fixture *f, gconstpointer data)
{
  gint64 rows = 0;

  for (guint tx = 0; tx < 20; tx++)
    {
      guint before = _hb_wal_vfs_count_writes ();
      guint writes;

      exec_ok (f->db, "BEGIN IMMEDIATE");
      insert_rows (f->db, rows + 1, 100);
      exec_ok (f->db, "COMMIT");
      rows += 100;
      writes = _hb_wal_vfs_count_writes () - before;
      /* ~100 frames of 4 KiB + 24 bytes: four buffers' worth, plus the WAL header once. */
      g_assert_cmpuint (writes, >=, 1);
      g_assert_cmpuint (writes, <=, 8);
      assert_rows (f->other, rows);
    }
  assert_integrity (f->other);
}

/* A transaction bigger than the page cache spills frames into the WAL before its commit and
 * reads them back; a rolled-back one leaves nothing. */
static void
test_spill_and_rollback (Fixture *f, gconstpointer data)
{
  exec_ok (f->db, "PRAGMA cache_size=20");
  exec_ok (f->db, "BEGIN IMMEDIATE");
  insert_rows (f->db, 1, 500);
  assert_rows (f->db, 500);
  exec_ok (f->db, "ROLLBACK");
  assert_rows (f->db, 0);
  assert_rows (f->other, 0);

  exec_ok (f->db, "BEGIN IMMEDIATE");
  insert_rows (f->db, 1, 500);
  assert_rows (f->db, 500);
  exec_ok (f->db, "COMMIT");
  assert_rows (f->other, 500);
}

/* Checkpoints from the other connection, a WAL restarted from its start, then the file closed
 * and opened again. */
static void
test_restart_and_reopen (Fixture *f, gconstpointer data)
{
  gint64 rows = 0;

  for (guint round = 0; round < 5; round++)
    {
      exec_ok (f->db, "BEGIN IMMEDIATE");
      insert_rows (f->db, rows + 1, 60);
      exec_ok (f->db, "COMMIT");
      rows += 60;
      exec_ok (f->other, round % 2 == 0 ? "PRAGMA wal_checkpoint(RESTART)"
                                        : "PRAGMA wal_checkpoint(TRUNCATE)");
      assert_rows (f->other, rows);
      assert_rows (f->db, rows);
    }
  /* Uncheckpointed frames, then close: the WAL is written out and checkpointed on close. */
  exec_ok (f->db, "BEGIN IMMEDIATE");
  insert_rows (f->db, rows + 1, 60);
  exec_ok (f->db, "COMMIT");
  rows += 60;
  g_assert_cmpint (sqlite3_close (f->db), ==, SQLITE_OK);
  f->db = open_db (f->path, hb_wal_vfs_name ());
  assert_rows (f->db, rows);
  assert_rows (f->other, rows);
  assert_integrity (f->other);
}

/* The file says which VFS it is on, ours over the real one. */
static void
test_vfs_name (Fixture *f, gconstpointer data)
{
  char *name = NULL;

  g_assert_cmpint (sqlite3_file_control (f->db, "main", SQLITE_FCNTL_VFSNAME, &name), ==,
                   SQLITE_OK);
  g_assert_true (g_str_has_prefix (name, "hbsync-wal/"));
  sqlite3_free (name);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#define ADD(path, func)                                                                            \
  g_test_add ("/wal-vfs/" path, Fixture, NULL, fixture_setup, func, fixture_teardown)
  ADD ("commits", test_commits);
  ADD ("spill-and-rollback", test_spill_and_rollback);
  ADD ("restart-and-reopen", test_restart_and_reopen);
  ADD ("vfs-name", test_vfs_name);
#undef ADD
  return g_test_run ();
}
