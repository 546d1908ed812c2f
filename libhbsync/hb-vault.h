#pragma once

#if !defined(HBSYNC_INSIDE) && !defined(HBSYNC_COMPILATION)
#error "Only <hbsync.h> can be included directly."
#endif

#include <gio/gio.h>

#include "hb-version-macros.h"

G_BEGIN_DECLS

/**
 * HB_VAULT_ERROR:
 *
 * The error domain of #HbVault.
 */
#define HB_VAULT_ERROR (hb_vault_error_quark ())

/**
 * HbVaultError:
 * @HB_VAULT_ERROR_FAILED: an unexpected failure (I/O, SQLite, crypto library)
 * @HB_VAULT_ERROR_NOT_FOUND: the file holds no vault
 * @HB_VAULT_ERROR_EXISTS: the file already holds a vault
 * @HB_VAULT_ERROR_WEAK_PIN: the PIN is shorter than 6 digits, or a passphrase shorter than 8 characters
 * @HB_VAULT_ERROR_WRONG_PIN: the PIN (or recovery key) did not unwrap the data key
 * @HB_VAULT_ERROR_TOO_SOON: the escalating delay after failed attempts has not yet passed
 * @HB_VAULT_ERROR_LOCKED_OUT: too many consecutive failures; only the recovery key unlocks
 * @HB_VAULT_ERROR_LOCKED: the operation needs an unlocked vault
 * @HB_VAULT_ERROR_NO_SECRET_SERVICE: no Secret Service answered for the device secret
 * @HB_VAULT_ERROR_DEVICE_SECRET_MISSING: the Secret Service has no device secret for this vault
 * @HB_VAULT_ERROR_CORRUPT: the vault record failed its integrity check
 * @HB_VAULT_ERROR_BAD_RECOVERY_KEY: the recovery key is malformed
 *
 * Errors from #HbVault.
 */
typedef enum
{
  HB_VAULT_ERROR_FAILED,
  HB_VAULT_ERROR_NOT_FOUND,
  HB_VAULT_ERROR_EXISTS,
  HB_VAULT_ERROR_WEAK_PIN,
  HB_VAULT_ERROR_WRONG_PIN,
  HB_VAULT_ERROR_TOO_SOON,
  HB_VAULT_ERROR_LOCKED_OUT,
  HB_VAULT_ERROR_LOCKED,
  HB_VAULT_ERROR_NO_SECRET_SERVICE,
  HB_VAULT_ERROR_DEVICE_SECRET_MISSING,
  HB_VAULT_ERROR_CORRUPT,
  HB_VAULT_ERROR_BAD_RECOVERY_KEY,
} HbVaultError;

/**
 * HbVaultFlags:
 * @HB_VAULT_FLAGS_NONE: the defaults: a device secret in the Secret Service is required
 * @HB_VAULT_FLAGS_NO_DEVICE_SECRET: do not mix a device secret into the key; the store file
 *   alone can then be attacked offline, at the cost of Argon2id per guess
 *
 * Flags for hb_vault_create_sync().
 */
typedef enum /*< flags >*/
{
  HB_VAULT_FLAGS_NONE = 0,
  HB_VAULT_FLAGS_NO_DEVICE_SECRET = 1 << 0,
} HbVaultFlags;

/**
 * HB_VAULT_MAX_FAILED_ATTEMPTS:
 *
 * Consecutive failed PIN attempts after which only the recovery key unlocks.
 */
#define HB_VAULT_MAX_FAILED_ATTEMPTS 10

#define HB_TYPE_VAULT (hb_vault_get_type ())

HB_AVAILABLE_IN_ALL
G_DECLARE_FINAL_TYPE (HbVault, hb_vault, HB, VAULT, GObject)

HB_AVAILABLE_IN_ALL
GQuark hb_vault_error_quark (void);

HB_AVAILABLE_IN_ALL
HbVault *hb_vault_new (const char *path);
HB_AVAILABLE_IN_ALL
const char *hb_vault_get_path (HbVault *self);
HB_AVAILABLE_IN_ALL
gboolean hb_vault_get_locked (HbVault *self);
HB_AVAILABLE_IN_ALL
gboolean hb_vault_exists (HbVault *self);
HB_AVAILABLE_IN_ALL
void hb_vault_set_kdf_params (HbVault *self, guint memory_kib, guint iterations, guint parallelism);
HB_AVAILABLE_IN_ALL
void
hb_vault_get_kdf_params (HbVault *self, guint *memory_kib, guint *iterations, guint *parallelism);
HB_AVAILABLE_IN_ALL
guint hb_vault_get_failed_attempts (HbVault *self);
HB_AVAILABLE_IN_ALL
guint hb_vault_get_attempts_left (HbVault *self);
HB_AVAILABLE_IN_ALL
gint64 hb_vault_get_retry_after (HbVault *self);
HB_AVAILABLE_IN_ALL
gboolean hb_vault_get_uses_device_secret (HbVault *self);
HB_AVAILABLE_IN_ALL
double hb_vault_get_last_unlock_seconds (HbVault *self);

HB_AVAILABLE_IN_ALL
gboolean hb_vault_create_sync (HbVault *self,
                               const char *pin,
                               HbVaultFlags flags,
                               char **out_recovery_key,
                               GCancellable *cancellable,
                               GError **error);
HB_AVAILABLE_IN_ALL
void hb_vault_create_async (HbVault *self,
                            const char *pin,
                            HbVaultFlags flags,
                            GCancellable *cancellable,
                            GAsyncReadyCallback callback,
                            gpointer user_data);
HB_AVAILABLE_IN_ALL
char *hb_vault_create_finish (HbVault *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
gboolean
hb_vault_unlock_sync (HbVault *self, const char *pin, GCancellable *cancellable, GError **error);
HB_AVAILABLE_IN_ALL
void hb_vault_unlock_async (HbVault *self,
                            const char *pin,
                            GCancellable *cancellable,
                            GAsyncReadyCallback callback,
                            gpointer user_data);
HB_AVAILABLE_IN_ALL
gboolean hb_vault_unlock_finish (HbVault *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
gboolean hb_vault_recover_sync (HbVault *self,
                                const char *recovery_key,
                                const char *new_pin,
                                GCancellable *cancellable,
                                GError **error);

HB_AVAILABLE_IN_ALL
gboolean hb_vault_change_pin_sync (HbVault *self,
                                   const char *old_pin,
                                   const char *new_pin,
                                   GCancellable *cancellable,
                                   GError **error);
HB_AVAILABLE_IN_ALL
void hb_vault_change_pin_async (HbVault *self,
                                const char *old_pin,
                                const char *new_pin,
                                GCancellable *cancellable,
                                GAsyncReadyCallback callback,
                                gpointer user_data);
HB_AVAILABLE_IN_ALL
gboolean hb_vault_change_pin_finish (HbVault *self, GAsyncResult *result, GError **error);

HB_AVAILABLE_IN_ALL
void hb_vault_lock (HbVault *self);

G_END_DECLS
