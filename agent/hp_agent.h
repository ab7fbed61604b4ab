/* hp_agent.h — the agent engine: one profiling session of this process.
 *
 * Owns the sampler configuration, the event ring, the sampled-address table, the
 * frame/stack interning tables and the sender thread, and handles fork. The PEP 445
 * hooks (hp_hooks.c) decide what to sample and call hp_agent_record_*; module.c (the
 * Python binding) calls start/stop. Pure C: no Python API here.
 *
 * Thread rules: hp_agent_record_* run on any allocating thread and never block (except
 * in block and adapt mode, while heapprofd takes data and until it has taken nothing
 * for HP_AGENT_BLOCK_STALL_NS), never allocate and never fail the caller; a call that
 * races a stop or the next start records into the session it began with, or nowhere.
 * start/stop/fork handling are serialised by the agent lock. */
#ifndef HP_AGENT_H
#define HP_AGENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "hp_intern.h"
#include "hp_proto.h"
#include "hp_sampler.h"
#include "hp_sender.h"

#define HP_AGENT_DEFAULT_MAX_DEPTH 128u
/* Block mode waits for ring space while heapprofd takes data, however slowly (a commit
 * or checkpoint may hold it for seconds), and gives up (drops and counts) once it has
 * taken nothing for this long: the same bound as at exit. */
#define HP_AGENT_BLOCK_STALL_NS HP_SENDER_STALL_NS
#define HP_AGENT_WAIT_SLICE_NS  50000L /* a waiting push re-tries this often */
/* Drop mode: a FREE that finds the ring full (its reserve used up) waits this long for
 * the sender before it is dropped, because a lost FREE makes its block look leaked. */
#define HP_AGENT_FREE_WAIT_NS 20000000ull
/* on_full='adapt' (Perfetto-style adaptive sampling): the sampling interval doubles
 * when the ring is more than half full AND at least 1/HP_AGENT_ADAPT_SAMPLES_DIV of a
 * ring of new samples came since the last change. The second condition makes it a
 * rate, samples arriving faster than the sender drains them, so that a ring full of
 * FREEs (of blocks sampled at an older, smaller interval, which no interval can reduce)
 * counts little; a small divisor climbs quickly, before many long-lived blocks are
 * sampled at the smallest intervals. While samples are being dropped (only the free
 * reserve left) every sample is one lost, so the count needed is HP_AGENT_ADAPT_DROP_DIV
 * times smaller. Up to HP_AGENT_ADAPT_MAX_INTERVAL; it never goes back down within a
 * session. The divisors were chosen by bench/overhead.py (bench/README.md). */
#define HP_AGENT_ADAPT_SAMPLES_DIV  32u
#define HP_AGENT_ADAPT_DROP_DIV     8u
#define HP_AGENT_ADAPT_MAX_INTERVAL (1ull << 30)

enum { HP_MODE_OFF = 0, HP_MODE_PROFILE = 1, HP_MODE_STATS = 2 };

/* On the variables every hook reads: hidden, so that a hook loads them PC-relative in
 * one instruction instead of through the GOT (the module's symbols are hidden anyway;
 * a declaration must say so for the compiler to rely on it). */
#define HP_AGENT_HIDDEN __attribute__((visibility("hidden")))

/* Read by every hook (relaxed): HP_MODE_*, a gate only: the record path finds its
 * session through an atomically published pointer. Written under the agent lock. */
extern HP_AGENT_HIDDEN _Atomic int hp_agent_mode;
/* The hooks' sampler configuration: published by start (hp_sampler_publish), raised by
 * adapt; the hooks read it with hp_sampler_sample() at any time. */
extern HP_AGENT_HIDDEN hp_sampler_cfg hp_agent_sampler;
/* The malloc hooks' fast path in one compare (hp_hooks.c): while profiling with a
 * Poisson interval > 1 it holds hp_agent_sampler.generation, which a thread's key equals
 * once its countdown was drawn for this configuration; otherwise HP_AGENT_GATE_CLOSED,
 * which no key ever equals (never a generation, see HP_SAMPLER_GENERATION_MAX), so
 * every allocation takes the slow path (off, stats, interval 1, size buckets). Opened
 * last when profiling starts, closed first when it stops; read relaxed. */
#define HP_AGENT_GATE_CLOSED UINT32_MAX
extern HP_AGENT_HIDDEN _Atomic uint32_t hp_agent_gate;
extern _Atomic uint32_t hp_agent_max_depth; /* frames kept per stack; set by start */

typedef struct {
  const char *socket_path;
  uint64_t sample_interval; /* >= 1; ignored when nbuckets > 0 */
  const hp_bucket *buckets; /* bucket sampling when nbuckets > 0 */
  uint32_t nbuckets;
  uint32_t max_depth;  /* 1..HP_MAX_STACK_DEPTH */
  int block_when_full; /* on_full='block' */
  int adapt_when_full; /* on_full='adapt' (Poisson intervals only) */
  /* 1 when a reference tracer will test the session's free filter for reused objects
   * (hp_hooks_reuse_start): the filter then counts for hp_addrtab_filter_absent_near. */
  int follow_reuse;
  uint32_t argc;
  const hp_str *argv; /* borrowed for the call */
  hp_str executable, python_version;
  /* 1 when the allocator hooks were replaced or removed by someone else, so that the
   * hooks see nothing any more (hp_hooks.c); NULL: never asked. Called without the GIL
   * by the sender thread about once a second and by stop: the session then ends with
   * end reason HP_END_HOOKS_REPLACED, after one line on stderr. */
  int (*hooks_replaced)(void);
} hp_agent_opts;

/* Registers the fork handlers and allocates the tables; idempotent. 0 or -HP_ENOMEM. */
int hp_agent_init(void);
/* Connects and starts a session. 0; -HP_EINVAL (bad options; already profiling);
 * -errno from connect (the caller tells the user and runs unprofiled). */
int hp_agent_start(const hp_agent_opts *o);
/* Stops the session: drains, GOODBYE, joins. 0, or the error that ended the stream.
 * A no-op (0) when not profiling. */
int hp_agent_stop(void);
int hp_agent_is_profiling(void);
/* The name the program gives a thread (kernel thread id), sent to the current session
 * after the kernel's name so that it wins. Not from a hook. 0, or -HP_EINVAL when no
 * session runs, or the sender's error. */
int hp_agent_thread_name(uint64_t thread_id, const char *name, size_t len);
/* A marker the program sets (heapprof.mark), stamped now with the events' clock and
 * queued for the sender of the running session. Never waits: not for the agent lock (a
 * stop may hold it while heapprofd drains) nor for the socket. Not from a hook.
 * 0; -HP_EINVAL when no session runs; -HP_ENOMEM or -HP_EFULL (too many pending). */
int hp_agent_mark(const char *label, size_t len);
/* Stats mode on/off (no session, no daemon). */
void hp_agent_stats_enable(int on);

/* In a fork child: 1 if the parent was profiling when it forked (the child then starts
 * its own session, with ppid = the parent's pid, by calling hp_agent_start again), else
 * 0. Reading it clears it. */
int hp_agent_child_needs_restart(void);

/* Hot-path entry points, called by the hooks for sampled allocations and every free
 * while profiling. */
void hp_agent_record_alloc(hp_domain domain, void *ptr, size_t size, uint64_t est_bytes,
                           uint32_t stack_id);
/* 0 when a sampled allocation would be dropped now for want of ring space (drop mode,
 * only the free reserve left): the hook then counts the drop with
 * hp_agent_count_drop() instead of walking the stack for a record nobody will see.
 * Always 1 in block mode. */
int hp_agent_alloc_room(void);
/* Looks ptr up; if it was sampled, forgets it and queues a FREE (before the caller
 * really frees it, so the address cannot be reused first). 1 when it was sampled. */
int hp_agent_record_free(void *ptr);

/* 1 while ptr is a live sampled block of the current session, else 0. */
int hp_agent_is_sampled(const void *ptr);
/* The live sampled block at ptr was handed out again without being freed (an interpreter
 * free list reused its object): queues a REATTRIBUTE under stack_id (PROTOCOL.md 2.4).
 * Does nothing unless ptr is a live sampled block. */
void hp_agent_record_reattribute(const void *ptr, uint32_t stack_id);

/* The free hook's inlined "certainly not sampled" test: the current table's filter
 * while profiling, an all-zero filter ("never sampled") otherwise, so that the free hook
 * needs no mode check. Switched before profiling turns on and after it turns off. */
extern HP_AGENT_HIDDEN _Atomic(const _Atomic uint8_t *) hp_agent_free_filter;

hp_intern *hp_agent_intern(void);
/* Cumulative drops of the current session (ring full, address table full, block
 * give-ups, interning tables full). Takes the agent lock. */
uint64_t hp_agent_dropped(void);
void hp_agent_count_drop(void);

#endif /* HP_AGENT_H */
