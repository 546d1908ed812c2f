#include <argon2.h>
#include <gio/gio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hb-crypto-private.h"

static gsize
secure_size (gsize len)
{
  gsize page = (gsize)sysconf (_SC_PAGESIZE);

  return (MAX (len, 1) + page - 1) / page * page;
}

/* Whole pages of their own: mlock and MADV_DONTDUMP act on pages, and a page shared with other
 * allocations could be unlocked by someone else's munlock or dumped with its neighbours. */
gpointer
hb_secure_alloc (gsize len)
{
  gsize size = secure_size (len);
  gpointer mem = mmap (NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

  if (mem == MAP_FAILED)
    g_error ("Cannot allocate %" G_GSIZE_FORMAT " bytes of key memory", size);
  /* Best effort: an unprivileged process may exceed RLIMIT_MEMLOCK; the bytes are still wiped. */
  (void)mlock (mem, size);
#ifdef MADV_DONTDUMP
  (void)madvise (mem, size, MADV_DONTDUMP);
#endif
  return mem;
}

void
hb_wipe (gpointer mem, gsize len)
{
  if (mem != NULL && len > 0)
    explicit_bzero (mem, len);
}

void
hb_secure_free (gpointer mem, gsize len)
{
  gsize size;

  if (mem == NULL)
    return;
  size = secure_size (len);
  hb_wipe (mem, size);
  (void)munlock (mem, size);
  (void)munmap (mem, size);
}

gboolean
hb_random_bytes (guint8 *out, gsize len, GError **error)
{
  if (gnutls_rnd (GNUTLS_RND_NONCE, out, len) != 0)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, "random generator failed");
      return FALSE;
    }
  return TRUE;
}

gboolean
hb_random_key (guint8 *out, gsize len, GError **error)
{
  if (gnutls_rnd (GNUTLS_RND_KEY, out, len) != 0)
    {
      g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, "random generator failed");
      return FALSE;
    }
  return TRUE;
}

char *
hb_random_uuid (void)
{
  guint8 b[16];

  if (gnutls_rnd (GNUTLS_RND_NONCE, b, sizeof b) != 0)
    g_error ("random generator failed");
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  return g_strdup_printf ("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                          b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
                          b[12], b[13], b[14], b[15]);
}

static gboolean
aead_init (gnutls_aead_cipher_hd_t *hd, const guint8 key[HB_KEY_LEN], GError **error)
{
  gnutls_datum_t k = { (unsigned char *)key, HB_KEY_LEN };
  int rc = gnutls_aead_cipher_init (hd, GNUTLS_CIPHER_AES_256_GCM, &k);

  if (rc < 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "AES-GCM setup failed: %s",
                   gnutls_strerror (rc));
      return FALSE;
    }
  return TRUE;
}

struct _HbAead
{
  gnutls_aead_cipher_hd_t hd;
};

/* The one-shot forms: a handle on the stack for one record. */
GBytes *
hb_seal (const guint8 key[HB_KEY_LEN],
         const guint8 *plain,
         gsize plain_len,
         const guint8 *ad,
         gsize ad_len,
         GError **error)
{
  HbAead aead;
  GBytes *sealed;

  if (!aead_init (&aead.hd, key, error))
    return NULL;
  sealed = hb_aead_seal (&aead, plain, plain_len, ad, ad_len, error);
  gnutls_aead_cipher_deinit (aead.hd);
  return sealed;
}

gboolean
hb_open_into (const guint8 key[HB_KEY_LEN],
              const guint8 *sealed,
              gsize sealed_len,
              const guint8 *ad,
              gsize ad_len,
              guint8 *out,
              gsize out_size,
              gsize *out_len,
              GError **error)
{
  HbAead aead;
  gboolean ok;

  *out_len = 0;
  if (sealed_len < HB_SEAL_OVERHEAD || sealed_len - HB_SEAL_OVERHEAD > out_size)
    return FALSE;
  if (!aead_init (&aead.hd, key, error))
    return FALSE;
  ok = hb_aead_open_into (&aead, sealed, sealed_len, ad, ad_len, out, out_size, out_len);
  gnutls_aead_cipher_deinit (aead.hd);
  return ok;
}

void
hb_open_free (guint8 *plain, gsize len)
{
  if (plain == NULL)
    return;
  hb_wipe (plain, len);
  g_free (plain);
}

HbAead *
hb_aead_new (const guint8 key[HB_KEY_LEN], GError **error)
{
  HbAead *aead = g_new0 (HbAead, 1);

  if (!aead_init (&aead->hd, key, error))
    {
      g_free (aead);
      return NULL;
    }
  return aead;
}

void
hb_aead_free (HbAead *aead)
{
  if (aead == NULL)
    return;
  /* GnuTLS zeroes the cipher context, key schedule included, when it releases it. */
  gnutls_aead_cipher_deinit (aead->hd);
  g_free (aead);
}

GBytes *
hb_aead_seal (HbAead *aead,
              const guint8 *plain,
              gsize plain_len,
              const guint8 *ad,
              gsize ad_len,
              GError **error)
{
  gsize out_len = plain_len + HB_SEAL_OVERHEAD;
  g_autofree guint8 *out = g_malloc (out_len);
  gsize ct_len = plain_len + HB_TAG_LEN;
  int rc;

  if (!hb_random_bytes (out, HB_NONCE_LEN, error))
    return NULL;
  rc = gnutls_aead_cipher_encrypt (aead->hd, out, HB_NONCE_LEN, ad, ad_len, HB_TAG_LEN, plain,
                                   plain_len, out + HB_NONCE_LEN, &ct_len);
  if (rc < 0 || ct_len != plain_len + HB_TAG_LEN)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "AES-GCM encryption failed: %s",
                   gnutls_strerror (rc));
      return NULL;
    }
  return g_bytes_new_take (g_steal_pointer (&out), out_len);
}

gboolean
hb_aead_open_into (HbAead *aead,
                   const guint8 *sealed,
                   gsize sealed_len,
                   const guint8 *ad,
                   gsize ad_len,
                   guint8 *out,
                   gsize out_size,
                   gsize *out_len)
{
  gsize plain_len = out_size;
  int rc;

  *out_len = 0;
  if (sealed_len < HB_SEAL_OVERHEAD || sealed_len - HB_SEAL_OVERHEAD > out_size)
    return FALSE;
  rc = gnutls_aead_cipher_decrypt (aead->hd, sealed, HB_NONCE_LEN, ad, ad_len, HB_TAG_LEN,
                                   sealed + HB_NONCE_LEN, sealed_len - HB_NONCE_LEN, out,
                                   &plain_len);
  if (rc < 0)
    {
      hb_wipe (out, MIN (out_size, sealed_len - HB_SEAL_OVERHEAD));
      return FALSE;
    }
  *out_len = plain_len;
  return TRUE;
}

struct _HbMac
{
  gnutls_hmac_hd_t hd;
};

HbMac *
hb_mac_new (const guint8 *key, gsize key_len, GError **error)
{
  HbMac *mac = g_new0 (HbMac, 1);
  int rc = gnutls_hmac_init (&mac->hd, GNUTLS_MAC_SHA256, key, key_len);

  if (rc < 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "HMAC setup failed: %s",
                   gnutls_strerror (rc));
      g_free (mac);
      return NULL;
    }
  return mac;
}

void
hb_mac_free (HbMac *mac)
{
  guint8 discard[HB_MAC_LEN];

  if (mac == NULL)
    return;
  gnutls_hmac_deinit (mac->hd, discard);
  hb_wipe (discard, sizeof discard);
  g_free (mac);
}

void
hb_mac_add (HbMac *mac, const guint8 *data, gsize data_len)
{
  if (gnutls_hmac (mac->hd, data, data_len) < 0)
    g_error ("HMAC-SHA256 failed");
}

/* gnutls_hmac_output leaves the handle keyed and empty, ready for the next message. */
void
hb_mac_finish (HbMac *mac, guint8 out[HB_MAC_LEN])
{
  gnutls_hmac_output (mac->hd, out);
}

void
hb_mac_compute (HbMac *mac, const guint8 *data, gsize data_len, guint8 out[HB_MAC_LEN])
{
  hb_mac_add (mac, data, data_len);
  hb_mac_finish (mac, out);
}

void
hb_sha256 (const guint8 *data, gsize len, guint8 out[32])
{
  if (gnutls_hash_fast (GNUTLS_DIG_SHA256, data, len, out) < 0)
    g_error ("SHA-256 failed");
}

void
hb_sha256_pieces (const guint8 *const *data, const gsize *len, guint n, guint8 out[32])
{
  gnutls_hash_hd_t hd;

  if (gnutls_hash_init (&hd, GNUTLS_DIG_SHA256) < 0)
    g_error ("SHA-256 failed");
  for (guint i = 0; i < n; i++)
    if (len[i] > 0 && gnutls_hash (hd, data[i], len[i]) < 0)
      g_error ("SHA-256 failed");
  gnutls_hash_deinit (hd, out);
}

gboolean
hb_hkdf (const guint8 *ikm,
         gsize ikm_len,
         const guint8 *salt,
         gsize salt_len,
         const char *info,
         guint8 *out,
         gsize out_len,
         GError **error)
{
  static const guint8 zero_salt[32] = { 0 };
  guint8 prk[32];
  gnutls_datum_t k = { (unsigned char *)ikm, ikm_len };
  gnutls_datum_t s = { (unsigned char *)(salt ? salt : zero_salt), salt ? salt_len : 32 };
  gnutls_datum_t p = { prk, sizeof prk };
  gnutls_datum_t i = { (unsigned char *)info, strlen (info) };
  int rc;

  rc = gnutls_hkdf_extract (GNUTLS_MAC_SHA256, &k, &s, prk);
  if (rc >= 0)
    rc = gnutls_hkdf_expand (GNUTLS_MAC_SHA256, &p, &i, out, out_len);
  hb_wipe (prk, sizeof prk);
  if (rc < 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "HKDF failed: %s", gnutls_strerror (rc));
      return FALSE;
    }
  return TRUE;
}

/* Argon2's working memory starts as a function of the PIN alone: keep it out of core dumps
 * (and in RAM where the limit allows), and wipe it before it is unmapped. */
static int
argon2_allocate (uint8_t **memory, size_t size)
{
  gpointer mem = mmap (NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

  if (mem == MAP_FAILED)
    return ARGON2_MEMORY_ALLOCATION_ERROR;
#ifdef MADV_DONTDUMP
  (void)madvise (mem, size, MADV_DONTDUMP);
#endif
  (void)mlock (mem, size);
  *memory = mem;
  return ARGON2_OK;
}

static void
argon2_deallocate (uint8_t *memory, size_t size)
{
  hb_wipe (memory, size);
  (void)munlock (memory, size);
  (void)munmap (memory, size);
}

gboolean
hb_argon2id (const char *secret,
             gsize secret_len,
             const guint8 *salt,
             gsize salt_len,
             guint32 t_cost,
             guint32 m_cost_kib,
             guint32 parallelism,
             guint8 *out,
             gsize out_len,
             GError **error)
{
  argon2_context ctx = {
    .out = out,
    .outlen = out_len,
    .pwd = (uint8_t *)secret,
    .pwdlen = secret_len,
    .salt = (uint8_t *)salt,
    .saltlen = salt_len,
    .t_cost = t_cost,
    .m_cost = m_cost_kib,
    .lanes = parallelism,
    .threads = parallelism,
    .version = ARGON2_VERSION_13,
    .allocate_cbk = argon2_allocate,
    .free_cbk = argon2_deallocate,
    .flags = ARGON2_DEFAULT_FLAGS,
  };
  int rc = argon2_ctx (&ctx, Argon2_id);

  if (rc != ARGON2_OK)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "Argon2id failed: %s",
                   argon2_error_message (rc));
      return FALSE;
    }
  return TRUE;
}
