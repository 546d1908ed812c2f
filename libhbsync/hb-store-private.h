#pragma once

/* Internal HbStore calls shared with the tests. */

#include "hb-store.h"

G_BEGIN_DECLS

/* How many of the store's SQLite connections hold crypto handles made from its keys (each a
 * key schedule in memory). Zero whenever the vault is locked. */
guint _hb_store_count_key_handles (HbStore *self);

/* hb_store_bulk_docs_sync (self, docs, FALSE, ...) of replicated revisions given as their JSON
 * text (GBytes, as `_bulk_get` sends each), read without a JSON-GLib tree; see hb-store.c. */
GPtrArray *hb_store_put_revisions_json_sync (HbStore *self,
                                             GPtrArray *texts,
                                             GCancellable *cancellable,
                                             GError **error);

G_END_DECLS
