/* HbSyncCache: bounded by count and bytes, never losing an unwritten document, wiping every
 * plaintext it lets go, and telling its owner about it on the owner's context only. */

#include <string.h>

#include "hb-sync-cache-private.h"
#include "hb-test-utils.h"

/* A clinical-looking JSON document of exactly len bytes (len >= 64). */
static GBytes *
doc_new (const char *id, gsize len)
{
  GString *s = g_string_new (NULL);

  g_string_append_printf (s, "{\"_id\":\"%s\",\"type\":\"note\",\"text\":\"", id);
  g_assert_cmpuint (s->len + 2, <=, len);
  while (s->len + 2 < len)
    g_string_append_c (s, 'a' + (char)(s->len % 26));
  g_string_append (s, "\"}");
  return g_string_free_to_bytes (s);
}

static void
add_ok (HbSyncCache *cache, const char *id, const char *rev, gsize len, HbSyncCacheFlags flags)
{
  g_autoptr (GBytes) doc = doc_new (id, len);
  g_autoptr (GError) error = NULL;

  g_assert_true (hb_sync_cache_add_sync (cache, id, rev, doc, flags, NULL, &error));
  g_assert_no_error (error);
}

static gboolean
holds (HbSyncCache *cache, const char *id, const char *rev)
{
  g_autoptr (GBytes) got = hb_sync_cache_lookup (cache, id, rev);

  return got != NULL;
}

/* The accounted size of one entry, measured on a cache of its own; another entry of the same
 * shape may cost a little more, when the allocator hands it a larger free block. */
static guint64
entry_size (const char *id, const char *rev, gsize len)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();

  add_ok (cache, id, rev, len, HB_SYNC_CACHE_FLAGS_NONE);
  return hb_sync_cache_get_bytes (cache);
}

/* The bounds hold, except for one unwritten entry larger than max_bytes held alone. */
static void
assert_within_bounds (HbSyncCache *cache, guint max_documents, guint64 max_bytes)
{
  g_autoptr (HbSyncCacheStats) stats = hb_sync_cache_get_stats (cache);

  g_assert_cmpuint (stats->entries, <=, max_documents);
  g_assert_cmpuint (stats->unwritten, <=, stats->entries);
  if (stats->bytes > max_bytes)
    {
      g_assert_cmpuint (stats->entries, ==, 1);
      g_assert_cmpuint (stats->unwritten, ==, 1);
    }
  g_assert_cmpuint (stats->peak_bytes, >=, stats->bytes);
}

static void
wait_until_waiting (HbSyncCache *cache, guint n)
{
  gint64 deadline = g_get_monotonic_time () + 30 * G_USEC_PER_SEC;

  while (_hb_sync_cache_get_waiting_for_testing (cache) != n)
    {
      g_assert_cmpint (g_get_monotonic_time (), <, deadline);
      g_usleep (1000);
    }
}

/* Runs the default context until nothing is pending. */
static void
drain (void)
{
  while (g_main_context_iteration (NULL, FALSE))
    ;
}

typedef struct
{
  gboolean done;
  gboolean ok;
  GError *error;
  GThread *thread;
} AddResult;

static void
add_done (GObject *source, GAsyncResult *result, gpointer user_data)
{
  AddResult *r = user_data;

  r->ok = hb_sync_cache_add_finish (HB_SYNC_CACHE (source), result, &r->error);
  r->thread = g_thread_self ();
  r->done = TRUE;
}

static void
add_async (HbSyncCache *cache, const char *id, gsize len, GCancellable *cancellable, AddResult *r)
{
  g_autoptr (GBytes) doc = doc_new (id, len);

  hb_sync_cache_add_async (cache, id, "1-a", doc, HB_SYNC_CACHE_FLAGS_NONE, cancellable, add_done,
                           r);
}

/* ------------------------------------------------------------------------------------------ */

static void
test_add_lookup_remove (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  g_autoptr (GBytes) doc = doc_new ("patient:1", 200);
  g_autoptr (GBytes) newer = doc_new ("patient:1", 300);
  g_autoptr (GBytes) got = NULL;
  g_autoptr (GBytes) again = NULL;

  g_assert_cmpuint (hb_sync_cache_get_max_documents (cache), ==,
                    HB_SYNC_CACHE_DEFAULT_MAX_DOCUMENTS);
  g_assert_cmpuint (hb_sync_cache_get_max_bytes (cache), ==, 50 * 1024 * 1024);
  g_assert_null (hb_sync_cache_lookup (cache, "patient:1", "1-a"));

  g_assert_true (hb_sync_cache_add_sync (cache, "patient:1", "1-a", doc, HB_SYNC_CACHE_FLAGS_NONE,
                                         NULL, NULL));
  got = hb_sync_cache_lookup (cache, "patient:1", "1-a");
  g_assert_nonnull (got);
  g_assert_true (g_bytes_equal (got, doc));
  /* A copy, not the caller's buffer nor the cache's. */
  g_assert_true (g_bytes_get_data (got, NULL) != g_bytes_get_data (doc, NULL));
  g_assert_false (holds (cache, "patient:1", "2-b"));
  g_assert_false (holds (cache, "patient:2", "1-a"));
  g_assert_cmpuint (hb_sync_cache_get_unwritten_count (cache), ==, 1);

  /* The same id and revision again replaces, and wipes, the old plaintext. */
  g_assert_true (hb_sync_cache_add_sync (cache, "patient:1", "1-a", newer, HB_SYNC_CACHE_FLAGS_NONE,
                                         NULL, NULL));
  again = hb_sync_cache_lookup (cache, "patient:1", "1-a");
  g_assert_true (g_bytes_equal (again, newer));
  /* The first copy is the caller's: unchanged by the replacement. */
  g_assert_true (g_bytes_equal (got, doc));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 1);
  g_assert_cmpuint (stats->unwritten, ==, 1);
  g_assert_cmpuint (stats->hits, ==, 2);
  g_assert_cmpuint (stats->misses, ==, 3);
  g_assert_cmpuint (stats->wipes, ==, 1);
  g_assert_cmpuint (stats->evictions, ==, 0);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  g_assert_false (hb_sync_cache_mark_written (cache, "patient:1", "2-b"));
  g_assert_true (hb_sync_cache_mark_written (cache, "patient:1", "1-a"));
  g_assert_true (hb_sync_cache_mark_written (cache, "patient:1", "1-a"));
  g_assert_cmpuint (hb_sync_cache_get_unwritten_count (cache), ==, 0);

  g_assert_false (hb_sync_cache_remove (cache, "patient:1", "2-b"));
  g_assert_true (hb_sync_cache_remove (cache, "patient:1", "1-a"));
  g_assert_false (hb_sync_cache_remove (cache, "patient:1", "1-a"));
  g_assert_false (holds (cache, "patient:1", "1-a"));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 0);
  g_assert_cmpuint (stats->bytes, ==, 0);
  g_assert_cmpuint (stats->wipes, ==, 2);
  g_assert_cmpuint (stats->hits, ==, 2);
  g_assert_cmpuint (stats->misses, ==, 4);
}

static void
test_bytes_accounted (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  const char *id = "observation:0f3c2a9e-5d1b-4c7e-9a2f-6b8d4e1c7a30";
  const char *rev = "1-8a1d62f8a5b0e0d29b1c4a4c0f3e6b71";
  guint64 small, large;

  add_ok (cache, id, rev, 1000, HB_SYNC_CACHE_FLAGS_NONE);
  small = hb_sync_cache_get_bytes (cache);
  /* Every allocation the entry owns, from the allocator: more than the strings and the text,
   * not wildly more. */
  g_assert_cmpuint (small, >, 1000 + strlen (id) + 1 + strlen (rev) + 1);
  g_assert_cmpuint (small, <, 1000 + strlen (id) + strlen (rev) + 512);

  add_ok (cache, "note:2", rev, 100000, HB_SYNC_CACHE_FLAGS_NONE);
  large = hb_sync_cache_get_bytes (cache) - small;
  g_assert_cmpuint (large, >, 100000);
  g_assert_cmpuint (large, <, 100000 + 512);

  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->bytes, ==, small + large);
  g_assert_cmpuint (stats->peak_bytes, ==, small + large);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  g_assert_true (hb_sync_cache_remove (cache, "note:2", rev));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->bytes, ==, small);
  g_assert_cmpuint (stats->peak_bytes, ==, small + large);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  /* A replacement is accounted at its own size. */
  add_ok (cache, id, rev, 50000, HB_SYNC_CACHE_FLAGS_NONE);
  g_assert_cmpuint (hb_sync_cache_get_bytes (cache), >, 50000 + strlen (id) + strlen (rev));
  g_assert_cmpuint (hb_sync_cache_get_bytes (cache), <, 50000 + strlen (id) + strlen (rev) + 512);

  hb_sync_cache_clear (cache);
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->bytes, ==, 0);
  g_assert_cmpuint (stats->peak_bytes, ==, small + large);
}

static void
test_lru_evicts_written_only (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  AddResult r = { 0 };

  hb_sync_cache_configure (cache, 3, G_MAXUINT64);
  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "b", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  add_ok (cache, "c", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  g_assert_cmpuint (hb_sync_cache_get_unwritten_count (cache), ==, 1);
  /* b used last: c is now the least recently used written entry. */
  g_assert_true (holds (cache, "b", "1-a"));

  add_ok (cache, "d", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  g_assert_false (holds (cache, "c", "1-a"));
  g_assert_true (holds (cache, "a", "1-a"));
  g_assert_true (holds (cache, "b", "1-a"));
  g_assert_true (holds (cache, "d", "1-a"));

  /* Unwritten a is older than b, but only b may go. */
  add_ok (cache, "e", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  g_assert_false (holds (cache, "b", "1-a"));
  g_assert_true (holds (cache, "a", "1-a"));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 3);
  g_assert_cmpuint (stats->unwritten, ==, 3);
  g_assert_cmpuint (stats->evictions, ==, 2);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  /* Full of unwritten entries: a written add does not wait, and is not kept. */
  add_ok (cache, "f", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  g_assert_false (holds (cache, "f", "1-a"));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 3);
  g_assert_cmpuint (stats->evictions, ==, 3);
  g_assert_cmpuint (stats->wipes, ==, 3);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  /* Marking written evicts nothing while the cache is within its bounds... */
  g_assert_true (hb_sync_cache_mark_written (cache, "a", "1-a"));
  g_assert_true (holds (cache, "a", "1-a"));
  /* ...and makes room for the next add, at once. */
  add_async (cache, "g", 100, NULL, &r);
  hb_test_wait_for (&r.done);
  g_assert_true (r.ok);
  g_assert_false (holds (cache, "a", "1-a"));
  g_assert_true (holds (cache, "g", "1-a"));
  g_assert_true (holds (cache, "d", "1-a"));
  g_assert_true (holds (cache, "e", "1-a"));
}

static void
test_count_bound_waits (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  AddResult c = { 0 };
  AddResult d = { 0 };

  hb_sync_cache_configure (cache, 2, G_MAXUINT64);
  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "b", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);

  add_async (cache, "c", 100, NULL, &c);
  drain ();
  g_assert_false (c.done);
  g_assert_cmpuint (_hb_sync_cache_get_waiting_for_testing (cache), ==, 1);
  g_assert_false (holds (cache, "c", "1-a"));
  assert_within_bounds (cache, 2, G_MAXUINT64);

  g_assert_true (hb_sync_cache_remove (cache, "a", "1-a"));
  hb_test_wait_for (&c.done);
  g_assert_true (c.ok);
  g_assert_no_error (c.error);
  g_assert_true (holds (cache, "c", "1-a"));

  add_async (cache, "d", 100, NULL, &d);
  drain ();
  g_assert_false (d.done);
  g_assert_true (hb_sync_cache_mark_written (cache, "b", "1-a"));
  hb_test_wait_for (&d.done);
  g_assert_true (d.ok);
  g_assert_false (holds (cache, "b", "1-a"));
  g_assert_true (holds (cache, "c", "1-a"));
  g_assert_true (holds (cache, "d", "1-a"));
  assert_within_bounds (cache, 2, G_MAXUINT64);
}

static void
test_byte_bound_waits (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  guint64 size = entry_size ("a", "1-a", 1000);
  guint64 max_bytes = 3 * size + size / 2;
  AddResult d = { 0 };

  hb_sync_cache_configure (cache, 100, max_bytes);
  add_ok (cache, "a", "1-a", 1000, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "b", "1-a", 1000, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "c", "1-a", 1000, HB_SYNC_CACHE_FLAGS_NONE);
  add_async (cache, "d", 1000, NULL, &d);
  drain ();
  g_assert_false (d.done);
  assert_within_bounds (cache, 100, max_bytes);

  g_assert_true (hb_sync_cache_mark_written (cache, "b", "1-a"));
  hb_test_wait_for (&d.done);
  g_assert_true (d.ok);
  g_assert_false (holds (cache, "b", "1-a"));
  g_assert_cmpuint (hb_sync_cache_get_bytes (cache), >, 3 * 1000);
  assert_within_bounds (cache, 100, max_bytes);
}

static void
test_oversized_alone (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  guint64 size = entry_size ("a", "1-a", 1000);
  guint64 max_bytes = 2 * size + size / 2;
  AddResult big = { 0 };
  AddResult c = { 0 };

  hb_sync_cache_configure (cache, 10, max_bytes);
  add_ok (cache, "a", "1-a", 1000, HB_SYNC_CACHE_FLAGS_NONE);
  add_async (cache, "big", 10000, NULL, &big);
  /* c would fit, but adds are admitted in order: it waits behind big. */
  add_async (cache, "c", 1000, NULL, &c);
  drain ();
  g_assert_false (big.done);
  g_assert_false (c.done);

  /* a written and evicted, big gets in alone, above the byte bound. */
  g_assert_true (hb_sync_cache_mark_written (cache, "a", "1-a"));
  hb_test_wait_for (&big.done);
  g_assert_true (big.ok);
  g_assert_false (holds (cache, "a", "1-a"));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 1);
  g_assert_cmpuint (stats->bytes, >, max_bytes);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);
  assert_within_bounds (cache, 10, max_bytes);
  drain ();
  g_assert_false (c.done);

  /* Nothing joins it, not even a written entry... */
  add_ok (cache, "w", "1-a", 1000, HB_SYNC_CACHE_FLAGS_WRITTEN);
  g_assert_false (holds (cache, "w", "1-a"));
  assert_within_bounds (cache, 10, max_bytes);

  /* ...and once written it is above the bound for no reason: evicted, and c gets in. */
  g_assert_true (hb_sync_cache_mark_written (cache, "big", "1-a"));
  hb_test_wait_for (&c.done);
  g_assert_false (holds (cache, "big", "1-a"));
  g_assert_true (holds (cache, "c", "1-a"));
  assert_within_bounds (cache, 10, max_bytes);
  g_assert_cmpuint (hb_sync_cache_get_bytes (cache), <=, max_bytes);

  /* Into an empty cache (or one of written entries only) it goes at once. */
  g_assert_true (hb_sync_cache_mark_written (cache, "c", "1-a"));
  add_ok (cache, "huge", "1-a", 100000, HB_SYNC_CACHE_FLAGS_NONE);
  g_assert_true (holds (cache, "huge", "1-a"));
  g_assert_false (holds (cache, "c", "1-a"));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 1);
}

static gboolean
try_add (HbSyncCache *cache, const char *id, gsize len, HbSyncCacheFlags flags)
{
  g_autoptr (GBytes) doc = doc_new (id, len);

  return hb_sync_cache_try_add (cache, id, "1-a", doc, flags);
}

static void
test_try_add_never_waits (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  guint64 size = entry_size ("a", "1-a", 1000);
  AddResult big = { 0 };

  hb_sync_cache_configure (cache, 2, 2 * size + size / 2);
  g_assert_true (try_add (cache, "a", 1000, HB_SYNC_CACHE_FLAGS_NONE));
  g_assert_true (try_add (cache, "b", 1000, HB_SYNC_CACHE_FLAGS_NONE));
  /* Full of unwritten entries: refused at once, its copy wiped. */
  g_assert_false (try_add (cache, "c", 1000, HB_SYNC_CACHE_FLAGS_NONE));
  g_assert_false (holds (cache, "c", "1-a"));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 2);
  g_assert_cmpuint (stats->wipes, ==, 1);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);
  g_assert_cmpuint (_hb_sync_cache_get_waiting_for_testing (cache), ==, 0);

  /* Room made: taken, evicting a written entry. */
  g_assert_true (hb_sync_cache_mark_written (cache, "a", "1-a"));
  g_assert_true (try_add (cache, "c", 1000, HB_SYNC_CACHE_FLAGS_NONE));
  g_assert_false (holds (cache, "a", "1-a"));
  g_assert_true (holds (cache, "c", "1-a"));

  /* A waiting add is never overtaken, even by one that would fit. */
  g_assert_true (hb_sync_cache_remove (cache, "c", "1-a"));
  add_async (cache, "big", 10000, NULL, &big);
  drain ();
  g_assert_false (big.done);
  g_assert_false (try_add (cache, "d", 1000, HB_SYNC_CACHE_FLAGS_NONE));
  g_assert_false (holds (cache, "d", "1-a"));
  g_assert_true (hb_sync_cache_remove (cache, "b", "1-a"));
  hb_test_wait_for (&big.done);
  g_assert_true (big.ok);
  assert_within_bounds (cache, 2, 2 * size + size / 2);
}

typedef struct
{
  HbSyncCache *cache;
  const char *id;
  const char *rev;
  gboolean write; /* mark written rather than remove */
} RoomMaker;

static gpointer
make_room_thread (gpointer data)
{
  RoomMaker *m = data;

  g_usleep (20000);
  if (m->write)
    g_assert_true (hb_sync_cache_mark_written (m->cache, m->id, m->rev));
  else
    g_assert_true (hb_sync_cache_remove (m->cache, m->id, m->rev));
  return NULL;
}

static void
test_async_room_from_thread (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  RoomMaker m = { cache, "a", "1-a", FALSE };
  AddResult b = { 0 };
  GThread *thread;

  hb_sync_cache_configure (cache, 1, G_MAXUINT64);
  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_async (cache, "b", 100, NULL, &b);
  thread = g_thread_new ("room", make_room_thread, &m);
  hb_test_wait_for (&b.done);
  g_thread_join (thread);

  g_assert_true (b.ok);
  /* Completed on the context the add was made from, not on the thread that made room. */
  g_assert_true (b.thread == g_thread_self ());
  g_assert_true (holds (cache, "b", "1-a"));
  g_assert_false (holds (cache, "a", "1-a"));
}

typedef struct
{
  HbSyncCache *cache;
  const char *id;
  GCancellable *cancellable;
  gint done;
  gboolean ok;
  GError *error;
} SyncAdd;

static gpointer
sync_add_thread (gpointer data)
{
  SyncAdd *s = data;
  g_autoptr (GBytes) doc = doc_new (s->id, 100);

  s->ok = hb_sync_cache_add_sync (s->cache, s->id, "1-a", doc, HB_SYNC_CACHE_FLAGS_NONE,
                                  s->cancellable, &s->error);
  g_atomic_int_set (&s->done, TRUE);
  return NULL;
}

static void
test_sync_blocks_until_written (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  SyncAdd s = { cache, "c" };
  RoomMaker m = { cache, "a", "1-a", TRUE };
  GThread *adder;
  GThread *writer;

  hb_sync_cache_configure (cache, 2, G_MAXUINT64);
  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "b", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);

  adder = g_thread_new ("adder", sync_add_thread, &s);
  wait_until_waiting (cache, 1);
  g_usleep (20000);
  g_assert_false (g_atomic_int_get (&s.done));
  g_assert_false (holds (cache, "c", "1-a"));

  /* Another thread, not the owner, makes the room. */
  writer = g_thread_new ("writer", make_room_thread, &m);
  g_thread_join (writer);
  g_thread_join (adder);
  g_assert_true (s.ok);
  g_assert_no_error (s.error);
  g_assert_true (holds (cache, "c", "1-a"));
  g_assert_false (holds (cache, "a", "1-a"));
  g_assert_cmpuint (_hb_sync_cache_get_waiting_for_testing (cache), ==, 0);
}

static void
test_cancel_sync (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GBytes) doc = doc_new ("x", 100);
  g_autoptr (HbSyncCacheStats) stats = NULL;
  g_autoptr (GError) error = NULL;
  SyncAdd s = { cache, "c", cancellable };
  GThread *adder;

  hb_sync_cache_configure (cache, 1, G_MAXUINT64);
  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);

  adder = g_thread_new ("adder", sync_add_thread, &s);
  wait_until_waiting (cache, 1);
  g_cancellable_cancel (cancellable);
  g_thread_join (adder);
  g_assert_false (s.ok);
  g_assert_error (s.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&s.error);
  g_assert_cmpuint (_hb_sync_cache_get_waiting_for_testing (cache), ==, 0);
  g_assert_false (holds (cache, "c", "1-a"));
  stats = hb_sync_cache_get_stats (cache);
  /* The copy taken for the cancelled add is wiped too. */
  g_assert_cmpuint (stats->wipes, ==, 1);
  g_assert_cmpuint (stats->entries, ==, 1);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  /* Already cancelled: fails at once, even with room. */
  g_assert_true (hb_sync_cache_remove (cache, "a", "1-a"));
  g_assert_false (hb_sync_cache_add_sync (cache, "x", "1-a", doc, HB_SYNC_CACHE_FLAGS_NONE,
                                          cancellable, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_false (holds (cache, "x", "1-a"));

  /* Removing the room later does not resurrect the cancelled add. */
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 0);
}

static void
test_cancel_async (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (GCancellable) late = g_cancellable_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  guint64 size = entry_size ("a", "1-a", 1000);
  AddResult big = { 0 };
  AddResult c = { 0 };
  AddResult d = { 0 };
  AddResult e = { 0 };

  hb_sync_cache_configure (cache, 10, 2 * size + size / 2);
  add_ok (cache, "a", "1-a", 1000, HB_SYNC_CACHE_FLAGS_NONE);
  /* big waits for a; c waits behind big although it would fit. */
  add_async (cache, "big", 10000, cancellable, &big);
  add_async (cache, "c", 1000, NULL, &c);
  drain ();
  g_assert_false (big.done);
  g_assert_false (c.done);

  /* Cancelling the head of the queue lets the next one in. */
  g_cancellable_cancel (cancellable);
  hb_test_wait_for (&big.done);
  g_assert_false (big.ok);
  g_assert_error (big.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&big.error);
  hb_test_wait_for (&c.done);
  g_assert_true (c.ok);
  g_assert_false (holds (cache, "big", "1-a"));
  g_assert_true (holds (cache, "c", "1-a"));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->wipes, ==, 1);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  /* Already cancelled: fails without being queued. */
  add_async (cache, "d", 1000, cancellable, &d);
  g_assert_cmpuint (_hb_sync_cache_get_waiting_for_testing (cache), ==, 0);
  hb_test_wait_for (&d.done);
  g_assert_error (d.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&d.error);
  g_assert_false (holds (cache, "d", "1-a"));

  /* Cancelled after it was admitted, before its callback ran: the document is in the cache,
   * and the add says so. */
  add_async (cache, "e", 1000, late, &e);
  drain ();
  g_assert_false (e.done);
  g_assert_true (hb_sync_cache_remove (cache, "a", "1-a"));
  g_cancellable_cancel (late);
  hb_test_wait_for (&e.done);
  g_assert_true (e.ok);
  g_assert_no_error (e.error);
  g_assert_true (holds (cache, "e", "1-a"));
  drain ();
}

/* ------------------------------------------------------------------------------------------ */

typedef struct
{
  guint cache_wipes;
  guint copy_wipes;
  gsize cache_bytes;
} Wipes;

/* Called after the wipe, before the free: the buffer must be all zeros. */
static void
record_wipe (const guint8 *data, gsize len, gboolean copy, gpointer user_data)
{
  Wipes *w = user_data;

  for (gsize i = 0; i < len; i++)
    g_assert_cmpuint (data[i], ==, 0);
  if (copy)
    {
      w->copy_wipes++;
    }
  else
    {
      w->cache_wipes++;
      w->cache_bytes += len;
    }
}

static void
test_wipes (void)
{
  HbSyncCache *cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  GList *all;
  GBytes *copy;
  Wipes w = { 0 };

  _hb_sync_cache_set_wipe_hook_for_testing (cache, record_wipe, &w);
  hb_sync_cache_configure (cache, 3, G_MAXUINT64);

  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  g_assert_true (hb_sync_cache_remove (cache, "a", "1-a"));
  g_assert_cmpuint (w.cache_wipes, ==, 1);
  g_assert_cmpuint (w.cache_bytes, ==, 100);

  /* Replaced. */
  add_ok (cache, "b", "1-a", 200, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "b", "1-a", 300, HB_SYNC_CACHE_FLAGS_NONE);
  g_assert_cmpuint (w.cache_wipes, ==, 2);
  g_assert_cmpuint (w.cache_bytes, ==, 300);

  /* Evicted. */
  add_ok (cache, "c", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  add_ok (cache, "d", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "e", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  g_assert_cmpuint (w.cache_wipes, ==, 3);

  /* Copies handed out are wiped on their last unref, not before. */
  copy = hb_sync_cache_lookup (cache, "b", "1-a");
  g_assert_nonnull (copy);
  g_bytes_ref (copy);
  g_bytes_unref (copy);
  g_assert_cmpuint (w.copy_wipes, ==, 0);
  g_assert_cmpuint (((const guint8 *)g_bytes_get_data (copy, NULL))[0], ==, '{');
  g_bytes_unref (copy);
  g_assert_cmpuint (w.copy_wipes, ==, 1);
  all = hb_sync_cache_get_all (cache);
  g_assert_cmpuint (g_list_length (all), ==, 3);
  g_list_free_full (all, (GDestroyNotify)hb_sync_cache_entry_unref);
  g_assert_cmpuint (w.copy_wipes, ==, 4);

  /* Cleared, unwritten or not. */
  hb_sync_cache_clear (cache);
  g_assert_cmpuint (w.cache_wipes, ==, 6);
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->wipes, ==, w.cache_wipes);
  g_assert_cmpuint (stats->evictions, ==, 1);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  /* With the cache. */
  add_ok (cache, "f", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "g", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  g_assert_finalize_object (cache);
  g_assert_cmpuint (w.cache_wipes, ==, 8);
  g_assert_cmpuint (w.copy_wipes, ==, 4);
}

/* ------------------------------------------------------------------------------------------ */

typedef struct
{
  guint stats_changed;
  guint max_documents_notified;
  guint max_bytes_notified;
  GThread *thread;
} Signals;

static void
on_stats_changed (HbSyncCache *cache, gpointer user_data)
{
  Signals *s = user_data;

  s->stats_changed++;
  s->thread = g_thread_self ();
}

static void
on_notify (GObject *object, GParamSpec *pspec, gpointer user_data)
{
  Signals *s = user_data;

  if (g_strcmp0 (pspec->name, "max-documents") == 0)
    s->max_documents_notified++;
  else if (g_strcmp0 (pspec->name, "max-bytes") == 0)
    s->max_bytes_notified++;
  s->thread = g_thread_self ();
}

static gpointer
busy_thread (gpointer data)
{
  HbSyncCache *cache = data;

  for (guint i = 0; i < 50; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:%u", i);

      add_ok (cache, id, "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
      g_assert_true (holds (cache, id, "1-a"));
      g_assert_true (hb_sync_cache_remove (cache, id, "1-a"));
    }
  hb_sync_cache_configure (cache, 7, 7000);
  return NULL;
}

static void
test_signals_on_owner_context (void)
{
  g_autoptr (HbSyncCache) cache = NULL;
  g_autoptr (GMainContext) owner = g_main_context_new ();
  Signals s = { 0 };
  GThread *thread;

  /* Created under another thread-default context: that one, and only that one, emits. */
  g_main_context_push_thread_default (owner);
  cache = hb_sync_cache_new ();
  g_main_context_pop_thread_default (owner);
  g_signal_connect (cache, "stats-changed", G_CALLBACK (on_stats_changed), &s);
  g_signal_connect (cache, "notify", G_CALLBACK (on_notify), &s);

  /* Never during the call, however many changes; one emission for all of them. */
  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  g_assert_true (holds (cache, "a", "1-a"));
  g_assert_true (hb_sync_cache_remove (cache, "a", "1-a"));
  g_assert_cmpuint (s.stats_changed, ==, 0);
  drain ();
  g_assert_cmpuint (s.stats_changed, ==, 0);
  while (g_main_context_iteration (owner, FALSE))
    ;
  g_assert_cmpuint (s.stats_changed, ==, 1);
  g_assert_true (s.thread == g_thread_self ());

  /* Changes made on a worker thread are reported here, not there. */
  s.thread = NULL;
  thread = g_thread_new ("busy", busy_thread, cache);
  g_thread_join (thread);
  g_assert_cmpuint (s.stats_changed, ==, 1);
  g_assert_cmpuint (s.max_documents_notified, ==, 0);
  while (g_main_context_iteration (owner, FALSE))
    ;
  g_assert_cmpuint (s.stats_changed, ==, 2);
  g_assert_cmpuint (s.max_documents_notified, ==, 1);
  g_assert_cmpuint (s.max_bytes_notified, ==, 1);
  g_assert_true (s.thread == g_thread_self ());

  /* Notified only on change, however they are set. */
  hb_sync_cache_configure (cache, 7, 7000);
  g_object_set (cache, "max-documents", 7, NULL);
  while (g_main_context_iteration (owner, FALSE))
    ;
  g_assert_cmpuint (s.max_documents_notified, ==, 1);
  g_assert_cmpuint (s.max_bytes_notified, ==, 1);
  g_object_set (cache, "max-bytes", (guint64)8000, NULL);
  while (g_main_context_iteration (owner, FALSE))
    ;
  g_assert_cmpuint (s.max_documents_notified, ==, 1);
  g_assert_cmpuint (s.max_bytes_notified, ==, 2);
  g_assert_cmpuint (hb_sync_cache_get_max_bytes (cache), ==, 8000);

  /* A lookup changes hits or misses: that is a change of the statistics too. */
  g_assert_false (holds (cache, "a", "1-a"));
  while (g_main_context_iteration (owner, FALSE))
    ;
  g_assert_cmpuint (s.stats_changed, ==, 3);

  /* A pending emission does not keep the cache alive. */
  g_assert_false (holds (cache, "a", "1-a"));
  g_assert_finalize_object (g_steal_pointer (&cache));
  while (g_main_context_iteration (owner, FALSE))
    ;
  g_assert_cmpuint (s.stats_changed, ==, 3);
}

/* ------------------------------------------------------------------------------------------ */

static void
test_configure (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  AddResult d = { 0 };
  AddResult e = { 0 };
  guint max_documents = 0;

  hb_sync_cache_configure (cache, 4, G_MAXUINT64);
  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "b", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "c", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  add_ok (cache, "w", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);

  /* Lowered: written entries go at once; unwritten ones stay, above the bound. */
  hb_sync_cache_configure (cache, 1, G_MAXUINT64);
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 2);
  g_assert_cmpuint (stats->evictions, ==, 2);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);
  g_object_get (cache, "max-documents", &max_documents, NULL);
  g_assert_cmpuint (max_documents, ==, 1);

  /* Nothing new gets in until they fit again. */
  add_async (cache, "d", 100, NULL, &d);
  drain ();
  g_assert_false (d.done);
  g_assert_true (hb_sync_cache_mark_written (cache, "a", "1-a"));
  /* a is evicted at once (the cache is above its bound), but b alone still fills it. */
  g_assert_false (holds (cache, "a", "1-a"));
  drain ();
  g_assert_false (d.done);

  /* Raised: the waiting add gets in. */
  g_object_set (cache, "max-documents", 3, NULL);
  hb_test_wait_for (&d.done);
  g_assert_true (d.ok);
  g_assert_true (holds (cache, "b", "1-a"));
  g_assert_true (holds (cache, "d", "1-a"));

  /* The byte bound the same way. */
  hb_sync_cache_configure (cache, 3, hb_sync_cache_get_bytes (cache));
  add_async (cache, "e", 100, NULL, &e);
  drain ();
  g_assert_false (e.done);
  hb_sync_cache_configure (cache, 3, G_MAXUINT64);
  hb_test_wait_for (&e.done);
  g_assert_true (e.ok);
  g_assert_cmpuint (hb_sync_cache_get_unwritten_count (cache), ==, 3);
}

static void
test_get_all (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autolist (HbSyncCacheEntry) all = NULL;
  g_autoptr (GBytes) expected = doc_new ("b", 150);
  g_autoptr (HbSyncCacheStats) stats = NULL;
  const char *order[] = { "b", "d", "a", "c" };
  HbSyncCacheEntry *first;
  guint i = 0;

  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  add_ok (cache, "b", "2-b", 150, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "c", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  add_ok (cache, "d", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);

  all = hb_sync_cache_get_all (cache);
  g_assert_cmpuint (g_list_length (all), ==, 4);
  /* Unwritten first, in the order they came; then written, least recently used first. */
  for (GList *l = all; l != NULL; l = l->next, i++)
    {
      g_assert_cmpstr (hb_sync_cache_entry_get_id (l->data), ==, order[i]);
      g_assert_cmpint (hb_sync_cache_entry_get_written (l->data), ==, i >= 2);
    }
  first = all->data;
  g_assert_cmpstr (hb_sync_cache_entry_get_rev (first), ==, "2-b");
  g_assert_true (g_bytes_equal (hb_sync_cache_entry_get_plaintext (first), expected));

  /* The entries are copies: they outlive what the cache holds. */
  hb_sync_cache_clear (cache);
  g_assert_true (g_bytes_equal (hb_sync_cache_entry_get_plaintext (first), expected));
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->hits, ==, 0);
  g_assert_cmpuint (stats->misses, ==, 0);
}

static void
test_clear_admits_waiters (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  AddResult c = { 0 };

  hb_sync_cache_configure (cache, 2, G_MAXUINT64);
  add_ok (cache, "a", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_ok (cache, "b", "1-a", 100, HB_SYNC_CACHE_FLAGS_WRITTEN);
  g_assert_true (hb_sync_cache_mark_written (cache, "b", "1-a"));
  add_ok (cache, "b2", "1-a", 100, HB_SYNC_CACHE_FLAGS_NONE);
  add_async (cache, "c", 100, NULL, &c);
  drain ();
  g_assert_false (c.done);

  hb_sync_cache_clear (cache);
  hb_test_wait_for (&c.done);
  g_assert_true (c.ok);
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->entries, ==, 1);
  g_assert_cmpuint (stats->unwritten, ==, 1);
  g_assert_cmpuint (stats->wipes, ==, 3);
  g_assert_cmpuint (stats->evictions, ==, 1);
  g_assert_true (holds (cache, "c", "1-a"));
}

/* ------------------------------------------------------------------------------------------ */

#define STRESS_PRODUCERS 4
#define STRESS_DOCS 300
#define STRESS_MAX_DOCUMENTS 16

typedef struct
{
  HbSyncCache *cache;
  GAsyncQueue *to_write; /* ids admitted unwritten, for the writer; "" ends one producer */
  guint64 max_bytes;
  gint adds;
} Stress;

typedef struct
{
  Stress *stress;
  guint index;
  guint32 seed;
} Producer;

static gpointer
stress_producer (gpointer data)
{
  Producer *p = data;
  Stress *st = p->stress;
  g_autoptr (GRand) rand = g_rand_new_with_seed (p->seed);

  for (guint i = 0; i < STRESS_DOCS; i++)
    {
      g_autofree char *id = g_strdup_printf ("note:%u-%u", p->index, i);
      gboolean written = g_rand_int_range (rand, 0, 8) == 0;
      /* Now and then one document larger than the whole byte bound. */
      gsize len = i % 97 == 50 ? st->max_bytes + 1000 : (gsize)g_rand_int_range (rand, 64, 4000);

      add_ok (st->cache, id, "1-a", len,
              written ? HB_SYNC_CACHE_FLAGS_WRITTEN : HB_SYNC_CACHE_FLAGS_NONE);
      g_atomic_int_inc (&st->adds);
      assert_within_bounds (st->cache, STRESS_MAX_DOCUMENTS, st->max_bytes);
      if (!written)
        g_async_queue_push (st->to_write, g_steal_pointer (&id));

      if (i > 0)
        {
          g_autofree char *earlier
              = g_strdup_printf ("note:%u-%u", p->index, g_rand_int_range (rand, 0, i));
          g_autoptr (GBytes) got = hb_sync_cache_lookup (st->cache, earlier, "1-a");

          if (got != NULL)
            g_assert_true (g_str_has_prefix (g_bytes_get_data (got, NULL), "{\"_id\":\"note:"));
          assert_within_bounds (st->cache, STRESS_MAX_DOCUMENTS, st->max_bytes);
        }
    }
  g_async_queue_push (st->to_write, g_strdup (""));
  return NULL;
}

/* The replicator's side: every unwritten document is still there when it is written. */
static gpointer
stress_writer (gpointer data)
{
  Stress *st = data;
  g_autoptr (GRand) rand = g_rand_new_with_seed (42);
  guint ended = 0;

  while (ended < STRESS_PRODUCERS)
    {
      g_autofree char *id = g_async_queue_pop (st->to_write);

      if (*id == '\0')
        {
          ended++;
          continue;
        }
      if (g_rand_int_range (rand, 0, 4) == 0)
        {
          g_autoptr (GBytes) got = hb_sync_cache_lookup (st->cache, id, "1-a");

          g_assert_nonnull (got);
        }
      if (g_rand_int_range (rand, 0, 3) == 0)
        {
          g_assert_true (hb_sync_cache_remove (st->cache, id, "1-a"));
        }
      else
        {
          g_assert_true (hb_sync_cache_mark_written (st->cache, id, "1-a"));
          if (g_rand_boolean (rand))
            hb_sync_cache_remove (st->cache, id, "1-a");
        }
      assert_within_bounds (st->cache, STRESS_MAX_DOCUMENTS, st->max_bytes);
    }
  return NULL;
}

static void
test_stress (void)
{
  g_autoptr (HbSyncCache) cache = hb_sync_cache_new ();
  g_autoptr (HbSyncCacheStats) stats = NULL;
  Stress st = { cache, g_async_queue_new_full (g_free) };
  Producer producers[STRESS_PRODUCERS];
  GThread *threads[STRESS_PRODUCERS];
  GThread *writer;

  /* Both bounds bite: 16 documents of 2 KB on average would be 32 KB. */
  st.max_bytes = 24 * 1024;
  hb_sync_cache_configure (cache, STRESS_MAX_DOCUMENTS, st.max_bytes);
  writer = g_thread_new ("writer", stress_writer, &st);
  for (guint i = 0; i < STRESS_PRODUCERS; i++)
    {
      producers[i] = (Producer){ &st, i, g_test_rand_int () };
      threads[i] = g_thread_new ("producer", stress_producer, &producers[i]);
    }
  for (guint i = 0; i < STRESS_PRODUCERS; i++)
    g_thread_join (threads[i]);
  g_thread_join (writer);

  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (g_atomic_int_get (&st.adds), ==, STRESS_PRODUCERS * STRESS_DOCS);
  g_assert_cmpuint (stats->unwritten, ==, 0);
  g_assert_cmpuint (stats->evictions, >, 0);
  /* Every buffer that came in left exactly once, or is still here. */
  g_assert_cmpuint (stats->wipes + stats->entries, ==, STRESS_PRODUCERS * STRESS_DOCS);
  g_assert_cmpuint (stats->peak_bytes, >, st.max_bytes);
  g_clear_pointer (&stats, hb_sync_cache_stats_free);

  hb_sync_cache_clear (cache);
  stats = hb_sync_cache_get_stats (cache);
  g_assert_cmpuint (stats->wipes, ==, STRESS_PRODUCERS * STRESS_DOCS);
  g_assert_cmpuint (stats->bytes, ==, 0);
  g_async_queue_unref (st.to_write);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/sync-cache/add-lookup-remove", test_add_lookup_remove);
  g_test_add_func ("/sync-cache/bytes-accounted", test_bytes_accounted);
  g_test_add_func ("/sync-cache/lru-evicts-written-only", test_lru_evicts_written_only);
  g_test_add_func ("/sync-cache/bounds/count-waits", test_count_bound_waits);
  g_test_add_func ("/sync-cache/bounds/bytes-waits", test_byte_bound_waits);
  g_test_add_func ("/sync-cache/bounds/oversized-alone", test_oversized_alone);
  g_test_add_func ("/sync-cache/bounds/configure", test_configure);
  g_test_add_func ("/sync-cache/wait/async-room-from-thread", test_async_room_from_thread);
  g_test_add_func ("/sync-cache/wait/sync-blocks-until-written", test_sync_blocks_until_written);
  g_test_add_func ("/sync-cache/wait/cancel-sync", test_cancel_sync);
  g_test_add_func ("/sync-cache/wait/cancel-async", test_cancel_async);
  g_test_add_func ("/sync-cache/wait/clear-admits-waiters", test_clear_admits_waiters);
  g_test_add_func ("/sync-cache/wait/try-add-never-waits", test_try_add_never_waits);
  g_test_add_func ("/sync-cache/wipes", test_wipes);
  g_test_add_func ("/sync-cache/get-all", test_get_all);
  g_test_add_func ("/sync-cache/signals-on-owner-context", test_signals_on_owner_context);
  g_test_add_func ("/sync-cache/stress", test_stress);

  return g_test_run ();
}
