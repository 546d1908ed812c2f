#pragma once

/* The one place that knows which crypto library is used. Everything else sees these calls. */

#include <glib.h>

G_BEGIN_DECLS

#define HB_KEY_LEN 32
#define HB_NONCE_LEN 12
#define HB_TAG_LEN 16
#define HB_MAC_LEN 32
/* A sealed record is nonce || ciphertext || tag. */
#define HB_SEAL_OVERHEAD (HB_NONCE_LEN + HB_TAG_LEN)

/* Memory for key bytes: locked in RAM where the system allows, excluded from core dumps,
 * wiped before it is released. */
gpointer hb_secure_alloc (gsize len);
void hb_secure_free (gpointer mem, gsize len);
void hb_wipe (gpointer mem, gsize len);

gboolean hb_random_bytes (guint8 *out, gsize len, GError **error);
gboolean hb_random_key (guint8 *out, gsize len, GError **error);
char *hb_random_uuid (void);

/* AES-256-GCM. Returns nonce || ciphertext || tag, the nonce fresh and random. */
GBytes *hb_seal (const guint8 key[HB_KEY_LEN],
                 const guint8 *plain,
                 gsize plain_len,
                 const guint8 *ad,
                 gsize ad_len,
                 GError **error);
/* Wipes and frees a plaintext buffer of len bytes. */
void hb_open_free (guint8 *plain, gsize len);
/* Opens a sealed record into a caller's buffer (for instance secure memory) of out_size bytes.
 * Returns FALSE without setting error when authentication fails, so callers can name what was
 * corrupt; error is set only for library failures. */
gboolean hb_open_into (const guint8 key[HB_KEY_LEN],
                       const guint8 *sealed,
                       gsize sealed_len,
                       const guint8 *ad,
                       gsize ad_len,
                       guint8 *out,
                       gsize out_size,
                       gsize *out_len,
                       GError **error);

/* The same with the key schedule kept between calls: one handle per key and thread of use
 * (handles are not thread-safe). Freeing a handle wipes its key schedule. */
typedef struct _HbAead HbAead;
HbAead *hb_aead_new (const guint8 key[HB_KEY_LEN], GError **error);
void hb_aead_free (HbAead *aead);
GBytes *hb_aead_seal (HbAead *aead,
                      const guint8 *plain,
                      gsize plain_len,
                      const guint8 *ad,
                      gsize ad_len,
                      GError **error);
/* FALSE when authentication fails (out is then wiped); plaintext is sealed_len -
 * HB_SEAL_OVERHEAD bytes and must fit out_size. */
gboolean hb_aead_open_into (HbAead *aead,
                            const guint8 *sealed,
                            gsize sealed_len,
                            const guint8 *ad,
                            gsize ad_len,
                            guint8 *out,
                            gsize out_size,
                            gsize *out_len);

/* HMAC-SHA256 with a kept key: same rules as HbAead. */
typedef struct _HbMac HbMac;
HbMac *hb_mac_new (const guint8 *key, gsize key_len, GError **error);
void hb_mac_free (HbMac *mac);
void hb_mac_compute (HbMac *mac, const guint8 *data, gsize data_len, guint8 out[HB_MAC_LEN]);
/* The same over several pieces, as if they were concatenated: add them, then finish. */
void hb_mac_add (HbMac *mac, const guint8 *data, gsize data_len);
void hb_mac_finish (HbMac *mac, guint8 out[HB_MAC_LEN]);

void hb_sha256 (const guint8 *data, gsize len, guint8 out[32]);
/* SHA-256 of the concatenation of n pieces (data[i], len[i]), without copying them. */
void hb_sha256_pieces (const guint8 *const *data, const gsize *len, guint n, guint8 out[32]);

/* HKDF-SHA256 (RFC 5869). salt may be NULL. */
gboolean hb_hkdf (const guint8 *ikm,
                  gsize ikm_len,
                  const guint8 *salt,
                  gsize salt_len,
                  const char *info,
                  guint8 *out,
                  gsize out_len,
                  GError **error);

/* Argon2id, raw output. */
gboolean hb_argon2id (const char *secret,
                      gsize secret_len,
                      const guint8 *salt,
                      gsize salt_len,
                      guint32 t_cost,
                      guint32 m_cost_kib,
                      guint32 parallelism,
                      guint8 *out,
                      gsize out_len,
                      GError **error);

G_END_DECLS
