/* libFuzzer target: a `_bulk_docs` answer (hb_remote_parse_bulk_docs) from arbitrary bytes. */

#include <stdint.h>

#include "hb-remote-parse-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) results = hb_remote_parse_bulk_docs (data, size, &error);

  if (results == NULL)
    {
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
      return 0;
    }
  g_assert_no_error (error);
  for (guint i = 0; i < results->len; i++)
    {
      g_autoptr (HbRemoteDocResult) copy
          = hb_remote_doc_result_copy (g_ptr_array_index (results, i));

      g_assert_true (copy->id == NULL || g_utf8_validate (copy->id, -1, NULL));
      g_assert_true (copy->error == NULL || g_utf8_validate (copy->error, -1, NULL));
    }
  return 0;
}
