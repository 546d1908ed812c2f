/* Revision-tree rules in isolation: winner choice, merging replicated histories, stemming and
 * purging, checked against CouchDB's documented behaviour. */

#include <string.h>

#include "hb-revtree-private.h"

/* Builds a tree from histories, each "N-a N-1-b ..." newest first, merged in order; a leading
 * '!' marks the newest revision deleted. */
static HbRevTree *
tree_from (const char *const *histories)
{
  HbRevTree *tree = hb_rev_tree_new ();

  for (guint h = 0; histories[h] != NULL; h++)
    {
      const char *spec = histories[h];
      gboolean deleted = spec[0] == '!';
      g_auto (GStrv) revs = g_strsplit (spec + (deleted ? 1 : 0), " ", -1);
      g_autoptr (GPtrArray) ids = g_ptr_array_new_with_free_func (g_free);
      guint start = 0;
      gboolean added;

      for (guint i = 0; revs[i] != NULL; i++)
        {
          guint pos;
          char *hash;

          g_assert_true (hb_rev_parse (revs[i], &pos, &hash));
          if (i == 0)
            start = pos;
          g_assert_cmpuint (pos, ==, start - i);
          g_ptr_array_add (ids, hash);
        }
      hb_rev_tree_merge_path (tree, start, (const char *const *)ids->pdata, ids->len, deleted,
                              &added);
    }
  return tree;
}

static char *
leaves_string (HbRevTree *tree)
{
  g_autoptr (GArray) leaves = hb_rev_tree_leaves (tree);
  GString *s = g_string_new (NULL);

  for (guint i = 0; i < leaves->len; i++)
    {
      g_autofree char *rev = hb_rev_tree_rev_string (tree, g_array_index (leaves, gint, i));
      if (i > 0)
        g_string_append_c (s, ' ');
      if (hb_rev_tree_node (tree, g_array_index (leaves, gint, i))->deleted)
        g_string_append_c (s, '!');
      g_string_append (s, rev);
    }
  return g_string_free (s, FALSE);
}

typedef struct
{
  const char *name;
  const char *histories[5];
  const char *leaves; /* best first: the winner, then the rest in CouchDB's order */
} WinnerCase;

static const WinnerCase winner_cases[] = {
  { "single", { "1-a", NULL }, "1-a" },
  { "linear", { "2-b 1-a", NULL }, "2-b" },
  { "higher hash wins at equal depth", { "2-b 1-a", "2-c 1-a", NULL }, "2-c 2-b" },
  { "deeper wins over higher hash", { "3-a 2-b 1-a", "2-f 1-a", NULL }, "3-a 2-f" },
  { "live beats deleted even if deeper", { "!3-z 2-b 1-a", "2-c 1-a", NULL }, "2-c !3-z" },
  { "all deleted: deepest", { "!2-b 1-a", "!3-c 2-x 1-a", NULL }, "!3-c !2-b" },
  { "byte order of hash strings", { "1-9", "1-a", "1-10", NULL }, "1-a 1-9 1-10" },
  { "disjoint roots", { "2-b 1-a", "5-e 4-d", NULL }, "5-e 2-b" },
  { "replay is idempotent", { "2-b 1-a", "2-b 1-a", "1-a", NULL }, "2-b" },
};

static void
test_winner (gconstpointer data)
{
  const WinnerCase *c = data;
  g_autoptr (HbRevTree) tree = tree_from (c->histories);
  g_autofree char *got = leaves_string (tree);

  g_assert_cmpstr (got, ==, c->leaves);
}

static void
test_merge_extends_stemmed_branch (void)
{
  const char *const h[] = { "4-d 3-c", NULL };
  g_autoptr (HbRevTree) tree = tree_from (h);
  const char *const ids[] = { "6-f" + 2, "5-e" + 2, "4-d" + 2, "3-c" + 2, "2-b" + 2 };
  gboolean added;
  gint leaf;
  g_autofree char *got = NULL;

  leaf = hb_rev_tree_merge_path (tree, 6, ids, G_N_ELEMENTS (ids), FALSE, &added);
  g_assert_true (added);
  g_assert_cmpint (hb_rev_tree_node (tree, leaf)->pos, ==, 6);
  got = leaves_string (tree);
  /* Joined at 4-d: one branch, not two. */
  g_assert_cmpstr (got, ==, "6-f");
  g_assert_cmpuint (tree->nodes->len, ==, 4);
}

static void
test_merge_known_leaf_is_noop (void)
{
  const char *const h[] = { "2-b 1-a", NULL };
  g_autoptr (HbRevTree) tree = tree_from (h);
  const char *const ids[] = { "a" };
  gboolean added = TRUE;

  hb_rev_tree_merge_path (tree, 1, ids, 1, FALSE, &added);
  g_assert_false (added);
  g_assert_cmpuint (tree->nodes->len, ==, 2);
}

static void
test_stem (void)
{
  const char *const h[] = { "5-e 4-d 3-c 2-b 1-a", "3-x 2-b 1-a", NULL };
  g_autoptr (HbRevTree) tree = tree_from (h);
  g_autoptr (GArray) removed = g_array_new (FALSE, FALSE, sizeof (gint64));
  g_autofree char *leaves = NULL;
  g_autoptr (GPtrArray) path = NULL;

  hb_rev_tree_node (tree, hb_rev_tree_find_rev (tree, "1-a"))->body = 7;
  hb_rev_tree_stem (tree, 2, removed);
  leaves = leaves_string (tree);
  g_assert_cmpstr (leaves, ==, "5-e 3-x");
  /* 5-e keeps 4-d; 3-x keeps 2-b; 1-a and 3-c are gone with 1-a's body. */
  g_assert_cmpint (hb_rev_tree_find_rev (tree, "1-a"), <, 0);
  g_assert_cmpint (hb_rev_tree_find_rev (tree, "3-c"), <, 0);
  g_assert_cmpint (hb_rev_tree_find_rev (tree, "4-d"), >=, 0);
  g_assert_cmpint (hb_rev_tree_find_rev (tree, "2-b"), >=, 0);
  g_assert_cmpuint (removed->len, ==, 1);
  g_assert_cmpint (g_array_index (removed, gint64, 0), ==, 7);
  path = hb_rev_tree_path (tree, hb_rev_tree_find_rev (tree, "5-e"));
  g_assert_cmpuint (path->len, ==, 2);
}

static void
test_remove_leaf (void)
{
  const char *const h[] = { "3-c 2-b 1-a", "2-x 1-a", NULL };
  g_autoptr (HbRevTree) tree = tree_from (h);
  g_autofree char *leaves = NULL;

  hb_rev_tree_remove_leaf (tree, hb_rev_tree_find_rev (tree, "3-c"), NULL);
  /* 2-b had no other child, so it goes too; 1-a is shared with 2-x and stays. */
  leaves = leaves_string (tree);
  g_assert_cmpstr (leaves, ==, "2-x");
  g_assert_cmpuint (tree->nodes->len, ==, 2);
  hb_rev_tree_remove_leaf (tree, hb_rev_tree_find_rev (tree, "2-x"), NULL);
  g_assert_cmpuint (tree->nodes->len, ==, 0);
}

static void
test_parse (void)
{
  guint pos;
  g_autofree char *hash = NULL;

  g_assert_true (hb_rev_parse ("12-abc", &pos, &hash));
  g_assert_cmpuint (pos, ==, 12);
  g_assert_cmpstr (hash, ==, "abc");
  g_assert_false (hb_rev_parse ("0-abc", &pos, NULL));
  g_assert_false (hb_rev_parse ("x-abc", &pos, NULL));
  g_assert_false (hb_rev_parse ("3-", &pos, NULL));
  g_assert_false (hb_rev_parse ("3", &pos, NULL));
  g_assert_false (hb_rev_parse ("-3-a", &pos, NULL));
  g_assert_false (hb_rev_parse ("3-a b", &pos, NULL));
}

static void
test_serialize_round_trip (void)
{
  const char *const h[] = { "3-c 2-b 1-a", "!2-x 1-a", NULL };
  g_autoptr (HbRevTree) tree = tree_from (h);
  g_autoptr (HbRevTree) back = NULL;
  g_autoptr (GBytes) bytes = NULL;
  g_autofree char *id = NULL;
  g_autofree char *a = NULL;
  g_autofree char *b = NULL;
  gsize len;
  const guint8 *data;

  bytes = hb_rev_tree_serialize (tree, "patient:1");
  data = g_bytes_get_data (bytes, &len);
  back = hb_rev_tree_deserialize (data, len, &id);
  g_assert_nonnull (back);
  g_assert_cmpstr (id, ==, "patient:1");
  a = leaves_string (tree);
  b = leaves_string (back);
  g_assert_cmpstr (a, ==, b);
  /* Garbage never crashes the reader. */
  g_assert_null (hb_rev_tree_deserialize ((const guint8 *)"\xff\xff\xff", 3, NULL));
}

/* hb_rev_tree_peek_winner() on @data says what deserializing it and asking for the winner
 * says: the same id and winner where that works, a refusal where it does not (or where the
 * tree is too big to peek at). */
static void
assert_peek_agrees (const guint8 *data, gsize len)
{
  g_autofree char *id = NULL;
  g_autoptr (HbRevTree) tree = hb_rev_tree_deserialize (data, len, &id);
  HbRevPeek peek;
  gboolean peeked = hb_rev_tree_peek_winner (data, len, &peek);
  gint winner;
  HbRevNode *node;

  if (tree == NULL || tree->nodes->len == 0 || tree->nodes->len > HB_REV_PEEK_MAX_NODES)
    {
      g_assert_false (peeked);
      return;
    }
  g_assert_true (peeked);
  winner = hb_rev_tree_winner (tree);
  g_assert_cmpint (winner, >=, 0);
  node = hb_rev_tree_node (tree, winner);
  g_assert_cmpuint (peek.id_len, ==, strlen (id));
  g_assert_cmpmem (peek.id, peek.id_len, id, strlen (id));
  g_assert_cmpuint (peek.pos, ==, node->pos);
  g_assert_cmpmem (peek.hash, peek.hash_len, node->hash, strlen (node->hash));
  g_assert_cmpint (peek.deleted, ==, node->deleted);
  g_assert_cmpint (peek.body, ==, node->body);
}

static void
test_peek_cases (void)
{
  for (guint i = 0; i < G_N_ELEMENTS (winner_cases); i++)
    {
      g_autoptr (HbRevTree) tree = tree_from (winner_cases[i].histories);
      g_autoptr (GBytes) bytes = NULL;
      g_autoptr (GArray) leaves = hb_rev_tree_leaves (tree);
      g_autofree char *rev = NULL;
      g_autofree char *peeked_rev = NULL;
      HbRevPeek peek;
      gsize len;
      const guint8 *data;

      for (guint k = 0; k < tree->nodes->len; k++)
        hb_rev_tree_node (tree, k)->body = 1000 + k;
      bytes = hb_rev_tree_serialize (tree, "note:\"1\"");
      data = g_bytes_get_data (bytes, &len);
      g_assert_true (hb_rev_tree_peek_winner (data, len, &peek));
      /* The first leaf in CouchDB's order, as the table above gives it. */
      rev = hb_rev_tree_rev_string (tree, g_array_index (leaves, gint, 0));
      peeked_rev = g_strdup_printf ("%u-%.*s", peek.pos, (int)peek.hash_len, peek.hash);
      g_assert_cmpstr (peeked_rev, ==, rev);
      g_assert_cmpint (peek.body, ==, 1000 + g_array_index (leaves, gint, 0));
      g_assert_cmpmem (peek.id, peek.id_len, "note:\"1\"", 8);
      assert_peek_agrees (data, len);
    }
}

/* A random forest: branches off random earlier revisions, deletions, stemmed roots, hashes of
 * random lengths that are prefixes of one another, so every rule of the order is met. */
static HbRevTree *
random_tree (GRand *rand, guint n)
{
  HbRevTree *tree = hb_rev_tree_new ();
  static const char *const hashes[] = { "a", "ab", "abc", "b", "ba", "9", "10", "ff", "f" };

  for (guint i = 0; i < n; i++)
    {
      gint parent = i == 0 || g_rand_int_range (rand, 0, 8) == 0
                        ? -1
                        : g_rand_int_range (rand, 0, (gint32)i);
      guint pos = parent < 0 ? (guint)g_rand_int_range (rand, 1, 4)
                             : hb_rev_tree_node (tree, parent)->pos + 1;
      const char *base = hashes[g_rand_int_range (rand, 0, G_N_ELEMENTS (hashes))];
      /* Mostly bare, so that equal hashes (ties) and prefixes of one another meet. */
      g_autofree char *hash = g_rand_int_range (rand, 0, 3) == 0 ? g_strdup_printf ("%s%u", base, i)
                                                                 : g_strdup (base);
      gint index = hb_rev_tree_add (tree, parent, pos, hash, g_rand_int_range (rand, 0, 3) == 0);

      hb_rev_tree_node (tree, index)->body
          = g_rand_int_range (rand, -1, 3) == 0 ? 0 : (gint64)g_rand_int (rand) << 20;
    }
  return tree;
}

static void
test_peek_random (void)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (20261208);
  guint refused_big = 0;

  for (guint round = 0; round < 3000; round++)
    {
      guint n = round < 2900 ? (guint)g_rand_int_range (rand, 1, 20)
                             : (guint)g_rand_int_range (rand, 60, 90);
      g_autoptr (HbRevTree) tree = random_tree (rand, n);
      g_autoptr (GBytes) bytes = hb_rev_tree_serialize (tree, round % 2 ? "p:1" : "");
      gsize len;
      const guint8 *data = g_bytes_get_data (bytes, &len);
      HbRevPeek peek;

      assert_peek_agrees (data, len);
      if (n > HB_REV_PEEK_MAX_NODES)
        {
          g_assert_false (hb_rev_tree_peek_winner (data, len, &peek));
          refused_big++;
        }
    }
  g_assert_cmpuint (refused_big, >, 0);
}

/* Damaged bytes: every truncation and every byte set to each of a few values. Whatever
 * deserializing refuses, peeking refuses; whatever it reads, peeking reads the same. */
static void
test_peek_damaged (void)
{
  const char *const h[] = { "3-c 2-b 1-a", "!4-x 3-y 2-b 1-a", "2-d 1-a", NULL };
  g_autoptr (HbRevTree) tree = tree_from (h);
  g_autoptr (GBytes) bytes = hb_rev_tree_serialize (tree, "session:7");
  gsize len;
  const guint8 *data = g_bytes_get_data (bytes, &len);
  g_autofree guint8 *copy = g_memdup2 (data, len);
  static const guint8 values[] = { 0x00, 0x01, 0x02, 0x03, 0x04, 0x7f, 0xff };

  for (gsize cut = 0; cut < len; cut++)
    assert_peek_agrees (data, cut);
  for (gsize at = 0; at < len; at++)
    for (guint v = 0; v < G_N_ELEMENTS (values); v++)
      {
        copy[at] = values[v];
        assert_peek_agrees (copy, len);
        copy[at] = data[at];
      }
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  for (guint i = 0; i < G_N_ELEMENTS (winner_cases); i++)
    {
      g_autofree char *path = g_strdup_printf ("/revtree/winner/%s", winner_cases[i].name);
      g_test_add_data_func (path, &winner_cases[i], test_winner);
    }
  g_test_add_func ("/revtree/merge/extends-stemmed-branch", test_merge_extends_stemmed_branch);
  g_test_add_func ("/revtree/merge/known-leaf", test_merge_known_leaf_is_noop);
  g_test_add_func ("/revtree/stem", test_stem);
  g_test_add_func ("/revtree/remove-leaf", test_remove_leaf);
  g_test_add_func ("/revtree/parse", test_parse);
  g_test_add_func ("/revtree/serialize", test_serialize_round_trip);
  g_test_add_func ("/revtree/peek/cases", test_peek_cases);
  g_test_add_func ("/revtree/peek/random", test_peek_random);
  g_test_add_func ("/revtree/peek/damaged", test_peek_damaged);
  return g_test_run ();
}
