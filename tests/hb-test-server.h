#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* The tests' CouchDB-protocol server (tests/server/server.js) and its fault-injecting proxy
 * (tests/server/proxy.js), run by node as child processes.
 *
 * The scripts are found in $G_TEST_SRCDIR/server (tests/meson.build sets G_TEST_SRCDIR), node
 * is $HB_TEST_NODE or `node` on PATH, and their npm packages come from build-aux/setup-npm.sh.
 * A child exits when its stdin closes, so a test that dies never leaves one behind. Starting
 * one makes the test process ignore SIGPIPE, so that writing to a child that died is an error,
 * not a kill. */
typedef struct
{
  char *url; /* http://127.0.0.1:PORT, no trailing slash */
  guint16 port;
  GSubprocess *process;
  /*< private >*/
  GOutputStream *input;
  GDataInputStream *output;
} HbTestChild;

typedef HbTestChild HbTestServer;
typedef HbTestChild HbTestProxy;

/* Starts `node server.js [extra_args...]` (for example { "--leveldb", dir, NULL }) and waits
 * for it to listen. */
HbTestServer *hb_test_server_start (const char *const *extra_args, GError **error);

/* Closes the server's stdin, waits for it to exit (kills it after 5 s) and frees it. */
void hb_test_server_stop (HbTestServer *server);

/* Starts `node proxy.js --target target_url` and waits for it to listen. */
HbTestProxy *hb_test_proxy_start (const char *target_url, GError **error);

/* Sends one command line (JSON, without a newline; the reference is at the top of proxy.js)
 * and returns the proxy's reply, {"ok": true, ...}. A reply {"error": "..."} is returned as a
 * G_IO_ERROR_FAILED error carrying the text; no reply within 15 s is G_IO_ERROR_TIMED_OUT. */
JsonNode *hb_test_proxy_command (HbTestProxy *proxy, const char *json_line, GError **error);

/* hb_test_proxy_command() with the line formatted from format; aborts the test unless the
 * proxy answers ok. PROXY_DO() drops the answer. */
JsonNode *hb_test_proxy_cmd (HbTestProxy *proxy, const char *format, ...) G_GNUC_PRINTF (2, 3);
#define PROXY_DO(proxy, ...) json_node_unref (hb_test_proxy_cmd ((proxy), __VA_ARGS__))

/* Like hb_test_server_stop(). */
void hb_test_proxy_stop (HbTestProxy *proxy);

/* A blocking HTTP request (body: JSON text or NULL) for assertions about a server's state: the
 * answer parsed, or NULL if it is not JSON; the status in *out_status if given. */
JsonNode *
hb_test_http_json (const char *method, const char *url, const char *body, guint *out_status);

/* Orders an array of strings with g_ptr_array_sort() or qsort(). */
gint hb_test_compare_strv_items (gconstpointer a, gconstpointer b);

/* Every document of a store with all its leaves: id → the canonical texts of its leaves
 * (`_rev`, `_revisions`, `_deleted` and body), sorted, one a line. */
typedef struct _HbStore HbStore;
GHashTable *hb_test_store_trees (HbStore *store);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbTestServer, hb_test_server_stop)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbTestProxy, hb_test_proxy_stop)

G_END_DECLS
