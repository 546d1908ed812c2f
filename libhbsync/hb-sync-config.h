#pragma once

#if !defined(HBSYNC_INSIDE) && !defined(HBSYNC_COMPILATION)
#error "Only <hbsync.h> can be included directly."
#endif

#include <gio/gio.h>

#include "hb-version-macros.h"

G_BEGIN_DECLS

/**
 * HbAuthMethod:
 * @HB_AUTH_METHOD_NONE: no credentials
 * @HB_AUTH_METHOD_BASIC: HTTP basic authentication on every request
 * @HB_AUTH_METHOD_COOKIE: a CouchDB cookie session (`POST /_session`), refreshed before it
 *   expires and once on a 401
 * @HB_AUTH_METHOD_BEARER: a bearer token for an authenticating proxy; when it is refused the
 *   manager asks for a fresh one with #HbSyncManager::token-needed
 *
 * How the server is told who the workstation is.
 */
typedef enum
{
  HB_AUTH_METHOD_NONE,
  HB_AUTH_METHOD_BASIC,
  HB_AUTH_METHOD_COOKIE,
  HB_AUTH_METHOD_BEARER,
} HbAuthMethod;

#define HB_TYPE_SYNC_CONFIG (hb_sync_config_get_type ())

HB_AVAILABLE_IN_ALL
G_DECLARE_FINAL_TYPE (HbSyncConfig, hb_sync_config, HB, SYNC_CONFIG, GObject)

HB_AVAILABLE_IN_ALL
HbSyncConfig *hb_sync_config_new (const char *database_url);

HB_AVAILABLE_IN_ALL
const char *hb_sync_config_get_database_url (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
HbAuthMethod hb_sync_config_get_auth_method (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_auth_method (HbSyncConfig *self, HbAuthMethod method);
HB_AVAILABLE_IN_ALL
const char *hb_sync_config_get_username (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_username (HbSyncConfig *self, const char *username);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_config_get_continuous (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_continuous (HbSyncConfig *self, gboolean continuous);
HB_AVAILABLE_IN_ALL
guint hb_sync_config_get_batch_size (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_batch_size (HbSyncConfig *self, guint batch_size);
HB_AVAILABLE_IN_ALL
guint64 hb_sync_config_get_batch_bytes (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_batch_bytes (HbSyncConfig *self, guint64 batch_bytes);
HB_AVAILABLE_IN_ALL
guint hb_sync_config_get_cache_max_documents (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
guint64 hb_sync_config_get_cache_max_bytes (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_cache_limits (HbSyncConfig *self, guint max_documents, guint64 max_bytes);
HB_AVAILABLE_IN_ALL
guint hb_sync_config_get_retry_initial_ms (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
guint hb_sync_config_get_retry_max_ms (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_retry (HbSyncConfig *self, guint initial_ms, guint max_ms);
HB_AVAILABLE_IN_ALL
guint hb_sync_config_get_push_debounce_ms (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_push_debounce_ms (HbSyncConfig *self, guint debounce_ms);
HB_AVAILABLE_IN_ALL
guint hb_sync_config_get_heartbeat_ms (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_heartbeat_ms (HbSyncConfig *self, guint heartbeat_ms);
HB_AVAILABLE_IN_ALL
guint hb_sync_config_get_timeout_ms (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_timeout_ms (HbSyncConfig *self, guint timeout_ms);
HB_AVAILABLE_IN_ALL
const char *hb_sync_config_get_ca_file (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_ca_file (HbSyncConfig *self, const char *ca_file);
HB_AVAILABLE_IN_ALL
const char *hb_sync_config_get_pinned_sha256 (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_pinned_sha256 (HbSyncConfig *self, const char *fingerprint);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_config_get_allow_insecure_http (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
void hb_sync_config_set_allow_insecure_http (HbSyncConfig *self, gboolean allow);

HB_AVAILABLE_IN_ALL
void hb_sync_config_set_secret (HbSyncConfig *self, const char *secret);
HB_AVAILABLE_IN_ALL
gboolean hb_sync_config_has_secret (HbSyncConfig *self);
HB_AVAILABLE_IN_ALL
gboolean
hb_sync_config_save_secret_sync (HbSyncConfig *self, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
gboolean
hb_sync_config_load_secret_sync (HbSyncConfig *self, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
gboolean
hb_sync_config_forget_secret_sync (HbSyncConfig *self, GCancellable *cancellable, GError **error);

G_END_DECLS
