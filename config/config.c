/* config: the schema table of every tokd setting and the four sources that fill it.
 *
 * One row of `keys[]` per field of cfg_config: its name (JSON key; TOKD_<UPPER> in the
 * environment; --dashed-name as a flag), type, where it lives in the struct, its range or
 * allowed values, its default and a one-line description. Everything else is generated from
 * that table: cfg_defaults, the three loaders (JSON file, environment, flags), --help and
 * docs/config.md. Values from every source go through the same checks (put_int, put_string),
 * so a file, a variable and a flag reject exactly the same things, each naming its source.
 * cfg_load works on a local copy and writes the caller's struct only on success. */
#include "config/config.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/tk_mem.h"

extern char **environ;

typedef enum { CFG_T_STRING, CFG_T_INT, CFG_T_BOOL } cfg_type;

/* One configuration key. Invariants (checked by schema_ok): names unique, lower-case
 * [a-z0-9_] and shorter than KEY_NAME_MAX; int fields are int32_t with min <= def <= max;
 * string defaults fit the field, are at least `min` bytes long and are among `allowed`. */
typedef struct {
    const char *name;
    cfg_type type;
    size_t offset, size;        /* the field in cfg_config; size is the string capacity */
    int64_t min, max;           /* CFG_T_INT: range; CFG_T_STRING: min = shortest length */
    const char *const *allowed; /* CFG_T_STRING enums: NULL-terminated; NULL = free text */
    int64_t def_int;            /* CFG_T_INT, CFG_T_BOOL */
    const char *def_str;        /* CFG_T_STRING */
    const char *meta;           /* the value's name in --help ("PATH", "N"...) */
    const char *desc;
} cfg_key;

#define FIELD(f) offsetof(cfg_config, f), sizeof(((cfg_config *)0)->f)
#define STR(f, minlen, allowed, def, meta, desc)                                                                       \
    { #f, CFG_T_STRING, FIELD(f), minlen, 0, allowed, 0, def, meta, desc }
#define INT(f, lo, hi, def, desc)                                                                                      \
    { #f, CFG_T_INT, FIELD(f), lo, hi, NULL, def, NULL, "N", desc }
#define BOOL(f, def, desc)                                                                                             \
    { #f, CFG_T_BOOL, FIELD(f), 0, 1, NULL, def, NULL, NULL, desc }

#define KEY_NAME_MAX 48
#define FILE_MAX_BYTES (1 << 20)
#define MI (1 << 20)

/* "" is the model's own template; the others must stay the names chat_tmpl_by_name accepts
 * (engine/chat.h; tests/unit/test_config.c checks every engine name is accepted here). */
static const char *const chat_templates[] = {"", "chatml", "llama3", "llama2", "mistral", "gemma", "zephyr", NULL};
/* the names eng_kv_type_parse takes (engine/model.h) */
static const char *const kv_types[] = {"f16", "q8_0", "f32", NULL};
static const char *const devices[] = {"cpu", "cuda", NULL};
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};

static const cfg_key keys[] = {
    /* model / engine */
    STR(model, 0, NULL, "", "PATH", "path to the GGUF model file (required for serve)"),
    STR(model_name, 0, NULL, "", "NAME",
        "model id served in /v1/models and accepted in requests' \"model\"; empty = the file name of model"),
    STR(chat_template, 0, chat_templates, "", "NAME",
        "chat template family; empty = recognise the model's tokenizer.chat_template"),
    INT(threads, 0, 1024, 0, "compute threads; 0 = all CPUs"),
    BOOL(pin_threads, 0, "pin compute thread i to the i-th CPU the process may use (default off: no gain measured on shared VMs)"),
    INT(ctx_size, 0, MI, 0, "max positions per sequence; 0 = min(model's context, 4096)"),
    INT(kv_blocks, 0, 16 * MI, 0, "KV cache size in blocks; 0 = derived from kv_cache_mb"),
    INT(kv_cache_mb, 1, MI, 512, "KV cache size in MiB, used when kv_blocks is 0"),
    INT(block_size, 1, 256, 16, "tokens per KV cache block"),
    STR(kv_type, 1, kv_types, "f16", "TYPE",
        "K/V element type: f16; q8_0 (8-bit blocks as llama.cpp's -ctk/-ctv q8_0: 34 bytes per 32 values, "
        "so 1.9 times the tokens per kv_cache_mb; q meets K in integer dots; CPU only, head_dim a multiple "
        "of 32); f32 (debugging)"),
    STR(device, 1, devices, "cpu", "DEV", "compute device: cpu, or cuda when tokd was built with CUDA"),
    BOOL(quant_act, 0,
         "8-bit activations for Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K weights, as llama.cpp's CPU backend "
         "(faster decode; default: exact f32)"),
    /* scheduler */
    INT(max_seqs, 1, 4096, 64, "most sequences running in one step"),
    INT(max_batched_tokens, 1, MI, 512, "token budget of one step: decodes plus prompt chunks"),
    INT(max_waiting, 0, MI, 256, "queued requests before new ones get 429"),
    BOOL(prefix_cache, 1, "reuse cached KV blocks of a common prompt prefix"),
    /* HTTP */
    STR(host, 1, NULL, "127.0.0.1", "ADDR", "address to listen on"),
    INT(port, 1, 65535, 8080, "TCP port to listen on"),
    STR(api_key, 0, NULL, "", "KEY",
        "require \"Authorization: Bearer KEY\"; empty = no auth (prefer TOKD_API_KEY or the file: flags show in ps)"),
    INT(max_body_bytes, 1024, 1024 * MI, MI, "largest request body in bytes"),
    INT(max_connections, 1, MI, 1024, "most open HTTP connections"),
    INT(idle_timeout_s, 1, 86400, 60, "seconds before an idle connection is closed"),
    INT(max_prompt_tokens, 0, MI, 0, "longest prompt in tokens; 0 = the context size"),
    INT(max_tokens_limit, 0, MI, 0, "largest max_tokens a request may ask for; 0 = the context size"),
    INT(default_max_tokens, 1, MI, 256, "max_tokens of a request that gives none (capped by the context)"),
    INT(max_n, 1, 128, 8, "largest n (completions per request)"),
    INT(drain_timeout_s, 0, 3600, 30, "seconds in-flight requests may finish after SIGTERM"),
    STR(log_level, 1, log_levels, "info", "LEVEL", "least severe log level written"),
};
#define N_KEYS (sizeof keys / sizeof keys[0])

/* TOKD_* variables that are not keys: read by the test harness and scripts (TOKD_CONFIG is
 * read by cfg_load itself). Anything else starting with TOKD_ is a typo and an error. */
static const char *const env_allowed[] = {"TOKD_CONFIG", "TOKD_SHARED", "TOKD_BIN", "TOKD_TESTDATA", "TOKD_ASAN", NULL};

/* ---- the table ---------------------------------------------------------------------------- */

static void *field(cfg_config *c, const cfg_key *k) { return (char *)c + k->offset; }

static const cfg_key *key_find(const char *name) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

static bool in_list(const char *const *list, const char *s) {
    for (; *list; list++)
        if (strcmp(*list, s) == 0) return true;
    return false;
}

/* "TOKD_" + upper-cased name. */
static void env_name(const cfg_key *k, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "TOKD_%s", k->name);
    for (size_t i = 5; i < n && i < cap; i++)
        out[i] = (char)toupper((unsigned char)out[i]);
}

/* "--" + name with dashes. */
static void flag_name(const cfg_key *k, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "--%s", k->name);
    for (size_t i = 2; i < n && i < cap; i++)
        if (out[i] == '_') out[i] = '-';
}

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Debug check of the table's invariants (see cfg_key); called inside assert(). */
static bool schema_ok(void) {
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &keys[i];
        if (strlen(k->name) >= KEY_NAME_MAX ||
            strspn(k->name, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(k->name))
            return false;
        if (key_find(k->name) != k) return false;
        if (k->type == CFG_T_INT && (k->size != sizeof(int32_t) || k->min > k->def_int || k->def_int > k->max ||
                                     k->min < INT32_MIN || k->max > INT32_MAX))
            return false;
        if (k->type == CFG_T_BOOL && k->size != sizeof(bool)) return false;
        if (k->type == CFG_T_STRING && (strlen(k->def_str) >= k->size || (int64_t)strlen(k->def_str) < k->min ||
                                        (k->allowed && !in_list(k->allowed, k->def_str))))
            return false;
    }
    return true;
}

void cfg_defaults(cfg_config *c) {
    assert(schema_ok());
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &keys[i];
        switch (k->type) {
        case CFG_T_STRING: strcpy(field(c, k), k->def_str); break;
        case CFG_T_INT: *(int32_t *)field(c, k) = (int32_t)k->def_int; break;
        case CFG_T_BOOL: *(bool *)field(c, k) = k->def_int != 0; break;
        }
    }
}

/* ---- checking and storing one value (every source ends here) ------------------------------ */

/* `where` is the source and key as the error should start: "f.json: port", "TOKD_PORT", "--port". */
static int put_int(cfg_config *c, const cfg_key *k, int64_t v, const char *where, char *err, size_t errlen) {
    if (v < k->min || v > k->max)
        return fail(err, errlen, CFG_ERR_INVALID, "%s: must be an integer in [%lld, %lld], got %lld", where,
                    (long long)k->min, (long long)k->max, (long long)v);
    *(int32_t *)field(c, k) = (int32_t)v;
    return 0;
}

static void list_join(const char *const *list, char *out, size_t cap) {
    size_t n = 0;
    out[0] = 0;
    for (const char *const *p = list; *p && n < cap; p++)
        n +=
            (size_t)snprintf(out + n, cap - n, "%s%s%s%s", p == list ? "" : ", ", **p ? "" : "\"", *p, **p ? "" : "\"");
}

static int put_string(cfg_config *c, const cfg_key *k, const char *s, const char *where, char *err, size_t errlen) {
    size_t len = strlen(s);
    if (len >= k->size)
        return fail(err, errlen, CFG_ERR_INVALID, "%s: longer than %zu bytes (%zu)", where, k->size - 1, len);
    if ((int64_t)len < k->min) return fail(err, errlen, CFG_ERR_INVALID, "%s: must not be empty", where);
    if (k->allowed && !in_list(k->allowed, s)) {
        char list[256];
        list_join(k->allowed, list, sizeof list);
        return fail(err, errlen, CFG_ERR_INVALID, "%s: must be one of %s, got '%.64s'", where, list, s);
    }
    memcpy(field(c, k), s, len + 1);
    return 0;
}

/* Strict decimal: an optional '-', then digits, nothing else (no spaces, '+', hex or suffix). */
static bool parse_int(const char *s, int64_t *out) {
    const char *d = s[0] == '-' ? s + 1 : s;
    if (!*d || strspn(d, "0123456789") != strlen(d)) return false;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE) return false;
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out) {
    static const char *const yes[] = {"true", "1", "yes", "on", NULL}, *const no[] = {"false", "0", "no", "off", NULL};
    char low[8];
    size_t n = strlen(s);
    if (n >= sizeof low) return false;
    for (size_t i = 0; i <= n; i++)
        low[i] = (char)tolower((unsigned char)s[i]);
    if (in_list(yes, low)) return (*out = true), true;
    if (in_list(no, low)) return (*out = false), true;
    return false;
}

/* A value given as text (environment or flag). */
static int put_text(cfg_config *c, const cfg_key *k, const char *s, const char *where, char *err, size_t errlen) {
    int64_t v;
    bool b;
    switch (k->type) {
    case CFG_T_STRING: return put_string(c, k, s, where, err, errlen);
    case CFG_T_INT:
        if (!parse_int(s, &v))
            return fail(err, errlen, CFG_ERR_INVALID, "%s: must be an integer in [%lld, %lld], got '%.64s'", where,
                        (long long)k->min, (long long)k->max, s);
        return put_int(c, k, v, where, err, errlen);
    case CFG_T_BOOL:
        if (!parse_bool(s, &b))
            return fail(err, errlen, CFG_ERR_INVALID, "%s: must be true or false, got '%.64s'", where, s);
        *(bool *)field(c, k) = b;
        return 0;
    }
    abort(); /* unreachable: every cfg_type is handled */
}

/* ---- JSON file ------------------------------------------------------------------------------ */

/* A value from a JSON document: the JSON type must match the key's type. */
static int put_json(cfg_config *c, const cfg_key *k, const cJSON *v, const char *where, char *err, size_t errlen) {
    switch (k->type) {
    case CFG_T_STRING:
        if (!cJSON_IsString(v)) return fail(err, errlen, CFG_ERR_INVALID, "%s: must be a string", where);
        return put_string(c, k, v->valuestring, where, err, errlen);
    case CFG_T_INT: {
        double d = cJSON_IsNumber(v) ? v->valuedouble : 0.5;
        /* integral and exactly representable (the range test first: the cast needs it) */
        if (!(d >= -9e15 && d <= 9e15) || d != (double)(int64_t)d)
            return fail(err, errlen, CFG_ERR_INVALID, "%s: must be an integer in [%lld, %lld]", where,
                        (long long)k->min, (long long)k->max);
        return put_int(c, k, (int64_t)d, where, err, errlen);
    }
    case CFG_T_BOOL:
        if (!cJSON_IsBool(v)) return fail(err, errlen, CFG_ERR_INVALID, "%s: must be true or false", where);
        *(bool *)field(c, k) = cJSON_IsTrue(v);
        return 0;
    }
    abort(); /* unreachable: every cfg_type is handled */
}

/* Reads the whole file (at most FILE_MAX_BYTES) into a tk_malloc'd NUL-terminated buffer. */
static int read_file(const char *path, char **out, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, errlen, CFG_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = tk_malloc(FILE_MAX_BYTES + 1);
    int rc = 0;
    size_t n = buf ? fread(buf, 1, FILE_MAX_BYTES + 1, f) : 0;
    if (!buf)
        rc = fail(err, errlen, CFG_ERR_NOMEM, "%s: out of memory", path);
    else if (ferror(f))
        rc = fail(err, errlen, CFG_ERR_IO, "%s: read error: %s", path, strerror(errno));
    else if (n > FILE_MAX_BYTES)
        rc = fail(err, errlen, CFG_ERR_INVALID, "%s: larger than %d bytes", path, FILE_MAX_BYTES);
    fclose(f);
    if (rc) {
        tk_free(buf);
        return rc;
    }
    buf[n] = 0;
    *out = buf;
    return 0;
}

/* Line and column (1-based) of position `at` in text. */
static void line_col(const char *text, const char *at, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (const char *p = text; *p && p < at; p++) {
        if (*p == '\n')
            (*line)++, *col = 1;
        else
            (*col)++;
    }
}

static int apply_object(cfg_config *c, const cJSON *root, const char *path, char *err, size_t errlen) {
    bool seen[N_KEYS] = {false};
    char where[1200];
    for (const cJSON *it = root->child; it; it = it->next) {
        snprintf(where, sizeof where, "%s: %.100s", path, it->string);
        const cfg_key *k = key_find(it->string);
        if (!k) return fail(err, errlen, CFG_ERR_INVALID, "%s: unknown key", where);
        if (seen[k - keys]) return fail(err, errlen, CFG_ERR_INVALID, "%s: duplicate key", where);
        seen[k - keys] = true;
        int rc = put_json(c, k, it, where, err, errlen);
        if (rc) return rc;
    }
    return 0;
}

/* Applies the JSON object in `path` on top of c. */
static int load_file(cfg_config *c, const char *path, char *err, size_t errlen) {
    char *text = NULL;
    int rc = read_file(path, &text, err, errlen);
    if (rc) return rc;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        int line, col;
        line_col(text, end ? end : text, &line, &col);
        rc = fail(err, errlen, CFG_ERR_INVALID, "%s: invalid JSON at line %d, column %d", path, line, col);
    } else if (!cJSON_IsObject(root)) {
        rc = fail(err, errlen, CFG_ERR_INVALID, "%s: must be a JSON object ({\"key\": value, ...})", path);
    } else {
        rc = apply_object(c, root, path, err, errlen);
    }
    cJSON_Delete(root);
    tk_free(text);
    return rc;
}

/* ---- environment ---------------------------------------------------------------------------- */

static const cfg_key *key_by_env(const char *name, size_t len) {
    char buf[KEY_NAME_MAX + 8];
    for (size_t i = 0; i < N_KEYS; i++) {
        env_name(&keys[i], buf, sizeof buf);
        if (strlen(buf) == len && memcmp(buf, name, len) == 0) return &keys[i];
    }
    return NULL;
}

static bool env_is_allowed(const char *name, size_t len) {
    for (const char *const *p = env_allowed; *p; p++)
        if (strlen(*p) == len && memcmp(*p, name, len) == 0) return true;
    return false;
}

static int load_env(cfg_config *c, char **envp, char *err, size_t errlen) {
    for (char **e = envp; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, "TOKD_", 5) != 0 || !eq) continue;
        size_t len = (size_t)(eq - *e);
        const cfg_key *k = key_by_env(*e, len);
        if (!k && env_is_allowed(*e, len)) continue;
        if (!k)
            return fail(err, errlen, CFG_ERR_INVALID, "%.*s: unknown variable (not a config key; see docs/config.md)",
                        (int)(len > 100 ? 100 : len), *e);
        char where[KEY_NAME_MAX + 8];
        env_name(k, where, sizeof where);
        int rc = put_text(c, k, eq + 1, where, err, errlen);
        if (rc) return rc;
    }
    return 0;
}

static const char *env_get(char **envp, const char *name) {
    size_t n = strlen(name);
    for (char **e = envp; *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

/* ---- flags ----------------------------------------------------------------------------------- */

/* One flag as written: "--max-seqs=8" gives shown "--max-seqs", norm "max_seqs", value "8". */
typedef struct {
    char shown[KEY_NAME_MAX + 8];
    char norm[KEY_NAME_MAX];
    const char *value; /* after '='; NULL when there is none */
} flag_arg;

/* Splits "--name[=value]"; false when arg is not a flag. A name too long for any key is kept
 * (truncated) in `shown` and left unmatched in `norm`. */
static bool flag_split(const char *arg, flag_arg *f) {
    if (strncmp(arg, "--", 2) != 0 || !arg[2] || arg[2] == '=') return false;
    const char *name = arg + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    snprintf(f->shown, sizeof f->shown, "--%.*s", (int)len, name);
    f->value = eq ? eq + 1 : NULL;
    f->norm[0] = 0;
    if (len >= sizeof f->norm) return true;
    for (size_t i = 0; i < len; i++)
        f->norm[i] = name[i] == '-' ? '_' : name[i];
    f->norm[len] = 0;
    return true;
}

/* The flag's key; *negated for --no-<bool>. NULL when there is none. */
static const cfg_key *flag_key(const flag_arg *f, bool *negated) {
    const cfg_key *k = key_find(f->norm);
    *negated = false;
    if (!k && strncmp(f->norm, "no_", 3) == 0) {
        k = key_find(f->norm + 3);
        if (k && k->type != CFG_T_BOOL) k = NULL;
        *negated = k != NULL;
    }
    return k;
}

/* The value of the flag at argv[*i]: after '=', or the next argument (consumed). A following
 * argument that starts with "--" is taken as a forgotten value, not as the value. */
static const char *flag_value(const flag_arg *f, int argc, char **argv, int *i) {
    if (f->value) return f->value;
    if (*i + 1 >= argc || strncmp(argv[*i + 1], "--", 2) == 0) return NULL;
    return argv[++*i];
}

/* Applies argv[1..] to c; *config_path is set from --config. */
static int load_flags(cfg_config *c, int argc, char **argv, const char **config_path, char *err, size_t errlen) {
    for (int i = 1; i < argc; i++) {
        flag_arg f;
        bool neg;
        if (!flag_split(argv[i], &f))
            return fail(err, errlen, CFG_ERR_INVALID, "%.100s: unexpected argument (flags are --key VALUE)", argv[i]);
        if (strcmp(f.norm, "config") == 0) {
            const char *v = flag_value(&f, argc, argv, &i);
            if (!v || !*v) return fail(err, errlen, CFG_ERR_INVALID, "--config: missing value (a file name)");
            *config_path = v;
            continue;
        }
        const cfg_key *k = flag_key(&f, &neg);
        if (!k) return fail(err, errlen, CFG_ERR_INVALID, "%s: unknown flag (see --help)", f.shown);
        const char *v;
        if (k->type == CFG_T_BOOL) {
            if (neg && f.value) return fail(err, errlen, CFG_ERR_INVALID, "%s: takes no value", f.shown);
            v = f.value ? f.value : neg ? "false" : "true";
        } else if (!(v = flag_value(&f, argc, argv, &i))) {
            return fail(err, errlen, CFG_ERR_INVALID, "%s: missing value", f.shown);
        }
        int rc = put_text(c, k, v, f.shown, err, errlen);
        if (rc) return rc;
    }
    return 0;
}

/* ---- loading ---------------------------------------------------------------------------------- */

static bool wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) return true;
    return false;
}

/* model_name defaults to the file name of model. */
static int derive(cfg_config *c, char *err, size_t errlen) {
    if (c->model_name[0] || !c->model[0]) return 0;
    const char *base = strrchr(c->model, '/');
    base = base ? base + 1 : c->model;
    size_t len = strlen(base);
    if (len >= sizeof c->model_name)
        return fail(err, errlen, CFG_ERR_INVALID,
                    "model_name: the file name of model is longer than %zu bytes; set "
                    "model_name",
                    sizeof c->model_name - 1);
    memcpy(c->model_name, base, len + 1);
    return 0;
}

int cfg_load(cfg_config *c, int argc, char **argv, char **envp, char *err, size_t errlen) {
    if (wants_help(argc, argv)) return 1;
    if (!envp) envp = environ;
    cfg_config work, scratch;
    const char *path = NULL;
    cfg_defaults(&work);
    /* First pass over the flags, on a scratch copy: finds --config and reports bad flags
     * before the file is read. The second pass applies them on top of file and environment. */
    scratch = work;
    int rc = load_flags(&scratch, argc, argv, &path, err, errlen);
    if (rc) return rc;
    if (!path && (path = env_get(envp, "TOKD_CONFIG")) && !*path)
        return fail(err, errlen, CFG_ERR_INVALID, "TOKD_CONFIG: must name a file");
    if (path && (rc = load_file(&work, path, err, errlen))) return rc;
    if ((rc = load_env(&work, envp, err, errlen))) return rc;
    if ((rc = load_flags(&work, argc, argv, &path, err, errlen))) return rc;
    if ((rc = derive(&work, err, errlen))) return rc;
    *c = work;
    return 0;
}

/* ---- help and docs -------------------------------------------------------------------------- */

/* The default as shown to people: strings quoted when empty. */
static void default_text(const cfg_key *k, char *out, size_t cap) {
    switch (k->type) {
    case CFG_T_STRING: snprintf(out, cap, "%s", *k->def_str ? k->def_str : "\"\""); break;
    case CFG_T_INT: snprintf(out, cap, "%lld", (long long)k->def_int); break;
    case CFG_T_BOOL: snprintf(out, cap, "%s", k->def_int ? "true" : "false"); break;
    }
}

/* Allowed values in words: "1..4096", "f16|f32", "text up to 255 bytes", "true|false". */
static void range_text(const cfg_key *k, const char *sep, char *out, size_t cap) {
    if (k->type == CFG_T_INT)
        snprintf(out, cap, "%lld..%lld", (long long)k->min, (long long)k->max);
    else if (k->type == CFG_T_BOOL)
        snprintf(out, cap, "true%sfalse", sep);
    else if (!k->allowed)
        snprintf(out, cap, "%s up to %zu bytes", k->min ? "non-empty text" : "text", k->size - 1);
    else {
        size_t n = 0;
        out[0] = 0;
        for (const char *const *p = k->allowed; *p && n < cap; p++)
            n += (size_t)snprintf(out + n, cap - n, "%s%s", p == k->allowed ? "" : sep, **p ? *p : "\"\"");
    }
}

void cfg_print_help(FILE *f) {
    char flag[KEY_NAME_MAX + 8], left[128], def[64], range[128];
    fprintf(f, "options (later wins: defaults < --config FILE < TOKD_<KEY> environment < flags):\n");
    fprintf(f, "  %-24s %s\n", "--config FILE", "JSON file of settings (default: $TOKD_CONFIG, if set)");
    fprintf(f, "  %-24s %s\n", "-h, --help", "this text");
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &keys[i];
        flag_name(k, flag, sizeof flag);
        if (k->type == CFG_T_BOOL)
            snprintf(left, sizeof left, "--[no-]%s", flag + 2);
        else
            snprintf(left, sizeof left, "%s %s", flag, k->meta);
        default_text(k, def, sizeof def);
        range_text(k, "|", range, sizeof range);
        fprintf(f, "  %-24s %s [%s; default %s]\n", left, k->desc, range, def);
    }
}

/* Markdown table cell text: '|' escaped. */
static void md_cell(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '|') fputc('\\', f);
        fputc(*s, f);
    }
}

static void md_key_row(FILE *f, const cfg_key *k) {
    static const char *const type_names[] = {"string", "int", "bool"};
    char env[KEY_NAME_MAX + 8], flag[KEY_NAME_MAX + 8], def[64], range[128];
    env_name(k, env, sizeof env);
    flag_name(k, flag, sizeof flag);
    default_text(k, def, sizeof def);
    range_text(k, ", ", range, sizeof range);
    fprintf(f, "| `%s` | %s | `%s` | ", k->name, k->allowed ? "enum" : type_names[k->type], def);
    md_cell(f, range);
    if (k->type == CFG_T_BOOL)
        fprintf(f, " | `%s` | `%s`, `--no-%s` | ", env, flag, flag + 2);
    else
        fprintf(f, " | `%s` | `%s %s` | ", env, flag, k->meta);
    md_cell(f, k->desc);
    fputs(" |\n", f);
}

static void md_intro(FILE *f) {
    fputs("# tokd configuration\n\n"
          "<!-- Generated from the schema in config/config.c by cfg_print_markdown; do not edit.\n"
          "     Regenerate: build/tests/test_config --print-markdown > docs/config.md -->\n\n"
          "Every setting has one name and four sources; later wins:\n\n"
          "1. the built-in default;\n"
          "2. a JSON file given by `--config FILE` (or, when there is no `--config`, by the\n"
          "   `TOKD_CONFIG` environment variable): one JSON object of `\"key\": value` pairs;\n"
          "   examples in `config/*.json`;\n"
          "3. the environment variable `TOKD_<KEY>` (the key upper-cased);\n"
          "4. the flag `--<key>`, with dashes or underscores (`--max-seqs`, `--max_seqs`).\n\n"
          "Rules, the same for every source:\n\n"
          "- An unknown key, an unknown `TOKD_*` variable, an unknown flag and a bad value are\n"
          "  errors naming the source and the key: `tokd.json: max_seqs: must be an integer in\n"
          "  [1, 4096], got 0`, `TOKD_PORT: ...`, `--port: ...`. A key given twice in one file is\n"
          "  an error. `TOKD_*` variables that are not keys but are allowed: ",
          f);
    for (const char *const *p = env_allowed; *p; p++)
        fprintf(f, "%s`%s`", p == env_allowed ? "" : ", ", *p);
    fputs(".\n"
          "- Integers are decimal digits with an optional `-`, nothing else (no spaces, `+`, hex\n"
          "  or units), within the range shown. In a file they are JSON numbers with an integer\n"
          "  value (`8`, not `\"8\"` or `8.5`).\n"
          "- Booleans are `true`/`false` in a file; in the environment and after `--key=` also\n"
          "  `1`/`0`, `yes`/`no`, `on`/`off`. As flags: `--key` sets, `--no-key` clears.\n"
          "- Strings are JSON strings in a file; the length limit is in bytes. Enum keys accept\n"
          "  only the values listed.\n"
          "- Flags take a value as `--key VALUE` or `--key=VALUE`; a value that starts with `--`\n"
          "  must use the `=` form. `-h`/`--help` lists the flags.\n"
          "- After loading, an empty `model_name` becomes the file name of `model`.\n\n",
          f);
}

void cfg_print_markdown(FILE *f) {
    md_intro(f);
    fputs("## Keys\n\n"
          "| Key | Type | Default | Values | Environment | Flag | Description |\n"
          "|---|---|---|---|---|---|---|\n",
          f);
    for (size_t i = 0; i < N_KEYS; i++)
        md_key_row(f, &keys[i]);
}
