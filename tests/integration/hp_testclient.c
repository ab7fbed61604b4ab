/* hp_testclient.c — a scripted heapprof agent built on the codec, for the daemon tests.
 *
 *   hp_testclient --socket PATH --scenario NAME [--tag T] [--events N] [--batch B]
 *                 [--clients K] [--setuid UID] [--defs D] [--version V] [--end-reason R]
 *
 * Each client sends HELLO with argv ["hp_testclient", TAG] (TAG-i with --clients), so
 * tests find its session by argv. Scenarios (all but the first three start with a
 * valid HELLO, frames, stacks and N events, so the test can check they were kept):
 *   normal        ... then COUNTERS and GOODBYE (with end_reason R, default 0)
 *   before-hello  EVENTS as the first frame
 *   bad-version   HELLO with protocol version V (default 99)
 *   random        a frame of random bytes (fixed seed) as the first frame
 *   undef-stack   ... then EVENTS using a stack id never defined
 *   dup-frame     ... then a FRAME_DEF of an id defined already
 *   garbage       ... then a frame whose payload is not msgpack
 *   oversized     ... then a frame header announcing 2 GiB
 *   truncated     ... then half of an EVENTS frame, then close
 *   disconnect    ... then close without GOODBYE
 *   hold          ... then print "sent", wait for stdin to close, then close
 *   hold-goodbye  as hold, but sends COUNTERS and GOODBYE after stdin closes
 *   many-frames   ... then FRAME_DEFs of new ids until D frames are defined in all
 *   many-stacks   ... then STACK_DEFs (of frame 1) until D stacks are defined in all
 *                 (both then GOODBYE, in case the daemon accepted them all)
 *   spike         HELLO at a 100 ms boundary; 1000 B live, a 1 MB spike from 10 to
 *                 20 ms, an alloc at 350 ms; then GOODBYE
 *   spike-idle    as spike without the alloc at 350 ms, then as hold, then GOODBYE
 *   protocol2     ... then thread names (one renamed), two markers, a native
 *                 allocation and reattributes (one of a live block, one of an address
 *                 with nothing live), then GOODBYE
 *   unsent        ... then COUNTERS saying 100 more events were sent than were, and
 *                 close without GOODBYE (an agent that gave up at exit)
 * On success it prints one JSON line per client: {"tag":..,"events":..,"allocs":..,
 * "frees":..}; exit 0. Exit 1 on a local error (not on the daemon closing on us). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hp_proto.h"

static const char *socket_path, *scenario = "normal", *tag = "t";
static uint32_t nevents = 1000, batch = 1000, ndefs = 0, hello_version = 99, end_reason = 0;

typedef struct {
  int index;
  char tag[128];
  uint64_t events, allocs, frees;
  int rc;
} client;

static uint64_t now_ns(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int connect_socket(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", socket_path);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    fprintf(stderr, "hp_testclient: connect %s: %s\n", socket_path, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* Writes everything; a daemon that closed on us is not an error for the scenarios. */
static void send_all(int fd, const void *p, size_t n) {
  const uint8_t *b = p;
  while (n > 0) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return;
    }
    b += w;
    n -= (size_t)w;
  }
}

static void flush_enc(int fd, hp_encoder *e) {
  size_t len;
  const uint8_t *p = hp_encoder_data(e, &len);
  send_all(fd, p, len);
  hp_encoder_reset(e);
}

static void fatal_enc(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "hp_testclient: encoding %s: %s\n", what, hp_strerror(rc));
    exit(1);
  }
}

static hp_str S(const char *s) { return (hp_str){s, (uint32_t)strlen(s)}; }

static void send_hello(int fd, hp_encoder *e, client *c, uint32_t version, uint64_t wall,
                       uint64_t mono) {
  hp_str argv[2] = {S("hp_testclient"), S(c->tag)};
  hp_hello h = {.version = HP_PROTO_VERSION, .pid = getpid(), .ppid = getppid(), .argc = 2, .argv = argv,
                .executable = S("/usr/bin/hp_testclient"), .python_version = S("3.11.0"),
                .start_wall_ns = wall, .start_mono_ns = mono, .sample_interval_bytes = 1,
                .max_stack_depth = 32};
  fatal_enc(hp_encode_hello(e, &h), "HELLO");
  if (version != HP_PROTO_VERSION) {
    /* The encoder refuses other versions, so patch the encoded field: it follows the
     * magic string and is a msgpack positive fixint for any version below 128. */
    size_t len;
    uint8_t *p = (uint8_t *)hp_encoder_data(e, &len);
    uint8_t *m = memmem(p, len, HP_PROTO_MAGIC, strlen(HP_PROTO_MAGIC));
    if (m == NULL || version > 127 || m[strlen(HP_PROTO_MAGIC)] != HP_PROTO_VERSION) {
      fprintf(stderr, "hp_testclient: cannot place version %u in HELLO\n", version);
      exit(1);
    }
    m[strlen(HP_PROTO_MAGIC)] = (uint8_t)version;
  }
  flush_enc(fd, e);
}

static void send_defs(int fd, hp_encoder *e) {
  hp_frame_def f[3] = {{1, S("alloc_here"), S("lib.py"), 10},
                       {2, S("helper"), S("lib.py"), 20},
                       {3, S("<module>"), S("main.py"), 1}};
  for (int i = 0; i < 3; i++)
    fatal_enc(hp_encode_frame_def(e, &f[i]), "FRAME_DEF");
  uint32_t s1[] = {1, 3}, s2[] = {1, 2, 3};
  hp_stack_def st1 = {.stack_id = 1, .truncated = 0, .depth = 2, .frame_ids = s1};
  hp_stack_def st2 = {.stack_id = 2, .truncated = 0, .depth = 3, .frame_ids = s2};
  fatal_enc(hp_encode_stack_def(e, &st1), "STACK_DEF");
  fatal_enc(hp_encode_stack_def(e, &st2), "STACK_DEF");
  flush_enc(fd, e);
}

/* n events: alloc k, and from k = 64 on also free k-64, so 64 allocations stay live. */
static void send_events(int fd, hp_encoder *e, client *c, uint64_t mono, uint32_t n) {
  hp_event *buf = calloc(batch, sizeof *buf);
  uint32_t used = 0;
  uint64_t k = 0, t = mono + 1000;
  const uint64_t base = 0x7f0000000000ULL + ((uint64_t)c->index << 32);
  while (c->events < n) {
    hp_event ev;
    int want_free = c->frees + 64 < k && c->events % 2 == 1;
    if (want_free) {
      ev = (hp_event){.kind = HP_EV_FREE, .ts_ns = t, .thread_id = 1,
                      .address = base + 16 * c->frees};
      c->frees++;
    } else {
      uint64_t size = 32 + (k % 8) * 16;
      ev = (hp_event){.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ, .stack_id = 1 + (uint32_t)(k % 2),
                      .ts_ns = t, .thread_id = 1, .address = base + 16 * k, .size = size,
                      .est_bytes = size};
      c->allocs++;
      k++;
    }
    t += 1000;
    buf[used++] = ev;
    c->events++;
    if (used == batch || c->events == n) {
      fatal_enc(hp_encode_events(e, buf, used), "EVENTS");
      flush_enc(fd, e);
      used = 0;
    }
  }
  free(buf);
}

/* Frame or stack definitions of ids 4.. (frames) or 3.. (stacks) up to `total` defined,
 * after send_defs: a hostile agent growing the daemon's id maps. All name the same
 * code, so the database stays small; only the ids are new. */
static void send_many_defs(int fd, hp_encoder *e, int stacks, uint32_t total) {
  uint32_t one[] = {1};
  for (uint32_t id = stacks ? 3 : 4; id <= total; id++) {
    if (stacks) {
      hp_stack_def st = {.stack_id = id, .truncated = 0, .depth = 1, .frame_ids = one};
      fatal_enc(hp_encode_stack_def(e, &st), "STACK_DEF");
    } else {
      hp_frame_def f = {id, S("alloc_here"), S("lib.py"), 10};
      fatal_enc(hp_encode_frame_def(e, &f), "FRAME_DEF");
    }
    if (id % 1024 == 0)
      flush_enc(fd, e);
  }
  flush_enc(fd, e);
}

/* COUNTERS saying events_sent = what this client sent plus `unsent`. */
static void send_counters(int fd, hp_encoder *e, const client *c, uint64_t dropped,
                          uint64_t unsent) {
  hp_counters cn = {.ts_ns = now_ns(CLOCK_MONOTONIC), .events_dropped = dropped,
                    .sample_interval_bytes = 1, .events_sent = c->events + unsent};
  fatal_enc(hp_encode_counters(e, &cn), "COUNTERS");
  flush_enc(fd, e);
}

static void send_goodbye(int fd, hp_encoder *e, const client *c, uint64_t dropped) {
  send_counters(fd, e, c, dropped, 0);
  hp_goodbye g = {.ts_ns = now_ns(CLOCK_MONOTONIC), .events_dropped = dropped,
                  .end_reason = end_reason};
  fatal_enc(hp_encode_goodbye(e, &g), "GOODBYE");
  flush_enc(fd, e);
}

/* Protocol 2's messages, after send_defs: thread names (thread 2 renamed), markers at
 * +5 ms and +6 ms, a native allocation at 0x5000, an object at 0x6000 that is
 * reattributed to thread 2 under stack 2, and a reattribute at 0x7000, where nothing
 * is live. */
static void send_protocol2(int fd, hp_encoder *e, client *c, uint64_t mono) {
  const uint64_t ms = 1000000ULL;
  hp_thread_def t1 = {1, S("MainThread")}, t2 = {2, S("worker")}, t3 = {2, S("worker-2")};
  fatal_enc(hp_encode_thread_def(e, &t1), "THREAD_DEF");
  fatal_enc(hp_encode_thread_def(e, &t2), "THREAD_DEF");
  hp_marker m1 = {mono + 5 * ms, S("phase 1")};
  fatal_enc(hp_encode_marker(e, &m1), "MARKER");
  hp_event ev[] = {
    {.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_NATIVE, .ts_ns = mono + 7 * ms, .thread_id = 2,
     .address = 0x5000, .size = 1 << 20, .est_bytes = 1 << 20},
    {.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ, .stack_id = 1, .ts_ns = mono + 8 * ms,
     .thread_id = 1, .address = 0x6000, .size = 64, .est_bytes = 64},
    {.kind = HP_EV_REATTRIBUTE, .stack_id = 2, .ts_ns = mono + 9 * ms, .thread_id = 2,
     .address = 0x6000},
    {.kind = HP_EV_REATTRIBUTE, .stack_id = 1, .ts_ns = mono + 9 * ms, .thread_id = 2,
     .address = 0x7000},
  };
  fatal_enc(hp_encode_events(e, ev, 4), "EVENTS");
  fatal_enc(hp_encode_thread_def(e, &t3), "THREAD_DEF");
  hp_marker m2 = {mono + 6 * ms, S("phase 2")};
  fatal_enc(hp_encode_marker(e, &m2), "MARKER");
  flush_enc(fd, e);
  c->events += 4;
  c->allocs += 2;
}

static void spike(int fd, hp_encoder *e, client *c, int idle) {
  const uint64_t iv = 100000000ULL;
  uint64_t wall = now_ns(CLOCK_REALTIME) / iv * iv, mono = now_ns(CLOCK_MONOTONIC);
  send_hello(fd, e, c, HP_PROTO_VERSION, wall, mono);
  send_defs(fd, e);
  const uint64_t ms = 1000000ULL;
  hp_event ev[] = {
    {.kind = HP_EV_ALLOC, .domain = 2, .stack_id = 1, .ts_ns = mono + 5 * ms, .address = 0x1000,
     .size = 1000, .est_bytes = 1000},
    {.kind = HP_EV_ALLOC, .domain = 2, .stack_id = 2, .ts_ns = mono + 10 * ms, .address = 0x2000,
     .size = 1000000, .est_bytes = 1000000},
    {.kind = HP_EV_FREE, .ts_ns = mono + 20 * ms, .address = 0x2000},
    {.kind = HP_EV_ALLOC, .domain = 2, .stack_id = 1, .ts_ns = mono + 350 * ms, .address = 0x3000,
     .size = 1, .est_bytes = 1},
  };
  uint32_t n = idle ? 3 : 4;  /* idle: the spike is the last thing that happens */
  fatal_enc(hp_encode_events(e, ev, n), "EVENTS");
  flush_enc(fd, e);
  c->events = n;
  c->allocs = n - 1;
  c->frees = 1;
  if (idle) {
    printf("sent\n");
    fflush(stdout);
    char b[64];
    while (read(0, b, sizeof b) > 0) {
    }
  }
  send_goodbye(fd, e, c, 0);
}

static void *run_client(void *arg) {
  client *c = arg;
  int fd = connect_socket();
  if (fd < 0) {
    c->rc = 1;
    return NULL;
  }
  hp_encoder *e = hp_encoder_new(1 << 16);
  uint64_t wall = now_ns(CLOCK_REALTIME), mono = now_ns(CLOCK_MONOTONIC);
  const char *sc = scenario;

  if (strcmp(sc, "spike") == 0 || strcmp(sc, "spike-idle") == 0) {
    spike(fd, e, c, strcmp(sc, "spike-idle") == 0);
  } else if (strcmp(sc, "before-hello") == 0) {
    hp_event ev = {.kind = HP_EV_ALLOC, .ts_ns = mono, .address = 0x10, .size = 8, .est_bytes = 8};
    fatal_enc(hp_encode_events(e, &ev, 1), "EVENTS");
    flush_enc(fd, e);
  } else if (strcmp(sc, "bad-version") == 0) {
    send_hello(fd, e, c, hello_version, wall, mono);
  } else if (strcmp(sc, "random") == 0) {
    uint8_t junk[4 + 200];
    uint32_t seed = 12345;
    junk[0] = 0; junk[1] = 0; junk[2] = 0; junk[3] = 200;
    for (int i = 4; i < (int)sizeof junk; i++) {
      seed = seed * 1103515245u + 12345u;
      junk[i] = (uint8_t)(seed >> 16);
    }
    send_all(fd, junk, sizeof junk);
  } else {
    send_hello(fd, e, c, HP_PROTO_VERSION, wall, mono);
    send_defs(fd, e);
    send_events(fd, e, c, mono, nevents);
    if (strcmp(sc, "normal") == 0) {
      send_goodbye(fd, e, c, 3);
    } else if (strcmp(sc, "protocol2") == 0) {
      send_protocol2(fd, e, c, mono);
      send_goodbye(fd, e, c, 0);
    } else if (strcmp(sc, "unsent") == 0) {
      send_counters(fd, e, c, 3, 100);
    } else if (strcmp(sc, "undef-stack") == 0) {
      hp_event ev = {.kind = HP_EV_ALLOC, .stack_id = 77, .ts_ns = mono, .address = 0x10,
                     .size = 8, .est_bytes = 8};
      fatal_enc(hp_encode_events(e, &ev, 1), "EVENTS");
      flush_enc(fd, e);
    } else if (strcmp(sc, "dup-frame") == 0) {
      hp_frame_def f = {2, S("again"), S("lib.py"), 99};
      fatal_enc(hp_encode_frame_def(e, &f), "FRAME_DEF");
      flush_enc(fd, e);
    } else if (strcmp(sc, "garbage") == 0) {
      uint8_t junk[] = {0, 0, 0, 6, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1};
      send_all(fd, junk, sizeof junk);
    } else if (strcmp(sc, "oversized") == 0) {
      uint8_t hdr[] = {0x80, 0, 0, 0, 1, 2, 3};
      send_all(fd, hdr, sizeof hdr);
    } else if (strcmp(sc, "truncated") == 0) {
      hp_event ev = {.kind = HP_EV_FREE, .ts_ns = mono, .address = 0x10};
      fatal_enc(hp_encode_events(e, &ev, 1), "EVENTS");
      size_t len;
      const uint8_t *p = hp_encoder_data(e, &len);
      send_all(fd, p, len / 2);
    } else if (strcmp(sc, "hold") == 0 || strcmp(sc, "hold-goodbye") == 0) {
      printf("sent\n");
      fflush(stdout);
      char b[64];
      while (read(0, b, sizeof b) > 0) {
      }
      if (strcmp(sc, "hold-goodbye") == 0)
        send_goodbye(fd, e, c, 3);
    } else if (strcmp(sc, "many-frames") == 0 || strcmp(sc, "many-stacks") == 0) {
      send_many_defs(fd, e, strcmp(sc, "many-stacks") == 0, ndefs);
      send_goodbye(fd, e, c, 0);
    } else if (strcmp(sc, "disconnect") != 0) {
      fprintf(stderr, "hp_testclient: unknown scenario '%s'\n", sc);
      c->rc = 1;
    }
  }
  /* Make sure the daemon has seen everything before the close: shut down our side
   * and wait for its EOF (it never writes), with a bound in case it keeps us open. */
  shutdown(fd, SHUT_WR);
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char b[16];
  while (recv(fd, b, sizeof b, 0) > 0) {
  }
  close(fd);
  hp_encoder_free(e);
  return NULL;
}

int main(int argc, char **argv) {
  int nclients = 1;
  long setuid_to = -1;
  static const struct option opts[] = {
    {"socket", required_argument, NULL, 's'}, {"scenario", required_argument, NULL, 'c'},
    {"tag", required_argument, NULL, 't'},    {"events", required_argument, NULL, 'n'},
    {"batch", required_argument, NULL, 'b'},  {"clients", required_argument, NULL, 'k'},
    {"setuid", required_argument, NULL, 'u'}, {"defs", required_argument, NULL, 'D'},
    {"version", required_argument, NULL, 'v'}, {"end-reason", required_argument, NULL, 'r'},
    {NULL, 0, NULL, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (opt) {
    case 's': socket_path = optarg; break;
    case 'c': scenario = optarg; break;
    case 't': tag = optarg; break;
    case 'n': nevents = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'b': batch = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'k': nclients = atoi(optarg); break;
    case 'u': setuid_to = strtol(optarg, NULL, 10); break;
    case 'D': ndefs = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'v': hello_version = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'r': end_reason = (uint32_t)strtoul(optarg, NULL, 10); break;
    default: return 2;
    }
  }
  if (socket_path == NULL || nclients < 1 || batch < 1 || batch > HP_MAX_BATCH_EVENTS) {
    fprintf(stderr, "hp_testclient: --socket is required; --clients >= 1; 1 <= --batch <= %u\n",
            HP_MAX_BATCH_EVENTS);
    return 2;
  }
  if (setuid_to >= 0 && (setgid((gid_t)setuid_to) < 0 || setuid((uid_t)setuid_to) < 0)) {
    fprintf(stderr, "hp_testclient: setuid %ld: %s\n", setuid_to, strerror(errno));
    return 1;
  }
  client *cs = calloc((size_t)nclients, sizeof *cs);
  pthread_t *th = calloc((size_t)nclients, sizeof *th);
  for (int i = 0; i < nclients; i++) {
    cs[i].index = i;
    if (nclients == 1)
      snprintf(cs[i].tag, sizeof cs[i].tag, "%s", tag);
    else
      snprintf(cs[i].tag, sizeof cs[i].tag, "%s-%d", tag, i);
    if (pthread_create(&th[i], NULL, run_client, &cs[i]) != 0) {
      fprintf(stderr, "hp_testclient: pthread_create failed\n");
      return 1;
    }
  }
  int rc = 0;
  for (int i = 0; i < nclients; i++) {
    pthread_join(th[i], NULL);
    rc |= cs[i].rc;
    printf("{\"tag\":\"%s\",\"events\":%" PRIu64 ",\"allocs\":%" PRIu64 ",\"frees\":%" PRIu64 "}\n",
           cs[i].tag, cs[i].events, cs[i].allocs, cs[i].frees);
  }
  free(cs);
  free(th);
  return rc;
}
