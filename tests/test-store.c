/* HbStore against CouchDB's document rules, and against the disk: nothing readable, nothing
 * forgeable, and damage confined to the record that was damaged. */

#include <glib/gstdio.h>
#include <sqlite3.h>
#include <string.h>

#include "hb-json-private.h"
#include "hb-revtree-private.h"
#include "hb-store-private.h"
#include "hb-test-utils.h"

typedef struct
{
  char *dir;
  char *path;
  HbStore *store;
} Fixture;

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  f->store = hb_test_store_new (&f->dir);
  f->path = g_build_filename (f->dir, "store.db", NULL);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  hb_store_close (f->store);
  g_clear_object (&f->store);
  hb_test_rmdir (f->dir);
  g_free (f->dir);
  g_free (f->path);
}

static char *
put_json (HbStore *store, const char *json, GError **error)
{
  g_autoptr (JsonNode) doc = hb_test_json (json);

  return hb_store_put_sync (store, doc, NULL, error);
}

static char *
put_ok (HbStore *store, const char *json)
{
  g_autoptr (GError) error = NULL;
  char *rev = put_json (store, json, &error);

  g_assert_no_error (error);
  g_assert_nonnull (rev);
  return rev;
}

/* Inserts a replicated revision with its history: "rev hist1 hist2 ..." newest first. */
static void
insert_history (
    HbStore *store, const char *id, const char *history, gboolean deleted, const char *body)
{
  g_auto (GStrv) revs = g_strsplit (history, " ", -1);
  g_autoptr (JsonNode) doc = hb_test_json (body ? body : "{}");
  JsonObject *obj = json_node_get_object (doc);
  JsonObject *revisions = json_object_new ();
  JsonArray *ids = json_array_new ();
  g_autoptr (GPtrArray) docs = g_ptr_array_new ();
  g_autoptr (GPtrArray) results = NULL;
  g_autoptr (GError) error = NULL;

  for (guint i = 0; revs[i] != NULL; i++)
    json_array_add_string_element (ids, strchr (revs[i], '-') + 1);
  json_object_set_int_member (revisions, "start", g_ascii_strtoll (revs[0], NULL, 10));
  json_object_set_array_member (revisions, "ids", ids);
  json_object_set_string_member (obj, "_id", id);
  json_object_set_string_member (obj, "_rev", revs[0]);
  json_object_set_object_member (obj, "_revisions", revisions);
  if (deleted)
    json_object_set_boolean_member (obj, "_deleted", TRUE);
  g_ptr_array_add (docs, doc);
  results = hb_store_bulk_docs_sync (store, docs, FALSE, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (results->len, ==, 1);
  g_assert_true (json_object_get_boolean_member_with_default (
      json_node_get_object (g_ptr_array_index (results, 0)), "ok", FALSE));
}

static JsonObject *
get_obj (HbStore *store, const char *id, const char *rev, HbGetFlags flags, JsonNode **keep)
{
  g_autoptr (GError) error = NULL;

  *keep = hb_store_get_sync (store, id, rev, flags, NULL, &error);
  g_assert_no_error (error);
  return json_node_get_object (*keep);
}

static char *
joined_array (JsonObject *obj, const char *member)
{
  GString *s = g_string_new (NULL);
  JsonArray *arr;

  if (!json_object_has_member (obj, member))
    return g_string_free (s, FALSE);
  arr = json_object_get_array_member (obj, member);
  for (guint i = 0; i < json_array_get_length (arr); i++)
    {
      if (i > 0)
        g_string_append_c (s, ' ');
      g_string_append (s, json_array_get_string_element (arr, i));
    }
  return g_string_free (s, FALSE);
}

/* ---- edits ------------------------------------------------------------------------------ */

static void
test_edit_cycle (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *rev1 = NULL;
  g_autofree char *rev2 = NULL;
  g_autofree char *rev3 = NULL;
  g_autofree char *rev4 = NULL;
  g_autofree char *stale = NULL;
  g_autofree char *json = NULL;
  g_autoptr (JsonNode) keep = NULL;
  g_autoptr (GRegex) re = g_regex_new ("^[0-9]+-[0-9a-f]{32}$", 0, 0, NULL);
  JsonObject *doc;

  rev1 = put_ok (f->store, "{\"_id\":\"patient:1\",\"type\":\"patient\",\"given_name\":\"Amina\"}");
  g_assert_true (g_regex_match (re, rev1, 0, NULL));
  g_assert_true (g_str_has_prefix (rev1, "1-"));

  /* No _rev on an existing document: conflict. A wrong one: conflict. */
  stale = put_json (f->store, "{\"_id\":\"patient:1\",\"type\":\"patient\"}", &error);
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CONFLICT);
  g_clear_error (&error);
  g_assert_null (put_json (
      f->store, "{\"_id\":\"patient:1\",\"_rev\":\"1-00000000000000000000000000000000\"}", &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CONFLICT);
  g_clear_error (&error);

  json = g_strdup_printf ("{\"_id\":\"patient:1\",\"_rev\":\"%s\",\"type\":\"patient\","
                          "\"given_name\":\"Amina\",\"family_name\":\"Otieno\"}",
                          rev1);
  rev2 = put_ok (f->store, json);
  g_assert_true (g_str_has_prefix (rev2, "2-"));
  /* Reusing the now-stale rev1 conflicts. */
  g_assert_null (put_json (f->store, json, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CONFLICT);
  g_clear_error (&error);

  doc = get_obj (f->store, "patient:1", NULL, HB_GET_FLAGS_REVISIONS, &keep);
  g_assert_cmpstr (json_object_get_string_member (doc, "_rev"), ==, rev2);
  g_assert_cmpstr (json_object_get_string_member (doc, "family_name"), ==, "Otieno");
  g_assert_cmpint (
      json_object_get_int_member (json_object_get_object_member (doc, "_revisions"), "start"), ==,
      2);
  g_clear_pointer (&keep, json_node_unref);

  /* The old revision's body is still there until compaction. */
  doc = get_obj (f->store, "patient:1", rev1, HB_GET_FLAGS_NONE, &keep);
  g_assert_false (json_object_has_member (doc, "family_name"));
  g_clear_pointer (&keep, json_node_unref);

  rev3 = hb_store_delete_sync (f->store, "patient:1", rev2, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (rev3, "3-"));
  g_assert_null (hb_store_get_sync (f->store, "patient:1", NULL, 0, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);
  doc = get_obj (f->store, "patient:1", NULL, HB_GET_FLAGS_DELETED, &keep);
  g_assert_true (json_object_get_boolean_member (doc, "_deleted"));
  g_clear_pointer (&keep, json_node_unref);

  /* Writing a deleted document again without _rev continues its branch. */
  rev4 = put_ok (f->store, "{\"_id\":\"patient:1\",\"type\":\"patient\",\"given_name\":\"A.\"}");
  g_assert_true (g_str_has_prefix (rev4, "4-"));

  g_assert_null (hb_store_get_sync (f->store, "patient:none", NULL, 0, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
}

static void
test_rev_is_deterministic (Fixture *f, gconstpointer data)
{
  g_autofree char *dir = NULL;
  g_autoptr (HbStore) other = hb_test_store_new (&dir);
  g_autofree char *a = put_ok (f->store, "{\"_id\":\"n:1\",\"text\":\"x\",\"n\":1.5,\"k\":[1,2]}");
  /* Same content, members in another order, in another store. */
  g_autofree char *b = put_ok (other, "{\"k\":[1,2],\"n\":1.5,\"text\":\"x\",\"_id\":\"n:1\"}");
  g_autofree char *c = put_ok (other, "{\"_id\":\"n:2\",\"text\":\"y\"}");

  g_assert_cmpstr (a, ==, b);
  g_assert_cmpstr (a, !=, c);
  hb_store_close (other);
  hb_test_rmdir (dir);
}

/* Revision ids are part of the format: replicas made by every version must agree on them. These
 * were computed by the first release (SHA-256 over parent || NUL || deleted flag || canonical
 * body, first 16 bytes in hex); a change to hashing or canonical JSON shows up here. */
static void
test_rev_golden (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *r1
      = put_ok (f->store, "{\"_id\":\"golden\",\"type\":\"note\",\"text\":\"\\u00e9 \\\"q\\\"\","
                          "\"n\":[1,2.5,-0,1e20,{\"b\":null,\"a\":true}]}");
  g_autofree char *json
      = g_strdup_printf ("{\"_id\":\"golden\",\"_rev\":\"%s\",\"type\":\"note\",\"v\":2}", r1);
  g_autofree char *r2 = put_ok (f->store, json);
  g_autofree char *r3 = hb_store_delete_sync (f->store, "golden", r2, NULL, &error);

  g_assert_no_error (error);
  g_assert_cmpstr (r1, ==, "1-6c043d2beee5f7ab001bfc7b6ddd9e88");
  g_assert_cmpstr (r2, ==, "2-fddef44b53a52074cd3a5665cd05423d");
  g_assert_cmpstr (r3, ==, "3-4174d019361001fc7449b26d19bab10b");
}

static void
test_invalid_documents (Fixture *f, gconstpointer data)
{
  static const char *const bad[] = {
    "[1,2]",
    "{\"type\":\"patient\"}",
    "{\"_id\":\"\"}",
    "{\"_id\":5}",
    "{\"_id\":\"a\",\"_rev\":\"abc\"}",
    "{\"_id\":\"a\",\"_bogus\":1}",
    "{\"_id\":\"_private\"}",
    "{\"_id\":\"a\",\"_attachments\":{}}",
  };

  for (guint i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree char *rev = put_json (f->store, bad[i], &error);

      g_assert_null (rev);
      g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_INVALID);
    }
}

static void
test_bulk_docs_per_document_results (Fixture *f, gconstpointer data)
{
  g_autofree char *rev = put_ok (f->store, "{\"_id\":\"x\"}");
  g_autoptr (GPtrArray) docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
  g_autoptr (GPtrArray) results = NULL;
  g_autoptr (GError) error = NULL;

  g_ptr_array_add (docs, hb_test_json ("{\"_id\":\"a\",\"v\":1}"));
  g_ptr_array_add (docs, hb_test_json ("{\"_id\":\"x\",\"v\":2}"));
  g_ptr_array_add (docs, hb_test_json ("{\"v\":3}"));
  g_ptr_array_add (docs, hb_test_json ("{\"_id\":\"a\",\"v\":4}"));
  results = hb_store_bulk_docs_sync (f->store, docs, TRUE, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (results->len, ==, 4);
  g_assert_true (json_object_get_boolean_member_with_default (
      json_node_get_object (results->pdata[0]), "ok", FALSE));
  g_assert_cmpstr (
      json_object_get_string_member (json_node_get_object (results->pdata[1]), "error"), ==,
      "conflict");
  /* A generated id, as POST /db gives. */
  g_assert_nonnull (json_object_get_string_member (json_node_get_object (results->pdata[2]), "id"));
  g_assert_cmpstr (
      json_object_get_string_member (json_node_get_object (results->pdata[3]), "error"), ==,
      "conflict");
  g_assert_cmpuint (hb_store_get_update_seq (f->store), ==, 3);
}

/* ---- conflicts, table-driven ---------------------------------------------------------- */

typedef struct
{
  const char *name;
  const char *histories[4]; /* "!" prefix: the newest revision is a tombstone */
  const char *winner;
  const char *conflicts;
  const char *deleted_conflicts;
} ConflictCase;

static const ConflictCase conflict_cases[] = {
  { "two branches, higher hash wins",
    { "2-bbbb 1-aaaa", "2-cccc 1-aaaa" },
    "2-cccc",
    "2-bbbb",
    "" },
  { "longer branch wins", { "3-1111 2-bbbb 1-aaaa", "2-ffff 1-aaaa" }, "3-1111", "2-ffff", "" },
  { "tombstone loses to a live leaf",
    { "!3-ffff 2-bbbb 1-aaaa", "2-cccc 1-aaaa" },
    "2-cccc",
    "",
    "3-ffff" },
  { "three leaves, ordered",
    { "2-bbbb 1-aaaa", "2-dddd 1-aaaa", "2-cccc 1-aaaa" },
    "2-dddd",
    "2-cccc 2-bbbb",
    "" },
  { "all tombstones: deepest wins",
    { "!2-bbbb 1-aaaa", "!3-0000 2-cccc 1-aaaa" },
    "3-0000",
    "",
    "2-bbbb" },
};

static void
test_conflicts (Fixture *f, gconstpointer data)
{
  const ConflictCase *c = data;
  g_autoptr (JsonNode) keep = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree char *conflicts = NULL;
  g_autofree char *deleted = NULL;
  g_autoptr (JsonNode) changes = NULL;
  JsonObject *doc;
  JsonArray *leaves;

  for (guint i = 0; i < G_N_ELEMENTS (c->histories) && c->histories[i]; i++)
    {
      gboolean del = c->histories[i][0] == '!';
      insert_history (f->store, "obs:1", c->histories[i] + (del ? 1 : 0), del,
                      "{\"type\":\"observation\"}");
    }
  doc = get_obj (f->store, "obs:1", NULL, HB_GET_FLAGS_CONFLICTS | HB_GET_FLAGS_DELETED, &keep);
  g_assert_cmpstr (json_object_get_string_member (doc, "_rev"), ==, c->winner);
  conflicts = joined_array (doc, "_conflicts");
  deleted = joined_array (doc, "_deleted_conflicts");
  g_assert_cmpstr (conflicts, ==, c->conflicts);
  g_assert_cmpstr (deleted, ==, c->deleted_conflicts);

  /* The changes feed names every leaf, the winner first. */
  changes = hb_store_changes_sync (f->store, 0, 0, NULL, &error);
  g_assert_no_error (error);
  leaves = json_object_get_array_member (
      json_array_get_object_element (
          json_object_get_array_member (json_node_get_object (changes), "results"), 0),
      "changes");
  g_assert_cmpstr (json_object_get_string_member (json_array_get_object_element (leaves, 0), "rev"),
                   ==, c->winner);
}

static void
test_edit_conflicting_branch (Fixture *f, gconstpointer data)
{
  g_autoptr (JsonNode) keep = NULL;
  g_autofree char *rev = NULL;
  g_autofree char *gone = NULL;
  g_autoptr (GError) error = NULL;
  JsonObject *doc;

  insert_history (f->store, "s:1", "2-bbbb 1-aaaa", FALSE, "{\"v\":\"b\"}");
  insert_history (f->store, "s:1", "2-cccc 1-aaaa", FALSE, "{\"v\":\"c\"}");
  /* Resolving: delete the losing leaf; the winner stands alone. */
  gone = hb_store_delete_sync (f->store, "s:1", "2-bbbb", NULL, &error);
  g_assert_no_error (error);
  doc = get_obj (f->store, "s:1", NULL, HB_GET_FLAGS_CONFLICTS, &keep);
  g_assert_cmpstr (json_object_get_string_member (doc, "_rev"), ==, "2-cccc");
  g_assert_false (json_object_has_member (doc, "_conflicts"));
  g_clear_pointer (&keep, json_node_unref);
  /* Editing a non-winning leaf by its _rev is allowed (it is a leaf). */
  rev = put_ok (f->store, "{\"_id\":\"s:1\",\"_rev\":\"2-cccc\",\"v\":\"d\"}");
  g_assert_true (g_str_has_prefix (rev, "3-"));
}

/* ---- history: stemming, revs_diff, changes, purge, compaction ------------------------- */

static void
test_stemming (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *first = NULL;
  g_autofree char *rev = NULL;
  g_autoptr (JsonNode) keep = NULL;
  JsonObject *revisions;

  g_assert_cmpuint (hb_store_get_revs_limit (f->store), ==, 1000);
  g_assert_true (hb_store_set_revs_limit (f->store, 3, &error));
  g_assert_no_error (error);
  first = put_ok (f->store, "{\"_id\":\"n:1\",\"i\":0}");
  rev = g_strdup (first);
  for (int i = 1; i < 10; i++)
    {
      g_autofree char *json
          = g_strdup_printf ("{\"_id\":\"n:1\",\"_rev\":\"%s\",\"i\":%d}", rev, i);
      g_free (rev);
      rev = put_ok (f->store, json);
    }
  g_assert_true (g_str_has_prefix (rev, "10-"));
  revisions = json_object_get_object_member (
      get_obj (f->store, "n:1", NULL, HB_GET_FLAGS_REVISIONS, &keep), "_revisions");
  g_assert_cmpint (json_object_get_int_member (revisions, "start"), ==, 10);
  g_assert_cmpuint (json_array_get_length (json_object_get_array_member (revisions, "ids")), ==, 3);
  g_assert_null (hb_store_get_sync (f->store, "n:1", first, 0, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
}

static void
test_revs_diff (Fixture *f, gconstpointer data)
{
  g_autoptr (JsonNode) req = NULL;
  g_autoptr (JsonNode) res = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree char *json = NULL;
  JsonObject *o;

  insert_history (f->store, "a", "2-bbbb 1-aaaa", FALSE, NULL);
  req = hb_test_json ("{\"a\":[\"2-bbbb\",\"3-cccc\",\"1-aaaa\"],"
                      "\"b\":[\"1-zzzz\"],\"a2\":[]}");
  res = hb_store_revs_diff_sync (f->store, req, NULL, &error);
  g_assert_no_error (error);
  json = hb_test_to_string (res);
  o = json_node_get_object (res);
  g_assert_cmpuint (json_object_get_size (o), ==, 2);
  g_assert_cmpstr (
      json_array_get_string_element (
          json_object_get_array_member (json_object_get_object_member (o, "a"), "missing"), 0),
      ==, "3-cccc");
  g_assert_cmpstr (json_array_get_string_element (
                       json_object_get_array_member (json_object_get_object_member (o, "a"),
                                                     "possible_ancestors"),
                       0),
                   ==, "2-bbbb");
  g_assert_false (
      json_object_has_member (json_object_get_object_member (o, "b"), "possible_ancestors"));
}

static void
test_changes (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *ra = put_ok (f->store, "{\"_id\":\"a\"}");
  g_autofree char *rb = put_ok (f->store, "{\"_id\":\"b\"}");
  g_autofree char *rc = put_ok (f->store, "{\"_id\":\"c\"}");
  g_autofree char *ra2 = NULL;
  g_autofree char *json = g_strdup_printf ("{\"_id\":\"a\",\"_rev\":\"%s\",\"x\":1}", ra);
  g_autoptr (JsonNode) all = NULL;
  g_autoptr (JsonNode) page = NULL;
  g_autofree char *rbd = NULL;
  JsonArray *results;

  ra2 = put_ok (f->store, json);
  rbd = hb_store_delete_sync (f->store, "b", rb, NULL, &error);
  g_assert_no_error (error);

  all = hb_store_changes_sync (f->store, 0, 0, NULL, &error);
  g_assert_no_error (error);
  results = json_object_get_array_member (json_node_get_object (all), "results");
  /* One row per document, at its latest change, in sequence order. */
  g_assert_cmpuint (json_array_get_length (results), ==, 3);
  g_assert_cmpstr (json_object_get_string_member (json_array_get_object_element (results, 0), "id"),
                   ==, "c");
  g_assert_cmpstr (json_object_get_string_member (json_array_get_object_element (results, 1), "id"),
                   ==, "a");
  g_assert_cmpint (json_object_get_int_member (json_array_get_object_element (results, 1), "seq"),
                   ==, 4);
  g_assert_cmpstr (json_object_get_string_member (json_array_get_object_element (results, 2), "id"),
                   ==, "b");
  g_assert_true (
      json_object_get_boolean_member (json_array_get_object_element (results, 2), "deleted"));
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (all), "last_seq"), ==, 5);

  page = hb_store_changes_sync (f->store, 3, 1, NULL, &error);
  g_assert_no_error (error);
  results = json_object_get_array_member (json_node_get_object (page), "results");
  g_assert_cmpuint (json_array_get_length (results), ==, 1);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (page), "last_seq"), ==, 4);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (page), "pending"), ==, 1);
}

static void
test_local_documents (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = hb_test_json ("{\"_id\":\"_local/ckpt\",\"last_seq\":\"12-abc\"}");
  g_autoptr (JsonNode) again = NULL;
  g_autoptr (JsonNode) got = NULL;
  g_autoptr (JsonNode) changes = NULL;
  g_autofree char *rev = NULL;
  g_autofree char *rev2 = NULL;
  g_autofree char *stale = NULL;

  rev = hb_store_put_local_sync (f->store, doc, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (rev, ==, "0-1");
  /* A second write without the current _rev conflicts. */
  stale = hb_store_put_local_sync (f->store, doc, NULL, &error);
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CONFLICT);
  g_clear_error (&error);
  again = hb_test_json ("{\"_id\":\"_local/ckpt\",\"_rev\":\"0-1\",\"last_seq\":\"13-def\"}");
  rev2 = hb_store_put_local_sync (f->store, again, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (rev2, ==, "0-2");
  got = hb_store_get_local_sync (f->store, "ckpt", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (got), "last_seq"), ==,
                   "13-def");
  /* Local documents never show in the changes feed. */
  changes = hb_store_changes_sync (f->store, 0, 0, NULL, &error);
  g_assert_cmpuint (json_array_get_length (
                        json_object_get_array_member (json_node_get_object (changes), "results")),
                    ==, 0);
  g_assert_false (hb_store_delete_local_sync (f->store, "_local/ckpt", "0-1", NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CONFLICT);
  g_clear_error (&error);
  g_assert_true (hb_store_delete_local_sync (f->store, "_local/ckpt", "0-2", NULL, &error));
  g_assert_null (hb_store_get_local_sync (f->store, "_local/ckpt", NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
}

static void
test_purge_and_compact (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) keep = NULL;
  g_autoptr (JsonNode) stats = NULL;
  g_autoptr (GPtrArray) found = NULL;
  const char *const purge_c[] = { "2-cccc", NULL };
  const char *const purge_all[] = { "2-bbbb", NULL };
  JsonObject *doc;

  insert_history (f->store, "p", "2-bbbb 1-aaaa", FALSE, "{\"type\":\"note\",\"v\":\"b\"}");
  insert_history (f->store, "p", "2-cccc 1-aaaa", FALSE, "{\"type\":\"note\",\"v\":\"c\"}");
  g_assert_cmpuint (hb_store_purge_sync (f->store, "p", purge_c, NULL, &error), ==, 1);
  g_assert_no_error (error);
  doc = get_obj (f->store, "p", NULL, HB_GET_FLAGS_CONFLICTS, &keep);
  g_assert_cmpstr (json_object_get_string_member (doc, "_rev"), ==, "2-bbbb");
  g_assert_false (json_object_has_member (doc, "_conflicts"));
  g_assert_cmpint (hb_store_get_sync (f->store, "p", "2-cccc", 0, NULL, &error) == NULL, ==, TRUE);
  g_clear_error (&error);

  {
    g_autofree char *r1 = put_ok (f->store, "{\"_id\":\"q\",\"v\":1}");
    g_autofree char *json = g_strdup_printf ("{\"_id\":\"q\",\"_rev\":\"%s\",\"v\":2}", r1);
    g_autofree char *r2 = put_ok (f->store, json);
    g_autoptr (JsonNode) old = NULL;

    /* Compaction drops non-leaf bodies: r1's body here, none of the leaves'. */
    g_assert_cmpuint (hb_store_compact_sync (f->store, NULL, &error), ==, 1);
    g_assert_no_error (error);
    old = hb_store_get_sync (f->store, "q", r1, 0, NULL, &error);
    g_assert_null (old);
    g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
    g_clear_error (&error);
    g_clear_pointer (&keep, json_node_unref);
    get_obj (f->store, "q", r2, 0, &keep);
  }

  g_assert_cmpuint (hb_store_purge_sync (f->store, "p", purge_all, NULL, &error), ==, 1);
  g_assert_null (hb_store_get_sync (f->store, "p", NULL, HB_GET_FLAGS_DELETED, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);
  found = hb_store_find_sync (f->store, HB_INDEX_FIELD_TYPE, "note", NULL, &error);
  g_assert_cmpuint (found->len, ==, 0);
  stats = hb_store_get_stats_sync (f->store, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (stats), "doc_count"), ==, 1);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (stats), "stored_bodies"), ==,
                   1);
}

static void
test_find (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) sessions = NULL;
  g_autoptr (GPtrArray) by_session = NULL;
  g_autoptr (GPtrArray) moved = NULL;
  g_autoptr (GPtrArray) all = NULL;
  g_autofree char *r1 = NULL;
  g_autofree char *r2 = NULL;
  g_autofree char *json = NULL;
  g_autofree char *d = NULL;

  g_free (put_ok (f->store,
                  "{\"_id\":\"session:1\",\"type\":\"session\",\"patient_id\":\"patient:1\"}"));
  g_free (put_ok (f->store,
                  "{\"_id\":\"session:2\",\"type\":\"session\",\"patient_id\":\"patient:2\"}"));
  r1 = put_ok (f->store, "{\"_id\":\"note:1\",\"type\":\"note\",\"session_id\":\"session:1\","
                         "\"patient_id\":\"patient:1\"}");
  g_free (put_ok (f->store, "{\"_id\":\"observation:1\",\"type\":\"observation\","
                            "\"session_id\":\"session:1\",\"value\":37.5}"));

  sessions = hb_store_find_sync (f->store, HB_INDEX_FIELD_TYPE, "session", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (sessions->len, ==, 2);
  by_session = hb_store_find_sync (f->store, HB_INDEX_FIELD_SESSION_ID, "session:1", NULL, &error);
  g_assert_cmpuint (by_session->len, ==, 2);
  g_assert_cmpstr (
      json_object_get_string_member (json_node_get_object (by_session->pdata[0]), "_id"), ==,
      "note:1");

  /* The index follows the winning revision. */
  json = g_strdup_printf ("{\"_id\":\"note:1\",\"_rev\":\"%s\",\"type\":\"note\","
                          "\"session_id\":\"session:2\"}",
                          r1);
  r2 = put_ok (f->store, json);
  moved = hb_store_find_sync (f->store, HB_INDEX_FIELD_SESSION_ID, "session:2", NULL, &error);
  g_assert_cmpuint (moved->len, ==, 1);
  g_clear_pointer (&by_session, g_ptr_array_unref);
  by_session = hb_store_find_sync (f->store, HB_INDEX_FIELD_SESSION_ID, "session:1", NULL, &error);
  g_assert_cmpuint (by_session->len, ==, 1);
  d = hb_store_delete_sync (f->store, "note:1", r2, NULL, &error);
  g_assert_no_error (error);
  g_clear_pointer (&moved, g_ptr_array_unref);
  moved = hb_store_find_sync (f->store, HB_INDEX_FIELD_SESSION_ID, "session:2", NULL, &error);
  g_assert_cmpuint (moved->len, ==, 0);
  all = hb_store_all_docs_sync (f->store, NULL, &error);
  g_assert_cmpuint (all->len, ==, 3);
}

static void
test_get_many_json (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  /* A document twice, and missing and deleted ones among the others; then an id that JSON
   * must escape, a tree too big to be read in place (HB_REV_PEEK_MAX_NODES), and a live leaf
   * that wins over a deeper deleted one. */
  const char *const ids[]
      = { "p:1",  "empty", "c", "missing", "gone", "p:1", "c", "q\"\\\n\x01\xc3\xa9",
          "long", "dl",    NULL };
  g_autofree char *long_rev = NULL;
  g_autoptr (GPtrArray) nodes = NULL;
  g_autoptr (GPtrArray) texts = NULL;
  g_autofree char *rev = NULL;
  g_autofree char *del = NULL;
  HbGetFlags flags = HB_GET_FLAGS_CONFLICTS | HB_GET_FLAGS_REVISIONS;
  const HbGetFlags all_flags[] = { HB_GET_FLAGS_NONE, HB_GET_FLAGS_DELETED,
                                   HB_GET_FLAGS_CONFLICTS | HB_GET_FLAGS_REVISIONS };

  g_free (put_ok (f->store, "{\"_id\":\"p:1\",\"type\":\"patient\",\"name\":\"A \\\"q\\\" é\","
                            "\"n\":[1,2.5,{\"z\":null,\"a\":true}]}"));
  g_free (put_ok (f->store, "{\"_id\":\"empty\"}"));
  insert_history (f->store, "c", "2-bbbb 1-aaaa", FALSE, "{\"v\":1}");
  insert_history (f->store, "c", "2-cccc 1-aaaa", FALSE, "{\"v\":2}");
  rev = put_ok (f->store, "{\"_id\":\"gone\"}");
  del = hb_store_delete_sync (f->store, "gone", rev, NULL, &error);
  g_assert_no_error (error);
  g_free (put_ok (f->store, "{\"_id\":\"q\\\"\\\\\\n\\u0001\xc3\xa9\",\"v\":1}"));
  for (guint i = 0; i < HB_REV_PEEK_MAX_NODES + 6; i++)
    {
      g_autofree char *json
          = long_rev == NULL
                ? g_strdup ("{\"_id\":\"long\",\"n\":0}")
                : g_strdup_printf ("{\"_id\":\"long\",\"_rev\":\"%s\",\"n\":%u}", long_rev, i);

      g_free (long_rev);
      long_rev = put_ok (f->store, json);
    }
  insert_history (f->store, "dl", "3-dddd 2-bbbb 1-aaaa", TRUE, NULL);
  insert_history (f->store, "dl", "2-eeee 1-aaaa", FALSE, "{\"v\":3}");

  /* With and without the extras: the plain form is written by a shorter path. */
  for (guint pass = 0; pass < 2; pass++, flags = HB_GET_FLAGS_NONE)
    {
      g_clear_pointer (&nodes, g_ptr_array_unref);
      g_clear_pointer (&texts, g_ptr_array_unref);
      nodes = hb_store_get_many_sync (f->store, ids, flags, NULL, &error);
      g_assert_no_error (error);
      texts = hb_store_get_many_json_sync (f->store, ids, flags, NULL, &error);
      g_assert_no_error (error);
      g_assert_cmpuint (texts->len, ==, nodes->len);
      for (guint i = 0; i < texts->len; i++)
        {
          gsize len;
          const char *text = g_bytes_get_data (texts->pdata[i], &len);
          g_autofree char *copy = g_strndup (text, len);
          g_autoptr (JsonNode) parsed = hb_test_json (copy);

          /* NUL-terminated beyond its size, so callers may use it as a string. */
          g_assert_cmpint (text[len], ==, '\0');

          /* The same document, whichever way it was read. */
          g_assert_true (json_node_equal (parsed, nodes->pdata[i]));
        }
    }

  /* Several documents are read in one statement and one alone by itself: each entry of a
   * batch is what reading its document alone gives, documents and errors alike. */
  for (guint k = 0; k < G_N_ELEMENTS (all_flags); k++)
    {
      g_autoptr (GPtrArray) batch
          = hb_store_get_many_sync (f->store, ids, all_flags[k], NULL, &error);
      g_autoptr (GPtrArray) batch_texts
          = hb_store_get_many_json_sync (f->store, ids, all_flags[k], NULL, &error);

      g_assert_no_error (error);
      g_assert_cmpuint (batch->len, ==, G_N_ELEMENTS (ids) - 1);
      g_assert_cmpuint (batch_texts->len, ==, batch->len);
      for (guint i = 0; ids[i] != NULL; i++)
        {
          const char *one[] = { ids[i], NULL };
          g_autoptr (GPtrArray) alone
              = hb_store_get_many_sync (f->store, one, all_flags[k], NULL, &error);
          g_autoptr (GPtrArray) alone_text
              = hb_store_get_many_json_sync (f->store, one, all_flags[k], NULL, &error);

          g_assert_no_error (error);
          g_assert_true (json_node_equal (batch->pdata[i], alone->pdata[0]));
          g_assert_true (g_bytes_equal (batch_texts->pdata[i], alone_text->pdata[0]));
        }
      /* The live leaf wins over the deeper deleted one. */
      g_assert_cmpstr (
          json_object_get_string_member (json_node_get_object (batch->pdata[9]), "_rev"), ==,
          "2-eeee");
      /* Missing, and deleted unless asked for. */
      g_assert_true (json_object_has_member (json_node_get_object (batch->pdata[3]), "error"));
      g_assert_true (json_object_has_member (json_node_get_object (batch->pdata[4]), "error")
                     == !(all_flags[k] & HB_GET_FLAGS_DELETED));
    }
}

static void
assert_body (HbStore *store, const char *id, const char *rev, gint64 v)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = hb_store_get_sync (store, id, rev, HB_GET_FLAGS_DELETED, NULL, &error);

  g_assert_no_error (error);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (doc), "v"), ==, v);
}

static gint64
stored_bodies (HbStore *store)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) stats = hb_store_get_stats_sync (store, NULL, &error);

  g_assert_no_error (error);
  return json_object_get_int_member (json_node_get_object (stats), "stored_bodies");
}

/* The winner's body lives in the document's row and the others in the bodies table; every
 * change of winner moves them. Each revision must stay readable with its own body throughout. */
static void
test_bodies_follow_winner (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *r1 = put_ok (f->store, "{\"_id\":\"w\",\"v\":1}");
  g_autofree char *json = g_strdup_printf ("{\"_id\":\"w\",\"_rev\":\"%s\",\"v\":2}", r1);
  g_autofree char *r2 = put_ok (f->store, json);
  g_autofree char *tomb = NULL;
  g_autoptr (JsonNode) keep = NULL;
  g_autofree char *hist_hi = g_strdup_printf ("2-ffffffffffffffffffffffffffffffff %s", r1);
  g_autofree char *hist_lo = g_strdup_printf ("2-00000000000000000000000000000000 %s", r1);
  const char *const purge[] = { r2, NULL };

  assert_body (f->store, "w", r1, 1);
  assert_body (f->store, "w", r2, 2);
  /* A replicated branch that wins, then one that loses. */
  insert_history (f->store, "w", hist_hi, FALSE, "{\"v\":3}");
  insert_history (f->store, "w", hist_lo, FALSE, "{\"v\":4}");
  g_assert_cmpstr (json_object_get_string_member (get_obj (f->store, "w", NULL, 0, &keep), "_rev"),
                   ==, "2-ffffffffffffffffffffffffffffffff");
  assert_body (f->store, "w", NULL, 3);
  assert_body (f->store, "w", r1, 1);
  assert_body (f->store, "w", r2, 2);
  assert_body (f->store, "w", "2-00000000000000000000000000000000", 4);
  g_assert_cmpint (stored_bodies (f->store), ==, 4);

  /* Deleting the winner hands the row to a body from the bodies table. */
  tomb = hb_store_delete_sync (f->store, "w", "2-ffffffffffffffffffffffffffffffff", NULL, &error);
  g_assert_no_error (error);
  assert_body (f->store, "w", NULL, 2);
  assert_body (f->store, "w", "2-ffffffffffffffffffffffffffffffff", 3);
  assert_body (f->store, "w", "2-00000000000000000000000000000000", 4);

  /* Purging it does so again. */
  g_assert_cmpuint (hb_store_purge_sync (f->store, "w", purge, NULL, &error), ==, 1);
  g_assert_no_error (error);
  assert_body (f->store, "w", NULL, 4);
  assert_body (f->store, "w", r1, 1);

  /* Compaction keeps the leaves' bodies (the tombstone's too) and drops r1's. */
  g_assert_cmpuint (hb_store_compact_sync (f->store, NULL, &error), ==, 2);
  g_assert_no_error (error);
  assert_body (f->store, "w", NULL, 4);
  g_assert_null (hb_store_get_sync (f->store, "w", r1, 0, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
  g_assert_cmpint (stored_bodies (f->store), ==, 2);
}

/* ---- on disk ---------------------------------------------------------------------------- */

/* The TMPDIR this process was given (see main), scanned whole for plaintext. */
static char *private_tmp;

static const char *const secrets[] = {
  "patient:7d0c2b8e-secret-id",
  "Wanjiru",
  "Kamau-Odhiambo",
  "session:ae11f0-secret",
  "Complains of chest pain since Tuesday",
  "NID-88431907",
  "_local/replication-secret",
  "rev-history-secret",
};

static gboolean
file_contains (const char *path, const char *needle)
{
  g_autofree char *data = NULL;
  gsize len = 0;
  gsize n = strlen (needle);

  if (!g_file_get_contents (path, &data, &len, NULL))
    return FALSE;
  for (gsize i = 0; i + n <= len; i++)
    if (memcmp (data + i, needle, n) == 0)
      return TRUE;
  return FALSE;
}

static void
assert_tree_clean (const char *dir)
{
  g_autoptr (GDir) d = g_dir_open (dir, 0, NULL);
  const char *name;

  if (d == NULL)
    return;
  while ((name = g_dir_read_name (d)) != NULL)
    {
      g_autofree char *path = g_build_filename (dir, name, NULL);

      if (g_file_test (path, G_FILE_TEST_IS_DIR))
        {
          assert_tree_clean (path);
          continue;
        }
      for (guint i = 0; i < G_N_ELEMENTS (secrets); i++)
        if (file_contains (path, secrets[i]))
          g_error ("plaintext \"%s\" found in %s", secrets[i], path);
    }
}

static void
test_no_plaintext_on_disk (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *json = NULL;
  g_autofree char *wal = g_strconcat (f->path, "-wal", NULL);
  g_autoptr (JsonNode) local = NULL;
  g_autofree char *lrev = NULL;

  json = g_strdup_printf (
      "{\"_id\":\"%s\",\"type\":\"patient\",\"given_name\":\"%s\",\"family_name\":\"%s\","
      "\"national_id\":\"%s\"}",
      secrets[0], secrets[1], secrets[2], secrets[5]);
  g_free (put_ok (f->store, json));
  g_free (json);
  json = g_strdup_printf ("{\"_id\":\"note:1\",\"type\":\"note\",\"session_id\":\"%s\","
                          "\"patient_id\":\"%s\",\"text\":\"%s\"}",
                          secrets[3], secrets[0], secrets[4]);
  g_free (put_ok (f->store, json));
  insert_history (f->store, "note:2", "2-rev-history-secret 1-aaaa", FALSE, "{\"text\":\"x\"}");
  local = hb_test_json ("{\"_id\":\"_local/replication-secret\",\"last_seq\":1}");
  lrev = hb_store_put_local_sync (f->store, local, NULL, &error);
  g_assert_no_error (error);

  /* While open: the WAL holds the recent writes. */
  g_assert_true (g_file_test (wal, G_FILE_TEST_EXISTS));
  assert_tree_clean (f->dir);
  assert_tree_clean (private_tmp);
  hb_store_close (f->store);
  assert_tree_clean (f->dir);
}

static GPtrArray *
row_keys (const char *path, const char *table)
{
  sqlite3 *db;
  sqlite3_stmt *stmt;
  g_autofree char *sql = g_strdup_printf ("SELECT doc_key FROM %s ORDER BY doc_key", table);
  GPtrArray *keys = g_ptr_array_new_with_free_func ((GDestroyNotify)g_bytes_unref);

  g_assert_cmpint (sqlite3_open (path, &db), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL), ==, SQLITE_OK);
  while (sqlite3_step (stmt) == SQLITE_ROW)
    g_ptr_array_add (keys,
                     g_bytes_new (sqlite3_column_blob (stmt, 0), sqlite3_column_bytes (stmt, 0)));
  sqlite3_finalize (stmt);
  sqlite3_close (db);
  return keys;
}

/* Rewrites one sealed column of the row with this doc_key: flips one bit at offset (negative:
 * from the end), or, with replacement, puts another row's bytes there. */
static void
tamper (const char *path,
        const char *table,
        const char *column,
        GBytes *doc_key,
        int offset,
        GBytes *replacement)
{
  sqlite3 *db;
  sqlite3_stmt *stmt;
  g_autofree char *select = g_strdup_printf ("SELECT %s FROM %s WHERE doc_key = ?", column, table);
  g_autofree char *update
      = g_strdup_printf ("UPDATE %s SET %s = ? WHERE doc_key = ?", table, column);
  g_autofree guint8 *blob = NULL;
  gsize len;

  g_assert_cmpint (sqlite3_open (path, &db), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_prepare_v2 (db, select, -1, &stmt, NULL), ==, SQLITE_OK);
  sqlite3_bind_blob (stmt, 1, g_bytes_get_data (doc_key, NULL), g_bytes_get_size (doc_key),
                     SQLITE_STATIC);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
  if (replacement != NULL)
    blob = g_bytes_unref_to_data (g_bytes_ref (replacement), &len);
  else
    {
      len = sqlite3_column_bytes (stmt, 0);
      blob = g_memdup2 (sqlite3_column_blob (stmt, 0), len);
      blob[offset >= 0 ? (gsize)offset : len + offset] ^= 0x01;
    }
  sqlite3_finalize (stmt);
  g_assert_cmpint (sqlite3_prepare_v2 (db, update, -1, &stmt, NULL), ==, SQLITE_OK);
  sqlite3_bind_blob (stmt, 1, blob, len, SQLITE_STATIC);
  sqlite3_bind_blob (stmt, 2, g_bytes_get_data (doc_key, NULL), g_bytes_get_size (doc_key),
                     SQLITE_STATIC);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_DONE);
  g_assert_cmpint (sqlite3_changes (db), >=, 1);
  sqlite3_finalize (stmt);
  sqlite3_close (db);
}

static GBytes *
column_of (const char *path, const char *table, const char *column, GBytes *doc_key)
{
  sqlite3 *db;
  sqlite3_stmt *stmt;
  g_autofree char *select = g_strdup_printf ("SELECT %s FROM %s WHERE doc_key = ?", column, table);
  GBytes *out;

  g_assert_cmpint (sqlite3_open (path, &db), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_prepare_v2 (db, select, -1, &stmt, NULL), ==, SQLITE_OK);
  sqlite3_bind_blob (stmt, 1, g_bytes_get_data (doc_key, NULL), g_bytes_get_size (doc_key),
                     SQLITE_STATIC);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
  out = g_bytes_new (sqlite3_column_blob (stmt, 0), sqlite3_column_bytes (stmt, 0));
  sqlite3_finalize (stmt);
  sqlite3_close (db);
  return out;
}

#define N_TAMPER_DOCS 20

static void
test_tamper (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) body_keys = NULL;
  g_autoptr (GPtrArray) results = NULL;
  g_autoptr (GPtrArray) all = NULL;
  g_autoptr (JsonNode) changes = NULL;
  g_autoptr (JsonNode) local = hb_test_json ("{\"_id\":\"_local/x\",\"v\":1}");
  g_autoptr (GBytes) moved = NULL;
  g_autofree char *lrev = NULL;
  const char *ids[N_TAMPER_DOCS + 1] = { NULL };
  guint corrupt = 0, intact = 0, corrupt_changes = 0;
  JsonArray *rows;

  for (guint i = 0; i < N_TAMPER_DOCS; i++)
    {
      g_autofree char *id = g_strdup_printf ("doc:%02u", i);
      g_autofree char *json = g_strdup_printf ("{\"_id\":\"%s\",\"n\":%u}", id, i);
      g_free (put_ok (f->store, json));
      ids[i] = g_intern_string (id);
    }
  lrev = hb_store_put_local_sync (f->store, local, NULL, &error);
  g_assert_no_error (error);
  hb_store_close (f->store);

  /* Three bodies flipped (first byte of the nonce, one in the middle, the tag's last byte),
   * two other documents' records flipped, one body replaced by another document's body, and
   * the local document flipped: six documents and one local document damaged. */
  /* A document's winning body lives in its row (docs.body); older ones in the bodies table. */
  body_keys = row_keys (f->path, "docs");
  g_assert_cmpuint (body_keys->len, ==, N_TAMPER_DOCS);
  tamper (f->path, "docs", "body", body_keys->pdata[0], 0, NULL);
  tamper (f->path, "docs", "body", body_keys->pdata[1], 20, NULL);
  tamper (f->path, "docs", "body", body_keys->pdata[2], -1, NULL);
  tamper (f->path, "docs", "meta", body_keys->pdata[3], 14, NULL);
  tamper (f->path, "docs", "meta", body_keys->pdata[4], -3, NULL);
  moved = column_of (f->path, "docs", "body", body_keys->pdata[6]);
  tamper (f->path, "docs", "body", body_keys->pdata[5], 0, moved);
  {
    g_autoptr (GPtrArray) local_keys = row_keys (f->path, "local_docs");
    tamper (f->path, "local_docs", "body", local_keys->pdata[0], 30, NULL);
  }

  {
    g_autoptr (HbVault) vault = hb_vault_new (f->path);
    g_clear_object (&f->store);
    g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
    f->store = hb_store_open_sync (vault, NULL, &error);
    g_assert_no_error (error);
  }

  results = hb_store_get_many_sync (f->store, ids, 0, NULL, &error);
  g_assert_no_error (error);
  for (guint i = 0; i < results->len; i++)
    {
      JsonObject *o = json_node_get_object (results->pdata[i]);
      const char *err = json_object_get_string_member_with_default (o, "error", NULL);

      if (err != NULL)
        {
          g_assert_cmpstr (err, ==, "corrupt");
          corrupt++;
        }
      else
        {
          /* What is readable is exactly what was written. */
          g_assert_cmpint (json_object_get_int_member (o, "n"), ==, i);
          intact++;
        }
    }
  g_assert_cmpuint (corrupt, ==, 6);
  g_assert_cmpuint (intact, ==, N_TAMPER_DOCS - 6);

  /* The same as text, which a batch reads by another way. */
  {
    g_autoptr (GPtrArray) texts = hb_store_get_many_json_sync (f->store, ids, 0, NULL, &error);
    guint corrupt_texts = 0;

    g_assert_no_error (error);
    g_assert_cmpuint (texts->len, ==, N_TAMPER_DOCS);
    for (guint i = 0; i < texts->len; i++)
      {
        gsize len;
        const char *text = g_bytes_get_data (texts->pdata[i], &len);
        g_autofree char *copy = g_strndup (text, len);
        g_autoptr (JsonNode) node = hb_test_json (copy);
        JsonObject *o = json_node_get_object (node);
        JsonObject *parsed = json_node_get_object (results->pdata[i]);

        if (json_object_has_member (o, "error"))
          {
            g_assert_cmpstr (json_object_get_string_member (o, "error"), ==, "corrupt");
            g_assert_true (json_object_has_member (parsed, "error"));
            corrupt_texts++;
          }
        else
          g_assert_cmpint (json_object_get_int_member (o, "n"), ==, i);
      }
    g_assert_cmpuint (corrupt_texts, ==, 6);
  }

  /* Individually, too, with the right error code. */
  for (guint i = 0; i < N_TAMPER_DOCS; i++)
    {
      g_autoptr (GError) e = NULL;
      g_autoptr (JsonNode) doc = hb_store_get_sync (f->store, ids[i], NULL, 0, NULL, &e);
      if (doc == NULL)
        g_assert_error (e, HB_STORE_ERROR, HB_STORE_ERROR_CORRUPT);
    }

  g_assert_null (hb_store_get_local_sync (f->store, "_local/x", NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CORRUPT);
  g_clear_error (&error);

  /* The changes feed reports the two unreadable records instead of dropping them. */
  changes = hb_store_changes_sync (f->store, 0, 0, NULL, &error);
  g_assert_no_error (error);
  rows = json_object_get_array_member (json_node_get_object (changes), "results");
  g_assert_cmpuint (json_array_get_length (rows), ==, N_TAMPER_DOCS);
  for (guint i = 0; i < json_array_get_length (rows); i++)
    if (json_object_has_member (json_array_get_object_element (rows, i), "error"))
      corrupt_changes++;
  g_assert_cmpuint (corrupt_changes, ==, 2);

  all = hb_store_all_docs_sync (f->store, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (all->len, ==, N_TAMPER_DOCS);
}

static GPtrArray *
sealed_rows (const char *path)
{
  static const char *const queries[] = {
    "SELECT doc_key, meta || coalesce (body, x'') FROM docs ORDER BY seq",
    "SELECT doc_key || id, body FROM bodies ORDER BY id",
    "SELECT doc_key, body FROM local_docs ORDER BY doc_key",
    "SELECT seq, coalesce (type_mac, x'') || coalesce (session_mac, x'')"
    " || coalesce (patient_mac, x'') FROM docs ORDER BY seq",
  };
  GPtrArray *rows = g_ptr_array_new_with_free_func ((GDestroyNotify)g_bytes_unref);
  sqlite3 *db;

  g_assert_cmpint (sqlite3_open (path, &db), ==, SQLITE_OK);
  for (guint q = 0; q < G_N_ELEMENTS (queries); q++)
    {
      sqlite3_stmt *stmt;
      g_assert_cmpint (sqlite3_prepare_v2 (db, queries[q], -1, &stmt, NULL), ==, SQLITE_OK);
      while (sqlite3_step (stmt) == SQLITE_ROW)
        for (int col = 0; col < 2; col++)
          g_ptr_array_add (rows, g_bytes_new (sqlite3_column_blob (stmt, col),
                                              sqlite3_column_bytes (stmt, col)));
      sqlite3_finalize (stmt);
    }
  sqlite3_close (db);
  return rows;
}

static void
test_change_pin_keeps_records (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) before = NULL;
  g_autoptr (GPtrArray) after = NULL;
  g_autoptr (JsonNode) local = hb_test_json ("{\"_id\":\"_local/c\",\"v\":1}");
  g_autoptr (JsonNode) doc = NULL;
  g_autofree char *lrev = NULL;
  HbVault *vault = hb_store_get_vault (f->store);

  for (guint i = 0; i < 10; i++)
    {
      g_autofree char *json = g_strdup_printf ("{\"_id\":\"note:%u\",\"type\":\"note\","
                                               "\"session_id\":\"s:%u\"}",
                                               i, i % 3);
      g_free (put_ok (f->store, json));
    }
  lrev = hb_store_put_local_sync (f->store, local, NULL, &error);
  before = sealed_rows (f->path);
  g_assert_true (hb_vault_change_pin_sync (vault, HB_TEST_PIN, "7654321", NULL, &error));
  g_assert_no_error (error);
  after = sealed_rows (f->path);
  g_assert_cmpuint (before->len, ==, after->len);
  g_assert_cmpuint (before->len, >, 40);
  for (guint i = 0; i < before->len; i++)
    g_assert_true (g_bytes_equal (before->pdata[i], after->pdata[i]));

  /* The new PIN opens everything; the old one no longer does. */
  hb_vault_lock (vault);
  g_assert_false (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  g_assert_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN);
  g_clear_error (&error);
  g_assert_true (hb_vault_unlock_sync (vault, "7654321", NULL, &error));
  doc = hb_store_get_sync (f->store, "note:3", NULL, 0, NULL, &error);
  g_assert_no_error (error);
}

static void
test_locked_vault (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *rev = put_ok (f->store, "{\"_id\":\"a\"}");
  HbVault *vault = hb_store_get_vault (f->store);
  g_autoptr (JsonNode) doc = NULL;

  /* The writer and a reader hold AES and HMAC handles (key schedules) once used... */
  doc = hb_store_get_sync (f->store, "a", NULL, 0, NULL, &error);
  g_assert_no_error (error);
  g_clear_pointer (&doc, json_node_unref);
  g_assert_cmpuint (_hb_store_count_key_handles (f->store), >=, 2);
  hb_vault_lock (vault);
  /* ...and none once the vault is locked. */
  g_assert_cmpuint (_hb_store_count_key_handles (f->store), ==, 0);
  g_assert_null (hb_store_get_sync (f->store, "a", NULL, 0, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_LOCKED);
  g_clear_error (&error);
  g_assert_null (put_json (f->store, "{\"_id\":\"b\"}", &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_LOCKED);
  g_clear_error (&error);
  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  doc = hb_store_get_sync (f->store, "a", NULL, 0, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (_hb_store_count_key_handles (f->store), >=, 1);
}

static void
test_newer_schema_refused (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbStore) again = NULL;
  HbVault *vault = hb_store_get_vault (f->store);

  g_assert_cmpint (
      hb_test_sql_exec (f->path, "UPDATE hb_meta SET value = 99 WHERE key = 'schema_version'"), ==,
      1);
  again = hb_store_open_sync (vault, NULL, &error);
  g_assert_null (again);
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_VERSION);
}

/* The WAL is checkpointed while the store is open, off the writer's path: after some 16 MiB of
 * writes (about 4,000 pages, four times the checkpoint threshold) the main file holds most of
 * them. Without a checkpoint it would still be a few pages: every page would be in the WAL. */
static void
test_background_checkpoint (Fixture *f, gconstpointer data)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (11);
  GStatBuf db_stat = { 0 };
  gint64 deadline;

  for (guint b = 0; b < 40; b++)
    {
      g_autoptr (GPtrArray) docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
      g_autoptr (GPtrArray) results = NULL;
      g_autoptr (GError) error = NULL;

      for (guint i = 0; i < 100; i++)
        {
          g_autofree char *id = g_strdup_printf ("note:%u", b * 100 + i);

          g_ptr_array_add (docs, hb_test_note (rand, id, "session:1", "patient:1",
                                               "2024-05-02T09:00:00Z", 3000));
        }
      results = hb_store_bulk_docs_sync (f->store, docs, TRUE, NULL, &error);
      g_assert_no_error (error);
    }
  /* The checkpointer runs on its own thread: give it time on a loaded machine. */
  deadline = g_get_monotonic_time () + 30 * G_USEC_PER_SEC;
  do
    {
      g_assert_cmpint (g_stat (f->path, &db_stat), ==, 0);
      if (db_stat.st_size > 8 * 1024 * 1024)
        break;
      g_usleep (50 * 1000);
    }
  while (g_get_monotonic_time () < deadline);
  g_assert_cmpint (db_stat.st_size, >, 8 * 1024 * 1024);
}

/* A store written by the first schema (tests/data/store-v1.db, made with the release that had
 * it: PIN 246810, no device secret) opens, migrates once, and reads and writes as before. */
static void
test_migration_from_v1 (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = hb_test_mkdtemp ();
  g_autofree char *path = g_build_filename (dir, "store.db", NULL);
  g_autofree char *fixture = g_test_build_filename (G_TEST_DIST, "data", "store-v1.db", NULL);
  g_autofree char *contents = NULL;
  g_autoptr (HbVault) vault = NULL;
  g_autoptr (HbStore) store = NULL;
  g_autoptr (GPtrArray) notes = NULL;
  g_autoptr (JsonNode) keep = NULL;
  g_autofree char *rev = NULL;
  JsonObject *doc;
  gsize len;

  g_assert_true (g_file_get_contents (fixture, &contents, &len, NULL));
  g_assert_true (g_file_set_contents (path, contents, len, NULL));
  g_assert_cmpint (hb_test_sql_int (path, "SELECT value FROM hb_meta WHERE key = 'schema_version'"),
                   ==, 1);
  vault = hb_vault_new (path);
  g_assert_true (hb_vault_unlock_sync (vault, "246810", NULL, &error));
  g_assert_no_error (error);
  store = hb_store_open_sync (vault, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpint (hb_test_sql_int (path, "SELECT value FROM hb_meta WHERE key = 'schema_version'"),
                   ==, 3);
  g_assert_cmpint (hb_test_sql_int (path, "SELECT count(*) FROM sqlite_schema WHERE type = 'index'"
                                          " AND name = 'docs_key' AND sql LIKE '%(key_prefix)'"),
                   ==, 1);
  /* Every row's key_prefix is its key's first 8 bytes, big-endian (SQLite prints a negative
   * integer in hexadecimal as its 64 bits). */
  g_assert_cmpint (hb_test_sql_int (path, "SELECT count(*) FROM docs WHERE key_prefix IS NULL"
                                          " OR printf('%016X', key_prefix)"
                                          " != hex(substr(doc_key, 1, 8))"),
                   ==, 0);
  g_assert_cmpint (hb_test_sql_int (path, "SELECT count(*) FROM docs"), ==, 6);
  g_assert_cmpuint (hb_store_get_update_seq (store), ==, 9);

  /* An edited document, a conflict, a deletion and the blind index all came through. */
  keep = hb_store_get_sync (store, "patient:1", NULL, HB_GET_FLAGS_REVISIONS, NULL, &error);
  g_assert_no_error (error);
  doc = json_node_get_object (keep);
  g_assert_cmpstr (json_object_get_string_member (doc, "_rev"), ==,
                   "2-dedf66bf9db256d190d983617f25ced7");
  g_assert_cmpstr (json_object_get_string_member (doc, "family_name"), ==, "Otieno-Kamau");
  g_clear_pointer (&keep, json_node_unref);
  keep = hb_store_get_sync (store, "note:1", NULL, HB_GET_FLAGS_CONFLICTS, NULL, &error);
  g_assert_no_error (error);
  doc = json_node_get_object (keep);
  g_assert_cmpstr (json_object_get_string_member (doc, "_rev"), ==,
                   "1-ffffffffffffffffffffffffffffffff");
  g_assert_cmpstr (
      json_array_get_string_element (json_object_get_array_member (doc, "_conflicts"), 0), ==,
      "1-2821c6cadfd54ebbd507877ba41f02ce");
  g_clear_pointer (&keep, json_node_unref);
  g_assert_null (hb_store_get_sync (store, "gone", NULL, 0, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);
  notes = hb_store_find_sync (store, HB_INDEX_FIELD_SESSION_ID, "session:1", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (notes->len, ==, 3);

  /* Writes: an edit replaces its row (no second row for the document), a new one is added. */
  rev = put_ok (store, "{\"_id\":\"session:1\",\"_rev\":\"1-3e9239e780510c040972c1a757f24a7f\","
                       "\"type\":\"session\",\"patient_id\":\"patient:1\"}");
  g_assert_true (g_str_has_prefix (rev, "2-"));
  g_free (put_ok (store, "{\"_id\":\"note:4\",\"type\":\"note\",\"session_id\":\"session:1\"}"));
  g_assert_cmpint (hb_test_sql_int (path, "SELECT count(*) FROM docs"), ==, 7);
  g_assert_cmpint (hb_test_sql_int (path, "SELECT count(DISTINCT doc_key) FROM docs"), ==, 7);
  hb_store_close (store);
  g_assert_cmpint (hb_test_sql_int (path, "SELECT count(*) FROM pragma_integrity_check"
                                          " WHERE integrity_check != 'ok'"),
                   ==, 0);
  hb_test_rmdir (dir);
}

/* ---- threads and the main loop ----------------------------------------------------------- */

typedef struct
{
  gboolean done;
  guint changed;
  GThread *signal_thread;
  char *rev;
  JsonNode *doc;
  GError *error;
} AsyncState;

static void
on_changed (HbStore *store, guint64 seq, AsyncState *st)
{
  st->changed++;
  st->signal_thread = g_thread_self ();
}

static void
on_put (GObject *source, GAsyncResult *result, gpointer data)
{
  AsyncState *st = data;

  st->rev = hb_store_put_finish (HB_STORE (source), result, &st->error);
  st->done = TRUE;
}

static void
on_get (GObject *source, GAsyncResult *result, gpointer data)
{
  AsyncState *st = data;

  st->doc = hb_store_get_finish (HB_STORE (source), result, &st->error);
  st->done = TRUE;
}

static void
test_async_and_signal (Fixture *f, gconstpointer data)
{
  AsyncState st = { 0 };
  g_autoptr (JsonNode) doc = hb_test_json ("{\"_id\":\"async:1\",\"type\":\"note\"}");

  g_signal_connect (f->store, "changed", G_CALLBACK (on_changed), &st);
  hb_store_put_async (f->store, doc, NULL, on_put, &st);
  hb_test_wait_for (&st.done);
  g_assert_no_error (st.error);
  g_assert_true (g_str_has_prefix (st.rev, "1-"));
  while (st.changed == 0)
    g_main_context_iteration (NULL, TRUE);
  /* Emitted on the thread that owns the store, not the worker. */
  g_assert_true (st.signal_thread == g_thread_self ());

  st.done = FALSE;
  hb_store_get_async (f->store, "async:1", NULL, 0, NULL, on_get, &st);
  hb_test_wait_for (&st.done);
  g_assert_no_error (st.error);
  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (st.doc), "_rev"), ==,
                   st.rev);
  g_free (st.rev);
  json_node_unref (st.doc);
  g_signal_handlers_disconnect_by_data (f->store, &st);
}

static void
on_result (GObject *source, GAsyncResult *result, gpointer data)
{
  *(GAsyncResult **)data = g_object_ref (result);
}

static GAsyncResult *
wait_result (GAsyncResult **slot)
{
  while (*slot == NULL)
    g_main_context_iteration (NULL, TRUE);
  return *slot;
}

/* Every asynchronous form against its synchronous twin's effect. */
static void
test_async_forms (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) local = hb_test_json ("{\"_id\":\"_local/a\",\"v\":1}");
  g_autoptr (JsonNode) req = hb_test_json ("{\"x\":[\"1-ffff\"]}");
  g_autoptr (JsonNode) diff = NULL;
  g_autoptr (JsonNode) got = NULL;
  g_autoptr (JsonNode) stats = NULL;
  g_autoptr (GPtrArray) all = NULL;
  g_autofree char *rev = put_ok (f->store, "{\"_id\":\"x\",\"v\":1}");
  g_autofree char *json = g_strdup_printf ("{\"_id\":\"x\",\"_rev\":\"%s\",\"v\":2}", rev);
  g_autofree char *rev2 = put_ok (f->store, json);
  g_autofree char *lrev = NULL;
  g_autofree char *tomb = NULL;
  GAsyncResult *r = NULL;
  const char *const purge[] = { "1-aaaa", NULL };

#define WAIT(call)                                                                                 \
  g_clear_object (&r);                                                                             \
  call;                                                                                            \
  wait_result (&r)

  WAIT (hb_store_put_local_async (f->store, local, NULL, on_result, &r));
  lrev = hb_store_put_local_finish (f->store, r, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (lrev, ==, "0-1");
  WAIT (hb_store_get_local_async (f->store, "_local/a", NULL, on_result, &r));
  got = hb_store_get_local_finish (f->store, r, &error);
  g_assert_no_error (error);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (got), "v"), ==, 1);
  WAIT (hb_store_revs_diff_async (f->store, req, NULL, on_result, &r));
  diff = hb_store_revs_diff_finish (f->store, r, &error);
  g_assert_no_error (error);
  g_assert_true (json_object_has_member (json_node_get_object (diff), "x"));
  WAIT (hb_store_all_docs_async (f->store, NULL, on_result, &r));
  all = hb_store_all_docs_finish (f->store, r, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (all->len, ==, 1);
  WAIT (hb_store_compact_async (f->store, NULL, on_result, &r));
  g_assert_cmpuint (hb_store_compact_finish (f->store, r, &error), ==, 1);
  g_assert_no_error (error);
  WAIT (hb_store_delete_async (f->store, "x", rev2, NULL, on_result, &r));
  tomb = hb_store_delete_finish (f->store, r, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (tomb, "3-"));
  insert_history (f->store, "y", "1-aaaa", FALSE, NULL);
  WAIT (hb_store_purge_async (f->store, "y", purge, NULL, on_result, &r));
  g_assert_cmpuint (hb_store_purge_finish (f->store, r, &error), ==, 1);
  g_assert_no_error (error);
  WAIT (hb_store_get_stats_async (f->store, NULL, on_result, &r));
  stats = hb_store_get_stats_finish (f->store, r, &error);
  g_assert_no_error (error);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (stats), "doc_count"), ==, 0);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (stats), "deleted_doc_count"),
                   ==, 1);
  /* Errors come through the finish call too. */
  WAIT (hb_store_get_local_async (f->store, "_local/none", NULL, on_result, &r));
  g_assert_null (hb_store_get_local_finish (f->store, r, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
  g_clear_object (&r);
#undef WAIT
}

typedef struct
{
  HbStore *store;
  gint stop;
  guint reads;
} Reader;

static gpointer
reader_thread (gpointer data)
{
  Reader *r = data;

  while (!g_atomic_int_get (&r->stop))
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (JsonNode) changes = hb_store_changes_sync (r->store, 0, 50, NULL, &error);
      JsonArray *rows;

      g_assert_no_error (error);
      rows = json_object_get_array_member (json_node_get_object (changes), "results");
      for (guint i = 0; i < json_array_get_length (rows); i++)
        {
          const char *id
              = json_object_get_string_member (json_array_get_object_element (rows, i), "id");
          g_autoptr (JsonNode) doc = hb_store_get_sync (r->store, id, NULL, 0, NULL, &error);
          g_assert_no_error (error);
          g_atomic_int_inc (&r->reads);
        }
    }
  return NULL;
}

static void
test_concurrent_readers (Fixture *f, gconstpointer data)
{
  Reader r = { f->store, 0, 0 };
  GThread *threads[3];
  g_autofree char *rev = put_ok (f->store, "{\"_id\":\"hot\",\"i\":0}");

  for (guint t = 0; t < G_N_ELEMENTS (threads); t++)
    threads[t] = g_thread_new ("reader", reader_thread, &r);
  /* The writer keeps rewriting one document (and stemming nothing away under the readers'
   * feet: a reader's snapshot must never see a record without its body). */
  for (guint i = 1; i <= 200; i++)
    {
      g_autofree char *json
          = g_strdup_printf ("{\"_id\":\"hot\",\"_rev\":\"%s\",\"i\":%u}", rev, i);
      g_autofree char *other = g_strdup_printf ("{\"_id\":\"cold:%u\"}", i);
      g_free (rev);
      rev = put_ok (f->store, json);
      g_free (put_ok (f->store, other));
    }
  g_atomic_int_set (&r.stop, 1);
  for (guint t = 0; t < G_N_ELEMENTS (threads); t++)
    g_thread_join (threads[t]);
  g_assert_cmpuint (r.reads, >, 0);
}

/* ---- findings of review, each a regression test ---------------------------------------- */

static HbStore *
open_again (const char *path)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbVault) vault = hb_vault_new (path);
  HbStore *store;

  g_assert_true (hb_vault_unlock_sync (vault, HB_TEST_PIN, NULL, &error));
  store = hb_store_open_sync (vault, NULL, &error);
  g_assert_no_error (error);
  return store;
}

static void
test_two_stores_one_file (Fixture *f, gconstpointer data)
{
  g_autoptr (HbStore) other = open_again (f->path);
  g_autoptr (JsonNode) a = NULL;
  g_autoptr (JsonNode) b = NULL;
  g_autoptr (GError) error = NULL;

  /* Each writer takes the next sequence from the file, not from what it saw at open. */
  g_free (put_ok (f->store, "{\"_id\":\"patient:1\"}"));
  g_free (put_ok (other, "{\"_id\":\"patient:2\"}"));
  g_free (put_ok (f->store, "{\"_id\":\"patient:3\"}"));
  a = hb_store_get_sync (f->store, "patient:2", NULL, 0, NULL, &error);
  g_assert_no_error (error);
  b = hb_store_get_sync (other, "patient:1", NULL, 0, NULL, &error);
  g_assert_no_error (error);
  g_clear_pointer (&a, json_node_unref);
  a = hb_store_get_sync (other, "patient:3", NULL, 0, NULL, &error);
  g_assert_no_error (error);
  hb_store_close (other);
}

static void
test_replay_keeps_counts (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) stats = NULL;
  g_autoptr (GPtrArray) docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
  g_autoptr (GPtrArray) results = NULL;
  static const char *const replay[] = {
    "{\"_id\":\"a\",\"_rev\":\"1-aaaa\"}",
    "{\"_id\":\"b\",\"_rev\":\"1-bbbb\"}",
    "{\"_id\":\"c\",\"_rev\":\"1-cccc\"}",
  };

  insert_history (f->store, "a", "1-aaaa", FALSE, NULL);
  insert_history (f->store, "b", "1-bbbb", FALSE, NULL);
  /* A feed replayed after a failover: two known revisions and one new, in one batch. */
  for (guint i = 0; i < G_N_ELEMENTS (replay); i++)
    g_ptr_array_add (docs, hb_test_json (replay[i]));
  results = hb_store_bulk_docs_sync (f->store, docs, FALSE, NULL, &error);
  g_assert_no_error (error);
  stats = hb_store_get_stats_sync (f->store, NULL, &error);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (stats), "doc_count"), ==, 3);
  g_assert_cmpint (json_object_get_int_member (json_node_get_object (stats), "update_seq"), ==, 3);
}

static void
test_stemmed_root_rejoined (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes = NULL;
  g_autoptr (JsonNode) keep = NULL;
  g_autofree char *r1 = NULL;
  g_autofree char *r2 = NULL;
  g_autofree char *again = NULL;
  g_autofree char *json = NULL;
  JsonArray *leaves;

  g_assert_true (hb_store_set_revs_limit (f->store, 1, &error));
  r1 = put_ok (f->store, "{\"_id\":\"d\",\"v\":\"A\"}");
  json = g_strdup_printf ("{\"_id\":\"d\",\"_rev\":\"%s\",\"v\":\"B\"}", r1);
  r2 = put_ok (f->store, json);
  /* The stemmed first revision comes back from a peer, then the same edit is made on it. */
  insert_history (f->store, "d", r1, FALSE, "{\"v\":\"A\"}");
  g_free (json);
  json = g_strdup_printf ("{\"_id\":\"d\",\"_rev\":\"%s\",\"v\":\"B\"}", r1);
  again = put_ok (f->store, json);
  g_assert_cmpstr (again, ==, r2);
  changes = hb_store_changes_sync (f->store, 0, 0, NULL, &error);
  leaves = json_object_get_array_member (
      json_array_get_object_element (
          json_object_get_array_member (json_node_get_object (changes), "results"), 0),
      "changes");
  /* One leaf, named once. */
  g_assert_cmpuint (json_array_get_length (leaves), ==, 1);
  g_assert_false (json_object_has_member (
      get_obj (f->store, "d", NULL, HB_GET_FLAGS_CONFLICTS, &keep), "_conflicts"));
}

typedef struct
{
  GThread *thread;
  guint count;
  gboolean done;
} SignalSeen;

static void
on_changed_seen (HbStore *store, guint64 seq, SignalSeen *seen)
{
  seen->thread = g_thread_self ();
  seen->count++;
}

static void
on_put_done (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autofree char *rev = hb_store_put_finish (HB_STORE (source), result, NULL);

  g_assert_nonnull (rev);
  ((SignalSeen *)data)->done = TRUE;
}

static void
test_changed_on_owner_thread (Fixture *f, gconstpointer data)
{
  SignalSeen seen = { 0 };
  g_autoptr (JsonNode) doc = hb_test_json ("{\"_id\":\"t\"}");

  g_signal_connect (f->store, "changed", G_CALLBACK (on_changed_seen), &seen);
  hb_store_put_async (f->store, doc, NULL, on_put_done, &seen);
  /* The owner is busy while the worker commits: the signal must wait for the owner's loop. */
  g_usleep (300 * G_TIME_SPAN_MILLISECOND);
  g_assert_cmpuint (seen.count, ==, 0);
  while (!seen.done || seen.count == 0)
    g_main_context_iteration (NULL, TRUE);
  g_assert_true (seen.thread == g_thread_self ());
  g_signal_handlers_disconnect_by_data (f->store, &seen);
}

static void
test_tampered_columns (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes = NULL;
  g_autoptr (GPtrArray) notes = NULL;
  g_autoptr (JsonNode) diff = NULL;
  g_autoptr (JsonNode) req = hb_test_json ("{\"n:1\":[\"1-abcd\"],\"n:3\":[\"1-abcd\"]}");
  JsonArray *rows;
  guint corrupt = 0;

  for (guint i = 1; i <= 4; i++)
    {
      g_autofree char *json = g_strdup_printf ("{\"_id\":\"n:%u\",\"type\":\"note\"}", i);
      g_free (put_ok (f->store, json));
    }
  hb_store_close (f->store);
  g_clear_object (&f->store);
  /* An index column cleared (the document would vanish from queries), a row moved to another
   * sequence (it would slip below a replication checkpoint), a key emptied (a crash, once). */
  g_assert_cmpint (hb_test_sql_exec (f->path, "UPDATE docs SET type_mac = NULL WHERE seq = 1"), >=,
                   1);
  g_assert_cmpint (hb_test_sql_exec (f->path, "UPDATE docs SET seq = 100 WHERE seq = 2"), >=, 1);
  g_assert_cmpint (hb_test_sql_exec (f->path, "UPDATE docs SET doc_key = x'' WHERE seq = 3"), >=,
                   1);
  f->store = open_again (f->path);

  changes = hb_store_changes_sync (f->store, 0, 0, NULL, &error);
  g_assert_no_error (error);
  rows = json_object_get_array_member (json_node_get_object (changes), "results");
  g_assert_cmpuint (json_array_get_length (rows), ==, 4);
  for (guint i = 0; i < 4; i++)
    if (json_object_has_member (json_array_get_object_element (rows, i), "error"))
      corrupt++;
  g_assert_cmpuint (corrupt, ==, 3);

  notes = hb_store_find_sync (f->store, HB_INDEX_FIELD_TYPE, "note", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (notes->len, >=, 1);

  /* A damaged record does not fail the whole revs_diff: its revisions are simply missing. */
  diff = hb_store_revs_diff_sync (f->store, req, NULL, &error);
  g_assert_no_error (error);
  g_assert_true (json_object_has_member (json_node_get_object (diff), "n:1"));
  g_assert_true (json_object_has_member (json_node_get_object (diff), "n:3"));
}

static void
test_corrupt_records_can_be_removed (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) local = hb_test_json ("{\"_id\":\"_local/ckpt\",\"seq\":1}");
  g_autoptr (JsonNode) fresh = hb_test_json ("{\"_id\":\"_local/ckpt\",\"seq\":0}");
  g_autoptr (JsonNode) got = NULL;
  g_autofree char *lrev = NULL;
  g_autofree char *lrev2 = NULL;
  const char *const revs[] = { "1-x", NULL };

  lrev = hb_store_put_local_sync (f->store, local, NULL, &error);
  g_free (put_ok (f->store, "{\"_id\":\"doomed\"}"));
  hb_store_close (f->store);
  g_clear_object (&f->store);
  g_assert_cmpint (hb_test_sql_exec (f->path, "UPDATE local_docs SET body = zeroblob (60)"), >=, 1);
  g_assert_cmpint (hb_test_sql_exec (f->path, "UPDATE docs SET meta = zeroblob (80)"), >=, 1);
  f->store = open_again (f->path);

  g_assert_null (hb_store_get_local_sync (f->store, "_local/ckpt", NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CORRUPT);
  g_clear_error (&error);
  /* A checkpoint that cannot be read can still be reset. */
  lrev2 = hb_store_put_local_sync (f->store, fresh, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (lrev2, ==, "0-1");
  got = hb_store_get_local_sync (f->store, "_local/ckpt", NULL, &error);
  g_assert_no_error (error);

  g_assert_cmpuint (hb_store_purge_sync (f->store, "doomed", revs, NULL, &error), ==, 1);
  g_assert_no_error (error);
  g_assert_null (hb_store_get_sync (f->store, "doomed", NULL, 0, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND);
}

/* A document whose records are damaged fails alone and writes nothing: no orphaned bodies, no
 * other revision's body taken in place of the missing one, no damage turned into "no body". */
static void
test_damaged_document_writes_nothing (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) keep = NULL;
  g_autofree char *r1 = put_ok (f->store, "{\"_id\":\"d\",\"v\":1}");
  const char *hist = "2-ffffffffffffffffffffffffffffffff 1-aaaa";
  g_autofree char *tomb = NULL;
  gint64 bodies_before;

  /* A deleted conflict that will win once the live branch is deleted: its body sits in the
   * bodies table, and that row goes missing. */
  insert_history (f->store, "d", hist, TRUE, "{\"v\":2}");
  hb_store_close (f->store);
  g_clear_object (&f->store);
  g_assert_cmpint (hb_test_sql_exec (f->path, "DELETE FROM bodies"), >=, 1);
  f->store = open_again (f->path);
  bodies_before = hb_test_sql_int (f->path, "SELECT count(*) FROM bodies");

  tomb = hb_store_delete_sync (f->store, "d", r1, NULL, &error);
  g_assert_null (tomb);
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CORRUPT);
  g_clear_error (&error);
  g_assert_cmpint (hb_test_sql_int (f->path, "SELECT count(*) FROM bodies"), ==, bodies_before);
  /* The healthy revision is untouched. */
  assert_body (f->store, "d", r1, 1);

  /* The inline body itself missing: a losing revision may still arrive, and the winner keeps
   * reporting corrupt rather than "no body". */
  hb_store_close (f->store);
  g_clear_object (&f->store);
  g_assert_cmpint (hb_test_sql_exec (f->path, "UPDATE docs SET body = NULL"), >=, 1);
  f->store = open_again (f->path);
  insert_history (f->store, "d", "1-0", FALSE, "{\"v\":3}");
  g_assert_null (hb_store_get_sync (f->store, "d", r1, 0, NULL, &error));
  g_assert_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CORRUPT);
}

/* ---- replicated revisions as text ---------------------------------------------------------- */

/* JSON texts whose canonical form from the text must be the tree's, byte for byte. */
static const char *const canonical_cases[] = {
  "{}",
  "[]",
  "{\"a\":1}",
  " { \"b\" : [ 1 , 2 ] , \"a\" : { } } ",
  "{\"a\":1.0,\"b\":-0,\"c\":-0.0,\"d\":0e0,\"e\":1e20,\"f\":1E+2,\"g\":-1e-400,\"h\":0.1}",
  "{\"max\":9223372036854775807,\"min\":-9223372036854775808,\"big\":1e308,\"tiny\":4.9e-324}",
  "{\"x\":123456789012345678e-3,\"y\":1.7976931348623157e308,\"z\":2.2250738585072011e-308}",
  "{\"p\":0.30000000000000004,\"q\":100.0,\"r\":-12.5e1,\"s\":5e-7,\"t\":1234567890123456789.0}",
  "{\"s\":\"plain\",\"t\":\"\\u00e9\\u0800\\uffff\\ud83d\\ude00\",\"u\":\"\\/"
  "\\\\\\\"\\b\\f\\n\\r\\t\"}",
  "{\"c\":\"\\u0001\\u001f\\u007f\\u0080\",\"raw\":\"\x7f\xc3\xa9\xe2\x80\xa8\"}",
  "{\"a\":1,\"a\":2,\"b\":{\"y\":1,\"x\":2,\"y\":3},\"a\":3}",
  "{\"\\u0061\":1,\"a\":2,\"\\u0062\":3}",
  "{\"\":1,\"\\u0000x\":2}",
  "{\"ab\":1,\"a\":2,\"a\\u00e9\":3,\"\\u00e9\":4,\"B\":5,\"_\":6}",
  "{\"_id\":\"x\",\"_rev\":\"1-a\",\"\\u005fhidden\":1,\"_revisions\":{\"start\":1},\"v\":[true,"
  "false,null]}",
  "{\"n\":[[[],{}],[{\"a\":[{\"b\":null}]}]],\"m\":[1,\"2\",3.5,{\"_k\":1}]}",
  "[1,-0,\"\\u00e9\",{\"b\":1,\"a\":2}]",
  "\"just a string\\n\"",
  "-0",
  "3.25e2",
  "true",
  "null",
};

static void
assert_text_canonical (const char *text, gsize len)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GString) tree = g_string_new (NULL);
  g_autoptr (GString) walked = g_string_new (NULL);
  JsonNode *root;

  g_assert_null (hb_json_check_strict ((const guint8 *)text, len));
  g_assert_true (json_parser_load_from_data (parser, text, (gssize)len, NULL));
  root = json_parser_get_root (parser);
  hb_json_append_canonical (tree, root);
  hb_json_append_canonical_text (walked, (const guint8 *)text, len, FALSE);
  g_assert_cmpstr (walked->str, ==, tree->str);
  if (JSON_NODE_HOLDS_OBJECT (root))
    {
      g_string_truncate (tree, 0);
      g_string_truncate (walked, 0);
      hb_json_append_canonical_body (tree, json_node_get_object (root));
      hb_json_append_canonical_text (walked, (const guint8 *)text, len, TRUE);
      g_assert_cmpstr (walked->str, ==, tree->str);
    }
}

static void
test_text_canonical (void)
{
  for (guint i = 0; i < G_N_ELEMENTS (canonical_cases); i++)
    {
      const char *text = canonical_cases[i];

      /* "\u0000" is refused by the strict check: skip the case meant to show that. */
      if (strstr (text, "\\u0000") != NULL)
        {
          g_assert_nonnull (hb_json_check_strict ((const guint8 *)text, strlen (text)));
          continue;
        }
      assert_text_canonical (text, strlen (text));
    }

  /* Deep nesting, long strings and many members (past the walker's stack arrays). */
  {
    g_autoptr (GString) deep = g_string_new (NULL);
    g_autoptr (GString) wide = g_string_new ("{");

    for (guint i = 0; i < HB_JSON_MAX_DEPTH - 1; i++)
      g_string_append (deep, i % 2 ? "[" : "{\"k\":");
    g_string_append (deep, "\"\\u00e9\"");
    for (guint i = HB_JSON_MAX_DEPTH - 1; i-- > 0;)
      g_string_append (deep, i % 2 ? "]" : "}");
    assert_text_canonical (deep->str, deep->len);

    for (guint i = 0; i < 300; i++)
      g_string_append_printf (wide, "%s\"m%u\":\"%0*u\\t\",\"m%u\":%u.5", i ? "," : "",
                              (i * 7919) % 211, (int)(i % 50), i, (i * 31) % 97, i);
    g_string_append (wide, "}");
    assert_text_canonical (wide->str, wide->len);
  }
}

/* Strings are checked and walked sixteen bytes at a time where the CPU allows: a quote, a
 * backslash or a control character at every position of those blocks and across their ends,
 * runs of every length around them, and bytes from 0x80 on (compared unsigned) must come out as
 * byte by byte. */
static void
test_text_string_runs (void)
{
  static const char *const specials[]
      = { "\\\"", "\\\\", "\\n", "\\u00e9", "\\ud83d\\ude00", "\xc3\xa9", "\x7f", "/" };

  for (guint before = 0; before < 40; before++)
    for (guint after = 0; after < 20; after++)
      {
        for (guint k = 0; k < G_N_ELEMENTS (specials); k++)
          {
            g_autoptr (GString) text = g_string_new ("{\"s\":\"");

            for (guint i = 0; i < before; i++)
              g_string_append_c (text, (char)('a' + i % 26));
            g_string_append (text, specials[k]);
            for (guint i = 0; i < after; i++)
              g_string_append_c (text, (char)('A' + i % 26));
            g_string_append (text, "\",\"t\":[\"");
            g_string_append (text, specials[(k + before) % G_N_ELEMENTS (specials)]);
            g_string_append (text, "\",1]}");
            assert_text_canonical (text->str, text->len);
          }
        /* Written (escaped) and read back by JSON-GLib: every character that must be escaped,
         * at every place. */
        for (guint c = 1; c < 0x80; c++)
          {
            g_autoptr (GString) plain = g_string_new (NULL);
            g_autoptr (GString) written = g_string_new ("[");
            g_autoptr (JsonParser) parser = json_parser_new ();
            JsonArray *array;

            if (c >= 0x20 && c != '"' && c != '\\' && c != 'a' && c != 0x7f)
              continue;
            for (guint i = 0; i < before; i++)
              g_string_append_c (plain, (char)('a' + i % 26));
            g_string_append_c (plain, (char)c);
            for (guint i = 0; i < after; i++)
              g_string_append (plain, i % 7 == 6 ? "\xc3\xa9" : "x");
            hb_json_append_string (written, plain->str);
            g_string_append_c (written, ']');
            g_assert_true (json_parser_load_from_data (parser, written->str, -1, NULL));
            array = json_node_get_array (json_parser_get_root (parser));
            g_assert_cmpstr (json_array_get_string_element (array, 0), ==, plain->str);
            g_assert_null (hb_json_check_strict ((const guint8 *)written->str, written->len));
          }
        /* A raw control character, and a string the text ends inside of, are refused. */
        for (guint c = 1; c < 0x20; c += 0x1e)
          {
            g_autoptr (GString) text = g_string_new ("[\"");

            for (guint i = 0; i < before; i++)
              g_string_append_c (text, 'x');
            g_string_append_c (text, (char)c);
            for (guint i = 0; i < after; i++)
              g_string_append_c (text, 'y');
            g_string_append (text, "\"]");
            g_assert_nonnull (hb_json_check_strict ((const guint8 *)text->str, text->len));
          }
        {
          g_autoptr (GString) text = g_string_new ("[\"");

          for (guint i = 0; i < before + after; i++)
            g_string_append_c (text, 'z');
          g_assert_nonnull (hb_json_check_strict ((const guint8 *)text->str, text->len));
          g_string_append_c (text, '\\');
          g_assert_nonnull (hb_json_check_strict ((const guint8 *)text->str, text->len));
          g_string_append (text, "\"");
          g_assert_nonnull (hb_json_check_strict ((const guint8 *)text->str, text->len));
          g_string_append (text, "\"]");
          assert_text_canonical (text->str, text->len);
        }
      }
}

/* hb_json_utf8_valid() against g_utf8_validate_len() on random texts: ASCII runs long and
 * short, whole characters of every length, and bytes that break the rules (stray
 * continuations, overlong forms, surrogates, past U+10FFFF, NUL, cut-short sequences), each
 * at every position of the sixteen-byte blocks. */
static void
test_text_utf8 (void)
{
  static const char *const pieces[] = {
    "a",
    "0123456789abcdef",
    "\xc3\xa9",
    "\xe2\x82\xac",
    "\xf0\x9f\x98\x80",
    "\xf4\x8f\xbf\xbf",
    "\x80",
    "\xbf",
    "\xc0\x80",
    "\xc1\xbf",
    "\xe0\x80\x80",
    "\xed\xa0\x80",
    "\xed\xbf\xbf",
    "\xf4\x90\x80\x80",
    "\xf5\x80\x80\x80",
    "\xf8\x88\x80\x80\x80",
    "\xfe",
    "\xff",
    "\xc3",
    "\xe2\x82",
    "\xf0\x9f\x98",
    "\xc3(",
    "\xef\xbf\xbf",
    "\xef\xb7\x90",
  };
  g_autoptr (GRand) rand = g_rand_new_with_seed (2026);
  guint valid = 0, invalid = 0;

  for (guint round = 0; round < 20000; round++)
    {
      g_autoptr (GString) text = g_string_new (NULL);
      guint n = g_rand_int_range (rand, 0, 12);

      for (guint i = 0; i < n; i++)
        {
          guint k = g_rand_int_range (rand, 0, G_N_ELEMENTS (pieces) + 2);

          if (k < 2 || k >= G_N_ELEMENTS (pieces))
            /* Mostly valid text: ASCII and whole characters. */
            g_string_append (text, pieces[g_rand_int_range (rand, 0, 6)]);
          else if (g_rand_int_range (rand, 0, 4) == 0)
            g_string_append (text, pieces[k]);
          else
            g_string_append (text, pieces[g_rand_int_range (rand, 0, 6)]);
        }
      if (g_rand_int_range (rand, 0, 40) == 0)
        g_string_insert_len (text, g_rand_int_range (rand, 0, text->len + 1), "\0", 1);
      if (hb_json_utf8_valid ((const guint8 *)text->str, text->len))
        valid++;
      else
        invalid++;
      g_assert_cmpint (hb_json_utf8_valid ((const guint8 *)text->str, text->len), ==,
                       g_utf8_validate_len (text->str, text->len, NULL));
    }
  /* Both kinds, many times over. */
  g_assert_cmpuint (valid, >, 2000);
  g_assert_cmpuint (invalid, >, 2000);
  g_assert_true (hb_json_utf8_valid ((const guint8 *)"", 0));
}

#define H(c) #c #c #c #c #c #c #c #c
typedef struct
{
  const char *text;
  gboolean text_only; /* not JSON the tree path could be given: only a bad_request expected */
} RevText;

/* Replicated revisions, batch by batch (a NULL text ends a batch). */
static const RevText revision_batches[] = {
  { "{\"_id\":\"a\",\"_rev\":\"1-" H (a) "\",\"_revisions\":{\"start\":1,\"ids\":[\"" H (
      a) "\"]},"
         "\"type\":\"note\",\"b\":1.0,\"a\":[1e2,-0,-0.0,\"x\\u00e9\\n\"],\"z\":{\"y\":1,\"y\":2}"
         "}" },
  { "{\"_id\":\"b\",\"_rev\":\"3-" H (b) "\",\"patient_id\":\"p\\u00e9\",\"session_id\":7}" },
  { "{\"_id\":\"c\",\"_rev\":\"2-" H (c) "\",\"_deleted\":true,\"_revisions\":{\"start\":2,"
                                         "\"ids\":[\"" H (c) "\",\"" H (
                                             d) "\"]},\"type\":\"gone\"}" },
  { "{\"\\u005fid\":\"\\u0064\",\"_rev\":\"1-" H (
      d) "\",\"type\":\"x\","
         "\"\\u0074ype\":\"t\\u0079p\\u00e9\",\"_conflicts\":[1],\"_revs_info\":{},"
         "\"_deleted_conflicts\":0,\"_local_seq\":\"9\"}" },
  { "{\"_id\":\"x\",\"_rev\":\"1-" H (e) "\",\"_id\":\"e\",\"_deleted\":\"true\",\"body\":\"\"}" },
  { "{\"_rev\":\"1-" H (f) "\"}" },
  { "{\"_id\":\"\",\"_rev\":\"1-" H (f) "\"}" },
  { "{\"_id\":5,\"_rev\":\"1-" H (f) "\"}" },
  { "{\"_id\":\"f\",\"_rev\":5}" },
  { "{\"_id\":\"f\",\"_rev\":null,\"_id\":null}" },
  { "{\"_rev\":\"1-" H (f) "\",\"_attachments\":{}}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_attachments\":{}}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_foo\":1,\"_bar\":2}" },
  { "{\"_rev\":\"1-" H (f) "\",\"_foo\":1,\"_foo\":2}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"\\u005ffoo\":1}" },
  { "{\"_id\":\"_bad\",\"_rev\":\"1-" H (f) "\"}" },
  { "{\"_id\":\"_design/f\",\"_rev\":\"1-" H (f) "\",\"views\":{}}" },
  { "{\"_id\":\"f\",\"_rev\":\"nonsense\"}" },
  { "{\"_id\":\"f\"}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_revisions\":[]}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_revisions\":{\"start\":0,\"ids\":[\"" H (
      f) "\"]}}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_revisions\":{\"start\":1.0,\"ids\":[\"" H (
      f) "\"]}}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_revisions\":{\"start\":1,\"ids\":null}}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_revisions\":{\"start\":1,\"ids\":\"" H (f) "\"}}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_revisions\":{\"start\":1,\"ids\":[1]}}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_revisions\":{\"start\":1,\"ids\":[]}}" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"_revisions\":{\"start\":1,\"ids\":[\"a\",\"b\"]}}" },
  { "{\"_id\":\"f\",\"_rev\":\"2-" H (f) "\",\"_revisions\":{\"start\":2,\"ids\":[\"" H (
      e) "\"]}}" },
  { "{\"_id\":\"f\",\"_rev\":\"2-" H (f) "\",\"_revisions\":{\"ids\":[\"" H (
      f) "\"],"
         "\"start\":3,\"start\":2,\"ids\":[\"" H (f) "\",\"a b\"]}}" },
  { "[1]" },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\"} x", TRUE },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"n\":01}", TRUE },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"n\":\"\\u0000\"}", TRUE },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"n\":99999999999999999999}", TRUE },
  { "{\"_id\":\"f\",\"_rev\":\"1-" H (f) "\",\"n\":\"\xff\"}", TRUE },
  { "", TRUE },
  { NULL },
  /* Conflicts, a child, the same revision again, a revived tombstone, a deleted winner. */
  { "{\"_id\":\"a\",\"_rev\":\"1-" H (b) "\",\"type\":\"other\",\"v\":2}" },
  { "{\"_id\":\"a\",\"_rev\":\"2-" H (c) "\",\"_revisions\":{\"start\":2,\"ids\":[\"" H (
      c) "\",\"" H (a) "\"]},\"type\":\"note2\"}" },
  { "{\"_id\":\"a\",\"_rev\":\"1-" H (a) "\",\"type\":\"ignored\"}" },
  { "{\"_id\":\"c\",\"_rev\":\"3-" H (e) "\",\"_revisions\":{\"start\":3,\"ids\":[\"" H (
      e) "\",\"" H (c) "\"]},\"session_id\":\"s\"}" },
  { "{\"_id\":\"d\",\"_rev\":\"2-" H (a) "\",\"_deleted\":true,\"_revisions\":{\"start\":2,\"ids\":"
                                         "[\"" H (a) "\",\"" H (d) "\"]}}" },
  { "{\"_id\":\"b\",\"_rev\":\"3-" H (a) "\",\"patient_id\":\"q\"}" },
  { NULL },
  /* Stemming (revs_limit 2 from here on). */
  { "{\"_id\":\"s\",\"_rev\":\"5-" H (e) "\",\"_revisions\":{\"start\":5,\"ids\":[\"" H (
      e) "\",\"" H (d) "\",\"" H (c) "\",\"" H (b) "\",\"" H (a) "\"]},\"type\":\"stem\"}" },
  { "{\"_id\":\"a\",\"_rev\":\"4-" H (e) "\",\"_revisions\":{\"start\":4,\"ids\":[\"" H (
      e) "\",\"" H (d) "\",\"" H (c) "\",\"" H (a) "\"]},\"type\":\"note4\"}" },
  { NULL },
};
#undef H

static const char *const revision_ids[] = { "a", "b", "c", "d", "e", "f", "s", "_design/f", NULL };

static char *
results_string (GPtrArray *results)
{
  GString *s = g_string_new (NULL);

  for (guint i = 0; i < results->len; i++)
    {
      g_autofree char *r = hb_test_to_string (g_ptr_array_index (results, i));

      g_string_append_printf (s, "%s\n", r);
    }
  return g_string_free (s, FALSE);
}

/* What a store holds, as text: the same after the same writes whatever the keys. */
static char *
store_state (HbStore *store, const char *path)
{
  GString *s = g_string_new (NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes = hb_store_changes_sync (store, 0, 0, NULL, &error);
  g_autoptr (GPtrArray) texts = NULL;
  g_autofree char *changes_text = NULL;
  const char *values[] = { "note", "note2", "note4",     "other", "stem", "typ\xc3\xa9",
                           "type", "s",     "p\xc3\xa9", "q",     "gone", NULL };

  g_assert_no_error (error);
  changes_text = hb_test_to_string (changes);
  g_string_append_printf (s, "seq %" G_GUINT64_FORMAT "\nchanges %s\n",
                          hb_store_get_update_seq (store), changes_text);
  g_string_append_printf (
      s, "counts %" G_GINT64_FORMAT " %" G_GINT64_FORMAT "\n",
      hb_test_sql_int (path, "SELECT value FROM hb_meta WHERE key = 'doc_count'"),
      hb_test_sql_int (path, "SELECT value FROM hb_meta"
                             " WHERE key = 'deleted_doc_count'"));
  texts = hb_store_get_many_json_sync (
      store, revision_ids, HB_GET_FLAGS_CONFLICTS | HB_GET_FLAGS_REVISIONS | HB_GET_FLAGS_DELETED,
      NULL, &error);
  g_assert_no_error (error);
  for (guint i = 0; i < texts->len; i++)
    {
      gsize len;
      const char *text = g_bytes_get_data (g_ptr_array_index (texts, i), &len);
      g_autoptr (JsonNode) doc
          = hb_store_get_sync (store, revision_ids[i], NULL, HB_GET_FLAGS_CONFLICTS, NULL, NULL);

      g_string_append_printf (s, "doc %.*s\n", (int)len, text);
      /* Every leaf's body, byte for byte through the canonical form. */
      if (doc != NULL && json_object_has_member (json_node_get_object (doc), "_conflicts"))
        {
          JsonArray *conflicts
              = json_object_get_array_member (json_node_get_object (doc), "_conflicts");

          for (guint c = 0; c < json_array_get_length (conflicts); c++)
            {
              const char *rev = json_array_get_string_element (conflicts, c);
              g_autoptr (JsonNode) leaf = hb_store_get_sync (store, revision_ids[i], rev,
                                                             HB_GET_FLAGS_NONE, NULL, &error);
              g_autofree char *leaf_text = NULL;

              g_assert_no_error (error);
              leaf_text = hb_json_to_canonical (leaf, NULL);
              g_string_append_printf (s, "leaf %s\n", leaf_text);
            }
        }
    }
  for (guint f = HB_INDEX_FIELD_TYPE; f <= HB_INDEX_FIELD_PATIENT_ID; f++)
    for (guint v = 0; values[v] != NULL; v++)
      {
        g_autoptr (GPtrArray) found = hb_store_find_sync (store, f, values[v], NULL, &error);

        g_assert_no_error (error);
        g_string_append_printf (s, "find %u %s:", f, values[v]);
        for (guint i = 0; i < found->len; i++)
          {
            g_autofree char *doc = hb_test_to_string (g_ptr_array_index (found, i));

            g_string_append_printf (s, " %s", doc);
          }
        g_string_append_c (s, '\n');
      }
  return g_string_free (s, FALSE);
}

static void
test_put_revisions_json (Fixture *f, gconstpointer data)
{
  g_autofree char *tree_dir = NULL;
  g_autoptr (HbStore) tree_store = hb_test_store_new (&tree_dir);
  g_autofree char *tree_path = g_build_filename (tree_dir, "store.db", NULL);
  guint i = 0, batch = 0;
  g_autofree char *tree_state = NULL;
  g_autofree char *text_state = NULL;
  g_autoptr (GString) states = g_string_new (NULL);

  while (i < G_N_ELEMENTS (revision_batches))
    {
      g_autoptr (GPtrArray) docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
      g_autoptr (GPtrArray) texts = g_ptr_array_new_with_free_func ((GDestroyNotify)g_bytes_unref);
      g_autoptr (GPtrArray) tree_results = NULL;
      g_autoptr (GPtrArray) text_results = NULL;
      g_autoptr (GArray) text_only = g_array_new (FALSE, FALSE, sizeof (guint));
      g_autoptr (GError) error = NULL;
      g_autofree char *tree_string = NULL;
      g_autofree char *text_string = NULL;

      if (batch++ == 2)
        {
          g_assert_true (hb_store_set_revs_limit (tree_store, 2, &error));
          g_assert_true (hb_store_set_revs_limit (f->store, 2, &error));
        }
      for (; revision_batches[i].text != NULL; i++)
        {
          const char *text = revision_batches[i].text;

          g_ptr_array_add (texts, g_bytes_new (text, strlen (text)));
          if (revision_batches[i].text_only)
            {
              guint at = texts->len - 1;

              g_array_append_val (text_only, at);
            }
          else
            g_ptr_array_add (docs, hb_test_json (text));
        }
      i++;

      tree_results = hb_store_bulk_docs_sync (tree_store, docs, FALSE, NULL, &error);
      g_assert_no_error (error);
      text_results = hb_store_put_revisions_json_sync (f->store, texts, NULL, &error);
      g_assert_no_error (error);
      g_assert_cmpuint (text_results->len, ==, texts->len);
      /* The texts the tree path cannot be given are bad requests without an id. */
      for (guint k = text_only->len; k-- > 0;)
        {
          guint at = g_array_index (text_only, guint, k);
          JsonObject *r = json_node_get_object (g_ptr_array_index (text_results, at));

          g_assert_cmpstr (json_object_get_string_member (r, "error"), ==, "bad_request");
          g_assert_false (json_object_has_member (r, "id"));
          g_ptr_array_remove_index (text_results, at);
        }
      tree_string = results_string (tree_results);
      text_string = results_string (text_results);
      g_assert_cmpstr (text_string, ==, tree_string);

      g_free (tree_state);
      g_free (text_state);
      tree_state = store_state (tree_store, tree_path);
      text_state = store_state (f->store, f->path);
      g_assert_cmpstr (text_state, ==, tree_state);
      g_string_append (states, text_state);
    }

  /* The table reaches what it means to: conflicts, a stemmed history, an indexed escape, the
   * body of numbers and escapes. */
  if (g_test_verbose ())
    g_test_message ("%s", states->str);
  g_assert_nonnull (strstr (states->str, "_conflicts"));
  g_assert_nonnull (strstr (states->str, "\"ids\":[\"eeeeeeee\",\"dddddddd\"],\"start\":5"));
  g_assert_nonnull (strstr (states->str, "find 0 typ\xc3\xa9: {"));
  g_assert_nonnull (strstr (states->str, "\"a\":[100,0,0,\"x\u00e9\\n\"],\"b\":1,"));

  hb_store_close (tree_store);
  hb_test_rmdir (tree_dir);
}

int
main (int argc, char *argv[])
{
  g_autofree char *tmp = NULL;

  /* A private temp dir, so the plaintext scan sees only what this process wrote there. */
  tmp = g_dir_make_tmp ("hbsync-tmp-XXXXXX", NULL);
  g_setenv ("TMPDIR", tmp, TRUE);
  private_tmp = tmp;
  g_test_init (&argc, &argv, NULL);

#define ADD(path, func) g_test_add (path, Fixture, NULL, fixture_setup, func, fixture_teardown)
  ADD ("/store/edit/cycle", test_edit_cycle);
  ADD ("/store/edit/deterministic-rev", test_rev_is_deterministic);
  ADD ("/store/edit/golden-revs", test_rev_golden);
  g_test_add_func ("/store/migration/from-v1", test_migration_from_v1);
  ADD ("/store/background-checkpoint", test_background_checkpoint);
  ADD ("/store/edit/invalid", test_invalid_documents);
  ADD ("/store/edit/bulk-results", test_bulk_docs_per_document_results);
  ADD ("/store/edit/conflicting-branch", test_edit_conflicting_branch);
  for (guint i = 0; i < G_N_ELEMENTS (conflict_cases); i++)
    {
      g_autofree char *path = g_strdup_printf ("/store/conflicts/%s", conflict_cases[i].name);
      g_test_add (path, Fixture, &conflict_cases[i], fixture_setup, test_conflicts,
                  fixture_teardown);
    }
  ADD ("/store/history/stemming", test_stemming);
  ADD ("/store/history/revs-diff", test_revs_diff);
  ADD ("/store/history/changes", test_changes);
  ADD ("/store/history/purge-compact", test_purge_and_compact);
  ADD ("/store/local", test_local_documents);
  ADD ("/store/find", test_find);
  ADD ("/store/get-many-json", test_get_many_json);
  ADD ("/store/bodies-follow-winner", test_bodies_follow_winner);
  ADD ("/store/disk/no-plaintext", test_no_plaintext_on_disk);
  ADD ("/store/disk/tamper", test_tamper);
  ADD ("/store/disk/change-pin-keeps-records", test_change_pin_keeps_records);
  ADD ("/store/disk/newer-schema", test_newer_schema_refused);
  ADD ("/store/vault-locked", test_locked_vault);
  ADD ("/store/async", test_async_and_signal);
  ADD ("/store/async-forms", test_async_forms);
  ADD ("/store/concurrent-readers", test_concurrent_readers);
  ADD ("/store/review/two-stores-one-file", test_two_stores_one_file);
  ADD ("/store/review/replay-keeps-counts", test_replay_keeps_counts);
  ADD ("/store/review/stemmed-root-rejoined", test_stemmed_root_rejoined);
  ADD ("/store/review/changed-on-owner-thread", test_changed_on_owner_thread);
  ADD ("/store/review/tampered-columns", test_tampered_columns);
  ADD ("/store/review/corrupt-records-removable", test_corrupt_records_can_be_removed);
  ADD ("/store/review/damaged-document-writes-nothing", test_damaged_document_writes_nothing);
  g_test_add_func ("/store/text/canonical", test_text_canonical);
  g_test_add_func ("/store/text/string-runs", test_text_string_runs);
  g_test_add_func ("/store/text/utf8", test_text_utf8);
  ADD ("/store/text/put-revisions", test_put_revisions_json);
#undef ADD

  {
    int rc = g_test_run ();
    hb_test_rmdir (tmp);
    return rc;
  }
}
