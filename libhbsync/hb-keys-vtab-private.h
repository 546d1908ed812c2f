#pragma once

/* hb_keys: a table-valued function over a batch of document keys, for reading the rows of many
 * documents in one statement (see hb-keys-vtab.c). */

#include <sqlite3.h>

#include <glib.h>

G_BEGIN_DECLS

/* The width of one key in the blob hb_keys() takes, and of the prefix it also gives. */
#define HB_KEYS_KEY_LEN 32
#define HB_KEYS_PREFIX_LEN 8

/* Makes hb_keys() known to @db; an SQLite result code. */
int hb_keys_vtab_register (sqlite3 *db);

G_END_DECLS
