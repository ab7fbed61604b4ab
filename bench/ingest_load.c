/* ingest_load.c — load generator for the heapprofd ingestion benchmark.
 *
 *   ingest_load --socket PATH --clients K --events N [--batch B] [--live L] [--clock]
 *
 * K threads, each one agent connection: HELLO, a few frames and stacks, then N events
 * in EVENTS batches of B: allocations over 4 stacks and the matching frees, with about
 * L allocations live at any time (the shape of a steady-state Python program), then
 * GOODBYE. Built on the codec like a real agent; encoding cost is part of the load.
 * Events are stamped 200 ns apart, denser than heapprofd stores them, or with --clock
 * by the monotonic clock as they are made, as an agent stamps them.
 * Prints the seconds it spent sending. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hp_proto.h"

static const char *sock_path;
static uint64_t nevents = 1000000;
static uint32_t batch = 8192, live = 4096;
static int clock_stamps;

static uint64_t now_ns(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int send_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int flush(int fd, hp_encoder *e) {
  size_t len;
  const uint8_t *p = hp_encoder_data(e, &len);
  int rc = send_all(fd, p, len);
  hp_encoder_reset(e);
  return rc;
}

static hp_str S(const char *s) { return (hp_str){s, (uint32_t)strlen(s)}; }

static void *run(void *arg) {
  int idx = (int)(intptr_t)arg;
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    fprintf(stderr, "ingest_load: connect %s: %s\n", sock_path, strerror(errno));
    exit(1);
  }
  hp_encoder *e = hp_encoder_new((size_t)batch * 64 + 4096);
  char tag[32];
  snprintf(tag, sizeof tag, "load-%d", idx);
  hp_str argv[2] = {S("ingest_load"), S(tag)};
  uint64_t mono = now_ns(CLOCK_MONOTONIC);
  hp_hello h = {.version = HP_PROTO_VERSION, .pid = getpid(), .ppid = getppid(), .argc = 2,
                .argv = argv, .executable = S("/usr/bin/python3"), .python_version = S("3.11.0"),
                .start_wall_ns = now_ns(CLOCK_REALTIME), .start_mono_ns = mono,
                .sample_interval_bytes = 1, .max_stack_depth = 32};
  hp_encode_hello(e, &h);
  hp_frame_def f[5] = {{1, S("alloc"), S("lib.py"), 10}, {2, S("build"), S("lib.py"), 20},
                       {3, S("parse"), S("io.py"), 30},  {4, S("main"), S("app.py"), 40},
                       {5, S("<module>"), S("app.py"), 1}};
  for (int i = 0; i < 5; i++)
    hp_encode_frame_def(e, &f[i]);
  uint32_t st[4][4] = {{1, 2, 4, 5}, {1, 3, 4, 5}, {2, 3, 4, 5}, {1, 4, 5, 0}};
  uint32_t depth[4] = {4, 4, 4, 3};
  for (uint32_t i = 0; i < 4; i++) {
    hp_stack_def sd = {.stack_id = i + 1, .truncated = 0, .depth = depth[i], .frame_ids = st[i]};
    hp_encode_stack_def(e, &sd);
  }
  if (flush(fd, e) < 0)
    goto out;

  hp_event *buf = malloc(batch * sizeof *buf);
  const uint64_t base = 0x7f0000000000ULL + ((uint64_t)idx << 36);
  uint64_t allocs = 0, frees = 0, sent = 0, t = mono;
  uint32_t used = 0;
  while (sent < nevents) {
    hp_event *ev = &buf[used++];
    if (clock_stamps) {
      uint64_t now = now_ns(CLOCK_MONOTONIC);
      t = now > t ? now : t + 1;
    } else {
      t += 200;
    }
    /* Alternate alloc/free once `live` allocations exist; frees go oldest first. */
    if (allocs >= frees + live && (sent & 1)) {
      *ev = (hp_event){.kind = HP_EV_FREE, .ts_ns = t, .thread_id = 1,
                       .address = base + 32 * (frees % (4u * live))};
      frees++;
    } else {
      uint64_t size = 16 + (allocs % 13) * 24;
      *ev = (hp_event){.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ,
                       .stack_id = 1 + (uint32_t)(allocs % 4), .ts_ns = t, .thread_id = 1,
                       .address = base + 32 * (allocs % (4u * live)), .size = size,
                       .est_bytes = size};
      allocs++;
    }
    sent++;
    if (used == batch || sent == nevents) {
      if (hp_encode_events(e, buf, used) < 0 || flush(fd, e) < 0)
        break;
      used = 0;
    }
  }
  free(buf);
  hp_goodbye g = {.ts_ns = now_ns(CLOCK_MONOTONIC), .events_dropped = 0};
  hp_encode_goodbye(e, &g);
  flush(fd, e);
out:
  hp_encoder_free(e);
  shutdown(fd, SHUT_WR);
  char b[16];
  while (recv(fd, b, sizeof b, 0) > 0) {
  }
  close(fd);
  return NULL;
}

int main(int argc, char **argv) {
  int clients = 4;
  static const struct option opts[] = {
    {"socket", required_argument, NULL, 's'}, {"clients", required_argument, NULL, 'k'},
    {"events", required_argument, NULL, 'n'}, {"batch", required_argument, NULL, 'b'},
    {"live", required_argument, NULL, 'l'},   {"clock", no_argument, NULL, 'c'},
    {NULL, 0, NULL, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (opt) {
    case 's': sock_path = optarg; break;
    case 'k': clients = atoi(optarg); break;
    case 'n': nevents = strtoull(optarg, NULL, 10); break;
    case 'b': batch = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'l': live = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'c': clock_stamps = 1; break;
    default: return 2;
    }
  }
  if (sock_path == NULL || clients < 1 || batch < 1 || batch > HP_MAX_BATCH_EVENTS || live < 1) {
    fprintf(stderr, "usage: ingest_load --socket PATH [--clients K] [--events N] [--batch B<=%u]"
            " [--live L] [--clock]\n", HP_MAX_BATCH_EVENTS);
    return 2;
  }
  uint64_t t0 = now_ns(CLOCK_MONOTONIC);
  pthread_t *th = calloc((size_t)clients, sizeof *th);
  for (int i = 0; i < clients; i++)
    pthread_create(&th[i], NULL, run, (void *)(intptr_t)i);
  for (int i = 0; i < clients; i++)
    pthread_join(th[i], NULL);
  printf("%.3f\n", (double)(now_ns(CLOCK_MONOTONIC) - t0) / 1e9);
  free(th);
  return 0;
}
