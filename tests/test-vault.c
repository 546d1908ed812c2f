/* HbVault: PIN, attempt counter and delay, lockout, recovery key, PIN change, device secret.
 *
 * Vaults here use fast Argon2id parameters (8 MiB, 1 iteration) except where the parameters are
 * the point. The device-secret test needs a Secret Service: the suite runs inside
 * dbus-run-session with gnome-keyring-daemon started.
 */

#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <glib/gstdio.h>
#include <libsecret/secret.h>
#include <sqlite3.h>

#include "hb-test-utils.h"
#include "hb-vault-private.h"

#define FAST_M_COST 8192
#define NEW_PIN "24681357"
#define WRONG_PIN "654321"
#define RECOVERY_KEY_PATTERN "^[A-Z2-7]{4}(-[A-Z2-7]{4}){12}$"

/* The same schema the vault stores its device secret under; part of the design, so that
 * administrators can find and remove it. */
static const SecretSchema device_secret_schema = {
  "org.healthbridge.Sync.DeviceSecret",
  SECRET_SCHEMA_NONE,
  {
      { "vault-uuid", SECRET_SCHEMA_ATTRIBUTE_STRING },
      { NULL, 0 },
  },
};

typedef struct
{
  char *dir;
  char *path;
  gint64 now;
} Fixture;

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  f->dir = hb_test_mkdtemp ();
  f->path = g_build_filename (f->dir, "store.db", NULL);
  f->now = G_GINT64_CONSTANT (1700000000) * G_USEC_PER_SEC;
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  hb_test_rmdir (f->dir);
  g_free (f->dir);
  g_free (f->path);
}

static gint64
test_clock (gpointer user_data)
{
  return *(gint64 *)user_data;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading and altering the vault row behind the vault's back                                 */

static sqlite3 *
db_open (const char *path)
{
  sqlite3 *db = NULL;

  g_assert_cmpint (sqlite3_open_v2 (path, &db, SQLITE_OPEN_READWRITE, NULL), ==, SQLITE_OK);
  sqlite3_busy_timeout (db, 10000);
  return db;
}

static sqlite3_stmt *
row_select (sqlite3 *db, const char *column)
{
  g_autofree char *sql = g_strdup_printf ("SELECT %s FROM hb_vault WHERE id = 1", column);
  sqlite3_stmt *stmt = NULL;

  g_assert_cmpint (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
  return stmt;
}

static gint64
row_int (const char *path, const char *column)
{
  sqlite3 *db = db_open (path);
  sqlite3_stmt *stmt = row_select (db, column);
  gint64 value = sqlite3_column_int64 (stmt, 0);

  sqlite3_finalize (stmt);
  sqlite3_close (db);
  return value;
}

static GBytes *
row_blob (const char *path, const char *column)
{
  sqlite3 *db = db_open (path);
  sqlite3_stmt *stmt = row_select (db, column);
  GBytes *value = g_bytes_new (sqlite3_column_blob (stmt, 0), sqlite3_column_bytes (stmt, 0));

  sqlite3_finalize (stmt);
  sqlite3_close (db);
  return value;
}

static char *
row_text (const char *path, const char *column)
{
  sqlite3 *db = db_open (path);
  sqlite3_stmt *stmt = row_select (db, column);
  char *value = g_strdup ((const char *)sqlite3_column_text (stmt, 0));

  sqlite3_finalize (stmt);
  sqlite3_close (db);
  return value;
}

static void
flip_blob_byte (const char *path, const char *column, gsize index)
{
  g_autoptr (GBytes) value = row_blob (path, column);
  g_autofree guint8 *bytes = g_memdup2 (g_bytes_get_data (value, NULL), g_bytes_get_size (value));
  g_autofree char *sql = g_strdup_printf ("UPDATE hb_vault SET %s = ?1 WHERE id = 1", column);
  sqlite3 *db = db_open (path);
  sqlite3_stmt *stmt = NULL;

  g_assert_cmpuint (index, <, g_bytes_get_size (value));
  bytes[index] ^= 0x01;
  g_assert_cmpint (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL), ==, SQLITE_OK);
  sqlite3_bind_blob (stmt, 1, bytes, g_bytes_get_size (value), SQLITE_TRANSIENT);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_DONE);
  sqlite3_finalize (stmt);
  sqlite3_close (db);
}

/* Every row of a table, as one string, to show it did not change. */
static char *
table_dump (const char *path, const char *table)
{
  g_autofree char *sql = g_strdup_printf ("SELECT * FROM %s ORDER BY rowid", table);
  GString *dump = g_string_new (NULL);
  sqlite3 *db = db_open (path);
  sqlite3_stmt *stmt = NULL;

  g_assert_cmpint (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL), ==, SQLITE_OK);
  while (sqlite3_step (stmt) == SQLITE_ROW)
    {
      for (int i = 0; i < sqlite3_column_count (stmt); i++)
        {
          const guint8 *bytes = sqlite3_column_blob (stmt, i);
          int len = sqlite3_column_bytes (stmt, i);

          for (int j = 0; j < len; j++)
            g_string_append_printf (dump, "%02x", bytes[j]);
          g_string_append_c (dump, i + 1 < sqlite3_column_count (stmt) ? '|' : '\n');
        }
    }
  sqlite3_finalize (stmt);
  sqlite3_close (db);
  return g_string_free (dump, FALSE);
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

/* Where a test that has no use for the recovery key puts it (the API requires a place). */
static char **
recovery_sink (void)
{
  static char *sink;

  g_clear_pointer (&sink, g_free);
  return &sink;
}

static HbVault *
fast_vault_new (const char *path, HbVaultFlags flags, char **out_recovery)
{
  g_autoptr (GError) error = NULL;
  HbVault *vault = hb_vault_new (path);

  hb_vault_set_kdf_params (vault, FAST_M_COST, 1, 1);
  hb_vault_create_sync (vault, HB_TEST_PIN, flags, out_recovery ? out_recovery : recovery_sink (),
                        NULL, &error);
  g_assert_no_error (error);
  return vault;
}

static void
derive (HbVault *vault, const char *purpose, guint8 out[HB_KEY_LEN])
{
  g_autoptr (GError) error = NULL;

  g_assert_true (_hb_vault_derive_key (vault, purpose, out, &error));
  g_assert_no_error (error);
}

static void
count_notify (guint *counter)
{
  (*counter)++;
}

static void
assert_error_contains (const GError *error, int code, const char *text)
{
  g_assert_error (error, HB_VAULT_ERROR, code);
  if (strstr (error->message, text) == NULL)
    g_error ("“%s” does not contain “%s”", error->message, text);
}

static char *
wrong_attempts_left (guint left)
{
  return g_strdup_printf ("%u attempt%s left", left, left == 1 ? "" : "s");
}

/* ------------------------------------------------------------------------------------------ */

static void
test_create_unlock_lock (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (f->path);
  g_autoptr (HbVault) other = NULL;
  g_autofree char *recovery = NULL;
  guint8 key[HB_KEY_LEN], again[HB_KEY_LEN], other_purpose[HB_KEY_LEN];
  guint notifies = 0;
  GStatBuf st;

  /* Nothing exists yet, and asking does not create the file. */
  g_assert_false (hb_vault_exists (vault));
  g_assert_false (g_file_test (f->path, G_FILE_TEST_EXISTS));
  g_assert_true (hb_vault_get_locked (vault));
  g_assert_cmpstr (hb_vault_get_path (vault), ==, f->path);
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND);
  g_clear_error (&error);
  g_assert_false (_hb_vault_derive_key (vault, "test", key, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED);
  g_clear_error (&error);

  g_signal_connect_swapped (vault, "notify::locked", G_CALLBACK (count_notify), &notifies);
  hb_vault_set_kdf_params (vault, FAST_M_COST, 1, 1);
  g_assert_true (hb_vault_create_sync (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                       &recovery, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (g_regex_match_simple (RECOVERY_KEY_PATTERN, recovery, 0, 0));
  g_assert_cmpuint (notifies, ==, 1);
  g_assert_false (hb_vault_get_locked (vault));
  g_assert_true (hb_vault_exists (vault));
  g_assert_false (hb_vault_get_uses_device_secret (vault));
  g_assert_cmpuint (_hb_vault_get_key_id (vault), ==, 1);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
  g_assert_cmpuint (hb_vault_get_attempts_left (vault), ==, HB_VAULT_MAX_FAILED_ATTEMPTS);
  g_assert_cmpint (hb_vault_get_retry_after (vault), ==, 0);
  g_assert_cmpfloat (hb_vault_get_last_unlock_seconds (vault), >, 0);

  /* The file holds clinical data: owner-only. */
  g_assert_cmpint (g_stat (f->path, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);

  /* The parameters are stored with the vault. */
  g_assert_cmpint (row_int (f->path, "kdf_m_cost_kib"), ==, FAST_M_COST);
  g_assert_cmpint (row_int (f->path, "kdf_t_cost"), ==, 1);
  g_assert_cmpint (row_int (f->path, "kdf_parallelism"), ==, 1);
  g_assert_cmpint (row_int (f->path, "uses_device_secret"), ==, 0);

  derive (vault, "test", key);
  derive (vault, "other", other_purpose);
  g_assert_false (memcmp (key, other_purpose, HB_KEY_LEN) == 0);

  hb_vault_lock (vault);
  g_assert_true (hb_vault_get_locked (vault));
  g_assert_cmpuint (notifies, ==, 2);
  hb_vault_lock (vault);
  g_assert_cmpuint (notifies, ==, 2);
  g_assert_false (_hb_vault_derive_key (vault, "test", again, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED);
  g_clear_error (&error);

  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (notifies, ==, 3);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);

  /* Unlocking an unlocked vault checks the PIN but changes no state. */
  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (notifies, ==, 3);

  /* A second object on the same file reads the same vault. */
  other = hb_vault_new (f->path);
  g_assert_true (hb_vault_exists (other));
  g_assert_true (hb_vault_get_locked (other));
  g_assert_true (hb_vault_unlock_sync (other, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  derive (other, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);

  /* A vault is never overwritten. */
  g_assert_false (hb_vault_create_sync (other, "11112222", HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                        recovery_sink (), NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_EXISTS);
  g_clear_error (&error);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);
}

static void
test_wrong_pin (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NO_DEVICE_SECRET, NULL);
  g_autoptr (HbVault) other = NULL;
  guint notifies = 0;
  guint value = 99;

  hb_vault_lock (vault);
  g_signal_connect_swapped (vault, "notify::failed-attempts", G_CALLBACK (count_notify), &notifies);

  g_assert_false (hb_vault_unlock_sync (vault, WRONG_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, "9 attempts left");
  g_clear_error (&error);
  g_assert_true (hb_vault_get_locked (vault));
  g_assert_cmpuint (notifies, ==, 1);
  g_object_get (vault, "failed-attempts", &value, NULL);
  g_assert_cmpuint (value, ==, 1);
  g_assert_cmpuint (hb_vault_get_attempts_left (vault), ==, 9);
  /* On disk, not only in this object. */
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, 1);
  other = hb_vault_new (f->path);
  g_assert_cmpuint (hb_vault_get_failed_attempts (other), ==, 1);

  g_assert_false (hb_vault_unlock_sync (other, WRONG_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, "8 attempts left");
  g_clear_error (&error);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 2);
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, 2);

  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  g_assert_false (hb_vault_get_locked (vault));
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
  g_assert_cmpuint (hb_vault_get_failed_attempts (other), ==, 0);
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, 0);
  /* 1 → 0 (the other object's failure was not this one's change to announce). */
  g_assert_cmpuint (notifies, ==, 2);
}

/* Run by test_counted_before_derivation() in a child process that it kills. */
static int
unlock_child (const char *path)
{
  g_autoptr (HbVault) vault = hb_vault_new (path);

  return hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, NULL) ? 0 : 1;
}

static void
test_counted_before_derivation (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (f->path);
  g_autofree char *self_exe = g_file_read_link ("/proc/self/exe", NULL);
  const char *argv[] = { self_exe, "--unlock-child", f->path, NULL };
  gint64 deadline;
  GPid pid;
  int status = 0;

  /* Slow enough that the child is surely still deriving when it is killed. */
  hb_vault_set_kdf_params (vault, 131072, 3, 1);
  g_assert_true (hb_vault_create_sync (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                       recovery_sink (), NULL, &error));
  g_assert_no_error (error);
  g_test_message ("creating with 128 MiB, t=3 took %.3f s",
                  hb_vault_get_last_unlock_seconds (vault));
  hb_vault_lock (vault);

  /* The child unlocks with the RIGHT PIN; had it finished, the counter would be back at 0. */
  g_assert_nonnull (self_exe);
  g_assert_true (g_spawn_async (NULL, (char **)argv, NULL,
                                G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL,
                                &pid, &error));
  g_assert_no_error (error);
  deadline = g_get_monotonic_time () + 60 * G_USEC_PER_SEC;
  while (row_int (f->path, "failed_attempts") == 0 && g_get_monotonic_time () < deadline)
    g_usleep (1000);
  g_assert_cmpint (waitpid (pid, &status, WNOHANG), ==, 0);
  g_assert_cmpint (kill (pid, SIGKILL), ==, 0);
  g_assert_cmpint (waitpid (pid, &status, 0), ==, pid);
  g_spawn_close_pid (pid);
  g_assert_true (WIFSIGNALED (status));

  /* The attempt the child started stays counted. */
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, 1);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 1);

  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, 0);
}

static void
test_escalating_delay (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NO_DEVICE_SECRET, NULL);
  double derivation;

  _hb_vault_set_clock_for_testing (vault, test_clock, &f->now);
  hb_vault_lock (vault);

  /* Three free failures. */
  for (guint n = 1; n <= 3; n++)
    {
      g_autofree char *left = wrong_attempts_left (HB_VAULT_MAX_FAILED_ATTEMPTS - n);

      g_assert_false (hb_vault_unlock_sync (vault, WRONG_PIN, NULL, &error));
      assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, left);
      g_clear_error (&error);
      g_assert_cmpint (hb_vault_get_retry_after (vault), ==, 0);
    }

  /* Then 1, 2, 4, 8, 16, 32 s. */
  for (guint n = 4; n <= 9; n++)
    {
      g_autofree char *left = wrong_attempts_left (HB_VAULT_MAX_FAILED_ATTEMPTS - n);
      gint64 delay = (gint64)G_USEC_PER_SEC << (n - 4);
      g_autofree char *wait = g_strdup_printf ("%d second", (int)(delay / G_USEC_PER_SEC));

      g_assert_false (hb_vault_unlock_sync (vault, WRONG_PIN, NULL, &error));
      assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, left);
      g_clear_error (&error);
      g_assert_cmpint (hb_vault_get_retry_after (vault), ==, f->now + delay);
      derivation = hb_vault_get_last_unlock_seconds (vault);

      /* Too soon, even with the right PIN: refused, not counted, no derivation run. */
      g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
      assert_error_contains (error, HB_VAULT_ERROR_TOO_SOON, wait);
      g_clear_error (&error);
      g_assert_true (hb_vault_get_locked (vault));
      g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, n);
      g_assert_true (hb_vault_get_last_unlock_seconds (vault) == derivation);

      f->now += delay - 1;
      g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
      assert_error_contains (error, HB_VAULT_ERROR_TOO_SOON, "1 second");
      g_clear_error (&error);
      g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, n);

      f->now += 1;
      g_assert_cmpint (hb_vault_get_retry_after (vault), ==, 0);
    }

  /* A clock set back does not stretch the delay to the old time: it restarts from now. */
  f->now -= G_GINT64_CONSTANT (3600) * G_USEC_PER_SEC;
  g_assert_cmpint (hb_vault_get_retry_after (vault), ==, f->now + 32 * G_USEC_PER_SEC);
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_TOO_SOON, "32 seconds");
  g_clear_error (&error);
  f->now += 32 * G_USEC_PER_SEC;
  g_assert_cmpint (hb_vault_get_retry_after (vault), ==, 0);

  /* The right PIN, on the last attempt, clears everything. */
  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
  g_assert_cmpint (hb_vault_get_retry_after (vault), ==, 0);
}

/* A string that decodes as a recovery key shape-wise, from a real one with a few characters
 * changed; its check nibble may or may not still match. */
static char *
mutate_recovery_key (const char *key)
{
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  char *copy = g_strdup (key);
  gsize len = strlen (copy);

  for (int i = 0; i < 3; i++)
    {
      gsize at = g_test_rand_int_range (0, len);

      if (copy[at] != '-')
        copy[at]
            = alphabet[(strchr (alphabet, copy[at]) - alphabet + 1 + g_test_rand_int_range (0, 31))
                       % 32];
    }
  return copy;
}

static void
test_lockout_and_recovery (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *recovery = NULL;
  g_autoptr (HbVault) vault = NULL;
  g_autoptr (HbVault) other = NULL;
  g_autoptr (GBytes) recovery_slot = NULL;
  g_autoptr (GBytes) recovery_slot_after = NULL;
  g_autofree char *lowered = NULL;
  guint8 key[HB_KEY_LEN], again[HB_KEY_LEN];
  gboolean saw_typo = FALSE, saw_wrong = FALSE;
  static const char *const malformed[] = {
    "",
    "ABCD-EFGH",
    "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567-ABCD-EFGH-IJKL-MNOP-QRST-UVWX",
    "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567-ABCD-EFGH-IJKL-MNOP-QRS1",
    "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567-ABCD-EFGH-IJKL-MNOP-QRS=",
  };

  vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NO_DEVICE_SECRET, &recovery);
  _hb_vault_set_clock_for_testing (vault, test_clock, &f->now);
  derive (vault, "test", key);
  recovery_slot = row_blob (f->path, "recovery_slot");
  hb_vault_lock (vault);

  for (guint n = 1; n <= HB_VAULT_MAX_FAILED_ATTEMPTS; n++)
    {
      f->now += G_GINT64_CONSTANT (3600) * G_USEC_PER_SEC;
      g_assert_false (hb_vault_unlock_sync (vault, WRONG_PIN, NULL, &error));
      g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN);
      if (n == HB_VAULT_MAX_FAILED_ATTEMPTS)
        assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, "recovery key");
      g_clear_error (&error);
    }

  /* Locked out: the right PIN no longer works, however long one waits, and is not counted. */
  f->now += 24 * G_GINT64_CONSTANT (3600) * G_USEC_PER_SEC;
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_LOCKED_OUT, "recovery key");
  g_clear_error (&error);
  g_assert_true (hb_vault_get_locked (vault));
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, HB_VAULT_MAX_FAILED_ATTEMPTS);
  g_assert_cmpuint (hb_vault_get_attempts_left (vault), ==, 0);
  g_assert_cmpint (hb_vault_get_retry_after (vault), ==, G_MAXINT64);
  other = hb_vault_new (f->path);
  g_assert_false (hb_vault_unlock_sync (other, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED_OUT);
  g_clear_error (&error);
  g_assert_false (hb_vault_change_pin_sync (other, HB_TEST_PIN, NEW_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED_OUT);
  g_clear_error (&error);
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, HB_VAULT_MAX_FAILED_ATTEMPTS);

  /* Malformed recovery keys. */
  for (gsize i = 0; i < G_N_ELEMENTS (malformed); i++)
    {
      g_assert_false (hb_vault_recover_sync (vault, malformed[i], NEW_PIN, NULL, &error));
      g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_BAD_RECOVERY_KEY);
      g_clear_error (&error);
    }

  /* Mistyped keys: most fail the check bits (malformed), the rest are simply wrong. */
  for (int i = 0; i < 2000 && !(saw_typo && saw_wrong); i++)
    {
      g_autofree char *typo = mutate_recovery_key (recovery);

      if (strcmp (typo, recovery) == 0)
        continue;
      g_assert_false (hb_vault_recover_sync (vault, typo, NEW_PIN, NULL, &error));
      if (g_error_matches (error, HB_VAULT_ERROR, HB_VAULT_ERROR_BAD_RECOVERY_KEY))
        saw_typo = TRUE;
      else
        {
          assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, "Wrong recovery key");
          saw_wrong = TRUE;
        }
      g_clear_error (&error);
    }
  g_assert_true (saw_typo);
  g_assert_true (saw_wrong);
  g_assert_true (hb_vault_get_locked (vault));
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, HB_VAULT_MAX_FAILED_ATTEMPTS);

  /* A weak new PIN is refused before anything changes. */
  g_assert_false (hb_vault_recover_sync (vault, recovery, "12", NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WEAK_PIN);
  g_clear_error (&error);
  g_assert_true (hb_vault_get_locked (vault));

  /* The real key, as a user might type it: lower case, spaces instead of dashes. */
  lowered = g_ascii_strdown (recovery, -1);
  g_strdelimit (lowered, "-", ' ');
  g_assert_true (hb_vault_recover_sync (vault, lowered, NEW_PIN, NULL, &error));
  g_assert_no_error (error);
  g_assert_false (hb_vault_get_locked (vault));
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, 0);
  g_assert_cmpint (hb_vault_get_retry_after (vault), ==, 0);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);
  recovery_slot_after = row_blob (f->path, "recovery_slot");
  g_assert_true (g_bytes_equal (recovery_slot, recovery_slot_after));

  /* The old PIN is gone, the new one works. */
  hb_vault_lock (vault);
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, "9 attempts left");
  g_clear_error (&error);
  g_assert_true (hb_vault_unlock_sync (other, NEW_PIN, NULL, &error));
  g_assert_no_error (error);
  derive (other, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);

  /* The recovery key keeps working, also on an unlocked vault. */
  g_assert_true (hb_vault_recover_sync (other, recovery, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  hb_vault_lock (vault);
  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
}

static void
test_weak_pins (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (f->path);
  g_autofree char *recovery = NULL;
  static const char *const weak[] = {
    "",
    "1",
    "12345",
    "abc",
    "abcdefg",
    "pass123",
    "pässwd",
    "1234 56",
    "ab\xff\xfe"
    "1234",
  };
  static const char *const strong[]
      = { "123456", "0000000000", "abcdefgh", "correct horse", "pässwörd" };

  hb_vault_set_kdf_params (vault, FAST_M_COST, 1, 1);
  for (gsize i = 0; i < G_N_ELEMENTS (weak); i++)
    {
      g_assert_false (hb_vault_create_sync (vault, weak[i], HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                            recovery_sink (), NULL, &error));
      g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WEAK_PIN);
      g_clear_error (&error);
      g_assert_false (hb_vault_exists (vault));
      g_assert_false (g_file_test (f->path, G_FILE_TEST_EXISTS));
    }

  for (gsize i = 0; i < G_N_ELEMENTS (strong); i++)
    {
      g_autofree char *name = g_strdup_printf ("strong-%zu.db", i);
      g_autofree char *path = g_build_filename (f->dir, name, NULL);
      g_autoptr (HbVault) strong_vault = hb_vault_new (path);

      hb_vault_set_kdf_params (strong_vault, FAST_M_COST, 1, 1);
      g_assert_true (hb_vault_create_sync (strong_vault, strong[i], HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                           recovery_sink (), NULL, &error));
      g_assert_no_error (error);
      hb_vault_lock (strong_vault);
      g_assert_true (hb_vault_unlock_sync (strong_vault, strong[i], NULL, &error));
      g_assert_no_error (error);
    }

  /* Changing to a weak PIN costs no attempt. */
  g_assert_true (hb_vault_create_sync (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                       &recovery, NULL, &error));
  g_assert_no_error (error);
  hb_vault_lock (vault);
  g_assert_false (hb_vault_change_pin_sync (vault, HB_TEST_PIN, "123", NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WEAK_PIN);
  g_clear_error (&error);
  g_assert_false (hb_vault_change_pin_sync (vault, WRONG_PIN, "abc", NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WEAK_PIN);
  g_clear_error (&error);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
  g_assert_true (hb_vault_get_locked (vault));
}

static void
test_change_pin (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NO_DEVICE_SECRET, NULL);
  g_autoptr (GBytes) pin_slot = row_blob (f->path, "pin_slot");
  g_autoptr (GBytes) salt = row_blob (f->path, "kdf_salt");
  g_autoptr (GBytes) recovery_slot = row_blob (f->path, "recovery_slot");
  g_autoptr (GBytes) pin_slot_after = NULL;
  g_autoptr (GBytes) salt_after = NULL;
  g_autoptr (GBytes) recovery_slot_after = NULL;
  g_autofree char *uuid = row_text (f->path, "vault_uuid");
  g_autofree char *uuid_after = NULL;
  g_autofree char *records = NULL;
  g_autofree char *records_after = NULL;
  guint8 key[HB_KEY_LEN], again[HB_KEY_LEN];
  guint notifies = 0;

  /* Stand-in for the store's sealed records, sharing the file. */
  hb_test_sql_exec (f->path, "CREATE TABLE sealed (k BLOB, v BLOB);"
                             "INSERT INTO sealed VALUES (randomblob(32), randomblob(300));"
                             "INSERT INTO sealed VALUES (randomblob(32), randomblob(1000));");
  records = table_dump (f->path, "sealed");
  derive (vault, "test", key);
  g_signal_connect_swapped (vault, "notify::locked", G_CALLBACK (count_notify), &notifies);

  /* The old PIN is checked and counted like an unlock. */
  g_assert_false (hb_vault_change_pin_sync (vault, WRONG_PIN, NEW_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, "9 attempts left");
  g_clear_error (&error);
  pin_slot_after = row_blob (f->path, "pin_slot");
  g_assert_true (g_bytes_equal (pin_slot, pin_slot_after));
  g_clear_pointer (&pin_slot_after, g_bytes_unref);

  /* New parameters apply to the new slot. */
  hb_vault_set_kdf_params (vault, 2 * FAST_M_COST, 2, 1);
  hb_vault_lock (vault);
  g_assert_true (hb_vault_change_pin_sync (vault, HB_TEST_PIN, NEW_PIN, NULL, &error));
  g_assert_no_error (error);
  g_assert_false (hb_vault_get_locked (vault));
  g_assert_cmpuint (notifies, ==, 2);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);

  /* Only the PIN slot changed. */
  pin_slot_after = row_blob (f->path, "pin_slot");
  salt_after = row_blob (f->path, "kdf_salt");
  recovery_slot_after = row_blob (f->path, "recovery_slot");
  uuid_after = row_text (f->path, "vault_uuid");
  records_after = table_dump (f->path, "sealed");
  g_assert_false (g_bytes_equal (pin_slot, pin_slot_after));
  g_assert_false (g_bytes_equal (salt, salt_after));
  g_assert_true (g_bytes_equal (recovery_slot, recovery_slot_after));
  g_assert_cmpstr (uuid, ==, uuid_after);
  g_assert_cmpstr (records, ==, records_after);
  g_assert_cmpint (row_int (f->path, "key_id"), ==, 1);
  g_assert_cmpint (row_int (f->path, "kdf_m_cost_kib"), ==, 2 * FAST_M_COST);
  g_assert_cmpint (row_int (f->path, "kdf_t_cost"), ==, 2);

  hb_vault_lock (vault);
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN);
  g_clear_error (&error);
  g_assert_true (hb_vault_unlock_sync (vault, NEW_PIN, NULL, &error));
  g_assert_no_error (error);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);
}

typedef struct
{
  GAsyncResult *result;
  gboolean locked_in_callback;
  GThread *thread;
} AsyncWait;

static void
async_done (GObject *source, GAsyncResult *result, gpointer user_data)
{
  AsyncWait *wait = user_data;

  wait->result = g_object_ref (result);
  wait->locked_in_callback = hb_vault_get_locked (HB_VAULT (source));
  wait->thread = g_thread_self ();
}

static void
async_wait (AsyncWait *wait)
{
  while (wait->result == NULL)
    g_main_context_iteration (NULL, TRUE);
}

static void
record_notify_thread (GThread **thread)
{
  *thread = g_thread_self ();
}

static void
test_async (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (f->path);
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autofree char *recovery = NULL;
  AsyncWait wait = { 0 };
  GThread *notify_thread = NULL;
  guint8 key[HB_KEY_LEN], again[HB_KEY_LEN];

  hb_vault_set_kdf_params (vault, FAST_M_COST, 1, 1);
  g_signal_connect_swapped (vault, "notify::locked", G_CALLBACK (record_notify_thread),
                            &notify_thread);

  hb_vault_create_async (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET, NULL, async_done,
                         &wait);
  /* The state changes on this thread's context, not behind its back. */
  g_assert_true (hb_vault_get_locked (vault));
  async_wait (&wait);
  recovery = hb_vault_create_finish (vault, wait.result, &error);
  g_assert_no_error (error);
  g_assert_true (g_regex_match_simple (RECOVERY_KEY_PATTERN, recovery, 0, 0));
  g_assert_false (wait.locked_in_callback);
  g_assert_true (wait.thread == g_thread_self ());
  g_assert_true (notify_thread == g_thread_self ());
  g_clear_object (&wait.result);
  derive (vault, "test", key);

  hb_vault_create_async (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET, NULL, async_done,
                         &wait);
  async_wait (&wait);
  g_assert_null (hb_vault_create_finish (vault, wait.result, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_EXISTS);
  g_clear_error (&error);
  g_clear_object (&wait.result);

  hb_vault_lock (vault);
  notify_thread = NULL;
  hb_vault_unlock_async (vault, WRONG_PIN, NULL, async_done, &wait);
  async_wait (&wait);
  g_assert_false (hb_vault_unlock_finish (vault, wait.result, &error));
  assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, "9 attempts left");
  g_clear_error (&error);
  g_clear_object (&wait.result);
  g_assert_true (wait.locked_in_callback);
  g_assert_null (notify_thread);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 1);

  /* Cancelled before it starts: nothing counted. */
  g_cancellable_cancel (cancellable);
  hb_vault_unlock_async (vault, WRONG_PIN, cancellable, async_done, &wait);
  async_wait (&wait);
  g_assert_false (hb_vault_unlock_finish (vault, wait.result, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&error);
  g_clear_object (&wait.result);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 1);

  hb_vault_unlock_async (vault, HB_TEST_PIN, NULL, async_done, &wait);
  g_assert_true (hb_vault_get_locked (vault));
  async_wait (&wait);
  g_assert_true (hb_vault_unlock_finish (vault, wait.result, &error));
  g_assert_no_error (error);
  g_clear_object (&wait.result);
  g_assert_false (wait.locked_in_callback);
  g_assert_true (notify_thread == g_thread_self ());
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);

  hb_vault_lock (vault);
  notify_thread = NULL;
  hb_vault_change_pin_async (vault, HB_TEST_PIN, NEW_PIN, NULL, async_done, &wait);
  async_wait (&wait);
  g_assert_true (hb_vault_change_pin_finish (vault, wait.result, &error));
  g_assert_no_error (error);
  g_clear_object (&wait.result);
  g_assert_false (wait.locked_in_callback);
  g_assert_true (notify_thread == g_thread_self ());

  hb_vault_lock (vault);
  g_assert_true (hb_vault_unlock_sync (vault, NEW_PIN, NULL, &error));
  g_assert_no_error (error);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);
}

typedef struct
{
  HbVault *vault;
  const guint8 *key;
  gint stop;
  gint mismatches;
  gint derived;
  gint locked;
} DeriveRace;

static gpointer
derive_thread (gpointer user_data)
{
  DeriveRace *race = user_data;

  while (!g_atomic_int_get (&race->stop))
    {
      g_autoptr (GError) error = NULL;
      guint8 out[HB_KEY_LEN];

      if (_hb_vault_derive_key (race->vault, "test", out, &error))
        {
          if (memcmp (out, race->key, HB_KEY_LEN) != 0)
            g_atomic_int_inc (&race->mismatches);
          g_atomic_int_inc (&race->derived);
        }
      else if (g_error_matches (error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED))
        g_atomic_int_inc (&race->locked);
      else
        g_atomic_int_inc (&race->mismatches);
    }
  return NULL;
}

/* The store derives keys from worker threads while the owner locks and unlocks. */
static void
test_derive_while_locking (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NO_DEVICE_SECRET, NULL);
  guint8 key[HB_KEY_LEN];
  DeriveRace race = { vault, key, 0, 0, 0, 0 };
  GThread *threads[4];

  derive (vault, "test", key);
  for (gsize i = 0; i < G_N_ELEMENTS (threads); i++)
    threads[i] = g_thread_new ("derive", derive_thread, &race);
  for (int i = 0; i < 20; i++)
    {
      hb_vault_lock (vault);
      g_usleep (500);
      g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
      g_assert_no_error (error);
    }
  g_atomic_int_set (&race.stop, 1);
  for (gsize i = 0; i < G_N_ELEMENTS (threads); i++)
    g_thread_join (threads[i]);

  g_test_message ("%d derivations, %d refused as locked", race.derived, race.locked);
  g_assert_cmpint (race.mismatches, ==, 0);
  g_assert_cmpint (race.derived, >, 0);
}

static void
test_tampered (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *recovery = NULL;
  g_autoptr (HbVault) vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NO_DEVICE_SECRET, &recovery);
  g_autofree char *garbage_path = g_build_filename (f->dir, "garbage.db", NULL);
  g_autoptr (HbVault) garbage = hb_vault_new (garbage_path);
  g_autofree char *noise = g_strnfill (8192, 'x');

  hb_vault_lock (vault);

  /* Not a database at all. */
  g_assert_true (g_file_set_contents (garbage_path, noise, -1, NULL));
  g_assert_false (hb_vault_exists (garbage));
  g_assert_false (hb_vault_unlock_sync (garbage, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_CORRUPT);
  g_clear_error (&error);
  g_assert_false (hb_vault_create_sync (garbage, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                        recovery_sink (), NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_CORRUPT);
  g_clear_error (&error);

  /* Absurd parameters are refused before any derivation or count. */
  hb_test_sql_exec (f->path, "UPDATE hb_vault SET kdf_m_cost_kib = 1099511627776");
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_CORRUPT);
  g_clear_error (&error);
  hb_test_sql_exec (f->path, "UPDATE hb_vault SET kdf_m_cost_kib = 8192");
  g_assert_cmpint (row_int (f->path, "failed_attempts"), ==, 0);

  hb_test_sql_exec (f->path, "UPDATE hb_vault SET format_version = 2");
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_FAILED, "newer");
  g_clear_error (&error);
  hb_test_sql_exec (f->path, "UPDATE hb_vault SET format_version = 1");

  /* A flipped bit in a slot: AES-GCM cannot tell it from a wrong key. */
  flip_blob_byte (f->path, "pin_slot", 20);
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN);
  g_clear_error (&error);
  flip_blob_byte (f->path, "recovery_slot", 20);
  g_assert_false (hb_vault_recover_sync (vault, recovery, NEW_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_WRONG_PIN, "recovery key");
  g_clear_error (&error);
  g_assert_true (hb_vault_get_locked (vault));
}

static gboolean
have_session_bus (void)
{
  if (g_getenv ("DBUS_SESSION_BUS_ADDRESS") != NULL)
    return TRUE;
  g_test_skip ("No D-Bus session bus; run the suite inside dbus-run-session with "
               "gnome-keyring-daemon --unlock --components=secrets");
  return FALSE;
}

static char *
lookup_device_secret (const char *uuid)
{
  g_autoptr (GError) error = NULL;
  char *secret
      = secret_password_lookup_sync (&device_secret_schema, NULL, &error, "vault-uuid", uuid, NULL);

  g_assert_no_error (error);
  return secret;
}

static void
store_device_secret (const char *uuid, const char *b64)
{
  g_autoptr (GError) error = NULL;

  g_assert_true (secret_password_store_sync (&device_secret_schema, SECRET_COLLECTION_DEFAULT,
                                             "test", b64, NULL, &error, "vault-uuid", uuid, NULL));
  g_assert_no_error (error);
}

static void
test_device_secret (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *recovery = NULL;
  g_autoptr (HbVault) vault = NULL;
  g_autoptr (HbVault) other = NULL;
  g_autofree char *uuid = NULL;
  g_autofree char *secret = NULL;
  g_autofree char *new_secret = NULL;
  g_autofree char *impostor = NULL;
  g_autofree guchar *decoded = NULL;
  guint8 key[HB_KEY_LEN], again[HB_KEY_LEN], random[HB_KEY_LEN];
  gsize len = 0;

  if (!have_session_bus ())
    return;

  vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NONE, &recovery);
  g_assert_true (hb_vault_get_uses_device_secret (vault));
  g_assert_cmpint (row_int (f->path, "uses_device_secret"), ==, 1);
  uuid = row_text (f->path, "vault_uuid");
  secret = lookup_device_secret (uuid);
  g_assert_nonnull (secret);
  decoded = g_base64_decode (secret, &len);
  g_assert_cmpuint (len, ==, HB_KEY_LEN);
  derive (vault, "test", key);

  hb_vault_lock (vault);
  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);

  /* The secret really is part of the key: another one makes the right PIN wrong. */
  for (gsize i = 0; i < sizeof random; i++)
    random[i] = g_test_rand_int_range (0, 256);
  impostor = g_base64_encode (random, sizeof random);
  store_device_secret (uuid, impostor);
  other = hb_vault_new (f->path);
  g_assert_false (hb_vault_unlock_sync (other, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN);
  g_clear_error (&error);
  store_device_secret (uuid, secret);
  g_assert_true (hb_vault_unlock_sync (other, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (hb_vault_get_failed_attempts (other), ==, 0);

  /* The keyring loses it: the PIN cannot unlock, the attempt is not counted, recovery works. */
  g_assert_true (
      secret_password_clear_sync (&device_secret_schema, NULL, &error, "vault-uuid", uuid, NULL));
  g_assert_no_error (error);
  hb_vault_lock (vault);
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_DEVICE_SECRET_MISSING, "recovery key");
  g_clear_error (&error);
  g_assert_true (hb_vault_get_locked (vault));
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);

  g_assert_true (hb_vault_recover_sync (vault, recovery, NEW_PIN, NULL, &error));
  g_assert_no_error (error);
  derive (vault, "test", again);
  g_assert_cmpmem (key, HB_KEY_LEN, again, HB_KEY_LEN);
  g_assert_true (hb_vault_get_uses_device_secret (vault));
  new_secret = lookup_device_secret (uuid);
  g_assert_nonnull (new_secret);
  g_assert_cmpstr (new_secret, !=, secret);

  hb_vault_lock (vault);
  g_assert_true (hb_vault_unlock_sync (vault, NEW_PIN, NULL, &error));
  g_assert_no_error (error);

  secret_password_clear_sync (&device_secret_schema, NULL, NULL, "vault-uuid", uuid, NULL);
}

static void
test_no_secret_service (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = NULL;
  g_autofree char *recovery = NULL;

  if (!g_test_subprocess ())
    {
      g_test_trap_subprocess (NULL, 0, G_TEST_SUBPROCESS_INHERIT_STDERR);
      g_test_trap_assert_passed ();
      return;
    }

  /* Before libsecret first connects. */
  g_setenv ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus", TRUE);

  vault = hb_vault_new (f->path);
  hb_vault_set_kdf_params (vault, FAST_M_COST, 1, 1);
  g_assert_false (
      hb_vault_create_sync (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NONE, &recovery, NULL, &error));
  assert_error_contains (error, HB_VAULT_ERROR_NO_SECRET_SERVICE,
                         "HB_VAULT_FLAGS_NO_DEVICE_SECRET");
  g_test_message ("%s", error->message);
  g_clear_error (&error);
  g_assert_null (recovery);
  g_assert_true (hb_vault_get_locked (vault));
  g_assert_false (hb_vault_exists (vault));
  g_assert_false (g_file_test (f->path, G_FILE_TEST_EXISTS));

  /* Opting out works. */
  g_assert_true (hb_vault_create_sync (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                       &recovery, NULL, &error));
  g_assert_no_error (error);
  g_assert_false (hb_vault_get_uses_device_secret (vault));
  hb_vault_lock (vault);
  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);

  /* A vault that needs its device secret reports the missing service, without counting. */
  hb_vault_lock (vault);
  hb_test_sql_exec (f->path, "UPDATE hb_vault SET uses_device_secret = 1");
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NO_SECRET_SERVICE);
  g_clear_error (&error);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
}

static void
test_default_kdf_params (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (f->path);
  g_autoptr (HbVault) fast = NULL;
  g_autoptr (HbVault) reader = NULL;
  g_autofree char *fast_path = g_build_filename (f->dir, "fast.db", NULL);

  g_assert_true (hb_vault_create_sync (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                       recovery_sink (), NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpint (row_int (f->path, "kdf_m_cost_kib"), ==, 131072);
  g_assert_cmpint (row_int (f->path, "kdf_t_cost"), ==, 2);
  g_assert_cmpint (row_int (f->path, "kdf_parallelism"), ==, 1);
  hb_vault_lock (vault);
  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  g_test_message ("Unlock with the default Argon2id parameters (128 MiB, t=2, p=1) took %.3f s "
                  "(the goal is at least 0.25 s)",
                  hb_vault_get_last_unlock_seconds (vault));
  g_assert_cmpfloat (hb_vault_get_last_unlock_seconds (vault), >, 0);

  /* Unlock uses the stored parameters, not the object's: a default-configured object opens a
   * vault created with fast ones. */
  fast = fast_vault_new (fast_path, HB_VAULT_FLAGS_NO_DEVICE_SECRET, NULL);
  reader = hb_vault_new (fast_path);
  g_assert_true (hb_vault_unlock_sync (reader, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
}

/* ---- regression tests for the security review ------------------------------------------- */

/* The row says whether the device secret is part of the key; editing it must not let recovery
 * re-wrap the key without the secret (which would make a stolen copy guessable offline). */
static void
test_device_flag_bound (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *recovery = NULL;
  g_autoptr (HbVault) vault = NULL;
  g_autoptr (HbVault) again = NULL;

  if (!have_session_bus ())
    return;
  vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NONE, &recovery);
  hb_vault_lock (vault);
  hb_test_sql_exec (f->path, "UPDATE hb_vault SET uses_device_secret = 0");
  again = hb_vault_new (f->path);
  g_assert_false (hb_vault_recover_sync (again, recovery, NEW_PIN, NULL, &error));
  g_assert_nonnull (error);
  g_clear_error (&error);
  /* Put back, everything works as before. */
  hb_test_sql_exec (f->path, "UPDATE hb_vault SET uses_device_secret = 1");
  g_assert_true (hb_vault_unlock_sync (again, HB_TEST_PIN, NULL, &error));
  g_assert_no_error (error);
  {
    g_autofree char *uuid = NULL;
    sqlite3 *db = db_open (f->path);
    sqlite3_stmt *stmt;

    g_assert_cmpint (sqlite3_prepare_v2 (db, "SELECT vault_uuid FROM hb_vault", -1, &stmt, NULL),
                     ==, SQLITE_OK);
    g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
    uuid = g_strdup ((const char *)sqlite3_column_text (stmt, 0));
    sqlite3_finalize (stmt);
    sqlite3_close (db);
    secret_password_clear_sync (&device_secret_schema, NULL, NULL, "vault-uuid", uuid, NULL);
  }
}

static void
test_lock_during_async_unlock (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = fast_vault_new (f->path, HB_VAULT_FLAGS_NO_DEVICE_SECRET, NULL);
  AsyncWait wait = { 0 };

  hb_vault_lock (vault);
  hb_vault_unlock_async (vault, HB_TEST_PIN, NULL, async_done, &wait);
  /* The user locks (or the session does) while the derivation runs: the lock must win. */
  hb_vault_lock (vault);
  while (wait.result == NULL)
    g_main_context_iteration (NULL, TRUE);
  (void)hb_vault_unlock_finish (vault, wait.result, &error);
  g_clear_error (&error);
  g_clear_object (&wait.result);
  g_assert_true (hb_vault_get_locked (vault));
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 0);
}

typedef struct
{
  const char *path;
  const char *pin;
  gboolean ok;
} Attempt;

static gpointer
attempt_thread (gpointer data)
{
  Attempt *a = data;
  g_autoptr (HbVault) vault = hb_vault_new (a->path);

  a->ok = hb_vault_unlock_sync (vault, a->pin, NULL, NULL);
  return NULL;
}

/* A wrong attempt made while a right one derives its key must stay counted. */
static void
test_concurrent_attempt_kept (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (f->path);
  g_autofree char *recovery = NULL;
  Attempt right = { f->path, HB_TEST_PIN, FALSE };
  Attempt wrong = { f->path, WRONG_PIN, TRUE };
  GThread *a, *b;

  /* Slow enough (tens of milliseconds per derivation) for the two to overlap. */
  hb_vault_set_kdf_params (vault, 65536, 2, 1);
  g_assert_true (hb_vault_create_sync (vault, HB_TEST_PIN, HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                                       &recovery, NULL, &error));
  a = g_thread_new ("right", attempt_thread, &right);
  g_usleep (30 * G_TIME_SPAN_MILLISECOND);
  b = g_thread_new ("wrong", attempt_thread, &wrong);
  g_thread_join (a);
  g_thread_join (b);
  g_assert_true (right.ok);
  g_assert_false (wrong.ok);
  g_assert_cmpuint (hb_vault_get_failed_attempts (vault), ==, 1);
}

static void
test_passphrase_normalized (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (f->path);
  g_autofree char *recovery = NULL;
  /* "café au lait" composed, then with a combining acute accent. */
  const char *nfc = "caf\xc3\xa9 au lait";
  const char *nfd = "cafe\xcc\x81 au lait";

  hb_vault_set_kdf_params (vault, FAST_M_COST, 1, 1);
  g_assert_true (
      hb_vault_create_sync (vault, nfc, HB_VAULT_FLAGS_NO_DEVICE_SECRET, &recovery, NULL, &error));
  hb_vault_lock (vault);
  g_assert_true (hb_vault_unlock_sync (vault, nfd, NULL, &error));
  g_assert_no_error (error);
}

int
main (int argc, char **argv)
{
  if (argc == 3 && g_str_equal (argv[1], "--unlock-child"))
    return unlock_child (argv[2]);

  g_test_init (&argc, &argv, NULL);

#define ADD(name, func) g_test_add (name, Fixture, NULL, fixture_setup, func, fixture_teardown)
  ADD ("/vault/create-unlock-lock", test_create_unlock_lock);
  ADD ("/vault/wrong-pin", test_wrong_pin);
  ADD ("/vault/counted-before-derivation", test_counted_before_derivation);
  ADD ("/vault/escalating-delay", test_escalating_delay);
  ADD ("/vault/lockout-and-recovery", test_lockout_and_recovery);
  ADD ("/vault/weak-pins", test_weak_pins);
  ADD ("/vault/change-pin", test_change_pin);
  ADD ("/vault/async", test_async);
  ADD ("/vault/derive-while-locking", test_derive_while_locking);
  ADD ("/vault/tampered", test_tampered);
  ADD ("/vault/device-secret", test_device_secret);
  ADD ("/vault/no-secret-service", test_no_secret_service);
  ADD ("/vault/default-kdf-params", test_default_kdf_params);
  ADD ("/vault/review/device-flag-bound", test_device_flag_bound);
  ADD ("/vault/review/lock-during-async-unlock", test_lock_during_async_unlock);
  ADD ("/vault/review/concurrent-attempt-kept", test_concurrent_attempt_kept);
  ADD ("/vault/review/passphrase-normalized", test_passphrase_normalized);
#undef ADD

  return g_test_run ();
}
