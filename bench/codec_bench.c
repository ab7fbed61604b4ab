/* codec_bench.c — cost per event of encoding, framing and decoding EVENTS batches.
 *
 * The daemon must store >= 1,000,000 events/s on 2 cores, so decoding should take well
 * under 100 ns per event. Prints a table of CPU ns per event; asserts nothing.
 * Usage: codec_bench [batches]   (default 400 batches of each size) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hp_proto.h"

/* CPU time of this thread: the machine is shared, and time spent descheduled is not
 * a cost of the codec. */
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Events shaped like the agent's: a few threads, heap addresses, mostly small sizes,
 * timestamps a few microseconds apart and not quite in order. */
static void fill(hp_event *ev, uint32_t n, uint64_t seed) {
  uint64_t x = seed | 1;
  uint64_t ts = 1000000000000ull;
  for (uint32_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    memset(&ev[i], 0, sizeof(ev[i]));
    ts += x % 5000;
    ev[i].ts_ns = ts - (x % 3 == 0 ? 700 : 0);
    ev[i].thread_id = 1000 + x % 4;
    ev[i].address = 0x7f3a00000000ull + (x % (1u << 24)) * 16;
    if (x % 4 == 0) {
      ev[i].kind = HP_EV_FREE;
    } else {
      ev[i].kind = HP_EV_ALLOC;
      ev[i].domain = (uint8_t)(x % 3);
      ev[i].size = 16 + x % 2000;
      ev[i].est_bytes = 524288;
      ev[i].stack_id = (uint32_t)(1 + x % 3000);
    }
  }
}

int main(int argc, char **argv) {
  int batches = argc > 1 ? atoi(argv[1]) : 400;
  if (batches < 1) {
    fprintf(stderr, "codec_bench: batches must be a positive number, got \"%s\"\n", argv[1]);
    return 2;
  }
  static const uint32_t sizes[] = { 64, 1024, 4096, HP_MAX_BATCH_EVENTS };
  hp_event *ev = malloc(sizeof(*ev) * HP_MAX_BATCH_EVENTS);
  hp_encoder *e = hp_encoder_new(1 << 20);
  hp_decoder *d = hp_decoder_new();
  hp_framer *f = hp_framer_new(0);
  if (ev == NULL || e == NULL || d == NULL || f == NULL) {
    fprintf(stderr, "codec_bench: out of memory\n");
    return 1;
  }
  printf("%-8s %8s %10s %12s %12s %12s %14s\n", "batch", "batches", "bytes/ev",
         "encode ns/ev", "framer ns/ev", "decode ns/ev", "decode Mev/s");
  for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
    uint32_t n = sizes[s];
    int reps = (int)((uint64_t)batches * 4096 / n);
    if (reps < 20)
      reps = 20;
    fill(ev, n, 42 + s);
    double t_enc = 0, t_frm = 0, t_dec = 0;
    size_t bytes = 0;
    uint64_t checksum = 0;
    for (int r = 0; r < reps; r++) {
      hp_encoder_reset(e);
      double t0 = now_s();
      if (hp_encode_events(e, ev, n) != 0) {
        fprintf(stderr, "codec_bench: encode failed\n");
        return 1;
      }
      double t1 = now_s();
      size_t len;
      const uint8_t *data = hp_encoder_data(e, &len);
      bytes = len;
      /* Feed in 64 KiB pieces, as a libuv read callback would. */
      const uint8_t *payload = NULL;
      uint32_t plen = 0;
      int got = 0;
      for (size_t off = 0; off < len; off += 65536) {
        size_t piece = len - off < 65536 ? len - off : 65536;
        if (hp_framer_feed(f, data + off, piece) != 0)
          return 1;
      }
      got = hp_framer_next(f, &payload, &plen);
      double t2 = now_s();
      hp_msg m;
      int rc = got == 1 ? hp_decoder_decode(d, payload, plen, &m) : -1;
      double t3 = now_s();
      if (rc != 0 || m.u.events.count != n) {
        fprintf(stderr, "codec_bench: decode failed: %s\n", hp_decoder_error(d));
        return 1;
      }
      checksum += m.u.events.events[n - 1].address;
      t_enc += t1 - t0;
      t_frm += t2 - t1;
      t_dec += t3 - t2;
    }
    double per = 1e9 / ((double)reps * n);
    printf("%-8u %8d %10.1f %12.1f %12.1f %12.1f %14.2f\n", n, reps, (double)bytes / n,
           t_enc * per, t_frm * per, t_dec * per, (double)reps * n / t_dec / 1e6);
    if (checksum == 0)
      printf("(checksum 0)\n");
  }
  hp_framer_free(f);
  hp_decoder_free(d);
  hp_encoder_free(e);
  free(ev);
  return 0;
}
