/* libFuzzer target: the ways revisions are read, a `_bulk_get` answer through JSON-GLib's tree
 * (hb_remote_parse_bulk_get) and walked as text (hb_remote_parse_bulk_get_raw, which the pull
 * uses: both must accept, refuse and read the same), and an `open_revs` answer
 * (hb_remote_parse_open_revs), from the same arbitrary bytes. */

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

/* The walked answer reads as the tree: same revisions, same strings, and each text parses to
 * the tree's document. */
static void
check_raw (GPtrArray *results, GPtrArray *raw)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  guint n = 0;

  for (guint i = 0; i < results->len; i++)
    {
      HbRemoteBulkGetResult *result = g_ptr_array_index (results, i);

      for (guint j = 0; j < result->revisions->len; j++, n++)
        {
          HbRemoteRevision *rev = g_ptr_array_index (result->revisions, j);
          HbRemoteRawRevision *r;

          g_assert_cmpuint (n, <, raw->len);
          r = g_ptr_array_index (raw, n);
          g_assert_cmpstr (rev->id, ==, r->id);
          g_assert_cmpstr (rev->rev, ==, r->rev);
          g_assert_cmpstr (rev->error, ==, r->error);
          g_assert_cmpstr (rev->reason, ==, r->reason);
          g_assert_true ((rev->doc != NULL) == (r->text != NULL));
          if (r->text != NULL)
            {
              gsize len;
              const char *text = g_bytes_get_data (r->text, &len);

              g_assert_true (json_parser_load_from_data (parser, text, (gssize)len, NULL));
              g_assert_true (json_node_equal (json_parser_get_root (parser), rev->doc));
            }
        }
    }
  g_assert_cmpuint (n, ==, raw->len);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GError) raw_error = NULL;
  g_autoptr (GError) open_error = NULL;
  g_autoptr (GPtrArray) results = hb_remote_parse_bulk_get (data, size, &error);
  g_autoptr (GPtrArray) raw = hb_remote_parse_bulk_get_raw (data, size, &raw_error);
  g_autoptr (HbRemoteBulkGetResult) open
      = hb_remote_parse_open_revs ("doc", data, size, &open_error);

  if (results == NULL)
    {
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_null (raw);
      g_assert_error (raw_error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_cmpstr (raw_error->message, ==, error->message);
    }
  else
    {
      g_assert_no_error (raw_error);
      for (guint i = 0; i < results->len; i++)
        check_result (g_ptr_array_index (results, i));
      check_raw (results, raw);
    }
  if (open == NULL)
    g_assert_error (open_error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
  else
    {
      g_assert_cmpstr (open->id, ==, "doc");
      check_result (open);
    }
  return 0;
}
