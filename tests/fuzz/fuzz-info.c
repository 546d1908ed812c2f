/* libFuzzer target: a `GET /db` answer (hb_remote_parse_info) from arbitrary bytes. */

#include <stdint.h>

#include "hb-remote-parse-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = hb_remote_parse_info (data, size, &error);
  g_autoptr (HbRemoteInfo) copy = NULL;

  if (info == NULL)
    {
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
      return 0;
    }
  g_assert_no_error (error);
  g_assert_nonnull (info->db_name);
  g_assert_nonnull (info->update_seq);
  g_assert_false (JSON_NODE_HOLDS_NULL (info->update_seq));
  g_assert_cmpint (info->doc_count, >=, -1);
  copy = hb_remote_info_copy (info);
  g_assert_cmpstr (copy->db_name, ==, info->db_name);
  g_assert_true (json_node_equal (copy->update_seq, info->update_seq));
  return 0;
}
