#pragma once

/* Everything HbRemote reads from a server, as pure functions of the bytes received: no
 * network, no main context, so each one runs in a worker thread and under a fuzzer. Input is
 * untrusted: every shape and type is checked, nothing is sized from what the peer claims, and
 * failures are HB_REMOTE_ERROR_BAD_RESPONSE errors that never quote the input. */

#include "hb-json-private.h"
#include "hb-remote.h"

G_BEGIN_DECLS

/* Deeper JSON than this is refused before JSON-GLib's recursive parser sees it. */
#define HB_REMOTE_MAX_JSON_DEPTH HB_JSON_MAX_DEPTH

/* Longest `error` or `reason` quoted in an error message, in bytes. */
#define HB_REMOTE_MAX_QUOTED 200

JsonNode *hb_remote_parse_json (const guint8 *data, gsize len, GError **error);

HbRemoteInfo *hb_remote_parse_info (const guint8 *data, gsize len, GError **error);
HbRemoteChanges *hb_remote_parse_changes (const guint8 *data, gsize len, GError **error);
/* The same through JSON-GLib's tree: the reference hb_remote_parse_changes() must agree with
 * (its fuzzer compares them). */
HbRemoteChanges *hb_remote_parse_changes_tree (const guint8 *data, gsize len, GError **error);
/* id → HbRemoteRevsDiff */
GHashTable *hb_remote_parse_revs_diff (const guint8 *data, gsize len, GError **error);
/* of HbRemoteDocResult */
GPtrArray *hb_remote_parse_bulk_docs (const guint8 *data, gsize len, GError **error);
/* of HbRemoteBulkGetResult */
GPtrArray *hb_remote_parse_bulk_get (const guint8 *data, gsize len, GError **error);
HbRemoteBulkGetResult *
hb_remote_parse_open_revs (const char *id, const guint8 *data, gsize len, GError **error);
/* One revision of a `_bulk_get` answer as the server sent it, without JSON-GLib: a pull hands
 * each document on as text (to the sync cache, then to the store), so no tree is built. */
typedef struct
{
  char *id;
  char *rev;    /* NULL only in an error entry that named none */
  GBytes *text; /* the revision's JSON object, with `_revisions`, byte for byte as sent (checked
                 * as strict JSON); wiped when its last reference goes; NULL when error is set */
  char *error;  /* as HbRemoteRevision's */
  char *reason;
} HbRemoteRawRevision;

void hb_remote_raw_revision_free (HbRemoteRawRevision *revision);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbRemoteRawRevision, hb_remote_raw_revision_free)

/* of HbRemoteRawRevision, every document's revisions in the answer's order; accepts and
 * refuses exactly what hb_remote_parse_bulk_get() does. */
GPtrArray *hb_remote_parse_bulk_get_raw (const guint8 *data, gsize len, GError **error);

/* hb_remote_bulk_get_async(), its answer read by hb_remote_parse_bulk_get_raw(); the answer's
 * body is wiped once read. */
void hb_remote_bulk_get_raw_async (HbRemote *self,
                                   GBytes *body,
                                   GCancellable *cancellable,
                                   GAsyncReadyCallback callback,
                                   gpointer user_data);
GPtrArray *hb_remote_bulk_get_raw_finish (HbRemote *self, GAsyncResult *result, GError **error);

/* hb_remote_changes_async() with `feed=normal` and `include_docs=true`: each row's document
 * comes in its HbRemoteChange's doc, and the answer's own bytes are wiped once read. Finished
 * with hb_remote_changes_finish(). */
void hb_remote_changes_docs_async (HbRemote *self,
                                   JsonNode *since,
                                   guint limit,
                                   const char *const *doc_ids,
                                   GCancellable *cancellable,
                                   GAsyncReadyCallback callback,
                                   gpointer user_data);

/* A whole document (a `_local` one): any JSON object. */
JsonNode *hb_remote_parse_document (const guint8 *data, gsize len, GError **error);
/* `{"ok": true, "id": ..., "rev": ...}` → the rev. */
char *hb_remote_parse_put_result (const guint8 *data, gsize len, GError **error);

/* CouchDB's `{"error": ..., "reason": ...}`, when the body is that; each output NULL otherwise.
 * Never fails. Outputs are cut to HB_REMOTE_MAX_QUOTED bytes, control characters replaced. */
void
hb_remote_parse_error_body (const guint8 *data, gsize len, char **out_error, char **out_reason);

/* The HB_REMOTE_ERROR for an HTTP status the request did not expect, its message naming
 * `what` (an operation, never a path: paths hold document ids) and the body's error/reason. */
GError *hb_remote_status_error (guint status, const char *what, const guint8 *data, gsize len);

G_END_DECLS
