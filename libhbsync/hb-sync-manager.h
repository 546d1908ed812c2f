#pragma once

#if !defined(HBSYNC_INSIDE) && !defined(HBSYNC_COMPILATION)
#error "Only <hbsync.h> can be included directly."
#endif

#include <gio/gio.h>

#include "hb-remote.h"
#include "hb-replicator.h"
#include "hb-store.h"
#include "hb-sync-cache.h"
#include "hb-sync-config.h"
#include "hb-version-macros.h"

G_BEGIN_DECLS

/**
 * HbSyncStatus:
 * @HB_SYNC_STATUS_DISABLED: not started (or stopped)
 * @HB_SYNC_STATUS_OFFLINE: no network, or the server cannot be reached; retried with backoff
 * @HB_SYNC_STATUS_CONNECTING: checking the server before the first sync
 * @HB_SYNC_STATUS_SYNCING: documents are moving
 * @HB_SYNC_STATUS_UP_TO_DATE: the last sync in each direction reached the end and nothing is
 *   pending either way
 * @HB_SYNC_STATUS_AUTH_FAILED: the server refused the credentials; not retried until they change
 * @HB_SYNC_STATUS_ERROR: the server or the store failed otherwise; retried with backoff
 *
 * What an #HbSyncManager is doing. Each value means one thing: offline is never reported as an
 * error, an error never as an authentication failure, and up-to-date only when both pending
 * counts are zero.
 */
typedef enum
{
  HB_SYNC_STATUS_DISABLED,
  HB_SYNC_STATUS_OFFLINE,
  HB_SYNC_STATUS_CONNECTING,
  HB_SYNC_STATUS_SYNCING,
  HB_SYNC_STATUS_UP_TO_DATE,
  HB_SYNC_STATUS_AUTH_FAILED,
  HB_SYNC_STATUS_ERROR,
} HbSyncStatus;

/**
 * HbSessionSyncStatus:
 * @HB_SESSION_SYNC_STATUS_UNKNOWN: never synced by this manager
 * @HB_SESSION_SYNC_STATUS_SYNCING: a session sync is running
 * @HB_SESSION_SYNC_STATUS_SYNCED: every document of the session was on the server at the end of
 *   the last session sync
 * @HB_SESSION_SYNC_STATUS_FAILED: the last session sync failed
 *
 * The state of one clinical session's sync.
 */
typedef enum
{
  HB_SESSION_SYNC_STATUS_UNKNOWN,
  HB_SESSION_SYNC_STATUS_SYNCING,
  HB_SESSION_SYNC_STATUS_SYNCED,
  HB_SESSION_SYNC_STATUS_FAILED,
} HbSessionSyncStatus;

/**
 * HbConflictStrategy:
 * @HB_CONFLICT_STRATEGY_KEEP_WINNER: keep the protocol's winner and list the conflict (the
 *   #HbSyncManager::conflict signal reports it); nothing is deleted
 * @HB_CONFLICT_STRATEGY_LATEST_UPDATED_AT: keep the leaf whose `updated_at` (or `written_at`,
 *   `taken_at`) is latest and delete the others
 *
 * What the manager does with a conflict it pulls.
 */
typedef enum
{
  HB_CONFLICT_STRATEGY_KEEP_WINNER,
  HB_CONFLICT_STRATEGY_LATEST_UPDATED_AT,
} HbConflictStrategy;

/**
 * HbSyncDiagnostics:
 * @network_available: whether the system reports a network
 * @server_reachable: whether the server answered at all
 * @tls_ok: whether TLS was verified (%TRUE for plain http to loopback)
 * @authenticated: whether the server accepted the credentials
 * @database_present: whether the database exists
 * @vault_unlocked: whether the store's vault is unlocked
 * @cache: the sync cache's statistics
 * @last_error: (nullable): the manager's last error message
 * @detail: (nullable): what the checks found, for a person
 *
 * The troubleshooting checks, as data.
 */
typedef struct _HbSyncDiagnostics HbSyncDiagnostics;

struct _HbSyncDiagnostics
{
  gboolean network_available;
  gboolean server_reachable;
  gboolean tls_ok;
  gboolean authenticated;
  gboolean database_present;
  gboolean vault_unlocked;
  HbSyncCacheStats cache;
  char *last_error;
  char *detail;
};

#define HB_TYPE_SYNC_DIAGNOSTICS (hb_sync_diagnostics_get_type ())

HB_AVAILABLE_IN_ALL
GType hb_sync_diagnostics_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbSyncDiagnostics *hb_sync_diagnostics_copy (const HbSyncDiagnostics *diagnostics);
HB_AVAILABLE_IN_ALL
void hb_sync_diagnostics_free (HbSyncDiagnostics *diagnostics);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbSyncDiagnostics, hb_sync_diagnostics_free)

#define HB_TYPE_SYNC_MANAGER (hb_sync_manager_get_type ())

HB_AVAILABLE_IN_ALL
G_DECLARE_FINAL_TYPE (HbSyncManager, hb_sync_manager, HB, SYNC_MANAGER, GObject)

HB_AVAILABLE_IN_ALL
HbSyncManager *hb_sync_manager_new (HbStore *store, HbSyncConfig *config, GError **error);

HB_AVAILABLE_IN_ALL
HbStore *hb_sync_manager_get_store (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
HbSyncConfig *hb_sync_manager_get_config (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
HbRemote *hb_sync_manager_get_remote (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
HbSyncCache *hb_sync_manager_get_cache (HbSyncManager *self);

HB_AVAILABLE_IN_ALL
HbSyncStatus hb_sync_manager_get_status (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
gint64 hb_sync_manager_get_pending_push (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
gint64 hb_sync_manager_get_pending_pull (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
gint64 hb_sync_manager_get_last_sync_time (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
const char *hb_sync_manager_get_last_error (HbSyncManager *self);

HB_AVAILABLE_IN_ALL
void hb_sync_manager_start (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
void hb_sync_manager_stop (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
void hb_sync_manager_cleanup (HbSyncManager *self);

HB_AVAILABLE_IN_ALL
void hb_sync_manager_force_sync_async (HbSyncManager *self,
                                       GCancellable *cancellable,
                                       GAsyncReadyCallback callback,
                                       gpointer user_data);
HB_AVAILABLE_IN_ALL
gboolean
hb_sync_manager_force_sync_finish (HbSyncManager *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_sync_manager_sync_session_async (HbSyncManager *self,
                                         const char *session_id,
                                         GCancellable *cancellable,
                                         GAsyncReadyCallback callback,
                                         gpointer user_data);
HB_AVAILABLE_IN_ALL
gint64
hb_sync_manager_sync_session_finish (HbSyncManager *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_sync_manager_ensure_session_synced_async (HbSyncManager *self,
                                                  const char *session_id,
                                                  guint timeout_ms,
                                                  GCancellable *cancellable,
                                                  GAsyncReadyCallback callback,
                                                  gpointer user_data);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_manager_ensure_session_synced_finish (HbSyncManager *self,
                                                       GAsyncResult *result,
                                                       GError **error);

HB_AVAILABLE_IN_ALL
HbSessionSyncStatus hb_sync_manager_get_session_status (HbSyncManager *self,
                                                        const char *session_id);

HB_AVAILABLE_IN_ALL
HbConflictStrategy hb_sync_manager_get_conflict_strategy (HbSyncManager *self);
HB_AVAILABLE_IN_ALL
void hb_sync_manager_set_conflict_strategy (HbSyncManager *self, HbConflictStrategy strategy);

HB_AVAILABLE_IN_ALL
void hb_sync_manager_resolve_conflict_async (HbSyncManager *self,
                                             const char *doc_id,
                                             const char *keep_rev,
                                             GCancellable *cancellable,
                                             GAsyncReadyCallback callback,
                                             gpointer user_data);
HB_AVAILABLE_IN_ALL
guint
hb_sync_manager_resolve_conflict_finish (HbSyncManager *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_sync_manager_diagnose_async (HbSyncManager *self,
                                     GCancellable *cancellable,
                                     GAsyncReadyCallback callback,
                                     gpointer user_data);
HB_AVAILABLE_IN_ALL
HbSyncDiagnostics *
hb_sync_manager_diagnose_finish (HbSyncManager *self, GAsyncResult *result, GError **error);

G_END_DECLS
