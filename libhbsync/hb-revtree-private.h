#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* One document's revision tree, as CouchDB keeps it: a forest (stemming and foreign histories
 * can leave several roots) of revisions named by position (depth) and hash. */

typedef struct
{
  guint pos;
  char *hash;
  gint parent; /* index into the tree, or -1 for a root */
  gboolean deleted;
  gint64 body; /* the row of this revision's stored body, or -1 when none is kept */
} HbRevNode;

typedef struct
{
  GArray *nodes; /* HbRevNode */
} HbRevTree;

HbRevTree *hb_rev_tree_new (void);
void hb_rev_tree_free (HbRevTree *tree);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRevTree, hb_rev_tree_free)

#define hb_rev_tree_node(tree, i) (&g_array_index ((tree)->nodes, HbRevNode, (i)))

/* "N-hash" → pos, hash. Hash must be non-empty lowercase hex or any printable ASCII a peer
 * sent; pos must be > 0. */
gboolean hb_rev_parse (const char *rev, guint *pos, char **hash);
char *hb_rev_tree_rev_string (HbRevTree *tree, gint index);

gint hb_rev_tree_find (HbRevTree *tree, guint pos, const char *hash);
gint hb_rev_tree_find_rev (HbRevTree *tree, const char *rev);
gboolean hb_rev_tree_is_leaf (HbRevTree *tree, gint index);

/* Leaves, best first: not deleted before deleted, then higher position, then higher hash. The
 * first is the winner. */
GArray *hb_rev_tree_leaves (HbRevTree *tree);
gint hb_rev_tree_winner (HbRevTree *tree);

gint hb_rev_tree_add (HbRevTree *tree, gint parent, guint pos, const char *hash, gboolean deleted);

/* Merge a history (newest first: ids[0] is at position start) as CouchDB does for
 * new_edits=false. Returns the index of the newest revision; *added tells whether it was new. */
gint hb_rev_tree_merge_path (HbRevTree *tree,
                             guint start,
                             const char *const *ids,
                             guint n_ids,
                             gboolean deleted,
                             gboolean *added);

/* Ancestry of a revision, newest first, for `_revisions`. */
GPtrArray *hb_rev_tree_path (HbRevTree *tree, gint index);

/* Keep only the newest `limit` revisions of every branch. The body rows (gint64) of removed
 * revisions are appended to removed_bodies. */
void hb_rev_tree_stem (HbRevTree *tree, guint limit, GArray *removed_bodies);

/* Remove a leaf and every ancestor no other leaf shares. */
void hb_rev_tree_remove_leaf (HbRevTree *tree, gint index, GArray *removed_bodies);

/* Serialization for sealing. */
GBytes *hb_rev_tree_serialize (HbRevTree *tree, const char *id);
HbRevTree *hb_rev_tree_deserialize (const guint8 *data, gsize len, char **out_id);

/* The winner of a serialized tree, read in place: the spans point into the serialized bytes. */
typedef struct
{
  const char *id;
  gsize id_len;
  guint pos;
  const char *hash;
  gsize hash_len;
  gboolean deleted;
  gint64 body;
} HbRevPeek;

/* How many nodes hb_rev_tree_peek_winner() reads; bigger trees are left to deserialization. */
#define HB_REV_PEEK_MAX_NODES 64

/* Fills @out with the document id and the winning revision (the first of hb_rev_tree_leaves()
 * of the deserialized tree) without building the tree. FALSE when hb_rev_tree_deserialize()
 * would refuse the bytes, and for trees of more than HB_REV_PEEK_MAX_NODES nodes: the caller
 * then deserializes, which tells the two apart. */
gboolean hb_rev_tree_peek_winner (const guint8 *data, gsize len, HbRevPeek *out);

G_END_DECLS
