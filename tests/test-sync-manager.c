/* HbSyncManager against the real test server, directly and through the fault proxy. */

#include <libsoup/soup.h>
#include <string.h>

#include "hb-test-server.h"
#include "hb-test-utils.h"

static SoupSession *http;

static JsonNode *
http_json (const char *method, const char *url, const char *body, guint *out_status)
{
  g_autoptr (SoupMessage) msg = soup_message_new (method, url);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) response = NULL;
  g_autoptr (JsonParser) parser = json_parser_new ();

  g_assert_nonnull (msg);
  if (body != NULL)
    {
      g_autoptr (GBytes) bytes = g_bytes_new (body, strlen (body));
      soup_message_set_request_body_from_bytes (msg, "application/json", bytes);
    }
  response = soup_session_send_and_read (http, msg, NULL, &error);
  g_assert_no_error (error);
  if (out_status != NULL)
    *out_status = soup_message_get_status (msg);
  if (!json_parser_load_from_data (parser, g_bytes_get_data (response, NULL),
                                   (gssize)g_bytes_get_size (response), NULL))
    return NULL;
  return json_node_ref (json_parser_get_root (parser));
}

typedef struct
{
  HbTestServer *server;
  char *db_url;
  char *dir;
  HbStore *store;
  HbSyncConfig *config;
  HbSyncManager *manager;
  GArray *statuses;
} Fixture;

static guint db_counter;

static void
on_status (HbSyncManager *manager, HbSyncStatus status, gpointer data)
{
  Fixture *f = data;

  g_array_append_val (f->statuses, status);
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *create = NULL;
  g_autoptr (JsonNode) created = NULL;

  f->server = hb_test_server_start (NULL, &error);
  g_assert_no_error (error);
  f->db_url = g_strdup_printf ("%s/clinic%u", f->server->url, ++db_counter);
  created = http_json ("PUT", f->db_url, NULL, NULL);
  f->store = hb_test_store_new (&f->dir);
  f->config = hb_sync_config_new (f->db_url);
  hb_sync_config_set_push_debounce_ms (f->config, 50);
  hb_sync_config_set_heartbeat_ms (f->config, 1000);
  hb_sync_config_set_retry (f->config, 50, 400);
  f->manager = hb_sync_manager_new (f->store, f->config, &error);
  g_assert_no_error (error);
  f->statuses = g_array_new (FALSE, FALSE, sizeof (HbSyncStatus));
  g_signal_connect (f->manager, "status-changed", G_CALLBACK (on_status), f);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  hb_sync_manager_stop (f->manager);
  /* Cancelled runs end on the main loop, each holding the manager until then. */
  while (G_OBJECT (f->manager)->ref_count > 1 && g_get_monotonic_time () < deadline)
    g_main_context_iteration (NULL, FALSE);
  g_assert_finalize_object (f->manager);
  g_clear_object (&f->config);
  g_array_unref (f->statuses);
  hb_store_close (f->store);
  g_clear_object (&f->store);
  hb_test_rmdir (f->dir);
  g_free (f->dir);
  g_free (f->db_url);
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
  g_autoptr (JsonNode) doc = http_json ("GET", url, NULL, &status);

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
  /* CONNECTING or SYNCING came before UP_TO_DATE, and nothing else. */
  for (guint i = 0; i + 1 < f->statuses->len; i++)
    {
      HbSyncStatus s = g_array_index (f->statuses, HbSyncStatus, i);
      g_assert_true (s == HB_SYNC_STATUS_CONNECTING || s == HB_SYNC_STATUS_SYNCING);
    }

  /* A local change is pushed on its own. */
  put_doc (f->store, "note:2", "\"text\":\"pushed by the debounce\"");
  wanted_id = "note:2";
  wait_until (server_has_wanted, f, 20000);

  /* A server change is pulled through the longpoll. */
  url = g_strdup_printf ("%s/note:3", f->db_url);
  put = http_json ("PUT", url, "{\"type\":\"note\",\"text\":\"from the server\"}", NULL);
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

int
main (int argc, char **argv)
{
  int rc;

  g_setenv ("GSETTINGS_BACKEND", "memory", TRUE);
  g_test_init (&argc, &argv, NULL);
  http = soup_session_new ();

  g_test_add ("/sync-manager/continuous", Fixture, NULL, fixture_setup, test_continuous,
              fixture_teardown);
  g_test_add ("/sync-manager/offline-is-not-error", Fixture, NULL, fixture_setup,
              test_offline_is_not_error, fixture_teardown);
  g_test_add ("/sync-manager/insecure-http-refused", Fixture, NULL, fixture_setup,
              test_insecure_http_refused, fixture_teardown);
  g_test_add ("/sync-manager/session", Fixture, NULL, fixture_setup, test_session,
              fixture_teardown);
  g_test_add ("/sync-manager/ensure-dead-server", Fixture, NULL, fixture_setup,
              test_ensure_dead_server, fixture_teardown);

  rc = g_test_run ();
  g_clear_object (&http);
  return rc;
}
