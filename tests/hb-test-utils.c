#include <glib/gstdio.h>
#include <sqlite3.h>

#include "hb-test-utils.h"

char *
hb_test_mkdtemp (void)
{
  g_autoptr (GError) error = NULL;
  char *dir = g_dir_make_tmp ("hbsync-test-XXXXXX", &error);

  g_assert_no_error (error);
  return dir;
}

void
hb_test_rmdir (const char *path)
{
  g_autoptr (GFile) dir = g_file_new_for_path (path);
  g_autoptr (GFileEnumerator) en = NULL;
  GFileInfo *info;

  en = g_file_enumerate_children (dir, G_FILE_ATTRIBUTE_STANDARD_NAME,
                                  G_FILE_QUERY_INFO_NOFOLLOW_SYMLINKS, NULL, NULL);
  while (en != NULL && (info = g_file_enumerator_next_file (en, NULL, NULL)) != NULL)
    {
      g_autofree char *child = g_build_filename (path, g_file_info_get_name (info), NULL);
      if (g_file_test (child, G_FILE_TEST_IS_DIR))
        hb_test_rmdir (child);
      else
        g_unlink (child);
      g_object_unref (info);
    }
  g_rmdir (path);
}

HbVault *
hb_test_vault_new (const char *path, gboolean device_secret)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *recovery = NULL;
  HbVault *vault = hb_vault_new (path);

  hb_vault_set_kdf_params (vault, 8192, 1, 1);
  hb_vault_create_sync (vault, HB_TEST_PIN,
                        device_secret ? HB_VAULT_FLAGS_NONE : HB_VAULT_FLAGS_NO_DEVICE_SECRET,
                        &recovery, NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (recovery);
  g_assert_false (hb_vault_get_locked (vault));
  return vault;
}

HbStore *
hb_test_store_new (char **out_dir)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = hb_test_mkdtemp ();
  g_autofree char *path = g_build_filename (dir, "store.db", NULL);
  g_autoptr (HbVault) vault = hb_test_vault_new (path, FALSE);
  HbStore *store = hb_store_open_sync (vault, NULL, &error);

  g_assert_no_error (error);
  g_assert_nonnull (store);
  *out_dir = g_steal_pointer (&dir);
  return store;
}

JsonNode *
hb_test_json (const char *text)
{
  g_autoptr (GError) error = NULL;
  JsonNode *node = json_from_string (text, &error);

  g_assert_no_error (error);
  g_assert_nonnull (node);
  return node;
}

char *
hb_test_to_string (JsonNode *node)
{
  return json_to_string (node, FALSE);
}

void
hb_test_wait_for (gboolean *flag)
{
  while (!*flag)
    g_main_context_iteration (NULL, TRUE);
}

static const char *const note_phrases[] = {
  "Patient reports intermittent chest tightness on exertion, relieved by rest. ",
  "No fever overnight; tolerating oral fluids and a light diet. ",
  "Wound edges well approximated, no erythema or discharge at the incision site. ",
  "BP rechecked after 15 minutes seated: improved. Continue current regimen. ",
  "Discussed medication adherence; patient demonstrates correct inhaler technique. ",
  "Mild pedal oedema bilaterally; advised leg elevation and reduced salt intake. ",
  "Family present at bedside, questions answered about the discharge plan. ",
  "Pain score 3/10 at rest, 5/10 on mobilisation; paracetamol given as charted. ",
};

JsonNode *
hb_test_note (GRand *rand,
              const char *id,
              const char *session_id,
              const char *patient_id,
              const char *written_at,
              gsize text_len)
{
  g_autoptr (GString) text = g_string_new (NULL);
  JsonObject *note = json_object_new ();
  JsonNode *node = json_node_new (JSON_NODE_OBJECT);

  while (text->len < text_len)
    g_string_append (text, note_phrases[g_rand_int_range (rand, 0, G_N_ELEMENTS (note_phrases))]);
  json_object_set_string_member (note, "_id", id);
  json_object_set_string_member (note, "type", "note");
  json_object_set_string_member (note, "session_id", session_id);
  json_object_set_string_member (note, "patient_id", patient_id);
  json_object_set_string_member (note, "author", "Dr. Nkechi Adeyemi");
  json_object_set_string_member (note, "text", text->str);
  json_object_set_string_member (note, "written_at", written_at);
  json_node_take_object (node, note);
  return node;
}

static sqlite3 *
sql_open (const char *path)
{
  sqlite3 *db = NULL;

  g_assert_cmpint (sqlite3_open_v2 (path, &db, SQLITE_OPEN_READWRITE, NULL), ==, SQLITE_OK);
  sqlite3_busy_timeout (db, 10000);
  return db;
}

int
hb_test_sql_exec (const char *path, const char *sql)
{
  sqlite3 *db = sql_open (path);
  char *message = NULL;
  int changes;

  sqlite3_exec (db, sql, NULL, NULL, &message);
  g_assert_null (message);
  changes = sqlite3_changes (db);
  sqlite3_close (db);
  return changes;
}

gint64
hb_test_sql_int (const char *path, const char *sql)
{
  sqlite3 *db = sql_open (path);
  sqlite3_stmt *stmt;
  gint64 n;

  g_assert_cmpint (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
  n = sqlite3_column_int64 (stmt, 0);
  sqlite3_finalize (stmt);
  sqlite3_close (db);
  return n;
}
