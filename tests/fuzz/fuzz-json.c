/* libFuzzer target: the strict JSON check in front of JSON-GLib (hb_remote_parse_json).
 * Whatever it accepts, JSON-GLib must read, and the project's canonical form of the result
 * must be accepted again and be stable from its first rewriting on. (Not from the input's
 * own: a negative zero is written `-0`, which reads back as the integer 0.) */

#include <stdint.h>
#include <string.h>

#include "hb-json-private.h"
#include "hb-remote-parse-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) node = hb_remote_parse_json (data, size, &error);
  g_autoptr (JsonNode) again = NULL;
  g_autofree char *canonical = NULL;
  g_autofree char *canonical_again = NULL;
  gsize len, len_again;

  if (node == NULL)
    {
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      /* Refused by the strict check, never by JSON-GLib after the check let it through. */
      g_assert_null (strstr (error->message, "JSON-GLib"));
      return 0;
    }
  canonical = hb_json_to_canonical (node, &len);
  again = hb_remote_parse_json ((const guint8 *)canonical, len, &error);
  g_assert_no_error (error);
  g_free (canonical);
  canonical = hb_json_to_canonical (again, &len);
  g_clear_pointer (&again, json_node_unref);
  again = hb_remote_parse_json ((const guint8 *)canonical, len, &error);
  g_assert_no_error (error);
  canonical_again = hb_json_to_canonical (again, &len_again);
  g_assert_cmpmem (canonical, len, canonical_again, len_again);
  return 0;
}
