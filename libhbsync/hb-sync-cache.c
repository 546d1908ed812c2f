/* hb-sync-cache.c — the bounded, wiped plaintext cache between the store and the server (the
 * seed's syncDb).
 *
 * Entries live in one hash table keyed by (id, rev) and in exactly one of two queues: unwritten
 * entries in the order they were admitted (they may never be evicted), written entries least
 * recently used first (the eviction order). Adds that find no room wait in a FIFO queue; every
 * operation that can make room admits as many of them as now fit, in order, so a large document
 * is never starved by a stream of small ones.
 *
 * One mutex guards everything. Signals are never emitted with it held, nor on a worker thread:
 * changes only set bits in pending_notify, and one idle source on the owner's context emits
 * them. */

#include <malloc.h>
#include <string.h>

#include "hb-crypto-private.h"
#include "hb-enums.h"
#include "hb-sync-cache-private.h"

typedef struct
{
  char *id;
  char *rev;
  guint8 *data;
  gsize len;
  /* What the entry costs, from the allocator: the bound is on memory actually held. */
  guint64 size;
  gboolean written;
  GList link; /* in unwritten or lru */
} Entry;

typedef enum
{
  WAITER_WAITING,
  WAITER_ADMITTED,
  WAITER_CANCELLED,
} WaiterState;

/* An add that has to wait for room: on the stack of a blocked hb_sync_cache_add_sync(), or the
 * task data of an hb_sync_cache_add_async(). */
typedef struct
{
  HbSyncCache *self;
  Entry *entry;
  WaiterState state;
  GList link; /* in waiters */
  GTask *task;
  GSource *cancel_source;
} Waiter;

/* A caller's copy of a plaintext, wiped on its last unref. */
typedef struct
{
  HbSyncCacheWipeFunc hook;
  gpointer hook_data;
  gsize len;
  guint8 data[];
} Copy;

struct _HbSyncCacheEntry
{
  gatomicrefcount ref_count;
  char *id;
  char *rev;
  GBytes *plaintext;
  gboolean written;
};

enum
{
  NOTIFY_STATS = 1 << 0,
  NOTIFY_MAX_DOCUMENTS = 1 << 1,
  NOTIFY_MAX_BYTES = 1 << 2,
};

struct _HbSyncCache
{
  GObject parent_instance;

  GMainContext *owner_context;

  GMutex mutex;
  GCond cond; /* broadcast when a blocked add_sync is admitted or cancelled */
  GHashTable *entries;
  GQueue unwritten;
  GQueue lru;
  GQueue waiters;
  guint64 unwritten_bytes;
  guint max_documents;
  guint64 max_bytes;
  /* entries and unwritten are filled in by get_stats; the rest is kept current. */
  HbSyncCacheStats stats;
  guint pending_notify;
  GSource *notify_source;
  HbSyncCacheWipeFunc wipe_hook;
  gpointer wipe_hook_data;
};

G_DEFINE_FINAL_TYPE (HbSyncCache, hb_sync_cache, G_TYPE_OBJECT)

G_DEFINE_BOXED_TYPE (HbSyncCacheStats,
                     hb_sync_cache_stats,
                     hb_sync_cache_stats_copy,
                     hb_sync_cache_stats_free)

G_DEFINE_BOXED_TYPE (HbSyncCacheEntry,
                     hb_sync_cache_entry,
                     hb_sync_cache_entry_ref,
                     hb_sync_cache_entry_unref)

enum
{
  PROP_0,
  PROP_MAX_DOCUMENTS,
  PROP_MAX_BYTES,
  N_PROPS
};

static GParamSpec *properties[N_PROPS];

enum
{
  STATS_CHANGED,
  N_SIGNALS
};

static guint signals[N_SIGNALS];

/* ------------------------------------------------------------------------------------------ */
/* Plaintext and key memory                                                                   */

/* Document ids are clinical data too (patient:<uuid>): they are wiped like the bodies. */
static void
wiped_strfree (char *s)
{
  if (s != NULL)
    hb_wipe (s, strlen (s));
  g_free (s);
}

static void
copy_free (gpointer data)
{
  Copy *copy = data;

  hb_wipe (copy->data, copy->len);
  if (copy->hook != NULL)
    copy->hook (copy->data, copy->len, TRUE, copy->hook_data);
  g_free (copy);
}

static GBytes *
copy_new (HbSyncCache *self, const guint8 *data, gsize len)
{
  Copy *copy = g_malloc (sizeof (Copy) + len);

  copy->hook = self->wipe_hook;
  copy->hook_data = self->wipe_hook_data;
  copy->len = len;
  if (len > 0)
    memcpy (copy->data, data, len);
  return g_bytes_new_with_free_func (copy->data, len, copy_free, copy);
}

static Entry *
entry_new (const char *id, const char *rev, GBytes *plaintext, gboolean written)
{
  Entry *e = g_new0 (Entry, 1);
  gsize len = 0;
  const guint8 *data = g_bytes_get_data (plaintext, &len);

  e->id = g_strdup (id);
  e->rev = g_strdup (rev);
  /* At least one byte, so an empty document is still an allocation of its own. */
  e->data = g_malloc (MAX (len, 1));
  if (len > 0)
    memcpy (e->data, data, len);
  e->len = len;
  e->written = written;
  e->link.data = e;
  e->size = malloc_usable_size (e) + malloc_usable_size (e->id) + malloc_usable_size (e->rev)
            + malloc_usable_size (e->data);
  return e;
}

/* Every plaintext buffer of the cache ends here, with the lock held. */
static void
entry_wipe_free (HbSyncCache *self, Entry *e)
{
  hb_wipe (e->data, e->len);
  if (self->wipe_hook != NULL)
    self->wipe_hook (e->data, e->len, FALSE, self->wipe_hook_data);
  self->stats.wipes++;
  self->pending_notify |= NOTIFY_STATS;
  g_free (e->data);
  wiped_strfree (e->id);
  wiped_strfree (e->rev);
  g_free (e);
}

static guint
entry_hash (gconstpointer p)
{
  const Entry *e = p;

  return g_str_hash (e->id) * 31 + g_str_hash (e->rev);
}

static gboolean
entry_equal (gconstpointer a, gconstpointer b)
{
  const Entry *ea = a;
  const Entry *eb = b;

  return strcmp (ea->id, eb->id) == 0 && strcmp (ea->rev, eb->rev) == 0;
}

static Entry *
find_entry (HbSyncCache *self, const char *id, const char *rev)
{
  Entry key = { .id = (char *)id, .rev = (char *)rev };

  return g_hash_table_lookup (self->entries, &key);
}

/* ------------------------------------------------------------------------------------------ */
/* Admission and eviction, all with the lock held                                            */

static void
link_entry (HbSyncCache *self, Entry *e)
{
  g_hash_table_add (self->entries, e);
  if (e->written)
    {
      g_queue_push_tail_link (&self->lru, &e->link);
    }
  else
    {
      g_queue_push_tail_link (&self->unwritten, &e->link);
      self->unwritten_bytes += e->size;
    }
  self->stats.bytes += e->size;
  self->stats.peak_bytes = MAX (self->stats.peak_bytes, self->stats.bytes);
  self->pending_notify |= NOTIFY_STATS;
}

static void
drop_entry (HbSyncCache *self, Entry *e)
{
  g_hash_table_remove (self->entries, e);
  if (e->written)
    {
      g_queue_unlink (&self->lru, &e->link);
    }
  else
    {
      g_queue_unlink (&self->unwritten, &e->link);
      self->unwritten_bytes -= e->size;
    }
  self->stats.bytes -= e->size;
  entry_wipe_free (self, e);
}

static void
drop_all (HbSyncCache *self)
{
  Entry *e;

  while ((e = g_queue_peek_head (&self->unwritten)) != NULL)
    drop_entry (self, e);
  while ((e = g_queue_peek_head (&self->lru)) != NULL)
    drop_entry (self, e);
}

static gboolean
over_bounds (HbSyncCache *self, guint extra_count, guint64 extra_bytes)
{
  return g_hash_table_size (self->entries) + extra_count > self->max_documents
         || self->stats.bytes + extra_bytes > self->max_bytes;
}

static void
evict_until_fits (HbSyncCache *self, guint extra_count, guint64 extra_bytes)
{
  while (self->lru.length > 0 && over_bounds (self, extra_count, extra_bytes))
    {
      drop_entry (self, g_queue_peek_head (&self->lru));
      self->stats.evictions++;
    }
}

/* Puts @e in the cache, evicting written entries as needed, if the unwritten entries leave room
 * for it. Returns FALSE, changing nothing, when it has to wait; an entry added as written never
 * waits (it is dropped instead, nothing is lost). */
static gboolean
try_admit (HbSyncCache *self, Entry *e)
{
  Entry *old = g_hash_table_lookup (self->entries, e);
  guint unwritten = self->unwritten.length;
  guint64 unwritten_bytes = self->unwritten_bytes;
  gboolean fits;

  if (old != NULL && !old->written)
    {
      unwritten--;
      unwritten_bytes -= old->size;
    }
  fits = unwritten + 1 <= self->max_documents && unwritten_bytes + e->size <= self->max_bytes;
  /* An entry larger than the byte bound on its own is admitted once no other unwritten entry is
   * left: waiting longer could never make room for it. */
  if (!fits && !e->written && unwritten > 0)
    return FALSE;
  if (old != NULL)
    drop_entry (self, old);
  if (!fits && e->written)
    {
      entry_wipe_free (self, e);
      self->stats.evictions++;
      return TRUE;
    }
  evict_until_fits (self, 1, e->size);
  link_entry (self, e);
  return TRUE;
}

/* Admits waiting adds, first come first served, while they fit. Blocked add_sync callers are
 * woken here; the async ones are returned, to be completed once the lock is released. */
static GSList *
admit_waiters (HbSyncCache *self)
{
  GSList *completed = NULL;
  gboolean wake = FALSE;
  Waiter *w;

  while ((w = g_queue_peek_head (&self->waiters)) != NULL && try_admit (self, w->entry))
    {
      g_queue_unlink (&self->waiters, &w->link);
      w->entry = NULL;
      w->state = WAITER_ADMITTED;
      if (w->task != NULL)
        completed = g_slist_prepend (completed, w);
      else
        wake = TRUE;
    }
  if (wake)
    g_cond_broadcast (&self->cond);
  return g_slist_reverse (completed);
}

/* Completes admitted async adds; never with the lock held, as a task may call back at once. */
static void
complete_admitted (GSList *completed)
{
  for (GSList *l = completed; l != NULL; l = l->next)
    {
      Waiter *w = l->data;
      GTask *task = w->task;

      if (w->cancel_source != NULL)
        g_source_destroy (w->cancel_source);
      g_task_return_boolean (task, TRUE);
      g_object_unref (task);
    }
  g_slist_free (completed);
}

/* ------------------------------------------------------------------------------------------ */
/* Notifications on the owner's context                                                       */

static gboolean
notify_idle (gpointer data)
{
  g_autoptr (HbSyncCache) self = g_weak_ref_get (data);
  guint pending;

  if (self == NULL)
    return G_SOURCE_REMOVE;

  g_mutex_lock (&self->mutex);
  pending = self->pending_notify;
  self->pending_notify = 0;
  g_clear_pointer (&self->notify_source, g_source_unref);
  g_mutex_unlock (&self->mutex);

  if (pending & NOTIFY_MAX_DOCUMENTS)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_MAX_DOCUMENTS]);
  if (pending & NOTIFY_MAX_BYTES)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_MAX_BYTES]);
  if (pending & NOTIFY_STATS)
    g_signal_emit (self, signals[STATS_CHANGED], 0);
  return G_SOURCE_REMOVE;
}

static void
weak_ref_free (gpointer data)
{
  g_weak_ref_clear (data);
  g_free (data);
}

/* Ends every operation that may have changed something, lock held: one idle source carries all
 * changes made until it runs. */
static void
schedule_notify (HbSyncCache *self)
{
  GWeakRef *ref;

  if (self->pending_notify == 0 || self->notify_source != NULL)
    return;

  /* A weak reference: an owner that never runs its loop (a CLI) must not keep the cache, and
   * its plaintext, alive through a pending source. */
  ref = g_new0 (GWeakRef, 1);
  g_weak_ref_init (ref, self);
  self->notify_source = g_idle_source_new ();
  g_source_set_priority (self->notify_source, G_PRIORITY_DEFAULT);
  g_source_set_callback (self->notify_source, notify_idle, ref, weak_ref_free);
  g_source_set_static_name (self->notify_source, "[hbsync] HbSyncCache notify");
  g_source_attach (self->notify_source, self->owner_context);
}

/* Ends a mutating operation: admits whoever now fits, schedules notifications, unlocks, then
 * completes the admitted async adds. */
static void
unlock_after_change (HbSyncCache *self)
{
  GSList *completed = admit_waiters (self);

  schedule_notify (self);
  g_mutex_unlock (&self->mutex);
  complete_admitted (completed);
}

/* ------------------------------------------------------------------------------------------ */
/* Waiting adds                                                                               */

/* Admits @w at once when it fits and no earlier add waits (an entry added as written never
 * waits: it takes no room a waiter needs, being evictable), or queues it. */
static gboolean
admit_or_queue (HbSyncCache *self, Waiter *w)
{
  gboolean admitted;

  g_mutex_lock (&self->mutex);
  admitted = (w->entry->written || g_queue_is_empty (&self->waiters)) && try_admit (self, w->entry);
  if (admitted)
    {
      w->entry = NULL;
      w->state = WAITER_ADMITTED;
    }
  else
    {
      g_queue_push_tail_link (&self->waiters, &w->link);
    }
  unlock_after_change (self);
  return admitted;
}

/* Removes a cancelled add that still waits; nothing if it was admitted meanwhile. */
static gboolean
withdraw (HbSyncCache *self, Waiter *w)
{
  gboolean withdrawn;

  g_mutex_lock (&self->mutex);
  withdrawn = w->state == WAITER_WAITING;
  if (withdrawn)
    {
      g_queue_unlink (&self->waiters, &w->link);
      w->state = WAITER_CANCELLED;
      entry_wipe_free (self, g_steal_pointer (&w->entry));
      g_cond_broadcast (&self->cond);
    }
  /* It may have been the head of the queue, holding back adds that fit. */
  unlock_after_change (self);
  return withdrawn;
}

static void
sync_add_cancelled (GCancellable *cancellable, gpointer user_data)
{
  Waiter *w = user_data;

  withdraw (w->self, w);
}

static gboolean
async_add_cancelled (GCancellable *cancellable, gpointer user_data)
{
  GTask *task = user_data;
  Waiter *w = g_task_get_task_data (task);

  if (withdraw (w->self, w))
    {
      g_task_return_error_if_cancelled (task);
      g_object_unref (task);
    }
  return G_SOURCE_REMOVE;
}

static void
waiter_free (gpointer data)
{
  Waiter *w = data;

  g_clear_pointer (&w->cancel_source, g_source_unref);
  g_free (w);
}

/* ------------------------------------------------------------------------------------------ */
/* GObject                                                                                    */

static void
set_bounds (HbSyncCache *self, const guint *max_documents, const guint64 *max_bytes)
{
  g_mutex_lock (&self->mutex);
  if (max_documents != NULL && *max_documents != self->max_documents)
    {
      self->max_documents = *max_documents;
      self->pending_notify |= NOTIFY_MAX_DOCUMENTS;
    }
  if (max_bytes != NULL && *max_bytes != self->max_bytes)
    {
      self->max_bytes = *max_bytes;
      self->pending_notify |= NOTIFY_MAX_BYTES;
    }
  evict_until_fits (self, 0, 0);
  unlock_after_change (self);
}

static void
hb_sync_cache_dispose (GObject *object)
{
  HbSyncCache *self = HB_SYNC_CACHE (object);

  /* Wiped as early as possible. Waiting adds hold a reference, so none can be left. */
  g_mutex_lock (&self->mutex);
  g_warn_if_fail (g_queue_is_empty (&self->waiters));
  drop_all (self);
  if (self->notify_source != NULL)
    g_source_destroy (self->notify_source);
  g_clear_pointer (&self->notify_source, g_source_unref);
  g_mutex_unlock (&self->mutex);

  G_OBJECT_CLASS (hb_sync_cache_parent_class)->dispose (object);
}

static void
hb_sync_cache_finalize (GObject *object)
{
  HbSyncCache *self = HB_SYNC_CACHE (object);

  g_clear_pointer (&self->entries, g_hash_table_unref);
  g_clear_pointer (&self->owner_context, g_main_context_unref);
  g_cond_clear (&self->cond);
  g_mutex_clear (&self->mutex);

  G_OBJECT_CLASS (hb_sync_cache_parent_class)->finalize (object);
}

static void
hb_sync_cache_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  HbSyncCache *self = HB_SYNC_CACHE (object);

  switch (prop_id)
    {
      case PROP_MAX_DOCUMENTS:
        g_value_set_uint (value, hb_sync_cache_get_max_documents (self));
        break;
      case PROP_MAX_BYTES:
        g_value_set_uint64 (value, hb_sync_cache_get_max_bytes (self));
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_sync_cache_set_property (GObject *object, guint prop_id, const GValue *value, GParamSpec *pspec)
{
  HbSyncCache *self = HB_SYNC_CACHE (object);
  guint max_documents;
  guint64 max_bytes;

  switch (prop_id)
    {
      case PROP_MAX_DOCUMENTS:
        max_documents = g_value_get_uint (value);
        set_bounds (self, &max_documents, NULL);
        break;
      case PROP_MAX_BYTES:
        max_bytes = g_value_get_uint64 (value);
        set_bounds (self, NULL, &max_bytes);
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_sync_cache_class_init (HbSyncCacheClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = hb_sync_cache_dispose;
  object_class->finalize = hb_sync_cache_finalize;
  object_class->get_property = hb_sync_cache_get_property;
  object_class->set_property = hb_sync_cache_set_property;

  /**
   * HbSyncCache:max-documents:
   *
   * How many documents the cache holds at most. Notified only when it changes, on the context
   * that created the cache, from an idle callback.
   */
  properties[PROP_MAX_DOCUMENTS] = g_param_spec_uint (
      "max-documents", NULL, NULL, 1, G_MAXUINT, HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS,
      G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);

  /**
   * HbSyncCache:max-bytes:
   *
   * How many bytes of memory the cache's entries hold at most (see #HbSyncCacheStats.bytes).
   * Notified only when it changes, on the context that created the cache, from an idle
   * callback.
   */
  properties[PROP_MAX_BYTES] = g_param_spec_uint64 (
      "max-bytes", NULL, NULL, 1, G_MAXUINT64, HB_SYNC_CACHE_DEFAULT_MAX_BYTES,
      G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);

  g_object_class_install_properties (object_class, N_PROPS, properties);

  /**
   * HbSyncCache::stats-changed:
   * @self: the cache
   *
   * Emitted on the context that created the cache, from an idle callback, after the statistics
   * changed; changes made in between, from any thread, are reported by one emission. Call
   * hb_sync_cache_get_stats() for the values.
   */
  signals[STATS_CHANGED] = g_signal_new ("stats-changed", G_TYPE_FROM_CLASS (klass),
                                         G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL, G_TYPE_NONE, 0);
}

static void
hb_sync_cache_init (HbSyncCache *self)
{
  g_mutex_init (&self->mutex);
  g_cond_init (&self->cond);
  self->entries = g_hash_table_new (entry_hash, entry_equal);
  self->max_documents = HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS;
  self->max_bytes = HB_SYNC_CACHE_DEFAULT_MAX_BYTES;
  self->owner_context = g_main_context_ref_thread_default ();
}

/* ------------------------------------------------------------------------------------------ */
/* Boxed types                                                                                */

/**
 * hb_sync_cache_stats_copy:
 * @stats: statistics
 *
 * Returns: (transfer full): a copy of @stats
 */
HbSyncCacheStats *
hb_sync_cache_stats_copy (const HbSyncCacheStats *stats)
{
  g_return_val_if_fail (stats != NULL, NULL);

  return g_memdup2 (stats, sizeof *stats);
}

/**
 * hb_sync_cache_stats_free:
 * @stats: (transfer full): statistics
 *
 * Frees @stats.
 */
void
hb_sync_cache_stats_free (HbSyncCacheStats *stats)
{
  g_free (stats);
}

static HbSyncCacheEntry *
public_entry_new (HbSyncCache *self, const Entry *e)
{
  HbSyncCacheEntry *entry = g_new0 (HbSyncCacheEntry, 1);

  g_atomic_ref_count_init (&entry->ref_count);
  entry->id = g_strdup (e->id);
  entry->rev = g_strdup (e->rev);
  entry->plaintext = copy_new (self, e->data, e->len);
  entry->written = e->written;
  return entry;
}

/**
 * hb_sync_cache_entry_ref:
 * @entry: an entry
 *
 * Returns: (transfer full): @entry, with one more reference
 */
HbSyncCacheEntry *
hb_sync_cache_entry_ref (HbSyncCacheEntry *entry)
{
  g_return_val_if_fail (entry != NULL, NULL);

  g_atomic_ref_count_inc (&entry->ref_count);
  return entry;
}

/**
 * hb_sync_cache_entry_unref:
 * @entry: (transfer full): an entry
 *
 * Drops a reference; the last one wipes the id and revision and releases the plaintext.
 */
void
hb_sync_cache_entry_unref (HbSyncCacheEntry *entry)
{
  g_return_if_fail (entry != NULL);

  if (!g_atomic_ref_count_dec (&entry->ref_count))
    return;
  wiped_strfree (entry->id);
  wiped_strfree (entry->rev);
  g_bytes_unref (entry->plaintext);
  g_free (entry);
}

/**
 * hb_sync_cache_entry_get_id:
 * @entry: an entry
 *
 * Returns: (transfer none): the document's `_id`
 */
const char *
hb_sync_cache_entry_get_id (HbSyncCacheEntry *entry)
{
  g_return_val_if_fail (entry != NULL, NULL);

  return entry->id;
}

/**
 * hb_sync_cache_entry_get_rev:
 * @entry: an entry
 *
 * Returns: (transfer none): the document's revision
 */
const char *
hb_sync_cache_entry_get_rev (HbSyncCacheEntry *entry)
{
  g_return_val_if_fail (entry != NULL, NULL);

  return entry->rev;
}

/**
 * hb_sync_cache_entry_get_plaintext:
 * @entry: an entry
 *
 * The document's JSON text, copied out of the cache when the entry was made. The copy is wiped
 * when its last reference goes.
 *
 * Returns: (transfer none): the plaintext
 */
GBytes *
hb_sync_cache_entry_get_plaintext (HbSyncCacheEntry *entry)
{
  g_return_val_if_fail (entry != NULL, NULL);

  return entry->plaintext;
}

/**
 * hb_sync_cache_entry_get_written:
 * @entry: an entry
 *
 * Returns: whether the document had reached its destination when the entry was made
 */
gboolean
hb_sync_cache_entry_get_written (HbSyncCacheEntry *entry)
{
  g_return_val_if_fail (entry != NULL, FALSE);

  return entry->written;
}

/* ------------------------------------------------------------------------------------------ */
/* Public API                                                                                 */

/**
 * HbSyncCache:
 *
 * Plaintext documents on their way between the encrypted store and the server: decrypted
 * documents waiting for a push batch, pulled documents waiting to be sealed into the store.
 * Memory only, bounded by a document count and by bytes (#HbSyncCache:max-documents,
 * #HbSyncCache:max-bytes), where bytes are the sizes of the allocations each entry owns.
 *
 * Entries are keyed by document id and revision. The cache copies each plaintext in, and wipes
 * that copy (explicit_bzero) whenever it leaves: removed, evicted, replaced, cleared, or with
 * the cache. Plaintexts copied out (hb_sync_cache_lookup(), hb_sync_cache_get_all()) are wiped
 * on their last unref.
 *
 * An entry is added unwritten, or with %HB_SYNC_CACHE_FLAGS_WRITTEN when the document is
 * already at its destination; hb_sync_cache_mark_written() records that it got there. Only
 * written entries are ever evicted, least recently used first, so a bound can slow a sync but
 * never lose a document: when unwritten entries fill the cache, an add waits until one is
 * written, removed or cleared, or the bounds are raised. Waiting adds are admitted in the
 * order they were made. Two cases exceed a bound: an unwritten entry larger than
 * #HbSyncCache:max-bytes on its own is admitted once no other unwritten entry is left (it
 * would wait forever otherwise), alone; and lowered bounds leave the unwritten entries in
 * place, no new unwritten entry being admitted until they fit again.
 *
 * All methods may be called from any thread. #HbSyncCache::stats-changed and property
 * notifications are emitted on the thread-default main context of the thread that created the
 * cache, from an idle callback.
 */

/**
 * hb_sync_cache_new:
 *
 * Creates an empty cache with the default bounds, %HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS and
 * %HB_SYNC_CACHE_DEFAULT_MAX_BYTES. Signals will be emitted on the calling thread's
 * thread-default main context.
 *
 * Returns: (transfer full): a new #HbSyncCache
 */
HbSyncCache *
hb_sync_cache_new (void)
{
  return g_object_new (HB_TYPE_SYNC_CACHE, NULL);
}

/**
 * hb_sync_cache_configure:
 * @self: a #HbSyncCache
 * @max_documents: how many documents the cache may hold, at least 1
 * @max_bytes: how many bytes its entries may hold, at least 1
 *
 * Sets both bounds. Lowering them evicts written entries until the cache fits again; raising
 * them admits waiting adds that now fit.
 */
void
hb_sync_cache_configure (HbSyncCache *self, guint max_documents, guint64 max_bytes)
{
  g_return_if_fail (HB_IS_SYNC_CACHE (self));
  g_return_if_fail (max_documents > 0);
  g_return_if_fail (max_bytes > 0);

  set_bounds (self, &max_documents, &max_bytes);
}

/**
 * hb_sync_cache_get_max_documents:
 * @self: a #HbSyncCache
 *
 * Returns: the bound on the number of documents
 */
guint
hb_sync_cache_get_max_documents (HbSyncCache *self)
{
  guint max_documents;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), 0);

  g_mutex_lock (&self->mutex);
  max_documents = self->max_documents;
  g_mutex_unlock (&self->mutex);
  return max_documents;
}

/**
 * hb_sync_cache_get_max_bytes:
 * @self: a #HbSyncCache
 *
 * Returns: the bound on the bytes held
 */
guint64
hb_sync_cache_get_max_bytes (HbSyncCache *self)
{
  guint64 max_bytes;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), 0);

  g_mutex_lock (&self->mutex);
  max_bytes = self->max_bytes;
  g_mutex_unlock (&self->mutex);
  return max_bytes;
}

/**
 * hb_sync_cache_add_sync:
 * @self: a #HbSyncCache
 * @id: the document's `_id`
 * @rev: the document's revision
 * @plaintext: the document's JSON text, copied into the cache
 * @flags: %HB_SYNC_CACHE_FLAGS_WRITTEN if the document is already at its destination
 * @cancellable: (nullable): a cancellable, to stop waiting for room
 * @error: return location for an error
 *
 * Adds a document, replacing (and wiping) an entry with the same id and revision. When the
 * unwritten entries leave no room, this blocks until there is (see #HbSyncCache), so call it
 * from a worker thread, never from a thread whose main loop is what makes room; use
 * hb_sync_cache_add_async() there.
 *
 * An entry added as written never waits: written entries are evicted for it, and when even
 * that leaves no room it is not kept (it counts as an eviction).
 *
 * Returns: %TRUE once the cache took the document; %FALSE with %G_IO_ERROR_CANCELLED if
 *   @cancellable was cancelled first
 */
gboolean
hb_sync_cache_add_sync (HbSyncCache *self,
                        const char *id,
                        const char *rev,
                        GBytes *plaintext,
                        HbSyncCacheFlags flags,
                        GCancellable *cancellable,
                        GError **error)
{
  Waiter w = { 0 };
  gulong handler;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (rev != NULL, FALSE);
  g_return_val_if_fail (plaintext != NULL, FALSE);
  g_return_val_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (g_cancellable_set_error_if_cancelled (cancellable, error))
    return FALSE;

  w.self = self;
  w.entry = entry_new (id, rev, plaintext, (flags & HB_SYNC_CACHE_FLAGS_WRITTEN) != 0);
  w.link.data = &w;
  if (admit_or_queue (self, &w))
    return TRUE;

  /* Connected outside the lock: the handler takes it, and runs at once if already cancelled. */
  handler = cancellable != NULL
                ? g_cancellable_connect (cancellable, G_CALLBACK (sync_add_cancelled), &w, NULL)
                : 0;
  g_mutex_lock (&self->mutex);
  while (w.state == WAITER_WAITING)
    g_cond_wait (&self->cond, &self->mutex);
  g_mutex_unlock (&self->mutex);
  /* Waits for a handler running on another thread, which still uses &w. */
  g_cancellable_disconnect (cancellable, handler);

  if (w.state == WAITER_CANCELLED)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "Operation was cancelled");
      return FALSE;
    }
  return TRUE;
}

/**
 * hb_sync_cache_try_add:
 * @self: a #HbSyncCache
 * @id: the document's `_id`
 * @rev: the document's revision
 * @plaintext: the document's JSON text, copied into the cache
 * @flags: %HB_SYNC_CACHE_FLAGS_WRITTEN if the document is already at its destination
 *
 * Adds a document as hb_sync_cache_add_sync() does when there is room now, and does nothing
 * otherwise: never waits. A replicator uses it to close a batch when the cache is full of its
 * own unwritten documents, which it must write before waiting for room makes sense.
 *
 * Returns: %TRUE if the cache took the document
 */
gboolean
hb_sync_cache_try_add (
    HbSyncCache *self, const char *id, const char *rev, GBytes *plaintext, HbSyncCacheFlags flags)
{
  Entry *e;
  gboolean admitted;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (rev != NULL, FALSE);
  g_return_val_if_fail (plaintext != NULL, FALSE);

  e = entry_new (id, rev, plaintext, (flags & HB_SYNC_CACHE_FLAGS_WRITTEN) != 0);
  g_mutex_lock (&self->mutex);
  /* Waiting adds go first: a try never overtakes them. */
  admitted = (e->written || g_queue_is_empty (&self->waiters)) && try_admit (self, e);
  if (!admitted)
    entry_wipe_free (self, e);
  unlock_after_change (self);
  return admitted;
}

/**
 * hb_sync_cache_add_async:
 * @self: a #HbSyncCache
 * @id: the document's `_id`
 * @rev: the document's revision
 * @plaintext: the document's JSON text, copied into the cache before this returns
 * @flags: %HB_SYNC_CACHE_FLAGS_WRITTEN if the document is already at its destination
 * @cancellable: (nullable): a cancellable, to stop waiting for room
 * @callback: (scope async): called once the cache took the document
 * @user_data: data for @callback
 *
 * Adds a document as hb_sync_cache_add_sync() does, without blocking: when the cache has no
 * room, @callback is called (on the caller's thread-default main context) once it has.
 */
void
hb_sync_cache_add_async (HbSyncCache *self,
                         const char *id,
                         const char *rev,
                         GBytes *plaintext,
                         HbSyncCacheFlags flags,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  Waiter *w;

  g_return_if_fail (HB_IS_SYNC_CACHE (self));
  g_return_if_fail (id != NULL);
  g_return_if_fail (rev != NULL);
  g_return_if_fail (plaintext != NULL);
  g_return_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable));

  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, hb_sync_cache_add_async);
  /* Once admitted the document is in the cache; a later cancellation must not report the add
   * as failed. */
  g_task_set_check_cancellable (task, FALSE);
  if (g_task_return_error_if_cancelled (task))
    return;

  w = g_new0 (Waiter, 1);
  w->self = self;
  w->entry = entry_new (id, rev, plaintext, (flags & HB_SYNC_CACHE_FLAGS_WRITTEN) != 0);
  w->link.data = w;
  /* The waiting queue's reference, dropped by whoever completes the task. */
  w->task = g_object_ref (task);
  g_task_set_task_data (task, w, waiter_free);
  /* Attached before the add is queued, so that whoever admits it finds the source to
   * destroy. */
  if (cancellable != NULL)
    {
      w->cancel_source = g_cancellable_source_new (cancellable);
      g_task_attach_source (task, w->cancel_source, G_SOURCE_FUNC (async_add_cancelled));
    }
  if (admit_or_queue (self, w))
    complete_admitted (g_slist_prepend (NULL, w));
}

/**
 * hb_sync_cache_add_finish:
 * @self: a #HbSyncCache
 * @result: the result passed to the callback
 * @error: return location for an error
 *
 * Returns: %TRUE once the cache took the document; %FALSE with %G_IO_ERROR_CANCELLED if the
 *   add was cancelled while it waited
 */
gboolean
hb_sync_cache_add_finish (HbSyncCache *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), FALSE);
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == hb_sync_cache_add_async, FALSE);

  return g_task_propagate_boolean (G_TASK (result), error);
}

/**
 * hb_sync_cache_lookup:
 * @self: a #HbSyncCache
 * @id: the document's `_id`
 * @rev: the document's revision
 *
 * Finds a document, counting a hit or a miss; a hit makes a written entry the most recently
 * used.
 *
 * Returns: (transfer full) (nullable): a copy of the document's JSON text, which is wiped when
 *   its last reference goes; %NULL if the cache does not hold it
 */
GBytes *
hb_sync_cache_lookup (HbSyncCache *self, const char *id, const char *rev)
{
  GBytes *copy = NULL;
  Entry *e;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), NULL);
  g_return_val_if_fail (id != NULL, NULL);
  g_return_val_if_fail (rev != NULL, NULL);

  g_mutex_lock (&self->mutex);
  e = find_entry (self, id, rev);
  if (e != NULL)
    {
      self->stats.hits++;
      if (e->written)
        {
          g_queue_unlink (&self->lru, &e->link);
          g_queue_push_tail_link (&self->lru, &e->link);
        }
      copy = copy_new (self, e->data, e->len);
    }
  else
    {
      self->stats.misses++;
    }
  self->pending_notify |= NOTIFY_STATS;
  schedule_notify (self);
  g_mutex_unlock (&self->mutex);
  return copy;
}

/**
 * hb_sync_cache_mark_written:
 * @self: a #HbSyncCache
 * @id: the document's `_id`
 * @rev: the document's revision
 *
 * Records that the document reached its destination (the store, or the server), so that its
 * entry may now be evicted. Adds waiting for room are admitted if the entry can make it.
 *
 * Returns: whether the cache holds (or held until this call evicted it) the document
 */
gboolean
hb_sync_cache_mark_written (HbSyncCache *self, const char *id, const char *rev)
{
  Entry *e;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (rev != NULL, FALSE);

  g_mutex_lock (&self->mutex);
  e = find_entry (self, id, rev);
  if (e != NULL && !e->written)
    {
      g_queue_unlink (&self->unwritten, &e->link);
      self->unwritten_bytes -= e->size;
      e->written = TRUE;
      g_queue_push_tail_link (&self->lru, &e->link);
      self->pending_notify |= NOTIFY_STATS;
      /* The cache can be above its bounds only while unwritten entries hold it there (lowered
       * bounds, a lone oversized entry); it goes back within them as soon as it can. */
      evict_until_fits (self, 0, 0);
    }
  unlock_after_change (self);
  return e != NULL;
}

/**
 * hb_sync_cache_remove:
 * @self: a #HbSyncCache
 * @id: the document's `_id`
 * @rev: the document's revision
 *
 * Removes a document, written or not, and wipes its plaintext.
 *
 * Returns: whether the cache held the document
 */
gboolean
hb_sync_cache_remove (HbSyncCache *self, const char *id, const char *rev)
{
  Entry *e;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), FALSE);
  g_return_val_if_fail (id != NULL, FALSE);
  g_return_val_if_fail (rev != NULL, FALSE);

  g_mutex_lock (&self->mutex);
  e = find_entry (self, id, rev);
  if (e != NULL)
    drop_entry (self, e);
  unlock_after_change (self);
  return e != NULL;
}

/**
 * hb_sync_cache_get_all:
 * @self: a #HbSyncCache
 *
 * Copies every entry out: the unwritten ones first, in the order they were admitted, then the
 * written ones, least recently used first. Neither hits nor recency change.
 *
 * A list rather than an array: PyGObject 3.42 frees the elements of a returned #GPtrArray
 * twice when the array has a free function. In C, `g_autolist (HbSyncCacheEntry)` frees it.
 *
 * Returns: (transfer full) (element-type HbSyncCacheEntry): the entries
 */
GList *
hb_sync_cache_get_all (HbSyncCache *self)
{
  GList *all = NULL;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), NULL);

  g_mutex_lock (&self->mutex);
  for (GList *l = self->lru.tail; l != NULL; l = l->prev)
    all = g_list_prepend (all, public_entry_new (self, l->data));
  for (GList *l = self->unwritten.tail; l != NULL; l = l->prev)
    all = g_list_prepend (all, public_entry_new (self, l->data));
  g_mutex_unlock (&self->mutex);
  return all;
}

/**
 * hb_sync_cache_clear:
 * @self: a #HbSyncCache
 *
 * Removes and wipes every entry, including unwritten ones: this is for stopping a sync and for
 * logging out, when whatever has not reached its destination is read again from its source
 * next time. Adds waiting for room are not failed; they are admitted into the emptied cache.
 */
void
hb_sync_cache_clear (HbSyncCache *self)
{
  g_return_if_fail (HB_IS_SYNC_CACHE (self));

  g_mutex_lock (&self->mutex);
  drop_all (self);
  unlock_after_change (self);
}

/**
 * hb_sync_cache_get_stats:
 * @self: a #HbSyncCache
 *
 * Returns: (transfer full): a snapshot of the statistics
 */
HbSyncCacheStats *
hb_sync_cache_get_stats (HbSyncCache *self)
{
  HbSyncCacheStats *stats;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), NULL);

  g_mutex_lock (&self->mutex);
  stats = hb_sync_cache_stats_copy (&self->stats);
  stats->entries = g_hash_table_size (self->entries);
  stats->unwritten = self->unwritten.length;
  g_mutex_unlock (&self->mutex);
  return stats;
}

/**
 * hb_sync_cache_get_unwritten_count:
 * @self: a #HbSyncCache
 *
 * Returns: how many entries have not reached their destination
 */
guint
hb_sync_cache_get_unwritten_count (HbSyncCache *self)
{
  guint count;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), 0);

  g_mutex_lock (&self->mutex);
  count = self->unwritten.length;
  g_mutex_unlock (&self->mutex);
  return count;
}

/**
 * hb_sync_cache_get_bytes:
 * @self: a #HbSyncCache
 *
 * Returns: the bytes the entries hold, as in #HbSyncCacheStats.bytes
 */
guint64
hb_sync_cache_get_bytes (HbSyncCache *self)
{
  guint64 bytes;

  g_return_val_if_fail (HB_IS_SYNC_CACHE (self), 0);

  g_mutex_lock (&self->mutex);
  bytes = self->stats.bytes;
  g_mutex_unlock (&self->mutex);
  return bytes;
}

void
_hb_sync_cache_set_wipe_hook_for_testing (HbSyncCache *self,
                                          HbSyncCacheWipeFunc func,
                                          gpointer user_data)
{
  g_mutex_lock (&self->mutex);
  self->wipe_hook = func;
  self->wipe_hook_data = user_data;
  g_mutex_unlock (&self->mutex);
}

guint
_hb_sync_cache_get_waiting_for_testing (HbSyncCache *self)
{
  guint waiting;

  g_mutex_lock (&self->mutex);
  waiting = self->waiters.length;
  g_mutex_unlock (&self->mutex);
  return waiting;
}
