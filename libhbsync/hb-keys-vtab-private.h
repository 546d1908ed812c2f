#pragma once

/* hb_keys: a table-valued function over a batch of document keys, for reading the rows of many
 * documents in one statement (see hb-keys-vtab.c). */

#include <sqlite3.h>

#include <glib.h>

G_BEGIN_DECLS

/* The width of one key in the blob hb_keys() takes. */
#define HB_KEYS_KEY_LEN 32

/* A key's first 8 bytes as a big-endian signed integer: what the store's index on documents
 * holds (docs.key_prefix), and the prefix column of hb_keys(). SQLite compares integers in
 * an index faster than blobs. */
static inline gint64
hb_keys_prefix (const guint8 *key)
{
  guint64 v = 0;

  for (guint i = 0; i < 8; i++)
    v = v << 8 | key[i];
  return (gint64)v;
}

/* Makes hb_keys() known to @db; an SQLite result code. */
int hb_keys_vtab_register (sqlite3 *db);

G_END_DECLS
