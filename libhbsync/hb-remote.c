/* HbRemote: one CouchDB database over libsoup 3.
 *
 * Every request follows one path: its credentials are made ready (a cookie session may need a
 * login first, which the request waits for), a SoupMessage is sent and its whole answer read on
 * the owner's main context, never more than #HbRemote:max-response-bytes of it (so each
 * connection is left clean and goes back to the pool), a 401 may send it once more with fresh
 * credentials, then the status is judged and the body parsed in a worker thread
 * (hb-remote-parse.c), so megabytes of JSON never stall the caller's main loop.
 *
 * TLS is verified against the system's authorities or only those of a CA file. A pinned
 * fingerprint is checked inside certificate verification, by a GTlsDatabase wrapping the real
 * one, so a server that fails the pin fails the handshake and never sees a request. */

#include <libsoup/soup.h>
#include <string.h>

#include "hb-crypto-private.h"
#include "hb-enums.h"
#include "hb-json-private.h"
#include "hb-remote-parse-private.h"
#include "hb-remote.h"
#include "hb-version.h"

#define DEFAULT_MAX_CONNECTIONS 8
#define DEFAULT_TIMEOUT 60
/* A longpoll feed with no I/O timeout to stay under still ends after this long. */
#define DEFAULT_LONGPOLL_MS 60000
/* CouchDB's default session timeout, in seconds. */
#define DEFAULT_COOKIE_LIFETIME 600
#define DEFAULT_LOGIN_INTERVAL 5
#define DEFAULT_MAX_RESPONSE_BYTES ((guint64)256 * 1024 * 1024)
/* A login answer is a few hundred bytes. */
#define MAX_LOGIN_RESPONSE_BYTES (64 * 1024)
#define READ_CHUNK (64 * 1024)
#define PIN_LEN 32

typedef enum
{
  AUTH_NONE,
  AUTH_BASIC,
  AUTH_COOKIE,
  AUTH_BEARER,
} AuthKind;

struct _HbRemote
{
  GObject parent_instance;

  char *url;
  GUri *session_uri;          /* the server's /_session, beside the database */
  gboolean plain_http_remote; /* http to a host that is not loopback */
  SoupSession *session;
  guint max_connections;
  guint timeout;
  char *user_agent;
  guint64 max_response_bytes;
  gboolean allow_insecure_http;

  /* Credentials. Every string here is wiped when it is replaced. */
  AuthKind auth;
  char *authorization;   /* "Basic ..." or "Bearer ..." */
  guint auth_generation; /* changes whenever what a request carries changes */
  gboolean token_expired_emitted;

  /* The cookie session. */
  char *login_body; /* {"name": ..., "password": ...} */
  char *cookie;     /* "AuthSession=..." */
  gint64 cookie_refresh_at;
  guint cookie_lifetime;
  guint login_interval;
  gint64 last_login_at; /* -1: none since the credentials were set */
  gboolean login_in_flight;
  guint login_generation;
  GError *login_error; /* why the last login failed */
  GQueue login_waiters;

  GTlsDatabase *ca_database;
  gboolean pinned;
  guint8 pin[PIN_LEN];
};

enum
{
  PROP_0,
  PROP_URL,
  PROP_MAX_CONNECTIONS,
  PROP_TIMEOUT,
  PROP_USER_AGENT,
  PROP_COOKIE_LIFETIME,
  PROP_LOGIN_INTERVAL,
  PROP_ALLOW_INSECURE_HTTP,
  PROP_MAX_RESPONSE_BYTES,
  N_PROPS
};

static GParamSpec *properties[N_PROPS];

enum
{
  SIGNAL_TOKEN_EXPIRED,
  N_SIGNALS
};

static guint signals[N_SIGNALS];

G_DEFINE_FINAL_TYPE (HbRemote, hb_remote, G_TYPE_OBJECT)
/* clang-format off */
G_DEFINE_QUARK (hb-remote-error-quark, hb_remote_error)
/* clang-format on */

/**
 * hb_remote_error_is_transient:
 * @error: an error from #HbRemote
 *
 * Whether the request that failed with @error may succeed if sent again later: a dropped or
 * refused connection, a timeout, a server error (5xx but 501, or 429). Everything else (a
 * refusal, a conflict, a bad answer, a TLS failure) will fail the same way again.
 *
 * Returns: %TRUE for an error worth retrying with backoff
 */
gboolean
hb_remote_error_is_transient (const GError *error)
{
  g_return_val_if_fail (error != NULL, FALSE);
  return g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NETWORK)
         || g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TIMEOUT)
         || g_error_matches (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_SERVER);
}

/* ---- certificate pinning ----------------------------------------------------------------- */

static gboolean
certificate_matches_pin (GTlsCertificate *certificate, const guint8 pin[PIN_LEN])
{
  g_autoptr (GByteArray) der = NULL;
  guint8 digest[PIN_LEN];
  guint8 diff = 0;

  g_object_get (certificate, "certificate", &der, NULL);
  if (der == NULL)
    return FALSE;
  hb_sha256 (der->data, der->len, digest);
  /* Constant time: how much of the digest matched must not show. */
  for (guint i = 0; i < PIN_LEN; i++)
    diff |= digest[i] ^ pin[i];
  return diff == 0;
}

/* A GTlsDatabase that verifies as the one it wraps does, and also refuses a server
 * certificate whose fingerprint is not the pinned one. */
typedef struct
{
  GTlsDatabase parent_instance;
  GTlsDatabase *inner; /* NULL when the TLS backend has none: then nothing is trusted */
  guint8 pin[PIN_LEN];
} HbPinnedDatabase;

typedef GTlsDatabaseClass HbPinnedDatabaseClass;

static GType pinned_database_get_type (void);

G_DEFINE_FINAL_TYPE (HbPinnedDatabase, pinned_database, G_TYPE_TLS_DATABASE)

static GTlsCertificateFlags
pinned_database_verify_chain (GTlsDatabase *database,
                              GTlsCertificate *chain,
                              const char *purpose,
                              GSocketConnectable *identity,
                              GTlsInteraction *interaction,
                              GTlsDatabaseVerifyFlags flags,
                              GCancellable *cancellable,
                              GError **error)
{
  HbPinnedDatabase *self = (HbPinnedDatabase *)database;
  GTlsCertificateFlags errors = G_TLS_CERTIFICATE_UNKNOWN_CA;

  if (self->inner != NULL)
    errors = g_tls_database_verify_chain (self->inner, chain, purpose, identity, interaction, flags,
                                          cancellable, error);
  if (!certificate_matches_pin (chain, self->pin))
    errors |= G_TLS_CERTIFICATE_GENERIC_ERROR;
  return errors;
}

static void
pinned_database_finalize (GObject *object)
{
  HbPinnedDatabase *self = (HbPinnedDatabase *)object;

  g_clear_object (&self->inner);
  G_OBJECT_CLASS (pinned_database_parent_class)->finalize (object);
}

static void
pinned_database_class_init (HbPinnedDatabaseClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = pinned_database_finalize;
  klass->verify_chain = pinned_database_verify_chain;
}

static void
pinned_database_init (HbPinnedDatabase *self)
{
}

/* What the session verifies servers with; NULL for libsoup's default, the system's. */
static GTlsDatabase *
session_tls_database (HbRemote *self)
{
  HbPinnedDatabase *pinned;

  if (!self->pinned)
    return self->ca_database != NULL ? g_object_ref (self->ca_database) : NULL;
  pinned = g_object_new (pinned_database_get_type (), NULL);
  pinned->inner = self->ca_database != NULL
                      ? g_object_ref (self->ca_database)
                      : g_tls_backend_get_default_database (g_tls_backend_get_default ());
  memcpy (pinned->pin, self->pin, PIN_LEN);
  return G_TLS_DATABASE (pinned);
}

/* ---- URL and credentials ----------------------------------------------------------------- */

static gboolean
invalid_url (GError **error, const char *problem)
{
  /* Never quote the URL: it may carry a password. */
  g_set_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FAILED, "Invalid database URL: %s", problem);
  return FALSE;
}

/* The URL without user info, query, fragment, default port or trailing slash, the host in
 * lower case; and the credentials it carried, decoded. */
static gboolean
parse_database_url (
    const char *url, char **out_url, char **out_user, char **out_password, GError **error)
{
  g_autoptr (GUri) uri = NULL;
  g_autofree char *host = NULL;
  g_autofree char *path = NULL;
  const char *scheme;
  gsize len;
  int port;

  *out_url = *out_user = *out_password = NULL;
  if (url == NULL)
    return invalid_url (error, "none given");
  uri = g_uri_parse (url,
                     G_URI_FLAGS_HAS_PASSWORD | G_URI_FLAGS_ENCODED_PATH | G_URI_FLAGS_ENCODED_QUERY
                         | G_URI_FLAGS_ENCODED_FRAGMENT,
                     NULL);
  if (uri == NULL)
    return invalid_url (error, "not a URL");
  scheme = g_uri_get_scheme (uri);
  if (g_ascii_strcasecmp (scheme, "http") != 0 && g_ascii_strcasecmp (scheme, "https") != 0)
    return invalid_url (error, "not http or https");
  if (g_uri_get_host (uri) == NULL || *g_uri_get_host (uri) == '\0')
    return invalid_url (error, "no host");
  if (g_uri_get_query (uri) != NULL || g_uri_get_fragment (uri) != NULL)
    return invalid_url (error, "a database URL has no query or fragment");
  path = g_strdup (g_uri_get_path (uri));
  len = strlen (path);
  while (len > 0 && path[len - 1] == '/')
    path[--len] = '\0';
  if (len == 0)
    return invalid_url (error, "no database named");
  if (g_uri_get_user (uri) != NULL && strchr (g_uri_get_user (uri), ':') != NULL)
    return invalid_url (error, "a user name cannot hold “:”");
  host = g_ascii_strdown (g_uri_get_host (uri), -1);
  port = g_uri_get_port (uri);
  if ((port == 80 && g_ascii_strcasecmp (scheme, "http") == 0)
      || (port == 443 && g_ascii_strcasecmp (scheme, "https") == 0))
    port = -1;
  *out_url = g_uri_join (G_URI_FLAGS_ENCODED_PATH, scheme, NULL, host, port, path, NULL, NULL);
  *out_user = g_strdup (g_uri_get_user (uri));
  *out_password = g_strdup (g_uri_get_password (uri));
  return TRUE;
}

static gboolean
is_loopback (const char *host)
{
  g_autoptr (GInetAddress) address = g_inet_address_new_from_string (host);

  if (g_ascii_strcasecmp (host, "localhost") == 0)
    return TRUE;
  return address != NULL && g_inet_address_get_is_loopback (address);
}

static void
wipe_string (char **s)
{
  if (*s == NULL)
    return;
  hb_wipe (*s, strlen (*s));
  g_clear_pointer (s, g_free);
}

static void
wipe_and_free (gpointer s)
{
  hb_wipe (s, strlen (s));
  g_free (s);
}

/* Whatever credentials there were are forgotten, and so is every failure they met. */
static void
clear_credentials (HbRemote *self)
{
  wipe_string (&self->authorization);
  wipe_string (&self->login_body);
  wipe_string (&self->cookie);
  g_clear_error (&self->login_error);
  self->last_login_at = -1;
  self->token_expired_emitted = FALSE;
  self->auth = AUTH_NONE;
  self->auth_generation++;
}

/**
 * hb_remote_set_basic_auth:
 * @self: a remote
 * @username: (nullable): the user name, %NULL for no credentials
 * @password: (nullable): the password (%NULL for an empty one)
 *
 * Sends HTTP basic credentials with every request from now on, preemptively: CouchDB does not
 * always challenge before refusing. The password is kept only inside the encoded header, which
 * is wiped when it is replaced and when @self is finalized; use https for anything but
 * loopback. Replaces any other credentials.
 */
void
hb_remote_set_basic_auth (HbRemote *self, const char *username, const char *password)
{
  g_autofree char *pair = NULL;
  g_autofree char *encoded = NULL;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (username == NULL || strchr (username, ':') == NULL);

  clear_credentials (self);
  if (username == NULL)
    return;
  pair = g_strconcat (username, ":", password != NULL ? password : "", NULL);
  encoded = g_base64_encode ((const guchar *)pair, strlen (pair));
  self->authorization = g_strconcat ("Basic ", encoded, NULL);
  self->auth = AUTH_BASIC;
  wipe_string (&pair);
  wipe_string (&encoded);
}

/**
 * hb_remote_set_cookie_auth:
 * @self: a remote
 * @username: (nullable): the user name, %NULL for no credentials
 * @password: (nullable): the password (%NULL for an empty one)
 *
 * Authenticates with a CouchDB cookie session from now on: the first request logs in with
 * `POST /_session` beside the database, and every request carries the `AuthSession` cookie.
 * The cookie is renewed when nine tenths of its life have passed (the life the server gave it,
 * or #HbRemote:cookie-lifetime), and once, with the request sent again, when a request is
 * refused with a 401. There is only ever one login under way, which requests wait for, and at
 * most one per #HbRemote:login-interval, so a wrong password cannot make a storm of them; a
 * refused login fails the requests waiting for it with %HB_REMOTE_ERROR_UNAUTHORIZED.
 *
 * The password and the cookie are kept in memory only and wiped when replaced and when @self
 * is finalized. Replaces any other credentials.
 */
void
hb_remote_set_cookie_auth (HbRemote *self, const char *username, const char *password)
{
  GString *body;

  g_return_if_fail (HB_IS_REMOTE (self));

  clear_credentials (self);
  if (username == NULL)
    return;
  if (password == NULL)
    password = "";
  /* Sized for the worst escaping, so the password is never left behind by a reallocation. */
  body = g_string_sized_new (6 * (strlen (username) + strlen (password)) + 32);
  g_string_append (body, "{\"name\":");
  hb_json_append_string (body, username);
  g_string_append (body, ",\"password\":");
  hb_json_append_string (body, password);
  g_string_append_c (body, '}');
  self->login_body = g_string_free (body, FALSE);
  self->auth = AUTH_COOKIE;
}

/**
 * hb_remote_set_bearer_token:
 * @self: a remote
 * @token: (nullable): the token, %NULL for no credentials
 *
 * Sends `Authorization: Bearer` with @token on every request from now on. When the server
 * refuses it with a 401, #HbRemote::token-expired is emitted (once per token) and the request
 * fails with %HB_REMOTE_ERROR_UNAUTHORIZED, unless a handler set a new token at once, in which
 * case the request is sent again with it. Requests sent after a new token is set carry it. The
 * token is wiped when replaced and when @self is finalized. Replaces any other credentials.
 */
void
hb_remote_set_bearer_token (HbRemote *self, const char *token)
{
  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (token == NULL || strpbrk (token, "\r\n") == NULL);

  clear_credentials (self);
  if (token == NULL)
    return;
  self->authorization = g_strconcat ("Bearer ", token, NULL);
  self->auth = AUTH_BEARER;
}

static void
set_url (HbRemote *self, const char *url)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *user = NULL;
  g_autofree char *password = NULL;
  g_autoptr (GUri) uri = NULL;

  if (!parse_database_url (url, &self->url, &user, &password, &error))
    {
      g_critical ("HbRemote: %s", error->message);
      return;
    }
  uri = g_uri_parse (self->url, SOUP_HTTP_URI_FLAGS, NULL);
  self->plain_http_remote = g_ascii_strcasecmp (g_uri_get_scheme (uri), "http") == 0
                            && !is_loopback (g_uri_get_host (uri));
  /* The session lives at the server's root, which is the database's parent: a server behind
   * a reverse proxy may be mounted below the host's root. */
  self->session_uri = g_uri_parse_relative (uri, "./_session", SOUP_HTTP_URI_FLAGS, NULL);
  if (user != NULL)
    hb_remote_set_basic_auth (self, user, password);
  wipe_string (&password);
}

/* ---- object ------------------------------------------------------------------------------ */

static void
hb_remote_finalize (GObject *object)
{
  HbRemote *self = HB_REMOTE (object);

  /* Waiting requests and logins hold a reference: none can be left. */
  g_assert (g_queue_is_empty (&self->login_waiters));
  g_clear_object (&self->session);
  clear_credentials (self);
  g_clear_object (&self->ca_database);
  hb_wipe (self->pin, PIN_LEN);
  g_clear_pointer (&self->session_uri, g_uri_unref);
  g_clear_pointer (&self->url, g_free);
  g_clear_pointer (&self->user_agent, g_free);
  G_OBJECT_CLASS (hb_remote_parent_class)->finalize (object);
}

static void
hb_remote_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  HbRemote *self = HB_REMOTE (object);

  switch (prop_id)
    {
      case PROP_URL:
        g_value_set_string (value, self->url);
        break;
      case PROP_MAX_CONNECTIONS:
        g_value_set_uint (value, self->max_connections);
        break;
      case PROP_TIMEOUT:
        g_value_set_uint (value, self->timeout);
        break;
      case PROP_USER_AGENT:
        g_value_set_string (value, self->user_agent);
        break;
      case PROP_COOKIE_LIFETIME:
        g_value_set_uint (value, self->cookie_lifetime);
        break;
      case PROP_LOGIN_INTERVAL:
        g_value_set_uint (value, self->login_interval);
        break;
      case PROP_ALLOW_INSECURE_HTTP:
        g_value_set_boolean (value, self->allow_insecure_http);
        break;
      case PROP_MAX_RESPONSE_BYTES:
        g_value_set_uint64 (value, self->max_response_bytes);
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_remote_set_property (GObject *object, guint prop_id, const GValue *value, GParamSpec *pspec)
{
  HbRemote *self = HB_REMOTE (object);

  switch (prop_id)
    {
      case PROP_URL:
        set_url (self, g_value_get_string (value));
        break;
      case PROP_MAX_CONNECTIONS:
        hb_remote_set_max_connections (self, g_value_get_uint (value));
        break;
      case PROP_TIMEOUT:
        hb_remote_set_timeout (self, g_value_get_uint (value));
        break;
      case PROP_USER_AGENT:
        hb_remote_set_user_agent (self, g_value_get_string (value));
        break;
      case PROP_COOKIE_LIFETIME:
        hb_remote_set_cookie_lifetime (self, g_value_get_uint (value));
        break;
      case PROP_LOGIN_INTERVAL:
        hb_remote_set_login_interval (self, g_value_get_uint (value));
        break;
      case PROP_ALLOW_INSECURE_HTTP:
        hb_remote_set_allow_insecure_http (self, g_value_get_boolean (value));
        break;
      case PROP_MAX_RESPONSE_BYTES:
        hb_remote_set_max_response_bytes (self, g_value_get_uint64 (value));
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_remote_class_init (HbRemoteClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->finalize = hb_remote_finalize;
  object_class->get_property = hb_remote_get_property;
  object_class->set_property = hb_remote_set_property;

  /**
   * HbRemote:url:
   *
   * The database's URL, without credentials: user info given at construction becomes basic
   * credentials and is removed. No trailing slash, the host in lower case, no default port.
   */
  properties[PROP_URL] = g_param_spec_string (
      "url", NULL, NULL, NULL, G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);
  /**
   * HbRemote:max-connections:
   *
   * How many connections to the server may be open at once; requests beyond wait for one.
   * Changing it applies to requests sent afterwards.
   */
  properties[PROP_MAX_CONNECTIONS]
      = g_param_spec_uint ("max-connections", NULL, NULL, 1, 256, DEFAULT_MAX_CONNECTIONS,
                           G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbRemote:timeout:
   *
   * Seconds a request may wait on the server without a byte moving before it fails with
   * %HB_REMOTE_ERROR_TIMEOUT; 0 waits forever. A longpoll `_changes` request asks the server
   * to answer within this time (see hb_remote_changes_async()).
   */
  properties[PROP_TIMEOUT]
      = g_param_spec_uint ("timeout", NULL, NULL, 0, G_MAXUINT / 1000, DEFAULT_TIMEOUT,
                           G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbRemote:user-agent:
   *
   * The User-Agent header sent with every request; %NULL sends none.
   */
  properties[PROP_USER_AGENT]
      = g_param_spec_string ("user-agent", NULL, NULL, NULL,
                             G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbRemote:cookie-lifetime:
   *
   * Seconds an `AuthSession` cookie lives when the server does not say (CouchDB's
   * `[chttpd_auth] timeout`, 600 by default); it is renewed when nine tenths of its life
   * have passed. Applies to cookies obtained afterwards.
   */
  properties[PROP_COOKIE_LIFETIME]
      = g_param_spec_uint ("cookie-lifetime", NULL, NULL, 1, G_MAXINT, DEFAULT_COOKIE_LIFETIME,
                           G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbRemote:login-interval:
   *
   * The fewest seconds between two cookie-session logins. A login that fails, or a cookie
   * refused right after it was given, fails the requests of the following seconds at once,
   * with the same error, instead of sending another login.
   */
  properties[PROP_LOGIN_INTERVAL]
      = g_param_spec_uint ("login-interval", NULL, NULL, 1, 3600, DEFAULT_LOGIN_INTERVAL,
                           G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbRemote:allow-insecure-http:
   *
   * Whether requests may go over plain http to a host other than loopback (`localhost`,
   * 127.0.0.0/8, `::1`). Off by default: such a request fails with %HB_REMOTE_ERROR_TLS
   * before any connection is made, since clinical data would cross the network unencrypted.
   */
  properties[PROP_ALLOW_INSECURE_HTTP]
      = g_param_spec_boolean ("allow-insecure-http", NULL, NULL, FALSE,
                              G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  /**
   * HbRemote:max-response-bytes:
   *
   * The largest answer read, in bytes after content decoding (256 MiB by default). A larger
   * one fails with %HB_REMOTE_ERROR_BAD_RESPONSE, and no more than this is ever held in
   * memory for it.
   */
  properties[PROP_MAX_RESPONSE_BYTES] = g_param_spec_uint64 (
      "max-response-bytes", NULL, NULL, 1, G_MAXSSIZE, DEFAULT_MAX_RESPONSE_BYTES,
      G_PARAM_READWRITE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);
  g_object_class_install_properties (object_class, N_PROPS, properties);

  /**
   * HbRemote::token-expired:
   * @self: the remote
   *
   * Emitted on the remote's main context when the server refuses the bearer token with a 401,
   * once per token. A handler that sets a new token with hb_remote_set_bearer_token() at once
   * has the refused request sent again with it; otherwise that request fails with
   * %HB_REMOTE_ERROR_UNAUTHORIZED, and the caller sends it again once a new token is set.
   */
  signals[SIGNAL_TOKEN_EXPIRED]
      = g_signal_new ("token-expired", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL,
                      NULL, G_TYPE_NONE, 0);
}

static void
hb_remote_init (HbRemote *self)
{
  self->max_connections = DEFAULT_MAX_CONNECTIONS;
  self->timeout = DEFAULT_TIMEOUT;
  self->user_agent
      = g_strdup_printf ("hbsync/%d.%d.%d", HB_MAJOR_VERSION, HB_MINOR_VERSION, HB_MICRO_VERSION);
  self->max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES;
  self->cookie_lifetime = DEFAULT_COOKIE_LIFETIME;
  self->login_interval = DEFAULT_LOGIN_INTERVAL;
  self->last_login_at = -1;
  g_queue_init (&self->login_waiters);
}

/**
 * hb_remote_new:
 * @database_url: the http or https URL of one database, e.g. `https://host:6984/clinic`;
 *   `user:password@` in it becomes basic credentials
 * @error: return location for an error
 *
 * Creates a client for one CouchDB database. Nothing is sent until a request is made; requests
 * run on the thread-default main context of the caller, which must stay the same for the life
 * of the remote. TLS certificates are verified against the system's authorities until
 * hb_remote_set_ca_file() says otherwise.
 *
 * Returns: (transfer full): a new remote, or %NULL if @database_url is not a usable URL (the
 *   message never quotes it)
 */
HbRemote *
hb_remote_new (const char *database_url, GError **error)
{
  g_autofree char *url = NULL;
  g_autofree char *user = NULL;
  g_autofree char *password = NULL;
  HbRemote *self;

  if (!parse_database_url (database_url, &url, &user, &password, error))
    return NULL;
  self = g_object_new (HB_TYPE_REMOTE, "url", url, NULL);
  if (user != NULL)
    hb_remote_set_basic_auth (self, user, password);
  wipe_string (&password);
  return self;
}

/**
 * hb_remote_get_url:
 * @self: a remote
 *
 * Returns: the database's URL, never holding credentials (see #HbRemote:url)
 */
const char *
hb_remote_get_url (HbRemote *self)
{
  g_return_val_if_fail (HB_IS_REMOTE (self), NULL);
  return self->url;
}

/**
 * hb_remote_get_max_connections:
 * @self: a remote
 *
 * Returns: the #HbRemote:max-connections
 */
guint
hb_remote_get_max_connections (HbRemote *self)
{
  g_return_val_if_fail (HB_IS_REMOTE (self), 0);
  return self->max_connections;
}

/* A setting of the session changed: the next request starts a new one (requests under way
 * finish on the old one, which goes away with them). */
static void
drop_session (HbRemote *self)
{
  g_clear_object (&self->session);
}

/**
 * hb_remote_set_max_connections:
 * @self: a remote
 * @max_connections: how many connections may be open at once, at least 1
 *
 * Sets #HbRemote:max-connections.
 */
void
hb_remote_set_max_connections (HbRemote *self, guint max_connections)
{
  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (max_connections >= 1);

  if (self->max_connections == max_connections)
    return;
  self->max_connections = max_connections;
  drop_session (self);
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_MAX_CONNECTIONS]);
}

/**
 * hb_remote_get_timeout:
 * @self: a remote
 *
 * Returns: the #HbRemote:timeout in seconds
 */
guint
hb_remote_get_timeout (HbRemote *self)
{
  g_return_val_if_fail (HB_IS_REMOTE (self), 0);
  return self->timeout;
}

/**
 * hb_remote_set_timeout:
 * @self: a remote
 * @timeout: seconds, 0 for none
 *
 * Sets #HbRemote:timeout, for requests sent afterwards.
 */
void
hb_remote_set_timeout (HbRemote *self, guint timeout)
{
  g_return_if_fail (HB_IS_REMOTE (self));

  if (self->timeout == timeout)
    return;
  self->timeout = timeout;
  drop_session (self);
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_TIMEOUT]);
}

/**
 * hb_remote_get_user_agent:
 * @self: a remote
 *
 * Returns: (nullable): the #HbRemote:user-agent
 */
const char *
hb_remote_get_user_agent (HbRemote *self)
{
  g_return_val_if_fail (HB_IS_REMOTE (self), NULL);
  return self->user_agent;
}

/**
 * hb_remote_set_user_agent:
 * @self: a remote
 * @user_agent: (nullable): the User-Agent header, %NULL for none
 *
 * Sets #HbRemote:user-agent.
 */
void
hb_remote_set_user_agent (HbRemote *self, const char *user_agent)
{
  g_return_if_fail (HB_IS_REMOTE (self));

  if (g_strcmp0 (self->user_agent, user_agent) == 0)
    return;
  g_free (self->user_agent);
  self->user_agent = g_strdup (user_agent);
  drop_session (self);
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_USER_AGENT]);
}

/**
 * hb_remote_get_cookie_lifetime:
 * @self: a remote
 *
 * Returns: the #HbRemote:cookie-lifetime in seconds
 */
guint
hb_remote_get_cookie_lifetime (HbRemote *self)
{
  g_return_val_if_fail (HB_IS_REMOTE (self), 0);
  return self->cookie_lifetime;
}

/**
 * hb_remote_set_cookie_lifetime:
 * @self: a remote
 * @seconds: how long a cookie lives when the server does not say, at least 1
 *
 * Sets #HbRemote:cookie-lifetime.
 */
void
hb_remote_set_cookie_lifetime (HbRemote *self, guint seconds)
{
  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (seconds >= 1 && seconds <= G_MAXINT);

  if (self->cookie_lifetime == seconds)
    return;
  self->cookie_lifetime = seconds;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_COOKIE_LIFETIME]);
}

/**
 * hb_remote_get_login_interval:
 * @self: a remote
 *
 * Returns: the #HbRemote:login-interval in seconds
 */
guint
hb_remote_get_login_interval (HbRemote *self)
{
  g_return_val_if_fail (HB_IS_REMOTE (self), 0);
  return self->login_interval;
}

/**
 * hb_remote_set_login_interval:
 * @self: a remote
 * @seconds: the fewest seconds between two logins, 1 to 3600
 *
 * Sets #HbRemote:login-interval.
 */
void
hb_remote_set_login_interval (HbRemote *self, guint seconds)
{
  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (seconds >= 1 && seconds <= 3600);

  if (self->login_interval == seconds)
    return;
  self->login_interval = seconds;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_LOGIN_INTERVAL]);
}

/**
 * hb_remote_get_allow_insecure_http:
 * @self: a remote
 *
 * Returns: the #HbRemote:allow-insecure-http
 */
gboolean
hb_remote_get_allow_insecure_http (HbRemote *self)
{
  g_return_val_if_fail (HB_IS_REMOTE (self), FALSE);
  return self->allow_insecure_http;
}

/**
 * hb_remote_set_allow_insecure_http:
 * @self: a remote
 * @allow: whether plain http may go to a host other than loopback
 *
 * Sets #HbRemote:allow-insecure-http.
 */
void
hb_remote_set_allow_insecure_http (HbRemote *self, gboolean allow)
{
  g_return_if_fail (HB_IS_REMOTE (self));

  allow = !!allow;
  if (self->allow_insecure_http == allow)
    return;
  self->allow_insecure_http = allow;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_ALLOW_INSECURE_HTTP]);
}

/**
 * hb_remote_get_max_response_bytes:
 * @self: a remote
 *
 * Returns: the #HbRemote:max-response-bytes
 */
guint64
hb_remote_get_max_response_bytes (HbRemote *self)
{
  g_return_val_if_fail (HB_IS_REMOTE (self), 0);
  return self->max_response_bytes;
}

/**
 * hb_remote_set_max_response_bytes:
 * @self: a remote
 * @max_bytes: the largest answer read, in bytes, at least 1
 *
 * Sets #HbRemote:max-response-bytes, for requests sent afterwards.
 */
void
hb_remote_set_max_response_bytes (HbRemote *self, guint64 max_bytes)
{
  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (max_bytes >= 1 && max_bytes <= G_MAXSSIZE);

  if (self->max_response_bytes == max_bytes)
    return;
  self->max_response_bytes = max_bytes;
  g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_MAX_RESPONSE_BYTES]);
}

/**
 * hb_remote_set_ca_file:
 * @self: a remote
 * @path: (nullable) (type filename): a PEM file of certificate authorities, %NULL for the
 *   system's
 * @error: return location for an error
 *
 * Trusts only the certificate authorities in @path, instead of the system's, for connections
 * made afterwards.
 *
 * Returns: %TRUE if they are trusted now; %FALSE with %HB_REMOTE_ERROR_TLS when the file cannot
 *   be read or holds no certificate, the previous setting kept
 */
gboolean
hb_remote_set_ca_file (HbRemote *self, const char *path, GError **error)
{
  g_autoptr (GTlsDatabase) database = NULL;
  g_autolist (GTlsCertificate) certificates = NULL;
  g_autoptr (GError) local = NULL;

  g_return_val_if_fail (HB_IS_REMOTE (self), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (path != NULL)
    {
      certificates = g_tls_certificate_list_new_from_file (path, &local);
      if (certificates == NULL && local == NULL)
        local = g_error_new_literal (G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE,
                                     "it holds no PEM certificate");
      if (local == NULL)
        database = g_tls_file_database_new (path, &local);
      if (local != NULL)
        {
          g_set_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS,
                       "The CA file cannot be used: %s", local->message);
          return FALSE;
        }
    }
  g_set_object (&self->ca_database, database);
  drop_session (self);
  return TRUE;
}

/* 64 hex digits, pairs optionally separated by colons or spaces. */
static gboolean
parse_fingerprint (const char *text, guint8 out[PIN_LEN])
{
  gsize n = 0;

  for (const char *p = text; *p != '\0'; p++)
    {
      int high, low;

      if (*p == ':' || *p == ' ')
        continue;
      high = g_ascii_xdigit_value (p[0]);
      low = p[1] != '\0' ? g_ascii_xdigit_value (p[1]) : -1;
      if (high < 0 || low < 0 || n == PIN_LEN)
        return FALSE;
      out[n++] = (guint8)(high << 4 | low);
      p++;
    }
  return n == PIN_LEN;
}

/**
 * hb_remote_set_pinned_sha256:
 * @self: a remote
 * @fingerprint: (nullable): the SHA-256 of the server certificate's DER bytes, 64 hex digits
 *   (case, colons and spaces ignored); %NULL for no pinning
 * @error: return location for an error
 *
 * Pins the server certificate, for connections made afterwards: on top of the normal
 * verification, which still applies, a certificate with another fingerprint is refused during
 * the handshake, before any request is sent, with %HB_REMOTE_ERROR_TLS.
 *
 * Returns: %TRUE if pinned; %FALSE with %HB_REMOTE_ERROR_TLS when @fingerprint is not a
 *   SHA-256 in hex, the previous setting kept
 */
gboolean
hb_remote_set_pinned_sha256 (HbRemote *self, const char *fingerprint, GError **error)
{
  guint8 pin[PIN_LEN];

  g_return_val_if_fail (HB_IS_REMOTE (self), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (fingerprint != NULL && !parse_fingerprint (fingerprint, pin))
    {
      g_set_error_literal (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS,
                           "The pinned fingerprint is not a SHA-256 in hex");
      return FALSE;
    }
  self->pinned = fingerprint != NULL;
  if (self->pinned)
    memcpy (self->pin, pin, PIN_LEN);
  drop_session (self);
  return TRUE;
}

static SoupSession *
get_session (HbRemote *self)
{
  g_autoptr (GTlsDatabase) database = NULL;

  if (self->session != NULL)
    return self->session;
  /* libsoup allows 2 connections per host by default: too few to keep a pipelined
   * replication busy. */
  self->session = soup_session_new_with_options (
      "max-conns", self->max_connections, "max-conns-per-host", self->max_connections, "timeout",
      self->timeout, "user-agent", self->user_agent, NULL);
  /* Credentials are sent preemptively, by us; nothing should answer a challenge with others. */
  soup_session_remove_feature_by_type (self->session, SOUP_TYPE_AUTH_MANAGER);
  /* Never set to NULL: libsoup would then refuse every certificate. */
  database = session_tls_database (self);
  if (database != NULL)
    soup_session_set_tls_database (self->session, database);
  return self->session;
}

/* ---- one exchange: a message sent, its answer read ---------------------------------------- */

/* The answer is read whole, but never more than `max` bytes of it after content decoding; the
 * transport's failures become HbRemoteErrors naming `what`. */
typedef struct
{
  const char *what;
  SoupMessage *msg;
  GInputStream *stream;
  guint8 *chunk; /* what the last read brought */
  guint8 *data;
  gsize len;
  gsize size;
  guint64 max;
  gboolean pinned;
  guint8 pin[PIN_LEN];
  /* What the handshake refused, if it did. */
  GTlsCertificateFlags tls_errors;
  gboolean pin_mismatch;
} Exchange;

static void
exchange_free (gpointer data)
{
  Exchange *ex = data;

  g_signal_handlers_disconnect_by_data (ex->msg, ex);
  g_clear_object (&ex->msg);
  g_clear_object (&ex->stream);
  g_free (ex->chunk);
  g_free (ex->data);
  g_free (ex);
}

static gboolean
on_accept_certificate (SoupMessage *msg,
                       GTlsCertificate *certificate,
                       GTlsCertificateFlags errors,
                       gpointer user_data)
{
  Exchange *ex = user_data;

  ex->tls_errors = errors;
  ex->pin_mismatch = ex->pinned && !certificate_matches_pin (certificate, ex->pin);
  return FALSE;
}

static char *
certificate_problems (GTlsCertificateFlags errors, gboolean pin_mismatch)
{
  static const struct
  {
    GTlsCertificateFlags flag;
    const char *text;
  } problems[] = {
    { G_TLS_CERTIFICATE_UNKNOWN_CA, "unknown certificate authority" },
    { G_TLS_CERTIFICATE_BAD_IDENTITY, "name mismatch (issued for another host)" },
    { G_TLS_CERTIFICATE_NOT_ACTIVATED, "not valid yet" },
    { G_TLS_CERTIFICATE_EXPIRED, "expired" },
    { G_TLS_CERTIFICATE_REVOKED, "revoked" },
    { G_TLS_CERTIFICATE_INSECURE, "insecure algorithm" },
  };
  g_autoptr (GString) text = g_string_new (NULL);

  if (pin_mismatch)
    g_string_append (text, "pin mismatch (its SHA-256 is not the pinned one)");
  for (guint i = 0; i < G_N_ELEMENTS (problems); i++)
    if (errors & problems[i].flag)
      g_string_append_printf (text, "%s%s", text->len > 0 ? ", " : "", problems[i].text);
  if (text->len == 0)
    g_string_append (text, "invalid");
  return g_string_free (g_steal_pointer (&text), FALSE);
}

static GError *
tls_error (Exchange *ex, const GError *error)
{
  g_autofree char *problems = NULL;

  if (g_error_matches (error, G_TLS_ERROR, G_TLS_ERROR_NOT_TLS))
    return g_error_new (HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS, "%s: the server does not speak TLS",
                        ex->what);
  if (!g_error_matches (error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE)
      || (ex->tls_errors == 0 && !ex->pin_mismatch))
    return g_error_new (HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS, "%s: TLS failed: %s", ex->what,
                        error->message);
  problems = certificate_problems (ex->tls_errors, ex->pin_mismatch);
  return g_error_new (HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS,
                      "%s: the server's TLS certificate was refused: %s", ex->what, problems);
}

/* libsoup's errors for a request that got no complete HTTP answer. */
static GError *
transport_error (Exchange *ex, GError *error)
{
  HbRemoteError code = HB_REMOTE_ERROR_FAILED;
  GError *mapped;

  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return error;
  if (error->domain == G_TLS_ERROR && error->code != G_TLS_ERROR_EOF)
    {
      mapped = tls_error (ex, error);
      g_error_free (error);
      return mapped;
    }
  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
    code = HB_REMOTE_ERROR_TIMEOUT;
  else if (error->domain == G_IO_ERROR || error->domain == G_RESOLVER_ERROR
           || g_error_matches (error, G_TLS_ERROR, G_TLS_ERROR_EOF))
    code = HB_REMOTE_ERROR_NETWORK;
  else if (g_error_matches (error, SOUP_SESSION_ERROR, SOUP_SESSION_ERROR_PARSING)
           || g_error_matches (error, SOUP_SESSION_ERROR, SOUP_SESSION_ERROR_ENCODING))
    code = HB_REMOTE_ERROR_BAD_RESPONSE;
  mapped = g_error_new (HB_REMOTE_ERROR, code, "%s: %s", ex->what, error->message);
  g_error_free (error);
  return mapped;
}

static void
exchange_fail (GTask *task, GError *error)
{
  g_task_return_error (task, error);
  g_object_unref (task);
}

static void
exchange_too_large (GTask *task)
{
  Exchange *ex = g_task_get_task_data (task);

  exchange_fail (task, g_error_new (HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE,
                                    "%s: the answer is larger than %" G_GUINT64_FORMAT " bytes",
                                    ex->what, ex->max));
}

static void exchange_read (GObject *source, GAsyncResult *result, gpointer user_data);

static void
read_more (GTask *task)
{
  Exchange *ex = g_task_get_task_data (task);

  /* Always a whole chunk: libsoup's chunked decoder cannot serve reads of a few bytes. */
  g_input_stream_read_async (ex->stream, ex->chunk, READ_CHUNK, G_PRIORITY_DEFAULT,
                             g_task_get_cancellable (task), exchange_read, task);
}

static void
exchange_closed (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  Exchange *ex = g_task_get_task_data (task);

  g_input_stream_close_finish (G_INPUT_STREAM (source), result, NULL);
  g_task_return_pointer (task, g_bytes_new_take (g_steal_pointer (&ex->data), ex->len),
                         (GDestroyNotify)g_bytes_unref);
  g_object_unref (task);
}

/* Keeps n more bytes of the answer, never holding more than the limit. */
static gboolean
keep (Exchange *ex, gsize n)
{
  if (n > ex->max - ex->len)
    return FALSE;
  if (ex->len + n > ex->size)
    {
      ex->size = (gsize)MIN (ex->max, MAX ((guint64)ex->size * 2, ex->len + n));
      ex->data = g_realloc (ex->data, ex->size);
    }
  memcpy (ex->data + ex->len, ex->chunk, n);
  ex->len += n;
  return TRUE;
}

static void
exchange_read (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  Exchange *ex = g_task_get_task_data (task);
  GError *error = NULL;
  gssize n = g_input_stream_read_finish (G_INPUT_STREAM (source), result, &error);

  if (n < 0)
    exchange_fail (task, transport_error (ex, error));
  else if (n == 0)
    /* The whole answer is in: closing hands the connection back to the pool. */
    g_input_stream_close_async (ex->stream, G_PRIORITY_DEFAULT, NULL, exchange_closed, task);
  else if (!keep (ex, (gsize)n))
    exchange_too_large (task);
  else
    read_more (task);
}

static void
exchange_sent (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  Exchange *ex = g_task_get_task_data (task);
  SoupMessageHeaders *headers;
  GError *error = NULL;
  goffset length;

  ex->stream = soup_session_send_finish (SOUP_SESSION (source), result, &error);
  if (ex->stream == NULL)
    {
      exchange_fail (task, transport_error (ex, error));
      return;
    }
  headers = soup_message_get_response_headers (ex->msg);
  /* An announced length is the decoded one only without a content coding. */
  if (soup_message_headers_get_encoding (headers) == SOUP_ENCODING_CONTENT_LENGTH
      && soup_message_headers_get_one (headers, "Content-Encoding") == NULL)
    {
      length = soup_message_headers_get_content_length (headers);
      if ((guint64)length > ex->max)
        {
          exchange_too_large (task);
          return;
        }
      ex->size = (gsize)length;
      ex->data = g_malloc (ex->size);
    }
  ex->chunk = g_malloc (READ_CHUNK);
  read_more (task);
}

static void
exchange_async (HbRemote *self,
                SoupMessage *msg,
                const char *what,
                guint64 max,
                GCancellable *cancellable,
                GAsyncReadyCallback callback,
                gpointer user_data)
{
  GTask *task = g_task_new (self, cancellable, callback, user_data);
  Exchange *ex = g_new0 (Exchange, 1);

  ex->what = what;
  ex->msg = g_object_ref (msg);
  ex->max = max;
  ex->pinned = self->pinned;
  memcpy (ex->pin, self->pin, PIN_LEN);
  g_task_set_task_data (task, ex, exchange_free);
  g_signal_connect (msg, "accept-certificate", G_CALLBACK (on_accept_certificate), ex);
  soup_session_send_async (get_session (self), msg, G_PRIORITY_DEFAULT, cancellable, exchange_sent,
                           task);
}

/* The answer's body, or NULL with an HB_REMOTE_ERROR (or cancellation) set. */
static GBytes *
exchange_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return g_task_propagate_pointer (G_TASK (result), error);
}

/* ---- requests ---------------------------------------------------------------------------- */

typedef struct _Request Request;

/* Runs in a worker thread once the whole answer is in: the request's result (NULL is a
 * result too) or an error. */
typedef gpointer (*AnswerFunc) (Request *req, const guint8 *data, gsize len, GError **error);

struct _Request
{
  const char *what; /* names the operation in messages; never a path, which holds ids */
  AnswerFunc answer;
  GDestroyNotify free_result;
  guint accept_status; /* a non-2xx status the answer function handles itself */
  char *id;
  /* What is sent, kept to send it again after a 401. */
  char *method;
  GUri *uri;
  GBytes *body;
  gboolean idempotent;
  guint auth_generation; /* of the credentials it was last sent with */
  gboolean replayed;
  GSource *cancel_source; /* while it waits for a login */
  SoupMessage *msg;
  GBytes *response;
  guint status;
  gpointer result;
  GError *error;
};

static void
request_free (gpointer data)
{
  Request *req = data;

  if (req->result != NULL && req->free_result != NULL)
    req->free_result (req->result);
  g_clear_error (&req->error);
  g_free (req->id);
  g_free (req->method);
  g_clear_pointer (&req->uri, g_uri_unref);
  g_clear_pointer (&req->body, g_bytes_unref);
  g_clear_object (&req->msg);
  g_clear_pointer (&req->response, g_bytes_unref);
  g_free (req);
}

static GTask *
request_task (HbRemote *self,
              const char *what,
              AnswerFunc answer,
              GDestroyNotify free_result,
              gpointer source_tag,
              GCancellable *cancellable,
              GAsyncReadyCallback callback,
              gpointer user_data)
{
  GTask *task = g_task_new (self, cancellable, callback, user_data);
  Request *req = g_new0 (Request, 1);

  req->what = what;
  req->answer = answer;
  req->free_result = free_result;
  g_task_set_source_tag (task, source_tag);
  g_task_set_task_data (task, req, request_free);
  return task;
}

/* Every function below that takes a task consumes the reference it is given. */
static void
request_fail (GTask *task, GError *error)
{
  g_task_return_error (task, error);
  g_object_unref (task);
}

static void
answer_thread (GTask *parse, gpointer source, gpointer task_data, GCancellable *cancellable)
{
  Request *req = task_data;
  gsize len;
  const guint8 *data = g_bytes_get_data (req->response, &len);

  if (SOUP_STATUS_IS_SUCCESSFUL (req->status)
      || (req->accept_status != 0 && req->status == req->accept_status))
    req->result = req->answer (req, data, len, &req->error);
  else
    req->error = hb_remote_status_error (req->status, req->what, data, len);
  g_task_return_boolean (parse, TRUE);
}

static void
answer_done (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  Request *req = g_task_get_task_data (task);

  if (req->error != NULL)
    g_task_return_error (task, g_steal_pointer (&req->error));
  else
    g_task_return_pointer (task, g_steal_pointer (&req->result), req->free_result);
}

static void
parse_answer (GTask *task)
{
  g_autoptr (GTask) parse = NULL;

  /* The worker gets a task of its own, with no source object: whichever thread drops the last
   * reference to it, the remote (and its SoupSession) is only ever released on the owner's
   * context, with the request's own task. */
  parse = g_task_new (NULL, NULL, answer_done, task);
  g_task_set_task_data (parse, g_task_get_task_data (task), NULL);
  g_task_run_in_thread (parse, answer_thread);
}

static void authorize_and_send (HbRemote *self, GTask *task);

/* ---- the cookie session ------------------------------------------------------------------ */

static gboolean
login_allowed (HbRemote *self)
{
  return self->last_login_at < 0
         || g_get_monotonic_time () - self->last_login_at
                >= (gint64)self->login_interval * G_USEC_PER_SEC;
}

static void
take_cookie (HbRemote *self, SoupCookie *cookie)
{
  GDateTime *expires = soup_cookie_get_expires (cookie);
  gint64 lifetime = (gint64)self->cookie_lifetime * G_USEC_PER_SEC;

  if (expires != NULL)
    {
      g_autoptr (GDateTime) now = g_date_time_new_now_utc ();
      lifetime = MAX (g_date_time_difference (expires, now), G_USEC_PER_SEC);
    }
  wipe_string (&self->cookie);
  self->cookie = soup_cookie_to_cookie_header (cookie);
  self->cookie_refresh_at = g_get_monotonic_time () + lifetime / 10 * 9;
  self->auth_generation++;
}

/* Takes the AuthSession cookie an answer sets: a login's, or the fresh one CouchDB sends
 * unasked once a cookie has lived a while. */
static gboolean
adopt_cookie (HbRemote *self, SoupMessage *msg)
{
  GSList *cookies = soup_cookies_from_response (msg);
  gboolean found = FALSE;

  for (GSList *l = cookies; l != NULL && !found; l = l->next)
    {
      SoupCookie *cookie = l->data;

      if (g_strcmp0 (soup_cookie_get_name (cookie), "AuthSession") == 0
          && *soup_cookie_get_value (cookie) != '\0')
        {
          take_cookie (self, cookie);
          found = TRUE;
        }
    }
  g_slist_free_full (cookies, (GDestroyNotify)soup_cookie_free);
  return found;
}

static void
resume_waiters (HbRemote *self)
{
  GQueue waiters = self->login_waiters;
  GTask *task;

  /* Their callbacks may send requests, and queue them, while this runs. */
  g_queue_init (&self->login_waiters);
  while ((task = g_queue_pop_head (&waiters)) != NULL)
    {
      Request *req = g_task_get_task_data (task);

      if (req->cancel_source != NULL)
        {
          g_source_destroy (req->cancel_source);
          g_clear_pointer (&req->cancel_source, g_source_unref);
        }
      authorize_and_send (self, task);
    }
}

static GError *
login_answer_error (SoupMessage *msg, GBytes *answer)
{
  guint status = soup_message_get_status (msg);
  gsize len;
  const guint8 *data = g_bytes_get_data (answer, &len);

  if (!SOUP_STATUS_IS_SUCCESSFUL (status))
    return hb_remote_status_error (status, "login", data, len);
  return g_error_new_literal (HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE,
                              "login: the server set no AuthSession cookie");
}

static void
login_done (GObject *source, GAsyncResult *result, gpointer user_data)
{
  HbRemote *self = HB_REMOTE (source);
  Exchange *ex = g_task_get_task_data (G_TASK (result));
  GError *error = NULL;
  g_autoptr (GBytes) answer = exchange_finish (self, result, &error);

  self->login_in_flight = FALSE;
  /* An answer for credentials replaced meanwhile is of no use; the waiters go on with the new
   * ones. */
  if (self->login_generation == self->auth_generation)
    {
      if (answer != NULL
          && !(SOUP_STATUS_IS_SUCCESSFUL (soup_message_get_status (ex->msg))
               && adopt_cookie (self, ex->msg)))
        error = login_answer_error (ex->msg, answer);
      g_clear_error (&self->login_error);
      self->login_error = g_steal_pointer (&error);
    }
  g_clear_error (&error);
  resume_waiters (self);
}

static void
start_login (HbRemote *self)
{
  g_autoptr (SoupMessage) msg = soup_message_new_from_uri ("POST", self->session_uri);
  char *text = g_strdup (self->login_body);
  g_autoptr (GBytes) body = g_bytes_new_with_free_func (text, strlen (text), wipe_and_free, text);

  soup_message_add_flags (msg, SOUP_MESSAGE_NO_REDIRECT);
  soup_message_headers_replace (soup_message_get_request_headers (msg), "Accept",
                                "application/json");
  soup_message_set_request_body_from_bytes (msg, "application/json", body);
  self->login_in_flight = TRUE;
  self->login_generation = self->auth_generation;
  self->last_login_at = g_get_monotonic_time ();
  exchange_async (self, msg, "login", MIN (self->max_response_bytes, MAX_LOGIN_RESPONSE_BYTES),
                  NULL, login_done, NULL);
}

static gboolean
on_waiter_cancelled (GCancellable *cancellable, gpointer user_data)
{
  GTask *task = user_data;
  HbRemote *self = g_task_get_source_object (task);
  Request *req = g_task_get_task_data (task);

  g_queue_remove (&self->login_waiters, task);
  g_clear_pointer (&req->cancel_source, g_source_unref);
  g_task_return_error_if_cancelled (task);
  g_object_unref (task);
  return G_SOURCE_REMOVE;
}

static void
wait_for_login (HbRemote *self, GTask *task)
{
  Request *req = g_task_get_task_data (task);
  GCancellable *cancellable = g_task_get_cancellable (task);

  if (cancellable != NULL)
    {
      req->cancel_source = g_cancellable_source_new (cancellable);
      g_source_set_callback (req->cancel_source, G_SOURCE_FUNC (on_waiter_cancelled), task, NULL);
      g_source_attach (req->cancel_source, g_task_get_context (task));
    }
  g_queue_push_tail (&self->login_waiters, task);
}

/* Whether the request may go now with the cookie there is; if not, it waits for a login or has
 * failed. */
static gboolean
cookie_ready (HbRemote *self, GTask *task)
{
  if (self->login_in_flight)
    {
      wait_for_login (self, task);
      return FALSE;
    }
  if (self->cookie != NULL && g_get_monotonic_time () < self->cookie_refresh_at)
    return TRUE;
  if (login_allowed (self))
    {
      start_login (self);
      wait_for_login (self, task);
      return FALSE;
    }
  /* A renewal that must wait: the cookie still has a tenth of its life. */
  if (self->cookie != NULL)
    return TRUE;
  request_fail (task, self->login_error != NULL
                          ? g_error_copy (self->login_error)
                          : g_error_new_literal (HB_REMOTE_ERROR, HB_REMOTE_ERROR_UNAUTHORIZED,
                                                 "login: not logged in"));
  return FALSE;
}

/* A 401 on a cookie session: whether a login (under way, or to come) may cure it. */
static gboolean
session_refused (HbRemote *self, Request *req)
{
  gsize len;
  const guint8 *data = g_bytes_get_data (req->response, &len);

  if (self->login_in_flight)
    return TRUE;
  wipe_string (&self->cookie);
  if (login_allowed (self))
    return TRUE;
  /* Refused right after a login: another one would not help, and would make a storm. */
  g_clear_error (&self->login_error);
  self->login_error = hb_remote_status_error (req->status, req->what, data, len);
  return FALSE;
}

/* ---- sending ----------------------------------------------------------------------------- */

/* A 401 on a bearer token: the owner hears of it once per token, and may set a new one at
 * once. */
static gboolean
token_refused (HbRemote *self)
{
  guint generation = self->auth_generation;

  if (!self->token_expired_emitted)
    {
      self->token_expired_emitted = TRUE;
      g_signal_emit (self, signals[SIGNAL_TOKEN_EXPIRED], 0);
    }
  return self->auth_generation != generation;
}

/* Whether a request refused with a 401 is worth sending once more. */
static gboolean
retry_after_401 (HbRemote *self, Request *req)
{
  if (req->replayed)
    return FALSE;
  /* Sent with credentials since replaced. */
  if (req->auth_generation != self->auth_generation)
    return TRUE;
  if (self->auth == AUTH_COOKIE)
    return session_refused (self, req);
  if (self->auth == AUTH_BEARER)
    return token_refused (self);
  return FALSE;
}

static void
request_sent (GObject *source, GAsyncResult *result, gpointer user_data)
{
  HbRemote *self = HB_REMOTE (source);
  GTask *task = user_data;
  Request *req = g_task_get_task_data (task);
  GError *error = NULL;

  req->response = exchange_finish (self, result, &error);
  if (req->response == NULL)
    {
      request_fail (task, error);
      return;
    }
  req->status = soup_message_get_status (req->msg);
  if (self->auth == AUTH_COOKIE && SOUP_STATUS_IS_SUCCESSFUL (req->status)
      && req->auth_generation == self->auth_generation)
    adopt_cookie (self, req->msg);
  if (req->status == SOUP_STATUS_UNAUTHORIZED && retry_after_401 (self, req))
    {
      req->replayed = TRUE;
      g_clear_pointer (&req->response, g_bytes_unref);
      authorize_and_send (self, task);
      return;
    }
  parse_answer (task);
}

static SoupMessage *
new_message (HbRemote *self, Request *req)
{
  SoupMessage *msg = soup_message_new_from_uri (req->method, req->uri);
  SoupMessageHeaders *headers = soup_message_get_request_headers (msg);

  /* A redirection would carry the credentials elsewhere; CouchDB sends none worth following. */
  soup_message_add_flags (msg, SOUP_MESSAGE_NO_REDIRECT);
  if (req->idempotent)
    soup_message_add_flags (msg, SOUP_MESSAGE_IDEMPOTENT);
  soup_message_headers_replace (headers, "Accept", "application/json");
  /* On the same machine compression only costs both ends CPU: answers are not asked to come
   * compressed (a compressed one is still decoded). Over a network they are. */
  if (g_uri_get_host (req->uri) != NULL && is_loopback (g_uri_get_host (req->uri)))
    soup_message_headers_replace (headers, "Accept-Encoding", "identity");
  if (self->authorization != NULL)
    soup_message_headers_replace (headers, "Authorization", self->authorization);
  if (self->cookie != NULL)
    soup_message_headers_replace (headers, "Cookie", self->cookie);
  if (req->body != NULL)
    soup_message_set_request_body_from_bytes (msg, "application/json", req->body);
  req->auth_generation = self->auth_generation;
  return msg;
}

static void
authorize_and_send (HbRemote *self, GTask *task)
{
  Request *req = g_task_get_task_data (task);

  if (g_task_return_error_if_cancelled (task))
    {
      g_object_unref (task);
      return;
    }
  if (self->auth == AUTH_COOKIE && !cookie_ready (self, task))
    return;
  g_clear_object (&req->msg);
  req->msg = new_message (self, req);
  exchange_async (self, req->msg, req->what, self->max_response_bytes,
                  g_task_get_cancellable (task), request_sent, task);
}

static GUri *
request_uri (HbRemote *self, const char *path, GError **error)
{
  g_autofree char *text = NULL;
  GUri *uri;

  if (self->url == NULL)
    {
      g_set_error_literal (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FAILED,
                           "The remote has no valid database URL");
      return NULL;
    }
  if (*path == '\0')
    text = g_strdup (self->url);
  else
    text = g_strconcat (self->url, *path == '?' ? "" : "/", path, NULL);
  uri = g_uri_parse (text, SOUP_HTTP_URI_FLAGS, NULL);
  if (uri == NULL)
    g_set_error_literal (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FAILED,
                         "The request path is not a valid URL path");
  return uri;
}

/* Sends the request of a task from request_task(), consuming the task. Read-only POSTs are
 * marked idempotent, so libsoup may send them again when a kept-alive connection turns out to
 * have been closed by the server. */
static void
send_request (HbRemote *self,
              GTask *task,
              const char *method,
              const char *path,
              GBytes *body,
              gboolean idempotent)
{
  Request *req = g_task_get_task_data (task);
  GError *error = NULL;

  req->uri = request_uri (self, path, &error);
  if (req->uri == NULL)
    {
      request_fail (task, error);
      return;
    }
  if (self->plain_http_remote && !self->allow_insecure_http)
    {
      request_fail (task, g_error_new (HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS,
                                       "%s: plain http refused: the host is not loopback and "
                                       "clinical data would cross the network unencrypted; use "
                                       "https, or allow insecure http",
                                       req->what));
      return;
    }
  req->method = g_strdup (method);
  req->body = body != NULL ? g_bytes_ref (body) : NULL;
  req->idempotent = idempotent;
  authorize_and_send (self, task);
}

static gpointer
finish_pointer (HbRemote *self, GAsyncResult *result, gpointer source_tag, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), NULL);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == source_tag, NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}

/* A document id as a path segment: `_design/` and `_local/` keep their slash (CouchDB routes
 * on it), everything else is escaped, a `/` inside an id included. */
static char *
doc_path (const char *id)
{
  static const char *const prefixes[] = { "_design/", "_local/" };

  for (guint i = 0; i < G_N_ELEMENTS (prefixes); i++)
    {
      gsize n = strlen (prefixes[i]);
      if (strncmp (id, prefixes[i], n) == 0 && id[n] != '\0')
        {
          g_autofree char *rest = g_uri_escape_string (id + n, NULL, FALSE);
          return g_strconcat (prefixes[i], rest, NULL);
        }
    }
  return g_uri_escape_string (id, NULL, FALSE);
}

static char *
local_path (const char *id)
{
  g_autofree char *full
      = g_str_has_prefix (id, "_local/") ? g_strdup (id) : g_strconcat ("_local/", id, NULL);
  return doc_path (full);
}

static gpointer
answer_bytes (Request *req, const guint8 *data, gsize len, GError **error)
{
  return g_bytes_ref (req->response);
}

/**
 * hb_remote_request_async:
 * @self: a remote
 * @method: the HTTP method
 * @path: the path relative to the database, already escaped, with its query string if any; ""
 *   for the database itself
 * @body: (nullable): a JSON request body
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Sends any request to the database, with the remote's credentials and `Accept:
 * application/json`, for what the typed calls do not cover.
 */
void
hb_remote_request_async (HbRemote *self,
                         const char *method,
                         const char *path,
                         GBytes *body,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data)
{
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (method != NULL);
  g_return_if_fail (path != NULL);

  task = request_task (self, "request", answer_bytes, (GDestroyNotify)g_bytes_unref,
                       hb_remote_request_async, cancellable, callback, user_data);
  send_request (self, task, method, path, body, FALSE);
}

/**
 * hb_remote_request_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @out_status: (out) (optional): the HTTP status, or 0 when no answer came
 * @error: return location for an error
 *
 * Finishes hb_remote_request_async(). A status other than 2xx is an error mapped as described
 * for #HbRemoteError; @out_status is set in that case too.
 *
 * Returns: (transfer full): the answer's body, or %NULL with @error set
 */
GBytes *
hb_remote_request_finish (HbRemote *self, GAsyncResult *result, guint *out_status, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), NULL);

  if (out_status != NULL)
    *out_status = ((Request *)g_task_get_task_data (G_TASK (result)))->status;
  return finish_pointer (self, result, hb_remote_request_async, error);
}

static gpointer
answer_info (Request *req, const guint8 *data, gsize len, GError **error)
{
  return hb_remote_parse_info (data, len, error);
}

/**
 * hb_remote_get_info_async:
 * @self: a remote
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Reads the database's description (`GET /db`). A database that does not exist fails with
 * %HB_REMOTE_ERROR_NOT_FOUND.
 */
void
hb_remote_get_info_async (HbRemote *self,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data)
{
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  task = request_task (self, "database information", answer_info,
                       (GDestroyNotify)hb_remote_info_free, hb_remote_get_info_async, cancellable,
                       callback, user_data);
  send_request (self, task, "GET", "", NULL, FALSE);
}

/**
 * hb_remote_get_info_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the description, or %NULL with @error set
 */
HbRemoteInfo *
hb_remote_get_info_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_get_info_async, error);
}

static gpointer
answer_create (Request *req, const guint8 *data, gsize len, GError **error)
{
  g_autofree char *couch_error = NULL;
  g_autofree char *reason = NULL;

  if (req->status == SOUP_STATUS_PRECONDITION_FAILED)
    {
      hb_remote_parse_error_body (data, len, &couch_error, &reason);
      if (g_strcmp0 (couch_error, "file_exists") != 0)
        g_propagate_error (error, hb_remote_status_error (req->status, req->what, data, len));
    }
  return NULL;
}

/**
 * hb_remote_create_database_async:
 * @self: a remote
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Creates the database (`PUT /db`). A database that already exists is a success.
 */
void
hb_remote_create_database_async (HbRemote *self,
                                 GCancellable *cancellable,
                                 GAsyncReadyCallback callback,
                                 gpointer user_data)
{
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  task = request_task (self, "database creation", answer_create, NULL,
                       hb_remote_create_database_async, cancellable, callback, user_data);
  ((Request *)g_task_get_task_data (task))->accept_status = SOUP_STATUS_PRECONDITION_FAILED;
  send_request (self, task, "PUT", "", NULL, FALSE);
}

/**
 * hb_remote_create_database_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: %TRUE if the database exists now
 */
gboolean
hb_remote_create_database_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  GError *local = NULL;

  finish_pointer (self, result, hb_remote_create_database_async, &local);
  if (local == NULL)
    return TRUE;
  g_propagate_error (error, local);
  return FALSE;
}

static gpointer
answer_get_local (Request *req, const guint8 *data, gsize len, GError **error)
{
  if (req->status == SOUP_STATUS_NOT_FOUND)
    return NULL;
  return hb_remote_parse_document (data, len, error);
}

/**
 * hb_remote_get_local_async:
 * @self: a remote
 * @id: the local document's id, with or without its `_local/` prefix
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Reads a `_local` document (a replication checkpoint).
 */
void
hb_remote_get_local_async (HbRemote *self,
                           const char *id,
                           GCancellable *cancellable,
                           GAsyncReadyCallback callback,
                           gpointer user_data)
{
  g_autofree char *path = NULL;
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (id != NULL);

  task = request_task (self, "_local document read", answer_get_local,
                       (GDestroyNotify)json_node_unref, hb_remote_get_local_async, cancellable,
                       callback, user_data);
  ((Request *)g_task_get_task_data (task))->accept_status = SOUP_STATUS_NOT_FOUND;
  path = local_path (id);
  send_request (self, task, "GET", path, NULL, FALSE);
}

/**
 * hb_remote_get_local_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Finishes hb_remote_get_local_async(). A document that does not exist gives %NULL without an
 * error.
 *
 * Returns: (transfer full) (nullable): the document (a JSON object), or %NULL
 */
JsonNode *
hb_remote_get_local_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_get_local_async, error);
}

static gpointer
answer_put_local (Request *req, const guint8 *data, gsize len, GError **error)
{
  return hb_remote_parse_put_result (data, len, error);
}

/**
 * hb_remote_put_local_async:
 * @self: a remote
 * @id: the local document's id, with or without its `_local/` prefix
 * @doc: the document, a JSON object; its `_rev` must be the current one when it exists
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Writes a `_local` document. A stale `_rev` fails with %HB_REMOTE_ERROR_CONFLICT.
 */
void
hb_remote_put_local_async (HbRemote *self,
                           const char *id,
                           JsonNode *doc,
                           GCancellable *cancellable,
                           GAsyncReadyCallback callback,
                           gpointer user_data)
{
  g_autofree char *path = NULL;
  g_autofree char *text = NULL;
  g_autoptr (GBytes) body = NULL;
  gsize len;
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (id != NULL);
  g_return_if_fail (doc != NULL && JSON_NODE_HOLDS_OBJECT (doc));

  task = request_task (self, "_local document write", answer_put_local, g_free,
                       hb_remote_put_local_async, cancellable, callback, user_data);
  path = local_path (id);
  text = hb_json_to_canonical (doc, &len);
  body = g_bytes_new_take (g_steal_pointer (&text), len);
  send_request (self, task, "PUT", path, body, FALSE);
}

/**
 * hb_remote_put_local_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the new `_rev`, or %NULL with @error set
 */
char *
hb_remote_put_local_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_put_local_async, error);
}

static gpointer
answer_changes (Request *req, const guint8 *data, gsize len, GError **error)
{
  return hb_remote_parse_changes (data, len, error);
}

/* A sequence for the query string: a string's content, a number's digits, anything else (an
 * array from an old BigCouch) as JSON text. */
static char *
since_text (JsonNode *since)
{
  if (JSON_NODE_HOLDS_VALUE (since) && json_node_get_value_type (since) == G_TYPE_STRING)
    return g_strdup (json_node_get_string (since));
  if (JSON_NODE_HOLDS_VALUE (since) && json_node_get_value_type (since) == G_TYPE_INT64)
    return g_strdup_printf ("%" G_GINT64_FORMAT, json_node_get_int (since));
  return json_to_string (since, FALSE);
}

/* The server should answer a quiet longpoll before the I/O timeout would fail it. */
static guint
longpoll_ms (HbRemote *self, guint timeout_ms)
{
  guint cap;

  if (self->timeout == 0)
    return timeout_ms != 0 ? timeout_ms : DEFAULT_LONGPOLL_MS;
  cap = self->timeout * 1000;
  cap -= MIN (5000, cap / 4);
  return timeout_ms != 0 && timeout_ms < cap ? timeout_ms : cap;
}

static gpointer
answer_changes_docs (Request *req, const guint8 *data, gsize len, GError **error)
{
  HbRemoteChanges *changes = hb_remote_parse_changes (data, len, error);

  /* Every document is in its own (wiped) text now: the plaintext of the page goes. */
  hb_wipe ((gpointer)data, len);
  return changes;
}

static void
send_changes (HbRemote *self,
              JsonNode *since,
              guint limit,
              const char *const *doc_ids,
              gboolean longpoll,
              guint timeout_ms,
              gboolean include_docs,
              GCancellable *cancellable,
              GAsyncReadyCallback callback,
              gpointer user_data)
{
  g_autoptr (GString) path = g_string_new ("_changes?style=all_docs");
  g_autoptr (GBytes) body = NULL;
  GTask *task;

  /* Both finish with hb_remote_changes_finish(): the same source tag. */
  task = request_task (self, "_changes", include_docs ? answer_changes_docs : answer_changes,
                       (GDestroyNotify)hb_remote_changes_free, hb_remote_changes_async, cancellable,
                       callback, user_data);
  if (include_docs)
    g_string_append (path, "&include_docs=true");
  if (longpoll)
    g_string_append_printf (path, "&feed=longpoll&timeout=%u", longpoll_ms (self, timeout_ms));
  else
    g_string_append (path, "&feed=normal");
  if (limit > 0)
    g_string_append_printf (path, "&limit=%u", limit);
  if (since != NULL && !JSON_NODE_HOLDS_NULL (since))
    {
      g_autofree char *text = since_text (since);
      g_string_append (path, "&since=");
      g_string_append_uri_escaped (path, text, NULL, FALSE);
    }
  if (doc_ids != NULL)
    {
      g_autoptr (GString) json = g_string_new ("{\"doc_ids\":[");
      for (guint i = 0; doc_ids[i] != NULL; i++)
        {
          if (i > 0)
            g_string_append_c (json, ',');
          hb_json_append_string (json, doc_ids[i]);
        }
      g_string_append (json, "]}");
      body = g_string_free_to_bytes (g_steal_pointer (&json));
      g_string_append (path, "&filter=_doc_ids");
    }
  send_request (self, task, body != NULL ? "POST" : "GET", path->str, body, TRUE);
}

/**
 * hb_remote_changes_async:
 * @self: a remote
 * @since: (nullable): the sequence to start after, as the server gave it (opaque: a number is
 *   sent as its digits, a string as its content); %NULL for the beginning
 * @limit: the most rows to return, 0 for no limit
 * @doc_ids: (nullable) (array zero-terminated=1): only changes to these documents, sent in a
 *   POST body (`filter=_doc_ids`) since a long list would overflow a URL
 * @longpoll: whether to wait for a change when there is none yet (`feed=longpoll`)
 * @timeout_ms: how long a longpoll waits before answering with no rows; it is cut to stay
 *   under #HbRemote:timeout, so a quiet feed ends as an empty answer rather than a timeout;
 *   0 for as long as that allows
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Reads the changes feed, always with `style=all_docs` so every leaf revision is listed.
 */
void
hb_remote_changes_async (HbRemote *self,
                         JsonNode *since,
                         guint limit,
                         const char *const *doc_ids,
                         gboolean longpoll,
                         guint timeout_ms,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data)
{
  g_return_if_fail (HB_IS_REMOTE (self));

  send_changes (self, since, limit, doc_ids, longpoll, timeout_ms, FALSE, cancellable, callback,
                user_data);
}

void
hb_remote_changes_docs_async (HbRemote *self,
                              JsonNode *since,
                              guint limit,
                              const char *const *doc_ids,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data)
{
  g_return_if_fail (HB_IS_REMOTE (self));

  send_changes (self, since, limit, doc_ids, FALSE, 0, TRUE, cancellable, callback, user_data);
}

/**
 * hb_remote_changes_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Returns: (transfer full): the changes, or %NULL with @error set
 */
HbRemoteChanges *
hb_remote_changes_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_changes_async, error);
}

static gpointer
answer_revs_diff (Request *req, const guint8 *data, gsize len, GError **error)
{
  return hb_remote_parse_revs_diff (data, len, error);
}

/**
 * hb_remote_revs_diff_async:
 * @self: a remote
 * @body: the request, `{"id": ["rev", ...], ...}` as JSON text
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Asks which of the given revisions the server lacks (`POST _revs_diff`).
 */
void
hb_remote_revs_diff_async (HbRemote *self,
                           GBytes *body,
                           GCancellable *cancellable,
                           GAsyncReadyCallback callback,
                           gpointer user_data)
{
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (body != NULL);

  task = request_task (self, "_revs_diff", answer_revs_diff, (GDestroyNotify)g_hash_table_unref,
                       hb_remote_revs_diff_async, cancellable, callback, user_data);
  send_request (self, task, "POST", "_revs_diff", body, TRUE);
}

/**
 * hb_remote_revs_diff_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Finishes hb_remote_revs_diff_async(). Documents of which the server has every revision are
 * absent from the table.
 *
 * Returns: (transfer full) (element-type utf8 HbRemoteRevsDiff): document id → what the
 *   server lacks, or %NULL with @error set
 */
GHashTable *
hb_remote_revs_diff_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_revs_diff_async, error);
}

/* A replication write: new_edits false, and said first, so a prefix tells it. */
static gboolean
inserts_revisions (GBytes *body)
{
  static const char prefix[] = "{\"new_edits\":false,";
  gsize len;
  const char *data = g_bytes_get_data (body, &len);

  return len >= sizeof prefix - 1 && memcmp (data, prefix, sizeof prefix - 1) == 0;
}

static gpointer
answer_bulk_docs (Request *req, const guint8 *data, gsize len, GError **error)
{
  return hb_remote_parse_bulk_docs (data, len, error);
}

/**
 * hb_remote_bulk_docs_async:
 * @self: a remote
 * @body: the request as JSON text, `{"new_edits": false, "docs": [...]}` for replication
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Writes documents (`POST _bulk_docs`). A request too large for the server fails with
 * %HB_REMOTE_ERROR_TOO_LARGE; documents refused one by one are not a failure of the request.
 *
 * A body that begins `{"new_edits":false` (as the replicator writes it) only inserts revisions
 * with their ids, so sending it twice changes nothing: it may go on a kept-alive connection and
 * is sent again if that connection turns out to be closed. Any other body is sent once, on a new
 * connection, as libsoup does for every POST it is not told is idempotent.
 */
void
hb_remote_bulk_docs_async (HbRemote *self,
                           GBytes *body,
                           GCancellable *cancellable,
                           GAsyncReadyCallback callback,
                           gpointer user_data)
{
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (body != NULL);

  task = request_task (self, "_bulk_docs", answer_bulk_docs, (GDestroyNotify)g_ptr_array_unref,
                       hb_remote_bulk_docs_async, cancellable, callback, user_data);
  send_request (self, task, "POST", "_bulk_docs", body, inserts_revisions (body));
}

/**
 * hb_remote_bulk_docs_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Finishes hb_remote_bulk_docs_async(). With `new_edits: false` CouchDB lists only the
 * documents it refused; check the @error of each entry.
 *
 * Returns: (transfer full) (element-type HbRemoteDocResult): the server's entries, or %NULL
 *   with @error set
 */
GPtrArray *
hb_remote_bulk_docs_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_bulk_docs_async, error);
}

static gpointer
answer_bulk_get (Request *req, const guint8 *data, gsize len, GError **error)
{
  return hb_remote_parse_bulk_get (data, len, error);
}

/* `POST _bulk_get`, its answer read by answer (into a GPtrArray) under source_tag. */
static void
send_bulk_get (HbRemote *self,
               GBytes *body,
               AnswerFunc answer,
               gpointer source_tag,
               GCancellable *cancellable,
               GAsyncReadyCallback callback,
               gpointer user_data)
{
  GTask *task = request_task (self, "_bulk_get", answer, (GDestroyNotify)g_ptr_array_unref,
                              source_tag, cancellable, callback, user_data);

  send_request (self, task, "POST", "_bulk_get?revs=true&latest=true", body, TRUE);
}

/**
 * hb_remote_bulk_get_async:
 * @self: a remote
 * @body: the request, `{"docs": [{"id": ..., "rev": ...}, ...]}` as JSON text
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Reads revisions with their history (`POST _bulk_get?revs=true&latest=true`). A server
 * without `_bulk_get` fails with %HB_REMOTE_ERROR_NOT_FOUND, %HB_REMOTE_ERROR_METHOD_NOT_ALLOWED
 * or %HB_REMOTE_ERROR_NOT_IMPLEMENTED: read with hb_remote_get_open_revs_async() instead.
 */
void
hb_remote_bulk_get_async (HbRemote *self,
                          GBytes *body,
                          GCancellable *cancellable,
                          GAsyncReadyCallback callback,
                          gpointer user_data)
{
  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (body != NULL);

  send_bulk_get (self, body, answer_bulk_get, hb_remote_bulk_get_async, cancellable, callback,
                 user_data);
}

/**
 * hb_remote_bulk_get_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Finishes hb_remote_bulk_get_async(). A revision the server lacks is an entry with its
 * @error set, not a failure.
 *
 * Returns: (transfer full) (element-type HbRemoteBulkGetResult): one entry per document
 *   asked, or %NULL with @error set
 */
GPtrArray *
hb_remote_bulk_get_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_bulk_get_async, error);
}

static gpointer
answer_bulk_get_raw (Request *req, const guint8 *data, gsize len, GError **error)
{
  GPtrArray *revisions = hb_remote_parse_bulk_get_raw (data, len, error);

  /* Every document is in its own (wiped) text now: the plaintext of the page goes. */
  hb_wipe ((gpointer)data, len);
  return revisions;
}

void
hb_remote_bulk_get_raw_async (HbRemote *self,
                              GBytes *body,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data)
{
  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (body != NULL);

  send_bulk_get (self, body, answer_bulk_get_raw, hb_remote_bulk_get_raw_async, cancellable,
                 callback, user_data);
}

GPtrArray *
hb_remote_bulk_get_raw_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_bulk_get_raw_async, error);
}

static gpointer
answer_open_revs (Request *req, const guint8 *data, gsize len, GError **error)
{
  return hb_remote_parse_open_revs (req->id, data, len, error);
}

/**
 * hb_remote_get_open_revs_async:
 * @self: a remote
 * @id: the document's id
 * @revs: (array zero-terminated=1): the revisions to read
 * @cancellable: (nullable): a cancellable
 * @callback: (scope async): called on the caller's context when done
 * @user_data: data for @callback
 *
 * Reads revisions of one document with their history
 * (`GET /db/id?revs=true&latest=true&open_revs=[...]`), for servers without `_bulk_get`.
 */
void
hb_remote_get_open_revs_async (HbRemote *self,
                               const char *id,
                               const char *const *revs,
                               GCancellable *cancellable,
                               GAsyncReadyCallback callback,
                               gpointer user_data)
{
  g_autoptr (GString) list = g_string_new ("[");
  g_autoptr (GString) path = NULL;
  g_autofree char *doc = NULL;
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (id != NULL);
  g_return_if_fail (revs != NULL);

  task = request_task (self, "open_revs read", answer_open_revs,
                       (GDestroyNotify)hb_remote_bulk_get_result_free,
                       hb_remote_get_open_revs_async, cancellable, callback, user_data);
  ((Request *)g_task_get_task_data (task))->id = g_strdup (id);
  for (guint i = 0; revs[i] != NULL; i++)
    {
      if (i > 0)
        g_string_append_c (list, ',');
      hb_json_append_string (list, revs[i]);
    }
  g_string_append_c (list, ']');
  doc = doc_path (id);
  path = g_string_new (doc);
  g_string_append (path, "?revs=true&latest=true&open_revs=");
  g_string_append_uri_escaped (path, list->str, NULL, FALSE);
  send_request (self, task, "GET", path->str, NULL, FALSE);
}

/**
 * hb_remote_get_open_revs_finish:
 * @self: a remote
 * @result: the result given to the callback
 * @error: return location for an error
 *
 * Finishes hb_remote_get_open_revs_async(). A revision the server lacks is an entry with
 * @error `not_found`, not a failure.
 *
 * Returns: (transfer full): the revisions, or %NULL with @error set
 */
HbRemoteBulkGetResult *
hb_remote_get_open_revs_finish (HbRemote *self, GAsyncResult *result, GError **error)
{
  return finish_pointer (self, result, hb_remote_get_open_revs_async, error);
}
