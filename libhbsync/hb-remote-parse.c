/* What HbRemote reads from a server: strict JSON first, then the shape of each CouchDB answer,
 * into the boxed result types of hb-remote.h. */

#include <errno.h>
#include <libsoup/soup.h>
#include <math.h>
#include <string.h>

#include "hb-crypto-private.h"
#include "hb-remote-parse-private.h"

/* ---- result types ---------------------------------------------------------------------- */

static JsonNode *
node_copy0 (JsonNode *node)
{
  return node != NULL ? json_node_copy (node) : NULL;
}

/**
 * hb_remote_info_copy:
 * @info: a database description
 *
 * Returns: (transfer full): a copy of @info; JSON values are shared
 */
HbRemoteInfo *
hb_remote_info_copy (const HbRemoteInfo *info)
{
  HbRemoteInfo *copy;

  g_return_val_if_fail (info != NULL, NULL);
  copy = g_new0 (HbRemoteInfo, 1);
  copy->db_name = g_strdup (info->db_name);
  copy->update_seq = node_copy0 (info->update_seq);
  copy->instance_start_time = g_strdup (info->instance_start_time);
  copy->doc_count = info->doc_count;
  return copy;
}

/**
 * hb_remote_info_free:
 * @info: (nullable): a database description
 *
 * Frees @info.
 */
void
hb_remote_info_free (HbRemoteInfo *info)
{
  if (info == NULL)
    return;
  g_free (info->db_name);
  g_clear_pointer (&info->update_seq, json_node_unref);
  g_free (info->instance_start_time);
  g_free (info);
}

G_DEFINE_BOXED_TYPE (HbRemoteInfo, hb_remote_info, hb_remote_info_copy, hb_remote_info_free)

/**
 * hb_remote_change_copy:
 * @change: a `_changes` row
 *
 * Returns: (transfer full): a copy of @change; JSON values are shared
 */
HbRemoteChange *
hb_remote_change_copy (const HbRemoteChange *change)
{
  HbRemoteChange *copy;

  g_return_val_if_fail (change != NULL, NULL);
  copy = g_new0 (HbRemoteChange, 1);
  copy->id = g_strdup (change->id);
  copy->seq = node_copy0 (change->seq);
  copy->revs = g_strdupv (change->revs);
  copy->deleted = change->deleted;
  copy->doc = change->doc != NULL ? g_bytes_ref (change->doc) : NULL;
  return copy;
}

/**
 * hb_remote_change_free:
 * @change: (nullable): a `_changes` row
 *
 * Frees @change.
 */
void
hb_remote_change_free (HbRemoteChange *change)
{
  if (change == NULL)
    return;
  g_free (change->id);
  g_clear_pointer (&change->seq, json_node_unref);
  g_strfreev (change->revs);
  g_clear_pointer (&change->doc, g_bytes_unref);
  g_free (change);
}

G_DEFINE_BOXED_TYPE (HbRemoteChange, hb_remote_change, hb_remote_change_copy, hb_remote_change_free)

static gpointer
copy_change (gconstpointer change, gpointer user_data)
{
  return hb_remote_change_copy (change);
}

/**
 * hb_remote_changes_copy:
 * @changes: a `_changes` answer
 *
 * Returns: (transfer full): a copy of @changes; JSON values are shared
 */
HbRemoteChanges *
hb_remote_changes_copy (const HbRemoteChanges *changes)
{
  HbRemoteChanges *copy;

  g_return_val_if_fail (changes != NULL, NULL);
  copy = g_new0 (HbRemoteChanges, 1);
  copy->results = g_ptr_array_copy (changes->results, copy_change, NULL);
  copy->last_seq = node_copy0 (changes->last_seq);
  copy->pending = changes->pending;
  return copy;
}

/**
 * hb_remote_changes_free:
 * @changes: (nullable): a `_changes` answer
 *
 * Frees @changes.
 */
void
hb_remote_changes_free (HbRemoteChanges *changes)
{
  if (changes == NULL)
    return;
  g_clear_pointer (&changes->results, g_ptr_array_unref);
  g_clear_pointer (&changes->last_seq, json_node_unref);
  g_free (changes);
}

G_DEFINE_BOXED_TYPE (HbRemoteChanges,
                     hb_remote_changes,
                     hb_remote_changes_copy,
                     hb_remote_changes_free)

/**
 * hb_remote_revs_diff_copy:
 * @diff: one document's `_revs_diff` answer
 *
 * Returns: (transfer full): a copy of @diff
 */
HbRemoteRevsDiff *
hb_remote_revs_diff_copy (const HbRemoteRevsDiff *diff)
{
  HbRemoteRevsDiff *copy;

  g_return_val_if_fail (diff != NULL, NULL);
  copy = g_new0 (HbRemoteRevsDiff, 1);
  copy->missing = g_strdupv (diff->missing);
  copy->possible_ancestors = g_strdupv (diff->possible_ancestors);
  return copy;
}

/**
 * hb_remote_revs_diff_free:
 * @diff: (nullable): one document's `_revs_diff` answer
 *
 * Frees @diff.
 */
void
hb_remote_revs_diff_free (HbRemoteRevsDiff *diff)
{
  if (diff == NULL)
    return;
  g_strfreev (diff->missing);
  g_strfreev (diff->possible_ancestors);
  g_free (diff);
}

G_DEFINE_BOXED_TYPE (HbRemoteRevsDiff,
                     hb_remote_revs_diff,
                     hb_remote_revs_diff_copy,
                     hb_remote_revs_diff_free)

/**
 * hb_remote_doc_result_copy:
 * @result: one `_bulk_docs` entry
 *
 * Returns: (transfer full): a copy of @result
 */
HbRemoteDocResult *
hb_remote_doc_result_copy (const HbRemoteDocResult *result)
{
  HbRemoteDocResult *copy;

  g_return_val_if_fail (result != NULL, NULL);
  copy = g_new0 (HbRemoteDocResult, 1);
  copy->id = g_strdup (result->id);
  copy->rev = g_strdup (result->rev);
  copy->error = g_strdup (result->error);
  copy->reason = g_strdup (result->reason);
  return copy;
}

/**
 * hb_remote_doc_result_free:
 * @result: (nullable): one `_bulk_docs` entry
 *
 * Frees @result.
 */
void
hb_remote_doc_result_free (HbRemoteDocResult *result)
{
  if (result == NULL)
    return;
  g_free (result->id);
  g_free (result->rev);
  g_free (result->error);
  g_free (result->reason);
  g_free (result);
}

G_DEFINE_BOXED_TYPE (HbRemoteDocResult,
                     hb_remote_doc_result,
                     hb_remote_doc_result_copy,
                     hb_remote_doc_result_free)

/**
 * hb_remote_revision_copy:
 * @revision: one revision read
 *
 * Returns: (transfer full): a copy of @revision; the document is shared
 */
HbRemoteRevision *
hb_remote_revision_copy (const HbRemoteRevision *revision)
{
  HbRemoteRevision *copy;

  g_return_val_if_fail (revision != NULL, NULL);
  copy = g_new0 (HbRemoteRevision, 1);
  copy->id = g_strdup (revision->id);
  copy->rev = g_strdup (revision->rev);
  copy->doc = node_copy0 (revision->doc);
  copy->error = g_strdup (revision->error);
  copy->reason = g_strdup (revision->reason);
  return copy;
}

/**
 * hb_remote_revision_free:
 * @revision: (nullable): one revision read
 *
 * Frees @revision.
 */
void
hb_remote_revision_free (HbRemoteRevision *revision)
{
  if (revision == NULL)
    return;
  g_free (revision->id);
  g_free (revision->rev);
  g_clear_pointer (&revision->doc, json_node_unref);
  g_free (revision->error);
  g_free (revision->reason);
  g_free (revision);
}

G_DEFINE_BOXED_TYPE (HbRemoteRevision,
                     hb_remote_revision,
                     hb_remote_revision_copy,
                     hb_remote_revision_free)

static gpointer
copy_revision (gconstpointer revision, gpointer user_data)
{
  return hb_remote_revision_copy (revision);
}

/**
 * hb_remote_bulk_get_result_copy:
 * @result: one document's revisions
 *
 * Returns: (transfer full): a copy of @result; documents are shared
 */
HbRemoteBulkGetResult *
hb_remote_bulk_get_result_copy (const HbRemoteBulkGetResult *result)
{
  HbRemoteBulkGetResult *copy;

  g_return_val_if_fail (result != NULL, NULL);
  copy = g_new0 (HbRemoteBulkGetResult, 1);
  copy->id = g_strdup (result->id);
  copy->revisions = g_ptr_array_copy (result->revisions, copy_revision, NULL);
  return copy;
}

/**
 * hb_remote_bulk_get_result_free:
 * @result: (nullable): one document's revisions
 *
 * Frees @result.
 */
void
hb_remote_bulk_get_result_free (HbRemoteBulkGetResult *result)
{
  if (result == NULL)
    return;
  g_free (result->id);
  g_clear_pointer (&result->revisions, g_ptr_array_unref);
  g_free (result);
}

G_DEFINE_BOXED_TYPE (HbRemoteBulkGetResult,
                     hb_remote_bulk_get_result,
                     hb_remote_bulk_get_result_copy,
                     hb_remote_bulk_get_result_free)

/* ---- strict JSON ----------------------------------------------------------------------- */

/* Text from a server is checked with hb_json_check_strict() (hb-json.c) before JSON-GLib, which
 * is lenient and lossy beyond RFC 8259, sees it. */

static gboolean bad (GError **error, const char *what, const char *format, ...)
    G_GNUC_PRINTF (3, 4);

static gboolean
bad (GError **error, const char *what, const char *format, ...)
{
  g_autofree char *problem = NULL;
  va_list args;

  va_start (args, format);
  problem = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE, "%s: %s", what, problem);
  return FALSE;
}

static JsonNode *
parse_json (const char *what, const guint8 *data, gsize len, GError **error)
{
  g_autoptr (JsonParser) parser = NULL;
  const char *why;
  JsonNode *root;

  if (data == NULL || len == 0)
    {
      bad (error, what, "the body is empty");
      return NULL;
    }
  if (len > G_MAXSSIZE || !hb_json_utf8_valid (data, len))
    {
      bad (error, what, "the body is not UTF-8 text");
      return NULL;
    }
  if ((why = hb_json_check_strict (data, len)) != NULL)
    {
      bad (error, what, "the body %s", why);
      return NULL;
    }
  parser = json_parser_new ();
  if (!json_parser_load_from_data (parser, (const char *)data, (gssize)len, NULL)
      || (root = json_parser_get_root (parser)) == NULL)
    {
      bad (error, what, "the body is JSON that JSON-GLib cannot read");
      return NULL;
    }
  return json_node_ref (root);
}

JsonNode *
hb_remote_parse_json (const guint8 *data, gsize len, GError **error)
{
  return parse_json ("JSON", data, len, error);
}

/* ---- shapes ---------------------------------------------------------------------------- */

static gboolean
holds (JsonNode *node, GType type)
{
  return node != NULL && JSON_NODE_HOLDS_VALUE (node) && json_node_get_value_type (node) == type;
}

static gboolean
is_null (JsonNode *node)
{
  return node == NULL || JSON_NODE_HOLDS_NULL (node);
}

static JsonObject *
root_object (const char *what, JsonNode *root, GError **error)
{
  if (root == NULL)
    return NULL;
  if (!JSON_NODE_HOLDS_OBJECT (root))
    {
      bad (error, what, "not a JSON object");
      return NULL;
    }
  return json_node_get_object (root);
}

/* A string member: required, or optional (absent and null give NULL). */
static gboolean
get_string (const char *what,
            JsonObject *obj,
            const char *name,
            gboolean required,
            char **out,
            GError **error)
{
  JsonNode *node = json_object_get_member (obj, name);

  *out = NULL;
  if (is_null (node))
    return !required || bad (error, what, "“%s” is missing", name);
  if (!holds (node, G_TYPE_STRING))
    return bad (error, what, "“%s” is not a string", name);
  *out = g_strdup (json_node_get_string (node));
  return TRUE;
}

/* An integer member; absent or null gives -1. */
static gboolean
get_count (const char *what, JsonObject *obj, const char *name, gint64 *out, GError **error)
{
  JsonNode *node = json_object_get_member (obj, name);

  *out = -1;
  if (is_null (node))
    return TRUE;
  if (!holds (node, G_TYPE_INT64) || json_node_get_int (node) < 0)
    return bad (error, what, "“%s” is not a count", name);
  *out = json_node_get_int (node);
  return TRUE;
}

/* An opaque member (a sequence): any JSON value but null, copied. */
static gboolean
get_opaque (const char *what, JsonObject *obj, const char *name, JsonNode **out, GError **error)
{
  JsonNode *node = json_object_get_member (obj, name);

  *out = NULL;
  if (is_null (node))
    return bad (error, what, "“%s” is missing", name);
  *out = json_node_copy (node);
  return TRUE;
}

static gboolean
get_array (const char *what,
           JsonObject *obj,
           const char *name,
           gboolean required,
           JsonArray **out,
           GError **error)
{
  JsonNode *node = json_object_get_member (obj, name);

  *out = NULL;
  if (is_null (node))
    return !required || bad (error, what, "“%s” is missing", name);
  if (!JSON_NODE_HOLDS_ARRAY (node))
    return bad (error, what, "“%s” is not an array", name);
  *out = json_node_get_array (node);
  return TRUE;
}

/* An array of strings; absent or null gives an empty vector unless required. */
static gboolean
get_strv (const char *what,
          JsonObject *obj,
          const char *name,
          gboolean required,
          char ***out,
          GError **error)
{
  g_autoptr (GStrvBuilder) builder = g_strv_builder_new ();
  JsonArray *array;

  *out = NULL;
  if (!get_array (what, obj, name, required, &array, error))
    return FALSE;
  for (guint i = 0; array != NULL && i < json_array_get_length (array); i++)
    {
      JsonNode *element = json_array_get_element (array, i);
      if (!holds (element, G_TYPE_STRING))
        return bad (error, what, "“%s” holds something other than strings", name);
      g_strv_builder_add (builder, json_node_get_string (element));
    }
  *out = g_strv_builder_end (builder);
  return TRUE;
}

static JsonObject *
element_object (const char *what, JsonArray *array, guint i, const char *name, GError **error)
{
  JsonNode *element = json_array_get_element (array, i);

  if (!JSON_NODE_HOLDS_OBJECT (element))
    {
      bad (error, what, "an entry of “%s” is not an object", name);
      return NULL;
    }
  return json_node_get_object (element);
}

/* ---- answers --------------------------------------------------------------------------- */

HbRemoteInfo *
hb_remote_parse_info (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "database information";
  g_autoptr (JsonNode) root = parse_json (what, data, len, error);
  g_autoptr (HbRemoteInfo) info = g_new0 (HbRemoteInfo, 1);
  JsonObject *obj = root_object (what, root, error);

  if (obj == NULL || !get_string (what, obj, "db_name", TRUE, &info->db_name, error)
      || !get_opaque (what, obj, "update_seq", &info->update_seq, error)
      || !get_string (what, obj, "instance_start_time", FALSE, &info->instance_start_time, error)
      || !get_count (what, obj, "doc_count", &info->doc_count, error))
    return NULL;
  return g_steal_pointer (&info);
}

static void
wipe_text (gpointer text)
{
  hb_wipe (text, strlen (text));
  g_free (text);
}

/* @text (NUL-terminated, @len bytes of plaintext) as bytes wiped when the last reference goes. */
static GBytes *
wiped_bytes_take (char *text, gsize len)
{
  return g_bytes_new_with_free_func (text, len, wipe_text, text);
}

static HbRemoteChange *
parse_change_row (const char *what, JsonObject *row, GError **error)
{
  g_autoptr (HbRemoteChange) change = g_new0 (HbRemoteChange, 1);
  g_autoptr (GStrvBuilder) revs = g_strv_builder_new ();
  JsonNode *deleted = json_object_get_member (row, "deleted");
  JsonNode *doc = json_object_get_member (row, "doc");
  JsonArray *changes;

  if (!get_string (what, row, "id", TRUE, &change->id, error)
      || !get_opaque (what, row, "seq", &change->seq, error)
      || !get_array (what, row, "changes", TRUE, &changes, error))
    return NULL;
  for (guint i = 0; i < json_array_get_length (changes); i++)
    {
      JsonObject *entry = element_object (what, changes, i, "changes", error);
      g_autofree char *rev = NULL;

      if (entry == NULL || !get_string (what, entry, "rev", TRUE, &rev, error))
        return NULL;
      g_strv_builder_add (revs, rev);
    }
  change->revs = g_strv_builder_end (revs);
  if (!is_null (deleted) && !holds (deleted, G_TYPE_BOOLEAN))
    {
      bad (error, what, "“deleted” is not a boolean");
      return NULL;
    }
  change->deleted = !is_null (deleted) && json_node_get_boolean (deleted);
  if (!is_null (doc) && !JSON_NODE_HOLDS_OBJECT (doc))
    {
      bad (error, what, "“doc” is not an object");
      return NULL;
    }
  /* Not the bytes sent, which the tree no longer has: their canonical form. */
  if (!is_null (doc))
    {
      gsize len;
      char *text = hb_json_to_canonical (doc, &len);

      change->doc = wiped_bytes_take (text, len);
    }
  return g_steal_pointer (&change);
}

HbRemoteChanges *
hb_remote_parse_changes_tree (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "_changes answer";
  g_autoptr (JsonNode) root = parse_json (what, data, len, error);
  g_autoptr (HbRemoteChanges) changes = g_new0 (HbRemoteChanges, 1);
  JsonObject *obj = root_object (what, root, error);
  JsonArray *results;

  if (obj == NULL || !get_array (what, obj, "results", TRUE, &results, error)
      || !get_opaque (what, obj, "last_seq", &changes->last_seq, error)
      || !get_count (what, obj, "pending", &changes->pending, error))
    return NULL;
  changes->results = g_ptr_array_new_full (json_array_get_length (results),
                                           (GDestroyNotify)hb_remote_change_free);
  for (guint i = 0; i < json_array_get_length (results); i++)
    {
      JsonObject *row = element_object (what, results, i, "results", error);
      HbRemoteChange *change = row != NULL ? parse_change_row (what, row, error) : NULL;

      if (change == NULL)
        return NULL;
      g_ptr_array_add (changes->results, change);
    }
  return g_steal_pointer (&changes);
}

GHashTable *
hb_remote_parse_revs_diff (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "_revs_diff answer";
  g_autoptr (JsonNode) root = parse_json (what, data, len, error);
  g_autoptr (GHashTable) table = NULL;
  JsonObject *obj = root_object (what, root, error);
  JsonObjectIter iter;
  const char *id;
  JsonNode *value;

  if (obj == NULL)
    return NULL;
  table = g_hash_table_new_full (g_str_hash, g_str_equal, g_free,
                                 (GDestroyNotify)hb_remote_revs_diff_free);
  json_object_iter_init (&iter, obj);
  while (json_object_iter_next (&iter, &id, &value))
    {
      g_autoptr (HbRemoteRevsDiff) diff = g_new0 (HbRemoteRevsDiff, 1);
      JsonObject *entry;

      if (!JSON_NODE_HOLDS_OBJECT (value))
        {
          bad (error, what, "a document's entry is not an object");
          return NULL;
        }
      entry = json_node_get_object (value);
      if (!get_strv (what, entry, "missing", TRUE, &diff->missing, error)
          || !get_strv (what, entry, "possible_ancestors", FALSE, &diff->possible_ancestors, error))
        return NULL;
      g_hash_table_replace (table, g_strdup (id), g_steal_pointer (&diff));
    }
  return g_steal_pointer (&table);
}

GPtrArray *
hb_remote_parse_bulk_docs (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "_bulk_docs answer";
  g_autoptr (JsonNode) root = parse_json (what, data, len, error);
  g_autoptr (GPtrArray) results = NULL;
  JsonArray *array;

  if (root == NULL)
    return NULL;
  if (!JSON_NODE_HOLDS_ARRAY (root))
    {
      bad (error, what, "not a JSON array");
      return NULL;
    }
  array = json_node_get_array (root);
  results = g_ptr_array_new_full (json_array_get_length (array),
                                  (GDestroyNotify)hb_remote_doc_result_free);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonObject *entry = element_object (what, array, i, "the answer", error);
      g_autoptr (HbRemoteDocResult) result = g_new0 (HbRemoteDocResult, 1);

      if (entry == NULL || !get_string (what, entry, "id", FALSE, &result->id, error)
          || !get_string (what, entry, "rev", FALSE, &result->rev, error)
          || !get_string (what, entry, "error", FALSE, &result->error, error)
          || !get_string (what, entry, "reason", FALSE, &result->reason, error))
        return NULL;
      g_ptr_array_add (results, g_steal_pointer (&result));
    }
  return g_steal_pointer (&results);
}

/* A revision as `{"ok": doc}`: the document must name itself. */
static HbRemoteRevision *
ok_revision (const char *what, JsonNode *doc, GError **error)
{
  g_autoptr (HbRemoteRevision) revision = g_new0 (HbRemoteRevision, 1);
  JsonObject *obj;

  if (!JSON_NODE_HOLDS_OBJECT (doc))
    {
      bad (error, what, "a document is not an object");
      return NULL;
    }
  obj = json_node_get_object (doc);
  if (!get_string (what, obj, "_id", TRUE, &revision->id, error)
      || !get_string (what, obj, "_rev", TRUE, &revision->rev, error))
    return NULL;
  /* A node of its own (no parent in the answer's tree) sharing the parsed object. */
  revision->doc = json_node_copy (doc);
  return g_steal_pointer (&revision);
}

static HbRemoteRevision *
error_revision (const char *what, const char *doc_id, JsonNode *node, GError **error)
{
  g_autoptr (HbRemoteRevision) revision = g_new0 (HbRemoteRevision, 1);
  JsonObject *obj;

  if (!JSON_NODE_HOLDS_OBJECT (node))
    {
      bad (error, what, "an error entry is not an object");
      return NULL;
    }
  obj = json_node_get_object (node);
  if (!get_string (what, obj, "id", FALSE, &revision->id, error)
      || !get_string (what, obj, "rev", FALSE, &revision->rev, error)
      || !get_string (what, obj, "error", TRUE, &revision->error, error)
      || !get_string (what, obj, "reason", FALSE, &revision->reason, error))
    return NULL;
  if (revision->id == NULL)
    revision->id = g_strdup (doc_id);
  return g_steal_pointer (&revision);
}

static HbRemoteBulkGetResult *
parse_bulk_get_result (const char *what, JsonObject *obj, GError **error)
{
  g_autoptr (HbRemoteBulkGetResult) result = g_new0 (HbRemoteBulkGetResult, 1);
  JsonArray *docs;

  if (!get_string (what, obj, "id", TRUE, &result->id, error)
      || !get_array (what, obj, "docs", TRUE, &docs, error))
    return NULL;
  result->revisions = g_ptr_array_new_full (json_array_get_length (docs),
                                            (GDestroyNotify)hb_remote_revision_free);
  for (guint i = 0; i < json_array_get_length (docs); i++)
    {
      JsonObject *entry = element_object (what, docs, i, "docs", error);
      JsonNode *ok, *err;
      HbRemoteRevision *revision = NULL;

      if (entry == NULL)
        return NULL;
      ok = json_object_get_member (entry, "ok");
      err = json_object_get_member (entry, "error");
      if (ok != NULL && err == NULL)
        revision = ok_revision (what, ok, error);
      else if (err != NULL && ok == NULL)
        revision = error_revision (what, result->id, err, error);
      else
        bad (error, what, "an entry of “docs” holds neither “ok” nor “error”");
      if (revision == NULL)
        return NULL;
      g_ptr_array_add (result->revisions, revision);
    }
  return g_steal_pointer (&result);
}

GPtrArray *
hb_remote_parse_bulk_get (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "_bulk_get answer";
  g_autoptr (JsonNode) root = parse_json (what, data, len, error);
  g_autoptr (GPtrArray) results = NULL;
  JsonObject *obj = root_object (what, root, error);
  JsonArray *array;

  if (obj == NULL || !get_array (what, obj, "results", TRUE, &array, error))
    return NULL;
  results = g_ptr_array_new_full (json_array_get_length (array),
                                  (GDestroyNotify)hb_remote_bulk_get_result_free);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonObject *entry = element_object (what, array, i, "results", error);
      HbRemoteBulkGetResult *result
          = entry != NULL ? parse_bulk_get_result (what, entry, error) : NULL;

      if (result == NULL)
        return NULL;
      g_ptr_array_add (results, result);
    }
  return g_steal_pointer (&results);
}

/* ---- walking checked JSON ---------------------------------------------------------------- */

/* The `_bulk_get` answer carries every document of a page. Building JSON-GLib's tree of it
 * only to take each document out again costs more than the rest of a pull together, so that
 * answer is walked instead (hb_json_walk_member() and the others of hb-json.c), and each
 * document is handed on as the very bytes the server sent. */

/* As get_string(), of a member hb_json_walk_object() found. */
static gboolean
span_get_string (const char *what,
                 const HbJsonSpan *value,
                 const char *name,
                 gboolean required,
                 char **out,
                 GError **error)
{
  *out = NULL;
  if (value->start == NULL || hb_json_span_is (value, 'n'))
    return !required || bad (error, what, "“%s” is missing", name);
  if (!hb_json_span_is (value, '"'))
    return bad (error, what, "“%s” is not a string", name);
  *out = hb_json_span_string (value);
  return TRUE;
}

/* The body's value, checked as parse_json() checks it, and an object. */
static gboolean
checked_object (const char *what, const guint8 *data, gsize len, HbJsonSpan *root, GError **error)
{
  const char *why;
  const guint8 *p = data;

  if (data == NULL || len == 0)
    return bad (error, what, "the body is empty");
  if (len > G_MAXSSIZE || !hb_json_utf8_valid (data, len))
    return bad (error, what, "the body is not UTF-8 text");
  if ((why = hb_json_check_strict (data, len)) != NULL)
    return bad (error, what, "the body %s", why);
  hb_json_walk_ws (&p, data + len);
  root->start = p;
  hb_json_walk_value (&p, data + len);
  root->end = p;
  if (!hb_json_span_is (root, '{'))
    return bad (error, what, "not a JSON object");
  return TRUE;
}

/* As get_array(), of a member hb_json_walk_object() found. */
static gboolean
span_get_array (const char *what, const HbJsonSpan *value, const char *name, GError **error)
{
  if (value->start == NULL || hb_json_span_is (value, 'n'))
    return bad (error, what, "“%s” is missing", name);
  if (!hb_json_span_is (value, '['))
    return bad (error, what, "“%s” is not an array", name);
  return TRUE;
}

/* The text of @value, NUL-terminated, as bytes wiped when the last reference goes. */
static GBytes *
span_wiped_copy (const HbJsonSpan *value)
{
  gsize len = value->end - value->start;
  char *text = g_malloc (len + 1);

  memcpy (text, value->start, len);
  text[len] = '\0';
  return wiped_bytes_take (text, len);
}

void
hb_remote_raw_revision_free (HbRemoteRawRevision *revision)
{
  if (revision == NULL)
    return;
  g_free (revision->id);
  g_free (revision->rev);
  g_clear_pointer (&revision->text, g_bytes_unref);
  g_free (revision->error);
  g_free (revision->reason);
  g_free (revision);
}

static const char *const ok_names[] = { "_id", "_rev", NULL };
static const char *const error_names[] = { "id", "rev", "error", "reason", NULL };

/* A revision as `{"ok": doc}`, as ok_revision() reads it. */
static HbRemoteRawRevision *
raw_ok_revision (const char *what, const HbJsonSpan *doc, GError **error)
{
  g_autoptr (HbRemoteRawRevision) revision = g_new0 (HbRemoteRawRevision, 1);
  HbJsonSpan values[G_N_ELEMENTS (ok_names) - 1];

  if (!hb_json_span_is (doc, '{'))
    {
      bad (error, what, "a document is not an object");
      return NULL;
    }
  hb_json_walk_object (doc, ok_names, values);
  if (!span_get_string (what, &values[0], "_id", TRUE, &revision->id, error)
      || !span_get_string (what, &values[1], "_rev", TRUE, &revision->rev, error))
    return NULL;
  revision->text = span_wiped_copy (doc);
  return g_steal_pointer (&revision);
}

/* An `{"error": {...}}` entry, as error_revision() reads it. */
static HbRemoteRawRevision *
raw_error_revision (const char *what, const char *doc_id, const HbJsonSpan *node, GError **error)
{
  g_autoptr (HbRemoteRawRevision) revision = g_new0 (HbRemoteRawRevision, 1);
  HbJsonSpan values[G_N_ELEMENTS (error_names) - 1];

  if (!hb_json_span_is (node, '{'))
    {
      bad (error, what, "an error entry is not an object");
      return NULL;
    }
  hb_json_walk_object (node, error_names, values);
  if (!span_get_string (what, &values[0], "id", FALSE, &revision->id, error)
      || !span_get_string (what, &values[1], "rev", FALSE, &revision->rev, error)
      || !span_get_string (what, &values[2], "error", TRUE, &revision->error, error)
      || !span_get_string (what, &values[3], "reason", FALSE, &revision->reason, error))
    return NULL;
  if (revision->id == NULL)
    revision->id = g_strdup (doc_id);
  return g_steal_pointer (&revision);
}

/* One entry of `results`, as parse_bulk_get_result() reads it, its revisions added to @out. */
static gboolean
raw_bulk_get_result (const char *what, const HbJsonSpan *entry, GPtrArray *out, GError **error)
{
  static const char *const names[] = { "id", "docs", NULL };
  static const char *const entry_names[] = { "ok", "error", NULL };
  HbJsonSpan values[G_N_ELEMENTS (names) - 1];
  g_autofree char *id = NULL;
  const guint8 *p;
  HbJsonSpan doc;

  if (!hb_json_span_is (entry, '{'))
    return bad (error, what, "an entry of “results” is not an object");
  hb_json_walk_object (entry, names, values);
  if (!span_get_string (what, &values[0], "id", TRUE, &id, error))
    return FALSE;
  if (!span_get_array (what, &values[1], "docs", error))
    return FALSE;
  p = values[1].start + 1;
  while (hb_json_walk_element (&p, values[1].end, &doc))
    {
      HbJsonSpan parts[G_N_ELEMENTS (entry_names) - 1];
      HbRemoteRawRevision *revision = NULL;

      if (!hb_json_span_is (&doc, '{'))
        return bad (error, what, "an entry of “docs” is not an object");
      hb_json_walk_object (&doc, entry_names, parts);
      if (parts[0].start != NULL && parts[1].start == NULL)
        revision = raw_ok_revision (what, &parts[0], error);
      else if (parts[1].start != NULL && parts[0].start == NULL)
        revision = raw_error_revision (what, id, &parts[1], error);
      else
        bad (error, what, "an entry of “docs” holds neither “ok” nor “error”");
      if (revision == NULL)
        return FALSE;
      g_ptr_array_add (out, revision);
    }
  return TRUE;
}

/* As get_opaque(): any value but null, as JSON-GLib reads it. */
static gboolean
span_get_opaque (
    const char *what, const HbJsonSpan *value, const char *name, JsonNode **out, GError **error)
{
  const guint8 *p;

  *out = NULL;
  if (value->start == NULL || hb_json_span_is (value, 'n'))
    return bad (error, what, "“%s” is missing", name);
  if (hb_json_span_is (value, '"'))
    {
      g_autofree char *text = hb_json_span_string (value);

      *out = json_node_init_string (json_node_alloc (), text);
      return TRUE;
    }
  /* An integer (checked: it fits in 64 bits) is common enough to skip the parser. */
  for (p = value->start + (value->start[0] == '-'); p < value->end && g_ascii_isdigit (*p); p++)
    ;
  if (p == value->end && p > value->start + (value->start[0] == '-'))
    {
      char digits[24];
      gsize n = value->end - value->start;

      if (n < sizeof digits)
        {
          memcpy (digits, value->start, n);
          digits[n] = '\0';
          *out = json_node_init_int (json_node_alloc (), g_ascii_strtoll (digits, NULL, 10));
          return TRUE;
        }
    }
  *out = parse_json (what, value->start, value->end - value->start, error);
  return *out != NULL;
}

/* As get_count(). */
static gboolean
span_get_count (
    const char *what, const HbJsonSpan *value, const char *name, gint64 *out, GError **error)
{
  g_autoptr (JsonNode) node = NULL;

  *out = -1;
  if (value->start == NULL || hb_json_span_is (value, 'n'))
    return TRUE;
  if (!span_get_opaque (what, value, name, &node, error))
    return FALSE;
  if (!holds (node, G_TYPE_INT64) || json_node_get_int (node) < 0)
    return bad (error, what, "“%s” is not a count", name);
  *out = json_node_get_int (node);
  return TRUE;
}

/* One row of `results`, as parse_change_row() reads it. */
static HbRemoteChange *
walk_change_row (const char *what, const HbJsonSpan *row, GError **error)
{
  static const char *const names[] = { "id", "seq", "changes", "deleted", "doc", NULL };
  static const char *const rev_names[] = { "rev", NULL };
  g_autoptr (HbRemoteChange) change = g_new0 (HbRemoteChange, 1);
  g_autoptr (GPtrArray) revs = g_ptr_array_new_with_free_func (g_free);
  HbJsonSpan values[G_N_ELEMENTS (names) - 1];
  HbJsonSpan entry;
  const guint8 *p;

  if (!hb_json_span_is (row, '{'))
    {
      bad (error, what, "an entry of “results” is not an object");
      return NULL;
    }
  hb_json_walk_object (row, names, values);
  if (!span_get_string (what, &values[0], "id", TRUE, &change->id, error)
      || !span_get_opaque (what, &values[1], "seq", &change->seq, error)
      || !span_get_array (what, &values[2], "changes", error))
    return NULL;
  p = values[2].start + 1;
  while (hb_json_walk_element (&p, values[2].end, &entry))
    {
      HbJsonSpan rev;
      char *text;

      if (!hb_json_span_is (&entry, '{'))
        {
          bad (error, what, "an entry of “changes” is not an object");
          return NULL;
        }
      hb_json_walk_object (&entry, rev_names, &rev);
      if (!span_get_string (what, &rev, "rev", TRUE, &text, error))
        return NULL;
      g_ptr_array_add (revs, text);
    }
  g_ptr_array_add (revs, NULL);
  change->revs = (char **)g_ptr_array_free (g_steal_pointer (&revs), FALSE);
  if (values[3].start != NULL && !hb_json_span_is (&values[3], 'n')
      && !hb_json_span_is (&values[3], 't') && !hb_json_span_is (&values[3], 'f'))
    {
      bad (error, what, "“deleted” is not a boolean");
      return NULL;
    }
  change->deleted = hb_json_span_is (&values[3], 't');
  if (values[4].start != NULL && !hb_json_span_is (&values[4], 'n'))
    {
      if (!hb_json_span_is (&values[4], '{'))
        {
          bad (error, what, "“doc” is not an object");
          return NULL;
        }
      change->doc = span_wiped_copy (&values[4]);
    }
  return g_steal_pointer (&change);
}

HbRemoteChanges *
hb_remote_parse_changes (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "_changes answer";
  static const char *const names[] = { "results", "last_seq", "pending", NULL };
  g_autoptr (HbRemoteChanges) changes = g_new0 (HbRemoteChanges, 1);
  HbJsonSpan root, values[G_N_ELEMENTS (names) - 1], row;
  const guint8 *p;

  if (!checked_object (what, data, len, &root, error))
    return NULL;
  hb_json_walk_object (&root, names, values);
  if (!span_get_array (what, &values[0], "results", error)
      || !span_get_opaque (what, &values[1], "last_seq", &changes->last_seq, error)
      || !span_get_count (what, &values[2], "pending", &changes->pending, error))
    return NULL;
  changes->results = g_ptr_array_new_with_free_func ((GDestroyNotify)hb_remote_change_free);
  p = values[0].start + 1;
  while (hb_json_walk_element (&p, values[0].end, &row))
    {
      HbRemoteChange *change = walk_change_row (what, &row, error);

      if (change == NULL)
        return NULL;
      g_ptr_array_add (changes->results, change);
    }
  return g_steal_pointer (&changes);
}

GPtrArray *
hb_remote_parse_bulk_get_raw (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "_bulk_get answer";
  static const char *const names[] = { "results", NULL };
  g_autoptr (GPtrArray) revisions = NULL;
  HbJsonSpan root, values[1], entry;
  const guint8 *p;

  if (!checked_object (what, data, len, &root, error))
    return NULL;
  hb_json_walk_object (&root, names, values);
  if (!span_get_array (what, &values[0], "results", error))
    return NULL;
  revisions = g_ptr_array_new_with_free_func ((GDestroyNotify)hb_remote_raw_revision_free);
  p = values[0].start + 1;
  while (hb_json_walk_element (&p, values[0].end, &entry))
    if (!raw_bulk_get_result (what, &entry, revisions, error))
      return NULL;
  return g_steal_pointer (&revisions);
}

HbRemoteBulkGetResult *
hb_remote_parse_open_revs (const char *id, const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "open_revs answer";
  g_autoptr (JsonNode) root = parse_json (what, data, len, error);
  g_autoptr (HbRemoteBulkGetResult) result = g_new0 (HbRemoteBulkGetResult, 1);
  JsonArray *array;

  g_return_val_if_fail (id != NULL, NULL);
  if (root == NULL)
    return NULL;
  if (!JSON_NODE_HOLDS_ARRAY (root))
    {
      bad (error, what, "not a JSON array");
      return NULL;
    }
  array = json_node_get_array (root);
  result->id = g_strdup (id);
  result->revisions = g_ptr_array_new_full (json_array_get_length (array),
                                            (GDestroyNotify)hb_remote_revision_free);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonObject *entry = element_object (what, array, i, "the answer", error);
      JsonNode *ok, *missing;
      HbRemoteRevision *revision = NULL;

      if (entry == NULL)
        return NULL;
      ok = json_object_get_member (entry, "ok");
      missing = json_object_get_member (entry, "missing");
      if (ok != NULL && missing == NULL)
        revision = ok_revision (what, ok, error);
      else if (holds (missing, G_TYPE_STRING) && ok == NULL)
        {
          revision = g_new0 (HbRemoteRevision, 1);
          revision->id = g_strdup (id);
          revision->rev = g_strdup (json_node_get_string (missing));
          revision->error = g_strdup ("not_found");
          revision->reason = g_strdup ("missing");
        }
      else
        bad (error, what, "an entry holds neither “ok” nor a “missing” revision");
      if (revision == NULL)
        return NULL;
      g_ptr_array_add (result->revisions, revision);
    }
  return g_steal_pointer (&result);
}

JsonNode *
hb_remote_parse_document (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "document";
  g_autoptr (JsonNode) root = parse_json (what, data, len, error);

  return root_object (what, root, error) != NULL ? g_steal_pointer (&root) : NULL;
}

char *
hb_remote_parse_put_result (const guint8 *data, gsize len, GError **error)
{
  static const char what[] = "write answer";
  g_autoptr (JsonNode) root = parse_json (what, data, len, error);
  JsonObject *obj = root_object (what, root, error);
  char *rev = NULL;

  if (obj == NULL || !get_string (what, obj, "rev", TRUE, &rev, error))
    return NULL;
  return rev;
}

/* ---- errors ---------------------------------------------------------------------------- */

/* At most HB_REMOTE_MAX_QUOTED bytes of a (valid UTF-8) string, cut on a character boundary,
 * with control characters replaced, so a message stays one short line. */
static char *
quotable (const char *s)
{
  GString *out;
  const char *p = s;

  if (s == NULL || *s == '\0')
    return NULL;
  out = g_string_sized_new (MIN (strlen (s), HB_REMOTE_MAX_QUOTED));
  while (*p != '\0')
    {
      const char *next = g_utf8_next_char (p);
      if (out->len + (next - p) > HB_REMOTE_MAX_QUOTED)
        break;
      if ((guchar)*p < 0x20 || *p == 0x7f)
        g_string_append_c (out, ' ');
      else
        g_string_append_len (out, p, next - p);
      p = next;
    }
  return g_string_free (out, FALSE);
}

void
hb_remote_parse_error_body (const guint8 *data, gsize len, char **out_error, char **out_reason)
{
  g_autoptr (JsonNode) root = parse_json ("error", data, len, NULL);
  JsonObject *obj;
  JsonNode *node;

  *out_error = NULL;
  *out_reason = NULL;
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    return;
  obj = json_node_get_object (root);
  node = json_object_get_member (obj, "error");
  if (holds (node, G_TYPE_STRING))
    *out_error = quotable (json_node_get_string (node));
  node = json_object_get_member (obj, "reason");
  if (holds (node, G_TYPE_STRING))
    *out_reason = quotable (json_node_get_string (node));
}

static HbRemoteError
code_for_status (guint status)
{
  switch (status)
    {
      case SOUP_STATUS_BAD_REQUEST:
        return HB_REMOTE_ERROR_BAD_REQUEST;
      case SOUP_STATUS_UNAUTHORIZED:
        return HB_REMOTE_ERROR_UNAUTHORIZED;
      case SOUP_STATUS_FORBIDDEN:
        return HB_REMOTE_ERROR_FORBIDDEN;
      case SOUP_STATUS_NOT_FOUND:
        return HB_REMOTE_ERROR_NOT_FOUND;
      case SOUP_STATUS_METHOD_NOT_ALLOWED:
        return HB_REMOTE_ERROR_METHOD_NOT_ALLOWED;
      case SOUP_STATUS_REQUEST_TIMEOUT:
        return HB_REMOTE_ERROR_TIMEOUT;
      case SOUP_STATUS_CONFLICT:
        return HB_REMOTE_ERROR_CONFLICT;
      case SOUP_STATUS_PRECONDITION_FAILED:
        return HB_REMOTE_ERROR_PRECONDITION_FAILED;
      case SOUP_STATUS_REQUEST_ENTITY_TOO_LARGE:
        return HB_REMOTE_ERROR_TOO_LARGE;
      case 429:
        return HB_REMOTE_ERROR_SERVER;
      case SOUP_STATUS_NOT_IMPLEMENTED:
        return HB_REMOTE_ERROR_NOT_IMPLEMENTED;
      default:
        return status >= 500 && status <= 599 ? HB_REMOTE_ERROR_SERVER : HB_REMOTE_ERROR_FAILED;
    }
}

GError *
hb_remote_status_error (guint status, const char *what, const guint8 *data, gsize len)
{
  g_autofree char *couch_error = NULL;
  g_autofree char *reason = NULL;
  g_autoptr (GString) message = g_string_new (NULL);

  hb_remote_parse_error_body (data, len, &couch_error, &reason);
  g_string_printf (message, "%s: HTTP %u %s", what, status, soup_status_get_phrase (status));
  if (couch_error != NULL)
    g_string_append_printf (message, ": %s", couch_error);
  if (reason != NULL)
    g_string_append_printf (message, " (%s)", reason);
  return g_error_new_literal (HB_REMOTE_ERROR, code_for_status (status), message->str);
}
