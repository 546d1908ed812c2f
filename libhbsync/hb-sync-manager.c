/* HbSyncManager: what the application uses. Two replicators (pull and push) over one remote and
 * one cache, run again whenever there is something to move:
 *
 *   pull  after a longpoll `_changes` answers with rows (the feed is watched continuously)
 *   push  after the store emits `changed` and stays quiet for push-debounce-ms
 *
 * A failed run is retried after an exponential backoff with jitter, capped; an authentication
 * failure is not retried until the credentials change. The status is derived from facts, never
 * guessed: offline is a network that cannot reach the server, auth-failed a 401/403, error
 * anything else, and up-to-date only when both directions completed and both pending counts are
 * zero. Every signal and notification is emitted on the main context that created the manager. */

#include <string.h>

#include "hb-enums.h"
#include "hb-remote-parse-private.h"
#include "hb-sync-manager.h"

const char *_hb_sync_config_peek_secret (HbSyncConfig *self);

struct _HbSyncManager
{
  GObject parent_instance;

  HbStore *store;
  HbSyncConfig *config;
  HbRemote *remote;
  HbSyncCache *cache;
  HbReplicator *push;
  HbReplicator *pull;
  GNetworkMonitor *monitor;

  HbSyncStatus status;
  gint64 pending_push;
  gint64 pending_pull;
  gint64 last_sync_time;
  char *last_error;
  HbConflictStrategy strategy;

  gboolean started;
  GCancellable *cancellable; /* everything start() began; replaced by stop() */
  gboolean push_running, pull_running;
  gboolean push_again, pull_again;
  gboolean push_done, pull_done; /* the last run of each direction completed */
  gboolean offline, auth_failed, failed;
  guint failures;
  guint pending_push_serial; /* the newest count of pending-push asked for */
  guint debounce_id;
  guint retry_id;
  gboolean longpoll_running;
  JsonNode *pull_seq;     /* where the pull's checkpoint is, for the longpoll */
  guint64 pull_start_seq; /* the store's sequence when the running pull began */
  char *instance_start_time;
  gulong store_changed_id;
  gulong network_changed_id;
  GHashTable *sessions; /* id → HbSessionSyncStatus */
};

G_DEFINE_FINAL_TYPE (HbSyncManager, hb_sync_manager, G_TYPE_OBJECT)

enum
{
  PROP_0,
  PROP_STORE,
  PROP_CONFIG,
  PROP_STATUS,
  PROP_PENDING_PUSH,
  PROP_PENDING_PULL,
  PROP_LAST_SYNC_TIME,
  PROP_LAST_ERROR,
  PROP_CONFLICT_STRATEGY,
  N_PROPS
};

static GParamSpec *properties[N_PROPS];

enum
{
  SIGNAL_STATUS_CHANGED,
  SIGNAL_SESSION_STATUS_CHANGED,
  SIGNAL_TOKEN_NEEDED,
  SIGNAL_CONFLICT,
  N_SIGNALS
};

static guint signals[N_SIGNALS];

static void run_pull (HbSyncManager *self);
static void run_push (HbSyncManager *self);
static void start_longpoll (HbSyncManager *self);

/* ---- diagnostics boxed type ------------------------------------------------------------ */

/**
 * hb_sync_diagnostics_copy:
 * @diagnostics: diagnostics
 *
 * Returns: (transfer full): a copy
 */
HbSyncDiagnostics *
hb_sync_diagnostics_copy (const HbSyncDiagnostics *diagnostics)
{
  HbSyncDiagnostics *copy = g_new (HbSyncDiagnostics, 1);

  *copy = *diagnostics;
  copy->last_error = g_strdup (diagnostics->last_error);
  copy->detail = g_strdup (diagnostics->detail);
  return copy;
}

/**
 * hb_sync_diagnostics_free:
 * @diagnostics: (nullable): diagnostics
 *
 * Frees @diagnostics.
 */
void
hb_sync_diagnostics_free (HbSyncDiagnostics *diagnostics)
{
  if (diagnostics == NULL)
    return;
  g_free (diagnostics->last_error);
  g_free (diagnostics->detail);
  g_free (diagnostics);
}

G_DEFINE_BOXED_TYPE (HbSyncDiagnostics,
                     hb_sync_diagnostics,
                     hb_sync_diagnostics_copy,
                     hb_sync_diagnostics_free)

/* ---- status ---------------------------------------------------------------------------- */

static void update_status (HbSyncManager *self);

static void
set_pending (HbSyncManager *self, gint64 *field, gint64 value, guint prop)
{
  if (*field == value)
    return;
  *field = value;
  /* A count that is no longer zero ends up-to-date before anyone hears of the count: nobody
   * sees UP_TO_DATE beside work pending. */
  if (value != 0)
    update_status (self);
  g_object_notify_by_pspec (G_OBJECT (self), properties[prop]);
}

static void
set_last_error (HbSyncManager *self, const char *message)
{
  if (g_strcmp0 (self->last_error, message) == 0)
    return;
  g_free (self->last_error);
  self->last_error = g_strdup (message);
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_LAST_ERROR]);
}

static void
update_status (HbSyncManager *self)
{
  HbSyncStatus status;

  if (!self->started)
    status = HB_SYNC_STATUS_DISABLED;
  else if (self->auth_failed)
    status = HB_SYNC_STATUS_AUTH_FAILED;
  else if (self->offline)
    status = HB_SYNC_STATUS_OFFLINE;
  else if (self->failed)
    status = HB_SYNC_STATUS_ERROR;
  else if (self->push_running || self->pull_running)
    status = HB_SYNC_STATUS_SYNCING;
  else if (!self->push_done || !self->pull_done)
    status = HB_SYNC_STATUS_CONNECTING;
  else if (self->pending_push == 0 && self->pending_pull == 0)
    status = HB_SYNC_STATUS_UP_TO_DATE;
  else
    status = HB_SYNC_STATUS_SYNCING;

  if (status == self->status)
    return;
  self->status = status;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_STATUS]);
  g_signal_emit (self, signals[SIGNAL_STATUS_CHANGED], 0, status);
}

/* ---- pending counts -------------------------------------------------------------------- */

typedef struct
{
  char *checkpoint_id;
} PendingArgs;

static void
pending_args_free (gpointer data)
{
  PendingArgs *args = data;

  g_free (args->checkpoint_id);
  g_free (args);
}

/* Counts the store's changes after the push checkpoint: documents the server has not had. */
static void
pending_push_thread (GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
  HbSyncManager *self = source;
  PendingArgs *args = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) log
      = hb_store_get_local_sync (self->store, args->checkpoint_id, cancellable, &error);
  g_autoptr (JsonNode) changes = NULL;
  guint64 since = 0;
  JsonObject *obj;
  gint64 count;

  if (log != NULL && JSON_NODE_HOLDS_OBJECT (log))
    {
      JsonNode *seq = json_object_get_member (json_node_get_object (log), "source_last_seq");

      if (seq != NULL && JSON_NODE_HOLDS_VALUE (seq)
          && json_node_get_value_type (seq) == G_TYPE_INT64)
        since = (guint64)json_node_get_int (seq);
    }
  g_clear_error (&error);
  changes = hb_store_changes_sync (self->store, since, 1, cancellable, &error);
  if (changes == NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  obj = json_node_get_object (changes);
  count = (gint64)json_array_get_length (json_object_get_array_member (obj, "results"))
          + json_object_get_int_member_with_default (obj, "pending", 0);
  g_task_return_int (task, count);
}

static void
on_pending_push (GObject *source, GAsyncResult *result, gpointer data)
{
  HbSyncManager *self = HB_SYNC_MANAGER (source);
  g_autoptr (GError) error = NULL;
  gssize count = g_task_propagate_int (G_TASK (result), &error);

  /* Counts run in worker threads and may end in any order: an older one would overwrite a
   * newer one with a stale count (and leave the status SYNCING with nothing left to do). */
  if (GPOINTER_TO_UINT (data) != self->pending_push_serial)
    return;
  if (error == NULL)
    set_pending (self, &self->pending_push, count, PROP_PENDING_PUSH);
  update_status (self);
}

static void
refresh_pending_push (HbSyncManager *self)
{
  g_autoptr (GTask) task
      = g_task_new (self, NULL, on_pending_push, GUINT_TO_POINTER (++self->pending_push_serial));
  PendingArgs *args = g_new0 (PendingArgs, 1);
  g_autofree char *rep_id = hb_replicator_get_replication_id (self->push);

  args->checkpoint_id = g_strconcat ("_local/", rep_id, NULL);
  g_task_set_task_data (task, args, pending_args_free);
  g_task_run_in_thread (task, pending_push_thread);
}

/* ---- failures and backoff -------------------------------------------------------------- */

static gboolean
is_offline_error (const GError *error)
{
  return g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NETWORK)
         || g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TIMEOUT);
}

static gboolean
is_auth_error (const GError *error)
{
  return g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_UNAUTHORIZED)
         || g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FORBIDDEN);
}

static gboolean
retry_now (gpointer data)
{
  HbSyncManager *self = data;

  self->retry_id = 0;
  if (!self->started)
    return G_SOURCE_REMOVE;
  run_pull (self);
  run_push (self);
  return G_SOURCE_REMOVE;
}

static void
schedule_retry (HbSyncManager *self)
{
  guint initial = hb_sync_config_get_retry_initial_ms (self->config);
  guint max = hb_sync_config_get_retry_max_ms (self->config);
  guint64 delay;

  if (self->retry_id != 0 || !self->started)
    return;
  /* The offline case waits for the network monitor too: a network coming back retries at
   * once. */
  delay = (guint64)initial << MIN (self->failures, 20u);
  delay = MIN (delay, max);
  /* Full jitter on the upper half: many workstations never retry in step. */
  delay = delay / 2 + (guint64)g_random_int_range (0, (gint32)MIN (delay / 2 + 1, G_MAXINT32));
  self->failures++;
  self->retry_id = g_timeout_add ((guint)delay, retry_now, self);
}

static void
record_failure (HbSyncManager *self, const GError *error)
{
  set_last_error (self, error->message);
  if (is_auth_error (error))
    {
      /* Not retried: the same credentials would fail the same way, and a retry storm against
       * an authentication endpoint looks like an attack. Asked once per refusal: the pull, the
       * push and the longpoll each fail with it. */
      gboolean first = !self->auth_failed;

      self->auth_failed = TRUE;
      if (first && hb_sync_config_get_auth_method (self->config) == HB_AUTH_METHOD_BEARER)
        g_signal_emit (self, signals[SIGNAL_TOKEN_NEEDED], 0);
    }
  else
    {
      if (is_offline_error (error))
        self->offline = TRUE;
      else
        self->failed = TRUE;
      schedule_retry (self);
    }
  update_status (self);
}

static void
record_success (HbSyncManager *self)
{
  self->offline = FALSE;
  self->failed = FALSE;
  self->auth_failed = FALSE;
  if (self->push_done && self->pull_done)
    {
      self->failures = 0;
      self->last_sync_time = g_get_real_time () / G_USEC_PER_SEC;
      g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_LAST_SYNC_TIME]);
    }
}

/* ---- conflicts found by a pull --------------------------------------------------------- */

typedef struct
{
  char *id;
  char *winner;
  GStrv conflicts;
  char *kept; /* the strategy's choice, when it resolved the conflict */
} Conflict;

static void
conflict_free (gpointer data)
{
  Conflict *c = data;

  g_free (c->id);
  g_free (c->winner);
  g_strfreev (c->conflicts);
  g_free (c->kept);
  g_free (c);
}

/* The time a clinical document says it was last changed, for "latest wins". */
static const char *
document_time (JsonObject *doc)
{
  static const char *const members[] = { "updated_at", "written_at", "taken_at", "created_at" };

  for (guint i = 0; i < G_N_ELEMENTS (members); i++)
    {
      JsonNode *n = json_object_get_member (doc, members[i]);

      if (n != NULL && JSON_NODE_HOLDS_VALUE (n) && json_node_get_value_type (n) == G_TYPE_STRING)
        return json_node_get_string (n);
    }
  return "";
}

typedef struct
{
  guint64 since;
  HbConflictStrategy strategy;
} ScanArgs;

/* Documents changed since the pull began that now have more than one live leaf. With
 * LATEST_UPDATED_AT the leaf with the latest timestamp (ISO 8601 compares as text) stays and
 * the others are deleted; equal times keep the protocol's winner. */
static void
scan_conflicts_thread (GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
  HbSyncManager *self = source;
  ScanArgs *args = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) changes
      = hb_store_changes_sync (self->store, args->since, 0, cancellable, &error);
  GPtrArray *found;
  JsonArray *rows;

  if (changes == NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  found = g_ptr_array_new_with_free_func (conflict_free);
  rows = json_object_get_array_member (json_node_get_object (changes), "results");
  for (guint i = 0; i < json_array_get_length (rows); i++)
    {
      JsonObject *row = json_array_get_object_element (rows, i);
      const char *id = json_object_get_string_member_with_default (row, "id", NULL);
      g_autoptr (JsonNode) doc = NULL;
      JsonObject *obj;
      JsonArray *others;
      Conflict *c;

      if (id == NULL || !json_object_has_member (row, "changes")
          || json_array_get_length (json_object_get_array_member (row, "changes")) < 2)
        continue;
      doc = hb_store_get_sync (self->store, id, NULL, HB_GET_FLAGS_CONFLICTS, cancellable, NULL);
      if (doc == NULL || !json_object_has_member (json_node_get_object (doc), "_conflicts"))
        continue;
      obj = json_node_get_object (doc);
      others = json_object_get_array_member (obj, "_conflicts");
      c = g_new0 (Conflict, 1);
      c->id = g_strdup (id);
      c->winner = g_strdup (json_object_get_string_member (obj, "_rev"));
      c->conflicts = g_new0 (char *, json_array_get_length (others) + 1);
      for (guint k = 0; k < json_array_get_length (others); k++)
        c->conflicts[k] = g_strdup (json_array_get_string_element (others, k));
      if (args->strategy == HB_CONFLICT_STRATEGY_LATEST_UPDATED_AT)
        {
          const char *best_rev = c->winner;
          g_autofree char *best_time = g_strdup (document_time (obj));

          for (guint k = 0; c->conflicts[k] != NULL; k++)
            {
              g_autoptr (JsonNode) leaf = hb_store_get_sync (self->store, id, c->conflicts[k],
                                                             HB_GET_FLAGS_NONE, cancellable, NULL);
              const char *t;

              if (leaf == NULL)
                continue;
              t = document_time (json_node_get_object (leaf));
              if (strcmp (t, best_time) > 0)
                {
                  g_free (best_time);
                  best_time = g_strdup (t);
                  best_rev = c->conflicts[k];
                }
            }
          c->kept = g_strdup (best_rev);
          if (g_strcmp0 (c->winner, best_rev) != 0)
            {
              g_autofree char *del
                  = hb_store_delete_sync (self->store, id, c->winner, cancellable, NULL);
            }
          for (guint k = 0; c->conflicts[k] != NULL; k++)
            if (g_strcmp0 (c->conflicts[k], best_rev) != 0)
              {
                g_autofree char *del
                    = hb_store_delete_sync (self->store, id, c->conflicts[k], cancellable, NULL);
              }
        }
      g_ptr_array_add (found, c);
    }
  g_task_return_pointer (task, found, (GDestroyNotify)g_ptr_array_unref);
}

static void
on_conflicts_scanned (GObject *source, GAsyncResult *result, gpointer data)
{
  HbSyncManager *self = HB_SYNC_MANAGER (source);
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) found = g_task_propagate_pointer (G_TASK (result), &error);

  if (found == NULL)
    {
      if (!g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        g_warning ("Looking for conflicts after a pull failed: %s", error->message);
      return;
    }
  for (guint i = 0; i < found->len; i++)
    {
      Conflict *c = g_ptr_array_index (found, i);

      g_signal_emit (self, signals[SIGNAL_CONFLICT], 0, c->id, c->winner, c->conflicts, c->kept);
    }
}

static void
scan_conflicts (HbSyncManager *self, guint64 since)
{
  g_autoptr (GTask) task = g_task_new (self, self->cancellable, on_conflicts_scanned, NULL);
  ScanArgs *args = g_new0 (ScanArgs, 1);

  args->since = since;
  args->strategy = self->strategy;
  g_task_set_task_data (task, args, g_free);
  g_task_run_in_thread (task, scan_conflicts_thread);
}

/* ---- runs ------------------------------------------------------------------------------ */

/* What a run's callback needs: the manager, and the cancellable the run was given, which tells
 * a run that stop() cancelled from one that failed (a replicator may fail with
 * G_IO_ERROR_CANCELLED that nobody asked for). */
typedef struct
{
  HbSyncManager *self;
  GCancellable *cancellable;
} RunData;

static RunData *
run_data_new (HbSyncManager *self)
{
  RunData *d = g_new (RunData, 1);

  d->self = g_object_ref (self);
  d->cancellable = g_object_ref (self->cancellable);
  return d;
}

static void
run_data_free (RunData *d)
{
  g_object_unref (d->self);
  g_object_unref (d->cancellable);
  g_free (d);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (RunData, run_data_free)

/* ---- pull ------------------------------------------------------------------------------ */

static void
on_pull_done (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (RunData) d = data;
  HbSyncManager *self = d->self;
  g_autoptr (GError) error = NULL;
  g_autoptr (HbReplicationResult) res
      = hb_replicator_run_finish (HB_REPLICATOR (source), result, &error);

  self->pull_running = FALSE;
  if (error != NULL && g_cancellable_is_cancelled (d->cancellable))
    {
      /* Stopped. Started again meanwhile: the new start's pull waited for this run. */
      if (self->pull_again)
        {
          self->pull_again = FALSE;
          run_pull (self);
        }
      update_status (self);
      return;
    }
  if (error != NULL)
    {
      self->pull_done = FALSE;
      record_failure (self, error);
      return;
    }
  self->pull_done = TRUE;
  if (res->last_seq != NULL)
    {
      g_autoptr (JsonParser) parser = json_parser_new ();

      if (json_parser_load_from_data (parser, res->last_seq, -1, NULL))
        {
          g_clear_pointer (&self->pull_seq, json_node_unref);
          self->pull_seq = json_parser_steal_root (parser);
        }
    }
  set_pending (self, &self->pending_pull, 0, PROP_PENDING_PULL);
  if (res->docs_written > 0)
    scan_conflicts (self, self->pull_start_seq);
  record_success (self);
  if (self->pull_again)
    {
      self->pull_again = FALSE;
      run_pull (self);
    }
  else if (hb_sync_config_get_continuous (self->config))
    start_longpoll (self);
  update_status (self);
}

static void
run_pull (HbSyncManager *self)
{
  if (!self->started)
    return;
  if (self->pull_running)
    {
      self->pull_again = TRUE;
      return;
    }
  self->pull_running = TRUE;
  self->pull_start_seq = hb_store_get_update_seq (self->store);
  update_status (self);
  hb_replicator_run_async (self->pull, self->cancellable, on_pull_done, run_data_new (self));
}

static void
on_longpoll (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (HbSyncManager) self = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteChanges) changes
      = hb_remote_changes_finish (HB_REMOTE (source), result, &error);

  self->longpoll_running = FALSE;
  if (!self->started || g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return;
  if (error != NULL)
    {
      record_failure (self, error);
      return;
    }
  if (changes->results->len > 0)
    {
      /* Rows the last pull did not see: at least these many wait on the server. */
      gint64 pending = changes->pending >= 0 ? (gint64)changes->results->len + changes->pending
                                             : (gint64)changes->results->len;

      set_pending (self, &self->pending_pull, pending, PROP_PENDING_PULL);
      update_status (self);
      run_pull (self);
      return;
    }
  if (changes->last_seq != NULL && !JSON_NODE_HOLDS_NULL (changes->last_seq))
    {
      g_clear_pointer (&self->pull_seq, json_node_unref);
      self->pull_seq = json_node_copy (changes->last_seq);
    }
  start_longpoll (self);
}

static void
start_longpoll (HbSyncManager *self)
{
  if (!self->started || self->longpoll_running || self->pull_running)
    return;
  self->longpoll_running = TRUE;
  hb_remote_changes_async (self->remote, self->pull_seq, 1, NULL, TRUE,
                           hb_sync_config_get_heartbeat_ms (self->config), self->cancellable,
                           on_longpoll, g_object_ref (self));
}

/* ---- push ------------------------------------------------------------------------------ */

static void
on_push_done (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (RunData) d = data;
  HbSyncManager *self = d->self;
  g_autoptr (GError) error = NULL;
  g_autoptr (HbReplicationResult) res
      = hb_replicator_run_finish (HB_REPLICATOR (source), result, &error);

  self->push_running = FALSE;
  if (error != NULL && g_cancellable_is_cancelled (d->cancellable))
    {
      /* Stopped. Started again meanwhile: the new start's push waited for this run. */
      if (self->push_again)
        {
          self->push_again = FALSE;
          run_push (self);
        }
      update_status (self);
      return;
    }
  if (error != NULL)
    {
      self->push_done = FALSE;
      refresh_pending_push (self);
      record_failure (self, error);
      return;
    }
  self->push_done = TRUE;
  record_success (self);
  refresh_pending_push (self);
  if (self->push_again)
    {
      self->push_again = FALSE;
      run_push (self);
    }
  update_status (self);
}

static void
run_push (HbSyncManager *self)
{
  if (!self->started)
    return;
  if (self->push_running)
    {
      self->push_again = TRUE;
      return;
    }
  self->push_running = TRUE;
  update_status (self);
  hb_replicator_run_async (self->push, self->cancellable, on_push_done, run_data_new (self));
}

static gboolean
debounce_done (gpointer data)
{
  HbSyncManager *self = data;

  self->debounce_id = 0;
  /* While a failure waits for its retry, the retry pushes. */
  if (self->retry_id == 0 && !self->auth_failed)
    run_push (self);
  return G_SOURCE_REMOVE;
}

static void
on_store_changed (HbStore *store, guint64 update_seq, gpointer data)
{
  HbSyncManager *self = data;

  if (!self->started)
    return;
  refresh_pending_push (self);
  if (!hb_sync_config_get_continuous (self->config))
    return;
  if (self->debounce_id != 0)
    g_source_remove (self->debounce_id);
  self->debounce_id
      = g_timeout_add (hb_sync_config_get_push_debounce_ms (self->config), debounce_done, self);
}

static void
on_network_changed (GNetworkMonitor *monitor, gboolean available, gpointer data)
{
  HbSyncManager *self = data;

  if (!self->started)
    return;
  if (!available)
    {
      self->offline = TRUE;
      update_status (self);
      return;
    }
  /* Back online: try now instead of at the end of the backoff. */
  if (self->offline)
    {
      if (self->retry_id != 0)
        g_source_remove (self->retry_id);
      self->retry_id = 0;
      retry_now (self);
    }
}

/* ---- public: start, stop --------------------------------------------------------------- */

/**
 * hb_sync_manager_start:
 * @self: a manager
 *
 * Starts syncing both ways: at once, then (when #HbSyncConfig:continuous is set) whenever the
 * server's changes feed or the store has something new. If started, does nothing, unless the
 * status is %HB_SYNC_STATUS_AUTH_FAILED: then both directions are tried again at once.
 */
void
hb_sync_manager_start (HbSyncManager *self)
{
  g_return_if_fail (HB_IS_SYNC_MANAGER (self));

  if (self->started)
    {
      /* After an authentication failure nothing is retried on its own: start() is how the
       * application says the credentials changed (see #HbSyncManager::token-needed). */
      if (self->auth_failed)
        {
          self->auth_failed = FALSE;
          self->failures = 0;
          update_status (self);
          run_pull (self);
          run_push (self);
        }
      return;
    }
  self->started = TRUE;
  self->auth_failed = FALSE;
  self->failed = FALSE;
  self->failures = 0;
  g_clear_object (&self->cancellable);
  self->cancellable = g_cancellable_new ();
  self->offline = !g_network_monitor_get_network_available (self->monitor);
  update_status (self);
  refresh_pending_push (self);
  run_pull (self);
  run_push (self);
}

/**
 * hb_sync_manager_stop:
 * @self: a manager
 *
 * Stops syncing: running replications are cancelled (each resumes from its last checkpoint
 * next time) and the status becomes %HB_SYNC_STATUS_DISABLED.
 */
void
hb_sync_manager_stop (HbSyncManager *self)
{
  g_return_if_fail (HB_IS_SYNC_MANAGER (self));

  if (!self->started)
    return;
  self->started = FALSE;
  g_cancellable_cancel (self->cancellable);
  g_clear_handle_id (&self->debounce_id, g_source_remove);
  g_clear_handle_id (&self->retry_id, g_source_remove);
  self->push_again = self->pull_again = FALSE;
  self->push_done = self->pull_done = FALSE;
  self->offline = self->failed = self->auth_failed = FALSE;
  update_status (self);
}

/**
 * hb_sync_manager_cleanup:
 * @self: a manager
 *
 * Stops, wipes the sync cache and forgets the per-session states: what logging out does.
 */
void
hb_sync_manager_cleanup (HbSyncManager *self)
{
  g_return_if_fail (HB_IS_SYNC_MANAGER (self));

  hb_sync_manager_stop (self);
  hb_sync_cache_clear (self->cache);
  g_hash_table_remove_all (self->sessions);
  set_last_error (self, NULL);
  set_pending (self, &self->pending_pull, -1, PROP_PENDING_PULL);
}

/* ---- one-shot syncs -------------------------------------------------------------------- */

typedef struct
{
  HbReplicator *pull;
  HbReplicator *push;
  GCancellable *cancellable;
  gint64 written;
  char *session_id;
  guint timeout_id;
  gboolean timed_out;
  GTask *ensure_task; /* ensure_session_synced's task (not a reference: it owns this) */
  gboolean answered;  /* ensure_session_synced has answered */
} OneShot;

static void
one_shot_free (gpointer data)
{
  OneShot *o = data;

  g_clear_object (&o->pull);
  g_clear_object (&o->push);
  g_clear_object (&o->cancellable);
  g_clear_handle_id (&o->timeout_id, g_source_remove);
  g_free (o->session_id);
  g_free (o);
}

static HbReplicator *
make_replicator (HbSyncManager *self, HbReplicationDirection direction, const char *session_id)
{
  HbReplicator *r = hb_replicator_new (self->store, self->remote, self->cache, direction);

  hb_replicator_set_batch_size (r, hb_sync_config_get_batch_size (self->config));
  hb_replicator_set_batch_bytes (r, hb_sync_config_get_batch_bytes (self->config));
  hb_replicator_set_session_id (r, session_id);
  return r;
}

static void
set_session_status (HbSyncManager *self, const char *session_id, HbSessionSyncStatus status)
{
  if (session_id == NULL)
    return;
  if (GPOINTER_TO_INT (g_hash_table_lookup (self->sessions, session_id)) == (gint)status
      && g_hash_table_contains (self->sessions, session_id))
    return;
  g_hash_table_insert (self->sessions, g_strdup (session_id), GINT_TO_POINTER (status));
  g_signal_emit (self, signals[SIGNAL_SESSION_STATUS_CHANGED], 0, session_id, status);
}

static void
one_shot_push_done (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (GTask) task = data;
  HbSyncManager *self = g_task_get_source_object (task);
  OneShot *o = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (HbReplicationResult) res
      = hb_replicator_run_finish (HB_REPLICATOR (source), result, &error);

  if (error != NULL)
    {
      set_session_status (self, o->session_id, HB_SESSION_SYNC_STATUS_FAILED);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  o->written += (gint64)res->docs_written;
  set_session_status (self, o->session_id, HB_SESSION_SYNC_STATUS_SYNCED);
  if (o->session_id == NULL)
    refresh_pending_push (self);
  g_task_return_int (task, o->written);
}

static void
one_shot_pull_done (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (GTask) task = data;
  HbSyncManager *self = g_task_get_source_object (task);
  OneShot *o = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (HbReplicationResult) res
      = hb_replicator_run_finish (HB_REPLICATOR (source), result, &error);

  if (error != NULL)
    {
      set_session_status (self, o->session_id, HB_SESSION_SYNC_STATUS_FAILED);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  o->written += (gint64)res->docs_written;
  hb_replicator_run_async (o->push, o->cancellable, one_shot_push_done, g_steal_pointer (&task));
}

static void
one_shot_start (HbSyncManager *self,
                const char *session_id,
                GCancellable *cancellable,
                gpointer source_tag,
                GAsyncReadyCallback callback,
                gpointer user_data)
{
  GTask *task = g_task_new (self, cancellable, callback, user_data);
  OneShot *o = g_new0 (OneShot, 1);

  g_task_set_source_tag (task, source_tag);
  o->session_id = g_strdup (session_id);
  o->pull = make_replicator (self, HB_REPLICATION_DIRECTION_PULL, session_id);
  o->push = make_replicator (self, HB_REPLICATION_DIRECTION_PUSH, session_id);
  o->cancellable = cancellable != NULL ? g_object_ref (cancellable) : g_cancellable_new ();
  g_task_set_task_data (task, o, one_shot_free);
  set_session_status (self, session_id, HB_SESSION_SYNC_STATUS_SYNCING);
  hb_replicator_run_async (o->pull, o->cancellable, one_shot_pull_done, task);
}

/**
 * hb_sync_manager_force_sync_async:
 * @self: a manager
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called when both directions are done
 * @user_data: data for @callback
 *
 * Syncs both ways now, once (pull, then push), whether or not the manager is started.
 */
void
hb_sync_manager_force_sync_async (HbSyncManager *self,
                                  GCancellable *cancellable,
                                  GAsyncReadyCallback callback,
                                  gpointer user_data)
{
  g_return_if_fail (HB_IS_SYNC_MANAGER (self));
  one_shot_start (self, NULL, cancellable, hb_sync_manager_force_sync_async, callback, user_data);
}

/**
 * hb_sync_manager_force_sync_finish:
 * @self: a manager
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: %TRUE if both directions completed
 */
gboolean
hb_sync_manager_force_sync_finish (HbSyncManager *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_int (G_TASK (result), error) >= 0;
}

/**
 * hb_sync_manager_sync_session_async:
 * @self: a manager
 * @session_id: a clinical session's document id
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called when done
 * @user_data: data for @callback
 *
 * Syncs one clinical session both ways: the session document, its observations and notes, and
 * its patient.
 */
void
hb_sync_manager_sync_session_async (HbSyncManager *self,
                                    const char *session_id,
                                    GCancellable *cancellable,
                                    GAsyncReadyCallback callback,
                                    gpointer user_data)
{
  g_return_if_fail (HB_IS_SYNC_MANAGER (self));
  g_return_if_fail (session_id != NULL);
  one_shot_start (self, session_id, cancellable, hb_sync_manager_sync_session_async, callback,
                  user_data);
}

/**
 * hb_sync_manager_sync_session_finish:
 * @self: a manager
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: the number of documents synced (written either way), or -1 with @error set
 */
gint64
hb_sync_manager_sync_session_finish (HbSyncManager *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), -1);
  return g_task_propagate_int (G_TASK (result), error);
}

/* ensure_session_synced: push the session, then ask the server whether it lacks anything. */

/* Answers once: at the deadline, or when the checks end first. The run still under way at the
 * deadline winds down on its own (a replicator may take a few seconds to stop: a retry's
 * backoff, the checkpoint's grace), holding the task until then. */
static void
ensure_answer (HbSyncManager *self, OneShot *o, gboolean synced)
{
  if (o->answered)
    return;
  o->answered = TRUE;
  set_session_status (self, o->session_id,
                      synced ? HB_SESSION_SYNC_STATUS_SYNCED : HB_SESSION_SYNC_STATUS_FAILED);
  g_task_return_boolean (o->ensure_task, synced);
}

typedef struct
{
  OneShot *o;
  JsonNode *leaves; /* {id: [revs]} of the session's documents */
} EnsureState;

static void
on_ensure_diff (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (GTask) task = data;
  HbSyncManager *self = g_task_get_source_object (task);
  OneShot *o = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (GHashTable) missing = hb_remote_revs_diff_finish (HB_REMOTE (source), result, &error);
  gboolean synced = missing != NULL && g_hash_table_size (missing) == 0;

  ensure_answer (self, o, synced);
}

/* The leaves of the session's documents, read in a worker thread. */
static void
session_leaves_thread (GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
  HbSyncManager *self = source;
  OneShot *o = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) docs = hb_store_find_sync (self->store, HB_INDEX_FIELD_SESSION_ID,
                                                   o->session_id, cancellable, &error);
  g_autoptr (GPtrArray) ids = g_ptr_array_new_with_free_func (g_free);
  g_autoptr (JsonNode) session = NULL;
  g_autoptr (GPtrArray) full = NULL;
  GString *body = g_string_new ("{");
  guint n = 0;

  if (docs == NULL)
    {
      g_string_free (body, TRUE);
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  g_ptr_array_add (ids, g_strdup (o->session_id));
  session
      = hb_store_get_sync (self->store, o->session_id, NULL, HB_GET_FLAGS_NONE, cancellable, NULL);
  if (session != NULL && JSON_NODE_HOLDS_OBJECT (session))
    {
      const char *patient = json_object_get_string_member_with_default (
          json_node_get_object (session), "patient_id", NULL);
      if (patient != NULL)
        g_ptr_array_add (ids, g_strdup (patient));
    }
  for (guint i = 0; i < docs->len; i++)
    {
      JsonNode *doc = g_ptr_array_index (docs, i);
      const char *id = JSON_NODE_HOLDS_OBJECT (doc) ? json_object_get_string_member_with_default (
                           json_node_get_object (doc), "_id", NULL)
                                                    : NULL;
      if (id != NULL)
        g_ptr_array_add (ids, g_strdup (id));
    }
  g_ptr_array_add (ids, NULL);
  full = hb_store_get_many_sync (self->store, (const char *const *)ids->pdata,
                                 HB_GET_FLAGS_CONFLICTS | HB_GET_FLAGS_DELETED, cancellable, NULL);
  for (guint i = 0; full != NULL && i < full->len; i++)
    {
      JsonNode *doc = g_ptr_array_index (full, i);
      JsonObject *obj;
      const char *id, *rev;

      if (doc == NULL || !JSON_NODE_HOLDS_OBJECT (doc))
        continue;
      obj = json_node_get_object (doc);
      id = json_object_get_string_member_with_default (obj, "_id", NULL);
      rev = json_object_get_string_member_with_default (obj, "_rev", NULL);
      if (id == NULL || rev == NULL)
        continue;
      g_string_append (body, n++ > 0 ? ",\"" : "\"");
      g_string_append (body, id);
      g_string_append (body, "\":[\"");
      g_string_append (body, rev);
      g_string_append (body, "\"");
      if (json_object_has_member (obj, "_conflicts"))
        {
          JsonArray *c = json_object_get_array_member (obj, "_conflicts");
          for (guint k = 0; k < json_array_get_length (c); k++)
            g_string_append_printf (body, ",\"%s\"", json_array_get_string_element (c, k));
        }
      g_string_append (body, "]");
    }
  g_string_append (body, "}");
  g_task_return_pointer (task, g_string_free_to_bytes (body), (GDestroyNotify)g_bytes_unref);
}

static void
on_session_leaves (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (GTask) task = data;
  HbSyncManager *self = g_task_get_source_object (task);
  OneShot *o = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) body = g_task_propagate_pointer (G_TASK (result), &error);

  if (body == NULL)
    {
      ensure_answer (self, o, FALSE);
      return;
    }
  hb_remote_revs_diff_async (self->remote, body, o->cancellable, on_ensure_diff,
                             g_steal_pointer (&task));
}

static void
on_ensure_pushed (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (GTask) task = data;
  HbSyncManager *self = g_task_get_source_object (task);
  OneShot *o = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (HbReplicationResult) res
      = hb_replicator_run_finish (HB_REPLICATOR (source), result, &error);
  g_autoptr (GTask) leaves = NULL;

  if (error != NULL)
    {
      /* Not synced within the time given, or the server is not there: an answer, not an
       * error. */
      ensure_answer (self, o, FALSE);
      return;
    }
  leaves = g_task_new (self, o->cancellable, on_session_leaves, g_steal_pointer (&task));
  g_task_set_task_data (leaves, o, NULL);
  g_task_run_in_thread (leaves, session_leaves_thread);
}

static gboolean
ensure_timed_out (gpointer data)
{
  OneShot *o = data;

  o->timeout_id = 0;
  o->timed_out = TRUE;
  g_cancellable_cancel (o->cancellable);
  /* The answer is due now, not when the cancelled run has wound down. */
  ensure_answer (g_task_get_source_object (o->ensure_task), o, FALSE);
  return G_SOURCE_REMOVE;
}

/**
 * hb_sync_manager_ensure_session_synced_async:
 * @self: a manager
 * @session_id: a clinical session's document id
 * @timeout_ms: how long to try
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called with the answer within @timeout_ms (or about)
 * @user_data: data for @callback
 *
 * Pushes the session's documents and checks with the server that it holds every revision of
 * each: the answer a discharge waits for. A dead server gives %FALSE when the time is up.
 */
void
hb_sync_manager_ensure_session_synced_async (HbSyncManager *self,
                                             const char *session_id,
                                             guint timeout_ms,
                                             GCancellable *cancellable,
                                             GAsyncReadyCallback callback,
                                             gpointer user_data)
{
  GTask *task;
  OneShot *o;

  g_return_if_fail (HB_IS_SYNC_MANAGER (self));
  g_return_if_fail (session_id != NULL);

  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, hb_sync_manager_ensure_session_synced_async);
  /* The answer is due at the deadline even if the caller's cancellable is untouched. */
  g_task_set_check_cancellable (task, FALSE);
  o = g_new0 (OneShot, 1);
  o->ensure_task = task;
  o->session_id = g_strdup (session_id);
  o->push = make_replicator (self, HB_REPLICATION_DIRECTION_PUSH, session_id);
  o->cancellable = g_cancellable_new ();
  if (cancellable != NULL)
    g_signal_connect_object (cancellable, "cancelled", G_CALLBACK (g_cancellable_cancel),
                             o->cancellable, G_CONNECT_SWAPPED);
  o->timeout_id = g_timeout_add (timeout_ms, ensure_timed_out, o);
  g_task_set_task_data (task, o, one_shot_free);
  set_session_status (self, session_id, HB_SESSION_SYNC_STATUS_SYNCING);
  hb_replicator_run_async (o->push, o->cancellable, on_ensure_pushed, task);
}

/**
 * hb_sync_manager_ensure_session_synced_finish:
 * @self: a manager
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: %TRUE only when every document of the session is on the server
 */
gboolean
hb_sync_manager_ensure_session_synced_finish (HbSyncManager *self,
                                              GAsyncResult *result,
                                              GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  return g_task_propagate_boolean (G_TASK (result), error);
}

/**
 * hb_sync_manager_get_session_status:
 * @self: a manager
 * @session_id: a clinical session's document id
 *
 * Returns: the session's sync state
 */
HbSessionSyncStatus
hb_sync_manager_get_session_status (HbSyncManager *self, const char *session_id)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), HB_SESSION_SYNC_STATUS_UNKNOWN);
  return GPOINTER_TO_INT (g_hash_table_lookup (self->sessions, session_id));
}

/* ---- conflicts ------------------------------------------------------------------------- */

typedef struct
{
  char *id;
  char *keep;
} ResolveArgs;

static void
resolve_args_free (gpointer data)
{
  ResolveArgs *a = data;

  g_free (a->id);
  g_free (a->keep);
  g_free (a);
}

static void
resolve_thread (GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
  HbSyncManager *self = source;
  ResolveArgs *a = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc
      = hb_store_get_sync (self->store, a->id, NULL, HB_GET_FLAGS_CONFLICTS, cancellable, &error);
  g_autoptr (GPtrArray) losers = g_ptr_array_new_with_free_func (g_free);
  JsonObject *obj;
  guint deleted = 0;

  if (doc == NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  obj = json_node_get_object (doc);
  if (g_strcmp0 (json_object_get_string_member (obj, "_rev"), a->keep) != 0)
    g_ptr_array_add (losers, g_strdup (json_object_get_string_member (obj, "_rev")));
  if (json_object_has_member (obj, "_conflicts"))
    {
      JsonArray *c = json_object_get_array_member (obj, "_conflicts");
      for (guint i = 0; i < json_array_get_length (c); i++)
        if (g_strcmp0 (json_array_get_string_element (c, i), a->keep) != 0)
          g_ptr_array_add (losers, g_strdup (json_array_get_string_element (c, i)));
    }
  if (losers->len
      == (json_object_has_member (obj, "_conflicts")
              ? json_array_get_length (json_object_get_array_member (obj, "_conflicts")) + 1
              : 1))
    {
      g_task_return_new_error (task, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND,
                               "%s is not a leaf revision of the document", a->keep);
      return;
    }
  for (guint i = 0; i < losers->len; i++)
    {
      g_autofree char *rev
          = hb_store_delete_sync (self->store, a->id, losers->pdata[i], cancellable, &error);
      if (rev == NULL)
        {
          g_task_return_error (task, g_steal_pointer (&error));
          return;
        }
      deleted++;
    }
  g_task_return_int (task, deleted);
}

/**
 * hb_sync_manager_resolve_conflict_async:
 * @self: a manager
 * @doc_id: a document with conflicts
 * @keep_rev: the leaf revision to keep
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called when done
 * @user_data: data for @callback
 *
 * Resolves a conflict by deleting every other leaf revision of the document; the deletions are
 * pushed like any other change.
 */
void
hb_sync_manager_resolve_conflict_async (HbSyncManager *self,
                                        const char *doc_id,
                                        const char *keep_rev,
                                        GCancellable *cancellable,
                                        GAsyncReadyCallback callback,
                                        gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  ResolveArgs *a;

  g_return_if_fail (HB_IS_SYNC_MANAGER (self));
  g_return_if_fail (doc_id != NULL && keep_rev != NULL);
  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, hb_sync_manager_resolve_conflict_async);
  a = g_new0 (ResolveArgs, 1);
  a->id = g_strdup (doc_id);
  a->keep = g_strdup (keep_rev);
  g_task_set_task_data (task, a, resolve_args_free);
  g_task_run_in_thread (task, resolve_thread);
}

/**
 * hb_sync_manager_resolve_conflict_finish:
 * @self: a manager
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: the number of revisions deleted
 */
guint
hb_sync_manager_resolve_conflict_finish (HbSyncManager *self, GAsyncResult *result, GError **error)
{
  gssize n;

  g_return_val_if_fail (g_task_is_valid (result, self), 0);
  n = g_task_propagate_int (G_TASK (result), error);
  return n > 0 ? (guint)n : 0;
}

/**
 * hb_sync_manager_get_conflict_strategy:
 * @self: a manager
 *
 * Returns: what the manager does with pulled conflicts
 */
HbConflictStrategy
hb_sync_manager_get_conflict_strategy (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), HB_CONFLICT_STRATEGY_KEEP_WINNER);
  return self->strategy;
}

/**
 * hb_sync_manager_set_conflict_strategy:
 * @self: a manager
 * @strategy: what to do with pulled conflicts
 *
 * Sets #HbSyncManager:conflict-strategy.
 */
void
hb_sync_manager_set_conflict_strategy (HbSyncManager *self, HbConflictStrategy strategy)
{
  g_return_if_fail (HB_IS_SYNC_MANAGER (self));
  if (self->strategy == strategy)
    return;
  self->strategy = strategy;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_CONFLICT_STRATEGY]);
}

/* ---- diagnostics ----------------------------------------------------------------------- */

static void
on_diagnose_info (GObject *source, GAsyncResult *result, gpointer data)
{
  g_autoptr (GTask) task = data;
  HbSyncManager *self = g_task_get_source_object (task);
  HbSyncDiagnostics *d = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = hb_remote_get_info_finish (HB_REMOTE (source), result, &error);
  g_autoptr (HbSyncCacheStats) stats = hb_sync_cache_get_stats (self->cache);
  gboolean https = g_str_has_prefix (hb_remote_get_url (self->remote), "https:");

  d->cache = *stats;
  d->vault_unlocked = !hb_vault_get_locked (hb_store_get_vault (self->store));
  d->last_error = g_strdup (self->last_error);
  if (info != NULL)
    {
      d->server_reachable = d->authenticated = d->database_present = TRUE;
      d->tls_ok = TRUE;
      d->detail = g_strdup_printf ("The database answered%s", https ? " over verified TLS" : "");
    }
  else if (g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NOT_FOUND))
    {
      d->server_reachable = d->authenticated = d->tls_ok = TRUE;
      d->detail = g_strdup ("The server answered, but the database does not exist");
    }
  else if (is_auth_error (error))
    {
      d->server_reachable = d->tls_ok = TRUE;
      d->detail = g_strdup_printf ("The server refused the credentials: %s", error->message);
    }
  else if (g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS)
           || (error->domain == HB_REMOTE_ERROR && error->code == HB_REMOTE_ERROR_FAILED && https))
    {
      /* Something answered, but it could not be trusted: nothing was sent to it. */
      d->detail = g_strdup_printf ("TLS failed: %s", error->message);
    }
  else if (is_offline_error (error))
    d->detail = g_strdup_printf ("The server cannot be reached: %s", error->message);
  else
    {
      d->server_reachable = TRUE;
      d->tls_ok = TRUE;
      d->detail = g_strdup_printf ("The server failed: %s", error->message);
    }
  g_task_return_pointer (task, hb_sync_diagnostics_copy (d),
                         (GDestroyNotify)hb_sync_diagnostics_free);
}

/**
 * hb_sync_manager_diagnose_async:
 * @self: a manager
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called with the findings
 * @user_data: data for @callback
 *
 * Runs the troubleshooting checks: network, server, TLS, credentials, database, vault, cache.
 */
void
hb_sync_manager_diagnose_async (HbSyncManager *self,
                                GCancellable *cancellable,
                                GAsyncReadyCallback callback,
                                gpointer user_data)
{
  GTask *task;
  HbSyncDiagnostics *d;

  g_return_if_fail (HB_IS_SYNC_MANAGER (self));
  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, hb_sync_manager_diagnose_async);
  d = g_new0 (HbSyncDiagnostics, 1);
  d->network_available = g_network_monitor_get_network_available (self->monitor);
  g_task_set_task_data (task, d, (GDestroyNotify)hb_sync_diagnostics_free);
  hb_remote_get_info_async (self->remote, cancellable, on_diagnose_info, task);
}

/**
 * hb_sync_manager_diagnose_finish:
 * @self: a manager
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the findings
 */
HbSyncDiagnostics *
hb_sync_manager_diagnose_finish (HbSyncManager *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}

/* ---- construction ---------------------------------------------------------------------- */

static gboolean
is_loopback (const char *host)
{
  g_autoptr (GInetAddress) address = NULL;

  if (host == NULL)
    return FALSE;
  if (g_ascii_strcasecmp (host, "localhost") == 0)
    return TRUE;
  address = g_inet_address_new_from_string (host);
  return address != NULL && g_inet_address_get_is_loopback (address);
}

/* The remote's credentials, from the configuration's method, user name and secret; again
 * whenever the secret changes. */
static void
apply_credentials (HbSyncManager *self)
{
  const char *secret = _hb_sync_config_peek_secret (self->config);
  const char *username = hb_sync_config_get_username (self->config);

  if (self->remote == NULL)
    return;
  switch (hb_sync_config_get_auth_method (self->config))
    {
      case HB_AUTH_METHOD_BASIC:
        hb_remote_set_basic_auth (self->remote, username, secret != NULL ? secret : "");
        break;
      case HB_AUTH_METHOD_COOKIE:
        hb_remote_set_cookie_auth (self->remote, username, secret);
        break;
      case HB_AUTH_METHOD_BEARER:
        hb_remote_set_bearer_token (self->remote, secret);
        break;
      case HB_AUTH_METHOD_NONE:
      default:
        break;
    }
}

/* The server refused the bearer token: the application is asked for a fresh one. A handler
 * that sets it at once has the refused request sent again. */
static void
on_token_expired (HbSyncManager *self)
{
  g_signal_emit (self, signals[SIGNAL_TOKEN_NEEDED], 0);
}

static gboolean
configure_remote (HbSyncManager *self, GError **error)
{
  const char *url = hb_sync_config_get_database_url (self->config);
  g_autoptr (GUri) uri = g_uri_parse (url, G_URI_FLAGS_NONE, error);
  const char *ca_file = hb_sync_config_get_ca_file (self->config);
  const char *pin = hb_sync_config_get_pinned_sha256 (self->config);

  if (uri == NULL)
    return FALSE;
  if (g_ascii_strcasecmp (g_uri_get_scheme (uri), "http") == 0
      && !is_loopback (g_uri_get_host (uri))
      && !hb_sync_config_get_allow_insecure_http (self->config))
    {
      g_set_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FAILED,
                   "Plain http to %s would send clinical data unencrypted; use https, or allow "
                   "insecure http explicitly",
                   g_uri_get_host (uri));
      return FALSE;
    }
  self->remote = hb_remote_new (url, error);
  if (self->remote == NULL)
    return FALSE;
  hb_remote_set_timeout (self->remote, (hb_sync_config_get_timeout_ms (self->config) + 999) / 1000);
  hb_remote_set_allow_insecure_http (self->remote,
                                     hb_sync_config_get_allow_insecure_http (self->config));
  if ((ca_file != NULL && !hb_remote_set_ca_file (self->remote, ca_file, error))
      || (pin != NULL && !hb_remote_set_pinned_sha256 (self->remote, pin, error)))
    return FALSE;
  apply_credentials (self);
  g_signal_connect_object (self->remote, "token-expired", G_CALLBACK (on_token_expired), self,
                           G_CONNECT_SWAPPED);
  g_signal_connect_object (self->config, "secret-changed", G_CALLBACK (apply_credentials), self,
                           G_CONNECT_SWAPPED);
  return TRUE;
}

/**
 * hb_sync_manager_new:
 * @store: the local store
 * @config: where and how to sync
 * @error: return location for an error
 *
 * Returns: (transfer full) (nullable): a manager, stopped; %NULL with @error when the
 *   configuration cannot work (an invalid URL, plain http to a remote host)
 */
HbSyncManager *
hb_sync_manager_new (HbStore *store, HbSyncConfig *config, GError **error)
{
  g_autoptr (HbSyncManager) self = NULL;

  g_return_val_if_fail (HB_IS_STORE (store), NULL);
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (config), NULL);

  self = g_object_new (HB_TYPE_SYNC_MANAGER, "store", store, "config", config, NULL);
  if (!configure_remote (self, error))
    return NULL;
  hb_sync_cache_configure (self->cache, hb_sync_config_get_cache_max_documents (config),
                           hb_sync_config_get_cache_max_bytes (config));
  self->push = make_replicator (self, HB_REPLICATION_DIRECTION_PUSH, NULL);
  self->pull = make_replicator (self, HB_REPLICATION_DIRECTION_PULL, NULL);
  self->store_changed_id = g_signal_connect (store, "changed", G_CALLBACK (on_store_changed), self);
  self->network_changed_id
      = g_signal_connect (self->monitor, "network-changed", G_CALLBACK (on_network_changed), self);
  return g_steal_pointer (&self);
}

/**
 * hb_sync_manager_get_store:
 * @self: a manager
 *
 * Returns: (transfer none): the store
 */
HbStore *
hb_sync_manager_get_store (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), NULL);
  return self->store;
}

/**
 * hb_sync_manager_get_config:
 * @self: a manager
 *
 * Returns: (transfer none): the configuration
 */
HbSyncConfig *
hb_sync_manager_get_config (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), NULL);
  return self->config;
}

/**
 * hb_sync_manager_get_remote:
 * @self: a manager
 *
 * Returns: (transfer none): the server's database
 */
HbRemote *
hb_sync_manager_get_remote (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), NULL);
  return self->remote;
}

/**
 * hb_sync_manager_get_cache:
 * @self: a manager
 *
 * Returns: (transfer none): the sync cache
 */
HbSyncCache *
hb_sync_manager_get_cache (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), NULL);
  return self->cache;
}

/**
 * hb_sync_manager_get_status:
 * @self: a manager
 *
 * Returns: the status
 */
HbSyncStatus
hb_sync_manager_get_status (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), HB_SYNC_STATUS_DISABLED);
  return self->status;
}

/**
 * hb_sync_manager_get_pending_push:
 * @self: a manager
 *
 * Returns: documents changed in the store since the last push checkpoint, -1 before the first
 *   count
 */
gint64
hb_sync_manager_get_pending_push (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), -1);
  return self->pending_push;
}

/**
 * hb_sync_manager_get_pending_pull:
 * @self: a manager
 *
 * Returns: changes known to wait on the server, -1 when unknown (before the first pull)
 */
gint64
hb_sync_manager_get_pending_pull (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), -1);
  return self->pending_pull;
}

/**
 * hb_sync_manager_get_last_sync_time:
 * @self: a manager
 *
 * Returns: when both directions last completed, in seconds since the Unix epoch, or 0
 */
gint64
hb_sync_manager_get_last_sync_time (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), 0);
  return self->last_sync_time;
}

/**
 * hb_sync_manager_get_last_error:
 * @self: a manager
 *
 * Returns: (nullable): the last failure's message
 */
const char *
hb_sync_manager_get_last_error (HbSyncManager *self)
{
  g_return_val_if_fail (HB_IS_SYNC_MANAGER (self), NULL);
  return self->last_error;
}

static void
hb_sync_manager_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  HbSyncManager *self = HB_SYNC_MANAGER (object);

  switch (prop_id)
    {
      case PROP_STORE:
        g_value_set_object (value, self->store);
        break;
      case PROP_CONFIG:
        g_value_set_object (value, self->config);
        break;
      case PROP_STATUS:
        g_value_set_enum (value, self->status);
        break;
      case PROP_PENDING_PUSH:
        g_value_set_int64 (value, self->pending_push);
        break;
      case PROP_PENDING_PULL:
        g_value_set_int64 (value, self->pending_pull);
        break;
      case PROP_LAST_SYNC_TIME:
        g_value_set_int64 (value, self->last_sync_time);
        break;
      case PROP_LAST_ERROR:
        g_value_set_string (value, self->last_error);
        break;
      case PROP_CONFLICT_STRATEGY:
        g_value_set_enum (value, self->strategy);
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_sync_manager_set_property (GObject *object,
                              guint prop_id,
                              const GValue *value,
                              GParamSpec *pspec)
{
  HbSyncManager *self = HB_SYNC_MANAGER (object);

  switch (prop_id)
    {
      case PROP_STORE:
        self->store = g_value_dup_object (value);
        break;
      case PROP_CONFIG:
        self->config = g_value_dup_object (value);
        break;
      case PROP_CONFLICT_STRATEGY:
        hb_sync_manager_set_conflict_strategy (self, g_value_get_enum (value));
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_sync_manager_dispose (GObject *object)
{
  HbSyncManager *self = HB_SYNC_MANAGER (object);

  if (self->started)
    hb_sync_manager_stop (self);
  if (self->store_changed_id != 0)
    g_clear_signal_handler (&self->store_changed_id, self->store);
  if (self->network_changed_id != 0)
    g_clear_signal_handler (&self->network_changed_id, self->monitor);
  g_clear_object (&self->push);
  g_clear_object (&self->pull);
  g_clear_object (&self->remote);
  if (self->cache != NULL)
    hb_sync_cache_clear (self->cache);
  g_clear_object (&self->cache);
  g_clear_object (&self->store);
  g_clear_object (&self->config);
  g_clear_object (&self->cancellable);
  G_OBJECT_CLASS (hb_sync_manager_parent_class)->dispose (object);
}

static void
hb_sync_manager_finalize (GObject *object)
{
  HbSyncManager *self = HB_SYNC_MANAGER (object);

  g_free (self->last_error);
  g_free (self->instance_start_time);
  g_clear_pointer (&self->pull_seq, json_node_unref);
  g_hash_table_unref (self->sessions);
  G_OBJECT_CLASS (hb_sync_manager_parent_class)->finalize (object);
}

static void
hb_sync_manager_class_init (HbSyncManagerClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->get_property = hb_sync_manager_get_property;
  object_class->set_property = hb_sync_manager_set_property;
  object_class->dispose = hb_sync_manager_dispose;
  object_class->finalize = hb_sync_manager_finalize;

  /**
   * HbSyncManager:store:
   *
   * The local store.
   */
  properties[PROP_STORE]
      = g_param_spec_object ("store", NULL, NULL, HB_TYPE_STORE,
                             G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);
  /**
   * HbSyncManager:config:
   *
   * Where and how to sync.
   */
  properties[PROP_CONFIG]
      = g_param_spec_object ("config", NULL, NULL, HB_TYPE_SYNC_CONFIG,
                             G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);
  /**
   * HbSyncManager:status:
   *
   * What the manager is doing.
   */
  properties[PROP_STATUS]
      = g_param_spec_enum ("status", NULL, NULL, HB_TYPE_SYNC_STATUS, HB_SYNC_STATUS_DISABLED,
                           G_PARAM_READABLE | G_PARAM_STATIC_STRINGS);
  /**
   * HbSyncManager:pending-push:
   *
   * Documents changed in the store since the last push checkpoint, -1 before the first count.
   */
  properties[PROP_PENDING_PUSH] = g_param_spec_int64 (
      "pending-push", NULL, NULL, -1, G_MAXINT64, -1, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS);
  /**
   * HbSyncManager:pending-pull:
   *
   * Changes known to wait on the server, -1 when unknown.
   */
  properties[PROP_PENDING_PULL] = g_param_spec_int64 (
      "pending-pull", NULL, NULL, -1, G_MAXINT64, -1, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS);
  /**
   * HbSyncManager:last-sync-time:
   *
   * When both directions last completed (Unix time), or 0.
   */
  properties[PROP_LAST_SYNC_TIME] = g_param_spec_int64 (
      "last-sync-time", NULL, NULL, 0, G_MAXINT64, 0, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS);
  /**
   * HbSyncManager:last-error:
   *
   * The last failure's message.
   */
  properties[PROP_LAST_ERROR] = g_param_spec_string ("last-error", NULL, NULL, NULL,
                                                     G_PARAM_READABLE | G_PARAM_STATIC_STRINGS);
  /**
   * HbSyncManager:conflict-strategy:
   *
   * What the manager does with pulled conflicts.
   */
  properties[PROP_CONFLICT_STRATEGY] = g_param_spec_enum (
      "conflict-strategy", NULL, NULL, HB_TYPE_CONFLICT_STRATEGY, HB_CONFLICT_STRATEGY_KEEP_WINNER,
      G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  g_object_class_install_properties (object_class, N_PROPS, properties);

  /**
   * HbSyncManager::status-changed:
   * @self: the manager
   * @status: the new status
   *
   * Emitted on the manager's main context when #HbSyncManager:status changes.
   */
  signals[SIGNAL_STATUS_CHANGED]
      = g_signal_new ("status-changed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL,
                      NULL, G_TYPE_NONE, 1, HB_TYPE_SYNC_STATUS);
  /**
   * HbSyncManager::session-status-changed:
   * @self: the manager
   * @session_id: the clinical session
   * @status: its new state
   *
   * Emitted when a session sync starts or ends.
   */
  signals[SIGNAL_SESSION_STATUS_CHANGED]
      = g_signal_new ("session-status-changed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0,
                      NULL, NULL, NULL, G_TYPE_NONE, 2, G_TYPE_STRING, HB_TYPE_SESSION_SYNC_STATUS);
  /**
   * HbSyncManager::token-needed:
   * @self: the manager
   *
   * Emitted when the server refuses the bearer token: set a fresh one with
   * hb_sync_config_set_secret() and call hb_sync_manager_start() (or force a sync).
   */
  /**
   * HbSyncManager::conflict:
   * @self: the manager
   * @doc_id: the document
   * @winner: the winning revision the protocol chose
   * @conflicts: (array zero-terminated=1): the other live leaves
   * @kept: (nullable): the leaf the conflict strategy kept (the others were deleted), or %NULL
   *   when the strategy keeps the winner and leaves the conflict listed
   *
   * Emitted after a pull brought a document into conflict. Resolve it later with
   * hb_sync_manager_resolve_conflict_async().
   */
  signals[SIGNAL_CONFLICT]
      = g_signal_new ("conflict", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                      G_TYPE_NONE, 4, G_TYPE_STRING, G_TYPE_STRING, G_TYPE_STRV, G_TYPE_STRING);
  signals[SIGNAL_TOKEN_NEEDED]
      = g_signal_new ("token-needed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL,
                      NULL, G_TYPE_NONE, 0);
}

static void
hb_sync_manager_init (HbSyncManager *self)
{
  self->cache = hb_sync_cache_new ();
  self->monitor = g_network_monitor_get_default ();
  self->pending_push = -1;
  self->pending_pull = -1;
  self->sessions = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
}
