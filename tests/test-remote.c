/* HbRemote against a CouchDB stand-in written here with SoupServer (and a raw socket server
 * for answers SoupServer would never send), plus the response parsers on their own. */

#include <libsoup/soup.h>
#include <string.h>

#include "hb-remote-parse-private.h"
#include "hb-test-server.h"
#include "hb-test-utils.h"

/* LeakSanitizer, for this program only. libsoup 3.2 leaks the server side of a connection the
 * client closes while it is idle, with its accepted socket and a reference to the listener's
 * address (fixed upstream in 3.3.0 by commit d20c6601, "Don't leak idle connections closed by
 * the client"). Only the test's stand-in servers accept connections or listen; libhbsync is a
 * client and does neither, so nothing of the library is hidden by these. */
const char *__lsan_default_suppressions (void);

const char *
__lsan_default_suppressions (void)
{
  return "leak:g_socket_accept\n"
         "leak:soup_server_listen_local\n";
}

/* ---- a CouchDB stand-in ------------------------------------------------------------------ */

typedef struct
{
  char *method; /* NULL: any */
  char *path;   /* the raw (escaped) path */
  guint status;
  char *body;
} Route;

typedef struct
{
  SoupServerMessage *msg;
  guint source;
} Held;

typedef struct
{
  SoupServer *server;
  char *base; /* http://127.0.0.1:port */
  HbRemote *remote;

  GPtrArray *routes;
  guint status; /* the answer when no route matches */
  char *body;
  guint delay_ms; /* answer after this long; G_MAXUINT: only at teardown */

  GHashTable *ports; /* client ports seen: one per connection */
  guint in_flight;
  guint max_in_flight;
  guint n_requests;
  GPtrArray *held;

  char *method; /* the last request */
  char *path;
  char *query;
  char *authorization;
  char *user_agent;
  char *accept;
  char *content_type;
  char *request_body;
  char *cookie;

  /* A cookie session: POST .../_session answers with a new AuthSession cookie, s1, s2, ... */
  guint logins;
  char *login_path;
  char *login_body;
  guint session_max_age;  /* sent with it when not 0 */
  const char *set_cookie; /* a Set-Cookie header for every other answer */
} Fixture;

static void
route_free (gpointer data)
{
  Route *r = data;

  g_free (r->method);
  g_free (r->path);
  g_free (r->body);
  g_free (r);
}

static void
add_route (Fixture *f, const char *method, const char *path, guint status, const char *body)
{
  Route *r = g_new0 (Route, 1);

  r->method = g_strdup (method);
  r->path = g_strdup (path);
  r->status = status;
  r->body = g_strdup (body);
  g_ptr_array_add (f->routes, r);
}

static void
answer (Fixture *f, const char *body)
{
  g_free (f->body);
  f->body = g_strdup (body);
}

static void
respond (SoupServerMessage *msg, guint status, const char *body)
{
  soup_server_message_set_status (msg, status, NULL);
  if (body != NULL)
    soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_COPY, body,
                                      strlen (body));
}

static void
set_answer (Fixture *f, SoupServerMessage *msg, const char *path)
{
  for (guint i = 0; i < f->routes->len; i++)
    {
      Route *r = g_ptr_array_index (f->routes, i);
      if (g_strcmp0 (r->path, path) == 0
          && (r->method == NULL
              || g_strcmp0 (r->method, soup_server_message_get_method (msg)) == 0))
        {
          respond (msg, r->status, r->body);
          return;
        }
    }
  respond (msg, f->status, f->body);
  if (f->set_cookie != NULL)
    soup_message_headers_append (soup_server_message_get_response_headers (msg), "Set-Cookie",
                                 f->set_cookie);
}

static void
answer_login (Fixture *f, SoupServerMessage *msg)
{
  SoupMessageHeaders *headers = soup_server_message_get_response_headers (msg);
  g_autofree char *cookie = NULL;

  f->logins++;
  g_free (f->login_path);
  f->login_path = g_strdup (f->path);
  g_free (f->login_body);
  f->login_body = g_strdup (f->request_body);
  if (f->session_max_age != 0)
    cookie = g_strdup_printf ("AuthSession=s%u; Max-Age=%u; Path=/; HttpOnly", f->logins,
                              f->session_max_age);
  else
    cookie = g_strdup_printf ("AuthSession=s%u; Path=/; HttpOnly", f->logins);
  soup_message_headers_append (headers, "Set-Cookie", cookie);
  respond (msg, SOUP_STATUS_OK, "{\"ok\":true,\"name\":\"nurse\",\"roles\":[]}");
}

static gboolean
release_held (gpointer data)
{
  Held *h = data;

  h->source = 0;
  soup_server_message_unpause (h->msg);
  return G_SOURCE_REMOVE;
}

static void
held_free (gpointer data)
{
  Held *h = data;

  g_clear_handle_id (&h->source, g_source_remove);
  g_object_unref (h->msg);
  g_free (h);
}

static void
message_finished (SoupServerMessage *msg, gpointer user_data)
{
  Fixture *f = user_data;

  f->in_flight--;
}

static void
server_callback (SoupServer *server,
                 SoupServerMessage *msg,
                 const char *path,
                 GHashTable *query,
                 gpointer user_data)
{
  Fixture *f = user_data;
  GUri *uri = soup_server_message_get_uri (msg);
  SoupMessageHeaders *headers = soup_server_message_get_request_headers (msg);
  g_autoptr (GBytes) body = soup_message_body_flatten (soup_server_message_get_request_body (msg));
  GInetSocketAddress *peer = G_INET_SOCKET_ADDRESS (soup_server_message_get_remote_address (msg));

  g_hash_table_add (f->ports, GUINT_TO_POINTER (g_inet_socket_address_get_port (peer)));
  f->n_requests++;
  f->in_flight++;
  f->max_in_flight = MAX (f->max_in_flight, f->in_flight);
  g_signal_connect (msg, "finished", G_CALLBACK (message_finished), f);

  g_free (f->method);
  f->method = g_strdup (soup_server_message_get_method (msg));
  g_free (f->path);
  f->path = g_strdup (g_uri_get_path (uri));
  g_free (f->query);
  f->query = g_strdup (g_uri_get_query (uri));
  g_free (f->authorization);
  f->authorization = g_strdup (soup_message_headers_get_one (headers, "Authorization"));
  g_free (f->user_agent);
  f->user_agent = g_strdup (soup_message_headers_get_one (headers, "User-Agent"));
  g_free (f->accept);
  f->accept = g_strdup (soup_message_headers_get_one (headers, "Accept"));
  g_free (f->content_type);
  f->content_type = g_strdup (soup_message_headers_get_content_type (headers, NULL));
  g_free (f->request_body);
  f->request_body = g_strndup (g_bytes_get_data (body, NULL), g_bytes_get_size (body));
  g_free (f->cookie);
  f->cookie = g_strdup (soup_message_headers_get_one (headers, "Cookie"));

  if (g_str_has_suffix (f->path, "/_session") && g_strcmp0 (f->method, "POST") == 0)
    answer_login (f, msg);
  else
    set_answer (f, msg, f->path);
  if (f->delay_ms > 0)
    {
      Held *h = g_new0 (Held, 1);

      h->msg = g_object_ref (msg);
      soup_server_message_pause (msg);
      if (f->delay_ms != G_MAXUINT)
        h->source = g_timeout_add (f->delay_ms, release_held, h);
      g_ptr_array_add (f->held, h);
    }
}

static char *
server_url (Fixture *f, const char *suffix)
{
  return g_strconcat (f->base, suffix, NULL);
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *url = NULL;
  GSList *uris;

  f->routes = g_ptr_array_new_with_free_func (route_free);
  f->held = g_ptr_array_new_with_free_func (held_free);
  f->ports = g_hash_table_new (NULL, NULL);
  f->status = SOUP_STATUS_OK;
  f->body = g_strdup ("{\"db_name\":\"clinic\",\"update_seq\":7,\"instance_start_time\":\"0\","
                      "\"doc_count\":3}");
  f->server = soup_server_new ("server-header", "hbsync-test ", NULL);
  soup_server_add_handler (f->server, NULL, server_callback, f, NULL);
  soup_server_listen_local (f->server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &error);
  g_assert_no_error (error);
  uris = soup_server_get_uris (f->server);
  f->base = g_strdup_printf ("http://127.0.0.1:%d", g_uri_get_port (uris->data));
  g_slist_free_full (uris, (GDestroyNotify)g_uri_unref);
  url = server_url (f, "/clinic");
  f->remote = hb_remote_new (url, &error);
  g_assert_no_error (error);
}

static void
drain (void)
{
  while (g_main_context_iteration (NULL, FALSE))
    ;
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_assert_finalize_object (f->remote);
  /* Answer whatever is still held, so no server message outlives the server. */
  for (guint i = 0; i < f->held->len; i++)
    {
      Held *h = g_ptr_array_index (f->held, i);
      if (h->source != 0)
        {
          g_clear_handle_id (&h->source, g_source_remove);
          soup_server_message_unpause (h->msg);
        }
      else if (f->delay_ms == G_MAXUINT)
        soup_server_message_unpause (h->msg);
    }
  drain ();
  g_clear_pointer (&f->held, g_ptr_array_unref);
  soup_server_disconnect (f->server);
  drain ();
  g_assert_finalize_object (f->server);
  g_clear_pointer (&f->routes, g_ptr_array_unref);
  g_clear_pointer (&f->ports, g_hash_table_unref);
  g_free (f->base);
  g_free (f->body);
  g_free (f->method);
  g_free (f->path);
  g_free (f->query);
  g_free (f->authorization);
  g_free (f->user_agent);
  g_free (f->accept);
  g_free (f->content_type);
  g_free (f->request_body);
  g_free (f->cookie);
  g_free (f->login_path);
  g_free (f->login_body);
}

/* ---- waiting for results ----------------------------------------------------------------- */

static void
store_result (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GAsyncResult **slot = user_data;

  g_assert_null (*slot);
  *slot = g_object_ref (result);
}

static GAsyncResult *
await (GAsyncResult **slot)
{
  while (*slot == NULL)
    g_main_context_iteration (NULL, TRUE);
  return *slot;
}

static GBytes *
bytes_of (const char *text)
{
  return g_bytes_new (text, strlen (text));
}

static GBytes *
request (Fixture *f,
         const char *method,
         const char *path,
         const char *body,
         guint *status,
         GError **error)
{
  g_autoptr (GAsyncResult) res = NULL;
  g_autoptr (GBytes) bytes = body != NULL ? bytes_of (body) : NULL;

  hb_remote_request_async (f->remote, method, path, bytes, NULL, store_result, &res);
  return hb_remote_request_finish (f->remote, await (&res), status, error);
}

static HbRemoteInfo *
get_info (HbRemote *remote, GError **error)
{
  g_autoptr (GAsyncResult) res = NULL;

  hb_remote_get_info_async (remote, NULL, store_result, &res);
  return hb_remote_get_info_finish (remote, await (&res), error);
}

static char *
query_param (const char *query, const char *name)
{
  g_autoptr (GHashTable) params = g_uri_parse_params (query, -1, "&", G_URI_PARAMS_NONE, NULL);

  return params != NULL ? g_strdup (g_hash_table_lookup (params, name)) : NULL;
}

/* A server that reads each request's head and answers with raw bytes, then closes: for
 * answers no HTTP server library would send, and to see request lines exactly as sent
 * (SoupServer decodes paths). */
typedef struct
{
  GSocketService *service;
  guint port;
  GBytes *reply;
  GMutex lock;
  GPtrArray *request_lines;
} RawServer;

static gboolean
raw_run (GThreadedSocketService *service,
         GSocketConnection *connection,
         GObject *source,
         gpointer user_data)
{
  RawServer *raw = user_data;
  GInputStream *in = g_io_stream_get_input_stream (G_IO_STREAM (connection));
  GOutputStream *out = g_io_stream_get_output_stream (G_IO_STREAM (connection));
  g_autoptr (GString) head = g_string_new (NULL);
  gsize len;
  const char *reply = g_bytes_get_data (raw->reply, &len);
  char c;

  while (!g_str_has_suffix (head->str, "\r\n\r\n")
         && g_input_stream_read (in, &c, 1, NULL, NULL) == 1)
    g_string_append_c (head, c);
  g_mutex_lock (&raw->lock);
  g_ptr_array_add (raw->request_lines, g_strndup (head->str, strcspn (head->str, "\r")));
  g_mutex_unlock (&raw->lock);
  g_output_stream_write_all (out, reply, len, NULL, NULL, NULL);
  g_io_stream_close (G_IO_STREAM (connection), NULL, NULL);
  return TRUE;
}

/* Listens on loopback, or on every IPv4 address when `any` is set. */
static RawServer *
raw_server_new_full (GBytes *reply, gboolean any)
{
  RawServer *raw = g_new0 (RawServer, 1);
  g_autoptr (GInetAddress) address = any ? g_inet_address_new_any (G_SOCKET_FAMILY_IPV4)
                                         : g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) socket_address = g_inet_socket_address_new (address, 0);
  g_autoptr (GSocketAddress) bound = NULL;
  g_autoptr (GError) error = NULL;

  g_mutex_init (&raw->lock);
  raw->reply = g_bytes_ref (reply);
  raw->request_lines = g_ptr_array_new_with_free_func (g_free);
  raw->service = g_threaded_socket_service_new (2);
  g_socket_listener_add_address (G_SOCKET_LISTENER (raw->service), socket_address,
                                 G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL, &bound, &error);
  g_assert_no_error (error);
  raw->port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  g_signal_connect (raw->service, "run", G_CALLBACK (raw_run), raw);
  g_socket_service_start (raw->service);
  return raw;
}

static RawServer *
raw_server_new (const char *reply)
{
  g_autoptr (GBytes) bytes = g_bytes_new_static (reply, strlen (reply));

  return raw_server_new_full (bytes, FALSE);
}

static guint
raw_server_connections (RawServer *raw)
{
  guint n;

  g_mutex_lock (&raw->lock);
  n = raw->request_lines->len;
  g_mutex_unlock (&raw->lock);
  return n;
}

static HbRemote *
raw_server_remote (RawServer *raw)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *url = g_strdup_printf ("http://127.0.0.1:%u/clinic", raw->port);
  HbRemote *remote = hb_remote_new (url, &error);

  g_assert_no_error (error);
  return remote;
}

static char *
raw_server_last_line (RawServer *raw)
{
  char *line;

  g_mutex_lock (&raw->lock);
  g_assert_cmpuint (raw->request_lines->len, >, 0);
  line = g_strdup (g_ptr_array_index (raw->request_lines, raw->request_lines->len - 1));
  g_mutex_unlock (&raw->lock);
  return line;
}

static void
raw_server_free (RawServer *raw)
{
  g_socket_service_stop (raw->service);
  g_socket_listener_close (G_SOCKET_LISTENER (raw->service));
  g_object_unref (raw->service);
  g_bytes_unref (raw->reply);
  g_ptr_array_unref (raw->request_lines);
  g_mutex_clear (&raw->lock);
  g_free (raw);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (RawServer, raw_server_free)

/* ---- URL and credentials ----------------------------------------------------------------- */

static void
test_url_normalized (void)
{
  static const struct
  {
    const char *in;
    const char *out;
  } cases[] = {
    { "http://127.0.0.1:5984/clinic", "http://127.0.0.1:5984/clinic" },
    { "http://127.0.0.1:5984/clinic/", "http://127.0.0.1:5984/clinic" },
    { "http://127.0.0.1:5984/clinic///", "http://127.0.0.1:5984/clinic" },
    { "https://admin:s3cret@Couch.Example.ORG:443/db", "https://couch.example.org/db" },
    { "HTTP://user@couch.example.org:80/a%2Fb", "http://couch.example.org/a%2Fb" },
    { "http://[::1]:5984/clinic", "http://[::1]:5984/clinic" },
  };
  static const char *const invalid[] = {
    "ftp://host/db",
    "http:///db",
    "http://host",
    "http://host/",
    "http://u:s3cret@host/db?x=1",
    "http://u:s3cret@host/db#f",
    "not a url with s3cret",
    "http://u%3Ax:s3cret@host/db",
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (HbRemote) remote = hb_remote_new (cases[i].in, &error);
      g_autofree char *prop = NULL;

      g_assert_no_error (error);
      g_assert_cmpstr (hb_remote_get_url (remote), ==, cases[i].out);
      g_object_get (remote, "url", &prop, NULL);
      g_assert_cmpstr (prop, ==, cases[i].out);
    }
  for (guint i = 0; i < G_N_ELEMENTS (invalid); i++)
    {
      g_autoptr (GError) error = NULL;

      g_assert_null (hb_remote_new (invalid[i], &error));
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FAILED);
      g_assert_null (strstr (error->message, "s3cret"));
    }
}

static void
test_properties (void)
{
  g_autoptr (HbRemote) remote = hb_remote_new ("http://127.0.0.1:1/db", NULL);
  guint max_connections, timeout;
  g_autofree char *agent = NULL;

  g_object_get (remote, "max-connections", &max_connections, "timeout", &timeout, "user-agent",
                &agent, NULL);
  g_assert_cmpuint (max_connections, ==, 8);
  g_assert_cmpuint (timeout, ==, 60);
  g_assert_true (g_str_has_prefix (agent, "hbsync/"));
  hb_remote_set_max_connections (remote, 3);
  hb_remote_set_timeout (remote, 5);
  hb_remote_set_user_agent (remote, NULL);
  g_assert_cmpuint (hb_remote_get_max_connections (remote), ==, 3);
  g_assert_cmpuint (hb_remote_get_timeout (remote), ==, 5);
  g_assert_null (hb_remote_get_user_agent (remote));
}

static void
test_basic_auth (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *url = NULL;
  g_autofree char *expected = NULL;
  g_autofree char *encoded = NULL;
  g_autoptr (HbRemoteInfo) info = NULL;
  g_autoptr (HbRemote) remote = NULL;
  const char *plain = "nurse:p@ss:word é";

  url = g_strdup_printf ("http://nurse:p%%40ss%%3Aword%%20%%C3%%A9@%s/clinic/", f->base + 7);
  remote = hb_remote_new (url, &error);
  g_assert_no_error (error);
  g_assert_null (strstr (hb_remote_get_url (remote), "nurse"));
  g_assert_null (strstr (hb_remote_get_url (remote), "ss"));
  g_assert_null (strstr (hb_remote_get_url (remote), "@"));
  g_assert_false (g_str_has_suffix (hb_remote_get_url (remote), "/"));

  info = get_info (remote, &error);
  g_assert_no_error (error);
  encoded = g_base64_encode ((const guchar *)plain, strlen (plain));
  expected = g_strconcat ("Basic ", encoded, NULL);
  g_assert_cmpstr (f->authorization, ==, expected);
  g_assert_true (g_str_has_prefix (f->user_agent, "hbsync/"));
  g_assert_cmpstr (f->accept, ==, "application/json");

  /* Replaced, then removed. */
  hb_remote_set_basic_auth (remote, "admin", NULL);
  g_clear_pointer (&info, hb_remote_info_free);
  info = get_info (remote, &error);
  g_assert_no_error (error);
  g_free (expected);
  expected = g_strconcat ("Basic ", "YWRtaW46", NULL);
  g_assert_cmpstr (f->authorization, ==, expected);
  hb_remote_set_basic_auth (remote, NULL, NULL);
  g_clear_pointer (&info, hb_remote_info_free);
  info = get_info (remote, &error);
  g_assert_no_error (error);
  g_assert_null (f->authorization);

  /* A 401 with a challenge is an error at once: nothing prompts, nothing resends. */
  f->status = SOUP_STATUS_UNAUTHORIZED;
  answer (f, "{\"error\":\"unauthorized\",\"reason\":\"Name or password is incorrect.\"}");
  g_clear_pointer (&info, hb_remote_info_free);
  f->n_requests = 0;
  info = get_info (remote, &error);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_UNAUTHORIZED);
  g_assert_cmpuint (f->n_requests, ==, 1);
}

/* ---- statuses ---------------------------------------------------------------------------- */

static void
test_status_mapping (Fixture *f, gconstpointer data)
{
  static const struct
  {
    guint status;
    const char *body;
    HbRemoteError code;
    gboolean transient;
    const char *quoted;
  } cases[] = {
    { 400, "{\"error\":\"bad_request\",\"reason\":\"invalid UTF-8 JSON\"}",
      HB_REMOTE_ERROR_BAD_REQUEST, FALSE, "bad_request (invalid UTF-8 JSON)" },
    { 401, "{\"error\":\"unauthorized\",\"reason\":\"You are not authorized.\"}",
      HB_REMOTE_ERROR_UNAUTHORIZED, FALSE, "unauthorized (You are not authorized.)" },
    { 403, "{\"error\":\"forbidden\",\"reason\":\"not a clinician\",\"doc\":{\"name\":\"Amina\"}}",
      HB_REMOTE_ERROR_FORBIDDEN, FALSE, "forbidden (not a clinician)" },
    { 404, "{\"error\":\"not_found\",\"reason\":\"Database does not exist.\"}",
      HB_REMOTE_ERROR_NOT_FOUND, FALSE, "not_found (Database does not exist.)" },
    { 405, "{\"error\":\"method_not_allowed\",\"reason\":\"Only GET allowed\"}",
      HB_REMOTE_ERROR_METHOD_NOT_ALLOWED, FALSE, "method_not_allowed" },
    { 408, NULL, HB_REMOTE_ERROR_TIMEOUT, TRUE, "408" },
    { 409, "{\"error\":\"conflict\",\"reason\":\"Document update conflict.\"}",
      HB_REMOTE_ERROR_CONFLICT, FALSE, "conflict (Document update conflict.)" },
    { 412, "{\"error\":\"file_exists\",\"reason\":\"The database could not be created.\"}",
      HB_REMOTE_ERROR_PRECONDITION_FAILED, FALSE, "file_exists" },
    { 413, "{\"error\":\"too_large\",\"reason\":\"the request entity is too large\"}",
      HB_REMOTE_ERROR_TOO_LARGE, FALSE, "too_large" },
    { 415, "{\"error\":\"bad_content_type\"}", HB_REMOTE_ERROR_FAILED, FALSE, "bad_content_type" },
    { 429, NULL, HB_REMOTE_ERROR_SERVER, TRUE, "429" },
    { 500, "{\"error\":\"unknown_error\",\"reason\":\"function_clause\"}", HB_REMOTE_ERROR_SERVER,
      TRUE, "unknown_error (function_clause)" },
    { 501, "{\"error\":\"not_implemented\"}", HB_REMOTE_ERROR_NOT_IMPLEMENTED, FALSE,
      "not_implemented" },
    { 502, "<html>Bad Gateway from the proxy, Amina</html>", HB_REMOTE_ERROR_SERVER, TRUE, "502" },
    { 503, "{\"error\":\"service_unavailable\"}", HB_REMOTE_ERROR_SERVER, TRUE, "503" },
    { 504, "", HB_REMOTE_ERROR_SERVER, TRUE, "504" },
    { 302, "", HB_REMOTE_ERROR_FAILED, FALSE, "302" },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GBytes) bytes = NULL;
      g_autofree char *http = g_strdup_printf ("HTTP %u", cases[i].status);
      guint status = 0;

      g_test_message ("status %u", cases[i].status);
      f->status = cases[i].status;
      answer (f, cases[i].body);
      bytes = request (f, "PUT", "patient%3Asecret-id", "{\"given_name\":\"Amina\"}", &status,
                       &error);
      g_assert_null (bytes);
      g_assert_error (error, HB_REMOTE_ERROR, (gint)cases[i].code);
      g_assert_cmpuint (status, ==, cases[i].status);
      g_assert_cmpint (hb_remote_error_is_transient (error), ==, cases[i].transient);
      g_assert_nonnull (strstr (error->message, http));
      g_assert_nonnull (strstr (error->message, cases[i].quoted));
      /* Never the path (a document id), the request body or anything else of the answer. */
      g_assert_null (strstr (error->message, "secret"));
      g_assert_null (strstr (error->message, "Amina"));
      g_assert_null (strstr (error->message, "given_name"));
    }

  /* 2xx of any kind is a success, the body returned as is. */
  f->status = SOUP_STATUS_ACCEPTED;
  answer (f, "not even JSON");
  {
    g_autoptr (GError) error = NULL;
    guint status = 0;
    g_autoptr (GBytes) bytes = request (f, "GET", "", NULL, &status, &error);

    g_assert_no_error (error);
    g_assert_cmpuint (status, ==, 202);
    g_assert_cmpmem (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes), "not even JSON", 13);
  }
}

static void
test_transient_other_domains (void)
{
  g_autoptr (GError) io = g_error_new_literal (G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "x");

  /* Only the remote's own errors are judged; anything else is not retried blindly. */
  g_assert_false (hb_remote_error_is_transient (io));
}

/* ---- the CouchDB calls ------------------------------------------------------------------- */

static void
test_info_and_create (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = NULL;
  g_autoptr (HbRemoteInfo) copy = NULL;

  info = get_info (f->remote, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (f->method, ==, "GET");
  g_assert_cmpstr (f->path, ==, "/clinic");
  g_assert_cmpstr (info->db_name, ==, "clinic");
  g_assert_cmpint (json_node_get_value_type (info->update_seq), ==, G_TYPE_INT64);
  g_assert_cmpint (json_node_get_int (info->update_seq), ==, 7);
  g_assert_cmpstr (info->instance_start_time, ==, "0");
  g_assert_cmpint (info->doc_count, ==, 3);
  copy = hb_remote_info_copy (info);
  g_assert_cmpstr (copy->db_name, ==, "clinic");
  g_assert_true (json_node_equal (copy->update_seq, info->update_seq));
  g_clear_pointer (&info, hb_remote_info_free);

  answer (f, "{\"db_name\":\"clinic\",\"update_seq\":\"12-g1AAAAFTeJzLYWBg4MhgTmHgz8tPSTV0MD\"}");
  info = get_info (f->remote, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (json_node_get_string (info->update_seq), ==,
                   "12-g1AAAAFTeJzLYWBg4MhgTmHgz8tPSTV0MD");
  g_assert_null (info->instance_start_time);
  g_assert_cmpint (info->doc_count, ==, -1);
  g_clear_pointer (&info, hb_remote_info_free);

  f->status = 404;
  answer (f, "{\"error\":\"not_found\",\"reason\":\"Database does not exist.\"}");
  g_assert_null (get_info (f->remote, &error));
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NOT_FOUND);
  g_clear_error (&error);

  /* Creation: 201, or 412 file_exists, are success; another 412 is not. */
  {
    static const struct
    {
      guint status;
      const char *body;
      gboolean ok;
    } cases[] = {
      { 201, "{\"ok\":true}", TRUE },
      { 202, "{\"ok\":true}", TRUE },
      { 412, "{\"error\":\"file_exists\",\"reason\":\"The database could not be created.\"}",
        TRUE },
      { 412, "{\"error\":\"precondition_failed\"}", FALSE },
      { 401, "{\"error\":\"unauthorized\"}", FALSE },
    };
    for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
      {
        g_autoptr (GAsyncResult) res = NULL;
        gboolean ok;

        f->status = cases[i].status;
        answer (f, cases[i].body);
        hb_remote_create_database_async (f->remote, NULL, store_result, &res);
        ok = hb_remote_create_database_finish (f->remote, await (&res), &error);
        g_assert_cmpstr (f->method, ==, "PUT");
        g_assert_cmpstr (f->path, ==, "/clinic");
        g_assert_cmpint (ok, ==, cases[i].ok);
        g_assert_true (ok == (error == NULL));
        g_clear_error (&error);
      }
  }
}

static void
test_local_documents (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) doc = NULL;
  g_autoptr (JsonNode) checkpoint
      = hb_test_json ("{\"_id\":\"_local/rep 1\",\"session_id\":\"s1\",\"source_last_seq\":5}");
  g_autofree char *rev = NULL;

  add_route (f, "GET", "/clinic/_local/rep 1", 200,
             "{\"_id\":\"_local/rep 1\",\"_rev\":\"0-1\",\"session_id\":\"s1\"}");
  add_route (f, "GET", "/clinic/_local/missing", 404,
             "{\"error\":\"not_found\",\"reason\":\"missing\"}");
  add_route (f, "PUT", "/clinic/_local/rep 1", 201,
             "{\"ok\":true,\"id\":\"_local/rep 1\",\"rev\":\"0-2\"}");
  add_route (f, "PUT", "/clinic/_local/stale", 409,
             "{\"error\":\"conflict\",\"reason\":\"Document update conflict.\"}");
  add_route (f, "GET", "/clinic/_local/broken", 200, "[1,2]");

  /* With or without the prefix, the same document. */
  for (guint i = 0; i < 2; i++)
    {
      g_autoptr (GAsyncResult) res = NULL;

      hb_remote_get_local_async (f->remote, i == 0 ? "rep 1" : "_local/rep 1", NULL, store_result,
                                 &res);
      doc = hb_remote_get_local_finish (f->remote, await (&res), &error);
      g_assert_no_error (error);
      g_assert_cmpstr (f->path, ==, "/clinic/_local/rep 1");
      g_assert_cmpstr (json_object_get_string_member (json_node_get_object (doc), "_rev"), ==,
                       "0-1");
      g_clear_pointer (&doc, json_node_unref);
    }
  {
    g_autoptr (GAsyncResult) res = NULL;

    hb_remote_get_local_async (f->remote, "missing", NULL, store_result, &res);
    g_assert_null (hb_remote_get_local_finish (f->remote, await (&res), &error));
    g_assert_no_error (error);
  }
  {
    g_autoptr (GAsyncResult) res = NULL;

    hb_remote_get_local_async (f->remote, "broken", NULL, store_result, &res);
    g_assert_null (hb_remote_get_local_finish (f->remote, await (&res), &error));
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
    g_clear_error (&error);
  }
  {
    g_autoptr (GAsyncResult) res = NULL;
    g_autoptr (JsonNode) sent = NULL;

    hb_remote_put_local_async (f->remote, "rep 1", checkpoint, NULL, store_result, &res);
    rev = hb_remote_put_local_finish (f->remote, await (&res), &error);
    g_assert_no_error (error);
    g_assert_cmpstr (rev, ==, "0-2");
    g_assert_cmpstr (f->method, ==, "PUT");
    g_assert_cmpstr (f->content_type, ==, "application/json");
    sent = hb_test_json (f->request_body);
    g_assert_true (json_node_equal (sent, checkpoint));
  }
  {
    g_autoptr (GAsyncResult) res = NULL;

    hb_remote_put_local_async (f->remote, "_local/stale", checkpoint, NULL, store_result, &res);
    g_assert_null (hb_remote_put_local_finish (f->remote, await (&res), &error));
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_CONFLICT);
  }
}

static HbRemoteChanges *
changes (Fixture *f,
         JsonNode *since,
         guint limit,
         const char *const *doc_ids,
         gboolean longpoll,
         guint timeout_ms,
         GError **error)
{
  g_autoptr (GAsyncResult) res = NULL;

  hb_remote_changes_async (f->remote, since, limit, doc_ids, longpoll, timeout_ms, NULL,
                           store_result, &res);
  return hb_remote_changes_finish (f->remote, await (&res), error);
}

static void
test_changes (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteChanges) result = NULL;
  g_autoptr (HbRemoteChanges) copy = NULL;
  g_autoptr (JsonNode) number = hb_test_json ("42");
  g_autoptr (JsonNode) string = hb_test_json ("\"12-g1AAAA/+= x\"");
  g_autofree char *since = NULL;
  g_autofree char *style = NULL;
  g_autofree char *feed = NULL;
  HbRemoteChange *row;

  answer (f, "{\"results\":["
             "{\"seq\":\"11-g1A\",\"id\":\"patient:1\",\"changes\":[{\"rev\":\"2-b\"},"
             "{\"rev\":\"2-a\"}]},"
             "{\"seq\":12,\"id\":\"note:9\",\"changes\":[{\"rev\":\"3-c\"}],\"deleted\":true}],"
             "\"last_seq\":\"12-g1AAAB\",\"pending\":4}");

  /* A number is sent as its digits. */
  result = changes (f, number, 100, NULL, FALSE, 0, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (f->method, ==, "GET");
  g_assert_cmpstr (f->path, ==, "/clinic/_changes");
  since = query_param (f->query, "since");
  style = query_param (f->query, "style");
  feed = query_param (f->query, "feed");
  g_assert_cmpstr (since, ==, "42");
  g_assert_cmpstr (style, ==, "all_docs");
  g_assert_cmpstr (feed, ==, "normal");
  g_assert_nonnull (strstr (f->query, "limit=100"));
  g_assert_nonnull (strstr (f->query, "since=42"));

  g_assert_cmpuint (result->results->len, ==, 2);
  row = g_ptr_array_index (result->results, 0);
  g_assert_cmpstr (row->id, ==, "patient:1");
  g_assert_cmpstr (json_node_get_string (row->seq), ==, "11-g1A");
  g_assert_cmpuint (g_strv_length (row->revs), ==, 2);
  g_assert_cmpstr (row->revs[0], ==, "2-b");
  g_assert_cmpstr (row->revs[1], ==, "2-a");
  g_assert_false (row->deleted);
  row = g_ptr_array_index (result->results, 1);
  g_assert_cmpint (json_node_get_value_type (row->seq), ==, G_TYPE_INT64);
  g_assert_cmpint (json_node_get_int (row->seq), ==, 12);
  g_assert_true (row->deleted);
  g_assert_cmpstr (json_node_get_string (result->last_seq), ==, "12-g1AAAB");
  g_assert_cmpint (result->pending, ==, 4);
  copy = hb_remote_changes_copy (result);
  g_assert_cmpuint (copy->results->len, ==, 2);
  g_assert_cmpstr (((HbRemoteChange *)g_ptr_array_index (copy->results, 1))->id, ==, "note:9");
  g_clear_pointer (&result, hb_remote_changes_free);

  /* A string is sent as its content, escaped. */
  g_clear_pointer (&since, g_free);
  result = changes (f, string, 0, NULL, FALSE, 0, &error);
  g_assert_no_error (error);
  since = query_param (f->query, "since");
  g_assert_cmpstr (since, ==, "12-g1AAAA/+= x");
  g_assert_nonnull (strstr (f->query, "since=12-g1AAAA%2F%2B%3D%20x"));
  g_assert_null (strstr (f->query, "limit="));
  g_clear_pointer (&result, hb_remote_changes_free);

  /* No since: from the start. */
  result = changes (f, NULL, 0, NULL, FALSE, 0, &error);
  g_assert_no_error (error);
  g_assert_null (strstr (f->query, "since="));
  g_clear_pointer (&result, hb_remote_changes_free);

  /* Longpoll: the wait stays under the remote's own timeout. */
  hb_remote_set_timeout (f->remote, 10);
  result = changes (f, number, 0, NULL, TRUE, 30000, &error);
  g_assert_no_error (error);
  g_clear_pointer (&feed, g_free);
  feed = query_param (f->query, "feed");
  g_assert_cmpstr (feed, ==, "longpoll");
  g_assert_nonnull (strstr (f->query, "timeout=7500"));
  g_clear_pointer (&result, hb_remote_changes_free);
  result = changes (f, number, 0, NULL, TRUE, 2000, &error);
  g_assert_no_error (error);
  g_assert_nonnull (strstr (f->query, "timeout=2000"));
  g_clear_pointer (&result, hb_remote_changes_free);

  /* A wrong shape is a bad answer. */
  answer (f, "{\"results\":[{\"seq\":1,\"id\":\"a\",\"changes\":[{\"rev\":1}]}],\"last_seq\":1}");
  g_assert_null (changes (f, NULL, 0, NULL, FALSE, 0, &error));
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
  g_assert_false (hb_remote_error_is_transient (error));
}

static void
test_changes_doc_ids (Fixture *f, gconstpointer data)
{
  static const char *const ids[] = { "session:1", "note:a/b", "quote\"d", NULL };
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteChanges) result = NULL;
  g_autoptr (JsonNode) sent = NULL;
  g_autoptr (JsonNode) expected
      = hb_test_json ("{\"doc_ids\":[\"session:1\",\"note:a/b\",\"quote\\\"d\"]}");
  g_autofree char *filter = NULL;
  g_autofree char *style = NULL;

  answer (f, "{\"results\":[],\"last_seq\":0}");
  result = changes (f, NULL, 10, ids, FALSE, 0, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (f->method, ==, "POST");
  g_assert_cmpstr (f->path, ==, "/clinic/_changes");
  filter = query_param (f->query, "filter");
  style = query_param (f->query, "style");
  g_assert_cmpstr (filter, ==, "_doc_ids");
  g_assert_cmpstr (style, ==, "all_docs");
  g_assert_cmpstr (f->content_type, ==, "application/json");
  sent = hb_test_json (f->request_body);
  g_assert_true (json_node_equal (sent, expected));
  g_assert_cmpuint (result->results->len, ==, 0);
  g_assert_cmpint (result->pending, ==, -1);
}

static void
test_revs_diff (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GAsyncResult) res = NULL;
  g_autoptr (GBytes) body = bytes_of ("{\"a\":[\"1-x\",\"2-y\"],\"b\":[\"1-z\"]}");
  g_autoptr (GHashTable) diff = NULL;
  HbRemoteRevsDiff *entry;

  answer (f, "{\"a\":{\"missing\":[\"2-y\"],\"possible_ancestors\":[\"1-x\"]},"
             "\"c/d\":{\"missing\":[\"1-q\"]}}");
  hb_remote_revs_diff_async (f->remote, body, NULL, store_result, &res);
  diff = hb_remote_revs_diff_finish (f->remote, await (&res), &error);
  g_assert_no_error (error);
  g_assert_cmpstr (f->method, ==, "POST");
  g_assert_cmpstr (f->path, ==, "/clinic/_revs_diff");
  g_assert_cmpstr (f->request_body, ==, "{\"a\":[\"1-x\",\"2-y\"],\"b\":[\"1-z\"]}");
  g_assert_cmpuint (g_hash_table_size (diff), ==, 2);
  entry = g_hash_table_lookup (diff, "a");
  g_assert_cmpstrv (entry->missing, ((const char *const[]){ "2-y", NULL }));
  g_assert_cmpstrv (entry->possible_ancestors, ((const char *const[]){ "1-x", NULL }));
  entry = g_hash_table_lookup (diff, "c/d");
  g_assert_cmpstrv (entry->missing, ((const char *const[]){ "1-q", NULL }));
  g_assert_cmpuint (g_strv_length (entry->possible_ancestors), ==, 0);
}

static GPtrArray *
bulk_docs (Fixture *f, const char *body, GError **error)
{
  g_autoptr (GAsyncResult) res = NULL;
  g_autoptr (GBytes) bytes = bytes_of (body);

  hb_remote_bulk_docs_async (f->remote, bytes, NULL, store_result, &res);
  return hb_remote_bulk_docs_finish (f->remote, await (&res), error);
}

static void
test_bulk_docs (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) results = NULL;
  HbRemoteDocResult *r;
  const char *body = "{\"new_edits\":false,\"docs\":[{\"_id\":\"a\",\"_rev\":\"1-x\"}]}";

  /* Per-document refusals in a 201 are results, not a failed request. */
  f->status = 201;
  answer (f, "[{\"ok\":true,\"id\":\"a\",\"rev\":\"1-x\"},"
             "{\"id\":\"b\",\"error\":\"forbidden\",\"reason\":\"only clinicians\"},"
             "{\"id\":\"c\",\"rev\":\"2-y\",\"error\":\"conflict\",\"reason\":\"Document update "
             "conflict.\"}]");
  results = bulk_docs (f, body, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (f->method, ==, "POST");
  g_assert_cmpstr (f->path, ==, "/clinic/_bulk_docs");
  g_assert_cmpstr (f->request_body, ==, body);
  g_assert_cmpuint (results->len, ==, 3);
  r = g_ptr_array_index (results, 0);
  g_assert_cmpstr (r->id, ==, "a");
  g_assert_cmpstr (r->rev, ==, "1-x");
  g_assert_null (r->error);
  r = g_ptr_array_index (results, 1);
  g_assert_cmpstr (r->id, ==, "b");
  g_assert_null (r->rev);
  g_assert_cmpstr (r->error, ==, "forbidden");
  g_assert_cmpstr (r->reason, ==, "only clinicians");
  r = g_ptr_array_index (results, 2);
  g_assert_cmpstr (r->error, ==, "conflict");
  g_clear_pointer (&results, g_ptr_array_unref);

  /* CouchDB's answer to new_edits:false when all went in. */
  answer (f, "[]");
  results = bulk_docs (f, body, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (results->len, ==, 0);
  g_clear_pointer (&results, g_ptr_array_unref);

  f->status = 413;
  answer (f, "{\"error\":\"too_large\",\"reason\":\"the request entity is too large\"}");
  g_assert_null (bulk_docs (f, body, &error));
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TOO_LARGE);
  g_assert_false (hb_remote_error_is_transient (error));
  g_clear_error (&error);

  f->status = 201;
  answer (f, "{\"ok\":true}");
  g_assert_null (bulk_docs (f, body, &error));
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
}

static GPtrArray *
bulk_get (Fixture *f, const char *body, GError **error)
{
  g_autoptr (GAsyncResult) res = NULL;
  g_autoptr (GBytes) bytes = bytes_of (body);

  hb_remote_bulk_get_async (f->remote, bytes, NULL, store_result, &res);
  return hb_remote_bulk_get_finish (f->remote, await (&res), error);
}

static void
test_bulk_get (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) results = NULL;
  g_autoptr (HbRemoteBulkGetResult) copy = NULL;
  g_autofree char *revs = NULL;
  g_autofree char *latest = NULL;
  HbRemoteBulkGetResult *result;
  HbRemoteRevision *rev;
  const char *body = "{\"docs\":[{\"id\":\"a\",\"rev\":\"2-y\"},{\"id\":\"a\",\"rev\":\"3-q\"},"
                     "{\"id\":\"gone\",\"rev\":\"1-z\"}]}";

  answer (f, "{\"results\":["
             "{\"id\":\"a\",\"docs\":["
             "{\"ok\":{\"_id\":\"a\",\"_rev\":\"2-y\",\"v\":1,"
             "\"_revisions\":{\"start\":2,\"ids\":[\"y\",\"x\"]}}},"
             "{\"error\":{\"id\":\"a\",\"rev\":\"3-q\",\"error\":\"not_found\","
             "\"reason\":\"missing\"}}]},"
             "{\"id\":\"gone\",\"docs\":[{\"ok\":{\"_id\":\"gone\",\"_rev\":\"1-z\","
             "\"_deleted\":true,\"_revisions\":{\"start\":1,\"ids\":[\"z\"]}}}]}]}");
  results = bulk_get (f, body, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (f->method, ==, "POST");
  g_assert_cmpstr (f->path, ==, "/clinic/_bulk_get");
  revs = query_param (f->query, "revs");
  latest = query_param (f->query, "latest");
  g_assert_cmpstr (revs, ==, "true");
  g_assert_cmpstr (latest, ==, "true");
  g_assert_cmpstr (f->accept, ==, "application/json");
  g_assert_cmpstr (f->request_body, ==, body);

  g_assert_cmpuint (results->len, ==, 2);
  result = g_ptr_array_index (results, 0);
  g_assert_cmpstr (result->id, ==, "a");
  g_assert_cmpuint (result->revisions->len, ==, 2);
  rev = g_ptr_array_index (result->revisions, 0);
  g_assert_cmpstr (rev->id, ==, "a");
  g_assert_cmpstr (rev->rev, ==, "2-y");
  g_assert_null (rev->error);
  g_assert_true (json_object_has_member (json_node_get_object (rev->doc), "_revisions"));
  g_assert_null (json_node_get_parent (rev->doc));
  rev = g_ptr_array_index (result->revisions, 1);
  g_assert_null (rev->doc);
  g_assert_cmpstr (rev->rev, ==, "3-q");
  g_assert_cmpstr (rev->error, ==, "not_found");
  g_assert_cmpstr (rev->reason, ==, "missing");
  copy = hb_remote_bulk_get_result_copy (g_ptr_array_index (results, 1));
  rev = g_ptr_array_index (copy->revisions, 0);
  g_assert_true (json_object_get_boolean_member (json_node_get_object (rev->doc), "_deleted"));
  g_clear_pointer (&results, g_ptr_array_unref);

  /* Servers without _bulk_get: the three answers the caller falls back on. */
  {
    static const struct
    {
      guint status;
      HbRemoteError code;
    } lacks[] = {
      { 404, HB_REMOTE_ERROR_NOT_FOUND },
      { 405, HB_REMOTE_ERROR_METHOD_NOT_ALLOWED },
      { 501, HB_REMOTE_ERROR_NOT_IMPLEMENTED },
    };
    for (guint i = 0; i < G_N_ELEMENTS (lacks); i++)
      {
        f->status = lacks[i].status;
        answer (f, "{\"error\":\"not_found\",\"reason\":\"missing\"}");
        g_assert_null (bulk_get (f, body, &error));
        g_assert_error (error, HB_REMOTE_ERROR, (gint)lacks[i].code);
        g_clear_error (&error);
      }
  }
}

static HbRemoteBulkGetResult *
open_revs (Fixture *f, const char *id, const char *const *revs, GError **error)
{
  g_autoptr (GAsyncResult) res = NULL;

  hb_remote_get_open_revs_async (f->remote, id, revs, NULL, store_result, &res);
  return hb_remote_get_open_revs_finish (f->remote, await (&res), error);
}

static void
test_open_revs_fallback (Fixture *f, gconstpointer data)
{
  static const char *const revs[] = { "2-y", "3-q", NULL };
  static const struct
  {
    const char *id;
    const char *path;
  } ids[] = {
    { "patient:1", "/clinic/patient:1" },
    { "_design/app", "/clinic/_design/app" },
    { "note é", "/clinic/note é" },
  };
  g_autoptr (GError) error = NULL;

  add_route (f, "POST", "/clinic/_bulk_get", 404,
             "{\"error\":\"not_found\",\"reason\":\"missing\"}");
  {
    g_autoptr (GPtrArray) results = bulk_get (f, "{\"docs\":[]}", &error);
    g_assert_null (results);
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NOT_FOUND);
    g_clear_error (&error);
  }

  for (guint i = 0; i < G_N_ELEMENTS (ids); i++)
    {
      g_autoptr (HbRemoteBulkGetResult) result = NULL;
      g_autoptr (JsonNode) asked = NULL;
      g_autoptr (JsonNode) expected = hb_test_json ("[\"2-y\",\"3-q\"]");
      g_autofree char *body = NULL;
      g_autofree char *open = NULL;
      g_autofree char *revs_param = NULL;
      g_autofree char *latest = NULL;
      HbRemoteRevision *rev;
      JsonBuilder *builder = json_builder_new ();
      g_autoptr (JsonNode) doc = NULL;

      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "_id");
      json_builder_add_string_value (builder, ids[i].id);
      json_builder_set_member_name (builder, "_rev");
      json_builder_add_string_value (builder, "2-y");
      json_builder_end_object (builder);
      doc = json_builder_get_root (builder);
      g_object_unref (builder);
      {
        g_autofree char *doc_text = json_to_string (doc, FALSE);
        body = g_strdup_printf ("[{\"ok\":%s},{\"missing\":\"3-q\"}]", doc_text);
      }
      answer (f, body);

      result = open_revs (f, ids[i].id, revs, &error);
      g_assert_no_error (error);
      g_assert_cmpstr (f->method, ==, "GET");
      g_assert_cmpstr (f->path, ==, ids[i].path);
      g_assert_cmpstr (f->accept, ==, "application/json");
      open = query_param (f->query, "open_revs");
      revs_param = query_param (f->query, "revs");
      latest = query_param (f->query, "latest");
      g_assert_cmpstr (revs_param, ==, "true");
      g_assert_cmpstr (latest, ==, "true");
      asked = hb_test_json (open);
      g_assert_true (json_node_equal (asked, expected));

      g_assert_cmpstr (result->id, ==, ids[i].id);
      g_assert_cmpuint (result->revisions->len, ==, 2);
      rev = g_ptr_array_index (result->revisions, 0);
      g_assert_cmpstr (rev->id, ==, ids[i].id);
      g_assert_cmpstr (rev->rev, ==, "2-y");
      g_assert_nonnull (rev->doc);
      rev = g_ptr_array_index (result->revisions, 1);
      g_assert_cmpstr (rev->id, ==, ids[i].id);
      g_assert_cmpstr (rev->rev, ==, "3-q");
      g_assert_cmpstr (rev->error, ==, "not_found");
      g_assert_null (rev->doc);
    }
}

/* Ids as they go on the wire: SoupServer would decode them, so the raw server looks. */
static void
test_id_escaping (void)
{
  static const char *const revs[] = { "2-y", "3-q", NULL };
  static const struct
  {
    const char *id;
    const char *path;
  } ids[] = {
    { "patient/1:x", "/clinic/patient%2F1%3Ax?" },
    { "_design/app", "/clinic/_design/app?" },
    { "_design/a/b", "/clinic/_design/a%2Fb?" },
    { "_local/cp", "/clinic/_local/cp?" },
    { "note é+?#&%", "/clinic/note%20%C3%A9%2B%3F%23%26%25?" },
    { "_designer", "/clinic/_designer?" },
    { "_design/", "/clinic/_design%2F?" },
  };
  g_autoptr (RawServer) raw = raw_server_new (
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n"
      "[{\"missing\":\"2-y\"}]");
  g_autoptr (HbRemote) remote = raw_server_remote (raw);

  for (guint i = 0; i < G_N_ELEMENTS (ids); i++)
    {
      g_autoptr (GAsyncResult) res = NULL;
      g_autoptr (GError) error = NULL;
      g_autoptr (HbRemoteBulkGetResult) result = NULL;
      g_autofree char *line = NULL;
      g_autofree char *expected = g_strconcat ("GET ", ids[i].path, NULL);

      hb_remote_get_open_revs_async (remote, ids[i].id, revs, NULL, store_result, &res);
      result = hb_remote_get_open_revs_finish (remote, await (&res), &error);
      g_assert_no_error (error);
      line = raw_server_last_line (raw);
      g_test_message ("%s", line);
      g_assert_true (g_str_has_prefix (line, expected));
      g_assert_true (g_str_has_suffix (line, " HTTP/1.1"));
      /* The open_revs list is one escaped query value. */
      g_assert_nonnull (
          strstr (line, "revs=true&latest=true&open_revs=%5B%222-y%22%2C%223-q%22%5D"));
    }

  /* _local ids, with or without their prefix. */
  {
    static const char *const locals[] = { "rep/1", "_local/rep/1" };
    for (guint i = 0; i < G_N_ELEMENTS (locals); i++)
      {
        g_autoptr (GAsyncResult) res = NULL;
        g_autoptr (JsonNode) doc = NULL;
        g_autofree char *line = NULL;

        hb_remote_get_local_async (remote, locals[i], NULL, store_result, &res);
        doc = hb_remote_get_local_finish (remote, await (&res), NULL);
        line = raw_server_last_line (raw);
        g_assert_cmpstr (line, ==, "GET /clinic/_local/rep%2F1 HTTP/1.1");
      }
  }
}

/* ---- connections ------------------------------------------------------------------------- */

static void
test_connection_reuse (Fixture *f, gconstpointer data)
{
  for (guint i = 0; i < 30; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (HbRemoteInfo) info = NULL;

      /* Error answers too must leave the connection clean for the next request. */
      f->status = i % 3 == 2 ? 404 : 200;
      info = get_info (f->remote, &error);
      g_assert_true ((info != NULL) == (f->status == 200));
    }
  g_assert_cmpuint (f->n_requests, ==, 30);
  g_assert_cmpuint (g_hash_table_size (f->ports), ==, 1);
}

/* libsoup sends a POST on a new connection unless told it is idempotent: replication writes
 * (new_edits false) are, and share one kept-alive connection; other writes are not. */
static void
test_bulk_docs_connections (Fixture *f, gconstpointer data)
{
  f->status = 201;
  answer (f, "[]");
  for (guint i = 0; i < 10; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GPtrArray) results = bulk_docs (
          f, "{\"new_edits\":false,\"docs\":[{\"_id\":\"a\",\"_rev\":\"1-x\"}]}", &error);

      g_assert_no_error (error);
    }
  g_assert_cmpuint (f->n_requests, ==, 10);
  g_assert_cmpuint (g_hash_table_size (f->ports), ==, 1);

  for (guint i = 0; i < 3; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GPtrArray) results = bulk_docs (f, "{\"docs\":[{\"_id\":\"b\"}]}", &error);

      g_assert_no_error (error);
    }
  g_assert_cmpuint (f->n_requests, ==, 13);
  g_assert_cmpuint (g_hash_table_size (f->ports), ==, 4);
}

static void
run_concurrent (Fixture *f, guint n)
{
  g_autoptr (GPtrArray) results = g_ptr_array_new_with_free_func (g_object_unref);
  GAsyncResult **slots = g_new0 (GAsyncResult *, n);

  for (guint i = 0; i < n; i++)
    hb_remote_get_info_async (f->remote, NULL, store_result, &slots[i]);
  for (guint i = 0; i < n; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (HbRemoteInfo) info
          = hb_remote_get_info_finish (f->remote, await (&slots[i]), &error);

      g_assert_no_error (error);
      g_ptr_array_add (results, slots[i]);
    }
  g_free (slots);
}

static void
test_max_connections (Fixture *f, gconstpointer data)
{
  f->delay_ms = 150;
  hb_remote_set_max_connections (f->remote, 2);
  run_concurrent (f, 6);
  g_assert_cmpuint (f->n_requests, ==, 6);
  g_assert_cmpuint (f->max_in_flight, ==, 2);
  g_assert_cmpuint (g_hash_table_size (f->ports), ==, 2);

  /* The default is above libsoup's 2 per host. */
  hb_remote_set_max_connections (f->remote, 8);
  f->max_in_flight = 0;
  g_hash_table_remove_all (f->ports);
  run_concurrent (f, 6);
  g_assert_cmpuint (f->max_in_flight, ==, 6);
  g_assert_cmpuint (g_hash_table_size (f->ports), <=, 6);
}

static void
test_timeout (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  gint64 start = g_get_monotonic_time ();

  f->delay_ms = G_MAXUINT;
  hb_remote_set_timeout (f->remote, 1);
  g_assert_null (get_info (f->remote, &error));
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TIMEOUT);
  g_assert_true (hb_remote_error_is_transient (error));
  g_assert_cmpint (g_get_monotonic_time () - start, <, 10 * G_USEC_PER_SEC);
}

static void
cancel_soon (GCancellable *cancellable)
{
  g_cancellable_cancel (cancellable);
}

static void
test_cancellation (Fixture *f, gconstpointer data)
{
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GCancellable) cancelled = g_cancellable_new ();
  g_autoptr (GAsyncResult) res = NULL;
  g_autoptr (GAsyncResult) res2 = NULL;
  g_autoptr (GError) error = NULL;

  /* Cancelled while the server sits on the request. */
  f->delay_ms = G_MAXUINT;
  hb_remote_get_info_async (f->remote, cancellable, store_result, &res);
  g_timeout_add_once (100, (GSourceOnceFunc)cancel_soon, cancellable);
  g_assert_null (hb_remote_get_info_finish (f->remote, await (&res), &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&error);

  /* Cancelled before it is sent. */
  g_cancellable_cancel (cancelled);
  hb_remote_changes_async (f->remote, NULL, 0, NULL, FALSE, 0, cancelled, store_result, &res2);
  g_assert_null (hb_remote_changes_finish (f->remote, await (&res2), &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
}

static void
test_connection_refused (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocket) socket = NULL;
  g_autoptr (GInetAddress) loopback = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) any = g_inet_socket_address_new (loopback, 0);
  g_autoptr (GSocketAddress) bound = NULL;
  g_autoptr (HbRemote) remote = NULL;
  g_autoptr (HbRemoteInfo) info = NULL;
  g_autofree char *url = NULL;

  /* A port that was free a moment ago and has no listener. */
  socket = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &error);
  g_assert_no_error (error);
  g_socket_bind (socket, any, FALSE, &error);
  g_assert_no_error (error);
  bound = g_socket_get_local_address (socket, &error);
  g_assert_no_error (error);
  url = g_strdup_printf ("http://127.0.0.1:%u/clinic",
                         g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound)));
  g_socket_close (socket, NULL);
  remote = hb_remote_new (url, &error);
  g_assert_no_error (error);
  info = get_info (remote, &error);
  g_assert_null (info);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NETWORK);
  g_assert_true (hb_remote_error_is_transient (error));
}

static void
test_broken_answers (void)
{
  static const struct
  {
    const char *name;
    const char *reply;
    HbRemoteError code1;
    HbRemoteError code2;
  } cases[] = {
    { "closed-mid-body",
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
      "{\"db_name\":\"clinic\",\"upd",
      HB_REMOTE_ERROR_NETWORK, HB_REMOTE_ERROR_BAD_RESPONSE },
    { "closed-mid-chunk",
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
      "40\r\n{\"db_name\":\"clinic\"",
      HB_REMOTE_ERROR_NETWORK, HB_REMOTE_ERROR_BAD_RESPONSE },
    { "closed-before-answer", "", HB_REMOTE_ERROR_NETWORK, HB_REMOTE_ERROR_NETWORK },
    { "truncated-json-whole-http",
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n"
      "{\"db_name\":\"clinic\",\"upd",
      HB_REMOTE_ERROR_BAD_RESPONSE, HB_REMOTE_ERROR_BAD_RESPONSE },
    { "not-http", "SSH-2.0-OpenSSH_9.2\r\n\r\n", HB_REMOTE_ERROR_BAD_RESPONSE,
      HB_REMOTE_ERROR_NETWORK },
    { "html-200", "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n<html></html>",
      HB_REMOTE_ERROR_BAD_RESPONSE, HB_REMOTE_ERROR_BAD_RESPONSE },
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (RawServer) raw = raw_server_new (cases[i].reply);
      g_autoptr (HbRemote) remote = raw_server_remote (raw);
      g_autoptr (GError) error = NULL;
      g_autoptr (HbRemoteInfo) info = NULL;

      g_test_message ("%s", cases[i].name);
      info = get_info (remote, &error);
      g_assert_null (info);
      g_assert_nonnull (error);
      g_test_message ("  -> %s", error->message);
      g_assert_true (error->domain == HB_REMOTE_ERROR);
      g_assert_true (error->code == (gint)cases[i].code1 || error->code == (gint)cases[i].code2);
    }
}

/* ---- response size ----------------------------------------------------------------------- */

/* A database description of exactly len bytes. */
static char *
info_of_size (gsize len)
{
  GString *text = g_string_new ("{\"db_name\":\"clinic\",\"update_seq\":1,\"pad\":\"");

  g_assert_cmpuint (len, >=, text->len + 2);
  while (text->len < len - 2)
    g_string_append_c (text, 'x');
  g_string_append (text, "\"}");
  return g_string_free (text, FALSE);
}

static GBytes *
gzip (const char *text)
{
  g_autoptr (GZlibCompressor) compressor = g_zlib_compressor_new (G_ZLIB_COMPRESSOR_FORMAT_GZIP, 9);
  g_autoptr (GOutputStream) memory = g_memory_output_stream_new_resizable ();
  g_autoptr (GOutputStream) out = g_converter_output_stream_new (memory, G_CONVERTER (compressor));
  g_autoptr (GError) error = NULL;

  g_output_stream_write_all (out, text, strlen (text), NULL, NULL, &error);
  g_assert_no_error (error);
  g_output_stream_close (out, NULL, &error);
  g_assert_no_error (error);
  return g_memory_output_stream_steal_as_bytes (G_MEMORY_OUTPUT_STREAM (memory));
}

/* An HTTP answer carrying body: chunked (no length announced), or gzipped with the length of
 * the compressed bytes. */
static GBytes *
raw_answer (const char *body, gboolean compressed)
{
  GByteArray *reply = g_byte_array_new ();
  g_autofree char *head = NULL;

  if (compressed)
    {
      g_autoptr (GBytes) packed = gzip (body);

      head = g_strdup_printf ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              "Content-Encoding: gzip\r\nContent-Length: %" G_GSIZE_FORMAT
                              "\r\n\r\n",
                              g_bytes_get_size (packed));
      g_byte_array_append (reply, (const guint8 *)head, strlen (head));
      g_byte_array_append (reply, g_bytes_get_data (packed, NULL), g_bytes_get_size (packed));
      return g_byte_array_free_to_bytes (reply);
    }
  head = g_strdup ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n");
  g_byte_array_append (reply, (const guint8 *)head, strlen (head));
  for (gsize done = 0, len = strlen (body); done < len; done += 4096)
    {
      gsize n = MIN (4096, len - done);
      g_autofree char *size = g_strdup_printf ("%" G_GSIZE_MODIFIER "x\r\n", n);

      g_byte_array_append (reply, (const guint8 *)size, strlen (size));
      g_byte_array_append (reply, (const guint8 *)body + done, n);
      g_byte_array_append (reply, (const guint8 *)"\r\n", 2);
    }
  g_byte_array_append (reply, (const guint8 *)"0\r\n\r\n", 5);
  return g_byte_array_free_to_bytes (reply);
}

static void
assert_too_large (HbRemote *remote, guint64 max)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = get_info (remote, &error);
  g_autofree char *expected = g_strdup_printf ("larger than %" G_GUINT64_FORMAT " bytes", max);

  g_assert_null (info);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
  g_assert_nonnull (strstr (error->message, expected));
}

static void
assert_info_ok (HbRemote *remote)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = get_info (remote, &error);

  g_assert_no_error (error);
  g_assert_cmpstr (info->db_name, ==, "clinic");
}

static void
test_max_response_bytes (Fixture *f, gconstpointer data)
{
  g_autofree char *body = info_of_size (100000);
  guint64 max = 0;

  g_object_get (f->remote, "max-response-bytes", &max, NULL);
  g_assert_cmpuint (max, ==, 256 * 1024 * 1024);

  /* An announced length: the limit itself is fine, a byte more is not. */
  answer (f, body);
  hb_remote_set_max_response_bytes (f->remote, 100000);
  assert_info_ok (f->remote);
  hb_remote_set_max_response_bytes (f->remote, 99999);
  assert_too_large (f->remote, 99999);
  /* The connection cut short is not reused for the next request. */
  hb_remote_set_max_response_bytes (f->remote, 100000);
  assert_info_ok (f->remote);

  /* No length announced, or the length of compressed bytes: counted as they are decoded. */
  for (guint compressed = 0; compressed < 2; compressed++)
    {
      g_autofree char *big = info_of_size (1000000);
      g_autoptr (GBytes) reply = raw_answer (big, compressed);
      g_autoptr (RawServer) raw = raw_server_new_full (reply, FALSE);
      g_autoptr (HbRemote) remote = raw_server_remote (raw);

      g_test_message ("%s", compressed ? "gzip" : "chunked");
      if (compressed)
        g_assert_cmpuint (g_bytes_get_size (reply), <, 65536);
      hb_remote_set_max_response_bytes (remote, 1000000);
      assert_info_ok (remote);
      hb_remote_set_max_response_bytes (remote, 999999);
      assert_too_large (remote, 999999);
      hb_remote_set_max_response_bytes (remote, 65536);
      assert_too_large (remote, 65536);
    }
}

/* ---- plain http -------------------------------------------------------------------------- */

static void
test_plain_http_policy (void)
{
  static const char *const loopback[] = {
    "http://127.0.0.1:1/clinic", "http://127.1.2.3:1/clinic", "http://localhost:1/clinic",
    "http://LOCALHOST:1/clinic", "http://[::1]:1/clinic",
  };
  g_autofree char *reply = NULL;
  g_autoptr (GBytes) bytes = NULL;
  g_autoptr (RawServer) raw = NULL;
  g_autoptr (HbRemote) remote = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = NULL;
  g_autoptr (GResolver) resolver = g_resolver_get_default ();
  g_autolist (GInetAddress) addresses = NULL;
  g_autofree char *url = NULL;
  const char *host = g_get_host_name ();
  gint64 start = g_get_monotonic_time ();

  /* Refused before anything is sent: this address would hang or be unreachable. */
  remote = hb_remote_new ("http://192.0.2.1:5984/clinic", &error);
  g_assert_no_error (error);
  g_assert_false (hb_remote_get_allow_insecure_http (remote));
  info = get_info (remote, &error);
  g_assert_null (info);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS);
  g_assert_nonnull (strstr (error->message, "plain http refused"));
  g_assert_false (hb_remote_error_is_transient (error));
  g_assert_cmpint (g_get_monotonic_time () - start, <, G_USEC_PER_SEC);
  g_clear_error (&error);
  g_clear_object (&remote);

  /* Loopback is reached over plain http (and refused there by a closed port). */
  for (guint i = 0; i < G_N_ELEMENTS (loopback); i++)
    {
      g_autoptr (HbRemote) local = hb_remote_new (loopback[i], NULL);
      g_autoptr (GError) local_error = NULL;

      g_assert_null (get_info (local, &local_error));
      g_test_message ("%s: %s", loopback[i], local_error->message);
      g_assert_error (local_error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_NETWORK);
    }

  /* A name that is not loopback is refused even when it resolves to this machine: no
   * connection at all. Allowed, it is reached. */
  reply = g_strdup_printf ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           "Content-Length: 41\r\n\r\n%s",
                           "{\"db_name\":\"clinic\",\"update_seq\":\"1-g1A\"}");
  bytes = g_bytes_new (reply, strlen (reply));
  raw = raw_server_new_full (bytes, TRUE);
  url = g_strdup_printf ("http://%s:%u/clinic", host, raw->port);
  remote = hb_remote_new (url, &error);
  g_assert_no_error (error);
  info = get_info (remote, &error);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS);
  g_clear_error (&error);
  g_assert_cmpuint (raw_server_connections (raw), ==, 0);

  addresses = g_resolver_lookup_by_name (resolver, host, NULL, NULL);
  if (addresses == NULL || g_ascii_strcasecmp (host, "localhost") == 0)
    {
      g_test_message ("the host name %s does not resolve: the allowed case is not tried", host);
      return;
    }
  hb_remote_set_allow_insecure_http (remote, TRUE);
  info = get_info (remote, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (raw_server_connections (raw), ==, 1);
}

/* ---- TLS --------------------------------------------------------------------------------- */

static void
certtool (const char *dir, const char *const *args)
{
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();
  g_autoptr (GError) error = NULL;
  g_autofree char *err = NULL;
  int status;

  g_ptr_array_add (argv, (gpointer) "certtool");
  for (; *args != NULL; args++)
    g_ptr_array_add (argv, (gpointer)*args);
  g_ptr_array_add (argv, NULL);
  g_spawn_sync (dir, (char **)argv->pdata, NULL,
                G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDIN_FROM_DEV_NULL,
                NULL, NULL, NULL, &err, &status, &error);
  g_assert_no_error (error);
  if (!g_spawn_check_wait_status (status, &error))
    g_test_message ("certtool: %s", err);
  g_assert_no_error (error);
}

static void
write_file (const char *dir, const char *name, const char *text)
{
  g_autofree char *path = g_build_filename (dir, name, NULL);
  g_autoptr (GError) error = NULL;

  g_file_set_contents (path, text, -1, &error);
  g_assert_no_error (error);
}

static void
make_server_certificate (const char *dir, const char *name, const char *template)
{
  g_autofree char *tmpl = g_strconcat (name, ".tmpl", NULL);
  g_autofree char *pem = g_strconcat (name, ".pem", NULL);
  const char *args[] = { "--generate-certificate",
                         "--load-privkey",
                         "server.key",
                         "--load-ca-certificate",
                         "ca.pem",
                         "--load-ca-privkey",
                         "ca.key",
                         "--template",
                         tmpl,
                         "--no-text",
                         "--outfile",
                         pem,
                         NULL };

  write_file (dir, tmpl, template);
  certtool (dir, args);
}

#define SERVER_TEMPLATE "tls_www_server\nsigning_key\nencryption_key\n"

/* A test CA and server certificates made with certtool (gnutls-bin) in a fresh directory:
 * good.pem for 127.0.0.1 and localhost, other-name.pem for another host, expired.pem; every
 * one with the key server.key. */
static char *
make_certificates (void)
{
  char *dir = hb_test_mkdtemp ();
  const char *ca_key[]
      = { "--generate-privkey", "--key-type", "ecdsa",  "--pkcs8", "--password", "",
          "--no-text",          "--outfile",  "ca.key", NULL };
  const char *server_key[]
      = { "--generate-privkey", "--key-type", "ecdsa",      "--pkcs8", "--password", "",
          "--no-text",          "--outfile",  "server.key", NULL };
  const char *ca[] = { "--generate-self-signed",
                       "--load-privkey",
                       "ca.key",
                       "--template",
                       "ca.tmpl",
                       "--no-text",
                       "--outfile",
                       "ca.pem",
                       NULL };

  certtool (dir, ca_key);
  write_file (dir, "ca.tmpl",
              "cn = \"hbsync test CA\"\nca\ncert_signing_key\nexpiration_days = 2\n");
  certtool (dir, ca);
  certtool (dir, server_key);
  make_server_certificate (dir, "good",
                           "cn = \"localhost\"\ndns_name = \"localhost\"\n"
                           "ip_address = \"127.0.0.1\"\nexpiration_days = 2\n" SERVER_TEMPLATE);
  make_server_certificate (dir, "other-name",
                           "cn = \"couch.example.org\"\ndns_name = \"couch.example.org\"\n"
                           "expiration_days = 2\n" SERVER_TEMPLATE);
  make_server_certificate (dir, "expired",
                           "cn = \"localhost\"\ndns_name = \"localhost\"\n"
                           "ip_address = \"127.0.0.1\"\n"
                           "activation_date = \"2001-01-01 00:00:00\"\n"
                           "expiration_date = \"2002-01-01 00:00:00\"\n" SERVER_TEMPLATE);
  return dir;
}

/* The SHA-256 of a certificate file's DER bytes, in hex. */
static char *
fingerprint (const char *dir, const char *name)
{
  g_autofree char *path = g_build_filename (dir, name, NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (GTlsCertificate) certificate = g_tls_certificate_new_from_file (path, &error);
  g_autoptr (GByteArray) der = NULL;

  g_assert_no_error (error);
  g_object_get (certificate, "certificate", &der, NULL);
  return g_compute_checksum_for_data (G_CHECKSUM_SHA256, der->data, der->len);
}

typedef struct
{
  SoupServer *server;
  char *url; /* https://127.0.0.1:PORT/clinic */
  guint n_requests;
  GString *bodies; /* every request body received */
} TlsServer;

static void
tls_server_callback (SoupServer *server,
                     SoupServerMessage *msg,
                     const char *path,
                     GHashTable *query,
                     gpointer user_data)
{
  TlsServer *s = user_data;
  SoupMessageBody *body = soup_server_message_get_request_body (msg);

  s->n_requests++;
  g_string_append_len (s->bodies, body->data, body->length);
  if (g_strcmp0 (soup_server_message_get_method (msg), "POST") == 0)
    respond (msg, 201, "[]");
  else
    respond (msg, 200, "{\"db_name\":\"clinic\",\"update_seq\":1}");
}

static TlsServer *
tls_server_new (const char *dir, const char *name)
{
  TlsServer *s = g_new0 (TlsServer, 1);
  g_autofree char *cert_file = g_strconcat (dir, "/", name, ".pem", NULL);
  g_autofree char *key_file = g_build_filename (dir, "server.key", NULL);
  g_autoptr (GTlsCertificate) certificate = NULL;
  g_autoptr (GError) error = NULL;
  GSList *uris;

  certificate = g_tls_certificate_new_from_files (cert_file, key_file, &error);
  g_assert_no_error (error);
  s->bodies = g_string_new (NULL);
  s->server = soup_server_new ("tls-certificate", certificate, NULL);
  soup_server_add_handler (s->server, NULL, tls_server_callback, s, NULL);
  soup_server_listen_local (s->server, 0, SOUP_SERVER_LISTEN_IPV4_ONLY | SOUP_SERVER_LISTEN_HTTPS,
                            &error);
  g_assert_no_error (error);
  uris = soup_server_get_uris (s->server);
  s->url = g_strdup_printf ("https://127.0.0.1:%d/clinic", g_uri_get_port (uris->data));
  g_slist_free_full (uris, (GDestroyNotify)g_uri_unref);
  return s;
}

static void
tls_server_free (TlsServer *s)
{
  soup_server_disconnect (s->server);
  drain ();
  g_assert_finalize_object (s->server);
  g_string_free (s->bodies, TRUE);
  g_free (s->url);
  g_free (s);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (TlsServer, tls_server_free)

static HbRemote *
tls_remote (TlsServer *s, const char *ca_file)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemote) remote = hb_remote_new (s->url, &error);

  g_assert_no_error (error);
  if (ca_file != NULL)
    {
      g_assert_true (hb_remote_set_ca_file (remote, ca_file, &error));
      g_assert_no_error (error);
    }
  return g_steal_pointer (&remote);
}

/* The request fails with a TLS error naming `problem`, and not `not_problem`. */
static void
assert_tls_refused (HbRemote *remote, const char *problem, const char *not_problem)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = get_info (remote, &error);

  g_assert_null (info);
  g_test_message ("%s", error->message);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS);
  g_assert_false (hb_remote_error_is_transient (error));
  g_assert_nonnull (strstr (error->message, problem));
  if (not_problem != NULL)
    g_assert_null (strstr (error->message, not_problem));
}

static void
test_tls_verification (void)
{
  g_autofree char *dir = make_certificates ();
  g_autofree char *ca_file = g_build_filename (dir, "ca.pem", NULL);
  g_autoptr (TlsServer) good = tls_server_new (dir, "good");
  g_autoptr (TlsServer) other = tls_server_new (dir, "other-name");
  g_autoptr (TlsServer) expired = tls_server_new (dir, "expired");
  g_autoptr (HbRemote) remote = tls_remote (good, NULL);

  /* Verified by default, against the system's authorities, which do not know this one. */
  assert_tls_refused (remote, "unknown certificate authority", NULL);
  g_assert_cmpuint (good->n_requests, ==, 0);

  /* Trusting the test CA alone. */
  g_assert_true (hb_remote_set_ca_file (remote, ca_file, NULL));
  assert_info_ok (remote);
  g_assert_cmpuint (good->n_requests, ==, 1);

  /* Other certificates from the same CA: another host's, an expired one. */
  {
    g_autoptr (HbRemote) to_other = tls_remote (other, ca_file);
    g_autoptr (HbRemote) to_expired = tls_remote (expired, ca_file);

    assert_tls_refused (to_other, "name mismatch", "unknown certificate authority");
    assert_tls_refused (to_expired, "expired", "unknown certificate authority");
    g_assert_cmpuint (other->n_requests + expired->n_requests, ==, 0);
  }

  /* Unusable settings fail and leave the previous ones in force. */
  {
    g_autoptr (GError) error = NULL;
    g_autofree char *missing = g_build_filename (dir, "missing.pem", NULL);
    g_autofree char *not_pem = g_build_filename (dir, "ca.tmpl", NULL);

    g_assert_false (hb_remote_set_ca_file (remote, missing, &error));
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS);
    g_clear_error (&error);
    g_assert_false (hb_remote_set_ca_file (remote, not_pem, &error));
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS);
    g_clear_error (&error);
    g_assert_false (hb_remote_set_pinned_sha256 (remote, "12:34", &error));
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS);
    assert_info_ok (remote);
  }
  hb_test_rmdir (dir);
}

static void
bulk_docs_on (HbRemote *remote, const char *body, GError **error)
{
  g_autoptr (GAsyncResult) res = NULL;
  g_autoptr (GBytes) bytes = bytes_of (body);
  g_autoptr (GPtrArray) results = NULL;

  hb_remote_bulk_docs_async (remote, bytes, NULL, store_result, &res);
  results = hb_remote_bulk_docs_finish (remote, await (&res), error);
}

static void
test_tls_pinning (void)
{
  g_autofree char *dir = make_certificates ();
  g_autofree char *ca_file = g_build_filename (dir, "ca.pem", NULL);
  g_autofree char *good_pin = fingerprint (dir, "good.pem");
  g_autofree char *ca_pin = fingerprint (dir, "ca.pem");
  g_autoptr (TlsServer) good = tls_server_new (dir, "good");
  g_autoptr (HbRemote) remote = tls_remote (good, ca_file);
  g_autoptr (GString) with_colons = g_string_new (NULL);
  g_autoptr (GError) error = NULL;
  g_autofree char *upper = NULL;

  /* A connection is open and verified before the pin is set: it must not be reused. */
  assert_info_ok (remote);
  g_assert_true (hb_remote_set_pinned_sha256 (remote, ca_pin, &error));
  g_assert_no_error (error);
  /* The handshake fails: the request, and its body, never reach the server. */
  bulk_docs_on (remote, "{\"docs\":[{\"_id\":\"patient:1\",\"given_name\":\"Amina\"}]}", &error);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_TLS);
  g_test_message ("%s", error->message);
  g_assert_nonnull (strstr (error->message, "pin mismatch"));
  g_assert_null (strstr (error->message, "Amina"));
  g_clear_error (&error);
  g_assert_cmpuint (good->n_requests, ==, 1);
  g_assert_null (strstr (good->bodies->str, "Amina"));

  /* The right fingerprint, written with colons in upper case. */
  upper = g_ascii_strup (good_pin, -1);
  for (guint i = 0; upper[i] != '\0'; i += 2)
    g_string_append_printf (with_colons, "%s%.2s", i > 0 ? ":" : "", upper + i);
  g_assert_true (hb_remote_set_pinned_sha256 (remote, with_colons->str, &error));
  bulk_docs_on (remote, "{\"docs\":[{\"_id\":\"patient:1\",\"given_name\":\"Amina\"}]}", &error);
  g_assert_no_error (error);
  g_assert_cmpuint (good->n_requests, ==, 2);
  g_assert_nonnull (strstr (good->bodies->str, "Amina"));

  /* The pin is checked on top of verification, not instead of it. */
  g_assert_true (hb_remote_set_ca_file (remote, NULL, NULL));
  assert_tls_refused (remote, "unknown certificate authority", "pin mismatch");
  /* And with the system's authorities, a wrong pin is named too. */
  g_assert_true (hb_remote_set_pinned_sha256 (remote, ca_pin, NULL));
  assert_tls_refused (remote, "pin mismatch", NULL);
  /* No pin: back to verification alone. */
  g_assert_true (hb_remote_set_ca_file (remote, ca_file, NULL));
  g_assert_true (hb_remote_set_pinned_sha256 (remote, NULL, NULL));
  assert_info_ok (remote);
  g_assert_cmpuint (good->n_requests, ==, 3);
  hb_test_rmdir (dir);
}

/* ---- cookie sessions against the stand-in ------------------------------------------------ */

static void
test_cookie_server_lifetime (Fixture *f, gconstpointer data)
{
  g_autoptr (JsonNode) login = NULL;
  g_autoptr (JsonNode) expected = hb_test_json ("{\"name\":\"nurse\",\"password\":\"p\\\"w\"}");
  g_autoptr (GError) error = NULL;
  guint lifetime = 0, interval = 0;

  g_object_get (f->remote, "cookie-lifetime", &lifetime, "login-interval", &interval, NULL);
  g_assert_cmpuint (lifetime, ==, 600);
  g_assert_cmpuint (interval, ==, 5);
  f->session_max_age = 1;
  hb_remote_set_login_interval (f->remote, 1);
  hb_remote_set_cookie_auth (f->remote, "nurse", "p\"w");
  assert_info_ok (f->remote);
  g_assert_cmpuint (f->logins, ==, 1);
  g_assert_cmpstr (f->login_path, ==, "/_session");
  login = hb_test_json (f->login_body);
  g_assert_true (json_node_equal (login, expected));
  g_assert_cmpstr (f->cookie, ==, "AuthSession=s1");
  g_assert_null (f->authorization);

  /* The server gave the cookie one second, not ten minutes: renewed before it ends. */
  g_usleep (G_USEC_PER_SEC * 11 / 10);
  assert_info_ok (f->remote);
  g_assert_cmpuint (f->logins, ==, 2);
  g_assert_cmpstr (f->cookie, ==, "AuthSession=s2");

  /* A fresh cookie the server sends unasked (CouchDB does, once one has aged) is taken. */
  f->session_max_age = 0;
  f->set_cookie = "AuthSession=fresh; Path=/; HttpOnly";
  assert_info_ok (f->remote);
  f->set_cookie = NULL;
  assert_info_ok (f->remote);
  g_assert_cmpstr (f->cookie, ==, "AuthSession=fresh");
  g_assert_cmpuint (f->logins, ==, 2);

  /* Other credentials: the cookie goes with the old ones. */
  hb_remote_set_basic_auth (f->remote, "nurse", "pw");
  assert_info_ok (f->remote);
  g_assert_null (f->cookie);
  g_assert_true (g_str_has_prefix (f->authorization, "Basic "));

  /* The session lives beside the database, under whatever prefix the server is mounted. */
  {
    g_autofree char *url = server_url (f, "/couch/clinic");
    g_autoptr (HbRemote) mounted = hb_remote_new (url, &error);

    g_assert_no_error (error);
    hb_remote_set_cookie_auth (mounted, "nurse", "pw");
    assert_info_ok (mounted);
    g_assert_cmpstr (f->login_path, ==, "/couch/_session");
  }
}

static void
test_cookie_login_wait (Fixture *f, gconstpointer data)
{
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GAsyncResult) cancelled = NULL;
  g_autoptr (GError) error = NULL;
  GAsyncResult *slots[6] = { NULL };

  /* Requests sent together wait for one login; one whose caller gives up leaves at once. */
  f->delay_ms = 300;
  hb_remote_set_cookie_auth (f->remote, "nurse", "pw");
  hb_remote_get_info_async (f->remote, cancellable, store_result, &cancelled);
  for (guint i = 0; i < G_N_ELEMENTS (slots); i++)
    hb_remote_get_info_async (f->remote, NULL, store_result, &slots[i]);
  while (f->logins == 0)
    g_main_context_iteration (NULL, TRUE);
  g_cancellable_cancel (cancellable);
  g_assert_null (hb_remote_get_info_finish (f->remote, await (&cancelled), &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_cmpuint (f->logins, ==, 1);
  g_assert_cmpuint (f->n_requests, ==, 1);
  for (guint i = 0; i < G_N_ELEMENTS (slots); i++)
    {
      g_autoptr (GError) slot_error = NULL;
      g_autoptr (HbRemoteInfo) info
          = hb_remote_get_info_finish (f->remote, await (&slots[i]), &slot_error);

      g_assert_no_error (slot_error);
      g_assert_nonnull (info);
      g_object_unref (slots[i]);
    }
  g_assert_cmpuint (f->logins, ==, 1);
  g_assert_cmpuint (f->n_requests, ==, 1 + G_N_ELEMENTS (slots));
}

/* ---- authentication through the test proxy ----------------------------------------------- */

typedef struct
{
  HbTestServer *server;
  HbTestProxy *proxy;
  HbRemote *remote;
} ProxyFixture;

static void
proxy_setup (ProxyFixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *url = NULL;

  f->server = hb_test_server_start (NULL, &error);
  g_assert_no_error (error);
  f->proxy = hb_test_proxy_start (f->server->url, &error);
  g_assert_no_error (error);
  url = g_strdup_printf ("%s/clinic", f->proxy->url);
  f->remote = hb_remote_new (url, &error);
  g_assert_no_error (error);
}

static void
proxy_teardown (ProxyFixture *f, gconstpointer data)
{
  g_assert_finalize_object (f->remote);
  hb_test_proxy_stop (f->proxy);
  hb_test_server_stop (f->server);
}

/* How many requests of `route` the proxy saw, or answered with `status` when route is NULL. */
static gint64
proxy_count (ProxyFixture *f, const char *route, const char *status)
{
  g_autoptr (JsonNode) reply = hb_test_proxy_cmd (f->proxy, "{\"cmd\": \"stats\"}");
  JsonObject *stats = json_object_get_object_member (json_node_get_object (reply), "stats");

  return json_object_get_int_member_with_default (
      json_object_get_object_member (stats, route != NULL ? "by_route" : "by_status"),
      route != NULL ? route : status, 0);
}

static gint64
logins (ProxyFixture *f)
{
  return proxy_count (f, "POST /_session", NULL);
}

static void
create_database (HbRemote *remote)
{
  g_autoptr (GAsyncResult) res = NULL;
  g_autoptr (GError) error = NULL;

  hb_remote_create_database_async (remote, NULL, store_result, &res);
  g_assert_true (hb_remote_create_database_finish (remote, await (&res), &error));
  g_assert_no_error (error);
}

static void
assert_unauthorized (HbRemote *remote)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (HbRemoteInfo) info = get_info (remote, &error);

  g_assert_null (info);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_UNAUTHORIZED);
}

static void
test_proxy_cookie_session (ProxyFixture *f, gconstpointer data)
{
  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"basic_auth\": \"nurse:s3cret\"}}");
  hb_remote_set_cookie_auth (f->remote, "nurse", "s3cret");
  hb_remote_set_login_interval (f->remote, 1);
  create_database (f->remote);
  for (guint i = 0; i < 20; i++)
    assert_info_ok (f->remote);
  /* One login for them all, and never a refusal. */
  g_assert_cmpint (logins (f), ==, 1);
  g_assert_cmpint (proxy_count (f, NULL, "401"), ==, 0);

  /* The server forgets the session: one 401, one login, the request sent again, and then
   * the new cookie serves. */
  g_usleep (G_USEC_PER_SEC * 11 / 10);
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  PROXY_DO (f->proxy, "{\"cmd\": \"expire-sessions\"}");
  for (guint i = 0; i < 5; i++)
    assert_info_ok (f->remote);
  g_assert_cmpint (logins (f), ==, 1);
  g_assert_cmpint (proxy_count (f, NULL, "401"), ==, 1);
  g_assert_cmpint (proxy_count (f, "GET /clinic", NULL), ==, 6);
}

static void
test_proxy_cookie_refresh (ProxyFixture *f, gconstpointer data)
{
  gint64 start;

  /* Cookies live 2.5 s on the server, 2 s by the remote's count: renewed at 1.8 s. */
  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"basic_auth\": \"nurse:s3cret\", "
                      "\"cookie_ttl_ms\": 2500}}");
  hb_remote_set_cookie_auth (f->remote, "nurse", "s3cret");
  hb_remote_set_cookie_lifetime (f->remote, 2);
  hb_remote_set_login_interval (f->remote, 1);
  create_database (f->remote);
  start = g_get_monotonic_time ();
  while (g_get_monotonic_time () - start < 4 * G_USEC_PER_SEC)
    {
      assert_info_ok (f->remote);
      g_usleep (G_USEC_PER_SEC / 10);
    }
  /* Renewed in time, every time: no request was ever refused. */
  g_assert_cmpint (logins (f), >=, 2);
  g_assert_cmpint (logins (f), <=, 3);
  g_assert_cmpint (proxy_count (f, NULL, "401"), ==, 0);
}

static void
test_proxy_cookie_wrong_password (ProxyFixture *f, gconstpointer data)
{
  gint64 start;

  PROXY_DO (f->proxy, "{\"cmd\": \"config\", \"rules\": {\"basic_auth\": \"nurse:s3cret\"}}");
  hb_remote_set_cookie_auth (f->remote, "nurse", "wrong");
  for (guint i = 0; i < 20; i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (HbRemoteInfo) info = get_info (f->remote, &error);

      g_assert_null (info);
      g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_UNAUTHORIZED);
      g_assert_true (g_str_has_prefix (error->message, "login: HTTP 401"));
      g_assert_null (strstr (error->message, "wrong"));
    }
  /* One login for 20 requests in the same five seconds: no storm. */
  g_assert_cmpint (logins (f), ==, 1);
  g_assert_cmpint (proxy_count (f, "GET /clinic", NULL), ==, 0);

  /* With a one-second interval, one login a second at most, however many requests. */
  hb_remote_set_login_interval (f->remote, 1);
  g_usleep (G_USEC_PER_SEC * 11 / 10);
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  start = g_get_monotonic_time ();
  while (g_get_monotonic_time () - start < G_USEC_PER_SEC * 25 / 10)
    {
      assert_unauthorized (f->remote);
      g_usleep (G_USEC_PER_SEC / 50);
    }
  g_assert_cmpint (logins (f), >=, 2);
  g_assert_cmpint (logins (f), <=, 3);

  /* New credentials are not held back by the failures of the old ones. */
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  hb_remote_set_cookie_auth (f->remote, "nurse", "s3cret");
  hb_remote_set_login_interval (f->remote, 5);
  create_database (f->remote);
  g_assert_cmpint (logins (f), ==, 1);

  /* A cookie refused right after the login that gave it: no second login in the interval,
   * the refusal itself is the answer. */
  PROXY_DO (f->proxy, "{\"cmd\": \"expire-sessions\"}");
  assert_unauthorized (f->remote);
  assert_unauthorized (f->remote);
  g_assert_cmpint (logins (f), ==, 1);
}

typedef struct
{
  guint emitted;
  const char *next_token; /* set from the handler when not NULL */
} TokenWatch;

static void
on_token_expired (HbRemote *remote, TokenWatch *watch)
{
  watch->emitted++;
  if (watch->next_token != NULL)
    hb_remote_set_bearer_token (remote, watch->next_token);
}

static void
test_proxy_bearer (ProxyFixture *f, gconstpointer data)
{
  TokenWatch watch = { 0 };

  PROXY_DO (f->proxy, "{\"cmd\": \"set-token\", \"token\": \"tok-1\", \"user\": \"nurse\"}");
  g_signal_connect (f->remote, "token-expired", G_CALLBACK (on_token_expired), &watch);

  /* No token: refused, and nothing to say expired. */
  assert_unauthorized (f->remote);
  g_assert_cmpuint (watch.emitted, ==, 0);

  hb_remote_set_bearer_token (f->remote, "tok-1");
  create_database (f->remote);
  assert_info_ok (f->remote);

  /* The server moves on to another token: told once, however many requests fail. */
  PROXY_DO (f->proxy, "{\"cmd\": \"set-token\", \"token\": \"tok-2\", \"user\": \"nurse\"}");
  assert_unauthorized (f->remote);
  g_assert_cmpuint (watch.emitted, ==, 1);
  assert_unauthorized (f->remote);
  g_assert_cmpuint (watch.emitted, ==, 1);

  /* The new token set, requests go through again. */
  hb_remote_set_bearer_token (f->remote, "tok-2");
  assert_info_ok (f->remote);

  /* A handler with the new token at hand: the refused request is sent again with it. */
  PROXY_DO (f->proxy, "{\"cmd\": \"clear-stats\"}");
  PROXY_DO (f->proxy, "{\"cmd\": \"set-token\", \"token\": \"tok-3\", \"user\": \"nurse\"}");
  watch.next_token = "tok-3";
  assert_info_ok (f->remote);
  g_assert_cmpuint (watch.emitted, ==, 2);
  g_assert_cmpint (proxy_count (f, NULL, "401"), ==, 1);
  g_assert_cmpint (proxy_count (f, "GET /clinic", NULL), ==, 2);
  g_signal_handlers_disconnect_by_data (f->remote, &watch);
}

/* ---- parsers ----------------------------------------------------------------------------- */

static gboolean
json_ok (const char *text, gssize len)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) node
      = hb_remote_parse_json ((const guint8 *)text, len < 0 ? strlen (text) : (gsize)len, &error);

  g_assert_true ((node == NULL) == (error != NULL));
  if (error != NULL)
    g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
  return node != NULL;
}

static void
test_parse_strict_json (void)
{
  static const char *const good[] = {
    "{}",
    "[]",
    " \t\r\n{\"a\" : [1, -0, 0.5, -1.5e-3, 2E+10, true, false, null, \"\"]} \n",
    "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"",
    "9223372036854775807",
    "-9223372036854775808",
    "1.7976931348623157e308",
    "\"caf\xc3\xa9\"",
  };
  static const char *const bad[] = {
    "",
    " ",
    "/* \" */ [1]",
    "[1] // x",
    "['a']",
    "[0x10]",
    "[01]",
    "[1,]",
    "{\"a\":1,}",
    "[1] [2]",
    "{a:1}",
    "[NaN]",
    "[Infinity]",
    "[-]",
    "[1.]",
    "[.5]",
    "[1e]",
    "9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999",
    "1e400",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\"",
    "\"\\ud800\\u0041\"",
    "\"\\x41\"",
    "\"tab\there\"",
    "\"unterminated",
    "\"caf\xc3\"",
    "\xef\xbb\xbf{}",
    "[tru]",
    "{\"a\" 1}",
    "{\"a\":}",
    "[}",
    "{]",
  };
  g_autoptr (GString) deep = g_string_new (NULL);

  for (guint i = 0; i < G_N_ELEMENTS (good); i++)
    {
      g_test_message ("good %u", i);
      g_assert_true (json_ok (good[i], -1));
    }
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_test_message ("bad %u", i);
      g_assert_false (json_ok (bad[i], -1));
    }
  /* A NUL byte in the text. */
  g_assert_false (json_ok ("[\"a\0b\"]", 7));

  /* Nesting: up to the limit and no further, whatever the mix of brackets. */
  for (guint i = 0; i < HB_REMOTE_MAX_JSON_DEPTH; i++)
    g_string_append (deep, i % 2 ? "{\"k\":" : "[");
  g_string_append (deep, "0");
  for (guint i = HB_REMOTE_MAX_JSON_DEPTH; i-- > 0;)
    g_string_append (deep, i % 2 ? "}" : "]");
  g_assert_true (json_ok (deep->str, -1));
  g_string_prepend (deep, "[");
  g_string_append (deep, "]");
  g_assert_false (json_ok (deep->str, -1));
  /* Brackets inside strings do not count. */
  g_string_truncate (deep, 0);
  g_string_append (deep, "[\"");
  for (guint i = 0; i < 10000; i++)
    g_string_append (deep, "[{");
  g_string_append (deep, "\"]");
  g_assert_true (json_ok (deep->str, -1));
  /* And unbalanced megabytes of them fail fast, without recursion. */
  g_string_truncate (deep, 0);
  for (guint i = 0; i < 1000000; i++)
    g_string_append_c (deep, '[');
  g_assert_false (json_ok (deep->str, -1));
}

#define PARSE_FAILS(call)                                                                          \
  G_STMT_START                                                                                     \
  {                                                                                                \
    g_autoptr (GError) parse_error = NULL;                                                         \
    gpointer parsed = (call);                                                                      \
    g_assert_null (parsed);                                                                        \
    g_assert_error (parse_error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);                   \
  }                                                                                                \
  G_STMT_END

#define T(s) (const guint8 *)(s), strlen (s)

/* _bulk_get answers every reader of them refuses (the tree parser and the walker alike). */
static const char *const bad_bulk_get[] = {
  "[]",
  "{}",
  "{\"results\":[{}]}",
  "{\"results\":[{\"id\":\"a\"}]}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[{}]}]}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[{\"ok\":{},\"error\":{}}]}]}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[{\"ok\":{\"_id\":\"a\"}}]}]}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[{\"ok\":[]}]}]}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[{\"ok\":null}]}]}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[{\"error\":\"not_found\"}]}]}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[{\"error\":{\"rev\":\"1-a\"}}]}]}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[{\"ok\":{\"_id\":\"a\",\"_rev\":\"1-a\",\"_rev\":2}}]}]"
  "}",
  "{\"results\":[{\"id\":\"a\",\"docs\":[]}]} x",
};

static void
test_parse_shapes (void)
{
  static const char *const bad_info[] = {
    "[]",
    "{}",
    "{\"db_name\":\"a\"}",
    "{\"db_name\":\"a\",\"update_seq\":null}",
    "{\"db_name\":1,\"update_seq\":1}",
    "{\"db_name\":\"a\",\"update_seq\":1,\"doc_count\":\"3\"}",
    "{\"db_name\":\"a\",\"update_seq\":1,\"doc_count\":-1}",
    "{\"db_name\":\"a\",\"update_seq\":1,\"doc_count\":1.5}",
    "{\"db_name\":\"a\",\"update_seq\":1,\"instance_start_time\":0}",
  };
  static const char *const bad_changes[] = {
    "[]",
    "{\"last_seq\":1}",
    "{\"results\":{},\"last_seq\":1}",
    "{\"results\":[]}",
    "{\"results\":[1],\"last_seq\":1}",
    "{\"results\":[{\"id\":\"a\",\"changes\":[]}],\"last_seq\":1}",
    "{\"results\":[{\"seq\":1,\"changes\":[]}],\"last_seq\":1}",
    "{\"results\":[{\"seq\":1,\"id\":\"a\"}],\"last_seq\":1}",
    "{\"results\":[{\"seq\":1,\"id\":\"a\",\"changes\":[\"1-a\"]}],\"last_seq\":1}",
    "{\"results\":[{\"seq\":1,\"id\":\"a\",\"changes\":[{}]}],\"last_seq\":1}",
    "{\"results\":[{\"seq\":1,\"id\":\"a\",\"changes\":[],\"deleted\":1}],\"last_seq\":1}",
    /* include_docs: a row's document is an object, or null. */
    "{\"results\":[{\"seq\":1,\"id\":\"a\",\"changes\":[],\"doc\":1}],\"last_seq\":1}",
    "{\"results\":[{\"seq\":1,\"id\":\"a\",\"changes\":[],\"doc\":[{}]}],\"last_seq\":1}",
    "{\"results\":[],\"last_seq\":1,\"pending\":\"2\"}",
  };
  static const char *const bad_revs_diff[] = {
    "[]",
    "{\"a\":[]}",
    "{\"a\":{}}",
    "{\"a\":{\"missing\":\"1-a\"}}",
    "{\"a\":{\"missing\":[1]}}",
    "{\"a\":{\"missing\":[],\"possible_ancestors\":[null]}}",
  };
  static const char *const bad_bulk_docs[] = {
    "{}", "[1]", "[[]]", "[{\"id\":1}]", "[{\"error\":{}}]",
  };
  static const char *const bad_open_revs[] = {
    "{}",
    "[{}]",
    "[{\"missing\":1}]",
    "[{\"ok\":{\"_rev\":\"1-a\"}}]",
    "[{\"ok\":{\"_id\":\"a\",\"_rev\":\"1-a\"},\"missing\":\"1-a\"}]",
  };

  for (guint i = 0; i < G_N_ELEMENTS (bad_info); i++)
    PARSE_FAILS (hb_remote_parse_info (T (bad_info[i]), &parse_error));
  for (guint i = 0; i < G_N_ELEMENTS (bad_changes); i++)
    PARSE_FAILS (hb_remote_parse_changes (T (bad_changes[i]), &parse_error));
  for (guint i = 0; i < G_N_ELEMENTS (bad_revs_diff); i++)
    PARSE_FAILS (hb_remote_parse_revs_diff (T (bad_revs_diff[i]), &parse_error));
  for (guint i = 0; i < G_N_ELEMENTS (bad_bulk_docs); i++)
    PARSE_FAILS (hb_remote_parse_bulk_docs (T (bad_bulk_docs[i]), &parse_error));
  for (guint i = 0; i < G_N_ELEMENTS (bad_bulk_get); i++)
    PARSE_FAILS (hb_remote_parse_bulk_get (T (bad_bulk_get[i]), &parse_error));
  for (guint i = 0; i < G_N_ELEMENTS (bad_open_revs); i++)
    PARSE_FAILS (hb_remote_parse_open_revs ("a", T (bad_open_revs[i]), &parse_error));
  PARSE_FAILS (hb_remote_parse_document (T ("[]"), &parse_error));
  PARSE_FAILS (hb_remote_parse_put_result (T ("{\"ok\":true}"), &parse_error));
  PARSE_FAILS (hb_remote_parse_put_result (T ("{\"rev\":2}"), &parse_error));

  /* Error messages say what was wrong, never what was there. */
  {
    g_autoptr (GError) error = NULL;

    g_assert_null (hb_remote_parse_info (T ("{\"db_name\":\"a\",\"update_seq\":1,"
                                            "\"instance_start_time\":[\"Amina\"]}"),
                                         &error));
    g_assert_null (strstr (error->message, "Amina"));
  }

  /* Nulls are absences where a member is optional; extra members are ignored. */
  {
    g_autoptr (GError) error = NULL;
    g_autoptr (HbRemoteChanges) changes = hb_remote_parse_changes (
        T ("{\"results\":[{\"seq\":[1,\"x\"],\"id\":\"a\",\"changes\":[],\"deleted\":null,"
           "\"doc\":{}}],\"last_seq\":[1,\"x\"],\"pending\":null,\"extra\":1}"),
        &error);
    HbRemoteChange *row;

    g_assert_no_error (error);
    row = g_ptr_array_index (changes->results, 0);
    g_assert_true (JSON_NODE_HOLDS_ARRAY (row->seq));
    g_assert_cmpuint (g_strv_length (row->revs), ==, 0);
    g_assert_false (row->deleted);
    g_assert_cmpint (changes->pending, ==, -1);
    /* The document, as its bytes were sent. */
    g_assert_nonnull (row->doc);
    g_assert_cmpmem (g_bytes_get_data (row->doc, NULL), g_bytes_get_size (row->doc), "{}", 2);
  }
  {
    g_autoptr (GError) error = NULL;
    g_autoptr (HbRemoteChanges) changes = hb_remote_parse_changes (
        T ("{\"results\":[{\"seq\":1,\"id\":\"a\",\"changes\":[{\"rev\":\"1-a\"}],\"doc\":null},"
           "{\"seq\":2,\"id\":\"b\",\"changes\":[{\"rev\":\"1-b\"}],"
           "\"doc\":{ \"_id\" : \"b\", \"n\" : 1.50 }}],\"last_seq\":2}"),
        &error);

    g_assert_no_error (error);
    g_assert_null (((HbRemoteChange *)g_ptr_array_index (changes->results, 0))->doc);
    {
      GBytes *doc = ((HbRemoteChange *)g_ptr_array_index (changes->results, 1))->doc;
      const char *sent = "{ \"_id\" : \"b\", \"n\" : 1.50 }";

      g_assert_cmpmem (g_bytes_get_data (doc, NULL), g_bytes_get_size (doc), sent, strlen (sent));
    }
  }
  {
    g_autoptr (GError) error = NULL;
    g_autoptr (GPtrArray) results
        = hb_remote_parse_bulk_get (T ("{\"results\":[{\"id\":\"a\",\"docs\":[{\"error\":"
                                       "{\"error\":\"not_found\"}}]}]}"),
                                    &error);
    HbRemoteRevision *rev;

    g_assert_no_error (error);
    rev = g_ptr_array_index (((HbRemoteBulkGetResult *)g_ptr_array_index (results, 0))->revisions,
                             0);
    g_assert_cmpstr (rev->id, ==, "a");
    g_assert_null (rev->rev);
    g_assert_cmpstr (rev->error, ==, "not_found");
  }
}

/* The pull reads `_bulk_get` and `_changes` by walking the checked text: it must read what
 * JSON-GLib's tree reads (escaped and repeated names included) and hand each document on as
 * the server's own bytes. */
static void
test_parse_walked (void)
{
  const char *answer
      = "{\"results\": [ {\"id\":\"a\",\"docs\":[ {\"ok\": {\"_id\":\"a\", \"_rev\":\"1-x\","
        "\"_rev\":\"2-b\",\"text\":\"\\u00e9\\ud83d\\ude00 \\\"q\\\" \\n\",\"n\":[1.5e3,{}]} },"
        "{\"error\":{\"rev\":\"1-c\",\"error\":\"not_found\",\"reason\":\"missing\"}}]},"
        "{\"i\\u0064\":\"b\",\"docs\":[{\"ok\":{\"_i\\u0064\":\"b\\/"
        "\\u0000x\",\"_rev\":\"1-d\"}}]},"
        "{\"id\":\"c\",\"docs\":[{\"ok\":{\"_id\":\"c\\u00e9\",\"_rev\":\"1-e\"}}]} ], \"x\":1}";
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) raw = NULL;
  HbRemoteRawRevision *r;

  for (guint i = 0; i < G_N_ELEMENTS (bad_bulk_get); i++)
    {
      g_autoptr (GError) tree_error = NULL;
      g_autoptr (GError) raw_error = NULL;
      g_autoptr (GPtrArray) tree = hb_remote_parse_bulk_get (T (bad_bulk_get[i]), &tree_error);

      raw = hb_remote_parse_bulk_get_raw (T (bad_bulk_get[i]), &raw_error);
      g_assert_null (tree);
      g_assert_null (raw);
      g_assert_error (raw_error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
      g_assert_cmpstr (raw_error->message, ==, tree_error->message);
    }

  /* A \u0000 is refused as a whole answer; without it, everything reads. */
  raw = hb_remote_parse_bulk_get_raw (T (answer), &error);
  g_assert_null (raw);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_BAD_RESPONSE);
  g_clear_error (&error);
  {
    g_autofree char *fixed = g_strdup (answer);
    char *nul = strstr (fixed, "\\u0000");
    g_autoptr (GPtrArray) tree = NULL;
    g_autoptr (JsonParser) parser = json_parser_new ();
    guint n = 0;

    memcpy (nul, "\\u0041", 6);
    raw = hb_remote_parse_bulk_get_raw (T (fixed), &error);
    g_assert_no_error (error);
    tree = hb_remote_parse_bulk_get (T (fixed), &error);
    g_assert_no_error (error);
    g_assert_cmpuint (raw->len, ==, 4);
    r = g_ptr_array_index (raw, 0);
    g_assert_cmpstr (r->id, ==, "a");
    g_assert_cmpstr (r->rev, ==, "2-b"); /* the last one, as JSON-GLib reads it */
    g_assert_nonnull (strstr (fixed, g_bytes_get_data (r->text, NULL)));
    g_assert_cmpuint (g_bytes_get_size (r->text), ==, strlen (g_bytes_get_data (r->text, NULL)));
    r = g_ptr_array_index (raw, 1);
    g_assert_cmpstr (r->id, ==, "a");
    g_assert_cmpstr (r->rev, ==, "1-c");
    g_assert_cmpstr (r->error, ==, "not_found");
    g_assert_cmpstr (r->reason, ==, "missing");
    g_assert_null (r->text);
    r = g_ptr_array_index (raw, 2);
    g_assert_cmpstr (r->id, ==, "b/Ax");
    r = g_ptr_array_index (raw, 3);
    g_assert_cmpstr (r->id, ==, "c\xc3\xa9");
    for (guint i = 0; i < tree->len; i++)
      {
        HbRemoteBulkGetResult *result = g_ptr_array_index (tree, i);

        for (guint j = 0; j < result->revisions->len; j++, n++)
          {
            HbRemoteRevision *rev = g_ptr_array_index (result->revisions, j);

            r = g_ptr_array_index (raw, n);
            g_assert_cmpstr (r->id, ==, rev->id);
            g_assert_cmpstr (r->rev, ==, rev->rev);
            if (r->text != NULL)
              {
                g_assert_true (json_parser_load_from_data (parser, g_bytes_get_data (r->text, NULL),
                                                           -1, NULL));
                g_assert_true (json_node_equal (json_parser_get_root (parser), rev->doc));
              }
          }
      }
    g_assert_cmpuint (n, ==, raw->len);
  }

  /* _changes: sequences of every kind, escapes, repeated members. */
  {
    const char *changes_text
        = "{\"results\":[{\"seq\":12,\"id\":\"a\",\"changes\":[{\"rev\":\"1-a\"},{\"rev\":\"2-b\"}]"
          ","
          "\"deleted\":true},{\"seq\":\"13-g\\u00e9\",\"i\\u0064\":\"b\",\"changes\":[],"
          "\"deleted\":false,\"deleted\":null},{\"seq\":[14,\"x\"],\"id\":\"c\",\"changes\":[]},"
          "{\"seq\":-0,\"id\":\"d\",\"id\":\"e\",\"changes\":[]},{\"seq\":1.5,\"id\":\"f\","
          "\"changes\":[]}],\"last_seq\":\"15-\\\"q\",\"pending\":0}";
    g_autoptr (HbRemoteChanges) changes = hb_remote_parse_changes (T (changes_text), &error);
    g_autoptr (HbRemoteChanges) tree = NULL;

    g_assert_no_error (error);
    tree = hb_remote_parse_changes_tree (T (changes_text), &error);
    g_assert_no_error (error);
    g_assert_true (json_node_equal (changes->last_seq, tree->last_seq));
    g_assert_cmpstr (json_node_get_string (changes->last_seq), ==, "15-\"q");
    g_assert_cmpint (changes->pending, ==, 0);
    g_assert_cmpuint (changes->results->len, ==, tree->results->len);
    for (guint i = 0; i < changes->results->len; i++)
      {
        HbRemoteChange *row = g_ptr_array_index (changes->results, i);
        HbRemoteChange *tree_row = g_ptr_array_index (tree->results, i);

        g_assert_cmpstr (row->id, ==, tree_row->id);
        g_assert_true (json_node_equal (row->seq, tree_row->seq));
        g_assert_true (
            g_strv_equal ((const char *const *)row->revs, (const char *const *)tree_row->revs));
        g_assert_true (row->deleted == tree_row->deleted);
      }
    g_assert_cmpint (json_node_get_int (((HbRemoteChange *)changes->results->pdata[0])->seq), ==,
                     12);
    g_assert_true (((HbRemoteChange *)changes->results->pdata[0])->deleted);
    g_assert_cmpstr (((HbRemoteChange *)changes->results->pdata[1])->id, ==, "b");
    g_assert_cmpstr (((HbRemoteChange *)changes->results->pdata[3])->id, ==, "e");
  }
}

static void
test_parse_error_body (void)
{
  g_autoptr (GString) long_reason = g_string_new ("{\"error\":\"x\",\"reason\":\"");
  g_autofree char *couch_error = NULL;
  g_autofree char *reason = NULL;
  g_autoptr (GError) error = NULL;

  hb_remote_parse_error_body (T ("{\"error\":\"conflict\",\"reason\":\"line\\nbreak\\u0007\"}"),
                              &couch_error, &reason);
  g_assert_cmpstr (couch_error, ==, "conflict");
  g_assert_cmpstr (reason, ==, "line break ");
  g_clear_pointer (&couch_error, g_free);
  g_clear_pointer (&reason, g_free);

  for (guint i = 0; i < 300; i++)
    g_string_append (long_reason, "\xc3\xa9");
  g_string_append (long_reason, "\"}");
  hb_remote_parse_error_body (T (long_reason->str), &couch_error, &reason);
  g_assert_cmpuint (strlen (reason), <=, HB_REMOTE_MAX_QUOTED);
  g_assert_cmpuint (strlen (reason), >=, HB_REMOTE_MAX_QUOTED - 1);
  g_assert_true (g_utf8_validate (reason, -1, NULL));
  g_clear_pointer (&couch_error, g_free);
  g_clear_pointer (&reason, g_free);

  {
    static const char *const ignored[] = {
      "", "<html>oops</html>", "[]", "{\"error\":1,\"reason\":{}}", "{\"error\":\"\"}", "\"x\"",
    };
    for (guint i = 0; i < G_N_ELEMENTS (ignored); i++)
      {
        hb_remote_parse_error_body (T (ignored[i]), &couch_error, &reason);
        g_assert_null (couch_error);
        g_assert_null (reason);
      }
  }

  error = hb_remote_status_error (409, "_bulk_docs", T ("{\"error\":\"conflict\"}"));
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_CONFLICT);
  g_assert_cmpstr (error->message, ==, "_bulk_docs: HTTP 409 Conflict: conflict");
  g_clear_error (&error);
  error = hb_remote_status_error (599, "x", NULL, 0);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_SERVER);
  g_clear_error (&error);
  error = hb_remote_status_error (499, "x", NULL, 0);
  g_assert_error (error, HB_REMOTE_ERROR, HB_REMOTE_ERROR_FAILED);
}

static void
test_boxed_types (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GHashTable) diff
      = hb_remote_parse_revs_diff (T ("{\"a\":{\"missing\":[\"1-a\"]}}"), &error);
  g_autoptr (HbRemoteRevsDiff) copy = NULL;
  g_autoptr (GPtrArray) docs
      = hb_remote_parse_bulk_docs (T ("[{\"id\":\"a\",\"error\":\"forbidden\"}]"), &error);
  g_autoptr (HbRemoteDocResult) doc_copy = NULL;
  GValue value = G_VALUE_INIT;

  g_assert_no_error (error);
  copy = g_boxed_copy (HB_TYPE_REMOTE_REVS_DIFF, g_hash_table_lookup (diff, "a"));
  g_assert_cmpstrv (copy->missing, ((const char *const[]){ "1-a", NULL }));
  doc_copy = hb_remote_doc_result_copy (g_ptr_array_index (docs, 0));
  g_assert_cmpstr (doc_copy->error, ==, "forbidden");
  g_value_init (&value, HB_TYPE_REMOTE_DOC_RESULT);
  g_value_set_boxed (&value, doc_copy);
  g_value_unset (&value);
  g_assert_true (G_TYPE_IS_BOXED (HB_TYPE_REMOTE_INFO));
  g_assert_true (G_TYPE_IS_BOXED (HB_TYPE_REMOTE_CHANGE));
  g_assert_true (G_TYPE_IS_BOXED (HB_TYPE_REMOTE_CHANGES));
  g_assert_true (G_TYPE_IS_BOXED (HB_TYPE_REMOTE_REVISION));
  g_assert_true (G_TYPE_IS_BOXED (HB_TYPE_REMOTE_BULK_GET_RESULT));
  g_assert_true (G_TYPE_IS_ENUM (HB_TYPE_REMOTE_ERROR));
}

int
main (int argc, char *argv[])
{
  /* Loopback only, whatever proxy the environment names. */
  g_unsetenv ("http_proxy");
  g_unsetenv ("https_proxy");
  g_unsetenv ("HTTP_PROXY");
  g_unsetenv ("HTTPS_PROXY");
  g_unsetenv ("all_proxy");
  g_unsetenv ("ALL_PROXY");
  g_test_init (&argc, &argv, NULL);

#define ADD(path, func) g_test_add (path, Fixture, NULL, fixture_setup, func, fixture_teardown)
#define PROXY_ADD(path, func)                                                                      \
  g_test_add (path, ProxyFixture, NULL, proxy_setup, func, proxy_teardown)
  g_test_add_func ("/remote/url/normalized", test_url_normalized);
  g_test_add_func ("/remote/properties", test_properties);
  ADD ("/remote/url/basic-auth", test_basic_auth);
  ADD ("/remote/status-mapping", test_status_mapping);
  g_test_add_func ("/remote/status-mapping/other-domains", test_transient_other_domains);
  ADD ("/remote/couch/info-and-create", test_info_and_create);
  ADD ("/remote/couch/local", test_local_documents);
  ADD ("/remote/couch/changes", test_changes);
  ADD ("/remote/couch/changes-doc-ids", test_changes_doc_ids);
  ADD ("/remote/couch/revs-diff", test_revs_diff);
  ADD ("/remote/couch/bulk-docs", test_bulk_docs);
  ADD ("/remote/couch/bulk-get", test_bulk_get);
  ADD ("/remote/couch/open-revs-fallback", test_open_revs_fallback);
  g_test_add_func ("/remote/couch/id-escaping", test_id_escaping);
  ADD ("/remote/connection/reuse", test_connection_reuse);
  ADD ("/remote/connection/bulk-docs", test_bulk_docs_connections);
  ADD ("/remote/connection/max-connections", test_max_connections);
  ADD ("/remote/connection/timeout", test_timeout);
  ADD ("/remote/connection/cancellation", test_cancellation);
  g_test_add_func ("/remote/connection/refused", test_connection_refused);
  g_test_add_func ("/remote/connection/broken-answers", test_broken_answers);
  ADD ("/remote/connection/max-response-bytes", test_max_response_bytes);
  g_test_add_func ("/remote/tls/plain-http", test_plain_http_policy);
  g_test_add_func ("/remote/tls/verification", test_tls_verification);
  g_test_add_func ("/remote/tls/pinning", test_tls_pinning);
  ADD ("/remote/auth/cookie-server-lifetime", test_cookie_server_lifetime);
  ADD ("/remote/auth/cookie-login-wait", test_cookie_login_wait);
  PROXY_ADD ("/remote/auth/proxy/cookie-session", test_proxy_cookie_session);
  PROXY_ADD ("/remote/auth/proxy/cookie-refresh", test_proxy_cookie_refresh);
  PROXY_ADD ("/remote/auth/proxy/cookie-wrong-password", test_proxy_cookie_wrong_password);
  PROXY_ADD ("/remote/auth/proxy/bearer", test_proxy_bearer);
  g_test_add_func ("/remote/parse/strict-json", test_parse_strict_json);
  g_test_add_func ("/remote/parse/shapes", test_parse_shapes);
  g_test_add_func ("/remote/parse/walked", test_parse_walked);
  g_test_add_func ("/remote/parse/error-body", test_parse_error_body);
  g_test_add_func ("/remote/parse/boxed-types", test_boxed_types);
#undef ADD
#undef PROXY_ADD

  return g_test_run ();
}
