/* HbReplicator: one replication, one direction, as CouchDB's replication protocol describes it.
 *
 * A run is two lanes and a checkpoint writer, all on the owner's main context:
 *
 *   reader  source changes → target revs_diff → read the missing revisions (the store's
 *           plaintext for a push, `_bulk_get` for a pull, or for a pull the feed's own rows
 *           where they hold the whole revision: see take_inline()) → the sync cache → closed
 *           batches
 *   writer  a closed batch → `_bulk_docs` new_edits:false (push) or one store transaction
 *           (pull) → entries marked written and wiped → the checkpoint moves on; a push keeps
 *           PUSH_WRITERS batches in flight, so the server always has the next one queued
 *   checkpoint  `_local/<replication id>` on both sides, one write at a time, coalesced
 *
 * The reader runs ahead of the writer by at most MAX_QUEUED batches, so the network is busy
 * while the store decrypts or seals. Plaintext waits only in the cache: a batch closes when the
 * cache has no room, so the reader never waits for room its own batch holds.
 *
 * A checkpoint names a source sequence only when every revision of every change up to it has
 * been written: batches written out of order wait for the earlier ones before the checkpoint
 * moves past them. So a run that stops anywhere resumes without losing a batch, and resends at
 * most the batches that were in flight. */

#include <string.h>

#include "hb-crypto-private.h"
#include "hb-enums.h"
#include "hb-json-private.h"
#include "hb-remote-parse-private.h"
#include "hb-replicator.h"
#include "hb-store-private.h"

#define DEFAULT_BATCH_SIZE 100
#define DEFAULT_BATCH_BYTES (G_GUINT64_CONSTANT (4) * 1024 * 1024)
#define REPLICATION_ID_VERSION 1
#define MAX_QUEUED 2
/* `_bulk_docs` requests in flight during a push. With one, the server idles while the client
 * takes in an answer and sends the next batch; a second keeps it busy. The store takes one
 * write at a time, so a pull writes one batch at a time. */
#define PUSH_WRITERS 2
#define READ_CHUNK 50
#define MAX_HISTORY 50
#define MAX_ATTEMPTS 5
#define RETRY_BASE_MS 200
#define RETRY_MAX_MS 3000
#define OPEN_REVS_PARALLEL 4
#define CHECKPOINT_GRACE_MS 5000
/* Checkpoints during a run are written at most this often (and always at its end): each one is a
 * write on both peers, and a server pays for it in every batch it could be serving instead. */
#define CHECKPOINT_INTERVAL_MS 400

struct _HbReplicator
{
  GObject parent_instance;

  HbStore *store;
  HbRemote *remote;
  HbSyncCache *cache;
  HbReplicationDirection direction;
  guint batch_size;
  guint64 batch_bytes;
  GStrv doc_ids;
  char *session_id;
  gboolean create_target;
  gboolean feed_documents;
  HbReplicatorState state;
  gboolean running;
  HbReplicationResult *last_result;
};

G_DEFINE_FINAL_TYPE (HbReplicator, hb_replicator, G_TYPE_OBJECT)

enum
{
  PROP_0,
  PROP_STORE,
  PROP_REMOTE,
  PROP_CACHE,
  PROP_DIRECTION,
  PROP_STATE,
  PROP_BATCH_SIZE,
  PROP_BATCH_BYTES,
  PROP_DOC_IDS,
  PROP_SESSION_ID,
  PROP_CREATE_TARGET,
  PROP_FEED_DOCUMENTS,
  N_PROPS
};

static GParamSpec *properties[N_PROPS];

enum
{
  SIGNAL_STATE_CHANGED,
  SIGNAL_PROGRESS,
  SIGNAL_DOCUMENT_DENIED,
  N_SIGNALS
};

static guint signals[N_SIGNALS];

/* ---- the result ------------------------------------------------------------------------ */

/**
 * hb_replication_result_copy:
 * @result: a result
 *
 * Returns: (transfer full): a copy of @result
 */
HbReplicationResult *
hb_replication_result_copy (const HbReplicationResult *result)
{
  HbReplicationResult *copy = g_new (HbReplicationResult, 1);

  *copy = *result;
  copy->last_seq = g_strdup (result->last_seq);
  copy->replication_id = g_strdup (result->replication_id);
  return copy;
}

/**
 * hb_replication_result_free:
 * @result: (nullable): a result
 *
 * Frees @result.
 */
void
hb_replication_result_free (HbReplicationResult *result)
{
  if (result == NULL)
    return;
  g_free (result->last_seq);
  g_free (result->replication_id);
  g_free (result);
}

G_DEFINE_BOXED_TYPE (HbReplicationResult,
                     hb_replication_result,
                     hb_replication_result_copy,
                     hb_replication_result_free)

/* ---- a run ----------------------------------------------------------------------------- */

typedef struct _Run Run;

/* One revision in a batch: its plaintext is in the cache under (id, rev). */
typedef struct
{
  char *id;
  char *rev;
} DocRef;

static void
doc_ref_free (gpointer data)
{
  DocRef *ref = data;

  g_free (ref->id);
  g_free (ref->rev);
  g_free (ref);
}

static DocRef *
doc_ref_new (const char *id, const char *rev)
{
  DocRef *ref = g_new (DocRef, 1);

  ref->id = g_strdup (id);
  ref->rev = g_strdup (rev);
  return ref;
}

typedef enum
{
  BATCH_READY,   /* to be sent (again) */
  BATCH_SENDING, /* its write is under way */
  BATCH_WAITING, /* for a retry of its write */
  BATCH_DONE,    /* written or refused; waits for the batches before it */
} BatchState;

typedef struct
{
  Run *run;
  GPtrArray *docs; /* DocRef */
  guint64 bytes;
  /* The source sequence this batch completes, or NULL when more of its page follows. */
  JsonNode *seq;
  BatchState state;
  guint attempts;
} Batch;

static Batch *
batch_new (Run *run)
{
  Batch *batch = g_new0 (Batch, 1);

  batch->run = run;
  batch->docs = g_ptr_array_new_with_free_func (doc_ref_free);
  return batch;
}

static void
batch_free (gpointer data)
{
  Batch *batch = data;

  g_ptr_array_unref (batch->docs);
  g_clear_pointer (&batch->seq, json_node_unref);
  g_free (batch);
}

/* A revision the reader fetched, waiting to enter the cache. */
typedef struct
{
  char *id;
  char *rev;
  GBytes *text; /* plaintext JSON; NULL when it could not be read */
} Fetched;

static void
fetched_free (gpointer data)
{
  Fetched *f = data;

  g_free (f->id);
  g_free (f->rev);
  g_clear_pointer (&f->text, g_bytes_unref);
  g_free (f);
}

/* What a `_changes` page read with its documents carried. */
typedef struct
{
  GHashTable *docs;   /* id → Fetched: the rows whose document is a whole first revision */
  gboolean with_docs; /* whether the page came with documents at all */
  guint rows;         /* the page's documents */
} Inline;

static void
inline_free (Inline *in)
{
  if (in == NULL)
    return;
  g_clear_pointer (&in->docs, g_hash_table_unref);
  g_free (in);
}

typedef enum
{
  NEXT_DIFFING,  /* the store's revs_diff is asked */
  NEXT_FETCHING, /* its `_bulk_get` is under way */
  NEXT_READY,    /* its revisions are here */
  NEXT_FAILED,   /* its `_bulk_get` failed: the reader fetches the page itself */
} NextState;

/* The page after the one being fetched, fetched ahead (see maybe_prefetch). */
typedef struct
{
  HbRemoteChanges *changes;
  JsonNode *since;           /* the sequence it follows: the current page's */
  GPtrArray *order;          /* its ids, in page order */
  GPtrArray *missing;        /* DocRef: those to fetch */
  Inline *inline_docs;       /* until its revs_diff is back */
  GPtrArray *inline_fetched; /* Fetched: those its rows carried, or NULL */
  GPtrArray *fetched;        /* Fetched, when ready */
  GError *error;             /* why its `_bulk_get` failed, when it did */
  NextState state;
  gboolean wanted; /* the reader waits for it */
} NextPage;

typedef enum
{
  LANE_READER,
  LANE_WRITER,
  LANE_CHECKPOINT,
  N_LANES
} Lane;

struct _Run
{
  HbReplicator *self;
  GTask *task;
  GCancellable *cancellable; /* cancelled by the caller's, or when the run fails */
  GCancellable *caller_cancellable;
  gulong cancelled_id;
  guint pending_ops;
  GError *error;
  gboolean finished;

  gboolean push;
  char *rep_id;
  char *local_id; /* "_local/" + rep_id */
  char *session;
  char *start_time;
  JsonNode *start_seq;
  JsonNode *since;          /* where the reader is */
  JsonNode *checkpoint_seq; /* the newest sequence whose batches are all written */
  JsonNode *recorded_seq;   /* the sequence of the last checkpoint written */
  JsonObject *source_log;
  char *local_log_rev;
  char *remote_log_rev;
  guint attempts[N_LANES];

  /* Filters. */
  GHashTable *filter_ids; /* push: the ids to send, or NULL for all */
  JsonNode *selector;     /* pull by session */
  GStrv pull_doc_ids;     /* pull by ids */

  /* Reader. */
  gboolean reader_busy;
  gboolean reader_done;
  gboolean no_bulk_get;
  /* Push into a database that held no documents when the run began: everything is missing,
   * so no page asks _revs_diff (writes with new_edits:false are idempotent if someone else
   * wrote meanwhile). */
  gboolean target_empty;
  /* Pull into a store that held no documents when the run began: everything is missing, so no
   * page asks the store's revs_diff (a revision written twice is written once). */
  gboolean store_empty;
  /* Pull: whether `_changes` is read with its documents (`include_docs=true`). A missing first
   * revision that is its document's only leaf has no history to ask for: the row's document
   * is all of it, and it needs no `_bulk_get`. Adapted page by page (see take_inline()). */
  gboolean inline_docs;
  guint inline_served;     /* revisions this run took from the feed's own rows */
  Inline *page_inline;     /* of the page whose revs_diff is under way */
  GPtrArray *page_missing; /* DocRef: the page's missing revisions */
  guint page_pos;
  JsonNode *page_seq;
  guint page_checked; /* revisions the page asks the target about */
  GPtrArray *fetched; /* Fetched */
  guint fetched_pos;
  guint open_revs_running;
  GError *open_revs_error; /* a transient failure of one of the page's requests */
  Batch *current;
  GQueue batches;
  gboolean reader_waiting; /* for a retry of one of its requests */
  /* Pull: the next `_changes` page, asked for as soon as a page arrives, so that the server
   * works on it while this page's revisions are fetched and placed. */
  JsonNode *ahead_since; /* what it was asked since; NULL when none was asked */
  gboolean ahead_busy;
  gboolean ahead_wanted; /* the reader waits for it */
  HbRemoteChanges *ahead;
  NextPage *next;
  guint64 last_page_bytes; /* what the last page placed weighed */
  guint64 page_bytes;      /* what the page being placed weighs so far */
  /* "id\nrev" of every revision this run holds in the cache, in a batch not yet written:
   * `latest=true` can bring the same revision in two pages, and one cache entry serves both. */
  GHashTable *inflight;

  /* Writer. */
  gboolean writer_kicked;
  GQueue writing; /* Batch, in source order: from the first one not yet written on */

  /* Checkpoints. */
  GCancellable *checkpoint_cancellable; /* cancelled when the run fails, or CHECKPOINT_GRACE_MS
                                         * after the caller cancelled it */
  GSource *grace;
  gboolean checkpoint_busy;
  GSource *checkpoint_timer; /* a deferred checkpoint, counted as an operation */
  gint64 checkpoint_last_us; /* when the last checkpoint write ended */
  gboolean checkpoint_dirty;
  guint checkpoint_parts;

  HbReplicationResult counts;
  gint64 pending;
};

static void next_page_free (NextPage *next);

static void
run_free (Run *run)
{
  if (run->caller_cancellable != NULL)
    g_cancellable_disconnect (run->caller_cancellable, run->cancelled_id);
  g_clear_object (&run->caller_cancellable);
  g_clear_object (&run->cancellable);
  if (run->grace != NULL)
    g_source_destroy (run->grace);
  g_clear_pointer (&run->grace, g_source_unref);
  g_clear_object (&run->checkpoint_cancellable);
  if (run->checkpoint_timer != NULL)
    g_source_destroy (run->checkpoint_timer);
  g_clear_pointer (&run->checkpoint_timer, g_source_unref);
  g_clear_error (&run->error);
  g_free (run->rep_id);
  g_free (run->local_id);
  g_free (run->session);
  g_free (run->start_time);
  g_clear_pointer (&run->start_seq, json_node_unref);
  g_clear_pointer (&run->since, json_node_unref);
  g_clear_pointer (&run->checkpoint_seq, json_node_unref);
  g_clear_pointer (&run->recorded_seq, json_node_unref);
  g_clear_pointer (&run->source_log, json_object_unref);
  g_free (run->local_log_rev);
  g_free (run->remote_log_rev);
  g_clear_pointer (&run->filter_ids, g_hash_table_unref);
  g_clear_pointer (&run->selector, json_node_unref);
  g_strfreev (run->pull_doc_ids);
  g_clear_pointer (&run->page_missing, g_ptr_array_unref);
  g_clear_pointer (&run->page_inline, inline_free);
  g_clear_pointer (&run->page_seq, json_node_unref);
  g_clear_pointer (&run->ahead_since, json_node_unref);
  g_clear_pointer (&run->ahead, hb_remote_changes_free);
  g_clear_pointer (&run->next, next_page_free);
  g_clear_pointer (&run->fetched, g_ptr_array_unref);
  g_clear_error (&run->open_revs_error);
  g_clear_pointer (&run->current, batch_free);
  g_queue_clear_full (&run->writing, batch_free);
  g_queue_clear_full (&run->batches, batch_free);
  g_clear_pointer (&run->inflight, g_hash_table_unref);
  g_free (run->counts.last_seq);
  g_free (run->counts.replication_id);
  g_clear_object (&run->self);
  g_free (run);
}

static void
set_state (HbReplicator *self, HbReplicatorState state)
{
  if (self->state == state)
    return;
  self->state = state;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_STATE]);
  g_signal_emit (self, signals[SIGNAL_STATE_CHANGED], 0, state);
}

static char *
seq_to_text (JsonNode *seq)
{
  return seq != NULL ? json_to_string (seq, FALSE) : NULL;
}

/* Drops what this run left in the cache: unwritten plaintext goes, wiped; the source still has
 * it and the next run fetches it again from the last checkpoint. */
static char *
inflight_key (const char *id, const char *rev)
{
  return g_strconcat (id, "\n", rev, NULL);
}

static void
inflight_remove (Run *run, DocRef *ref)
{
  g_autofree char *key = inflight_key (ref->id, ref->rev);

  g_hash_table_remove (run->inflight, key);
}

static void
forget_batch (Run *run, Batch *batch)
{
  /* A written batch has left the cache already. */
  if (batch == NULL || batch->state == BATCH_DONE)
    return;
  for (guint i = 0; i < batch->docs->len; i++)
    {
      DocRef *ref = g_ptr_array_index (batch->docs, i);
      inflight_remove (run, ref);
      hb_sync_cache_remove (run->self->cache, ref->id, ref->rev);
    }
}

/* The task returns from an idle of its own: the run's last step is usually deep in its own
 * call chain, which must not see the caller's callback free the run under it. */
static gboolean
return_idle (gpointer data)
{
  GTask *task = data;
  Run *run = g_task_get_task_data (task);

  if (!run->push)
    g_debug ("Pull: %u revisions taken from the feed's own rows", run->inline_served);
  if (run->error == NULL)
    g_task_return_pointer (task, hb_replication_result_copy (&run->counts),
                           (GDestroyNotify)hb_replication_result_free);
  else
    g_task_return_error (task, g_steal_pointer (&run->error));
  return G_SOURCE_REMOVE;
}

static void
run_complete (Run *run)
{
  HbReplicator *self = run->self;
  GTask *task = run->task;
  GSource *idle;

  run->finished = TRUE;
  forget_batch (run, run->current);
  for (GList *l = run->writing.head; l != NULL; l = l->next)
    forget_batch (run, l->data);
  for (GList *l = run->batches.head; l != NULL; l = l->next)
    forget_batch (run, l->data);
  self->running = FALSE;
  g_free (run->counts.last_seq);
  run->counts.last_seq = seq_to_text (run->recorded_seq);
  g_free (run->counts.replication_id);
  run->counts.replication_id = g_strdup (run->rep_id);
  g_clear_pointer (&self->last_result, hb_replication_result_free);
  self->last_result = hb_replication_result_copy (&run->counts);

  if (run->error == NULL)
    set_state (self, HB_REPLICATOR_STATE_COMPLETE);
  else
    {
      gboolean cancelled
          = run->caller_cancellable != NULL && g_cancellable_is_cancelled (run->caller_cancellable);

      set_state (self, cancelled ? HB_REPLICATOR_STATE_CANCELLED : HB_REPLICATOR_STATE_FAILED);
      if (cancelled)
        {
          g_clear_error (&run->error);
          g_set_error_literal (&run->error, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                               "The replication was cancelled");
        }
    }
  /* The idle takes over the run's reference to the task. */
  idle = g_idle_source_new ();
  g_source_set_callback (idle, return_idle, task, g_object_unref);
  g_source_set_static_name (idle, "[hbsync] replication done");
  g_source_attach (idle, g_task_get_context (task));
  g_source_unref (idle);
}

static gboolean run_idle (Run *run);

/* Finishes the run if nothing is in flight and either it failed or all work is done. */
static void
maybe_finish (Run *run)
{
  if (run->finished || run->pending_ops > 0)
    return;
  if (run->error == NULL && !run_idle (run))
    return;
  run_complete (run);
}

static gboolean
grace_expired (gpointer data)
{
  Run *run = data;

  g_cancellable_cancel (run->checkpoint_cancellable);
  return G_SOURCE_REMOVE;
}

static void
run_fail (Run *run, GError *error)
{
  if (run->error == NULL)
    {
      run->error = error;
      g_cancellable_cancel (run->cancellable);
      if (run->caller_cancellable != NULL && g_cancellable_is_cancelled (run->caller_cancellable))
        {
          /* Cancelled: the checkpoint lane still records what was written, if the peers
           * answer soon enough, so that the next run does not do it again. */
          run->grace = g_timeout_source_new (CHECKPOINT_GRACE_MS);
          g_source_set_callback (run->grace, grace_expired, run, NULL);
          g_source_attach (run->grace, g_task_get_context (run->task));
        }
      else
        g_cancellable_cancel (run->checkpoint_cancellable);
    }
  else
    g_error_free (error);
}

static void
op_begin (Run *run)
{
  run->pending_ops++;
}

/* Every callback starts here. Takes *error if set. FALSE: the run is failing, stop. */
static gboolean
op_end (Run *run, GError **error)
{
  g_assert (run->pending_ops > 0);
  run->pending_ops--;
  if (error != NULL && *error != NULL)
    run_fail (run, g_steal_pointer (error));
  if (run->error != NULL)
    {
      maybe_finish (run);
      return FALSE;
    }
  return TRUE;
}

/* op_end() for the checkpoint lane, which outlives a run the caller cancelled. */
static gboolean
checkpoint_op_end (Run *run, GError **error)
{
  if (run->error != NULL && (error == NULL || *error == NULL)
      && !g_cancellable_is_cancelled (run->checkpoint_cancellable))
    {
      g_assert (run->pending_ops > 0);
      run->pending_ops--;
      return TRUE;
    }
  return op_end (run, error);
}

typedef struct
{
  Run *run;
  Lane lane;
  void (*step) (Run *run);
  Batch *batch; /* the writer's: the batch whose write is retried */
} Retry;

static gboolean
retry_fire (gpointer data)
{
  Retry *retry = data;
  Run *run = retry->run;
  void (*step) (Run *) = retry->step;

  if (retry->lane == LANE_READER)
    run->reader_waiting = FALSE;
  if (retry->batch != NULL)
    retry->batch->state = BATCH_READY;
  g_free (retry);
  if (!op_end (run, NULL))
    return G_SOURCE_REMOVE;
  if (g_cancellable_is_cancelled (run->cancellable))
    {
      run_fail (run, g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED, "Cancelled"));
      maybe_finish (run);
      return G_SOURCE_REMOVE;
    }
  step (run);
  maybe_finish (run);
  return G_SOURCE_REMOVE;
}

/* A failed request: transient errors are retried with exponential backoff and jitter; after
 * MAX_ATTEMPTS (counted in *attempts), or for any other error, the run fails. Returns TRUE if
 * a retry was scheduled. Always takes *error. */
static gboolean
schedule_retry (
    Run *run, Lane lane, guint *attempts, Batch *batch, GError **error, void (*step) (Run *run))
{
  if (hb_remote_error_is_transient (*error) && *attempts + 1 < MAX_ATTEMPTS
      && !g_cancellable_is_cancelled (run->cancellable))
    {
      guint delay = MIN (RETRY_MAX_MS, RETRY_BASE_MS << *attempts);
      Retry *retry = g_new (Retry, 1);
      GSource *timeout;

      delay = delay / 2 + g_random_int_range (0, (gint)delay / 2 + 1);
      (*attempts)++;
      g_debug ("Retrying after %u ms: %s", delay, (*error)->message);
      g_clear_error (error);
      retry->run = run;
      retry->lane = lane;
      retry->step = step;
      retry->batch = batch;
      /* The reader is not idle while it waits to retry: a finished batch must not start the
       * same request again beside it. */
      if (lane == LANE_READER)
        run->reader_waiting = TRUE;
      if (batch != NULL)
        batch->state = BATCH_WAITING;
      op_begin (run);
      /* On the run's context, where everything else of it runs. */
      timeout = g_timeout_source_new (delay);
      g_source_set_callback (timeout, retry_fire, retry, NULL);
      g_source_attach (timeout, g_task_get_context (run->task));
      g_source_unref (timeout);
      return TRUE;
    }
  run_fail (run, g_steal_pointer (error));
  maybe_finish (run);
  return FALSE;
}

static gboolean
retry_or_fail (Run *run, Lane lane, GError **error, void (*step) (Run *run))
{
  return schedule_retry (run, lane, &run->attempts[lane], NULL, error, step);
}

static void emit_progress (Run *run);
static void reader_step (Run *run);
static void writer_step (Run *run);
static void checkpoint_step (Run *run);
static gboolean run_draining (Run *run);
static gboolean checkpoint_deferred (gpointer data);

/* ---- checkpoints ----------------------------------------------------------------------- */

static char *
http_date_now (void)
{
  g_autoptr (GDateTime) now = g_date_time_new_now_utc ();

  return g_date_time_format (now, "%a, %d %b %Y %H:%M:%S GMT");
}

static JsonNode *
build_log (Run *run, JsonNode *seq)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autofree char *end_time = http_date_now ();
  JsonArray *old = NULL;
  guint kept = 1;

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "_id");
  json_builder_add_string_value (b, run->local_id);
  json_builder_set_member_name (b, "session_id");
  json_builder_add_string_value (b, run->session);
  json_builder_set_member_name (b, "source_last_seq");
  json_builder_add_value (b, json_node_copy (seq));
  json_builder_set_member_name (b, "replication_id_version");
  json_builder_add_int_value (b, REPLICATION_ID_VERSION);
  json_builder_set_member_name (b, "replicator");
  json_builder_add_string_value (b, "hbsync");
  json_builder_set_member_name (b, "history");
  json_builder_begin_array (b);

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "session_id");
  json_builder_add_string_value (b, run->session);
  json_builder_set_member_name (b, "start_time");
  json_builder_add_string_value (b, run->start_time);
  json_builder_set_member_name (b, "end_time");
  json_builder_add_string_value (b, end_time);
  json_builder_set_member_name (b, "start_last_seq");
  json_builder_add_value (b, json_node_copy (run->start_seq));
  json_builder_set_member_name (b, "end_last_seq");
  json_builder_add_value (b, json_node_copy (seq));
  json_builder_set_member_name (b, "recorded_seq");
  json_builder_add_value (b, json_node_copy (seq));
#define COUNT(name)                                                                                \
  json_builder_set_member_name (b, #name);                                                         \
  json_builder_add_int_value (b, (gint64)run->counts.name)
  COUNT (missing_checked);
  COUNT (missing_found);
  COUNT (docs_read);
  COUNT (docs_written);
  COUNT (doc_write_failures);
#undef COUNT
  json_builder_end_object (b);

  if (run->source_log != NULL && json_object_has_member (run->source_log, "history"))
    {
      JsonNode *h = json_object_get_member (run->source_log, "history");
      old = JSON_NODE_HOLDS_ARRAY (h) ? json_node_get_array (h) : NULL;
    }
  for (guint i = 0; old != NULL && i < json_array_get_length (old) && kept < MAX_HISTORY; i++)
    {
      JsonNode *entry = json_array_get_element (old, i);
      const char *sid;

      if (!JSON_NODE_HOLDS_OBJECT (entry))
        continue;
      sid = json_object_get_string_member_with_default (json_node_get_object (entry), "session_id",
                                                        NULL);
      if (g_strcmp0 (sid, run->session) == 0)
        continue;
      json_builder_add_value (b, json_node_copy (entry));
      kept++;
    }
  json_builder_end_array (b);
  json_builder_end_object (b);
  return json_builder_get_root (b);
}

static void
checkpoint_part_done (Run *run)
{
  if (--run->checkpoint_parts > 0)
    return;
  run->checkpoint_busy = FALSE;
  run->checkpoint_last_us = g_get_monotonic_time ();
  run->attempts[LANE_CHECKPOINT] = 0;
  if (run->checkpoint_dirty)
    checkpoint_step (run);
  else
    maybe_finish (run);
}

static void remote_checkpoint_put (Run *run);

static void
on_remote_log_reread (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = hb_remote_get_local_finish (HB_REMOTE (source), result, &error);

  if (!checkpoint_op_end (run, &error))
    return;
  g_clear_pointer (&run->remote_log_rev, g_free);
  if (doc != NULL && JSON_NODE_HOLDS_OBJECT (doc))
    run->remote_log_rev = g_strdup (
        json_object_get_string_member_with_default (json_node_get_object (doc), "_rev", NULL));
  remote_checkpoint_put (run);
}

static void
on_remote_log_put (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autofree char *rev = hb_remote_put_local_finish (HB_REMOTE (source), result, &error);

  if (error != NULL && g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_CONFLICT)
      && run->attempts[LANE_CHECKPOINT] < MAX_ATTEMPTS)
    {
      /* Someone else wrote the log (another run of the same replication): take its _rev. */
      run->attempts[LANE_CHECKPOINT]++;
      g_clear_error (&error);
      if (!checkpoint_op_end (run, NULL))
        return;
      op_begin (run);
      hb_remote_get_local_async (run->self->remote, run->local_id, run->checkpoint_cancellable,
                                 on_remote_log_reread, run);
      return;
    }
  if (error != NULL && hb_remote_error_is_transient (error))
    {
      if (!checkpoint_op_end (run, NULL))
        return;
      retry_or_fail (run, LANE_CHECKPOINT, &error, remote_checkpoint_put);
      return;
    }
  if (!checkpoint_op_end (run, &error))
    return;
  g_free (run->remote_log_rev);
  run->remote_log_rev = g_steal_pointer (&rev);
  checkpoint_part_done (run);
}

static void
remote_checkpoint_put (Run *run)
{
  g_autoptr (JsonNode) log = build_log (run, run->recorded_seq);

  if (run->remote_log_rev != NULL)
    json_object_set_string_member (json_node_get_object (log), "_rev", run->remote_log_rev);
  op_begin (run);
  hb_remote_put_local_async (run->self->remote, run->local_id, log, run->checkpoint_cancellable,
                             on_remote_log_put, run);
}

static void local_checkpoint_put (Run *run);

static void
on_local_log_reread (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = hb_store_get_local_finish (HB_STORE (source), result, &error);

  if (error != NULL && g_error_matches (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND))
    g_clear_error (&error);
  if (!checkpoint_op_end (run, &error))
    return;
  g_clear_pointer (&run->local_log_rev, g_free);
  if (doc != NULL && JSON_NODE_HOLDS_OBJECT (doc))
    run->local_log_rev = g_strdup (
        json_object_get_string_member_with_default (json_node_get_object (doc), "_rev", NULL));
  local_checkpoint_put (run);
}

static void
on_local_log_put (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autofree char *rev = hb_store_put_local_finish (HB_STORE (source), result, &error);

  if (error != NULL && g_error_matches (error, HB_STORE_ERROR, HB_STORE_ERROR_CONFLICT)
      && run->attempts[LANE_CHECKPOINT] < MAX_ATTEMPTS)
    {
      run->attempts[LANE_CHECKPOINT]++;
      g_clear_error (&error);
      if (!checkpoint_op_end (run, NULL))
        return;
      op_begin (run);
      hb_store_get_local_async (run->self->store, run->local_id, run->checkpoint_cancellable,
                                on_local_log_reread, run);
      return;
    }
  if (!checkpoint_op_end (run, &error))
    return;
  g_free (run->local_log_rev);
  run->local_log_rev = g_steal_pointer (&rev);
  checkpoint_part_done (run);
}

static void
local_checkpoint_put (Run *run)
{
  g_autoptr (JsonNode) log = build_log (run, run->recorded_seq);

  if (run->local_log_rev != NULL)
    json_object_set_string_member (json_node_get_object (log), "_rev", run->local_log_rev);
  op_begin (run);
  hb_store_put_local_async (run->self->store, log, run->checkpoint_cancellable, on_local_log_put,
                            run);
}

/* Writes the checkpoint for run->checkpoint_seq on both sides, unless one is being written:
 * then the newer one follows it. */
static void
checkpoint_step (Run *run)
{
  if (run->error != NULL && g_cancellable_is_cancelled (run->checkpoint_cancellable))
    return;
  if (run->checkpoint_busy)
    {
      run->checkpoint_dirty = TRUE;
      return;
    }
  run->checkpoint_dirty = FALSE;
  if (run->checkpoint_seq == NULL
      || (run->recorded_seq != NULL && json_node_equal (run->checkpoint_seq, run->recorded_seq)))
    {
      maybe_finish (run);
      return;
    }
  if (!run_draining (run) && run->checkpoint_last_us > 0)
    {
      gint64 wait_us
          = run->checkpoint_last_us + CHECKPOINT_INTERVAL_MS * 1000 - g_get_monotonic_time ();

      if (wait_us > 0)
        {
          run->checkpoint_dirty = TRUE;
          if (run->checkpoint_timer == NULL)
            {
              run->checkpoint_timer = g_timeout_source_new ((guint)(wait_us / 1000) + 1);
              op_begin (run);
              g_source_set_callback (run->checkpoint_timer, checkpoint_deferred, run, NULL);
              g_source_attach (run->checkpoint_timer, g_task_get_context (run->task));
            }
          return;
        }
    }
  if (run->checkpoint_timer != NULL)
    {
      /* Written now: the deferred write has nothing left to do. */
      g_source_destroy (run->checkpoint_timer);
      g_clear_pointer (&run->checkpoint_timer, g_source_unref);
      run->pending_ops--;
    }
  g_clear_pointer (&run->recorded_seq, json_node_unref);
  run->recorded_seq = json_node_copy (run->checkpoint_seq);
  run->checkpoint_busy = TRUE;
  run->checkpoint_parts = 2;
  remote_checkpoint_put (run);
  local_checkpoint_put (run);
}

static gboolean
checkpoint_deferred (gpointer data)
{
  Run *run = data;

  g_clear_pointer (&run->checkpoint_timer, g_source_unref);
  run->pending_ops--;
  checkpoint_step (run);
  maybe_finish (run);
  return G_SOURCE_REMOVE;
}

/* TRUE when the run's work is all written or stopping: its checkpoint must not wait. */
static gboolean
run_draining (Run *run)
{
  return run->error != NULL
         || (run->reader_done && g_queue_is_empty (&run->batches)
             && g_queue_is_empty (&run->writing));
}

static gboolean
run_idle (Run *run)
{
  return run->reader_done && !run->reader_busy && run->current == NULL
         && g_queue_is_empty (&run->batches) && g_queue_is_empty (&run->writing)
         && !run->checkpoint_busy && !run->checkpoint_dirty;
}

/* ---- batches --------------------------------------------------------------------------- */

static gboolean
writer_kick (gpointer data)
{
  Run *run = data;

  run->writer_kicked = FALSE;
  if (op_end (run, NULL))
    {
      writer_step (run);
      /* The batch it was kicked for may be written already: then this was the last thing the
       * run waited for. */
      maybe_finish (run);
    }
  return G_SOURCE_REMOVE;
}

/* The writer starts from the main loop, never inside the reader: a batch with nothing to
 * write completes at once, and its completion calls back into the reader. */
static void
kick_writer (Run *run)
{
  GSource *idle;

  if (run->writer_kicked)
    return;
  run->writer_kicked = TRUE;
  op_begin (run);
  /* On the run's context, which need not be the global default one. */
  idle = g_idle_source_new ();
  g_source_set_callback (idle, writer_kick, run, NULL);
  g_source_attach (idle, g_task_get_context (run->task));
  g_source_unref (idle);
}

static void
close_batch (Run *run, JsonNode *seq)
{
  Batch *batch = run->current;

  run->current = NULL;
  if (batch == NULL)
    batch = batch_new (run);
  if (seq != NULL)
    batch->seq = json_node_copy (seq);
  if (batch->docs->len == 0 && batch->seq == NULL)
    {
      batch_free (batch);
      return;
    }
  g_queue_push_tail (&run->batches, batch);
  kick_writer (run);
}

static Batch *
current_batch (Run *run)
{
  if (run->current == NULL)
    run->current = batch_new (run);
  return run->current;
}

static void
on_cache_room (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  Fetched *f;

  hb_sync_cache_add_finish (HB_SYNC_CACHE (source), result, &error);
  if (!op_end (run, &error))
    return;
  f = g_ptr_array_index (run->fetched, run->fetched_pos);
  g_ptr_array_add (current_batch (run)->docs, doc_ref_new (f->id, f->rev));
  g_hash_table_add (run->inflight, inflight_key (f->id, f->rev));
  run->current->bytes += g_bytes_get_size (f->text);
  run->counts.docs_read++;
  run->fetched_pos++;
  run->reader_busy = FALSE;
  reader_step (run);
}

/* Moves fetched revisions into the cache and into batches. Returns FALSE when it had to wait
 * for room (the reader continues in on_cache_room). */
static gboolean
place_fetched (Run *run)
{
  HbReplicator *self = run->self;

  while (run->fetched_pos < run->fetched->len)
    {
      Fetched *f = g_ptr_array_index (run->fetched, run->fetched_pos);
      gsize size;
      Batch *batch = run->current;

      if (f->text == NULL)
        {
          run->counts.doc_write_failures++;
          run->fetched_pos++;
          continue;
        }
      {
        g_autofree char *key = inflight_key (f->id, f->rev);

        if (g_hash_table_contains (run->inflight, key))
          {
            /* Already on its way in an earlier batch of this run. */
            run->fetched_pos++;
            continue;
          }
      }
      size = g_bytes_get_size (f->text);
      if (batch != NULL && batch->docs->len > 0
          && (batch->docs->len >= self->batch_size || batch->bytes + size > self->batch_bytes))
        close_batch (run, NULL);
      if (!hb_sync_cache_try_add (self->cache, f->id, f->rev, f->text, HB_SYNC_CACHE_FLAGS_NONE))
        {
          /* No room: what this run holds must be written first, so the batch goes now. */
          if (run->current != NULL && run->current->docs->len > 0)
            close_batch (run, NULL);
          run->reader_busy = TRUE;
          op_begin (run);
          hb_sync_cache_add_async (self->cache, f->id, f->rev, f->text, HB_SYNC_CACHE_FLAGS_NONE,
                                   run->cancellable, on_cache_room, run);
          return FALSE;
        }
      g_ptr_array_add (current_batch (run)->docs, doc_ref_new (f->id, f->rev));
      g_hash_table_add (run->inflight, inflight_key (f->id, f->rev));
      run->current->bytes += size;
      run->counts.docs_read++;
      run->fetched_pos++;
    }
  /* A page may come in two parts: what its rows carried, then what `_bulk_get` read. */
  for (guint i = 0; i < run->fetched->len; i++)
    {
      Fetched *f = g_ptr_array_index (run->fetched, i);

      run->page_bytes += f->text != NULL ? g_bytes_get_size (f->text) : 0;
    }
  g_clear_pointer (&run->fetched, g_ptr_array_unref);
  run->fetched_pos = 0;
  return TRUE;
}

/* ---- the reader: push ------------------------------------------------------------------ */

static void
on_push_read (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) texts = hb_store_get_revs_json_finish (HB_STORE (source), result, &error);
  guint start;

  if (!op_end (run, &error))
    return;
  start = run->page_pos;
  run->fetched = g_ptr_array_new_with_free_func (fetched_free);
  for (guint i = 0; i < texts->len; i++)
    {
      DocRef *ref = g_ptr_array_index (run->page_missing, start + i);
      GBytes *text = g_ptr_array_index (texts, i);
      gsize len;
      const char *data_ = g_bytes_get_data (text, &len);
      Fetched *f = g_new0 (Fetched, 1);

      f->id = g_strdup (ref->id);
      f->rev = g_strdup (ref->rev);
      /* Documents start with their special members ({"_deleted" or {"_id"); the store's
       * per-revision errors are {"id":...,"error":...}. */
      if (len > 3 && data_[2] == '_')
        f->text = g_bytes_ref (text);
      else
        g_warning ("A revision could not be read from the store for replication");
      g_ptr_array_add (run->fetched, f);
    }
  run->page_pos += texts->len;
  run->reader_busy = FALSE;
  reader_step (run);
}

static void
push_read_chunk (Run *run)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) request = NULL;
  guint end = MIN (run->page_missing->len, run->page_pos + READ_CHUNK);
  const char *open_id = NULL;

  /* {id: [revs]} in page order; a document's revisions are adjacent in the page. */
  json_builder_begin_object (b);
  for (guint i = run->page_pos; i < end; i++)
    {
      DocRef *ref = g_ptr_array_index (run->page_missing, i);

      if (open_id == NULL || strcmp (open_id, ref->id) != 0)
        {
          if (open_id != NULL)
            json_builder_end_array (b);
          json_builder_set_member_name (b, ref->id);
          json_builder_begin_array (b);
          open_id = ref->id;
        }
      json_builder_add_string_value (b, ref->rev);
    }
  if (open_id != NULL)
    json_builder_end_array (b);
  json_builder_end_object (b);
  request = json_builder_get_root (b);
  run->reader_busy = TRUE;
  op_begin (run);
  hb_store_get_revs_json_async (run->self->store, request, run->cancellable, on_push_read, run);
}

static gint
compare_strings (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *)a, *(const char *const *)b);
}

/* The missing revisions of an answer, in the order the page listed the documents. */
static GPtrArray *
page_missing_from (Run *run, GPtrArray *order, GHashTable *missing_by_id)
{
  GPtrArray *missing = g_ptr_array_new_with_free_func (doc_ref_free);

  for (guint i = 0; i < order->len; i++)
    {
      const char *id = g_ptr_array_index (order, i);
      GPtrArray *revs = g_hash_table_lookup (missing_by_id, id);

      if (revs == NULL)
        continue;
      for (guint r = 0; r < revs->len; r++)
        g_ptr_array_add (missing, doc_ref_new (id, g_ptr_array_index (revs, r)));
      run->counts.missing_found += revs->len;
      g_hash_table_remove (missing_by_id, id);
    }
  return missing;
}

static void
set_page_missing (Run *run, GPtrArray *order, GHashTable *missing_by_id)
{
  run->page_missing = page_missing_from (run, order, missing_by_id);
  run->page_pos = 0;
}

static GHashTable *
missing_table_new (void)
{
  return g_hash_table_new_full (g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
}

/* The missing revisions of a page from the store's revs_diff answer. */
static GPtrArray *
page_missing_from_diff (Run *run, GPtrArray *order, JsonNode *diff)
{
  g_autoptr (GHashTable) missing = missing_table_new ();
  JsonObjectIter iter;
  const char *id;
  JsonNode *entry;

  json_object_iter_init (&iter, json_node_get_object (diff));
  while (json_object_iter_next (&iter, &id, &entry))
    {
      JsonArray *list = json_object_get_array_member (json_node_get_object (entry), "missing");
      GPtrArray *revs = g_ptr_array_new_with_free_func (g_free);

      for (guint i = 0; i < json_array_get_length (list); i++)
        g_ptr_array_add (revs, g_strdup (json_array_get_string_element (list, i)));
      g_hash_table_insert (missing, g_strdup (id), revs);
    }
  return page_missing_from (run, order, missing);
}

static void
on_push_revs_diff (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GHashTable) diff = hb_remote_revs_diff_finish (HB_REMOTE (source), result, &error);
  g_autoptr (GHashTable) missing = missing_table_new ();
  g_autoptr (GPtrArray) order = NULL;
  GHashTableIter iter;
  gpointer key, value;

  if (error != NULL && hb_remote_error_is_transient (error))
    {
      if (op_end (run, NULL))
        {
          run->reader_busy = FALSE;
          retry_or_fail (run, LANE_READER, &error, reader_step);
        }
      return;
    }
  if (!op_end (run, &error))
    return;
  run->attempts[LANE_READER] = 0;
  run->counts.missing_checked += run->page_checked;
  order = g_ptr_array_new_with_free_func (g_free);
  g_hash_table_iter_init (&iter, diff);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      HbRemoteRevsDiff *d = value;
      GPtrArray *revs = g_ptr_array_new_with_free_func (g_free);

      for (guint i = 0; d->missing != NULL && d->missing[i] != NULL; i++)
        g_ptr_array_add (revs, g_strdup (d->missing[i]));
      g_hash_table_insert (missing, g_strdup (key), revs);
      g_ptr_array_add (order, g_strdup (key));
    }
  /* A stable order: by id. */
  g_ptr_array_sort (order, compare_strings);
  set_page_missing (run, order, missing);
  run->reader_busy = FALSE;
  reader_step (run);
}

static void
push_send_revs_diff (Run *run)
{
  run->reader_busy = TRUE;
  op_begin (run);
  hb_remote_revs_diff_async (run->self->remote, g_object_get_data (G_OBJECT (run->task), "diff"),
                             run->cancellable, on_push_revs_diff, run);
}

static void
on_push_changes (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes = hb_store_changes_finish (HB_STORE (source), result, &error);
  JsonObject *obj;
  JsonArray *rows;
  GString *body;
  guint n_docs = 0;

  if (!op_end (run, &error))
    return;
  obj = json_node_get_object (changes);
  rows = json_object_get_array_member (obj, "results");
  run->pending = json_object_get_int_member_with_default (obj, "pending", -1);
  if (json_array_get_length (rows) == 0)
    {
      run->reader_done = TRUE;
      run->reader_busy = FALSE;
      close_batch (run, NULL);
      maybe_finish (run);
      return;
    }
  g_clear_pointer (&run->page_seq, json_node_unref);
  run->page_seq = json_node_copy (json_object_get_member (obj, "last_seq"));
  run->page_checked = 0;

  if (run->target_empty)
    run->page_missing = g_ptr_array_new_with_free_func (doc_ref_free);
  body = g_string_new ("{");
  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);
      const char *id = json_object_get_string_member_with_default (row, "id", NULL);
      JsonArray *revs;

      if (id == NULL || !json_object_has_member (row, "changes"))
        {
          /* A record the store cannot open: reported by the store, counted here. */
          run->counts.doc_write_failures++;
          continue;
        }
      if (run->filter_ids != NULL && !g_hash_table_contains (run->filter_ids, id))
        continue;
      revs = json_object_get_array_member (row, "changes");
      if (n_docs++ > 0)
        g_string_append_c (body, ',');
      hb_json_append_string (body, id);
      g_string_append (body, ":[");
      for (guint r = 0; r < json_array_get_length (revs); r++)
        {
          JsonObject *change = json_array_get_object_element (revs, r);

          if (r > 0)
            g_string_append_c (body, ',');
          hb_json_append_string (body, json_object_get_string_member (change, "rev"));
          run->page_checked++;
          if (run->page_missing != NULL)
            g_ptr_array_add (run->page_missing,
                             doc_ref_new (id, json_object_get_string_member (change, "rev")));
        }
      g_string_append_c (body, ']');
    }
  g_string_append_c (body, '}');

  if (run->page_missing != NULL)
    {
      g_string_free (body, TRUE);
      run->counts.missing_checked += run->page_checked;
      run->counts.missing_found += run->page_missing->len;
      run->page_pos = 0;
      run->reader_busy = FALSE;
      reader_step (run);
      return;
    }
  if (n_docs == 0)
    {
      g_string_free (body, TRUE);
      run->page_missing = g_ptr_array_new_with_free_func (doc_ref_free);
      run->page_pos = 0;
      run->reader_busy = FALSE;
      reader_step (run);
      return;
    }
  g_object_set_data_full (G_OBJECT (run->task), "diff", g_string_free_to_bytes (body),
                          (GDestroyNotify)g_bytes_unref);
  push_send_revs_diff (run);
}

/* ---- the reader: pull ------------------------------------------------------------------ */

static void
wipe_string (gpointer data)
{
  hb_wipe (data, strlen (data));
  g_free (data);
}

/* Plaintext JSON text, wiped when its last reference goes. */
static GBytes *
wiping_bytes_take (char *text)
{
  return g_bytes_new_with_free_func (text, strlen (text), wipe_string, text);
}

static void
add_fetched_revision (Run *run, HbRemoteRevision *revision)
{
  Fetched *f = g_new0 (Fetched, 1);

  f->id = g_strdup (revision->id);
  f->rev = g_strdup (revision->rev);
  if (revision->doc != NULL && revision->error == NULL && JSON_NODE_HOLDS_OBJECT (revision->doc))
    {
      JsonObject *doc = json_node_get_object (revision->doc);
      const char *rev = json_object_get_string_member_with_default (doc, "_rev", NULL);
      /* Canonical, not json_to_string(): JSON-GLib 1.6 writes doubles from 1e17 up as invalid
       * JSON, and the store would refuse what the server sent. */
      char *text = hb_json_to_canonical (revision->doc, NULL);

      /* latest=true may answer with a newer leaf than asked: cache it under what it is. */
      if (rev != NULL)
        {
          g_free (f->rev);
          f->rev = g_strdup (rev);
        }
      f->text = wiping_bytes_take (text);
    }
  g_ptr_array_add (run->fetched, f);
}

/* A revision of a `_bulk_get` answer, its text cached as the server sent it: no tree is built
 * and nothing is serialized again; the store reads it once. */
static void
add_fetched_raw (GPtrArray *fetched, HbRemoteRawRevision *revision)
{
  Fetched *f = g_new0 (Fetched, 1);

  f->id = g_steal_pointer (&revision->id);
  f->rev = g_steal_pointer (&revision->rev);
  if (revision->error == NULL)
    f->text = g_steal_pointer (&revision->text);
  g_ptr_array_add (fetched, f);
}

static void on_bulk_get (GObject *source, GAsyncResult *result, gpointer data);

static void pull_fetch (Run *run);

static void
on_open_revs (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteBulkGetResult) res
      = hb_remote_get_open_revs_finish (HB_REMOTE (source), result, &error);

  run->open_revs_running--;
  if (error != NULL && hb_remote_error_is_transient (error))
    {
      /* The page starts over once its other requests are back: nothing of it is cached yet. */
      if (run->open_revs_error == NULL)
        run->open_revs_error = g_steal_pointer (&error);
      g_clear_error (&error);
      if (!op_end (run, NULL))
        return;
      if (run->open_revs_running == 0)
        {
          GError *retry_error = g_steal_pointer (&run->open_revs_error);

          run->reader_busy = FALSE;
          g_clear_pointer (&run->fetched, g_ptr_array_unref);
          retry_or_fail (run, LANE_READER, &retry_error, pull_fetch);
        }
      return;
    }
  if (!op_end (run, &error))
    return;
  for (guint i = 0; i < res->revisions->len; i++)
    add_fetched_revision (run, g_ptr_array_index (res->revisions, i));
  if (run->open_revs_error != NULL && run->open_revs_running == 0)
    {
      GError *retry_error = g_steal_pointer (&run->open_revs_error);

      run->reader_busy = FALSE;
      g_clear_pointer (&run->fetched, g_ptr_array_unref);
      retry_or_fail (run, LANE_READER, &retry_error, pull_fetch);
      return;
    }
  if (run->open_revs_error == NULL)
    pull_fetch (run);
}

/* GET ?open_revs= for the documents of the page, a few at a time. */
static void
pull_open_revs (Run *run)
{
  while (run->open_revs_running < OPEN_REVS_PARALLEL && run->page_pos < run->page_missing->len)
    {
      DocRef *first = g_ptr_array_index (run->page_missing, run->page_pos);
      g_autoptr (GPtrArray) revs = g_ptr_array_new ();

      while (run->page_pos < run->page_missing->len)
        {
          DocRef *ref = g_ptr_array_index (run->page_missing, run->page_pos);

          if (strcmp (ref->id, first->id) != 0)
            break;
          g_ptr_array_add (revs, ref->rev);
          run->page_pos++;
        }
      g_ptr_array_add (revs, NULL);
      run->open_revs_running++;
      op_begin (run);
      hb_remote_get_open_revs_async (run->self->remote, first->id, (const char *const *)revs->pdata,
                                     run->cancellable, on_open_revs, run);
    }
}

static GBytes *
bulk_get_body (GPtrArray *missing)
{
  GString *body = g_string_new ("{\"docs\":[");

  for (guint i = 0; i < missing->len; i++)
    {
      DocRef *ref = g_ptr_array_index (missing, i);

      if (i > 0)
        g_string_append_c (body, ',');
      g_string_append (body, "{\"id\":");
      hb_json_append_string (body, ref->id);
      g_string_append (body, ",\"rev\":");
      hb_json_append_string (body, ref->rev);
      g_string_append_c (body, '}');
    }
  g_string_append (body, "]}");
  return g_string_free_to_bytes (body);
}

static void maybe_prefetch (Run *run);

static void
pull_fetch (Run *run)
{
  if (run->fetched == NULL)
    {
      run->fetched = g_ptr_array_new_with_free_func (fetched_free);
      run->fetched_pos = 0;
      run->page_pos = 0;
    }
  run->reader_busy = TRUE;
  if (run->no_bulk_get)
    {
      pull_open_revs (run);
      if (run->open_revs_running == 0)
        {
          run->page_pos = run->page_missing->len;
          run->reader_busy = FALSE;
          reader_step (run);
        }
      return;
    }
  {
    g_autoptr (GBytes) body = bulk_get_body (run->page_missing);

    op_begin (run);
    hb_remote_bulk_get_raw_async (run->self->remote, body, run->cancellable, on_bulk_get, run);
  }
  maybe_prefetch (run);
}

static void
on_bulk_get (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) results
      = hb_remote_bulk_get_raw_finish (HB_REMOTE (source), result, &error);

  if (error != NULL
      && (g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NOT_FOUND)
          || g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_METHOD_NOT_ALLOWED)
          || g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NOT_IMPLEMENTED)))
    {
      /* No _bulk_get on this server: one GET ?open_revs= per document from now on. */
      g_clear_error (&error);
      if (!op_end (run, NULL))
        return;
      run->no_bulk_get = TRUE;
      pull_fetch (run);
      return;
    }
  if (error != NULL && hb_remote_error_is_transient (error))
    {
      if (op_end (run, NULL))
        {
          run->reader_busy = FALSE;
          g_clear_pointer (&run->fetched, g_ptr_array_unref);
          retry_or_fail (run, LANE_READER, &error, pull_fetch);
        }
      return;
    }
  if (!op_end (run, &error))
    return;
  run->attempts[LANE_READER] = 0;
  for (guint i = 0; i < results->len; i++)
    add_fetched_raw (run->fetched, g_ptr_array_index (results, i));
  run->page_pos = run->page_missing->len;
  run->reader_busy = FALSE;
  reader_step (run);
}

static GPtrArray *take_inline (Run *run, GPtrArray **missing, Inline *in);

/* The page's missing revisions are known: those its rows carried go to the cache, the rest
 * are fetched. Takes @in. */
static void
page_fetch (Run *run, Inline *in)
{
  g_autoptr (GPtrArray) taken = take_inline (run, &run->page_missing, in);

  inline_free (in);
  run->page_pos = 0;
  run->reader_busy = FALSE;
  if (taken != NULL)
    {
      /* reader_step() places them, then fetches the rest. */
      run->fetched = g_steal_pointer (&taken);
      run->fetched_pos = 0;
      reader_step (run);
    }
  else if (run->page_missing->len == 0)
    reader_step (run);
  else
    pull_fetch (run);
}

static void
on_pull_revs_diff (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) diff = hb_store_revs_diff_finish (HB_STORE (source), result, &error);
  g_autoptr (GPtrArray) order = g_object_steal_data (G_OBJECT (run->task), "order");

  if (!op_end (run, &error))
    return;
  run->page_missing = page_missing_from_diff (run, order, diff);
  page_fetch (run, g_steal_pointer (&run->page_inline));
}

static void on_pull_changes (GObject *source, GAsyncResult *result, gpointer data);

static gboolean cache_has_room_for_pages (Run *run);

/* Asks for the page of `_changes` after @since. */
static void
changes_send (Run *run, JsonNode *since, GAsyncReadyCallback callback)
{
  HbReplicator *self = run->self;
  /* A page's documents wait outside the cache until the reader places them, as a page fetched
   * ahead does: so only while the cache has room for them. */
  gboolean with_docs = run->inline_docs && cache_has_room_for_pages (run);

  op_begin (run);
  if (run->selector != NULL)
    {
      /* Documents of one clinical session: a selector, sent in the body. */
      g_autoptr (GString) path = g_string_new ("_changes?style=all_docs&filter=_selector");
      g_autoptr (JsonBuilder) b = json_builder_new ();
      g_autoptr (JsonNode) root = NULL;
      g_autoptr (GBytes) bytes = NULL;
      char *text;

      g_string_append_printf (path, "&limit=%u", self->batch_size);
      if (with_docs)
        g_string_append (path, "&include_docs=true");
      if (since != NULL)
        {
          g_autofree char *since_text
              = JSON_NODE_HOLDS_VALUE (since) && json_node_get_value_type (since) == G_TYPE_STRING
                    ? g_strdup (json_node_get_string (since))
                    : json_to_string (since, FALSE);
          g_autofree char *escaped = g_uri_escape_string (since_text, NULL, FALSE);

          g_string_append_printf (path, "&since=%s", escaped);
        }
      json_builder_begin_object (b);
      json_builder_set_member_name (b, "selector");
      json_builder_add_value (b, json_node_copy (run->selector));
      json_builder_end_object (b);
      root = json_builder_get_root (b);
      text = json_to_string (root, FALSE);
      bytes = g_bytes_new_take (text, strlen (text));
      hb_remote_request_async (self->remote, "POST", path->str, bytes, run->cancellable, callback,
                               run);
      return;
    }
  if (with_docs)
    hb_remote_changes_docs_async (self->remote, since, self->batch_size,
                                  (const char *const *)run->pull_doc_ids, run->cancellable,
                                  callback, run);
  else
    hb_remote_changes_async (self->remote, since, self->batch_size,
                             (const char *const *)run->pull_doc_ids, FALSE, 0, run->cancellable,
                             callback, run);
}

static HbRemoteChanges *
changes_finish (Run *run, GAsyncResult *result, GError **error)
{
  HbRemote *remote = run->self->remote;
  g_autoptr (GBytes) bytes = NULL;
  HbRemoteChanges *changes;

  if (run->selector == NULL)
    return hb_remote_changes_finish (remote, result, error);
  bytes = hb_remote_request_finish (remote, result, NULL, error);
  if (bytes == NULL)
    return NULL;
  changes
      = hb_remote_parse_changes (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes), error);
  /* It may hold documents: each is in its own (wiped) text now. */
  hb_wipe ((gpointer)g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes));
  return changes;
}

static void pull_changes_arrived (Run *run, HbRemoteChanges *changes);

static void
on_changes_ahead (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteChanges) changes = changes_finish (run, result, &error);

  run->ahead_busy = FALSE;
  /* A failure is not the run's: the reader asks again itself, with its retries. */
  if (error != NULL)
    g_clear_pointer (&run->ahead_since, json_node_unref);
  if (!op_end (run, NULL))
    return;
  run->ahead = g_steal_pointer (&changes);
  if (run->ahead_wanted)
    {
      run->ahead_wanted = FALSE;
      run->reader_busy = FALSE;
      reader_step (run);
    }
  else
    maybe_prefetch (run);
  /* Or nobody needs it any more, and it was what the run waited for. */
  maybe_finish (run);
}

/* The reader takes the page read ahead if it is the one it needs: TRUE if it did, or if it
 * now waits for it. */
static gboolean
take_changes_ahead (Run *run)
{
  gboolean usable = run->ahead_since != NULL && run->since != NULL
                    && json_node_equal (run->ahead_since, run->since);

  if (usable && run->ahead_busy)
    {
      run->reader_busy = TRUE;
      run->ahead_wanted = TRUE;
      return TRUE;
    }
  g_clear_pointer (&run->ahead_since, json_node_unref);
  if (!usable || run->ahead == NULL)
    {
      g_clear_pointer (&run->ahead, hb_remote_changes_free);
      return FALSE;
    }
  {
    g_autoptr (HbRemoteChanges) changes = g_steal_pointer (&run->ahead);

    run->reader_busy = TRUE;
    pull_changes_arrived (run, changes);
  }
  return TRUE;
}

static void promote_next_page (Run *run);

static void
pull_changes_request (Run *run)
{
  if (run->next != NULL && run->since != NULL && json_node_equal (run->next->since, run->since))
    {
      promote_next_page (run);
      return;
    }
  if (take_changes_ahead (run))
    return;
  run->reader_busy = TRUE;
  changes_send (run, run->since, on_pull_changes);
}

static void
pull_changes_retry (Run *run)
{
  pull_changes_request (run);
}

static void
on_pull_changes (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteChanges) changes = changes_finish (run, result, &error);

  if (error != NULL && hb_remote_error_is_transient (error))
    {
      if (op_end (run, NULL))
        {
          run->reader_busy = FALSE;
          retry_or_fail (run, LANE_READER, &error, pull_changes_retry);
        }
      return;
    }
  if (!op_end (run, &error))
    return;
  pull_changes_arrived (run, changes);
}

/* Whether the row's document (`include_docs=true`) is the whole of the revision to fetch: the
 * document's only leaf, a first revision (whose history is itself alone), naming itself as the
 * row does, with no attachments to fetch beside it. Anything else goes through `_bulk_get`. */
static gboolean
row_is_whole_revision (HbRemoteChange *change)
{
  static const char *const names[] = { "_id", "_rev", "_attachments", NULL };
  HbJsonSpan doc, values[G_N_ELEMENTS (names) - 1];
  gsize len;

  if (change->doc == NULL || change->revs[0] == NULL || change->revs[1] != NULL
      || !g_str_has_prefix (change->revs[0], "1-"))
    return FALSE;
  doc.start = g_bytes_get_data (change->doc, &len);
  doc.end = doc.start + len;
  hb_json_walk_object (&doc, names, values);
  return values[0].start != NULL && hb_json_span_is (&values[0], '"')
         && hb_json_name_is (&values[0], change->id) && values[1].start != NULL
         && hb_json_span_is (&values[1], '"') && hb_json_name_is (&values[1], change->revs[0])
         && values[2].start == NULL;
}

/* What a `_changes` page asks: the ids of its rows in page order (the feed's own and `_local/`
 * rows, and rows without revisions, left out) and, when the store held something, the store's
 * revs_diff request for them (*diff); when it held nothing, every revision is missing
 * (*missing). Counts the revisions checked. *inline_docs: what its rows' documents hold. */
static GPtrArray *
page_request (
    Run *run, HbRemoteChanges *changes, JsonNode **diff, GHashTable **missing, Inline **inline_docs)
{
  g_autoptr (JsonBuilder) b = NULL;
  GPtrArray *order = g_ptr_array_new_with_free_func (g_free);
  Inline *in = g_new0 (Inline, 1);

  *diff = NULL;
  *missing = NULL;
  if (run->store_empty)
    *missing = missing_table_new ();
  else
    {
      b = json_builder_new ();
      json_builder_begin_object (b);
    }
  for (guint i = 0; i < changes->results->len; i++)
    {
      HbRemoteChange *change = g_ptr_array_index (changes->results, i);
      GPtrArray *revs = NULL;

      /* After a failover a feed may repeat a row: the second one adds nothing. */
      if (change->id == NULL || change->revs == NULL || g_str_has_prefix (change->id, "_local/"))
        continue;
      if (change->doc != NULL)
        in->with_docs = TRUE;
      if (row_is_whole_revision (change))
        {
          Fetched *f = g_new0 (Fetched, 1);

          if (in->docs == NULL)
            in->docs = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, fetched_free);
          f->id = g_strdup (change->id);
          f->rev = g_strdup (change->revs[0]);
          f->text = g_bytes_ref (change->doc);
          g_hash_table_replace (in->docs, f->id, f);
        }
      if (b != NULL)
        {
          json_builder_set_member_name (b, change->id);
          json_builder_begin_array (b);
        }
      else
        revs = g_ptr_array_new_with_free_func (g_free);
      for (guint r = 0; change->revs[r] != NULL; r++)
        {
          if (b != NULL)
            json_builder_add_string_value (b, change->revs[r]);
          else
            g_ptr_array_add (revs, g_strdup (change->revs[r]));
          run->counts.missing_checked++;
        }
      if (b != NULL)
        json_builder_end_array (b);
      else
        g_hash_table_insert (*missing, g_strdup (change->id), revs);
      g_ptr_array_add (order, g_strdup (change->id));
    }
  in->rows = order->len;
  *inline_docs = in;
  if (b != NULL)
    {
      json_builder_end_object (b);
      *diff = json_builder_get_root (b);
    }
  return order;
}

/* Takes out of *missing the revisions the page's rows carried whole (@in), in page order, and
 * returns them as Fetched (NULL when none), so that only the rest is asked of `_bulk_get`.
 *
 * Then decides how the next pages are read. Documents in the feed cost the server far less
 * than a `_bulk_get` of them (express-pouchdb: 0.7 s of CPU for 10,000 rows against 1.7 s),
 * but a document the store already has, or one with history, comes for nothing. So the feed
 * carries documents while at least half of a page's rows are served from it, and starts again
 * when at least half of a page read without them were missing first revisions. The first
 * pull into an empty store starts with them. */
static GPtrArray *
take_inline (Run *run, GPtrArray **missing, Inline *in)
{
  GPtrArray *taken = NULL;
  g_autoptr (GPtrArray) rest = NULL;
  guint first_revisions = 0;

  for (guint i = 0; i < (*missing)->len; i++)
    {
      DocRef *ref = g_ptr_array_index (*missing, i);
      Fetched *f = in != NULL && in->docs != NULL ? g_hash_table_lookup (in->docs, ref->id) : NULL;

      if (f != NULL && strcmp (f->rev, ref->rev) == 0)
        {
          if (taken == NULL)
            {
              taken = g_ptr_array_new_with_free_func (fetched_free);
              rest = g_ptr_array_new_with_free_func (doc_ref_free);
              for (guint j = 0; j < i; j++)
                {
                  DocRef *kept = g_ptr_array_index (*missing, j);
                  g_ptr_array_add (rest, doc_ref_new (kept->id, kept->rev));
                }
            }
          g_hash_table_steal (in->docs, ref->id);
          g_ptr_array_add (taken, f);
          continue;
        }
      if (g_str_has_prefix (ref->rev, "1-"))
        first_revisions++;
      if (rest != NULL)
        g_ptr_array_add (rest, doc_ref_new (ref->id, ref->rev));
    }
  if (rest != NULL)
    {
      g_ptr_array_unref (*missing);
      *missing = g_steal_pointer (&rest);
    }
  if (in != NULL && in->rows > 0)
    {
      guint served = taken != NULL ? taken->len : 0;

      run->inline_served += served;
      run->inline_docs
          = run->self->feed_documents
            && (in->with_docs ? 2 * served >= in->rows : 2 * first_revisions >= in->rows);
    }
  return taken;
}

static void
send_changes_ahead (Run *run, JsonNode *since)
{
  g_clear_pointer (&run->ahead_since, json_node_unref);
  run->ahead_since = json_node_copy (since);
  run->ahead_busy = TRUE;
  changes_send (run, run->ahead_since, on_changes_ahead);
}

/* A page of `_changes` since run->since (the reader is busy with it). */
static void
pull_changes_arrived (Run *run, HbRemoteChanges *changes)
{
  g_autoptr (JsonNode) request = NULL;
  g_autoptr (GHashTable) missing = NULL;
  Inline *inline_docs = NULL;
  GPtrArray *order;

  run->attempts[LANE_READER] = 0;
  run->pending = changes->pending;
  if (changes->results->len == 0)
    {
      run->reader_done = TRUE;
      run->reader_busy = FALSE;
      /* The feed may end on a sequence past the last row (filtered feeds do). */
      if (changes->last_seq != NULL && !JSON_NODE_HOLDS_NULL (changes->last_seq)
          && (run->since == NULL || !json_node_equal (changes->last_seq, run->since)))
        close_batch (run, changes->last_seq);
      maybe_finish (run);
      return;
    }
  g_clear_pointer (&run->page_seq, json_node_unref);
  run->page_seq = json_node_copy (changes->last_seq);
  /* The next page, while this one's revisions are read. */
  if (!run->ahead_busy && run->ahead == NULL && !JSON_NODE_HOLDS_NULL (run->page_seq))
    send_changes_ahead (run, run->page_seq);

  order = page_request (run, changes, &request, &missing, &inline_docs);
  if (missing != NULL)
    {
      g_autoptr (GPtrArray) page_order = order;

      set_page_missing (run, page_order, missing);
      page_fetch (run, inline_docs);
      return;
    }
  g_clear_pointer (&run->page_inline, inline_free);
  run->page_inline = inline_docs;
  g_object_set_data_full (G_OBJECT (run->task), "order", order, (GDestroyNotify)g_ptr_array_unref);
  op_begin (run);
  hb_store_revs_diff_async (run->self->store, request, run->cancellable, on_pull_revs_diff, run);
}

/* ---- the reader: the next page, fetched ahead ----------------------------------------- */

/* While a page's `_bulk_get` is under way, the page after it (already read ahead from the feed)
 * is fetched too, so the server has the next request in hand the moment it answers one
 * instead of idling while the client takes the answer in. Its revisions wait outside the cache
 * until the reader reaches the page, so this is done only while the cache has room for two
 * more pages: the bound still holds, and a full cache makes the reader go one page at a
 * time. */
static gboolean
cache_has_room_for_pages (Run *run)
{
  HbSyncCache *cache = run->self->cache;
  guint64 page_bytes = MAX (run->last_page_bytes, 1);
  guint page_docs = MAX (run->self->batch_size, 1);

  return hb_sync_cache_get_bytes (cache) + 2 * page_bytes <= hb_sync_cache_get_max_bytes (cache)
         && hb_sync_cache_get_unwritten_count (cache) + 2 * page_docs
                <= hb_sync_cache_get_max_documents (cache);
}

static void
next_page_free (NextPage *next)
{
  if (next == NULL)
    return;
  g_clear_pointer (&next->changes, hb_remote_changes_free);
  g_clear_pointer (&next->since, json_node_unref);
  g_clear_pointer (&next->order, g_ptr_array_unref);
  g_clear_pointer (&next->missing, g_ptr_array_unref);
  g_clear_pointer (&next->inline_docs, inline_free);
  g_clear_pointer (&next->inline_fetched, g_ptr_array_unref);
  g_clear_pointer (&next->fetched, g_ptr_array_unref);
  g_clear_error (&next->error);
  g_free (next);
}

static void promote_next_page (Run *run);

/* The next page's part is done (fetched, or failed so the reader fetches it itself). */
static void
next_page_settled (Run *run, NextState state)
{
  run->next->state = state;
  if (run->next->wanted)
    promote_next_page (run);
}

static void
on_next_bulk_get (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) results
      = hb_remote_bulk_get_raw_finish (HB_REMOTE (source), result, &error);
  NextPage *next = run->next;

  /* Any failure is left to the reader, which asks again with its retries and fallbacks. */
  if (!op_end (run, NULL))
    return;
  if (error != NULL)
    {
      next->error = g_steal_pointer (&error);
      next_page_settled (run, NEXT_FAILED);
      return;
    }
  next->fetched = next->inline_fetched != NULL ? g_steal_pointer (&next->inline_fetched)
                                               : g_ptr_array_new_with_free_func (fetched_free);
  for (guint i = 0; i < results->len; i++)
    add_fetched_raw (next->fetched, g_ptr_array_index (results, i));
  next_page_settled (run, NEXT_READY);
}

static void
next_page_fetch (Run *run)
{
  NextPage *next = run->next;
  g_autoptr (GBytes) body = NULL;

  next->inline_fetched = take_inline (run, &next->missing, next->inline_docs);
  g_clear_pointer (&next->inline_docs, inline_free);
  if (next->missing->len == 0)
    {
      next->fetched = next->inline_fetched != NULL ? g_steal_pointer (&next->inline_fetched)
                                                   : g_ptr_array_new_with_free_func (fetched_free);
      next_page_settled (run, NEXT_READY);
      return;
    }
  next->state = NEXT_FETCHING;
  body = bulk_get_body (next->missing);
  op_begin (run);
  hb_remote_bulk_get_raw_async (run->self->remote, body, run->cancellable, on_next_bulk_get, run);
}

static void
on_next_revs_diff (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) diff = hb_store_revs_diff_finish (HB_STORE (source), result, &error);
  NextPage *next = run->next;

  if (!op_end (run, &error))
    return;
  next->missing = page_missing_from_diff (run, next->order, diff);
  next_page_fetch (run);
}

/* Starts fetching the page read ahead, if it follows the page being fetched now. */
static void
maybe_prefetch (Run *run)
{
  g_autoptr (JsonNode) request = NULL;
  g_autoptr (GHashTable) missing = NULL;
  NextPage *next;

  if (run->error != NULL || run->next != NULL || run->no_bulk_get || run->ahead == NULL
      || run->page_missing == NULL || run->page_seq == NULL || run->ahead_since == NULL
      || !json_node_equal (run->ahead_since, run->page_seq) || run->ahead->results->len == 0
      || run->ahead->last_seq == NULL || JSON_NODE_HOLDS_NULL (run->ahead->last_seq)
      || !cache_has_room_for_pages (run))
    return;
  next = g_new0 (NextPage, 1);
  next->changes = g_steal_pointer (&run->ahead);
  next->since = g_steal_pointer (&run->ahead_since);
  next->state = NEXT_DIFFING;
  run->next = next;
  /* And the page after it, from the feed. */
  send_changes_ahead (run, next->changes->last_seq);
  next->order = page_request (run, next->changes, &request, &missing, &next->inline_docs);
  if (missing != NULL)
    {
      next->missing = page_missing_from (run, next->order, missing);
      next_page_fetch (run);
      return;
    }
  op_begin (run);
  hb_store_revs_diff_async (run->self->store, request, run->cancellable, on_next_revs_diff, run);
}

/* The reader reached the page fetched ahead: it becomes the current page, at once if its
 * revisions are here, or when they arrive. */
static void
promote_next_page (Run *run)
{
  NextPage *next = run->next;
  g_autoptr (GError) error = NULL;

  run->reader_busy = TRUE;
  if (next->state == NEXT_DIFFING || next->state == NEXT_FETCHING)
    {
      next->wanted = TRUE;
      return;
    }
  run->next = NULL;
  run->attempts[LANE_READER] = 0;
  run->pending = next->changes->pending;
  g_clear_pointer (&run->page_seq, json_node_unref);
  run->page_seq = json_node_copy (next->changes->last_seq);
  run->page_missing = g_steal_pointer (&next->missing);
  run->page_pos = 0;
  run->reader_busy = FALSE;
  if (next->state == NEXT_READY)
    {
      run->fetched = g_steal_pointer (&next->fetched);
      run->fetched_pos = 0;
      run->page_pos = run->page_missing->len;
      next_page_free (next);
      reader_step (run);
      maybe_prefetch (run);
      return;
    }
  error = g_steal_pointer (&next->error);
  run->fetched = g_steal_pointer (&next->inline_fetched);
  run->fetched_pos = 0;
  next_page_free (next);
  if (run->fetched != NULL)
    {
      /* What its rows carried goes in first; reader_step() then fetches the rest. */
      if (error != NULL && hb_remote_error_is_transient (error))
        retry_or_fail (run, LANE_READER, &error, reader_step);
      else
        reader_step (run);
    }
  else if (run->page_missing->len == 0)
    reader_step (run);
  else if (error != NULL && hb_remote_error_is_transient (error))
    /* The fetch ahead was this page's first attempt: the reader's is a retry, with backoff,
     * and counts toward the run's failing. */
    retry_or_fail (run, LANE_READER, &error, pull_fetch);
  else
    pull_fetch (run);
}

/* ---- the reader ------------------------------------------------------------------------ */

static void
on_store_changes (Run *run)
{
  op_begin (run);
  hb_store_changes_async (run->self->store,
                          run->since != NULL ? (guint64)json_node_get_int (run->since) : 0,
                          run->self->batch_size, run->cancellable, on_push_changes, run);
}

static void
reader_step (Run *run)
{
  if (run->error != NULL || run->reader_busy || run->reader_waiting || run->reader_done)
    return;
  if (run->fetched != NULL)
    {
      if (!place_fetched (run))
        return;
    }
  if (run->page_missing != NULL)
    {
      if (run->page_pos < run->page_missing->len)
        {
          if (g_queue_get_length (&run->batches) >= MAX_QUEUED)
            return; /* the writer calls back when it takes one */
          if (run->push)
            push_read_chunk (run);
          else
            pull_fetch (run);
          return;
        }
      /* The page is in batches: the last one completes the page's sequence. */
      run->last_page_bytes = run->page_bytes;
      run->page_bytes = 0;
      g_clear_pointer (&run->page_missing, g_ptr_array_unref);
      close_batch (run, run->page_seq);
      g_clear_pointer (&run->since, json_node_unref);
      run->since = g_steal_pointer (&run->page_seq);
    }
  if (g_queue_get_length (&run->batches) >= MAX_QUEUED)
    return;
  run->reader_busy = TRUE;
  if (run->push)
    on_store_changes (run);
  else
    pull_changes_request (run);
}

/* ---- the writer ------------------------------------------------------------------------ */

static void
emit_progress (Run *run)
{
  g_signal_emit (run->self, signals[SIGNAL_PROGRESS], 0, run->counts.docs_read,
                 run->counts.docs_written, run->counts.doc_write_failures, run->pending);
}

/* The batch is written (or refused): its plaintext leaves the cache, and the checkpoint moves
 * to the sequence of the newest batch that every earlier one has been written before. */
static void
batch_done (Batch *batch)
{
  Run *run = batch->run;

  for (guint i = 0; i < batch->docs->len; i++)
    {
      DocRef *ref = g_ptr_array_index (batch->docs, i);

      inflight_remove (run, ref);
      hb_sync_cache_mark_written (run->self->cache, ref->id, ref->rev);
      hb_sync_cache_remove (run->self->cache, ref->id, ref->rev);
    }
  if (batch->docs->len > 0)
    run->counts.batches++;
  batch->state = BATCH_DONE;
  while (!g_queue_is_empty (&run->writing)
         && ((Batch *)g_queue_peek_head (&run->writing))->state == BATCH_DONE)
    {
      Batch *first = g_queue_pop_head (&run->writing);

      if (first->seq != NULL)
        {
          g_clear_pointer (&run->checkpoint_seq, json_node_unref);
          run->checkpoint_seq = json_node_copy (first->seq);
        }
      batch_free (first);
    }
  emit_progress (run);
  checkpoint_step (run);
  writer_step (run);
  reader_step (run);
  maybe_finish (run);
}

static void
wipe_byte_array (gpointer data)
{
  GByteArray *array = data;

  hb_wipe (array->data, array->len);
  g_byte_array_unref (array);
}

static GBytes *
push_body (Run *run, Batch *batch)
{
  GByteArray *body = g_byte_array_sized_new ((guint)MIN (batch->bytes + 64, G_MAXUINT));
  static const char head[] = "{\"new_edits\":false,\"docs\":[";

  g_byte_array_append (body, (const guint8 *)head, sizeof head - 1);
  for (guint i = 0; i < batch->docs->len; i++)
    {
      DocRef *ref = g_ptr_array_index (batch->docs, i);
      g_autoptr (GBytes) text = hb_sync_cache_lookup (run->self->cache, ref->id, ref->rev);
      gsize len;
      const guint8 *data;

      if (text == NULL)
        {
          /* Only clear() takes unwritten entries: the cache was emptied under this run. */
          g_byte_array_unref (body);
          return NULL;
        }
      data = g_bytes_get_data (text, &len);
      if (i > 0)
        g_byte_array_append (body, (const guint8 *)",", 1);
      g_byte_array_append (body, data, (guint)len);
    }
  g_byte_array_append (body, (const guint8 *)"]}", 2);
  return g_bytes_new_with_free_func (body->data, body->len, wipe_byte_array, body);
}

/* 413: the batch is sent again as two halves, in its place in the source order. */
static void
split_batch (Batch *batch)
{
  Run *run = batch->run;
  Batch *second = batch_new (run);
  guint half = batch->docs->len / 2;

  /* The second half keeps the sequence: the page is complete only when both are written. */
  for (guint i = half; i < batch->docs->len; i++)
    {
      DocRef *ref = g_ptr_array_index (batch->docs, i);
      g_ptr_array_add (second->docs, doc_ref_new (ref->id, ref->rev));
    }
  g_ptr_array_set_size (batch->docs, half);
  second->seq = g_steal_pointer (&batch->seq);
  batch->state = BATCH_READY;
  second->state = BATCH_READY;
  g_queue_insert_after (&run->writing, g_queue_find (&run->writing, batch), second);
  writer_step (run);
}

static void
on_bulk_docs (GObject *source, GAsyncResult *result, gpointer data)
{
  Batch *batch = data;
  Run *run = batch->run;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) results = hb_remote_bulk_docs_finish (HB_REMOTE (source), result, &error);
  guint failed = 0;

  if (error != NULL && g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TOO_LARGE))
    {
      g_clear_error (&error);
      if (!op_end (run, NULL))
        return;
      if (batch->docs->len > 1)
        {
          split_batch (batch);
          return;
        }
      /* One document the server will never take: skipped and counted. */
      run->counts.doc_write_failures++;
      batch_done (batch);
      return;
    }
  if (error != NULL && hb_remote_error_is_transient (error))
    {
      if (op_end (run, NULL))
        schedule_retry (run, LANE_WRITER, &batch->attempts, batch, &error, writer_step);
      return;
    }
  if (!op_end (run, &error))
    return;
  for (guint i = 0; i < results->len; i++)
    {
      HbRemoteDocResult *r = g_ptr_array_index (results, i);

      if (r->error == NULL)
        continue;
      failed++;
      if (g_strcmp0 (r->error, "forbidden") == 0 || g_strcmp0 (r->error, "unauthorized") == 0)
        {
          run->counts.docs_denied++;
          g_signal_emit (run->self, signals[SIGNAL_DOCUMENT_DENIED], 0, r->id, r->rev, r->error,
                         r->reason);
        }
    }
  failed = MIN (failed, batch->docs->len);
  run->counts.doc_write_failures += failed;
  run->counts.docs_written += batch->docs->len - failed;
  batch_done (batch);
}

static void
push_write (Batch *batch)
{
  Run *run = batch->run;
  g_autoptr (GBytes) body = push_body (run, batch);

  if (body == NULL)
    {
      run_fail (run, g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                          "The sync cache was cleared during the replication"));
      maybe_finish (run);
      return;
    }
  op_begin (run);
  hb_remote_bulk_docs_async (run->self->remote, body, run->cancellable, on_bulk_docs, batch);
}

typedef struct
{
  HbStore *store;
  GPtrArray *texts; /* GBytes: plaintext copies from the cache, wiped when freed */
} PullWrite;

static void
pull_write_free (gpointer data)
{
  PullWrite *w = data;

  g_clear_object (&w->store);
  g_clear_pointer (&w->texts, g_ptr_array_unref);
  g_free (w);
}

/* In a worker thread: the batch's cached texts are sealed into the store in one transaction.
 * Nothing of it runs on the owner's main loop. */
static void
pull_write_thread (GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
  PullWrite *w = data;
  GError *error = NULL;
  GPtrArray *results;

  /* The cached texts as they are: the store reads each without building a tree, and a text it
   * cannot read is an error result, counted as a write failure. */
  results = hb_store_put_revisions_json_sync (w->store, w->texts, cancellable, &error);
  if (results == NULL)
    g_task_return_error (task, error);
  else
    g_task_return_pointer (task, results, (GDestroyNotify)g_ptr_array_unref);
}

static void
on_pull_written (GObject *source, GAsyncResult *result, gpointer data)
{
  Batch *batch = data;
  Run *run = batch->run;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) results = g_task_propagate_pointer (G_TASK (result), &error);
  guint failed = 0;

  if (!op_end (run, &error))
    return;
  for (guint i = 0; i < results->len; i++)
    {
      JsonNode *r = g_ptr_array_index (results, i);

      if (r == NULL || !JSON_NODE_HOLDS_OBJECT (r)
          || json_object_has_member (json_node_get_object (r), "error"))
        failed++;
    }
  failed = MIN (failed, batch->docs->len);
  run->counts.doc_write_failures += failed;
  run->counts.docs_written += batch->docs->len - failed;
  batch_done (batch);
}

static void
pull_write (Batch *batch)
{
  Run *run = batch->run;
  g_autoptr (GTask) task = NULL;
  PullWrite *w = g_new0 (PullWrite, 1);

  w->store = g_object_ref (run->self->store);
  w->texts = g_ptr_array_new_with_free_func ((GDestroyNotify)g_bytes_unref);
  for (guint i = 0; i < batch->docs->len; i++)
    {
      DocRef *ref = g_ptr_array_index (batch->docs, i);
      GBytes *text = hb_sync_cache_lookup (run->self->cache, ref->id, ref->rev);

      if (text == NULL)
        {
          pull_write_free (w);
          run_fail (run, g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                              "The sync cache was cleared during the replication"));
          maybe_finish (run);
          return;
        }
      g_ptr_array_add (w->texts, text);
    }
  task = g_task_new (NULL, run->cancellable, on_pull_written, batch);
  g_task_set_task_data (task, w, pull_write_free);
  /* The result is handled even when cancelled meanwhile: the transaction may have committed. */
  g_task_set_check_cancellable (task, FALSE);
  op_begin (run);
  g_task_run_in_thread (task, pull_write_thread);
}

static void
start_write (Batch *batch)
{
  batch->state = BATCH_SENDING;
  if (batch->docs->len == 0)
    {
      /* A page with nothing missing: only the checkpoint moves. */
      batch_done (batch);
      return;
    }
  if (batch->run->push)
    push_write (batch);
  else
    pull_write (batch);
}

/* Starts the writes there is room for: batches to send again first, then queued ones. */
static void
writer_step (Run *run)
{
  guint limit = run->push ? PUSH_WRITERS : 1;
  guint open = 0, sending = 0;

  if (run->error != NULL)
    return;
  for (GList *l = run->writing.head; l != NULL; l = l->next)
    {
      Batch *batch = l->data;

      open += batch->state != BATCH_DONE;
      sending += batch->state == BATCH_SENDING;
    }
  for (GList *l = run->writing.head; l != NULL && sending < limit; l = l->next)
    {
      Batch *batch = l->data;

      if (batch->state == BATCH_READY)
        {
          sending++;
          start_write (batch);
          /* A write that completed at once may have freed the list under this loop. */
          writer_step (run);
          return;
        }
    }
  if (open < limit && !g_queue_is_empty (&run->batches))
    {
      Batch *batch = g_queue_pop_head (&run->batches);

      g_queue_push_tail (&run->writing, batch);
      start_write (batch);
      writer_step (run);
    }
}

/* ---- starting a run -------------------------------------------------------------------- */

static JsonNode *
log_seq (JsonObject *log, const char *member)
{
  JsonNode *seq = log != NULL ? json_object_get_member (log, member) : NULL;

  return seq != NULL && !JSON_NODE_HOLDS_NULL (seq) ? json_node_copy (seq) : NULL;
}

/* Where to start, from the two replication logs (PROTOCOL.md point 3). */
static JsonNode *
compare_logs (JsonObject *source, JsonObject *target)
{
  const char *s_session, *t_session;
  JsonArray *s_history, *t_history;

  if (source == NULL || target == NULL)
    return NULL;
  s_session = json_object_get_string_member_with_default (source, "session_id", NULL);
  t_session = json_object_get_string_member_with_default (target, "session_id", NULL);
  if (s_session != NULL && g_strcmp0 (s_session, t_session) == 0)
    return log_seq (source, "source_last_seq");
  s_history = json_object_has_member (source, "history")
                      && JSON_NODE_HOLDS_ARRAY (json_object_get_member (source, "history"))
                  ? json_object_get_array_member (source, "history")
                  : NULL;
  t_history = json_object_has_member (target, "history")
                      && JSON_NODE_HOLDS_ARRAY (json_object_get_member (target, "history"))
                  ? json_object_get_array_member (target, "history")
                  : NULL;
  if (s_history == NULL || t_history == NULL)
    return NULL;
  for (guint i = 0; i < json_array_get_length (s_history); i++)
    {
      JsonNode *se = json_array_get_element (s_history, i);
      const char *sid;

      if (!JSON_NODE_HOLDS_OBJECT (se))
        continue;
      sid = json_object_get_string_member_with_default (json_node_get_object (se), "session_id",
                                                        NULL);
      for (guint j = 0; sid != NULL && j < json_array_get_length (t_history); j++)
        {
          JsonNode *te = json_array_get_element (t_history, j);

          if (JSON_NODE_HOLDS_OBJECT (te)
              && g_strcmp0 (sid, json_object_get_string_member_with_default (
                                     json_node_get_object (te), "session_id", NULL))
                     == 0)
            return log_seq (json_node_get_object (se), "recorded_seq");
        }
    }
  return NULL;
}

typedef struct
{
  JsonNode *local;
  JsonNode *remote;
  guint waiting;
} Logs;

static void
start_copying (Run *run, JsonObject *local_log, JsonObject *remote_log)
{
  JsonObject *source = run->push ? local_log : remote_log;
  JsonObject *target = run->push ? remote_log : local_log;

  if (local_log != NULL)
    run->local_log_rev
        = g_strdup (json_object_get_string_member_with_default (local_log, "_rev", NULL));
  if (remote_log != NULL)
    run->remote_log_rev
        = g_strdup (json_object_get_string_member_with_default (remote_log, "_rev", NULL));
  run->since = compare_logs (source, target);
  if (run->push && run->since != NULL
      && (!JSON_NODE_HOLDS_VALUE (run->since)
          || json_node_get_value_type (run->since) != G_TYPE_INT64))
    g_clear_pointer (&run->since, json_node_unref);
  if (source != NULL)
    run->source_log = json_object_ref (source);
  run->start_seq
      = run->since != NULL ? json_node_copy (run->since) : json_node_new (JSON_NODE_NULL);
  if (run->push && run->since == NULL)
    {
      run->since = json_node_new (JSON_NODE_VALUE);
      json_node_set_int (run->since, 0);
    }
  run->recorded_seq = run->since != NULL ? json_node_copy (run->since) : NULL;
  run->checkpoint_seq = run->since != NULL ? json_node_copy (run->since) : NULL;
  reader_step (run);
}

static Logs *
logs_of (Run *run)
{
  return g_object_get_data (G_OBJECT (run->task), "logs");
}

static void
logs_arrived (Run *run)
{
  Logs *logs = logs_of (run);

  if (--logs->waiting > 0)
    return;
  start_copying (run,
                 logs->local != NULL && JSON_NODE_HOLDS_OBJECT (logs->local)
                     ? json_node_get_object (logs->local)
                     : NULL,
                 logs->remote != NULL && JSON_NODE_HOLDS_OBJECT (logs->remote)
                     ? json_node_get_object (logs->remote)
                     : NULL);
}

static void
on_local_log (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  JsonNode *doc = hb_store_get_local_finish (HB_STORE (source), result, &error);

  if (error != NULL && g_error_matches (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND))
    g_clear_error (&error);
  if (!op_end (run, &error))
    {
      g_clear_pointer (&doc, json_node_unref);
      return;
    }
  logs_of (run)->local = doc;
  logs_arrived (run);
}

static void read_remote_log (Run *run);

static void
on_remote_log (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  JsonNode *doc = hb_remote_get_local_finish (HB_REMOTE (source), result, &error);

  if (error != NULL && hb_remote_error_is_transient (error))
    {
      if (op_end (run, NULL))
        retry_or_fail (run, LANE_CHECKPOINT, &error, read_remote_log);
      return;
    }
  if (!op_end (run, &error))
    {
      g_clear_pointer (&doc, json_node_unref);
      return;
    }
  logs_of (run)->remote = doc;
  logs_arrived (run);
}

static void
read_remote_log (Run *run)
{
  op_begin (run);
  hb_remote_get_local_async (run->self->remote, run->local_id, run->cancellable, on_remote_log,
                             run);
}

static void
logs_free (gpointer data)
{
  Logs *logs = data;

  g_clear_pointer (&logs->local, json_node_unref);
  g_clear_pointer (&logs->remote, json_node_unref);
  g_free (logs);
}

static void
read_logs (Run *run)
{
  Logs *logs = g_new0 (Logs, 1);

  logs->waiting = 2;
  g_object_set_data_full (G_OBJECT (run->task), "logs", logs, logs_free);
  op_begin (run);
  hb_store_get_local_async (run->self->store, run->local_id, run->cancellable, on_local_log, run);
  read_remote_log (run);
}

/* The replication id: a hash of everything that makes this replication this one. */
static char *
replication_id (HbReplicator *self)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) root = NULL;
  g_autofree char *text = NULL;
  gsize len;
  guint8 digest[32];
  GString *hex = g_string_sized_new (33);

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "version");
  json_builder_add_int_value (b, REPLICATION_ID_VERSION);
  json_builder_set_member_name (b, "local");
  json_builder_add_string_value (b, hb_store_get_uuid (self->store));
  json_builder_set_member_name (b, "remote");
  json_builder_add_string_value (b, hb_remote_get_url (self->remote));
  json_builder_set_member_name (b, "direction");
  json_builder_add_string_value (b, self->direction == HB_REPLICATION_DIRECTION_PUSH ? "push"
                                                                                     : "pull");
  json_builder_set_member_name (b, "filter");
  json_builder_begin_object (b);
  if (self->doc_ids != NULL)
    {
      g_autoptr (GPtrArray) sorted = g_ptr_array_new ();

      for (guint i = 0; self->doc_ids[i] != NULL; i++)
        g_ptr_array_add (sorted, self->doc_ids[i]);
      g_ptr_array_sort (sorted, compare_strings);
      json_builder_set_member_name (b, "doc_ids");
      json_builder_begin_array (b);
      for (guint i = 0; i < sorted->len; i++)
        if (i == 0 || strcmp (sorted->pdata[i], sorted->pdata[i - 1]) != 0)
          json_builder_add_string_value (b, sorted->pdata[i]);
      json_builder_end_array (b);
    }
  if (self->session_id != NULL)
    {
      json_builder_set_member_name (b, "session_id");
      json_builder_add_string_value (b, self->session_id);
    }
  json_builder_end_object (b);
  json_builder_end_object (b);
  root = json_builder_get_root (b);
  /* Canonical: sorted members, no white space, so the id never changes by accident. */
  text = hb_json_to_canonical (root, &len);
  hb_sha256 ((const guint8 *)text, len, digest);
  for (guint i = 0; i < 16; i++)
    g_string_append_printf (hex, "%02x", digest[i]);
  return g_string_free (hex, FALSE);
}

/* Session filter: the session document, its patient, and everything whose session_id is it. */
static void
on_session_docs (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) found = hb_store_find_finish (HB_STORE (source), result, &error);

  if (!op_end (run, &error))
    return;
  for (guint i = 0; i < found->len; i++)
    {
      JsonNode *doc = g_ptr_array_index (found, i);
      const char *id;

      if (!JSON_NODE_HOLDS_OBJECT (doc))
        continue;
      id = json_object_get_string_member_with_default (json_node_get_object (doc), "_id", NULL);
      if (id != NULL)
        g_hash_table_add (run->filter_ids, g_strdup (id));
    }
  read_logs (run);
}

static void
session_filter_ready (Run *run, const char *patient_id)
{
  HbReplicator *self = run->self;

  if (run->push)
    {
      run->filter_ids = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
      g_hash_table_add (run->filter_ids, g_strdup (self->session_id));
      if (patient_id != NULL)
        g_hash_table_add (run->filter_ids, g_strdup (patient_id));
      op_begin (run);
      hb_store_find_async (self->store, HB_INDEX_FIELD_SESSION_ID, self->session_id,
                           run->cancellable, on_session_docs, run);
      return;
    }
  {
    g_autoptr (JsonBuilder) b = json_builder_new ();

    json_builder_begin_object (b);
    json_builder_set_member_name (b, "$or");
    json_builder_begin_array (b);
    json_builder_begin_object (b);
    json_builder_set_member_name (b, "_id");
    json_builder_add_string_value (b, self->session_id);
    json_builder_end_object (b);
    json_builder_begin_object (b);
    json_builder_set_member_name (b, "session_id");
    json_builder_add_string_value (b, self->session_id);
    json_builder_end_object (b);
    if (patient_id != NULL)
      {
        json_builder_begin_object (b);
        json_builder_set_member_name (b, "_id");
        json_builder_add_string_value (b, patient_id);
        json_builder_end_object (b);
      }
    json_builder_end_array (b);
    json_builder_end_object (b);
    run->selector = json_builder_get_root (b);
  }
  read_logs (run);
}

static const char *
patient_of (JsonNode *doc)
{
  if (doc == NULL || !JSON_NODE_HOLDS_OBJECT (doc))
    return NULL;
  return json_object_get_string_member_with_default (json_node_get_object (doc), "patient_id",
                                                     NULL);
}

static void
on_remote_session (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) bytes = hb_remote_request_finish (HB_REMOTE (source), result, NULL, &error);
  g_autoptr (JsonNode) doc = NULL;

  if (error != NULL && g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NOT_FOUND))
    g_clear_error (&error);
  if (!op_end (run, &error))
    return;
  if (bytes != NULL)
    doc = hb_remote_parse_document (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes), NULL);
  session_filter_ready (run, patient_of (doc));
}

static void
on_local_session (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = hb_store_get_finish (HB_STORE (source), result, &error);
  g_autofree char *escaped = NULL;

  if (error != NULL && g_error_matches (error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND))
    g_clear_error (&error);
  if (!op_end (run, &error))
    return;
  if (doc != NULL || run->push)
    {
      session_filter_ready (run, patient_of (doc));
      return;
    }
  /* Pulling a session this workstation has never seen: ask the server for its patient. */
  escaped = g_uri_escape_string (run->self->session_id, NULL, FALSE);
  op_begin (run);
  hb_remote_request_async (run->self->remote, "GET", escaped, NULL, run->cancellable,
                           on_remote_session, run);
}

static void
prepare_filters (Run *run)
{
  HbReplicator *self = run->self;

  if (self->session_id != NULL)
    {
      op_begin (run);
      hb_store_get_async (self->store, self->session_id, NULL, HB_GET_FLAGS_NONE, run->cancellable,
                          on_local_session, run);
      return;
    }
  if (self->doc_ids != NULL)
    {
      if (run->push)
        {
          run->filter_ids = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
          for (guint i = 0; self->doc_ids[i] != NULL; i++)
            g_hash_table_add (run->filter_ids, g_strdup (self->doc_ids[i]));
        }
      else
        run->pull_doc_ids = g_strdupv (self->doc_ids);
    }
  read_logs (run);
}

static void
on_created (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;

  hb_remote_create_database_finish (HB_REMOTE (source), result, &error);
  if (!op_end (run, &error))
    return;
  run->target_empty = TRUE;
  prepare_filters (run);
}

static void check_remote (Run *run);

static void
on_remote_info (GObject *source, GAsyncResult *result, gpointer data)
{
  Run *run = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = hb_remote_get_info_finish (HB_REMOTE (source), result, &error);

  if (error != NULL && g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NOT_FOUND)
      && run->push && run->self->create_target)
    {
      g_clear_error (&error);
      if (!op_end (run, NULL))
        return;
      op_begin (run);
      hb_remote_create_database_async (run->self->remote, run->cancellable, on_created, run);
      return;
    }
  if (error != NULL && hb_remote_error_is_transient (error))
    {
      if (op_end (run, NULL))
        retry_or_fail (run, LANE_READER, &error, check_remote);
      return;
    }
  if (!op_end (run, &error))
    return;
  run->target_empty = run->push && info->doc_count == 0;
  prepare_filters (run);
}

static void
check_remote (Run *run)
{
  op_begin (run);
  hb_remote_get_info_async (run->self->remote, run->cancellable, on_remote_info, run);
}

static void
on_caller_cancelled (GCancellable *cancellable, gpointer data)
{
  Run *run = data;

  /* May run in another thread: GCancellable is thread-safe, the rest waits for callbacks. */
  g_cancellable_cancel (run->cancellable);
}

/**
 * hb_replicator_run_async:
 * @self: a replicator
 * @cancellable: (nullable): cancels the run; what it wrote by then is still checkpointed (if
 *   the peers answer within a few seconds), and the next run resumes from there
 * @callback: (scope async): called on the caller's context when the run ends
 * @user_data: data for @callback
 *
 * Runs the replication once: every change of the source since the last checkpoint is copied
 * to the target, and the run ends at the end of the source's changes feed. Signals are emitted
 * and @callback is called on the thread-default main context of the caller. One run at a time.
 */
void
hb_replicator_run_async (HbReplicator *self,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data)
{
  Run *run;
  GTask *task;

  g_return_if_fail (HB_IS_REPLICATOR (self));

  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, hb_replicator_run_async);
  if (self->running)
    {
      g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_BUSY,
                               "This replication is already running");
      g_object_unref (task);
      return;
    }
  run = g_new0 (Run, 1);
  run->self = g_object_ref (self);
  run->task = task;
  run->push = self->direction == HB_REPLICATION_DIRECTION_PUSH;
  run->store_empty = !run->push && hb_store_get_update_seq (self->store) == 0;
  run->inline_docs = run->store_empty && self->feed_documents;
  run->cancellable = g_cancellable_new ();
  run->checkpoint_cancellable = g_cancellable_new ();
  g_task_set_task_data (task, run, (GDestroyNotify)run_free);
  if (cancellable != NULL)
    {
      run->caller_cancellable = g_object_ref (cancellable);
      run->cancelled_id
          = g_cancellable_connect (cancellable, G_CALLBACK (on_caller_cancelled), run, NULL);
    }
  run->rep_id = replication_id (self);
  run->local_id = g_strconcat ("_local/", run->rep_id, NULL);
  run->session = hb_random_uuid ();
  run->start_time = http_date_now ();
  run->pending = -1;
  g_queue_init (&run->batches);
  run->inflight = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  self->running = TRUE;
  set_state (self, HB_REPLICATOR_STATE_RUNNING);
  check_remote (run);
}

/**
 * hb_replicator_run_finish:
 * @self: a replicator
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): what the run did, or %NULL with @error set; the counts of a failed
 *   run are in hb_replicator_get_last_result()
 */
HbReplicationResult *
hb_replicator_run_finish (HbReplicator *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}

/**
 * hb_replicator_get_last_result:
 * @self: a replicator
 *
 * Returns: (transfer full) (nullable): the counts of the last run that ended, whether it
 *   completed, failed or was cancelled
 */
HbReplicationResult *
hb_replicator_get_last_result (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), NULL);
  return self->last_result != NULL ? hb_replication_result_copy (self->last_result) : NULL;
}

/**
 * hb_replicator_get_replication_id:
 * @self: a replicator
 *
 * The replication id: a hash of the store's UUID, the server URL without credentials, the
 * direction and the filter, canonically serialized. Its checkpoints are `_local/<id>` on both
 * sides.
 *
 * Returns: (transfer full): the replication id
 */
char *
hb_replicator_get_replication_id (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), NULL);
  return replication_id (self);
}

/* ---- object ---------------------------------------------------------------------------- */

/**
 * hb_replicator_new:
 * @store: the local store
 * @remote: the server's database
 * @cache: the plaintext cache documents pass through
 * @direction: push or pull
 *
 * Returns: (transfer full): a new replicator
 */
HbReplicator *
hb_replicator_new (HbStore *store,
                   HbRemote *remote,
                   HbSyncCache *cache,
                   HbReplicationDirection direction)
{
  g_return_val_if_fail (HB_IS_STORE (store), NULL);
  g_return_val_if_fail (HB_IS_REMOTE (remote), NULL);
  g_return_val_if_fail (HB_IS_SYNC_CACHE (cache), NULL);

  return g_object_new (HB_TYPE_REPLICATOR, "store", store, "remote", remote, "cache", cache,
                       "direction", direction, NULL);
}

/**
 * hb_replicator_get_direction:
 * @self: a replicator
 *
 * Returns: push or pull
 */
HbReplicationDirection
hb_replicator_get_direction (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), HB_REPLICATION_DIRECTION_PUSH);
  return self->direction;
}

/**
 * hb_replicator_get_state:
 * @self: a replicator
 *
 * Returns: the replicator's state
 */
HbReplicatorState
hb_replicator_get_state (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), HB_REPLICATOR_STATE_IDLE);
  return self->state;
}

/**
 * hb_replicator_get_batch_size:
 * @self: a replicator
 *
 * Returns: the most revisions in one batch
 */
guint
hb_replicator_get_batch_size (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), 0);
  return self->batch_size;
}

/**
 * hb_replicator_set_batch_size:
 * @self: a replicator
 * @batch_size: the most revisions in one batch (and changes read at a time), at least 1
 *
 * Sets #HbReplicator:batch-size; takes effect at the next run.
 */
void
hb_replicator_set_batch_size (HbReplicator *self, guint batch_size)
{
  g_return_if_fail (HB_IS_REPLICATOR (self));
  g_return_if_fail (batch_size > 0);
  if (self->batch_size == batch_size)
    return;
  self->batch_size = batch_size;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_BATCH_SIZE]);
}

/**
 * hb_replicator_get_batch_bytes:
 * @self: a replicator
 *
 * Returns: the most plaintext bytes in one batch
 */
guint64
hb_replicator_get_batch_bytes (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), 0);
  return self->batch_bytes;
}

/**
 * hb_replicator_set_batch_bytes:
 * @self: a replicator
 * @batch_bytes: the most plaintext bytes in one batch; a single larger revision still goes,
 *   alone
 *
 * Sets #HbReplicator:batch-bytes.
 */
void
hb_replicator_set_batch_bytes (HbReplicator *self, guint64 batch_bytes)
{
  g_return_if_fail (HB_IS_REPLICATOR (self));
  g_return_if_fail (batch_bytes > 0);
  if (self->batch_bytes == batch_bytes)
    return;
  self->batch_bytes = batch_bytes;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_BATCH_BYTES]);
}

/**
 * hb_replicator_get_doc_ids:
 * @self: a replicator
 *
 * Returns: (transfer none) (nullable) (array zero-terminated=1): the document ids replicated,
 *   or %NULL for all
 */
const char *const *
hb_replicator_get_doc_ids (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), NULL);
  return (const char *const *)self->doc_ids;
}

/**
 * hb_replicator_set_doc_ids:
 * @self: a replicator
 * @doc_ids: (nullable) (array zero-terminated=1): only these documents, or %NULL for all
 *
 * Sets #HbReplicator:doc-ids. A filter is part of the replication id: each filter has its own
 * checkpoints.
 */
void
hb_replicator_set_doc_ids (HbReplicator *self, const char *const *doc_ids)
{
  g_return_if_fail (HB_IS_REPLICATOR (self));
  g_strfreev (self->doc_ids);
  self->doc_ids = g_strdupv ((char **)doc_ids);
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_DOC_IDS]);
}

/**
 * hb_replicator_get_session_id:
 * @self: a replicator
 *
 * Returns: (nullable): the clinical session replicated, or %NULL
 */
const char *
hb_replicator_get_session_id (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), NULL);
  return self->session_id;
}

/**
 * hb_replicator_set_session_id:
 * @self: a replicator
 * @session_id: (nullable): a session document's id (`session:<uuid>`), or %NULL
 *
 * Sets #HbReplicator:session-id: only that session document, its observations and notes
 * (documents whose `session_id` is it) and its patient are replicated.
 */
void
hb_replicator_set_session_id (HbReplicator *self, const char *session_id)
{
  g_return_if_fail (HB_IS_REPLICATOR (self));
  if (g_strcmp0 (self->session_id, session_id) == 0)
    return;
  g_free (self->session_id);
  self->session_id = g_strdup (session_id);
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_SESSION_ID]);
}

/**
 * hb_replicator_get_create_target:
 * @self: a replicator
 *
 * Returns: whether a push creates a missing server database
 */
gboolean
hb_replicator_get_create_target (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), FALSE);
  return self->create_target;
}

/**
 * hb_replicator_set_create_target:
 * @self: a replicator
 * @create_target: whether a push creates a missing server database
 *
 * Sets #HbReplicator:create-target.
 */
void
hb_replicator_set_create_target (HbReplicator *self, gboolean create_target)
{
  g_return_if_fail (HB_IS_REPLICATOR (self));
  create_target = !!create_target;
  if (self->create_target == create_target)
    return;
  self->create_target = create_target;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_CREATE_TARGET]);
}

/**
 * hb_replicator_get_feed_documents:
 * @self: a replicator
 *
 * Returns: whether a pull may take revisions from the changes feed itself
 */
gboolean
hb_replicator_get_feed_documents (HbReplicator *self)
{
  g_return_val_if_fail (HB_IS_REPLICATOR (self), FALSE);
  return self->feed_documents;
}

/**
 * hb_replicator_set_feed_documents:
 * @self: a replicator
 * @feed_documents: whether a pull may take revisions from the changes feed itself
 *
 * Sets #HbReplicator:feed-documents. Takes effect from the next run.
 */
void
hb_replicator_set_feed_documents (HbReplicator *self, gboolean feed_documents)
{
  g_return_if_fail (HB_IS_REPLICATOR (self));
  feed_documents = !!feed_documents;
  if (self->feed_documents == feed_documents)
    return;
  self->feed_documents = feed_documents;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_FEED_DOCUMENTS]);
}

static void
hb_replicator_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  HbReplicator *self = HB_REPLICATOR (object);

  switch (prop_id)
    {
      case PROP_STORE:
        g_value_set_object (value, self->store);
        break;
      case PROP_REMOTE:
        g_value_set_object (value, self->remote);
        break;
      case PROP_CACHE:
        g_value_set_object (value, self->cache);
        break;
      case PROP_DIRECTION:
        g_value_set_enum (value, self->direction);
        break;
      case PROP_STATE:
        g_value_set_enum (value, self->state);
        break;
      case PROP_BATCH_SIZE:
        g_value_set_uint (value, self->batch_size);
        break;
      case PROP_BATCH_BYTES:
        g_value_set_uint64 (value, self->batch_bytes);
        break;
      case PROP_DOC_IDS:
        g_value_set_boxed (value, self->doc_ids);
        break;
      case PROP_SESSION_ID:
        g_value_set_string (value, self->session_id);
        break;
      case PROP_FEED_DOCUMENTS:
        g_value_set_boolean (value, self->feed_documents);
        break;
      case PROP_CREATE_TARGET:
        g_value_set_boolean (value, self->create_target);
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_replicator_set_property (GObject *object, guint prop_id, const GValue *value, GParamSpec *pspec)
{
  HbReplicator *self = HB_REPLICATOR (object);

  switch (prop_id)
    {
      case PROP_STORE:
        self->store = g_value_dup_object (value);
        break;
      case PROP_REMOTE:
        self->remote = g_value_dup_object (value);
        break;
      case PROP_CACHE:
        self->cache = g_value_dup_object (value);
        break;
      case PROP_DIRECTION:
        self->direction = g_value_get_enum (value);
        break;
      case PROP_BATCH_SIZE:
        hb_replicator_set_batch_size (self, g_value_get_uint (value));
        break;
      case PROP_BATCH_BYTES:
        hb_replicator_set_batch_bytes (self, g_value_get_uint64 (value));
        break;
      case PROP_DOC_IDS:
        hb_replicator_set_doc_ids (self, g_value_get_boxed (value));
        break;
      case PROP_SESSION_ID:
        hb_replicator_set_session_id (self, g_value_get_string (value));
        break;
      case PROP_FEED_DOCUMENTS:
        hb_replicator_set_feed_documents (self, g_value_get_boolean (value));
        break;
      case PROP_CREATE_TARGET:
        hb_replicator_set_create_target (self, g_value_get_boolean (value));
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_replicator_dispose (GObject *object)
{
  HbReplicator *self = HB_REPLICATOR (object);

  g_clear_object (&self->store);
  g_clear_object (&self->remote);
  g_clear_object (&self->cache);
  G_OBJECT_CLASS (hb_replicator_parent_class)->dispose (object);
}

static void
hb_replicator_finalize (GObject *object)
{
  HbReplicator *self = HB_REPLICATOR (object);

  g_strfreev (self->doc_ids);
  g_free (self->session_id);
  g_clear_pointer (&self->last_result, hb_replication_result_free);
  G_OBJECT_CLASS (hb_replicator_parent_class)->finalize (object);
}

static void
hb_replicator_class_init (HbReplicatorClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->get_property = hb_replicator_get_property;
  object_class->set_property = hb_replicator_set_property;
  object_class->dispose = hb_replicator_dispose;
  object_class->finalize = hb_replicator_finalize;

  /**
   * HbReplicator:store:
   *
   * The local store.
   */
  properties[PROP_STORE]
      = g_param_spec_object ("store", NULL, NULL, HB_TYPE_STORE,
                             G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:remote:
   *
   * The server's database.
   */
  properties[PROP_REMOTE]
      = g_param_spec_object ("remote", NULL, NULL, HB_TYPE_REMOTE,
                             G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:cache:
   *
   * The bounded plaintext cache every document passes through.
   */
  properties[PROP_CACHE]
      = g_param_spec_object ("cache", NULL, NULL, HB_TYPE_SYNC_CACHE,
                             G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:direction:
   *
   * Push or pull.
   */
  properties[PROP_DIRECTION] = g_param_spec_enum (
      "direction", NULL, NULL, HB_TYPE_REPLICATION_DIRECTION, HB_REPLICATION_DIRECTION_PUSH,
      G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:state:
   *
   * Where the replicator is.
   */
  properties[PROP_STATE]
      = g_param_spec_enum ("state", NULL, NULL, HB_TYPE_REPLICATOR_STATE, HB_REPLICATOR_STATE_IDLE,
                           G_PARAM_READABLE | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:batch-size:
   *
   * The most revisions in one batch.
   */
  properties[PROP_BATCH_SIZE] = g_param_spec_uint (
      "batch-size", NULL, NULL, 1, 100000, DEFAULT_BATCH_SIZE,
      G_PARAM_READWRITE | G_PARAM_CONSTRUCT | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:batch-bytes:
   *
   * The most plaintext bytes in one batch.
   */
  properties[PROP_BATCH_BYTES] = g_param_spec_uint64 (
      "batch-bytes", NULL, NULL, 1, G_MAXUINT64, DEFAULT_BATCH_BYTES,
      G_PARAM_READWRITE | G_PARAM_CONSTRUCT | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:doc-ids:
   *
   * Only these documents, or %NULL for all.
   */
  properties[PROP_DOC_IDS]
      = g_param_spec_boxed ("doc-ids", NULL, NULL, G_TYPE_STRV,
                            G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:session-id:
   *
   * Only this clinical session's documents, or %NULL.
   */
  properties[PROP_SESSION_ID]
      = g_param_spec_string ("session-id", NULL, NULL, NULL,
                             G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:create-target:
   *
   * Whether a push creates a missing server database.
   */
  properties[PROP_CREATE_TARGET]
      = g_param_spec_boolean ("create-target", NULL, NULL, FALSE,
                              G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbReplicator:feed-documents:
   *
   * Whether a pull may read documents with the changes feed (`include_docs=true`) and take
   * from it the revisions it needs that are first revisions and their document's only leaf,
   * instead of asking `_bulk_get` for them. Such a revision has no history beyond itself, so
   * the feed's copy is the whole of it; any other revision is still read with `_bulk_get`.
   * A server answers the feed with documents for much less work than the same documents
   * through `_bulk_get`. The replicator turns it off by itself for pages whose documents the
   * store already holds (at least half of a page's rows unused) and on again when at least
   * half of a page's rows are missing first revisions; a pull into an empty store starts with
   * it on. A page's documents wait outside the sync cache until they are placed, as a page
   * fetched ahead does, so the feed carries them only while the cache has room for two more
   * pages. Off, every revision is read with `_bulk_get` as in CouchDB's own replicator.
   */
  properties[PROP_FEED_DOCUMENTS]
      = g_param_spec_boolean ("feed-documents", NULL, NULL, TRUE,
                              G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  g_object_class_install_properties (object_class, N_PROPS, properties);

  /**
   * HbReplicator::state-changed:
   * @self: the replicator
   * @state: the new state
   *
   * Emitted on the run's main context when #HbReplicator:state changes.
   */
  signals[SIGNAL_STATE_CHANGED]
      = g_signal_new ("state-changed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL,
                      NULL, G_TYPE_NONE, 1, HB_TYPE_REPLICATOR_STATE);
  /**
   * HbReplicator::progress:
   * @self: the replicator
   * @docs_read: revisions read from the source so far in this run
   * @docs_written: revisions written to the target
   * @doc_write_failures: revisions refused or unreadable
   * @pending: changes the source still has after what was read, -1 when it did not say
   *
   * Emitted after each batch.
   */
  signals[SIGNAL_PROGRESS]
      = g_signal_new ("progress", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 4, G_TYPE_UINT64, G_TYPE_UINT64, G_TYPE_UINT64, G_TYPE_INT64);
  /**
   * HbReplicator::document-denied:
   * @self: the replicator
   * @id: (nullable): the document's id
   * @rev: (nullable): the revision, when the server named it
   * @error: the server's error (`forbidden` or `unauthorized`)
   * @reason: (nullable): the server's reason
   *
   * Emitted when the server refuses one document. The replication goes on.
   */
  signals[SIGNAL_DOCUMENT_DENIED] = g_signal_new (
      "document-denied", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
      G_TYPE_NONE, 4, G_TYPE_STRING, G_TYPE_STRING, G_TYPE_STRING, G_TYPE_STRING);
}

static void
hb_replicator_init (HbReplicator *self)
{
  self->batch_size = DEFAULT_BATCH_SIZE;
  self->feed_documents = TRUE;
  self->batch_bytes = DEFAULT_BATCH_BYTES;
}
