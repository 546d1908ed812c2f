/* libFuzzer target: a `_revs_diff` answer (hb_remote_parse_revs_diff) from arbitrary bytes. */

#include <stdint.h>

#include "hb-remote-parse-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GHashTable) diff = hb_remote_parse_revs_diff (data, size, &error);
  GHashTableIter iter;
  gpointer id, value;

  if (diff == NULL)
    {
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
      return 0;
    }
  g_assert_no_error (error);
  g_hash_table_iter_init (&iter, diff);
  while (g_hash_table_iter_next (&iter, &id, &value))
    {
      HbRemoteRevsDiff *entry = value;
      g_autoptr (HbRemoteRevsDiff) copy = hb_remote_revs_diff_copy (entry);

      g_assert_nonnull (id);
      g_assert_nonnull (entry->missing);
      g_assert_nonnull (entry->possible_ancestors);
      g_assert_cmpuint (g_strv_length (copy->missing), ==, g_strv_length (entry->missing));
    }
  return 0;
}
