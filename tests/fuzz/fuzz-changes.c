/* libFuzzer target: a `_changes` answer (hb_remote_parse_changes) from arbitrary bytes, which
 * must read exactly as JSON-GLib's tree of it does (hb_remote_parse_changes_tree), the rows'
 * documents (`include_docs=true`) included. */

#include <stdint.h>
#include <string.h>

#include "hb-remote-parse-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GError) tree_error = NULL;
  g_autoptr (HbRemoteChanges) changes = hb_remote_parse_changes (data, size, &error);
  g_autoptr (HbRemoteChanges) tree = hb_remote_parse_changes_tree (data, size, &tree_error);
  g_autoptr (HbRemoteChanges) copy = NULL;

  if (changes == NULL)
    {
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
      g_assert_null (tree);
      g_assert_error (tree_error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_cmpstr (error->message, ==, tree_error->message);
      return 0;
    }
  g_assert_no_error (error);
  g_assert_no_error (tree_error);
  g_assert_nonnull (changes->last_seq);
  g_assert_true (json_node_equal (changes->last_seq, tree->last_seq));
  g_assert_cmpint (changes->pending, >=, -1);
  g_assert_cmpint (changes->pending, ==, tree->pending);
  g_assert_cmpuint (changes->results->len, ==, tree->results->len);
  for (guint i = 0; i < changes->results->len; i++)
    {
      HbRemoteChange *row = g_ptr_array_index (changes->results, i);
      HbRemoteChange *tree_row = g_ptr_array_index (tree->results, i);

      g_assert_nonnull (row->id);
      g_assert_cmpstr (row->id, ==, tree_row->id);
      g_assert_nonnull (row->seq);
      g_assert_false (JSON_NODE_HOLDS_NULL (row->seq));
      g_assert_true (json_node_equal (row->seq, tree_row->seq));
      g_assert_nonnull (row->revs);
      g_assert_cmpuint (g_strv_length (row->revs), ==, g_strv_length (tree_row->revs));
      for (guint j = 0; row->revs[j] != NULL; j++)
        {
          g_assert_true (g_utf8_validate (row->revs[j], -1, NULL));
          g_assert_cmpstr (row->revs[j], ==, tree_row->revs[j]);
        }
      g_assert_true (row->deleted == tree_row->deleted);
      /* The document as sent, and the tree's canonical form of it: the same JSON value. */
      g_assert_true ((row->doc == NULL) == (tree_row->doc == NULL));
      if (row->doc != NULL)
        {
          g_autoptr (GString) canonical = g_string_new (NULL);
          gsize len, tree_len;
          const guint8 *text = g_bytes_get_data (row->doc, &len);
          const char *tree_text = g_bytes_get_data (tree_row->doc, &tree_len);

          g_assert_cmpuint (len, >, 0);
          g_assert_cmpint (text[0], ==, '{');
          hb_json_append_canonical_text (canonical, text, len, FALSE);
          g_assert_cmpuint (canonical->len, ==, tree_len);
          g_assert_true (memcmp (canonical->str, tree_text, tree_len) == 0);
        }
    }
  copy = hb_remote_changes_copy (changes);
  g_assert_cmpuint (copy->results->len, ==, changes->results->len);
  return 0;
}
