#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hb-json-private.h"

void
hb_json_append_string (GString *out, const char *s)
{
  static const char hex[] = "0123456789abcdef";
  const guchar *p = (const guchar *)s;
  const guchar *run = p;

  g_string_append_c (out, '"');
  for (; *p != '\0'; p++)
    {
      if (*p >= 0x20 && *p != '"' && *p != '\\')
        continue;
      g_string_append_len (out, (const char *)run, p - run);
      run = p + 1;
      switch (*p)
        {
          case '"':
            g_string_append (out, "\\\"");
            break;
          case '\\':
            g_string_append (out, "\\\\");
            break;
          case '\n':
            g_string_append (out, "\\n");
            break;
          case '\r':
            g_string_append (out, "\\r");
            break;
          case '\t':
            g_string_append (out, "\\t");
            break;
          case '\b':
            g_string_append (out, "\\b");
            break;
          case '\f':
            g_string_append (out, "\\f");
            break;
          default:
            g_string_append (out, "\\u00");
            g_string_append_c (out, hex[*p >> 4]);
            g_string_append_c (out, hex[*p & 0xf]);
            break;
        }
    }
  g_string_append_len (out, (const char *)run, p - run);
  g_string_append_c (out, '"');
}

static void
append_double (GString *out, double d)
{
  char buf[G_ASCII_DTOSTR_BUF_SIZE];

  if (!isfinite (d))
    {
      /* JSON has no representation for these; CouchDB stores null. */
      g_string_append (out, "null");
      return;
    }
  if (d == 0)
    {
      /* Negative zero too: "-0" reads back as the integer 0, which would write "0" and change
       * a revision's hash on the next round trip. */
      g_string_append_c (out, '0');
      return;
    }
  for (int precision = 15; precision <= 17; precision++)
    {
      char fmt[8];

      g_snprintf (fmt, sizeof fmt, "%%.%dg", precision);
      g_ascii_formatd (buf, sizeof buf, fmt, d);
      if (g_ascii_strtod (buf, NULL) == d)
        break;
    }
  g_string_append (out, buf);
}

typedef struct
{
  const char *name;
  JsonNode *node;
} Member;

static int
compare_members (gconstpointer a, gconstpointer b)
{
  return strcmp (((const Member *)a)->name, ((const Member *)b)->name);
}

static void
append_members (GString *out, JsonObject *object, gboolean skip_special)
{
  Member stack[32];
  guint size = json_object_get_size (object);
  g_autofree Member *heap = size > G_N_ELEMENTS (stack) ? g_new (Member, size) : NULL;
  Member *members = heap != NULL ? heap : stack;
  JsonObjectIter iter;
  guint n = 0;

  json_object_iter_init (&iter, object);
  while (json_object_iter_next (&iter, &members[n].name, &members[n].node))
    if (!skip_special || members[n].name[0] != '_')
      n++;
  qsort (members, n, sizeof (Member), compare_members);

  g_string_append_c (out, '{');
  for (guint i = 0; i < n; i++)
    {
      if (i > 0)
        g_string_append_c (out, ',');
      hb_json_append_string (out, members[i].name);
      g_string_append_c (out, ':');
      hb_json_append_canonical (out, members[i].node);
    }
  g_string_append_c (out, '}');
}

static void
append_canonical_object (GString *out, JsonObject *object)
{
  append_members (out, object, FALSE);
}

void
hb_json_append_canonical_body (GString *out, JsonObject *doc)
{
  append_members (out, doc, TRUE);
}

void
hb_json_append_canonical (GString *out, JsonNode *node)
{
  if (node == NULL)
    {
      g_string_append (out, "null");
      return;
    }

  switch (json_node_get_node_type (node))
    {
      case JSON_NODE_OBJECT:
        append_canonical_object (out, json_node_get_object (node));
        break;

      case JSON_NODE_ARRAY:
        {
          JsonArray *array = json_node_get_array (node);
          guint len = json_array_get_length (array);

          g_string_append_c (out, '[');
          for (guint i = 0; i < len; i++)
            {
              if (i > 0)
                g_string_append_c (out, ',');
              hb_json_append_canonical (out, json_array_get_element (array, i));
            }
          g_string_append_c (out, ']');
        }
        break;

      case JSON_NODE_NULL:
        g_string_append (out, "null");
        break;

      case JSON_NODE_VALUE:
        switch (json_node_get_value_type (node))
          {
            case G_TYPE_INT64:
              g_string_append_printf (out, "%" G_GINT64_FORMAT, json_node_get_int (node));
              break;
            case G_TYPE_DOUBLE:
              append_double (out, json_node_get_double (node));
              break;
            case G_TYPE_BOOLEAN:
              g_string_append (out, json_node_get_boolean (node) ? "true" : "false");
              break;
            case G_TYPE_STRING:
              hb_json_append_string (out, json_node_get_string (node));
              break;
            default:
              g_string_append (out, "null");
              break;
          }
        break;

      default:
        g_assert_not_reached ();
    }
}

char *
hb_json_to_canonical (JsonNode *node, gsize *out_len)
{
  GString *out = g_string_sized_new (256);

  hb_json_append_canonical (out, node);
  if (out_len != NULL)
    *out_len = out->len;
  return g_string_free (out, FALSE);
}
