/* libFuzzer target: the body of an error answer (hb_remote_parse_error_body) and the error
 * built from it (hb_remote_status_error). The first two bytes choose the status. */

#include <stdint.h>
#include <string.h>

#include "hb-remote-parse-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
check_quoted (const char *s)
{
  if (s == NULL)
    return;
  g_assert_cmpuint (strlen (s), >, 0);
  g_assert_cmpuint (strlen (s), <=, HB_REMOTE_MAX_QUOTED);
  g_assert_true (g_utf8_validate (s, -1, NULL));
  for (const char *p = s; *p != '\0'; p++)
    g_assert_true ((guchar)*p >= 0x20 && *p != 0x7f);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autofree char *couch_error = NULL;
  g_autofree char *reason = NULL;
  g_autoptr (GError) error = NULL;
  guint status;

  if (size < 2)
    return 0;
  status = 100 + (data[0] << 8 | data[1]) % 900;
  hb_remote_parse_error_body (data + 2, size - 2, &couch_error, &reason);
  check_quoted (couch_error);
  check_quoted (reason);
  error = hb_remote_status_error (status, "fuzz", data + 2, size - 2);
  g_assert_true (error->domain == HB_REMOTE_ERROR);
  g_assert_true (error->code != HB_REMOTE_ERROR_BAD_RESPONSE);
  g_assert_true (g_utf8_validate (error->message, -1, NULL));
  g_assert_cmpuint (strlen (error->message), <, 100 + 2 * HB_REMOTE_MAX_QUOTED);
  return 0;
}
