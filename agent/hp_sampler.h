/* hp_sampler.h — which allocations the agent records, and what each sample stands for.
 *
 * Sits between the allocation hooks and the ring: the hook asks hp_sampler_sample() for
 * every allocation; only a "yes" costs more than a few instructions.
 *
 * Poisson mode (interval I > 1): the allocated bytes of each thread are treated as a
 * line on which sample points fall as a Poisson process with one point per I bytes on
 * average. An allocation of s bytes is sampled when at least one point falls inside it,
 * which happens with probability p(s) = 1 - exp(-s/I). Because the gaps between points
 * are exponential (memoryless), this probability holds for every allocation no matter
 * what came before it, so the Horvitz-Thompson estimate
 *
 *     est_bytes(s) = s / p(s) = s / (1 - exp(-s/I))
 *
 * makes the sum of est_bytes over samples an unbiased estimate of the bytes allocated
 * (E[sum] = sum over all allocations of p(s) * s/p(s) = true total). For s << I it is
 * about I + s/2; for s >> I it tends to s. (max(s, I) is close but biased low near
 * s ~ I.) Interval 1 records every allocation with est_bytes = s.
 *
 * Bucket mode (the original heapprof's {max_size: rate} form): an allocation of s bytes
 * falls in the first bucket with s <= max_size and is sampled with that rate (sizes
 * above the last bucket always); est_bytes = s / rate, again Horvitz-Thompson.
 *
 * Thread rules: a configuration the hooks read is changed only by hp_sampler_publish()
 * and hp_sampler_adapt(), one writer at a time, while threads may be sampling: every
 * field is accessed atomically and a generation number, stored last, tells threads to
 * redraw. hp_sampler_configure_*() build a private copy. Each thread owns its
 * hp_sampler_tls. No locks, no system calls except one clock read when a thread's
 * generator is first seeded.
 *
 * Adapting (Perfetto-style, when the agent cannot send events as fast as they come): an
 * interval raised from I to I' mid-run keeps the estimate unbiased, because each
 * thread's countdown is redrawn for I' at its next allocation and each sample is
 * estimated with the interval its countdown was drawn for (the Poisson process of one
 * rate simply ends and one of the other rate begins). */
#ifndef HP_SAMPLER_H
#define HP_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "hp_proto.h"

#define HP_SAMPLER_DEFAULT_INTERVAL (64u * 1024u) /* bytes; see bench/README.md */
/* Generations wrap from here back to 1: 0, UINT32_MAX - 1 and UINT32_MAX are never a
 * generation, so the hooks may use them as markers (hp_hooks.c, hp_agent_gate). */
#define HP_SAMPLER_GENERATION_MAX (UINT32_MAX - 2u)

typedef struct {
  uint64_t interval;   /* Poisson mean interval; 0 in bucket mode */
  uint32_t generation; /* bumped by every configure call, in
                                      [1, HP_SAMPLER_GENERATION_MAX] */
  uint32_t nbuckets;
  hp_bucket buckets[HP_MAX_BUCKETS];
} hp_sampler_cfg;

/* Per-thread state; all zero is a valid "not yet seeded" state (thread-local storage). */
typedef struct {
  int64_t countdown;   /* bytes until the next sample point */
  uint64_t rng;        /* xorshift64* state, never 0 once seeded */
  uint64_t interval;   /* the interval this countdown was drawn for */
  uint32_t generation; /* configuration this countdown was drawn for */
} hp_sampler_tls;

/* 0, or -HP_EINVAL for interval 0. */
int hp_sampler_configure_interval(hp_sampler_cfg *cfg, uint64_t interval);
/* 0, or -HP_EINVAL when n is 0 or over HP_MAX_BUCKETS, sizes are not increasing, or a
 * rate is outside (0, 1]. */
int hp_sampler_configure_buckets(hp_sampler_cfg *cfg, const hp_bucket *b, uint32_t n);

/* Makes src (built by the calls above on a private copy) the configuration in *dst,
 * which threads may be reading: the fields first, the generation last (release), so a
 * thread that sees the new generation sees all of it. One writer at a time. */
void hp_sampler_publish(hp_sampler_cfg *dst, const hp_sampler_cfg *src);

/* Raises a Poisson interval (> 1, or from 1: recording everything becomes sampling)
 * while threads may be sampling; returns the new generation. The only call that may
 * run concurrently with hp_sampler_sample(); one writer at a time. */
uint32_t hp_sampler_adapt(hp_sampler_cfg *cfg, uint64_t interval);

/* Slow path of hp_sampler_sample(): never call directly. */
int hp_sampler_sample_slow(const hp_sampler_cfg *cfg, hp_sampler_tls *t, size_t size,
                           uint64_t *est_bytes);

/* 1 and sets *est_bytes when this allocation is sampled, else 0. The fast path is a
 * compare and a subtraction. */
static inline int hp_sampler_sample(const hp_sampler_cfg *cfg, hp_sampler_tls *t,
                                    size_t size, uint64_t *est_bytes)
{
  if (t->generation == __atomic_load_n(&cfg->generation, __ATOMIC_ACQUIRE) &&
      (uint64_t)t->countdown > size && t->interval > 1) {
    t->countdown -= (int64_t)size;
    return 0;
  }
  return hp_sampler_sample_slow(cfg, t, size, est_bytes);
}

/* The estimate a sample of size bytes stands for in Poisson mode with interval. */
uint64_t hp_sampler_estimate(uint64_t interval, uint64_t size);

/* Seeds t deterministically (tests); otherwise seeding is automatic. */
void hp_sampler_seed(hp_sampler_tls *t, uint64_t seed);

#endif /* HP_SAMPLER_H */
