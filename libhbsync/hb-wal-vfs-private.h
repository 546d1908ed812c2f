#pragma once

/* A VFS for the store's connections: the default one, with the writes to a write-ahead log
 * gathered into one call per run of adjacent writes (see hb-wal-vfs.c). */

#include <glib.h>

G_BEGIN_DECLS

const char *hb_wal_vfs_name (void);

/* How many writes the WAL files of this process have passed to the real VFS (for the tests). */
guint _hb_wal_vfs_count_writes (void);

G_END_DECLS
