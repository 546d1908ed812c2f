/* libFuzzer target: the two ways revisions are read, a `_bulk_get` answer
 * (hb_remote_parse_bulk_get) and an `open_revs` answer (hb_remote_parse_open_revs), from the
 * same arbitrary bytes. */

#include <stdint.h>

#include "hb-remote-parse-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
check_result (HbRemoteBulkGetResult *result)
{
  g_autoptr (HbRemoteBulkGetResult) copy = hb_remote_bulk_get_result_copy (result);

  g_assert_nonnull (result->id);
  g_assert_cmpuint (copy->revisions->len, ==, result->revisions->len);
  for (guint i = 0; i < result->revisions->len; i++)
    {
      HbRemoteRevision *rev = g_ptr_array_index (result->revisions, i);

      g_assert_nonnull (rev->id);
      /* Exactly one of a document or an error. */
      g_assert_true ((rev->doc != NULL) != (rev->error != NULL));
      if (rev->doc != NULL)
        {
          g_assert_nonnull (rev->rev);
          g_assert_true (JSON_NODE_HOLDS_OBJECT (rev->doc));
          g_assert_null (json_node_get_parent (rev->doc));
        }
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GError) open_error = NULL;
  g_autoptr (GPtrArray) results = hb_remote_parse_bulk_get (data, size, &error);
  g_autoptr (HbRemoteBulkGetResult) open
      = hb_remote_parse_open_revs ("doc", data, size, &open_error);

  if (results == NULL)
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
  else
    for (guint i = 0; i < results->len; i++)
      check_result (g_ptr_array_index (results, i));
  if (open == NULL)
    g_assert_error (open_error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
  else
    {
      g_assert_cmpstr (open->id, ==, "doc");
      check_result (open);
    }
  return 0;
}
