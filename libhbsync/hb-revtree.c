#include <string.h>

#include "hb-revtree-private.h"

#define TREE_FORMAT 2

static void
node_clear (gpointer data)
{
  HbRevNode *node = data;

  g_free (node->hash);
}

HbRevTree *
hb_rev_tree_new (void)
{
  HbRevTree *tree = g_new0 (HbRevTree, 1);

  tree->nodes = g_array_new (FALSE, TRUE, sizeof (HbRevNode));
  g_array_set_clear_func (tree->nodes, node_clear);
  return tree;
}

void
hb_rev_tree_free (HbRevTree *tree)
{
  if (tree == NULL)
    return;
  g_array_unref (tree->nodes);
  g_free (tree);
}

gboolean
hb_rev_parse (const char *rev, guint *pos, char **hash)
{
  const char *dash;
  guint64 n;
  char *end = NULL;

  if (rev == NULL || !g_ascii_isdigit (rev[0]))
    return FALSE;
  dash = strchr (rev, '-');
  if (dash == NULL || dash[1] == '\0')
    return FALSE;
  n = g_ascii_strtoull (rev, &end, 10);
  if (end != dash || n == 0 || n > G_MAXINT32)
    return FALSE;
  for (const char *p = dash + 1; *p; p++)
    if (!g_ascii_isgraph (*p))
      return FALSE;
  *pos = (guint)n;
  if (hash != NULL)
    *hash = g_strdup (dash + 1);
  return TRUE;
}

char *
hb_rev_tree_rev_string (HbRevTree *tree, gint index)
{
  HbRevNode *node = hb_rev_tree_node (tree, index);

  return g_strdup_printf ("%u-%s", node->pos, node->hash);
}

gint
hb_rev_tree_find (HbRevTree *tree, guint pos, const char *hash)
{
  for (guint i = 0; i < tree->nodes->len; i++)
    {
      HbRevNode *node = hb_rev_tree_node (tree, i);

      if (node->pos == pos && strcmp (node->hash, hash) == 0)
        return (gint)i;
    }
  return -1;
}

gint
hb_rev_tree_find_rev (HbRevTree *tree, const char *rev)
{
  g_autofree char *hash = NULL;
  guint pos;

  if (!hb_rev_parse (rev, &pos, &hash))
    return -1;
  return hb_rev_tree_find (tree, pos, hash);
}

gboolean
hb_rev_tree_is_leaf (HbRevTree *tree, gint index)
{
  for (guint i = 0; i < tree->nodes->len; i++)
    if (hb_rev_tree_node (tree, i)->parent == index)
      return FALSE;
  return TRUE;
}

static int
compare_leaves (gconstpointer a, gconstpointer b, gpointer user_data)
{
  HbRevTree *tree = user_data;
  HbRevNode *x = hb_rev_tree_node (tree, *(const gint *)a);
  HbRevNode *y = hb_rev_tree_node (tree, *(const gint *)b);

  /* Best first, so the comparison is reversed. */
  if (x->deleted != y->deleted)
    return x->deleted ? 1 : -1;
  if (x->pos != y->pos)
    return x->pos > y->pos ? -1 : 1;
  return -strcmp (x->hash, y->hash);
}

GArray *
hb_rev_tree_leaves (HbRevTree *tree)
{
  guint n = tree->nodes->len;
  g_autofree gboolean *has_child = g_new0 (gboolean, n);
  GArray *leaves = g_array_new (FALSE, FALSE, sizeof (gint));

  for (guint i = 0; i < n; i++)
    {
      gint parent = hb_rev_tree_node (tree, i)->parent;
      if (parent >= 0)
        has_child[parent] = TRUE;
    }
  for (guint i = 0; i < n; i++)
    if (!has_child[i])
      {
        gint idx = (gint)i;
        g_array_append_val (leaves, idx);
      }
  g_array_sort_with_data (leaves, compare_leaves, tree);
  return leaves;
}

/* The first of hb_rev_tree_leaves(), found in one pass without allocating for the common small
 * tree: every read and write asks for it. */
gint
hb_rev_tree_winner (HbRevTree *tree)
{
  guint n = tree->nodes->len;
  gboolean stack[64];
  g_autofree gboolean *heap = n > G_N_ELEMENTS (stack) ? g_new0 (gboolean, n) : NULL;
  gboolean *has_child = heap != NULL ? heap : stack;
  gint best = -1;

  if (heap == NULL)
    memset (stack, 0, sizeof stack);
  for (guint i = 0; i < n; i++)
    {
      gint parent = hb_rev_tree_node (tree, i)->parent;
      if (parent >= 0)
        has_child[parent] = TRUE;
    }
  for (guint i = 0; i < n; i++)
    {
      gint idx = (gint)i;

      /* Strictly better only: on a tie the earlier node wins, as in the stable sort. */
      if (!has_child[i] && (best < 0 || compare_leaves (&idx, &best, tree) < 0))
        best = idx;
    }
  return best;
}

gint
hb_rev_tree_add (HbRevTree *tree, gint parent, guint pos, const char *hash, gboolean deleted)
{
  HbRevNode node = { pos, g_strdup (hash), parent, deleted, -1 };

  g_array_append_val (tree->nodes, node);
  return (gint)tree->nodes->len - 1;
}

/* A root that the history shows to be the child of a revision the tree has (one side stemmed
 * what the other kept) is joined to it, so the branch is one path again, as CouchDB merges. */
static void
join_roots (HbRevTree *tree, guint start, const char *const *ids, guint n_ids)
{
  for (guint j = 0; j + 1 < n_ids; j++)
    {
      gint child = hb_rev_tree_find (tree, start - j, ids[j]);
      gint parent;

      if (child < 0 || hb_rev_tree_node (tree, child)->parent >= 0)
        continue;
      parent = hb_rev_tree_find (tree, start - j - 1, ids[j + 1]);
      if (parent >= 0)
        hb_rev_tree_node (tree, child)->parent = parent;
    }
}

gint
hb_rev_tree_merge_path (HbRevTree *tree,
                        guint start,
                        const char *const *ids,
                        guint n_ids,
                        gboolean deleted,
                        gboolean *added)
{
  gint known = -1;
  guint k;

  g_return_val_if_fail (n_ids > 0 && start >= n_ids, -1);

  /* Find the newest revision of the history that the tree already has; what is newer than it
   * hangs below it, or starts a new root when nothing is known. */
  for (k = 0; k < n_ids; k++)
    {
      known = hb_rev_tree_find (tree, start - k, ids[k]);
      if (known >= 0)
        break;
    }
  *added = (k > 0);
  for (guint j = k; j-- > 0;)
    known = hb_rev_tree_add (tree, known, start - j, ids[j], j == 0 ? deleted : FALSE);
  join_roots (tree, start, ids, n_ids);
  return known;
}

GPtrArray *
hb_rev_tree_path (HbRevTree *tree, gint index)
{
  GPtrArray *path = g_ptr_array_new ();

  for (gint i = index; i >= 0; i = hb_rev_tree_node (tree, i)->parent)
    g_ptr_array_add (path, hb_rev_tree_node (tree, i)->hash);
  return path;
}

static void
remove_marked (HbRevTree *tree, const gboolean *remove, GArray *removed_bodies)
{
  guint n = tree->nodes->len;
  g_autofree gint *new_index = g_new (gint, n);
  GArray *kept = g_array_sized_new (FALSE, TRUE, sizeof (HbRevNode), n);
  gint next = 0;

  g_array_set_clear_func (kept, node_clear);
  for (guint i = 0; i < n; i++)
    new_index[i] = remove[i] ? -1 : next++;

  for (guint i = 0; i < n; i++)
    {
      HbRevNode *node = hb_rev_tree_node (tree, i);

      if (remove[i])
        {
          if (node->body >= 0 && removed_bodies != NULL)
            g_array_append_val (removed_bodies, node->body);
          continue;
        }
      {
        HbRevNode copy = *node;
        copy.parent = node->parent >= 0 ? new_index[node->parent] : -1;
        node->hash = NULL; /* moved into copy */
        g_array_append_val (kept, copy);
      }
    }
  g_array_unref (tree->nodes);
  tree->nodes = kept;
}

void
hb_rev_tree_stem (HbRevTree *tree, guint limit, GArray *removed_bodies)
{
  guint n = tree->nodes->len;
  g_autofree gboolean *remove = NULL;
  g_autoptr (GArray) leaves = NULL;
  gboolean any = FALSE;

  if (limit == 0)
    return;
  remove = g_new (gboolean, n);
  for (guint i = 0; i < n; i++)
    remove[i] = TRUE;

  leaves = hb_rev_tree_leaves (tree);
  for (guint l = 0; l < leaves->len; l++)
    {
      gint i = g_array_index (leaves, gint, l);
      for (guint depth = 0; depth < limit && i >= 0; depth++)
        {
          remove[i] = FALSE;
          i = hb_rev_tree_node (tree, i)->parent;
        }
    }
  for (guint i = 0; i < n; i++)
    any |= remove[i];
  if (any)
    remove_marked (tree, remove, removed_bodies);
}

void
hb_rev_tree_remove_leaf (HbRevTree *tree, gint index, GArray *removed_bodies)
{
  guint n = tree->nodes->len;
  g_autofree gboolean *remove = g_new0 (gboolean, n);
  g_autofree guint *children = g_new0 (guint, n);

  for (guint i = 0; i < n; i++)
    {
      gint parent = hb_rev_tree_node (tree, i)->parent;
      if (parent >= 0)
        children[parent]++;
    }
  for (gint i = index; i >= 0;)
    {
      gint parent = hb_rev_tree_node (tree, i)->parent;

      remove[i] = TRUE;
      if (parent < 0 || --children[parent] > 0)
        break;
      i = parent;
    }
  remove_marked (tree, remove, removed_bodies);
}

/* The sealed form: format byte, id, node count, then per node its position, parent, deletion
 * flag, body row and hash, little-endian and length-prefixed. Read back with bounds checks:
 * the record is authenticated, but a bug elsewhere must not become an overread here. */

static void
put_u32 (GByteArray *out, guint32 v)
{
  guint8 b[4] = { v, v >> 8, v >> 16, v >> 24 };

  g_byte_array_append (out, b, 4);
}

static void
put_bytes (GByteArray *out, const char *s)
{
  gsize len = strlen (s);

  put_u32 (out, (guint32)len);
  g_byte_array_append (out, (const guint8 *)s, len);
}

GBytes *
hb_rev_tree_serialize (HbRevTree *tree, const char *id)
{
  GByteArray *out = g_byte_array_sized_new (64 + strlen (id) + tree->nodes->len * 56);
  guint8 format = TREE_FORMAT;

  g_byte_array_append (out, &format, 1);
  put_bytes (out, id);
  put_u32 (out, tree->nodes->len);
  for (guint i = 0; i < tree->nodes->len; i++)
    {
      HbRevNode *node = hb_rev_tree_node (tree, i);
      guint8 deleted = node->deleted ? 1 : 0;

      put_u32 (out, node->pos);
      put_u32 (out, (guint32)node->parent);
      g_byte_array_append (out, &deleted, 1);
      put_u32 (out, (guint32)((guint64)node->body & 0xffffffff));
      put_u32 (out, (guint32)((guint64)node->body >> 32));
      put_bytes (out, node->hash);
    }
  return g_byte_array_free_to_bytes (out);
}

typedef struct
{
  const guint8 *p;
  const guint8 *end;
} Reader;

static gboolean
get_u32 (Reader *r, guint32 *v)
{
  if (r->end - r->p < 4)
    return FALSE;
  *v = r->p[0] | (guint32)r->p[1] << 8 | (guint32)r->p[2] << 16 | (guint32)r->p[3] << 24;
  r->p += 4;
  return TRUE;
}

/* A length-prefixed string holding no NUL, in place. */
static gboolean
get_span (Reader *r, const char **s, gsize *s_len)
{
  guint32 len;

  if (!get_u32 (r, &len) || (gsize)(r->end - r->p) < len || memchr (r->p, 0, len) != NULL)
    return FALSE;
  *s = (const char *)r->p;
  *s_len = len;
  r->p += len;
  return TRUE;
}

/* A serialized node, its hash in place. */
typedef struct
{
  guint32 pos;
  gint32 parent;
  gboolean deleted;
  gboolean has_child; /* for hb_rev_tree_peek_winner() */
  gint64 body;
  const char *hash;
  gsize hash_len;
} RawNode;

/* The format byte, the id and the node count of a tree of @len bytes. */
static gboolean
get_head (Reader *r, gsize len, const char **id, gsize *id_len, guint32 *n)
{
  return len >= 1 && *r->p++ == TREE_FORMAT && get_span (r, id, id_len) && get_u32 (r, n)
         && *n <= len;
}

/* One node of a tree of @n nodes, its parent checked to be in the tree and its position > 0. */
static gboolean
get_node (Reader *r, guint32 n, RawNode *node)
{
  guint32 parent, lo, hi;

  if (!get_u32 (r, &node->pos) || !get_u32 (r, &parent) || r->p >= r->end)
    return FALSE;
  node->deleted = *r->p++ != 0;
  node->parent = (gint32)parent;
  node->has_child = FALSE;
  if (!get_u32 (r, &lo) || !get_u32 (r, &hi) || !get_span (r, &node->hash, &node->hash_len))
    return FALSE;
  node->body = (gint64)((guint64)hi << 32 | lo);
  return node->parent >= -1 && node->parent < (gint)n && node->pos != 0;
}

HbRevTree *
hb_rev_tree_deserialize (const guint8 *data, gsize len, char **out_id)
{
  Reader r = { data, data + len };
  g_autoptr (HbRevTree) tree = hb_rev_tree_new ();
  const char *id;
  gsize id_len;
  guint32 n;

  if (!get_head (&r, len, &id, &id_len, &n))
    return NULL;
  for (guint32 i = 0; i < n; i++)
    {
      RawNode raw;
      HbRevNode node;

      if (!get_node (&r, n, &raw))
        return NULL;
      node.pos = raw.pos;
      node.hash = g_strndup (raw.hash, raw.hash_len);
      node.parent = raw.parent;
      node.deleted = raw.deleted;
      node.body = raw.body;
      g_array_append_val (tree->nodes, node);
    }
  if (r.p != r.end)
    return NULL;
  /* Positions grow by one from parent to child, which also rules out cycles. */
  for (guint32 i = 0; i < n; i++)
    {
      HbRevNode *node = hb_rev_tree_node (tree, i);
      if (node->parent >= 0 && hb_rev_tree_node (tree, node->parent)->pos + 1 != node->pos)
        return NULL;
    }
  if (out_id != NULL)
    *out_id = g_strndup (id, id_len);
  return g_steal_pointer (&tree);
}

/* compare_leaves() on spans: the hashes hold no NUL, so this orders them as strcmp() does. */
static gboolean
peek_better (const RawNode *x, const RawNode *y)
{
  int c;

  if (x->deleted != y->deleted)
    return !x->deleted;
  if (x->pos != y->pos)
    return x->pos > y->pos;
  c = memcmp (x->hash, y->hash, MIN (x->hash_len, y->hash_len));
  return c != 0 ? c > 0 : x->hash_len > y->hash_len;
}

gboolean
hb_rev_tree_peek_winner (const guint8 *data, gsize len, HbRevPeek *out)
{
  Reader r = { data, data + len };
  RawNode nodes[HB_REV_PEEK_MAX_NODES];
  const RawNode *best = NULL;
  guint32 n;

  /* The checks of hb_rev_tree_deserialize(), through the same readers. */
  if (!get_head (&r, len, &out->id, &out->id_len, &n) || n > HB_REV_PEEK_MAX_NODES)
    return FALSE;
  for (guint32 i = 0; i < n; i++)
    if (!get_node (&r, n, &nodes[i]))
      return FALSE;
  if (r.p != r.end)
    return FALSE;
  for (guint32 i = 0; i < n; i++)
    if (nodes[i].parent >= 0)
      {
        if (nodes[nodes[i].parent].pos + 1 != nodes[i].pos)
          return FALSE;
        nodes[nodes[i].parent].has_child = TRUE;
      }
  /* Strictly better only: on a tie the earlier node wins, as in hb_rev_tree_winner(). */
  for (guint32 i = 0; i < n; i++)
    if (!nodes[i].has_child && (best == NULL || peek_better (&nodes[i], best)))
      best = &nodes[i];
  if (best == NULL)
    return FALSE;
  out->pos = best->pos;
  out->hash = best->hash;
  out->hash_len = best->hash_len;
  out->deleted = best->deleted;
  out->body = best->body;
  return TRUE;
}
