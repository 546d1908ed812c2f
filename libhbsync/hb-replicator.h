#pragma once

#if !defined(HBSYNC_INSIDE) && !defined(HBSYNC_COMPILATION)
#error "Only <hbsync.h> can be included directly."
#endif

#include <gio/gio.h>

#include "hb-remote.h"
#include "hb-store.h"
#include "hb-sync-cache.h"
#include "hb-version-macros.h"

G_BEGIN_DECLS

/**
 * HbReplicationDirection:
 * @HB_REPLICATION_DIRECTION_PUSH: from the local store to the server
 * @HB_REPLICATION_DIRECTION_PULL: from the server into the local store
 *
 * Which way an #HbReplicator copies documents.
 */
typedef enum
{
  HB_REPLICATION_DIRECTION_PUSH,
  HB_REPLICATION_DIRECTION_PULL,
} HbReplicationDirection;

/**
 * HbReplicatorState:
 * @HB_REPLICATOR_STATE_IDLE: not started
 * @HB_REPLICATOR_STATE_RUNNING: copying
 * @HB_REPLICATOR_STATE_COMPLETE: the last run reached the end of the source's changes
 * @HB_REPLICATOR_STATE_CANCELLED: the last run was cancelled; the next resumes from its last
 *   checkpoint
 * @HB_REPLICATOR_STATE_FAILED: the last run failed; the next resumes from its last checkpoint
 *
 * Where an #HbReplicator is.
 */
typedef enum
{
  HB_REPLICATOR_STATE_IDLE,
  HB_REPLICATOR_STATE_RUNNING,
  HB_REPLICATOR_STATE_COMPLETE,
  HB_REPLICATOR_STATE_CANCELLED,
  HB_REPLICATOR_STATE_FAILED,
} HbReplicatorState;

/**
 * HbReplicationResult:
 * @docs_read: revisions read from the source
 * @docs_written: revisions the target accepted
 * @doc_write_failures: revisions the target refused or that could not be read or written,
 *   including @docs_denied
 * @docs_denied: revisions the server refused by `forbidden` or `unauthorized`
 * @missing_checked: revisions the target was asked about
 * @missing_found: revisions the target lacked
 * @batches: batches written
 * @last_seq: (nullable): the source sequence of the last checkpoint, as JSON text (opaque)
 * @replication_id: the replication's id (the `_local` checkpoint document's name)
 *
 * What one run of an #HbReplicator did.
 */
typedef struct _HbReplicationResult HbReplicationResult;

struct _HbReplicationResult
{
  guint64 docs_read;
  guint64 docs_written;
  guint64 doc_write_failures;
  guint64 docs_denied;
  guint64 missing_checked;
  guint64 missing_found;
  guint64 batches;
  char *last_seq;
  char *replication_id;
};

#define HB_TYPE_REPLICATION_RESULT (hb_replication_result_get_type ())

HB_AVAILABLE_IN_ALL
GType hb_replication_result_get_type (void) G_GNUC_CONST;
HB_AVAILABLE_IN_ALL
HbReplicationResult *hb_replication_result_copy (const HbReplicationResult *result);
HB_AVAILABLE_IN_ALL
void hb_replication_result_free (HbReplicationResult *result);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbReplicationResult, hb_replication_result_free)

#define HB_TYPE_REPLICATOR (hb_replicator_get_type ())

HB_AVAILABLE_IN_ALL
G_DECLARE_FINAL_TYPE (HbReplicator, hb_replicator, HB, REPLICATOR, GObject)

HB_AVAILABLE_IN_ALL
HbReplicator *hb_replicator_new (HbStore *store,
                                 HbRemote *remote,
                                 HbSyncCache *cache,
                                 HbReplicationDirection direction);

HB_AVAILABLE_IN_ALL
HbReplicationDirection hb_replicator_get_direction (HbReplicator *self);
HB_AVAILABLE_IN_ALL
HbReplicatorState hb_replicator_get_state (HbReplicator *self);

HB_AVAILABLE_IN_ALL
guint hb_replicator_get_batch_size (HbReplicator *self);
HB_AVAILABLE_IN_ALL
void hb_replicator_set_batch_size (HbReplicator *self, guint batch_size);
HB_AVAILABLE_IN_ALL
guint64 hb_replicator_get_batch_bytes (HbReplicator *self);
HB_AVAILABLE_IN_ALL
void hb_replicator_set_batch_bytes (HbReplicator *self, guint64 batch_bytes);
HB_AVAILABLE_IN_ALL
const char *const *hb_replicator_get_doc_ids (HbReplicator *self);
HB_AVAILABLE_IN_ALL
void hb_replicator_set_doc_ids (HbReplicator *self, const char *const *doc_ids);
HB_AVAILABLE_IN_ALL
const char *hb_replicator_get_session_id (HbReplicator *self);
HB_AVAILABLE_IN_ALL
void hb_replicator_set_session_id (HbReplicator *self, const char *session_id);
HB_AVAILABLE_IN_ALL
gboolean hb_replicator_get_create_target (HbReplicator *self);
HB_AVAILABLE_IN_ALL
void hb_replicator_set_create_target (HbReplicator *self, gboolean create_target);
HB_AVAILABLE_IN_ALL
gboolean hb_replicator_get_feed_documents (HbReplicator *self);
HB_AVAILABLE_IN_ALL
void hb_replicator_set_feed_documents (HbReplicator *self, gboolean feed_documents);

HB_AVAILABLE_IN_ALL
char *hb_replicator_get_replication_id (HbReplicator *self);

HB_AVAILABLE_IN_ALL
void hb_replicator_run_async (HbReplicator *self,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data);
HB_AVAILABLE_IN_ALL
HbReplicationResult *
hb_replicator_run_finish (HbReplicator *self, GAsyncResult *result, GError **error);
HB_AVAILABLE_IN_ALL
HbReplicationResult *hb_replicator_get_last_result (HbReplicator *self);

G_END_DECLS
