#include <signal.h>
#include <string.h>

#include "hb-test-server.h"

#include <libsoup/soup.h>

#include "hb-json-private.h"
#include "hb-test-utils.h"

#define START_TIMEOUT_MS 30000
#define COMMAND_TIMEOUT_MS 15000
#define STOP_TIMEOUT_MS 5000

typedef struct
{
  gboolean done;
  char *line;
  GError *error;
} LineRead;

static gboolean
cancel_cb (gpointer cancellable)
{
  g_cancellable_cancel (cancellable);
  return G_SOURCE_REMOVE;
}

static void
line_read_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  LineRead *read = user_data;

  read->line = g_data_input_stream_read_line_finish_utf8 (G_DATA_INPUT_STREAM (source), result,
                                                          NULL, &read->error);
  if (read->line == NULL && read->error == NULL)
    read->error = g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CLOSED, "the child exited");
  read->done = TRUE;
}

/* Runs a private main context, so that whatever the test has on its own context (libsoup
 * requests, timeouts) neither runs nor gets in the way here. */
static char *
read_line (HbTestChild *child, guint timeout_ms, GError **error)
{
  g_autoptr (GMainContext) context = g_main_context_new ();
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GSource) timeout = g_timeout_source_new (timeout_ms);
  LineRead read = { 0 };

  g_main_context_push_thread_default (context);
  g_source_set_callback (timeout, cancel_cb, cancellable, NULL);
  g_source_attach (timeout, context);
  g_data_input_stream_read_line_async (child->output, G_PRIORITY_DEFAULT, cancellable, line_read_cb,
                                       &read);
  while (!read.done)
    g_main_context_iteration (context, TRUE);
  g_source_destroy (timeout);
  g_main_context_pop_thread_default (context);

  if (read.error != NULL)
    {
      if (g_error_matches (read.error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        {
          g_clear_error (&read.error);
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "no answer from node in %u ms",
                       timeout_ms);
        }
      else
        g_propagate_error (error, read.error);
      return NULL;
    }
  return read.line;
}

static void
wait_cb (GObject *source, GAsyncResult *result, gpointer user_data)
{
  gboolean *done = user_data;

  g_subprocess_wait_finish (G_SUBPROCESS (source), result, NULL);
  *done = TRUE;
}

static gboolean
wait_with_timeout (GSubprocess *process, guint timeout_ms)
{
  g_autoptr (GMainContext) context = g_main_context_new ();
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GSource) timeout = g_timeout_source_new (timeout_ms);
  gboolean done = FALSE;

  g_main_context_push_thread_default (context);
  g_source_set_callback (timeout, cancel_cb, cancellable, NULL);
  g_source_attach (timeout, context);
  g_subprocess_wait_async (process, cancellable, wait_cb, &done);
  while (!done)
    g_main_context_iteration (context, TRUE);
  g_source_destroy (timeout);
  g_main_context_pop_thread_default (context);
  return !g_cancellable_is_cancelled (cancellable);
}

static void
child_stop (HbTestChild *child)
{
  if (child == NULL)
    return;
  if (child->input != NULL)
    g_output_stream_close (child->input, NULL, NULL);
  if (child->process != NULL && !wait_with_timeout (child->process, STOP_TIMEOUT_MS))
    {
      g_subprocess_force_exit (child->process);
      g_subprocess_wait (child->process, NULL, NULL);
    }
  g_clear_object (&child->input);
  g_clear_object (&child->output);
  g_clear_object (&child->process);
  g_free (child->url);
  g_free (child);
}

static char *
server_dir (GError **error)
{
  const char *srcdir = g_getenv ("G_TEST_SRCDIR");
  g_autofree char *dir = NULL;
  g_autofree char *modules = NULL;

  if (srcdir == NULL)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                           "G_TEST_SRCDIR is not set (run the test through meson test)");
      return NULL;
    }
  dir = g_build_filename (srcdir, "server", NULL);
  modules = g_build_filename (dir, "node_modules", NULL);
  if (!g_file_test (modules, G_FILE_TEST_IS_DIR))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                   "%s is missing: run build-aux/setup-npm.sh", modules);
      return NULL;
    }
  return g_steal_pointer (&dir);
}

static char *
find_node (GError **error)
{
  const char *env = g_getenv ("HB_TEST_NODE");
  char *node;

  if (env != NULL && *env != '\0')
    return g_strdup (env);
  node = g_find_program_in_path ("node");
  if (node == NULL)
    g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                         "node not found: set HB_TEST_NODE or run build-aux/setup-npm.sh");
  return node;
}

static HbTestChild *
child_start (const char *script, const char *const *args, GError **error)
{
  g_autofree char *node = NULL;
  g_autofree char *dir = NULL;
  g_autofree char *path = NULL;
  g_autofree char *line = NULL;
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();
  g_autoptr (GSubprocessLauncher) launcher = NULL;
  g_autoptr (JsonParser) parser = json_parser_new ();
  HbTestChild *child;
  JsonNode *root;
  gint64 port;

  if ((node = find_node (error)) == NULL || (dir = server_dir (error)) == NULL)
    return NULL;
  path = g_build_filename (dir, script, NULL);
  g_ptr_array_add (argv, node);
  g_ptr_array_add (argv, path);
  for (; args != NULL && *args != NULL; args++)
    g_ptr_array_add (argv, (gpointer)*args);
  g_ptr_array_add (argv, NULL);

  signal (SIGPIPE, SIG_IGN);
  launcher
      = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE);
  /* Whatever a child might write into its working directory stays out of the test's. */
  g_subprocess_launcher_set_cwd (launcher, dir);
  child = g_new0 (HbTestChild, 1);
  child->process = g_subprocess_launcher_spawnv (launcher, (const char *const *)argv->pdata, error);
  if (child->process == NULL)
    {
      child_stop (child);
      return NULL;
    }
  child->input = g_object_ref (g_subprocess_get_stdin_pipe (child->process));
  child->output = g_data_input_stream_new (g_subprocess_get_stdout_pipe (child->process));

  line = read_line (child, START_TIMEOUT_MS, error);
  if (line == NULL || !json_parser_load_from_data (parser, line, -1, error))
    {
      g_prefix_error (error, "%s did not start: ", script);
      child_stop (child);
      return NULL;
    }
  root = json_parser_get_root (parser);
  port = JSON_NODE_HOLDS_OBJECT (root)
             ? json_object_get_int_member_with_default (json_node_get_object (root), "port", 0)
             : 0;
  if (port <= 0 || port > G_MAXUINT16)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%s printed \"%s\", not a port",
                   script, line);
      child_stop (child);
      return NULL;
    }
  child->port = (guint16)port;
  child->url = g_strdup_printf ("http://127.0.0.1:%u", child->port);
  return child;
}

HbTestServer *
hb_test_server_start (const char *const *extra_args, GError **error)
{
  return child_start ("server.js", extra_args, error);
}

void
hb_test_server_stop (HbTestServer *server)
{
  child_stop (server);
}

HbTestProxy *
hb_test_proxy_start (const char *target_url, GError **error)
{
  const char *args[] = { "--target", target_url, NULL };

  return child_start ("proxy.js", args, error);
}

void
hb_test_proxy_stop (HbTestProxy *proxy)
{
  child_stop (proxy);
}

JsonNode *
hb_test_proxy_command (HbTestProxy *proxy, const char *json_line, GError **error)
{
  g_autofree char *line = NULL;
  g_autofree char *reply = NULL;
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (JsonNode) root = NULL;
  JsonObject *object;

  g_return_val_if_fail (proxy != NULL, NULL);
  g_return_val_if_fail (json_line != NULL && strchr (json_line, '\n') == NULL, NULL);

  line = g_strconcat (json_line, "\n", NULL);
  if (!g_output_stream_write_all (proxy->input, line, strlen (line), NULL, NULL, error)
      || !g_output_stream_flush (proxy->input, NULL, error))
    return NULL;
  reply = read_line (proxy, COMMAND_TIMEOUT_MS, error);
  if (reply == NULL || !json_parser_load_from_data (parser, reply, -1, error))
    return NULL;
  root = json_parser_steal_root (parser);
  object = JSON_NODE_HOLDS_OBJECT (root) ? json_node_get_object (root) : NULL;
  if (object == NULL || json_object_has_member (object, "error"))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "proxy: %s",
                   object != NULL
                       ? json_object_get_string_member_with_default (object, "error", reply)
                       : reply);
      return NULL;
    }
  return g_steal_pointer (&root);
}

JsonNode *
hb_test_proxy_cmd (HbTestProxy *proxy, const char *format, ...)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *line = NULL;
  JsonNode *reply;
  va_list args;

  va_start (args, format);
  line = g_strdup_vprintf (format, args);
  va_end (args);
  reply = hb_test_proxy_command (proxy, line, &error);
  g_assert_no_error (error);
  g_assert_nonnull (reply);
  return reply;
}

/* ---- assertions about a server's and a store's documents ---------------------------------- */

/* One session for the process, never freed: tests end with the process. */
static SoupSession *
test_session (void)
{
  static gsize once;
  static SoupSession *session;

  if (g_once_init_enter (&once))
    {
      session = soup_session_new ();
      g_once_init_leave (&once, 1);
    }
  return session;
}

/* A blocking request for assertions about the server's state. */
JsonNode *
hb_test_http_json (const char *method, const char *url, const char *body, guint *out_status)
{
  g_autoptr (SoupMessage) msg = soup_message_new (method, url);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) response = NULL;
  g_autoptr (JsonParser) parser = json_parser_new ();

  g_assert_nonnull (msg);
  soup_message_headers_replace (soup_message_get_request_headers (msg), "Accept",
                                "application/json");
  if (body != NULL)
    {
      g_autoptr (GBytes) bytes = g_bytes_new (body, strlen (body));
      soup_message_set_request_body_from_bytes (msg, "application/json", bytes);
    }
  response = soup_session_send_and_read (test_session (), msg, NULL, &error);
  g_assert_no_error (error);
  if (out_status != NULL)
    *out_status = soup_message_get_status (msg);
  if (!json_parser_load_from_data (parser, g_bytes_get_data (response, NULL),
                                   (gssize)g_bytes_get_size (response), NULL))
    return NULL;
  return json_node_ref (json_parser_get_root (parser));
}

/* g_ptr_array_sort() passes pointers to the elements. */
gint
hb_test_compare_strv_items (gconstpointer a, gconstpointer b)
{
  return g_strcmp0 (*(const char *const *)a, *(const char *const *)b);
}

/* Every document of a store with all its leaves: id → sorted list of canonical leaf texts
 * (`_rev`, `_revisions`, `_deleted` and body). */
GHashTable *
hb_test_store_trees (HbStore *store)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes = hb_store_changes_sync (store, 0, 0, NULL, &error);
  GHashTable *trees = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  JsonArray *rows;
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) request = NULL;
  g_autoptr (GPtrArray) texts = NULL;
  guint k = 0;

  g_assert_no_error (error);
  rows = json_object_get_array_member (json_node_get_object (changes), "results");
  json_builder_begin_object (b);
  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);
      JsonArray *revs = json_object_get_array_member (row, "changes");

      json_builder_set_member_name (b, json_object_get_string_member (row, "id"));
      json_builder_begin_array (b);
      for (guint r = 0; r < json_array_get_length (revs); r++)
        json_builder_add_string_value (
            b, json_object_get_string_member (json_array_get_object_element (revs, r), "rev"));
      json_builder_end_array (b);
    }
  json_builder_end_object (b);
  request = json_builder_get_root (b);
  texts = hb_store_get_revs_json_sync (store, request, NULL, &error);
  g_assert_no_error (error);

  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);
      JsonArray *revs = json_object_get_array_member (row, "changes");
      g_autoptr (GPtrArray) leaves = g_ptr_array_new_with_free_func (g_free);
      GString *all = g_string_new (NULL);

      for (guint r = 0; r < json_array_get_length (revs); r++, k++)
        {
          GBytes *text = g_ptr_array_index (texts, k);
          g_autoptr (JsonNode) leaf = hb_test_json (g_bytes_get_data (text, NULL));

          json_object_remove_member (json_node_get_object (leaf), "_conflicts");
          g_ptr_array_add (leaves, hb_json_to_canonical (leaf, NULL));
        }
      g_ptr_array_sort (leaves, hb_test_compare_strv_items);
      for (guint l = 0; l < leaves->len; l++)
        g_string_append_printf (all, "%s\n", (char *)leaves->pdata[l]);
      g_hash_table_insert (trees, g_strdup (json_object_get_string_member (row, "id")),
                           g_string_free (all, FALSE));
    }
  return trees;
}
