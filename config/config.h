/* config: the one configuration schema of tokd and its loading.
 *
 * Sources, later wins: built-in defaults < JSON file (--config FILE) < TOKD_* environment
 * variables < command-line flags. Every key is documented in docs/config.md; an unknown key
 * or a bad value is an error naming the key and its source ("config.json: max_seqs: must be
 * an integer in [1, 4096]", "TOKD_PORT: ...", "--port: ...").
 * Naming: JSON key `max_batched_tokens` == env TOKD_MAX_BATCHED_TOKENS == flag
 * --max-batched-tokens. After cfg_load the struct is immutable and passed by const pointer.
 * Thread: cfg_load runs on the main thread before anything starts. */
#ifndef CONFIG_CONFIG_H
#define CONFIG_CONFIG_H

#include <stdbool.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    /* model / engine */
    char model[1024];        /* path to the GGUF file (required for serve) */
    char model_name[256];    /* id served in /v1/models and accepted in "model"; default: file name */
    char chat_template[64];  /* "" = the model's; or a family name (chatml, llama3, ...) */
    int32_t threads;         /* compute threads; 0 = all CPUs */
    bool pin_threads;        /* pin compute thread i to the i-th allowed CPU */
    int32_t ctx_size;        /* max positions per sequence; 0 = min(model's, 4096) */
    int32_t kv_blocks;       /* KV pool size in blocks; 0 = derived from kv_cache_mb */
    int32_t kv_cache_mb;     /* KV pool size in MiB when kv_blocks is 0 (default 512) */
    int32_t block_size;      /* tokens per KV block (default 16) */
    char kv_type[8];         /* "f16" (default), "q8_0" or "f32" */
    char device[8];          /* "cpu" (default) or "cuda" */
    bool quant_act;          /* llama.cpp-style 8-bit activations (default false: exact f32) */
    /* scheduler */
    int32_t max_seqs;            /* running sequences per step (default 64) */
    int32_t max_batched_tokens;  /* tokens per step: decodes + prefill chunks (default 512) */
    int32_t max_waiting;         /* queued requests before 429 (default 256) */
    bool prefix_cache;           /* automatic prefix caching (default true) */
    /* HTTP */
    char host[256];          /* default 127.0.0.1 */
    int32_t port;            /* default 8080 */
    char api_key[256];       /* "" = no auth */
    int32_t max_body_bytes;  /* default 1 MiB */
    int32_t max_connections; /* default 1024 */
    int32_t idle_timeout_s;  /* idle connection timeout (default 60) */
    int32_t max_prompt_tokens; /* 0 = the context size */
    int32_t max_tokens_limit;  /* largest max_tokens accepted; 0 = the context size */
    int32_t default_max_tokens; /* when a request gives none (default 256; capped by context) */
    int32_t max_n;           /* largest n (default 8) */
    int32_t drain_timeout_s; /* grace period for in-flight requests on SIGTERM (default 30) */
    char log_level[8];       /* debug, info, warn, error (default info) */
} cfg_config;

enum { CFG_ERR_INVALID = -7, CFG_ERR_IO = -1, CFG_ERR_NOMEM = -3 };

/* Fills defaults. */
void cfg_defaults(cfg_config *c);

/* Loads: defaults, then the file named by --config in argv (if any), then TOKD_* variables from
 * envp (NULL: environ), then the flags in argv (argv[0] is the subcommand name; flags are
 * --key value or --key=value; booleans also accept --key / --no-key). Returns 0, or a negative
 * error with a message naming the source and key in err. --help is reported as 1.
 * Details (all in docs/config.md): with no --config, TOKD_CONFIG names the file; an empty
 * model_name becomes the file name of model; *c is written only when 0 is returned. Errors:
 * CFG_ERR_IO (file unreadable), CFG_ERR_NOMEM, CFG_ERR_INVALID (everything else). */
int cfg_load(cfg_config *c, int argc, char **argv, char **envp, char *err, size_t errlen);

/* One line per key: name, type, default, description (for --help and docs). */
void cfg_print_help(FILE *f);

/* The whole of docs/config.md, generated from the schema so the docs cannot drift (a unit test
 * compares the two). */
void cfg_print_markdown(FILE *f);

#endif
