/* hb-keys-vtab: hb_keys(KEYS), the keys of a batch of documents as rows.
 *
 * KEYS is one blob of HB_KEYS_KEY_LEN-byte keys end to end. Each row is one key: its place in
 * the blob (i, from 0), its first 8 bytes as an integer (prefix, hb_keys_prefix()) and the
 * whole key (key), so that a batch read is one join of hb_keys(?1) with the documents' key
 * index:
 *
 *   SELECT ... FROM hb_keys(?1) AS k CROSS JOIN docs AS d
 *    WHERE d.key_prefix = k.prefix AND d.doc_key = k.key
 *
 * A recursive common table expression did the same with substr() over the bound blob, but paid
 * for a queue table (an insert and a delete per key) and for copying each substr() result into
 * a fresh buffer; here the keys point into the cursor's copy of them, which stays put until the
 * statement is run again or closed. The keys are blind-index values (keyed HMACs),
 * never plaintext. */

#include <string.h>

#include "hb-keys-vtab-private.h"

enum
{
  COLUMN_I,
  COLUMN_PREFIX,
  COLUMN_KEY,
  COLUMN_KEYS, /* hidden: the argument */
};

typedef struct
{
  sqlite3_vtab base;
} KeysTable;

typedef struct
{
  sqlite3_vtab_cursor base;
  guint8 *keys;
  gsize size; /* of the keys buffer */
  sqlite3_int64 n;
  sqlite3_int64 i;
} KeysCursor;

static int
keys_connect (sqlite3 *db,
              void *aux,
              int argc,
              const char *const *argv,
              sqlite3_vtab **out,
              char **error_message)
{
  KeysTable *table;
  int rc = sqlite3_declare_vtab (db, "CREATE TABLE x (i INTEGER, prefix INTEGER, key BLOB,"
                                     " keys HIDDEN)");

  if (rc != SQLITE_OK)
    return rc;
  table = sqlite3_malloc (sizeof *table);
  if (table == NULL)
    return SQLITE_NOMEM;
  memset (table, 0, sizeof *table);
  /* No side effects: safe wherever SQL may run. */
  sqlite3_vtab_config (db, SQLITE_VTAB_INNOCUOUS);
  *out = &table->base;
  return SQLITE_OK;
}

static int
keys_disconnect (sqlite3_vtab *table)
{
  sqlite3_free (table);
  return SQLITE_OK;
}

/* The only plan: the keys given as an equality on the hidden column. Without it the table has
 * no rows to give, so a plan lacking it is refused while it is not yet usable and made the
 * dearest otherwise. */
static int
keys_best_index (sqlite3_vtab *table, sqlite3_index_info *info)
{
  for (int i = 0; i < info->nConstraint; i++)
    {
      const struct sqlite3_index_constraint *constraint = &info->aConstraint[i];

      if (constraint->iColumn != COLUMN_KEYS || constraint->op != SQLITE_INDEX_CONSTRAINT_EQ)
        continue;
      if (!constraint->usable)
        return SQLITE_CONSTRAINT;
      info->aConstraintUsage[i].argvIndex = 1;
      info->aConstraintUsage[i].omit = 1;
      info->idxNum = 1;
      info->estimatedCost = 10;
      info->estimatedRows = 100;
      return SQLITE_OK;
    }
  info->idxNum = 0;
  info->estimatedCost = 1e12;
  return SQLITE_OK;
}

static int
keys_open (sqlite3_vtab *table, sqlite3_vtab_cursor **out)
{
  KeysCursor *cursor = sqlite3_malloc (sizeof *cursor);

  if (cursor == NULL)
    return SQLITE_NOMEM;
  memset (cursor, 0, sizeof *cursor);
  *out = &cursor->base;
  return SQLITE_OK;
}

static int
keys_close (sqlite3_vtab_cursor *base)
{
  KeysCursor *cursor = (KeysCursor *)base;

  sqlite3_free (cursor->keys);
  sqlite3_free (cursor);
  return SQLITE_OK;
}

static int
keys_filter (
    sqlite3_vtab_cursor *base, int idx_num, const char *idx_str, int argc, sqlite3_value **argv)
{
  KeysCursor *cursor = (KeysCursor *)base;
  const void *data;
  gsize len;

  cursor->n = 0;
  cursor->i = 0;
  if (idx_num != 1 || argc < 1 || sqlite3_value_type (argv[0]) == SQLITE_NULL)
    return SQLITE_OK;
  if (sqlite3_value_type (argv[0]) != SQLITE_BLOB)
    {
      sqlite3_free (base->pVtab->zErrMsg);
      base->pVtab->zErrMsg = sqlite3_mprintf ("hb_keys() takes a blob of keys");
      return SQLITE_ERROR;
    }
  data = sqlite3_value_blob (argv[0]);
  len = (gsize)sqlite3_value_bytes (argv[0]);
  if (len % HB_KEYS_KEY_LEN != 0)
    {
      sqlite3_free (base->pVtab->zErrMsg);
      base->pVtab->zErrMsg
          = sqlite3_mprintf ("hb_keys() takes whole keys of %d bytes", HB_KEYS_KEY_LEN);
      return SQLITE_ERROR;
    }
  if (len > cursor->size)
    {
      guint8 *keys = sqlite3_realloc64 (cursor->keys, len);

      if (keys == NULL)
        return SQLITE_NOMEM;
      cursor->keys = keys;
      cursor->size = len;
    }
  if (len > 0)
    memcpy (cursor->keys, data, len);
  cursor->n = (sqlite3_int64)(len / HB_KEYS_KEY_LEN);
  return SQLITE_OK;
}

static int
keys_next (sqlite3_vtab_cursor *base)
{
  ((KeysCursor *)base)->i++;
  return SQLITE_OK;
}

static int
keys_eof (sqlite3_vtab_cursor *base)
{
  KeysCursor *cursor = (KeysCursor *)base;

  return cursor->i >= cursor->n;
}

static int
keys_column (sqlite3_vtab_cursor *base, sqlite3_context *context, int column)
{
  KeysCursor *cursor = (KeysCursor *)base;
  const guint8 *key = cursor->keys + cursor->i * HB_KEYS_KEY_LEN;

  switch (column)
    {
      case COLUMN_I:
        sqlite3_result_int64 (context, cursor->i);
        break;
      case COLUMN_PREFIX:
        sqlite3_result_int64 (context, hb_keys_prefix (key));
        break;
      /* SQLITE_STATIC: the buffer is only replaced by the next filter or freed by close. */
      case COLUMN_KEY:
        sqlite3_result_blob (context, key, HB_KEYS_KEY_LEN, SQLITE_STATIC);
        break;
      default:
        sqlite3_result_null (context);
        break;
    }
  return SQLITE_OK;
}

static int
keys_rowid (sqlite3_vtab_cursor *base, sqlite3_int64 *rowid)
{
  *rowid = ((KeysCursor *)base)->i;
  return SQLITE_OK;
}

/* Eponymous only (no xCreate): it exists in every schema of the connection as a function and
 * can never be made into a table stored in the file. */
static const sqlite3_module keys_module = {
  .iVersion = 0,
  .xConnect = keys_connect,
  .xBestIndex = keys_best_index,
  .xDisconnect = keys_disconnect,
  .xOpen = keys_open,
  .xClose = keys_close,
  .xFilter = keys_filter,
  .xNext = keys_next,
  .xEof = keys_eof,
  .xColumn = keys_column,
  .xRowid = keys_rowid,
};

int
hb_keys_vtab_register (sqlite3 *db)
{
  return sqlite3_create_module_v2 (db, "hb_keys", &keys_module, NULL, NULL);
}
