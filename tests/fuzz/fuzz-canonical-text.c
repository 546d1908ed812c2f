/* libFuzzer target: the canonical form written straight from checked text
 * (hb_json_append_canonical_text, what the store seals of a pulled revision) must be, byte for
 * byte, the one written from JSON-GLib's tree of the same text (hb_json_append_canonical), and
 * so for a document's body (the top-level special members left out). */

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
  g_autoptr (GString) tree = NULL;
  g_autoptr (GString) text = NULL;

  if (node == NULL)
    return 0;
  tree = g_string_new (NULL);
  text = g_string_new (NULL);
  hb_json_append_canonical (tree, node);
  hb_json_append_canonical_text (text, data, size, FALSE);
  g_assert_cmpmem (text->str, text->len, tree->str, tree->len);
  if (JSON_NODE_HOLDS_OBJECT (node))
    {
      g_string_truncate (tree, 0);
      g_string_truncate (text, 0);
      hb_json_append_canonical_body (tree, json_node_get_object (node));
      hb_json_append_canonical_text (text, data, size, TRUE);
      g_assert_cmpmem (text->str, text->len, tree->str, tree->len);
    }
  return 0;
}
