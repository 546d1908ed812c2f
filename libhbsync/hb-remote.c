/* HbRemote: one CouchDB database over libsoup 3.
 *
 * Every request follows one path: a SoupMessage is sent and its whole answer read on the
 * owner's main context (so each connection is left clean and goes back to the pool), then the
 * status is judged and the body parsed in a worker thread (hb-remote-parse.c), so megabytes of
 * JSON never stall the caller's main loop. */

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

struct _HbRemote
{
  GObject parent_instance;

  char *url;
  char *authorization; /* "Basic ...", wiped when replaced */
  SoupSession *session;
  guint max_connections;
  guint timeout;
  char *user_agent;
};

enum
{
  PROP_0,
  PROP_URL,
  PROP_MAX_CONNECTIONS,
  PROP_TIMEOUT,
  PROP_USER_AGENT,
  N_PROPS
};

static GParamSpec *properties[N_PROPS];

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
 * refusal, a conflict, a bad answer) will fail the same way again.
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

static void
wipe_string (char **s)
{
  if (*s == NULL)
    return;
  hb_wipe (*s, strlen (*s));
  g_clear_pointer (s, g_free);
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
 * loopback.
 */
void
hb_remote_set_basic_auth (HbRemote *self, const char *username, const char *password)
{
  g_autofree char *pair = NULL;
  g_autofree char *encoded = NULL;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (username == NULL || strchr (username, ':') == NULL);

  wipe_string (&self->authorization);
  if (username == NULL)
    return;
  pair = g_strconcat (username, ":", password != NULL ? password : "", NULL);
  encoded = g_base64_encode ((const guchar *)pair, strlen (pair));
  self->authorization = g_strconcat ("Basic ", encoded, NULL);
  wipe_string (&pair);
  wipe_string (&encoded);
}

static void
set_url (HbRemote *self, const char *url)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *user = NULL;
  g_autofree char *password = NULL;

  if (!parse_database_url (url, &self->url, &user, &password, &error))
    {
      g_critical ("HbRemote: %s", error->message);
      return;
    }
  if (user != NULL)
    hb_remote_set_basic_auth (self, user, password);
  wipe_string (&password);
}

/* ---- object ------------------------------------------------------------------------------ */

static void
hb_remote_finalize (GObject *object)
{
  HbRemote *self = HB_REMOTE (object);

  g_clear_object (&self->session);
  wipe_string (&self->authorization);
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
  g_object_class_install_properties (object_class, N_PROPS, properties);
}

static void
hb_remote_init (HbRemote *self)
{
  self->max_connections = DEFAULT_MAX_CONNECTIONS;
  self->timeout = DEFAULT_TIMEOUT;
  self->user_agent
      = g_strdup_printf ("hbsync/%d.%d.%d", HB_MAJOR_VERSION, HB_MINOR_VERSION, HB_MICRO_VERSION);
}

/**
 * hb_remote_new:
 * @database_url: the http or https URL of one database, e.g. `https://host:6984/clinic`;
 *   `user:password@` in it becomes basic credentials
 * @error: return location for an error
 *
 * Creates a client for one CouchDB database. Nothing is sent until a request is made; requests
 * run on the thread-default main context of the caller, which must stay the same for the life
 * of the remote.
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

static SoupSession *
get_session (HbRemote *self)
{
  if (self->session != NULL)
    return self->session;
  /* libsoup allows 2 connections per host by default: too few to keep a pipelined
   * replication busy. */
  self->session = soup_session_new_with_options (
      "max-conns", self->max_connections, "max-conns-per-host", self->max_connections, "timeout",
      self->timeout, "user-agent", self->user_agent, NULL);
  /* Credentials are sent preemptively, by us; nothing should answer a challenge with others. */
  soup_session_remove_feature_by_type (self->session, SOUP_TYPE_AUTH_MANAGER);
  return self->session;
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

/* libsoup's errors for a request that got no complete HTTP answer. */
static GError *
transport_error (const char *what, GError *error)
{
  HbRemoteError code = HB_REMOTE_ERROR_FAILED;
  GError *mapped;

  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    return error;
  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT))
    code = HB_REMOTE_ERROR_TIMEOUT;
  else if (error->domain == G_IO_ERROR || error->domain == G_RESOLVER_ERROR
           || g_error_matches (error, G_TLS_ERROR, G_TLS_ERROR_EOF))
    code = HB_REMOTE_ERROR_NETWORK;
  else if (g_error_matches (error, SOUP_SESSION_ERROR, SOUP_SESSION_ERROR_PARSING)
           || g_error_matches (error, SOUP_SESSION_ERROR, SOUP_SESSION_ERROR_ENCODING))
    code = HB_REMOTE_ERROR_BAD_RESPONSE;
  mapped = g_error_new (HB_REMOTE_ERROR, code, "%s: %s", what, error->message);
  g_error_free (error);
  return mapped;
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
request_sent (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  g_autoptr (GTask) parse = NULL;
  Request *req = g_task_get_task_data (task);
  GError *error = NULL;

  req->response = soup_session_send_and_read_finish (SOUP_SESSION (source), result, &error);
  if (req->response == NULL)
    {
      g_task_return_error (task, transport_error (req->what, error));
      return;
    }
  req->status = soup_message_get_status (req->msg);
  /* The worker gets a task of its own, with no source object: whichever thread drops the last
   * reference to it, the remote (and its SoupSession) is only ever released on the owner's
   * context, with the request's own task. */
  parse = g_task_new (NULL, NULL, answer_done, g_steal_pointer (&task));
  g_task_set_task_data (parse, req, NULL);
  g_task_run_in_thread (parse, answer_thread);
}

static SoupMessage *
new_message (HbRemote *self, const char *method, const char *path, GBytes *body, GError **error)
{
  g_autofree char *text = NULL;
  g_autoptr (GUri) uri = NULL;
  SoupMessageHeaders *headers;
  SoupMessage *msg;

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
    {
      g_set_error_literal (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FAILED,
                           "The request path is not a valid URL path");
      return NULL;
    }
  msg = soup_message_new_from_uri (method, uri);
  /* A redirection would carry the credentials elsewhere; CouchDB sends none worth following. */
  soup_message_add_flags (msg, SOUP_MESSAGE_NO_REDIRECT);
  headers = soup_message_get_request_headers (msg);
  soup_message_headers_replace (headers, "Accept", "application/json");
  if (self->authorization != NULL)
    soup_message_headers_replace (headers, "Authorization", self->authorization);
  if (body != NULL)
    soup_message_set_request_body_from_bytes (msg, "application/json", body);
  return msg;
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

  req->msg = new_message (self, method, path, body, &error);
  if (req->msg == NULL)
    {
      g_task_return_error (task, error);
      g_object_unref (task);
      return;
    }
  if (idempotent)
    soup_message_add_flags (req->msg, SOUP_MESSAGE_IDEMPOTENT);
  soup_session_send_and_read_async (get_session (self), req->msg, G_PRIORITY_DEFAULT,
                                    g_task_get_cancellable (task), request_sent, task);
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
  g_autoptr (GString) path = g_string_new ("_changes?style=all_docs");
  g_autoptr (GBytes) body = NULL;
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));

  task = request_task (self, "_changes", answer_changes, (GDestroyNotify)hb_remote_changes_free,
                       hb_remote_changes_async, cancellable, callback, user_data);
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
  send_request (self, task, "POST", "_bulk_docs", body, FALSE);
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
  GTask *task;

  g_return_if_fail (HB_IS_REMOTE (self));
  g_return_if_fail (body != NULL);

  task = request_task (self, "_bulk_get", answer_bulk_get, (GDestroyNotify)g_ptr_array_unref,
                       hb_remote_bulk_get_async, cancellable, callback, user_data);
  send_request (self, task, "POST", "_bulk_get?revs=true&latest=true", body, TRUE);
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
