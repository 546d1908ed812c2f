#pragma once

#if !defined(HBSYNC_INSIDE) && !defined(HBSYNC_COMPILATION)
#error "Only <hbsync.h> can be included directly."
#endif

#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "hb-version-macros.h"

G_BEGIN_DECLS

/**
 * HB_REMOTE_ERROR:
 *
 * The error domain of #HbRemote.
 */
#define HB_REMOTE_ERROR (hb_remote_error_quark ())

/**
 * HbRemoteError:
 * @HB_REMOTE_ERROR_FAILED: any other failure: an invalid URL, a redirection (never followed), an
 *   HTTP status not listed below
 * @HB_REMOTE_ERROR_NETWORK: the connection was refused, reset or dropped, or the name did not
 *   resolve
 * @HB_REMOTE_ERROR_TIMEOUT: the server stopped answering for #HbRemote:timeout seconds, or
 *   answered 408
 * @HB_REMOTE_ERROR_BAD_REQUEST: 400
 * @HB_REMOTE_ERROR_UNAUTHORIZED: 401
 * @HB_REMOTE_ERROR_FORBIDDEN: 403
 * @HB_REMOTE_ERROR_NOT_FOUND: 404
 * @HB_REMOTE_ERROR_METHOD_NOT_ALLOWED: 405
 * @HB_REMOTE_ERROR_CONFLICT: 409
 * @HB_REMOTE_ERROR_PRECONDITION_FAILED: 412
 * @HB_REMOTE_ERROR_TOO_LARGE: 413
 * @HB_REMOTE_ERROR_NOT_IMPLEMENTED: 501
 * @HB_REMOTE_ERROR_SERVER: any other 5xx status, or 429 (the server asks to be left alone for a
 *   while)
 * @HB_REMOTE_ERROR_BAD_RESPONSE: the answer is not HTTP, not JSON, JSON of the wrong shape, or
 *   larger than #HbRemote:max-response-bytes
 * @HB_REMOTE_ERROR_TLS: TLS refused the server or could not be set up: its certificate is not
 *   signed by a trusted authority, has expired or is not valid yet, names another host, or
 *   does not match the pinned fingerprint (the message says which); the handshake failed; the
 *   CA file or fingerprint given is unusable; or the URL is plain http to a host other than
 *   loopback while #HbRemote:allow-insecure-http is off (no connection is attempted)
 *
 * Errors from #HbRemote. Messages name the operation, the HTTP status and CouchDB's `error`
 * and `reason` when the server gave them; never a document id, a request body or a document.
 */
typedef enum
{
  HB_REMOTE_ERROR_FAILED,
  HB_REMOTE_ERROR_NETWORK,
  HB_REMOTE_ERROR_TIMEOUT,
  HB_REMOTE_ERROR_BAD_REQUEST,
  HB_REMOTE_ERROR_UNAUTHORIZED,
  HB_REMOTE_ERROR_FORBIDDEN,
  HB_REMOTE_ERROR_NOT_FOUND,
  HB_REMOTE_ERROR_METHOD_NOT_ALLOWED,
  HB_REMOTE_ERROR_CONFLICT,
  HB_REMOTE_ERROR_PRECONDITION_FAILED,
  HB_REMOTE_ERROR_TOO_LARGE,
  HB_REMOTE_ERROR_NOT_IMPLEMENTED,
  HB_REMOTE_ERROR_SERVER,
  HB_REMOTE_ERROR_BAD_RESPONSE,
  HB_REMOTE_ERROR_TLS,
} HbRemoteError;

/**
 * HbRemoteInfo:
 * @db_name: the database's name
 * @update_seq: the database's update sequence: opaque, a number or a string, never to be parsed
 *   or compared
 * @instance_start_time: (nullable): CouchDB's `instance_start_time` (`"0"` on CouchDB 2 and
 *   later), %NULL when the server sent none
 * @doc_count: the number of documents, -1 when the server sent none
 *
 * What `GET /db` says about a database.
 */
typedef struct _HbRemoteInfo HbRemoteInfo;

struct _HbRemoteInfo
{
  char *db_name;
  JsonNode *update_seq;
  char *instance_start_time;
  gint64 doc_count;
};

/**
 * HbRemoteChange:
 * @id: the document's id
 * @seq: the change's sequence, verbatim (opaque)
 * @revs: (array zero-terminated=1): every leaf revision the row lists (`style=all_docs`)
 * @deleted: whether the winning revision is a deletion
 * @doc: (nullable): the row's document (its winning revision), byte for byte as the server sent
 *   it, when the feed was read with `include_docs=true` and the row carried one as an object;
 *   %NULL otherwise. Plaintext: its bytes are wiped when the last reference goes.
 *
 * One row of a `_changes` answer.
 */
typedef struct _HbRemoteChange HbRemoteChange;

struct _HbRemoteChange
{
  char *id;
  JsonNode *seq;
  char **revs;
  gboolean deleted;
  GBytes *doc;
};

/**
 * HbRemoteChanges:
 * @results: (element-type HbRemoteChange): the rows, in the server's order
 * @last_seq: the sequence to ask from next time, verbatim (opaque)
 * @pending: how many changes remain after these, -1 when the server did not say
 *
 * A `_changes` answer.
 */
typedef struct _HbRemoteChanges HbRemoteChanges;

struct _HbRemoteChanges
{
  GPtrArray *results;
  JsonNode *last_seq;
  gint64 pending;
};

/**
 * HbRemoteRevsDiff:
 * @missing: (array zero-terminated=1): the revisions the server lacks
 * @possible_ancestors: (array zero-terminated=1): revisions the server has that may be
 *   ancestors of the missing ones (empty when it named none)
 *
 * The `_revs_diff` answer for one document.
 */
typedef struct _HbRemoteRevsDiff HbRemoteRevsDiff;

struct _HbRemoteRevsDiff
{
  char **missing;
  char **possible_ancestors;
};

/**
 * HbRemoteDocResult:
 * @id: (nullable): the document's id, if the server named it
 * @rev: (nullable): the revision written, if any
 * @error: (nullable): CouchDB's error for this document (`conflict`, `forbidden`,
 *   `unauthorized`, ...), %NULL when it was written
 * @reason: (nullable): CouchDB's explanation of @error
 *
 * One entry of a `_bulk_docs` answer.
 */
typedef struct _HbRemoteDocResult HbRemoteDocResult;

struct _HbRemoteDocResult
{
  char *id;
  char *rev;
  char *error;
  char *reason;
};

/**
 * HbRemoteRevision:
 * @id: the document's id
 * @rev: (nullable): the revision; %NULL only in an error entry that named none
 * @doc: (nullable): the revision as the server sent it, with `_revisions`; %NULL when @error is
 *   set
 * @error: (nullable): why the revision could not be read (`not_found` for a missing revision)
 * @reason: (nullable): CouchDB's explanation of @error
 *
 * One revision of a `_bulk_get` or `open_revs` answer: a document or an error.
 */
typedef struct _HbRemoteRevision HbRemoteRevision;

struct _HbRemoteRevision
{
  char *id;
  char *rev;
  JsonNode *doc;
  char *error;
  char *reason;
};

/**
 * HbRemoteBulkGetResult:
 * @id: the document's id
 * @revisions: (element-type HbRemoteRevision): the revisions read or refused
 *
 * One document of a `_bulk_get` answer, or the whole of an `open_revs` answer.
 */
typedef struct _HbRemoteBulkGetResult HbRemoteBulkGetResult;

struct _HbRemoteBulkGetResult
{
  char *id;
  GPtrArray *revisions;
};

#define HB_TYPE_REMOTE_INFO (hb_remote_info_get_type ())
#define HB_TYPE_REMOTE_CHANGE (hb_remote_change_get_type ())
#define HB_TYPE_REMOTE_CHANGES (hb_remote_changes_get_type ())
#define HB_TYPE_REMOTE_REVS_DIFF (hb_remote_revs_diff_get_type ())
#define HB_TYPE_REMOTE_DOC_RESULT (hb_remote_doc_result_get_type ())
#define HB_TYPE_REMOTE_REVISION (hb_remote_revision_get_type ())
#define HB_TYPE_REMOTE_BULK_GET_RESULT (hb_remote_bulk_get_result_get_type ())

HB_AVAILABLE_IN_ALL
GType hb_remote_info_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbRemoteInfo *hb_remote_info_copy (const HbRemoteInfo *info);
HB_AVAILABLE_IN_ALL
void hb_remote_info_free (HbRemoteInfo *info);

HB_AVAILABLE_IN_ALL
GType hb_remote_change_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbRemoteChange *hb_remote_change_copy (const HbRemoteChange *change);
HB_AVAILABLE_IN_ALL
void hb_remote_change_free (HbRemoteChange *change);

HB_AVAILABLE_IN_ALL
GType hb_remote_changes_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbRemoteChanges *hb_remote_changes_copy (const HbRemoteChanges *changes);
HB_AVAILABLE_IN_ALL
void hb_remote_changes_free (HbRemoteChanges *changes);

HB_AVAILABLE_IN_ALL
GType hb_remote_revs_diff_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbRemoteRevsDiff *hb_remote_revs_diff_copy (const HbRemoteRevsDiff *diff);
HB_AVAILABLE_IN_ALL
void hb_remote_revs_diff_free (HbRemoteRevsDiff *diff);

HB_AVAILABLE_IN_ALL
GType hb_remote_doc_result_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbRemoteDocResult *hb_remote_doc_result_copy (const HbRemoteDocResult *result);
HB_AVAILABLE_IN_ALL
void hb_remote_doc_result_free (HbRemoteDocResult *result);

HB_AVAILABLE_IN_ALL
GType hb_remote_revision_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbRemoteRevision *hb_remote_revision_copy (const HbRemoteRevision *revision);
HB_AVAILABLE_IN_ALL
void hb_remote_revision_free (HbRemoteRevision *revision);

HB_AVAILABLE_IN_ALL
GType hb_remote_bulk_get_result_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbRemoteBulkGetResult *hb_remote_bulk_get_result_copy (const HbRemoteBulkGetResult *result);
HB_AVAILABLE_IN_ALL
void hb_remote_bulk_get_result_free (HbRemoteBulkGetResult *result);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRemoteInfo, hb_remote_info_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRemoteChange, hb_remote_change_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRemoteChanges, hb_remote_changes_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRemoteRevsDiff, hb_remote_revs_diff_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRemoteDocResult, hb_remote_doc_result_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRemoteRevision, hb_remote_revision_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRemoteBulkGetResult, hb_remote_bulk_get_result_free)

#define HB_TYPE_REMOTE (hb_remote_get_type ())

HB_AVAILABLE_IN_ALL
G_DECLARE_FINAL_TYPE (HbRemote, hb_remote, HB, REMOTE, GObject)

HB_AVAILABLE_IN_ALL
GQuark hb_remote_error_quark (void);
HB_AVAILABLE_IN_ALL
gboolean hb_remote_error_is_transient (const GError *error);

HB_AVAILABLE_IN_ALL
HbRemote *hb_remote_new (const char *database_url, GError **error);

HB_AVAILABLE_IN_ALL
const char *hb_remote_get_url (HbRemote *self);
HB_AVAILABLE_IN_ALL
void hb_remote_set_basic_auth (HbRemote *self, const char *username, const char *password);
HB_AVAILABLE_IN_ALL
void hb_remote_set_cookie_auth (HbRemote *self, const char *username, const char *password);
HB_AVAILABLE_IN_ALL
void hb_remote_set_bearer_token (HbRemote *self, const char *token);
HB_AVAILABLE_IN_ALL
guint hb_remote_get_cookie_lifetime (HbRemote *self);
HB_AVAILABLE_IN_ALL
void hb_remote_set_cookie_lifetime (HbRemote *self, guint seconds);
HB_AVAILABLE_IN_ALL
guint hb_remote_get_login_interval (HbRemote *self);
HB_AVAILABLE_IN_ALL
void hb_remote_set_login_interval (HbRemote *self, guint seconds);
HB_AVAILABLE_IN_ALL
gboolean hb_remote_set_ca_file (HbRemote *self, const char *path, GError **error);
HB_AVAILABLE_IN_ALL
gboolean hb_remote_set_pinned_sha256 (HbRemote *self, const char *fingerprint, GError **error);
HB_AVAILABLE_IN_ALL
gboolean hb_remote_get_allow_insecure_http (HbRemote *self);
HB_AVAILABLE_IN_ALL
void hb_remote_set_allow_insecure_http (HbRemote *self, gboolean allow);
HB_AVAILABLE_IN_ALL
guint64 hb_remote_get_max_response_bytes (HbRemote *self);
HB_AVAILABLE_IN_ALL
void hb_remote_set_max_response_bytes (HbRemote *self, guint64 max_bytes);
HB_AVAILABLE_IN_ALL
guint hb_remote_get_max_connections (HbRemote *self);
HB_AVAILABLE_IN_ALL
void hb_remote_set_max_connections (HbRemote *self, guint max_connections);
HB_AVAILABLE_IN_ALL
guint hb_remote_get_timeout (HbRemote *self);
HB_AVAILABLE_IN_ALL
void hb_remote_set_timeout (HbRemote *self, guint timeout);
HB_AVAILABLE_IN_ALL
const char *hb_remote_get_user_agent (HbRemote *self);
HB_AVAILABLE_IN_ALL
void hb_remote_set_user_agent (HbRemote *self, const char *user_agent);

HB_AVAILABLE_IN_ALL
void hb_remote_request_async (HbRemote *self,
                              const char *method,
                              const char *path,
                              GBytes *body,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data);
HB_AVAILABLE_IN_ALL
GBytes *
hb_remote_request_finish (HbRemote *self, GAsyncResult *result, guint *out_status, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_get_info_async (HbRemote *self,
                               GCancellable *cancellable,
                               GAsyncReadyCallback callback,
                               gpointer user_data);
HB_AVAILABLE_IN_ALL
HbRemoteInfo *hb_remote_get_info_finish (HbRemote *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_create_database_async (HbRemote *self,
                                      GCancellable *cancellable,
                                      GAsyncReadyCallback callback,
                                      gpointer user_data);
HB_AVAILABLE_IN_ALL
gboolean hb_remote_create_database_finish (HbRemote *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_get_local_async (HbRemote *self,
                                const char *id,
                                GCancellable *cancellable,
                                GAsyncReadyCallback callback,
                                gpointer user_data);
HB_AVAILABLE_IN_ALL
JsonNode *hb_remote_get_local_finish (HbRemote *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_put_local_async (HbRemote *self,
                                const char *id,
                                JsonNode *doc,
                                GCancellable *cancellable,
                                GAsyncReadyCallback callback,
                                gpointer user_data);
HB_AVAILABLE_IN_ALL
char *hb_remote_put_local_finish (HbRemote *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_changes_async (HbRemote *self,
                              JsonNode *since,
                              guint limit,
                              const char *const *doc_ids,
                              gboolean longpoll,
                              guint timeout_ms,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data);
HB_AVAILABLE_IN_ALL
HbRemoteChanges *hb_remote_changes_finish (HbRemote *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_revs_diff_async (HbRemote *self,
                                GBytes *body,
                                GCancellable *cancellable,
                                GAsyncReadyCallback callback,
                                gpointer user_data);
HB_AVAILABLE_IN_ALL
GHashTable *hb_remote_revs_diff_finish (HbRemote *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_bulk_docs_async (HbRemote *self,
                                GBytes *body,
                                GCancellable *cancellable,
                                GAsyncReadyCallback callback,
                                gpointer user_data);
HB_AVAILABLE_IN_ALL
GPtrArray *hb_remote_bulk_docs_finish (HbRemote *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_bulk_get_async (HbRemote *self,
                               GBytes *body,
                               GCancellable *cancellable,
                               GAsyncReadyCallback callback,
                               gpointer user_data);
HB_AVAILABLE_IN_ALL
GPtrArray *hb_remote_bulk_get_finish (HbRemote *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_remote_get_open_revs_async (HbRemote *self,
                                    const char *id,
                                    const char *const *revs,
                                    GCancellable *cancellable,
                                    GAsyncReadyCallback callback,
                                    gpointer user_data);
HB_AVAILABLE_IN_ALL
HbRemoteBulkGetResult *
hb_remote_get_open_revs_finish (HbRemote *self, GAsyncResult *result, GError **error);

G_END_DECLS
