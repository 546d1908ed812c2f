#include <glib/gstdio.h>

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
