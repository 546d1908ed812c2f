/* HbSyncConfig: where and how a workstation syncs. Plain settings are properties (an app binds
 * them to GSettings); the password or token is never one: it is held in memory, wiped when
 * replaced, and kept across runs only in the Secret Service. */

#include <libsecret/secret.h>
#include <string.h>

#include "hb-crypto-private.h"
#include "hb-enums.h"
#include "hb-sync-cache.h"
#include "hb-sync-config.h"

struct _HbSyncConfig
{
  GObject parent_instance;

  char *database_url;
  HbAuthMethod auth_method;
  char *username;
  gboolean continuous;
  guint batch_size;
  guint64 batch_bytes;
  guint cache_max_documents;
  guint64 cache_max_bytes;
  guint retry_initial_ms;
  guint retry_max_ms;
  guint push_debounce_ms;
  guint heartbeat_ms;
  guint timeout_ms;
  char *ca_file;
  char *pinned_sha256;
  gboolean allow_insecure_http;
  char *secret;
};

G_DEFINE_FINAL_TYPE (HbSyncConfig, hb_sync_config, G_TYPE_OBJECT)

enum
{
  PROP_0,
  PROP_DATABASE_URL,
  PROP_AUTH_METHOD,
  PROP_USERNAME,
  PROP_CONTINUOUS,
  PROP_BATCH_SIZE,
  PROP_BATCH_BYTES,
  PROP_CACHE_MAX_DOCUMENTS,
  PROP_CACHE_MAX_BYTES,
  PROP_RETRY_INITIAL_MS,
  PROP_RETRY_MAX_MS,
  PROP_PUSH_DEBOUNCE_MS,
  PROP_HEARTBEAT_MS,
  PROP_TIMEOUT_MS,
  PROP_CA_FILE,
  PROP_PINNED_SHA256,
  PROP_ALLOW_INSECURE_HTTP,
  N_PROPS
};

static GParamSpec *properties[N_PROPS];

enum
{
  SIGNAL_SECRET_CHANGED,
  N_SIGNALS
};

static guint signals[N_SIGNALS];

static const SecretSchema credential_schema = {
  "org.healthbridge.Sync.Credential",
  SECRET_SCHEMA_NONE,
  {
      { "database-url", SECRET_SCHEMA_ATTRIBUTE_STRING },
      { "username", SECRET_SCHEMA_ATTRIBUTE_STRING },
      { "auth-method", SECRET_SCHEMA_ATTRIBUTE_STRING },
      { NULL, 0 },
  },
};

static void
set_uint (HbSyncConfig *self, guint *field, guint value, guint prop)
{
  if (*field == value)
    return;
  *field = value;
  g_object_notify_by_pspec (G_OBJECT (self), properties[prop]);
}

static void
set_uint64 (HbSyncConfig *self, guint64 *field, guint64 value, guint prop)
{
  if (*field == value)
    return;
  *field = value;
  g_object_notify_by_pspec (G_OBJECT (self), properties[prop]);
}

static void
set_bool (HbSyncConfig *self, gboolean *field, gboolean value, guint prop)
{
  value = !!value;
  if (*field == value)
    return;
  *field = value;
  g_object_notify_by_pspec (G_OBJECT (self), properties[prop]);
}

static void
set_string (HbSyncConfig *self, char **field, const char *value, guint prop)
{
  if (g_strcmp0 (*field, value) == 0)
    return;
  g_free (*field);
  *field = g_strdup (value);
  g_object_notify_by_pspec (G_OBJECT (self), properties[prop]);
}

/**
 * hb_sync_config_new:
 * @database_url: the database's URL, `https://host/db` (credentials in it are ignored: set
 *   #HbSyncConfig:username and the secret instead)
 *
 * Returns: (transfer full): a configuration with the defaults
 */
HbSyncConfig *
hb_sync_config_new (const char *database_url)
{
  g_return_val_if_fail (database_url != NULL, NULL);

  return g_object_new (HB_TYPE_SYNC_CONFIG, "database-url", database_url, NULL);
}

/**
 * hb_sync_config_get_database_url:
 * @self: a configuration
 *
 * Returns: the database URL
 */
const char *
hb_sync_config_get_database_url (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), NULL);
  return self->database_url;
}

/**
 * hb_sync_config_get_auth_method:
 * @self: a configuration
 *
 * Returns: the authentication method
 */
HbAuthMethod
hb_sync_config_get_auth_method (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), HB_AUTH_METHOD_NONE);
  return self->auth_method;
}

/**
 * hb_sync_config_set_auth_method:
 * @self: a configuration
 * @method: the authentication method
 *
 * Sets #HbSyncConfig:auth-method.
 */
void
hb_sync_config_set_auth_method (HbSyncConfig *self, HbAuthMethod method)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  if (self->auth_method == method)
    return;
  self->auth_method = method;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_AUTH_METHOD]);
}

/**
 * hb_sync_config_get_username:
 * @self: a configuration
 *
 * Returns: (nullable): the user name
 */
const char *
hb_sync_config_get_username (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), NULL);
  return self->username;
}

/**
 * hb_sync_config_set_username:
 * @self: a configuration
 * @username: (nullable): the user name
 *
 * Sets #HbSyncConfig:username.
 */
void
hb_sync_config_set_username (HbSyncConfig *self, const char *username)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  set_string (self, &self->username, username, PROP_USERNAME);
}

/**
 * hb_sync_config_get_continuous:
 * @self: a configuration
 *
 * Returns: whether the manager keeps syncing once started
 */
gboolean
hb_sync_config_get_continuous (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), FALSE);
  return self->continuous;
}

/**
 * hb_sync_config_set_continuous:
 * @self: a configuration
 * @continuous: whether the manager keeps syncing once started
 *
 * Sets #HbSyncConfig:continuous.
 */
void
hb_sync_config_set_continuous (HbSyncConfig *self, gboolean continuous)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  set_bool (self, &self->continuous, continuous, PROP_CONTINUOUS);
}

/**
 * hb_sync_config_get_batch_size:
 * @self: a configuration
 *
 * Returns: revisions per batch
 */
guint
hb_sync_config_get_batch_size (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->batch_size;
}

/**
 * hb_sync_config_set_batch_size:
 * @self: a configuration
 * @batch_size: revisions per batch, at least 1
 *
 * Sets #HbSyncConfig:batch-size.
 */
void
hb_sync_config_set_batch_size (HbSyncConfig *self, guint batch_size)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  g_return_if_fail (batch_size > 0);
  set_uint (self, &self->batch_size, batch_size, PROP_BATCH_SIZE);
}

/**
 * hb_sync_config_get_batch_bytes:
 * @self: a configuration
 *
 * Returns: plaintext bytes per batch
 */
guint64
hb_sync_config_get_batch_bytes (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->batch_bytes;
}

/**
 * hb_sync_config_set_batch_bytes:
 * @self: a configuration
 * @batch_bytes: plaintext bytes per batch, at least 1
 *
 * Sets #HbSyncConfig:batch-bytes.
 */
void
hb_sync_config_set_batch_bytes (HbSyncConfig *self, guint64 batch_bytes)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  g_return_if_fail (batch_bytes > 0);
  set_uint64 (self, &self->batch_bytes, batch_bytes, PROP_BATCH_BYTES);
}

/**
 * hb_sync_config_get_cache_max_documents:
 * @self: a configuration
 *
 * Returns: the sync cache's bound on documents
 */
guint
hb_sync_config_get_cache_max_documents (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->cache_max_documents;
}

/**
 * hb_sync_config_get_cache_max_bytes:
 * @self: a configuration
 *
 * Returns: the sync cache's bound on bytes
 */
guint64
hb_sync_config_get_cache_max_bytes (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->cache_max_bytes;
}

/**
 * hb_sync_config_set_cache_limits:
 * @self: a configuration
 * @max_documents: the sync cache's bound on documents, at least 1
 * @max_bytes: the sync cache's bound on bytes, at least 1
 *
 * Sets #HbSyncConfig:cache-max-documents and #HbSyncConfig:cache-max-bytes.
 */
void
hb_sync_config_set_cache_limits (HbSyncConfig *self, guint max_documents, guint64 max_bytes)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  g_return_if_fail (max_documents > 0 && max_bytes > 0);
  g_object_freeze_notify (G_OBJECT (self));
  set_uint (self, &self->cache_max_documents, max_documents, PROP_CACHE_MAX_DOCUMENTS);
  set_uint64 (self, &self->cache_max_bytes, max_bytes, PROP_CACHE_MAX_BYTES);
  g_object_thaw_notify (G_OBJECT (self));
}

/**
 * hb_sync_config_get_retry_initial_ms:
 * @self: a configuration
 *
 * Returns: the first wait after a failed sync, in milliseconds
 */
guint
hb_sync_config_get_retry_initial_ms (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->retry_initial_ms;
}

/**
 * hb_sync_config_get_retry_max_ms:
 * @self: a configuration
 *
 * Returns: the longest wait between failed syncs, in milliseconds
 */
guint
hb_sync_config_get_retry_max_ms (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->retry_max_ms;
}

/**
 * hb_sync_config_set_retry:
 * @self: a configuration
 * @initial_ms: the first wait after a failed sync
 * @max_ms: the longest wait; waits double from @initial_ms up to it, with jitter
 *
 * Sets the retry policy.
 */
void
hb_sync_config_set_retry (HbSyncConfig *self, guint initial_ms, guint max_ms)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  g_return_if_fail (initial_ms >= 10 && max_ms >= initial_ms);
  g_object_freeze_notify (G_OBJECT (self));
  set_uint (self, &self->retry_initial_ms, initial_ms, PROP_RETRY_INITIAL_MS);
  set_uint (self, &self->retry_max_ms, max_ms, PROP_RETRY_MAX_MS);
  g_object_thaw_notify (G_OBJECT (self));
}

/**
 * hb_sync_config_get_push_debounce_ms:
 * @self: a configuration
 *
 * Returns: how long the store must stay quiet before a push, in milliseconds
 */
guint
hb_sync_config_get_push_debounce_ms (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->push_debounce_ms;
}

/**
 * hb_sync_config_set_push_debounce_ms:
 * @self: a configuration
 * @debounce_ms: how long the store must stay quiet before a push
 *
 * Sets #HbSyncConfig:push-debounce-ms.
 */
void
hb_sync_config_set_push_debounce_ms (HbSyncConfig *self, guint debounce_ms)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  set_uint (self, &self->push_debounce_ms, debounce_ms, PROP_PUSH_DEBOUNCE_MS);
}

/**
 * hb_sync_config_get_heartbeat_ms:
 * @self: a configuration
 *
 * Returns: the changes feed's heartbeat, in milliseconds
 */
guint
hb_sync_config_get_heartbeat_ms (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->heartbeat_ms;
}

/**
 * hb_sync_config_set_heartbeat_ms:
 * @self: a configuration
 * @heartbeat_ms: the changes feed's heartbeat, at least 1000
 *
 * Sets #HbSyncConfig:heartbeat-ms.
 */
void
hb_sync_config_set_heartbeat_ms (HbSyncConfig *self, guint heartbeat_ms)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  g_return_if_fail (heartbeat_ms >= 1000);
  set_uint (self, &self->heartbeat_ms, heartbeat_ms, PROP_HEARTBEAT_MS);
}

/**
 * hb_sync_config_get_timeout_ms:
 * @self: a configuration
 *
 * Returns: how long a request may wait for the server, in milliseconds
 */
guint
hb_sync_config_get_timeout_ms (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), 0);
  return self->timeout_ms;
}

/**
 * hb_sync_config_set_timeout_ms:
 * @self: a configuration
 * @timeout_ms: how long a request may wait for the server, at least 1000
 *
 * Sets #HbSyncConfig:timeout-ms.
 */
void
hb_sync_config_set_timeout_ms (HbSyncConfig *self, guint timeout_ms)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  g_return_if_fail (timeout_ms >= 1000);
  set_uint (self, &self->timeout_ms, timeout_ms, PROP_TIMEOUT_MS);
}

/**
 * hb_sync_config_get_ca_file:
 * @self: a configuration
 *
 * Returns: (nullable) (type filename): the CA file trusted instead of the system's
 */
const char *
hb_sync_config_get_ca_file (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), NULL);
  return self->ca_file;
}

/**
 * hb_sync_config_set_ca_file:
 * @self: a configuration
 * @ca_file: (nullable) (type filename): a PEM file of trusted certificate authorities
 *
 * Sets #HbSyncConfig:ca-file.
 */
void
hb_sync_config_set_ca_file (HbSyncConfig *self, const char *ca_file)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  set_string (self, &self->ca_file, ca_file, PROP_CA_FILE);
}

/**
 * hb_sync_config_get_pinned_sha256:
 * @self: a configuration
 *
 * Returns: (nullable): the pinned certificate fingerprint
 */
const char *
hb_sync_config_get_pinned_sha256 (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), NULL);
  return self->pinned_sha256;
}

/**
 * hb_sync_config_set_pinned_sha256:
 * @self: a configuration
 * @fingerprint: (nullable): the SHA-256 of the server certificate's DER bytes, in hex (colons
 *   and case ignored), or %NULL for no pinning
 *
 * Sets #HbSyncConfig:pinned-sha256. Pinning is checked in addition to normal verification.
 */
void
hb_sync_config_set_pinned_sha256 (HbSyncConfig *self, const char *fingerprint)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  set_string (self, &self->pinned_sha256, fingerprint, PROP_PINNED_SHA256);
}

/**
 * hb_sync_config_get_allow_insecure_http:
 * @self: a configuration
 *
 * Returns: whether plain http is allowed to a host other than loopback
 */
gboolean
hb_sync_config_get_allow_insecure_http (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), FALSE);
  return self->allow_insecure_http;
}

/**
 * hb_sync_config_set_allow_insecure_http:
 * @self: a configuration
 * @allow: whether plain http is allowed to a host other than loopback
 *
 * Sets #HbSyncConfig:allow-insecure-http. Off by default: clinical data in plaintext crosses
 * the network only over TLS.
 */
void
hb_sync_config_set_allow_insecure_http (HbSyncConfig *self, gboolean allow)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  set_bool (self, &self->allow_insecure_http, allow, PROP_ALLOW_INSECURE_HTTP);
}

/* ---- the secret ------------------------------------------------------------------------ */

static void
wipe_secret (HbSyncConfig *self)
{
  if (self->secret != NULL)
    {
      hb_wipe (self->secret, strlen (self->secret));
      g_clear_pointer (&self->secret, g_free);
    }
}

static void
replace_secret (HbSyncConfig *self, const char *secret)
{
  wipe_secret (self);
  self->secret = g_strdup (secret);
}

/**
 * hb_sync_config_set_secret:
 * @self: a configuration
 * @secret: (nullable): the password (basic, cookie) or bearer token, or %NULL
 *
 * Holds the secret in memory for this configuration (wiped when replaced or finalized). It is
 * never a property and never written anywhere but the Secret Service, by
 * hb_sync_config_save_secret_sync(). Emits #HbSyncConfig::secret-changed.
 */
void
hb_sync_config_set_secret (HbSyncConfig *self, const char *secret)
{
  g_return_if_fail (HB_IS_SYNC_CONFIG (self));
  replace_secret (self, secret);
  g_signal_emit (self, signals[SIGNAL_SECRET_CHANGED], 0);
}

/**
 * hb_sync_config_has_secret:
 * @self: a configuration
 *
 * Returns: whether a secret is held
 */
gboolean
hb_sync_config_has_secret (HbSyncConfig *self)
{
  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), FALSE);
  return self->secret != NULL;
}

/* For the manager: the secret itself. */
const char *_hb_sync_config_peek_secret (HbSyncConfig *self);

const char *
_hb_sync_config_peek_secret (HbSyncConfig *self)
{
  return self->secret;
}

static const char *
method_name (HbAuthMethod method)
{
  switch (method)
    {
      case HB_AUTH_METHOD_BASIC:
        return "basic";
      case HB_AUTH_METHOD_COOKIE:
        return "cookie";
      case HB_AUTH_METHOD_BEARER:
        return "bearer";
      case HB_AUTH_METHOD_NONE:
      default:
        return "none";
    }
}

/* The database URL without user info, as the Secret Service item's attribute. */
static char *
bare_url (const char *url)
{
  g_autoptr (GUri) uri = g_uri_parse (url, G_URI_FLAGS_ENCODED, NULL);

  if (uri == NULL)
    return g_strdup (url);
  return g_uri_join (G_URI_FLAGS_ENCODED, g_uri_get_scheme (uri), NULL, g_uri_get_host (uri),
                     g_uri_get_port (uri), g_uri_get_path (uri), NULL, NULL);
}

/**
 * hb_sync_config_save_secret_sync:
 * @self: a configuration
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Stores the secret held by hb_sync_config_set_secret() in the Secret Service, under the
 * database URL, the user name and the authentication method. Blocks: call it from a worker
 * thread or a command-line tool.
 *
 * Returns: %TRUE if stored
 */
gboolean
hb_sync_config_save_secret_sync (HbSyncConfig *self, GCancellable *cancellable, GError **error)
{
  g_autofree char *url = NULL;
  g_autofree char *label = NULL;

  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), FALSE);
  if (self->secret == NULL)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "No secret to save");
      return FALSE;
    }
  url = bare_url (self->database_url);
  label = g_strdup_printf ("HealthBridge Sync credential for %s", url);
  return secret_password_store_sync (&credential_schema, SECRET_COLLECTION_DEFAULT, label,
                                     self->secret, cancellable, error, "database-url", url,
                                     "username", self->username != NULL ? self->username : "",
                                     "auth-method", method_name (self->auth_method), NULL);
}

/**
 * hb_sync_config_load_secret_sync:
 * @self: a configuration
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Loads the secret saved for this database, user and method into memory. Blocks. Since it
 * may run on any thread, it does not emit #HbSyncConfig::secret-changed: load before creating
 * a manager, or hand the secret to a running one with hb_sync_config_set_secret().
 *
 * Returns: %TRUE if a secret was found; %FALSE without an error when there is none
 */
gboolean
hb_sync_config_load_secret_sync (HbSyncConfig *self, GCancellable *cancellable, GError **error)
{
  g_autofree char *url = NULL;
  char *secret;

  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), FALSE);
  url = bare_url (self->database_url);
  secret = secret_password_lookup_nonpageable_sync (
      &credential_schema, cancellable, error, "database-url", url, "username",
      self->username != NULL ? self->username : "", "auth-method", method_name (self->auth_method),
      NULL);
  if (secret == NULL)
    return FALSE;
  replace_secret (self, secret);
  secret_password_free (secret);
  return TRUE;
}

/**
 * hb_sync_config_forget_secret_sync:
 * @self: a configuration
 * @cancellable: (nullable): a cancellable
 * @error: return location for an error
 *
 * Removes the saved secret from the Secret Service and wipes the one in memory. Blocks.
 *
 * Returns: %TRUE unless the Secret Service failed
 */
gboolean
hb_sync_config_forget_secret_sync (HbSyncConfig *self, GCancellable *cancellable, GError **error)
{
  g_autofree char *url = NULL;
  g_autoptr (GError) local = NULL;

  g_return_val_if_fail (HB_IS_SYNC_CONFIG (self), FALSE);
  wipe_secret (self);
  url = bare_url (self->database_url);
  secret_password_clear_sync (&credential_schema, cancellable, &local, "database-url", url,
                              "username", self->username != NULL ? self->username : "",
                              "auth-method", method_name (self->auth_method), NULL);
  if (local != NULL)
    {
      g_propagate_error (error, g_steal_pointer (&local));
      return FALSE;
    }
  return TRUE;
}

/* ---- object ---------------------------------------------------------------------------- */

static void
hb_sync_config_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  HbSyncConfig *self = HB_SYNC_CONFIG (object);

  switch (prop_id)
    {
      case PROP_DATABASE_URL:
        g_value_set_string (value, self->database_url);
        break;
      case PROP_AUTH_METHOD:
        g_value_set_enum (value, self->auth_method);
        break;
      case PROP_USERNAME:
        g_value_set_string (value, self->username);
        break;
      case PROP_CONTINUOUS:
        g_value_set_boolean (value, self->continuous);
        break;
      case PROP_BATCH_SIZE:
        g_value_set_uint (value, self->batch_size);
        break;
      case PROP_BATCH_BYTES:
        g_value_set_uint64 (value, self->batch_bytes);
        break;
      case PROP_CACHE_MAX_DOCUMENTS:
        g_value_set_uint (value, self->cache_max_documents);
        break;
      case PROP_CACHE_MAX_BYTES:
        g_value_set_uint64 (value, self->cache_max_bytes);
        break;
      case PROP_RETRY_INITIAL_MS:
        g_value_set_uint (value, self->retry_initial_ms);
        break;
      case PROP_RETRY_MAX_MS:
        g_value_set_uint (value, self->retry_max_ms);
        break;
      case PROP_PUSH_DEBOUNCE_MS:
        g_value_set_uint (value, self->push_debounce_ms);
        break;
      case PROP_HEARTBEAT_MS:
        g_value_set_uint (value, self->heartbeat_ms);
        break;
      case PROP_TIMEOUT_MS:
        g_value_set_uint (value, self->timeout_ms);
        break;
      case PROP_CA_FILE:
        g_value_set_string (value, self->ca_file);
        break;
      case PROP_PINNED_SHA256:
        g_value_set_string (value, self->pinned_sha256);
        break;
      case PROP_ALLOW_INSECURE_HTTP:
        g_value_set_boolean (value, self->allow_insecure_http);
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_sync_config_set_property (GObject *object, guint prop_id, const GValue *value, GParamSpec *pspec)
{
  HbSyncConfig *self = HB_SYNC_CONFIG (object);

  switch (prop_id)
    {
      case PROP_DATABASE_URL:
        self->database_url = g_value_dup_string (value);
        break;
      case PROP_AUTH_METHOD:
        hb_sync_config_set_auth_method (self, g_value_get_enum (value));
        break;
      case PROP_USERNAME:
        set_string (self, &self->username, g_value_get_string (value), prop_id);
        break;
      case PROP_CONTINUOUS:
        set_bool (self, &self->continuous, g_value_get_boolean (value), prop_id);
        break;
      case PROP_BATCH_SIZE:
        set_uint (self, &self->batch_size, g_value_get_uint (value), prop_id);
        break;
      case PROP_BATCH_BYTES:
        set_uint64 (self, &self->batch_bytes, g_value_get_uint64 (value), prop_id);
        break;
      case PROP_CACHE_MAX_DOCUMENTS:
        set_uint (self, &self->cache_max_documents, g_value_get_uint (value), prop_id);
        break;
      case PROP_CACHE_MAX_BYTES:
        set_uint64 (self, &self->cache_max_bytes, g_value_get_uint64 (value), prop_id);
        break;
      case PROP_RETRY_INITIAL_MS:
        set_uint (self, &self->retry_initial_ms, g_value_get_uint (value), prop_id);
        break;
      case PROP_RETRY_MAX_MS:
        set_uint (self, &self->retry_max_ms, g_value_get_uint (value), prop_id);
        break;
      case PROP_PUSH_DEBOUNCE_MS:
        set_uint (self, &self->push_debounce_ms, g_value_get_uint (value), prop_id);
        break;
      case PROP_HEARTBEAT_MS:
        set_uint (self, &self->heartbeat_ms, g_value_get_uint (value), prop_id);
        break;
      case PROP_TIMEOUT_MS:
        set_uint (self, &self->timeout_ms, g_value_get_uint (value), prop_id);
        break;
      case PROP_CA_FILE:
        set_string (self, &self->ca_file, g_value_get_string (value), prop_id);
        break;
      case PROP_PINNED_SHA256:
        set_string (self, &self->pinned_sha256, g_value_get_string (value), prop_id);
        break;
      case PROP_ALLOW_INSECURE_HTTP:
        set_bool (self, &self->allow_insecure_http, g_value_get_boolean (value), prop_id);
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_sync_config_finalize (GObject *object)
{
  HbSyncConfig *self = HB_SYNC_CONFIG (object);

  wipe_secret (self);
  g_free (self->database_url);
  g_free (self->username);
  g_free (self->ca_file);
  g_free (self->pinned_sha256);
  G_OBJECT_CLASS (hb_sync_config_parent_class)->finalize (object);
}

#define RW (G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS)

static void
hb_sync_config_class_init (HbSyncConfigClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->get_property = hb_sync_config_get_property;
  object_class->set_property = hb_sync_config_set_property;
  object_class->finalize = hb_sync_config_finalize;

  /**
   * HbSyncConfig:database-url:
   *
   * The database's URL.
   */
  properties[PROP_DATABASE_URL]
      = g_param_spec_string ("database-url", NULL, NULL, NULL,
                             G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);
  /**
   * HbSyncConfig:auth-method:
   *
   * How the server is told who the workstation is.
   */
  properties[PROP_AUTH_METHOD]
      = g_param_spec_enum ("auth-method", NULL, NULL, HB_TYPE_AUTH_METHOD, HB_AUTH_METHOD_NONE, RW);
  /**
   * HbSyncConfig:username:
   *
   * The user name for basic or cookie authentication.
   */
  properties[PROP_USERNAME] = g_param_spec_string ("username", NULL, NULL, NULL, RW);
  /**
   * HbSyncConfig:continuous:
   *
   * Whether the manager keeps syncing once started.
   */
  properties[PROP_CONTINUOUS] = g_param_spec_boolean ("continuous", NULL, NULL, TRUE, RW);
  /**
   * HbSyncConfig:batch-size:
   *
   * Revisions per batch.
   */
  properties[PROP_BATCH_SIZE] = g_param_spec_uint ("batch-size", NULL, NULL, 1, 100000, 100, RW);
  /**
   * HbSyncConfig:batch-bytes:
   *
   * Plaintext bytes per batch.
   */
  properties[PROP_BATCH_BYTES] = g_param_spec_uint64 ("batch-bytes", NULL, NULL, 1, G_MAXUINT64,
                                                      G_GUINT64_CONSTANT (4) * 1024 * 1024, RW);
  /**
   * HbSyncConfig:cache-max-documents:
   *
   * The sync cache's bound on documents.
   */
  properties[PROP_CACHE_MAX_DOCUMENTS] = g_param_spec_uint (
      "cache-max-documents", NULL, NULL, 1, G_MAXUINT, HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS, RW);
  /**
   * HbSyncConfig:cache-max-bytes:
   *
   * The sync cache's bound on bytes.
   */
  properties[PROP_CACHE_MAX_BYTES] = g_param_spec_uint64 (
      "cache-max-bytes", NULL, NULL, 1, G_MAXUINT64, G_GUINT64_CONSTANT (50) * 1024 * 1024, RW);
  /**
   * HbSyncConfig:retry-initial-ms:
   *
   * The first wait after a failed sync.
   */
  properties[PROP_RETRY_INITIAL_MS]
      = g_param_spec_uint ("retry-initial-ms", NULL, NULL, 10, G_MAXUINT, 1000, RW);
  /**
   * HbSyncConfig:retry-max-ms:
   *
   * The longest wait between failed syncs.
   */
  properties[PROP_RETRY_MAX_MS]
      = g_param_spec_uint ("retry-max-ms", NULL, NULL, 10, G_MAXUINT, 300000, RW);
  /**
   * HbSyncConfig:push-debounce-ms:
   *
   * How long the store must stay quiet before its changes are pushed.
   */
  properties[PROP_PUSH_DEBOUNCE_MS]
      = g_param_spec_uint ("push-debounce-ms", NULL, NULL, 0, G_MAXUINT, 500, RW);
  /**
   * HbSyncConfig:heartbeat-ms:
   *
   * The changes feed's heartbeat.
   */
  properties[PROP_HEARTBEAT_MS]
      = g_param_spec_uint ("heartbeat-ms", NULL, NULL, 1000, G_MAXUINT, 10000, RW);
  /**
   * HbSyncConfig:timeout-ms:
   *
   * How long a request may wait for the server.
   */
  properties[PROP_TIMEOUT_MS]
      = g_param_spec_uint ("timeout-ms", NULL, NULL, 1000, G_MAXUINT, 60000, RW);
  /**
   * HbSyncConfig:ca-file:
   *
   * A PEM file of certificate authorities trusted instead of the system's.
   */
  properties[PROP_CA_FILE] = g_param_spec_string ("ca-file", NULL, NULL, NULL, RW);
  /**
   * HbSyncConfig:pinned-sha256:
   *
   * The SHA-256 fingerprint the server's certificate must have.
   */
  properties[PROP_PINNED_SHA256] = g_param_spec_string ("pinned-sha256", NULL, NULL, NULL, RW);
  /**
   * HbSyncConfig:allow-insecure-http:
   *
   * Whether plain http is allowed to a host other than loopback.
   */
  properties[PROP_ALLOW_INSECURE_HTTP]
      = g_param_spec_boolean ("allow-insecure-http", NULL, NULL, FALSE, RW);
  g_object_class_install_properties (object_class, N_PROPS, properties);

  /**
   * HbSyncConfig::secret-changed:
   * @self: the configuration
   *
   * Emitted by hb_sync_config_set_secret(), on the thread that called it, so that a running
   * #HbSyncManager sends the new password or token from then on. The secret itself is never
   * passed.
   */
  signals[SIGNAL_SECRET_CHANGED]
      = g_signal_new ("secret-changed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL,
                      NULL, G_TYPE_NONE, 0);
}

static void
hb_sync_config_init (HbSyncConfig *self)
{
  self->continuous = TRUE;
  self->batch_size = 100;
  self->batch_bytes = G_GUINT64_CONSTANT (4) * 1024 * 1024;
  self->cache_max_documents = HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS;
  self->cache_max_bytes = G_GUINT64_CONSTANT (50) * 1024 * 1024;
  self->retry_initial_ms = 1000;
  self->retry_max_ms = 300000;
  self->push_debounce_ms = 500;
  self->heartbeat_ms = 10000;
  self->timeout_ms = 60000;
}
