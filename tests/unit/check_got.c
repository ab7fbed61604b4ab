/* check_got.c — hp_got: rewriting and restoring the import slots of a library loaded with
 * dlopen (lazy binding and full RELRO), forgetting unloaded objects, leaving the rest of
 * the process alone. */
#include <check.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "hp_got.h"
#include "hp_proto.h"

static int g_hook_calls;

static void *counting_malloc(size_t n)
{
  g_hook_calls++;
  return malloc(n);   /* this executable's own slot: never rewritten here */
}

typedef struct {
  const char *want;   /* choose objects whose path contains this */
  int mains, chosen;
} choice;

static uint32_t choose_lib(const char *path, int is_main, uintptr_t lo, uintptr_t hi,
                           void *arg)
{
  choice *c = arg;
  ck_assert_uint_lt(lo, hi);
  c->mains += is_main;
  if (is_main)
    ck_assert_str_eq(path, "");
  if (strstr(path, c->want)) {
    c->chosen++;
    return 1;
  }
  return 0;
}

typedef struct {
  void *h;
  void *(*lib_malloc)(size_t);
  void (*lib_free)(void *);
} lib;

/* RTLD_LAZY: the lazy-binding library's malloc slot still holds its PLT stub when it is
 * rewritten, and holds it again after the restore. */
static lib lib_open(const char *env)
{
  const char *path = getenv(env);
  ck_assert_msg(path != NULL, "%s is not set (run through meson test)", env);
  lib l = { dlopen(path, RTLD_LAZY | RTLD_LOCAL), NULL, NULL };
  ck_assert_msg(l.h != NULL, "dlopen: %s", dlerror());
  l.lib_malloc = (void *(*)(size_t))dlsym(l.h, "hp_native_lib_malloc");
  l.lib_free = (void (*)(void *))dlsym(l.h, "hp_native_lib_free");
  ck_assert_ptr_nonnull(l.lib_malloc);
  return l;
}

static void patch_call_restore(const char *env, const char *name)
{
  lib l = lib_open(env);
  hp_got_sym sym = { "malloc", dlsym(RTLD_DEFAULT, "malloc"), (void *)counting_malloc, NULL };
  hp_got_set *s = hp_got_set_new();
  ck_assert_ptr_nonnull(s);
  choice c = { name, 0, 0 };
  int n = hp_got_patch(s, &sym, 1, choose_lib, &c);
  ck_assert_int_ge(n, 1);
  ck_assert_int_eq(c.mains, 1);
  ck_assert_int_eq(c.chosen, 1);
  ck_assert_uint_eq(hp_got_count(s), (size_t)n);

  g_hook_calls = 0;
  void *p = l.lib_malloc(100);
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(g_hook_calls, 1);
  l.lib_free(p);

  /* Known objects are not looked at again; nothing new is rewritten. */
  c.chosen = 0;
  ck_assert_int_eq(hp_got_patch(s, &sym, 1, choose_lib, &c), 0);
  ck_assert_int_eq(c.chosen, 0);

  ck_assert_int_eq(hp_got_restore(s), n);
  ck_assert_uint_eq(hp_got_count(s), 0);
  p = l.lib_malloc(100);
  ck_assert_int_eq(g_hook_calls, 1);
  l.lib_free(p);

  /* A second start after the restore rewrites the slots again. */
  c.chosen = 0;
  ck_assert_int_eq(hp_got_patch(s, &sym, 1, choose_lib, &c), n);
  p = l.lib_malloc(100);
  ck_assert_int_eq(g_hook_calls, 2);
  l.lib_free(p);
  ck_assert_int_eq(hp_got_restore(s), n);
  hp_got_set_free(s);
  hp_got_set_free(NULL);
  dlclose(l.h);
}

START_TEST(lazy_binding_patched_and_restored)
{
  patch_call_restore("HP_GOT_TESTLIB", "libhp_got_testlib.so");
}
END_TEST

START_TEST(full_relro_patched_and_restored)
{
  patch_call_restore("HP_GOT_TESTLIB_NOW", "libhp_got_testlib_now.so");
}
END_TEST

/* A slot that holds neither the real function nor an address inside its object (someone
 * else's hook) is left alone. */
START_TEST(foreign_slot_left_alone)
{
  lib l = lib_open("HP_GOT_TESTLIB_NOW");   /* bound at load: the slot holds malloc */
  hp_got_sym sym = { "malloc", (void *)counting_malloc /* not what the slot holds */,
                     (void *)counting_malloc, NULL };
  hp_got_set *s = hp_got_set_new();
  choice c = { "libhp_got_testlib_now.so", 0, 0 };
  ck_assert_int_eq(hp_got_patch(s, &sym, 1, choose_lib, &c), 0);
  ck_assert_int_eq(c.chosen, 1);
  hp_got_set_free(s);
  dlclose(l.h);
}
END_TEST

/* A slot holding the alias (an executable's canonical PLT entry) is rewritten as if it
 * held the real function, and gets the alias back at the restore. */
START_TEST(alias_slot_rewritten)
{
  lib l = lib_open("HP_GOT_TESTLIB_NOW");
  hp_got_sym sym = { "malloc", (void *)lib_open, (void *)counting_malloc,
                     dlsym(RTLD_DEFAULT, "malloc") };
  hp_got_set *s = hp_got_set_new();
  choice c = { "libhp_got_testlib_now.so", 0, 0 };
  int n = hp_got_patch(s, &sym, 1, choose_lib, &c);
  ck_assert_int_ge(n, 1);
  g_hook_calls = 0;
  l.lib_free(l.lib_malloc(10));
  ck_assert_int_eq(g_hook_calls, 1);
  ck_assert_int_eq(hp_got_restore(s), n);
  l.lib_free(l.lib_malloc(10));
  ck_assert_int_eq(g_hook_calls, 1);
  hp_got_set_free(s);
  dlclose(l.h);
}
END_TEST

/* An object unloaded after its slots were rewritten is forgotten, never written to. */
START_TEST(unloaded_object_forgotten)
{
  lib l = lib_open("HP_GOT_TESTLIB_NOW");
  hp_got_sym sym = { "malloc", dlsym(RTLD_DEFAULT, "malloc"), (void *)counting_malloc, NULL };
  hp_got_set *s = hp_got_set_new();
  choice c = { "libhp_got_testlib_now.so", 0, 0 };
  int n = hp_got_patch(s, &sym, 1, choose_lib, &c);
  ck_assert_int_ge(n, 1);
  ck_assert_int_eq(dlclose(l.h), 0);
  ck_assert_ptr_null(dlopen(getenv("HP_GOT_TESTLIB_NOW"), RTLD_NOW | RTLD_NOLOAD));
  ck_assert_int_eq(hp_got_patch(s, &sym, 1, choose_lib, &c), 0);
  ck_assert_uint_eq(hp_got_count(s), 0);
  ck_assert_int_eq(hp_got_restore(s), 0);
  /* Loaded again: a new object, rewritten again. */
  l = lib_open("HP_GOT_TESTLIB_NOW");
  ck_assert_int_eq(hp_got_patch(s, &sym, 1, choose_lib, &c), n);
  g_hook_calls = 0;
  l.lib_free(l.lib_malloc(10));
  ck_assert_int_eq(g_hook_calls, 1);
  ck_assert_int_eq(hp_got_restore(s), n);
  hp_got_set_free(s);
  dlclose(l.h);
}
END_TEST

START_TEST(too_many_symbols_refused)
{
  hp_got_sym syms[HP_GOT_MAX_SYMS + 1];
  memset(syms, 0, sizeof(syms));
  hp_got_set *s = hp_got_set_new();
  choice c = { "nothing", 0, 0 };
  ck_assert_int_eq(hp_got_patch(s, syms, HP_GOT_MAX_SYMS + 1, choose_lib, &c), -HP_EINVAL);
  hp_got_set_free(s);
}
END_TEST

static Suite *got_suite(void)
{
  Suite *s = suite_create("got");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, lazy_binding_patched_and_restored);
  tcase_add_test(tc, full_relro_patched_and_restored);
  tcase_add_test(tc, foreign_slot_left_alone);
  tcase_add_test(tc, alias_slot_rewritten);
  tcase_add_test(tc, unloaded_object_forgotten);
  tcase_add_test(tc, too_many_symbols_refused);
  suite_add_tcase(s, tc);
  return s;
}

int main(void)
{
  SRunner *sr = srunner_create(got_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
