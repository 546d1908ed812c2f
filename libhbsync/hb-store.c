/* HbStore: the CouchDB document model in one SQLite file, every identifying byte sealed.
 *
 * Tables (documents are found by HMAC-SHA256(id-key, _id), never by the id):
 *   docs        seq (rowid), doc_key, meta = seal(id + revision tree), body = the winning
 *               revision's sealed body, and the blind index:
 *               type_mac, session_mac, patient_mac = HMAC(index-key, field || value)
 *   bodies      id (named by the revision tree), doc_key, body = seal(canonical JSON body)
 *               of revisions other than the winner; every body is bound to its document and
 *               revision, so it moves between the two tables as ciphertext
 *   local_docs  doc_key, body = seal(whole _local document)
 *   hb_meta     schema version, store UUID, counters (no clinical data)
 *
 * A document's row is replaced on every change and takes the next sequence as its rowid, so
 * writes append to the table and to the per-field index segments instead of dirtying random
 * pages; only the doc_key index (on key_prefix, the key's first 8 bytes as an integer, so it
 * stays small) is random, as an id index is in any store. */

#include <glib/gstdio.h>
#include <malloc.h>
#include <sqlite3.h>
#include <string.h>

#include "hb-enums.h"
#include "hb-json-private.h"
#include "hb-revtree-private.h"
#include "hb-store-private.h"
#include "hb-keys-vtab-private.h"
#include "hb-wal-vfs-private.h"
#include "hb-vault-private.h"

#define SCHEMA_VERSION 3
#define DEFAULT_REVS_LIMIT 1000
#define INDEX_MAC_LEN 16
/* WAL size, in frames (pages), at which a checkpoint is started in the background; at eight
 * times this the writer checkpoints by itself, in case the checkpointer cannot keep up. */
#define CHECKPOINT_FRAMES 1000

/* Where a revision's body is, in HbRevNode.body: a row of the bodies table (> 0), none, or in
 * the document's own row, which is where the winner's body lives so that reading a document
 * is one row. */
#define BODY_NONE (-1)
#define BODY_INLINE 0

enum
{
  KEY_SEAL,
  KEY_ID,
  KEY_INDEX,
  N_KEYS
};

/* A connection is used by one thread at a time, so it also holds the crypto handles made from
 * the store's keys (a key schedule per handle, made once instead of once per record). They are
 * freed, which wipes them, when the vault locks; key_gen tells which keys they came from. */
typedef struct
{
  sqlite3 *db;
  GHashTable *stmts; /* SQL text (static) → sqlite3_stmt */
  guint key_gen;     /* 0: no handles */
  HbAead *seal;
  HbMac *id_mac;
  HbMac *index_mac;
} HbConn;

struct _HbStore
{
  GObject parent_instance;

  HbVault *vault;
  char *path;
  char *uuid;
  GMainContext *owner_context;
  gulong locked_handler;

  GRWLock key_lock;
  guint8 *keys; /* N_KEYS × HB_KEY_LEN in secure memory, NULL while the vault is locked */
  gint wiping;
  guint key_id;
  guint key_gen; /* changes whenever the keys do; connections' handles follow it */

  GMutex write_lock;
  HbConn *writer;
  GMutex pool_lock;
  GPtrArray *readers;

  guint revs_limit;
  guint64 update_seq;
  gboolean closed;

  /* WAL checkpoints (copying committed pages into the main file, then syncing it) run on a
   * thread and connection of their own, so a writer's commit does not wait for them. */
  GThreadPool *checkpointer;
  HbConn *checkpoint_conn; /* used by the checkpointer thread only */
  gint checkpoint_queued;
};

enum
{
  PROP_0,
  PROP_VAULT,
  PROP_UUID,
  PROP_REVS_LIMIT,
  N_PROPS
};

enum
{
  CHANGED,
  N_SIGNALS
};

static gint64 meta_int (HbConn *c, const char *name, gint64 fallback);

static GParamSpec *properties[N_PROPS];
static guint signals[N_SIGNALS];

G_DEFINE_FINAL_TYPE (HbStore, hb_store, G_TYPE_OBJECT)
/* clang-format off */
G_DEFINE_QUARK (hb-store-error-quark, hb_store_error)
/* clang-format on */

static const char *const index_fields[] = { "type", "session_id", "patient_id" };

/* ---- SQLite connections ---------------------------------------------------------------- */

static gboolean
sql_error (sqlite3 *db, int rc, const char *what, GError **error)
{
  g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_FAILED, "%s: %s", what,
               db ? sqlite3_errmsg (db) : sqlite3_errstr (rc));
  return FALSE;
}

static gboolean
conn_exec (HbConn *c, const char *sql, GError **error)
{
  int rc = sqlite3_exec (c->db, sql, NULL, NULL, NULL);

  return rc == SQLITE_OK || sql_error (c->db, rc, "SQLite", error);
}

static void
conn_clear_crypto (HbConn *c)
{
  g_clear_pointer (&c->seal, hb_aead_free);
  g_clear_pointer (&c->id_mac, hb_mac_free);
  g_clear_pointer (&c->index_mac, hb_mac_free);
  c->key_gen = 0;
}

static void
conn_free (HbConn *c)
{
  if (c == NULL)
    return;
  conn_clear_crypto (c);
  g_clear_pointer (&c->stmts, g_hash_table_unref);
  sqlite3_close_v2 (c->db);
  g_free (c);
}

static void
finalize_stmt (gpointer stmt)
{
  sqlite3_finalize (stmt);
}

/* Page cache sizes, in KiB. Readers keep what they read across transactions (until a write
 * invalidates it). The writer's pages are mostly ones it just wrote and will not read again:
 * a big cache there only grows with every batch, each new page a fresh allocation the kernel
 * must fault in, which cost a fifth of a bulk write's time; 2 MiB still holds the indexes'
 * inner pages, which are what its lookups need. */
#define READER_CACHE_KIB 16384
#define WRITER_CACHE_KIB 2048

/* Memory-mapped reads, up to this many bytes of the database file: a page already in the
 * database file is read in place instead of copied into a page-cache buffer by a read call,
 * and the buffer need not be allocated (each new one a fresh allocation the kernel must fault
 * in). Pages still in the write-ahead log are read as before. What is mapped is the file's
 * pages: sealed records, never plaintext. Measured on a fresh reader (bench-store), a batch
 * read went from a third of plain SQLite's rate to three fifths. */
#define MMAP_BYTES (256 * 1024 * 1024)

static HbConn *
conn_open (const char *path, guint cache_kib, GError **error)
{
  HbConn *c = g_new0 (HbConn, 1);
  g_autofree char *pragmas = NULL;
  int rc = sqlite3_open_v2 (path, &c->db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                            hb_wal_vfs_name ());

  c->stmts = g_hash_table_new_full (NULL, NULL, NULL, finalize_stmt);
  if (rc != SQLITE_OK)
    {
      sql_error (c->db, rc, "Cannot open the store", error);
      conn_free (c);
      return NULL;
    }
  sqlite3_busy_timeout (c->db, 30000);
  rc = hb_keys_vtab_register (c->db);
  if (rc != SQLITE_OK)
    {
      sql_error (c->db, rc, "Cannot open the store", error);
      conn_free (c);
      return NULL;
    }
  /* temp_store=MEMORY: SQLite's own temp files would otherwise be plaintext-free but still
   * needless writes; FULL: an acknowledged write survives power loss, not just a crash. */
  pragmas = g_strdup_printf ("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                             " PRAGMA temp_store=MEMORY; PRAGMA cache_size=-%u;"
                             " PRAGMA mmap_size=%u;",
                             cache_kib, MMAP_BYTES);
  if (!conn_exec (c, pragmas, error))
    {
      conn_free (c);
      return NULL;
    }
  return c;
}

static sqlite3_stmt *
conn_stmt (HbConn *c, const char *sql, GError **error)
{
  sqlite3_stmt *stmt = g_hash_table_lookup (c->stmts, sql);
  int rc;

  if (stmt != NULL)
    {
      sqlite3_reset (stmt);
      sqlite3_clear_bindings (stmt);
      return stmt;
    }
  rc = sqlite3_prepare_v3 (c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL);
  if (rc != SQLITE_OK)
    {
      sql_error (c->db, rc, "SQLite prepare", error);
      return NULL;
    }
  g_hash_table_insert (c->stmts, (gpointer)sql, stmt);
  return stmt;
}

static gboolean
stmt_done (HbConn *c, sqlite3_stmt *stmt, GError **error)
{
  int rc = sqlite3_step (stmt);

  sqlite3_reset (stmt);
  return rc == SQLITE_DONE || rc == SQLITE_ROW || sql_error (c->db, rc, "SQLite", error);
}

/* Transaction control through kept statements: sqlite3_exec would parse them every time. */
static gboolean
conn_run (HbConn *c, const char *sql, GError **error)
{
  sqlite3_stmt *stmt = conn_stmt (c, sql, error);

  return stmt != NULL && stmt_done (c, stmt, error);
}

static void
reset_stmt (gpointer key, gpointer value, gpointer user_data)
{
  sqlite3_reset (value);
}

static HbConn *
reader_acquire (HbStore *self, GError **error)
{
  HbConn *c;

  g_mutex_lock (&self->pool_lock);
  c = self->readers->len > 0 ? g_ptr_array_steal_index_fast (self->readers, self->readers->len - 1)
                             : NULL;
  g_mutex_unlock (&self->pool_lock);
  return c != NULL ? c : conn_open (self->path, READER_CACHE_KIB, error);
}

static void
reader_release (HbStore *self, HbConn *c)
{
  if (c == NULL)
    return;
  /* Never leave a read transaction open: it would pin the WAL. */
  g_hash_table_foreach (c->stmts, reset_stmt, NULL);
  g_mutex_lock (&self->pool_lock);
  g_ptr_array_add (self->readers, c);
  g_mutex_unlock (&self->pool_lock);
}

/* ---- keys and sealing ------------------------------------------------------------------ */

static const guint8 *
key (HbStore *self, guint which)
{
  return self->keys + which * HB_KEY_LEN;
}

static void
hb_secure_free_keys (gpointer keys)
{
  hb_secure_free (keys, N_KEYS * HB_KEY_LEN);
}

static void
wipe_keys (HbStore *self)
{
  /* New operations refuse at once from here on, so the lock below waits only for those under
   * way; without this a steady stream of readers could hold the keys alive indefinitely. */
  g_atomic_int_set (&self->wiping, TRUE);
  g_rw_lock_writer_lock (&self->key_lock);
  g_clear_pointer (&self->keys, hb_secure_free_keys);
  self->key_gen++;
  /* No operation is under way (each holds the key lock), so every connection is idle. */
  if (self->writer != NULL)
    conn_clear_crypto (self->writer);
  g_mutex_lock (&self->pool_lock);
  for (guint i = 0; self->readers != NULL && i < self->readers->len; i++)
    conn_clear_crypto (g_ptr_array_index (self->readers, i));
  g_mutex_unlock (&self->pool_lock);
  g_rw_lock_writer_unlock (&self->key_lock);
}

static gboolean
derive_keys (HbStore *self, GError **error)
{
  static const char *const purposes[N_KEYS] = { "store seal", "store id", "store index" };
  guint8 *keys = hb_secure_alloc (N_KEYS * HB_KEY_LEN);

  for (guint i = 0; i < N_KEYS; i++)
    if (!_hb_vault_derive_key (self->vault, purposes[i], keys + i * HB_KEY_LEN, error))
      {
        hb_secure_free (keys, N_KEYS * HB_KEY_LEN);
        return FALSE;
      }
  g_rw_lock_writer_lock (&self->key_lock);
  g_clear_pointer (&self->keys, hb_secure_free_keys);
  self->keys = keys;
  g_atomic_int_set (&self->wiping, FALSE);
  self->key_id = _hb_vault_get_key_id (self->vault);
  if (++self->key_gen == 0)
    self->key_gen = 1;
  g_rw_lock_writer_unlock (&self->key_lock);
  return TRUE;
}

/* Every operation holds the key lock for reading from start to end, so locking the vault
 * waits for operations under way and then no key byte is left. */
static gboolean
keys_acquire (HbStore *self, GError **error)
{
  if (g_atomic_int_get (&self->wiping))
    {
      g_set_error_literal (error, HB_STORE_ERROR, HB_STORE_ERROR_LOCKED, "The vault is locked");
      return FALSE;
    }
  g_rw_lock_reader_lock (&self->key_lock);
  if (self->keys != NULL && !self->closed)
    return TRUE;
  g_rw_lock_reader_unlock (&self->key_lock);
  if (self->closed)
    g_set_error_literal (error, HB_STORE_ERROR, HB_STORE_ERROR_FAILED, "The store is closed");
  else
    g_set_error_literal (error, HB_STORE_ERROR, HB_STORE_ERROR_LOCKED, "The vault is locked");
  return FALSE;
}

static void
keys_release (HbStore *self)
{
  g_rw_lock_reader_unlock (&self->key_lock);
}

guint
_hb_store_count_key_handles (HbStore *self)
{
  guint n = 0;

  g_rw_lock_writer_lock (&self->key_lock);
  if (self->writer != NULL && self->writer->seal != NULL)
    n++;
  g_mutex_lock (&self->pool_lock);
  for (guint i = 0; self->readers != NULL && i < self->readers->len; i++)
    if (((HbConn *)g_ptr_array_index (self->readers, i))->seal != NULL)
      n++;
  g_mutex_unlock (&self->pool_lock);
  g_rw_lock_writer_unlock (&self->key_lock);
  return n;
}

/* With the keys acquired: makes c's handles from the current keys if they are not. */
static gboolean
conn_use_keys (HbStore *self, HbConn *c, GError **error)
{
  if (c->key_gen == self->key_gen && c->seal != NULL)
    return TRUE;
  conn_clear_crypto (c);
  c->seal = hb_aead_new (key (self, KEY_SEAL), error);
  c->id_mac = c->seal ? hb_mac_new (key (self, KEY_ID), HB_KEY_LEN, error) : NULL;
  c->index_mac = c->id_mac ? hb_mac_new (key (self, KEY_INDEX), HB_KEY_LEN, error) : NULL;
  if (c->index_mac == NULL)
    {
      conn_clear_crypto (c);
      return FALSE;
    }
  c->key_gen = self->key_gen;
  return TRUE;
}

typedef struct
{
  guint8 b[HB_MAC_LEN];
} DocKey;

static void
doc_key_for (HbConn *c, const char *id, DocKey *out)
{
  hb_mac_compute (c->id_mac, (const guint8 *)id, strlen (id), out->b);
}

/* Associated data: what the record is, which key sealed it, which document it belongs to and
 * extra bytes: for bodies the revision, for document records the row's sequence and blind-index
 * columns. A record moved to another row, document, revision or sequence, or whose index
 * columns were altered, no longer opens. */
#define AD_HEAD_LEN (8 + 1 + 4 + HB_MAC_LEN)

/* Built on the stack: every record read or written makes one. */
typedef struct
{
  guint8 *data;
  gsize len;
  guint8 inline_data[AD_HEAD_LEN + 96];
} Ad;

static void
ad_init (Ad *ad, HbStore *self, char kind, const DocKey *dk, const void *extra, gsize extra_len)
{
  guint8 *p;

  ad->len = AD_HEAD_LEN + extra_len;
  ad->data = ad->len <= sizeof ad->inline_data ? ad->inline_data : g_malloc (ad->len);
  p = ad->data;
  memcpy (p, "hbsync-1", 8);
  p[8] = (guint8)kind;
  p[9] = (guint8)(self->key_id >> 24);
  p[10] = (guint8)(self->key_id >> 16);
  p[11] = (guint8)(self->key_id >> 8);
  p[12] = (guint8)self->key_id;
  memcpy (p + 13, dk->b, HB_MAC_LEN);
  if (extra_len > 0)
    memcpy (p + AD_HEAD_LEN, extra, extra_len);
}

static void
ad_clear (Ad *ad)
{
  if (ad->data != ad->inline_data)
    g_free (ad->data);
}

static GBytes *
seal (HbStore *self,
      HbConn *c,
      char kind,
      const DocKey *dk,
      const void *extra,
      gsize extra_len,
      const void *data,
      gsize len,
      GError **error)
{
  Ad ad;
  GBytes *sealed;

  ad_init (&ad, self, kind, dk, extra, extra_len);
  sealed = hb_aead_seal (c->seal, data, len, ad.data, ad.len, error);
  ad_clear (&ad);
  return sealed;
}

static gboolean
corrupt_error (GError **error, const char *what)
{
  g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CORRUPT,
               "A sealed %s failed its integrity check; the rest of the store is unaffected", what);
  return FALSE;
}

/* Opens a sealed column into buf, which has room for the plaintext (sealed_len -
 * HB_SEAL_OVERHEAD bytes). */
static gboolean
unseal_into (HbStore *self,
             HbConn *c,
             char kind,
             const DocKey *dk,
             const void *extra,
             gsize extra_len,
             const void *sealed,
             gsize sealed_len,
             guint8 *buf,
             gsize *out_len,
             const char *what,
             GError **error)
{
  Ad ad;
  gboolean ok;

  if (sealed_len < HB_SEAL_OVERHEAD)
    return corrupt_error (error, what);
  ad_init (&ad, self, kind, dk, extra, extra_len);
  ok = hb_aead_open_into (c->seal, sealed, sealed_len, ad.data, ad.len, buf,
                          sealed_len - HB_SEAL_OVERHEAD, out_len);
  ad_clear (&ad);
  return ok || corrupt_error (error, what);
}

/* The same into a new buffer, returned in *out (NUL-terminated; wiped by hb_open_free). */
static gboolean
unseal (HbStore *self,
        HbConn *c,
        char kind,
        const DocKey *dk,
        const void *extra,
        gsize extra_len,
        const void *sealed,
        gsize sealed_len,
        guint8 **out,
        gsize *out_len,
        const char *what,
        GError **error)
{
  gsize size = sealed_len >= HB_SEAL_OVERHEAD ? sealed_len - HB_SEAL_OVERHEAD : 0;
  guint8 *plain = g_malloc (size + 1);

  *out = NULL;
  *out_len = 0;
  if (!unseal_into (self, c, kind, dk, extra, extra_len, sealed, sealed_len, plain, out_len, what,
                    error))
    {
      g_free (plain);
      return FALSE;
    }
  plain[*out_len] = '\0';
  *out = plain;
  return TRUE;
}

/* HMAC(index-key, field || value), truncated. */
static void
index_mac (HbConn *c, guint field, const char *value, guint8 out[INDEX_MAC_LEN])
{
  guint8 field_byte = (guint8)field;
  guint8 full[HB_MAC_LEN];

  hb_mac_add (c->index_mac, &field_byte, 1);
  hb_mac_add (c->index_mac, (const guint8 *)value, strlen (value));
  hb_mac_finish (c->index_mac, full);
  memcpy (out, full, INDEX_MAC_LEN);
}

static JsonNode *
take_object (JsonObject *object)
{
  JsonNode *node = json_node_new (JSON_NODE_OBJECT);

  json_node_take_object (node, object);
  return node;
}

/* ---- documents ------------------------------------------------------------------------- */

typedef struct
{
  DocKey dk;
  gboolean exists;
  char *id;
  HbRevTree *tree;
  /* The blind index of the winning revision, as stored in the row. */
  guint8 macs[G_N_ELEMENTS (index_fields)][INDEX_MAC_LEN];
  gboolean has_mac[G_N_ELEMENTS (index_fields)];
  guint64 seq;
  GBytes *inline_body; /* the sealed body in the document's row, or NULL */
  /* Readers borrow the row's body from the statement instead of copying it into inline_body:
   * the statement stays on the row until the state is cleared. */
  sqlite3_stmt *row_stmt;
  GBytes *winner_body; /* read by prepare_update: the winner's body, to move into the row */
} DocState;

static void
doc_state_clear (DocState *st)
{
  g_clear_pointer (&st->id, g_free);
  g_clear_pointer (&st->tree, hb_rev_tree_free);
  g_clear_pointer (&st->inline_body, g_bytes_unref);
  g_clear_pointer (&st->winner_body, g_bytes_unref);
  if (st->row_stmt != NULL)
    sqlite3_reset (g_steal_pointer (&st->row_stmt));
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (DocState, doc_state_clear)

/* What a document record is bound to besides its document: its row's sequence and blind-index
 * columns, so neither can be altered or moved without the record failing to open. */
#define META_AD_LEN (8 + G_N_ELEMENTS (index_fields) * (1 + INDEX_MAC_LEN))

static void
meta_ad (const DocState *st, guint8 out[META_AD_LEN])
{
  guint8 *p = out;

  for (int shift = 56; shift >= 0; shift -= 8)
    *p++ = (guint8)(st->seq >> shift);
  for (guint f = 0; f < G_N_ELEMENTS (index_fields); f++)
    {
      *p++ = st->has_mac[f];
      if (st->has_mac[f])
        memcpy (p, st->macs[f], INDEX_MAC_LEN);
      else
        memset (p, 0, INDEX_MAC_LEN);
      p += INDEX_MAC_LEN;
    }
}

#define DOC_COLUMNS "seq, doc_key, meta, type_mac, session_mac, patient_mac, body"
/* A document's row by its key (parameter 1, bound with bind_doc_key), through the index on the
 * key's first 8 bytes as an integer (parameter 2). */
#define DOC_KEY_MATCH "key_prefix = ?2 AND doc_key = ?1"
/* The same columns for a row found by its key: the key is not read back (each blob column read
 * is a copy into a fresh allocation inside SQLite). */
#define DOC_COLUMNS_BY_KEY "seq, NULL, meta, type_mac, session_mac, patient_mac, body"
/* The same for readers that never touch a body (the changes feed): no copy of it is made. */
#define DOC_COLUMNS_NO_BODY "seq, doc_key, meta, type_mac, session_mac, patient_mac, NULL"

static void
bind_doc_key (sqlite3_stmt *stmt, const DocKey *dk)
{
  sqlite3_bind_blob (stmt, 1, dk->b, HB_MAC_LEN, SQLITE_STATIC);
  sqlite3_bind_int64 (stmt, 2, hb_keys_prefix (dk->b));
}

/* The row's sequence, key (unless selected as NULL) and blind-index columns, into st. */
static gboolean
row_columns (sqlite3_stmt *stmt, DocState *st, GError **error)
{
  st->seq = (guint64)sqlite3_column_int64 (stmt, 0);
  if (sqlite3_column_type (stmt, 1) != SQLITE_NULL)
    {
      if (sqlite3_column_bytes (stmt, 1) != HB_MAC_LEN)
        return corrupt_error (error, "document record (bad key)");
      memcpy (st->dk.b, sqlite3_column_blob (stmt, 1), HB_MAC_LEN);
    }
  for (guint f = 0; f < G_N_ELEMENTS (index_fields); f++)
    {
      st->has_mac[f] = sqlite3_column_type (stmt, 3 + f) != SQLITE_NULL;
      if (!st->has_mac[f])
        continue;
      if (sqlite3_column_bytes (stmt, 3 + f) != INDEX_MAC_LEN)
        return corrupt_error (error, "document record (bad index column)");
      memcpy (st->macs[f], sqlite3_column_blob (stmt, 3 + f), INDEX_MAC_LEN);
    }
  return TRUE;
}

/* Fills st from a row selected with DOC_COLUMNS at column 0, or with DOC_COLUMNS_BY_KEY when
 * st->dk already holds the key (the body is copied; see load_doc for borrowing it). */
static gboolean
doc_from_row (HbStore *self, HbConn *c, sqlite3_stmt *stmt, DocState *st, GError **error)
{
  guint8 extra[META_AD_LEN];
  guint8 small[1024];
  guint8 *plain = small;
  gsize sealed_len, plain_len = 0;
  gboolean ok;

  if (!row_columns (stmt, st, error))
    return FALSE;
  if (st->row_stmt == NULL && sqlite3_column_type (stmt, 6) != SQLITE_NULL)
    st->inline_body = g_bytes_new (sqlite3_column_blob (stmt, 6), sqlite3_column_bytes (stmt, 6));
  meta_ad (st, extra);
  /* Most records (an id and a few revisions) open on the stack. */
  sealed_len = (gsize)sqlite3_column_bytes (stmt, 2);
  if (sealed_len > HB_SEAL_OVERHEAD + sizeof small)
    plain = g_malloc (sealed_len - HB_SEAL_OVERHEAD);
  ok = unseal_into (self, c, 'M', &st->dk, extra, sizeof extra, sqlite3_column_blob (stmt, 2),
                    sealed_len, plain, &plain_len, "document record", error);
  if (ok)
    st->tree = hb_rev_tree_deserialize (plain, plain_len, &st->id);
  hb_wipe (plain, plain_len);
  if (plain != small)
    g_free (plain);
  if (!ok)
    return FALSE;
  if (st->tree == NULL)
    return corrupt_error (error, "document record");
  st->exists = TRUE;
  return TRUE;
}

/* Loads st->dk's row, if any. With borrow (reads), the row's sealed body is not copied: the
 * statement is left on the row in st->row_stmt, and no other load may run until st is
 * cleared. */
static gboolean
load_doc_full (HbStore *self, HbConn *c, DocState *st, gboolean borrow, GError **error)
{
  sqlite3_stmt *stmt
      = conn_stmt (c, "SELECT " DOC_COLUMNS_BY_KEY " FROM docs WHERE " DOC_KEY_MATCH, error);
  int rc;
  gboolean ok = TRUE;

  if (stmt == NULL)
    return FALSE;
  bind_doc_key (stmt, &st->dk);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    {
      if (borrow)
        st->row_stmt = stmt;
      ok = doc_from_row (self, c, stmt, st, error);
      if (borrow)
        return ok;
    }
  else if (rc != SQLITE_DONE)
    ok = sql_error (c->db, rc, "Reading a document", error);
  else
    st->tree = hb_rev_tree_new ();
  sqlite3_reset (stmt);
  return ok;
}

static gboolean
load_doc (HbStore *self, HbConn *c, DocState *st, GError **error)
{
  return load_doc_full (self, c, st, FALSE, error);
}

/* The sealed body kept in the document's row, copied or borrowed. */
static const guint8 *
row_body (DocState *st, gsize *len)
{
  if (st->inline_body != NULL)
    return g_bytes_get_data (st->inline_body, len);
  if (st->row_stmt != NULL && sqlite3_column_type (st->row_stmt, 6) != SQLITE_NULL)
    {
      *len = (gsize)sqlite3_column_bytes (st->row_stmt, 6);
      return sqlite3_column_blob (st->row_stmt, 6);
    }
  *len = 0;
  return NULL;
}

static JsonObject *
parse_body (const guint8 *plain, gsize len)
{
  g_autoptr (JsonParser) parser = json_parser_new_immutable ();
  JsonNode *root;

  if (!json_parser_load_from_data (parser, (const char *)plain, len, NULL))
    return NULL;
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    return NULL;
  return json_object_ref (json_node_get_object (root));
}

static void
string_free_all (gpointer string)
{
  g_string_free (string, TRUE);
}

/* The revision string as a JSON string node's value; the returned pointer lives until the
 * next call on this thread, which is all json_*_set_string_* needs (they copy). Formatted
 * into one buffer per thread: reads call this for every document. */
/* "pos-hash" and a NUL into @buf, which has room for 16 + hash_len bytes; returns the length. */
static gsize
format_rev (char *buf, guint pos, const char *hash, gsize hash_len)
{
  char digits[16];
  gsize n = 0, len = 0;

  /* The position's digits, written backwards (g_snprintf cost as much as the rest of this). */
  do
    {
      digits[n++] = (char)('0' + pos % 10);
      pos /= 10;
    }
  while (pos > 0);
  while (n > 0)
    buf[len++] = digits[--n];
  buf[len++] = '-';
  memcpy (buf + len, hash, hash_len);
  len += hash_len;
  buf[len] = '\0';
  return len;
}

static const char *
rev_string_tmp (HbRevTree *tree, gint index)
{
  static GPrivate buf = G_PRIVATE_INIT (string_free_all);
  GString *rev = g_private_get (&buf);
  HbRevNode *node = hb_rev_tree_node (tree, index);
  gsize hash_len = strlen (node->hash);

  if (rev == NULL)
    {
      rev = g_string_sized_new (64);
      g_private_set (&buf, rev);
    }
  g_string_set_size (rev, 16 + hash_len);
  g_string_truncate (rev, format_rev (rev->str, node->pos, node->hash, hash_len));
  return rev->str;
}

/* Where the sealed body of one revision is: in the document's row, or in a row of the bodies
 * table, whose statement is then left in *stmt_out for the caller to reset once done with the
 * bytes. */
static const guint8 *
find_sealed_body (HbConn *c,
                  DocState *st,
                  gint index,
                  const char *rev,
                  gsize *len,
                  sqlite3_stmt **stmt_out,
                  GError **error)
{
  HbRevNode *node = hb_rev_tree_node (st->tree, index);
  const guint8 *sealed = NULL;
  sqlite3_stmt *stmt;
  int rc;

  *stmt_out = NULL;
  *len = 0;
  if (node->body == BODY_NONE)
    {
      g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND,
                   "Revision %s has no body (compacted or never received)", rev);
      return NULL;
    }
  if (node->body == BODY_INLINE)
    {
      sealed = row_body (st, len);
      if (sealed == NULL)
        corrupt_error (error, "document body (missing)");
      return sealed;
    }
  stmt = conn_stmt (c, "SELECT body FROM bodies WHERE id = ?", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, node->body);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    {
      *len = (gsize)sqlite3_column_bytes (stmt, 0);
      sealed = sqlite3_column_blob (stmt, 0);
      *stmt_out = stmt;
      return sealed;
    }
  if (rc == SQLITE_DONE)
    corrupt_error (error, "document body (missing row)");
  else
    sql_error (c->db, rc, "Reading a document body", error);
  sqlite3_reset (stmt);
  return NULL;
}

/* The sealed body of one revision, as canonical JSON text. Free with hb_open_free(). */
static guint8 *
load_body_text (HbStore *self, HbConn *c, DocState *st, gint index, gsize *out_len, GError **error)
{
  const char *rev = rev_string_tmp (st->tree, index);
  sqlite3_stmt *stmt = NULL;
  guint8 *plain = NULL;
  gsize len;
  const guint8 *sealed = find_sealed_body (c, st, index, rev, &len, &stmt, error);

  if (sealed != NULL)
    unseal (self, c, 'B', &st->dk, rev, strlen (rev), sealed, len, &plain, out_len, "document body",
            error);
  if (stmt != NULL)
    sqlite3_reset (stmt);
  return plain;
}

static JsonObject *
load_body (HbStore *self, HbConn *c, DocState *st, gint index, GError **error)
{
  gsize len = 0;
  guint8 *plain = load_body_text (self, c, st, index, &len, error);
  JsonObject *body;

  if (plain == NULL)
    return NULL;
  body = parse_body (plain, len);
  hb_open_free (plain, len);
  if (body == NULL)
    corrupt_error (error, "document body");
  return body;
}

static void
add_rev_list (JsonObject *obj,
              const char *member,
              HbRevTree *tree,
              GArray *leaves,
              gint skip,
              gboolean deleted)
{
  JsonArray *arr = NULL;

  for (guint i = 0; i < leaves->len; i++)
    {
      gint leaf = g_array_index (leaves, gint, i);

      if (leaf == skip || hb_rev_tree_node (tree, leaf)->deleted != deleted)
        continue;
      if (arr == NULL)
        arr = json_array_new ();
      json_array_add_string_element (arr, rev_string_tmp (tree, leaf));
    }
  if (arr != NULL)
    json_object_set_array_member (obj, member, arr);
}

static JsonNode *
build_doc (DocState *st, gint index, JsonObject *body, HbGetFlags flags)
{
  JsonObject *doc = json_object_new ();
  HbRevNode *node = hb_rev_tree_node (st->tree, index);
  JsonObjectIter iter;
  const char *name;
  JsonNode *member;

  json_object_set_string_member (doc, "_id", st->id);
  json_object_set_string_member (doc, "_rev", rev_string_tmp (st->tree, index));
  /* In the body's order, which is the canonical (sorted) one, so output is stable. */
  json_object_iter_init_ordered (&iter, body);
  while (json_object_iter_next_ordered (&iter, &name, &member))
    json_object_set_member (doc, name, json_node_ref (member));
  if (node->deleted)
    json_object_set_boolean_member (doc, "_deleted", TRUE);

  if (flags & HB_GET_FLAGS_CONFLICTS)
    {
      g_autoptr (GArray) leaves = hb_rev_tree_leaves (st->tree);
      add_rev_list (doc, "_conflicts", st->tree, leaves, index, FALSE);
      add_rev_list (doc, "_deleted_conflicts", st->tree, leaves, index, TRUE);
    }
  if (flags & HB_GET_FLAGS_REVISIONS)
    {
      g_autoptr (GPtrArray) path = hb_rev_tree_path (st->tree, index);
      JsonObject *revs = json_object_new ();
      JsonArray *ids = json_array_new ();

      for (guint i = 0; i < path->len; i++)
        json_array_add_string_element (ids, g_ptr_array_index (path, i));
      json_object_set_int_member (revs, "start", node->pos);
      json_object_set_array_member (revs, "ids", ids);
      json_object_set_object_member (doc, "_revisions", revs);
    }
  return take_object (doc);
}

/* ---- writes ---------------------------------------------------------------------------- */

typedef struct
{
  char *id;
  char *rev; /* the `_rev` given, or NULL */
  gboolean deleted;
  guint start;                              /* `_revisions`, or the `_rev` alone */
  GPtrArray *ids;                           /* newest first */
  char *index[G_N_ELEMENTS (index_fields)]; /* the body's blind-indexed fields, when strings */
  GString *canonical;                       /* the body */
} Incoming;

static void wipe_free (gpointer data);

static void
incoming_clear (Incoming *in)
{
  g_clear_pointer (&in->id, g_free);
  g_clear_pointer (&in->rev, g_free);
  g_clear_pointer (&in->ids, g_ptr_array_unref);
  for (guint f = 0; f < G_N_ELEMENTS (in->index); f++)
    g_clear_pointer (&in->index[f], wipe_free);
  if (in->canonical != NULL)
    {
      hb_wipe (in->canonical->str, in->canonical->allocated_len);
      g_string_free (g_steal_pointer (&in->canonical), TRUE);
    }
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Incoming, incoming_clear)

G_GNUC_PRINTF (2, 3) static gboolean invalid (GError **error, const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  g_propagate_error (error, g_error_new_valist (HB_STORE_ERROR, HB_STORE_ERROR_INVALID, fmt, args));
  va_end (args);
  return FALSE;
}

/* The checks of `_revisions` once read: @ids holds its elements, NULL for those that are not
 * strings. */
static gboolean
take_revisions (Incoming *in, gint64 start, GPtrArray *ids, GError **error)
{
  guint pos = 0;
  g_autofree char *hash = NULL;

  if (ids->len == 0 || (gint64)ids->len > start)
    return invalid (error, "%s: _revisions.ids does not fit _revisions.start", in->id);
  in->start = (guint)start;
  in->ids = g_ptr_array_new_with_free_func (g_free);
  for (guint i = 0; i < ids->len; i++)
    {
      const char *s = g_ptr_array_index (ids, i);
      g_autofree char *probe = s ? g_strdup_printf ("1-%s", s) : NULL;

      if (probe == NULL || !hb_rev_parse (probe, &pos, NULL))
        return invalid (error, "%s: _revisions.ids must be revision hashes", in->id);
      g_ptr_array_add (in->ids, g_strdup (s));
    }
  if (!hb_rev_parse (in->rev, &pos, &hash) || pos != in->start
      || strcmp (hash, g_ptr_array_index (in->ids, 0)) != 0)
    return invalid (error, "%s: _rev does not match _revisions", in->id);
  return TRUE;
}

static const char revisions_not_object[] = "%s: _revisions must be an object";
static const char revisions_incomplete[] = "%s: _revisions needs start and ids";

static gboolean
parse_revisions (JsonNode *node, Incoming *in, GError **error)
{
  JsonObject *obj;
  JsonNode *start, *ids;
  g_autoptr (GPtrArray) strings = NULL;

  if (!JSON_NODE_HOLDS_OBJECT (node))
    return invalid (error, revisions_not_object, in->id);
  obj = json_node_get_object (node);
  start = json_object_get_member (obj, "start");
  ids = json_object_get_member (obj, "ids");
  if (start == NULL || json_node_get_value_type (start) != G_TYPE_INT64
      || json_node_get_int (start) < 1 || ids == NULL || !JSON_NODE_HOLDS_ARRAY (ids))
    return invalid (error, revisions_incomplete, in->id);
  strings = g_ptr_array_new ();
  for (guint i = 0; i < json_array_get_length (json_node_get_array (ids)); i++)
    {
      JsonNode *e = json_array_get_element (json_node_get_array (ids), i);

      g_ptr_array_add (strings,
                       JSON_NODE_HOLDS_VALUE (e) ? (char *)json_node_get_string (e) : NULL);
    }
  return take_revisions (in, json_node_get_int (start), strings, error);
}

/* After the special members were read: the checks of `_id` and `_rev`, and the history of a
 * replicated revision that comes without `_revisions`. */
static gboolean
check_identity (Incoming *in, gboolean new_edits, gboolean has_revisions, GError **error)
{
  guint pos;
  g_autofree char *hash = NULL;

  if (in->id == NULL)
    {
      if (!new_edits)
        return invalid (error, "%s", "A replicated document needs an _id");
      in->id = hb_random_uuid ();
    }
  if (g_str_has_prefix (in->id, "_") && !g_str_has_prefix (in->id, "_design/"))
    return invalid (error, "Only design documents may start with '_': %s", in->id);
  if (in->rev != NULL && !hb_rev_parse (in->rev, &pos, &hash))
    return invalid (error, "%s: _rev is not a revision (N-hash)", in->id);
  if (!new_edits)
    {
      if (in->rev == NULL)
        return invalid (error, "%s: a replicated document needs a _rev", in->id);
      if (!has_revisions)
        {
          in->start = pos;
          in->ids = g_ptr_array_new_with_free_func (g_free);
          g_ptr_array_add (in->ids, g_steal_pointer (&hash));
        }
    }
  return TRUE;
}

/* The blind-indexed fields of a body (or whole document), when they are strings. */
static void
index_values (JsonObject *body, const char **out)
{
  for (guint f = 0; f < G_N_ELEMENTS (index_fields); f++)
    {
      JsonNode *v = json_object_get_member (body, index_fields[f]);

      out[f] = v != NULL && json_node_get_value_type (v) == G_TYPE_STRING ? json_node_get_string (v)
                                                                          : NULL;
    }
}

static gboolean
parse_incoming (JsonNode *node, gboolean new_edits, Incoming *in, GError **error)
{
  JsonObject *doc;
  JsonObjectIter iter;
  const char *name;
  JsonNode *member;
  JsonNode *revisions = NULL;

  if (node == NULL || !JSON_NODE_HOLDS_OBJECT (node))
    return invalid (error, "%s", "A document must be a JSON object");
  doc = json_node_get_object (node);

  json_object_iter_init (&iter, doc);
  while (json_object_iter_next (&iter, &name, &member))
    {
      if (name[0] != '_')
        continue;
      if (strcmp (name, "_id") == 0)
        {
          const char *id = JSON_NODE_HOLDS_VALUE (member) ? json_node_get_string (member) : NULL;
          if (id == NULL || id[0] == '\0' || !g_utf8_validate (id, -1, NULL))
            return invalid (error, "%s", "_id must be a non-empty string");
          in->id = g_strdup (id);
        }
      else if (strcmp (name, "_rev") == 0)
        {
          const char *rev = JSON_NODE_HOLDS_VALUE (member) ? json_node_get_string (member) : NULL;
          if (rev == NULL)
            return invalid (error, "%s", "_rev must be a string");
          in->rev = g_strdup (rev);
        }
      else if (strcmp (name, "_deleted") == 0)
        in->deleted = JSON_NODE_HOLDS_VALUE (member)
                      && json_node_get_value_type (member) == G_TYPE_BOOLEAN
                      && json_node_get_boolean (member);
      else if (strcmp (name, "_revisions") == 0)
        revisions = member;
      else if (strcmp (name, "_conflicts") == 0 || strcmp (name, "_deleted_conflicts") == 0
               || strcmp (name, "_revs_info") == 0 || strcmp (name, "_local_seq") == 0)
        continue; /* read-only members a client may echo back; CouchDB ignores them too */
      else if (strcmp (name, "_attachments") == 0)
        return invalid (error, "%s", "Attachments are not supported");
      else
        return invalid (error, "Bad special document member: %s", name);
    }

  if (!check_identity (in, new_edits, revisions != NULL, error)
      || (!new_edits && revisions != NULL && !parse_revisions (revisions, in, error)))
    return FALSE;

  /* The body is the document minus its special members. */
  in->canonical = g_string_sized_new (1024);
  hb_json_append_canonical_body (in->canonical, doc);
  index_values (doc, (const char **)in->index);
  for (guint f = 0; f < G_N_ELEMENTS (in->index); f++)
    in->index[f] = g_strdup (in->index[f]);
  return TRUE;
}

/* ---- replicated revisions as text ---- */

/* parse_incoming() (new_edits FALSE) of a revision's JSON text, without JSON-GLib: the text is
 * checked as strict JSON, its top-level members walked once (the last of a name wins, names
 * compared decoded, as JSON-GLib reads them) and the canonical body written from the text
 * (hb_json_append_canonical_text()), so the same text gives the same Incoming, or the same
 * error, either way. One exception: parse_incoming() stops at the first refused special member
 * in JSON-GLib's hash order, having taken `_id` or not by then; where that order would show
 * (a refused member beside a valid `_id`, or two refused members) the text is left to the
 * tree (TEXT_USE_TREE), nothing in @in set yet. */

typedef enum
{
  TEXT_OK,
  TEXT_INVALID,
  TEXT_USE_TREE,
} TextParse;

static const char *const ignored_specials[] = {
  "_conflicts", "_deleted_conflicts", "_revs_info", "_local_seq", NULL,
};

static gboolean
parse_revisions_text (const HbJsonSpan *value, Incoming *in, GError **error)
{
  static const char *const names[] = { "start", "ids", NULL };
  HbJsonSpan members[G_N_ELEMENTS (names) - 1];
  const HbJsonSpan *start = &members[0];
  g_autoptr (GPtrArray) strings = NULL;
  gint64 start_value = 0;
  const guint8 *p;
  HbJsonSpan e;

  if (!hb_json_span_is (value, '{'))
    return invalid (error, revisions_not_object, in->id);
  hb_json_walk_object (value, names, members);
  /* A number without fraction or exponent is JSON-GLib's gint64 (checked: it fits). */
  if (start->start != NULL && (g_ascii_isdigit (start->start[0]) || start->start[0] == '-')
      && memchr (start->start, '.', start->end - start->start) == NULL
      && memchr (start->start, 'e', start->end - start->start) == NULL
      && memchr (start->start, 'E', start->end - start->start) == NULL)
    {
      g_autofree char *digits = g_strndup ((const char *)start->start, start->end - start->start);

      start_value = g_ascii_strtoll (digits, NULL, 10);
    }
  if (start_value < 1 || !hb_json_span_is (&members[1], '['))
    return invalid (error, revisions_incomplete, in->id);
  strings = g_ptr_array_new_with_free_func (g_free);
  p = members[1].start + 1;
  while (hb_json_walk_element (&p, members[1].end, &e))
    g_ptr_array_add (strings, hb_json_span_is (&e, '"') ? hb_json_span_string (&e) : NULL);
  return take_revisions (in, start_value, strings, error);
}

static TextParse
parse_incoming_text (const guint8 *data, gsize len, Incoming *in, GError **error)
{
  const guint8 *p = data, *end = data + len;
  HbJsonSpan root, name, value;
  HbJsonSpan id = { NULL }, rev = { NULL }, deleted = { NULL }, revisions = { NULL };
  HbJsonSpan index[G_N_ELEMENTS (index_fields)] = { { NULL } };
  g_autofree char *refused = NULL; /* a refused special member, decoded */
  guint n_refused = 0;
  g_autofree char *id_text = NULL;
  const char *why;

  if (data == NULL || len == 0 || len > G_MAXSSIZE || !hb_json_utf8_valid (data, len))
    {
      invalid (error, "%s", "A document must be UTF-8 JSON text");
      return TEXT_INVALID;
    }
  if ((why = hb_json_check_strict (data, len)) != NULL)
    {
      invalid (error, "A document must be strict JSON: it %s", why);
      return TEXT_INVALID;
    }
  hb_json_walk_ws (&p, end);
  root.start = p;
  hb_json_walk_value (&p, end);
  root.end = p;
  if (!hb_json_span_is (&root, '{'))
    {
      invalid (error, "%s", "A document must be a JSON object");
      return TEXT_INVALID;
    }

  p = root.start + 1;
  while (hb_json_walk_member (&p, root.end, &name, &value))
    {
      gboolean special;

      if (name.start[1] != '\\')
        special = name.start[1] == '_';
      else
        {
          char *decoded = hb_json_span_string (&name);

          special = decoded[0] == '_';
          wipe_free (decoded);
        }
      if (!special)
        {
          for (guint f = 0; f < G_N_ELEMENTS (index_fields); f++)
            if (hb_json_name_is (&name, index_fields[f]))
              index[f] = value;
          continue;
        }
      if (hb_json_name_is (&name, "_id"))
        id = value;
      else if (hb_json_name_is (&name, "_rev"))
        rev = value;
      else if (hb_json_name_is (&name, "_deleted"))
        deleted = value;
      else if (hb_json_name_is (&name, "_revisions"))
        revisions = value;
      else
        {
          gboolean ignored = FALSE;

          for (guint i = 0; ignored_specials[i] != NULL && !ignored; i++)
            ignored = hb_json_name_is (&name, ignored_specials[i]);
          if (ignored)
            continue;
          if (refused == NULL)
            {
              refused = hb_json_span_string (&name);
              n_refused = 1;
            }
          else if (!hb_json_name_is (&name, refused))
            n_refused++;
        }
    }

  /* JSON-GLib keeps the last member of a name; parse_incoming() refuses an _id that is not a
   * non-empty string (checked text is UTF-8), a _rev that is not a string. */
  if (id.start != NULL)
    {
      if (hb_json_span_is (&id, '"'))
        id_text = hb_json_span_string (&id);
      if (id_text == NULL || id_text[0] == '\0')
        {
          g_clear_pointer (&id_text, g_free);
          n_refused++;
        }
    }
  if (rev.start != NULL && !hb_json_span_is (&rev, '"'))
    n_refused++;
  if (n_refused > 1 || (n_refused == 1 && id_text != NULL))
    return TEXT_USE_TREE;
  if (n_refused == 1)
    {
      if (refused != NULL && strcmp (refused, "_attachments") == 0)
        invalid (error, "%s", "Attachments are not supported");
      else if (refused != NULL)
        invalid (error, "Bad special document member: %s", refused);
      else if (id.start != NULL && id_text == NULL)
        invalid (error, "%s", "_id must be a non-empty string");
      else
        invalid (error, "%s", "_rev must be a string");
      return TEXT_INVALID;
    }

  in->id = g_steal_pointer (&id_text);
  in->rev = rev.start != NULL ? hb_json_span_string (&rev) : NULL;
  in->deleted = hb_json_span_is (&deleted, 't');
  if (!check_identity (in, FALSE, revisions.start != NULL, error)
      || (revisions.start != NULL && !parse_revisions_text (&revisions, in, error)))
    return TEXT_INVALID;

  in->canonical = g_string_sized_new (root.end - root.start);
  hb_json_append_canonical_text (in->canonical, root.start, root.end - root.start, TRUE);
  for (guint f = 0; f < G_N_ELEMENTS (index_fields); f++)
    if (hb_json_span_is (&index[f], '"'))
      in->index[f] = hb_json_span_string (&index[f]);
  return TEXT_OK;
}

/* One replicated revision's text into @in, through parse_incoming_text() or, where it cannot
 * tell, JSON-GLib's tree of the (checked) text. */
static gboolean
parse_incoming_bytes (GBytes *text, Incoming *in, GError **error)
{
  gsize len = 0;
  const guint8 *data = text != NULL ? g_bytes_get_data (text, &len) : NULL;
  g_autoptr (JsonParser) parser = NULL;

  switch (parse_incoming_text (data, len, in, error))
    {
      case TEXT_OK:
        return TRUE;
      case TEXT_INVALID:
        return FALSE;
      case TEXT_USE_TREE:
      default:
        break;
    }
  /* Only for a document refused anyway: its tree's plaintext is left to JSON-GLib. */
  parser = json_parser_new_immutable ();
  if (!json_parser_load_from_data (parser, (const char *)data, (gssize)len, NULL))
    return invalid (error, "%s", "A document must be a JSON object");
  return parse_incoming (json_parser_get_root (parser), FALSE, in, error);
}

typedef struct
{
  guint64 seq;       /* the update sequence as the batch advances it */
  gint64 live_delta; /* documents whose winner is not deleted */
  gint64 deleted_delta;
  gboolean changed;
} Batch;

static char *
new_rev_hash (const char *parent_rev, gboolean deleted, const GString *canonical)
{
  static const char hex_digits[] = "0123456789abcdef";
  guint8 flag = deleted ? 1 : 0;
  const guint8 *pieces[] = { (const guint8 *)(parent_rev ? parent_rev : ""), (const guint8 *)"",
                             &flag, (const guint8 *)canonical->str };
  const gsize lens[] = { parent_rev ? strlen (parent_rev) : 0, 1, 1, canonical->len };
  guint8 digest[32];
  char *hex = g_malloc (33);

  /* parent || NUL || deletion flag || canonical body */
  hb_sha256_pieces (pieces, lens, G_N_ELEMENTS (pieces), digest);
  for (guint i = 0; i < 16; i++)
    {
      hex[2 * i] = hex_digits[digest[i] >> 4];
      hex[2 * i + 1] = hex_digits[digest[i] & 0xf];
    }
  hex[32] = '\0';
  return hex;
}

static GBytes *
seal_body (HbStore *self,
           HbConn *c,
           DocState *st,
           const char *rev,
           const GString *canonical,
           GError **error)
{
  return seal (self, c, 'B', &st->dk, rev, strlen (rev), canonical->str, canonical->len, error);
}

/* Bodies are appended to a rowid table and found by the row the tree records, so a write
 * touches the end of one B-tree instead of a random page of a keyed one. */
static gboolean
insert_body (HbConn *c, DocState *st, GBytes *sealed, gint64 *out_row, GError **error)
{
  sqlite3_stmt *stmt = conn_stmt (c, "INSERT INTO bodies (doc_key, body) VALUES (?, ?)", error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_blob (stmt, 1, st->dk.b, HB_MAC_LEN, SQLITE_STATIC);
  sqlite3_bind_blob (stmt, 2, g_bytes_get_data (sealed, NULL), g_bytes_get_size (sealed),
                     SQLITE_STATIC);
  if (!stmt_done (c, stmt, error))
    return FALSE;
  *out_row = sqlite3_last_insert_rowid (c->db);
  return TRUE;
}

static gboolean
delete_body_row (HbConn *c, gint64 row, GError **error)
{
  sqlite3_stmt *stmt = conn_stmt (c, "DELETE FROM bodies WHERE id = ?", error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, row);
  return stmt_done (c, stmt, error);
}

/* Reads a body of this document from the bodies table, as ciphertext. The row must belong to
 * the document: a damaged tree must not pull in another document's body. */
static GBytes *
fetch_body (HbConn *c, DocState *st, gint64 row, GError **error)
{
  sqlite3_stmt *stmt = conn_stmt (c, "SELECT body FROM bodies WHERE id = ? AND doc_key = ?", error);
  GBytes *sealed = NULL;
  int rc;

  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, row);
  sqlite3_bind_blob (stmt, 2, st->dk.b, HB_MAC_LEN, SQLITE_STATIC);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    sealed = g_bytes_new (sqlite3_column_blob (stmt, 0), sqlite3_column_bytes (stmt, 0));
  else if (rc == SQLITE_DONE)
    corrupt_error (error, "document body (missing row)");
  else
    sql_error (c->db, rc, "Reading a document body", error);
  sqlite3_reset (stmt);
  return sealed;
}

/* The reads place_bodies will need, done before anything is written so that a damaged record
 * fails its document without leaving half a write behind. */
static gboolean
prefetch_bodies (HbConn *c, DocState *st, GError **error)
{
  gint winner = hb_rev_tree_winner (st->tree);
  HbRevNode *top;

  if (winner < 0)
    return TRUE;
  for (guint i = 0; i < st->tree->nodes->len; i++)
    if (hb_rev_tree_node (st->tree, i)->body == BODY_INLINE && (gint)i != winner
        && st->inline_body == NULL)
      return corrupt_error (error, "document body (missing)");
  top = hb_rev_tree_node (st->tree, winner);
  if (top->body > 0 && (st->winner_body = fetch_body (c, st, top->body, error)) == NULL)
    return FALSE;
  return TRUE;
}

/* Puts every body where it belongs after the tree changed: the winner's in the row; the new
 * revision's (new_sealed, if any) and a displaced former winner's in the bodies table. */
static gboolean
place_bodies (HbConn *c, DocState *st, const char *new_rev, GBytes *new_sealed, GError **error)
{
  gint winner = hb_rev_tree_winner (st->tree);
  gint fresh = new_sealed != NULL ? hb_rev_tree_find_rev (st->tree, new_rev) : -1;
  g_autoptr (GBytes) inline_body = NULL;
  HbRevNode *top;

  for (guint i = 0; i < st->tree->nodes->len; i++)
    {
      HbRevNode *node = hb_rev_tree_node (st->tree, i);

      if (node->body != BODY_INLINE || (gint)i == winner)
        continue;
      if (st->inline_body == NULL)
        node->body = BODY_NONE;
      else if (!insert_body (c, st, st->inline_body, &node->body, error))
        return FALSE;
    }
  if (fresh >= 0 && fresh != winner
      && !insert_body (c, st, new_sealed, &hb_rev_tree_node (st->tree, fresh)->body, error))
    return FALSE;

  top = hb_rev_tree_node (st->tree, winner);
  if (winner == fresh)
    inline_body = g_bytes_ref (new_sealed);
  else if (top->body > 0)
    {
      if (!delete_body_row (c, top->body, error))
        return FALSE;
      inline_body = g_steal_pointer (&st->winner_body);
    }
  else if (top->body == BODY_INLINE && st->inline_body != NULL)
    inline_body = g_bytes_ref (st->inline_body);
  /* A winner whose inline body went missing stays marked inline, so it keeps reading as
   * corrupt instead of turning into a revision that merely has no body. */
  if (inline_body != NULL || top->body == BODY_INLINE)
    top->body = BODY_INLINE;
  else
    top->body = BODY_NONE;
  g_clear_pointer (&st->inline_body, g_bytes_unref);
  st->inline_body = g_steal_pointer (&inline_body);
  return TRUE;
}

static gboolean
delete_bodies (HbConn *c, GArray *bodies, GError **error)
{
  for (guint i = 0; i < bodies->len; i++)
    {
      gint64 row = g_array_index (bodies, gint64, i);

      /* An inline body goes with the row, which is rewritten anyway. */
      if (row > 0 && !delete_body_row (c, row, error))
        return FALSE;
    }
  return TRUE;
}

static void
bind_mac (sqlite3_stmt *stmt, int col, DocState *st, guint f)
{
  if (st->has_mac[f])
    sqlite3_bind_blob (stmt, col, st->macs[f], INDEX_MAC_LEN, SQLITE_STATIC);
  else
    sqlite3_bind_null (stmt, col);
}

static gboolean
delete_doc_row (HbConn *c, DocState *st, GError **error)
{
  sqlite3_stmt *stmt = conn_stmt (c, "DELETE FROM docs WHERE " DOC_KEY_MATCH, error);

  if (stmt == NULL)
    return FALSE;
  bind_doc_key (stmt, &st->dk);
  return stmt_done (c, stmt, error);
}

/* Writes the document's row under sequence seq, replacing its previous row. A plain INSERT:
 * a sequence already taken is an error, never a silent replacement of another document. */
static gboolean
save_row (HbStore *self, HbConn *c, DocState *st, guint64 seq, GError **error)
{
  g_autoptr (GBytes) plain = hb_rev_tree_serialize (st->tree, st->id);
  g_autoptr (GBytes) sealed = NULL;
  guint8 extra[META_AD_LEN];
  sqlite3_stmt *stmt;
  gsize len;
  const guint8 *data = g_bytes_get_data (plain, &len);

  st->seq = seq;
  meta_ad (st, extra);
  sealed = seal (self, c, 'M', &st->dk, extra, sizeof extra, data, len, error);
  hb_wipe ((gpointer)data, len);
  if (sealed == NULL)
    return FALSE;
  /* A new document has no row to replace; the UNIQUE doc_key still guards the insert. */
  if (st->exists && !delete_doc_row (c, st, error))
    return FALSE;
  stmt = conn_stmt (c,
                    "INSERT INTO docs (seq, doc_key, meta, type_mac, session_mac, patient_mac,"
                    " body, key_prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, (sqlite3_int64)seq);
  sqlite3_bind_blob (stmt, 2, st->dk.b, HB_MAC_LEN, SQLITE_STATIC);
  sqlite3_bind_blob (stmt, 3, g_bytes_get_data (sealed, NULL), g_bytes_get_size (sealed),
                     SQLITE_STATIC);
  for (guint f = 0; f < G_N_ELEMENTS (index_fields); f++)
    bind_mac (stmt, 4 + f, st, f);
  if (st->inline_body != NULL)
    sqlite3_bind_blob (stmt, 7, g_bytes_get_data (st->inline_body, NULL),
                       g_bytes_get_size (st->inline_body), SQLITE_STATIC);
  else
    sqlite3_bind_null (stmt, 7);
  sqlite3_bind_int64 (stmt, 8, hb_keys_prefix (st->dk.b));
  return stmt_done (c, stmt, error);
}

/* The blind index follows the winning revision. */
static void
index_winner (HbStore *self, HbConn *c, DocState *st, const char *const *values)
{
  for (guint f = 0; f < G_N_ELEMENTS (index_fields); f++)
    {
      st->has_mac[f] = values != NULL && values[f] != NULL;
      if (st->has_mac[f])
        index_mac (c, f, values[f], st->macs[f]);
    }
}

static void
count_winner (HbRevTree *tree, gint64 sign, Batch *batch)
{
  gint w = hb_rev_tree_winner (tree);

  if (w < 0)
    return;
  if (hb_rev_tree_node (tree, w)->deleted)
    batch->deleted_delta += sign;
  else
    batch->live_delta += sign;
}

/* After the tree changed in memory: stem it and, if the winner moved, index the new winner.
 * Only reads, so a document that fails here (a corrupt body) leaves nothing half-written. */
static gboolean
prepare_update (HbStore *self,
                HbConn *c,
                DocState *st,
                const char *old_winner,
                const char *new_rev,
                char *const *new_index,
                GArray *removed,
                GError **error)
{
  g_autofree char *winner_rev = NULL;
  g_autoptr (JsonObject) body = NULL;
  const char *loaded[G_N_ELEMENTS (index_fields)];
  const char *const *values = NULL;
  gint winner;

  hb_rev_tree_stem (st->tree, g_atomic_int_get (&self->revs_limit), removed);
  if (!prefetch_bodies (c, st, error))
    return FALSE;
  winner = hb_rev_tree_winner (st->tree);
  if (winner < 0)
    return TRUE;
  winner_rev = hb_rev_tree_rev_string (st->tree, winner);
  if (g_strcmp0 (old_winner, winner_rev) == 0)
    return TRUE;
  if (!hb_rev_tree_node (st->tree, winner)->deleted)
    {
      if (new_index != NULL && g_strcmp0 (winner_rev, new_rev) == 0)
        values = (const char *const *)new_index;
      else if ((body = load_body (self, c, st, winner, error)) == NULL)
        return FALSE;
      else
        {
          index_values (body, loaded);
          values = loaded;
        }
    }
  index_winner (self, c, st, values);
  return TRUE;
}

/* The writes of a prepared update: drop stemmed or purged bodies, place the others (new_sealed
 * is the new revision's, if it brings one), then the row. */
static gboolean
commit_update (HbStore *self,
               HbConn *c,
               DocState *st,
               const char *new_rev,
               GBytes *new_sealed,
               GArray *removed,
               Batch *batch,
               GError **error)
{
  if (!delete_bodies (c, removed, error))
    return FALSE;
  batch->changed = TRUE;
  batch->seq++;
  if (st->tree->nodes->len == 0)
    return delete_doc_row (c, st, error);
  if (!place_bodies (c, st, new_rev, new_sealed, error)
      || !save_row (self, c, st, batch->seq, error))
    return FALSE;
  count_winner (st->tree, 1, batch);
  return TRUE;
}

static char *
winner_rev_string (HbRevTree *tree)
{
  gint w = hb_rev_tree_winner (tree);

  return w >= 0 ? hb_rev_tree_rev_string (tree, w) : NULL;
}

/* Adds the new revision of a local edit. *present tells that the tree already had it: the same
 * edit applied to the same parent always yields the same revision id, for instance on a root
 * left by stemming, which is then joined to its parent instead of appearing twice. */
static gint
apply_new_edit (DocState *st, Incoming *in, gboolean *present, GError **error)
{
  gint parent = -1;
  g_autofree char *parent_rev = NULL;
  g_autofree char *hash = NULL;
  guint pos;
  gint existing;

  if (in->rev != NULL)
    {
      parent = hb_rev_tree_find_rev (st->tree, in->rev);
      if (parent < 0 || !hb_rev_tree_is_leaf (st->tree, parent))
        parent = -2;
    }
  else if (st->exists)
    {
      /* Without _rev, only a deleted document may be written again; the new revision
       * continues the deleted branch, as CouchDB does. */
      parent = hb_rev_tree_winner (st->tree);
      if (parent >= 0 && !hb_rev_tree_node (st->tree, parent)->deleted)
        parent = -2;
    }
  if (parent == -2)
    {
      g_set_error_literal (error, HB_STORE_ERROR, HB_STORE_ERROR_CONFLICT,
                           "Document update conflict");
      return -1;
    }
  if (parent >= 0)
    parent_rev = hb_rev_tree_rev_string (st->tree, parent);
  hash = new_rev_hash (parent_rev, in->deleted, in->canonical);
  pos = parent >= 0 ? hb_rev_tree_node (st->tree, parent)->pos + 1 : 1;
  existing = hb_rev_tree_find (st->tree, pos, hash);
  *present = existing >= 0;
  if (existing >= 0)
    {
      if (hb_rev_tree_node (st->tree, existing)->parent < 0)
        hb_rev_tree_node (st->tree, existing)->parent = parent;
      return existing;
    }
  return hb_rev_tree_add (st->tree, parent, pos, hash, in->deleted);
}

/* Writes one document inside the batch's transaction. Returns the new (or already present)
 * revision; document-level failures set error with a code other than FAILED. */
static char *
write_one (HbStore *self, HbConn *c, Incoming *in, gboolean new_edits, Batch *batch, GError **error)
{
  g_auto (DocState) st = { 0 };
  g_autofree char *old_winner = NULL;
  g_autofree char *new_rev = NULL;
  g_autoptr (GArray) removed = g_array_new (FALSE, FALSE, sizeof (gint64));
  g_autoptr (GBytes) new_sealed = NULL;
  gboolean present = FALSE;
  gint index;

  doc_key_for (c, in->id, &st.dk);
  if (!load_doc (self, c, &st, error))
    return NULL;
  if (st.exists && strcmp (st.id, in->id) != 0)
    {
      corrupt_error (error, "document record (id mismatch)");
      return NULL;
    }
  if (!st.exists)
    st.id = g_strdup (in->id);
  old_winner = winner_rev_string (st.tree);
  /* The caller restores the batch if this document fails. */
  count_winner (st.tree, -1, batch);

  if (new_edits)
    index = apply_new_edit (&st, in, &present, error);
  else
    {
      gboolean added = FALSE;

      index = hb_rev_tree_merge_path (st.tree, in->start, (const char *const *)in->ids->pdata,
                                      in->ids->len, in->deleted, &added);
      if (!added)
        {
          count_winner (st.tree, 1, batch);
          return hb_rev_tree_rev_string (st.tree, index);
        }
    }
  if (index < 0)
    return NULL;

  new_rev = hb_rev_tree_rev_string (st.tree, index);
  if (!(present && hb_rev_tree_node (st.tree, index)->body != BODY_NONE)
      && (new_sealed = seal_body (self, c, &st, new_rev, in->canonical, error)) == NULL)
    return NULL;
  if (!prepare_update (self, c, &st, old_winner, new_rev, in->index, removed, error)
      || !commit_update (self, c, &st, new_rev, new_sealed, removed, batch, error))
    return NULL;
  return g_steal_pointer (&new_rev);
}

static const char *
error_name (const GError *error)
{
  switch (error->code)
    {
      case HB_STORE_ERROR_CONFLICT:
        return "conflict";
      case HB_STORE_ERROR_INVALID:
        return "bad_request";
      case HB_STORE_ERROR_CORRUPT:
        return "corrupt";
      case HB_STORE_ERROR_NOT_FOUND:
        return "not_found";
      default:
        return "error";
    }
}

static JsonNode *
result_node (const char *id, const char *rev, const GError *error)
{
  JsonObject *obj = json_object_new ();

  if (id != NULL)
    json_object_set_string_member (obj, "id", id);
  if (error == NULL)
    {
      json_object_set_boolean_member (obj, "ok", TRUE);
      json_object_set_string_member (obj, "rev", rev);
    }
  else
    {
      json_object_set_string_member (obj, "error", error_name (error));
      json_object_set_string_member (obj, "reason", error->message);
    }
  return take_object (obj);
}

static gboolean
is_fatal (const GError *error)
{
  return error->domain != HB_STORE_ERROR || error->code == HB_STORE_ERROR_FAILED
         || error->code == HB_STORE_ERROR_LOCKED;
}

static gboolean
save_counters (HbConn *c, const Batch *batch, GError **error)
{
  sqlite3_stmt *stmt = conn_stmt (c,
                                  "UPDATE hb_meta SET value = CASE key"
                                  " WHEN 'update_seq' THEN ?1"
                                  " WHEN 'doc_count' THEN value + ?2"
                                  " WHEN 'deleted_doc_count' THEN value + ?3 END"
                                  " WHERE key IN ('update_seq', 'doc_count', 'deleted_doc_count')",
                                  error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, (sqlite3_int64)batch->seq);
  sqlite3_bind_int64 (stmt, 2, batch->live_delta);
  sqlite3_bind_int64 (stmt, 3, batch->deleted_delta);
  return stmt_done (c, stmt, error);
}

static gboolean
emit_changed_idle (gpointer data)
{
  g_autoptr (HbStore) self = g_weak_ref_get (data);

  if (self != NULL)
    g_signal_emit (self, signals[CHANGED], 0, hb_store_get_update_seq (self));
  return G_SOURCE_REMOVE;
}

static void
weak_ref_free (gpointer data)
{
  g_weak_ref_clear (data);
  g_free (data);
}

/* Always through a source on the owner's context: invoking directly would run the handler on
 * a worker thread whenever that thread manages to acquire the context. */
static void
schedule_changed (HbStore *self)
{
  g_autoptr (GSource) source = g_idle_source_new ();
  GWeakRef *ref = g_new0 (GWeakRef, 1);

  /* A weak reference: a program that never runs the owner's loop (a CLI) must not keep the
   * store, and its keys, alive through pending sources. */
  g_weak_ref_init (ref, self);
  g_source_set_priority (source, G_PRIORITY_DEFAULT);
  g_source_set_callback (source, emit_changed_idle, ref, weak_ref_free);
  g_source_set_static_name (source, "[hbsync] HbStore::changed");
  g_source_attach (source, self->owner_context);
}

typedef gboolean (*WriteFunc) (HbStore *self,
                               HbConn *c,
                               Batch *batch,
                               gpointer data,
                               GCancellable *cancellable,
                               GError **error);

/* One write transaction: the writer lock, BEGIN IMMEDIATE, the work, counters, COMMIT; on any
 * fatal error everything rolls back and the in-memory sequence is untouched. */
static gboolean
run_write (HbStore *self, WriteFunc func, gpointer data, GCancellable *cancellable, GError **error)
{
  Batch batch = { 0 };
  gboolean ok;

  if (!keys_acquire (self, error))
    return FALSE;
  g_mutex_lock (&self->write_lock);
  ok = self->writer != NULL && conn_use_keys (self, self->writer, error)
       && conn_run (self->writer, "BEGIN IMMEDIATE", error);
  if (ok)
    {
      /* From the file, not from memory: another HbStore (another process, the CLI) may have
       * written since this one last did. */
      batch.seq = (guint64)meta_int (self->writer, "update_seq", 0);
      ok = func (self, self->writer, &batch, data, cancellable, error)
           && (!batch.changed || save_counters (self->writer, &batch, error))
           && conn_run (self->writer, "COMMIT", error);
      if (!ok)
        (void)sqlite3_exec (self->writer->db, "ROLLBACK", NULL, NULL, NULL);
    }
  if (ok && batch.changed)
    __atomic_store_n (&self->update_seq, batch.seq, __ATOMIC_RELEASE);
  g_mutex_unlock (&self->write_lock);
  keys_release (self);
  if (ok && batch.changed)
    schedule_changed (self);
  return ok;
}

typedef struct
{
  GPtrArray *docs; /* of JsonNode, or NULL for texts */
  gboolean new_edits;
  GPtrArray *results;
  GPtrArray *texts; /* of GBytes (replicated revisions, new_edits FALSE) */
} BulkArgs;

static gboolean
write_docs (HbStore *self,
            HbConn *c,
            Batch *batch,
            gpointer data,
            GCancellable *cancellable,
            GError **error)
{
  BulkArgs *args = data;
  guint n = args->texts != NULL ? args->texts->len : args->docs->len;

  for (guint i = 0; i < n; i++)
    {
      g_auto (Incoming) in = { 0 };
      g_autoptr (GError) doc_error = NULL;
      g_autofree char *rev = NULL;
      Batch saved = *batch;

      if (g_cancellable_set_error_if_cancelled (cancellable, error))
        return FALSE;
      /* A document-level failure happens before that document writes anything (see
       * prepare_update), so the batch needs no savepoint per document. */
      if (args->texts != NULL
              ? parse_incoming_bytes (g_ptr_array_index (args->texts, i), &in, &doc_error)
              : parse_incoming (g_ptr_array_index (args->docs, i), args->new_edits, &in,
                                &doc_error))
        {
          rev = write_one (self, c, &in, args->new_edits, batch, &doc_error);
          if (rev == NULL)
            *batch = saved;
        }
      if (doc_error != NULL && is_fatal (doc_error))
        {
          g_propagate_error (error, g_steal_pointer (&doc_error));
          return FALSE;
        }
      g_ptr_array_add (args->results, result_node (in.id, rev, doc_error));
    }
  return TRUE;
}

/* ---- reads ----------------------------------------------------------------------------- */

typedef gboolean (*ReadFunc) (
    HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error);

/* One read transaction on a pooled connection, so a document record and its bodies are read
 * from the same snapshot even while a writer commits. */
static gboolean
run_read (HbStore *self, ReadFunc func, gpointer data, GCancellable *cancellable, GError **error)
{
  HbConn *c;
  gboolean ok;

  if (!keys_acquire (self, error))
    return FALSE;
  c = reader_acquire (self, error);
  ok = c != NULL && conn_use_keys (self, c, error) && conn_run (c, "BEGIN", error);
  if (ok)
    {
      ok = func (self, c, data, cancellable, error);
      (void)conn_run (c, "COMMIT", NULL);
    }
  reader_release (self, c);
  keys_release (self);
  return ok;
}

typedef struct
{
  const char *id;
  const char *rev;
  HbGetFlags flags;
  JsonNode *result;
} GetArgs;

static gboolean pick_revision (
    DocState *st, const char *id, const char *rev, HbGetFlags flags, gint *index, GError **error);

/* Loads a document and picks the revision to read: the given one, or the winner. */
static gboolean
locate_doc (HbStore *self,
            HbConn *c,
            DocState *st,
            const char *id,
            const char *rev,
            HbGetFlags flags,
            gint *index,
            GError **error)
{
  doc_key_for (c, id, &st->dk);
  if (!load_doc_full (self, c, st, TRUE, error))
    return FALSE;
  return pick_revision (st, id, rev, flags, index, error);
}

static gboolean
pick_revision (
    DocState *st, const char *id, const char *rev, HbGetFlags flags, gint *index, GError **error)
{
  if (!st->exists)
    {
      g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND, "No document %s", id);
      return FALSE;
    }
  if (rev != NULL)
    {
      *index = hb_rev_tree_find_rev (st->tree, rev);
      if (*index < 0)
        {
          g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND,
                       "Document %s has no revision %s", id, rev);
          return FALSE;
        }
      return TRUE;
    }
  *index = hb_rev_tree_winner (st->tree);
  if (hb_rev_tree_node (st->tree, *index)->deleted && !(flags & HB_GET_FLAGS_DELETED))
    {
      g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND, "Document %s is deleted", id);
      return FALSE;
    }
  return TRUE;
}

/* The revision at @index of a loaded document, parsed. */
static gpointer
doc_of_state (HbStore *self, HbConn *c, DocState *st, gint index, HbGetFlags flags, GError **error)
{
  g_autoptr (JsonObject) body = load_body (self, c, st, index, error);

  return body != NULL ? build_doc (st, index, body, flags) : NULL;
}

static JsonNode *
read_doc (
    HbStore *self, HbConn *c, const char *id, const char *rev, HbGetFlags flags, GError **error)
{
  g_auto (DocState) st = { 0 };
  gint index;

  if (!locate_doc (self, c, &st, id, rev, flags, &index, error))
    return NULL;
  return doc_of_state (self, c, &st, index, flags, error);
}

static gboolean
get_func (HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error)
{
  GetArgs *args = data;

  args->result = read_doc (self, c, args->id, args->rev, args->flags, error);
  return args->result != NULL;
}

typedef struct
{
  const char *const *ids;
  HbGetFlags flags;
  GPtrArray *results;
  /* What is made of a document once its row is loaded, and what stands in its place when it
   * cannot be read. */
  gpointer (*from_state) (
      HbStore *self, HbConn *c, DocState *st, gint index, HbGetFlags flags, GError **error);
  /* Optional, for a batch: the same made straight from the row where that is quicker; FALSE,
   * with nothing set, to leave the row to from_state. */
  gboolean (*from_row) (HbStore *self,
                        HbConn *c,
                        sqlite3_stmt *stmt,
                        DocState *st,
                        HbGetFlags flags,
                        gpointer *out,
                        GError **error);
  gpointer (*error_item) (const char *id, const GError *error);
} ManyArgs;

static JsonNode *
error_row (const char *id, const GError *error)
{
  return result_node (id, NULL, error);
}

/* The rows of several documents in one statement: the keys, HB_MAC_LEN bytes each, are bound
 * together as ?1 and each row comes with the index of its key (column 7), in the keys' order.
 * Run once for a batch, the statement opens its cursors once and keeps its registers' buffers
 * from row to row, where one lookup per document pays for both every time: a third of a
 * document's read. The keys come from hb_keys() (hb-keys-vtab.c), which reads a fifth faster
 * than a recursive CTE taking substr() of the blob did. */
#define DOC_ROWS_BY_KEYS                                                                           \
  "SELECT d.seq, NULL, d.meta, d.type_mac, d.session_mac, d.patient_mac, d.body, k.i"              \
  " FROM hb_keys(?1) AS k CROSS JOIN docs AS d"                                                    \
  " WHERE d.key_prefix = k.prefix AND d.doc_key = k.key"

G_STATIC_ASSERT (HB_MAC_LEN == HB_KEYS_KEY_LEN);

/* get_many_func() for two documents or more: their rows read with DOC_ROWS_BY_KEYS. */
static gboolean
get_many_rows (
    HbStore *self, HbConn *c, ManyArgs *args, guint n, GCancellable *cancellable, GError **error)
{
  g_autofree guint8 *keys = g_malloc (n * HB_MAC_LEN);
  g_autofree gpointer *items = g_new0 (gpointer, n);
  sqlite3_stmt *stmt;
  gboolean ok = TRUE;
  int rc;

  for (guint i = 0; i < n; i++)
    {
      DocKey dk;

      doc_key_for (c, args->ids[i], &dk);
      memcpy (keys + i * HB_MAC_LEN, dk.b, HB_MAC_LEN);
    }
  stmt = conn_stmt (c, DOC_ROWS_BY_KEYS, error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_blob (stmt, 1, keys, (int)(n * HB_MAC_LEN), SQLITE_STATIC);
  while (ok && (rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      gint64 i = sqlite3_column_int64 (stmt, 7);
      g_autoptr (GError) doc_error = NULL;
      g_auto (DocState) st = { 0 };
      gpointer item = NULL;
      gint index;

      if (g_cancellable_set_error_if_cancelled (cancellable, error))
        {
          ok = FALSE;
          break;
        }
      if (i < 0 || (guint64)i >= n || items[i] != NULL)
        continue;
      memcpy (st.dk.b, keys + i * HB_MAC_LEN, HB_MAC_LEN);
      /* The body is borrowed from the row, which stays current until the next step. */
      st.row_stmt = stmt;
      if (args->from_row != NULL
          && args->from_row (self, c, stmt, &st, args->flags, &item, &doc_error))
        ;
      else if (doc_from_row (self, c, stmt, &st, &doc_error)
               && pick_revision (&st, args->ids[i], NULL, args->flags, &index, &doc_error))
        item = args->from_state (self, c, &st, index, args->flags, &doc_error);
      /* The statement is the batch's: clearing the state must not reset it. */
      st.row_stmt = NULL;
      if (item == NULL && is_fatal (doc_error))
        {
          g_propagate_error (error, g_steal_pointer (&doc_error));
          ok = FALSE;
          break;
        }
      items[i] = item != NULL ? item : args->error_item (args->ids[i], doc_error);
    }
  if (ok && rc != SQLITE_DONE)
    ok = sql_error (c->db, rc, "Reading documents", error);
  sqlite3_reset (stmt);
  for (guint i = 0; i < n; i++)
    {
      if (ok && items[i] == NULL)
        {
          /* No row: the error of a document that does not exist. */
          g_auto (DocState) none = { 0 };
          g_autoptr (GError) missing = NULL;
          gint index;

          (void)pick_revision (&none, args->ids[i], NULL, args->flags, &index, &missing);
          items[i] = args->error_item (args->ids[i], missing);
        }
      /* On failure the caller drops the array, and with it what is in it. */
      if (items[i] != NULL)
        g_ptr_array_add (args->results, items[i]);
    }
  return ok;
}

static gboolean
get_many_func (HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error)
{
  ManyArgs *args = data;
  guint n = g_strv_length ((char **)args->ids);
  g_autoptr (GError) doc_error = NULL;
  g_auto (DocState) st = { 0 };
  gpointer doc = NULL;
  gint index;

  if (n >= 2)
    return get_many_rows (self, c, args, n, cancellable, error);
  if (n == 0)
    return TRUE;
  /* One document alone: its own lookup. */
  if (g_cancellable_set_error_if_cancelled (cancellable, error))
    return FALSE;
  if (locate_doc (self, c, &st, args->ids[0], NULL, args->flags, &index, &doc_error))
    doc = args->from_state (self, c, &st, index, args->flags, &doc_error);
  if (doc == NULL && is_fatal (doc_error))
    {
      g_propagate_error (error, g_steal_pointer (&doc_error));
      return FALSE;
    }
  g_ptr_array_add (args->results, doc != NULL ? doc : args->error_item (args->ids[0], doc_error));
  return TRUE;
}

static gpointer
error_item_node (const char *id, const GError *error)
{
  return error_row (id, error);
}

static gpointer
error_item_bytes (const char *id, const GError *error)
{
  g_autoptr (JsonNode) row = error_row (id, error);
  char *text = json_to_string (row, FALSE);

  return g_bytes_new_take (text, strlen (text));
}

/* A heap block of plaintext, wiped whole before it is freed. */
static void
wipe_free (gpointer data)
{
  if (data == NULL)
    return;
  hb_wipe (data, malloc_usable_size (data));
  g_free (data);
}

/* One revision (the winner when rev is NULL) as JSON text without parsing its body: the special
 * members (serialized from a document with an empty body) are written first, and the sealed
 * canonical text is opened right after them in the same buffer, its opening brace then
 * overwritten; the plaintext is never copied. */
static gpointer json_of_state (
    HbStore *self, HbConn *c, DocState *st, gint index, HbGetFlags flags, GError **error);

static GBytes *
read_rev_json (
    HbStore *self, HbConn *c, const char *id, const char *rev, HbGetFlags flags, GError **error)
{
  g_auto (DocState) st = { 0 };
  gint index;

  if (!locate_doc (self, c, &st, id, rev, flags, &index, error))
    return NULL;
  return json_of_state (self, c, &st, index, flags, error);
}

/* The document as JSON text: @head (its special members, as an object without its closing
 * brace) followed by the members of the sealed body of revision @rev_text, opened in place
 * after it. */
static GBytes *
json_with_head (HbStore *self,
                HbConn *c,
                const DocKey *dk,
                const char *rev_text,
                const char *head,
                gsize head_len,
                const guint8 *sealed,
                gsize sealed_len,
                GError **error)
{
  char *out;
  gsize len = 0;

  if (sealed_len < HB_SEAL_OVERHEAD + 2)
    {
      corrupt_error (error, "document body");
      return NULL;
    }
  /* Exactly the room needed (and a NUL), not a GString's power of two: a caller holding a batch
   * of these would otherwise make the allocator trim and fault the heap back in on every
   * batch. */
  out = g_malloc (head_len + sealed_len - HB_SEAL_OVERHEAD + 1);
  memcpy (out, head, head_len);
  if (!unseal_into (self, c, 'B', dk, rev_text, strlen (rev_text), sealed, sealed_len,
                    (guint8 *)out + head_len, &len, "document body", error)
      || ((len < 2 || out[head_len] != '{' || out[head_len + len - 1] != '}')
          && !corrupt_error (error, "document body")))
    {
      wipe_free (out);
      return NULL;
    }
  if (len == 2)
    {
      /* An empty body: the head is the whole document. */
      out[head_len] = '}';
      len = head_len + 1;
    }
  else
    {
      out[head_len] = ',';
      len = head_len + len;
    }
  /* Not counted in the size, as with a GString: callers may treat the text as a string. */
  out[len] = '\0';
  return g_bytes_new_with_free_func (out, len, wipe_free, out);
}

/* A per-thread buffer for the head of a document being read, wiped after each use. */
static GString *
head_buffer (void)
{
  static GPrivate buf = G_PRIVATE_INIT (string_free_all);
  GString *head = g_private_get (&buf);

  if (head == NULL)
    {
      head = g_string_sized_new (256);
      g_private_set (&buf, head);
    }
  g_string_truncate (head, 0);
  return head;
}

static void
head_wipe (GString *head)
{
  hb_wipe (head->str, head->len);
  g_string_truncate (head, 0);
}

/* The common head, {"_id":...,"_rev":"..." */
static void
append_common_head (GString *head, const char *id, gsize id_len, const char *rev_text)
{
  g_string_append (head, "{\"_id\":");
  hb_json_append_string_len (head, id, id_len);
  g_string_append (head, ",\"_rev\":");
  hb_json_append_string (head, rev_text);
}

/* The revision at @index of a loaded document, as JSON text. */
static gpointer
json_of_state (HbStore *self, HbConn *c, DocState *st, gint index, HbGetFlags flags, GError **error)
{
  g_autofree char *specials_text = NULL;
  sqlite3_stmt *body_stmt = NULL;
  const guint8 *sealed;
  const char *rev_text;
  GString *head;
  GBytes *text;
  gsize sealed_len;

  if ((flags & (HB_GET_FLAGS_CONFLICTS | HB_GET_FLAGS_REVISIONS)) != 0
      || hb_rev_tree_node (st->tree, index)->deleted)
    {
      g_autoptr (JsonObject) empty = json_object_new ();
      g_autoptr (JsonNode) specials = build_doc (st, index, empty, flags);
      gsize specials_len;

      specials_text = hb_json_to_canonical (specials, &specials_len);
      /* Without its closing brace. */
      specials_text[specials_len - 1] = '\0';
    }
  /* After build_doc, which reuses the same buffer. */
  rev_text = rev_string_tmp (st->tree, index);
  sealed = find_sealed_body (c, st, index, rev_text, &sealed_len, &body_stmt, error);
  if (sealed == NULL)
    return NULL;
  head = head_buffer ();
  if (specials_text != NULL)
    {
      g_string_append (head, specials_text);
      hb_wipe (specials_text, strlen (specials_text));
    }
  else
    append_common_head (head, st->id, strlen (st->id), rev_text);
  text = json_with_head (self, c, &st->dk, rev_text, head->str, head->len, sealed, sealed_len,
                         error);
  head_wipe (head);
  if (body_stmt != NULL)
    sqlite3_reset (body_stmt);
  return text;
}

/* The winner of a row selected by DOC_ROWS_BY_KEYS, as JSON text (a GBytes), read straight
 * from the opened record without building its revision tree: what a batch read of current
 * documents does for nearly every row. FALSE, with nothing set, when the row is not of that
 * common case (extras asked for, a record too big for the stack, a big tree, a deleted winner,
 * a body kept outside the row): the caller then takes the general way, which also gives every
 * error. TRUE with *out set, or with *error set for a corrupt record. */
static gboolean
json_of_row (HbStore *self,
             HbConn *c,
             sqlite3_stmt *stmt,
             DocState *st,
             HbGetFlags flags,
             gpointer *out,
             GError **error)
{
  guint8 extra[META_AD_LEN];
  guint8 plain[1024];
  gsize sealed_len, plain_len = 0, body_len;
  const guint8 *body;
  HbRevPeek peek;
  GString *head;
  char rev_text[16 + 128];
  gsize rev_len;

  *out = NULL;
  sealed_len = (gsize)sqlite3_column_bytes (stmt, 2);
  if ((flags & (HB_GET_FLAGS_CONFLICTS | HB_GET_FLAGS_REVISIONS)) != 0
      || sealed_len > HB_SEAL_OVERHEAD + sizeof plain
      || sqlite3_column_type (stmt, 6) == SQLITE_NULL)
    return FALSE;
  if (!row_columns (stmt, st, error))
    return TRUE;
  meta_ad (st, extra);
  if (!unseal_into (self, c, 'M', &st->dk, extra, sizeof extra, sqlite3_column_blob (stmt, 2),
                    sealed_len, plain, &plain_len, "document record", error))
    return TRUE;
  if (!hb_rev_tree_peek_winner (plain, plain_len, &peek) || peek.deleted || peek.body != BODY_INLINE
      || peek.hash_len > 128)
    {
      hb_wipe (plain, plain_len);
      return FALSE;
    }
  rev_len = format_rev (rev_text, peek.pos, peek.hash, peek.hash_len);
  head = head_buffer ();
  append_common_head (head, peek.id, peek.id_len, rev_text);
  hb_wipe (plain, plain_len);
  body_len = (gsize)sqlite3_column_bytes (stmt, 6);
  body = sqlite3_column_blob (stmt, 6);
  *out = json_with_head (self, c, &st->dk, rev_text, head->str, head->len, body, body_len, error);
  head_wipe (head);
  hb_wipe (rev_text, rev_len);
  return TRUE;
}

typedef struct
{
  JsonNode *request;
  GPtrArray *results;
} RevsJsonArgs;

static GBytes *
rev_error_bytes (const char *id, const char *rev, const GError *error)
{
  g_autoptr (JsonNode) row = result_node (id, NULL, error);
  char *text;

  json_object_set_string_member (json_node_get_object (row), "rev", rev);
  text = json_to_string (row, FALSE);
  return g_bytes_new_take (text, strlen (text));
}

static gboolean
get_revs_json_func (
    HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error)
{
  RevsJsonArgs *args = data;
  JsonObjectIter iter;
  const char *id;
  JsonNode *revs;

  if (!JSON_NODE_HOLDS_OBJECT (args->request))
    return invalid (error, "%s", "get_revs_json takes an object of id: [revs]");
  /* In the request's order: the caller pairs answers with what it asked. */
  json_object_iter_init_ordered (&iter, json_node_get_object (args->request));
  while (json_object_iter_next_ordered (&iter, &id, &revs))
    {
      JsonArray *list = JSON_NODE_HOLDS_ARRAY (revs) ? json_node_get_array (revs) : NULL;

      if (list == NULL)
        return invalid (error, "get_revs_json: the revisions of %s must be an array", id);
      for (guint i = 0; i < json_array_get_length (list); i++)
        {
          JsonNode *element = json_array_get_element (list, i);
          const char *rev = JSON_NODE_HOLDS_VALUE (element) ? json_node_get_string (element) : NULL;
          g_autoptr (GError) doc_error = NULL;
          GBytes *text;

          if (g_cancellable_set_error_if_cancelled (cancellable, error))
            return FALSE;
          if (rev == NULL)
            return invalid (error, "get_revs_json: a revision of %s is not a string", id);
          text = read_rev_json (self, c, id, rev, HB_GET_FLAGS_REVISIONS | HB_GET_FLAGS_DELETED,
                                &doc_error);
          if (text == NULL && is_fatal (doc_error))
            {
              g_propagate_error (error, g_steal_pointer (&doc_error));
              return FALSE;
            }
          g_ptr_array_add (args->results,
                           text != NULL ? text : rev_error_bytes (id, rev, doc_error));
        }
    }
  return TRUE;
}

static gboolean
revs_diff_func (HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error)
{
  JsonNode **io = data;
  JsonObject *request;
  JsonObject *response = json_object_new ();
  JsonObjectIter iter;
  const char *id;
  JsonNode *revs;

  if (!JSON_NODE_HOLDS_OBJECT (io[0]))
    {
      json_object_unref (response);
      return invalid (error, "%s", "revs_diff takes an object of id: [revs]");
    }
  request = json_node_get_object (io[0]);
  json_object_iter_init (&iter, request);
  while (json_object_iter_next (&iter, &id, &revs))
    {
      g_auto (DocState) st = { 0 };
      g_autoptr (GError) doc_error = NULL;
      JsonArray *missing = json_array_new ();
      guint max_missing_pos = 0;

      if (!JSON_NODE_HOLDS_ARRAY (revs))
        {
          json_array_unref (missing);
          json_object_unref (response);
          return invalid (error, "revs_diff: the revisions of %s must be an array", id);
        }
      doc_key_for (c, id, &st.dk);
      if (!load_doc (self, c, &st, &doc_error))
        {
          if (is_fatal (doc_error))
            {
              json_array_unref (missing);
              json_object_unref (response);
              g_propagate_error (error, g_steal_pointer (&doc_error));
              return FALSE;
            }
          /* An unreadable record holds nothing we can vouch for: every revision is missing,
           * and writing them reports the damage for that document alone. */
          g_clear_error (&doc_error);
          g_clear_pointer (&st.tree, hb_rev_tree_free);
          st.tree = hb_rev_tree_new ();
        }
      for (guint i = 0; i < json_array_get_length (json_node_get_array (revs)); i++)
        {
          JsonNode *element = json_array_get_element (json_node_get_array (revs), i);
          const char *rev = JSON_NODE_HOLDS_VALUE (element) ? json_node_get_string (element) : NULL;
          guint pos;

          if (rev == NULL || !hb_rev_parse (rev, &pos, NULL))
            continue;
          if (hb_rev_tree_find_rev (st.tree, rev) < 0)
            {
              json_array_add_string_element (missing, rev);
              max_missing_pos = MAX (max_missing_pos, pos);
            }
        }
      if (json_array_get_length (missing) == 0)
        {
          json_array_unref (missing);
          continue;
        }
      {
        JsonObject *entry = json_object_new ();
        g_autoptr (GArray) leaves = hb_rev_tree_leaves (st.tree);
        JsonArray *ancestors = json_array_new ();

        json_object_set_array_member (entry, "missing", missing);
        for (guint l = 0; l < leaves->len; l++)
          {
            gint leaf = g_array_index (leaves, gint, l);
            if (hb_rev_tree_node (st.tree, leaf)->pos < max_missing_pos)
              json_array_add_string_element (ancestors, rev_string_tmp (st.tree, leaf));
          }
        if (json_array_get_length (ancestors) > 0)
          json_object_set_array_member (entry, "possible_ancestors", ancestors);
        else
          json_array_unref (ancestors);
        json_object_set_object_member (response, id, entry);
      }
    }
  io[1] = take_object (response);
  return TRUE;
}

typedef struct
{
  guint64 since;
  guint limit;
  JsonNode *result;
} ChangesArgs;

static gboolean
changes_func (HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error)
{
  ChangesArgs *args = data;
  sqlite3_stmt *stmt = conn_stmt (c,
                                  "SELECT " DOC_COLUMNS_NO_BODY " FROM docs WHERE seq > ?"
                                  " ORDER BY seq LIMIT ?",
                                  error);
  g_autoptr (JsonArray) results = json_array_new ();
  JsonObject *out;
  guint64 last = args->since;
  int rc;

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, (sqlite3_int64)args->since);
  sqlite3_bind_int64 (stmt, 2, args->limit > 0 ? (sqlite3_int64)args->limit : -1);
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      g_auto (DocState) st = { 0 };
      g_autoptr (GError) doc_error = NULL;
      JsonObject *row = json_object_new ();

      last = (guint64)sqlite3_column_int64 (stmt, 0);
      json_object_set_int_member (row, "seq", (gint64)last);
      if (!doc_from_row (self, c, stmt, &st, &doc_error))
        {
          if (doc_error != NULL && is_fatal (doc_error))
            {
              json_object_unref (row);
              sqlite3_reset (stmt);
              g_propagate_error (error, g_steal_pointer (&doc_error));
              return FALSE;
            }
          /* Reported, not skipped: a change nobody can read is still a change. */
          json_object_set_string_member (row, "error", "corrupt");
        }
      else
        {
          g_autoptr (GArray) leaves = hb_rev_tree_leaves (st.tree);
          JsonArray *changes = json_array_new ();

          json_object_set_string_member (row, "id", st.id);
          for (guint l = 0; l < leaves->len; l++)
            {
              JsonObject *ch = json_object_new ();
              json_object_set_string_member (
                  ch, "rev", rev_string_tmp (st.tree, g_array_index (leaves, gint, l)));
              json_array_add_object_element (changes, ch);
            }
          json_object_set_array_member (row, "changes", changes);
          if (hb_rev_tree_node (st.tree, g_array_index (leaves, gint, 0))->deleted)
            json_object_set_boolean_member (row, "deleted", TRUE);
        }
      json_array_add_object_element (results, row);
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    return sql_error (c->db, rc, "Reading changes", error);

  out = json_object_new ();
  json_object_set_array_member (out, "results", g_steal_pointer (&results));
  json_object_set_int_member (out, "last_seq", (gint64)last);
  if (args->limit == 0
      || json_array_get_length (json_object_get_array_member (out, "results")) < args->limit)
    {
      /* A page that is not full is the end of the feed. */
      json_object_set_int_member (out, "pending", 0);
      args->result = take_object (out);
      return TRUE;
    }
  /* Counted on the doc_key index, about a dozen bytes a row, not on the table whose rows carry
   * the winning bodies: a replication asks this for every page. */
  stmt = conn_stmt (c, "SELECT count(*) FROM docs INDEXED BY docs_key WHERE seq > ?", error);
  if (stmt == NULL)
    {
      json_object_unref (out);
      return FALSE;
    }
  sqlite3_bind_int64 (stmt, 1, (sqlite3_int64)last);
  if (sqlite3_step (stmt) == SQLITE_ROW)
    json_object_set_int_member (out, "pending", sqlite3_column_int64 (stmt, 0));
  sqlite3_reset (stmt);
  args->result = take_object (out);
  return TRUE;
}

typedef struct
{
  HbIndexField field;
  const char *value; /* NULL: every document */
  GPtrArray *results;
} FindArgs;

static gboolean
add_winner (HbStore *self, HbConn *c, DocState *st, FindArgs *args, GError **error)
{
  g_autoptr (JsonObject) body = NULL;
  g_autoptr (GError) doc_error = NULL;
  gint w = hb_rev_tree_winner (st->tree);

  if (hb_rev_tree_node (st->tree, w)->deleted)
    return TRUE;
  body = load_body (self, c, st, w, &doc_error);
  if (body == NULL)
    {
      if (is_fatal (doc_error))
        {
          g_propagate_error (error, g_steal_pointer (&doc_error));
          return FALSE;
        }
      g_ptr_array_add (args->results, error_row (st->id, doc_error));
      return TRUE;
    }
  /* The index only narrows the search; the sealed value decides. */
  if (args->value != NULL
      && g_strcmp0 (
             json_object_get_string_member_with_default (body, index_fields[args->field], NULL),
             args->value)
             != 0)
    return TRUE;
  g_ptr_array_add (args->results, build_doc (st, w, body, HB_GET_FLAGS_NONE));
  return TRUE;
}

static gboolean
find_rows (HbStore *self,
           HbConn *c,
           sqlite3_stmt *stmt,
           FindArgs *args,
           GCancellable *cancellable,
           GError **error)
{
  int rc;

  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      g_auto (DocState) st = { 0 };
      g_autoptr (GError) doc_error = NULL;

      if (g_cancellable_set_error_if_cancelled (cancellable, error))
        break;
      if (!doc_from_row (self, c, stmt, &st, &doc_error))
        {
          if (is_fatal (doc_error))
            {
              g_propagate_error (error, g_steal_pointer (&doc_error));
              break;
            }
          g_ptr_array_add (args->results, error_row (NULL, doc_error));
          continue;
        }
      if (st.exists && !add_winner (self, c, &st, args, error))
        break;
    }
  sqlite3_reset (stmt);
  if (rc == SQLITE_ROW)
    return FALSE;
  return rc == SQLITE_DONE || sql_error (c->db, rc, "Reading documents", error);
}

static int
compare_doc_ids (gconstpointer a, gconstpointer b)
{
  JsonObject *x = json_node_get_object (*(JsonNode *const *)a);
  JsonObject *y = json_node_get_object (*(JsonNode *const *)b);
  const char *ix = json_object_get_string_member_with_default (
      x, "_id", json_object_get_string_member_with_default (x, "id", ""));
  const char *iy = json_object_get_string_member_with_default (
      y, "_id", json_object_get_string_member_with_default (y, "id", ""));

  return strcmp (ix, iy);
}

static gboolean
find_func (HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error)
{
  FindArgs *args = data;
  sqlite3_stmt *stmt;

  static const char *const by_field[] = {
    "SELECT " DOC_COLUMNS " FROM docs WHERE type_mac = ?",
    "SELECT " DOC_COLUMNS " FROM docs WHERE session_mac = ?",
    "SELECT " DOC_COLUMNS " FROM docs WHERE patient_mac = ?",
  };
  G_STATIC_ASSERT (G_N_ELEMENTS (by_field) == G_N_ELEMENTS (index_fields));

  if (args->value == NULL)
    stmt = conn_stmt (c, "SELECT " DOC_COLUMNS " FROM docs", error);
  else
    {
      guint8 mac[INDEX_MAC_LEN];

      stmt = conn_stmt (c, by_field[args->field], error);
      if (stmt == NULL)
        return FALSE;
      index_mac (c, args->field, args->value, mac);
      sqlite3_bind_blob (stmt, 1, mac, INDEX_MAC_LEN, SQLITE_TRANSIENT);
    }
  if (stmt == NULL || !find_rows (self, c, stmt, args, cancellable, error))
    return FALSE;
  g_ptr_array_sort (args->results, compare_doc_ids);
  return TRUE;
}

/* ---- local documents ------------------------------------------------------------------- */

static char *
local_id (const char *id)
{
  return g_str_has_prefix (id, "_local/") ? g_strdup (id) : g_strconcat ("_local/", id, NULL);
}

static JsonNode *
read_local (HbStore *self, HbConn *c, const char *full_id, DocKey *dk, GError **error)
{
  sqlite3_stmt *stmt = conn_stmt (c, "SELECT body FROM local_docs WHERE doc_key = ?", error);
  JsonNode *doc = NULL;
  int rc;

  if (stmt == NULL)
    return NULL;
  doc_key_for (c, full_id, dk);
  sqlite3_bind_blob (stmt, 1, dk->b, HB_MAC_LEN, SQLITE_STATIC);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    {
      guint8 *plain = NULL;
      gsize len = 0;

      if (unseal (self, c, 'L', dk, NULL, 0, sqlite3_column_blob (stmt, 0),
                  sqlite3_column_bytes (stmt, 0), &plain, &len, "local document", error))
        {
          JsonObject *obj = parse_body (plain, len);

          hb_open_free (plain, len);
          if (obj == NULL)
            corrupt_error (error, "local document");
          else
            doc = take_object (obj);
        }
    }
  else if (rc == SQLITE_DONE)
    g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND, "No local document %s", full_id);
  else
    sql_error (c->db, rc, "Reading a local document", error);
  sqlite3_reset (stmt);
  return doc;
}

typedef struct
{
  const char *id;
  const char *rev;
  JsonNode *doc;
  gboolean remove;
  char *result;
} LocalArgs;

static gboolean
get_local_func (HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error)
{
  LocalArgs *args = data;
  g_autofree char *full = local_id (args->id);
  DocKey dk;

  args->doc = read_local (self, c, full, &dk, error);
  return args->doc != NULL;
}

static guint64
local_rev_number (const char *rev)
{
  return rev != NULL && g_str_has_prefix (rev, "0-") ? g_ascii_strtoull (rev + 2, NULL, 10) : 0;
}

/* Local documents have no history: "0-N" counts their writes, and a stale _rev conflicts. */
static gboolean
write_local_func (HbStore *self,
                  HbConn *c,
                  Batch *batch,
                  gpointer data,
                  GCancellable *cancellable,
                  GError **error)
{
  LocalArgs *args = data;
  g_autofree char *full = local_id (args->id);
  g_autoptr (JsonNode) current = NULL;
  g_autoptr (GError) read_error = NULL;
  DocKey dk;
  const char *current_rev = NULL;
  gboolean corrupt;
  sqlite3_stmt *stmt;

  current = read_local (self, c, full, &dk, &read_error);
  /* A damaged local document (a replication checkpoint, say) can still be deleted, or replaced
   * by a write that does not claim to know its revision; otherwise nothing could reset it. */
  corrupt = g_error_matches (read_error, HB_STORE_ERROR, HB_STORE_ERROR_CORRUPT)
            && (args->remove || args->rev == NULL);
  if (current == NULL && !corrupt
      && !g_error_matches (read_error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND))
    {
      g_propagate_error (error, g_steal_pointer (&read_error));
      return FALSE;
    }
  if (current != NULL)
    current_rev
        = json_object_get_string_member_with_default (json_node_get_object (current), "_rev", NULL);
  if ((current == NULL && args->rev != NULL && args->remove && !corrupt)
      || (current != NULL && g_strcmp0 (current_rev, args->rev) != 0))
    {
      g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_CONFLICT,
                   "Local document %s: update conflict", full);
      return FALSE;
    }
  if (current == NULL && args->remove && !corrupt)
    {
      g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND, "No local document %s", full);
      return FALSE;
    }

  if (args->remove)
    {
      stmt = conn_stmt (c, "DELETE FROM local_docs WHERE doc_key = ?", error);
      if (stmt == NULL)
        return FALSE;
      sqlite3_bind_blob (stmt, 1, dk.b, HB_MAC_LEN, SQLITE_STATIC);
      return stmt_done (c, stmt, error);
    }

  {
    JsonObject *copy = json_object_new ();
    JsonObjectIter iter;
    const char *name;
    JsonNode *member;
    g_autofree char *text = NULL;
    g_autoptr (GBytes) sealed = NULL;
    gsize len;

    args->result = g_strdup_printf ("0-%" G_GUINT64_FORMAT, local_rev_number (current_rev) + 1);
    json_object_set_string_member (copy, "_id", full);
    json_object_set_string_member (copy, "_rev", args->result);
    json_object_iter_init (&iter, json_node_get_object (args->doc));
    while (json_object_iter_next (&iter, &name, &member))
      if (strcmp (name, "_id") != 0 && strcmp (name, "_rev") != 0)
        json_object_set_member (copy, name, json_node_ref (member));
    {
      g_autoptr (JsonNode) node = take_object (copy);
      /* Not json_to_string(): JSON-GLib 1.6 writes doubles from 1e17 up as invalid JSON. */
      text = hb_json_to_canonical (node, NULL);
    }
    len = strlen (text);
    sealed = seal (self, c, 'L', &dk, NULL, 0, text, len, error);
    hb_wipe (text, len);
    if (sealed == NULL)
      return FALSE;
    stmt = conn_stmt (c, "INSERT OR REPLACE INTO local_docs (doc_key, body) VALUES (?, ?)", error);
    if (stmt == NULL)
      return FALSE;
    sqlite3_bind_blob (stmt, 1, dk.b, HB_MAC_LEN, SQLITE_STATIC);
    sqlite3_bind_blob (stmt, 2, g_bytes_get_data (sealed, NULL), g_bytes_get_size (sealed),
                       SQLITE_STATIC);
    return stmt_done (c, stmt, error);
  }
}

/* ---- purge and compaction -------------------------------------------------------------- */

typedef struct
{
  const char *id;
  const char *const *revs;
  guint purged;
} PurgeArgs;

static gboolean
delete_corrupt_doc (HbConn *c, DocState *st, GError **error)
{
  sqlite3_stmt *stmt = conn_stmt (c, "DELETE FROM bodies WHERE doc_key = ?", error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_blob (stmt, 1, st->dk.b, HB_MAC_LEN, SQLITE_STATIC);
  return stmt_done (c, stmt, error) && delete_doc_row (c, st, error);
}

static gboolean
purge_func (HbStore *self,
            HbConn *c,
            Batch *batch,
            gpointer data,
            GCancellable *cancellable,
            GError **error)
{
  PurgeArgs *args = data;
  g_auto (DocState) st = { 0 };
  g_autoptr (GArray) removed = g_array_new (FALSE, FALSE, sizeof (gint64));
  g_autofree char *old_winner = NULL;
  g_autoptr (GError) load_error = NULL;

  doc_key_for (c, args->id, &st.dk);
  if (!load_doc (self, c, &st, &load_error))
    {
      if (is_fatal (load_error))
        {
          g_propagate_error (error, g_steal_pointer (&load_error));
          return FALSE;
        }
      /* A record nobody can read can only be forgotten whole: its revisions are unknown. */
      args->purged = 1;
      batch->changed = TRUE;
      batch->seq++;
      return delete_corrupt_doc (c, &st, error);
    }
  if (!st.exists)
    {
      g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND, "No document %s", args->id);
      return FALSE;
    }
  old_winner = winner_rev_string (st.tree);
  count_winner (st.tree, -1, batch);
  for (guint i = 0; args->revs != NULL && args->revs[i] != NULL; i++)
    {
      gint index = hb_rev_tree_find_rev (st.tree, args->revs[i]);

      if (index >= 0 && hb_rev_tree_is_leaf (st.tree, index))
        {
          hb_rev_tree_remove_leaf (st.tree, index, removed);
          args->purged++;
        }
    }
  if (args->purged == 0)
    {
      count_winner (st.tree, 1, batch);
      return TRUE;
    }
  return prepare_update (self, c, &st, old_winner, NULL, NULL, removed, error)
         && commit_update (self, c, &st, NULL, NULL, removed, batch, error);
}

static gboolean
compact_func (HbStore *self,
              HbConn *c,
              Batch *batch,
              gpointer data,
              GCancellable *cancellable,
              GError **error)
{
  guint *removed_total = data;
  g_autoptr (GPtrArray) keys = g_ptr_array_new_with_free_func (g_free);
  sqlite3_stmt *stmt = conn_stmt (c, "SELECT doc_key, seq FROM docs", error);
  int rc;

  if (stmt == NULL)
    return FALSE;
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    if (sqlite3_column_bytes (stmt, 0) == HB_MAC_LEN)
      {
        guint8 *row = g_malloc (HB_MAC_LEN + sizeof (gint64));
        gint64 seq = sqlite3_column_int64 (stmt, 1);
        memcpy (row, sqlite3_column_blob (stmt, 0), HB_MAC_LEN);
        memcpy (row + HB_MAC_LEN, &seq, sizeof seq);
        g_ptr_array_add (keys, row);
      }
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    return sql_error (c->db, rc, "Reading documents", error);

  for (guint i = 0; i < keys->len; i++)
    {
      g_auto (DocState) st = { 0 };
      g_autoptr (GArray) removed = g_array_new (FALSE, FALSE, sizeof (gint64));
      g_autoptr (GError) doc_error = NULL;
      const guint8 *row = g_ptr_array_index (keys, i);
      gint64 seq;

      if (g_cancellable_set_error_if_cancelled (cancellable, error))
        return FALSE;
      memcpy (st.dk.b, row, HB_MAC_LEN);
      memcpy (&seq, row + HB_MAC_LEN, sizeof seq);
      if (!load_doc (self, c, &st, &doc_error))
        {
          if (is_fatal (doc_error))
            {
              g_propagate_error (error, g_steal_pointer (&doc_error));
              return FALSE;
            }
          continue; /* a corrupt record is left as it is, for whoever investigates */
        }
      for (guint n = 0; n < st.tree->nodes->len; n++)
        {
          HbRevNode *node = hb_rev_tree_node (st.tree, n);
          if (node->body > 0 && !hb_rev_tree_is_leaf (st.tree, n))
            {
              g_array_append_val (removed, node->body);
              node->body = BODY_NONE;
            }
        }
      if (removed->len == 0)
        continue;
      /* Compaction changes no revision, so the document keeps its sequence. */
      if (!delete_bodies (c, removed, error) || !save_row (self, c, &st, seq, error))
        return FALSE;
      *removed_total += removed->len;
    }
  return TRUE;
}

/* ---- checkpoints ----------------------------------------------------------------------- */

static void
run_checkpoint (gpointer data, gpointer user_data)
{
  HbStore *self = user_data;

  /* Cleared first: commits made during this checkpoint may queue the next one. */
  g_atomic_int_set (&self->checkpoint_queued, FALSE);
  if (self->checkpoint_conn == NULL)
    self->checkpoint_conn = conn_open (self->path, WRITER_CACHE_KIB, NULL);
  /* PASSIVE: copies what no reader still needs and never blocks the writer or readers. */
  if (self->checkpoint_conn != NULL)
    (void)sqlite3_wal_checkpoint_v2 (self->checkpoint_conn->db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                     NULL, NULL);
}

/* Replaces SQLite's automatic checkpoint, which would run inside the writer's COMMIT. */
static int
on_wal_commit (gpointer data, sqlite3 *db, const char *name, int frames)
{
  HbStore *self = data;

  if (frames >= CHECKPOINT_FRAMES && self->checkpointer != NULL
      && g_atomic_int_compare_and_exchange (&self->checkpoint_queued, FALSE, TRUE))
    g_thread_pool_push (self->checkpointer, GINT_TO_POINTER (1), NULL);
  if (frames >= 8 * CHECKPOINT_FRAMES)
    (void)sqlite3_wal_checkpoint_v2 (db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
  return SQLITE_OK;
}

/* ---- schema ---------------------------------------------------------------------------- */

static const char schema_v1[]
    = "CREATE TABLE docs (seq INTEGER PRIMARY KEY, doc_key BLOB NOT NULL UNIQUE,"
      "  meta BLOB NOT NULL, type_mac BLOB, session_mac BLOB, patient_mac BLOB, body BLOB);"
      "CREATE INDEX docs_type ON docs (type_mac) WHERE type_mac IS NOT NULL;"
      "CREATE INDEX docs_session ON docs (session_mac) WHERE session_mac IS NOT NULL;"
      "CREATE INDEX docs_patient ON docs (patient_mac) WHERE patient_mac IS NOT NULL;"
      "CREATE TABLE bodies (id INTEGER PRIMARY KEY AUTOINCREMENT, doc_key BLOB NOT NULL,"
      "  body BLOB NOT NULL);"
      "CREATE TABLE local_docs (doc_key BLOB PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;"
      "INSERT INTO hb_meta (key, value) VALUES ('update_seq', 0), ('doc_count', 0),"
      "  ('deleted_doc_count', 0), ('revs_limit', 1000);";

/* Version 2: documents are found through an index on the first 8 bytes of doc_key instead of
 * a UNIQUE index on all 32. The index is a quarter of the size, so the random insert each new
 * document makes dirties fewer pages: about a fifth fewer WAL frames per committed batch. The
 * full key is still compared on every lookup; uniqueness is kept by the single writer, which
 * always looks a document up before writing its row. */
static const char schema_v2[]
    = "CREATE TABLE docs_v2 (seq INTEGER PRIMARY KEY, doc_key BLOB NOT NULL,"
      "  meta BLOB NOT NULL, type_mac BLOB, session_mac BLOB, patient_mac BLOB, body BLOB);"
      "INSERT INTO docs_v2 (seq, doc_key, meta, type_mac, session_mac, patient_mac, body)"
      "  SELECT seq, doc_key, meta, type_mac, session_mac, patient_mac, body FROM docs;"
      "DROP TABLE docs;"
      "ALTER TABLE docs_v2 RENAME TO docs;"
      "CREATE INDEX docs_key ON docs (substr(doc_key, 1, 8));"
      "CREATE INDEX docs_type ON docs (type_mac) WHERE type_mac IS NOT NULL;"
      "CREATE INDEX docs_session ON docs (session_mac) WHERE session_mac IS NOT NULL;"
      "CREATE INDEX docs_patient ON docs (patient_mac) WHERE patient_mac IS NOT NULL;";

/* Version 3: the key index holds the key's first 8 bytes as an integer (key_prefix, filled by
 * hb_key_prefix(), registered for the migration) instead of as an 8-byte blob: SQLite compares
 * integer index keys by a shorter way than blobs, and a batch read spends a sixth of its time
 * in that index. The column is written with every row. */
static const char schema_v3[] = "ALTER TABLE docs ADD COLUMN key_prefix INTEGER;"
                                "UPDATE docs SET key_prefix = hb_key_prefix(doc_key);"
                                "DROP INDEX docs_key;"
                                "CREATE INDEX docs_key ON docs (key_prefix);";

/* Migrations, in order: entry i brings a file from version i to version i + 1. */
static const char *const migrations[] = {
  schema_v1,
  schema_v2,
  schema_v3,
};

/* hb_key_prefix(KEY): hb_keys_prefix() of a key in SQL, for schema_v3; NULL for what is not a
 * key (such a row cannot be read anyway and reports corrupt). */
static void
sql_key_prefix (sqlite3_context *context, int argc, sqlite3_value **argv)
{
  if (sqlite3_value_type (argv[0]) == SQLITE_BLOB && sqlite3_value_bytes (argv[0]) == HB_MAC_LEN)
    sqlite3_result_int64 (context, hb_keys_prefix (sqlite3_value_blob (argv[0])));
  else
    sqlite3_result_null (context);
}

G_STATIC_ASSERT (G_N_ELEMENTS (migrations) == SCHEMA_VERSION);

static gint64
meta_int (HbConn *c, const char *name, gint64 fallback)
{
  sqlite3_stmt *stmt = conn_stmt (c, "SELECT value FROM hb_meta WHERE key = ?", NULL);
  gint64 v = fallback;

  if (stmt == NULL)
    return fallback;
  sqlite3_bind_text (stmt, 1, name, -1, SQLITE_STATIC);
  if (sqlite3_step (stmt) == SQLITE_ROW && sqlite3_column_type (stmt, 0) != SQLITE_NULL)
    v = sqlite3_column_int64 (stmt, 0);
  sqlite3_reset (stmt);
  return v;
}

static char *
meta_text (HbConn *c, const char *name)
{
  sqlite3_stmt *stmt = conn_stmt (c, "SELECT value FROM hb_meta WHERE key = ?", NULL);
  char *v = NULL;

  if (stmt == NULL)
    return NULL;
  sqlite3_bind_text (stmt, 1, name, -1, SQLITE_STATIC);
  if (sqlite3_step (stmt) == SQLITE_ROW && sqlite3_column_type (stmt, 0) == SQLITE_TEXT)
    v = g_strdup ((const char *)sqlite3_column_text (stmt, 0));
  sqlite3_reset (stmt);
  return v;
}

static gboolean
set_meta_int (HbConn *c, const char *name, gint64 value, GError **error)
{
  sqlite3_stmt *stmt
      = conn_stmt (c, "INSERT OR REPLACE INTO hb_meta (key, value) VALUES (?, ?)", error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_text (stmt, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (stmt, 2, value);
  return stmt_done (c, stmt, error);
}

static gboolean
migrate (HbConn *c, GError **error)
{
  g_autofree char *existing_uuid = NULL;
  gint64 version;

  if (!conn_exec (c, "CREATE TABLE IF NOT EXISTS hb_meta (key TEXT PRIMARY KEY, value)", error))
    return FALSE;
  if (sqlite3_create_function (c->db, "hb_key_prefix", 1,
                               SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL,
                               sql_key_prefix, NULL, NULL)
      != SQLITE_OK)
    return sql_error (c->db, sqlite3_errcode (c->db), "Cannot open the store", error);
  version = meta_int (c, "schema_version", 0);
  if (version > SCHEMA_VERSION)
    {
      g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_VERSION,
                   "The store was written by a newer version (schema %" G_GINT64_FORMAT
                   ", this library knows %d)",
                   version, SCHEMA_VERSION);
      return FALSE;
    }
  for (; version < SCHEMA_VERSION; version++)
    if (!conn_exec (c, migrations[version], error)
        || !set_meta_int (c, "schema_version", version + 1, error))
      return FALSE;

  existing_uuid = meta_text (c, "uuid");
  if (existing_uuid == NULL)
    {
      g_autofree char *uuid = hb_random_uuid ();
      sqlite3_stmt *stmt
          = conn_stmt (c, "INSERT INTO hb_meta (key, value) VALUES ('uuid', ?)", error);
      if (stmt == NULL)
        return FALSE;
      sqlite3_bind_text (stmt, 1, uuid, -1, SQLITE_TRANSIENT);
      if (!stmt_done (c, stmt, error))
        return FALSE;
    }
  return TRUE;
}

/* ---- object ---------------------------------------------------------------------------- */

static void
on_vault_locked (HbVault *vault, GParamSpec *pspec, HbStore *self)
{
  if (hb_vault_get_locked (vault))
    wipe_keys (self);
  else if (!self->closed)
    (void)derive_keys (self, NULL);
}

static void
hb_store_dispose (GObject *object)
{
  HbStore *self = HB_STORE (object);

  if (self->vault != NULL && self->locked_handler != 0)
    g_clear_signal_handler (&self->locked_handler, self->vault);
  hb_store_close (self);
  g_clear_object (&self->vault);
  G_OBJECT_CLASS (hb_store_parent_class)->dispose (object);
}

static void
hb_store_finalize (GObject *object)
{
  HbStore *self = HB_STORE (object);

  g_clear_pointer (&self->readers, g_ptr_array_unref);
  g_clear_pointer (&self->path, g_free);
  g_clear_pointer (&self->uuid, g_free);
  g_clear_pointer (&self->owner_context, g_main_context_unref);
  g_rw_lock_clear (&self->key_lock);
  g_mutex_clear (&self->write_lock);
  g_mutex_clear (&self->pool_lock);
  G_OBJECT_CLASS (hb_store_parent_class)->finalize (object);
}

static void
hb_store_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  HbStore *self = HB_STORE (object);

  switch (prop_id)
    {
      case PROP_VAULT:
        g_value_set_object (value, self->vault);
        break;
      case PROP_UUID:
        g_value_set_string (value, self->uuid);
        break;
      case PROP_REVS_LIMIT:
        g_value_set_uint (value, hb_store_get_revs_limit (self));
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_store_class_init (HbStoreClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = hb_store_dispose;
  object_class->finalize = hb_store_finalize;
  object_class->get_property = hb_store_get_property;

  /**
   * HbStore:vault:
   *
   * The vault whose data key seals this store.
   */
  properties[PROP_VAULT] = g_param_spec_object ("vault", NULL, NULL, HB_TYPE_VAULT,
                                                G_PARAM_READABLE | G_PARAM_STATIC_STRINGS);
  /**
   * HbStore:uuid:
   *
   * The store's random identity, part of every replication id.
   */
  properties[PROP_UUID]
      = g_param_spec_string ("uuid", NULL, NULL, NULL, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS);
  /**
   * HbStore:revs-limit:
   *
   * How many revisions of each branch are kept (CouchDB's `_revs_limit`).
   */
  properties[PROP_REVS_LIMIT]
      = g_param_spec_uint ("revs-limit", NULL, NULL, 1, G_MAXINT32, DEFAULT_REVS_LIMIT,
                           G_PARAM_READABLE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  g_object_class_install_properties (object_class, N_PROPS, properties);

  /**
   * HbStore::changed:
   * @self: the store
   * @update_seq: the local update sequence after the commit
   *
   * Emitted on the context that opened the store, after a write transaction committed.
   */
  signals[CHANGED] = g_signal_new ("changed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL,
                                   NULL, NULL, G_TYPE_NONE, 1, G_TYPE_UINT64);
}

static void
hb_store_init (HbStore *self)
{
  g_rw_lock_init (&self->key_lock);
  g_mutex_init (&self->write_lock);
  g_mutex_init (&self->pool_lock);
  self->readers = g_ptr_array_new_with_free_func ((GDestroyNotify)conn_free);
  self->revs_limit = DEFAULT_REVS_LIMIT;
}

static gboolean
store_setup (HbStore *self, GError **error)
{
  if (!hb_vault_exists (self->vault))
    {
      g_set_error (error, HB_STORE_ERROR, HB_STORE_ERROR_FAILED, "%s holds no vault", self->path);
      return FALSE;
    }
  if (hb_vault_get_locked (self->vault))
    {
      g_set_error_literal (error, HB_STORE_ERROR, HB_STORE_ERROR_LOCKED,
                           "Unlock the vault before opening the store");
      return FALSE;
    }
  self->writer = conn_open (self->path, WRITER_CACHE_KIB, error);
  if (self->writer == NULL)
    return FALSE;
  self->checkpointer = g_thread_pool_new (run_checkpoint, self, 1, FALSE, NULL);
  sqlite3_wal_hook (self->writer->db, on_wal_commit, self);
  if (!conn_exec (self->writer, "BEGIN IMMEDIATE", error))
    return FALSE;
  if (!migrate (self->writer, error) || !conn_exec (self->writer, "COMMIT", error))
    {
      (void)sqlite3_exec (self->writer->db, "ROLLBACK", NULL, NULL, NULL);
      return FALSE;
    }
  self->uuid = meta_text (self->writer, "uuid");
  self->update_seq = (guint64)meta_int (self->writer, "update_seq", 0);
  self->revs_limit = (guint)meta_int (self->writer, "revs_limit", DEFAULT_REVS_LIMIT);
  /* Listen first, derive second, then look again: a lock between the two would otherwise go
   * unnoticed and leave keys in a store whose vault is locked. */
  self->locked_handler
      = g_signal_connect (self->vault, "notify::locked", G_CALLBACK (on_vault_locked), self);
  if (!derive_keys (self, error))
    return FALSE;
  if (hb_vault_get_locked (self->vault))
    {
      wipe_keys (self);
      g_set_error_literal (error, HB_STORE_ERROR, HB_STORE_ERROR_LOCKED,
                           "The vault was locked while the store opened");
      return FALSE;
    }
  return TRUE;
}

/**
 * hb_store_open_sync:
 * @vault: an unlocked vault; the store lives in the vault's file
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Opens (creating or migrating as needed) the store in @vault's file. Blocks; the store's
 * #HbStore::changed signal is emitted on the thread-default main context of the caller.
 *
 * Returns: (transfer full): the store, or %NULL with @error set
 */
HbStore *
hb_store_open_sync (HbVault *vault, GCancellable *cancellable, GError **error)
{
  g_autoptr (HbStore) self = NULL;

  g_return_val_if_fail (HB_IS_VAULT (vault), NULL);

  self = g_object_new (HB_TYPE_STORE, NULL);
  self->vault = g_object_ref (vault);
  self->path = g_strdup (hb_vault_get_path (vault));
  self->owner_context = g_main_context_ref_thread_default ();
  if (!store_setup (self, error))
    return NULL;
  return g_steal_pointer (&self);
}

static void
open_thread (GTask *task, gpointer source, gpointer task_data, GCancellable *cancellable)
{
  HbStore *self = task_data;
  GError *error = NULL;

  if (store_setup (self, &error))
    g_task_return_pointer (task, g_object_ref (self), g_object_unref);
  else
    g_task_return_error (task, error);
}

/**
 * hb_store_open_async:
 * @vault: an unlocked vault
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called when the store is open
 * @user_data: data for @callback
 *
 * Opens the store without blocking the caller's main loop.
 */
void
hb_store_open_async (HbVault *vault,
                     GCancellable *cancellable,
                     GAsyncReadyCallback callback,
                     gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  HbStore *self;

  g_return_if_fail (HB_IS_VAULT (vault));

  self = g_object_new (HB_TYPE_STORE, NULL);
  self->vault = g_object_ref (vault);
  self->path = g_strdup (hb_vault_get_path (vault));
  self->owner_context = g_main_context_ref_thread_default ();
  task = g_task_new (NULL, cancellable, callback, user_data);
  g_task_set_source_tag (task, hb_store_open_async);
  g_task_set_task_data (task, self, g_object_unref);
  g_task_run_in_thread (task, open_thread);
}

/**
 * hb_store_open_finish:
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the store, or %NULL with @error set
 */
HbStore *
hb_store_open_finish (GAsyncResult *result, GError **error)
{
  return g_task_propagate_pointer (G_TASK (result), error);
}

/**
 * hb_store_close:
 * @self: a store
 *
 * Wipes the store's keys and closes its database connections. Every later call fails.
 */
void
hb_store_close (HbStore *self)
{
  g_return_if_fail (HB_IS_STORE (self));

  wipe_keys (self);
  g_rw_lock_writer_lock (&self->key_lock);
  self->closed = TRUE;
  g_rw_lock_writer_unlock (&self->key_lock);
  g_mutex_lock (&self->write_lock);
  g_clear_pointer (&self->writer, conn_free);
  g_mutex_unlock (&self->write_lock);
  /* No writer is left to queue a checkpoint; a queued one runs before this returns. */
  if (self->checkpointer != NULL)
    g_thread_pool_free (g_steal_pointer (&self->checkpointer), FALSE, TRUE);
  g_clear_pointer (&self->checkpoint_conn, conn_free);
  g_mutex_lock (&self->pool_lock);
  g_ptr_array_set_size (self->readers, 0);
  g_mutex_unlock (&self->pool_lock);
}

/* A read that fills an array: *slot is the array inside the read's arguments. */
static GPtrArray *
read_array (HbStore *self,
            ReadFunc func,
            gpointer args,
            GPtrArray **slot,
            GDestroyNotify free_item,
            GCancellable *cancellable,
            GError **error)
{
  *slot = g_ptr_array_new_with_free_func (free_item);
  if (!run_read (self, func, args, cancellable, error))
    {
      g_clear_pointer (slot, g_ptr_array_unref);
      return NULL;
    }
  return g_steal_pointer (slot);
}

/* ---- public API ------------------------------------------------------------------------ */

/**
 * hb_store_get_vault:
 * @self: a store
 *
 * Returns: (transfer none): the vault
 */
HbVault *
hb_store_get_vault (HbStore *self)
{
  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  return self->vault;
}

/**
 * hb_store_get_uuid:
 * @self: a store
 *
 * Returns: the store's UUID
 */
const char *
hb_store_get_uuid (HbStore *self)
{
  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  return self->uuid;
}

/**
 * hb_store_get_update_seq:
 * @self: a store
 *
 * Returns: the local update sequence: the number of committed document changes
 */
guint64
hb_store_get_update_seq (HbStore *self)
{
  g_return_val_if_fail (HB_IS_STORE (self), 0);
  return __atomic_load_n (&self->update_seq, __ATOMIC_ACQUIRE);
}

/**
 * hb_store_get_revs_limit:
 * @self: a store
 *
 * Returns: how many revisions of each branch are kept
 */
guint
hb_store_get_revs_limit (HbStore *self)
{
  g_return_val_if_fail (HB_IS_STORE (self), 0);
  return g_atomic_int_get (&self->revs_limit);
}

static gboolean
set_revs_limit_func (HbStore *self,
                     HbConn *c,
                     Batch *batch,
                     gpointer data,
                     GCancellable *cancellable,
                     GError **error)
{
  return set_meta_int (c, "revs_limit", GPOINTER_TO_UINT (data), error);
}

/**
 * hb_store_set_revs_limit:
 * @self: a store
 * @revs_limit: at least 1
 * @error: return location for an error
 *
 * Sets how many revisions of each branch later writes keep. Stored in the file.
 *
 * Returns: %TRUE on success
 */
gboolean
hb_store_set_revs_limit (HbStore *self, guint revs_limit, GError **error)
{
  g_return_val_if_fail (HB_IS_STORE (self), FALSE);

  if (revs_limit < 1 || revs_limit > G_MAXINT32)
    return invalid (error, "%s", "revs_limit must be at least 1");
  if (!run_write (self, set_revs_limit_func, GUINT_TO_POINTER (revs_limit), NULL, error))
    return FALSE;
  if ((guint)g_atomic_int_exchange (&self->revs_limit, revs_limit) != revs_limit)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_REVS_LIMIT]);
  return TRUE;
}

static gboolean
result_to_error (JsonNode *result, GError **error)
{
  JsonObject *obj = json_node_get_object (result);
  const char *name = json_object_get_string_member_with_default (obj, "error", NULL);
  const char *reason = json_object_get_string_member_with_default (obj, "reason", "");
  HbStoreError code = HB_STORE_ERROR_FAILED;

  if (name == NULL)
    return TRUE;
  if (strcmp (name, "conflict") == 0)
    code = HB_STORE_ERROR_CONFLICT;
  else if (strcmp (name, "bad_request") == 0)
    code = HB_STORE_ERROR_INVALID;
  else if (strcmp (name, "corrupt") == 0)
    code = HB_STORE_ERROR_CORRUPT;
  else if (strcmp (name, "not_found") == 0)
    code = HB_STORE_ERROR_NOT_FOUND;
  g_set_error_literal (error, HB_STORE_ERROR, code, reason);
  return FALSE;
}

/* One write transaction over args' documents or texts: their results, or NULL. */
static GPtrArray *
bulk_write (HbStore *self, BulkArgs *args, GCancellable *cancellable, GError **error)
{
  args->results = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
  if (!run_write (self, write_docs, args, cancellable, error))
    {
      g_clear_pointer (&args->results, g_ptr_array_unref);
      return NULL;
    }
  return args->results;
}

/**
 * hb_store_bulk_docs_sync:
 * @self: a store
 * @docs: (element-type Json.Node): documents, as CouchDB's `_bulk_docs` takes them
 * @new_edits: %TRUE for local edits; %FALSE to insert replicated revisions with their
 *   `_revisions` history
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Writes @docs in one transaction. A document-level failure (conflict, invalid document,
 * corrupt record) is reported in that document's result and does not stop the others; only a
 * failure of the store itself fails the call, and then nothing is written.
 *
 * Returns: (transfer full) (element-type Json.Node): one result per document,
 *   `{"ok": true, "id", "rev"}` or `{"id", "error", "reason"}`
 */
GPtrArray *
hb_store_bulk_docs_sync (
    HbStore *self, GPtrArray *docs, gboolean new_edits, GCancellable *cancellable, GError **error)
{
  BulkArgs args = { docs, new_edits, NULL, NULL };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (docs != NULL, NULL);

  return bulk_write (self, &args, cancellable, error);
}

/**
 * hb_store_put_revisions_json_sync:
 * @self: a store
 * @texts: (element-type GBytes): replicated revisions, each one JSON object as CouchDB's
 *   `_bulk_get`/`open_revs` sends it (`_id`, `_rev`, optional `_revisions`, `_deleted`, body
 *   members), UTF-8, not NUL-terminated
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Exactly hb_store_bulk_docs_sync (@self, docs, %FALSE, ...) where docs[i] is @texts[i]
 * parsed, without parsing it into a tree: one transaction, one result per text. A text that
 * is not strict JSON (hb_json_check_strict()), or not an object, is an invalid document
 * (`bad_request`) in its result, not a failure of the call. Every plaintext copy made on the
 * way is wiped before it is freed.
 *
 * Returns: (transfer full) (element-type Json.Node): the results, or %NULL with @error set
 *   when the store itself failed (then nothing was written)
 */
GPtrArray *
hb_store_put_revisions_json_sync (HbStore *self,
                                  GPtrArray *texts,
                                  GCancellable *cancellable,
                                  GError **error)
{
  BulkArgs args = { NULL, FALSE, NULL, texts };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (texts != NULL, NULL);

  return bulk_write (self, &args, cancellable, error);
}

/**
 * hb_store_put_sync:
 * @self: a store
 * @doc: a document with `_id`, and `_rev` when it updates an existing one
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Writes a new revision of one document, as `PUT /db/id` does.
 *
 * Returns: (transfer full): the new revision, or %NULL with @error set
 *   (%HB_STORE_ERROR_CONFLICT for a stale or missing `_rev`)
 */
char *
hb_store_put_sync (HbStore *self, JsonNode *doc, GCancellable *cancellable, GError **error)
{
  g_autoptr (GPtrArray) docs = g_ptr_array_new ();
  g_autoptr (GPtrArray) results = NULL;
  JsonNode *result;

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (doc != NULL, NULL);

  if (!JSON_NODE_HOLDS_OBJECT (doc)
      || json_object_get_string_member_with_default (json_node_get_object (doc), "_id", NULL)
             == NULL)
    {
      invalid (error, "%s", "A document needs an _id");
      return NULL;
    }
  g_ptr_array_add (docs, doc);
  results = hb_store_bulk_docs_sync (self, docs, TRUE, cancellable, error);
  if (results == NULL)
    return NULL;
  result = g_ptr_array_index (results, 0);
  if (!result_to_error (result, error))
    return NULL;
  return g_strdup (json_object_get_string_member (json_node_get_object (result), "rev"));
}

/**
 * hb_store_delete_sync:
 * @self: a store
 * @id: the document
 * @rev: (nullable): its current revision; %NULL only works for a document that does not exist
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Deletes a document by writing a tombstone revision.
 *
 * Returns: (transfer full): the tombstone's revision, or %NULL with @error set
 */
char *
hb_store_delete_sync (
    HbStore *self, const char *id, const char *rev, GCancellable *cancellable, GError **error)
{
  g_autoptr (JsonNode) node = NULL;
  JsonObject *doc;

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (id != NULL, NULL);

  doc = json_object_new ();
  json_object_set_string_member (doc, "_id", id);
  if (rev != NULL)
    json_object_set_string_member (doc, "_rev", rev);
  json_object_set_boolean_member (doc, "_deleted", TRUE);
  node = take_object (doc);
  return hb_store_put_sync (self, node, cancellable, error);
}

/**
 * hb_store_get_sync:
 * @self: a store
 * @id: the document
 * @rev: (nullable): a revision, or %NULL for the winning one
 * @flags: what to add to the document
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Reads one revision of a document.
 *
 * Returns: (transfer full): the document, or %NULL with @error set
 */
JsonNode *
hb_store_get_sync (HbStore *self,
                   const char *id,
                   const char *rev,
                   HbGetFlags flags,
                   GCancellable *cancellable,
                   GError **error)
{
  GetArgs args = { id, rev, flags, NULL };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (id != NULL, NULL);

  if (!run_read (self, get_func, &args, cancellable, error))
    return NULL;
  return args.result;
}

/**
 * hb_store_get_many_sync:
 * @self: a store
 * @ids: (array zero-terminated=1): document ids
 * @flags: what to add to each document
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Reads the winning revision of several documents from one snapshot.
 *
 * Returns: (transfer full) (element-type Json.Node): one entry per id, in order: the document,
 *   or `{"id", "error", "reason"}` when it is missing, deleted or corrupt
 */
GPtrArray *
hb_store_get_many_sync (HbStore *self,
                        const char *const *ids,
                        HbGetFlags flags,
                        GCancellable *cancellable,
                        GError **error)
{
  ManyArgs args = { ids, flags, NULL, doc_of_state, NULL, error_item_node };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (ids != NULL, NULL);

  return read_array (self, get_many_func, &args, &args.results, (GDestroyNotify)json_node_unref,
                     cancellable, error);
}

/**
 * hb_store_get_many_json_sync:
 * @self: a store
 * @ids: (array zero-terminated=1): document ids
 * @flags: what to add to each document
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Like hb_store_get_many_sync(), but each document comes back as UTF-8 JSON text, ready to be
 * sent to a server, without being parsed on the way: what replication reads.
 *
 * Returns: (transfer full) (element-type GLib.Bytes): one JSON object per id, in order
 */
GPtrArray *
hb_store_get_many_json_sync (HbStore *self,
                             const char *const *ids,
                             HbGetFlags flags,
                             GCancellable *cancellable,
                             GError **error)
{
  ManyArgs args = { ids, flags, NULL, json_of_state, json_of_row, error_item_bytes };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (ids != NULL, NULL);

  return read_array (self, get_many_func, &args, &args.results, (GDestroyNotify)g_bytes_unref,
                     cancellable, error);
}

/**
 * hb_store_get_revs_json_sync:
 * @self: a store
 * @request: `{id: [rev, ...]}`: the revisions to read, as the `missing` lists of a `_revs_diff`
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Reads the given revisions as JSON text ready for a `_bulk_docs` with `new_edits:false`: each
 * carries `_id`, `_rev`, `_revisions` and `_deleted` for a tombstone. A revision that cannot be
 * read (unknown, compacted, corrupt) comes back as `{"id", "rev", "error", "reason"}` in its
 * place. Each buffer holds plaintext and is wiped when its last reference goes.
 *
 * Returns: (transfer full) (element-type GLib.Bytes): one JSON object per requested revision, in
 *   the request's order
 */
GPtrArray *
hb_store_get_revs_json_sync (HbStore *self,
                             JsonNode *request,
                             GCancellable *cancellable,
                             GError **error)
{
  RevsJsonArgs args = { request, NULL };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (request != NULL, NULL);

  return read_array (self, get_revs_json_func, &args, &args.results, (GDestroyNotify)g_bytes_unref,
                     cancellable, error);
}

/**
 * hb_store_revs_diff_sync:
 * @self: a store
 * @request: `{id: [rev, ...]}`, as CouchDB's `_revs_diff` takes it
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Tells which of the given revisions the store lacks.
 *
 * Returns: (transfer full): `{id: {"missing": [...], "possible_ancestors": [...]}}` for the ids
 *   with missing revisions
 */
JsonNode *
hb_store_revs_diff_sync (HbStore *self,
                         JsonNode *request,
                         GCancellable *cancellable,
                         GError **error)
{
  JsonNode *io[2] = { request, NULL };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (request != NULL, NULL);

  if (!run_read (self, revs_diff_func, io, cancellable, error))
    return NULL;
  return io[1];
}

/**
 * hb_store_changes_sync:
 * @self: a store
 * @since: the local sequence to start after (0 for all)
 * @limit: at most this many rows, or 0 for no limit
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * The changes feed, in the form of CouchDB's `_changes?style=all_docs`: one row per changed
 * document with every leaf revision, the winner first. A record that fails its integrity
 * check appears as `{"seq", "error": "corrupt"}` rather than vanishing.
 *
 * Returns: (transfer full): `{"results": [...], "last_seq", "pending"}`
 */
JsonNode *
hb_store_changes_sync (
    HbStore *self, guint64 since, guint limit, GCancellable *cancellable, GError **error)
{
  ChangesArgs args = { since, limit, NULL };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);

  if (!run_read (self, changes_func, &args, cancellable, error))
    return NULL;
  return args.result;
}

static GPtrArray *
find_docs (
    HbStore *self, HbIndexField field, const char *value, GCancellable *cancellable, GError **error)
{
  FindArgs args = { field, value, NULL };

  return read_array (self, find_func, &args, &args.results, (GDestroyNotify)json_node_unref,
                     cancellable, error);
}

/**
 * hb_store_find_sync:
 * @self: a store
 * @field: the indexed field
 * @value: the value it must have
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Finds the documents whose winning revision has @field equal to @value, through the blind
 * index: only matching documents are decrypted.
 *
 * Returns: (transfer full) (element-type Json.Node): the documents, sorted by id; a document
 *   whose record is corrupt appears as `{"error": "corrupt", ...}`
 */
GPtrArray *
hb_store_find_sync (
    HbStore *self, HbIndexField field, const char *value, GCancellable *cancellable, GError **error)
{
  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (value != NULL, NULL);
  g_return_val_if_fail (field <= HB_INDEX_FIELD_PATIENT_ID, NULL);

  return find_docs (self, field, value, cancellable, error);
}

/**
 * hb_store_all_docs_sync:
 * @self: a store
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Every live document's winning revision, sorted by id. Decrypts the whole store.
 *
 * Returns: (transfer full) (element-type Json.Node): the documents
 */
GPtrArray *
hb_store_all_docs_sync (HbStore *self, GCancellable *cancellable, GError **error)
{
  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  return find_docs (self, HB_INDEX_FIELD_TYPE, NULL, cancellable, error);
}

/**
 * hb_store_get_local_sync:
 * @self: a store
 * @id: the local document's id, with or without the `_local/` prefix
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Reads a `_local` document: never replicated, no history, sealed like the rest.
 *
 * Returns: (transfer full): the document, or %NULL with @error set
 */
JsonNode *
hb_store_get_local_sync (HbStore *self, const char *id, GCancellable *cancellable, GError **error)
{
  LocalArgs args = { id };

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (id != NULL, NULL);

  if (!run_read (self, get_local_func, &args, cancellable, error))
    return NULL;
  return args.doc;
}

/**
 * hb_store_put_local_sync:
 * @self: a store
 * @doc: a document whose `_id` is `_local/...`, with the current `_rev` when it exists
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Writes a `_local` document. Its revision is `0-N`, N counting its writes.
 *
 * Returns: (transfer full): the new revision, or %NULL with @error set
 */
char *
hb_store_put_local_sync (HbStore *self, JsonNode *doc, GCancellable *cancellable, GError **error)
{
  LocalArgs args = { NULL };
  JsonObject *obj;

  g_return_val_if_fail (HB_IS_STORE (self), NULL);
  g_return_val_if_fail (doc != NULL, NULL);

  obj = JSON_NODE_HOLDS_OBJECT (doc) ? json_node_get_object (doc) : NULL;
  args.id = obj ? json_object_get_string_member_with_default (obj, "_id", NULL) : NULL;
  if (args.id == NULL || !g_str_has_prefix (args.id, "_local/") || args.id[7] == '\0')
    {
      invalid (error, "%s", "A local document needs an _id starting with _local/");
      return NULL;
    }
  args.rev = json_object_get_string_member_with_default (obj, "_rev", NULL);
  args.doc = doc;
  if (!run_write (self, write_local_func, &args, cancellable, error))
    {
      g_free (args.result);
      return NULL;
    }
  return args.result;
}

/**
 * hb_store_delete_local_sync:
 * @self: a store
 * @id: the local document's id
 * @rev: its current revision
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Deletes a `_local` document; local documents leave no tombstone.
 *
 * Returns: %TRUE on success
 */
gboolean
hb_store_delete_local_sync (
    HbStore *self, const char *id, const char *rev, GCancellable *cancellable, GError **error)
{
  LocalArgs args = { id, rev, NULL, TRUE, NULL };

  g_return_val_if_fail (HB_IS_STORE (self), FALSE);
  g_return_val_if_fail (id != NULL, FALSE);

  return run_write (self, write_local_func, &args, cancellable, error);
}

/**
 * hb_store_purge_sync:
 * @self: a store
 * @id: the document
 * @revs: (array zero-terminated=1): leaf revisions to purge
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Removes leaf revisions and the history only they used, as if they had never been written;
 * a document left with no revision is removed entirely. Unlike a deletion, a purge does not
 * replicate.
 *
 * Returns: how many revisions were purged (0 with @error set on failure)
 */
guint
hb_store_purge_sync (HbStore *self,
                     const char *id,
                     const char *const *revs,
                     GCancellable *cancellable,
                     GError **error)
{
  PurgeArgs args = { id, revs, 0 };

  g_return_val_if_fail (HB_IS_STORE (self), 0);
  g_return_val_if_fail (id != NULL, 0);

  if (!run_write (self, purge_func, &args, cancellable, error))
    return 0;
  return args.purged;
}

/**
 * hb_store_compact_sync:
 * @self: a store
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Drops the bodies of revisions that are no longer leaves, then checkpoints and truncates the
 * write-ahead log.
 *
 * Returns: how many bodies were dropped
 */
guint
hb_store_compact_sync (HbStore *self, GCancellable *cancellable, GError **error)
{
  guint removed = 0;

  g_return_val_if_fail (HB_IS_STORE (self), 0);

  if (!run_write (self, compact_func, &removed, cancellable, error))
    return 0;
  g_mutex_lock (&self->write_lock);
  if (self->writer != NULL)
    (void)sqlite3_exec (self->writer->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
  g_mutex_unlock (&self->write_lock);
  return removed;
}

static gint64
count_rows (HbConn *c, const char *sql)
{
  sqlite3_stmt *stmt = conn_stmt (c, sql, NULL);
  gint64 n = -1;

  if (stmt != NULL && sqlite3_step (stmt) == SQLITE_ROW)
    n = sqlite3_column_int64 (stmt, 0);
  if (stmt != NULL)
    sqlite3_reset (stmt);
  return n;
}

static gint64
file_size (const char *path)
{
  GStatBuf st;

  return g_stat (path, &st) == 0 ? (gint64)st.st_size : 0;
}

static gboolean
stats_func (HbStore *self, HbConn *c, gpointer data, GCancellable *cancellable, GError **error)
{
  JsonNode **out = data;
  JsonObject *obj = json_object_new ();
  g_autofree char *wal = g_strconcat (self->path, "-wal", NULL);

  json_object_set_string_member (obj, "store_uuid", self->uuid);
  json_object_set_int_member (obj, "schema_version", meta_int (c, "schema_version", 0));
  json_object_set_int_member (obj, "update_seq", meta_int (c, "update_seq", 0));
  json_object_set_int_member (obj, "doc_count", meta_int (c, "doc_count", 0));
  json_object_set_int_member (obj, "deleted_doc_count", meta_int (c, "deleted_doc_count", 0));
  json_object_set_int_member (obj, "revs_limit", meta_int (c, "revs_limit", DEFAULT_REVS_LIMIT));
  json_object_set_int_member (obj, "stored_bodies",
                              count_rows (c, "SELECT (SELECT count(*) FROM bodies)"
                                             " + (SELECT count(*) FROM docs WHERE body NOT NULL)"));
  json_object_set_int_member (obj, "local_doc_count",
                              count_rows (c, "SELECT count(*) FROM local_docs"));
  json_object_set_int_member (obj, "file_size", file_size (self->path));
  json_object_set_int_member (obj, "wal_size", file_size (wal));
  *out = take_object (obj);
  return TRUE;
}

/**
 * hb_store_get_stats_sync:
 * @self: a store
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Counts that reveal nothing clinical: documents, tombstones, stored bodies, local documents,
 * file sizes, the update sequence.
 *
 * Returns: (transfer full): a JSON object
 */
JsonNode *
hb_store_get_stats_sync (HbStore *self, GCancellable *cancellable, GError **error)
{
  JsonNode *out = NULL;

  g_return_val_if_fail (HB_IS_STORE (self), NULL);

  if (!run_read (self, stats_func, &out, cancellable, error))
    return NULL;
  return out;
}

/* ---- asynchronous forms: the _sync call in a worker thread ----------------------------- */

typedef enum
{
  OP_PUT,
  OP_GET,
  OP_BULK_DOCS,
  OP_GET_MANY,
  OP_CHANGES,
  OP_FIND,
  OP_DELETE,
  OP_REVS_DIFF,
  OP_ALL_DOCS,
  OP_GET_LOCAL,
  OP_PUT_LOCAL,
  OP_PURGE,
  OP_COMPACT,
  OP_STATS,
  OP_GET_REVS_JSON,
} AsyncOp;

typedef struct
{
  AsyncOp op;
  JsonNode *doc;
  GPtrArray *docs;
  char *id;
  char *rev;
  GStrv ids;
  HbGetFlags flags;
  gboolean new_edits;
  guint64 since;
  guint limit;
  HbIndexField field;
  char *value;
} AsyncArgs;

static void
async_args_free (gpointer data)
{
  AsyncArgs *a = data;

  g_clear_pointer (&a->doc, json_node_unref);
  g_clear_pointer (&a->docs, g_ptr_array_unref);
  g_free (a->id);
  g_free (a->rev);
  g_strfreev (a->ids);
  g_free (a->value);
  g_free (a);
}

static void
async_thread (GTask *task, gpointer source, gpointer task_data, GCancellable *cancellable)
{
  HbStore *self = source;
  AsyncArgs *a = task_data;
  GError *error = NULL;
  gpointer result = NULL;
  GDestroyNotify free_result = (GDestroyNotify)g_ptr_array_unref;

  switch (a->op)
    {
      case OP_PUT:
        result = hb_store_put_sync (self, a->doc, cancellable, &error);
        free_result = g_free;
        break;
      case OP_GET:
        result = hb_store_get_sync (self, a->id, a->rev, a->flags, cancellable, &error);
        free_result = (GDestroyNotify)json_node_unref;
        break;
      case OP_BULK_DOCS:
        result = hb_store_bulk_docs_sync (self, a->docs, a->new_edits, cancellable, &error);
        break;
      case OP_GET_MANY:
        result = hb_store_get_many_sync (self, (const char *const *)a->ids, a->flags, cancellable,
                                         &error);
        break;
      case OP_CHANGES:
        result = hb_store_changes_sync (self, a->since, a->limit, cancellable, &error);
        free_result = (GDestroyNotify)json_node_unref;
        break;
      case OP_FIND:
        result = hb_store_find_sync (self, a->field, a->value, cancellable, &error);
        break;
      case OP_DELETE:
        result = hb_store_delete_sync (self, a->id, a->rev, cancellable, &error);
        free_result = g_free;
        break;
      case OP_REVS_DIFF:
        result = hb_store_revs_diff_sync (self, a->doc, cancellable, &error);
        free_result = (GDestroyNotify)json_node_unref;
        break;
      case OP_GET_REVS_JSON:
        result = hb_store_get_revs_json_sync (self, a->doc, cancellable, &error);
        break;
      case OP_ALL_DOCS:
        result = hb_store_all_docs_sync (self, cancellable, &error);
        break;
      case OP_GET_LOCAL:
        result = hb_store_get_local_sync (self, a->id, cancellable, &error);
        free_result = (GDestroyNotify)json_node_unref;
        break;
      case OP_PUT_LOCAL:
        result = hb_store_put_local_sync (self, a->doc, cancellable, &error);
        free_result = g_free;
        break;
      case OP_STATS:
        result = hb_store_get_stats_sync (self, cancellable, &error);
        free_result = (GDestroyNotify)json_node_unref;
        break;
      case OP_PURGE:
      case OP_COMPACT:
        {
          guint n = a->op == OP_PURGE ? hb_store_purge_sync (
                        self, a->id, (const char *const *)a->ids, cancellable, &error)
                                      : hb_store_compact_sync (self, cancellable, &error);
          if (error != NULL)
            g_task_return_error (task, error);
          else
            g_task_return_int (task, n);
          return;
        }
      default:
        g_assert_not_reached ();
    }
  if (error != NULL)
    g_task_return_error (task, error);
  else
    g_task_return_pointer (task, result, free_result);
}

static void
run_async (HbStore *self,
           AsyncArgs *args,
           gpointer source_tag,
           GCancellable *cancellable,
           GAsyncReadyCallback callback,
           gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (self, cancellable, callback, user_data);

  g_task_set_source_tag (task, source_tag);
  g_task_set_task_data (task, args, async_args_free);
  g_task_run_in_thread (task, async_thread);
}

static gpointer
finish_async (HbStore *self, GAsyncResult *result, gpointer source_tag, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), NULL);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == source_tag, NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}

static AsyncArgs *
async_args (AsyncOp op)
{
  AsyncArgs *a = g_new0 (AsyncArgs, 1);

  a->op = op;
  return a;
}

/**
 * hb_store_put_async:
 * @self: a store
 * @doc: the document
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_put_sync().
 */
void
hb_store_put_async (HbStore *self,
                    JsonNode *doc,
                    GCancellable *cancellable,
                    GAsyncReadyCallback callback,
                    gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_PUT);
  /* A deep copy: the caller may change its document while the worker reads it. */
  a->doc = json_node_copy (doc);
  run_async (self, a, hb_store_put_async, cancellable, callback, user_data);
}

/**
 * hb_store_put_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the new revision, or %NULL with @error set
 */
char *
hb_store_put_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_put_async, error);
}

/**
 * hb_store_get_async:
 * @self: a store
 * @id: the document
 * @rev: (nullable): a revision, or %NULL for the winner
 * @flags: what to add
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_get_sync().
 */
void
hb_store_get_async (HbStore *self,
                    const char *id,
                    const char *rev,
                    HbGetFlags flags,
                    GCancellable *cancellable,
                    GAsyncReadyCallback callback,
                    gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_GET);
  a->id = g_strdup (id);
  a->rev = g_strdup (rev);
  a->flags = flags;
  run_async (self, a, hb_store_get_async, cancellable, callback, user_data);
}

/**
 * hb_store_get_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the document, or %NULL with @error set
 */
JsonNode *
hb_store_get_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_get_async, error);
}

/**
 * hb_store_bulk_docs_async:
 * @self: a store
 * @docs: (element-type Json.Node): the documents
 * @new_edits: whether these are local edits
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_bulk_docs_sync().
 */
void
hb_store_bulk_docs_async (HbStore *self,
                          GPtrArray *docs,
                          gboolean new_edits,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_BULK_DOCS);
  a->docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
  for (guint i = 0; i < docs->len; i++)
    g_ptr_array_add (a->docs, json_node_copy (g_ptr_array_index (docs, i)));
  a->new_edits = new_edits;
  run_async (self, a, hb_store_bulk_docs_async, cancellable, callback, user_data);
}

/**
 * hb_store_bulk_docs_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full) (element-type Json.Node): one result per document
 */
GPtrArray *
hb_store_bulk_docs_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_bulk_docs_async, error);
}

/**
 * hb_store_get_many_async:
 * @self: a store
 * @ids: (array zero-terminated=1): document ids
 * @flags: what to add
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_get_many_sync().
 */
void
hb_store_get_many_async (HbStore *self,
                         const char *const *ids,
                         HbGetFlags flags,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_GET_MANY);
  a->ids = g_strdupv ((char **)ids);
  a->flags = flags;
  run_async (self, a, hb_store_get_many_async, cancellable, callback, user_data);
}

/**
 * hb_store_get_many_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full) (element-type Json.Node): one entry per id
 */
GPtrArray *
hb_store_get_many_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_get_many_async, error);
}

/**
 * hb_store_get_revs_json_async:
 * @self: a store
 * @request: `{id: [rev, ...]}`
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_get_revs_json_sync().
 */
void
hb_store_get_revs_json_async (HbStore *self,
                              JsonNode *request,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  g_return_if_fail (request != NULL);
  a = async_args (OP_GET_REVS_JSON);
  a->doc = json_node_ref (request);
  run_async (self, a, hb_store_get_revs_json_async, cancellable, callback, user_data);
}

/**
 * hb_store_get_revs_json_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full) (element-type GLib.Bytes): one JSON object per requested revision
 */
GPtrArray *
hb_store_get_revs_json_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_get_revs_json_async, error);
}

/**
 * hb_store_changes_async:
 * @self: a store
 * @since: the local sequence to start after
 * @limit: at most this many rows, or 0
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_changes_sync().
 */
void
hb_store_changes_async (HbStore *self,
                        guint64 since,
                        guint limit,
                        GCancellable *cancellable,
                        GAsyncReadyCallback callback,
                        gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_CHANGES);
  a->since = since;
  a->limit = limit;
  run_async (self, a, hb_store_changes_async, cancellable, callback, user_data);
}

/**
 * hb_store_changes_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the changes feed
 */
JsonNode *
hb_store_changes_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_changes_async, error);
}

/**
 * hb_store_find_async:
 * @self: a store
 * @field: the indexed field
 * @value: the value
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_find_sync().
 */
void
hb_store_find_async (HbStore *self,
                     HbIndexField field,
                     const char *value,
                     GCancellable *cancellable,
                     GAsyncReadyCallback callback,
                     gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_FIND);
  a->field = field;
  a->value = g_strdup (value);
  run_async (self, a, hb_store_find_async, cancellable, callback, user_data);
}

/**
 * hb_store_find_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full) (element-type Json.Node): the documents
 */
GPtrArray *
hb_store_find_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_find_async, error);
}

/**
 * hb_store_delete_async:
 * @self: a store
 * @id: the document
 * @rev: (nullable): its current revision
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_delete_sync().
 */
void
hb_store_delete_async (HbStore *self,
                       const char *id,
                       const char *rev,
                       GCancellable *cancellable,
                       GAsyncReadyCallback callback,
                       gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_DELETE);
  a->id = g_strdup (id);
  a->rev = g_strdup (rev);
  run_async (self, a, hb_store_delete_async, cancellable, callback, user_data);
}

/**
 * hb_store_delete_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the tombstone's revision, or %NULL with @error set
 */
char *
hb_store_delete_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_delete_async, error);
}

/**
 * hb_store_revs_diff_async:
 * @self: a store
 * @request: `{id: [rev, ...]}`
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_revs_diff_sync().
 */
void
hb_store_revs_diff_async (HbStore *self,
                          JsonNode *request,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_REVS_DIFF);
  a->doc = json_node_copy (request);
  run_async (self, a, hb_store_revs_diff_async, cancellable, callback, user_data);
}

/**
 * hb_store_revs_diff_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the missing revisions, or %NULL with @error set
 */
JsonNode *
hb_store_revs_diff_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_revs_diff_async, error);
}

/**
 * hb_store_all_docs_async:
 * @self: a store
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_all_docs_sync().
 */
void
hb_store_all_docs_async (HbStore *self,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_ALL_DOCS);
  run_async (self, a, hb_store_all_docs_async, cancellable, callback, user_data);
}

/**
 * hb_store_all_docs_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full) (element-type Json.Node): the documents, or %NULL with @error set
 */
GPtrArray *
hb_store_all_docs_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_all_docs_async, error);
}

/**
 * hb_store_get_local_async:
 * @self: a store
 * @id: the local document's id
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_get_local_sync().
 */
void
hb_store_get_local_async (HbStore *self,
                          const char *id,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_GET_LOCAL);
  a->id = g_strdup (id);
  run_async (self, a, hb_store_get_local_async, cancellable, callback, user_data);
}

/**
 * hb_store_get_local_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the document, or %NULL with @error set
 */
JsonNode *
hb_store_get_local_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_get_local_async, error);
}

/**
 * hb_store_put_local_async:
 * @self: a store
 * @doc: the local document
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_put_local_sync().
 */
void
hb_store_put_local_async (HbStore *self,
                          JsonNode *doc,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_PUT_LOCAL);
  a->doc = json_node_copy (doc);
  run_async (self, a, hb_store_put_local_async, cancellable, callback, user_data);
}

/**
 * hb_store_put_local_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the new revision, or %NULL with @error set
 */
char *
hb_store_put_local_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_put_local_async, error);
}

/**
 * hb_store_get_stats_async:
 * @self: a store
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_get_stats_sync().
 */
void
hb_store_get_stats_async (HbStore *self,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_STATS);
  run_async (self, a, hb_store_get_stats_async, cancellable, callback, user_data);
}

/**
 * hb_store_get_stats_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the counts, or %NULL with @error set
 */
JsonNode *
hb_store_get_stats_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  return finish_async (self, result, hb_store_get_stats_async, error);
}

/**
 * hb_store_purge_async:
 * @self: a store
 * @id: the document
 * @revs: (array zero-terminated=1): leaf revisions to purge
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_purge_sync().
 */
void
hb_store_purge_async (HbStore *self,
                      const char *id,
                      const char *const *revs,
                      GCancellable *cancellable,
                      GAsyncReadyCallback callback,
                      gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_PURGE);
  a->id = g_strdup (id);
  a->ids = g_strdupv ((char **)revs);
  run_async (self, a, hb_store_purge_async, cancellable, callback, user_data);
}

/**
 * hb_store_purge_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: how many revisions were purged (0 with @error set on failure)
 */
guint
hb_store_purge_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), 0);
  return (guint)g_task_propagate_int (G_TASK (result), error);
}

/**
 * hb_store_compact_async:
 * @self: a store
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * The asynchronous form of hb_store_compact_sync().
 */
void
hb_store_compact_async (HbStore *self,
                        GCancellable *cancellable,
                        GAsyncReadyCallback callback,
                        gpointer user_data)
{
  AsyncArgs *a;

  g_return_if_fail (HB_IS_STORE (self));
  a = async_args (OP_COMPACT);
  run_async (self, a, hb_store_compact_async, cancellable, callback, user_data);
}

/**
 * hb_store_compact_finish:
 * @self: a store
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: how many bodies were dropped (0 with @error set on failure)
 */
guint
hb_store_compact_finish (HbStore *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), 0);
  return (guint)g_task_propagate_int (G_TASK (result), error);
}
