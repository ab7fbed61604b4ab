/* hp_log.h — heapprofd's log to stderr, one line per call, any thread.
 * stdout is reserved for the single "listening on" line scripts wait for. */
#ifndef HP_LOG_H
#define HP_LOG_H

typedef enum { HP_LOG_ERROR = 0, HP_LOG_WARN, HP_LOG_INFO, HP_LOG_DEBUG } hp_log_level;

void hp_log_set_level(hp_log_level level);
/* -1 when name is not one of error|warn|info|debug. */
int hp_log_parse_level(const char *name);
void hp_log(hp_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* HP_LOG_H */
