#pragma once

#include <hbsync.h>

G_BEGIN_DECLS

#define HB_TEST_PIN "123456"

/* A fresh directory under the test temp dir, removed by hb_test_rmdir(). */
char *hb_test_mkdtemp (void);
void hb_test_rmdir (const char *path);

/* A vault created and unlocked with HB_TEST_PIN and fast KDF parameters (tests only).
 * device_secret selects whether the Secret Service is used. */
HbVault *hb_test_vault_new (const char *path, gboolean device_secret);

/* A new store in a fresh directory; *out_dir receives the directory to remove. */
HbStore *hb_test_store_new (char **out_dir);

/* Parse JSON text; aborts the test on a parse error. */
JsonNode *hb_test_json (const char *text);
char *hb_test_to_string (JsonNode *node);

/* A clinical note of about text_len bytes of text, as the clinic's app writes them. */
JsonNode *hb_test_note (GRand *rand,
                        const char *id,
                        const char *session_id,
                        const char *patient_id,
                        const char *written_at,
                        gsize text_len);

/* Runs SQL on a store file with a connection of its own, behind the library's back (to tamper,
 * to inspect); aborts the test on an SQL error. Returns how many rows the last statement
 * changed, or the first column of the first row for hb_test_sql_int(). */
int hb_test_sql_exec (const char *path, const char *sql);
gint64 hb_test_sql_int (const char *path, const char *sql);

/* Run the default main context until *flag becomes TRUE. */
void hb_test_wait_for (gboolean *flag);

G_END_DECLS
