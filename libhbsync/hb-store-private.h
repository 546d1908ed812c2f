#pragma once

/* Internal HbStore calls shared with the tests. */

#include "hb-store.h"

G_BEGIN_DECLS

/* How many of the store's SQLite connections hold crypto handles made from its keys (each a
 * key schedule in memory). Zero whenever the vault is locked. */
guint _hb_store_count_key_handles (HbStore *self);

G_END_DECLS
