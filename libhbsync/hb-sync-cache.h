#pragma once

#if !defined(HBSYNC_INSIDE) && !defined(HBSYNC_COMPILATION)
#error "Only <hbsync.h> can be included directly."
#endif

#include <gio/gio.h>

#include "hb-version-macros.h"

G_BEGIN_DECLS

/**
 * HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS:
 *
 * How many documents a new #HbSyncCache holds at most.
 */
#define HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS 1000

/**
 * HB_SYNC_CACHE_DEFAULT_MAX_BYTES:
 *
 * How many bytes (50 MiB) a new #HbSyncCache holds at most.
 */
#define HB_SYNC_CACHE_DEFAULT_MAX_BYTES (G_GUINT64_CONSTANT (50) * 1024 * 1024)

/**
 * HbSyncCacheFlags:
 * @HB_SYNC_CACHE_FLAGS_NONE: the document has not reached its destination yet
 * @HB_SYNC_CACHE_FLAGS_WRITTEN: the document is already at its destination (in the store, or on
 *   the server); the entry may be evicted at any time, and adding it never waits
 *
 * Flags for hb_sync_cache_add_sync() and hb_sync_cache_add_async().
 */
typedef enum /*< flags >*/
{
  HB_SYNC_CACHE_FLAGS_NONE = 0,
  HB_SYNC_CACHE_FLAGS_WRITTEN = 1 << 0,
} HbSyncCacheFlags;

/**
 * HbSyncCacheStats:
 * @entries: documents held
 * @unwritten: documents held that have not reached their destination
 * @bytes: memory held, as the sizes of the allocations the entries own (key strings, plaintext,
 *   bookkeeping), not just the plaintext lengths
 * @peak_bytes: the highest @bytes so far
 * @hits: lookups that found their document
 * @misses: lookups that did not
 * @evictions: written entries dropped to make room (or, added as written, not kept for lack of
 *   room)
 * @wipes: plaintext buffers of the cache wiped, one per entry that left it (removed, evicted,
 *   replaced, cleared, finalized) and one per cancelled add or refused hb_sync_cache_try_add()
 *
 * A snapshot of the statistics of an #HbSyncCache, from hb_sync_cache_get_stats().
 */
typedef struct
{
  guint entries;
  guint unwritten;
  guint64 bytes;
  guint64 peak_bytes;
  guint64 hits;
  guint64 misses;
  guint64 evictions;
  guint64 wipes;
} HbSyncCacheStats;

/**
 * HbSyncCacheEntry:
 *
 * One document held by an #HbSyncCache, as copied out by hb_sync_cache_get_all(). Reference
 * counted; immutable.
 */
typedef struct _HbSyncCacheEntry HbSyncCacheEntry;

#define HB_TYPE_SYNC_CACHE_STATS (hb_sync_cache_stats_get_type ())
#define HB_TYPE_SYNC_CACHE_ENTRY (hb_sync_cache_entry_get_type ())
#define HB_TYPE_SYNC_CACHE (hb_sync_cache_get_type ())

HB_AVAILABLE_IN_ALL
GType hb_sync_cache_stats_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbSyncCacheStats *hb_sync_cache_stats_copy (const HbSyncCacheStats *stats);
HB_AVAILABLE_IN_ALL
void hb_sync_cache_stats_free (HbSyncCacheStats *stats);

HB_AVAILABLE_IN_ALL
GType hb_sync_cache_entry_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbSyncCacheEntry *hb_sync_cache_entry_ref (HbSyncCacheEntry *entry);
HB_AVAILABLE_IN_ALL
void hb_sync_cache_entry_unref (HbSyncCacheEntry *entry);
HB_AVAILABLE_IN_ALL
const char *hb_sync_cache_entry_get_id (HbSyncCacheEntry *entry);
HB_AVAILABLE_IN_ALL
const char *hb_sync_cache_entry_get_rev (HbSyncCacheEntry *entry);
HB_AVAILABLE_IN_ALL
GBytes *hb_sync_cache_entry_get_plaintext (HbSyncCacheEntry *entry);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_cache_entry_get_written (HbSyncCacheEntry *entry);

HB_AVAILABLE_IN_ALL
G_DECLARE_FINAL_TYPE (HbSyncCache, hb_sync_cache, HB, SYNC_CACHE, GObject)

HB_AVAILABLE_IN_ALL
HbSyncCache *hb_sync_cache_new (void);

HB_AVAILABLE_IN_ALL
void hb_sync_cache_configure (HbSyncCache *self, guint max_documents, guint64 max_bytes);
HB_AVAILABLE_IN_ALL
guint hb_sync_cache_get_max_documents (HbSyncCache *self);
HB_AVAILABLE_IN_ALL
guint64 hb_sync_cache_get_max_bytes (HbSyncCache *self);

HB_AVAILABLE_IN_ALL
gboolean hb_sync_cache_add_sync (HbSyncCache *self,
                                 const char *id,
                                 const char *rev,
                                 GBytes *plaintext,
                                 HbSyncCacheFlags flags,
                                 GCancellable *cancellable,
                                 GError **error);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_cache_try_add (
    HbSyncCache *self, const char *id, const char *rev, GBytes *plaintext, HbSyncCacheFlags flags);
HB_AVAILABLE_IN_ALL
void hb_sync_cache_add_async (HbSyncCache *self,
                              const char *id,
                              const char *rev,
                              GBytes *plaintext,
                              HbSyncCacheFlags flags,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_cache_add_finish (HbSyncCache *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
GBytes *hb_sync_cache_lookup (HbSyncCache *self, const char *id, const char *rev);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_cache_mark_written (HbSyncCache *self, const char *id, const char *rev);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_cache_remove (HbSyncCache *self, const char *id, const char *rev);
HB_AVAILABLE_IN_ALL
GList *hb_sync_cache_get_all (HbSyncCache *self);
HB_AVAILABLE_IN_ALL
void hb_sync_cache_clear (HbSyncCache *self);

HB_AVAILABLE_IN_ALL
HbSyncCacheStats *hb_sync_cache_get_stats (HbSyncCache *self);
HB_AVAILABLE_IN_ALL
guint hb_sync_cache_get_unwritten_count (HbSyncCache *self);
HB_AVAILABLE_IN_ALL
guint64 hb_sync_cache_get_bytes (HbSyncCache *self);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbSyncCacheStats, hb_sync_cache_stats_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbSyncCacheEntry, hb_sync_cache_entry_unref)

G_END_DECLS
