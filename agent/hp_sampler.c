/* hp_sampler.c — Poisson-by-bytes and size-bucket sampling; the math is in hp_sampler.h. */
#include "hp_sampler.h"

#include <math.h>
#include <time.h>
#include <unistd.h>

/* Generations stay within [1, HP_SAMPLER_GENERATION_MAX]: see hp_sampler.h. */
static uint32_t next_generation(uint32_t g)
{
  return g >= HP_SAMPLER_GENERATION_MAX ? 1 : g + 1;
}

int hp_sampler_configure_interval(hp_sampler_cfg *cfg, uint64_t interval)
{
  if (interval == 0)
    return -HP_EINVAL;
  cfg->interval = interval;
  cfg->nbuckets = 0;
  cfg->generation = next_generation(cfg->generation);
  return 0;
}

int hp_sampler_configure_buckets(hp_sampler_cfg *cfg, const hp_bucket *b, uint32_t n)
{
  if (n == 0 || n > HP_MAX_BUCKETS)
    return -HP_EINVAL;
  for (uint32_t i = 0; i < n; i++) {
    if (!(b[i].rate > 0.0 && b[i].rate <= 1.0))
      return -HP_EINVAL;
    if (i > 0 && b[i].max_size <= b[i - 1].max_size)
      return -HP_EINVAL;
  }
  for (uint32_t i = 0; i < n; i++)
    cfg->buckets[i] = b[i];
  cfg->nbuckets = n;
  cfg->interval = 0;
  cfg->generation = next_generation(cfg->generation);
  return 0;
}

void hp_sampler_publish(hp_sampler_cfg *dst, const hp_sampler_cfg *src)
{
  for (uint32_t i = 0; i < HP_MAX_BUCKETS; i++) {
    __atomic_store_n(&dst->buckets[i].max_size, src->buckets[i].max_size, __ATOMIC_RELAXED);
    __atomic_store(&dst->buckets[i].rate, &src->buckets[i].rate, __ATOMIC_RELAXED);
  }
  __atomic_store_n(&dst->nbuckets, src->nbuckets, __ATOMIC_RELAXED);
  __atomic_store_n(&dst->interval, src->interval, __ATOMIC_RELAXED);
  __atomic_store_n(&dst->generation, src->generation, __ATOMIC_RELEASE);
}

uint32_t hp_sampler_adapt(hp_sampler_cfg *cfg, uint64_t interval)
{
  /* Interval before generation: a thread that sees the new generation (acquire) also
   * sees the new interval. One that sees the new interval with the old generation
   * draws for the new interval and redraws once more; either way its samples are
   * estimated with t->interval, the interval of the countdown they hit. */
  uint32_t g = next_generation(__atomic_load_n(&cfg->generation, __ATOMIC_RELAXED));
  __atomic_store_n(&cfg->interval, interval, __ATOMIC_RELAXED);
  __atomic_store_n(&cfg->generation, g, __ATOMIC_RELEASE);
  return g;
}

void hp_sampler_seed(hp_sampler_tls *t, uint64_t seed)
{
  /* splitmix64 spreads similar seeds (thread addresses, clock ticks) apart. */
  uint64_t z = seed + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  t->rng = z ? z : 0x2545f4914f6cdd1dull;
  t->countdown = 0;
  t->interval = 0;
  t->generation = 0;
}

static uint64_t next_u64(hp_sampler_tls *t)
{
  uint64_t x = t->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  t->rng = x;
  return x * 0x2545f4914f6cdd1dull;
}

/* Uniform in (0, 1]: never 0, so log() below is finite. */
static double next_unit_open0(hp_sampler_tls *t)
{
  return (double)((next_u64(t) >> 11) + 1) * 0x1.0p-53;
}

/* An exponential gap with mean interval, as whole bytes >= 1. ceil keeps
 * P(gap <= s) = 1 - exp(-s/I) exact for whole s. */
static int64_t draw_gap(hp_sampler_tls *t, uint64_t interval)
{
  double g = ceil(-log(next_unit_open0(t)) * (double)interval);
  if (g < 1.0)
    g = 1.0;
  if (g > 9.0e18)
    g = 9.0e18;
  return (int64_t)g;
}

uint64_t hp_sampler_estimate(uint64_t interval, uint64_t size)
{
  if (size == 0)
    return 0;
  if (interval <= 1)
    return size;
  double s = (double)size;
  double p = -expm1(-s / (double)interval); /* 1 - exp(-s/I), accurate for small s/I */
  return (uint64_t)llround(s / p);
}

int hp_sampler_sample_slow(const hp_sampler_cfg *cfg, hp_sampler_tls *t, size_t size,
                           uint64_t *est_bytes)
{
  if (t->rng == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    /* The pid keeps fork children that seed at the same instant apart. */
    hp_sampler_seed(t, (uint64_t)(uintptr_t)t ^ ((uint64_t)ts.tv_nsec << 20) ^
                         (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40));
  }
  uint32_t generation = __atomic_load_n(&cfg->generation, __ATOMIC_ACQUIRE);
  uint64_t interval = __atomic_load_n(&cfg->interval, __ATOMIC_RELAXED);
  if (interval == 1) {
    *est_bytes = size;
    return 1;
  }
  if (interval == 0) {
    double rate = 1.0;
    uint32_t n = __atomic_load_n(&cfg->nbuckets, __ATOMIC_RELAXED);
    for (uint32_t i = 0; i < n && i < HP_MAX_BUCKETS; i++) {
      if (size <= __atomic_load_n(&cfg->buckets[i].max_size, __ATOMIC_RELAXED)) {
        __atomic_load(&cfg->buckets[i].rate, &rate, __ATOMIC_RELAXED);
        break;
      }
    }
    if (rate < 1.0 && (double)(next_u64(t) >> 11) * 0x1.0p-53 >= rate)
      return 0;
    *est_bytes = rate < 1.0 ? (uint64_t)llround((double)size / rate) : size;
    return 1;
  }
  if (t->generation != generation) {
    t->countdown = draw_gap(t, interval);
    t->interval = interval;
    t->generation = generation;
  }
  if ((uint64_t)t->countdown > size) {
    t->countdown -= (int64_t)size;
    return 0;
  }
  /* A point fell inside this block; by memorylessness the next one lies an
   * exponential gap beyond the block's end. The estimate is the drawn interval's. */
  *est_bytes = hp_sampler_estimate(t->interval, size);
  t->countdown = draw_gap(t, t->interval);
  return 1;
}
