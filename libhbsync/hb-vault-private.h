#pragma once

#include "hb-crypto-private.h"
#include "hb-vault.h"

G_BEGIN_DECLS

/* Derive a 256-bit subkey of the data key for one purpose (HKDF-SHA256, info = purpose).
 * Fails with HB_VAULT_ERROR_LOCKED when the vault is locked. */
gboolean
_hb_vault_derive_key (HbVault *self, const char *purpose, guint8 out[HB_KEY_LEN], GError **error);

/* Which data key the vault holds; bound into every sealed record so a future key rotation can
 * tell generations apart. */
guint _hb_vault_get_key_id (HbVault *self);

/* The wall clock the escalating delay is measured with, in microseconds since the epoch.
 * Tests replace it so a delay schedule can be walked without sleeping. */
typedef gint64 (*HbVaultClockFunc) (gpointer user_data);
void _hb_vault_set_clock_for_testing (HbVault *self, HbVaultClockFunc func, gpointer user_data);

G_END_DECLS
