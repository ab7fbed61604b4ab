/* log.c — see hp_log.h. Each line is formatted into a local buffer and written with
 * one write(2), so lines from the loop and store threads never interleave. */
#include "hp_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static atomic_int current_level = HP_LOG_INFO; /* set once at start-up */

static const char *const names[] = {"error", "warn", "info", "debug"};

void hp_log_set_level(hp_log_level level)
{
  atomic_store(&current_level, (int)level);
}

int hp_log_parse_level(const char *name)
{
  for (int i = 0; i < 4; i++)
    if (strcmp(name, names[i]) == 0)
      return i;
  return -1;
}

static int enabled(hp_log_level level)
{
  return (int)level <= atomic_load(&current_level);
}

void hp_log(hp_log_level level, const char *fmt, ...)
{
  if (!enabled(level))
    return;
  char buf[2048];
  int n = snprintf(buf, sizeof buf, "heapprofd: %s: ", names[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof buf - 2)
    len = sizeof buf - 2; /* truncated line still ends in a newline */
  buf[len++] = '\n';
  ssize_t w = write(STDERR_FILENO, buf, len);
  (void)w; /* nowhere left to report a failing stderr */
}
