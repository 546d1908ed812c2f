/* hb-wal-vfs: SQLite's default VFS, with the writes to a write-ahead log gathered.
 *
 * SQLite writes each WAL frame as two write calls, its 24-byte header and its page, so a commit
 * of a hundred pages is two hundred system calls, most of whose cost is entering the kernel.
 * Here a WAL file keeps the run of adjacent writes in a buffer and hands it to the real file in
 * one call when the run breaks, the buffer fills, or before anything else is done with the file
 * (read, sync, truncate, size, close, file control). Durability is unchanged: SQLite syncs the
 * WAL before it publishes a commit in the shared index, and the buffer is written out before
 * that sync; other connections read only published frames, so they never miss buffered bytes.
 *
 * Only the WAL is buffered; the database file, the shared-memory index and every lock go
 * straight to the real VFS. What the buffer holds is the store's pages: sealed records,
 * never plaintext. */

#include <sqlite3.h>
#include <string.h>

#include <glib.h>

#include "hb-wal-vfs-private.h"

#define VFS_NAME "hbsync-wal"
/* The unix VFS writes at most 128 KiB - 1 in one call (it masks the size to 17 bits) and takes
 * a shorter write for a full disk: so a little less than that, thirty 4 KiB frames. */
#define BUFFER_BYTES (124 * 1024)

typedef struct
{
  sqlite3_file base;
  /* Ours, at the version of the real file's: SQLite then asks for nothing the real one lacks. */
  sqlite3_io_methods methods;
  sqlite3_file *real;   /* right after this struct, szOsFile bytes */
  guint8 *buffer;       /* WAL files only */
  sqlite3_int64 offset; /* where buffer[0] belongs in the file */
  int len;
} WalFile;

static sqlite3_vfs *real_vfs;
static guint real_wal_writes;

static WalFile *
wal_file (sqlite3_file *file)
{
  return (WalFile *)file;
}

static int
flush (WalFile *f)
{
  int rc;

  if (f->len == 0)
    return SQLITE_OK;
  g_atomic_int_inc (&real_wal_writes);
  rc = f->real->pMethods->xWrite (f->real, f->buffer, f->len, f->offset);
  f->len = 0;
  return rc;
}

/* ---- methods shared by both kinds of file ----------------------------------------------- */

static int
file_close (sqlite3_file *file)
{
  WalFile *f = wal_file (file);
  int rc = f->buffer != NULL ? flush (f) : SQLITE_OK;
  int close_rc = f->real->pMethods != NULL ? f->real->pMethods->xClose (f->real) : SQLITE_OK;

  g_clear_pointer (&f->buffer, g_free);
  return rc != SQLITE_OK ? rc : close_rc;
}

static int
file_read (sqlite3_file *file, void *out, int amount, sqlite3_int64 offset)
{
  WalFile *f = wal_file (file);
  int rc = f->buffer != NULL ? flush (f) : SQLITE_OK;

  return rc != SQLITE_OK ? rc : f->real->pMethods->xRead (f->real, out, amount, offset);
}

static int
file_truncate (sqlite3_file *file, sqlite3_int64 size)
{
  WalFile *f = wal_file (file);
  int rc = f->buffer != NULL ? flush (f) : SQLITE_OK;

  return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate (f->real, size);
}

static int
file_sync (sqlite3_file *file, int flags)
{
  WalFile *f = wal_file (file);
  int rc = f->buffer != NULL ? flush (f) : SQLITE_OK;

  return rc != SQLITE_OK ? rc : f->real->pMethods->xSync (f->real, flags);
}

static int
file_size (sqlite3_file *file, sqlite3_int64 *size)
{
  WalFile *f = wal_file (file);
  int rc = f->buffer != NULL ? flush (f) : SQLITE_OK;

  return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize (f->real, size);
}

static int
file_control (sqlite3_file *file, int op, void *arg)
{
  WalFile *f = wal_file (file);
  int rc = f->buffer != NULL ? flush (f) : SQLITE_OK;

  if (rc != SQLITE_OK)
    return rc;
  if (op == SQLITE_FCNTL_VFSNAME)
    {
      /* The real VFS's name, then ours on top, as shims do. */
      int real_rc = f->real->pMethods->xFileControl (f->real, op, arg);

      if (real_rc == SQLITE_OK)
        {
          char *below = *(char **)arg;

          *(char **)arg = sqlite3_mprintf ("%s/%z", VFS_NAME, below);
        }
      else
        *(char **)arg = sqlite3_mprintf ("%s", VFS_NAME);
      return SQLITE_OK;
    }
  return f->real->pMethods->xFileControl (f->real, op, arg);
}

/* ---- pass-through ----------------------------------------------------------------------- */

static int
file_write (sqlite3_file *file, const void *data, int amount, sqlite3_int64 offset)
{
  WalFile *f = wal_file (file);

  return f->real->pMethods->xWrite (f->real, data, amount, offset);
}

static int
file_lock (sqlite3_file *file, int level)
{
  return wal_file (file)->real->pMethods->xLock (wal_file (file)->real, level);
}

static int
file_unlock (sqlite3_file *file, int level)
{
  return wal_file (file)->real->pMethods->xUnlock (wal_file (file)->real, level);
}

static int
file_check_reserved_lock (sqlite3_file *file, int *out)
{
  return wal_file (file)->real->pMethods->xCheckReservedLock (wal_file (file)->real, out);
}

static int
file_sector_size (sqlite3_file *file)
{
  return wal_file (file)->real->pMethods->xSectorSize (wal_file (file)->real);
}

static int
file_device_characteristics (sqlite3_file *file)
{
  return wal_file (file)->real->pMethods->xDeviceCharacteristics (wal_file (file)->real);
}

static int
file_shm_map (sqlite3_file *file, int region, int size, int extend, void volatile **out)
{
  sqlite3_file *real = wal_file (file)->real;

  return real->pMethods->xShmMap (real, region, size, extend, out);
}

static int
file_shm_lock (sqlite3_file *file, int offset, int n, int flags)
{
  sqlite3_file *real = wal_file (file)->real;

  return real->pMethods->xShmLock (real, offset, n, flags);
}

static void
file_shm_barrier (sqlite3_file *file)
{
  sqlite3_file *real = wal_file (file)->real;

  real->pMethods->xShmBarrier (real);
}

static int
file_shm_unmap (sqlite3_file *file, int delete_flag)
{
  sqlite3_file *real = wal_file (file)->real;

  return real->pMethods->xShmUnmap (real, delete_flag);
}

static int
file_fetch (sqlite3_file *file, sqlite3_int64 offset, int amount, void **out)
{
  WalFile *f = wal_file (file);
  int rc = f->buffer != NULL ? flush (f) : SQLITE_OK;

  return rc != SQLITE_OK ? rc : f->real->pMethods->xFetch (f->real, offset, amount, out);
}

static int
file_unfetch (sqlite3_file *file, sqlite3_int64 offset, void *page)
{
  sqlite3_file *real = wal_file (file)->real;

  return real->pMethods->xUnfetch (real, offset, page);
}

/* ---- the WAL's writes ------------------------------------------------------------------- */

static int
wal_write (sqlite3_file *file, const void *data, int amount, sqlite3_int64 offset)
{
  WalFile *f = wal_file (file);
  int rc;

  if (f->len > 0 && offset == f->offset + f->len && f->len + amount <= BUFFER_BYTES)
    {
      memcpy (f->buffer + f->len, data, (size_t)amount);
      f->len += amount;
      return SQLITE_OK;
    }
  if ((rc = flush (f)) != SQLITE_OK)
    return rc;
  if (amount >= BUFFER_BYTES)
    {
      g_atomic_int_inc (&real_wal_writes);
      return f->real->pMethods->xWrite (f->real, data, amount, offset);
    }
  memcpy (f->buffer, data, (size_t)amount);
  f->offset = offset;
  f->len = amount;
  return SQLITE_OK;
}

static const sqlite3_io_methods plain_methods = {
  .iVersion = 3,
  .xClose = file_close,
  .xRead = file_read,
  .xWrite = file_write,
  .xTruncate = file_truncate,
  .xSync = file_sync,
  .xFileSize = file_size,
  .xLock = file_lock,
  .xUnlock = file_unlock,
  .xCheckReservedLock = file_check_reserved_lock,
  .xFileControl = file_control,
  .xSectorSize = file_sector_size,
  .xDeviceCharacteristics = file_device_characteristics,
  .xShmMap = file_shm_map,
  .xShmLock = file_shm_lock,
  .xShmBarrier = file_shm_barrier,
  .xShmUnmap = file_shm_unmap,
  .xFetch = file_fetch,
  .xUnfetch = file_unfetch,
};

static int
vfs_open (sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags)
{
  WalFile *f = wal_file (file);
  gboolean wal = (flags & SQLITE_OPEN_WAL) != 0;
  int rc;

  memset (f, 0, sizeof *f);
  f->real = (sqlite3_file *)(f + 1);
  rc = real_vfs->xOpen (real_vfs, name, f->real, flags, out_flags);
  if (f->real->pMethods == NULL)
    {
      /* SQLite calls no method of a file whose open failed this way. */
      f->base.pMethods = NULL;
      return rc;
    }
  f->methods = plain_methods;
  f->methods.iVersion = MIN (plain_methods.iVersion, f->real->pMethods->iVersion);
  if (wal)
    {
      f->buffer = g_malloc (BUFFER_BYTES);
      f->methods.xWrite = wal_write;
    }
  f->base.pMethods = &f->methods;
  return rc;
}

static int
vfs_delete (sqlite3_vfs *vfs, const char *name, int sync_dir)
{
  return real_vfs->xDelete (real_vfs, name, sync_dir);
}

static int
vfs_access (sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
  return real_vfs->xAccess (real_vfs, name, flags, out);
}

static int
vfs_full_pathname (sqlite3_vfs *vfs, const char *name, int n, char *out)
{
  return real_vfs->xFullPathname (real_vfs, name, n, out);
}

static void *
vfs_dl_open (sqlite3_vfs *vfs, const char *name)
{
  return real_vfs->xDlOpen (real_vfs, name);
}

static void
vfs_dl_error (sqlite3_vfs *vfs, int n, char *out)
{
  real_vfs->xDlError (real_vfs, n, out);
}

static void (*vfs_dl_sym (sqlite3_vfs *vfs, void *handle, const char *symbol)) (void)
{
  return real_vfs->xDlSym (real_vfs, handle, symbol);
}

static void
vfs_dl_close (sqlite3_vfs *vfs, void *handle)
{
  real_vfs->xDlClose (real_vfs, handle);
}

static int
vfs_randomness (sqlite3_vfs *vfs, int n, char *out)
{
  return real_vfs->xRandomness (real_vfs, n, out);
}

static int
vfs_sleep (sqlite3_vfs *vfs, int microseconds)
{
  return real_vfs->xSleep (real_vfs, microseconds);
}

static int
vfs_current_time (sqlite3_vfs *vfs, double *out)
{
  return real_vfs->xCurrentTime (real_vfs, out);
}

static int
vfs_get_last_error (sqlite3_vfs *vfs, int n, char *out)
{
  return real_vfs->xGetLastError != NULL ? real_vfs->xGetLastError (real_vfs, n, out) : 0;
}

static int
vfs_current_time_int64 (sqlite3_vfs *vfs, sqlite3_int64 *out)
{
  return real_vfs->xCurrentTimeInt64 (real_vfs, out);
}

static sqlite3_vfs wal_vfs = {
  .iVersion = 2,
  .zName = VFS_NAME,
  .xOpen = vfs_open,
  .xDelete = vfs_delete,
  .xAccess = vfs_access,
  .xFullPathname = vfs_full_pathname,
  .xDlOpen = vfs_dl_open,
  .xDlError = vfs_dl_error,
  .xDlSym = vfs_dl_sym,
  .xDlClose = vfs_dl_close,
  .xRandomness = vfs_randomness,
  .xSleep = vfs_sleep,
  .xCurrentTime = vfs_current_time,
  .xGetLastError = vfs_get_last_error,
  .xCurrentTimeInt64 = vfs_current_time_int64,
};

/* Registers the VFS (once, not as the default) and returns its name for sqlite3_open_v2(), or
 * NULL when it cannot be had: then the caller opens with the default VFS. */
const char *
hb_wal_vfs_name (void)
{
  static gsize registered;

  if (g_once_init_enter (&registered))
    {
      gsize ok = 1;

      real_vfs = sqlite3_vfs_find (NULL);
      /* The unix VFS has version 3 with all these methods; anything older is left alone. */
      if (real_vfs == NULL || real_vfs->iVersion < 2 || real_vfs->xCurrentTimeInt64 == NULL)
        ok = 2;
      else
        {
          wal_vfs.szOsFile = (int)sizeof (WalFile) + real_vfs->szOsFile;
          wal_vfs.mxPathname = real_vfs->mxPathname;
          if (sqlite3_vfs_register (&wal_vfs, 0) != SQLITE_OK)
            ok = 2;
        }
      g_once_init_leave (&registered, ok);
    }
  return registered == 1 ? VFS_NAME : NULL;
}

guint
_hb_wal_vfs_count_writes (void)
{
  return (guint)g_atomic_int_get (&real_wal_writes);
}
