/* store_queue.c — the bounded queue from the loop thread to the store thread.
 *
 * The loop side copies each validated message into one item (its strings repaired,
 * store_text.c) and appends it; pushing never blocks and never waits on SQLite. Items
 * are charged to a bound in bytes: above queue_high hp_store_pause_if_full() tells the
 * loop to stop reading sockets, and the store thread calls on_resume once it has
 * processed enough to be below queue_low. Items stay charged until they are processed,
 * so what waits while storing fails (the held list) keeps counting against the bound. */
#include "store_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ the test hook */

/* Loop thread only, like the functions that allocate through it. */
static unsigned fail_countdown;

void hp_store_fail_alloc_after(unsigned n)
{
  fail_countdown = n;
}

static int alloc_fails(void)
{
  if (fail_countdown == 0)
    return 0;
  if (fail_countdown > 1) {
    fail_countdown--;
    return 0;
  }
  return 1;
}

void *store_loop_malloc(size_t n)
{
  return alloc_fails() ? NULL : malloc(n);
}
void *store_loop_realloc(void *p, size_t n)
{
  return alloc_fails() ? NULL : realloc(p, n);
}
static void *loop_calloc(size_t n, size_t size)
{
  return alloc_fails() ? NULL : calloc(n, size);
}

/* ------------------------------------------------------------------ the loop side */

static item *item_new(item_kind kind, hp_store_session *ss, size_t extra)
{
  item *it = store_loop_malloc(sizeof(item) + extra);
  if (it == NULL)
    return NULL;
  it->next = NULL;
  it->kind = kind;
  it->ss = ss;
  it->cost = sizeof(item) + extra;
  return it;
}

static void push(hp_store *s, item *it)
{
  pthread_mutex_lock(&s->mu);
  if (s->tail)
    s->tail->next = it;
  else
    s->head = it;
  s->tail = it;
  s->queued_bytes += it->cost;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->mu);
}

static char *copy_cstr(char **cursor, const char *str)
{
  size_t len = strlen(str);
  char *dst = *cursor;
  memcpy(dst, str, len + 1);
  *cursor += len + 1;
  return dst;
}

hp_store_session *hp_store_session_start(hp_store *s, const hp_hello *h, int64_t peer_pid)
{
  char *argv = NULL, *buckets = NULL;
  uint32_t omitted = 0;
  hp_store_session *ss = loop_calloc(1, sizeof *ss);
  if (ss == NULL)
    return NULL;
  ss->peer_pid = peer_pid;
  ss->end = item_new(IT_END, ss, 0);
  ss->addrs = hp_map_new();
  ss->tl = hp_timeline_new(s->cfg.timeline_interval_ns);
  if (!ss->end || !ss->addrs || !ss->tl)
    goto out_free_session;
  if (store_argv_json(h, &argv, &omitted) < 0 || store_buckets_json(h, &buckets) < 0)
    goto out_free_json;

  size_t extra = strlen(argv) + 1 + store_text_room(h->executable) +
                 store_text_room(h->python_version) + (buckets ? strlen(buckets) + 1 : 0);
  item *it = item_new(IT_HELLO, ss, extra);
  if (it == NULL)
    goto out_free_json;
  char *cur = (char *)it->data;
  it->u.hello.pid = h->pid;
  it->u.hello.ppid = h->ppid;
  it->u.hello.start_wall = h->start_wall_ns;
  it->u.hello.start_mono = h->start_mono_ns;
  it->u.hello.sample_interval = h->sample_interval_bytes;
  it->u.hello.max_depth = h->max_stack_depth;
  it->u.hello.argc = h->argc;
  it->u.hello.argv_omitted = omitted;
  it->u.hello.argv_bytes = 0;
  for (uint32_t i = 0; omitted > 0 && i < h->argc; i++)
    it->u.hello.argv_bytes += h->argv[i].len;
  it->u.hello.argv_json = copy_cstr(&cur, argv);
  it->u.hello.executable = store_text_copy(&cur, h->executable);
  it->u.hello.python_version = store_text_copy(&cur, h->python_version);
  it->u.hello.buckets_json = buckets ? copy_cstr(&cur, buckets) : NULL;
  assert(cur <= (char *)it->data + extra);
  free(argv);
  free(buckets);
  push(s, it);
  return ss;

out_free_json:
  free(argv);
  free(buckets);
out_free_session:
  store_session_free(ss);
  return NULL;
}

int hp_store_frame_def(hp_store *s, hp_store_session *ss, const hp_frame_def *m)
{
  item *it = item_new(IT_FRAME, ss,
                      store_text_room(m->function) + store_text_room(m->filename));
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.frame.number = m->frame_id;
  it->u.frame.lineno = m->lineno;
  it->u.frame.function = store_text_copy(&cur, m->function);
  it->u.frame.filename = store_text_copy(&cur, m->filename);
  push(s, it);
  return 0;
}

int hp_store_stack_def(hp_store *s, hp_store_session *ss, const hp_stack_def *m)
{
  item *it = item_new(IT_STACK, ss, (size_t)m->depth * sizeof(uint32_t));
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.stack.number = m->stack_id;
  it->u.stack.truncated = m->truncated;
  it->u.stack.depth = m->depth;
  it->u.stack.frame_numbers = (uint32_t *)it->data;
  if (m->depth > 0)
    memcpy(it->data, m->frame_ids, (size_t)m->depth * sizeof(uint32_t));
  push(s, it);
  return 0;
}

int hp_store_events(hp_store *s, hp_store_session *ss, const hp_event *ev, uint32_t n)
{
  item *it = item_new(IT_EVENTS, ss, (size_t)n * sizeof(hp_event));
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.events.n = n;
  it->u.events.ev = (hp_event *)it->data;
  memcpy(it->data, ev, (size_t)n * sizeof(hp_event));
  push(s, it);
  return 0;
}

int hp_store_counters(hp_store *s, hp_store_session *ss, const hp_counters *m)
{
  item *it = item_new(IT_COUNTERS, ss, 0);
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.counters.dropped = m->events_dropped;
  it->u.counters.ts = m->ts_ns;
  it->u.counters.interval = m->sample_interval_bytes;
  it->u.counters.sent = m->events_sent;
  push(s, it);
  return 0;
}

int hp_store_goodbye(hp_store *s, hp_store_session *ss, const hp_goodbye *m)
{
  item *it = item_new(IT_GOODBYE, ss, 0);
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.goodbye.ts = m->ts_ns;
  it->u.goodbye.dropped = m->events_dropped;
  it->u.goodbye.reason = m->end_reason;
  push(s, it);
  return 0;
}

int hp_store_thread_def(hp_store *s, hp_store_session *ss, const hp_thread_def *m)
{
  item *it = item_new(IT_THREAD, ss, store_text_room(m->name));
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.thread.tid = m->thread_id;
  it->u.thread.name = store_text_copy(&cur, m->name);
  push(s, it);
  return 0;
}

int hp_store_marker(hp_store *s, hp_store_session *ss, const hp_marker *m)
{
  item *it = item_new(IT_MARKER, ss, store_text_room(m->label));
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.marker.ts = m->ts_ns;
  it->u.marker.label = store_text_copy(&cur, m->label);
  push(s, it);
  return 0;
}

void hp_store_session_end(hp_store *s, hp_store_session *ss, hp_session_end how,
                          const char *reason)
{
  item *it = ss->end;
  assert(it != NULL && it->kind == IT_END);
  it->u.end.how = how;
  it->u.end.wall_ns = store_wall_now_ns();
  snprintf(it->u.end.reason, sizeof it->u.end.reason, "%s", reason ? reason : "");
  push(s, it);
}

int hp_store_pause_if_full(hp_store *s)
{
  pthread_mutex_lock(&s->mu);
  int full = s->queued_bytes > s->cfg.queue_high;
  if (full)
    s->paused = 1;
  pthread_mutex_unlock(&s->mu);
  return full;
}

/* ------------------------------------------------------------------ the store side */

int store_queue_take(hp_store *s, const struct timespec *deadline, int wake_on_stop)
{
  pthread_mutex_lock(&s->mu);
  while (s->head == NULL && !(s->stop && wake_on_stop))
    if (pthread_cond_timedwait(&s->cond, &s->mu, deadline) == ETIMEDOUT)
      break;
  if (s->head != NULL) {
    if (s->held_tail)
      s->held_tail->next = s->head;
    else
      s->held = s->head;
    s->held_tail = s->tail;
    s->head = s->tail = NULL;
  }
  /* Every item charged is queued, held or being processed: none are now. */
  assert(s->held != NULL || s->queued_bytes == 0);
  int stop = s->stop;
  pthread_mutex_unlock(&s->mu);
  return stop;
}

void store_queue_release(hp_store *s, size_t cost)
{
  int resume = 0;
  pthread_mutex_lock(&s->mu);
  assert(s->queued_bytes >= cost);
  s->queued_bytes -= cost;
  /* No wake-ups once stopping: the loop that would receive them has ended. */
  if (s->paused && s->queued_bytes < s->cfg.queue_low && !s->stop) {
    s->paused = 0;
    resume = 1;
  }
  pthread_mutex_unlock(&s->mu);
  if (resume && s->cfg.on_resume)
    s->cfg.on_resume(s->cfg.ctx);
}
