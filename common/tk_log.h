/* tk_log: leveled logging to stderr. Thread-safe (one fprintf per line). */
#ifndef TK_LOG_H
#define TK_LOG_H

enum { TK_LOG_DEBUG = 0, TK_LOG_INFO = 1, TK_LOG_WARN = 2, TK_LOG_ERROR = 3, TK_LOG_QUIET = 4 };

void tk_log_set_level(int level);
void tk_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define TK_INFO(...) tk_log(TK_LOG_INFO, __VA_ARGS__)
#define TK_WARN(...) tk_log(TK_LOG_WARN, __VA_ARGS__)
#define TK_ERROR(...) tk_log(TK_LOG_ERROR, __VA_ARGS__)
#define TK_DEBUG(...) tk_log(TK_LOG_DEBUG, __VA_ARGS__)

#endif
