/* HbSyncManager against the real test server, directly and through the fault proxy. */

#include <libsoup/soup.h>
#include <string.h>

#include "hb-json-private.h"
#include "hb-test-server.h"
#include "hb-test-utils.h"

typedef struct
{
  HbTestServer *server;
  HbTestProxy *proxy; /* NULL unless the test runs through the proxy (FIXTURE_PROXY) */
  char *db_name;
  char *db_url;   /* the database on the server, directly */
  char *sync_url; /* what the manager syncs with: db_url, or the same through the proxy */
  char *dir;
  HbStore *store;
  HbSyncConfig *config;
  HbSyncManager *manager;
  GArray *statuses;
  GString *failures;  /* the last error at each OFFLINE, ERROR and AUTH_FAILED */
  guint inconsistent; /* pending counts seen non-zero while the status was UP_TO_DATE */
  guint token_needed;
  /* What the writers wrote: id → expected depth × 2 + deleted; id → current revision. */
  GHashTable *expected;
  GHashTable *revs;
  guint ticks;
  guint writer_id;
} Fixture;

#define FIXTURE_PROXY GINT_TO_POINTER (1)

static const char *status_name (HbSyncStatus status);
static char *statuses_text (Fixture *f);

static guint db_counter;

/* The manager promises up-to-date only when nothing is pending either way: checked at every
 * status change, and at every change of a pending count. */
static void
on_status (HbSyncManager *manager, HbSyncStatus status, gpointer data)
{
  Fixture *f = data;

  g_array_append_val (f->statuses, status);
  if (status == HB_SYNC_STATUS_OFFLINE || status == HB_SYNC_STATUS_ERROR
      || status == HB_SYNC_STATUS_AUTH_FAILED)
    g_string_append_printf (f->failures, "  %s: %s\n", status_name (status),
                            hb_sync_manager_get_last_error (manager));
  if (status == HB_SYNC_STATUS_UP_TO_DATE)
    {
      g_assert_cmpint (hb_sync_manager_get_pending_push (manager), ==, 0);
      g_assert_cmpint (hb_sync_manager_get_pending_pull (manager), ==, 0);
    }
}

static void
on_pending (HbSyncManager *manager, GParamSpec *pspec, gpointer data)
{
  Fixture *f = data;

  if (hb_sync_manager_get_status (manager) == HB_SYNC_STATUS_UP_TO_DATE
      && (hb_sync_manager_get_pending_push (manager) != 0
          || hb_sync_manager_get_pending_pull (manager) != 0))
    f->inconsistent++;
}

static void
on_token_needed (HbSyncManager *manager, gpointer data)
{
  Fixture *f = data;

  f->token_needed++;
}

static void
connect_manager (Fixture *f)
{
  g_signal_connect (f->manager, "status-changed", G_CALLBACK (on_status), f);
  g_signal_connect (f->manager, "notify::pending-push", G_CALLBACK (on_pending), f);
  g_signal_connect (f->manager, "notify::pending-pull", G_CALLBACK (on_pending), f);
  g_signal_connect (f->manager, "token-needed", G_CALLBACK (on_token_needed), f);
}

/* A configuration for tests: short debounce, heartbeat and backoff. */
static HbSyncConfig *
quick_config (const char *url)
{
  HbSyncConfig *config = hb_sync_config_new (url);

  return config;
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) created = NULL;

  f->server = hb_test_server_start (NULL, &error);
  g_assert_no_error (error);
  f->db_name = g_strdup_printf ("clinic%u", ++db_counter);
  f->db_url = g_strdup_printf ("%s/%s", f->server->url, f->db_name);
  if (data == FIXTURE_PROXY)
    {
      f->proxy = hb_test_proxy_start (f->server->url, &error);
      g_assert_no_error (error);
      f->sync_url = g_strdup_printf ("%s/%s", f->proxy->url, f->db_name);
    }
  else
    f->sync_url = g_strdup (f->db_url);
  created = hb_test_http_json ("PUT", f->db_url, NULL, NULL);
  f->store = hb_test_store_new (&f->dir);
  f->config = quick_config (f->sync_url);
  f->manager = hb_sync_manager_new (f->store, f->config, &error);
  g_assert_no_error (error);
  f->statuses = g_array_new (FALSE, FALSE, sizeof (HbSyncStatus));
  f->failures = g_string_new (NULL);
  f->expected = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  f->revs = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  connect_manager (f);
}

/* Stops the manager and waits for the runs it cancelled to let go of it. */
static void
finalize_manager (Fixture *f)
{
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  hb_sync_manager_stop (f->manager);
  /* Cancelled runs end on the main loop, each holding the manager until then. */
  while (G_OBJECT (f->manager)->ref_count > 1 && g_get_monotonic_time () < deadline)
    g_main_context_iteration (NULL, FALSE);
  g_assert_finalize_object (f->manager);
  f->manager = NULL;
}

/* Replaces the fixture's manager with one for @config, its signals recorded. */
static void
use_config (Fixture *f, HbSyncConfig *config)
{
  g_autoptr (GError) error = NULL;

  finalize_manager (f);
  g_set_object (&f->config, config);
  f->manager = hb_sync_manager_new (f->store, f->config, &error);
  g_assert_no_error (error);
  g_array_set_size (f->statuses, 0);
  g_string_truncate (f->failures, 0);
  connect_manager (f);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_clear_handle_id (&f->writer_id, g_source_remove);
  finalize_manager (f);
  g_clear_object (&f->config);
  g_array_unref (f->statuses);
  g_string_free (f->failures, TRUE);
  g_hash_table_unref (f->expected);
  g_hash_table_unref (f->revs);
  hb_store_close (f->store);
  g_clear_object (&f->store);
  hb_test_rmdir (f->dir);
  g_free (f->dir);
  g_free (f->db_url);
  g_free (f->sync_url);
  g_free (f->db_name);
  g_clear_pointer (&f->proxy, hb_test_proxy_stop);
  hb_test_server_stop (f->server);
}

/* Runs the main loop until cond holds, failing the test after timeout_ms. */
static void
wait_until (gboolean (*cond) (Fixture *f), Fixture *f, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64)timeout_ms * 1000;

  while (!cond (f))
    {
      if (g_get_monotonic_time () > deadline)
        g_error ("timed out after %u ms (status %d)", timeout_ms,
                 hb_sync_manager_get_status (f->manager));
      g_main_context_iteration (NULL, FALSE);
      g_usleep (1000);
    }
}

static gboolean
is_up_to_date (Fixture *f)
{
  return hb_sync_manager_get_status (f->manager) == HB_SYNC_STATUS_UP_TO_DATE;
}

static gboolean
is_offline (Fixture *f)
{
  return hb_sync_manager_get_status (f->manager) == HB_SYNC_STATUS_OFFLINE;
}

static void
put_doc (HbStore *store, const char *id, const char *extra)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *text = g_strdup_printf ("{\"_id\":\"%s\",\"type\":\"note\"%s%s}", id,
                                           extra ? "," : "", extra ? extra : "");
  g_autoptr (JsonNode) doc = hb_test_json (text);
  g_autofree char *rev = hb_store_put_sync (store, doc, NULL, &error);

  g_assert_no_error (error);
}

static gboolean
server_has (Fixture *f, const char *id)
{
  g_autofree char *url = g_strdup_printf ("%s/%s", f->db_url, id);
  guint status = 0;
  g_autoptr (JsonNode) doc = hb_test_http_json ("GET", url, NULL, &status);

  return status == 200;
}

static const char *wanted_id;

static gboolean
server_has_wanted (Fixture *f)
{
  return server_has (f, wanted_id);
}

static gboolean
store_has_wanted (Fixture *f)
{
  g_autoptr (JsonNode) doc
      = hb_store_get_sync (f->store, wanted_id, NULL, HB_GET_FLAGS_NONE, NULL, NULL);
  return doc != NULL;
}

static void
test_continuous (Fixture *f, gconstpointer data)
{
  g_autoptr (JsonNode) put = NULL;
  g_autofree char *url = NULL;

  put_doc (f->store, "note:1", NULL);
  g_assert_cmpint (hb_sync_manager_get_status (f->manager), ==, HB_SYNC_STATUS_DISABLED);
  hb_sync_manager_start (f->manager);
  wait_until (is_up_to_date, f, 20000);
  g_assert_true (server_has (f, "note:1"));
  g_assert_cmpint (hb_sync_manager_get_pending_push (f->manager), ==, 0);
  g_assert_cmpint (hb_sync_manager_get_pending_pull (f->manager), ==, 0);
  g_assert_cmpint (hb_sync_manager_get_last_sync_time (f->manager), >, 0);
  /* CONNECTING or SYNCING came before UP_TO_DATE, and nothing else. (UP_TO_DATE may come and
   * go once: the longpoll can report the push's own revision right after the push ended.) */
  for (guint i = 0; i + 1 < f->statuses->len; i++)
    {
      HbSyncStatus s = g_array_index (f->statuses, HbSyncStatus, i);

      if (s != HB_SYNC_STATUS_CONNECTING && s != HB_SYNC_STATUS_SYNCING
          && s != HB_SYNC_STATUS_UP_TO_DATE)
        {
          g_autofree char *text = statuses_text (f);

          g_error ("%s before up-to-date: %s", status_name (s), text);
        }
    }

  /* A local change is pushed on its own. */
  put_doc (f->store, "note:2", "\"text\":\"pushed by the debounce\"");
  wanted_id = "note:2";
  wait_until (server_has_wanted, f, 20000);

  /* A server change is pulled through the longpoll. */
  url = g_strdup_printf ("%s/note:3", f->db_url);
  put = hb_test_http_json ("PUT", url, "{\"type\":\"note\",\"text\":\"from the server\"}", NULL);
  wanted_id = "note:3";
  wait_until (store_has_wanted, f, 20000);
  wait_until (is_up_to_date, f, 20000);

  hb_sync_manager_stop (f->manager);
  g_assert_cmpint (hb_sync_manager_get_status (f->manager), ==, HB_SYNC_STATUS_DISABLED);
}

static void
test_offline_is_not_error (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbSyncConfig) config = hb_sync_config_new ("http://127.0.0.1:1/clinic");
  g_autoptr (HbSyncManager) manager = NULL;
  HbSyncManager *saved = f->manager;

  hb_sync_config_set_retry (config, 50, 200);
  manager = hb_sync_manager_new (f->store, config, &error);
  g_assert_no_error (error);
  f->manager = manager;
  hb_sync_manager_start (manager);
  wait_until (is_offline, f, 20000);
  g_assert_nonnull (hb_sync_manager_get_last_error (manager));
  hb_sync_manager_stop (manager);
  f->manager = saved;
}

static void
test_insecure_http_refused (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbSyncConfig) config = hb_sync_config_new ("http://clinic.example/clinic");
  g_autoptr (HbSyncManager) manager = hb_sync_manager_new (f->store, config, &error);

  g_assert_null (manager);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FAILED);
  g_clear_error (&error);
  hb_sync_config_set_allow_insecure_http (config, TRUE);
  manager = hb_sync_manager_new (f->store, config, &error);
  g_assert_no_error (error);
  g_assert_nonnull (manager);
}

typedef struct
{
  gboolean done;
  gboolean answer;
  gint64 synced;
  GError *error;
} Wait;

static void
on_ensure (GObject *source, GAsyncResult *result, gpointer data)
{
  Wait *w = data;

  w->answer
      = hb_sync_manager_ensure_session_synced_finish (HB_SYNC_MANAGER (source), result, &w->error);
  w->done = TRUE;
}

static void
on_session_sync (GObject *source, GAsyncResult *result, gpointer data)
{
  Wait *w = data;

  w->synced = hb_sync_manager_sync_session_finish (HB_SYNC_MANAGER (source), result, &w->error);
  w->done = TRUE;
}

static void
test_session (Fixture *f, gconstpointer data)
{
  Wait w = { 0 };
  Wait s = { 0 };

  put_doc (f->store, "session:s1", "\"patient_id\":\"patient:p1\"");
  put_doc (f->store, "patient:p1", NULL);
  put_doc (f->store, "note:a", "\"session_id\":\"session:s1\"");
  put_doc (f->store, "note:b", "\"session_id\":\"session:s1\"");
  put_doc (f->store, "note:other", "\"session_id\":\"session:s2\"");

  g_assert_cmpint (hb_sync_manager_get_session_status (f->manager, "session:s1"), ==,
                   HB_SESSION_SYNC_STATUS_UNKNOWN);
  hb_sync_manager_ensure_session_synced_async (f->manager, "session:s1", 10000, NULL, on_ensure,
                                               &w);
  hb_test_wait_for (&w.done);
  g_assert_no_error (w.error);
  g_assert_true (w.answer);
  g_assert_true (server_has (f, "note:a"));
  g_assert_true (server_has (f, "patient:p1"));
  g_assert_false (server_has (f, "note:other"));
  g_assert_cmpint (hb_sync_manager_get_session_status (f->manager, "session:s1"), ==,
                   HB_SESSION_SYNC_STATUS_SYNCED);

  hb_sync_manager_sync_session_async (f->manager, "session:s2", NULL, on_session_sync, &s);
  hb_test_wait_for (&s.done);
  g_assert_no_error (s.error);
  g_assert_cmpint (s.synced, ==, 1);
}

static void
test_ensure_dead_server (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbSyncConfig) config = hb_sync_config_new ("http://127.0.0.1:1/clinic");
  g_autoptr (HbSyncManager) manager = hb_sync_manager_new (f->store, config, &error);
  Wait w = { 0 };
  gint64 start = g_get_monotonic_time ();

  put_doc (f->store, "session:s1", NULL);
  hb_sync_manager_ensure_session_synced_async (manager, "session:s1", 1500, NULL, on_ensure, &w);
  hb_test_wait_for (&w.done);
  g_assert_no_error (w.error);
  g_assert_false (w.answer);
  g_assert_cmpint (g_get_monotonic_time () - start, <, 10 * G_USEC_PER_SEC);
}

/* ---- revision trees (as in test-replicator.c) ------------------------------------------ */

/* The same for the server's database, read with open_revs=all. */
static GHashTable *
server_trees (const char *db_url)
{
  g_autofree char *changes_url = g_strdup_printf ("%s/_changes?style=all_docs", db_url);
  g_autoptr (JsonNode) changes = hb_test_http_json ("GET", changes_url, NULL, NULL);
  GHashTable *trees = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  JsonArray *rows = json_object_get_array_member (json_node_get_object (changes), "results");

  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      const char *id
          = json_object_get_string_member (json_array_get_object_element (rows, i), "id");
      g_autofree char *escaped = g_uri_escape_string (id, NULL, FALSE);
      g_autofree char *url = g_strdup_printf ("%s/%s?open_revs=all&revs=true", db_url, escaped);
      g_autoptr (JsonNode) answer = hb_test_http_json ("GET", url, NULL, NULL);
      JsonArray *list = json_node_get_array (answer);
      g_autoptr (GPtrArray) leaves = g_ptr_array_new_with_free_func (g_free);
      GString *all = g_string_new (NULL);

      for (guint l = 0; l < json_array_get_length (list); l++)
        {
          JsonObject *entry = json_array_get_object_element (list, l);
          JsonNode *doc = json_object_get_member (entry, "ok");

          g_assert_nonnull (doc);
          g_ptr_array_add (leaves, hb_json_to_canonical (doc, NULL));
        }
      g_ptr_array_sort (leaves, hb_test_compare_strv_items);
      for (guint l = 0; l < leaves->len; l++)
        g_string_append_printf (all, "%s\n", (char *)leaves->pdata[l]);
      g_hash_table_insert (trees, g_strdup (id), g_string_free (all, FALSE));
    }
  return trees;
}

static void
assert_trees_equal (GHashTable *a, GHashTable *b)
{
  GHashTableIter iter;
  gpointer key, value;

  g_assert_cmpuint (g_hash_table_size (a), ==, g_hash_table_size (b));
  g_hash_table_iter_init (&iter, a);
  while (g_hash_table_iter_next (&iter, &key, &value))
    g_assert_cmpstr (value, ==, g_hash_table_lookup (b, key));
}

/* id → its leaf revisions, sorted and joined: a cheap view of a changes feed to poll. */
static GHashTable *
leaves_of (JsonNode *changes)
{
  JsonArray *rows = json_object_get_array_member (json_node_get_object (changes), "results");
  GHashTable *leaves = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);

  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);
      JsonArray *revs = json_object_get_array_member (row, "changes");
      g_autoptr (GPtrArray) list = g_ptr_array_new ();
      g_autofree char *joined = NULL;

      for (guint r = 0; r < json_array_get_length (revs); r++)
        g_ptr_array_add (list, (gpointer)json_object_get_string_member (
                                   json_array_get_object_element (revs, r), "rev"));
      g_ptr_array_sort (list, hb_test_compare_strv_items);
      g_ptr_array_add (list, NULL);
      joined = g_strjoinv (",", (char **)list->pdata);
      g_hash_table_insert (leaves, g_strdup (json_object_get_string_member (row, "id")),
                           g_steal_pointer (&joined));
    }
  return leaves;
}

static gboolean
same_leaves (GHashTable *a, GHashTable *b)
{
  GHashTableIter iter;
  gpointer key, value;

  if (g_hash_table_size (a) != g_hash_table_size (b))
    return FALSE;
  g_hash_table_iter_init (&iter, a);
  while (g_hash_table_iter_next (&iter, &key, &value))
    if (g_strcmp0 (value, g_hash_table_lookup (b, key)) != 0)
      return FALSE;
  return TRUE;
}

/* ---- the proxy ------------------------------------------------------------------------- */

/* The proxy's statistics: the "stats" object of the reply, kept alive by *out_root. */
static JsonObject *
proxy_stats (HbTestProxy *proxy, JsonNode **out_root)
{
  *out_root = hb_test_proxy_cmd (proxy, "{\"cmd\": \"stats\"}");
  return json_object_get_object_member (json_node_get_object (*out_root), "stats");
}

/* Whether every fault with a count has acted that many times. */
static gboolean
faults_exhausted (HbTestProxy *proxy)
{
  g_autoptr (JsonNode) reply = hb_test_proxy_cmd (proxy, "{\"cmd\": \"config\", \"rules\": {}}");
  JsonArray *faults = json_object_get_array_member (
      json_object_get_object_member (json_node_get_object (reply), "rules"), "faults");

  for (guint i = 0; i < json_array_get_length (faults); i++)
    {
      JsonNode *remaining
          = json_object_get_member (json_array_get_object_element (faults, i), "remaining");

      if (remaining == NULL || JSON_NODE_HOLDS_NULL (remaining)
          || json_node_get_int (remaining) > 0)
        return FALSE;
    }
  return TRUE;
}

/* ---- writers on both sides ------------------------------------------------------------- */

#define EXPECT(depth, deleted) GUINT_TO_POINTER ((depth)*2 + ((deleted) ? 1 : 0))

/* Writes (creates, edits or deletes) a note in the store and records what was written. */
static void
local_write (Fixture *f, const char *id, gboolean delete)
{
  g_autoptr (GError) error = NULL;
  const char *rev = g_hash_table_lookup (f->revs, id);
  guint depth = GPOINTER_TO_UINT (g_hash_table_lookup (f->expected, id)) / 2;
  char *new_rev;

  if (delete)
    new_rev = hb_store_delete_sync (f->store, id, rev, NULL, &error);
  else
    {
      g_autofree char *text
          = g_strdup_printf ("{\"_id\":\"%s\",\"type\":\"note\",\"session_id\":\"session:s1\","
                             "\"text\":\"written in the store, revision %u\"}",
                             id, depth + 1);
      g_autoptr (JsonNode) doc = hb_test_json (text);

      if (rev != NULL)
        json_object_set_string_member (json_node_get_object (doc), "_rev", rev);
      new_rev = hb_store_put_sync (f->store, doc, NULL, &error);
    }
  g_assert_no_error (error);
  g_hash_table_replace (f->revs, g_strdup (id), new_rev);
  g_hash_table_replace (f->expected, g_strdup (id), EXPECT (depth + 1, delete));
}

/* The same on the server, directly (never through the proxy and its faults). */
static void
server_write (Fixture *f, const char *id, gboolean delete)
{
  const char *rev = g_hash_table_lookup (f->revs, id);
  guint depth = GPOINTER_TO_UINT (g_hash_table_lookup (f->expected, id)) / 2;
  g_autofree char *escaped = g_uri_escape_string (id, NULL, FALSE);
  g_autofree char *url = NULL;
  g_autofree char *body = NULL;
  g_autoptr (JsonNode) answer = NULL;
  guint status = 0;

  if (delete)
    {
      url = g_strdup_printf ("%s/%s?rev=%s", f->db_url, escaped, rev);
      answer = hb_test_http_json ("DELETE", url, NULL, &status);
    }
  else
    {
      url = g_strdup_printf ("%s/%s", f->db_url, escaped);
      body = g_strdup_printf ("{%s%s%s\"type\":\"note\",\"session_id\":\"session:s9\","
                              "\"text\":\"written on the server, revision %u\"}",
                              rev != NULL ? "\"_rev\":\"" : "", rev != NULL ? rev : "",
                              rev != NULL ? "\"," : "", depth + 1);
      answer = hb_test_http_json ("PUT", url, body, &status);
    }
  g_assert_true (status == 200 || status == 201);
  g_hash_table_replace (
      f->revs, g_strdup (id),
      g_strdup (json_object_get_string_member (json_node_get_object (answer), "rev")));
  g_hash_table_replace (f->expected, g_strdup (id), EXPECT (depth + 1, delete));
}

#define N_INITIAL 100
#define N_TICKS 12
#define TICK_MS 150

/* ~100 notes in the store and ~100 others on the server, before the manager starts. */
static void
write_initial (Fixture *f)
{
  GString *body = g_string_new ("{\"docs\":[");
  g_autofree char *url = g_strdup_printf ("%s/_bulk_docs", f->db_url);
  g_autoptr (JsonNode) answer = NULL;
  JsonArray *list;
  guint status = 0;

  for (guint i = 0; i < N_INITIAL; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:L%03u", i);

      local_write (f, id, FALSE);
      g_string_append_printf (body,
                              "%s{\"_id\":\"note:S%03u\",\"type\":\"note\","
                              "\"session_id\":\"session:s9\",\"text\":\"on the server, %u\"}",
                              i > 0 ? "," : "", i, i);
    }
  g_string_append (body, "]}");
  answer = hb_test_http_json ("POST", url, body->str, &status);
  g_string_free (body, TRUE);
  g_assert_cmpuint (status, ==, 201);
  list = json_node_get_array (answer);
  g_assert_cmpuint (json_array_get_length (list), ==, N_INITIAL);
  for (guint i = 0; i < N_INITIAL; i++)
    {
      JsonObject *entry = json_array_get_object_element (list, i);

      g_assert_false (json_object_has_member (entry, "error"));
      g_hash_table_replace (f->revs, g_strdup (json_object_get_string_member (entry, "id")),
                            g_strdup (json_object_get_string_member (entry, "rev")));
      g_hash_table_replace (f->expected, g_strdup (json_object_get_string_member (entry, "id")),
                            EXPECT (1, FALSE));
    }
}

/* Both sides keep writing while the manager runs: a new note on each side every tick, an edit
 * of an older one on one side or the other, one deletion on each side. No document is written
 * on both sides, so there is no conflict to expect. */
static gboolean
writer_tick (gpointer data)
{
  Fixture *f = data;
  guint i = f->ticks++;
  g_autofree char *local_new = g_strdup_printf ("note:LX%02u", i);
  g_autofree char *server_new = g_strdup_printf ("note:SX%02u", i);
  g_autofree char *local_old = g_strdup_printf ("note:L%03u", (i * 7) % N_INITIAL);
  g_autofree char *server_old = g_strdup_printf ("note:S%03u", (i * 7) % N_INITIAL);

  local_write (f, local_new, FALSE);
  server_write (f, server_new, FALSE);
  if (i % 2 == 0)
    local_write (f, local_old, FALSE);
  else
    server_write (f, server_old, FALSE);
  if (i == 5)
    local_write (f, "note:L050", TRUE);
  if (i == 6)
    server_write (f, "note:S050", TRUE);
  if (f->ticks < N_TICKS)
    return G_SOURCE_CONTINUE;
  f->writer_id = 0;
  return G_SOURCE_REMOVE;
}

/* Runs the main loop for @ms milliseconds. */
static void
run_for (guint ms)
{
  gint64 end = g_get_monotonic_time () + (gint64)ms * 1000;

  while (g_get_monotonic_time () < end)
    {
      g_main_context_iteration (NULL, FALSE);
      g_usleep (1000);
    }
}

/* Up to date, every write done, and both sides list the same leaves for every document. */
static gboolean
converged (Fixture *f)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) local = NULL;
  g_autoptr (JsonNode) remote = NULL;
  g_autoptr (GHashTable) a = NULL;
  g_autoptr (GHashTable) b = NULL;
  g_autofree char *url = NULL;

  if (f->writer_id != 0 || hb_sync_manager_get_status (f->manager) != HB_SYNC_STATUS_UP_TO_DATE)
    return FALSE;
  local = hb_store_changes_sync (f->store, 0, 0, NULL, &error);
  g_assert_no_error (error);
  url = g_strdup_printf ("%s/_changes?style=all_docs", f->db_url);
  remote = hb_test_http_json ("GET", url, NULL, NULL);
  a = leaves_of (local);
  b = leaves_of (remote);
  return g_hash_table_size (a) == g_hash_table_size (f->expected) && same_leaves (a, b);
}

/* With HB_TEST_DUMP set, the proxy's log of requests, for a person debugging a failure. */
static void
dump_proxy (Fixture *f)
{
  g_autoptr (JsonNode) dump = NULL;
  JsonArray *reqs;

  if (g_getenv ("HB_TEST_DUMP") == NULL || f->proxy == NULL)
    return;
  dump = hb_test_proxy_cmd (f->proxy, "{\"cmd\": \"stats\"}");
  reqs = json_object_get_array_member (
      json_object_get_object_member (json_node_get_object (dump), "stats"), "requests");
  for (guint i = 0; i < json_array_get_length (reqs); i++)
    {
      JsonObject *r = json_array_get_object_element (reqs, i);
      g_autofree char *st = json_to_string (json_object_get_member (r, "status"), FALSE);

      g_printerr ("proxy: %s %s %s\n", json_object_get_string_member (r, "method"),
                  json_object_get_string_member (r, "url"), st);
    }
}

/* Polls converged() every 100 ms; fails the test after timeout_ms. */
static void
wait_converged (Fixture *f, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64)timeout_ms * 1000;

  while (!converged (f))
    {
      if (g_get_monotonic_time () > deadline)
        {
          g_autofree char *text = statuses_text (f);

          dump_proxy (f);
          g_error ("not converged after %u ms (pending push %" G_GINT64_FORMAT
                   ", pull %" G_GINT64_FORMAT ", last error %s), statuses: %s",
                   timeout_ms, hb_sync_manager_get_pending_push (f->manager),
                   hb_sync_manager_get_pending_pull (f->manager),
                   hb_sync_manager_get_last_error (f->manager), text);
        }
      run_for (100);
    }
}

/* One document's tree: exactly one leaf (no conflict was made), of the depth written (no
 * revision twice, none lost), deleted if it was deleted. */
static void
assert_one_leaf (const char *id, const char *tree, guint expected)
{
  g_auto (GStrv) lines = g_strsplit (tree, "\n", -1);
  g_autoptr (JsonNode) leaf = NULL;
  JsonObject *obj, *revisions;
  guint depth = expected / 2;
  g_autofree char *prefix = g_strdup_printf ("%u-", depth);

  /* One leaf, then the empty string after the last newline. */
  if (g_strv_length (lines) != 2)
    g_error ("%s has %u leaves:\n%s", id, g_strv_length (lines) - 1, tree);
  leaf = hb_test_json (lines[0]);
  obj = json_node_get_object (leaf);
  g_assert_cmpstr (json_object_get_string_member (obj, "_id"), ==, id);
  g_assert_true (g_str_has_prefix (json_object_get_string_member (obj, "_rev"), prefix));
  revisions = json_object_get_object_member (obj, "_revisions");
  g_assert_nonnull (revisions);
  g_assert_cmpint (json_object_get_int_member (revisions, "start"), ==, depth);
  g_assert_cmpuint (json_array_get_length (json_object_get_array_member (revisions, "ids")), ==,
                    depth);
  g_assert_cmpint (json_object_get_boolean_member_with_default (obj, "_deleted", FALSE), ==,
                   expected % 2 == 1);
}

/* Every document written on either side is on both, with identical revision trees, each one
 * leaf of the depth written. */
static void
assert_converged (Fixture *f)
{
  g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
  g_autoptr (GHashTable) remote = server_trees (f->db_url);
  GHashTableIter iter;
  gpointer key, value;

  assert_trees_equal (local, remote);
  g_assert_cmpuint (g_hash_table_size (local), ==, g_hash_table_size (f->expected));
  g_hash_table_iter_init (&iter, f->expected);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      const char *tree = g_hash_table_lookup (local, key);

      if (tree == NULL)
        g_error ("%s is missing", (const char *)key);
      assert_one_leaf (key, tree, GPOINTER_TO_UINT (value));
    }
}

static const char *
status_name (HbSyncStatus status)
{
  static const char *const names[]
      = { "disabled", "offline", "connecting", "syncing", "up-to-date", "auth-failed", "error" };

  return status < G_N_ELEMENTS (names) ? names[status] : "?";
}

static char *
statuses_text (Fixture *f)
{
  GString *s = g_string_new (NULL);

  for (guint i = 0; i < f->statuses->len; i++)
    g_string_append_printf (s, "%s%s", i > 0 ? " " : "",
                            status_name (g_array_index (f->statuses, HbSyncStatus, i)));
  return g_string_free (s, FALSE);
}

static gboolean
saw_status (Fixture *f, HbSyncStatus status)
{
  for (guint i = 0; i < f->statuses->len; i++)
    if (g_array_index (f->statuses, HbSyncStatus, i) == status)
      return TRUE;
  return FALSE;
}

/* ---- faults during continuous sync ----------------------------------------------------- */

typedef enum
{
  NEVER,  /* must not be seen */
  ALWAYS, /* must be seen */
} Seen;

typedef struct
{
  const char *fault; /* the fault, JSON */
  guint fault_ms;    /* a fault without a count is removed after this long */
  guint timeout_ms;  /* HbSyncConfig:timeout-ms, 0 for the default */
  Seen offline;
  Seen error;
} Scenario;

static void
assert_seen (Fixture *f, HbSyncStatus status, Seen seen)
{
  g_autofree char *text = statuses_text (f);

  if (seen == NEVER && saw_status (f, status))
    g_error ("%s seen: %s\n%s", status_name (status), text, f->failures->str);
  if (seen == ALWAYS && !saw_status (f, status))
    g_error ("%s never seen: %s\n%s", status_name (status), text, f->failures->str);
}

/* The manager syncs continuously through the proxy while both sides write and the fault acts;
 * once it is gone the two sides converge with nothing lost and nothing written twice, and the
 * statuses passed were the right ones. */
static void
run_scenario (Fixture *f, const Scenario *s)
{
  g_autofree char *text = NULL;
  g_autoptr (JsonNode) stats_root = NULL;
  JsonObject *stats;
  HbSyncStatus last;
  gint64 deadline;

  g_assert_nonnull (f->proxy);
  if (s->timeout_ms != 0)
    {
      g_autoptr (HbSyncConfig) config = quick_config (f->sync_url);

      hb_sync_config_set_timeout_ms (config, s->timeout_ms);
      use_config (f, config);
    }
  write_initial (f);
  PROXY_DO (f->proxy, "{\"cmd\": \"fault\", \"fault\": %s}", s->fault);

  hb_sync_manager_start (f->manager);
  f->writer_id = g_timeout_add (TICK_MS, writer_tick, f);
  if (s->fault_ms != 0)
    run_for (s->fault_ms);
  else
    {
      deadline = g_get_monotonic_time () + 90 * G_USEC_PER_SEC;
      while (!faults_exhausted (f->proxy))
        {
          if (g_get_monotonic_time () > deadline)
            g_error ("the fault never ran out: status %d", hb_sync_manager_get_status (f->manager));
          run_for (100);
        }
    }
  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"faults\": null}}");
  wait_converged (f, 30000);

  text = statuses_text (f);
  g_test_message ("statuses: %s", text);
  assert_converged (f);

  /* Offline is not an error, an error is not an authentication failure. */
  assert_seen (f, HB_SYNC_STATUS_AUTH_FAILED, NEVER);
  assert_seen (f, HB_SYNC_STATUS_DISABLED, NEVER);
  assert_seen (f, HB_SYNC_STATUS_OFFLINE, s->offline);
  assert_seen (f, HB_SYNC_STATUS_ERROR, s->error);
  g_assert_cmpint (g_array_index (f->statuses, HbSyncStatus, 0), ==, HB_SYNC_STATUS_CONNECTING);
  last = g_array_index (f->statuses, HbSyncStatus, f->statuses->len - 1);
  g_assert_cmpint (last, ==, HB_SYNC_STATUS_UP_TO_DATE);
  g_assert_cmpuint (f->inconsistent, ==, 0);

  /* Converged means quiet: the longpoll waits, no document moves again (a pull may still
   * check the rows the last push added to the server's feed, and find nothing to fetch). */
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  run_for (1500);
  dump_proxy (f);
  stats = proxy_stats (f->proxy, &stats_root);
  g_assert_cmpint (
      json_object_get_int_member (json_object_get_object_member (stats, "bulk_docs"), "requests"),
      ==, 0);
  g_assert_cmpint (
      json_object_get_int_member (json_object_get_object_member (stats, "bulk_get"), "requests"),
      ==, 0);
  g_assert_cmpint (json_object_get_int_member (stats, "total"), <=, 15);
  g_assert_cmpint (hb_sync_manager_get_status (f->manager), ==, HB_SYNC_STATUS_UP_TO_DATE);
}

/* Connections dropped in the middle of the `_bulk_docs` answer, after the server applied the
 * write: more than the replicator's retries, so a run fails. Two requests may be in flight,
 * each with five attempts, so nine drops in a row are more than any run absorbs. A dropped
 * connection is a network failure: the manager shows OFFLINE, never ERROR. */
static void
test_fault_drop_bulk_docs (Fixture *f, gconstpointer data)
{
  const Scenario s = {
    .fault = "{\"action\": \"drop\", \"method\": \"POST\", \"path\": \"/_bulk_docs$\", "
             "\"after_bytes\": 1, \"count\": 9}",
    .offline = ALWAYS,
    .error = NEVER,
  };

  run_scenario (f, &s);
}

/* The same for `_bulk_get`, where a page fetched ahead may fail beside the page being read. */
static void
test_fault_drop_bulk_get (Fixture *f, gconstpointer data)
{
  const Scenario s = {
    .fault = "{\"action\": \"drop\", \"method\": \"POST\", \"path\": \"/_bulk_get$\", "
             "\"after_bytes\": 40, \"count\": 9}",
    .offline = ALWAYS,
    .error = NEVER,
  };

  run_scenario (f, &s);
}

/* Short bursts of 5xx: the replicator's own retries absorb them, the manager never fails. */
static void
test_fault_500_burst (Fixture *f, gconstpointer data)
{
  const Scenario s = {
    .fault = "{\"action\": \"status\", \"status\": 500, \"path\": \"/_revs_diff$\", "
             "\"count\": 3}",
    .offline = NEVER,
    .error = NEVER,
  };

  run_scenario (f, &s);
}

static void
test_fault_503_burst (Fixture *f, gconstpointer data)
{
  const Scenario s = {
    .fault = "{\"action\": \"status\", \"status\": 503, \"path\": \"/_local/\", \"count\": 3}",
    .offline = NEVER,
    .error = NEVER,
  };

  run_scenario (f, &s);
}

/* 30 answers 503 in a row, whatever the request: longer than the replicator's retries, so runs
 * fail; the server answered, so this is ERROR, not OFFLINE, and it recovers. */
static void
test_fault_503_long (Fixture *f, gconstpointer data)
{
  const Scenario s = {
    .fault = "{\"action\": \"status\", \"status\": 503, \"count\": 30}",
    .offline = NEVER,
    .error = ALWAYS,
  };

  run_scenario (f, &s);
}

/* `_bulk_get` answers slower than the timeout: a timeout is the network's failure, OFFLINE. */
static void
test_fault_slow (Fixture *f, gconstpointer data)
{
  const Scenario s = {
    .fault = "{\"action\": \"delay\", \"method\": \"POST\", \"path\": \"/_bulk_get$\", "
             "\"ms\": 2500, \"count\": 6}",
    .timeout_ms = 1000,
    .offline = ALWAYS,
    .error = NEVER,
  };

  run_scenario (f, &s);
}

/* `_changes` bodies cut short of their Content-Length (the pull's feed and the longpoll): a
 * connection that ended early, OFFLINE, never ERROR. */
static void
test_fault_truncate (Fixture *f, gconstpointer data)
{
  const Scenario s = {
    .fault = "{\"action\": \"truncate\", \"path\": \"/_changes$\", \"count\": 6}",
    .offline = ALWAYS,
    .error = NEVER,
  };

  run_scenario (f, &s);
}

/* Every change row sent twice for a while: the pull must apply each once. */
static void
test_fault_duplicate_changes (Fixture *f, gconstpointer data)
{
  const Scenario s = {
    .fault = "{\"action\": \"duplicate_changes\", \"path\": \"/_changes$\"}",
    .fault_ms = 3000,
    .offline = NEVER,
    .error = NEVER,
  };

  run_scenario (f, &s);
}

/* ---- authentication -------------------------------------------------------------------- */

static gboolean
is_auth_failed (Fixture *f)
{
  return hb_sync_manager_get_status (f->manager) == HB_SYNC_STATUS_AUTH_FAILED;
}

/* A manager for the per-user database behind the authenticating proxy. */
static void
use_user_db (Fixture *f, const char *user, const char *secret)
{
  g_autofree char *url = g_strdup_printf ("%s/clinic", f->proxy->url);
  g_autoptr (HbSyncConfig) config = quick_config (url);

  hb_sync_config_set_auth_method (config, HB_AUTH_METHOD_BASIC);
  hb_sync_config_set_username (config, user);
  hb_sync_config_set_secret (config, secret);
  use_config (f, config);
}

/* Right credentials through an authenticating proxy sync into the user's own database. */
static void
test_auth_user_db (Fixture *f, gconstpointer data)
{
  g_autofree char *user_db = g_strdup_printf ("%s/userdb-alice", f->server->url);
  g_autofree char *url = g_strdup_printf ("%s/note:from-server", user_db);
  g_autoptr (JsonNode) created = hb_test_http_json ("PUT", user_db, NULL, NULL);
  g_autoptr (JsonNode) put = NULL;
  g_autoptr (GHashTable) local = NULL;
  g_autoptr (GHashTable) remote = NULL;

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"basic_auth\": \"alice:s3cret\", "
                      "\"user_db\": \"clinic\"}}");
  use_user_db (f, "alice", "s3cret");
  put_doc (f->store, "note:from-store", NULL);
  put = hb_test_http_json ("PUT", url, "{\"type\":\"note\"}", NULL);

  hb_sync_manager_start (f->manager);
  wait_until (is_up_to_date, f, 30000);
  local = hb_test_store_trees (f->store);
  remote = server_trees (user_db);
  g_assert_cmpuint (g_hash_table_size (local), ==, 2);
  assert_trees_equal (local, remote);
  /* Nothing went to the database named in the URL. */
  g_free (url);
  url = g_strdup_printf ("%s/note:from-store", f->db_url);
  g_clear_pointer (&put, json_node_unref);
  {
    guint status = 0;

    put = hb_test_http_json ("GET", url, NULL, &status);
    g_assert_cmpuint (status, ==, 404);
  }
  assert_seen (f, HB_SYNC_STATUS_AUTH_FAILED, NEVER);
  assert_seen (f, HB_SYNC_STATUS_ERROR, NEVER);
  g_assert_cmpuint (f->token_needed, ==, 0);
}

/* Wrong credentials: AUTH_FAILED, neither ERROR nor OFFLINE, and no retry storm: a local write
 * does not send anything either. hb_sync_manager_start() tries again (here once the server
 * accepts the credentials). */
static void
test_auth_wrong_credentials (Fixture *f, gconstpointer data)
{
  g_autofree char *user_db = g_strdup_printf ("%s/userdb-alice", f->server->url);
  g_autoptr (JsonNode) created = hb_test_http_json ("PUT", user_db, NULL, NULL);
  g_autoptr (JsonNode) stats_root = NULL;
  JsonObject *stats;
  g_autoptr (GHashTable) local = NULL;
  g_autoptr (GHashTable) remote = NULL;

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"basic_auth\": \"alice:s3cret\", "
                      "\"user_db\": \"clinic\"}}");
  use_user_db (f, "alice", "wrong");
  put_doc (f->store, "note:1", NULL);
  hb_sync_manager_start (f->manager);
  wait_until (is_auth_failed, f, 30000);
  g_assert_nonnull (hb_sync_manager_get_last_error (f->manager));
  assert_seen (f, HB_SYNC_STATUS_ERROR, NEVER);
  assert_seen (f, HB_SYNC_STATUS_OFFLINE, NEVER);
  g_assert_cmpuint (f->token_needed, ==, 0); /* basic, not bearer */

  /* Let whatever was in flight end, then count. */
  run_for (300);
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  put_doc (f->store, "note:2", NULL);
  run_for (3000);
  stats = proxy_stats (f->proxy, &stats_root);
  g_assert_cmpint (json_object_get_int_member (stats, "total"), <=, 2);
  g_assert_cmpint (hb_sync_manager_get_status (f->manager), ==, HB_SYNC_STATUS_AUTH_FAILED);

  /* The server now takes these credentials: start() is how the application says "try again". */
  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"basic_auth\": \"alice:wrong\"}}");
  hb_sync_manager_start (f->manager);
  wait_until (is_up_to_date, f, 30000);
  local = hb_test_store_trees (f->store);
  remote = server_trees (user_db);
  g_assert_cmpuint (g_hash_table_size (local), ==, 2);
  assert_trees_equal (local, remote);
}

/* How many times the remote logged in through the proxy (POST /_session). */
static gint64
count_logins (Fixture *f)
{
  g_autoptr (JsonNode) root = NULL;
  JsonObject *stats = proxy_stats (f->proxy, &root);

  return json_object_get_int_member_with_default (json_object_get_object_member (stats, "by_route"),
                                                  "POST /_session", 0);
}

static void
wait_logins (Fixture *f, gint64 n)
{
  gint64 deadline = g_get_monotonic_time () + 20 * G_USEC_PER_SEC;

  while (count_logins (f) < n)
    {
      if (g_get_monotonic_time () > deadline)
        g_error ("fewer than %" G_GINT64_FORMAT " logins after 20 s", n);
      run_for (50);
    }
}

/* A cookie session that the server forgets in the middle of a continuous sync (as a CouchDB
 * restart or a cookie's expiry does): every request then gets a 401, the remote logs in again
 * and replays, and the sync goes on with nothing lost, never AUTH_FAILED. */
static void
test_fault_cookie_expiry (Fixture *f, gconstpointer data)
{
  g_autoptr (HbSyncConfig) config = quick_config (f->sync_url);
  g_autofree char *text = NULL;
  gint64 logins;

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"basic_auth\": \"alice:s3cret\"}}");
  hb_sync_config_set_auth_method (config, HB_AUTH_METHOD_COOKIE);
  hb_sync_config_set_username (config, "alice");
  hb_sync_config_set_secret (config, "s3cret");
  use_config (f, config);
  /* A login at most every second (5 s by default), so that two expiries fit in a short test. */
  hb_remote_set_login_interval (hb_sync_manager_get_remote (f->manager), 1);
  write_initial (f);

  hb_sync_manager_start (f->manager);
  f->writer_id = g_timeout_add (TICK_MS, writer_tick, f);
  wait_logins (f, 1);
  run_for (1200);
  PROXY_DO (f->proxy, "{\"cmd\": \"expire-sessions\"}");
  /* The next expiry once the remote may log in again: one refused right after a login counts
   * as a refusal of the credentials (HbRemote:login-interval). */
  wait_logins (f, 2);
  run_for (1200);
  PROXY_DO (f->proxy, "{\"cmd\": \"expire-sessions\"}");
  /* The writers are done by now: a write on each side makes both directions meet the expired
   * cookie. */
  local_write (f, "note:after-expiry-L", FALSE);
  server_write (f, "note:after-expiry-S", FALSE);
  wait_converged (f, 30000);

  text = statuses_text (f);
  g_test_message ("statuses: %s", text);
  assert_converged (f);
  assert_seen (f, HB_SYNC_STATUS_AUTH_FAILED, NEVER);
  assert_seen (f, HB_SYNC_STATUS_ERROR, NEVER);
  assert_seen (f, HB_SYNC_STATUS_OFFLINE, NEVER);
  g_assert_cmpuint (f->inconsistent, ==, 0);
  g_assert_cmpuint (f->token_needed, ==, 0);

  /* The cookie was used (the proxy served the logins), and renewed after each expiry, but
   * not more: logins are rate-limited. */
  logins = count_logins (f);
  g_test_message ("%" G_GINT64_FORMAT " logins", logins);
  g_assert_cmpint (logins, >=, 3);
  g_assert_cmpint (logins, <=, 6);
}

static gboolean
needs_token (Fixture *f)
{
  return f->token_needed > 0 && is_auth_failed (f);
}

static gboolean
server_and_store_have_wanted (Fixture *f)
{
  return is_up_to_date (f) && server_has_wanted (f) && store_has_wanted (f);
}

/* A bearer token for an authenticating proxy: when the proxy replaces it, the manager says
 * token-needed (and AUTH_FAILED, never ERROR); a new token and start() resume the sync. */
static void
test_auth_bearer_renewal (Fixture *f, gconstpointer data)
{
  g_autoptr (HbSyncConfig) config = quick_config (f->sync_url);
  g_autofree char *url = g_strdup_printf ("%s/note:server-2", f->db_url);
  g_autoptr (JsonNode) put = NULL;

  PROXY_DO (f->proxy, "{\"cmd\": \"set-token\", \"token\": \"token-1\", \"user\": \"alice\"}");
  hb_sync_config_set_auth_method (config, HB_AUTH_METHOD_BEARER);
  hb_sync_config_set_secret (config, "token-1");
  use_config (f, config);
  put_doc (f->store, "note:1", NULL);
  hb_sync_manager_start (f->manager);
  wait_until (is_up_to_date, f, 30000);
  g_assert_true (server_has (f, "note:1"));
  g_assert_cmpuint (f->token_needed, ==, 0);

  /* The proxy moves on to another token: the old one is refused as expired. */
  PROXY_DO (f->proxy, "{\"cmd\": \"set-token\", \"token\": \"token-2\", \"user\": \"alice\"}");
  put_doc (f->store, "note:2", NULL);
  wait_until (needs_token, f, 30000);
  assert_seen (f, HB_SYNC_STATUS_ERROR, NEVER);
  assert_seen (f, HB_SYNC_STATUS_OFFLINE, NEVER);
  g_assert_false (server_has (f, "note:2"));
  /* Not retried with the refused token: the manager waits for a new one. */
  run_for (1000);
  g_test_message ("token-needed emitted %u times", f->token_needed);
  g_assert_cmpint (hb_sync_manager_get_status (f->manager), ==, HB_SYNC_STATUS_AUTH_FAILED);
  g_assert_cmpuint (f->token_needed, <=, 2);

  hb_sync_config_set_secret (f->config, "token-2");
  hb_sync_manager_start (f->manager);
  put = hb_test_http_json ("PUT", url, "{\"type\":\"note\"}", NULL);
  wanted_id = "note:2";
  wait_until (server_has_wanted, f, 30000);
  wanted_id = "note:server-2";
  wait_until (server_and_store_have_wanted, f, 30000);
  g_assert_cmpuint (f->token_needed, <=, 2);
  g_assert_cmpuint (f->inconsistent, ==, 0);
}

/* stop() then start() at once, while the stopped runs still wind down: the new start syncs. */
static void
test_restart (Fixture *f, gconstpointer data)
{
  g_autofree char *url = NULL;
  g_autoptr (JsonNode) put = NULL;

  put_doc (f->store, "note:1", NULL);
  hb_sync_manager_start (f->manager);
  run_for (20);
  hb_sync_manager_stop (f->manager);
  g_assert_cmpint (hb_sync_manager_get_status (f->manager), ==, HB_SYNC_STATUS_DISABLED);
  hb_sync_manager_start (f->manager);
  wait_until (is_up_to_date, f, 20000);
  g_assert_true (server_has (f, "note:1"));
  /* Both directions go on: the longpoll is watching again. */
  url = g_strdup_printf ("%s/note:2", f->db_url);
  put = hb_test_http_json ("PUT", url, "{\"type\":\"note\"}", NULL);
  wanted_id = "note:2";
  wait_until (store_has_wanted, f, 20000);
  assert_seen (f, HB_SYNC_STATUS_ERROR, NEVER);
  assert_seen (f, HB_SYNC_STATUS_OFFLINE, NEVER);
}

/* ---- ensure_session_synced through the proxy ------------------------------------------- */

static void
test_ensure_through_proxy (Fixture *f, gconstpointer data)
{
  Wait w1 = { 0 }, w2 = { 0 }, w3 = { 0 };
  gint64 start;

  put_doc (f->store, "session:s1", "\"patient_id\":\"patient:p1\"");
  put_doc (f->store, "patient:p1", NULL);
  put_doc (f->store, "note:a", "\"session_id\":\"session:s1\"");

  /* A live server. */
  hb_sync_manager_ensure_session_synced_async (f->manager, "session:s1", 10000, NULL, on_ensure,
                                               &w1);
  hb_test_wait_for (&w1.done);
  g_assert_no_error (w1.error);
  g_assert_true (w1.answer);
  g_assert_true (server_has (f, "note:a"));

  /* The proxy drops every connection: FALSE when the time is up. */
  PROXY_DO (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"drop\", "
                      "\"forward\": false}}");
  put_doc (f->store, "note:b", "\"session_id\":\"session:s1\"");
  start = g_get_monotonic_time ();
  hb_sync_manager_ensure_session_synced_async (f->manager, "session:s1", 1500, NULL, on_ensure,
                                               &w2);
  hb_test_wait_for (&w2.done);
  g_test_message ("ensure answered after %" G_GINT64_FORMAT " ms",
                  (g_get_monotonic_time () - start) / 1000);
  g_assert_no_error (w2.error);
  g_assert_false (w2.answer);
  /* Due at the deadline, not when the run has wound down (a retry's backoff, a checkpoint's
   * grace can take seconds more). */
  g_assert_cmpint (g_get_monotonic_time () - start, <, (1500 + 500) * 1000);
  g_assert_cmpint (hb_sync_manager_get_session_status (f->manager, "session:s1"), ==,
                   HB_SESSION_SYNC_STATUS_FAILED);
  g_assert_false (server_has (f, "note:b"));

  /* The server is back. */
  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"faults\": null}}");
  hb_sync_manager_ensure_session_synced_async (f->manager, "session:s1", 10000, NULL, on_ensure,
                                               &w3);
  hb_test_wait_for (&w3.done);
  g_assert_no_error (w3.error);
  g_assert_true (w3.answer);
  g_assert_true (server_has (f, "note:b"));
  g_assert_cmpint (hb_sync_manager_get_session_status (f->manager, "session:s1"), ==,
                   HB_SESSION_SYNC_STATUS_SYNCED);
}

/* ---- conflicts ------------------------------------------------------------------------- */

typedef struct
{
  guint count;
  char *id;
  char *winner;
  char *kept;
  guint n_conflicts;
} ConflictSeen;

static void
on_conflict (HbSyncManager *manager,
             const char *id,
             const char *winner,
             const char *const *conflicts,
             const char *kept,
             gpointer data)
{
  ConflictSeen *seen = data;

  seen->count++;
  g_free (seen->id);
  g_free (seen->winner);
  g_free (seen->kept);
  seen->id = g_strdup (id);
  seen->winner = g_strdup (winner);
  seen->kept = g_strdup (kept);
  seen->n_conflicts = g_strv_length ((char **)conflicts);
}

static ConflictSeen *conflict_seen;

static gboolean
conflict_reported (Fixture *f)
{
  return conflict_seen->count > 0;
}

/* A document edited here, and on the server a sibling branch from the same parent: after the
 * pull the manager reports the conflict; with LATEST_UPDATED_AT the later edit stays. */
static void
run_conflict (Fixture *f,
              HbConflictStrategy strategy,
              ConflictSeen *seen,
              char **out_server_rev,
              char **out_local_rev)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = NULL;
  g_autoptr (JsonNode) answer = NULL;
  g_autofree char *first = NULL;
  g_autofree char *local = NULL;
  g_autofree char *url = g_strdup_printf ("%s/_bulk_docs", f->db_url);
  g_autofree char *body = NULL;

  g_autoptr (JsonNode) original
      = hb_test_json ("{\"_id\":\"note:c\",\"type\":\"note\",\"updated_at\":\"2024-01-01\"}");

  first = hb_store_put_sync (f->store, original, NULL, &error);
  g_assert_no_error (error);
  doc = hb_test_json ("{\"_id\":\"note:c\",\"type\":\"note\",\"updated_at\":\"2024-01-02\"}");
  json_object_set_string_member (json_node_get_object (doc), "_rev", first);
  local = hb_store_put_sync (f->store, doc, NULL, &error);
  g_assert_no_error (error);
  /* The server's branch: 2-<hash> on top of the same first revision, edited later. */
  body = g_strdup_printf (
      "{\"new_edits\":false,\"docs\":[{\"_id\":\"note:c\",\"_rev\":\"2-%s\",\"type\":\"note\","
      "\"updated_at\":\"2024-01-03\",\"_revisions\":{\"start\":2,\"ids\":[\"%s\",\"%s\"]}}]}",
      "ffffffffffffffffffffffffffffffff", "ffffffffffffffffffffffffffffffff",
      strchr (first, '-') + 1);
  answer = hb_test_http_json ("POST", url, body, NULL);

  conflict_seen = seen;
  g_signal_connect (f->manager, "conflict", G_CALLBACK (on_conflict), seen);
  hb_sync_manager_set_conflict_strategy (f->manager, strategy);
  hb_sync_manager_start (f->manager);
  wait_until (conflict_reported, f, 30000);
  *out_server_rev = g_strdup ("2-ffffffffffffffffffffffffffffffff");
  *out_local_rev = g_steal_pointer (&local);
}

static void
conflict_seen_clear (ConflictSeen *seen)
{
  g_free (seen->id);
  g_free (seen->winner);
  g_free (seen->kept);
}

static void
test_conflict_latest_wins (Fixture *f, gconstpointer data)
{
  ConflictSeen seen = { 0 };
  g_autofree char *server_rev = NULL;
  g_autofree char *local_rev = NULL;
  g_autoptr (JsonNode) doc = NULL;

  run_conflict (f, HB_CONFLICT_STRATEGY_LATEST_UPDATED_AT, &seen, &server_rev, &local_rev);
  g_assert_cmpstr (seen.id, ==, "note:c");
  g_assert_cmpuint (seen.n_conflicts, ==, 1);
  g_assert_cmpstr (seen.kept, ==, server_rev);
  doc = hb_store_get_sync (f->store, "note:c", NULL, HB_GET_FLAGS_CONFLICTS, NULL, NULL);
  g_assert_nonnull (doc);
  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (doc), "updated_at"), ==,
                   "2024-01-03");
  g_assert_false (json_object_has_member (json_node_get_object (doc), "_conflicts"));
  conflict_seen_clear (&seen);
}

typedef struct
{
  gboolean done;
  guint deleted;
  GError *error;
} ResolveWait;

static void
on_resolved (GObject *source, GAsyncResult *result, gpointer data)
{
  ResolveWait *w = data;

  w->deleted
      = hb_sync_manager_resolve_conflict_finish (HB_SYNC_MANAGER (source), result, &w->error);
  w->done = TRUE;
}

static void
test_conflict_keep_winner_then_resolve (Fixture *f, gconstpointer data)
{
  ConflictSeen seen = { 0 };
  g_autofree char *server_rev = NULL;
  g_autofree char *local_rev = NULL;
  g_autoptr (JsonNode) doc = NULL;
  g_autoptr (JsonNode) after = NULL;
  ResolveWait w = { 0 };

  run_conflict (f, HB_CONFLICT_STRATEGY_KEEP_WINNER, &seen, &server_rev, &local_rev);
  g_assert_null (seen.kept);
  g_assert_cmpuint (seen.n_conflicts, ==, 1);
  doc = hb_store_get_sync (f->store, "note:c", NULL, HB_GET_FLAGS_CONFLICTS, NULL, NULL);
  g_assert_true (json_object_has_member (json_node_get_object (doc), "_conflicts"));
  /* The protocol's winner: the higher revision id of the two 2- leaves. */
  g_assert_cmpstr (seen.winner, ==,
                   json_object_get_string_member (json_node_get_object (doc), "_rev"));

  hb_sync_manager_resolve_conflict_async (f->manager, "note:c", local_rev, NULL, on_resolved, &w);
  hb_test_wait_for (&w.done);
  g_assert_no_error (w.error);
  g_assert_cmpuint (w.deleted, ==, 1);
  after = hb_store_get_sync (f->store, "note:c", NULL, HB_GET_FLAGS_CONFLICTS, NULL, NULL);
  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (after), "_rev"), ==,
                   local_rev);
  g_assert_false (json_object_has_member (json_node_get_object (after), "_conflicts"));
  conflict_seen_clear (&seen);
}

/* ---- the network monitor --------------------------------------------------------------- */

/* GIO has no fake network monitor: this one is registered above the system's, so the manager's
 * g_network_monitor_get_default() is it, and the test decides when the network comes and goes. */
typedef struct
{
  GObject parent_instance;
  gboolean available;
} HbTestMonitor;

typedef struct
{
  GObjectClass parent_class;
} HbTestMonitorClass;

GType hb_test_monitor_get_type (void);
static void hb_test_monitor_network_iface_init (GNetworkMonitorInterface *iface);
static void hb_test_monitor_initable_iface_init (GInitableIface *iface);

G_DEFINE_TYPE_WITH_CODE (HbTestMonitor,
                         hb_test_monitor,
                         G_TYPE_OBJECT,
                         G_IMPLEMENT_INTERFACE (G_TYPE_INITABLE,
                                                hb_test_monitor_initable_iface_init)
                             G_IMPLEMENT_INTERFACE (G_TYPE_NETWORK_MONITOR,
                                                    hb_test_monitor_network_iface_init))

enum
{
  MONITOR_PROP_0,
  MONITOR_PROP_AVAILABLE,
  MONITOR_PROP_METERED,
  MONITOR_PROP_CONNECTIVITY,
};

static void
hb_test_monitor_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  HbTestMonitor *self = (HbTestMonitor *)object;

  switch (prop_id)
    {
      case MONITOR_PROP_AVAILABLE:
        g_value_set_boolean (value, self->available);
        break;
      case MONITOR_PROP_METERED:
        g_value_set_boolean (value, FALSE);
        break;
      case MONITOR_PROP_CONNECTIVITY:
        g_value_set_enum (value, self->available ? G_NETWORK_CONNECTIVITY_FULL
                                                 : G_NETWORK_CONNECTIVITY_LOCAL);
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static gboolean
hb_test_monitor_can_reach (GNetworkMonitor *monitor,
                           GSocketConnectable *connectable,
                           GCancellable *cancellable,
                           GError **error)
{
  if (((HbTestMonitor *)monitor)->available)
    return TRUE;
  g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NETWORK_UNREACHABLE, "No network (test)");
  return FALSE;
}

static void
hb_test_monitor_network_iface_init (GNetworkMonitorInterface *iface)
{
  iface->can_reach = hb_test_monitor_can_reach;
}

static gboolean
hb_test_monitor_initable_init (GInitable *initable, GCancellable *cancellable, GError **error)
{
  return TRUE;
}

static void
hb_test_monitor_initable_iface_init (GInitableIface *iface)
{
  iface->init = hb_test_monitor_initable_init;
}

static void
hb_test_monitor_class_init (HbTestMonitorClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->get_property = hb_test_monitor_get_property;
  g_object_class_override_property (object_class, MONITOR_PROP_AVAILABLE, "network-available");
  g_object_class_override_property (object_class, MONITOR_PROP_METERED, "network-metered");
  g_object_class_override_property (object_class, MONITOR_PROP_CONNECTIVITY, "connectivity");
}

static void
hb_test_monitor_init (HbTestMonitor *self)
{
  self->available = TRUE;
}

static void
set_network (gboolean available)
{
  HbTestMonitor *monitor = (HbTestMonitor *)g_network_monitor_get_default ();

  g_assert_true (G_TYPE_CHECK_INSTANCE_TYPE (monitor, hb_test_monitor_get_type ()));
  monitor->available = available;
  g_object_notify (G_OBJECT (monitor), "network-available");
  g_signal_emit_by_name (monitor, "network-changed", available);
}

static gboolean
is_offline_now (Fixture *f)
{
  return hb_sync_manager_get_status (f->manager) == HB_SYNC_STATUS_OFFLINE;
}

static gboolean
net_doc_arrived (Fixture *f)
{
  g_autofree char *url = g_strdup_printf ("%s/note:net", f->db_url);
  guint status = 0;
  g_autoptr (JsonNode) doc = hb_test_http_json ("GET", url, NULL, &status);

  return status == 200 && hb_sync_manager_get_status (f->manager) == HB_SYNC_STATUS_UP_TO_DATE;
}

/* The network going away is OFFLINE at once, not an error; its return retries at once instead of
 * at the end of the backoff. */
static void
test_network_monitor (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbSyncConfig) config = hb_sync_config_new (f->sync_url);
  g_autoptr (HbSyncManager) manager = NULL;
  HbSyncManager *saved = f->manager;
  gint64 start;

  hb_sync_config_set_retry (config, 30000, 60000);
  hb_sync_config_set_heartbeat_ms (config, 1000);
  hb_sync_config_set_push_debounce_ms (config, 50);
  manager = hb_sync_manager_new (f->store, config, &error);
  g_assert_no_error (error);
  f->manager = manager;
  set_network (TRUE);
  hb_sync_manager_start (manager);
  wait_until (is_up_to_date, f, 20000);

  set_network (FALSE);
  g_assert_cmpint (hb_sync_manager_get_status (manager), ==, HB_SYNC_STATUS_OFFLINE);

  /* The server is out of reach too: the next push fails and waits 15 to 30 s to retry. */
  PROXY_DO (f->proxy,
            "{\"cmd\": \"fault\", \"fault\": {\"action\": \"drop\", \"forward\": false}}");
  put_doc (f->store, "note:net", NULL);
  start = g_get_monotonic_time ();
  while (g_get_monotonic_time () - start < 2 * G_USEC_PER_SEC)
    g_main_context_iteration (NULL, FALSE);
  wait_until (is_offline_now, f, 5000);

  PROXY_DO (f->proxy, "{\"cmd\": \"reset\"}");
  start = g_get_monotonic_time ();
  set_network (TRUE);
  wait_until (net_doc_arrived, f, 10000);
  g_assert_cmpint (g_get_monotonic_time () - start, <, 10 * G_USEC_PER_SEC);

  hb_sync_manager_stop (manager);
  start = g_get_monotonic_time ();
  while (G_OBJECT (manager)->ref_count > 1 && g_get_monotonic_time () - start < 10 * G_USEC_PER_SEC)
    g_main_context_iteration (NULL, FALSE);
  f->manager = saved;
}

int
main (int argc, char **argv)
{
  int rc;

  g_setenv ("GSETTINGS_BACKEND", "memory", TRUE);
  g_test_init (&argc, &argv, NULL);
  /* Registered here first: GIO registers its extension points only on first use. */
  g_io_extension_point_register (G_NETWORK_MONITOR_EXTENSION_POINT_NAME);
  g_io_extension_point_implement (G_NETWORK_MONITOR_EXTENSION_POINT_NAME,
                                  hb_test_monitor_get_type (), "hb-test", 1000);

  g_test_add ("/sync-manager/continuous", Fixture, NULL, fixture_setup, test_continuous,
              fixture_teardown);
  g_test_add ("/sync-manager/network-monitor", Fixture, FIXTURE_PROXY, fixture_setup,
              test_network_monitor, fixture_teardown);
  g_test_add ("/sync-manager/conflict/latest-wins", Fixture, NULL, fixture_setup,
              test_conflict_latest_wins, fixture_teardown);
  g_test_add ("/sync-manager/conflict/keep-winner-then-resolve", Fixture, NULL, fixture_setup,
              test_conflict_keep_winner_then_resolve, fixture_teardown);
  g_test_add ("/sync-manager/offline-is-not-error", Fixture, NULL, fixture_setup,
              test_offline_is_not_error, fixture_teardown);
  g_test_add ("/sync-manager/insecure-http-refused", Fixture, NULL, fixture_setup,
              test_insecure_http_refused, fixture_teardown);
  g_test_add ("/sync-manager/session", Fixture, NULL, fixture_setup, test_session,
              fixture_teardown);
  g_test_add ("/sync-manager/ensure-dead-server", Fixture, NULL, fixture_setup,
              test_ensure_dead_server, fixture_teardown);
  g_test_add ("/sync-manager/restart", Fixture, NULL, fixture_setup, test_restart,
              fixture_teardown);
  g_test_add ("/sync-manager/fault/drop-bulk-docs", Fixture, FIXTURE_PROXY, fixture_setup,
              test_fault_drop_bulk_docs, fixture_teardown);
  g_test_add ("/sync-manager/fault/drop-bulk-get", Fixture, FIXTURE_PROXY, fixture_setup,
              test_fault_drop_bulk_get, fixture_teardown);
  g_test_add ("/sync-manager/fault/500-burst", Fixture, FIXTURE_PROXY, fixture_setup,
              test_fault_500_burst, fixture_teardown);
  g_test_add ("/sync-manager/fault/503-burst", Fixture, FIXTURE_PROXY, fixture_setup,
              test_fault_503_burst, fixture_teardown);
  g_test_add ("/sync-manager/fault/503-long", Fixture, FIXTURE_PROXY, fixture_setup,
              test_fault_503_long, fixture_teardown);
  g_test_add ("/sync-manager/fault/slow", Fixture, FIXTURE_PROXY, fixture_setup, test_fault_slow,
              fixture_teardown);
  g_test_add ("/sync-manager/fault/truncate", Fixture, FIXTURE_PROXY, fixture_setup,
              test_fault_truncate, fixture_teardown);
  g_test_add ("/sync-manager/fault/duplicate-changes", Fixture, FIXTURE_PROXY, fixture_setup,
              test_fault_duplicate_changes, fixture_teardown);
  g_test_add ("/sync-manager/fault/cookie-expiry", Fixture, FIXTURE_PROXY, fixture_setup,
              test_fault_cookie_expiry, fixture_teardown);
  g_test_add ("/sync-manager/auth/bearer-renewal", Fixture, FIXTURE_PROXY, fixture_setup,
              test_auth_bearer_renewal, fixture_teardown);
  g_test_add ("/sync-manager/auth/user-db", Fixture, FIXTURE_PROXY, fixture_setup,
              test_auth_user_db, fixture_teardown);
  g_test_add ("/sync-manager/auth/wrong-credentials", Fixture, FIXTURE_PROXY, fixture_setup,
              test_auth_wrong_credentials, fixture_teardown);
  g_test_add ("/sync-manager/ensure-through-proxy", Fixture, FIXTURE_PROXY, fixture_setup,
              test_ensure_through_proxy, fixture_teardown);

  rc = g_test_run ();
  return rc;
}
