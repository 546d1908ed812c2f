/* libFuzzer target: a `_changes` answer (hb_remote_parse_changes) from arbitrary bytes. */

#include <stdint.h>

#include "hb-remote-parse-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteChanges) changes = hb_remote_parse_changes (data, size, &error);
  g_autoptr (HbRemoteChanges) copy = NULL;

  if (changes == NULL)
    {
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
      return 0;
    }
  g_assert_no_error (error);
  g_assert_nonnull (changes->last_seq);
  g_assert_cmpint (changes->pending, >=, -1);
  for (guint i = 0; i < changes->results->len; i++)
    {
      HbRemoteChange *row = g_ptr_array_index (changes->results, i);

      g_assert_nonnull (row->id);
      g_assert_nonnull (row->seq);
      g_assert_false (JSON_NODE_HOLDS_NULL (row->seq));
      g_assert_nonnull (row->revs);
      for (guint j = 0; row->revs[j] != NULL; j++)
        g_assert_true (g_utf8_validate (row->revs[j], -1, NULL));
    }
  copy = hb_remote_changes_copy (changes);
  g_assert_cmpuint (copy->results->len, ==, changes->results->len);
  return 0;
}
