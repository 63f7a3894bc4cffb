/* kern_pool: a persistent thread pool for the forward pass. One job at a time: the caller
 * publishes fn/ctx and bumps a generation counter; workers (spinning briefly, then sleeping on
 * a condition variable) run their share and count down. The caller runs share 0 itself, so
 * a 1-thread pool is a plain function call. No allocation per job; each thread also owns a
 * scratch buffer for kernels (kern__pool_scratch) that grows to the largest size asked for. */
#include "kernels/kern.h"
#include "kernels/cpu/cpu_internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "common/tk_mem.h"

#define POOL_SPIN_ITERS 20000

/* One thread's scratch: buf is raw rounded up to 64 bytes, with `bytes` usable */
typedef struct {
    void *raw, *buf;
    size_t bytes;
} pool_scratch;

struct kern_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*fn)(void *ctx, int ith, int nth);
    void *ctx;
    atomic_uint generation; /* bumped per job; workers run when it changes */
    atomic_int pending;     /* workers still running the current job */
    atomic_int sleeping;    /* workers in (or about to enter) pthread_cond_wait */
    atomic_bool stop;
    bool pin;               /* thread i runs on cpus[i] (kern_pool_new_pinned) */
    int cpus[CPU_SETSIZE];  /* the CPUs this process may use, in order (n_cpus of them) */
    int n_cpus;
    pthread_t pinned_caller; /* the caller thread last pinned to cpus[0] */
    bool caller_pinned;
    pool_scratch *scratch; /* [n_threads]: slot i used only by thread i (0: the caller) */
};

typedef struct {
    kern_pool *pool;
    int ith;
} worker_arg;

static worker_arg *worker_args_of(kern_pool *p) { return (worker_arg *)(p->threads + p->n_threads); }

static unsigned wait_generation(kern_pool *p, unsigned seen) {
    for (int i = 0; i < POOL_SPIN_ITERS; i++) {
        unsigned g = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (g != seen || atomic_load(&p->stop)) return g;
    }
    /* sleeping is raised before generation is read again (both seq_cst), and kern_pool_run
     * bumps generation before it reads sleeping: either we see the new job, or it sees us */
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleeping, 1);
    unsigned g;
    while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->cv, &p->mu);
    atomic_fetch_sub(&p->sleeping, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

/* The CPUs the process may use, read once before main: sched_getaffinity(0) reports the calling
 * thread's set, and once a pinned pool has pinned its caller to one CPU, a pool created later
 * from that thread would otherwise put every worker on that same CPU. */
static cpu_set_t process_cpus;
static bool process_cpus_ok;

__attribute__((constructor)) static void read_process_cpus(void) {
    CPU_ZERO(&process_cpus);
    process_cpus_ok = sched_getaffinity(0, sizeof process_cpus, &process_cpus) == 0 && CPU_COUNT(&process_cpus) > 0;
}

/* Pins the calling thread to CPU `cpu`; 0 or an errno */
static int pin_self(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    kern_pool *p = wa->pool;
    if (p->pin) pin_self(p->cpus[wa->ith % p->n_cpus]); /* best effort: unpinned still works */
    unsigned seen = 0;
    for (;;) {
        seen = wait_generation(p, seen);
        if (atomic_load(&p->stop)) break;
        p->fn(p->ctx, wa->ith, p->n_threads);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
    return NULL;
}

kern_pool *kern_pool_new(int n_threads) { return kern_pool_new_pinned(n_threads, false); }

kern_pool *kern_pool_new_pinned(int n_threads, bool pin) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    kern_pool *p = tk_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    p->threads = tk_calloc((size_t)n_threads, sizeof(pthread_t) + sizeof(worker_arg));
    p->scratch = tk_calloc((size_t)n_threads, sizeof(pool_scratch));
    if (!p->threads || !p->scratch) goto fail;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleeping, 0);
    atomic_init(&p->stop, false);
    if (pin) { /* the process's allowed CPUs, in order: thread i gets the i-th */
        cpu_set_t set = process_cpus;
        if (!process_cpus_ok && sched_getaffinity(0, sizeof set, &set) != 0) CPU_ZERO(&set);
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &set)) p->cpus[p->n_cpus++] = c;
        p->pin = p->n_cpus > 0;
    }
    worker_arg *args = worker_args_of(p);
    for (int i = 1; i < n_threads; i++) {
        args[i] = (worker_arg){p, i};
        if (pthread_create(&p->threads[i], NULL, worker_main, &args[i]) != 0) {
            p->n_threads = i; /* join only those started */
            kern_pool_destroy(p);
            return NULL;
        }
    }
    return p;
fail:
    tk_free(p->threads);
    tk_free(p->scratch);
    tk_free(p);
    return NULL;
}

void kern_pool_destroy(kern_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    for (int i = 0; i < p->n_threads; i++) tk_free(p->scratch[i].raw);
    tk_free(p->scratch);
    tk_free(p->threads);
    tk_free(p);
}

void *kern__pool_scratch(kern_pool *p, int ith, size_t bytes) {
    if (!p) return NULL;
    pool_scratch *s = &p->scratch[ith];
    if (bytes <= s->bytes) return s->buf;
    size_t n = bytes > 2 * s->bytes ? bytes : 2 * s->bytes; /* doubling: few regrowths */
    void *raw = n <= SIZE_MAX - 63 ? tk_malloc(n + 63) : NULL;
    if (!raw) return NULL; /* the old buffer stays for smaller requests */
    tk_free(s->raw);
    s->raw = raw;
    s->buf = (void *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    s->bytes = n;
    return s->buf;
}

int kern_pool_size(const kern_pool *p) { return p ? p->n_threads : 1; }

void kern_pool_run(kern_pool *p, void (*fn)(void *ctx, int ith, int nth), void *ctx) {
    if (p && p->pin && (!p->caller_pinned || !pthread_equal(p->pinned_caller, pthread_self()))) {
        pin_self(p->cpus[0]); /* the caller is worker 0; pinned on its first job */
        p->pinned_caller = pthread_self(), p->caller_pinned = true;
    }
    if (!p || p->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n_threads - 1);
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleeping) > 0) { /* spinning workers need no wake-up (and no lock) */
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n_threads);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        /* spin: workers finish within microseconds of us on a balanced split */
    }
}
