#pragma once

#include "hb-sync-cache.h"

G_BEGIN_DECLS

/* Called right after a plaintext buffer was wiped and before it is freed, so a test can see
 * the wipe without reading freed memory. @copy is FALSE for the cache's own buffers (called
 * with the cache's lock held: the hook must not call back into the cache) and TRUE for the
 * copies handed out by lookup and get_all (called from their last unref). */
typedef void (*HbSyncCacheWipeFunc) (const guint8 *data,
                                     gsize len,
                                     gboolean copy,
                                     gpointer user_data);
void _hb_sync_cache_set_wipe_hook_for_testing (HbSyncCache *self,
                                               HbSyncCacheWipeFunc func,
                                               gpointer user_data);

/* How many adds wait for room, so a test can tell an add is blocked rather than not yet
 * started. */
guint _hb_sync_cache_get_waiting_for_testing (HbSyncCache *self);

G_END_DECLS
