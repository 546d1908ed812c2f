#pragma once

#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* Canonical JSON: members sorted by the bytes of their names, no insignificant white space,
 * integers in decimal, other numbers in the shortest form that reads back to the same double,
 * strings with only the escapes JSON requires. Two documents equal as JSON values serialize to
 * the same bytes, which is what revision hashes and blind indexes depend on. */
void hb_json_append_canonical (GString *out, JsonNode *node);
void hb_json_append_string (GString *out, const char *s);
/* The same for @len bytes of @s, which need not be NUL-terminated (and must hold no NUL). */
void hb_json_append_string_len (GString *out, const char *s, gsize len);
void hb_json_append_double (GString *out, double d);
/* A document's body: the object without its top-level special members (`_id`, `_rev`, ...). */
void hb_json_append_canonical_body (GString *out, JsonObject *doc);
char *hb_json_to_canonical (JsonNode *node, gsize *out_len);

/* ---- strict JSON text ---- */

/* g_utf8_validate_len (data, len, NULL), with runs of ASCII passed sixteen bytes at a time. */
gboolean hb_json_utf8_valid (const guint8 *data, gsize len);

/* Deeper JSON than this is refused before JSON-GLib's recursive parser sees it. */
#define HB_JSON_MAX_DEPTH 256

/* NULL when @data is one JSON value as RFC 8259 defines it, at most HB_JSON_MAX_DEPTH deep,
 * with no \u0000, integers that fit in gint64 and finite other numbers: exactly what JSON-GLib
 * 1.6 reads faithfully. Else why not, as a predicate ("is not JSON", "holds a NUL character").
 * UTF-8 is not checked here (hb_json_utf8_valid()). */
const char *hb_json_check_strict (const guint8 *data, gsize len);

/* Walking text hb_json_check_strict() accepted, without building a tree. */
typedef struct
{
  const guint8 *start;
  const guint8 *end; /* one past the value */
} HbJsonSpan;

void hb_json_walk_ws (const guint8 **p, const guint8 *end);
/* Past the (checked) value at *p. */
void hb_json_walk_value (const guint8 **p, const guint8 *end);
/* The next member of the object being walked: *p is just past its '{' or past the previous
 * member's value. FALSE, with *p past the '}', when there is none. */
gboolean
hb_json_walk_member (const guint8 **p, const guint8 *end, HbJsonSpan *name, HbJsonSpan *value);
/* The next element of the array being walked, like hb_json_walk_member(). */
gboolean hb_json_walk_element (const guint8 **p, const guint8 *end, HbJsonSpan *value);
gboolean hb_json_span_is (const HbJsonSpan *value, guint8 first);
/* The text of a checked string, its escapes decoded. */
char *hb_json_span_string (const HbJsonSpan *value);
void hb_json_span_decode (GString *out, const HbJsonSpan *value);
/* Whether the checked string @name, decoded, is @wanted. */
gboolean hb_json_name_is (const HbJsonSpan *name, const char *wanted);
/* The members named in @names (NULL-terminated) of the checked object at @object: the last of
 * each name, or a NULL start when absent. */
void hb_json_walk_object (const HbJsonSpan *object, const char *const *names, HbJsonSpan *values);

/* The canonical form of checked text (the JSON value @data .. @data + @len, accepted by
 * hb_json_check_strict() and valid UTF-8): byte for byte what hb_json_append_canonical() writes
 * of JSON-GLib's tree of the same text, without building it. With @skip_special, @data is an
 * object whose top-level members named `_...` are left out, as hb_json_append_canonical_body()
 * does. Decoded copies of the text it needs meanwhile are wiped. */
void
hb_json_append_canonical_text (GString *out, const guint8 *data, gsize len, gboolean skip_special);

G_END_DECLS
