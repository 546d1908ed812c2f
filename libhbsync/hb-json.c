#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "hb-crypto-private.h"
#include "hb-json-private.h"

/* The first byte from p on (before end) that ends a plain run inside a JSON string: '"', '\\'
 * or a control character; end if there is none: where a writer must escape, and where the
 * check and the walks below must look closer. Documents are mostly string text, written once
 * and read two or three times over on every pull, so sixteen bytes are tested at once where
 * SSE2 is there (every x86-64). */
static inline const guint8 *
string_run_end (const guint8 *p, const guint8 *end)
{
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8 ('"');
  const __m128i backslash = _mm_set1_epi8 ('\\');
  const __m128i control_max = _mm_set1_epi8 (0x1f);

  while (end - p >= 16)
    {
      __m128i v = _mm_loadu_si128 ((const __m128i *)p);
      /* v <= 0x1f, unsigned: min(v, 0x1f) == v. */
      __m128i hit
          = _mm_or_si128 (_mm_or_si128 (_mm_cmpeq_epi8 (v, quote), _mm_cmpeq_epi8 (v, backslash)),
                          _mm_cmpeq_epi8 (_mm_min_epu8 (v, control_max), v));
      int mask = _mm_movemask_epi8 (hit);

      if (mask != 0)
        return p + __builtin_ctz ((unsigned)mask);
      p += 16;
    }
#endif
  while (p < end && *p != '"' && *p != '\\' && *p >= 0x20)
    p++;
  return p;
}

void
hb_json_append_string (GString *out, const char *s)
{
  hb_json_append_string_len (out, s, strlen (s));
}

void
hb_json_append_string_len (GString *out, const char *s, gsize len)
{
  static const char hex[] = "0123456789abcdef";
  const guchar *p = (const guchar *)s;
  const guchar *end = p + len;

  g_string_append_c (out, '"');
  for (;;)
    {
      /* Plain runs are copied whole, found as the checks below find them. */
      const guchar *run_end = string_run_end (p, end);

      g_string_append_len (out, (const char *)p, run_end - p);
      if (run_end >= end)
        break;
      switch (*run_end)
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
            g_string_append_c (out, hex[*run_end >> 4]);
            g_string_append_c (out, hex[*run_end & 0xf]);
            break;
        }
      p = run_end + 1;
    }
  g_string_append_c (out, '"');
}

void
hb_json_append_double (GString *out, double d)
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
              hb_json_append_double (out, json_node_get_double (node));
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

/* ---- strict JSON ----------------------------------------------------------------------- */

/* JSON-GLib 1.6 accepts comments, single quotes, hex numbers and trailing text, wraps integers
 * beyond 64 bits, cuts strings at \u0000 and recurses once per nesting level. Text from a
 * server is therefore checked against RFC 8259 first, with those limits, and JSON-GLib only
 * ever sees what it reads faithfully. */

static void
skip_ws (const guint8 **p, const guint8 *end)
{
  while (*p < end && (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r'))
    (*p)++;
}

static gboolean
scan_hex4 (const guint8 **p, const guint8 *end, guint *out)
{
  guint v = 0;

  if (end - *p < 4)
    return FALSE;
  for (guint i = 0; i < 4; i++)
    {
      int d = g_ascii_xdigit_value ((*p)[i]);
      if (d < 0)
        return FALSE;
      v = v << 4 | (guint)d;
    }
  *p += 4;
  *out = v;
  return TRUE;
}

/* Why strict JSON was refused, for the error message. */
static const char not_json[] = "is not JSON";
static const char too_deep[] = "is JSON nested too deep";
static const char out_of_range[] = "holds a number out of range";
static const char nul_char[] = "holds a NUL character";

/* A \u escape (after the "\u"): no NUL, surrogates only in pairs. */
static gboolean
scan_unicode_escape (const guint8 **p, const guint8 *end, const char **why)
{
  guint u, low;

  if (!scan_hex4 (p, end, &u) || (u >= 0xdc00 && u <= 0xdfff))
    return FALSE;
  if (u == 0)
    {
      *why = nul_char;
      return FALSE;
    }
  if (u < 0xd800 || u > 0xdbff)
    return TRUE;
  if (end - *p < 2 || (*p)[0] != '\\' || (*p)[1] != 'u')
    return FALSE;
  *p += 2;
  return scan_hex4 (p, end, &low) && low >= 0xdc00 && low <= 0xdfff;
}

gboolean
hb_json_utf8_valid (const guint8 *data, gsize len)
{
  const guint8 *p = data, *end = data + len;

  for (;;)
    {
      guint n;

#if defined(__SSE2__)
      const __m128i zero = _mm_setzero_si128 ();

      while (end - p >= 16)
        {
          __m128i v = _mm_loadu_si128 ((const __m128i *)p);

          /* A byte from 0x80 on has its top bit set; a NUL compares equal to zero. */
          if (_mm_movemask_epi8 (_mm_or_si128 (v, _mm_cmpeq_epi8 (v, zero))) != 0)
            break;
          p += 16;
        }
#endif
      while (p < end && *p != 0 && *p < 0x80)
        p++;
      if (p >= end)
        return TRUE;
      if (*p == 0)
        return FALSE;
      /* One multi-byte sequence (or a stray byte), judged by GLib's own rules: no overlong
       * form, no surrogate, nothing past U+10FFFF, no sequence cut short. */
      n = (guint)g_utf8_skip[*p];
      if ((gsize)(end - p) < n || !g_utf8_validate_len ((const char *)p, n, NULL))
        return FALSE;
      p += n;
    }
}

static gboolean
scan_string (const guint8 **p, const guint8 *end, const char **why)
{
  (*p)++;
  while (*p < end)
    {
      guint8 c;

      *p = string_run_end (*p, end);
      if (*p >= end)
        return FALSE;
      c = *(*p)++;

      if (c == '"')
        return TRUE;
      if (c < 0x20)
        return FALSE;
      if (c != '\\')
        continue;
      if (*p >= end)
        return FALSE;
      c = *(*p)++;
      if (c == 'u')
        {
          if (!scan_unicode_escape (p, end, why))
            return FALSE;
        }
      else if (strchr ("\"\\/bfnrt", c) == NULL || c == '\0')
        return FALSE;
    }
  return FALSE;
}

static gboolean
scan_digits (const guint8 **p, const guint8 *end)
{
  const guint8 *start = *p;

  while (*p < end && g_ascii_isdigit (**p))
    (*p)++;
  return *p > start;
}

/* An integer JSON-GLib stores as gint64 without wrapping. */
static gboolean
integer_fits (const guint8 *start, const guint8 *end)
{
  gboolean negative = *start == '-';
  const guint8 *digits = start + negative;
  const char *limit = negative ? "9223372036854775808" : "9223372036854775807";
  gsize n = end - digits;

  /* No leading zeros, so more digits means a larger number. */
  return n < 19 || (n == 19 && memcmp (digits, limit, 19) <= 0);
}

static gboolean
double_is_finite (const guint8 *start, const guint8 *end)
{
  g_autofree char *text = g_strndup ((const char *)start, end - start);

  return isfinite (g_ascii_strtod (text, NULL));
}

static gboolean
scan_number (const guint8 **p, const guint8 *end, const char **why)
{
  const guint8 *start = *p;
  gboolean integer = TRUE;

  if (**p == '-')
    (*p)++;
  if (*p < end && **p == '0')
    (*p)++;
  else if (*p >= end || !g_ascii_isdigit (**p) || !scan_digits (p, end))
    return FALSE;
  if (*p < end && **p == '.')
    {
      (*p)++;
      integer = FALSE;
      if (!scan_digits (p, end))
        return FALSE;
    }
  if (*p < end && (**p == 'e' || **p == 'E'))
    {
      (*p)++;
      integer = FALSE;
      if (*p < end && (**p == '+' || **p == '-'))
        (*p)++;
      if (!scan_digits (p, end))
        return FALSE;
    }
  if (integer ? integer_fits (start, *p) : double_is_finite (start, *p))
    return TRUE;
  *why = out_of_range;
  return FALSE;
}

static gboolean
scan_literal (const guint8 **p, const guint8 *end, const char *word)
{
  gsize n = strlen (word);

  if ((gsize)(end - *p) < n || memcmp (*p, word, n) != 0)
    return FALSE;
  *p += n;
  return TRUE;
}

static gboolean
scan_scalar (const guint8 **p, const guint8 *end, const char **why)
{
  switch (**p)
    {
      case '"':
        return scan_string (p, end, why);
      case 't':
        return scan_literal (p, end, "true");
      case 'f':
        return scan_literal (p, end, "false");
      case 'n':
        return scan_literal (p, end, "null");
      default:
        return scan_number (p, end, why);
    }
}

typedef enum
{
  EXPECT_VALUE,
  EXPECT_VALUE_OR_CLOSE, /* just after '[' */
  EXPECT_KEY,
  EXPECT_KEY_OR_CLOSE, /* just after '{' */
  AFTER_VALUE,
} ScanState;

const char *
hb_json_check_strict (const guint8 *data, gsize len)
{
  guint8 open[HB_JSON_MAX_DEPTH];
  const char *why = not_json;
  guint depth = 0;
  const guint8 *p = data, *end = data + len;
  ScanState state = EXPECT_VALUE;

  for (;;)
    {
      skip_ws (&p, end);
      if (state == AFTER_VALUE && depth == 0)
        return p == end ? NULL : not_json;
      if (p >= end)
        return not_json;
      switch (state)
        {
          case EXPECT_VALUE_OR_CLOSE:
          case EXPECT_VALUE:
            if (state == EXPECT_VALUE_OR_CLOSE && *p == ']')
              {
                p++;
                depth--;
                state = AFTER_VALUE;
              }
            else if (*p == '[' || *p == '{')
              {
                if (depth == HB_JSON_MAX_DEPTH)
                  return too_deep;
                open[depth++] = *p;
                state = *p++ == '[' ? EXPECT_VALUE_OR_CLOSE : EXPECT_KEY_OR_CLOSE;
              }
            else if (scan_scalar (&p, end, &why))
              state = AFTER_VALUE;
            else
              return why;
            break;
          case EXPECT_KEY_OR_CLOSE:
          case EXPECT_KEY:
            if (state == EXPECT_KEY_OR_CLOSE && *p == '}')
              {
                p++;
                depth--;
                state = AFTER_VALUE;
                break;
              }
            if (*p != '"' || !scan_string (&p, end, &why))
              return why;
            skip_ws (&p, end);
            if (p >= end || *p++ != ':')
              return not_json;
            state = EXPECT_VALUE;
            break;
          case AFTER_VALUE:
            if (*p == ',')
              state = open[depth - 1] == '{' ? EXPECT_KEY : EXPECT_VALUE;
            else if (*p == (open[depth - 1] == '{' ? '}' : ']'))
              depth--;
            else
              return not_json;
            p++;
            break;
          default:
            g_assert_not_reached ();
        }
    }
}

/* ---- walking checked JSON ---------------------------------------------------------------- */

/* Once hb_json_check_strict() has accepted a text, a walk over it only needs to find where each
 * value ends (a `_bulk_get` answer's documents, a pulled revision's members). Members are read
 * as JSON-GLib reads them: the last one of a name wins, and a name matches after its escapes
 * are decoded. */

void
hb_json_walk_ws (const guint8 **p, const guint8 *end)
{
  while (*p < end && (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r'))
    (*p)++;
}

/* Past the string at *p (its opening quote). */
static void
walk_string (const guint8 **p, const guint8 *end)
{
  const guint8 *q = *p + 1;

  /* Checked text holds no control character in a string; one that is there anyway (a walk
   * over unchecked text) is stepped over like any other byte. */
  while ((q = string_run_end (q, end)) < end && *q != '"')
    q += *q == '\\' ? 2 : 1;
  *p = MIN (q + 1, end);
}

/* Past the (checked) value at *p. */
void
hb_json_walk_value (const guint8 **p, const guint8 *end)
{
  const guint8 *q = *p;
  guint depth = 0;

  if (q >= end)
    return;
  if (*q == '"')
    {
      walk_string (p, end);
      return;
    }
  if (*q != '{' && *q != '[')
    {
      while (q < end && *q != ',' && *q != '}' && *q != ']' && *q != ' ' && *q != '\t' && *q != '\n'
             && *q != '\r')
        q++;
      *p = q;
      return;
    }
  while (q < end)
    {
      switch (*q)
        {
          case '"':
            walk_string (&q, end);
            continue;
          case '{':
          case '[':
            depth++;
            break;
          case '}':
          case ']':
            if (--depth == 0)
              {
                *p = q + 1;
                return;
              }
            break;
          default:
            break;
        }
      q++;
    }
  *p = end;
}

/* The next member of the object being walked: *p is just past its '{' or past the previous
 * member's value. FALSE, with *p past the '}', when there is none. */
gboolean
hb_json_walk_member (const guint8 **p, const guint8 *end, HbJsonSpan *name, HbJsonSpan *value)
{
  hb_json_walk_ws (p, end);
  if (*p < end && **p == ',')
    {
      (*p)++;
      hb_json_walk_ws (p, end);
    }
  if (*p >= end || **p != '"')
    {
      *p = MIN (*p + 1, end);
      return FALSE;
    }
  name->start = *p;
  walk_string (p, end);
  name->end = *p;
  hb_json_walk_ws (p, end);
  (*p)++; /* ':' */
  hb_json_walk_ws (p, end);
  value->start = *p;
  hb_json_walk_value (p, end);
  value->end = *p;
  return TRUE;
}

/* The next element of the array being walked, like hb_json_walk_member(). */
gboolean
hb_json_walk_element (const guint8 **p, const guint8 *end, HbJsonSpan *value)
{
  hb_json_walk_ws (p, end);
  if (*p < end && **p == ',')
    {
      (*p)++;
      hb_json_walk_ws (p, end);
    }
  if (*p >= end || **p == ']')
    {
      *p = MIN (*p + 1, end);
      return FALSE;
    }
  value->start = *p;
  hb_json_walk_value (p, end);
  value->end = *p;
  return TRUE;
}

gboolean
hb_json_span_is (const HbJsonSpan *value, guint8 first)
{
  return value->start != NULL && value->start < value->end && value->start[0] == first;
}

/* Appends the text of the checked string at @value, its escapes decoded. */
void
hb_json_span_decode (GString *out, const HbJsonSpan *value)
{
  const guint8 *p = value->start + 1, *end = value->end - 1;

  while (p < end)
    {
      const guint8 *backslash = memchr (p, '\\', end - p);
      guint u = 0;

      if (backslash == NULL)
        {
          g_string_append_len (out, (const char *)p, end - p);
          break;
        }
      g_string_append_len (out, (const char *)p, backslash - p);
      p = backslash + 1;
      switch (*p++)
        {
          case 'b':
            g_string_append_c (out, '\b');
            break;
          case 'f':
            g_string_append_c (out, '\f');
            break;
          case 'n':
            g_string_append_c (out, '\n');
            break;
          case 'r':
            g_string_append_c (out, '\r');
            break;
          case 't':
            g_string_append_c (out, '\t');
            break;
          case 'u':
            /* hb_json_check_strict() let through only whole escapes, surrogates in pairs. */
            scan_hex4 (&p, end, &u);
            if (u >= 0xd800 && u <= 0xdbff)
              {
                guint low = 0;

                p += 2;
                scan_hex4 (&p, end, &low);
                u = 0x10000 + ((u - 0xd800) << 10) + (low - 0xdc00);
              }
            g_string_append_unichar (out, u);
            break;
          default: /* '"', '\\', '/' */
            g_string_append_c (out, (char)p[-1]);
            break;
        }
    }
}

char *
hb_json_span_string (const HbJsonSpan *value)
{
  const guint8 *p = value->start + 1, *end = value->end - 1;
  GString *out;

  if (memchr (p, '\\', end - p) == NULL)
    return g_strndup ((const char *)p, end - p);
  out = g_string_sized_new (end - p + 1);
  hb_json_span_decode (out, value);
  return g_string_free (out, FALSE);
}

gboolean
hb_json_name_is (const HbJsonSpan *name, const char *wanted)
{
  gsize n = strlen (wanted);
  g_autofree char *decoded = NULL;
  gboolean match;

  if ((gsize)(name->end - name->start) == n + 2 && memcmp (name->start + 1, wanted, n) == 0)
    return TRUE;
  if (memchr (name->start, '\\', name->end - name->start) == NULL)
    return FALSE;
  decoded = hb_json_span_string (name);
  match = strcmp (decoded, wanted) == 0;
  hb_wipe (decoded, strlen (decoded));
  return match;
}

/* The members named in @names (NULL-terminated) of the checked object at @object: the last of
 * each name, or a NULL start when absent. */
void
hb_json_walk_object (const HbJsonSpan *object, const char *const *names, HbJsonSpan *values)
{
  const guint8 *p = object->start + 1;
  HbJsonSpan name, value;

  for (guint i = 0; names[i] != NULL; i++)
    values[i].start = values[i].end = NULL;
  while (hb_json_walk_member (&p, object->end, &name, &value))
    for (guint i = 0; names[i] != NULL; i++)
      if (hb_json_name_is (&name, names[i]))
        {
          values[i] = value;
          break;
        }
}

/* ---- canonical form of checked text -------------------------------------------------------- */

/* hb_json_append_canonical() of JSON-GLib's tree, read off the text instead. What JSON-GLib
 * 1.6 makes of checked text: members by their decoded names, the last of a name winning;
 * numbers with a fraction or an exponent as doubles (g_ascii_strtod() reads them the same),
 * others as gint64 (the text of which is its decimal form, but for "-0"); strings decoded. */

typedef struct
{
  GString *out;
  GString *scratch; /* decoded strings and numbers, wiped after each use */
} Canon;

typedef struct
{
  const char *name; /* the decoded name, NUL-terminated when decoded (escaped is TRUE) */
  gsize name_len;
  gboolean escaped;
  guint index;
  HbJsonSpan raw; /* the name as written, quotes included */
  HbJsonSpan value;
} TextMember;

static void append_canonical_text (Canon *c, const HbJsonSpan *value);

/* Room for @extra more bytes in @s, moved by hand: GString's own growth would free the old
 * buffer, plaintext, unwiped. */
static void
reserve_wiped (GString *s, gsize extra)
{
  gsize want = s->len + extra + 1;
  gsize size;
  char *str;

  if (want <= s->allocated_len)
    return;
  size = MAX (s->allocated_len * 2, want);
  str = g_malloc (size);
  memcpy (str, s->str, s->len + 1);
  hb_wipe (s->str, s->allocated_len);
  g_free (s->str);
  s->str = str;
  s->allocated_len = size;
}

static void
put (Canon *c, const guint8 *data, gsize len)
{
  reserve_wiped (c->out, len);
  g_string_append_len (c->out, (const char *)data, len);
}

static void
put_c (Canon *c, char ch)
{
  reserve_wiped (c->out, 1);
  g_string_append_c (c->out, ch);
}

static int
compare_text_members (gconstpointer pa, gconstpointer pb)
{
  const TextMember *a = pa, *b = pb;
  int cmp = memcmp (a->name, b->name, MIN (a->name_len, b->name_len));

  /* Byte order, a prefix first: strcmp() of the decoded names (which hold no NUL). */
  if (cmp != 0)
    return cmp;
  if (a->name_len != b->name_len)
    return a->name_len < b->name_len ? -1 : 1;
  return a->index < b->index ? -1 : a->index > b->index;
}

static void
scratch_wipe (Canon *c)
{
  hb_wipe (c->scratch->str, c->scratch->len);
  g_string_truncate (c->scratch, 0);
}

static void
append_string_text (Canon *c, const HbJsonSpan *value)
{
  if (memchr (value->start, '\\', value->end - value->start) == NULL)
    {
      /* Checked text holds no control character and no '"' inside a string: what
       * hb_json_append_string() would write of it. */
      put (c, value->start, value->end - value->start);
      return;
    }
  reserve_wiped (c->scratch, value->end - value->start);
  hb_json_span_decode (c->scratch, value);
  /* At worst six bytes (\\u00XX) for each, and the quotes. */
  reserve_wiped (c->out, 6 * c->scratch->len + 2);
  hb_json_append_string (c->out, c->scratch->str);
  scratch_wipe (c);
}

static void
append_number_text (Canon *c, const HbJsonSpan *value)
{
  gsize len = value->end - value->start;

  if (memchr (value->start, '.', len) == NULL && memchr (value->start, 'e', len) == NULL
      && memchr (value->start, 'E', len) == NULL)
    {
      /* An integer that fits (checked): its text is its decimal form, but for "-0". */
      if (len == 2 && value->start[0] == '-' && value->start[1] == '0')
        put_c (c, '0');
      else
        put (c, value->start, len);
      return;
    }
  reserve_wiped (c->scratch, len);
  g_string_append_len (c->scratch, (const char *)value->start, len);
  reserve_wiped (c->out, G_ASCII_DTOSTR_BUF_SIZE);
  hb_json_append_double (c->out, g_ascii_strtod (c->scratch->str, NULL));
  scratch_wipe (c);
}

static void
append_object_text (Canon *c, const HbJsonSpan *object, gboolean skip_special)
{
  TextMember stack[32];
  TextMember *members = stack;
  guint n = 0, allocated = G_N_ELEMENTS (stack);
  const guint8 *p = object->start + 1;
  HbJsonSpan name, value;

  while (hb_json_walk_member (&p, object->end, &name, &value))
    {
      TextMember *m;

      if (n == allocated)
        {
          allocated *= 2;
          if (members == stack)
            members = g_memdup2 (stack, sizeof stack);
          members = g_renew (TextMember, members, allocated);
        }
      m = &members[n];
      m->raw = name;
      m->value = value;
      m->index = n;
      m->escaped = memchr (name.start, '\\', name.end - name.start) != NULL;
      if (m->escaped)
        {
          /* Decoding only shortens: no growth, no copy left behind. */
          GString *decoded = g_string_sized_new (name.end - name.start);

          hb_json_span_decode (decoded, &name);
          m->name_len = decoded->len;
          m->name = g_string_free (decoded, FALSE);
        }
      else
        {
          m->name = (const char *)name.start + 1;
          m->name_len = name.end - name.start - 2;
        }
      if (skip_special && m->name_len > 0 && m->name[0] == '_')
        {
          if (m->escaped)
            {
              hb_wipe ((char *)m->name, m->name_len);
              g_free ((char *)m->name);
            }
          continue;
        }
      n++;
    }
  qsort (members, n, sizeof (TextMember), compare_text_members);

  put_c (c, '{');
  for (guint i = 0, written = 0; i < n; i++)
    {
      TextMember *m = &members[i];

      /* Of equal names, only the last (sorted last by index) is JSON-GLib's. */
      if (i + 1 < n && m->name_len == members[i + 1].name_len
          && memcmp (m->name, members[i + 1].name, m->name_len) == 0)
        continue;
      if (written++ > 0)
        put_c (c, ',');
      if (m->escaped)
        {
          reserve_wiped (c->out, 6 * m->name_len + 2);
          hb_json_append_string (c->out, m->name);
        }
      else
        put (c, m->raw.start, m->raw.end - m->raw.start);
      put_c (c, ':');
      append_canonical_text (c, &m->value);
    }
  put_c (c, '}');

  for (guint i = 0; i < n; i++)
    if (members[i].escaped)
      {
        hb_wipe ((char *)members[i].name, members[i].name_len);
        g_free ((char *)members[i].name);
      }
  if (members != stack)
    g_free (members);
}

static void
append_canonical_text (Canon *c, const HbJsonSpan *value)
{
  switch (value->start[0])
    {
      case '{':
        append_object_text (c, value, FALSE);
        break;
      case '[':
        {
          const guint8 *p = value->start + 1;
          HbJsonSpan element;
          gboolean first = TRUE;

          put_c (c, '[');
          while (hb_json_walk_element (&p, value->end, &element))
            {
              if (!first)
                put_c (c, ',');
              first = FALSE;
              append_canonical_text (c, &element);
            }
          put_c (c, ']');
        }
        break;
      case '"':
        append_string_text (c, value);
        break;
      case 't':
      case 'f':
      case 'n':
        /* true, false, null: as written. */
        put (c, value->start, value->end - value->start);
        break;
      default:
        append_number_text (c, value);
        break;
    }
}

void
hb_json_append_canonical_text (GString *out, const guint8 *data, gsize len, gboolean skip_special)
{
  Canon c = { out, g_string_new (NULL) };
  const guint8 *p = data, *end = data + len;
  HbJsonSpan root;

  hb_json_walk_ws (&p, end);
  root.start = p;
  hb_json_walk_value (&p, end);
  root.end = p;
  if (skip_special)
    {
      g_return_if_fail (hb_json_span_is (&root, '{'));
      append_object_text (&c, &root, TRUE);
    }
  else if (root.start < root.end)
    append_canonical_text (&c, &root);
  hb_wipe (c.scratch->str, c.scratch->allocated_len);
  g_string_free (c.scratch, TRUE);
}
