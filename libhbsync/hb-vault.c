/* hb-vault.c — the key vault: a PIN, a device secret and a recovery key guarding one data key.
 *
 * Key hierarchy:
 *
 *   DEK        32 random bytes; never on disk unwrapped, only in hb_secure_alloc() memory while
 *              unlocked. Everything the store seals is under subkeys of it (_hb_vault_derive_key).
 *   pin slot   AES-256-GCM(KEK_pin, DEK), KEK_pin = HKDF(Argon2id(PIN, salt), salt = device secret)
 *   recovery   AES-256-GCM(KEK_rec, DEK), KEK_rec = HKDF(recovery key)
 *
 * Changing the PIN re-wraps the DEK under a new KEK and touches nothing else, so no sealed record
 * ever changes. The vault is one row of the table hb_vault inside the store's own SQLite file; the
 * row is not secret (salt, parameters, wrapped keys, the failed-attempt counter) but is bound into
 * each slot's associated data so slots cannot be swapped between vaults.
 */

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <libsecret/secret.h>
#include <sqlite3.h>

#include "hb-enums.h"
#include "hb-vault-private.h"

#define VAULT_FORMAT_VERSION 1
#define VAULT_KEY_ID 1
#define SALT_LEN 16
#define SLOT_LEN (HB_KEY_LEN + HB_SEAL_OVERHEAD)
#define UUID_LEN 36

/* Measured at about 0.33 s on the reference workstation; the issue asks for at least 0.25 s. */
/* 128 MiB, 2 passes: 0.33 s measured where the memory is locked and pre-faulted (root), about
 * 0.5 s where it is not; issue 2 asks for at least 0.25 s. Memory over passes, as RFC 9106
 * advises: memory is what makes guessing on GPUs expensive. */
#define DEFAULT_M_COST_KIB 131072
#define DEFAULT_T_COST 2
#define DEFAULT_PARALLELISM 1

/* Bounds on parameters read back from the file, so a tampered row cannot make unlock allocate
 * terabytes or spin for hours; it is reported corrupt instead. */
#define MAX_M_COST_KIB (4u * 1024 * 1024)
#define MAX_T_COST 64
#define MAX_PARALLELISM 16

/* Failures allowed before the escalating delay starts; failure n > FREE_ATTEMPTS then costs
 * 2^(n - FREE_ATTEMPTS - 1) seconds, so 1, 2, 4, 8, 16, 32 s before the lockout at 10. */
#define FREE_ATTEMPTS 3

#define MIN_PIN_DIGITS 6
#define MIN_PASSPHRASE_CHARS 8

/* 256 bits plus 4 check bits in base32: 52 characters, shown in groups of 4. */
#define RECOVERY_CHARS 52
#define RECOVERY_GROUP 4
#define RECOVERY_TEXT_LEN (RECOVERY_CHARS + RECOVERY_CHARS / RECOVERY_GROUP - 1)

#define BUSY_TIMEOUT_MS 10000

#define PIN_KEK_INFO "hbsync-1 pin kek"
#define RECOVERY_KEK_INFO "hbsync-1 recovery kek"
#define PIN_SLOT_LABEL "hbsync-1 pin-slot"
#define RECOVERY_SLOT_LABEL "hbsync-1 recovery-slot"
#define SUBKEY_INFO_PREFIX "hbsync-1 "

#define NO_SECRET_SERVICE_HINT                                                                     \
  "Make sure a Secret Service (such as gnome-keyring) runs in this session with its default "      \
  "keyring unlocked, or opt out by creating the vault with HB_VAULT_FLAGS_NO_DEVICE_SECRET, "      \
  "which lets the store file alone be attacked offline"

struct _HbVault
{
  GObject parent_instance;

  char *path;

  /* Guards dek and key_id: the store derives subkeys from worker threads while the owner may
   * lock at any moment. */
  GMutex mutex;
  guint8 *dek;
  guint key_id;
  /* Bumped by every hb_vault_lock(): an operation started before a lock must not unlock. */
  guint lock_generation;

  /* The rest is touched only on the owner's thread. */
  guint failed_attempts;
  double last_unlock_seconds;
  guint32 m_cost_kib;
  guint32 t_cost;
  guint32 parallelism;
  HbVaultClockFunc clock_func;
  gpointer clock_data;
};

G_DEFINE_FINAL_TYPE (HbVault, hb_vault, G_TYPE_OBJECT)

/* clang-format off */
G_DEFINE_QUARK (hb-vault-error-quark, hb_vault_error)
/* clang-format on */

enum
{
  PROP_0,
  PROP_PATH,
  PROP_LOCKED,
  PROP_FAILED_ATTEMPTS,
  N_PROPS
};

static GParamSpec *properties[N_PROPS];

static const SecretSchema device_secret_schema = {
  "org.healthbridge.Sync.DeviceSecret",
  SECRET_SCHEMA_NONE,
  {
      { "vault-uuid", SECRET_SCHEMA_ATTRIBUTE_STRING },
      { NULL, 0 },
  },
};

/* ------------------------------------------------------------------------------------------ */
/* Key material scratch space                                                                 */

/* Every intermediate secret of one operation, in one locked, wiped allocation. */
typedef struct
{
  guint8 device_secret[HB_KEY_LEN];
  guint8 stretched[HB_KEY_LEN];
  guint8 kek[HB_KEY_LEN];
  guint8 recovery[HB_KEY_LEN];
} Scratch;

static Scratch *
scratch_new (void)
{
  return hb_secure_alloc (sizeof (Scratch));
}

static void
scratch_free (Scratch *s)
{
  hb_secure_free (s, sizeof *s);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (Scratch, scratch_free)

static char *
secure_strdup (const char *s)
{
  gsize len = strlen (s);
  char *copy = hb_secure_alloc (len + 1);

  memcpy (copy, s, len);
  return copy;
}

static void
secure_strfree (char *s)
{
  if (s != NULL)
    hb_secure_free (s, strlen (s) + 1);
}

static void
dek_free (guint8 *dek)
{
  hb_secure_free (dek, HB_KEY_LEN);
}

/* The recovery key is handed to the caller as an ordinary string, but one that was never
 * consumed should not linger in freed heap memory. */
static void
wiping_free (gpointer str)
{
  if (str != NULL)
    hb_wipe (str, strlen (str));
  g_free (str);
}

/* ------------------------------------------------------------------------------------------ */
/* PIN rule and recovery key encoding                                                          */

static gboolean
check_new_pin (const char *pin, GError **error)
{
  gboolean all_digits = TRUE;
  glong chars;

  if (!g_utf8_validate (pin, -1, NULL))
    {
      g_set_error_literal (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WEAK_PIN,
                           "The PIN is not valid UTF-8 text");
      return FALSE;
    }
  for (const char *p = pin; *p != '\0'; p++)
    all_digits = all_digits && g_ascii_isdigit (*p);
  chars = g_utf8_strlen (pin, -1);

  /* Digits only come from a keypad and have 10 choices per position; anything else is a
   * passphrase, which needs more length to be worth its Argon2id cost per guess. */
  if (all_digits && chars < MIN_PIN_DIGITS)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WEAK_PIN, "A PIN needs at least %d digits",
                   MIN_PIN_DIGITS);
      return FALSE;
    }
  if (!all_digits && chars < MIN_PASSPHRASE_CHARS)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WEAK_PIN,
                   "A passphrase needs at least %d characters", MIN_PASSPHRASE_CHARS);
      return FALSE;
    }
  return TRUE;
}

static const char base32_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/* RFC 4648 base32 without padding. The 4 bits left over in the last character carry a check
 * nibble (the top of SHA-256 over the key), so most typing mistakes are reported as a malformed
 * key instead of a wrong one. */
static char *
recovery_key_encode (const guint8 key[HB_KEY_LEN])
{
  guint8 buf[HB_KEY_LEN + 1];
  guint8 digest[32];
  char *out = g_malloc (RECOVERY_TEXT_LEN + 1);
  char *o = out;

  memcpy (buf, key, HB_KEY_LEN);
  hb_sha256 (key, HB_KEY_LEN, digest);
  buf[HB_KEY_LEN] = digest[0] & 0xf0;
  for (guint i = 0; i < RECOVERY_CHARS; i++)
    {
      guint bit = i * 5, byte = bit / 8, shift = 11 - bit % 8;
      guint window = (guint)buf[byte] << 8 | (byte + 1 < sizeof buf ? buf[byte + 1] : 0);

      if (i > 0 && i % RECOVERY_GROUP == 0)
        *o++ = '-';
      *o++ = base32_alphabet[(window >> shift) & 0x1f];
    }
  *o = '\0';
  hb_wipe (buf, sizeof buf);
  hb_wipe (digest, sizeof digest);
  return out;
}

static gboolean
recovery_key_decode (const char *text, guint8 out[HB_KEY_LEN], GError **error)
{
  guint8 buf[HB_KEY_LEN + 1] = { 0 };
  guint8 digest[32];
  guint n = 0;
  gboolean ok = TRUE;

  for (const char *p = text; *p != '\0' && ok; p++)
    {
      char c = g_ascii_toupper (*p);
      guint value, bit, shift, window;

      if (c == '-' || g_ascii_isspace (c))
        continue;
      if (c >= 'A' && c <= 'Z')
        value = c - 'A';
      else if (c >= '2' && c <= '7')
        value = c - '2' + 26;
      else
        {
          g_set_error_literal (
              error, HB_VAULT_ERROR, HB_VAULT_ERROR_BAD_RECOVERY_KEY,
              "A recovery key holds only the letters A to Z and the digits 2 to 7");
          ok = FALSE;
          break;
        }
      if (n == RECOVERY_CHARS)
        {
          n++;
          break;
        }
      bit = n * 5;
      shift = 11 - bit % 8;
      window = value << shift;
      buf[bit / 8] |= window >> 8;
      if (bit / 8 + 1 < sizeof buf)
        buf[bit / 8 + 1] |= window & 0xff;
      n++;
    }
  if (ok && n != RECOVERY_CHARS)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_BAD_RECOVERY_KEY,
                   "A recovery key has %d letters and digits, in groups of %d", RECOVERY_CHARS,
                   RECOVERY_GROUP);
      ok = FALSE;
    }
  if (ok)
    {
      hb_sha256 (buf, HB_KEY_LEN, digest);
      if ((digest[0] & 0xf0) != buf[HB_KEY_LEN])
        {
          g_set_error_literal (error, HB_VAULT_ERROR, HB_VAULT_ERROR_BAD_RECOVERY_KEY,
                               "The recovery key has a typing mistake; check it and try again");
          ok = FALSE;
        }
      hb_wipe (digest, sizeof digest);
    }
  if (ok)
    memcpy (out, buf, HB_KEY_LEN);
  hb_wipe (buf, sizeof buf);
  return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* Key derivation and slots                                                                   */

static gboolean
derive_pin_kek (const char *pin,
                const guint8 salt[SALT_LEN],
                guint32 m_cost_kib,
                guint32 t_cost,
                guint32 parallelism,
                const guint8 *device_secret,
                Scratch *s,
                GError **error)
{
  /* NFC, so a passphrase typed with composed or decomposed accents is the same passphrase. */
  g_autofree char *nfc = g_utf8_normalize (pin, -1, G_NORMALIZE_NFC);
  const char *secret = nfc != NULL ? nfc : pin;
  gboolean ok;

  /* The device secret is the HKDF salt: without the Secret Service's copy, a stolen file's
   * PIN slot cannot be attacked offline however short the PIN is. */
  ok = hb_argon2id (secret, strlen (secret), salt, SALT_LEN, t_cost, m_cost_kib, parallelism,
                    s->stretched, HB_KEY_LEN, error)
       && hb_hkdf (s->stretched, HB_KEY_LEN, device_secret, device_secret ? HB_KEY_LEN : 0,
                   PIN_KEK_INFO, s->kek, HB_KEY_LEN, error);
  hb_wipe (s->stretched, HB_KEY_LEN);
  if (nfc != NULL)
    hb_wipe (nfc, strlen (nfc));
  return ok;
}

/* The recovery KEK deliberately does not mix in the device secret: the recovery key exists for
 * the day the keyring is lost (new login password, reinstalled workstation), and 256 random bits
 * need no help against offline guessing. For the same reason recovery attempts are neither
 * counted nor delayed. */
static gboolean
derive_recovery_kek (Scratch *s, GError **error)
{
  return hb_hkdf (s->recovery, HB_KEY_LEN, NULL, 0, RECOVERY_KEK_INFO, s->kek, HB_KEY_LEN, error);
}

/* How a PIN slot's key is derived; bound into the slot so the row cannot be edited to change it
 * (for instance to drop the device secret before a recovery re-wraps the key without it). */
typedef struct
{
  const guint8 *salt;
  guint32 m_cost_kib;
  guint32 t_cost;
  guint32 parallelism;
} SlotKdf;

static void
append_u32 (GByteArray *ad, guint32 v)
{
  guint8 be[4] = { v >> 24, v >> 16, v >> 8, v };

  g_byte_array_append (ad, be, sizeof be);
}

/* Binds a slot to its purpose, its vault, its key generation, whether the device secret is part
 * of its key and, for the PIN slot, the KDF parameters and salt. */
static GBytes *
slot_ad (const char *label,
         const char *uuid,
         guint key_id,
         gboolean uses_device_secret,
         const SlotKdf *kdf)
{
  GByteArray *ad = g_byte_array_new ();
  guint8 flag = uses_device_secret ? 1 : 0;

  g_byte_array_append (ad, (const guint8 *)label, strlen (label) + 1);
  g_byte_array_append (ad, (const guint8 *)uuid, strlen (uuid) + 1);
  append_u32 (ad, key_id);
  append_u32 (ad, VAULT_FORMAT_VERSION);
  g_byte_array_append (ad, &flag, 1);
  if (kdf != NULL)
    {
      g_byte_array_append (ad, (const guint8 *)"argon2id", 9);
      append_u32 (ad, kdf->m_cost_kib);
      append_u32 (ad, kdf->t_cost);
      append_u32 (ad, kdf->parallelism);
      g_byte_array_append (ad, kdf->salt, SALT_LEN);
    }
  return g_byte_array_free_to_bytes (ad);
}

static GBytes *
slot_seal (const guint8 kek[HB_KEY_LEN],
           const guint8 dek[HB_KEY_LEN],
           const char *label,
           const char *uuid,
           guint key_id,
           gboolean uses_device_secret,
           const SlotKdf *kdf,
           GError **error)
{
  g_autoptr (GBytes) ad = slot_ad (label, uuid, key_id, uses_device_secret, kdf);
  g_autoptr (GError) local_error = NULL;
  GBytes *slot;

  slot = hb_seal (kek, dek, HB_KEY_LEN, g_bytes_get_data (ad, NULL), g_bytes_get_size (ad),
                  &local_error);
  if (slot == NULL)
    g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED, "Cannot wrap the data key: %s",
                 local_error->message);
  return slot;
}

/* Returns the DEK in secure memory, or NULL. A NULL without an error means the key was wrong
 * (or the slot altered; AES-GCM cannot tell the two apart). */
static guint8 *
slot_open (const guint8 kek[HB_KEY_LEN],
           const guint8 slot[SLOT_LEN],
           const char *label,
           const char *uuid,
           guint key_id,
           gboolean uses_device_secret,
           const SlotKdf *kdf,
           GError **error)
{
  g_autoptr (GBytes) ad = slot_ad (label, uuid, key_id, uses_device_secret, kdf);
  g_autoptr (GError) local_error = NULL;
  guint8 *dek = hb_secure_alloc (HB_KEY_LEN);
  gsize len = 0;

  /* Straight into locked memory: the data key never passes through the ordinary heap. */
  if (!hb_open_into (kek, slot, SLOT_LEN, g_bytes_get_data (ad, NULL), g_bytes_get_size (ad), dek,
                     HB_KEY_LEN, &len, &local_error))
    {
      dek_free (dek);
      if (local_error != NULL)
        g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED, "Cannot unwrap the data key: %s",
                     local_error->message);
      return NULL;
    }
  if (len != HB_KEY_LEN)
    {
      dek_free (dek);
      g_set_error_literal (error, HB_VAULT_ERROR, HB_VAULT_ERROR_CORRUPT,
                           "The wrapped data key has the wrong length");
      return NULL;
    }
  return dek;
}

/* ------------------------------------------------------------------------------------------ */
/* Device secret (Secret Service)                                                              */

static gboolean
is_cancelled (const GError *error)
{
  return g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
}

static gboolean
device_secret_store (const char *uuid,
                     const guint8 secret[HB_KEY_LEN],
                     GCancellable *cancellable,
                     GError **error)
{
  g_autoptr (GError) local_error = NULL;
  g_autofree char *label = g_strdup_printf ("HealthBridge Sync device secret (vault %s)", uuid);
  char b64[64];
  int state = 0, save = 0;
  gsize len;
  gboolean ok;

  /* Encoded on the stack so that the only copies are ours (wiped here) and libsecret's
   * non-pageable one. */
  len = g_base64_encode_step (secret, HB_KEY_LEN, FALSE, b64, &state, &save);
  len += g_base64_encode_close (FALSE, b64 + len, &state, &save);
  b64[len] = '\0';
  ok = secret_password_store_sync (&device_secret_schema, SECRET_COLLECTION_DEFAULT, label, b64,
                                   cancellable, &local_error, "vault-uuid", uuid, NULL);
  hb_wipe (b64, sizeof b64);
  hb_wipe (&save, sizeof save);
  if (ok)
    return TRUE;
  if (is_cancelled (local_error))
    g_propagate_error (error, g_steal_pointer (&local_error));
  else
    g_set_error (
        error, HB_VAULT_ERROR, HB_VAULT_ERROR_NO_SECRET_SERVICE,
        "The Secret Service could not keep the vault's device secret (%s). " NO_SECRET_SERVICE_HINT,
        local_error->message);
  return FALSE;
}

/* Fills out[] and returns TRUE; or FALSE with HB_VAULT_ERROR_DEVICE_SECRET_MISSING (no error
 * from the service, but no secret) or HB_VAULT_ERROR_NO_SECRET_SERVICE. */
static gboolean
device_secret_lookup (const char *uuid,
                      guint8 out[HB_KEY_LEN],
                      GCancellable *cancellable,
                      GError **error)
{
  g_autoptr (GError) local_error = NULL;
  char *b64;
  gsize len = 0;

  /* Non-pageable so the secret never reaches swap; secret_password_free() wipes it. */
  b64 = secret_password_lookup_nonpageable_sync (&device_secret_schema, cancellable, &local_error,
                                                 "vault-uuid", uuid, NULL);
  if (local_error != NULL)
    {
      if (is_cancelled (local_error))
        g_propagate_error (error, g_steal_pointer (&local_error));
      else
        g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NO_SECRET_SERVICE,
                     "The Secret Service holding the vault's device secret does not answer (%s), "
                     "and the PIN cannot be checked without it",
                     local_error->message);
      return FALSE;
    }
  if (b64 == NULL)
    {
      g_set_error_literal (error, HB_VAULT_ERROR, HB_VAULT_ERROR_DEVICE_SECRET_MISSING,
                           "The Secret Service holds no device secret for this vault, so the PIN "
                           "cannot unlock it on this device; the recovery key still does");
      return FALSE;
    }
  g_base64_decode_inplace (b64, &len);
  if (len == HB_KEY_LEN)
    memcpy (out, b64, HB_KEY_LEN);
  secret_password_free (b64);
  if (len != HB_KEY_LEN)
    {
      g_set_error_literal (error, HB_VAULT_ERROR, HB_VAULT_ERROR_CORRUPT,
                           "The device secret in the Secret Service is damaged; the recovery key "
                           "still unlocks the vault");
      return FALSE;
    }
  return TRUE;
}

static void
device_secret_clear (const char *uuid)
{
  g_autoptr (GError) error = NULL;

  if (!secret_password_clear_sync (&device_secret_schema, NULL, &error, "vault-uuid", uuid, NULL)
      && error != NULL)
    g_warning ("Cannot remove the unused device secret of vault %s: %s", uuid, error->message);
}

/* ------------------------------------------------------------------------------------------ */
/* SQLite                                                                                     */

G_DEFINE_AUTOPTR_CLEANUP_FUNC (sqlite3, sqlite3_close_v2)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (sqlite3_stmt, sqlite3_finalize)

typedef struct
{
  char uuid[UUID_LEN + 1];
  guint32 m_cost_kib;
  guint32 t_cost;
  guint32 parallelism;
  guint8 salt[SALT_LEN];
  gboolean uses_device_secret;
  guint key_id;
  guint8 pin_slot[SLOT_LEN];
  guint8 recovery_slot[SLOT_LEN];
  guint failed_attempts;
  gint64 last_failure_at;
} VaultRow;

static void
set_db_error (GError **error, sqlite3 *db, const char *path, const char *what)
{
  int code = db != NULL ? sqlite3_errcode (db) & 0xff : SQLITE_NOMEM;
  HbVaultError kind = HB_VAULT_ERROR_FAILED;

  if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
    kind = HB_VAULT_ERROR_CORRUPT;
  g_set_error (error, HB_VAULT_ERROR, kind, "%s (%s): %s", what, path,
               db != NULL ? sqlite3_errmsg (db) : "out of memory");
}

static gboolean
db_exec (sqlite3 *db, const char *path, const char *sql, GError **error)
{
  if (sqlite3_exec (db, sql, NULL, NULL, NULL) == SQLITE_OK)
    return TRUE;
  set_db_error (error, db, path, "Cannot update the vault");
  return FALSE;
}

static void
db_rollback (sqlite3 *db)
{
  if (!sqlite3_get_autocommit (db))
    sqlite3_exec (db, "ROLLBACK", NULL, NULL, NULL);
}

static sqlite3 *
db_open (const char *path, gboolean create, GError **error)
{
  g_autoptr (sqlite3) db = NULL;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);

  /* One short-lived connection per operation: nothing is shared between threads, and the store
   * keeps its own connections to the same file. synchronous=FULL makes a counted attempt durable
   * at COMMIT, before the derivation starts. */
  if (sqlite3_open_v2 (path, &db, flags, NULL) != SQLITE_OK)
    {
      set_db_error (error, db, path, "Cannot open the vault");
      return NULL;
    }
  sqlite3_extended_result_codes (db, 1);
  sqlite3_busy_timeout (db, BUSY_TIMEOUT_MS);
  if (sqlite3_exec (db,
                    "PRAGMA journal_mode=WAL;"
                    "PRAGMA synchronous=FULL;"
                    "PRAGMA temp_store=MEMORY;",
                    NULL, NULL, NULL)
      != SQLITE_OK)
    {
      set_db_error (error, db, path, "Cannot open the vault");
      return NULL;
    }
  return g_steal_pointer (&db);
}

static gboolean
db_has_table (sqlite3 *db, const char *path, gboolean *out_has, GError **error)
{
  g_autoptr (sqlite3_stmt) stmt = NULL;
  int rc;

  if (sqlite3_prepare_v2 (db,
                          "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'hb_vault'",
                          -1, &stmt, NULL)
      != SQLITE_OK)
    {
      set_db_error (error, db, path, "Cannot read the vault");
      return FALSE;
    }
  rc = sqlite3_step (stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    {
      set_db_error (error, db, path, "Cannot read the vault");
      return FALSE;
    }
  *out_has = rc == SQLITE_ROW;
  return TRUE;
}

static gboolean
column_blob (sqlite3_stmt *stmt, int col, guint8 *out, gsize len)
{
  if (sqlite3_column_type (stmt, col) != SQLITE_BLOB
      || (gsize)sqlite3_column_bytes (stmt, col) != len)
    return FALSE;
  memcpy (out, sqlite3_column_blob (stmt, col), len);
  return TRUE;
}

static gboolean
vault_read_row (sqlite3 *db, const char *path, VaultRow *row, GError **error)
{
  g_autoptr (sqlite3_stmt) stmt = NULL;
  const char *uuid, *kdf;
  gint64 version, m, t, p, key_id, failed;
  gboolean has_table = FALSE;
  const char *damage = NULL;
  int rc;

  if (!db_has_table (db, path, &has_table, error))
    return FALSE;
  if (!has_table)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND, "%s holds no vault", path);
      return FALSE;
    }
  if (sqlite3_prepare_v2 (db,
                          "SELECT format_version, vault_uuid, kdf, kdf_m_cost_kib, kdf_t_cost, "
                          "kdf_parallelism, kdf_salt, uses_device_secret, key_id, pin_slot, "
                          "recovery_slot, failed_attempts, last_failure_at "
                          "FROM hb_vault WHERE id = 1",
                          -1, &stmt, NULL)
      != SQLITE_OK)
    {
      set_db_error (error, db, path, "Cannot read the vault");
      return FALSE;
    }
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_DONE)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND, "%s holds no vault", path);
      return FALSE;
    }
  if (rc != SQLITE_ROW)
    {
      set_db_error (error, db, path, "Cannot read the vault");
      return FALSE;
    }

  version = sqlite3_column_int64 (stmt, 0);
  if (version > VAULT_FORMAT_VERSION)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED,
                   "The vault in %s was written by a newer version of HealthBridge Sync "
                   "(format %" G_GINT64_FORMAT ")",
                   path, version);
      return FALSE;
    }
  memset (row, 0, sizeof *row);
  uuid = (const char *)sqlite3_column_text (stmt, 1);
  kdf = (const char *)sqlite3_column_text (stmt, 2);
  m = sqlite3_column_int64 (stmt, 3);
  t = sqlite3_column_int64 (stmt, 4);
  p = sqlite3_column_int64 (stmt, 5);
  key_id = sqlite3_column_int64 (stmt, 8);
  failed = sqlite3_column_int64 (stmt, 11);

  if (version < 1)
    damage = "format version";
  else if (uuid == NULL || strlen (uuid) != UUID_LEN)
    damage = "vault id";
  else if (g_strcmp0 (kdf, "argon2id") != 0)
    damage = "key derivation";
  else if (p < 1 || p > MAX_PARALLELISM || t < 1 || t > MAX_T_COST || m < 8 * p
           || m > MAX_M_COST_KIB)
    damage = "key derivation parameters";
  else if (!column_blob (stmt, 6, row->salt, SALT_LEN))
    damage = "salt";
  else if (key_id < 1 || key_id > G_MAXUINT32)
    damage = "key id";
  else if (!column_blob (stmt, 9, row->pin_slot, SLOT_LEN))
    damage = "PIN slot";
  else if (!column_blob (stmt, 10, row->recovery_slot, SLOT_LEN))
    damage = "recovery slot";
  else if (failed < 0)
    damage = "failed-attempt counter";
  if (damage != NULL)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_CORRUPT,
                   "The vault record in %s is damaged (%s)", path, damage);
      return FALSE;
    }

  memcpy (row->uuid, uuid, UUID_LEN + 1);
  row->m_cost_kib = m;
  row->t_cost = t;
  row->parallelism = p;
  row->uses_device_secret = sqlite3_column_int64 (stmt, 7) != 0;
  row->key_id = key_id;
  row->failed_attempts = MIN (failed, HB_VAULT_MAX_FAILED_ATTEMPTS);
  row->last_failure_at = sqlite3_column_int64 (stmt, 12);
  return TRUE;
}

static gboolean
db_step_done (sqlite3 *db, sqlite3_stmt *stmt, const char *path, GError **error)
{
  if (sqlite3_step (stmt) == SQLITE_DONE)
    return TRUE;
  set_db_error (error, db, path, "Cannot update the vault");
  return FALSE;
}

static gboolean
db_prepare (sqlite3 *db, const char *path, const char *sql, sqlite3_stmt **stmt, GError **error)
{
  if (sqlite3_prepare_v2 (db, sql, -1, stmt, NULL) == SQLITE_OK)
    return TRUE;
  set_db_error (error, db, path, "Cannot update the vault");
  return FALSE;
}

static gboolean
db_rewind_failure_time (sqlite3 *db, const char *path, gint64 now, GError **error)
{
  g_autoptr (sqlite3_stmt) stmt = NULL;

  if (!db_prepare (db, path,
                   "UPDATE hb_vault SET last_failure_at = ?1 WHERE id = 1 AND last_failure_at > ?1",
                   &stmt, error))
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, now);
  return db_step_done (db, stmt, path, error);
}

/* After a right PIN: forgets the attempts counted up to and including this one, and keeps any
 * that another process counted meanwhile (they were made after this attempt began). */
static gboolean
db_forget_attempts (sqlite3 *db, const char *path, guint counted, GError **error)
{
  g_autoptr (sqlite3_stmt) stmt = NULL;

  if (!db_prepare (db, path,
                   "UPDATE hb_vault SET failed_attempts = max (failed_attempts - ?1, 0),"
                   " last_failure_at = CASE WHEN failed_attempts > ?1 THEN last_failure_at"
                   " ELSE 0 END WHERE id = 1",
                   &stmt, error))
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, counted);
  return db_step_done (db, stmt, path, error);
}

static gboolean
db_set_counter (sqlite3 *db, const char *path, guint failed, gint64 at, GError **error)
{
  g_autoptr (sqlite3_stmt) stmt = NULL;

  if (!db_prepare (db, path,
                   "UPDATE hb_vault SET failed_attempts = ?1, last_failure_at = ?2 WHERE id = 1",
                   &stmt, error))
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, failed);
  sqlite3_bind_int64 (stmt, 2, at);
  return db_step_done (db, stmt, path, error);
}

/* Replaces the PIN slot and its derivation inputs, and nothing else: no other column and no other
 * table is written, which is what makes a PIN change leave every sealed record untouched.
 * expected_slot guards against a concurrent change from another process. */
static gboolean
db_set_pin_slot (sqlite3 *db,
                 const char *path,
                 const guint8 salt[SALT_LEN],
                 guint32 m_cost_kib,
                 guint32 t_cost,
                 guint32 parallelism,
                 GBytes *slot,
                 const guint8 expected_slot[SLOT_LEN],
                 gboolean reset_counter,
                 GError **error)
{
  g_autoptr (sqlite3_stmt) stmt = NULL;

  if (!db_prepare (db, path,
                   reset_counter
                       ? "UPDATE hb_vault SET kdf = 'argon2id', kdf_m_cost_kib = ?1, "
                         "kdf_t_cost = ?2, kdf_parallelism = ?3, kdf_salt = ?4, pin_slot = ?5, "
                         "failed_attempts = 0, last_failure_at = 0 "
                         "WHERE id = 1 AND pin_slot = ?6"
                       : "UPDATE hb_vault SET kdf = 'argon2id', kdf_m_cost_kib = ?1, "
                         "kdf_t_cost = ?2, kdf_parallelism = ?3, kdf_salt = ?4, pin_slot = ?5 "
                         "WHERE id = 1 AND pin_slot = ?6",
                   &stmt, error))
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, m_cost_kib);
  sqlite3_bind_int64 (stmt, 2, t_cost);
  sqlite3_bind_int64 (stmt, 3, parallelism);
  sqlite3_bind_blob (stmt, 4, salt, SALT_LEN, SQLITE_TRANSIENT);
  sqlite3_bind_blob (stmt, 5, g_bytes_get_data (slot, NULL), g_bytes_get_size (slot),
                     SQLITE_TRANSIENT);
  sqlite3_bind_blob (stmt, 6, expected_slot, SLOT_LEN, SQLITE_TRANSIENT);
  if (!db_step_done (db, stmt, path, error))
    return FALSE;
  if (sqlite3_changes (db) != 1)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED,
                   "The PIN of the vault in %s was changed meanwhile by another process", path);
      return FALSE;
    }
  return TRUE;
}

/* ------------------------------------------------------------------------------------------ */
/* Attempt counter and delay                                                                  */

/* When the next PIN attempt is allowed: 0 for now, G_MAXINT64 for never (locked out). */
static gint64
compute_retry_after (guint failed, gint64 last_failure_at, gint64 now)
{
  gint64 retry;

  if (failed >= HB_VAULT_MAX_FAILED_ATTEMPTS)
    return G_MAXINT64;
  if (failed <= FREE_ATTEMPTS)
    return 0;
  /* A clock that went backwards must not stretch the delay to the old time: count from now. */
  if (now < last_failure_at)
    last_failure_at = now;
  retry = last_failure_at + ((gint64)G_USEC_PER_SEC << (failed - FREE_ATTEMPTS - 1));
  return retry > now ? retry : 0;
}

static gboolean
check_attempt_allowed (const VaultRow *row, gint64 now, GError **error)
{
  gint64 retry = compute_retry_after (row->failed_attempts, row->last_failure_at, now);

  if (retry == G_MAXINT64)
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED_OUT,
                   "The PIN is blocked after %d wrong attempts; unlock with the recovery key",
                   HB_VAULT_MAX_FAILED_ATTEMPTS);
      return FALSE;
    }
  if (retry != 0)
    {
      gint64 seconds = (retry - now + G_USEC_PER_SEC - 1) / G_USEC_PER_SEC;

      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_TOO_SOON,
                   "Too many wrong PINs; try again in %" G_GINT64_FORMAT " second%s", seconds,
                   seconds == 1 ? "" : "s");
      return FALSE;
    }
  return TRUE;
}

static void
set_wrong_pin_error (GError **error, guint failed, gint64 now)
{
  guint left = HB_VAULT_MAX_FAILED_ATTEMPTS - MIN (failed, HB_VAULT_MAX_FAILED_ATTEMPTS);
  gint64 retry = compute_retry_after (failed, now, now);

  if (left == 0)
    g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN,
                 "Wrong PIN; no attempts left: only the recovery key unlocks the vault now");
  else if (retry != 0)
    g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN,
                 "Wrong PIN; %u attempt%s left, the next one after %" G_GINT64_FORMAT " s", left,
                 left == 1 ? "" : "s", (retry - now) / G_USEC_PER_SEC);
  else
    g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN, "Wrong PIN; %u attempt%s left",
                 left, left == 1 ? "" : "s");
}

/* ------------------------------------------------------------------------------------------ */
/* Operations                                                                                 */

typedef enum
{
  OP_CREATE,
  OP_UNLOCK,
  OP_CHANGE_PIN,
  OP_RECOVER,
} OpKind;

/* One create/unlock/change-pin/recover, self-contained so it can run in a worker thread without
 * touching the HbVault; its results are applied on the owner's thread by vault_apply(). */
typedef struct
{
  OpKind kind;
  char *path;
  HbVaultClockFunc clock_func;
  gpointer clock_data;
  guint32 m_cost_kib;
  guint32 t_cost;
  guint32 parallelism;
  HbVaultFlags flags;
  char *secret;     /* PIN, old PIN or recovery key; secure memory */
  char *new_secret; /* new PIN; secure memory */

  guint8 *dek; /* set on success; secure memory */
  guint key_id;
  gboolean counter_known;
  guint failed_attempts;
  gboolean derived;
  double derive_seconds;
  char *recovery_key;
  guint lock_generation;
} VaultOp;

static VaultOp *
op_new (HbVault *self, OpKind kind, const char *secret, const char *new_secret)
{
  VaultOp *op = g_new0 (VaultOp, 1);

  op->kind = kind;
  op->path = g_strdup (self->path);
  op->clock_func = self->clock_func;
  op->clock_data = self->clock_data;
  op->m_cost_kib = self->m_cost_kib;
  op->t_cost = self->t_cost;
  op->parallelism = self->parallelism;
  op->secret = secret ? secure_strdup (secret) : NULL;
  op->new_secret = new_secret ? secure_strdup (new_secret) : NULL;
  g_mutex_lock (&self->mutex);
  op->lock_generation = self->lock_generation;
  g_mutex_unlock (&self->mutex);
  return op;
}

static void
op_free (VaultOp *op)
{
  g_free (op->path);
  secure_strfree (op->secret);
  secure_strfree (op->new_secret);
  dek_free (op->dek);
  wiping_free (op->recovery_key);
  g_free (op);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (VaultOp, op_free)

static gint64
op_now (VaultOp *op)
{
  return op->clock_func ? op->clock_func (op->clock_data) : g_get_real_time ();
}

static gboolean
op_derive_pin_kek (VaultOp *op,
                   const char *pin,
                   const guint8 salt[SALT_LEN],
                   guint32 m_cost_kib,
                   guint32 t_cost,
                   guint32 parallelism,
                   gboolean use_device_secret,
                   Scratch *s,
                   GError **error)
{
  gint64 start = g_get_monotonic_time ();
  gboolean ok = derive_pin_kek (pin, salt, m_cost_kib, t_cost, parallelism,
                                use_device_secret ? s->device_secret : NULL, s, error);

  op->derived = TRUE;
  op->derive_seconds = (double)(g_get_monotonic_time () - start) / G_USEC_PER_SEC;
  return ok;
}

/* Does nothing when the file holds no vault; EXISTS when it does. */
static gboolean
ensure_no_vault (const char *path, GError **error)
{
  g_autoptr (sqlite3) db = NULL;
  g_autoptr (GError) local_error = NULL;
  VaultRow row;

  if (!g_file_test (path, G_FILE_TEST_EXISTS))
    return TRUE;
  db = db_open (path, FALSE, error);
  if (db == NULL)
    return FALSE;
  if (vault_read_row (db, path, &row, &local_error))
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_EXISTS, "%s already holds a vault", path);
      return FALSE;
    }
  if (g_error_matches (local_error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND))
    return TRUE;
  g_propagate_error (error, g_steal_pointer (&local_error));
  return FALSE;
}

/* Creates the file owner-only before SQLite does, since it will hold clinical data. */
static gboolean
precreate_file (const char *path, gboolean *out_created, GError **error)
{
  int fd = g_open (path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  int saved_errno = errno;

  *out_created = fd >= 0;
  if (fd >= 0)
    {
      close (fd);
      return TRUE;
    }
  if (saved_errno == EEXIST)
    return TRUE;
  g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED, "Cannot create %s: %s", path,
               g_strerror (saved_errno));
  return FALSE;
}

static void
remove_created_file (const char *path)
{
  static const char *const suffixes[] = { "", "-wal", "-shm", "-journal" };

  for (gsize i = 0; i < G_N_ELEMENTS (suffixes); i++)
    {
      g_autofree char *name = g_strconcat (path, suffixes[i], NULL);
      g_unlink (name);
    }
}

static gboolean
db_insert_vault (sqlite3 *db,
                 const char *path,
                 const VaultOp *op,
                 const char *uuid,
                 const guint8 salt[SALT_LEN],
                 gboolean uses_device_secret,
                 GBytes *pin_slot,
                 GBytes *recovery_slot,
                 GError **error)
{
  g_autoptr (sqlite3_stmt) stmt = NULL;

  if (!db_exec (db, path, "BEGIN IMMEDIATE", error))
    return FALSE;
  if (!db_exec (db, path,
                "CREATE TABLE IF NOT EXISTS hb_vault ("
                " id INTEGER PRIMARY KEY CHECK (id = 1),"
                " format_version INTEGER NOT NULL,"
                " vault_uuid TEXT NOT NULL,"
                " kdf TEXT NOT NULL,"
                " kdf_m_cost_kib INTEGER NOT NULL,"
                " kdf_t_cost INTEGER NOT NULL,"
                " kdf_parallelism INTEGER NOT NULL,"
                " kdf_salt BLOB NOT NULL,"
                " uses_device_secret INTEGER NOT NULL,"
                " key_id INTEGER NOT NULL,"
                " pin_slot BLOB NOT NULL,"
                " recovery_slot BLOB NOT NULL,"
                " failed_attempts INTEGER NOT NULL DEFAULT 0,"
                " last_failure_at INTEGER NOT NULL DEFAULT 0)",
                error)
      || !db_prepare (db, path,
                      "INSERT INTO hb_vault (id, format_version, vault_uuid, kdf, kdf_m_cost_kib, "
                      "kdf_t_cost, kdf_parallelism, kdf_salt, uses_device_secret, key_id, "
                      "pin_slot, recovery_slot, failed_attempts, last_failure_at) "
                      "VALUES (1, ?1, ?2, 'argon2id', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, 0)",
                      &stmt, error))
    {
      db_rollback (db);
      return FALSE;
    }
  sqlite3_bind_int64 (stmt, 1, VAULT_FORMAT_VERSION);
  sqlite3_bind_text (stmt, 2, uuid, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64 (stmt, 3, op->m_cost_kib);
  sqlite3_bind_int64 (stmt, 4, op->t_cost);
  sqlite3_bind_int64 (stmt, 5, op->parallelism);
  sqlite3_bind_blob (stmt, 6, salt, SALT_LEN, SQLITE_TRANSIENT);
  sqlite3_bind_int64 (stmt, 7, uses_device_secret);
  sqlite3_bind_int64 (stmt, 8, VAULT_KEY_ID);
  sqlite3_bind_blob (stmt, 9, g_bytes_get_data (pin_slot, NULL), g_bytes_get_size (pin_slot),
                     SQLITE_TRANSIENT);
  sqlite3_bind_blob (stmt, 10, g_bytes_get_data (recovery_slot, NULL),
                     g_bytes_get_size (recovery_slot), SQLITE_TRANSIENT);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    {
      /* Another process created a vault between our check and now. */
      if ((sqlite3_extended_errcode (db)) == SQLITE_CONSTRAINT_PRIMARYKEY)
        g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_EXISTS, "%s already holds a vault",
                     path);
      else
        set_db_error (error, db, path, "Cannot write the vault");
      db_rollback (db);
      return FALSE;
    }
  if (!db_exec (db, path, "COMMIT", error))
    {
      db_rollback (db);
      return FALSE;
    }
  return TRUE;
}

static gboolean
op_create (VaultOp *op, GCancellable *cancellable, GError **error)
{
  g_autoptr (Scratch) s = scratch_new ();
  g_autofree char *uuid = NULL;
  g_autoptr (GBytes) pin_slot = NULL;
  g_autoptr (GBytes) recovery_slot = NULL;
  g_autoptr (sqlite3) db = NULL;
  g_autoptr (GError) local_error = NULL;
  gboolean use_device_secret = !(op->flags & HB_VAULT_FLAGS_NO_DEVICE_SECRET);
  gboolean created_file = FALSE;
  guint8 *dek = NULL;
  guint8 salt[SALT_LEN];
  SlotKdf kdf = { salt, op->m_cost_kib, op->t_cost, op->parallelism };

  if (!check_new_pin (op->secret, error)
      || g_cancellable_set_error_if_cancelled (cancellable, error)
      || !ensure_no_vault (op->path, error))
    return FALSE;

  uuid = hb_random_uuid ();
  dek = hb_secure_alloc (HB_KEY_LEN);
  if (!hb_random_key (dek, HB_KEY_LEN, &local_error)
      || !hb_random_key (s->recovery, HB_KEY_LEN, &local_error)
      || !hb_random_bytes (salt, SALT_LEN, &local_error)
      || (use_device_secret && !hb_random_key (s->device_secret, HB_KEY_LEN, &local_error)))
    {
      dek_free (dek);
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED, "%s", local_error->message);
      return FALSE;
    }

  /* The Secret Service comes first: when it does not answer, nothing has touched the disk. */
  if (use_device_secret && !device_secret_store (uuid, s->device_secret, cancellable, error))
    {
      dek_free (dek);
      return FALSE;
    }

  if (!op_derive_pin_kek (op, op->secret, salt, op->m_cost_kib, op->t_cost, op->parallelism,
                          use_device_secret, s, error)
      || !(pin_slot = slot_seal (s->kek, dek, PIN_SLOT_LABEL, uuid, VAULT_KEY_ID, use_device_secret,
                                 &kdf, error))
      || !derive_recovery_kek (s, error)
      || !(recovery_slot = slot_seal (s->kek, dek, RECOVERY_SLOT_LABEL, uuid, VAULT_KEY_ID,
                                      use_device_secret, NULL, error))
      || !precreate_file (op->path, &created_file, error) || !(db = db_open (op->path, TRUE, error))
      || !db_insert_vault (db, op->path, op, uuid, salt, use_device_secret, pin_slot, recovery_slot,
                           error))
    {
      dek_free (dek);
      if (use_device_secret)
        device_secret_clear (uuid);
      if (created_file)
        {
          g_clear_pointer (&db, sqlite3_close_v2);
          remove_created_file (op->path);
        }
      return FALSE;
    }

  op->recovery_key = recovery_key_encode (s->recovery);
  op->dek = dek;
  op->key_id = VAULT_KEY_ID;
  op->counter_known = TRUE;
  op->failed_attempts = 0;
  return TRUE;
}

/* Verifies a PIN against the vault's PIN slot and returns the DEK in secure memory.
 *
 * The attempt is counted and committed before Argon2id runs, so that killing the process during
 * the derivation (when a guess's outcome is about to be known) cannot give the attempt back; a
 * right PIN sets the counter back to zero afterwards. Refusals that need no guess (locked out,
 * too soon, device secret unavailable) are not counted. On return *row holds the vault row and,
 * if the vault uses one, s->device_secret the device secret, for a caller that re-wraps. */
static guint8 *
verify_pin (VaultOp *op,
            sqlite3 *db,
            const char *pin,
            VaultRow *row,
            Scratch *s,
            GCancellable *cancellable,
            GError **error)
{
  g_autoptr (GError) local_error = NULL;
  char uuid[UUID_LEN + 1];
  gint64 now;
  guint8 *dek;

  if (!vault_read_row (db, op->path, row, error))
    return NULL;
  op->counter_known = TRUE;
  op->failed_attempts = row->failed_attempts;
  now = op_now (op);

  /* Persist a clock that went backwards, so the delay counted from now can actually elapse. */
  if (row->failed_attempts > 0 && now < row->last_failure_at)
    {
      /* Only the time: the count may have moved since it was read. */
      if (!db_rewind_failure_time (db, op->path, now, error))
        return NULL;
      row->last_failure_at = now;
    }
  if (!check_attempt_allowed (row, now, error))
    return NULL;
  if (row->uses_device_secret
      && !device_secret_lookup (row->uuid, s->device_secret, cancellable, error))
    return NULL;
  if (g_cancellable_set_error_if_cancelled (cancellable, error))
    return NULL;

  memcpy (uuid, row->uuid, sizeof uuid);
  if (!db_exec (db, op->path, "BEGIN IMMEDIATE", error))
    return NULL;
  /* Read again under the write lock: another process may have counted an attempt meanwhile. */
  if (!vault_read_row (db, op->path, row, error) || !check_attempt_allowed (row, now, error))
    {
      db_rollback (db);
      return NULL;
    }
  if (strcmp (uuid, row->uuid) != 0)
    {
      db_rollback (db);
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED,
                   "The vault in %s was replaced during the attempt", op->path);
      return NULL;
    }
  if (!db_set_counter (db, op->path, row->failed_attempts + 1, now, error)
      || !db_exec (db, op->path, "COMMIT", error))
    {
      db_rollback (db);
      return NULL;
    }
  op->failed_attempts = row->failed_attempts + 1;

  if (!op_derive_pin_kek (op, pin, row->salt, row->m_cost_kib, row->t_cost, row->parallelism,
                          row->uses_device_secret, s, error))
    return NULL;
  {
    SlotKdf kdf = { row->salt, row->m_cost_kib, row->t_cost, row->parallelism };

    dek = slot_open (s->kek, row->pin_slot, PIN_SLOT_LABEL, row->uuid, row->key_id,
                     row->uses_device_secret, &kdf, &local_error);
  }
  hb_wipe (s->kek, HB_KEY_LEN);
  if (dek == NULL)
    {
      if (local_error != NULL)
        g_propagate_error (error, g_steal_pointer (&local_error));
      else
        set_wrong_pin_error (error, op->failed_attempts, now);
      return NULL;
    }
  if (!db_forget_attempts (db, op->path, op->failed_attempts, error))
    {
      dek_free (dek);
      return NULL;
    }
  op->failed_attempts = 0;
  return dek;
}

static gboolean
op_unlock (VaultOp *op, GCancellable *cancellable, GError **error)
{
  g_autoptr (Scratch) s = scratch_new ();
  g_autoptr (sqlite3) db = NULL;
  VaultRow row;

  if (g_cancellable_set_error_if_cancelled (cancellable, error))
    return FALSE;
  if (!g_file_test (op->path, G_FILE_TEST_EXISTS))
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND, "%s holds no vault", op->path);
      return FALSE;
    }
  db = db_open (op->path, FALSE, error);
  if (db == NULL)
    return FALSE;
  op->dek = verify_pin (op, db, op->secret, &row, s, cancellable, error);
  if (op->dek == NULL)
    return FALSE;
  op->key_id = row.key_id;
  return TRUE;
}

/* Wraps dek under new_pin with a fresh salt and the configured parameters, writing only the PIN
 * slot columns. */
static gboolean
rewrap_pin_slot (VaultOp *op,
                 sqlite3 *db,
                 const guint8 dek[HB_KEY_LEN],
                 const char *new_pin,
                 const VaultRow *row,
                 Scratch *s,
                 gboolean reset_counter,
                 GError **error)
{
  g_autoptr (GBytes) slot = NULL;
  g_autoptr (GError) local_error = NULL;
  guint8 salt[SALT_LEN];
  gboolean ok;

  if (!hb_random_bytes (salt, SALT_LEN, &local_error))
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED, "%s", local_error->message);
      return FALSE;
    }
  ok = derive_pin_kek (new_pin, salt, op->m_cost_kib, op->t_cost, op->parallelism,
                       row->uses_device_secret ? s->device_secret : NULL, s, error);
  if (ok)
    {
      SlotKdf kdf = { salt, op->m_cost_kib, op->t_cost, op->parallelism };

      /* row->uses_device_secret was authenticated by the slot just opened (PIN or recovery). */
      slot = slot_seal (s->kek, dek, PIN_SLOT_LABEL, row->uuid, row->key_id,
                        row->uses_device_secret, &kdf, error);
    }
  hb_wipe (s->kek, HB_KEY_LEN);
  return slot != NULL
         && db_set_pin_slot (db, op->path, salt, op->m_cost_kib, op->t_cost, op->parallelism, slot,
                             row->pin_slot, reset_counter, error);
}

static gboolean
op_change_pin (VaultOp *op, GCancellable *cancellable, GError **error)
{
  g_autoptr (Scratch) s = scratch_new ();
  g_autoptr (sqlite3) db = NULL;
  VaultRow row;
  guint8 *dek;

  /* A weak new PIN is refused before the old one is tried, so it costs no attempt. */
  if (!check_new_pin (op->new_secret, error)
      || g_cancellable_set_error_if_cancelled (cancellable, error))
    return FALSE;
  if (!g_file_test (op->path, G_FILE_TEST_EXISTS))
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND, "%s holds no vault", op->path);
      return FALSE;
    }
  db = db_open (op->path, FALSE, error);
  if (db == NULL)
    return FALSE;
  dek = verify_pin (op, db, op->secret, &row, s, cancellable, error);
  if (dek == NULL)
    return FALSE;
  if (!rewrap_pin_slot (op, db, dek, op->new_secret, &row, s, FALSE, error))
    {
      dek_free (dek);
      return FALSE;
    }
  op->dek = dek;
  op->key_id = row.key_id;
  return TRUE;
}

static gboolean
op_recover (VaultOp *op, GCancellable *cancellable, GError **error)
{
  g_autoptr (Scratch) s = scratch_new ();
  g_autoptr (sqlite3) db = NULL;
  g_autoptr (GError) local_error = NULL;
  VaultRow row;
  guint8 *dek;

  if (!check_new_pin (op->new_secret, error)
      || !recovery_key_decode (op->secret, s->recovery, error)
      || g_cancellable_set_error_if_cancelled (cancellable, error))
    return FALSE;
  if (!g_file_test (op->path, G_FILE_TEST_EXISTS))
    {
      g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND, "%s holds no vault", op->path);
      return FALSE;
    }
  db = db_open (op->path, FALSE, error);
  if (db == NULL || !vault_read_row (db, op->path, &row, error) || !derive_recovery_kek (s, error))
    return FALSE;

  dek = slot_open (s->kek, row.recovery_slot, RECOVERY_SLOT_LABEL, row.uuid, row.key_id,
                   row.uses_device_secret, NULL, &local_error);
  hb_wipe (s->kek, HB_KEY_LEN);
  if (dek == NULL)
    {
      if (local_error != NULL)
        g_propagate_error (error, g_steal_pointer (&local_error));
      else
        g_set_error_literal (error, HB_VAULT_ERROR, HB_VAULT_ERROR_WRONG_PIN, "Wrong recovery key");
      return FALSE;
    }

  /* Recovery is what one does after losing the keyring, so a missing device secret is replaced
   * by a fresh one; an unreachable Secret Service still fails, rather than silently dropping the
   * device secret from the vault. */
  if (row.uses_device_secret
      && !device_secret_lookup (row.uuid, s->device_secret, cancellable, &local_error))
    {
      if (!g_error_matches (local_error, HB_VAULT_ERROR, HB_VAULT_ERROR_DEVICE_SECRET_MISSING)
          && !g_error_matches (local_error, HB_VAULT_ERROR, HB_VAULT_ERROR_CORRUPT))
        {
          g_propagate_error (error, g_steal_pointer (&local_error));
          dek_free (dek);
          return FALSE;
        }
      g_clear_error (&local_error);
      if (!hb_random_key (s->device_secret, HB_KEY_LEN, &local_error))
        {
          g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED, "%s", local_error->message);
          dek_free (dek);
          return FALSE;
        }
      if (!device_secret_store (row.uuid, s->device_secret, cancellable, error))
        {
          dek_free (dek);
          return FALSE;
        }
    }

  if (!rewrap_pin_slot (op, db, dek, op->new_secret, &row, s, TRUE, error))
    {
      dek_free (dek);
      return FALSE;
    }
  op->dek = dek;
  op->key_id = row.key_id;
  op->counter_known = TRUE;
  op->failed_attempts = 0;
  return TRUE;
}

static gboolean
op_run (VaultOp *op, GCancellable *cancellable, GError **error)
{
  switch (op->kind)
    {
      case OP_CREATE:
        return op_create (op, cancellable, error);
      case OP_UNLOCK:
        return op_unlock (op, cancellable, error);
      case OP_CHANGE_PIN:
        return op_change_pin (op, cancellable, error);
      case OP_RECOVER:
        return op_recover (op, cancellable, error);
      default:
        g_assert_not_reached ();
    }
}

/* Installs what an operation produced. Runs on the owner's thread, so "notify" is emitted
 * where the object lives. */
static void
vault_apply (HbVault *self, VaultOp *op)
{
  gboolean was_locked, now_locked, counter_changed = FALSE;

  g_mutex_lock (&self->mutex);
  was_locked = self->dek == NULL;
  /* A lock that came while this operation ran wins: its key is dropped, its count kept. */
  if (op->dek != NULL && op->lock_generation == self->lock_generation)
    {
      g_clear_pointer (&self->dek, dek_free);
      self->dek = g_steal_pointer (&op->dek);
      self->key_id = op->key_id;
    }
  now_locked = self->dek == NULL;
  g_mutex_unlock (&self->mutex);

  if (op->counter_known && op->failed_attempts != self->failed_attempts)
    {
      self->failed_attempts = op->failed_attempts;
      counter_changed = TRUE;
    }
  if (op->derived)
    self->last_unlock_seconds = op->derive_seconds;

  if (was_locked != now_locked)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_LOCKED]);
  if (counter_changed)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_FAILED_ATTEMPTS]);
}

static gboolean
vault_run_sync (HbVault *self, VaultOp *op, GCancellable *cancellable, GError **error)
{
  gboolean ok = op_run (op, cancellable, error);

  vault_apply (self, op);
  return ok;
}

static void
op_thread (GTask *task, gpointer source_object, gpointer task_data, GCancellable *cancellable)
{
  GError *error = NULL;

  if (op_run (task_data, cancellable, &error))
    g_task_return_boolean (task, TRUE);
  else
    g_task_return_error (task, error);
}

static void
op_thread_done (GObject *source, GAsyncResult *result, gpointer user_data)
{
  HbVault *self = HB_VAULT (source);
  g_autoptr (GTask) task = user_data;
  VaultOp *op = g_task_get_task_data (G_TASK (result));
  GError *error = NULL;

  /* Applied even on failure: a wrong PIN still changed the counter. */
  vault_apply (self, op);
  if (!g_task_propagate_boolean (G_TASK (result), &error))
    g_task_return_error (task, error);
  else if (op->kind == OP_CREATE)
    g_task_return_pointer (task, g_steal_pointer (&op->recovery_key), wiping_free);
  else
    g_task_return_boolean (task, TRUE);
}

/* The derivation runs in a worker thread (inner task); its result is applied and reported in
 * op_thread_done() on the context that was thread-default here, the owner's. Cancellation is
 * checked by the worker only before anything is counted or written, so a result is never
 * replaced by G_IO_ERROR_CANCELLED after the fact. */
static void
vault_run_async (HbVault *self,
                 VaultOp *op,
                 gpointer source_tag,
                 GCancellable *cancellable,
                 GAsyncReadyCallback callback,
                 gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (self, cancellable, callback, user_data);
  g_autoptr (GTask) worker = NULL;

  g_task_set_source_tag (task, source_tag);
  g_task_set_check_cancellable (task, FALSE);
  worker = g_task_new (self, cancellable, op_thread_done, g_object_ref (task));
  g_task_set_source_tag (worker, source_tag);
  g_task_set_check_cancellable (worker, FALSE);
  g_task_set_task_data (worker, op, (GDestroyNotify)op_free);
  g_task_run_in_thread (worker, op_thread);
}

/* ------------------------------------------------------------------------------------------ */
/* GObject                                                                                    */

static void
hb_vault_dispose (GObject *object)
{
  HbVault *self = HB_VAULT (object);

  /* Wiped as early as possible, without a notification nobody should still be listening to. */
  g_mutex_lock (&self->mutex);
  g_clear_pointer (&self->dek, dek_free);
  g_mutex_unlock (&self->mutex);

  G_OBJECT_CLASS (hb_vault_parent_class)->dispose (object);
}

static void
hb_vault_finalize (GObject *object)
{
  HbVault *self = HB_VAULT (object);

  g_clear_pointer (&self->dek, dek_free);
  g_clear_pointer (&self->path, g_free);
  g_mutex_clear (&self->mutex);

  G_OBJECT_CLASS (hb_vault_parent_class)->finalize (object);
}

static void
hb_vault_get_property (GObject *object, guint prop_id, GValue *value, GParamSpec *pspec)
{
  HbVault *self = HB_VAULT (object);

  switch (prop_id)
    {
      case PROP_PATH:
        g_value_set_string (value, self->path);
        break;
      case PROP_LOCKED:
        g_value_set_boolean (value, hb_vault_get_locked (self));
        break;
      case PROP_FAILED_ATTEMPTS:
        g_value_set_uint (value, hb_vault_get_failed_attempts (self));
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_vault_set_property (GObject *object, guint prop_id, const GValue *value, GParamSpec *pspec)
{
  HbVault *self = HB_VAULT (object);

  switch (prop_id)
    {
      case PROP_PATH:
        self->path = g_value_dup_string (value);
        break;
      default:
        G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
    }
}

static void
hb_vault_class_init (HbVaultClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = hb_vault_dispose;
  object_class->finalize = hb_vault_finalize;
  object_class->get_property = hb_vault_get_property;
  object_class->set_property = hb_vault_set_property;

  /**
   * HbVault:path:
   *
   * The SQLite file holding the vault, the same file as the store's.
   */
  properties[PROP_PATH]
      = g_param_spec_string ("path", NULL, NULL, NULL,
                             G_PARAM_READWRITE | G_PARAM_CONSTRUCT_ONLY | G_PARAM_STATIC_STRINGS);

  /**
   * HbVault:locked:
   *
   * Whether the data key is unavailable. Notified only when it changes, on the thread that owns
   * the vault (for the `_async` operations, the context they were started from).
   */
  properties[PROP_LOCKED]
      = g_param_spec_boolean ("locked", NULL, NULL, TRUE,
                              G_PARAM_READABLE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);

  /**
   * HbVault:failed-attempts:
   *
   * Consecutive wrong PINs recorded in the vault file. Notified when an operation of this object
   * changes it.
   */
  properties[PROP_FAILED_ATTEMPTS]
      = g_param_spec_uint ("failed-attempts", NULL, NULL, 0, HB_VAULT_MAX_FAILED_ATTEMPTS, 0,
                           G_PARAM_READABLE | G_PARAM_EXPLICIT_NOTIFY | G_PARAM_STATIC_STRINGS);

  g_object_class_install_properties (object_class, N_PROPS, properties);
}

static void
hb_vault_init (HbVault *self)
{
  g_mutex_init (&self->mutex);
  self->key_id = VAULT_KEY_ID;
  self->m_cost_kib = DEFAULT_M_COST_KIB;
  self->t_cost = DEFAULT_T_COST;
  self->parallelism = DEFAULT_PARALLELISM;
}

/* ------------------------------------------------------------------------------------------ */
/* Public API                                                                                 */

/**
 * HbVault:
 *
 * The keys of one store: a random data key, wrapped by a key derived from the user's PIN with
 * Argon2id (mixed with a device secret held in the Secret Service), and again by a recovery key
 * that is shown once at creation.
 *
 * Wrong PINs are counted in the vault file before each derivation; from the fourth on, each next
 * attempt must wait twice as long (1 s, 2 s, … 32 s) and after
 * %HB_VAULT_MAX_FAILED_ATTEMPTS only hb_vault_recover_sync() unlocks.
 *
 * The vault does no I/O until an operation is called. The `_sync` operations block and change
 * the state on the calling thread; the `_async` ones derive keys in a worker thread and apply the
 * result, emitting notifications, on the thread-default main context of their caller.
 */

/**
 * hb_vault_new:
 * @path: (type filename): the SQLite file holding (or to hold) the vault
 *
 * Creates a vault object for @path; nothing is read or written yet.
 *
 * Returns: (transfer full): a new, locked #HbVault
 */
HbVault *
hb_vault_new (const char *path)
{
  g_return_val_if_fail (path != NULL, NULL);

  return g_object_new (HB_TYPE_VAULT, "path", path, NULL);
}

/**
 * hb_vault_get_path:
 * @self: a #HbVault
 *
 * Returns: (transfer none) (type filename): the file holding the vault
 */
const char *
hb_vault_get_path (HbVault *self)
{
  g_return_val_if_fail (HB_IS_VAULT (self), NULL);

  return self->path;
}

/**
 * hb_vault_get_locked:
 * @self: a #HbVault
 *
 * Returns: %TRUE unless the data key is available
 */
gboolean
hb_vault_get_locked (HbVault *self)
{
  gboolean locked;

  g_return_val_if_fail (HB_IS_VAULT (self), TRUE);

  g_mutex_lock (&self->mutex);
  locked = self->dek == NULL;
  g_mutex_unlock (&self->mutex);
  return locked;
}

/* Reads the row for the informational getters; FALSE when there is no (readable) vault. */
static gboolean
vault_peek (HbVault *self, VaultRow *row)
{
  g_autoptr (sqlite3) db = NULL;
  g_autoptr (GError) error = NULL;

  if (!g_file_test (self->path, G_FILE_TEST_EXISTS))
    return FALSE;
  /* Read-only, no pragmas, a short wait: the getters are called from the owner's thread, where
   * a write or a long lock wait would stall the UI. A file that is busy reads as no answer. */
  if (sqlite3_open_v2 (self->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL)
      != SQLITE_OK)
    return FALSE;
  sqlite3_busy_timeout (db, 100);
  if (vault_read_row (db, self->path, row, &error))
    return TRUE;
  if (!g_error_matches (error, HB_VAULT_ERROR, HB_VAULT_ERROR_NOT_FOUND))
    g_debug ("%s", error->message);
  return FALSE;
}

/**
 * hb_vault_exists:
 * @self: a #HbVault
 *
 * Reads the file to tell whether it holds a vault. A missing file, or one that is not a readable
 * SQLite database, holds none.
 *
 * Returns: %TRUE if hb_vault_create_sync() has been run on the file
 */
gboolean
hb_vault_exists (HbVault *self)
{
  VaultRow row;

  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);

  return vault_peek (self, &row);
}

/**
 * hb_vault_get_kdf_params:
 * @self: a #HbVault
 * @memory_kib: (out) (optional): the Argon2id memory cost in KiB
 * @iterations: (out) (optional): the Argon2id time cost
 * @parallelism: (out) (optional): the Argon2id lanes
 *
 * The Argon2id parameters this object will use for the next PIN slot it writes: the defaults, or
 * what hb_vault_set_kdf_params() set.
 */
void
hb_vault_get_kdf_params (HbVault *self, guint *memory_kib, guint *iterations, guint *parallelism)
{
  g_return_if_fail (HB_IS_VAULT (self));

  if (memory_kib != NULL)
    *memory_kib = self->m_cost_kib;
  if (iterations != NULL)
    *iterations = self->t_cost;
  if (parallelism != NULL)
    *parallelism = self->parallelism;
}

/**
 * hb_vault_set_kdf_params:
 * @self: a #HbVault
 * @memory_kib: Argon2id memory cost in KiB, at least 8 × @parallelism
 * @iterations: Argon2id time cost, at least 1
 * @parallelism: Argon2id lanes, at least 1
 *
 * Sets the Argon2id parameters for the PIN slots written from now on by this object (create,
 * change PIN, recover). They are stored with the vault; unlocking always uses the stored ones.
 * The defaults (128 MiB, 2 iterations, 1 lane) take a third to half a second; lower values are
 * meant for tests.
 */
void
hb_vault_set_kdf_params (HbVault *self, guint memory_kib, guint iterations, guint parallelism)
{
  g_return_if_fail (HB_IS_VAULT (self));
  g_return_if_fail (parallelism >= 1 && parallelism <= MAX_PARALLELISM);
  g_return_if_fail (iterations >= 1 && iterations <= MAX_T_COST);
  g_return_if_fail (memory_kib >= 8 * parallelism && memory_kib <= MAX_M_COST_KIB);

  self->m_cost_kib = memory_kib;
  self->t_cost = iterations;
  self->parallelism = parallelism;
}

/**
 * hb_vault_get_failed_attempts:
 * @self: a #HbVault
 *
 * Reads the consecutive failed PIN attempts recorded in the vault file.
 *
 * Returns: the count, 0 when the file holds no vault
 */
guint
hb_vault_get_failed_attempts (HbVault *self)
{
  VaultRow row;

  g_return_val_if_fail (HB_IS_VAULT (self), 0);

  return vault_peek (self, &row) ? row.failed_attempts : self->failed_attempts;
}

/**
 * hb_vault_get_attempts_left:
 * @self: a #HbVault
 *
 * Returns: how many more wrong PINs are allowed before only the recovery key unlocks
 */
guint
hb_vault_get_attempts_left (HbVault *self)
{
  g_return_val_if_fail (HB_IS_VAULT (self), 0);

  return HB_VAULT_MAX_FAILED_ATTEMPTS - hb_vault_get_failed_attempts (self);
}

/**
 * hb_vault_get_retry_after:
 * @self: a #HbVault
 *
 * Tells when the escalating delay allows the next PIN attempt.
 *
 * Returns: the wall-clock time (microseconds since the epoch, as g_get_real_time()) of the next
 *   allowed attempt; 0 if one is allowed now; %G_MAXINT64 when locked out
 */
gint64
hb_vault_get_retry_after (HbVault *self)
{
  VaultRow row;
  gint64 now;

  g_return_val_if_fail (HB_IS_VAULT (self), 0);

  if (!vault_peek (self, &row))
    return 0;
  now = self->clock_func ? self->clock_func (self->clock_data) : g_get_real_time ();
  return compute_retry_after (row.failed_attempts, row.last_failure_at, now);
}

/**
 * hb_vault_get_uses_device_secret:
 * @self: a #HbVault
 *
 * Returns: %TRUE if the vault's PIN key is mixed with a device secret from the Secret Service
 */
gboolean
hb_vault_get_uses_device_secret (HbVault *self)
{
  VaultRow row;

  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);

  return vault_peek (self, &row) && row.uses_device_secret;
}

/**
 * hb_vault_get_last_unlock_seconds:
 * @self: a #HbVault
 *
 * How long the key derivation of the last PIN check by this object took (the Argon2id cost a
 * user waits for at unlock).
 *
 * Returns: seconds, or 0 if no PIN has been checked yet
 */
double
hb_vault_get_last_unlock_seconds (HbVault *self)
{
  g_return_val_if_fail (HB_IS_VAULT (self), 0);

  return self->last_unlock_seconds;
}

/**
 * hb_vault_create_sync:
 * @self: a #HbVault
 * @pin: the PIN: at least 6 digits, or a passphrase of at least 8 characters
 * @flags: #HbVaultFlags
 * @out_recovery_key: (out) (transfer full): return location for the recovery key, to show
 *   the user once; it is not stored anywhere, so it is required: a vault whose recovery key was
 *   thrown away is lost after ten wrong PINs
 * @cancellable: (nullable): a #GCancellable
 * @error: return location for a #GError
 *
 * Creates the vault in the file (creating the file if needed) with a new random data key, and
 * leaves it unlocked.
 *
 * Unless @flags has %HB_VAULT_FLAGS_NO_DEVICE_SECRET, a device secret is stored in the default
 * collection of the Secret Service; when none answers this fails with
 * %HB_VAULT_ERROR_NO_SECRET_SERVICE and writes nothing to the file.
 *
 * Returns: %TRUE on success
 */
gboolean
hb_vault_create_sync (HbVault *self,
                      const char *pin,
                      HbVaultFlags flags,
                      char **out_recovery_key,
                      GCancellable *cancellable,
                      GError **error)
{
  g_autoptr (VaultOp) op = NULL;

  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);
  g_return_val_if_fail (pin != NULL, FALSE);
  g_return_val_if_fail (out_recovery_key != NULL, FALSE);
  g_return_val_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  op = op_new (self, OP_CREATE, pin, NULL);
  op->flags = flags;
  if (!vault_run_sync (self, op, cancellable, error))
    return FALSE;
  *out_recovery_key = g_steal_pointer (&op->recovery_key);
  return TRUE;
}

/**
 * hb_vault_create_async:
 * @self: a #HbVault
 * @pin: the PIN: at least 6 digits, or a passphrase of at least 8 characters
 * @flags: #HbVaultFlags
 * @cancellable: (nullable): a #GCancellable
 * @callback: (scope async): called when the vault is created
 * @user_data: data for @callback
 *
 * Creates the vault like hb_vault_create_sync(), with the key derivation in a worker thread.
 */
void
hb_vault_create_async (HbVault *self,
                       const char *pin,
                       HbVaultFlags flags,
                       GCancellable *cancellable,
                       GAsyncReadyCallback callback,
                       gpointer user_data)
{
  VaultOp *op;

  g_return_if_fail (HB_IS_VAULT (self));
  g_return_if_fail (pin != NULL);
  g_return_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable));

  op = op_new (self, OP_CREATE, pin, NULL);
  op->flags = flags;
  vault_run_async (self, op, hb_vault_create_async, cancellable, callback, user_data);
}

/**
 * hb_vault_create_finish:
 * @self: a #HbVault
 * @result: the #GAsyncResult given to the callback
 * @error: return location for a #GError
 *
 * Finishes hb_vault_create_async().
 *
 * Returns: (transfer full): the recovery key, to show the user once, or %NULL on error
 */
char *
hb_vault_create_finish (HbVault *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (HB_IS_VAULT (self), NULL);
  g_return_val_if_fail (g_task_is_valid (result, self), NULL);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == hb_vault_create_async, NULL);

  return g_task_propagate_pointer (G_TASK (result), error);
}

/**
 * hb_vault_unlock_sync:
 * @self: a #HbVault
 * @pin: the PIN
 * @cancellable: (nullable): a #GCancellable
 * @error: return location for a #GError
 *
 * Checks @pin and makes the data key available. The attempt is recorded in the file before the
 * key derivation starts; a right PIN clears the count.
 *
 * Fails with %HB_VAULT_ERROR_WRONG_PIN (the message says how many attempts are left),
 * %HB_VAULT_ERROR_TOO_SOON during the escalating delay (not counted),
 * %HB_VAULT_ERROR_LOCKED_OUT after %HB_VAULT_MAX_FAILED_ATTEMPTS failures, or, for a vault with
 * a device secret, %HB_VAULT_ERROR_DEVICE_SECRET_MISSING or %HB_VAULT_ERROR_NO_SECRET_SERVICE
 * (neither counted).
 *
 * Returns: %TRUE if the vault is now unlocked
 */
gboolean
hb_vault_unlock_sync (HbVault *self, const char *pin, GCancellable *cancellable, GError **error)
{
  g_autoptr (VaultOp) op = NULL;

  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);
  g_return_val_if_fail (pin != NULL, FALSE);
  g_return_val_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  op = op_new (self, OP_UNLOCK, pin, NULL);
  return vault_run_sync (self, op, cancellable, error);
}

/**
 * hb_vault_unlock_async:
 * @self: a #HbVault
 * @pin: the PIN
 * @cancellable: (nullable): a #GCancellable
 * @callback: (scope async): called when the PIN has been checked
 * @user_data: data for @callback
 *
 * Unlocks like hb_vault_unlock_sync(), with the key derivation in a worker thread. The vault
 * becomes unlocked, and #HbVault:locked is notified, just before @callback runs.
 */
void
hb_vault_unlock_async (HbVault *self,
                       const char *pin,
                       GCancellable *cancellable,
                       GAsyncReadyCallback callback,
                       gpointer user_data)
{
  g_return_if_fail (HB_IS_VAULT (self));
  g_return_if_fail (pin != NULL);
  g_return_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable));

  vault_run_async (self, op_new (self, OP_UNLOCK, pin, NULL), hb_vault_unlock_async, cancellable,
                   callback, user_data);
}

/**
 * hb_vault_unlock_finish:
 * @self: a #HbVault
 * @result: the #GAsyncResult given to the callback
 * @error: return location for a #GError
 *
 * Finishes hb_vault_unlock_async().
 *
 * Returns: %TRUE if the vault is now unlocked
 */
gboolean
hb_vault_unlock_finish (HbVault *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == hb_vault_unlock_async, FALSE);

  return g_task_propagate_boolean (G_TASK (result), error);
}

/**
 * hb_vault_recover_sync:
 * @self: a #HbVault
 * @recovery_key: the recovery key given at creation; case, spaces and dashes do not matter
 * @new_pin: the PIN to set
 * @cancellable: (nullable): a #GCancellable
 * @error: return location for a #GError
 *
 * Unwraps the data key with the recovery key, wraps it under @new_pin (with the parameters of
 * hb_vault_set_kdf_params()), clears the failed-attempt count, and leaves the vault unlocked.
 * This is the way back after a lockout or after the device secret was lost; in the latter case a
 * new device secret is stored.
 *
 * Fails with %HB_VAULT_ERROR_BAD_RECOVERY_KEY if the key is malformed and
 * %HB_VAULT_ERROR_WRONG_PIN if it is not this vault's.
 *
 * Returns: %TRUE on success
 */
gboolean
hb_vault_recover_sync (HbVault *self,
                       const char *recovery_key,
                       const char *new_pin,
                       GCancellable *cancellable,
                       GError **error)
{
  g_autoptr (VaultOp) op = NULL;

  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);
  g_return_val_if_fail (recovery_key != NULL, FALSE);
  g_return_val_if_fail (new_pin != NULL, FALSE);
  g_return_val_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  op = op_new (self, OP_RECOVER, recovery_key, new_pin);
  return vault_run_sync (self, op, cancellable, error);
}

/**
 * hb_vault_change_pin_sync:
 * @self: a #HbVault
 * @old_pin: the current PIN
 * @new_pin: the PIN to set
 * @cancellable: (nullable): a #GCancellable
 * @error: return location for a #GError
 *
 * Checks @old_pin (counted like an unlock attempt) and wraps the same data key under @new_pin.
 * Only the PIN slot of the vault changes: no sealed record is touched. Leaves the vault unlocked.
 *
 * Returns: %TRUE on success
 */
gboolean
hb_vault_change_pin_sync (HbVault *self,
                          const char *old_pin,
                          const char *new_pin,
                          GCancellable *cancellable,
                          GError **error)
{
  g_autoptr (VaultOp) op = NULL;

  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);
  g_return_val_if_fail (old_pin != NULL, FALSE);
  g_return_val_if_fail (new_pin != NULL, FALSE);
  g_return_val_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable), FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  op = op_new (self, OP_CHANGE_PIN, old_pin, new_pin);
  return vault_run_sync (self, op, cancellable, error);
}

/**
 * hb_vault_change_pin_async:
 * @self: a #HbVault
 * @old_pin: the current PIN
 * @new_pin: the PIN to set
 * @cancellable: (nullable): a #GCancellable
 * @callback: (scope async): called when the PIN has been changed
 * @user_data: data for @callback
 *
 * Changes the PIN like hb_vault_change_pin_sync(), with the key derivations in a worker thread.
 */
void
hb_vault_change_pin_async (HbVault *self,
                           const char *old_pin,
                           const char *new_pin,
                           GCancellable *cancellable,
                           GAsyncReadyCallback callback,
                           gpointer user_data)
{
  g_return_if_fail (HB_IS_VAULT (self));
  g_return_if_fail (old_pin != NULL);
  g_return_if_fail (new_pin != NULL);
  g_return_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable));

  vault_run_async (self, op_new (self, OP_CHANGE_PIN, old_pin, new_pin), hb_vault_change_pin_async,
                   cancellable, callback, user_data);
}

/**
 * hb_vault_change_pin_finish:
 * @self: a #HbVault
 * @result: the #GAsyncResult given to the callback
 * @error: return location for a #GError
 *
 * Finishes hb_vault_change_pin_async().
 *
 * Returns: %TRUE on success
 */
gboolean
hb_vault_change_pin_finish (HbVault *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == hb_vault_change_pin_async,
                        FALSE);

  return g_task_propagate_boolean (G_TASK (result), error);
}

/**
 * hb_vault_lock:
 * @self: a #HbVault
 *
 * Wipes the data key from memory. #HbVault:locked is notified if the vault was unlocked.
 */
void
hb_vault_lock (HbVault *self)
{
  gboolean was_unlocked;

  g_return_if_fail (HB_IS_VAULT (self));

  g_mutex_lock (&self->mutex);
  was_unlocked = self->dek != NULL;
  g_clear_pointer (&self->dek, dek_free);
  self->lock_generation++;
  g_mutex_unlock (&self->mutex);

  if (was_unlocked)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_LOCKED]);
}

/* ------------------------------------------------------------------------------------------ */
/* Private API                                                                                */

gboolean
_hb_vault_derive_key (HbVault *self, const char *purpose, guint8 out[HB_KEY_LEN], GError **error)
{
  g_autofree char *info = NULL;
  g_autoptr (GError) local_error = NULL;
  gboolean ok;

  g_return_val_if_fail (HB_IS_VAULT (self), FALSE);
  g_return_val_if_fail (purpose != NULL, FALSE);

  info = g_strconcat (SUBKEY_INFO_PREFIX, purpose, NULL);
  /* Held across the HKDF so a concurrent hb_vault_lock() cannot wipe the key mid-read. */
  g_mutex_lock (&self->mutex);
  if (self->dek == NULL)
    {
      g_mutex_unlock (&self->mutex);
      g_set_error_literal (error, HB_VAULT_ERROR, HB_VAULT_ERROR_LOCKED, "The vault is locked");
      return FALSE;
    }
  ok = hb_hkdf (self->dek, HB_KEY_LEN, NULL, 0, info, out, HB_KEY_LEN, &local_error);
  g_mutex_unlock (&self->mutex);
  if (!ok)
    g_set_error (error, HB_VAULT_ERROR, HB_VAULT_ERROR_FAILED, "%s", local_error->message);
  return ok;
}

guint
_hb_vault_get_key_id (HbVault *self)
{
  guint key_id;

  g_return_val_if_fail (HB_IS_VAULT (self), VAULT_KEY_ID);

  g_mutex_lock (&self->mutex);
  key_id = self->key_id;
  g_mutex_unlock (&self->mutex);
  return key_id;
}

void
_hb_vault_set_clock_for_testing (HbVault *self, HbVaultClockFunc func, gpointer user_data)
{
  g_return_if_fail (HB_IS_VAULT (self));

  self->clock_func = func;
  self->clock_data = user_data;
}
