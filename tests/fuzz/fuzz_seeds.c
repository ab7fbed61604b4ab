/* fuzz_seeds.c — writes the seed corpus of fuzz_decode into a directory.
 *
 * One valid payload of each message type (the fuzzer starts from inputs that reach the
 * field checks, not from noise), a few near-misses, and a framed stream of all of them
 * preceded by the piece-size byte that fuzz_decode's framer mode reads first.
 * Usage: fuzz_seeds DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hp_proto.h"

static int write_file(const char *dir, const char *name, const uint8_t *p, size_t n) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL) {
    perror(path);
    return -1;
  }
  size_t w = fwrite(p, 1, n, f);
  if (fclose(f) != 0 || w != n) {
    fprintf(stderr, "fuzz_seeds: could not write %s\n", path);
    return -1;
  }
  return 0;
}

/* Writes the payload of the last frame in e. */
static int write_last(hp_encoder *e, size_t start, const char *dir, const char *name) {
  size_t n;
  const uint8_t *p = hp_encoder_data(e, &n);
  return write_file(dir, name, p + start + 4, n - start - 4);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  const char *dir = argv[1];
  hp_encoder *e = hp_encoder_new(0);
  if (e == NULL)
    return 1;
  size_t start;
  int rc = 0;

  static const hp_str args[] = { { "prog.py", 7 }, { "-x", 2 } };
  static const hp_bucket buckets[] = { { 128, 0.125 }, { 1u << 20, 1.0 } };
  hp_hello h = { HP_PROTO_VERSION, 1234, 1, 2, args, { "/usr/bin/python3", 16 },
                 { "3.11.2", 6 }, 1700000000000000000ull, 123456789, 0, 64, 2, buckets };
  hp_encoder_data(e, &start);
  rc |= hp_encode_hello(e, &h);
  rc |= write_last(e, start, dir, "hello");
  h.sample_interval_bytes = 524288;
  h.nbuckets = 0;
  hp_encoder_data(e, &start);
  rc |= hp_encode_hello(e, &h);
  rc |= write_last(e, start, dir, "hello_interval");

  hp_frame_def fd = { 7, { "main", 4 }, { "prog.py", 7 }, 12 };
  hp_encoder_data(e, &start);
  rc |= hp_encode_frame_def(e, &fd);
  rc |= write_last(e, start, dir, "frame_def");

  uint32_t ids[3] = { 7, 7, 7 };
  hp_stack_def sd = { 9, 1, 3, ids };
  hp_encoder_data(e, &start);
  rc |= hp_encode_stack_def(e, &sd);
  rc |= write_last(e, start, dir, "stack_def");

  hp_thread_def td = { 4242, { "MainThread", 10 } };
  hp_encoder_data(e, &start);
  rc |= hp_encode_thread_def(e, &td);
  rc |= write_last(e, start, dir, "thread_def");

  hp_event ev[6] = {
    { HP_EV_ALLOC, HP_DOMAIN_OBJ, 9, 1000, 4242, 0x7f0000001000ull, 32, 4096 },
    { HP_EV_ALLOC, HP_DOMAIN_RAW, 0, 1200, 4243, 0x7f0000002000ull, 1u << 20, 1u << 20 },
    { HP_EV_REATTRIBUTE, 0, 9, 1050, 4242, 0x7f0000001000ull, 0, 0 },
    { HP_EV_ALLOC, HP_DOMAIN_NATIVE, 0, 1250, 4243, 0x7f0000003000ull, 100000, 100000 },
    { HP_EV_FREE, 0, 0, 1100, 4242, 0x7f0000001000ull, 0, 0 },
    { HP_EV_FREE, 0, 0, 1300, 4243, 0x7f0000002000ull, 0, 0 },
  };
  hp_encoder_data(e, &start);
  rc |= hp_encode_events(e, ev, 6);
  rc |= write_last(e, start, dir, "events");

  hp_marker mk = { 1400, { "phase 2", 7 } };
  hp_encoder_data(e, &start);
  rc |= hp_encode_marker(e, &mk);
  rc |= write_last(e, start, dir, "marker");

  hp_counters c = { 5000, 17, 524288, 6 };
  hp_encoder_data(e, &start);
  rc |= hp_encode_counters(e, &c);
  rc |= write_last(e, start, dir, "counters");

  hp_goodbye g = { 6000, 17, HP_END_HOOKS_REPLACED };
  hp_encoder_data(e, &start);
  rc |= hp_encode_goodbye(e, &g);
  rc |= write_last(e, start, dir, "goodbye");

  /* The whole stream, framed, behind a piece-size byte. */
  size_t n;
  const uint8_t *all = hp_encoder_data(e, &n);
  uint8_t *stream = malloc(n + 1);
  if (stream == NULL)
    return 1;
  stream[0] = 4;
  memcpy(stream + 1, all, n);
  rc |= write_file(dir, "stream", stream, n + 1);
  free(stream);

  /* Near-misses: an older and a newer version, unknown type, an oversized frame header. */
  static const uint8_t v1[] = { 0x93, 0x01, 0xa8, 'h', 'e', 'a', 'p', 'p', 'r', 'o', 'f', 0x01 };
  static const uint8_t v3[] = { 0x93, 0x01, 0xa8, 'h', 'e', 'a', 'p', 'p', 'r', 'o', 'f', 0x03 };
  static const uint8_t t9[] = { 0x92, 0x09, 0x00 };
  static const uint8_t big[] = { 0x01, 0x00, 0x10, 0x00, 0x01, 0x93 };
  rc |= write_file(dir, "version1", v1, sizeof(v1));
  rc |= write_file(dir, "version3", v3, sizeof(v3));
  rc |= write_file(dir, "type9", t9, sizeof(t9));
  rc |= write_file(dir, "bigframe", big, sizeof(big));
  hp_encoder_free(e);
  if (rc != 0) {
    fprintf(stderr, "fuzz_seeds: could not write the corpus into %s\n", dir);
    return 1;
  }
  return 0;
}
