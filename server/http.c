/* http: the libuv loop glue. One loop thread owns libmicrohttpd, run in external event-loop
 * mode: MHD is started with MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME (which brings its
 * inter-thread channel, so a resumed connection makes MHD's epoll fd readable) and no thread of
 * its own. A uv_poll_t watches MHD's epoll fd; a uv_timer_t follows MHD_get_timeout; both call
 * MHD_run. Nothing spins: when MHD has nothing to do it reports no timeout, and streaming
 * connections with no bytes ready are suspended inside the content reader (see api.c).
 *
 * The engine thread hands events over through srv_emit: a copy is appended to a mutex-protected
 * batch and uv_async_send wakes the loop, which swaps the batch out and applies each event
 * (api.c). SIGTERM/SIGINT (uv_signal_t) start the drain: MHD_quiesce_daemon and close the
 * listening socket (new connections are refused), /ready turns 503, in-flight requests finish
 * (aborted with a 503 error after drain_timeout_s), then the loop stops. A second signal
 * aborts at once. */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "server/srv_internal.h"

static void mhd_pump(srv_server *s);

/* ---- event queue (srv_emit runs on the engine thread) ---- */

static int batch_reserve(srv_evbatch *b, size_t more_bytes) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        srv_ev *ev = tk_realloc(b->ev, cap * sizeof *ev);
        if (!ev) return -1;
        b->ev = ev;
        b->cap = cap;
    }
    if (b->nbytes + more_bytes > b->capbytes) {
        size_t cap = b->capbytes ? b->capbytes : 4096;
        while (cap < b->nbytes + more_bytes) cap *= 2;
        char *p = tk_realloc(b->bytes, cap);
        if (!p) return -1;
        b->bytes = p;
        b->capbytes = cap;
    }
    return 0;
}

static size_t batch_copy(srv_evbatch *b, const void *data, size_t n) {
    size_t off = (b->nbytes + 7) & ~(size_t)7; /* aligned for the logprob structs */
    if (n) memcpy(b->bytes + off, data, n);
    b->nbytes = off + n;
    return off;
}

void srv_emit(void *ud, const sched_event *e) {
    srv_server *s = ud;
    const char *text = e->kind == SCHED_EV_ERROR ? (e->error ? e->error : "engine error") : e->text;
    size_t tlen = e->kind == SCHED_EV_ERROR ? strlen(text) : (text ? e->text_len : 0);
    int32_t n_lp = e->logprobs ? 1 + e->n_top : 0;
    size_t lp_bytes = (size_t)n_lp * sizeof(eng_token_logprob);
    pthread_mutex_lock(&s->evq.mu);
    srv_evbatch *b = &s->evq.cur;
    if (s->evq.closed) {
        pthread_mutex_unlock(&s->evq.mu);
        return;
    }
    if (batch_reserve(b, tlen + lp_bytes + 16)) {
        s->evq.lost = true;
    } else {
        srv_ev *ev = &b->ev[b->n++];
        *ev = (srv_ev){e->kind, e->id, e->choice, e->token, e->finish_reason, e->n_prompt, e->n_gen,
                       e->n_cached_prompt, 0, tlen, 0, n_lp};
        ev->text_off = batch_copy(b, text, tlen);
        ev->lp_off = batch_copy(b, e->logprobs, lp_bytes);
    }
    uv_async_send(&s->async); /* under the lock: close_handles cannot close it meanwhile */
    pthread_mutex_unlock(&s->evq.mu);
}

static void on_async(uv_async_t *h) {
    srv_server *s = h->data;
    srv_evbatch *w = &s->work;
    pthread_mutex_lock(&s->evq.mu);
    srv_evbatch tmp = s->evq.cur;
    s->evq.cur = *w;
    *w = tmp;
    bool lost = s->evq.lost;
    s->evq.lost = false;
    pthread_mutex_unlock(&s->evq.mu);
    if (lost) TK_ERROR("serve: out of memory queueing engine events; some responses may stall");
    for (size_t i = 0; i < w->n; i++) srv_api_event(s, &w->ev[i], w->bytes);
    w->n = 0;
    w->nbytes = 0;
    mhd_pump(s); /* resumed connections are only processed by the next MHD_run */
}

/* ---- MHD driving ---- */

static void on_timer(uv_timer_t *t);

static void mhd_pump(srv_server *s) {
    if (s->closed) return;
    MHD_run(s->mhd);
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(s->mhd, &to) == MHD_YES) uv_timer_start(&s->timer, on_timer, (uint64_t)to, 0);
    else uv_timer_stop(&s->timer);
}

static void on_timer(uv_timer_t *t) { mhd_pump(t->data); }

static void on_poll(uv_poll_t *p, int status, int events) {
    (void)events;
    if (status < 0) TK_WARN("serve: poll on the MHD epoll fd: %s", uv_strerror(status));
    mhd_pump(p->data);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    TK_DEBUG("microhttpd: %s", msg);
}

/* Listening address from host/port (getaddrinfo: "0.0.0.0", "::", "localhost", ...). */
static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len, char *err,
                   size_t errlen) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host[0] ? host : NULL, ps, &hints, &res);
    if (rc || !res) {
        snprintf(err, errlen, "cannot resolve host '%s': %s", host, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void on_signal(uv_signal_t *h, int signum) {
    srv_server *s = h->data;
    if (!s->draining) {
        TK_INFO("serve: signal %d: draining (%d requests in flight, up to %d s)", signum, s->n_open,
                s->cfg->drain_timeout_s);
        srv_drain_begin(s);
    } else {
        TK_WARN("serve: signal %d again: aborting in-flight requests", signum);
        s->drain_deadline_ms = uv_now(s->loop);
    }
}

int srv_http_start(srv_server *s, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t sl;
    if (resolve(s->cfg->host, s->cfg->port, &ss, &sl, err, errlen)) return -1;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)s->cfg->port, NULL, NULL, srv_api_handler, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)s->cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->cfg->idle_timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, srv_api_completed, s, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_END);
    if (!s->mhd) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use or not permitted?)", s->cfg->host,
                 s->cfg->port);
        return -1;
    }
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = pi ? pi->port : (uint16_t)s->cfg->port;
    const union MHD_DaemonInfo *ei = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!ei || uv_poll_init(s->loop, &s->poll, ei->epoll_fd) ||
        uv_timer_init(s->loop, &s->timer) || uv_timer_init(s->loop, &s->drain_timer) ||
        uv_async_init(s->loop, &s->async, on_async) || uv_signal_init(s->loop, &s->sig_term) ||
        uv_signal_init(s->loop, &s->sig_int)) {
        snprintf(err, errlen, "cannot set up the event loop");
        return -1; /* handles already initialised are closed by srv_http_stop */
    }
    s->poll.data = s->timer.data = s->drain_timer.data = s->async.data = s->sig_term.data = s->sig_int.data = s;
    uv_poll_start(&s->poll, UV_READABLE, on_poll);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    mhd_pump(s);
    return 0;
}

/* ---- drain ---- */

static void close_handles(srv_server *s) {
    if (s->closed) return;
    s->closed = true;
    pthread_mutex_lock(&s->evq.mu);
    s->evq.closed = true;
    pthread_mutex_unlock(&s->evq.mu);
    uv_handle_t *hs[] = {(uv_handle_t *)&s->poll,     (uv_handle_t *)&s->timer,    (uv_handle_t *)&s->drain_timer,
                         (uv_handle_t *)&s->async,    (uv_handle_t *)&s->sig_term, (uv_handle_t *)&s->sig_int};
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++)
        if (hs[i]->loop && !uv_is_closing(hs[i])) uv_close(hs[i], NULL);
}

static void on_drain_tick(uv_timer_t *t) {
    srv_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    if (s->n_open == 0) {
        TK_INFO("serve: drained; exiting");
        close_handles(s);
        return;
    }
    if (now >= s->drain_deadline_ms && !s->aborted_all) {
        TK_WARN("serve: drain timeout: aborting %d in-flight requests", s->n_gen);
        s->aborted_all = true;
        srv_api_abort_all(s);
    }
    if (now >= s->drain_deadline_ms + 5000) { /* aborted requests did not finish: give up on them */
        TK_WARN("serve: %d requests still open after the drain; closing", s->n_open);
        close_handles(s);
    }
}

void srv_drain_begin(srv_server *s) {
    s->draining = true;
    s->drain_deadline_ms = uv_now(s->loop) + (uint64_t)s->cfg->drain_timeout_s * 1000;
    MHD_socket fd = MHD_quiesce_daemon(s->mhd);
    if (fd != MHD_INVALID_SOCKET) close(fd); /* external polling: ours to close now */
    uv_timer_start(&s->drain_timer, on_drain_tick, 0, 50);
}

void srv_http_stop(srv_server *s) {
    close_handles(s);
    uv_run(s->loop, UV_RUN_DEFAULT); /* let the close callbacks run */
    if (s->mhd) {
        srv_api_resume_all(s); /* MHD must not be stopped with suspended connections */
        MHD_run(s->mhd);
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
    }
    pthread_mutex_destroy(&s->evq.mu);
    tk_free(s->evq.cur.ev);
    tk_free(s->evq.cur.bytes);
    tk_free(s->work.ev);
    tk_free(s->work.bytes);
}
