/* hbsync: drive an HbVault and its HbStore from the command line.
 *
 * JSON on stdout (one value per command; NDJSON for export), one line per error on stderr,
 * documented exit codes. PINs and keys are read from --pin-fd or from the terminal without echo,
 * wiped after use and never printed (the recovery key is printed once, by init).
 */

#include <errno.h>
#include <glib-unix.h>
#include <fcntl.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <hbsync.h>

/* Exit codes; the --help text lists them, keep both in step. */
typedef enum
{
  HB_CLI_EXIT_OK = 0,
  HB_CLI_EXIT_FAILED = 1,
  HB_CLI_EXIT_USAGE = 2,
  HB_CLI_EXIT_DENIED = 3,
  HB_CLI_EXIT_NOT_FOUND = 4,
  HB_CLI_EXIT_CONFLICT = 5,
  HB_CLI_EXIT_CORRUPT = 6,
  HB_CLI_EXIT_NETWORK = 7,
} HbCliExit;

typedef enum
{
  HB_CLI_ERROR_USAGE,
  HB_CLI_ERROR_FAILED,
  HB_CLI_ERROR_NETWORK, /* a check against the server came out negative (diagnose, session-sync) */
} HbCliError;

#define HB_CLI_ERROR (hb_cli_error_quark ())

#define SECRET_MAX_LEN 1024
/* Argon2id bounds as hb_vault_set_kdf_params() documents them; the minimum memory is the lowest
 * worth allowing at all, meant for tests. */
#define MIN_KDF_MEMORY_KIB 8192
#define MAX_KDF_MEMORY_KIB (4u * 1024 * 1024)
#define MAX_KDF_ITERATIONS 64
#define IMPORT_BATCH 256
#define EXPORT_BATCH 256

typedef struct _HbCli HbCli;
typedef gboolean (*HbCliCommandFunc) (HbCli *cli, GError **error);

typedef struct
{
  const char *name;
  const char *params;
  const char *summary;
  HbCliCommandFunc run;
} HbCliCommand;

struct _HbCli
{
  char *store_path;
  char *pin_fd_arg;
  int pin_fd; /* -1: ask on the terminal */
  int tty_fd;
  gboolean show_version;
  char **rest; /* the command name, then its arguments */
  const HbCliCommand *command;
  HbVault *vault;
  HbStore *store;
};

/* A NUL-terminated secret (PIN, recovery key): wiped before it is freed. */
typedef char HbCliSecret;

static GQuark
hb_cli_error_quark (void)
{
  return g_quark_from_static_string ("hb-cli-error-quark");
}

static void
hb_cli_secret_free (HbCliSecret *secret)
{
  if (secret == NULL)
    return;
  explicit_bzero (secret, strlen (secret));
  g_free (secret);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbCliSecret, hb_cli_secret_free)

static void
hb_cli_free (HbCli *cli)
{
  if (cli->store != NULL)
    hb_store_close (cli->store);
  g_clear_object (&cli->store);
  if (cli->vault != NULL)
    hb_vault_lock (cli->vault);
  g_clear_object (&cli->vault);
  g_clear_pointer (&cli->rest, g_strfreev);
  g_clear_pointer (&cli->store_path, g_free);
  g_clear_pointer (&cli->pin_fd_arg, g_free);
  if (cli->tty_fd >= 0)
    close (cli->tty_fd);
  g_free (cli);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (HbCli, hb_cli_free)

/* ---- errors and exit codes ------------------------------------------------------------ */

static HbCliExit
exit_code_for_error (const GError *error)
{
  if (error->domain == HB_VAULT_ERROR)
    {
      switch ((HbVaultError)error->code)
        {
          case HB_VAULT_ERROR_WRONG_PIN:
          case HB_VAULT_ERROR_TOO_SOON:
          case HB_VAULT_ERROR_LOCKED_OUT:
          case HB_VAULT_ERROR_BAD_RECOVERY_KEY:
            return HB_CLI_EXIT_DENIED;
          case HB_VAULT_ERROR_NOT_FOUND:
            return HB_CLI_EXIT_NOT_FOUND;
          case HB_VAULT_ERROR_CORRUPT:
            return HB_CLI_EXIT_CORRUPT;
          case HB_VAULT_ERROR_FAILED:
          case HB_VAULT_ERROR_EXISTS:
          case HB_VAULT_ERROR_WEAK_PIN:
          case HB_VAULT_ERROR_LOCKED:
          case HB_VAULT_ERROR_NO_SECRET_SERVICE:
          case HB_VAULT_ERROR_DEVICE_SECRET_MISSING:
          default:
            return HB_CLI_EXIT_FAILED;
        }
    }

  if (error->domain == HB_STORE_ERROR)
    {
      switch ((HbStoreError)error->code)
        {
          case HB_STORE_ERROR_NOT_FOUND:
            return HB_CLI_EXIT_NOT_FOUND;
          case HB_STORE_ERROR_CONFLICT:
            return HB_CLI_EXIT_CONFLICT;
          case HB_STORE_ERROR_CORRUPT:
            return HB_CLI_EXIT_CORRUPT;
          case HB_STORE_ERROR_FAILED:
          case HB_STORE_ERROR_LOCKED:
          case HB_STORE_ERROR_INVALID:
          case HB_STORE_ERROR_VERSION:
          default:
            return HB_CLI_EXIT_FAILED;
        }
    }

  /* The server: unreachable, refusing, failing or answering nonsense. */
  if (error->domain == HB_REMOTE_ERROR
      || (error->domain == HB_CLI_ERROR && error->code == HB_CLI_ERROR_NETWORK))
    return HB_CLI_EXIT_NETWORK;

  if (error->domain == G_OPTION_ERROR
      || (error->domain == HB_CLI_ERROR && error->code == HB_CLI_ERROR_USAGE))
    return HB_CLI_EXIT_USAGE;

  return HB_CLI_EXIT_FAILED;
}

/* The `error` strings of per-document results (as CouchDB's _bulk_docs names them) as errors
 * of the store's domain, so that one mapping decides every exit code. */
static HbStoreError
store_error_for_result (const char *name)
{
  if (g_strcmp0 (name, "conflict") == 0)
    return HB_STORE_ERROR_CONFLICT;
  if (g_strcmp0 (name, "not_found") == 0)
    return HB_STORE_ERROR_NOT_FOUND;
  if (g_strcmp0 (name, "corrupt") == 0)
    return HB_STORE_ERROR_CORRUPT;
  return HB_STORE_ERROR_FAILED;
}

static void
print_usage (const HbCliCommand *command)
{
  if (command == NULL)
    fputs ("Usage: hbsync --store FILE [--pin-fd N] COMMAND [ARGS…]\n"
           "Run 'hbsync --help' for the commands, their arguments and the exit codes.\n",
           stderr);
  else
    fprintf (stderr,
             "Usage: hbsync --store FILE [--pin-fd N] %s [OPTION…]%s%s\n"
             "Run 'hbsync %s --help' for its options.\n",
             command->name, command->params[0] != '\0' ? " " : "", command->params, command->name);
}

static int
report_error (HbCli *cli, const GError *error)
{
  HbCliExit code = exit_code_for_error (error);
  g_autofree char *line = g_strdup (error->message);

  g_strdelimit (line, "\r\n", ' ');
  fprintf (stderr, "hbsync: %s\n", line);

  if (code == HB_CLI_EXIT_USAGE)
    print_usage (cli->command);

  return code;
}

/* ---- JSON in and out ------------------------------------------------------------------ */

static const char *
object_get_string (JsonObject *object, const char *member)
{
  JsonNode *node = json_object_get_member (object, member);

  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node)
      || json_node_get_value_type (node) != G_TYPE_STRING)
    return NULL;
  return json_node_get_string (node);
}

static JsonNode *
parse_json (const char *data, gssize len, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) parse_error = NULL;
  JsonNode *root;

  /* An empty GBytes has no data pointer at all. */
  if (data == NULL)
    data = "";
  if (!json_parser_load_from_data (parser, data, len, &parse_error))
    {
      guint line = 0, column = 0;

      /* json-glib's message quotes the offending text, which may be clinical: keep only where. */
      if (sscanf (parse_error->message, "<data>:%u:%u", &line, &column) == 2)
        g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "invalid JSON at line %u, column %u",
                     line, column);
      else
        g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "invalid JSON");
      return NULL;
    }
  root = json_parser_steal_root (parser);
  if (root == NULL)
    g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "no JSON in the input");
  return root;
}

static void
print_json (JsonNode *node)
{
  g_autoptr (JsonGenerator) generator = json_generator_new ();
  g_autofree char *text = NULL;

  json_generator_set_pretty (generator, TRUE);
  json_generator_set_indent (generator, 2);
  json_generator_set_root (generator, node);
  text = json_generator_to_data (generator, NULL);
  fputs (text, stdout);
  fputc ('\n', stdout);
}

static void
print_json_line (JsonNode *node)
{
  g_autofree char *text = json_to_string (node, FALSE);

  fputs (text, stdout);
  fputc ('\n', stdout);
}

static JsonNode *
node_for_object (JsonObject *object)
{
  JsonNode *node = json_node_new (JSON_NODE_OBJECT);

  json_node_take_object (node, object);
  return node;
}

static void
print_ok (const char *id, const char *rev)
{
  JsonObject *object = json_object_new ();
  g_autoptr (JsonNode) node = node_for_object (object);

  json_object_set_boolean_member (object, "ok", TRUE);
  if (id != NULL)
    json_object_set_string_member (object, "id", id);
  if (rev != NULL)
    json_object_set_string_member (object, "rev", rev);
  print_json (node);
}

/* The store reports a record it cannot read as a row `{"id"?, "error", "reason"}` in place of
 * the document; the first such row becomes the command's error, counted in @n_failed. */
static gboolean
check_row (JsonNode *row, guint *n_failed, GError **first_error)
{
  JsonObject *object = JSON_NODE_HOLDS_OBJECT (row) ? json_node_get_object (row) : NULL;
  const char *name = object != NULL ? object_get_string (object, "error") : NULL;

  if (object != NULL && name == NULL)
    return TRUE;
  if (object != NULL && object_get_string (object, "_id") != NULL)
    return TRUE;

  (*n_failed)++;
  if (*first_error == NULL)
    {
      const char *reason = object != NULL ? object_get_string (object, "reason") : NULL;

      g_set_error_literal (first_error, HB_STORE_ERROR, store_error_for_result (name),
                           reason != NULL ? reason : "unreadable record");
    }
  return FALSE;
}

static gboolean
report_failed_rows (guint n_failed, GError *first_error, const char *what, GError **error)
{
  if (first_error == NULL)
    return TRUE;
  g_propagate_prefixed_error (error, first_error, "%u %s; the first: ", n_failed, what);
  return FALSE;
}

static void
print_doc_array (GPtrArray *docs, guint *n_failed, GError **first_error)
{
  JsonArray *array = json_array_sized_new (docs->len);
  g_autoptr (JsonNode) node = json_node_new (JSON_NODE_ARRAY);

  for (guint i = 0; i < docs->len; i++)
    {
      JsonNode *doc = g_ptr_array_index (docs, i);

      if (check_row (doc, n_failed, first_error))
        json_array_add_element (array, json_node_ref (doc));
    }
  json_node_take_array (node, array);
  print_json (node);
}

/* ---- input ---------------------------------------------------------------------------- */

static gboolean
is_stdin (const char *path)
{
  return path == NULL || g_str_equal (path, "-");
}

static GBytes *
read_fd_to_end (int fd, GError **error)
{
  g_autoptr (GByteArray) data = g_byte_array_new ();
  guint8 buffer[65536];

  for (;;)
    {
      ssize_t n = read (fd, buffer, sizeof buffer);

      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          int saved_errno = errno;

          g_set_error (error, G_IO_ERROR, g_io_error_from_errno (saved_errno),
                       "cannot read standard input: %s", g_strerror (saved_errno));
          return NULL;
        }
      if (n == 0)
        break;
      g_byte_array_append (data, buffer, n);
    }

  return g_byte_array_free_to_bytes (g_steal_pointer (&data));
}

static GBytes *
read_input (const char *path, GError **error)
{
  g_autofree char *contents = NULL;
  gsize len = 0;

  if (is_stdin (path))
    return read_fd_to_end (STDIN_FILENO, error);

  if (!g_file_get_contents (path, &contents, &len, error))
    return NULL;
  return g_bytes_new_take (g_steal_pointer (&contents), len);
}

/* ---- PINs and keys -------------------------------------------------------------------- */

static int signal_tty_fd = -1;
static struct termios signal_tty_saved;
static const int tty_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };

/* Echo must come back even when the user interrupts the prompt. */
static void
restore_tty_and_reraise (int signum)
{
  if (signal_tty_fd >= 0)
    tcsetattr (signal_tty_fd, TCSAFLUSH, &signal_tty_saved);
  signal (signum, SIG_DFL);
  raise (signum);
}

/* Reads up to a newline or the end of input, one byte at a time so that nothing after the line
 * is consumed: the same descriptor may carry a second secret, or a document. */
static HbCliSecret *
read_secret_line (int fd, const char *what, GError **error)
{
  g_autoptr (HbCliSecret) secret = g_malloc0 (SECRET_MAX_LEN + 1);
  gsize len = 0;
  gboolean got_newline = FALSE;

  for (;;)
    {
      char c;
      ssize_t n = read (fd, &c, 1);

      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          int saved_errno = errno;

          g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "cannot read the %s: %s", what,
                       g_strerror (saved_errno));
          return NULL;
        }
      if (n == 0)
        break;
      if (c == '\n')
        {
          got_newline = TRUE;
          break;
        }
      if (len == SECRET_MAX_LEN)
        {
          explicit_bzero (&c, sizeof c);
          g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "the %s is longer than %d bytes",
                       what, SECRET_MAX_LEN);
          return NULL;
        }
      secret[len++] = c;
      explicit_bzero (&c, sizeof c);
    }

  if (len == 0 && !got_newline)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "no %s given (end of input)", what);
      return NULL;
    }
  if (len > 0 && secret[len - 1] == '\r')
    secret[--len] = '\0';

  return g_steal_pointer (&secret);
}

static gboolean
write_all (int fd, const char *text, GError **error)
{
  gsize len = strlen (text);

  while (len > 0)
    {
      ssize_t n = write (fd, text, len);

      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          int saved_errno = errno;

          g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "cannot write to the terminal: %s",
                       g_strerror (saved_errno));
          return FALSE;
        }
      text += n;
      len -= n;
    }
  return TRUE;
}

static HbCliSecret *
ask_on_tty (HbCli *cli, const char *prompt, const char *what, GError **error)
{
  struct termios saved, quiet;
  struct sigaction action = { 0 }, previous[G_N_ELEMENTS (tty_signals)];
  HbCliSecret *secret;

  if (cli->tty_fd < 0)
    cli->tty_fd = open ("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (cli->tty_fd < 0)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                   "no terminal to ask for the %s on; pass it with --pin-fd N", what);
      return NULL;
    }
  if (tcgetattr (cli->tty_fd, &saved) != 0)
    {
      int saved_errno = errno;

      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "cannot set up the terminal: %s",
                   g_strerror (saved_errno));
      return NULL;
    }
  quiet = saved;
  quiet.c_lflag &= ~ECHO;
  quiet.c_lflag |= ECHONL;

  signal_tty_fd = cli->tty_fd;
  signal_tty_saved = saved;
  action.sa_handler = restore_tty_and_reraise;
  sigemptyset (&action.sa_mask);
  for (guint i = 0; i < G_N_ELEMENTS (tty_signals); i++)
    sigaction (tty_signals[i], &action, &previous[i]);

  /* Echo goes off before the prompt shows, so nothing typed after it can be echoed; if it
   * cannot go off, nothing is read. */
  if (tcsetattr (cli->tty_fd, TCSAFLUSH, &quiet) != 0)
    {
      int saved_errno = errno;

      for (guint i = 0; i < G_N_ELEMENTS (tty_signals); i++)
        sigaction (tty_signals[i], &previous[i], NULL);
      signal_tty_fd = -1;
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "cannot turn off echo: %s",
                   g_strerror (saved_errno));
      return NULL;
    }
  if (write_all (cli->tty_fd, prompt, error))
    secret = read_secret_line (cli->tty_fd, what, error);
  else
    secret = NULL;
  tcsetattr (cli->tty_fd, TCSAFLUSH, &saved);

  for (guint i = 0; i < G_N_ELEMENTS (tty_signals); i++)
    sigaction (tty_signals[i], &previous[i], NULL);
  signal_tty_fd = -1;

  return secret;
}

/* One secret: the next line of --pin-fd, or asked on the terminal. */
static HbCliSecret *
read_secret (HbCli *cli, const char *prompt, const char *what, GError **error)
{
  g_autoptr (HbCliSecret) secret = NULL;

  /* --pin-fd naming a terminal gets the terminal treatment: no echo. */
  if (cli->pin_fd >= 0 && !isatty (cli->pin_fd))
    secret = read_secret_line (cli->pin_fd, what, error);
  else
    secret = ask_on_tty (cli, prompt, what, error);
  if (secret == NULL)
    return NULL;

  if (secret[0] == '\0')
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "the %s is empty", what);
      return NULL;
    }
  return g_steal_pointer (&secret);
}

/* A new PIN: asked twice on a terminal, since a typo there would lock the user out. */
static HbCliSecret *
read_new_pin (HbCli *cli, GError **error)
{
  g_autoptr (HbCliSecret) pin = read_secret (cli, "New PIN: ", "new PIN", error);
  g_autoptr (HbCliSecret) again = NULL;

  if (pin == NULL || cli->pin_fd >= 0)
    return g_steal_pointer (&pin);

  again = read_secret (cli, "Repeat the new PIN: ", "new PIN", error);
  if (again == NULL)
    return NULL;
  if (!g_str_equal (pin, again))
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "the two new PINs differ");
      return NULL;
    }
  return g_steal_pointer (&pin);
}

/* ---- vault and store ------------------------------------------------------------------ */

static gboolean
open_vault (HbCli *cli, GError **error)
{
  if (!g_file_test (cli->store_path, G_FILE_TEST_EXISTS))
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND,
                   "no store at %s; create one with 'hbsync --store FILE init'", cli->store_path);
      return FALSE;
    }

  cli->vault = hb_vault_new (cli->store_path);
  if (!hb_vault_exists (cli->vault))
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND, "%s holds no hbsync store",
                   cli->store_path);
      return FALSE;
    }
  return TRUE;
}

/* The vault's own wording, plus what the user can do next. */
static void
propagate_unlock_error (HbCli *cli, GError **error, GError *local_error)
{
  if (g_error_matches (local_error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN)
      && strstr (local_error->message, "attempt") == NULL)
    g_set_error (error, local_error->domain, local_error->code, "%s (%u attempts left)",
                 local_error->message, hb_vault_get_attempts_left (cli->vault));
  else if (g_error_matches (local_error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED_OUT)
           && strstr (local_error->message, "hbsync recover") == NULL)
    g_set_error (error, local_error->domain, local_error->code, "%s ('hbsync recover')",
                 local_error->message);
  else
    {
      g_propagate_error (error, local_error);
      return;
    }
  g_error_free (local_error);
}

/* Asking for a PIN that the vault would refuse to try only misleads. */
static gboolean
check_attempt_allowed (HbCli *cli, GError **error)
{
  gint64 retry_after = hb_vault_get_retry_after (cli->vault);
  gint64 seconds;

  if (retry_after == 0)
    return TRUE;
  if (retry_after == G_MAXINT64)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED_OUT,
                   "The PIN is blocked after %d wrong attempts; unlock with the recovery key: "
                   "'hbsync recover'",
                   HB_VAULT_MAX_FAILED_ATTEMPTS);
      return FALSE;
    }
  seconds = MAX (1, (retry_after - g_get_real_time () + G_USEC_PER_SEC - 1) / G_USEC_PER_SEC);
  g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_TOO_SOON,
               "Too many wrong PINs; try again in %" G_GINT64_FORMAT " second%s", seconds,
               seconds == 1 ? "" : "s");
  return FALSE;
}

static gboolean
unlock_vault (HbCli *cli, GError **error)
{
  g_autoptr (HbCliSecret) pin = NULL;
  g_autoptr (GError) local_error = NULL;

  if (!open_vault (cli, error) || !check_attempt_allowed (cli, error))
    return FALSE;

  pin = read_secret (cli, "PIN: ", "PIN", error);
  if (pin == NULL)
    return FALSE;

  if (!hb_vault_unlock_sync (cli->vault, pin, NULL, &local_error))
    {
      propagate_unlock_error (cli, error, g_steal_pointer (&local_error));
      return FALSE;
    }
  return TRUE;
}

static gboolean
open_store (HbCli *cli, GError **error)
{
  if (!unlock_vault (cli, error))
    return FALSE;
  cli->store = hb_store_open_sync (cli->vault, NULL, error);
  return cli->store != NULL;
}

/* ---- command lines -------------------------------------------------------------------- */

static gboolean
parse_uint (
    const char *option, const char *text, guint64 min, guint64 max, guint64 *out, GError **error)
{
  g_autoptr (GError) local_error = NULL;

  if (!g_ascii_string_to_unsigned (text, 10, min, max, out, &local_error))
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "%s: %s", option, local_error->message);
      return FALSE;
    }
  return TRUE;
}

static gboolean
setup_pin_fd (HbCli *cli, GError **error)
{
  guint64 fd;

  if (cli->pin_fd_arg == NULL)
    return TRUE;
  if (!parse_uint ("--pin-fd", cli->pin_fd_arg, 0, G_MAXINT, &fd, error))
    return FALSE;
  if (fcntl ((int)fd, F_GETFD) < 0)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                   "--pin-fd %d: not an open file descriptor", (int)fd);
      return FALSE;
    }
  cli->pin_fd = (int)fd;
  return TRUE;
}

/* Argon2id parameters for a PIN slot about to be written (init, change-pin, recover). */
typedef struct
{
  char *memory;
  char *iterations;
} KdfOptions;

static void
kdf_options_clear (KdfOptions *kdf)
{
  g_clear_pointer (&kdf->memory, g_free);
  g_clear_pointer (&kdf->iterations, g_free);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (KdfOptions, kdf_options_clear)

/* --store and --pin-fd, accepted before the command and after it. */
static void
add_store_options (GOptionContext *context, char **store_path, char **pin_fd)
{
  const GOptionEntry entries[] = {
    { "store", 's', 0, G_OPTION_ARG_FILENAME, store_path, "The store file", "FILE" },
    { "pin-fd", 0, 0, G_OPTION_ARG_STRING, pin_fd,
      "Read the PIN (and any further secret) from this file descriptor, one per line", "N" },
    G_OPTION_ENTRY_NULL,
  };

  g_option_context_add_main_entries (context, entries, NULL);
}

static void
add_kdf_options (GOptionContext *context, KdfOptions *kdf)
{
  const GOptionEntry entries[] = {
    { "kdf-memory", 0, 0, G_OPTION_ARG_STRING, &kdf->memory,
      "Argon2id memory for the new PIN, in KiB (at least 8192; default 131072)", "KIB" },
    { "kdf-iterations", 0, 0, G_OPTION_ARG_STRING, &kdf->iterations,
      "Argon2id iterations for the new PIN (at least 1; default 2)", "N" },
    G_OPTION_ENTRY_NULL,
  };

  g_option_context_add_main_entries (context, entries, NULL);
}

static void
take_override (char **field, char *value)
{
  if (value == NULL)
    return;
  g_free (*field);
  *field = value;
}

/* Parses the command's options (the global ones are accepted after the command too) and
 * returns its positional arguments, between min_args and max_args of them. */
static GStrv
parse_command_line (HbCli *cli,
                    const GOptionEntry *entries,
                    KdfOptions *kdf,
                    guint min_args,
                    guint max_args,
                    GError **error)
{
  g_autofree char *parameter = NULL;
  g_autofree char *store_path = NULL;
  g_autofree char *pin_fd = NULL;
  g_auto (GStrv) args = NULL;
  g_auto (GStrv) argv = g_strdupv (cli->rest);
  const GOptionEntry remaining[] = {
    { G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_STRING_ARRAY, &args, NULL, NULL },
    G_OPTION_ENTRY_NULL,
  };
  g_autoptr (GOptionContext) context = NULL;
  guint n_args;

  parameter = g_strstrip (g_strdup_printf ("%s %s", cli->command->name, cli->command->params));
  context = g_option_context_new (parameter);
  g_option_context_set_summary (context, cli->command->summary);
  add_store_options (context, &store_path, &pin_fd);
  if (entries != NULL)
    g_option_context_add_main_entries (context, entries, NULL);
  /* Every command that writes a PIN slot takes the key derivation parameters. */
  if (kdf != NULL)
    add_kdf_options (context, kdf);
  g_option_context_add_main_entries (context, remaining, NULL);

  if (!g_option_context_parse_strv (context, &argv, error))
    return NULL;

  take_override (&cli->store_path, g_steal_pointer (&store_path));
  take_override (&cli->pin_fd_arg, g_steal_pointer (&pin_fd));

  n_args = args != NULL ? g_strv_length (args) : 0;
  if (n_args < min_args)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "%s: missing argument %s",
                   cli->command->name, cli->command->params);
      return NULL;
    }
  if (n_args > max_args)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "%s: too many arguments",
                   cli->command->name);
      return NULL;
    }
  if (cli->store_path == NULL)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                           "no store given; pass --store FILE");
      return NULL;
    }
  if (!setup_pin_fd (cli, error))
    return NULL;

  if (args == NULL)
    args = g_new0 (char *, 1);
  return g_steal_pointer (&args);
}

static gboolean
apply_kdf_options (HbCli *cli, const KdfOptions *kdf, GError **error)
{
  guint default_memory, default_iterations, parallelism;
  guint64 memory, iterations;

  if (kdf->memory == NULL && kdf->iterations == NULL)
    return TRUE;
  /* An option not given keeps the library's default. */
  hb_vault_get_kdf_params (cli->vault, &default_memory, &default_iterations, &parallelism);
  memory = default_memory;
  iterations = default_iterations;
  if (kdf->memory != NULL
      && !parse_uint ("--kdf-memory", kdf->memory, MIN_KDF_MEMORY_KIB, MAX_KDF_MEMORY_KIB, &memory,
                      error))
    return FALSE;
  if (kdf->iterations != NULL
      && !parse_uint ("--kdf-iterations", kdf->iterations, 1, MAX_KDF_ITERATIONS, &iterations,
                      error))
    return FALSE;

  hb_vault_set_kdf_params (cli->vault, (guint)memory, (guint)iterations, parallelism);
  return TRUE;
}

/* ---- commands ------------------------------------------------------------------------- */

static gboolean
cmd_init (HbCli *cli, GError **error)
{
  gboolean no_device_secret = FALSE;
  g_auto (KdfOptions) kdf = { 0 };
  const GOptionEntry entries[] = {
    { "no-device-secret", 0, 0, G_OPTION_ARG_NONE, &no_device_secret,
      "Keep no device secret in the Secret Service (the store file alone can then be attacked "
      "offline)",
      NULL },
    G_OPTION_ENTRY_NULL,
  };
  g_auto (GStrv) args = parse_command_line (cli, entries, &kdf, 0, 0, error);
  g_autoptr (HbCliSecret) pin = NULL;
  g_autoptr (HbCliSecret) recovery_key = NULL;
  g_autoptr (GError) local_error = NULL;
  g_autoptr (GError) store_error = NULL;
  g_autofree char *output = NULL;
  JsonObject *object;
  g_autoptr (JsonNode) node = NULL;

  if (args == NULL)
    return FALSE;

  cli->vault = hb_vault_new (cli->store_path);
  if (!apply_kdf_options (cli, &kdf, error))
    return FALSE;
  if (g_file_test (cli->store_path, G_FILE_TEST_EXISTS) && hb_vault_exists (cli->vault))
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_EXISTS, "%s already holds a store",
                   cli->store_path);
      return FALSE;
    }

  pin = read_new_pin (cli, error);
  if (pin == NULL)
    return FALSE;

  if (!hb_vault_create_sync (
          cli->vault, pin, no_device_secret ? HB_VAULT_FLAGS_NO_DEVICE_SECRET : HB_VAULT_FLAGS_NONE,
          &recovery_key, NULL, &local_error))
    {
      if (g_error_matches (local_error, HB_VAULT_ERROR, HB_VAULT_ERROR_NO_SECRET_SERVICE))
        g_set_error (error, local_error->domain, local_error->code,
                     "%s; --no-device-secret creates the store without a device secret, but the "
                     "file alone can then be attacked offline",
                     local_error->message);
      else
        g_propagate_error (error, g_steal_pointer (&local_error));
      return FALSE;
    }

  /* The vault exists now: whatever happens to the store, the recovery key must be shown. */
  cli->store = hb_store_open_sync (cli->vault, NULL, &store_error);

  object = json_object_new ();
  node = node_for_object (object);
  if (cli->store != NULL)
    json_object_set_string_member (object, "store_uuid", hb_store_get_uuid (cli->store));
  else
    json_object_set_null_member (object, "store_uuid");
  json_object_set_string_member (object, "recovery_key", recovery_key);
  output = json_to_string (node, TRUE);
  fputs (output, stdout);
  fputc ('\n', stdout);
  fflush (stdout);
  explicit_bzero (output, strlen (output));
  /* The node holds its own copy of the key. */
  {
    JsonNode *member = json_object_get_member (object, "recovery_key");
    char *copy = (char *)json_node_get_string (member);

    explicit_bzero (copy, strlen (copy));
  }
  fputs ("hbsync: write down the recovery key and keep it apart from this machine: it is shown "
         "only this once, and after 10 wrong PINs only it unlocks the store\n",
         stderr);

  if (store_error != NULL)
    {
      g_propagate_error (error, g_steal_pointer (&store_error));
      return FALSE;
    }
  return TRUE;
}

/* A document without an _id gets one, shaped like the clinic's ids: `<type>:<uuid>`. */
static void
ensure_doc_id (JsonObject *doc)
{
  const char *type = object_get_string (doc, "type");
  g_autofree char *uuid = NULL;

  if (json_object_has_member (doc, "_id"))
    return;
  uuid = g_uuid_string_random ();
  if (type != NULL && type[0] != '\0')
    {
      g_autofree char *id = g_strdup_printf ("%s:%s", type, uuid);

      json_object_set_string_member (doc, "_id", id);
    }
  else
    json_object_set_string_member (doc, "_id", uuid);
}

static JsonNode *
load_document (const char *path, GError **error)
{
  g_autoptr (GBytes) input = read_input (path, error);
  g_autoptr (JsonNode) doc = NULL;
  gsize len;
  const char *data;

  if (input == NULL)
    return NULL;
  data = g_bytes_get_data (input, &len);
  doc = parse_json (data, len, error);
  if (doc == NULL)
    {
      g_prefix_error (error, "%s: ", is_stdin (path) ? "standard input" : path);
      return NULL;
    }
  if (!JSON_NODE_HOLDS_OBJECT (doc))
    {
      g_set_error_literal (error, HB_STORE_ERROR, HB_STORE_ERROR_INVALID,
                           "a document must be a JSON object");
      return NULL;
    }
  return g_steal_pointer (&doc);
}

static gboolean
cmd_put (HbCli *cli, GError **error)
{
  g_auto (GStrv) args = parse_command_line (cli, NULL, NULL, 0, 1, error);
  g_autoptr (JsonNode) doc = NULL;
  g_autofree char *id = NULL;
  g_autofree char *rev = NULL;
  const char *path;

  if (args == NULL)
    return FALSE;
  path = args[0];

  /* A file is checked before the PIN is asked; standard input may carry the PIN first. */
  if (!is_stdin (path) && (doc = load_document (path, error)) == NULL)
    return FALSE;
  if (!open_store (cli, error))
    return FALSE;
  if (doc == NULL && (doc = load_document (path, error)) == NULL)
    return FALSE;

  ensure_doc_id (json_node_get_object (doc));
  id = g_strdup (object_get_string (json_node_get_object (doc), "_id"));
  rev = hb_store_put_sync (cli->store, doc, NULL, error);
  if (rev == NULL)
    return FALSE;

  print_ok (id, rev);
  return TRUE;
}

static gboolean
cmd_get (HbCli *cli, GError **error)
{
  g_autofree char *rev = NULL;
  gboolean conflicts = FALSE, revs = FALSE;
  const GOptionEntry entries[]
      = { { "rev", 0, 0, G_OPTION_ARG_STRING, &rev, "This revision instead of the winning one",
            "REV" },
          { "conflicts", 0, 0, G_OPTION_ARG_NONE, &conflicts,
            "Add _conflicts and _deleted_conflicts", NULL },
          { "revs", 0, 0, G_OPTION_ARG_NONE, &revs, "Add _revisions", NULL },
          G_OPTION_ENTRY_NULL };
  g_auto (GStrv) args = parse_command_line (cli, entries, NULL, 1, 1, error);
  g_autoptr (JsonNode) doc = NULL;
  HbGetFlags flags = HB_GET_FLAGS_NONE;

  if (args == NULL)
    return FALSE;
  if (conflicts)
    flags |= HB_GET_FLAGS_CONFLICTS;
  if (revs)
    flags |= HB_GET_FLAGS_REVISIONS;

  if (!open_store (cli, error))
    return FALSE;
  doc = hb_store_get_sync (cli->store, args[0], rev, flags, NULL, error);
  if (doc == NULL)
    return FALSE;

  print_json (doc);
  return TRUE;
}

static gboolean
cmd_delete (HbCli *cli, GError **error)
{
  g_autofree char *rev = NULL;
  const GOptionEntry entries[] = { { "rev", 0, 0, G_OPTION_ARG_STRING, &rev,
                                     "The revision being deleted (required)", "REV" },
                                   G_OPTION_ENTRY_NULL };
  g_auto (GStrv) args = parse_command_line (cli, entries, NULL, 1, 1, error);
  g_autofree char *new_rev = NULL;

  if (args == NULL)
    return FALSE;
  if (rev == NULL)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                           "delete: --rev REV is required");
      return FALSE;
    }

  if (!open_store (cli, error))
    return FALSE;
  new_rev = hb_store_delete_sync (cli->store, args[0], rev, NULL, error);
  if (new_rev == NULL)
    return FALSE;

  print_ok (args[0], new_rev);
  return TRUE;
}

static gboolean
cmd_list (HbCli *cli, GError **error)
{
  g_autofree char *type = NULL;
  g_autofree char *session_id = NULL;
  g_autofree char *patient_id = NULL;
  const GOptionEntry entries[]
      = { { "type", 0, 0, G_OPTION_ARG_STRING, &type, "Only documents of this type", "T" },
          { "session-id", 0, 0, G_OPTION_ARG_STRING, &session_id,
            "Only documents whose session_id is this", "ID" },
          { "patient-id", 0, 0, G_OPTION_ARG_STRING, &patient_id,
            "Only documents whose patient_id is this", "ID" },
          G_OPTION_ENTRY_NULL };
  g_auto (GStrv) args = parse_command_line (cli, entries, NULL, 0, 0, error);
  g_autoptr (GPtrArray) docs = NULL;
  g_autoptr (GError) first_error = NULL;
  guint n_failed = 0;

  if (args == NULL)
    return FALSE;
  if ((type != NULL) + (session_id != NULL) + (patient_id != NULL) > 1)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                           "list: give at most one of --type, --session-id, --patient-id");
      return FALSE;
    }

  if (!open_store (cli, error))
    return FALSE;
  if (type != NULL)
    docs = hb_store_find_sync (cli->store, HB_INDEX_FIELD_TYPE, type, NULL, error);
  else if (session_id != NULL)
    docs = hb_store_find_sync (cli->store, HB_INDEX_FIELD_SESSION_ID, session_id, NULL, error);
  else if (patient_id != NULL)
    docs = hb_store_find_sync (cli->store, HB_INDEX_FIELD_PATIENT_ID, patient_id, NULL, error);
  else
    docs = hb_store_all_docs_sync (cli->store, NULL, error);
  if (docs == NULL)
    return FALSE;

  /* The readable documents are listed even when some are not. */
  print_doc_array (docs, &n_failed, &first_error);
  return report_failed_rows (n_failed, g_steal_pointer (&first_error),
                             "documents could not be read", error);
}

static gboolean
cmd_changes (HbCli *cli, GError **error)
{
  g_autofree char *since_arg = NULL;
  g_autofree char *limit_arg = NULL;
  const GOptionEntry entries[] = { { "since", 0, 0, G_OPTION_ARG_STRING, &since_arg,
                                     "Changes after this sequence (default 0)", "N" },
                                   { "limit", 0, 0, G_OPTION_ARG_STRING, &limit_arg,
                                     "At most N changes (default: all)", "N" },
                                   G_OPTION_ENTRY_NULL };
  g_auto (GStrv) args = parse_command_line (cli, entries, NULL, 0, 0, error);
  g_autoptr (JsonNode) changes = NULL;
  guint64 since = 0, limit = 0;

  if (args == NULL)
    return FALSE;
  if (since_arg != NULL && !parse_uint ("--since", since_arg, 0, G_MAXINT64, &since, error))
    return FALSE;
  if (limit_arg != NULL && !parse_uint ("--limit", limit_arg, 1, G_MAXUINT, &limit, error))
    return FALSE;

  if (!open_store (cli, error))
    return FALSE;
  changes = hb_store_changes_sync (cli->store, since, (guint)limit, NULL, error);
  if (changes == NULL)
    return FALSE;

  print_json (changes);
  return TRUE;
}

/* ---- import --------------------------------------------------------------------------- */

typedef struct
{
  GPtrArray *docs; /* JsonNode, all of one kind of edit */
  GArray *lines;   /* input line of each document, 0 where the input has no lines */
  gboolean new_edits;
  guint imported;
  JsonArray *errors;
  HbStoreError error_kind; /* one kind for every error, or FAILED when they differ */
} Import;

static void
import_clear (Import *import)
{
  g_clear_pointer (&import->docs, g_ptr_array_unref);
  g_clear_pointer (&import->lines, g_array_unref);
  g_clear_pointer (&import->errors, json_array_unref);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Import, import_clear)

static void
import_add_error (Import *import, const char *id, guint line, const char *name, const char *reason)
{
  JsonObject *entry = json_object_new ();
  HbStoreError kind = store_error_for_result (name);

  if (id != NULL)
    json_object_set_string_member (entry, "id", id);
  if (line > 0)
    json_object_set_int_member (entry, "line", line);
  json_object_set_string_member (entry, "error", name);
  json_object_set_string_member (entry, "reason", reason != NULL ? reason : name);

  if (json_array_get_length (import->errors) == 0)
    import->error_kind = kind;
  else if (import->error_kind != kind)
    import->error_kind = HB_STORE_ERROR_FAILED;
  json_array_add_object_element (import->errors, entry);
}

static gboolean
import_flush (HbCli *cli, Import *import, GError **error)
{
  g_autoptr (GPtrArray) results = NULL;

  if (import->docs->len == 0)
    return TRUE;

  results = hb_store_bulk_docs_sync (cli->store, import->docs, import->new_edits, NULL, error);
  if (results == NULL)
    return FALSE;

  for (guint i = 0; i < results->len; i++)
    {
      JsonObject *result = json_node_get_object (g_ptr_array_index (results, i));
      const char *name = object_get_string (result, "error");
      guint line = i < import->lines->len ? g_array_index (import->lines, guint, i) : 0;

      if (name == NULL)
        import->imported++;
      else
        import_add_error (import, object_get_string (result, "id"), line, name,
                          object_get_string (result, "reason"));
    }

  g_ptr_array_set_size (import->docs, 0);
  g_array_set_size (import->lines, 0);
  return TRUE;
}

/* A revision without its history is kept as it is: its history is itself. */
static gboolean
add_revisions_from_rev (JsonObject *doc, const char *rev)
{
  const char *dash = strchr (rev, '-');
  g_autofree char *position = NULL;
  JsonObject *revisions;
  JsonArray *ids;
  guint64 start;

  if (dash == NULL || dash[1] == '\0')
    return FALSE;
  position = g_strndup (rev, dash - rev);
  if (!g_ascii_string_to_unsigned (position, 10, 1, G_MAXINT, &start, NULL))
    return FALSE;

  revisions = json_object_new ();
  ids = json_array_new ();
  json_array_add_string_element (ids, dash + 1);
  json_object_set_int_member (revisions, "start", (gint64)start);
  json_object_set_array_member (revisions, "ids", ids);
  json_object_set_object_member (doc, "_revisions", revisions);
  return TRUE;
}

static gboolean
import_add (HbCli *cli, Import *import, JsonNode *node, guint line, GError **error)
{
  g_autoptr (JsonNode) doc = NULL;
  JsonObject *object;
  const char *rev;
  gboolean new_edits;

  if (!JSON_NODE_HOLDS_OBJECT (node))
    {
      import_add_error (import, NULL, line, "bad_request", "a document must be a JSON object");
      return TRUE;
    }

  doc = json_node_copy (node);
  object = json_node_get_object (doc);
  /* What a CouchDB read adds, not part of the document. */
  json_object_remove_member (object, "_conflicts");
  json_object_remove_member (object, "_deleted_conflicts");
  json_object_remove_member (object, "_revs_info");
  json_object_remove_member (object, "_local_seq");

  rev = object_get_string (object, "_rev");
  new_edits = (rev == NULL);
  if (rev != NULL && !json_object_has_member (object, "_revisions")
      && !add_revisions_from_rev (object, rev))
    {
      import_add_error (import, object_get_string (object, "_id"), line, "bad_request",
                        "invalid _rev");
      return TRUE;
    }

  if (import->docs->len > 0
      && (new_edits != import->new_edits || import->docs->len >= IMPORT_BATCH))
    {
      if (!import_flush (cli, import, error))
        return FALSE;
    }
  import->new_edits = new_edits;
  g_ptr_array_add (import->docs, g_steal_pointer (&doc));
  g_array_append_val (import->lines, line);
  return TRUE;
}

static gboolean
import_ndjson (HbCli *cli, Import *import, const char *text, GError **error)
{
  g_auto (GStrv) lines = g_strsplit (text, "\n", -1);

  for (guint i = 0; lines[i] != NULL; i++)
    {
      g_autoptr (GError) parse_error = NULL;
      g_autoptr (JsonNode) node = NULL;

      g_strstrip (lines[i]);
      if (lines[i][0] == '\0')
        continue;
      node = parse_json (lines[i], -1, &parse_error);
      if (node == NULL)
        import_add_error (import, NULL, i + 1, "bad_request", parse_error->message);
      else if (!import_add (cli, import, node, i + 1, error))
        return FALSE;
    }
  return TRUE;
}

/* A whole JSON value: a CouchDB `_all_docs?include_docs=true` dump, a `_bulk_docs` body, an
 * array of documents, or one document. */
static gboolean
import_value (HbCli *cli, Import *import, JsonNode *root, GError **error)
{
  JsonObject *object = JSON_NODE_HOLDS_OBJECT (root) ? json_node_get_object (root) : NULL;
  JsonArray *array = NULL;
  gboolean rows = FALSE;

  if (JSON_NODE_HOLDS_ARRAY (root))
    array = json_node_get_array (root);
  else if (object != NULL && !json_object_has_member (object, "_id"))
    {
      JsonNode *member = json_object_get_member (object, "rows");

      rows = (member != NULL && JSON_NODE_HOLDS_ARRAY (member));
      if (!rows)
        member = json_object_get_member (object, "docs");
      if (member != NULL && JSON_NODE_HOLDS_ARRAY (member))
        array = json_node_get_array (member);
    }

  if (array == NULL)
    return import_add (cli, import, root, 0, error);

  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonNode *element = json_array_get_element (array, i);
      JsonObject *row;
      JsonNode *doc;

      if (!rows)
        {
          if (!import_add (cli, import, element, 0, error))
            return FALSE;
          continue;
        }

      /* Rows for keys that were not found carry an error; deleted ones carry no doc. */
      row = JSON_NODE_HOLDS_OBJECT (element) ? json_node_get_object (element) : NULL;
      doc = row != NULL ? json_object_get_member (row, "doc") : NULL;
      if (row != NULL && object_get_string (row, "error") != NULL)
        import_add_error (import, object_get_string (row, "key"), 0,
                          object_get_string (row, "error"), object_get_string (row, "reason"));
      else if (row == NULL)
        import_add_error (import, NULL, 0, "bad_request", "a row must be a JSON object");
      else if (doc == NULL || !JSON_NODE_HOLDS_OBJECT (doc))
        import_add_error (import, object_get_string (row, "id"), 0, "bad_request",
                          "the row has no document (was the dump made with include_docs=true?)");
      else if (!import_add (cli, import, doc, 0, error))
        return FALSE;
    }
  return TRUE;
}

static gboolean
parses_alone (const char *line)
{
  g_autoptr (JsonNode) node = parse_json (line, -1, NULL);

  return node != NULL;
}

/* NDJSON has several lines, each a JSON value by itself. A CouchDB dump is one value written one
 * row per line, so its first line alone does not parse; a bad first line in NDJSON does not
 * either, but then the whole does not parse as one value while other lines do. */
static gboolean
looks_like_ndjson (const char *text)
{
  g_auto (GStrv) lines = g_strsplit (text, "\n", -1);
  g_autoptr (GPtrArray) content = g_ptr_array_new ();

  for (guint i = 0; lines[i] != NULL; i++)
    if (g_strstrip (lines[i])[0] != '\0')
      g_ptr_array_add (content, lines[i]);

  if (content->len < 2)
    return FALSE;
  if (parses_alone (g_ptr_array_index (content, 0)))
    return TRUE;
  if (parses_alone (text))
    return FALSE;
  for (guint i = 1; i < content->len; i++)
    if (parses_alone (g_ptr_array_index (content, i)))
      return TRUE;
  return FALSE;
}

static void
print_import_summary (Import *import)
{
  JsonObject *object = json_object_new ();
  g_autoptr (JsonNode) node = node_for_object (object);

  json_object_set_int_member (object, "imported", import->imported);
  json_object_set_array_member (object, "errors", json_array_ref (import->errors));
  print_json (node);
}

static gboolean
cmd_import (HbCli *cli, GError **error)
{
  g_auto (GStrv) args = parse_command_line (cli, NULL, NULL, 1, 1, error);
  g_auto (Import) import = { 0 };
  g_autoptr (GBytes) input = NULL;
  g_autoptr (JsonNode) root = NULL;
  g_autofree char *text = NULL;
  guint n_errors;
  gboolean ok;

  if (args == NULL)
    return FALSE;
  if (!is_stdin (args[0]) && (input = read_input (args[0], error)) == NULL)
    return FALSE;
  if (!open_store (cli, error))
    return FALSE;
  if (input == NULL && (input = read_input (args[0], error)) == NULL)
    return FALSE;

  if (g_bytes_get_size (input) > 0
      && memchr (g_bytes_get_data (input, NULL), '\0', g_bytes_get_size (input)) != NULL)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "%s: the input contains a NUL byte",
                   is_stdin (args[0]) ? "standard input" : args[0]);
      return FALSE;
    }
  text = g_strndup (g_bytes_get_data (input, NULL), g_bytes_get_size (input));
  if (!looks_like_ndjson (text) && (root = parse_json (text, -1, error)) == NULL)
    {
      g_prefix_error (error, "%s: ", is_stdin (args[0]) ? "standard input" : args[0]);
      return FALSE;
    }

  import.docs = g_ptr_array_new_with_free_func ((GDestroyNotify)json_node_unref);
  import.lines = g_array_new (FALSE, FALSE, sizeof (guint));
  import.errors = json_array_new ();
  ok = (root != NULL ? import_value (cli, &import, root, error)
                     : import_ndjson (cli, &import, text, error))
       && import_flush (cli, &import, error);

  /* Whatever was written is reported, even when a batch failed as a whole. */
  print_import_summary (&import);
  if (!ok)
    return FALSE;

  n_errors = json_array_get_length (import.errors);
  if (n_errors > 0)
    {
      g_set_error (error, HB_STORE_ERROR, import.error_kind,
                   "%u of %u documents were not imported; see \"errors\" in the output", n_errors,
                   n_errors + import.imported);
      return FALSE;
    }
  return TRUE;
}

/* ---- export --------------------------------------------------------------------------- */

/* Prints the other leaves of a document (conflicts, deleted conflicts) after its winner, each with
 * its history, so that importing the export rebuilds the same revision tree's leaves. */
static void
export_other_leaves (
    HbCli *cli, const char *id, JsonObject *row, guint *n_failed, GError **first_error)
{
  JsonArray *leaves = json_object_get_array_member (row, "changes");

  for (guint l = 1; leaves != NULL && l < json_array_get_length (leaves); l++)
    {
      const char *rev = object_get_string (json_array_get_object_element (leaves, l), "rev");
      g_autoptr (GError) local_error = NULL;
      g_autoptr (JsonNode) doc = NULL;

      if (rev == NULL)
        continue;
      doc = hb_store_get_sync (cli->store, id, rev, HB_GET_FLAGS_REVISIONS | HB_GET_FLAGS_DELETED,
                               NULL, &local_error);
      if (doc != NULL)
        print_json_line (doc);
      else
        {
          (*n_failed)++;
          if (*first_error == NULL)
            *first_error = g_steal_pointer (&local_error);
        }
    }
}

static gboolean
export_page (HbCli *cli, JsonArray *changes, guint *n_failed, GError **first_error, GError **error)
{
  g_autoptr (GPtrArray) ids = g_ptr_array_new ();
  g_autoptr (GPtrArray) rows = g_ptr_array_new ();
  g_autoptr (GPtrArray) docs = NULL;

  for (guint i = 0; i < json_array_get_length (changes); i++)
    {
      JsonNode *row = json_array_get_element (changes, i);
      const char *id = object_get_string (json_node_get_object (row), "id");

      if (id != NULL)
        {
          g_ptr_array_add (ids, (gpointer)id);
          g_ptr_array_add (rows, json_node_get_object (row));
        }
      else
        check_row (row, n_failed, first_error);
    }
  g_ptr_array_add (ids, NULL);

  docs = hb_store_get_many_sync (cli->store, (const char *const *)ids->pdata,
                                 HB_GET_FLAGS_REVISIONS | HB_GET_FLAGS_DELETED, NULL, error);
  if (docs == NULL)
    return FALSE;

  for (guint i = 0; i < docs->len; i++)
    {
      JsonNode *doc = g_ptr_array_index (docs, i);

      if (!check_row (doc, n_failed, first_error))
        continue;
      print_json_line (doc);
      export_other_leaves (cli, g_ptr_array_index (ids, i), g_ptr_array_index (rows, i), n_failed,
                           first_error);
    }
  return TRUE;
}

static gboolean
cmd_export (HbCli *cli, GError **error)
{
  g_auto (GStrv) args = parse_command_line (cli, NULL, NULL, 0, 0, error);
  g_autoptr (GError) first_error = NULL;
  guint64 since = 0;
  guint n_failed = 0;

  if (args == NULL)
    return FALSE;
  if (!open_store (cli, error))
    return FALSE;

  /* The changes feed names every document once, deleted ones too, so tombstones travel; one
   * unreadable record does not keep the others from being exported. */
  for (;;)
    {
      g_autoptr (JsonNode) changes = NULL;
      JsonObject *object;
      JsonArray *results;

      changes = hb_store_changes_sync (cli->store, since, EXPORT_BATCH, NULL, error);
      if (changes == NULL)
        return FALSE;
      object = json_node_get_object (changes);
      results = json_object_get_array_member (object, "results");
      if (json_array_get_length (results) == 0)
        break;
      if (!export_page (cli, results, &n_failed, &first_error, error))
        return FALSE;
      since = (guint64)json_object_get_int_member (object, "last_seq");
    }

  return report_failed_rows (n_failed, g_steal_pointer (&first_error),
                             "documents could not be exported", error);
}

/* ---- the rest ------------------------------------------------------------------------- */

static gboolean
cmd_stats (HbCli *cli, GError **error)
{
  g_auto (GStrv) args = parse_command_line (cli, NULL, NULL, 0, 0, error);
  g_autoptr (JsonNode) stats = NULL;

  if (args == NULL)
    return FALSE;
  if (!open_store (cli, error))
    return FALSE;
  stats = hb_store_get_stats_sync (cli->store, NULL, error);
  if (stats == NULL)
    return FALSE;

  print_json (stats);
  return TRUE;
}

static gboolean
cmd_change_pin (HbCli *cli, GError **error)
{
  g_auto (KdfOptions) kdf = { 0 };
  g_auto (GStrv) args = parse_command_line (cli, NULL, &kdf, 0, 0, error);
  g_autoptr (HbCliSecret) old_pin = NULL;
  g_autoptr (HbCliSecret) new_pin = NULL;
  g_autoptr (GError) local_error = NULL;

  if (args == NULL)
    return FALSE;
  if (!open_vault (cli, error) || !apply_kdf_options (cli, &kdf, error)
      || !check_attempt_allowed (cli, error))
    return FALSE;

  old_pin = read_secret (cli, "Current PIN: ", "current PIN", error);
  if (old_pin == NULL)
    return FALSE;
  new_pin = read_new_pin (cli, error);
  if (new_pin == NULL)
    return FALSE;

  if (!hb_vault_change_pin_sync (cli->vault, old_pin, new_pin, NULL, &local_error))
    {
      propagate_unlock_error (cli, error, g_steal_pointer (&local_error));
      return FALSE;
    }

  print_ok (NULL, NULL);
  return TRUE;
}

static gboolean
cmd_recover (HbCli *cli, GError **error)
{
  g_auto (KdfOptions) kdf = { 0 };
  g_auto (GStrv) args = parse_command_line (cli, NULL, &kdf, 0, 0, error);
  g_autoptr (HbCliSecret) recovery_key = NULL;
  g_autoptr (HbCliSecret) new_pin = NULL;

  if (args == NULL)
    return FALSE;
  if (!open_vault (cli, error) || !apply_kdf_options (cli, &kdf, error))
    return FALSE;

  recovery_key = read_secret (cli, "Recovery key: ", "recovery key", error);
  if (recovery_key == NULL)
    return FALSE;
  new_pin = read_new_pin (cli, error);
  if (new_pin == NULL)
    return FALSE;

  if (!hb_vault_recover_sync (cli->vault, recovery_key, new_pin, NULL, error))
    return FALSE;

  print_ok (NULL, NULL);
  return TRUE;
}

/* ---- the server: URL, credentials, TLS ------------------------------------------------ */

/* How to reach the server: the options of every command that talks to it. */
typedef struct
{
  char *user;
  char *password_fd;
  gboolean cookie;
  char *token_fd;
  char *ca_file;
  char *pin_sha256;
  gboolean insecure_http;
} ServerOptions;

static void
server_options_clear (ServerOptions *server)
{
  g_clear_pointer (&server->user, g_free);
  g_clear_pointer (&server->password_fd, g_free);
  g_clear_pointer (&server->token_fd, g_free);
  g_clear_pointer (&server->ca_file, g_free);
  g_clear_pointer (&server->pin_sha256, g_free);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (ServerOptions, server_options_clear)

/* Appends a G_OPTION_ENTRY_NULL-terminated list to a zero-terminated GArray of entries. */
static void
append_entries (GArray *all, const GOptionEntry *entries)
{
  for (guint i = 0; entries != NULL && entries[i].long_name != NULL; i++)
    g_array_append_vals (all, &entries[i], 1);
}

static void
append_server_entries (GArray *all, ServerOptions *server)
{
  const GOptionEntry entries[] = {
    { "user", 0, 0, G_OPTION_ARG_STRING, &server->user,
      "Authenticate as this user: HTTP basic, or a cookie session with --cookie", "U" },
    { "password-fd", 0, 0, G_OPTION_ARG_STRING, &server->password_fd,
      "Read the password from this file descriptor (otherwise asked on the terminal)", "N" },
    { "cookie", 0, 0, G_OPTION_ARG_NONE, &server->cookie,
      "Log in once with a CouchDB cookie session (POST /_session) instead of sending the "
      "password with every request",
      NULL },
    { "token-fd", 0, 0, G_OPTION_ARG_STRING, &server->token_fd,
      "Authenticate with a bearer token read from this file descriptor (one line)", "N" },
    { "ca-file", 0, 0, G_OPTION_ARG_FILENAME, &server->ca_file,
      "Trust the certificate authorities in this PEM file instead of the system's", "FILE" },
    { "pin-sha256", 0, 0, G_OPTION_ARG_STRING, &server->pin_sha256,
      "Accept only a server certificate whose DER bytes have this SHA-256 (hex, colons "
      "allowed), on top of the usual verification",
      "HEX" },
    { "insecure-http", 0, 0, G_OPTION_ARG_NONE, &server->insecure_http,
      "Allow plain http to a host other than this machine (clinical data then crosses the "
      "network unencrypted)",
      NULL },
    G_OPTION_ENTRY_NULL,
  };

  append_entries (all, entries);
}

static gboolean
parse_fd (const char *option, const char *text, int *out, GError **error)
{
  guint64 fd;

  if (!parse_uint (option, text, 0, G_MAXINT, &fd, error))
    return FALSE;
  if (fcntl ((int)fd, F_GETFD) < 0)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "%s %d: not an open file descriptor",
                   option, (int)fd);
      return FALSE;
    }
  *out = (int)fd;
  return TRUE;
}

static HbCliSecret *
read_password (HbCli *cli, const char *password_fd, const char *user, GError **error)
{
  g_autofree char *prompt = NULL;
  int fd;

  if (password_fd != NULL)
    {
      if (!parse_fd ("--password-fd", password_fd, &fd, error))
        return NULL;
      return read_secret_line (fd, "password", error);
    }
  prompt = g_strdup_printf ("Password for %s: ", user);
  return ask_on_tty (cli, prompt, "password (or pass --password-fd N)", error);
}

/* The same rule as the sync manager's, checked here so that the mistake is a usage error
 * reported before any secret is asked for. */
static gboolean
is_loopback_host (const char *host)
{
  g_autoptr (GInetAddress) address = NULL;

  if (host == NULL)
    return FALSE;
  if (g_ascii_strcasecmp (host, "localhost") == 0)
    return TRUE;
  address = g_inet_address_new_from_string (host);
  return address != NULL && g_inet_address_get_is_loopback (address);
}

static char *
normalize_fingerprint (const char *text, GError **error)
{
  g_autoptr (GString) hex = g_string_new (NULL);

  for (const char *p = text; *p != '\0'; p++)
    {
      if (*p == ':')
        continue;
      if (!g_ascii_isxdigit (*p))
        {
          g_string_truncate (hex, 0);
          break;
        }
      g_string_append_c (hex, g_ascii_tolower (*p));
    }
  if (hex->len != 64)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                           "--pin-sha256: expected the certificate's SHA-256 as 64 hexadecimal "
                           "digits (colons allowed)");
      return NULL;
    }
  return g_string_free (g_steal_pointer (&hex), FALSE);
}

/* Checks the URL and the server options and reads the password or token, all before the PIN
 * (a mistake costs no PIN attempt; push and pull always read the password first). The secret
 * goes into the configuration, which wipes its copy when finalized; the one read here is wiped
 * on return. */
static HbSyncConfig *
make_sync_config (HbCli *cli, const char *url, const ServerOptions *server, GError **error)
{
  g_autoptr (GError) local_error = NULL;
  g_autoptr (HbRemote) probe = hb_remote_new (url, &local_error);
  g_autoptr (GUri) uri = NULL;
  g_autoptr (HbSyncConfig) config = NULL;
  g_autoptr (HbCliSecret) secret = NULL;
  g_autofree char *fingerprint = NULL;

  if (probe == NULL)
    {
      /* A URL that cannot name a database is the caller's mistake, not the network's. */
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "%s", local_error->message);
      return NULL;
    }
  uri = g_uri_parse (url, G_URI_FLAGS_NONE, NULL);
  if (uri != NULL && g_ascii_strcasecmp (g_uri_get_scheme (uri), "http") == 0
      && !is_loopback_host (g_uri_get_host (uri)) && !server->insecure_http)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                   "plain http to %s would send clinical data unencrypted; use https, or pass "
                   "--insecure-http",
                   g_uri_get_host (uri));
      return NULL;
    }
  if (server->password_fd != NULL && server->user == NULL)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "--password-fd needs --user");
      return NULL;
    }
  if (server->cookie && server->user == NULL)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "--cookie needs --user");
      return NULL;
    }
  if (server->token_fd != NULL && server->user != NULL)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                           "give either --user (password) or --token-fd (bearer token), not both");
      return NULL;
    }
  if (server->pin_sha256 != NULL
      && (fingerprint = normalize_fingerprint (server->pin_sha256, error)) == NULL)
    return NULL;
  if (server->ca_file != NULL && !g_file_test (server->ca_file, G_FILE_TEST_IS_REGULAR))
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "--ca-file %s: no such file",
                   server->ca_file);
      return NULL;
    }

  config = hb_sync_config_new (url);
  if (server->user != NULL)
    {
      secret = read_password (cli, server->password_fd, server->user, error);
      if (secret == NULL)
        return NULL;
      hb_sync_config_set_username (config, server->user);
      hb_sync_config_set_auth_method (config, server->cookie ? HB_AUTH_METHOD_COOKIE
                                                             : HB_AUTH_METHOD_BASIC);
    }
  else if (server->token_fd != NULL)
    {
      int fd;

      if (!parse_fd ("--token-fd", server->token_fd, &fd, error))
        return NULL;
      secret = read_secret_line (fd, "bearer token", error);
      if (secret == NULL)
        return NULL;
      if (secret[0] == '\0')
        {
          g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED,
                               "the bearer token is empty");
          return NULL;
        }
      /* It goes into an HTTP header. */
      for (const char *p = secret; *p != '\0'; p++)
        if (g_ascii_iscntrl (*p))
          {
            g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED,
                                 "the bearer token contains a control character");
            return NULL;
          }
      hb_sync_config_set_auth_method (config, HB_AUTH_METHOD_BEARER);
    }
  if (secret != NULL)
    hb_sync_config_set_secret (config, secret);
  hb_sync_config_set_ca_file (config, server->ca_file);
  hb_sync_config_set_pinned_sha256 (config, fingerprint);
  hb_sync_config_set_allow_insecure_http (config, server->insecure_http);
  return g_steal_pointer (&config);
}

/* Parses a command that talks to the server: its own entries, then the server options. */
static GStrv
parse_server_command (HbCli *cli,
                      const GOptionEntry *entries,
                      ServerOptions *server,
                      guint min_args,
                      guint max_args,
                      GError **error)
{
  g_autoptr (GArray) all = g_array_new (TRUE, TRUE, sizeof (GOptionEntry));

  append_entries (all, entries);
  append_server_entries (all, server);
  return parse_command_line (cli, (const GOptionEntry *)(gpointer)all->data, NULL, min_args,
                             max_args, error);
}

/* Reads the credentials, unlocks the store and builds a manager over it, stopped. The manager
 * makes the connection to the server from the configuration, so that every command reaches the
 * server with the same authentication and TLS settings. */
static HbSyncManager *
connect_server (HbCli *cli,
                const char *url,
                const ServerOptions *server,
                guint batch_size,
                gboolean continuous,
                GError **error)
{
  g_autoptr (HbSyncConfig) config = make_sync_config (cli, url, server, error);

  if (config == NULL)
    return NULL;
  if (batch_size > 0)
    hb_sync_config_set_batch_size (config, batch_size);
  hb_sync_config_set_continuous (config, continuous);
  if (!open_store (cli, error))
    return NULL;
  return hb_sync_manager_new (cli->store, config, error);
}

/* Runs the main loop until *done. */
static void
wait_for (gboolean *done)
{
  while (!*done)
    g_main_context_iteration (NULL, TRUE);
}

static void
set_count_member (JsonObject *object, const char *name, gint64 count)
{
  if (count < 0)
    json_object_set_null_member (object, name);
  else
    json_object_set_int_member (object, name, count);
}

static void
set_string_or_null_member (JsonObject *object, const char *name, const char *value)
{
  if (value == NULL)
    json_object_set_null_member (object, name);
  else
    json_object_set_string_member (object, name, value);
}

static void
set_time_member (JsonObject *object, const char *name, GDateTime *time)
{
  g_autofree char *text = time != NULL ? g_date_time_format_iso8601 (time) : NULL;

  set_string_or_null_member (object, name, text);
}

/* ---- push, pull, sync ----------------------------------------------------------------- */

/* The progress line is redrawn at most this often; the last state is drawn when it is due. */
#define PROGRESS_INTERVAL_US (100 * G_TIME_SPAN_MILLISECOND)

typedef struct
{
  guint64 docs_read;
  guint64 docs_written;
  guint64 failures;
  gint64 pending;
} SyncCounts;

typedef struct
{
  HbCli *cli;
  GMainLoop *loop;
  GCancellable *cancellable;
  HbReplicator *replicator;
  const char *name; /* "push" or "pull" */
  HbReplicationResult *result;
  GError *error;
  gboolean interrupted;
  guint sigint_id, sigterm_id;
  /* The progress line on stderr, when stderr is a terminal. */
  gboolean progress_tty;
  gboolean progress_seen;  /* a progress signal came */
  gboolean progress_shown; /* a line is on screen, the cursor on it */
  gsize progress_len;      /* its length */
  char *progress_text;     /* its text */
  gint64 progress_time;    /* when it was drawn */
  guint progress_id;       /* a redraw that was too soon, waiting */
  SyncCounts counts;       /* the latest counts */
} SyncRun;

static gboolean
on_interrupt (gpointer data)
{
  SyncRun *run = data;

  /* The first ^C stops cleanly at the last checkpoint; with both handlers gone, a second one
   * is the default action. */
  run->interrupted = TRUE;
  g_clear_handle_id (&run->sigint_id, g_source_remove);
  g_clear_handle_id (&run->sigterm_id, g_source_remove);
  g_cancellable_cancel (run->cancellable);
  return G_SOURCE_REMOVE;
}

static guint
terminal_columns (void)
{
  struct winsize size = { 0 };

  if (ioctl (STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0)
    return size.ws_col;
  return 80;
}

/* One line, never wider than the terminal less one column, so that it never wraps: a wrapped
 * line cannot be redrawn from its start with \r. "push [#####.....]  50%  150/300 docs" when the
 * source says how much is left, "pull 150 read, 150 written" when it does not. Done counts the
 * failures too; the total is what was read (and is perhaps still being written) plus what the
 * source still has. Finished: all of it is done. */
static char *
format_progress (const char *name, const SyncCounts *c, gboolean finished, guint columns)
{
  const guint max = columns > 1 ? columns - 1 : 1;
  g_autofree char *failed = c->failures > 0
                                ? g_strdup_printf (", %" G_GUINT64_FORMAT " failed", c->failures)
                                : g_strdup ("");
  GString *line = g_string_new (name);

  if (c->pending >= 0 || finished)
    {
      const guint64 done = c->docs_written + c->failures;
      const guint64 total
          = finished ? done : MAX (c->docs_read, done) + (guint64)MAX (c->pending, 0);
      /* The source's pending is counted from its last page while that page may still be on its
       * way in, so the total can be short for a moment: 100% and a full bar wait for the end. */
      const guint percent = finished ? 100 : total > 0 ? (guint)MIN (done * 100 / total, 99) : 0;
      g_autofree char *tail
          = g_strdup_printf (" %3u%%  %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " docs%s", percent,
                             done, total, failed);
      /* The bar's width is measured on the widest tail, done = total, so that it stays put. */
      g_autofree char *widest
          = g_strdup_printf (" 100%%  %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " docs%s",
                             MAX (done, total), MAX (done, total), failed);
      const gsize room
          = line->len + 3 + strlen (widest) < max ? max - line->len - 3 - strlen (widest) : 0;
      const guint width = MIN (room, 30);

      if (width >= 10)
        {
          const guint filled = finished    ? width
                               : total > 0 ? (guint)MIN (done * width / total, width - 1)
                                           : 0;

          g_string_append (line, " [");
          for (guint i = 0; i < width; i++)
            g_string_append_c (line, i < filled ? '#' : '.');
          g_string_append_c (line, ']');
        }
      g_string_append (line, tail);
    }
  else
    g_string_append_printf (line, " %" G_GUINT64_FORMAT " read, %" G_GUINT64_FORMAT " written%s",
                            c->docs_read, c->docs_written, failed);
  if (line->len > max)
    g_string_truncate (line, max);
  return g_string_free (line, FALSE);
}

static void
draw_progress (SyncRun *run, gboolean finished)
{
  g_autofree char *text = format_progress (run->name, &run->counts, finished, terminal_columns ());
  gsize len = strlen (text);

  g_clear_handle_id (&run->progress_id, g_source_remove);
  if (run->progress_shown && g_strcmp0 (text, run->progress_text) == 0)
    return;
  /* Blanks over what a longer line left; \r and spaces work on any terminal. */
  fprintf (stderr, "\r%s%*s", text, run->progress_len > len ? (int)(run->progress_len - len) : 0,
           "");
  fflush (stderr);
  run->progress_len = len;
  g_free (run->progress_text);
  run->progress_text = g_steal_pointer (&text);
  run->progress_time = g_get_monotonic_time ();
  run->progress_shown = TRUE;
}

static gboolean
on_progress_due (gpointer data)
{
  SyncRun *run = data;

  run->progress_id = 0;
  draw_progress (run, FALSE);
  return G_SOURCE_REMOVE;
}

/* Takes the line off the screen, for a message to go where it was. */
static void
clear_progress (SyncRun *run)
{
  if (!run->progress_shown)
    return;
  fprintf (stderr, "\r%*s\r", (int)run->progress_len, "");
  run->progress_shown = FALSE;
  run->progress_len = 0;
  g_clear_pointer (&run->progress_text, g_free);
}

/* The last line stays, finished with a newline. On success it says that all is done. */
static void
finish_progress (SyncRun *run, const HbReplicationResult *result)
{
  g_clear_handle_id (&run->progress_id, g_source_remove);
  if (run->progress_seen)
    {
      /* A source that never said how much it had gets no bar at the end either. */
      gboolean finished = result != NULL && run->counts.pending >= 0;

      if (result != NULL)
        {
          run->counts.docs_read = result->docs_read;
          run->counts.docs_written = result->docs_written;
          run->counts.failures = result->doc_write_failures;
          if (finished)
            run->counts.pending = 0;
        }
      draw_progress (run, finished);
    }
  if (run->progress_shown)
    fputc ('\n', stderr);
  run->progress_shown = FALSE;
  g_clear_pointer (&run->progress_text, g_free);
}

static void
on_sync_progress (HbReplicator *replicator,
                  guint64 docs_read,
                  guint64 docs_written,
                  guint64 failures,
                  gint64 pending,
                  gpointer data)
{
  SyncRun *run = data;
  gint64 due;

  if (!run->progress_tty)
    return;
  run->progress_seen = TRUE;
  run->counts.docs_read = docs_read;
  run->counts.docs_written = docs_written;
  run->counts.failures = failures;
  run->counts.pending = pending;
  if (!run->progress_shown)
    {
      draw_progress (run, FALSE);
      return;
    }
  /* No faster than anyone reads: a later state waits, and is drawn when due. */
  due = run->progress_time + PROGRESS_INTERVAL_US - g_get_monotonic_time ();
  if (due <= 0)
    draw_progress (run, FALSE);
  else if (run->progress_id == 0)
    run->progress_id = g_timeout_add ((guint)((due + 999) / 1000), on_progress_due, run);
}

static void
on_sync_denied (HbReplicator *replicator,
                const char *id,
                const char *rev,
                const char *error,
                const char *reason,
                gpointer data)
{
  SyncRun *run = data;

  /* Ids are identifiers, not clinical content; the reason is the server's. The message takes
   * the progress line's place; the next progress draws it again under the message. */
  clear_progress (run);
  fprintf (stderr, "hbsync: %s: the server refused %s (%s%s%s)\n", run->name,
           id != NULL ? id : "a document", error, reason != NULL ? ": " : "",
           reason != NULL ? reason : "");
}

static void
on_sync_done (GObject *source, GAsyncResult *result, gpointer data)
{
  SyncRun *run = data;

  run->result = hb_replicator_run_finish (HB_REPLICATOR (source), result, &run->error);
  g_main_loop_quit (run->loop);
}

static JsonNode *
result_to_json (const HbReplicationResult *result)
{
  JsonObject *obj = json_object_new ();

  json_object_set_int_member (obj, "docs_read", (gint64)result->docs_read);
  json_object_set_int_member (obj, "docs_written", (gint64)result->docs_written);
  json_object_set_int_member (obj, "doc_write_failures", (gint64)result->doc_write_failures);
  json_object_set_int_member (obj, "docs_denied", (gint64)result->docs_denied);
  json_object_set_int_member (obj, "missing_checked", (gint64)result->missing_checked);
  json_object_set_int_member (obj, "missing_found", (gint64)result->missing_found);
  json_object_set_int_member (obj, "batches", (gint64)result->batches);
  if (result->last_seq != NULL)
    {
      g_autoptr (JsonParser) parser = json_parser_new ();

      if (json_parser_load_from_data (parser, result->last_seq, -1, NULL))
        json_object_set_member (obj, "last_seq", json_parser_steal_root (parser));
    }
  if (result->replication_id != NULL)
    json_object_set_string_member (obj, "replication_id", result->replication_id);
  return node_for_object (obj);
}

/* ---- sync --continuous ---------------------------------------------------------------- */

typedef struct
{
  GMainLoop *loop;
  HbStore *store;
  GCancellable *cancellable; /* the store watch's */
  guint64 seen_seq;          /* the store's update sequence as last seen here */
  gboolean watching;         /* a look at the store is under way */
  guint watch_id;
  guint sigint_id, sigterm_id;
  gboolean done;
  GError *error;
} Continuous;

static const char *
status_name (HbSyncStatus status)
{
  g_autoptr (GEnumClass) klass = g_type_class_ref (HB_TYPE_SYNC_STATUS);
  GEnumValue *value = g_enum_get_value (klass, status);

  return value != NULL ? value->value_nick : "unknown";
}

static void
print_status_line (HbSyncManager *manager, gboolean final)
{
  JsonObject *object = json_object_new ();
  g_autoptr (JsonNode) node = node_for_object (object);
  g_autoptr (GDateTime) now = g_date_time_new_now_utc ();

  json_object_set_string_member (object, "status",
                                 status_name (hb_sync_manager_get_status (manager)));
  set_count_member (object, "pending_push", hb_sync_manager_get_pending_push (manager));
  set_count_member (object, "pending_pull", hb_sync_manager_get_pending_pull (manager));
  set_string_or_null_member (object, "last_error", hb_sync_manager_get_last_error (manager));
  set_time_member (object, "time", now);
  if (final)
    json_object_set_boolean_member (object, "final", TRUE);
  print_json_line (node);
  /* One line per change, as it happens, whatever reads the pipe. */
  fflush (stdout);
}

static void
on_status_changed (HbSyncManager *manager, HbSyncStatus status, gpointer data)
{
  print_status_line (manager, FALSE);
}

/* HbStore emits "changed" for the writes of this process only. Another process writing the
 * same store (another hbsync, the clinic application) is noticed by looking at the changes
 * feed every --poll-ms, and announced with the store's own signal, so that the manager treats
 * it as it treats any local change: counted, then pushed after its debounce. */
static void
on_store_changed_here (HbStore *store, guint64 update_seq, gpointer data)
{
  Continuous *c = data;

  /* The manager pushes everything up to here on its own. */
  c->seen_seq = MAX (c->seen_seq, update_seq);
}

static void
on_watch_stats (GObject *source, GAsyncResult *result, gpointer data)
{
  Continuous *c = data;
  g_autoptr (JsonNode) stats = hb_store_get_stats_finish (HB_STORE (source), result, NULL);
  gint64 seq;

  c->watching = FALSE;
  if (stats == NULL || g_cancellable_is_cancelled (c->cancellable))
    return;
  seq = json_object_get_int_member_with_default (json_node_get_object (stats), "update_seq", 0);
  if (seq > 0 && (guint64)seq > c->seen_seq)
    g_signal_emit_by_name (c->store, "changed", (guint64)seq);
}

static void
on_watch_changes (GObject *source, GAsyncResult *result, gpointer data)
{
  Continuous *c = data;
  g_autoptr (JsonNode) changes = hb_store_changes_finish (HB_STORE (source), result, NULL);
  JsonArray *rows;

  c->watching = FALSE;
  if (changes == NULL || g_cancellable_is_cancelled (c->cancellable))
    return;
  rows = json_object_get_array_member (json_node_get_object (changes), "results");
  if (rows == NULL || json_array_get_length (rows) == 0)
    return;
  /* Something was written elsewhere: where the store is now. */
  c->watching = TRUE;
  hb_store_get_stats_async (c->store, c->cancellable, on_watch_stats, c);
}

static gboolean
watch_store (gpointer data)
{
  Continuous *c = data;

  if (!c->watching)
    {
      c->watching = TRUE;
      hb_store_changes_async (c->store, c->seen_seq, 1, c->cancellable, on_watch_changes, c);
    }
  return G_SOURCE_CONTINUE;
}

static gboolean
on_continuous_interrupt (gpointer data)
{
  Continuous *c = data;

  /* With both handlers gone, a second signal is the default action. */
  g_clear_handle_id (&c->sigint_id, g_source_remove);
  g_clear_handle_id (&c->sigterm_id, g_source_remove);
  g_main_loop_quit (c->loop);
  return G_SOURCE_REMOVE;
}

static void
on_database_created (GObject *source, GAsyncResult *result, gpointer data)
{
  Continuous *c = data;

  hb_remote_create_database_finish (HB_REMOTE (source), result, &c->error);
  c->done = TRUE;
}

static gboolean
on_drain_timeout (gpointer data)
{
  gboolean *timed_out = data;

  *timed_out = TRUE;
  return G_SOURCE_REMOVE;
}

/* Runs the manager until SIGINT or SIGTERM, one JSON line per status change; takes the
 * manager. */
static gboolean
run_continuous (HbCli *cli, HbSyncManager *manager, gboolean create, guint poll_ms, GError **error)
{
  g_autoptr (GMainLoop) loop = g_main_loop_new (NULL, FALSE);
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  Continuous c = { 0 };
  GWeakRef weak;
  gulong changed_id;
  gboolean timed_out = FALSE;
  guint drain_id;

  c.loop = loop;
  c.store = cli->store;
  c.cancellable = cancellable;
  if (create)
    {
      hb_remote_create_database_async (hb_sync_manager_get_remote (manager), NULL,
                                       on_database_created, &c);
      wait_for (&c.done);
      if (c.error != NULL)
        {
          g_propagate_error (error, c.error);
          g_object_unref (manager);
          return FALSE;
        }
    }

  c.seen_seq = hb_store_get_update_seq (cli->store);
  changed_id = g_signal_connect (cli->store, "changed", G_CALLBACK (on_store_changed_here), &c);
  g_signal_connect (manager, "status-changed", G_CALLBACK (on_status_changed), NULL);
  c.sigint_id = g_unix_signal_add (SIGINT, on_continuous_interrupt, &c);
  c.sigterm_id = g_unix_signal_add (SIGTERM, on_continuous_interrupt, &c);
  if (poll_ms > 0)
    c.watch_id = g_timeout_add (poll_ms, watch_store, &c);

  hb_sync_manager_start (manager);
  g_main_loop_run (loop);

  g_clear_handle_id (&c.watch_id, g_source_remove);
  g_cancellable_cancel (cancellable);
  g_signal_handlers_disconnect_by_func (manager, on_status_changed, NULL);
  /* Running replications are cancelled; each resumes from its last checkpoint next time. */
  hb_sync_manager_stop (manager);
  print_status_line (manager, TRUE);

  /* Cancelled runs end on this main context, each holding the manager until then: let them,
   * so that the store closes with nothing left working on it. */
  g_weak_ref_init (&weak, manager);
  g_object_unref (manager);
  drain_id = g_timeout_add_seconds (10, on_drain_timeout, &timed_out);
  for (;;)
    {
      HbSyncManager *alive = g_weak_ref_get (&weak);

      if (alive == NULL && !c.watching)
        break;
      g_clear_object (&alive);
      if (timed_out)
        {
          fputs ("hbsync: the sync manager did not stop within 10 seconds\n", stderr);
          break;
        }
      g_main_context_iteration (NULL, TRUE);
    }
  if (!timed_out)
    g_source_remove (drain_id);
  g_weak_ref_clear (&weak);
  g_signal_handler_disconnect (cli->store, changed_id);
  return TRUE;
}

/* push, pull or sync: directions[] in order, each run to the end before the next; or, for
 * sync --continuous, the sync manager until interrupted. */
static gboolean
replicate (HbCli *cli,
           const HbReplicationDirection *directions,
           guint n_directions,
           gboolean continuous_allowed,
           GError **error)
{
  g_autofree char *session = NULL;
  g_autofree char *batch_size_arg = NULL;
  g_autofree char *poll_ms_arg = NULL;
  gboolean create = FALSE;
  gboolean continuous = FALSE;
  const GOptionEntry common_entries[] = {
    { "session", 0, 0, G_OPTION_ARG_STRING, &session,
      "Only this clinical session: its document, observations, notes and patient", "ID" },
    { "batch-size", 0, 0, G_OPTION_ARG_STRING, &batch_size_arg, "Documents per batch (default 100)",
      "N" },
    { "create", 0, 0, G_OPTION_ARG_NONE, &create, "Create the server database if missing", NULL },
    G_OPTION_ENTRY_NULL,
  };
  const GOptionEntry continuous_entries[] = {
    { "continuous", 0, 0, G_OPTION_ARG_NONE, &continuous,
      "Keep syncing both ways until SIGINT or SIGTERM, printing one JSON line per status change",
      NULL },
    { "poll-ms", 0, 0, G_OPTION_ARG_STRING, &poll_ms_arg,
      "With --continuous: look for writes by other processes this often (default 1000; 0: "
      "never)",
      "MS" },
    G_OPTION_ENTRY_NULL,
  };
  g_autoptr (GArray) entries = g_array_new (TRUE, TRUE, sizeof (GOptionEntry));
  g_auto (ServerOptions) server = { 0 };
  g_auto (GStrv) args = NULL;
  g_autoptr (HbSyncManager) manager = NULL;
  HbRemote *remote;
  HbSyncCache *cache;
  g_autoptr (GMainLoop) loop = NULL;
  g_autoptr (GCancellable) cancellable = NULL;
  g_autoptr (JsonObject) summary = NULL;
  guint64 batch_size = 100;
  guint64 poll_ms = 1000;
  gboolean ok = TRUE;

  append_entries (entries, common_entries);
  if (continuous_allowed)
    append_entries (entries, continuous_entries);
  args = parse_server_command (cli, (const GOptionEntry *)(gpointer)entries->data, &server, 1, 1,
                               error);
  if (args == NULL)
    return FALSE;
  if (batch_size_arg != NULL
      && !parse_uint ("--batch-size", batch_size_arg, 1, 100000, &batch_size, error))
    return FALSE;
  if (poll_ms_arg != NULL && !continuous)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "--poll-ms needs --continuous");
      return FALSE;
    }
  if (poll_ms_arg != NULL && !parse_uint ("--poll-ms", poll_ms_arg, 0, 3600000, &poll_ms, error))
    return FALSE;
  if (continuous && session != NULL)
    {
      g_set_error_literal (error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE,
                           "--continuous syncs the whole store; it takes no --session");
      return FALSE;
    }

  manager = connect_server (cli, args[0], &server, (guint)batch_size, continuous, error);
  if (manager == NULL)
    return FALSE;
  if (continuous)
    return run_continuous (cli, g_steal_pointer (&manager), create, (guint)poll_ms, error);

  remote = hb_sync_manager_get_remote (manager);
  cache = hb_sync_manager_get_cache (manager);
  loop = g_main_loop_new (NULL, FALSE);
  cancellable = g_cancellable_new ();
  summary = json_object_new ();
  for (guint i = 0; i < n_directions && ok; i++)
    {
      g_autoptr (HbReplicator) replicator
          = hb_replicator_new (cli->store, remote, cache, directions[i]);
      SyncRun run = { 0 };

      run.cli = cli;
      run.loop = loop;
      run.cancellable = cancellable;
      run.replicator = replicator;
      run.name = directions[i] == HB_REPLICATION_DIRECTION_PUSH ? "push" : "pull";
      run.progress_tty = isatty (STDERR_FILENO);
      hb_replicator_set_batch_size (replicator, (guint)batch_size);
      hb_replicator_set_session_id (replicator, session);
      hb_replicator_set_create_target (replicator, create);
      g_signal_connect (replicator, "progress", G_CALLBACK (on_sync_progress), &run);
      g_signal_connect (replicator, "document-denied", G_CALLBACK (on_sync_denied), &run);
      run.sigint_id = g_unix_signal_add (SIGINT, on_interrupt, &run);
      run.sigterm_id = g_unix_signal_add (SIGTERM, on_interrupt, &run);
      hb_replicator_run_async (replicator, cancellable, on_sync_done, &run);
      g_main_loop_run (loop);
      g_clear_handle_id (&run.sigint_id, g_source_remove);
      g_clear_handle_id (&run.sigterm_id, g_source_remove);
      g_signal_handlers_disconnect_by_data (replicator, &run);
      finish_progress (&run, run.error == NULL ? run.result : NULL);

      if (run.error != NULL)
        {
          g_autoptr (HbReplicationResult) partial = hb_replicator_get_last_result (replicator);

          if (partial != NULL)
            json_object_set_member (summary, run.name, result_to_json (partial));
          if (run.interrupted)
            {
              g_clear_error (&run.error);
              g_set_error (&run.error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED,
                           "%s interrupted; the next run resumes from the last checkpoint",
                           run.name);
            }
          else
            g_prefix_error (&run.error, "%s: ", run.name);
          g_propagate_error (error, run.error);
          ok = FALSE;
        }
      else
        {
          json_object_set_member (summary, run.name, result_to_json (run.result));
          hb_replication_result_free (run.result);
        }
    }
  json_object_set_boolean_member (summary, "ok", ok);
  {
    g_autoptr (JsonNode) node = node_for_object (json_object_ref (summary));
    print_json (node);
  }
  return ok;
}

static gboolean
cmd_push (HbCli *cli, GError **error)
{
  const HbReplicationDirection directions[] = { HB_REPLICATION_DIRECTION_PUSH };

  return replicate (cli, directions, G_N_ELEMENTS (directions), FALSE, error);
}

static gboolean
cmd_pull (HbCli *cli, GError **error)
{
  const HbReplicationDirection directions[] = { HB_REPLICATION_DIRECTION_PULL };

  return replicate (cli, directions, G_N_ELEMENTS (directions), FALSE, error);
}

static gboolean
cmd_sync (HbCli *cli, GError **error)
{
  /* Pull first: conflicts meet in the store, and the push then carries both branches. */
  const HbReplicationDirection directions[]
      = { HB_REPLICATION_DIRECTION_PULL, HB_REPLICATION_DIRECTION_PUSH };

  return replicate (cli, directions, G_N_ELEMENTS (directions), TRUE, error);
}

/* ---- status --------------------------------------------------------------------------- */

/* A checkpoint's history entries carry HTTP dates, as CouchDB's do. */
static GDateTime *
parse_http_date (const char *text)
{
  static const char months[12][4]
      = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
  char month[4] = "";
  int day, year, hour, minute, second;

  if (text == NULL
      || sscanf (text, "%*3s, %d %3s %d %d:%d:%d GMT", &day, month, &year, &hour, &minute, &second)
             != 6)
    return NULL;
  for (guint m = 0; m < G_N_ELEMENTS (months); m++)
    if (g_str_equal (month, months[m]))
      return g_date_time_new_utc (year, (int)m + 1, day, hour, minute, second);
  return NULL;
}

typedef struct
{
  char *replication_id;
  JsonNode *seq;   /* where the checkpoint is, or NULL */
  GDateTime *time; /* when it was written, or NULL */
} Checkpoint;

static void
checkpoint_clear (Checkpoint *checkpoint)
{
  g_clear_pointer (&checkpoint->replication_id, g_free);
  g_clear_pointer (&checkpoint->seq, json_node_unref);
  g_clear_pointer (&checkpoint->time, g_date_time_unref);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Checkpoint, checkpoint_clear)

/* The store's side of the checkpoint of the manager's replication in one direction: the same
 * replication id, since it hashes only the store, the URL, the direction and the filter. */
static gboolean
read_checkpoint (HbSyncManager *manager,
                 HbReplicationDirection direction,
                 Checkpoint *out,
                 GError **error)
{
  HbStore *store = hb_sync_manager_get_store (manager);
  g_autoptr (HbReplicator) replicator = hb_replicator_new (
      store, hb_sync_manager_get_remote (manager), hb_sync_manager_get_cache (manager), direction);
  g_autofree char *local_id = NULL;
  g_autoptr (GError) local_error = NULL;
  g_autoptr (JsonNode) log = NULL;
  JsonObject *object;
  JsonNode *history;

  out->replication_id = hb_replicator_get_replication_id (replicator);
  local_id = g_strconcat ("_local/", out->replication_id, NULL);
  log = hb_store_get_local_sync (store, local_id, NULL, &local_error);
  if (log == NULL)
    {
      if (g_error_matches (local_error, HB_STORE_ERROR, HB_STORE_ERROR_NOT_FOUND))
        return TRUE;
      g_propagate_error (error, g_steal_pointer (&local_error));
      return FALSE;
    }
  if (!JSON_NODE_HOLDS_OBJECT (log))
    return TRUE;
  object = json_node_get_object (log);
  if (json_object_has_member (object, "source_last_seq"))
    out->seq = json_node_copy (json_object_get_member (object, "source_last_seq"));
  history = json_object_get_member (object, "history");
  if (history != NULL && JSON_NODE_HOLDS_ARRAY (history)
      && json_array_get_length (json_node_get_array (history)) > 0)
    {
      JsonNode *last = json_array_get_element (json_node_get_array (history), 0);

      if (JSON_NODE_HOLDS_OBJECT (last))
        out->time = parse_http_date (object_get_string (json_node_get_object (last), "end_time"));
    }
  return TRUE;
}

static JsonNode *
checkpoint_to_json (const Checkpoint *checkpoint)
{
  JsonObject *object = json_object_new ();

  json_object_set_string_member (object, "replication_id", checkpoint->replication_id);
  if (checkpoint->seq != NULL)
    json_object_set_member (object, "checkpoint_seq", json_node_copy (checkpoint->seq));
  else
    json_object_set_null_member (object, "checkpoint_seq");
  set_time_member (object, "checkpoint_time", checkpoint->time);
  return node_for_object (object);
}

/* What the manager counts as pending push: the store's changes after the push checkpoint. */
static gint64
count_pending_push (HbStore *store, const Checkpoint *push, GError **error)
{
  g_autoptr (JsonNode) changes = NULL;
  JsonObject *object;
  guint64 since = 0;

  if (push->seq != NULL && JSON_NODE_HOLDS_VALUE (push->seq)
      && json_node_get_value_type (push->seq) == G_TYPE_INT64 && json_node_get_int (push->seq) > 0)
    since = (guint64)json_node_get_int (push->seq);
  changes = hb_store_changes_sync (store, since, 1, NULL, error);
  if (changes == NULL)
    return -1;
  object = json_node_get_object (changes);
  return (gint64)json_array_get_length (json_object_get_array_member (object, "results"))
         + json_object_get_int_member_with_default (object, "pending", 0);
}

#define PENDING_PULL_PAGE 1000
#define PENDING_PULL_PAGES 20

typedef struct
{
  gboolean done;
  HbRemoteChanges *changes;
  GError *error;
} PendingPull;

static void
on_pending_pull (GObject *source, GAsyncResult *result, gpointer data)
{
  PendingPull *p = data;

  p->changes = hb_remote_changes_finish (HB_REMOTE (source), result, &p->error);
  p->done = TRUE;
}

/* The documents of one page of the server's feed that the store lacks a revision of. */
static gint64
count_missing (HbStore *store, HbRemoteChanges *changes, GError **error)
{
  JsonObject *request = json_object_new ();
  g_autoptr (JsonNode) node = node_for_object (request);
  g_autoptr (JsonNode) missing = NULL;

  for (guint i = 0; i < changes->results->len; i++)
    {
      HbRemoteChange *change = g_ptr_array_index (changes->results, i);
      JsonArray *revs = json_array_new ();

      for (guint r = 0; change->revs != NULL && change->revs[r] != NULL; r++)
        json_array_add_string_element (revs, change->revs[r]);
      json_object_set_array_member (request, change->id, revs);
    }
  missing = hb_store_revs_diff_sync (store, node, NULL, error);
  if (missing == NULL)
    return -1;
  return JSON_NODE_HOLDS_OBJECT (missing) ? json_object_get_size (json_node_get_object (missing))
                                          : 0;
}

/* The server's changes after the pull checkpoint that the store does not have yet (the feed
 * also lists what this store pushed, which no pull needs to bring back); -1 with no error when
 * the feed is longer than this command reads. */
static gint64
count_pending_pull (HbSyncManager *manager, const Checkpoint *pull, GError **error)
{
  g_autoptr (JsonNode) since = pull->seq != NULL ? json_node_copy (pull->seq) : NULL;
  gint64 count = 0;

  for (guint page = 0; page < PENDING_PULL_PAGES; page++)
    {
      PendingPull p = { 0 };
      g_autoptr (HbRemoteChanges) changes = NULL;
      gint64 missing;

      hb_remote_changes_async (hb_sync_manager_get_remote (manager), since, PENDING_PULL_PAGE, NULL,
                               FALSE, 0, NULL, on_pending_pull, &p);
      wait_for (&p.done);
      if (p.error != NULL)
        {
          g_propagate_error (error, p.error);
          return -1;
        }
      changes = p.changes;
      if (changes->results->len == 0)
        return count;
      missing = count_missing (hb_sync_manager_get_store (manager), changes, error);
      if (missing < 0)
        return -1;
      count += missing;
      if (changes->pending == 0 || changes->results->len < PENDING_PULL_PAGE
          || changes->last_seq == NULL)
        return count;
      g_clear_pointer (&since, json_node_unref);
      since = json_node_copy (changes->last_seq);
    }
  return -1;
}

static gboolean
cmd_status (HbCli *cli, GError **error)
{
  gboolean local = FALSE;
  const GOptionEntry entries[] = {
    { "local", 0, 0, G_OPTION_ARG_NONE, &local, "Do not ask the server (pending_pull is then null)",
      NULL },
    G_OPTION_ENTRY_NULL,
  };
  g_auto (ServerOptions) server = { 0 };
  g_auto (GStrv) args = parse_server_command (cli, entries, &server, 1, 1, error);
  g_autoptr (HbSyncManager) manager = NULL;
  g_auto (Checkpoint) push = { 0 };
  g_auto (Checkpoint) pull = { 0 };
  g_autoptr (GError) server_error = NULL;
  JsonObject *object;
  g_autoptr (JsonNode) node = NULL;
  gint64 pending_push, pending_pull = -1;
  GDateTime *last_sync = NULL;

  if (args == NULL)
    return FALSE;
  manager = connect_server (cli, args[0], &server, 0, FALSE, error);
  if (manager == NULL)
    return FALSE;
  if (!read_checkpoint (manager, HB_REPLICATION_DIRECTION_PUSH, &push, error)
      || !read_checkpoint (manager, HB_REPLICATION_DIRECTION_PULL, &pull, error))
    return FALSE;
  pending_push = count_pending_push (cli->store, &push, error);
  if (pending_push < 0)
    return FALSE;
  if (!local)
    pending_pull = count_pending_pull (manager, &pull, &server_error);
  /* Both directions have reached their checkpoints: the older of the two times. */
  if (push.time != NULL && pull.time != NULL)
    last_sync = g_date_time_compare (push.time, pull.time) <= 0 ? push.time : pull.time;

  object = json_object_new ();
  node = node_for_object (object);
  json_object_set_string_member (object, "url",
                                 hb_remote_get_url (hb_sync_manager_get_remote (manager)));
  json_object_set_string_member (object, "store_uuid", hb_store_get_uuid (cli->store));
  json_object_set_int_member (object, "update_seq", (gint64)hb_store_get_update_seq (cli->store));
  set_count_member (object, "pending_push", pending_push);
  set_count_member (object, "pending_pull", pending_pull);
  set_time_member (object, "last_sync_time", last_sync);
  json_object_set_member (object, "push", checkpoint_to_json (&push));
  json_object_set_member (object, "pull", checkpoint_to_json (&pull));
  if (server_error != NULL)
    json_object_set_string_member (object, "server_error", server_error->message);
  print_json (node);
  return TRUE;
}

/* ---- diagnose ------------------------------------------------------------------------- */

typedef struct
{
  gboolean done;
  HbSyncDiagnostics *diagnostics;
  GError *error;
} Diagnose;

static void
on_diagnosed (GObject *source, GAsyncResult *result, gpointer data)
{
  Diagnose *d = data;

  d->diagnostics = hb_sync_manager_diagnose_finish (HB_SYNC_MANAGER (source), result, &d->error);
  d->done = TRUE;
}

static gboolean
cmd_diagnose (HbCli *cli, GError **error)
{
  g_auto (ServerOptions) server = { 0 };
  g_auto (GStrv) args = parse_server_command (cli, NULL, &server, 1, 1, error);
  g_autoptr (HbSyncManager) manager = NULL;
  g_autoptr (HbSyncDiagnostics) diagnostics = NULL;
  Diagnose d = { 0 };
  JsonObject *object, *cache;
  g_autoptr (JsonNode) node = NULL;
  gboolean ok;

  if (args == NULL)
    return FALSE;
  manager = connect_server (cli, args[0], &server, 0, FALSE, error);
  if (manager == NULL)
    return FALSE;
  hb_sync_manager_diagnose_async (manager, NULL, on_diagnosed, &d);
  wait_for (&d.done);
  if (d.error != NULL)
    {
      g_propagate_error (error, d.error);
      return FALSE;
    }
  diagnostics = d.diagnostics;

  ok = diagnostics->network_available && diagnostics->server_reachable && diagnostics->tls_ok
       && diagnostics->authenticated && diagnostics->database_present
       && diagnostics->vault_unlocked;
  object = json_object_new ();
  node = node_for_object (object);
  json_object_set_boolean_member (object, "ok", ok);
  json_object_set_boolean_member (object, "network_available", diagnostics->network_available);
  json_object_set_boolean_member (object, "server_reachable", diagnostics->server_reachable);
  json_object_set_boolean_member (object, "tls_ok", diagnostics->tls_ok);
  json_object_set_boolean_member (object, "authenticated", diagnostics->authenticated);
  json_object_set_boolean_member (object, "database_present", diagnostics->database_present);
  json_object_set_boolean_member (object, "vault_unlocked", diagnostics->vault_unlocked);
  cache = json_object_new ();
  json_object_set_int_member (cache, "entries", diagnostics->cache.entries);
  json_object_set_int_member (cache, "unwritten", diagnostics->cache.unwritten);
  json_object_set_int_member (cache, "bytes", (gint64)diagnostics->cache.bytes);
  json_object_set_int_member (cache, "peak_bytes", (gint64)diagnostics->cache.peak_bytes);
  json_object_set_int_member (cache, "hits", (gint64)diagnostics->cache.hits);
  json_object_set_int_member (cache, "misses", (gint64)diagnostics->cache.misses);
  json_object_set_int_member (cache, "evictions", (gint64)diagnostics->cache.evictions);
  json_object_set_int_member (cache, "wipes", (gint64)diagnostics->cache.wipes);
  json_object_set_object_member (object, "cache", cache);
  set_string_or_null_member (object, "last_error", diagnostics->last_error);
  set_string_or_null_member (object, "detail", diagnostics->detail);
  print_json (node);

  if (!ok)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_NETWORK, "diagnose: %s",
                   diagnostics->detail != NULL ? diagnostics->detail
                                               : "a check failed; see the output");
      return FALSE;
    }
  return TRUE;
}

/* ---- session-sync --------------------------------------------------------------------- */

typedef struct
{
  gboolean done;
  gboolean synced;
  GError *error;
} SessionSync;

static void
on_session_synced (GObject *source, GAsyncResult *result, gpointer data)
{
  SessionSync *s = data;

  s->synced
      = hb_sync_manager_ensure_session_synced_finish (HB_SYNC_MANAGER (source), result, &s->error);
  s->done = TRUE;
}

static gboolean
cmd_session_sync (HbCli *cli, GError **error)
{
  g_autofree char *timeout_arg = NULL;
  const GOptionEntry entries[] = {
    { "timeout", 0, 0, G_OPTION_ARG_STRING, &timeout_arg,
      "Give up after this many milliseconds (default 10000)", "MS" },
    G_OPTION_ENTRY_NULL,
  };
  g_auto (ServerOptions) server = { 0 };
  g_auto (GStrv) args = parse_server_command (cli, entries, &server, 2, 2, error);
  g_autoptr (HbSyncManager) manager = NULL;
  SessionSync s = { 0 };
  guint64 timeout_ms = 10000;
  gint64 start;
  JsonObject *object;
  g_autoptr (JsonNode) node = NULL;

  if (args == NULL)
    return FALSE;
  if (timeout_arg != NULL
      && !parse_uint ("--timeout", timeout_arg, 1, 24 * 3600 * 1000, &timeout_ms, error))
    return FALSE;
  manager = connect_server (cli, args[0], &server, 0, FALSE, error);
  if (manager == NULL)
    return FALSE;

  start = g_get_monotonic_time ();
  hb_sync_manager_ensure_session_synced_async (manager, args[1], (guint)timeout_ms, NULL,
                                               on_session_synced, &s);
  wait_for (&s.done);
  if (s.error != NULL)
    {
      g_propagate_error (error, s.error);
      return FALSE;
    }

  object = json_object_new ();
  node = node_for_object (object);
  json_object_set_string_member (object, "session_id", args[1]);
  json_object_set_boolean_member (object, "synced", s.synced);
  json_object_set_int_member (object, "elapsed_ms", (g_get_monotonic_time () - start) / 1000);
  print_json (node);

  if (!s.synced)
    {
      g_set_error (error, HB_CLI_ERROR, HB_CLI_ERROR_NETWORK,
                   "session-sync: %s is not confirmed on the server (timeout %" G_GUINT64_FORMAT
                   " ms)",
                   args[1], timeout_ms);
      return FALSE;
    }
  return TRUE;
}

static const HbCliCommand commands[] = {
  { "init", "", "Create the vault and the store; print the recovery key, once", cmd_init },
  { "put", "[FILE|-]", "Write one JSON document as a new edit (an _id is made if none)", cmd_put },
  { "get", "ID", "Print a document: the winning revision, or --rev", cmd_get },
  { "delete", "ID", "Delete a document (--rev REV required)", cmd_delete },
  { "list", "", "Print every document, or those of one --type, as an array", cmd_list },
  { "changes", "", "Print the changes feed (--since N, --limit N)", cmd_changes },
  { "import", "FILE|-", "Import NDJSON or a CouchDB _all_docs?include_docs=true dump", cmd_import },
  { "export", "", "Print every leaf revision of every document with _revisions (NDJSON)",
    cmd_export },
  { "stats", "", "Print the store's statistics", cmd_stats },
  { "change-pin", "", "Change the PIN (reads the current PIN, then the new one)", cmd_change_pin },
  { "recover", "", "Set a new PIN with the recovery key (reads it, then the new PIN)",
    cmd_recover },
  { "push", "URL", "Replicate the store to a CouchDB database", cmd_push },
  { "pull", "URL", "Replicate a CouchDB database into the store", cmd_pull },
  { "sync", "URL", "Pull, then push: both directions (--continuous: until interrupted)", cmd_sync },
  { "status", "URL", "Print the sync state for a server: pending counts, checkpoints", cmd_status },
  { "diagnose", "URL", "Check network, server, TLS, credentials, database, vault and cache",
    cmd_diagnose },
  { "session-sync", "URL SESSION_ID",
    "Push a clinical session and confirm the server holds all of it (--timeout MS)",
    cmd_session_sync },
};

static char *
describe_commands (void)
{
  GString *text = g_string_new ("Commands:\n");

  for (guint i = 0; i < G_N_ELEMENTS (commands); i++)
    {
      g_autofree char *usage = g_strdup_printf ("%s %s", commands[i].name, commands[i].params);

      /* A long usage takes a line of its own. */
      if (strlen (usage) > 16)
        g_string_append_printf (text, "  %s\n  %-16s %s\n", usage, "", commands[i].summary);
      else
        g_string_append_printf (text, "  %-16s %s\n", usage, commands[i].summary);
    }

  g_string_append (
      text,
      "\n"
      "The PIN is read from --pin-fd N when given, one line per secret (init: the new PIN;\n"
      "change-pin: the current PIN, then the new one; recover: the recovery key, then the new "
      "PIN),\n"
      "otherwise it is asked on the terminal without echo. 'hbsync COMMAND --help' shows the\n"
      "options of a command.\n"
      "\n"
      "The commands that talk to a server (push, pull, sync, status, diagnose, session-sync)\n"
      "authenticate with --user U and a password (--password-fd N, else asked on the "
      "terminal),\n"
      "as a CouchDB cookie session with --cookie, or with a bearer token read from --token-fd "
      "N;\n"
      "--ca-file FILE and --pin-sha256 HEX tighten TLS; plain http is refused except to this\n"
      "machine unless --insecure-http is given. The password is read before the PIN. Secrets\n"
      "are never taken from the command line and never printed.\n"
      "\n"
      "sync --continuous prints one JSON line per status change (status: connecting, syncing,\n"
      "up-to-date, offline, auth-failed, error, disabled) and stops cleanly on SIGINT or "
      "SIGTERM.\n"
      "\n"
      "Exit status:\n"
      "  0  success\n"
      "  1  any other failure\n"
      "  2  usage error\n"
      "  3  wrong PIN, locked out, or too soon after failed attempts\n"
      "  4  not found (document, revision or store)\n"
      "  5  conflict (a stale or missing revision)\n"
      "  6  corrupt record\n"
      "  7  network or server failure (push, pull, sync), a failed check (diagnose),\n"
      "     or a session not confirmed on the server in time (session-sync)\n");
  return g_string_free (text, FALSE);
}

static const HbCliCommand *
find_command (const char *name)
{
  for (guint i = 0; i < G_N_ELEMENTS (commands); i++)
    if (g_str_equal (commands[i].name, name))
      return &commands[i];
  return NULL;
}

static gboolean
parse_global_options (HbCli *cli, char **argv, GError **error)
{
  g_autofree char *description = describe_commands ();
  g_auto (GStrv) args = g_strdupv (argv);
  g_autoptr (GOptionContext) context = NULL;
  const GOptionEntry entries[] = {
    { "version", 0, 0, G_OPTION_ARG_NONE, &cli->show_version, "Print the version and exit", NULL },
    { G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_STRING_ARRAY, &cli->rest, NULL, NULL },
    G_OPTION_ENTRY_NULL,
  };

  context = g_option_context_new ("COMMAND [ARGS…]");
  g_option_context_set_summary (context,
                                "Drive an encrypted HealthBridge Sync store: JSON on standard "
                                "output, errors on standard error.");
  g_option_context_set_description (context, description);
  add_store_options (context, &cli->store_path, &cli->pin_fd_arg);
  g_option_context_add_main_entries (context, entries, NULL);
  /* Options after the command belong to the command. */
  g_option_context_set_strict_posix (context, TRUE);

  return g_option_context_parse_strv (context, &args, error);
}

static int
run (HbCli *cli, char **argv)
{
  g_autoptr (GError) error = NULL;

  if (!parse_global_options (cli, argv, &error))
    return report_error (cli, error);

  if (cli->show_version)
    {
      printf ("hbsync %d.%d.%d\n", HB_MAJOR_VERSION, HB_MINOR_VERSION, HB_MICRO_VERSION);
      return HB_CLI_EXIT_OK;
    }

  if (cli->rest == NULL || cli->rest[0] == NULL)
    {
      g_set_error_literal (&error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "no command given");
      return report_error (cli, error);
    }

  cli->command = find_command (cli->rest[0]);
  if (cli->command == NULL)
    {
      g_set_error (&error, HB_CLI_ERROR, HB_CLI_ERROR_USAGE, "unknown command '%s'", cli->rest[0]);
      return report_error (cli, error);
    }

  if (!cli->command->run (cli, &error))
    return report_error (cli, error);

  if (fflush (stdout) != 0 || ferror (stdout))
    {
      int saved_errno = errno;

      g_set_error (&error, HB_CLI_ERROR, HB_CLI_ERROR_FAILED, "cannot write the output: %s",
                   g_strerror (saved_errno));
      return report_error (cli, error);
    }
  return HB_CLI_EXIT_OK;
}

int
main (int argc, char **argv)
{
  g_autoptr (HbCli) cli = g_new0 (HbCli, 1);

  setlocale (LC_ALL, "");
  g_set_prgname ("hbsync");
  cli->pin_fd = -1;
  cli->tty_fd = -1;

  return run (cli, argv);
}
