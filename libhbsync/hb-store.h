#pragma once

#if !defined(HBSYNC_INSIDE) && !defined(HBSYNC_COMPILATION)
#error "Only <hbsync.h> can be included directly."
#endif

#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "hb-version-macros.h"
#include "hb-vault.h"

G_BEGIN_DECLS

/**
 * HB_STORE_ERROR:
 *
 * The error domain of #HbStore.
 */
#define HB_STORE_ERROR (hb_store_error_quark ())

/**
 * HbStoreError:
 * @HB_STORE_ERROR_FAILED: an unexpected failure (I/O, SQLite)
 * @HB_STORE_ERROR_NOT_FOUND: no such document or revision
 * @HB_STORE_ERROR_CONFLICT: the `_rev` given is stale or missing for an existing document
 * @HB_STORE_ERROR_INVALID: the document is not valid (no object, bad `_id`, bad `_rev`, unknown
 *   special field)
 * @HB_STORE_ERROR_CORRUPT: a sealed record failed authentication; only that record is affected
 * @HB_STORE_ERROR_LOCKED: the vault is locked
 * @HB_STORE_ERROR_VERSION: the file was written by a newer schema than this library knows
 *
 * Errors from #HbStore.
 */
typedef enum
{
  HB_STORE_ERROR_FAILED,
  HB_STORE_ERROR_NOT_FOUND,
  HB_STORE_ERROR_CONFLICT,
  HB_STORE_ERROR_INVALID,
  HB_STORE_ERROR_CORRUPT,
  HB_STORE_ERROR_LOCKED,
  HB_STORE_ERROR_VERSION,
} HbStoreError;

/**
 * HbGetFlags:
 * @HB_GET_FLAGS_NONE: the document alone
 * @HB_GET_FLAGS_CONFLICTS: add `_conflicts` (and `_deleted_conflicts`) when there are any
 * @HB_GET_FLAGS_REVISIONS: add `_revisions` `{start, ids}`
 * @HB_GET_FLAGS_DELETED: with no revision given, return a deleted winner instead of not-found
 *
 * What hb_store_get_sync() adds to a document.
 */
typedef enum /*< flags >*/
{
  HB_GET_FLAGS_NONE = 0,
  HB_GET_FLAGS_CONFLICTS = 1 << 0,
  HB_GET_FLAGS_REVISIONS = 1 << 1,
  HB_GET_FLAGS_DELETED = 1 << 2,
} HbGetFlags;

/**
 * HbIndexField:
 * @HB_INDEX_FIELD_TYPE: the document's `type`
 * @HB_INDEX_FIELD_SESSION_ID: the document's `session_id`
 * @HB_INDEX_FIELD_PATIENT_ID: the document's `patient_id`
 *
 * The fields kept in blind indexes, for hb_store_find_sync().
 */
typedef enum
{
  HB_INDEX_FIELD_TYPE,
  HB_INDEX_FIELD_SESSION_ID,
  HB_INDEX_FIELD_PATIENT_ID,
} HbIndexField;

#define HB_TYPE_STORE (hb_store_get_type ())

HB_AVAILABLE_IN_ALL
G_DECLARE_FINAL_TYPE (HbStore, hb_store, HB, STORE, GObject)

HB_AVAILABLE_IN_ALL
GQuark hb_store_error_quark (void);

HB_AVAILABLE_IN_ALL
HbStore *hb_store_open_sync (HbVault *vault, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
void hb_store_open_async (HbVault *vault,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data);
HB_AVAILABLE_IN_ALL
HbStore *hb_store_open_finish (GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
HbVault *hb_store_get_vault (HbStore *self);
HB_AVAILABLE_IN_ALL
const char *hb_store_get_uuid (HbStore *self);
HB_AVAILABLE_IN_ALL
guint hb_store_get_revs_limit (HbStore *self);
HB_AVAILABLE_IN_ALL
gboolean hb_store_set_revs_limit (HbStore *self, guint revs_limit, GError **error);
HB_AVAILABLE_IN_ALL
guint64 hb_store_get_update_seq (HbStore *self);

HB_AVAILABLE_IN_ALL
char *hb_store_put_sync (HbStore *self, JsonNode *doc, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
void hb_store_put_async (HbStore *self,
                         JsonNode *doc,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data);
HB_AVAILABLE_IN_ALL
char *hb_store_put_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
JsonNode *hb_store_get_sync (HbStore *self,
                             const char *id,
                             const char *rev,
                             HbGetFlags flags,
                             GCancellable *cancellable,
                             GError **error);
HB_AVAILABLE_IN_ALL
void hb_store_get_async (HbStore *self,
                         const char *id,
                         const char *rev,
                         HbGetFlags flags,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data);
HB_AVAILABLE_IN_ALL
JsonNode *hb_store_get_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
char *hb_store_delete_sync (
    HbStore *self, const char *id, const char *rev, GCancellable *cancellable, GError **error);

HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_bulk_docs_sync (
    HbStore *self, GPtrArray *docs, gboolean new_edits, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
void hb_store_bulk_docs_async (HbStore *self,
                               GPtrArray *docs,
                               gboolean new_edits,
                               GCancellable *cancellable,
                               GAsyncReadyCallback callback,
                               gpointer user_data);
HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_bulk_docs_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_get_many_sync (HbStore *self,
                                   const char *const *ids,
                                   HbGetFlags flags,
                                   GCancellable *cancellable,
                                   GError **error);
HB_AVAILABLE_IN_ALL
void hb_store_get_many_async (HbStore *self,
                              const char *const *ids,
                              HbGetFlags flags,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data);
HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_get_many_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_get_many_json_sync (HbStore *self,
                                        const char *const *ids,
                                        HbGetFlags flags,
                                        GCancellable *cancellable,
                                        GError **error);

HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_get_revs_json_sync (HbStore *self,
                                        JsonNode *request,
                                        GCancellable *cancellable,
                                        GError **error);
HB_AVAILABLE_IN_ALL
void hb_store_get_revs_json_async (HbStore *self,
                                   JsonNode *request,
                                   GCancellable *cancellable,
                                   GAsyncReadyCallback callback,
                                   gpointer user_data);
HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_get_revs_json_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
JsonNode *hb_store_revs_diff_sync (HbStore *self,
                                   JsonNode *request,
                                   GCancellable *cancellable,
                                   GError **error);

HB_AVAILABLE_IN_ALL
JsonNode *hb_store_changes_sync (
    HbStore *self, guint64 since, guint limit, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
void hb_store_changes_async (HbStore *self,
                             guint64 since,
                             guint limit,
                             GCancellable *cancellable,
                             GAsyncReadyCallback callback,
                             gpointer user_data);
HB_AVAILABLE_IN_ALL
JsonNode *hb_store_changes_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_find_sync (HbStore *self,
                               HbIndexField field,
                               const char *value,
                               GCancellable *cancellable,
                               GError **error);
HB_AVAILABLE_IN_ALL
void hb_store_find_async (HbStore *self,
                          HbIndexField field,
                          const char *value,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data);
HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_find_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_all_docs_sync (HbStore *self, GCancellable *cancellable, GError **error);

HB_AVAILABLE_IN_ALL
JsonNode *
hb_store_get_local_sync (HbStore *self, const char *id, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
char *
hb_store_put_local_sync (HbStore *self, JsonNode *doc, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
gboolean hb_store_delete_local_sync (
    HbStore *self, const char *id, const char *rev, GCancellable *cancellable, GError **error);

HB_AVAILABLE_IN_ALL
guint hb_store_purge_sync (HbStore *self,
                           const char *id,
                           const char *const *revs,
                           GCancellable *cancellable,
                           GError **error);
HB_AVAILABLE_IN_ALL
guint hb_store_compact_sync (HbStore *self, GCancellable *cancellable, GError **error);

HB_AVAILABLE_IN_ALL
JsonNode *hb_store_get_stats_sync (HbStore *self, GCancellable *cancellable, GError **error);

HB_AVAILABLE_IN_ALL
void hb_store_close (HbStore *self);

HB_AVAILABLE_IN_ALL
void hb_store_delete_async (HbStore *self,
                            const char *id,
                            const char *rev,
                            GCancellable *cancellable,
                            GAsyncReadyCallback callback,
                            gpointer user_data);
HB_AVAILABLE_IN_ALL
char *hb_store_delete_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_store_revs_diff_async (HbStore *self,
                               JsonNode *request,
                               GCancellable *cancellable,
                               GAsyncReadyCallback callback,
                               gpointer user_data);
HB_AVAILABLE_IN_ALL
JsonNode *hb_store_revs_diff_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_store_all_docs_async (HbStore *self,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data);
HB_AVAILABLE_IN_ALL
GPtrArray *hb_store_all_docs_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_store_get_local_async (HbStore *self,
                               const char *id,
                               GCancellable *cancellable,
                               GAsyncReadyCallback callback,
                               gpointer user_data);
HB_AVAILABLE_IN_ALL
JsonNode *hb_store_get_local_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_store_put_local_async (HbStore *self,
                               JsonNode *doc,
                               GCancellable *cancellable,
                               GAsyncReadyCallback callback,
                               gpointer user_data);
HB_AVAILABLE_IN_ALL
char *hb_store_put_local_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_store_get_stats_async (HbStore *self,
                               GCancellable *cancellable,
                               GAsyncReadyCallback callback,
                               gpointer user_data);
HB_AVAILABLE_IN_ALL
JsonNode *hb_store_get_stats_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_store_purge_async (HbStore *self,
                           const char *id,
                           const char *const *revs,
                           GCancellable *cancellable,
                           GAsyncReadyCallback callback,
                           gpointer user_data);
HB_AVAILABLE_IN_ALL
guint hb_store_purge_finish (HbStore *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_store_compact_async (HbStore *self,
                             GCancellable *cancellable,
                             GAsyncReadyCallback callback,
                             gpointer user_data);
HB_AVAILABLE_IN_ALL
guint hb_store_compact_finish (HbStore *self, GAsyncResult *result, GError **error);

G_END_DECLS
