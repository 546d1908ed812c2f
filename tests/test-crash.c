/* Crash safety: a writer process is killed with SIGKILL at a random moment, again and again,
 * and every write it acknowledged must survive.
 *
 * The test re-executes itself as the writer (`test-crash --child STORE`). The writer unlocks the
 * vault, then loops: new documents, updates of its earlier documents, bulk_docs batches of 10.
 * After each commit it writes one line per document, "ID REV\n", to stdout in a single write()
 * (below PIPE_BUF, so a line is never torn). The parent reads these acknowledgements, kills the
 * writer 20–400 ms after the first one, and then checks the store file: it opens, passes
 * `PRAGMA integrity_check`, every acknowledged revision is readable, and each document's winner is
 * its last acknowledged revision. The one exception is the write in flight when the signal hit: it
 * may have committed without its acknowledgement getting out, so a winner one generation past the
 * last acknowledged revision, and descending from it, is accepted for at most one batch. */

#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <string.h>
#include <unistd.h>

#include "hb-test-utils.h"

#define N_ITERATIONS 25
#define BULK_SIZE 10
#define MIN_KILL_DELAY_MS 20
#define MAX_KILL_DELAY_MS 400
#define FIRST_ACK_TIMEOUT_S 60

/* The writer */

static JsonNode *
make_note (const char *id, const char *rev, guint counter)
{
  static GRand *rand;
  g_autoptr (GDateTime) now = g_date_time_new_now_utc ();
  g_autofree char *written_at = g_date_time_format_iso8601 (now);
  g_autofree char *session_uuid = g_uuid_string_random ();
  g_autofree char *patient_uuid = g_uuid_string_random ();
  g_autofree char *session_id = g_strconcat ("session:", session_uuid, NULL);
  g_autofree char *patient_id = g_strconcat ("patient:", patient_uuid, NULL);
  JsonNode *note;

  if (rand == NULL)
    rand = g_rand_new ();
  note = hb_test_note (rand, id, session_id, patient_id, written_at, 850);
  if (rev != NULL)
    json_object_set_string_member (json_node_get_object (note), "_rev", rev);
  json_object_set_int_member (json_node_get_object (note), "seq", counter);
  return note;
}

static char *
new_note_id (guint counter)
{
  return g_strdup_printf ("note:%u-%08x%08x", counter, g_random_int (), g_random_int ());
}

static void
write_all (const char *buf, gsize len)
{
  while (len > 0)
    {
      gssize n = write (STDOUT_FILENO, buf, len);

      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        {
          g_printerr ("writer: ack write failed: %s\n", g_strerror (errno));
          exit (1);
        }
      buf += n;
      len -= n;
    }
}

static G_GNUC_NORETURN void
writer_fail (const char *what, const GError *error)
{
  g_printerr ("writer: %s: %s\n", what, error != NULL ? error->message : "(no error)");
  exit (1);
}

/* The result of one document in a bulk_docs answer: CouchDB's {id, rev} or {id, error}. */
static const char *
bulk_result_rev (JsonNode *result, const char *expected_id)
{
  JsonObject *object;

  if (result == NULL || !JSON_NODE_HOLDS_OBJECT (result))
    return NULL;
  object = json_node_get_object (result);
  if (json_object_has_member (object, "error"))
    return NULL;
  if (g_strcmp0 (json_object_get_string_member_with_default (object, "id", NULL), expected_id) != 0)
    return NULL;
  return json_object_get_string_member_with_default (object, "rev", NULL);
}

static G_GNUC_NORETURN void
run_writer (const char *path)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (path);
  g_autoptr (HbStore) store = NULL;
  /* This run's own documents, id → current rev, to update them with the right _rev. The keys
   * are the strings of mine_ids. */
  g_autoptr (GPtrArray) mine_ids = g_ptr_array_new_with_free_func (g_free);
  g_autoptr (GHashTable) mine = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, g_free);
  guint counter = 0;

  if (!hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error))
    writer_fail ("unlock", error);
  store = hb_store_open_sync (vault, NULL, &error);
  if (store == NULL)
    writer_fail ("open", error);

  for (;;)
    {
      g_autoptr (GString) acks = g_string_new (NULL);
      int choice = g_random_int_range (0, 10);

      if (choice == 0 && mine_ids->len > 0)
        {
          const char *id = g_ptr_array_index (mine_ids, g_random_int_range (0, mine_ids->len));
          const char *old_rev = g_hash_table_lookup (mine, id);
          g_autoptr (JsonNode) doc = make_note (id, old_rev, ++counter);
          g_autofree char *rev = hb_store_put_sync (store, doc, NULL, &error);

          if (rev == NULL)
            writer_fail ("update", error);
          g_string_append_printf (acks, "%s %s\n", id, rev);
          g_hash_table_insert (mine, (gpointer)id, g_steal_pointer (&rev));
        }
      else if (choice == 1)
        {
          g_autoptr (GPtrArray) docs
              = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
          g_autoptr (GPtrArray) ids = g_ptr_array_new ();
          g_autoptr (GPtrArray) results = NULL;

          for (guint i = 0; i < BULK_SIZE; i++)
            {
              char *id = new_note_id (++counter);

              g_ptr_array_add (mine_ids, id);
              g_ptr_array_add (ids, id);
              g_ptr_array_add (docs, make_note (id, NULL, counter));
            }
          results = hb_store_bulk_docs_sync (store, docs, TRUE, NULL, &error);
          if (results == NULL)
            writer_fail ("bulk_docs", error);
          if (results->len != BULK_SIZE)
            writer_fail ("bulk_docs: wrong number of results", NULL);
          for (guint i = 0; i < BULK_SIZE; i++)
            {
              const char *id = g_ptr_array_index (ids, i);
              const char *rev = bulk_result_rev (g_ptr_array_index (results, i), id);

              if (rev == NULL)
                writer_fail ("bulk_docs: a document was not written", NULL);
              g_string_append_printf (acks, "%s %s\n", id, rev);
              g_hash_table_insert (mine, (gpointer)id, g_strdup (rev));
            }
        }
      else
        {
          char *id = new_note_id (++counter);
          g_autoptr (JsonNode) doc = NULL;
          g_autofree char *rev = NULL;

          g_ptr_array_add (mine_ids, id);
          doc = make_note (id, NULL, counter);
          rev = hb_store_put_sync (store, doc, NULL, &error);
          if (rev == NULL)
            writer_fail ("put", error);
          g_string_append_printf (acks, "%s %s\n", id, rev);
          g_hash_table_insert (mine, id, g_steal_pointer (&rev));
        }

      /* The commit has returned: only now may the parent count on it. */
      write_all (acks->str, acks->len);
    }
}

/* The parent */

typedef struct
{
  char *id;
  char *rev;
} Ack;

static void
ack_free (Ack *ack)
{
  g_free (ack->id);
  g_free (ack->rev);
  g_free (ack);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Ack, ack_free)

typedef struct
{
  GMainLoop *loop;
  GSubprocess *writer;
  GDataInputStream *acks_in;
  GPtrArray *acks; /* Ack*, this iteration's acknowledgements in order */
  guint kill_delay_ms;
  guint kill_source;
  guint deadline_source;
  gboolean killed;
  gboolean timed_out;
  GError *read_error;
  char *bad_line;
} Iteration;

/* "N-<32 lowercase hex>" → N, or 0 when @rev is not a revision id. */
static guint64
rev_generation (const char *rev)
{
  const char *dash = rev != NULL ? strchr (rev, '-') : NULL;
  g_autofree char *number = NULL;
  guint64 generation;

  if (dash == NULL || strlen (dash + 1) != 32)
    return 0;
  for (const char *p = dash + 1; *p != '\0'; p++)
    if (!g_ascii_isdigit (*p) && !(*p >= 'a' && *p <= 'f'))
      return 0;
  number = g_strndup (rev, dash - rev);
  if (!g_ascii_string_to_unsigned (number, 10, 1, G_MAXUINT64, &generation, NULL))
    return 0;
  return generation;
}

static gboolean
kill_writer (gpointer user_data)
{
  Iteration *it = user_data;

  it->kill_source = 0;
  it->killed = TRUE;
  g_subprocess_send_signal (it->writer, SIGKILL);
  return G_SOURCE_REMOVE;
}

static gboolean
deadline_passed (gpointer user_data)
{
  Iteration *it = user_data;

  it->deadline_source = 0;
  it->timed_out = TRUE;
  g_subprocess_force_exit (it->writer);
  return G_SOURCE_REMOVE;
}

static void read_next_ack (Iteration *it);

static void
on_ack_line (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Iteration *it = user_data;
  g_autofree char *line = NULL;
  g_auto (GStrv) fields = NULL;
  gsize len;

  line = g_data_input_stream_read_line_finish_utf8 (it->acks_in, result, &len, &it->read_error);
  if (line == NULL)
    {
      /* End of stream (the writer is gone) or a read error. */
      g_main_loop_quit (it->loop);
      return;
    }

  fields = g_strsplit (line, " ", -1);
  if (g_strv_length (fields) != 2 || !g_str_has_prefix (fields[0], "note:")
      || rev_generation (fields[1]) == 0)
    {
      if (it->bad_line == NULL)
        it->bad_line = g_steal_pointer (&line);
    }
  else
    {
      Ack *ack = g_new0 (Ack, 1);

      ack->id = g_steal_pointer (&fields[0]);
      ack->rev = g_steal_pointer (&fields[1]);
      g_ptr_array_add (it->acks, ack);
    }

  if (it->acks->len == 1 && it->kill_source == 0 && !it->killed)
    {
      g_clear_handle_id (&it->deadline_source, g_source_remove);
      it->kill_source = g_timeout_add (it->kill_delay_ms, kill_writer, it);
    }

  read_next_ack (it);
}

static void
read_next_ack (Iteration *it)
{
  g_data_input_stream_read_line_async (it->acks_in, G_PRIORITY_DEFAULT, NULL, on_ack_line, it);
}

/* Start a writer on @path, kill it @kill_delay_ms after its first acknowledgement, and return
 * everything it acknowledged. */
static GPtrArray *
run_and_kill_writer (const char *self_exe, const char *path, guint kill_delay_ms)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSubprocessLauncher) launcher = NULL;
  g_autoptr (GSubprocess) writer = NULL;
  g_autoptr (GDataInputStream) acks_in = NULL;
  g_autoptr (GMainLoop) loop = g_main_loop_new (NULL, FALSE);
  Iteration it = { 0 };

  launcher = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDOUT_PIPE);
  writer = g_subprocess_launcher_spawn (launcher, &error, self_exe, "--child", path, NULL);
  g_assert_no_error (error);
  acks_in = g_data_input_stream_new (g_subprocess_get_stdout_pipe (writer));

  it.loop = loop;
  it.writer = writer;
  it.acks_in = acks_in;
  it.acks = g_ptr_array_new_with_free_func ((GDestroyNotify)ack_free);
  it.kill_delay_ms = kill_delay_ms;
  it.deadline_source = g_timeout_add_seconds (FIRST_ACK_TIMEOUT_S, deadline_passed, &it);

  read_next_ack (&it);
  g_main_loop_run (loop);

  g_clear_handle_id (&it.kill_source, g_source_remove);
  g_clear_handle_id (&it.deadline_source, g_source_remove);
  g_subprocess_wait (writer, NULL, &error);
  g_assert_no_error (error);

  g_assert_no_error (it.read_error);
  g_assert_null (it.bad_line);
  if (it.timed_out)
    g_error ("the writer acknowledged nothing within %d s", FIRST_ACK_TIMEOUT_S);
  /* Anything but our SIGKILL means the writer failed on its own (its stderr says why). */
  if (!it.killed || !g_subprocess_get_if_signaled (writer)
      || g_subprocess_get_term_sig (writer) != SIGKILL)
    g_error ("the writer ended before it was killed (%s %d)",
             g_subprocess_get_if_signaled (writer) ? "signal" : "exit status",
             g_subprocess_get_if_signaled (writer) ? g_subprocess_get_term_sig (writer)
                                                   : g_subprocess_get_exit_status (writer));
  g_assert_cmpuint (it.acks->len, >, 0);

  return it.acks;
}

static void
assert_integrity_ok (const char *path)
{
  sqlite3 *db = NULL;
  sqlite3_stmt *stmt = NULL;
  g_autoptr (GString) result = g_string_new (NULL);
  int rc;

  rc = sqlite3_open_v2 (path, &db, SQLITE_OPEN_READWRITE, NULL);
  g_assert_cmpint (rc, ==, SQLITE_OK);
  rc = sqlite3_prepare_v2 (db, "PRAGMA integrity_check", -1, &stmt, NULL);
  g_assert_cmpint (rc, ==, SQLITE_OK);
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      if (result->len > 0)
        g_string_append_c (result, '\n');
      g_string_append (result, (const char *)sqlite3_column_text (stmt, 0));
    }
  g_assert_cmpint (rc, ==, SQLITE_DONE);
  sqlite3_finalize (stmt);
  sqlite3_close (db);

  g_assert_cmpstr (result->str, ==, "ok");
}

/* @winner's `_revisions` says it is the child of @parent_rev. */
static gboolean
descends_directly_from (JsonObject *winner, const char *parent_rev)
{
  JsonObject *revisions = json_object_get_object_member (winner, "_revisions");
  JsonArray *ids;
  const char *parent_hash = strchr (parent_rev, '-') + 1;

  if (revisions == NULL || !json_object_has_member (revisions, "ids"))
    return FALSE;
  ids = json_object_get_array_member (revisions, "ids");
  return json_object_get_int_member (revisions, "start") == (gint64)rev_generation (parent_rev) + 1
         && json_array_get_length (ids) >= 2
         && g_strcmp0 (json_array_get_string_element (ids, 1), parent_hash) == 0;
}

/* Check one document that has moved past its last acknowledged revision @rev. Only the write in
 * flight at the kill can have committed unacknowledged: one update at most (a bulk_docs batch
 * holds only new documents), of a document of this iteration, one generation past @rev. */
static Ack *
check_unacknowledged_update (HbStore *store,
                             const char *id,
                             const char *rev,
                             GHashTable *this_iteration,
                             const Ack *already_seen)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc
      = hb_store_get_sync (store, id, NULL, HB_GET_FLAGS_REVISIONS, NULL, &error);
  JsonObject *object;
  const char *winner;
  Ack *ack;

  g_assert_no_error (error);
  object = json_node_get_object (doc);
  winner = json_object_get_string_member (object, "_rev");
  if (already_seen != NULL || !g_hash_table_contains (this_iteration, id)
      || !descends_directly_from (object, rev))
    g_error ("%s: winner %s, but the last acknowledged revision is %s", id, winner, rev);

  ack = g_new0 (Ack, 1);
  ack->id = g_strdup (id);
  ack->rev = g_strdup (winner);
  return ack;
}

/* Open the store as a new process would and check every acknowledgement so far. Returns the
 * update that committed without being acknowledged, if there is one: from then on it is part of
 * what the store must keep. */
static Ack *
verify_store (const char *path,
              GPtrArray *all_acks,
              GHashTable *last_rev,
              GHashTable *this_iteration)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (path);
  g_autoptr (HbStore) store = NULL;
  guint n_ids;
  g_autofree gpointer *ids = g_hash_table_get_keys_as_array (last_rev, &n_ids);
  g_autoptr (Ack) unacknowledged = NULL;

  hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error);
  g_assert_no_error (error);
  store = hb_store_open_sync (vault, NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (store);

  assert_integrity_ok (path);

  /* Each document's winner is its last acknowledged revision, read in batches of 100. */
  for (guint start = 0; start < n_ids; start += 100)
    {
      guint n = MIN (100, n_ids - start);
      g_autofree const char **batch = g_new0 (const char *, n + 1);
      g_autoptr (GPtrArray) docs = NULL;

      memcpy (batch, ids + start, n * sizeof (char *));
      docs = hb_store_get_many_sync (store, batch, HB_GET_FLAGS_NONE, NULL, &error);
      g_assert_no_error (error);
      g_assert_cmpuint (docs->len, ==, n);
      for (guint i = 0; i < n; i++)
        {
          JsonObject *object = json_node_get_object (g_ptr_array_index (docs, i));
          const char *rev = g_hash_table_lookup (last_rev, batch[i]);

          g_assert_cmpstr (json_object_get_string_member_with_default (object, "_id", NULL), ==,
                           batch[i]);
          g_assert_cmpstr (json_object_get_string_member_with_default (object, "type", NULL), ==,
                           "note");
          if (g_strcmp0 (json_object_get_string_member (object, "_rev"), rev) != 0)
            unacknowledged = check_unacknowledged_update (store, batch[i], rev, this_iteration,
                                                          unacknowledged);
        }
    }

  /* Every earlier acknowledged revision of an updated document is still readable by its rev. */
  for (guint i = 0; i < all_acks->len; i++)
    {
      Ack *ack = g_ptr_array_index (all_acks, i);
      g_autoptr (JsonNode) doc = NULL;
      JsonObject *object;

      if (g_str_equal (ack->rev, g_hash_table_lookup (last_rev, ack->id)))
        continue;
      doc = hb_store_get_sync (store, ack->id, ack->rev, HB_GET_FLAGS_NONE, NULL, &error);
      g_assert_no_error (error);
      object = json_node_get_object (doc);
      g_assert_cmpstr (json_object_get_string_member (object, "_id"), ==, ack->id);
      g_assert_cmpstr (json_object_get_string_member (object, "_rev"), ==, ack->rev);
    }

  hb_store_close (store);
  hb_vault_lock (vault);
  return g_steal_pointer (&unacknowledged);
}

static void
test_sigkill_writer (void)
{
  g_autofree char *self_exe = g_file_read_link ("/proc/self/exe", NULL);
  g_autofree char *dir = hb_test_mkdtemp ();
  g_autofree char *path = g_build_filename (dir, "store.db", NULL);
  g_autoptr (GPtrArray) all_acks = g_ptr_array_new_with_free_func ((GDestroyNotify)ack_free);
  g_autoptr (GHashTable) last_rev = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (GError) error = NULL;
  guint total_acks = 0;

  g_assert_nonnull (self_exe);

  /* Create the vault (fast KDF, no device secret) and the store schema, then let go of both. */
  {
    g_autoptr (HbVault) vault = hb_test_vault_new (path, FALSE);
    g_autoptr (HbStore) store = hb_store_open_sync (vault, NULL, &error);

    g_assert_no_error (error);
    hb_store_close (store);
    hb_vault_lock (vault);
  }

  for (guint i = 0; i < N_ITERATIONS; i++)
    {
      guint kill_delay_ms = g_test_rand_int_range (MIN_KILL_DELAY_MS, MAX_KILL_DELAY_MS + 1);
      g_autoptr (GPtrArray) acks = run_and_kill_writer (self_exe, path, kill_delay_ms);
      g_autoptr (GHashTable) this_iteration = g_hash_table_new (g_str_hash, g_str_equal);
      g_autoptr (Ack) unacknowledged = NULL;

      total_acks += acks->len;
      while (acks->len > 0)
        {
          g_autoptr (Ack) ack = g_ptr_array_steal_index (acks, 0);

          g_hash_table_add (this_iteration, ack->id);
          g_hash_table_insert (last_rev, ack->id, ack->rev);
          g_ptr_array_add (all_acks, g_steal_pointer (&ack));
        }

      g_test_message (
          "iteration %u: killed %u ms after the first ack; %u acks so far, %u documents", i + 1,
          kill_delay_ms, total_acks, g_hash_table_size (last_rev));
      unacknowledged = verify_store (path, all_acks, last_rev, this_iteration);
      if (unacknowledged != NULL)
        {
          g_test_message ("  %s %s committed, killed before its acknowledgement",
                          unacknowledged->id, unacknowledged->rev);
          g_hash_table_insert (last_rev, unacknowledged->id, unacknowledged->rev);
          g_ptr_array_add (all_acks, g_steal_pointer (&unacknowledged));
        }
    }

  hb_test_rmdir (dir);
}

int
main (int argc, char *argv[])
{
  if (argc == 3 && g_str_equal (argv[1], "--child"))
    run_writer (argv[2]);

  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/crash/sigkill-writer", test_sigkill_writer);
  return g_test_run ();
}
