/* HbReplicator against the real CouchDB-protocol test server (express-pouchdb), directly and
 * through the fault-injecting proxy. */

#include <libsoup/soup.h>
#include <string.h>

#include "hb-json-private.h"
#include "hb-test-server.h"
#include "hb-test-utils.h"

/* ---- plumbing -------------------------------------------------------------------------- */

typedef struct
{
  HbTestServer *server;
  HbTestProxy *proxy; /* started by fixture_proxy_url() */
  char *db_name;
  char *db_url;
  char *dir;
  HbStore *store;
  HbSyncCache *cache;
} Fixture;

static guint db_counter;

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;

  f->server = hb_test_server_start (NULL, &error);
  g_assert_no_error (error);
  f->db_name = g_strdup_printf ("clinic%u", ++db_counter);
  f->db_url = g_strdup_printf ("%s/%s", f->server->url, f->db_name);
  f->store = hb_test_store_new (&f->dir);
  f->cache = hb_sync_cache_new ();
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_clear_object (&f->cache);
  hb_store_close (f->store);
  g_clear_object (&f->store);
  hb_test_rmdir (f->dir);
  g_free (f->dir);
  g_free (f->db_url);
  g_free (f->db_name);
  g_clear_pointer (&f->proxy, hb_test_proxy_stop);
  hb_test_server_stop (f->server);
}

/* The fixture's database seen through the fault proxy (started on first use). */
static char *
fixture_proxy_url (Fixture *f)
{
  if (f->proxy == NULL)
    {
      g_autoptr (GError) error = NULL;

      f->proxy = hb_test_proxy_start (f->server->url, &error);
      g_assert_no_error (error);
    }
  return g_strdup_printf ("%s/%s", f->proxy->url, f->db_name);
}

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

/* Runs one replication to its end; returns the result or NULL with *error. */
static HbReplicationResult *
replicate (HbStore *store,
           HbSyncCache *cache,
           const char *url,
           HbReplicationDirection direction,
           void (*configure) (HbReplicator *r, gpointer data),
           gpointer data,
           GError **error)
{
  g_autoptr (GError) local = NULL;
  g_autoptr (HbRemote) remote = hb_remote_new (url, &local);
  g_autoptr (HbReplicator) r = NULL;
  RunWait w = { 0 };

  g_assert_no_error (local);
  r = hb_replicator_new (store, remote, cache, direction);
  hb_replicator_set_create_target (r, TRUE);
  if (configure != NULL)
    configure (r, data);
  hb_replicator_run_async (r, NULL, on_run_done, &w);
  hb_test_wait_for (&w.done);
  if (w.error != NULL)
    g_propagate_error (error, w.error);
  return w.result;
}

static HbReplicationResult *
replicate_ok (HbStore *store, HbSyncCache *cache, const char *url, HbReplicationDirection dir)
{
  g_autoptr (GError) error = NULL;
  HbReplicationResult *result = replicate (store, cache, url, dir, NULL, NULL, &error);

  g_assert_no_error (error);
  g_assert_nonnull (result);
  return result;
}

/* ---- documents ------------------------------------------------------------------------- */

/* Writes n notes, a tenth of them edited twice, some deleted, and a few conflicts made by
 * inserting foreign branches. */
static void
write_corpus (HbStore *store, guint n, gsize text_len)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (42);
  g_autoptr (GError) error = NULL;

  for (guint i = 0; i < n; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:%05u", i);
      g_autoptr (JsonNode) doc
          = hb_test_note (rand, id, "session:s1", "patient:p1", "2024-05-01T10:00:00Z", text_len);
      g_autofree char *rev = hb_store_put_sync (store, doc, NULL, &error);

      g_assert_no_error (error);
      if (i % 10 == 3)
        {
          json_object_set_string_member (json_node_get_object (doc), "_rev", rev);
          json_object_set_string_member (json_node_get_object (doc), "author", "Dr. Edited");
          g_free (rev);
          rev = hb_store_put_sync (store, doc, NULL, &error);
          g_assert_no_error (error);
        }
      if (i % 17 == 5)
        {
          g_autofree char *del = hb_store_delete_sync (store, id, rev, NULL, &error);
          g_assert_no_error (error);
        }
      if (i % 23 == 7)
        {
          /* A conflicting branch from another workstation. */
          g_autofree char *text = g_strdup_printf (
              "{\"_id\":\"%s\",\"_rev\":\"2-%032x\",\"type\":\"note\",\"text\":\"other branch\","
              "\"_revisions\":{\"start\":2,\"ids\":[\"%032x\",\"%s\"]}}",
              id, i + 1, i + 1, strchr (rev, '-') + 1);
          g_autoptr (JsonNode) branch = hb_test_json (text);
          g_autoptr (GPtrArray) docs
              = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
          g_autoptr (GPtrArray) results = NULL;

          g_ptr_array_add (docs, g_steal_pointer (&branch));
          results = hb_store_bulk_docs_sync (store, docs, FALSE, NULL, &error);
          g_assert_no_error (error);
          g_assert_false (json_object_has_member (
              json_node_get_object (g_ptr_array_index (results, 0)), "error"));
        }
    }
}

/* The same for the server's database: every leaf the changes feed names, read with its
 * history in one `_bulk_get?revs=true`. */
static GHashTable *
server_trees (const char *db_url)
{
  g_autofree char *changes_url = g_strdup_printf ("%s/_changes?style=all_docs", db_url);
  g_autofree char *bulk_url = g_strdup_printf ("%s/_bulk_get?revs=true", db_url);
  g_autoptr (JsonNode) changes = hb_test_http_json ("GET", changes_url, NULL, NULL);
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) request = NULL;
  g_autoptr (JsonNode) answer = NULL;
  g_autofree char *body = NULL;
  g_autoptr (GHashTable) leaves
      = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
  GHashTable *trees = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  JsonArray *rows = json_object_get_array_member (json_node_get_object (changes), "results");
  JsonArray *results;
  GHashTableIter iter;
  gpointer key, value;
  guint status = 0;
  guint n_leaves = 0, n_read = 0;

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "docs");
  json_builder_begin_array (b);
  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);
      JsonArray *revs = json_object_get_array_member (row, "changes");

      g_hash_table_insert (leaves, g_strdup (json_object_get_string_member (row, "id")),
                           g_ptr_array_new_with_free_func (g_free));
      for (guint r = 0; r < json_array_get_length (revs); r++, n_leaves++)
        {
          json_builder_begin_object (b);
          json_builder_set_member_name (b, "id");
          json_builder_add_string_value (b, json_object_get_string_member (row, "id"));
          json_builder_set_member_name (b, "rev");
          json_builder_add_string_value (
              b, json_object_get_string_member (json_array_get_object_element (revs, r), "rev"));
          json_builder_end_object (b);
        }
    }
  json_builder_end_array (b);
  json_builder_end_object (b);
  request = json_builder_get_root (b);
  body = json_to_string (request, FALSE);
  answer = hb_test_http_json ("POST", bulk_url, body, &status);
  g_assert_cmpuint (status, ==, 200);
  results = json_object_get_array_member (json_node_get_object (answer), "results");
  for (guint i = 0; i < json_array_get_length (results); i++)
    {
      JsonObject *result = json_array_get_object_element (results, i);
      JsonArray *docs = json_object_get_array_member (result, "docs");
      GPtrArray *list = g_hash_table_lookup (leaves, json_object_get_string_member (result, "id"));

      g_assert_nonnull (list);
      for (guint d = 0; d < json_array_get_length (docs); d++, n_read++)
        {
          JsonNode *doc = json_object_get_member (json_array_get_object_element (docs, d), "ok");

          g_assert_nonnull (doc);
          g_ptr_array_add (list, hb_json_to_canonical (doc, NULL));
        }
    }
  g_assert_cmpuint (n_read, ==, n_leaves);
  g_hash_table_iter_init (&iter, leaves);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      GPtrArray *list = value;
      GString *all = g_string_new (NULL);

      g_ptr_array_sort (list, hb_test_compare_strv_items);
      for (guint l = 0; l < list->len; l++)
        g_string_append_printf (all, "%s\n", (char *)list->pdata[l]);
      g_hash_table_insert (trees, g_strdup (key), g_string_free (all, FALSE));
    }
  return trees;
}

static guint
count_leaves (HbStore *store)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes = hb_store_changes_sync (store, 0, 0, NULL, &error);
  JsonArray *rows = json_object_get_array_member (json_node_get_object (changes), "results");
  guint n = 0;

  g_assert_no_error (error);
  for (guint i = 0; i < json_array_get_length (rows); i++)
    n += json_array_get_length (
        json_object_get_array_member (json_array_get_object_element (rows, i), "changes"));
  return n;
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

/* ---- more plumbing --------------------------------------------------------------------- */

/* The proxy's statistics: the "stats" object of the reply, kept alive by *out_root. */
static JsonObject *
proxy_stats (HbTestProxy *proxy, JsonNode **out_root)
{
  *out_root = hb_test_proxy_cmd (proxy, "{\"cmd\": \"stats\"}");
  return json_object_get_object_member (json_node_get_object (*out_root), "stats");
}

static gint64
stats_route (JsonObject *stats, const char *route)
{
  return json_object_get_int_member_with_default (json_object_get_object_member (stats, "by_route"),
                                                  route, 0);
}

static gint64
stats_status (JsonObject *stats, const char *status)
{
  return json_object_get_int_member_with_default (
      json_object_get_object_member (stats, "by_status"), status, 0);
}

/* The ids of the documents of the `_bulk_docs` or `_bulk_get` requests (kind "bulk_docs" or
 * "bulk_get") answered with @status, or of all of them when @status is 0: id → how many times. */
static GHashTable *
stats_batch_ids (JsonObject *stats, const char *kind, gint64 status)
{
  JsonArray *batches
      = json_object_get_array_member (json_object_get_object_member (stats, kind), "batches");
  GHashTable *ids = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

  for (guint i = 0; i < json_array_get_length (batches); i++)
    {
      JsonObject *batch = json_array_get_object_element (batches, i);
      JsonNode *st = json_object_get_member (batch, "status");
      JsonArray *list = json_object_get_array_member (batch, "ids");

      if (status != 0
          && (st == NULL || !JSON_NODE_HOLDS_VALUE (st)
              || json_node_get_value_type (st) != G_TYPE_INT64 || json_node_get_int (st) != status))
        continue;
      for (guint k = 0; k < json_array_get_length (list); k++)
        {
          const char *id = json_array_get_string_element (list, k);
          guint n = GPOINTER_TO_UINT (g_hash_table_lookup (ids, id));

          g_hash_table_replace (ids, g_strdup (id), GUINT_TO_POINTER (n + 1));
        }
    }
  return ids;
}

/* The since= of every `_changes` request the proxy saw, in order ("" for none). */
static GPtrArray *
stats_changes_since (JsonObject *stats)
{
  JsonArray *requests = json_object_get_array_member (stats, "requests");
  GPtrArray *out = g_ptr_array_new_with_free_func (g_free);

  for (guint i = 0; i < json_array_get_length (requests); i++)
    {
      JsonObject *r = json_array_get_object_element (requests, i);
      const char *url = json_object_get_string_member (r, "url");
      const char *q = strchr (url, '?');
      g_autoptr (GHashTable) params = NULL;
      const char *since;

      if (!g_str_has_suffix (json_object_get_string_member (r, "route"), "/_changes"))
        continue;
      params = q != NULL ? g_uri_parse_params (q + 1, -1, "&", G_URI_PARAMS_NONE, NULL) : NULL;
      since = params != NULL ? g_hash_table_lookup (params, "since") : NULL;
      g_ptr_array_add (out, g_strdup (since != NULL ? since : ""));
    }
  return out;
}

/* One progress emission. */
typedef struct
{
  guint64 read;
  guint64 written;
  guint64 failures;
  gint64 pending;
} Progress;

/* A replicator with its signals recorded. */
typedef struct _Repl Repl;

struct _Repl
{
  HbReplicator *r;
  GCancellable *cancellable;
  GArray *states;        /* HbReplicatorState, every state-changed of the last run */
  GArray *progress;      /* Progress, every progress of the last run */
  GPtrArray *denied;     /* ids, every document-denied of the last run */
  guint cancel_after;    /* cancel the run at this progress emission; 0: never */
  GMainContext *context; /* runs with this thread-default context; NULL: the global default */
  Progress at_cancel;    /* the progress that cancelled it */
  /* Called at each progress emission, after it was recorded. */
  void (*on_progress) (Repl *rp, gpointer data);
  gpointer on_progress_data;
};

static void
on_state_changed (HbReplicator *r, HbReplicatorState state, gpointer data)
{
  Repl *rp = data;

  g_assert_cmpint (state, ==, hb_replicator_get_state (r));
  g_array_append_val (rp->states, state);
}

static void
on_progress (
    HbReplicator *r, guint64 read, guint64 written, guint64 failures, gint64 pending, gpointer data)
{
  Repl *rp = data;
  Progress p = { read, written, failures, pending };

  g_array_append_val (rp->progress, p);
  if (rp->cancel_after != 0 && rp->progress->len == rp->cancel_after)
    {
      rp->at_cancel = p;
      g_cancellable_cancel (rp->cancellable);
    }
  if (rp->on_progress != NULL)
    rp->on_progress (rp, rp->on_progress_data);
}

static void
on_document_denied (HbReplicator *r,
                    const char *id,
                    const char *rev,
                    const char *error,
                    const char *reason,
                    gpointer data)
{
  Repl *rp = data;

  g_assert_nonnull (id);
  g_assert_true (g_strcmp0 (error, "forbidden") == 0 || g_strcmp0 (error, "unauthorized") == 0);
  g_ptr_array_add (rp->denied, g_strdup (id));
}

static Repl *
repl_new (HbStore *store, HbSyncCache *cache, const char *url, HbReplicationDirection direction)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemote) remote = hb_remote_new (url, &error);
  Repl *rp = g_new0 (Repl, 1);

  g_assert_no_error (error);
  rp->r = hb_replicator_new (store, remote, cache, direction);
  hb_replicator_set_create_target (rp->r, TRUE);
  rp->states = g_array_new (FALSE, FALSE, sizeof (HbReplicatorState));
  rp->progress = g_array_new (FALSE, FALSE, sizeof (Progress));
  rp->denied = g_ptr_array_new_with_free_func (g_free);
  g_signal_connect (rp->r, "state-changed", G_CALLBACK (on_state_changed), rp);
  g_signal_connect (rp->r, "progress", G_CALLBACK (on_progress), rp);
  g_signal_connect (rp->r, "document-denied", G_CALLBACK (on_document_denied), rp);
  return rp;
}

static void
repl_free (Repl *rp)
{
  g_signal_handlers_disconnect_by_data (rp->r, rp);
  g_clear_object (&rp->r);
  g_clear_object (&rp->cancellable);
  g_array_unref (rp->states);
  g_array_unref (rp->progress);
  g_ptr_array_unref (rp->denied);
  g_free (rp);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Repl, repl_free)

static gboolean
fail_stuck_run (gpointer data)
{
  g_error ("The run made no progress on its own main context for 30 s");
  return G_SOURCE_REMOVE;
}

/* One run, to its end; the signals it emitted are in rp. */
static HbReplicationResult *
repl_run (Repl *rp, GError **error)
{
  RunWait w = { 0 };

  g_array_set_size (rp->states, 0);
  g_array_set_size (rp->progress, 0);
  g_ptr_array_set_size (rp->denied, 0);
  g_clear_object (&rp->cancellable);
  rp->cancellable = g_cancellable_new ();
  if (rp->context != NULL)
    {
      /* Everything of the run happens on its own context: nothing is left to the global
       * default one, which nobody iterates here. */
      g_autoptr (GSource) guard = g_timeout_source_new_seconds (30);

      g_source_set_callback (guard, fail_stuck_run, NULL, NULL);
      g_source_attach (guard, rp->context);
      g_main_context_push_thread_default (rp->context);
      hb_replicator_run_async (rp->r, rp->cancellable, on_run_done, &w);
      while (!w.done)
        g_main_context_iteration (rp->context, TRUE);
      g_main_context_pop_thread_default (rp->context);
      g_source_destroy (guard);
    }
  else
    {
      hb_replicator_run_async (rp->r, rp->cancellable, on_run_done, &w);
      hb_test_wait_for (&w.done);
    }
  if (w.error != NULL)
    {
      g_assert_null (w.result);
      g_propagate_error (error, w.error);
    }
  else
    g_assert_nonnull (w.result);
  return w.result;
}

static HbReplicationResult *
repl_run_ok (Repl *rp)
{
  g_autoptr (GError) error = NULL;
  HbReplicationResult *result = repl_run (rp, &error);

  g_assert_no_error (error);
  g_assert_cmpint (hb_replicator_get_state (rp->r), ==, HB_REPLICATOR_STATE_COMPLETE);
  return result;
}

static HbReplicationResult *
replicate_filtered (HbStore *store,
                    HbSyncCache *cache,
                    const char *url,
                    HbReplicationDirection direction,
                    const char *const *doc_ids,
                    const char *session_id)
{
  g_autoptr (Repl) rp = repl_new (store, cache, url, direction);

  hb_replicator_set_doc_ids (rp->r, doc_ids);
  hb_replicator_set_session_id (rp->r, session_id);
  return repl_run_ok (rp);
}

static void
assert_cache_empty (HbSyncCache *cache)
{
  g_autoptr (HbSyncCacheStats) stats = hb_sync_cache_get_stats (cache);

  g_assert_cmpuint (stats->entries, ==, 0);
  g_assert_cmpuint (stats->unwritten, ==, 0);
  g_assert_cmpuint (stats->bytes, ==, 0);
}

/* The checkpoint documents of a replication, on each side (NULL when missing). */
/* Every revision tree of @store equals the server's, and the cache is empty again. */
static void
assert_pulled_all (HbStore *store, HbSyncCache *cache, const char *db_url)
{
  g_autoptr (GHashTable) local = hb_test_store_trees (store);
  g_autoptr (GHashTable) server = server_trees (db_url);

  assert_trees_equal (local, server);
  assert_cache_empty (cache);
}

static JsonNode *
local_checkpoint (HbStore *store, const char *rep_id)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *id = g_strconcat ("_local/", rep_id, NULL);
  JsonNode *doc = hb_store_get_local_sync (store, id, NULL, &error);

  if (g_error_matches (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND))
    return NULL;
  g_assert_no_error (error);
  return doc;
}

static JsonNode *
remote_checkpoint (const char *db_url, const char *rep_id)
{
  g_autofree char *url = g_strdup_printf ("%s/_local/%s", db_url, rep_id);
  guint status = 0;
  JsonNode *doc = hb_test_http_json ("GET", url, NULL, &status);

  if (status == 404)
    {
      g_clear_pointer (&doc, json_node_unref);
      return NULL;
    }
  g_assert_cmpuint (status, ==, 200);
  return doc;
}

/* Both checkpoints exist and agree; returns source_last_seq (a copy). */
static JsonNode *
checkpoint_seq (HbStore *store, const char *db_url, const char *rep_id)
{
  g_autoptr (JsonNode) local = local_checkpoint (store, rep_id);
  g_autoptr (JsonNode) remote = remote_checkpoint (db_url, rep_id);
  JsonObject *l, *r;

  g_assert_nonnull (local);
  g_assert_nonnull (remote);
  l = json_node_get_object (local);
  r = json_node_get_object (remote);
  g_assert_cmpstr (json_object_get_string_member (l, "session_id"), ==,
                   json_object_get_string_member (r, "session_id"));
  g_assert_true (json_node_equal (json_object_get_member (l, "source_last_seq"),
                                  json_object_get_member (r, "source_last_seq")));
  return json_node_copy (json_object_get_member (l, "source_last_seq"));
}

/* Writes @n notes @prefix%05u, from number @first, with @text_len bytes of text each. */
static void
write_notes (HbStore *store, const char *prefix, guint first, guint n, gsize text_len)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (first + 7);

  for (guint done = 0; done < n;)
    {
      g_autoptr (GPtrArray) docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
      g_autoptr (GPtrArray) results = NULL;
      g_autoptr (GError) error = NULL;

      for (; docs->len < 200 && done < n; done++)
        {
          g_autofree char *id = g_strdup_printf ("%s%05u", prefix, first + done);

          g_ptr_array_add (docs, hb_test_note (rand, id, "session:s1", "patient:p1",
                                               "2024-05-01T10:00:00Z", text_len));
        }
      results = hb_store_bulk_docs_sync (store, docs, TRUE, NULL, &error);
      g_assert_no_error (error);
      for (guint i = 0; i < results->len; i++)
        g_assert_false (json_object_has_member (
            json_node_get_object (g_ptr_array_index (results, i)), "error"));
    }
}

/* id → sequence of the store's changes feed, or of the server's. */
static GHashTable *
store_seqs (HbStore *store)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes = hb_store_changes_sync (store, 0, 0, NULL, &error);
  JsonArray *rows;
  GHashTable *seqs = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

  g_assert_no_error (error);
  rows = json_object_get_array_member (json_node_get_object (changes), "results");
  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);

      g_hash_table_insert (seqs, g_strdup (json_object_get_string_member (row, "id")),
                           GSIZE_TO_POINTER ((gsize)json_object_get_int_member (row, "seq")));
    }
  return seqs;
}

/* The rows of the server's whole feed; *root holds them. */
static JsonArray *
server_feed (const char *db_url, JsonNode **root)
{
  g_autofree char *url = g_strdup_printf ("%s/_changes?style=all_docs", db_url);

  *root = hb_test_http_json ("GET", url, NULL, NULL);
  return json_object_get_array_member (json_node_get_object (*root), "results");
}

static GHashTable *
server_seqs (const char *db_url)
{
  g_autoptr (JsonNode) changes = NULL;
  JsonArray *rows = server_feed (db_url, &changes);
  GHashTable *seqs = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);

      g_hash_table_insert (seqs, g_strdup (json_object_get_string_member (row, "id")),
                           GSIZE_TO_POINTER ((gsize)json_object_get_int_member (row, "seq")));
    }
  return seqs;
}

static gint64
server_doc_count (const char *db_url)
{
  g_autoptr (JsonNode) info = hb_test_http_json ("GET", db_url, NULL, NULL);

  return json_object_get_int_member (json_node_get_object (info), "doc_count");
}

/* Creates the server database and writes @body ({"docs": [...]}) to it directly. */
static void
server_bulk (const char *db_url, const char *body)
{
  g_autofree char *url = g_strdup_printf ("%s/_bulk_docs", db_url);
  g_autoptr (JsonNode) created = NULL;
  g_autoptr (JsonNode) answer = NULL;
  JsonArray *list;
  guint status = 0;

  created = hb_test_http_json ("PUT", db_url, NULL, &status);
  g_assert_true (status == 201 || status == 412);
  answer = hb_test_http_json ("POST", url, body, &status);
  g_assert_cmpuint (status, ==, 201);
  list = json_node_get_array (answer);
  for (guint i = 0; i < json_array_get_length (list); i++)
    g_assert_false (json_object_has_member (json_array_get_object_element (list, i), "error"));
}

/* {"docs": [n notes]} for server_bulk(). */
static char *
notes_body (const char *prefix, guint n, gsize text_len)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (n);
  GString *body = g_string_new ("{\"docs\":[");

  for (guint i = 0; i < n; i++)
    {
      g_autofree char *id = g_strdup_printf ("%s%05u", prefix, i);
      g_autoptr (JsonNode) note
          = hb_test_note (rand, id, "session:s1", "patient:p1", "2024-05-01T10:00:00Z", text_len);
      g_autofree char *text = hb_test_to_string (note);

      if (i > 0)
        g_string_append_c (body, ',');
      g_string_append (body, text);
    }
  g_string_append (body, "]}");
  return g_string_free (body, FALSE);
}

/* Revision order: position, then the id's bytes. */
static gint
compare_revs (const char *a, const char *b)
{
  guint64 pa = g_ascii_strtoull (a, NULL, 10);
  guint64 pb = g_ascii_strtoull (b, NULL, 10);

  if (pa != pb)
    return pa < pb ? -1 : 1;
  return strcmp (strchr (a, '-'), strchr (b, '-'));
}

static gint
compare_rev_items (gconstpointer a, gconstpointer b)
{
  return compare_revs (*(const char *const *)a, *(const char *const *)b);
}

static gint
compare_leaf_nodes (gconstpointer a, gconstpointer b)
{
  JsonObject *la = json_node_get_object (*(JsonNode *const *)a);
  JsonObject *lb = json_node_get_object (*(JsonNode *const *)b);

  return compare_revs (json_object_get_string_member (la, "_rev"),
                       json_object_get_string_member (lb, "_rev"));
}

/* The winning leaf by the protocol's rule (PROTOCOL.md point 9). */
static JsonObject *
winner_of (GPtrArray *leaves)
{
  JsonObject *best = NULL;

  for (guint i = 0; i < leaves->len; i++)
    {
      JsonObject *leaf = json_node_get_object (g_ptr_array_index (leaves, i));
      gboolean deleted = json_object_get_boolean_member_with_default (leaf, "_deleted", FALSE);
      gboolean best_deleted;

      if (best == NULL)
        {
          best = leaf;
          continue;
        }
      best_deleted = json_object_get_boolean_member_with_default (best, "_deleted", FALSE);
      if (deleted != best_deleted)
        {
          if (!deleted)
            best = leaf;
          continue;
        }
      if (compare_revs (json_object_get_string_member (leaf, "_rev"),
                        json_object_get_string_member (best, "_rev"))
          > 0)
        best = leaf;
    }
  return best;
}

/* A document's leaves in the store (with _revisions, without _conflicts), sorted. */
static GPtrArray *
store_leaves (HbStore *store, const char *id, JsonArray *revs)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) request = NULL;
  g_autoptr (GPtrArray) texts = NULL;
  g_autoptr (GError) error = NULL;
  GPtrArray *leaves = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);

  json_builder_begin_object (b);
  json_builder_set_member_name (b, id);
  json_builder_begin_array (b);
  for (guint r = 0; r < json_array_get_length (revs); r++)
    json_builder_add_string_value (
        b, json_object_get_string_member (json_array_get_object_element (revs, r), "rev"));
  json_builder_end_array (b);
  json_builder_end_object (b);
  request = json_builder_get_root (b);
  texts = hb_store_get_revs_json_sync (store, request, NULL, &error);
  g_assert_no_error (error);
  for (guint i = 0; i < texts->len; i++)
    {
      JsonNode *leaf = hb_test_json (g_bytes_get_data (g_ptr_array_index (texts, i), NULL));

      json_object_remove_member (json_node_get_object (leaf), "_conflicts");
      g_ptr_array_add (leaves, leaf);
    }
  g_ptr_array_sort (leaves, compare_leaf_nodes);
  return leaves;
}

/* A document's winner and its sorted _conflicts, as the store answers a plain read. */
static void
store_winner (
    HbStore *store, const char *id, char **out_rev, gboolean *out_deleted, GPtrArray *out_conflicts)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = hb_store_get_sync (
      store, id, NULL, HB_GET_FLAGS_CONFLICTS | HB_GET_FLAGS_DELETED, NULL, &error);
  JsonObject *obj;

  g_assert_no_error (error);
  obj = json_node_get_object (doc);
  *out_rev = g_strdup (json_object_get_string_member (obj, "_rev"));
  *out_deleted = json_object_get_boolean_member_with_default (obj, "_deleted", FALSE);
  if (json_object_has_member (obj, "_conflicts"))
    {
      JsonArray *list = json_object_get_array_member (obj, "_conflicts");

      for (guint i = 0; i < json_array_get_length (list); i++)
        g_ptr_array_add (out_conflicts, g_strdup (json_array_get_string_element (list, i)));
    }
  g_ptr_array_sort (out_conflicts, compare_rev_items);
}

static gint
compare_rows_by_id (gconstpointer a, gconstpointer b)
{
  return strcmp (json_object_get_string_member (*(JsonObject *const *)a, "id"),
                 json_object_get_string_member (*(JsonObject *const *)b, "id"));
}

/* The store as pouch-client.js dumps a database: a list sorted by id of {id, winner, deleted,
 * conflicts, leaves}, as canonical JSON text. */
static char *
store_dump (HbStore *store)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes = hb_store_changes_sync (store, 0, 0, NULL, &error);
  g_autoptr (GPtrArray) rows = g_ptr_array_new ();
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) root = NULL;
  JsonArray *results;

  g_assert_no_error (error);
  results = json_object_get_array_member (json_node_get_object (changes), "results");
  for (guint i = 0; i < json_array_get_length (results); i++)
    g_ptr_array_add (rows, json_array_get_object_element (results, i));
  g_ptr_array_sort (rows, compare_rows_by_id);
  json_builder_begin_array (b);
  for (guint i = 0; i < rows->len; i++)
    {
      JsonObject *row = rows->pdata[i];
      const char *id = json_object_get_string_member (row, "id");
      g_autoptr (GPtrArray) leaves
          = store_leaves (store, id, json_object_get_array_member (row, "changes"));
      g_autoptr (GPtrArray) conflicts = g_ptr_array_new_with_free_func (g_free);
      g_autofree char *winner = NULL;
      gboolean deleted;

      store_winner (store, id, &winner, &deleted, conflicts);
      g_assert_cmpstr (winner, ==, json_object_get_string_member (winner_of (leaves), "_rev"));
      json_builder_begin_object (b);
      json_builder_set_member_name (b, "id");
      json_builder_add_string_value (b, id);
      json_builder_set_member_name (b, "winner");
      json_builder_add_string_value (b, winner);
      json_builder_set_member_name (b, "deleted");
      json_builder_add_boolean_value (b, deleted);
      json_builder_set_member_name (b, "conflicts");
      json_builder_begin_array (b);
      for (guint c = 0; !deleted && c < conflicts->len; c++)
        json_builder_add_string_value (b, conflicts->pdata[c]);
      json_builder_end_array (b);
      json_builder_set_member_name (b, "leaves");
      json_builder_begin_array (b);
      for (guint l = 0; l < leaves->len; l++)
        json_builder_add_value (b, json_node_ref (leaves->pdata[l]));
      json_builder_end_array (b);
      json_builder_end_object (b);
    }
  json_builder_end_array (b);
  root = json_builder_get_root (b);
  return hb_json_to_canonical (root, NULL);
}

/* Runs `node pouch-client.js URL cmd` with @input on stdin; returns its JSON output. */
static JsonNode *
pouch_client (const char *db_url, const char *cmd, const char *input)
{
  g_autoptr (GError) error = NULL;
  const char *env = g_getenv ("HB_TEST_NODE");
  g_autofree char *node
      = env != NULL && *env != '\0' ? g_strdup (env) : g_find_program_in_path ("node");
  g_autofree char *dir = g_build_filename (g_getenv ("G_TEST_SRCDIR"), "server", NULL);
  g_autofree char *script = g_build_filename (dir, "pouch-client.js", NULL);
  g_autoptr (GSubprocessLauncher) launcher
      = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE
                                   | G_SUBPROCESS_FLAGS_STDERR_PIPE);
  g_autoptr (GSubprocess) process = NULL;
  g_autofree char *out = NULL;
  g_autofree char *err = NULL;

  g_assert_nonnull (node);
  g_assert_nonnull (g_getenv ("G_TEST_SRCDIR"));
  g_subprocess_launcher_set_cwd (launcher, dir);
  process = g_subprocess_launcher_spawn (launcher, &error, node, script, db_url, cmd, NULL);
  g_assert_no_error (error);
  g_subprocess_communicate_utf8 (process, input != NULL ? input : "", NULL, &out, &err, &error);
  g_assert_no_error (error);
  if (!g_subprocess_get_successful (process))
    g_error ("pouch-client.js %s failed: %s", cmd, err);
  return hb_test_json (out);
}

/* pouch-client.js's dump as canonical JSON text. */
static char *
pouch_dump (const char *db_url)
{
  g_autoptr (JsonNode) dump = pouch_client (db_url, "dump", NULL);

  return hb_json_to_canonical (dump, NULL);
}

/* The revision pouch-client.js wrote for operation @i. */
static char *
pouch_rev (JsonNode *results, guint i)
{
  JsonObject *r = json_array_get_object_element (json_node_get_array (results), i);

  g_assert_false (json_object_has_member (r, "error"));
  return g_strdup (json_object_get_string_member (r, "rev"));
}

/* Edits the winner of @id: @member set to @value. Returns the new revision. */
static char *
edit_doc (HbStore *store, const char *id, const char *member, const char *value)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = hb_store_get_sync (store, id, NULL, HB_GET_FLAGS_NONE, NULL, &error);
  char *rev;

  g_assert_no_error (error);
  json_object_set_string_member (json_node_get_object (doc), member, value);
  rev = hb_store_put_sync (store, doc, NULL, &error);
  g_assert_no_error (error);
  return rev;
}

static void
delete_doc (HbStore *store, const char *id)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = hb_store_get_sync (store, id, NULL, HB_GET_FLAGS_NONE, NULL, &error);
  g_autofree char *rev = NULL;

  g_assert_no_error (error);
  rev = hb_store_delete_sync (
      store, id, json_object_get_string_member (json_node_get_object (doc), "_rev"), NULL, &error);
  g_assert_no_error (error);
}

static guint
count_seqs_after (GHashTable *seqs, gsize n)
{
  GHashTableIter iter;
  gpointer key, value;
  guint count = 0;

  g_hash_table_iter_init (&iter, seqs);
  while (g_hash_table_iter_next (&iter, &key, &value))
    if (GPOINTER_TO_SIZE (value) > n)
      count++;
  return count;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void
test_round_trip (Fixture *f, gconstpointer data)
{
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (HbReplicationResult) again = NULL;
  g_autoptr (HbReplicationResult) pulled = NULL;
  g_autoptr (GHashTable) local = NULL;
  g_autoptr (GHashTable) server = NULL;
  g_autoptr (GHashTable) copy = NULL;
  g_autofree char *dir2 = NULL;
  g_autoptr (HbStore) store2 = NULL;

  write_corpus (f->store, 230, 300);
  pushed = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PUSH);
  g_assert_cmpuint (pushed->doc_write_failures, ==, 0);
  g_assert_cmpuint (pushed->docs_written, ==, pushed->docs_read);
  g_assert_cmpuint (pushed->docs_written, ==, count_leaves (f->store));
  g_assert_cmpuint (pushed->docs_written, >, 230);
  local = hb_test_store_trees (f->store);
  server = server_trees (f->db_url);
  assert_trees_equal (local, server);

  /* Nothing new: the checkpoint holds, nothing is sent. */
  again = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PUSH);
  g_assert_cmpuint (again->docs_read, ==, 0);
  g_assert_cmpuint (again->missing_checked, ==, 0);

  store2 = hb_test_store_new (&dir2);
  pulled = replicate_ok (store2, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PULL);
  g_assert_cmpuint (pulled->doc_write_failures, ==, 0);
  g_assert_cmpuint (pulled->docs_written, ==, pushed->docs_written);
  copy = hb_test_store_trees (store2);
  assert_trees_equal (copy, server);
  {
    g_autoptr (HbSyncCacheStats) stats = hb_sync_cache_get_stats (f->cache);
    g_assert_cmpuint (stats->entries, ==, 0);
  }

  hb_store_close (store2);
  hb_test_rmdir (dir2);
}

/* Winner, _conflicts and revision trees of every document agree between two stores and the
 * server. Counts the documents with conflicts and with a deleted winner. */
static void
assert_converged (
    HbStore *a, HbStore *b, const char *db_url, guint *out_conflicted, guint *out_deleted)
{
  g_autoptr (GHashTable) ta = hb_test_store_trees (a);
  g_autoptr (GHashTable) tb = hb_test_store_trees (b);
  g_autoptr (GHashTable) ts = server_trees (db_url);
  GHashTableIter iter;
  gpointer key, value;

  assert_trees_equal (ta, tb);
  assert_trees_equal (ta, ts);
  *out_conflicted = *out_deleted = 0;
  g_hash_table_iter_init (&iter, ta);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      const char *id = key;
      g_autofree char *escaped = g_uri_escape_string (id, NULL, FALSE);
      g_autofree char *url = g_strdup_printf ("%s/%s?conflicts=true", db_url, escaped);
      g_autofree char *leaves_url = g_strdup_printf ("%s/%s?open_revs=all", db_url, escaped);
      g_autoptr (GPtrArray) ca = g_ptr_array_new_with_free_func (g_free);
      g_autoptr (GPtrArray) cb = g_ptr_array_new_with_free_func (g_free);
      g_autoptr (GPtrArray) expected = g_ptr_array_new_with_free_func (g_free);
      g_autoptr (GPtrArray) leaves
          = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
      g_autoptr (JsonNode) open = hb_test_http_json ("GET", leaves_url, NULL, NULL);
      g_autoptr (JsonNode) doc = NULL;
      g_autofree char *wa = NULL;
      g_autofree char *wb = NULL;
      g_autofree char *ja = NULL;
      g_autofree char *jb = NULL;
      g_autofree char *je = NULL;
      gboolean da, db;
      JsonObject *winner;
      guint status = 0;

      store_winner (a, id, &wa, &da, ca);
      store_winner (b, id, &wb, &db, cb);
      g_assert_cmpstr (wa, ==, wb);
      g_assert_cmpint (da, ==, db);
      g_ptr_array_add (ca, NULL);
      g_ptr_array_add (cb, NULL);
      ja = g_strjoinv (",", (char **)ca->pdata);
      jb = g_strjoinv (",", (char **)cb->pdata);
      g_assert_cmpstr (ja, ==, jb);

      /* The rule, applied to the server's leaves, names the same winner and conflicts. */
      for (guint i = 0; i < json_array_get_length (json_node_get_array (open)); i++)
        g_ptr_array_add (leaves,
                         json_node_ref (json_object_get_member (
                             json_array_get_object_element (json_node_get_array (open), i), "ok")));
      winner = winner_of (leaves);
      g_assert_cmpstr (json_object_get_string_member (winner, "_rev"), ==, wa);
      g_assert_cmpint (json_object_get_boolean_member_with_default (winner, "_deleted", FALSE), ==,
                       da);
      for (guint i = 0; i < leaves->len; i++)
        {
          JsonObject *leaf = json_node_get_object (leaves->pdata[i]);

          if (leaf != winner
              && !json_object_get_boolean_member_with_default (leaf, "_deleted", FALSE))
            g_ptr_array_add (expected, g_strdup (json_object_get_string_member (leaf, "_rev")));
        }
      g_ptr_array_sort (expected, compare_rev_items);
      g_ptr_array_add (expected, NULL);
      je = g_strjoinv (",", (char **)expected->pdata);
      g_assert_cmpstr (ja, ==, je);

      /* And so does the server itself. */
      doc = hb_test_http_json ("GET", url, NULL, &status);
      if (da)
        {
          g_assert_cmpuint (status, ==, 404);
          g_assert_cmpstr (ja, ==, "");
          (*out_deleted)++;
        }
      else
        {
          JsonObject *obj = json_node_get_object (doc);
          g_autoptr (GPtrArray) cs = g_ptr_array_new_with_free_func (g_free);
          g_autofree char *js = NULL;

          g_assert_cmpuint (status, ==, 200);
          g_assert_cmpstr (json_object_get_string_member (obj, "_rev"), ==, wa);
          if (json_object_has_member (obj, "_conflicts"))
            {
              JsonArray *list = json_object_get_array_member (obj, "_conflicts");

              for (guint i = 0; i < json_array_get_length (list); i++)
                g_ptr_array_add (cs, g_strdup (json_array_get_string_element (list, i)));
            }
          g_ptr_array_sort (cs, compare_rev_items);
          g_ptr_array_add (cs, NULL);
          js = g_strjoinv (",", (char **)cs->pdata);
          g_assert_cmpstr (js, ==, ja);
        }
      if (*ja != '\0')
        (*out_conflicted)++;
    }
}

static void
sync_round (HbStore *a, HbStore *b, HbSyncCache *cache, const char *url, const char *order)
{
  for (const char *c = order; *c != '\0'; c += 2)
    {
      HbStore *store = c[0] == 'A' ? a : b;
      HbReplicationDirection dir
          = c[1] == '>' ? HB_REPLICATION_DIRECTION_PUSH : HB_REPLICATION_DIRECTION_PULL;
      g_autoptr (HbReplicationResult) result = replicate_ok (store, cache, url, dir);

      g_assert_cmpuint (result->doc_write_failures, ==, 0);
    }
}

static void
test_conflicts_converge (Fixture *f, gconstpointer data)
{
  g_autofree char *dir_b = NULL;
  HbStore *a = f->store;
  g_autoptr (HbStore) b = hb_test_store_new (&dir_b);
  g_autoptr (GHashTable) tb = NULL;
  guint conflicted, deleted;

  write_notes (a, "note:", 0, 40, 200);
  sync_round (a, b, f->cache, f->db_url, "A>B<");
  {
    g_autoptr (GHashTable) ta = hb_test_store_trees (a);
    g_autoptr (GHashTable) first = hb_test_store_trees (b);
    assert_trees_equal (ta, first);
  }

  /* Both sides edit the same documents differently, or delete them. */
  for (guint i = 0; i < 36; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:%05u", i);
      g_autofree char *r1 = NULL;
      g_autofree char *r2 = NULL;
      g_autofree char *r3 = NULL;

      if (i < 10) /* A's branch is longer */
        {
          r1 = edit_doc (a, id, "author", "Dr. A");
          r2 = edit_doc (a, id, "text", "A again");
          r3 = edit_doc (b, id, "author", "Dr. B");
        }
      else if (i < 20) /* B's is */
        {
          r1 = edit_doc (a, id, "author", "Dr. A");
          r2 = edit_doc (b, id, "author", "Dr. B");
          r3 = edit_doc (b, id, "text", "B again");
        }
      else if (i < 25) /* A deletes what B edits */
        {
          delete_doc (a, id);
          r1 = edit_doc (b, id, "author", "Dr. B");
        }
      else if (i < 30) /* B deletes what A edits */
        {
          r1 = edit_doc (a, id, "author", "Dr. A");
          delete_doc (b, id);
        }
      else if (i < 33) /* both delete */
        {
          delete_doc (a, id);
          delete_doc (b, id);
        }
      else /* both make the same edit: the same revision */
        {
          r1 = edit_doc (a, id, "author", "Dr. Same");
          r2 = edit_doc (b, id, "author", "Dr. Same");
          g_assert_cmpstr (r1, ==, r2);
        }
    }
  sync_round (a, b, f->cache, f->db_url, "A>B>A<B<");

  /* A second wave on top of the conflicts, synced in another order. */
  for (guint i = 0; i < 30; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:%05u", i);
      g_autofree char *rev = edit_doc (i % 2 == 0 ? a : b, id, "text", "second wave");
    }
  sync_round (a, b, f->cache, f->db_url, "B>A<A>B<");
  sync_round (a, b, f->cache, f->db_url, "A>B>A<B<");

  assert_converged (a, b, f->db_url, &conflicted, &deleted);
  /* 0-19 keep both branches; 20-29 have a deleted leaf, which is no conflict. */
  g_assert_cmpuint (conflicted, ==, 20);
  g_assert_cmpuint (deleted, ==, 3);
  tb = hb_test_store_trees (b);
  for (guint i = 0; i < 40; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:%05u", i);
      const char *leaves = g_hash_table_lookup (tb, id);
      guint n = 0;

      for (const char *p = leaves; (p = strchr (p, '\n')) != NULL; p++)
        n++;
      g_assert_cmpuint (n, ==, i < 30 ? 2 : 1);
    }
  assert_cache_empty (f->cache);

  hb_store_close (b);
  hb_test_rmdir (dir_b);
}

/* PouchDB writes; we pull; PouchDB's view and ours agree. We write; we push; they agree. */
static void
test_pouchdb_interop (Fixture *f, gconstpointer data)
{
  static const char a32[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  static const char b32[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
  g_autoptr (JsonNode) w1 = NULL;
  g_autoptr (JsonNode) w2 = NULL;
  g_autoptr (JsonNode) w3 = NULL;
  g_autoptr (HbReplicationResult) pulled = NULL;
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree char *ops1 = NULL;
  g_autofree char *ops2 = NULL;
  g_autofree char *ops3 = NULL;
  g_autofree char *r1 = NULL, *r2 = NULL, *r3 = NULL, *r4 = NULL, *r4b = NULL;
  g_autofree char *ours = NULL;
  g_autofree char *theirs = NULL;

  ops1 = g_strdup_printf (
      "[{\"op\":\"put\",\"doc\":{\"_id\":\"patient:pouch1\",\"type\":\"patient\","
      "\"given_name\":\"Zo\xc3\xab\",\"family_name\":\"Okafor\",\"visits\":3,\"tags\":[\"a\",\"b\"]"
      ","
      "\"address\":{\"city\":\"Lagos\",\"zip\":null},\"consented\":true}},"
      "{\"op\":\"put\",\"doc\":{\"_id\":\"note:pouch2\",\"type\":\"note\",\"text\":\"to be "
      "deleted\"}},"
      "{\"op\":\"put\",\"doc\":{\"_id\":\"note:pouch3\",\"type\":\"note\",\"text\":\"branches\"}},"
      "{\"op\":\"put\",\"doc\":{\"_id\":\"note:pouch4\",\"type\":\"note\",\"text\":\"v1\"}},"
      "{\"op\":\"bulk\",\"new_edits\":false,\"docs\":["
      "{\"_id\":\"note:pouch5\",\"_rev\":\"1-%s\",\"_revisions\":{\"start\":1,\"ids\":[\"%s\"]},"
      "\"type\":\"note\",\"text\":\"root A\"},"
      "{\"_id\":\"note:pouch5\",\"_rev\":\"1-%s\",\"_revisions\":{\"start\":1,\"ids\":[\"%s\"]},"
      "\"type\":\"note\",\"text\":\"root B\"}]}]",
      a32, a32, b32, b32);
  w1 = pouch_client (f->db_url, "write", ops1);
  r1 = pouch_rev (w1, 0);
  r2 = pouch_rev (w1, 1);
  r3 = pouch_rev (w1, 2);
  r4 = pouch_rev (w1, 3);

  ops2 = g_strdup_printf (
      "[{\"op\":\"put\",\"doc\":{\"_id\":\"patient:pouch1\",\"_rev\":\"%s\",\"type\":\"patient\","
      "\"given_name\":\"Zo\xc3\xab\",\"family_name\":\"Okafor-Eze\",\"visits\":4,"
      "\"tags\":[\"a\",\"b\",\"c\"],\"address\":{\"city\":\"Abuja\",\"zip\":null},"
      "\"consented\":true}},"
      "{\"op\":\"delete\",\"id\":\"note:pouch2\",\"rev\":\"%s\"},"
      "{\"op\":\"bulk\",\"new_edits\":false,\"docs\":["
      "{\"_id\":\"note:pouch3\",\"_rev\":\"2-cccccccccccccccccccccccccccccccc\",\"_revisions\":"
      "{\"start\":2,\"ids\":[\"cccccccccccccccccccccccccccccccc\",\"%s\"]},\"type\":\"note\","
      "\"text\":\"branch C\"},"
      "{\"_id\":\"note:pouch3\",\"_rev\":\"3-dddddddddddddddddddddddddddddddd\",\"_revisions\":"
      "{\"start\":3,\"ids\":[\"dddddddddddddddddddddddddddddddd\","
      "\"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\","
      "\"%s\"]},\"type\":\"note\",\"text\":\"branch D\"}]},"
      "{\"op\":\"put\",\"doc\":{\"_id\":\"note:pouch4\",\"_rev\":\"%s\",\"type\":\"note\","
      "\"text\":\"v2\"}}]",
      r1, r2, strchr (r3, '-') + 1, strchr (r3, '-') + 1, r4);
  w2 = pouch_client (f->db_url, "write", ops2);
  r4b = pouch_rev (w2, 3);

  ops3 = g_strdup_printf (
      "[{\"op\":\"put\",\"doc\":{\"_id\":\"note:pouch4\",\"_rev\":\"%s\",\"type\":\"note\","
      "\"text\":\"v3\"}},"
      "{\"op\":\"bulk\",\"new_edits\":false,\"docs\":["
      "{\"_id\":\"note:pouch4\",\"_rev\":\"2-ffffffffffffffffffffffffffffffff\",\"_deleted\":true,"
      "\"_revisions\":{\"start\":2,\"ids\":[\"ffffffffffffffffffffffffffffffff\",\"%s\"]}}]}]",
      r4b, strchr (r4, '-') + 1);
  w3 = pouch_client (f->db_url, "write", ops3);
  g_assert_false (json_object_has_member (
      json_array_get_object_element (json_node_get_array (w3), 0), "error"));

  pulled = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PULL);
  g_assert_cmpuint (pulled->doc_write_failures, ==, 0);
  ours = store_dump (f->store);
  theirs = pouch_dump (f->db_url);
  g_assert_cmpstr (ours, ==, theirs);
  /* What the dump holds: 5 documents, one deleted, conflicts on 3 and 5. */
  g_assert_nonnull (strstr (ours, "\"conflicts\":[\"2-cccccccccccccccccccccccccccccccc\"]"));
  g_assert_nonnull (strstr (ours, "\"conflicts\":[\"1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]"));
  g_assert_nonnull (strstr (ours, "\"deleted\":true"));

  /* Our turn: edits, a deletion, a new document, and a conflict of our own. */
  {
    g_autofree char *e1 = edit_doc (f->store, "note:pouch3", "text", "edited by hbsync");
    g_autofree char *e2 = edit_doc (f->store, "note:pouch4", "text", "v4 by hbsync");
    g_autoptr (JsonNode) doc
        = hb_test_json ("{\"_id\":\"note:ours1\",\"type\":\"note\",\"text\":\"hbsync\","
                        "\"n\":[1,2,{\"k\":\"v\"}]}");
    g_autofree char *e3 = hb_store_put_sync (f->store, doc, NULL, &error);
    g_autofree char *e4 = NULL;
    g_autoptr (GPtrArray) docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
    g_autoptr (GPtrArray) results = NULL;

    g_assert_no_error (error);
    delete_doc (f->store, "patient:pouch1");
    e4 = edit_doc (f->store, "note:ours1", "text", "hbsync, edited");
    g_ptr_array_add (
        docs, hb_test_json (
                  "{\"_id\":\"note:pouch5\",\"_rev\":\"2-abababababababababababababababab\","
                  "\"_revisions\":{\"start\":2,\"ids\":[\"abababababababababababababababab\","
                  "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]},\"type\":\"note\",\"text\":\"ours\"}"));
    results = hb_store_bulk_docs_sync (f->store, docs, FALSE, NULL, &error);
    g_assert_no_error (error);
  }
  pushed = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PUSH);
  g_assert_cmpuint (pushed->doc_write_failures, ==, 0);
  g_assert_cmpuint (pushed->docs_written, ==, 5);
  g_clear_pointer (&ours, g_free);
  g_clear_pointer (&theirs, g_free);
  ours = store_dump (f->store);
  theirs = pouch_dump (f->db_url);
  g_assert_cmpstr (ours, ==, theirs);
  g_assert_nonnull (strstr (theirs, "hbsync, edited"));
  g_assert_nonnull (strstr (theirs, "\"2-abababababababababababababababab\""));
  assert_cache_empty (f->cache);
}

static void
assert_states (Repl *rp, HbReplicatorState last)
{
  g_assert_cmpuint (rp->states->len, ==, 2);
  g_assert_cmpint (g_array_index (rp->states, HbReplicatorState, 0), ==,
                   HB_REPLICATOR_STATE_RUNNING);
  g_assert_cmpint (g_array_index (rp->states, HbReplicatorState, 1), ==, last);
  g_assert_cmpint (hb_replicator_get_state (rp->r), ==, last);
}

/* Runs @rp, which cancels itself from its progress signal. */
static void
run_cancelled (Repl *rp)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbReplicationResult) result = repl_run (rp, &error);
  g_autoptr (HbReplicationResult) last = NULL;

  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_null (result);
  assert_states (rp, HB_REPLICATOR_STATE_CANCELLED);
  g_assert_cmpuint (rp->progress->len, >=, rp->cancel_after);
  last = hb_replicator_get_last_result (rp->r);
  g_assert_nonnull (last);
  g_assert_cmpuint (last->docs_written, >=, rp->at_cancel.written);
}

#define RESUME_DOCS 600
#define RESUME_BATCH 20

static void
test_resume_push (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autoptr (Repl) rp = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  g_autofree char *rep_id = hb_replicator_get_replication_id (rp->r);
  g_autoptr (GHashTable) seqs = NULL;
  g_autoptr (JsonNode) ckpt = NULL;
  g_autoptr (JsonNode) stats1_root = NULL;
  g_autoptr (JsonNode) stats2_root = NULL;
  g_autoptr (GHashTable) acked1 = NULL;
  g_autoptr (GHashTable) sent1 = NULL;
  g_autoptr (GHashTable) sent2 = NULL;
  g_autoptr (HbReplicationResult) result = NULL;
  JsonObject *stats1;
  GHashTableIter iter;
  gpointer key, value;
  gsize n;
  guint not_checkpointed = 0, resent = 0;

  write_notes (f->store, "note:", 0, RESUME_DOCS, 200);
  seqs = store_seqs (f->store);
  hb_replicator_set_batch_size (rp->r, RESUME_BATCH);
  rp->cancel_after = 4;
  run_cancelled (rp);
  assert_cache_empty (f->cache);

  /* The checkpoint, on both sides, covers every batch the server took, but at most the ones in
   * flight when the run was cancelled (a push keeps two writes in flight). */
  ckpt = checkpoint_seq (f->store, f->db_url, rep_id);
  g_assert_cmpint (json_node_get_value_type (ckpt), ==, G_TYPE_INT64);
  n = (gsize)json_node_get_int (ckpt);
  stats1 = proxy_stats (f->proxy, &stats1_root);
  acked1 = stats_batch_ids (stats1, "bulk_docs", 201);
  sent1 = stats_batch_ids (stats1, "bulk_docs", 0);
  g_assert_cmpuint (g_hash_table_size (acked1), >=, rp->at_cancel.written);
  g_hash_table_iter_init (&iter, seqs);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      if (GPOINTER_TO_SIZE (value) <= n)
        g_assert_true (g_hash_table_contains (acked1, key));
      else if (g_hash_table_contains (acked1, key))
        not_checkpointed++;
    }
  /* Every batch written before the cancel is in the checkpoint: at most the two in flight
   * then are not. */
  g_assert_cmpuint (RESUME_DOCS - count_seqs_after (seqs, n), >=, rp->at_cancel.written);
  g_assert_cmpuint (not_checkpointed, <=, 2 * RESUME_BATCH);

  /* The next run starts at the checkpoint: nothing it covers is checked or sent again. */
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  rp->cancel_after = 0;
  result = repl_run_ok (rp);
  assert_states (rp, HB_REPLICATOR_STATE_COMPLETE);
  g_assert_cmpuint (result->missing_checked, ==, count_seqs_after (seqs, n));
  g_assert_cmpuint (result->doc_write_failures, ==, 0);
  sent2 = stats_batch_ids (proxy_stats (f->proxy, &stats2_root), "bulk_docs", 0);
  g_hash_table_iter_init (&iter, sent2);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      g_assert_cmpuint (GPOINTER_TO_SIZE (g_hash_table_lookup (seqs, key)), >, n);
      if (g_hash_table_contains (acked1, key))
        resent++;
    }
  g_assert_cmpuint (resent, <=, 2 * RESUME_BATCH);
  /* A write in flight at the cancel may have reached the server unacknowledged: then the
   * second run's _revs_diff finds it there. */
  g_hash_table_iter_init (&iter, seqs);
  while (g_hash_table_iter_next (&iter, &key, &value))
    g_assert_true (g_hash_table_contains (sent1, key) || g_hash_table_contains (sent2, key));
  g_assert_cmpint (server_doc_count (f->db_url), ==, RESUME_DOCS);
  {
    g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) server = server_trees (f->db_url);
    assert_trees_equal (local, server);
  }
  assert_cache_empty (f->cache);
}

/* Two writes in flight: batches written after a slow first one do not move the checkpoint,
 * which names a sequence only when everything before it is written too. */
static void
test_out_of_order_writes (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autoptr (Repl) rp = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  g_autofree char *rep_id = hb_replicator_get_replication_id (rp->r);
  g_autoptr (HbReplicationResult) result = NULL;
  g_autoptr (JsonNode) local = NULL;
  g_autoptr (JsonNode) remote = NULL;
  g_autoptr (JsonNode) ckpt = NULL;

  write_notes (f->store, "note:", 0, 100, 200);
  hb_replicator_set_batch_size (rp->r, 20);
  PROXY_DO (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"delay\", \"ms\": 3000, "
                      "\"method\": \"POST\", \"path\": \"/_bulk_docs$\", \"count\": 1}}");
  /* Cancelled once three later batches are written while the first still waits. */
  rp->cancel_after = 3;
  run_cancelled (rp);
  g_assert_cmpuint (rp->at_cancel.written, ==, 60);
  local = local_checkpoint (f->store, rep_id);
  remote = remote_checkpoint (f->db_url, rep_id);
  g_assert_null (local);
  g_assert_null (remote);
  assert_cache_empty (f->cache);

  rp->cancel_after = 0;
  result = repl_run_ok (rp);
  g_assert_cmpuint (result->doc_write_failures, ==, 0);
  ckpt = checkpoint_seq (f->store, f->db_url, rep_id);
  g_assert_cmpint (json_node_get_int (ckpt), ==, 100);
  g_assert_cmpint (server_doc_count (f->db_url), ==, 100);
  {
    g_autoptr (GHashTable) local_trees = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) server = server_trees (f->db_url);
    assert_trees_equal (local_trees, server);
  }
}

static void
test_resume_pull (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autofree char *body = notes_body ("note:", RESUME_DOCS, 200);
  g_autoptr (Repl) rp = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
  g_autofree char *rep_id = hb_replicator_get_replication_id (rp->r);
  g_autofree char *n_text = NULL;
  g_autoptr (GHashTable) seqs = NULL;
  g_autoptr (GHashTable) stored1 = NULL;
  g_autoptr (JsonNode) ckpt = NULL;
  g_autoptr (JsonNode) stats_root = NULL;
  g_autoptr (GHashTable) fetched2 = NULL;
  g_autoptr (GPtrArray) since2 = NULL;
  g_autoptr (HbReplicationResult) result = NULL;
  JsonObject *stats;
  GHashTableIter iter;
  gpointer key, value;
  gsize n;
  guint not_checkpointed = 0;

  server_bulk (f->db_url, body);
  seqs = server_seqs (f->db_url);
  g_assert_cmpuint (g_hash_table_size (seqs), ==, RESUME_DOCS);
  hb_replicator_set_batch_size (rp->r, RESUME_BATCH);
  rp->cancel_after = 4;
  run_cancelled (rp);
  assert_cache_empty (f->cache);

  ckpt = checkpoint_seq (f->store, f->db_url, rep_id);
  g_assert_cmpint (json_node_get_value_type (ckpt), ==, G_TYPE_INT64);
  n = (gsize)json_node_get_int (ckpt);
  g_assert_cmpuint (n, >, 0);
  stored1 = store_seqs (f->store);
  g_hash_table_iter_init (&iter, seqs);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      if (GPOINTER_TO_SIZE (value) <= n)
        g_assert_true (g_hash_table_contains (stored1, key));
      else if (g_hash_table_contains (stored1, key))
        not_checkpointed++;
    }
  g_assert_cmpuint (g_hash_table_size (stored1), >=, rp->at_cancel.written);
  g_assert_cmpuint (RESUME_DOCS - count_seqs_after (seqs, n), >=, rp->at_cancel.written);
  g_assert_cmpuint (not_checkpointed, <=, RESUME_BATCH);

  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  rp->cancel_after = 0;
  result = repl_run_ok (rp);
  assert_states (rp, HB_REPLICATOR_STATE_COMPLETE);
  g_assert_cmpuint (result->missing_checked, ==, count_seqs_after (seqs, n));
  g_assert_cmpuint (result->doc_write_failures, ==, 0);
  stats = proxy_stats (f->proxy, &stats_root);
  since2 = stats_changes_since (stats);
  n_text = g_strdup_printf ("%" G_GSIZE_FORMAT, n);
  g_assert_cmpuint (since2->len, >, 0);
  g_assert_cmpstr (since2->pdata[0], ==, n_text);
  for (guint i = 0; i < since2->len; i++)
    g_assert_cmpuint (g_ascii_strtoull (since2->pdata[i], NULL, 10), >=, n);
  fetched2 = stats_batch_ids (stats, "bulk_get", 0);
  g_hash_table_iter_init (&iter, fetched2);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      g_assert_cmpuint (GPOINTER_TO_SIZE (g_hash_table_lookup (seqs, key)), >, n);
      g_assert_false (g_hash_table_contains (stored1, key));
    }
  {
    g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) server = server_trees (f->db_url);
    assert_trees_equal (local, server);
  }
  assert_cache_empty (f->cache);
}

static gboolean
is_opaque_seq (JsonNode *seq)
{
  return JSON_NODE_HOLDS_VALUE (seq) && json_node_get_value_type (seq) == G_TYPE_STRING
         && g_regex_match_simple ("^[0-9]+-g1AAAAB[A-Za-z0-9_-]+$", json_node_get_string (seq), 0,
                                  0);
}

/* The checkpoint of @rep_id holds @seq verbatim on both sides, as source_last_seq and as the
 * newest history entry's recorded_seq. */
static void
assert_checkpoint_holds (HbStore *store, const char *db_url, const char *rep_id, JsonNode *seq)
{
  g_autoptr (JsonNode) local = local_checkpoint (store, rep_id);
  g_autoptr (JsonNode) remote = remote_checkpoint (db_url, rep_id);
  JsonNode *docs[] = { local, remote };

  for (guint i = 0; i < G_N_ELEMENTS (docs); i++)
    {
      JsonObject *log;
      JsonObject *newest;

      g_assert_nonnull (docs[i]);
      log = json_node_get_object (docs[i]);
      g_assert_true (json_node_equal (json_object_get_member (log, "source_last_seq"), seq));
      newest = json_array_get_object_element (json_object_get_array_member (log, "history"), 0);
      g_assert_true (json_node_equal (json_object_get_member (newest, "recorded_seq"), seq));
    }
}

static void
test_opaque_seqs (Fixture *f, gconstpointer data)
{
  const char *mode = data;
  g_autofree char *url = fixture_proxy_url (f);
  g_autofree char *body = notes_body ("note:", 200, 150);
  g_autoptr (Repl) pull = NULL;
  g_autoptr (Repl) push = NULL;
  g_autofree char *rep_id = NULL;
  g_autoptr (JsonNode) ckpt1 = NULL;
  g_autoptr (JsonNode) ckpt2 = NULL;
  g_autoptr (JsonNode) stats_root = NULL;
  g_autoptr (GPtrArray) since = NULL;
  g_autoptr (HbReplicationResult) result = NULL;
  g_autoptr (HbReplicationResult) again = NULL;
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autofree char *last_seq = NULL;

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"opaque_seqs\": \"%s\"}}", mode);
  server_bulk (f->db_url, body);

  /* Pull, cancelled after three batches: the checkpoint is an opaque string. */
  pull = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
  rep_id = hb_replicator_get_replication_id (pull->r);
  hb_replicator_set_batch_size (pull->r, 20);
  pull->cancel_after = 3;
  run_cancelled (pull);
  ckpt1 = checkpoint_seq (f->store, f->db_url, rep_id);
  g_assert_true (is_opaque_seq (ckpt1));
  assert_checkpoint_holds (f->store, f->db_url, rep_id, ckpt1);
  g_assert_cmpuint (g_ascii_strtoull (json_node_get_string (ckpt1), NULL, 10), ==,
                    pull->at_cancel.written);

  /* The next run asks from that very string, and ends on another one, kept verbatim. */
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  pull->cancel_after = 0;
  result = repl_run_ok (pull);
  since = stats_changes_since (proxy_stats (f->proxy, &stats_root));
  g_assert_cmpuint (since->len, >, 0);
  g_assert_cmpstr (since->pdata[0], ==, json_node_get_string (ckpt1));
  ckpt2 = checkpoint_seq (f->store, f->db_url, rep_id);
  g_assert_true (is_opaque_seq (ckpt2));
  g_assert_false (json_node_equal (ckpt1, ckpt2));
  last_seq = json_to_string (ckpt2, FALSE);
  g_assert_cmpstr (result->last_seq, ==, last_seq);
  assert_checkpoint_holds (f->store, f->db_url, rep_id, ckpt2);
  {
    g_autoptr (JsonNode) info = hb_test_http_json ("GET", url, NULL, NULL);
    JsonNode *update_seq = json_object_get_member (json_node_get_object (info), "update_seq");

    g_assert_true (is_opaque_seq (update_seq));
    if (g_str_equal (mode, "stable"))
      g_assert_cmpstr (json_node_get_string (update_seq), ==, json_node_get_string (ckpt2));
    else
      g_assert_cmpstr (json_node_get_string (update_seq), !=, json_node_get_string (ckpt2));
    g_assert_cmpuint (g_ascii_strtoull (json_node_get_string (update_seq), NULL, 10), ==,
                      g_ascii_strtoull (json_node_get_string (ckpt2), NULL, 10));
  }
  {
    g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) server = server_trees (f->db_url);
    assert_trees_equal (local, server);
  }

  /* Once more: nothing to do, from the stored string (which a per-call server only accepts
   * verbatim). */
  again = repl_run_ok (pull);
  g_assert_cmpuint (again->docs_read, ==, 0);
  g_assert_cmpuint (again->missing_checked, ==, 0);

  /* Push through the same proxy, cancelled then resumed. */
  write_notes (f->store, "local:", 0, 100, 150);
  push = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  hb_replicator_set_batch_size (push->r, 20);
  push->cancel_after = 2;
  run_cancelled (push);
  push->cancel_after = 0;
  pushed = repl_run_ok (push);
  g_assert_cmpuint (pushed->doc_write_failures, ==, 0);
  {
    g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) server = server_trees (f->db_url);
    g_autofree char *push_id = hb_replicator_get_replication_id (push->r);
    g_autoptr (JsonNode) seq = checkpoint_seq (f->store, f->db_url, push_id);

    assert_trees_equal (local, server);
    g_assert_cmpint (g_hash_table_size (local), ==, 300);
    g_assert_cmpint (json_node_get_value_type (seq), ==, G_TYPE_INT64);
    g_assert_cmpint (json_node_get_int (seq), ==, (gint64)hb_store_get_update_seq (f->store));
  }
  assert_cache_empty (f->cache);
}

static void
test_too_large (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autoptr (Repl) rp = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  g_autoptr (HbReplicationResult) by_count = NULL;
  g_autoptr (HbReplicationResult) by_bytes = NULL;
  g_autoptr (JsonNode) stats_root = NULL;
  JsonObject *stats;
  JsonArray *batches;
  guint accepted = 0;

  hb_replicator_set_batch_size (rp->r, 50);

  /* At most 7 documents per _bulk_docs. */
  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"max_docs\": 7}}");
  write_notes (f->store, "note:", 0, 100, 300);
  by_count = repl_run_ok (rp);
  g_assert_cmpuint (by_count->docs_read, ==, 100);
  g_assert_cmpuint (by_count->docs_written, ==, 100);
  g_assert_cmpuint (by_count->doc_write_failures, ==, 0);
  stats = proxy_stats (f->proxy, &stats_root);
  g_assert_cmpint (stats_status (stats, "413"), >, 0);
  batches = json_object_get_array_member (json_object_get_object_member (stats, "bulk_docs"),
                                          "batches");
  for (guint i = 0; i < json_array_get_length (batches); i++)
    {
      JsonObject *batch = json_array_get_object_element (batches, i);
      guint len = json_array_get_length (json_object_get_array_member (batch, "ids"));

      if (json_object_get_int_member (batch, "status") == 201)
        {
          g_assert_cmpuint (len, <=, 7);
          accepted += len;
        }
      else
        {
          g_assert_cmpint (json_object_get_int_member (batch, "status"), ==, 413);
          g_assert_cmpuint (len, >, 7);
        }
    }
  g_assert_cmpuint (accepted, ==, 100);
  g_assert_cmpint (server_doc_count (f->db_url), ==, 100);

  /* At most 16 KiB per request: one document is bigger than that on its own. */
  PROXY_DO (f->proxy,
            "{\"cmd\": \"config\", \"replace\": true, \"rules\": {\"max_body_bytes\": 16384}}");
  write_notes (f->store, "note:", 100, 50, 300);
  {
    g_autoptr (GRand) rand = g_rand_new_with_seed (3);
    g_autoptr (JsonNode) big = hb_test_note (rand, "note:big", "session:s1", "patient:p1",
                                             "2024-05-01T10:00:00Z", 40000);
    g_autoptr (GError) error = NULL;
    g_autofree char *rev = hb_store_put_sync (f->store, big, NULL, &error);

    g_assert_no_error (error);
  }
  write_notes (f->store, "note:", 150, 50, 300);
  by_bytes = repl_run_ok (rp);
  g_assert_cmpuint (by_bytes->docs_read, ==, 101);
  g_assert_cmpuint (by_bytes->docs_written, ==, 100);
  g_assert_cmpuint (by_bytes->doc_write_failures, ==, 1);
  g_assert_cmpuint (by_bytes->docs_denied, ==, 0);
  g_assert_cmpint (server_doc_count (f->db_url), ==, 200);
  {
    g_autofree char *big_url = g_strdup_printf ("%s/note%%3Abig", f->db_url);
    g_autoptr (JsonNode) answer = NULL;
    guint status = 0;

    answer = hb_test_http_json ("GET", big_url, NULL, &status);
    g_assert_cmpuint (status, ==, 404);
  }
  {
    g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) server = server_trees (f->db_url);

    g_assert_true (g_hash_table_remove (local, "note:big"));
    assert_trees_equal (local, server);
  }
  assert_cache_empty (f->cache);
}

static void
test_denied (Fixture *f, gconstpointer data)
{
  static const char *const denied_ids[] = { "note:00003", "note:00017", "note:00031", NULL };
  g_autofree char *url = fixture_proxy_url (f);
  g_autoptr (Repl) rp = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  g_autoptr (HbReplicationResult) result = NULL;
  g_autoptr (HbReplicationResult) again = NULL;

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"deny_ids\": [\"%s\", \"%s\", \"%s\"]}}",
            denied_ids[0], denied_ids[1], denied_ids[2]);
  write_notes (f->store, "note:", 0, 40, 200);
  hb_replicator_set_batch_size (rp->r, 10);
  result = repl_run_ok (rp);
  assert_states (rp, HB_REPLICATOR_STATE_COMPLETE);
  g_assert_cmpuint (result->docs_denied, ==, 3);
  g_assert_cmpuint (result->doc_write_failures, ==, 3);
  g_assert_cmpuint (result->docs_written, ==, 37);
  g_assert_cmpuint (result->docs_read, ==, 40);
  g_assert_cmpuint (rp->denied->len, ==, 3);
  g_ptr_array_sort (rp->denied, hb_test_compare_strv_items);
  for (guint i = 0; denied_ids[i] != NULL; i++)
    g_assert_cmpstr (rp->denied->pdata[i], ==, denied_ids[i]);

  g_assert_cmpint (server_doc_count (f->db_url), ==, 37);
  for (guint i = 0; i < 40; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:%05u", i);
      g_autofree char *escaped = g_uri_escape_string (id, NULL, FALSE);
      g_autofree char *doc_url = g_strdup_printf ("%s/%s", f->db_url, escaped);
      g_autoptr (JsonNode) answer = NULL;
      guint status = 0;

      answer = hb_test_http_json ("GET", doc_url, NULL, &status);
      g_assert_cmpuint (status, ==, g_strv_contains (denied_ids, id) ? 404 : 200);
    }

  /* A denial is final: the checkpoint moved past it. */
  again = repl_run_ok (rp);
  g_assert_cmpuint (again->docs_read, ==, 0);
  g_assert_cmpuint (rp->denied->len, ==, 0);
  assert_cache_empty (f->cache);
}

typedef struct
{
  guint64 max_bytes;
  guint samples;
} CacheSampler;

static void
on_cache_stats_changed (HbSyncCache *cache, gpointer data)
{
  CacheSampler *sampler = data;
  g_autoptr (HbSyncCacheStats) stats = hb_sync_cache_get_stats (cache);

  sampler->max_bytes = MAX (sampler->max_bytes, stats->bytes);
  sampler->samples++;
}

static void
test_cache_bound (Fixture *f, gconstpointer data)
{
  const guint64 bound = 1024 * 1024;
  const guint n = 1000;
  g_autofree char *dir_b = NULL;
  g_autoptr (HbStore) b = hb_test_store_new (&dir_b);
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (HbReplicationResult) pulled = NULL;
  g_autoptr (HbSyncCacheStats) stats = NULL;
  CacheSampler sampler = { 0 };
  gulong handler;

  hb_sync_cache_configure (f->cache, HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS, bound);
  handler
      = g_signal_connect (f->cache, "stats-changed", G_CALLBACK (on_cache_stats_changed), &sampler);
  write_notes (f->store, "note:", 0, n, 20000); /* about 20 MiB of plaintext */

  pushed = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PUSH);
  g_assert_cmpuint (pushed->docs_written, ==, n);
  g_assert_cmpuint (pushed->doc_write_failures, ==, 0);
  pulled = replicate_ok (b, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PULL);
  g_assert_cmpuint (pulled->docs_written, ==, n);
  g_assert_cmpuint (pulled->doc_write_failures, ==, 0);

  stats = hb_sync_cache_get_stats (f->cache);
  g_test_message ("cache peak %" G_GUINT64_FORMAT " bytes, sampled max %" G_GUINT64_FORMAT
                  " in %u samples",
                  stats->peak_bytes, sampler.max_bytes, sampler.samples);
  g_assert_cmpuint (stats->peak_bytes, <=, bound);
  g_assert_cmpuint (sampler.max_bytes, <=, bound);
  g_assert_cmpuint (sampler.samples, >, 0);
  /* The cache was used, up to near its bound: the pipeline waited for room. */
  g_assert_cmpuint (stats->peak_bytes, >=, bound / 2);
  g_assert_cmpuint (stats->entries, ==, 0);
  g_signal_handler_disconnect (f->cache, handler);

  g_assert_cmpint (server_doc_count (f->db_url), ==, n);
  {
    g_autoptr (GHashTable) ta = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) tb = hb_test_store_trees (b);

    g_assert_cmpuint (g_hash_table_size (ta), ==, n);
    assert_trees_equal (ta, tb);
  }
  hb_store_close (b);
  hb_test_rmdir (dir_b);
}

static gboolean
holds_bytes (const char *hay, gsize len, const char *needle)
{
  gsize n = strlen (needle);

  for (const char *p = hay; n <= len && (gsize)(p - hay) <= len - n; p++)
    {
      p = memchr (p, needle[0], len - n - (gsize)(p - hay) + 1);
      if (p == NULL)
        return FALSE;
      if (memcmp (p, needle, n) == 0)
        return TRUE;
    }
  return FALSE;
}

/* Every regular file under @path that holds one of @needles is added to @found. */
static void
scan_for (const char *path, const char *const *needles, GPtrArray *found, guint *n_files)
{
  if (g_file_test (path, G_FILE_TEST_IS_SYMLINK))
    return;
  if (g_file_test (path, G_FILE_TEST_IS_DIR))
    {
      g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
      const char *name;

      while (dir != NULL && (name = g_dir_read_name (dir)) != NULL)
        {
          g_autofree char *child = g_build_filename (path, name, NULL);
          scan_for (child, needles, found, n_files);
        }
      return;
    }
  if (g_file_test (path, G_FILE_TEST_IS_REGULAR))
    {
      g_autofree char *contents = NULL;
      gsize len = 0;

      if (!g_file_get_contents (path, &contents, &len, NULL))
        return;
      (*n_files)++;
      for (guint i = 0; needles[i] != NULL; i++)
        if (holds_bytes (contents, len, needles[i]))
          g_ptr_array_add (found, g_strdup_printf ("%s holds %s", path, needles[i]));
    }
}

static void
assert_no_plaintext (const char *path, const char *const *needles)
{
  g_autoptr (GPtrArray) found = g_ptr_array_new_with_free_func (g_free);
  guint n_files = 0;

  scan_for (path, needles, found, &n_files);
  for (guint i = 0; i < found->len; i++)
    g_test_message ("%s", (char *)found->pdata[i]);
  g_assert_cmpuint (n_files, >, 0);
  g_assert_cmpuint (found->len, ==, 0);
}

static void
test_no_plaintext (Fixture *f, gconstpointer data)
{
  g_autofree char *tag = g_strdup_printf ("%08x%08x", g_random_int (), g_random_int ());
  g_autofree char *id_mark = g_strconcat ("QzPid", tag, NULL);
  g_autofree char *name_mark = g_strconcat ("QzName", tag, NULL);
  g_autofree char *nid_mark = g_strconcat ("QzNid", tag, NULL);
  g_autofree char *text_mark = g_strconcat ("QzText", tag, NULL);
  const char *const needles[] = { id_mark, name_mark, nid_mark, text_mark, NULL };
  g_autofree char *body = NULL;
  g_autofree char *filler = notes_body ("note:", 40, 300);
  g_autofree char *patient_id = g_strconcat ("patient:", id_mark, NULL);
  g_autoptr (HbReplicationResult) pulled = NULL;
  g_autoptr (JsonNode) doc = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree char *db_path = g_build_filename (f->dir, "store.db", NULL);
  g_autofree char *wal_path = g_strconcat (db_path, "-wal", NULL);
  g_autofree char *shm_path = g_strconcat (db_path, "-shm", NULL);
  const char *tmpdir = g_getenv ("TMPDIR");

  body = g_strdup_printf (
      "{\"docs\":[{\"_id\":\"%s\",\"type\":\"patient\",\"given_name\":\"%s\",\"family_name\":"
      "\"Doe\","
      "\"national_id\":\"%s\",\"birth_date\":\"1970-01-01\"},"
      "{\"_id\":\"note:%s\",\"type\":\"note\",\"patient_id\":\"%s\",\"session_id\":\"session:x\","
      "\"text\":\"%s reports chest pain\"}]}",
      patient_id, name_mark, nid_mark, id_mark, patient_id, text_mark);
  server_bulk (f->db_url, filler);
  server_bulk (f->db_url, body);

  pulled = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PULL);
  g_assert_cmpuint (pulled->docs_written, ==, 42);
  /* The store does hold them, sealed. */
  doc = hb_store_get_sync (f->store, patient_id, NULL, HB_GET_FLAGS_NONE, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (doc), "given_name"), ==,
                   name_mark);

  /* The test runs with a TMPDIR of its own (see main()); the store lives in it. */
  g_assert_nonnull (tmpdir);
  g_assert_cmpstr (g_get_tmp_dir (), ==, tmpdir);
  g_assert_true (g_str_has_prefix (f->dir, tmpdir));
  g_assert_true (g_file_test (db_path, G_FILE_TEST_IS_REGULAR));
  g_assert_true (g_file_test (wal_path, G_FILE_TEST_IS_REGULAR));
  assert_no_plaintext (db_path, needles);
  assert_no_plaintext (wal_path, needles);
  if (g_file_test (shm_path, G_FILE_TEST_EXISTS))
    assert_no_plaintext (shm_path, needles);
  assert_no_plaintext (tmpdir, needles);

  /* And once the store is closed and its log checkpointed into the file. */
  hb_store_close (f->store);
  assert_no_plaintext (tmpdir, needles);
}

static void
test_no_bulk_get (Fixture *f, gconstpointer data)
{
  static const guint statuses[] = { 404, 405, 501 };
  g_autofree char *url = fixture_proxy_url (f);
  g_autofree char *bulk_get_route = g_strdup_printf ("POST /%s/_bulk_get", f->db_name);
  g_autofree char *doc_route = g_strdup_printf ("GET /%s/{id}", f->db_name);
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (GHashTable) server = NULL;

  write_corpus (f->store, 60, 200);
  pushed = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PUSH);
  server = server_trees (f->db_url);

  for (guint i = 0; i < G_N_ELEMENTS (statuses); i++)
    {
      g_autofree char *dir = NULL;
      g_autoptr (HbStore) store = hb_test_store_new (&dir);
      g_autoptr (Repl) rp = repl_new (store, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
      g_autoptr (HbReplicationResult) pulled = NULL;
      g_autoptr (JsonNode) stats_root = NULL;
      g_autoptr (GHashTable) copy = NULL;
      JsonObject *stats;

      PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"bulk_get_status\": %u}}",
                statuses[i]);
      PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
      hb_replicator_set_batch_size (rp->r, 25);
      hb_replicator_set_feed_documents (rp->r, FALSE);
      pulled = repl_run_ok (rp);
      g_assert_cmpuint (pulled->doc_write_failures, ==, 0);
      g_assert_cmpuint (pulled->docs_written, ==, pushed->docs_written);
      copy = hb_test_store_trees (store);
      assert_trees_equal (copy, server);

      stats = proxy_stats (f->proxy, &stats_root);
      g_assert_cmpint (stats_route (stats, bulk_get_route), >=, 1);
      g_assert_cmpint (stats_route (stats, doc_route), >=, 60);
      {
        JsonArray *batches = json_object_get_array_member (
            json_object_get_object_member (stats, "bulk_get"), "batches");

        for (guint k = 0; k < json_array_get_length (batches); k++)
          g_assert_cmpint (
              json_object_get_int_member (json_array_get_object_element (batches, k), "status"), ==,
              statuses[i]);
      }
      assert_cache_empty (f->cache);
      hb_store_close (store);
      hb_test_rmdir (dir);
    }
}

/* Patients p1 and p2, their sessions s1 and s2 with notes and observations, and documents of
 * no session. */
static void
write_clinic (HbStore *store)
{
  static const char *const docs[] = {
    "{\"_id\":\"patient:p1\",\"type\":\"patient\",\"given_name\":\"Ada\"}",
    "{\"_id\":\"patient:p2\",\"type\":\"patient\",\"given_name\":\"Bea\"}",
    "{\"_id\":\"session:s1\",\"type\":\"session\",\"patient_id\":\"patient:p1\",\"status\":"
    "\"open\"}",
    "{\"_id\":\"session:s2\",\"type\":\"session\",\"patient_id\":\"patient:p2\",\"status\":"
    "\"open\"}",
    "{\"_id\":\"note:n1\",\"type\":\"note\",\"session_id\":\"session:s1\","
    "\"patient_id\":\"patient:p1\",\"text\":\"s1\"}",
    "{\"_id\":\"observation:o1\",\"type\":\"observation\",\"session_id\":\"session:s1\","
    "\"patient_id\":\"patient:p1\",\"kind\":\"pulse\",\"value\":72}",
    "{\"_id\":\"observation:o2\",\"type\":\"observation\",\"session_id\":\"session:s1\","
    "\"patient_id\":\"patient:p1\",\"kind\":\"spo2\",\"value\":98}",
    "{\"_id\":\"note:n2\",\"type\":\"note\",\"session_id\":\"session:s2\","
    "\"patient_id\":\"patient:p2\",\"text\":\"s2\"}",
    "{\"_id\":\"observation:o3\",\"type\":\"observation\",\"session_id\":\"session:s2\","
    "\"patient_id\":\"patient:p2\",\"kind\":\"pulse\",\"value\":80}",
    "{\"_id\":\"note:n3\",\"type\":\"note\",\"patient_id\":\"patient:p1\",\"text\":\"no session\"}",
    "{\"_id\":\"misc:x\",\"type\":\"misc\"}",
  };

  for (guint i = 0; i < G_N_ELEMENTS (docs); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (JsonNode) doc = hb_test_json (docs[i]);
      g_autofree char *rev = hb_store_put_sync (store, doc, NULL, &error);

      g_assert_no_error (error);
    }
  /* Some history too. */
  g_free (edit_doc (store, "note:n1", "text", "s1, edited"));
  g_free (edit_doc (store, "note:n2", "text", "s2, edited"));
}

/* The ids of a table's keys, sorted and joined by commas. */
static char *
joined_keys (GHashTable *table)
{
  g_autofree const char **keys = (const char **)g_hash_table_get_keys_as_array (table, NULL);

  qsort (keys, g_hash_table_size (table), sizeof (char *), hb_test_compare_strv_items);
  return g_strjoinv (",", (char **)keys);
}

static char *
server_ids (const char *db_url)
{
  g_autoptr (GHashTable) seqs = server_seqs (db_url);

  return joined_keys (seqs);
}

static char *
store_ids (HbStore *store)
{
  g_autoptr (GHashTable) seqs = store_seqs (store);

  return joined_keys (seqs);
}

#define S1_IDS "note:n1,observation:o1,observation:o2,patient:p1,session:s1"

static char *
replication_id_of (Fixture *f,
                   const char *url,
                   HbReplicationDirection direction,
                   const char *const *doc_ids,
                   const char *session_id)
{
  g_autoptr (Repl) rp = repl_new (f->store, f->cache, url, direction);

  hb_replicator_set_doc_ids (rp->r, doc_ids);
  hb_replicator_set_session_id (rp->r, session_id);
  return hb_replicator_get_replication_id (rp->r);
}

static void
test_filters (Fixture *f, gconstpointer data)
{
  static const char *const push_ids[] = { "patient:p2", "note:n2", NULL };
  static const char *const pull_ids[] = { "observation:o3", "misc:x", "nope:missing", NULL };
  g_autofree char *ids_url = g_strconcat (f->db_url, "-ids", NULL);
  g_autofree char *session_url = g_strconcat (f->db_url, "-session", NULL);
  g_autofree char *dir_b = NULL;
  g_autofree char *dir_c = NULL;
  g_autoptr (HbStore) b = hb_test_store_new (&dir_b);
  g_autoptr (HbStore) c = hb_test_store_new (&dir_c);
  g_autoptr (HbReplicationResult) r1 = NULL;
  g_autoptr (HbReplicationResult) r2 = NULL;
  g_autoptr (HbReplicationResult) r3 = NULL;
  g_autoptr (HbReplicationResult) r4 = NULL;
  g_autoptr (HbReplicationResult) r5 = NULL;
  g_autoptr (HbReplicationResult) r6 = NULL;
  g_autoptr (HbReplicationResult) r7 = NULL;
  g_autofree char *ids = NULL;

  write_clinic (f->store);

  /* Push by ids, and by session, each to a database of its own. */
  r1 = replicate_filtered (f->store, f->cache, ids_url, HB_REPLICATION_DIRECTION_PUSH, push_ids,
                           NULL);
  g_assert_cmpuint (r1->docs_written, ==, 2);
  ids = server_ids (ids_url);
  g_assert_cmpstr (ids, ==, "note:n2,patient:p2");
  g_clear_pointer (&ids, g_free);

  r2 = replicate_filtered (f->store, f->cache, session_url, HB_REPLICATION_DIRECTION_PUSH, NULL,
                           "session:s1");
  g_assert_cmpuint (r2->docs_written, ==, 5);
  ids = server_ids (session_url);
  g_assert_cmpstr (ids, ==, S1_IDS);
  g_clear_pointer (&ids, g_free);
  {
    /* What went, went whole: same trees as the store's. */
    g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) server = server_trees (session_url);
    GHashTableIter iter;
    gpointer key, value;

    g_hash_table_iter_init (&iter, server);
    while (g_hash_table_iter_next (&iter, &key, &value))
      g_assert_cmpstr (value, ==, g_hash_table_lookup (local, key));
  }

  /* A session push later sends only the session's new revisions. */
  g_free (edit_doc (f->store, "note:n1", "text", "s1, edited twice"));
  g_free (edit_doc (f->store, "note:n2", "text", "s2, edited twice"));
  g_free (edit_doc (f->store, "misc:x", "type", "misc2"));
  r3 = replicate_filtered (f->store, f->cache, session_url, HB_REPLICATION_DIRECTION_PUSH, NULL,
                           "session:s1");
  g_assert_cmpuint (r3->docs_written, ==, 1);
  g_assert_cmpuint (r3->missing_checked, ==, 1);

  /* Everything to the main database, then pull by ids and by session. */
  r4 = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PUSH);
  g_assert_cmpuint (r4->docs_written, ==, 11);
  r5 = replicate_filtered (b, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PULL, pull_ids, NULL);
  g_assert_cmpuint (r5->docs_written, ==, 2);
  ids = store_ids (b);
  g_assert_cmpstr (ids, ==, "misc:x,observation:o3");
  g_clear_pointer (&ids, g_free);

  r6 = replicate_filtered (c, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PULL, NULL,
                           "session:s1");
  g_assert_cmpuint (r6->docs_written, ==, 5);
  ids = store_ids (c);
  g_assert_cmpstr (ids, ==, S1_IDS);
  g_clear_pointer (&ids, g_free);
  r7 = replicate_filtered (c, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PULL, NULL,
                           "session:s2");
  g_assert_cmpuint (r7->docs_written, ==, 4);
  ids = store_ids (c);
  g_assert_cmpstr (ids, ==,
                   "note:n1,note:n2,observation:o1,observation:o2,observation:o3,patient:p1,"
                   "patient:p2,session:s1,session:s2");
  {
    g_autoptr (GHashTable) pulled = hb_test_store_trees (c);
    g_autoptr (GHashTable) server = server_trees (f->db_url);
    GHashTableIter iter;
    gpointer key, value;

    g_hash_table_iter_init (&iter, pulled);
    while (g_hash_table_iter_next (&iter, &key, &value))
      g_assert_cmpstr (value, ==, g_hash_table_lookup (server, key));
  }

  /* The replication id: one per filter and direction, whatever the order of the ids. */
  {
    static const char *const ac[] = { "note:a", "note:c", NULL };
    static const char *const ca[] = { "note:c", "note:a", "note:c", NULL };
    static const char *const ab[] = { "note:a", "note:b", NULL };
    g_autofree char *none
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PUSH, NULL, NULL);
    g_autofree char *none_pull
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PULL, NULL, NULL);
    g_autofree char *id_ac
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PUSH, ac, NULL);
    g_autofree char *id_ca
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PUSH, ca, NULL);
    g_autofree char *id_ab
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PUSH, ab, NULL);
    g_autofree char *id_ac_pull
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PULL, ac, NULL);
    g_autofree char *s1
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PUSH, NULL, "session:s1");
    g_autofree char *s1_again
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PUSH, NULL, "session:s1");
    g_autofree char *s2
        = replication_id_of (f, f->db_url, HB_REPLICATION_DIRECTION_PUSH, NULL, "session:s2");
    g_autofree char *s1_there
        = replication_id_of (f, session_url, HB_REPLICATION_DIRECTION_PUSH, NULL, "session:s1");
    const char *all[] = { none, none_pull, id_ac, id_ab, id_ac_pull, s1, s2 };

    g_assert_cmpstr (id_ac, ==, id_ca);
    g_assert_cmpstr (s1, ==, s1_again);
    for (guint i = 0; i < G_N_ELEMENTS (all); i++)
      for (guint k = i + 1; k < G_N_ELEMENTS (all); k++)
        g_assert_cmpstr (all[i], !=, all[k]);
    /* The server's URL is part of it too. */
    g_assert_cmpstr (r2->replication_id, ==, s1_there);
    g_assert_cmpstr (s1_there, !=, s1);
  }
  assert_cache_empty (f->cache);

  hb_store_close (b);
  hb_test_rmdir (dir_b);
  hb_store_close (c);
  hb_test_rmdir (dir_c);
}

typedef struct
{
  HbTestProxy *proxy;
  guint at;
  const char *command;
} ProgressCommand;

/* A proxy command sent from the progress signal, at its at-th emission. */
static void
command_at_progress (Repl *rp, gpointer data)
{
  ProgressCommand *pc = data;

  if (rp->progress->len == pc->at)
    PROXY_DO (pc->proxy, "%s", pc->command);
}

static gint64
fault_hits (JsonObject *stats, gint64 id)
{
  JsonArray *faults = json_object_get_array_member (stats, "faults");

  for (guint i = 0; i < json_array_get_length (faults); i++)
    {
      JsonObject *fault = json_array_get_object_element (faults, i);

      if (json_object_get_int_member (fault, "id") == id)
        return json_object_get_int_member (fault, "hits");
    }
  g_assert_not_reached ();
}

static guint
count_dropped (JsonObject *stats, const char *route)
{
  JsonArray *requests = json_object_get_array_member (stats, "requests");
  guint n = 0;

  for (guint i = 0; i < json_array_get_length (requests); i++)
    {
      JsonObject *r = json_array_get_object_element (requests, i);
      JsonNode *status = json_object_get_member (r, "status");

      if (g_str_equal (json_object_get_string_member (r, "route"), route) && status != NULL
          && JSON_NODE_HOLDS_VALUE (status) && json_node_get_value_type (status) == G_TYPE_STRING
          && g_str_equal (json_node_get_string (status), "dropped"))
        n++;
    }
  return n;
}

static gint64
stats_max_in_flight (JsonObject *stats, const char *kind)
{
  return json_object_get_int_member (json_object_get_object_member (stats, kind), "max_in_flight");
}

/* A push keeps two `_bulk_docs` in flight and a pull two `_bulk_get` (the page after the one
 * being fetched); with answers slowed down, the proxy sees both at once. A `_bulk_get` of the
 * pull fails once on the way: fetched ahead or not, the page is read again, and nothing is
 * lost or written twice. */
static void
test_pipelined (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autoptr (Repl) push = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (HbReplicationResult) pulled = NULL;
  g_autoptr (JsonNode) stats_root = NULL;
  g_autofree char *dir2 = NULL;
  g_autoptr (HbStore) store2 = hb_test_store_new (&dir2);
  g_autoptr (Repl) pull = NULL;
  g_autoptr (JsonNode) fault = NULL;
  JsonObject *stats;

  write_notes (f->store, "note:", 0, 600, 300);
  hb_replicator_set_batch_size (push->r, 50);
  PROXY_DO (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"delay\", \"ms\": 150, "
                      "\"method\": \"POST\", \"path\": \"/_bulk_docs$\", \"count\": 100}}");
  pushed = repl_run_ok (push);
  g_assert_cmpuint (pushed->docs_written, ==, 600);
  stats = proxy_stats (f->proxy, &stats_root);
  g_assert_cmpint (stats_max_in_flight (stats, "bulk_docs"), ==, 2);
  g_assert_cmpint (server_doc_count (f->db_url), ==, 600);

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"faults\": null}}");
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  PROXY_DO (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"delay\", \"ms\": 150, "
                      "\"method\": \"POST\", \"path\": \"/_bulk_get$\", \"count\": 100}}");
  fault = hb_test_proxy_cmd (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"status\", "
                                       "\"status\": 503, \"method\": \"POST\", "
                                       "\"path\": \"/_bulk_get$\", \"skip\": 4, \"count\": 1}}");
  pull = repl_new (store2, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
  hb_replicator_set_batch_size (pull->r, 50);
  /* Every revision through _bulk_get, none from the feed. */
  hb_replicator_set_feed_documents (pull->r, FALSE);
  pulled = repl_run_ok (pull);
  g_assert_cmpuint (pulled->docs_written, ==, 600);
  g_assert_cmpuint (pulled->doc_write_failures, ==, 0);
  g_clear_pointer (&stats_root, json_node_unref);
  stats = proxy_stats (f->proxy, &stats_root);
  g_assert_cmpint (stats_max_in_flight (stats, "bulk_get"), ==, 2);
  g_assert_cmpint (
      fault_hits (stats, json_object_get_int_member (json_node_get_object (fault), "id")), ==, 1);
  {
    g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) copy = hb_test_store_trees (store2);

    assert_trees_equal (local, copy);
  }
  assert_cache_empty (f->cache);
  hb_store_close (store2);
  hb_test_rmdir (dir2);
}

/* How many `_changes` requests the proxy saw, and how many of them asked for the documents. */
static void
stats_changes_with_docs (JsonObject *stats, guint *total, guint *with_docs)
{
  JsonArray *requests = json_object_get_array_member (stats, "requests");

  *total = *with_docs = 0;
  for (guint i = 0; i < json_array_get_length (requests); i++)
    {
      JsonObject *r = json_array_get_object_element (requests, i);

      if (!g_str_has_suffix (json_object_get_string_member (r, "route"), "/_changes"))
        continue;
      (*total)++;
      if (strstr (json_object_get_string_member (r, "url"), "include_docs=true") != NULL)
        (*with_docs)++;
    }
}

/* The revisions of the server's feed that a pull into an empty store must read with
 * `_bulk_get` when the feed carries documents: those of every row that is not one first
 * revision alone (id → how many). Counts the rows that are in *whole. */
static GHashTable *
server_revisions_beyond_feed (const char *db_url, guint *whole)
{
  g_autoptr (JsonNode) changes = NULL;
  JsonArray *rows = server_feed (db_url, &changes);
  GHashTable *ids = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);

  *whole = 0;
  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);
      JsonArray *leaves = json_object_get_array_member (row, "changes");
      const char *rev
          = json_object_get_string_member (json_array_get_object_element (leaves, 0), "rev");

      if (json_array_get_length (leaves) == 1 && g_str_has_prefix (rev, "1-"))
        (*whole)++;
      else
        g_hash_table_insert (ids, g_strdup (json_object_get_string_member (row, "id")),
                             GUINT_TO_POINTER (json_array_get_length (leaves)));
    }
  return ids;
}

static void
assert_same_ids (GHashTable *a, GHashTable *b)
{
  GHashTableIter iter;
  gpointer key;

  g_hash_table_iter_init (&iter, a);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    if (!g_hash_table_contains (b, key))
      g_error ("%s is in one set and not the other", (const char *)key);
  g_assert_cmpuint (g_hash_table_size (a), ==, g_hash_table_size (b));
}

/* A pull into an empty store reads the feed with its documents and takes from it every
 * revision that is a first revision and its document's only leaf; edited, conflicting and
 * deleted documents still come through `_bulk_get`, and every tree ends equal to the
 * server's. With feed-documents off, every revision goes through `_bulk_get`. */
static void
test_feed_documents (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (GHashTable) server = NULL;
  g_autoptr (GHashTable) beyond = NULL;
  guint whole = 0, leaves = 0;
  GHashTableIter iter;
  gpointer value;

  /* Notes, a tenth of them edited, some deleted, some in conflict (write_corpus). */
  write_corpus (f->store, 230, 300);
  pushed = replicate_ok (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PUSH);
  server = server_trees (f->db_url);
  beyond = server_revisions_beyond_feed (f->db_url, &whole);
  g_assert_cmpuint (whole, >, 150);
  g_assert_cmpuint (g_hash_table_size (beyond), >, 20);
  g_hash_table_iter_init (&iter, beyond);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    leaves += GPOINTER_TO_UINT (value);

  for (guint on = 0; on < 2; on++)
    {
      g_autofree char *dir = NULL;
      g_autoptr (HbStore) store = hb_test_store_new (&dir);
      g_autoptr (Repl) rp = repl_new (store, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
      g_autoptr (HbReplicationResult) pulled = NULL;
      g_autoptr (JsonNode) stats_root = NULL;
      g_autoptr (GHashTable) fetched = NULL;
      g_autoptr (GHashTable) copy = NULL;
      JsonObject *stats;
      guint changes = 0, with_docs = 0;
      gint64 fetched_docs;

      g_assert_true (hb_replicator_get_feed_documents (rp->r));
      hb_replicator_set_feed_documents (rp->r, on);
      hb_replicator_set_batch_size (rp->r, 40);
      PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
      pulled = repl_run_ok (rp);
      g_assert_cmpuint (pulled->doc_write_failures, ==, 0);
      g_assert_cmpuint (pulled->docs_written, ==, pushed->docs_written);
      copy = hb_test_store_trees (store);
      assert_trees_equal (copy, server);
      assert_cache_empty (f->cache);

      stats = proxy_stats (f->proxy, &stats_root);
      stats_changes_with_docs (stats, &changes, &with_docs);
      fetched = stats_batch_ids (stats, "bulk_get", 0);
      fetched_docs
          = json_object_get_int_member (json_object_get_object_member (stats, "bulk_get"), "docs");
      g_assert_cmpuint (changes, >=, 6);
      if (on)
        {
          /* Three quarters of every page are served from it: the feed keeps its documents. */
          g_assert_cmpuint (with_docs, ==, changes);
          assert_same_ids (fetched, beyond);
          g_assert_cmpint (fetched_docs, ==, leaves);
        }
      else
        {
          g_assert_cmpuint (with_docs, ==, 0);
          g_assert_cmpint (fetched_docs, ==, pushed->docs_written);
        }
      hb_store_close (store);
      hb_test_rmdir (dir);
    }
}

/* The feed stops carrying documents when the store has them already and carries them again
 * when new first revisions come: a store that pushed its notes pulls them back without one
 * document in the feed, then pulls others' new notes mostly from the feed. */
static void
test_feed_documents_adapt (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autoptr (Repl) pull = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (HbReplicationResult) back = NULL;
  g_autoptr (HbReplicationResult) news = NULL;
  g_autoptr (JsonNode) stats_root = NULL;
  g_autofree char *body = NULL;
  JsonObject *stats;
  guint changes = 0, with_docs = 0;
  gint64 fetched_docs;

  write_notes (f->store, "note:own:", 0, 200, 300);
  pushed = replicate_ok (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  g_assert_cmpuint (pushed->docs_written, ==, 200);

  hb_replicator_set_batch_size (pull->r, 40);
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  back = repl_run_ok (pull);
  g_assert_cmpuint (back->missing_checked, ==, 200);
  g_assert_cmpuint (back->docs_written, ==, 0);
  stats = proxy_stats (f->proxy, &stats_root);
  stats_changes_with_docs (stats, &changes, &with_docs);
  g_assert_cmpuint (changes, >=, 6);
  g_assert_cmpuint (with_docs, ==, 0);

  /* 240 new notes from another workstation: six pages of 40. */
  body = notes_body ("note:other:", 240, 300);
  server_bulk (f->db_url, body);
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  g_clear_pointer (&stats_root, json_node_unref);
  news = repl_run_ok (pull);
  g_assert_cmpuint (news->docs_written, ==, 240);
  g_assert_cmpuint (news->doc_write_failures, ==, 0);
  stats = proxy_stats (f->proxy, &stats_root);
  stats_changes_with_docs (stats, &changes, &with_docs);
  fetched_docs
      = json_object_get_int_member (json_object_get_object_member (stats, "bulk_get"), "docs");
  /* The first page is read without documents and shows what is missing; the page read ahead
   * beside it may be too; from then on the documents come in the feed. */
  g_assert_cmpuint (with_docs, >=, 3);
  g_assert_cmpint (fetched_docs, >=, 40);
  g_assert_cmpint (fetched_docs, <=, 120);
  {
    g_autoptr (GHashTable) seqs = store_seqs (f->store);

    g_assert_cmpuint (g_hash_table_size (seqs), ==, 440);
  }
  assert_pulled_all (f->store, f->cache, f->db_url);
}

/* Pages that come with documents and still need `_bulk_get` for part of their revisions (a
 * quarter of the server's documents are second revisions, spread through the feed): the fetch
 * ahead of such a page fails, and what the feed carried of it is not lost or written twice;
 * a `_changes` page that fails, or is cut short, is read again. */
static void
test_feed_documents_faults (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autofree char *dir = NULL;
  g_autoptr (HbStore) store = hb_test_store_new (&dir);
  g_autoptr (Repl) pull = repl_new (store, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
  g_autoptr (HbReplicationResult) pulled = NULL;
  g_autoptr (JsonNode) stats_root = NULL;
  g_autoptr (JsonNode) fault = NULL;
  g_autoptr (JsonNode) changes_fault = NULL;
  g_autoptr (JsonNode) cut_fault = NULL;
  g_autoptr (GHashTable) second = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr (GHashTable) fetched = NULL;
  g_autoptr (GString) body = g_string_new ("{\"new_edits\":false,\"docs\":[");
  g_autoptr (GRand) rand = g_rand_new_with_seed (99);
  JsonObject *stats;
  guint changes = 0, with_docs = 0;

  for (guint i = 0; i < 200; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:%05u", i);
      g_autoptr (JsonNode) note
          = hb_test_note (rand, id, "session:s1", "patient:p1", "2024-05-01T10:00:00Z", 300);
      JsonObject *doc = json_node_get_object (note);
      g_autofree char *h1 = g_compute_checksum_for_string (G_CHECKSUM_MD5, id, -1);
      g_autofree char *seed2 = g_strconcat (id, "/2", NULL);
      g_autofree char *h2 = g_compute_checksum_for_string (G_CHECKSUM_MD5, seed2, -1);
      g_autofree char *text = NULL;

      if (i % 4 == 1)
        {
          g_autofree char *rev = g_strconcat ("2-", h2, NULL);
          JsonObject *revisions = json_object_new ();
          JsonArray *ids = json_array_new ();

          json_array_add_string_element (ids, h2);
          json_array_add_string_element (ids, h1);
          json_object_set_int_member (revisions, "start", 2);
          json_object_set_array_member (revisions, "ids", ids);
          json_object_set_string_member (doc, "_rev", rev);
          json_object_set_object_member (doc, "_revisions", revisions);
          g_hash_table_add (second, g_strdup (id));
        }
      else
        {
          g_autofree char *rev = g_strconcat ("1-", h1, NULL);

          json_object_set_string_member (doc, "_rev", rev);
        }
      text = hb_test_to_string (note);
      if (i > 0)
        g_string_append_c (body, ',');
      g_string_append (body, text);
    }
  g_string_append (body, "]}");
  server_bulk (f->db_url, body->str);

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"faults\": null}}");
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  /* The first _bulk_get is slow, so the next page's is fetched ahead beside it; that one
   * fails. The third `_changes` answers 503, the fifth is cut in half. */
  PROXY_DO (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"delay\", \"ms\": 400, "
                      "\"method\": \"POST\", \"path\": \"/_bulk_get$\", \"count\": 1}}");
  fault = hb_test_proxy_cmd (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"status\", "
                                       "\"status\": 503, \"method\": \"POST\", "
                                       "\"path\": \"/_bulk_get$\", \"skip\": 1, \"count\": 1}}");
  changes_fault = hb_test_proxy_cmd (
      f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"status\", \"status\": 503, "
                "\"path\": \"/_changes$\", \"skip\": 2, \"count\": 1}}");
  cut_fault
      = hb_test_proxy_cmd (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"truncate\", "
                                     "\"path\": \"/_changes$\", \"skip\": 4, \"count\": 1}}");
  hb_replicator_set_batch_size (pull->r, 50);
  pulled = repl_run_ok (pull);
  g_assert_cmpuint (pulled->docs_written, ==, 200);
  g_assert_cmpuint (pulled->doc_write_failures, ==, 0);
  stats = proxy_stats (f->proxy, &stats_root);
  g_assert_cmpint (stats_max_in_flight (stats, "bulk_get"), ==, 2);
  g_assert_cmpint (
      fault_hits (stats, json_object_get_int_member (json_node_get_object (fault), "id")), ==, 1);
  g_assert_cmpint (
      fault_hits (stats, json_object_get_int_member (json_node_get_object (changes_fault), "id")),
      ==, 1);
  g_assert_cmpint (
      fault_hits (stats, json_object_get_int_member (json_node_get_object (cut_fault), "id")), ==,
      1);
  stats_changes_with_docs (stats, &changes, &with_docs);
  g_assert_cmpuint (with_docs, ==, changes);
  /* Only the second revisions were asked of _bulk_get. */
  fetched = stats_batch_ids (stats, "bulk_get", 0);
  assert_same_ids (fetched, second);
  assert_pulled_all (store, f->cache, f->db_url);
  hb_store_close (store);
  hb_test_rmdir (dir);
}

/* Pulls the 100 notes of the server, two pages of 50, into a new store, the first _bulk_get
 * slowed down so that the second page is fetched ahead beside it, and that fetch ahead and
 * the reader's next @failures requests after it answered 503. Returns the run's result (NULL
 * with @error set if it failed) and the new store in @store_out, its directory in @dir_out. */
static HbReplicationResult *
pull_with_failed_prefetch (
    Fixture *f, gint failures, HbStore **store_out, char **dir_out, GError **error)
{
  g_autofree char *url = fixture_proxy_url (f);
  HbStore *store = hb_test_store_new (dir_out);
  g_autoptr (Repl) pull = repl_new (store, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
  g_autoptr (JsonNode) stats_root = NULL;
  g_autoptr (JsonNode) fault = NULL;
  HbReplicationResult *result;
  JsonObject *stats;

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"faults\": null}}");
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  PROXY_DO (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"delay\", \"ms\": 400, "
                      "\"method\": \"POST\", \"path\": \"/_bulk_get$\", \"count\": 1}}");
  fault = hb_test_proxy_cmd (f->proxy,
                             "{\"cmd\": \"fault\", \"fault\": {\"action\": \"status\", "
                             "\"status\": 503, \"method\": \"POST\", \"path\": \"/_bulk_get$\", "
                             "\"skip\": 1, \"count\": %d}}",
                             failures);
  hb_replicator_set_batch_size (pull->r, 50);
  hb_replicator_set_feed_documents (pull->r, FALSE);
  result = repl_run (pull, error);
  stats = proxy_stats (f->proxy, &stats_root);
  /* The second _bulk_get was the fetch ahead: it went out while the first was answered. */
  g_assert_cmpint (stats_max_in_flight (stats, "bulk_get"), ==, 2);
  g_assert_cmpint (
      fault_hits (stats, json_object_get_int_member (json_node_get_object (fault), "id")), ==,
      failures);
  *store_out = store;
  return result;
}

/* A fetch ahead that fails is its page's first attempt: four failures in a row on that page
 * are retried through, a fifth fails the run (five attempts), and a run after it completes
 * the pull without writing anything twice. */
static void
test_prefetch_failures (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autoptr (Repl) push = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (HbReplicationResult) absorbed = NULL;
  g_autoptr (HbReplicationResult) failed = NULL;
  g_autoptr (HbReplicationResult) resumed = NULL;
  g_autoptr (GHashTable) local = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree char *dir2 = NULL;
  g_autofree char *dir3 = NULL;
  HbStore *store2 = NULL;
  HbStore *store3 = NULL;

  write_notes (f->store, "note:", 0, 100, 200);
  pushed = repl_run_ok (push);
  g_assert_cmpuint (pushed->docs_written, ==, 100);
  local = hb_test_store_trees (f->store);

  absorbed = pull_with_failed_prefetch (f, 4, &store2, &dir2, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (absorbed->docs_written, ==, 100);
  {
    g_autoptr (GHashTable) copy = hb_test_store_trees (store2);

    assert_trees_equal (local, copy);
  }

  failed = pull_with_failed_prefetch (f, 5, &store3, &dir3, &error);
  g_assert_null (failed);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_SERVER);
  g_clear_error (&error);
  {
    g_autoptr (Repl) pull = repl_new (store3, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
    g_autoptr (GHashTable) copy = NULL;

    PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"faults\": null}}");
    hb_replicator_set_batch_size (pull->r, 50);
    resumed = repl_run_ok (pull);
    /* The first page was written before the failing one; the run after it writes the rest. */
    g_assert_cmpuint (resumed->docs_written, ==, 50);
    copy = hb_test_store_trees (store3);
    assert_trees_equal (local, copy);
  }
  assert_cache_empty (f->cache);
  hb_store_close (store2);
  hb_store_close (store3);
  g_object_unref (store2);
  g_object_unref (store3);
  hb_test_rmdir (dir2);
  hb_test_rmdir (dir3);
}

static void
test_transient (Fixture *f, gconstpointer data)
{
  g_autofree char *url = fixture_proxy_url (f);
  g_autofree char *bulk_route = g_strdup_printf ("POST /%s/_bulk_docs", f->db_name);
  g_autoptr (Repl) rp = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
  g_autofree char *rep_id = hb_replicator_get_replication_id (rp->r);
  g_autoptr (HbReplicationResult) result = NULL;
  g_autoptr (HbReplicationResult) failed = NULL;
  g_autoptr (HbReplicationResult) resumed = NULL;
  g_autoptr (JsonNode) fault = NULL;
  g_autoptr (JsonNode) stats_root = NULL;
  g_autoptr (JsonNode) ckpt = NULL;
  g_autoptr (GHashTable) seqs = NULL;
  g_autoptr (GHashTable) sent = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GMainContext) context = g_main_context_new ();
  ProgressCommand drop
      = { f->proxy, 2,
          "{\"cmd\": \"fault\", \"fault\": {\"action\": \"drop\", \"method\": \"POST\", "
          "\"path\": \"/_bulk_docs$\", \"after_bytes\": 5, \"count\": 1}}" };
  ProgressCommand burst = { f->proxy, 2,
                            "{\"cmd\": \"fault\", \"fault\": {\"action\": \"status\", \"status\": "
                            "500, \"method\": \"POST\", "
                            "\"path\": \"/_bulk_docs$\", \"count\": 100}}" };
  JsonObject *stats;
  GHashTableIter iter;
  gpointer key, value;
  gsize n;
  guint64 written;

  /* Three 503s, then a connection dropped in the middle of an answer: retried, complete. */
  write_notes (f->store, "note:", 0, 100, 200);
  hb_replicator_set_batch_size (rp->r, 20);
  fault = hb_test_proxy_cmd (f->proxy, "{\"cmd\": \"fault\", \"fault\": {\"action\": \"status\", "
                                       "\"status\": 503, \"method\": \"POST\", "
                                       "\"path\": \"/_bulk_docs$\", \"count\": 3}}");
  rp->on_progress = command_at_progress;
  rp->on_progress_data = &drop;
  /* On a context of its own: the retries' timers must run there too. */
  rp->context = context;
  result = repl_run_ok (rp);
  rp->context = NULL;
  assert_states (rp, HB_REPLICATOR_STATE_COMPLETE);
  g_assert_cmpuint (result->docs_written, ==, 100);
  g_assert_cmpuint (result->doc_write_failures, ==, 0);
  stats = proxy_stats (f->proxy, &stats_root);
  g_assert_cmpint (
      fault_hits (stats, json_object_get_int_member (json_node_get_object (fault), "id")), ==, 3);
  g_assert_cmpint (stats_status (stats, "503"), ==, 3);
  g_assert_cmpuint (count_dropped (stats, bulk_route), ==, 1);
  g_assert_cmpint (server_doc_count (f->db_url), ==, 100);

  /* A burst of 500s longer than the retry budget: the run fails... */
  write_notes (f->store, "note:", 100, 100, 200);
  seqs = store_seqs (f->store);
  rp->on_progress_data = &burst;
  failed = repl_run (rp, &error);
  g_assert_null (failed);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_SERVER);
  assert_states (rp, HB_REPLICATOR_STATE_FAILED);
  g_clear_pointer (&stats_root, json_node_unref);
  stats = proxy_stats (f->proxy, &stats_root);
  {
    JsonArray *faults = json_object_get_array_member (stats, "faults");
    JsonObject *last = json_array_get_object_element (faults, json_array_get_length (faults) - 1);
    gint64 hits = json_object_get_int_member (last, "hits");

    g_test_message ("the 500 burst was tried %" G_GINT64_FORMAT " times", hits);
    g_assert_cmpint (hits, >, 1);
    g_assert_cmpint (hits, <, 100);
  }
  {
    g_autoptr (HbReplicationResult) last = hb_replicator_get_last_result (rp->r);

    /* The burst begins once two batches are written; the third was on its way beside the
     * second (two writes in flight) and may have got through before it. */
    written = last->docs_written;
    g_assert_true (written == 40 || written == 60);
  }
  assert_cache_empty (f->cache);
  ckpt = checkpoint_seq (f->store, f->db_url, rep_id);
  n = (gsize)json_node_get_int (ckpt);
  g_assert_cmpuint (n, ==, 100 + written);

  /* ...and the next one resumes from its checkpoint. */
  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"faults\": null}}");
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  rp->on_progress = NULL;
  resumed = repl_run_ok (rp);
  g_assert_cmpuint (resumed->missing_checked, ==, count_seqs_after (seqs, n));
  g_assert_cmpuint (resumed->docs_written, ==, 100 - written);
  g_clear_pointer (&stats_root, json_node_unref);
  sent = stats_batch_ids (proxy_stats (f->proxy, &stats_root), "bulk_docs", 0);
  g_hash_table_iter_init (&iter, sent);
  while (g_hash_table_iter_next (&iter, &key, &value))
    g_assert_cmpuint (GPOINTER_TO_SIZE (g_hash_table_lookup (seqs, key)), >, n);
  g_assert_cmpint (server_doc_count (f->db_url), ==, 200);
  {
    g_autoptr (GHashTable) local = hb_test_store_trees (f->store);
    g_autoptr (GHashTable) server = server_trees (f->db_url);
    assert_trees_equal (local, server);
  }
}

static void
assert_progress (Repl *rp, HbReplicationResult *result, guint min_emissions)
{
  const Progress *last;

  g_assert_cmpuint (rp->progress->len, >=, min_emissions);
  for (guint i = 0; i < rp->progress->len; i++)
    {
      const Progress *p = &g_array_index (rp->progress, Progress, i);

      g_assert_cmpuint (p->written + p->failures, <=, p->read);
      g_assert_cmpint (p->pending, >=, -1);
      if (i > 0)
        {
          const Progress *prev = &g_array_index (rp->progress, Progress, i - 1);

          g_assert_cmpuint (p->read, >=, prev->read);
          g_assert_cmpuint (p->written, >=, prev->written);
          g_assert_cmpuint (p->failures, >=, prev->failures);
        }
    }
  last = &g_array_index (rp->progress, Progress, rp->progress->len - 1);
  g_assert_cmpuint (last->read, ==, result->docs_read);
  g_assert_cmpuint (last->written, ==, result->docs_written);
  g_assert_cmpuint (last->failures, ==, result->doc_write_failures);
  g_assert_true (last->pending == 0 || last->pending == -1);
}

static void
on_busy_done (GObject *source, GAsyncResult *res, gpointer data)
{
  RunWait *w = data;

  w->result = hb_replicator_run_finish (HB_REPLICATOR (source), res, &w->error);
  w->done = TRUE;
}

static void
test_signals (Fixture *f, gconstpointer data)
{
  g_autofree char *dir_b = NULL;
  g_autoptr (HbStore) b = hb_test_store_new (&dir_b);
  g_autoptr (Repl) push = repl_new (f->store, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PUSH);
  g_autoptr (Repl) pull = repl_new (b, f->cache, f->db_url, HB_REPLICATION_DIRECTION_PULL);
  g_autoptr (HbReplicationResult) pushed = NULL;
  g_autoptr (HbReplicationResult) pulled = NULL;
  g_autoptr (HbReplicationResult) failed = NULL;
  g_autoptr (GError) error = NULL;

  g_assert_cmpint (hb_replicator_get_state (push->r), ==, HB_REPLICATOR_STATE_IDLE);
  write_notes (f->store, "note:", 0, 55, 200);
  hb_replicator_set_batch_size (push->r, 10);
  pushed = repl_run_ok (push);
  assert_states (push, HB_REPLICATOR_STATE_COMPLETE);
  assert_progress (push, pushed, 6);
  g_assert_cmpuint (pushed->docs_written, ==, 55);
  g_assert_cmpuint (pushed->batches, ==, 6);

  hb_replicator_set_batch_size (pull->r, 10);
  pulled = repl_run_ok (pull);
  assert_states (pull, HB_REPLICATOR_STATE_COMPLETE);
  assert_progress (pull, pulled, 6);
  g_assert_cmpuint (pulled->docs_written, ==, 55);

  /* One run at a time. */
  {
    RunWait first = { 0 };
    RunWait second = { 0 };

    hb_replicator_run_async (push->r, NULL, on_busy_done, &first);
    hb_replicator_run_async (push->r, NULL, on_busy_done, &second);
    hb_test_wait_for (&second.done);
    g_assert_error (second.error, G_IO_ERROR, G_IO_ERROR_BUSY);
    g_clear_error (&second.error);
    hb_test_wait_for (&first.done);
    g_assert_no_error (first.error);
    hb_replication_result_free (first.result);
  }

  /* A pull with nothing missing: every page is read once, each ends in a progress. */
  {
    g_autofree char *url = fixture_proxy_url (f);
    g_autoptr (Repl) nothing = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PULL);
    g_autoptr (HbReplicationResult) none = NULL;
    g_autoptr (JsonNode) stats_root = NULL;
    g_autoptr (GPtrArray) since = NULL;

    hb_replicator_set_batch_size (nothing->r, 10);
    none = repl_run_ok (nothing);
    assert_states (nothing, HB_REPLICATOR_STATE_COMPLETE);
    assert_progress (nothing, none, 6);
    g_assert_cmpuint (none->docs_read, ==, 0);
    g_assert_cmpuint (none->missing_checked, ==, 55);
    g_assert_cmpuint (none->missing_found, ==, 0);
    since = stats_changes_since (proxy_stats (f->proxy, &stats_root));
    g_assert_cmpuint (since->len, ==, 7);
    for (guint i = 1; i < since->len; i++)
      g_assert_cmpuint (g_ascii_strtoull (since->pdata[i], NULL, 10), >,
                        g_ascii_strtoull (since->pdata[i - 1], NULL, 10));
  }

  /* A refusal fails the run at once: RUNNING → FAILED, and nothing is retried. */
  {
    g_autofree char *url = fixture_proxy_url (f);
    g_autoptr (Repl) refused = repl_new (f->store, f->cache, url, HB_REPLICATION_DIRECTION_PUSH);
    g_autoptr (JsonNode) stats_root = NULL;

    PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
    PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"basic_auth\": \"u:p\"}}");
    failed = repl_run (refused, &error);
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_UNAUTHORIZED);
    assert_states (refused, HB_REPLICATOR_STATE_FAILED);
    g_assert_cmpuint (refused->progress->len, ==, 0);
    g_assert_cmpint (json_object_get_int_member (proxy_stats (f->proxy, &stats_root), "total"), ==,
                     1);
  }
  assert_cache_empty (f->cache);
  hb_store_close (b);
  hb_test_rmdir (dir_b);
}

int
main (int argc, char **argv)
{
  const char *base = g_getenv ("TMPDIR");
  g_autofree char *tmpdir = NULL;
  int rc;

  /* A TMPDIR of the test's own, set before anything reads it: the stores live there, and the
   * no-plaintext test searches all of it. */
  tmpdir = g_build_filename (base != NULL && *base != '\0' ? base : "/tmp",
                             "hbsync-test-replicator-XXXXXX", NULL);
  g_assert_nonnull (g_mkdtemp (tmpdir));
  g_setenv ("TMPDIR", tmpdir, TRUE);

  g_test_init (&argc, &argv, NULL);

#define ADD(path, func, data)                                                                      \
  g_test_add ("/replicator/" path, Fixture, data, fixture_setup, func, fixture_teardown)
  ADD ("round-trip", test_round_trip, NULL);
  ADD ("conflicts-converge", test_conflicts_converge, NULL);
  ADD ("pouchdb-interop", test_pouchdb_interop, NULL);
  ADD ("resume/push", test_resume_push, NULL);
  ADD ("resume/pull", test_resume_pull, NULL);
  ADD ("out-of-order-writes", test_out_of_order_writes, NULL);
  ADD ("pipelined", test_pipelined, NULL);
  ADD ("opaque-seqs/stable", test_opaque_seqs, "stable");
  ADD ("opaque-seqs/per-call", test_opaque_seqs, "per-call");
  ADD ("too-large", test_too_large, NULL);
  ADD ("denied", test_denied, NULL);
  ADD ("cache-bound", test_cache_bound, NULL);
  ADD ("no-plaintext", test_no_plaintext, NULL);
  ADD ("no-bulk-get", test_no_bulk_get, NULL);
  ADD ("filters", test_filters, NULL);
  ADD ("transient", test_transient, NULL);
  ADD ("prefetch-failures", test_prefetch_failures, NULL);
  ADD ("feed-documents", test_feed_documents, NULL);
  ADD ("feed-documents/adapt", test_feed_documents_adapt, NULL);
  ADD ("feed-documents/faults", test_feed_documents_faults, NULL);
  ADD ("signals", test_signals, NULL);
#undef ADD

  rc = g_test_run ();
  hb_test_rmdir (tmpdir);
  return rc;
}
