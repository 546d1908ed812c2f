/* HbReplicator against the real CouchDB-protocol test server (express-pouchdb), directly and
 * through the fault-injecting proxy. */

#include <libsoup/soup.h>
#include <string.h>

#include "hb-json-private.h"
#include "hb-test-server.h"
#include "hb-test-utils.h"

/* ---- plumbing -------------------------------------------------------------------------- */

static SoupSession *http;

/* A blocking request for assertions about the server's state. */
static JsonNode *
http_json (const char *method, const char *url, const char *body, guint *out_status)
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
  HbSyncCache *cache;
} Fixture;

static guint db_counter;

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;

  f->server = hb_test_server_start (NULL, &error);
  g_assert_no_error (error);
  f->db_url = g_strdup_printf ("%s/clinic%u", f->server->url, ++db_counter);
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
  hb_test_server_stop (f->server);
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

/* Every document of a store with all its leaves: id → sorted list of canonical leaf texts
 * (`_rev`, `_revisions`, `_deleted` and body). */
static GHashTable *
store_trees (HbStore *store)
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
      g_ptr_array_sort (leaves, (GCompareFunc)g_strcmp0);
      for (guint l = 0; l < leaves->len; l++)
        g_string_append_printf (all, "%s\n", (char *)leaves->pdata[l]);
      g_hash_table_insert (trees, g_strdup (json_object_get_string_member (row, "id")),
                           g_string_free (all, FALSE));
    }
  return trees;
}

/* The same for the server's database, read with open_revs=all. */
static GHashTable *
server_trees (const char *db_url)
{
  g_autofree char *changes_url = g_strdup_printf ("%s/_changes?style=all_docs", db_url);
  g_autoptr (JsonNode) changes = http_json ("GET", changes_url, NULL, NULL);
  GHashTable *trees = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  JsonArray *rows = json_object_get_array_member (json_node_get_object (changes), "results");

  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      const char *id = json_object_get_string_member (json_array_get_object_element (rows, i),
                                                      "id");
      g_autofree char *escaped = g_uri_escape_string (id, NULL, FALSE);
      g_autofree char *url
          = g_strdup_printf ("%s/%s?open_revs=all&revs=true", db_url, escaped);
      g_autoptr (JsonNode) answer = http_json ("GET", url, NULL, NULL);
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
      g_ptr_array_sort (leaves, (GCompareFunc)g_strcmp0);
      for (guint l = 0; l < leaves->len; l++)
        g_string_append_printf (all, "%s\n", (char *)leaves->pdata[l]);
      g_hash_table_insert (trees, g_strdup (id), g_string_free (all, FALSE));
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
  local = store_trees (f->store);
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
  copy = store_trees (store2);
  assert_trees_equal (copy, server);
  {
    g_autoptr (HbSyncCacheStats) stats = hb_sync_cache_get_stats (f->cache);
    g_assert_cmpuint (stats->entries, ==, 0);
  }

  hb_store_close (store2);
  hb_test_rmdir (dir2);
}

int
main (int argc, char **argv)
{
  int rc;

  g_test_init (&argc, &argv, NULL);
  http = soup_session_new ();

  g_test_add ("/replicator/round-trip", Fixture, NULL, fixture_setup, test_round_trip,
              fixture_teardown);

  rc = g_test_run ();
  g_clear_object (&http);
  return rc;
}
