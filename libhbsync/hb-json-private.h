#pragma once

#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* Canonical JSON: members sorted by the bytes of their names, no insignificant white space,
 * integers in decimal, other numbers in the shortest form that reads back to the same double,
 * strings with only the escapes JSON requires. Two documents equal as JSON values serialize to
 * the same bytes, which is what revision hashes and blind indexes depend on. */
void hb_json_append_canonical (GString *out, JsonNode *node);
void hb_json_append_string (GString *out, const char *s);
/* A document's body: the object without its top-level special members (`_id`, `_rev`, ...). */
void hb_json_append_canonical_body (GString *out, JsonObject *doc);
char *hb_json_to_canonical (JsonNode *node, gsize *out_len);

G_END_DECLS
