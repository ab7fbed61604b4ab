/* check_sampler.c — the sampler's statistics: interval 1, unbiased Poisson estimates,
 * size-bucket rates, configuration limits. Deterministic seeds; tolerances are several
 * standard deviations of the estimator for the sample counts used (noted per test). */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "hp_sampler.h"

/* A reproducible stream of allocation sizes: mostly small, some medium, a few large. */
static uint64_t lcg(uint64_t *s)
{
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return *s >> 33;
}

static size_t random_size(uint64_t *s)
{
  uint64_t r = lcg(s) % 1000;
  if (r < 900)
    return 1 + lcg(s) % 512;
  if (r < 995)
    return 512 + lcg(s) % 16384;
  return 65536 + lcg(s) % (1u << 20);
}

START_TEST(interval_one_records_every_allocation_exactly)
{
  hp_sampler_cfg cfg = { 0 };
  hp_sampler_tls t = { 0 };
  ck_assert_int_eq(hp_sampler_configure_interval(&cfg, 1), 0);
  uint64_t seed = 1, est;
  for (int i = 0; i < 10000; i++) {
    size_t s = random_size(&seed);
    ck_assert_int_eq(hp_sampler_sample(&cfg, &t, s, &est), 1);
    ck_assert_uint_eq(est, s);
  }
}
END_TEST

START_TEST(estimate_follows_horvitz_thompson_formula)
{
  /* s = I: 1/(1 - e^-1) = 1.5820 * I, where max(s, I) would say I. */
  ck_assert_uint_eq(hp_sampler_estimate(65536, 65536), (uint64_t)llround(65536 / (1 - exp(-1.0))));
  /* s << I: about I + s/2. */
  uint64_t e = hp_sampler_estimate(65536, 16);
  ck_assert_uint_ge(e, 65536 + 7);
  ck_assert_uint_le(e, 65536 + 9);
  /* s >> I: tends to s. */
  ck_assert_uint_eq(hp_sampler_estimate(4096, 100u << 20), 100u << 20);
  ck_assert_uint_eq(hp_sampler_estimate(1, 777), 777);
  ck_assert_uint_eq(hp_sampler_estimate(4096, 0), 0);
}
END_TEST

/* Sum of est_bytes over a random size mix, per seed (loop test). With I = 4096 and about
 * 2e9 bytes there are ~5e5 samples: relative standard deviation ~0.2%; 2% is ~10 sigma
 * yet catches any biased estimator of the kind max(s, I) (off by >10% on this mix). */
START_TEST(poisson_sum_of_estimates_is_unbiased)
{
  hp_sampler_cfg cfg = { 0 };
  hp_sampler_tls t = { 0 };
  hp_sampler_seed(&t, 1000 + (uint64_t)_i);
  ck_assert_int_eq(hp_sampler_configure_interval(&cfg, 4096), 0);
  uint64_t seed = 77 + (uint64_t)_i, est;
  double truth = 0, estimate = 0;
  unsigned samples = 0;
  for (int i = 0; i < 2000000; i++) {
    size_t s = random_size(&seed);
    truth += (double)s;
    if (hp_sampler_sample(&cfg, &t, s, &est)) {
      estimate += (double)est;
      samples++;
    }
  }
  ck_assert_uint_gt(samples, 1000);
  ck_assert_msg(fabs(estimate / truth - 1.0) < 0.02, "estimate %.0f vs truth %.0f (%.3f%%)",
                estimate, truth, 100.0 * (estimate / truth - 1.0));
}
END_TEST

/* Allocations of exactly I bytes: each is sampled with probability 1 - 1/e = 0.632 and
 * stands for 1.582 I. 200000 allocations -> 126000 samples, sd of the rate ~0.1%. */
START_TEST(poisson_size_equal_interval_probability_and_estimate)
{
  hp_sampler_cfg cfg = { 0 };
  hp_sampler_tls t = { 0 };
  hp_sampler_seed(&t, 42);
  ck_assert_int_eq(hp_sampler_configure_interval(&cfg, 8192), 0);
  uint64_t est, n = 200000, hits = 0;
  double sum = 0;
  for (uint64_t i = 0; i < n; i++)
    if (hp_sampler_sample(&cfg, &t, 8192, &est)) {
      hits++;
      sum += (double)est;
    }
  double p = (double)hits / (double)n;
  ck_assert_msg(fabs(p - (1 - exp(-1.0))) < 0.01, "sampled fraction %.4f", p);
  ck_assert_msg(fabs(sum / (8192.0 * (double)n) - 1.0) < 0.02, "ratio %.4f", sum / (8192.0 * n));
}
END_TEST

/* Tiny allocations with a large interval: ~3e4 samples, sd ~0.6%; 3% tolerance. */
START_TEST(poisson_small_allocations_unbiased)
{
  hp_sampler_cfg cfg = { 0 };
  hp_sampler_tls t = { 0 };
  hp_sampler_seed(&t, 9);
  ck_assert_int_eq(hp_sampler_configure_interval(&cfg, 65536), 0);
  uint64_t est, n = 30000000;
  double sum = 0;
  for (uint64_t i = 0; i < n; i++)
    if (hp_sampler_sample(&cfg, &t, 64, &est))
      sum += (double)est;
  ck_assert_msg(fabs(sum / (64.0 * (double)n) - 1.0) < 0.03, "ratio %.4f", sum / (64.0 * n));
}
END_TEST

START_TEST(reconfigure_redraws_countdown)
{
  hp_sampler_cfg cfg = { 0 };
  hp_sampler_tls t = { 0 };
  hp_sampler_seed(&t, 5);
  uint64_t est;
  ck_assert_int_eq(hp_sampler_configure_interval(&cfg, 1ull << 40), 0);
  ck_assert_int_eq(hp_sampler_sample(&cfg, &t, 100, &est), 0);
  ck_assert_int_eq(hp_sampler_configure_interval(&cfg, 1), 0);
  ck_assert_int_eq(hp_sampler_sample(&cfg, &t, 100, &est), 1);
  ck_assert_uint_eq(est, 100);
}
END_TEST

/* on_full='adapt': the interval doubles mid-stream, from recording everything (1) up to
 * 8192, every 100000 allocations. Each phase's samples are estimated at the phase's own
 * interval, so the total stays unbiased: ~2e9 bytes, of which the last phases at 4096
 * and 8192 carry ~1.3e5 samples (sd ~0.3%); 2% tolerance. A countdown drawn before a
 * change is redrawn at the thread's next allocation. */
START_TEST(adapt_keeps_estimates_unbiased_across_changes)
{
  hp_sampler_cfg cfg = { 0 };
  hp_sampler_tls t = { 0 };
  hp_sampler_seed(&t, 31);
  ck_assert_int_eq(hp_sampler_configure_interval(&cfg, 1), 0);
  uint64_t seed = 4242, est, interval = 1;
  double truth = 0, estimate = 0;
  for (int i = 0; i < 2000000; i++) {
    if (i > 0 && i % 100000 == 0 && interval < 8192) {
      uint32_t before = cfg.generation;
      interval *= 2;
      ck_assert_uint_ne(hp_sampler_adapt(&cfg, interval), before);
      ck_assert_uint_eq(cfg.interval, interval);
    }
    size_t s = random_size(&seed);
    truth += (double)s;
    if (hp_sampler_sample(&cfg, &t, s, &est)) {
      if (interval == 1)
        ck_assert_uint_eq(est, s);
      else
        ck_assert_uint_eq(est, hp_sampler_estimate(interval, s));
      estimate += (double)est;
    }
    if (interval > 1)
      ck_assert_uint_eq(t.interval, interval);   /* redrawn for the new interval */
  }
  ck_assert_msg(fabs(estimate / truth - 1.0) < 0.02, "estimate %.0f vs truth %.0f (%.3f%%)",
                estimate, truth, 100.0 * (estimate / truth - 1.0));
}
END_TEST

/* {128: 0.01, 8192: 0.5}: 100-byte blocks at 1%, 128 still in the first bucket (<=),
 * 129..8192 at 50%, larger always, each est = size / rate. */
START_TEST(buckets_sample_at_their_rates_unbiased)
{
  hp_sampler_cfg cfg = { 0 };
  hp_sampler_tls t = { 0 };
  hp_sampler_seed(&t, 3);
  hp_bucket b[2] = { { 128, 0.01 }, { 8192, 0.5 } };
  ck_assert_int_eq(hp_sampler_configure_buckets(&cfg, b, 2), 0);
  uint64_t est, n = 1000000, hits = 0;
  double sum = 0;
  for (uint64_t i = 0; i < n; i++)
    if (hp_sampler_sample(&cfg, &t, 128, &est)) {
      hits++;
      ck_assert_uint_eq(est, 12800);
      sum += (double)est;
    }
  /* 10000 expected hits, sd 100: 5% is 5 sigma. */
  ck_assert_msg(fabs((double)hits / 10000.0 - 1.0) < 0.05, "hits %lu", (unsigned long)hits);
  ck_assert_msg(fabs(sum / (128.0 * n) - 1.0) < 0.05, "ratio %.4f", sum / (128.0 * n));
  hits = 0;
  for (uint64_t i = 0; i < 100000; i++)
    if (hp_sampler_sample(&cfg, &t, 4000, &est)) {
      hits++;
      ck_assert_uint_eq(est, 8000);
    }
  ck_assert_msg(fabs((double)hits / 50000.0 - 1.0) < 0.02, "hits %lu", (unsigned long)hits);
  for (int i = 0; i < 1000; i++) {
    ck_assert_int_eq(hp_sampler_sample(&cfg, &t, 8193, &est), 1);
    ck_assert_uint_eq(est, 8193);
  }
}
END_TEST

START_TEST(configure_rejects_bad_settings)
{
  hp_sampler_cfg cfg = { 0 };
  ck_assert_int_eq(hp_sampler_configure_interval(&cfg, 0), -HP_EINVAL);
  hp_bucket dec[2] = { { 8192, 0.1 }, { 128, 0.5 } };
  ck_assert_int_eq(hp_sampler_configure_buckets(&cfg, dec, 2), -HP_EINVAL);
  hp_bucket zero[1] = { { 128, 0.0 } };
  ck_assert_int_eq(hp_sampler_configure_buckets(&cfg, zero, 1), -HP_EINVAL);
  hp_bucket big[1] = { { 128, 1.5 } };
  ck_assert_int_eq(hp_sampler_configure_buckets(&cfg, big, 1), -HP_EINVAL);
  hp_bucket nan_rate[1] = { { 128, NAN } };
  ck_assert_int_eq(hp_sampler_configure_buckets(&cfg, nan_rate, 1), -HP_EINVAL);
  ck_assert_int_eq(hp_sampler_configure_buckets(&cfg, dec, 0), -HP_EINVAL);
  ck_assert_int_eq(hp_sampler_configure_buckets(&cfg, dec, HP_MAX_BUCKETS + 1), -HP_EINVAL);
}
END_TEST

Suite *sampler_suite(void)
{
  Suite *s = suite_create("sampler");
  TCase *core = tcase_create("core");
  tcase_set_timeout(core, 60);
  tcase_add_test(core, interval_one_records_every_allocation_exactly);
  tcase_add_test(core, estimate_follows_horvitz_thompson_formula);
  tcase_add_loop_test(core, poisson_sum_of_estimates_is_unbiased, 0, 3);
  tcase_add_test(core, poisson_size_equal_interval_probability_and_estimate);
  tcase_add_test(core, poisson_small_allocations_unbiased);
  tcase_add_test(core, reconfigure_redraws_countdown);
  tcase_add_test(core, adapt_keeps_estimates_unbiased_across_changes);
  suite_add_tcase(s, core);
  TCase *buckets = tcase_create("buckets");
  tcase_add_test(buckets, buckets_sample_at_their_rates_unbiased);
  suite_add_tcase(s, buckets);
  TCase *limits = tcase_create("limits");
  tcase_add_test(limits, configure_rejects_bad_settings);
  suite_add_tcase(s, limits);
  return s;
}

int main(void)
{
  SRunner *sr = srunner_create(sampler_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
