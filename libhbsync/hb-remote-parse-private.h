#pragma once

/* Everything HbRemote reads from a server, as pure functions of the bytes received: no
 * network, no main context, so each one runs in a worker thread and under a fuzzer. Input is
 * untrusted: every shape and type is checked, nothing is sized from what the peer claims, and
 * failures are HB_REMOTE_ERROR_BAD_RESPONSE errors that never quote the input. */

#include "hb-remote.h"

G_BEGIN_DECLS

/* Deeper JSON than this is refused before JSON-GLib's recursive parser sees it. */
#define HB_REMOTE_MAX_JSON_DEPTH 256

/* Longest `error` or `reason` quoted in an error message, in bytes. */
#define HB_REMOTE_MAX_QUOTED 200

JsonNode *hb_remote_parse_json (const guint8 *data, gsize len, GError **error);

HbRemoteInfo *hb_remote_parse_info (const guint8 *data, gsize len, GError **error);
HbRemoteChanges *hb_remote_parse_changes (const guint8 *data, gsize len, GError **error);
/* id → HbRemoteRevsDiff */
GHashTable *hb_remote_parse_revs_diff (const guint8 *data, gsize len, GError **error);
/* of HbRemoteDocResult */
GPtrArray *hb_remote_parse_bulk_docs (const guint8 *data, gsize len, GError **error);
/* of HbRemoteBulkGetResult */
GPtrArray *hb_remote_parse_bulk_get (const guint8 *data, gsize len, GError **error);
HbRemoteBulkGetResult *
hb_remote_parse_open_revs (const char *id, const guint8 *data, gsize len, GError **error);
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
