/* tk_log: leveled logging to stderr (see tk_log.h). */
#include "common/tk_log.h"

#include <stdarg.h>
#include <stdio.h>

static int log_level = TK_LOG_INFO;

void tk_log_set_level(int level) { log_level = level; }

void tk_log(int level, const char *fmt, ...) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < log_level || level > TK_LOG_ERROR) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tokd %s: %s\n", names[level], line);
}
