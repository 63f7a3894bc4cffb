/* Unit tests for config/: defaults, the precedence defaults < file < environment < flags, every
 * error path (each must name its source and key), the flag forms (--key=value, --no-flag,
 * dashes or underscores), the examples in config/, --help, and that docs/config.md is exactly
 * what the schema generates. Paths are relative to the repository root (where `make unit` runs).
 *   build/tests/test_config --print-markdown > docs/config.md   regenerates the docs. */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/tk_mem.h"
#include "config/config.h"
#include "engine/chat.h"

#define MAX_ARGS 16

/* Runs cfg_load with argv = {"serve", args..., NULL} (NULL-terminated list) and env (NULL-
 * terminated list; never the process environment, which `make unit` fills with TOKD_*). */
static int load(cfg_config *c, char *err, char **env, ...) {
    char *argv[MAX_ARGS] = {"serve"};
    int argc = 1;
    va_list ap;
    va_start(ap, env);
    for (char *a; (a = va_arg(ap, char *)) && argc < MAX_ARGS - 1;)
        argv[argc++] = a;
    va_end(ap);
    static char *no_env[] = {NULL};
    err[0] = 0;
    return cfg_load(c, argc, argv, env ? env : no_env, err, 512);
}

/* Writes text to a fresh temporary .json file; path receives its name. */
static void write_json(const char *text, char *path) {
    strcpy(path, "/tmp/tokd_cfg_XXXXXX.json");
    int fd = mkstemps(path, 5);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

/* Loads a file holding `json` and checks the error: code, then that it names the file and
 * contains `want` (the key and the message). */
static void expect_file_error(const char *json, int code, const char *want) {
    char path[64], err[512], prefix[80];
    cfg_config c;
    write_json(json, path);
    int rc = load(&c, err, NULL, "--config", path, NULL);
    unlink(path);
    snprintf(prefix, sizeof prefix, "%s: ", path);
    ck_assert_msg(rc == code, "rc %d for %s: %s", rc, json, err);
    ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0, "'%s' does not start with the file name", err);
    ck_assert_msg(strstr(err, want), "'%s' does not contain '%s'", err, want);
}

static void expect_error(int rc, const char *err, const char *prefix, const char *want) {
    ck_assert_msg(rc == CFG_ERR_INVALID, "rc %d (%s)", rc, err);
    ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0, "'%s' does not start with '%s'", err, prefix);
    ck_assert_msg(strstr(err, want), "'%s' does not contain '%s'", err, want);
}

START_TEST(test_defaults) {
    cfg_config d, c;
    char err[512];
    cfg_defaults(&d);
    ck_assert_str_eq(d.model, "");
    ck_assert_str_eq(d.model_name, "");
    ck_assert_str_eq(d.chat_template, "");
    ck_assert_int_eq(d.threads, 0);
    ck_assert_int_eq(d.ctx_size, 0);
    ck_assert_int_eq(d.kv_blocks, 0);
    ck_assert_int_eq(d.kv_cache_mb, 512);
    ck_assert_int_eq(d.block_size, 16);
    ck_assert_str_eq(d.kv_type, "f16");
    ck_assert(!d.quant_act);
    ck_assert_int_eq(d.max_seqs, 64);
    ck_assert_int_eq(d.max_batched_tokens, 512);
    ck_assert_int_eq(d.max_waiting, 256);
    ck_assert(d.prefix_cache);
    ck_assert_str_eq(d.host, "127.0.0.1");
    ck_assert_int_eq(d.port, 8080);
    ck_assert_str_eq(d.api_key, "");
    ck_assert_int_eq(d.max_body_bytes, 1 << 20);
    ck_assert_int_eq(d.max_connections, 1024);
    ck_assert_int_eq(d.idle_timeout_s, 60);
    ck_assert_int_eq(d.max_prompt_tokens, 0);
    ck_assert_int_eq(d.max_tokens_limit, 0);
    ck_assert_int_eq(d.default_max_tokens, 256);
    ck_assert_int_eq(d.max_n, 8);
    ck_assert_int_eq(d.drain_timeout_s, 30);
    ck_assert_str_eq(d.log_level, "info");
    ck_assert_int_eq(load(&c, err, NULL, NULL), 0);
    ck_assert_mem_eq(&c, &d, sizeof c);
}
END_TEST

/* The same key from all four sources: each later source wins over the ones before it. */
START_TEST(test_precedence) {
    char path[64], err[512];
    cfg_config c;
    char *env[] = {"TOKD_PORT=2222", "HOME=/root", NULL};
    write_json("{\"port\": 1111, \"max_seqs\": 5}", path);
    ck_assert_int_eq(load(&c, err, env, "--config", path, "--port", "3333", NULL), 0);
    ck_assert_int_eq(c.port, 3333);
    ck_assert_int_eq(c.max_seqs, 5);
    ck_assert_int_eq(load(&c, err, env, "--config", path, NULL), 0);
    ck_assert_int_eq(c.port, 2222);
    ck_assert_int_eq(load(&c, err, NULL, "--config", path, NULL), 0);
    ck_assert_int_eq(c.port, 1111);
    ck_assert_int_eq(load(&c, err, NULL, NULL), 0);
    ck_assert_int_eq(c.port, 8080);
    /* --config anywhere in argv is read before any flag is applied. */
    ck_assert_int_eq(load(&c, err, NULL, "--port", "3333", "--config", path, NULL), 0);
    ck_assert_int_eq(c.port, 3333);
    /* TOKD_CONFIG names the file when there is no --config. */
    char tc[80];
    snprintf(tc, sizeof tc, "TOKD_CONFIG=%s", path);
    char *env2[] = {tc, NULL};
    ck_assert_int_eq(load(&c, err, env2, NULL), 0);
    ck_assert_int_eq(c.port, 1111);
    unlink(path);
}
END_TEST

START_TEST(test_flag_forms) {
    char err[512];
    cfg_config c;
    ck_assert_int_eq(load(&c, err, NULL, "--port=9000", "--max_seqs", "7", "--max-batched-tokens=99", NULL), 0);
    ck_assert_int_eq(c.port, 9000);
    ck_assert_int_eq(c.max_seqs, 7);
    ck_assert_int_eq(c.max_batched_tokens, 99);
    ck_assert_int_eq(load(&c, err, NULL, "--no-prefix-cache", NULL), 0);
    ck_assert(!c.prefix_cache);
    ck_assert_int_eq(load(&c, err, NULL, "--no_prefix_cache", "--prefix-cache", NULL), 0);
    ck_assert(c.prefix_cache);
    ck_assert_int_eq(load(&c, err, NULL, "--prefix-cache=false", NULL), 0);
    ck_assert(!c.prefix_cache);
    char *env[] = {"TOKD_PREFIX_CACHE=0", NULL};
    ck_assert_int_eq(load(&c, err, env, NULL), 0);
    ck_assert(!c.prefix_cache);
    ck_assert_int_eq(load(&c, err, env, "--prefix-cache", NULL), 0);
    ck_assert(c.prefix_cache);
    /* An empty value clears a string; a value starting with '-' is fine after '='. */
    ck_assert_int_eq(load(&c, err, NULL, "--api-key", "k1", "--api-key=", "--model=--odd", NULL), 0);
    ck_assert_str_eq(c.api_key, "");
    ck_assert_str_eq(c.model, "--odd");
    ck_assert_int_eq(load(&c, err, NULL, "--kv-type", "f32", "--log-level", "debug", "--chat-template", "llama3", NULL),
                     0);
    ck_assert_str_eq(c.kv_type, "f32");
    ck_assert_str_eq(c.log_level, "debug");
    ck_assert_str_eq(c.chat_template, "llama3");
    ck_assert_int_eq(load(&c, err, NULL, "--kv-type", "q8_0", NULL), 0);
    ck_assert_str_eq(c.kv_type, "q8_0");
}
END_TEST

START_TEST(test_model_name_derived) {
    char err[512];
    cfg_config c;
    ck_assert_int_eq(load(&c, err, NULL, "--model", "/m/dir/Small.Q4_1.gguf", NULL), 0);
    ck_assert_str_eq(c.model_name, "Small.Q4_1.gguf");
    ck_assert_int_eq(load(&c, err, NULL, "--model", "x.gguf", "--model-name", "mine", NULL), 0);
    ck_assert_str_eq(c.model_name, "mine");
}
END_TEST

START_TEST(test_file_errors) {
    expect_file_error("{\"port\": }", CFG_ERR_INVALID, "invalid JSON at line 1");
    expect_file_error("{\n\"port\": 1,\n}", CFG_ERR_INVALID, "invalid JSON at line 3");
    expect_file_error("{\"port\": 1} junk", CFG_ERR_INVALID, "invalid JSON");
    expect_file_error("", CFG_ERR_INVALID, "invalid JSON");
    expect_file_error("[1, 2]", CFG_ERR_INVALID, "must be a JSON object");
    expect_file_error("\"port\"", CFG_ERR_INVALID, "must be a JSON object");
    expect_file_error("{\"prot\": 1}", CFG_ERR_INVALID, ": prot: unknown key");
    expect_file_error("{\"port\": \"80\"}", CFG_ERR_INVALID, ": port: must be an integer in [1, 65535]");
    expect_file_error("{\"port\": 80.5}", CFG_ERR_INVALID, ": port: must be an integer");
    expect_file_error("{\"port\": 1e300}", CFG_ERR_INVALID, ": port: must be an integer");
    expect_file_error("{\"port\": null}", CFG_ERR_INVALID, ": port: must be an integer");
    expect_file_error("{\"max_seqs\": 0}", CFG_ERR_INVALID, ": max_seqs: must be an integer in [1, 4096], got 0");
    expect_file_error("{\"max_seqs\": 5000}", CFG_ERR_INVALID, ": max_seqs: must be an integer in [1, 4096]");
    expect_file_error("{\"prefix_cache\": 1}", CFG_ERR_INVALID, ": prefix_cache: must be true or false");
    expect_file_error("{\"host\": 127}", CFG_ERR_INVALID, ": host: must be a string");
    expect_file_error("{\"host\": \"\"}", CFG_ERR_INVALID, ": host: must not be empty");
    expect_file_error("{\"kv_type\": \"q4\"}", CFG_ERR_INVALID, ": kv_type: must be one of f16, q8_0, f32, got 'q4'");
    expect_file_error("{\"log_level\": \"INFO\"}", CFG_ERR_INVALID, ": log_level: must be one of");
    expect_file_error("{\"port\": 1, \"port\": 2}", CFG_ERR_INVALID, ": port: duplicate key");
    expect_file_error("{\"model\": {\"a\": 1}}", CFG_ERR_INVALID, ": model: must be a string");
    /* A string one byte longer than the field can hold. */
    char json[2100] = "{\"chat_template\": \"";
    memset(json + strlen(json), 'x', 64);
    strcat(json, "\"}");
    expect_file_error(json, CFG_ERR_INVALID, ": chat_template: longer than 63 bytes");
}
END_TEST

START_TEST(test_file_io_errors) {
    char err[512];
    cfg_config c, before;
    cfg_defaults(&before);
    before.port = 1; /* a failed load leaves the caller's struct alone */
    c = before;
    int rc = load(&c, err, NULL, "--config", "/nonexistent/tokd.json", NULL);
    ck_assert_int_eq(rc, CFG_ERR_IO);
    ck_assert_msg(strstr(err, "/nonexistent/tokd.json: cannot open"), "%s", err);
    ck_assert_mem_eq(&c, &before, sizeof c);
    char *env[] = {"TOKD_CONFIG=", NULL};
    expect_error(load(&c, err, env, NULL), err, "TOKD_CONFIG: ", "must name a file");
    expect_error(load(&c, err, NULL, "--config", NULL), err, "--config: ", "missing value");
    expect_error(load(&c, err, NULL, "--config=", NULL), err, "--config: ", "missing value");
}
END_TEST

START_TEST(test_file_nomem) {
    char path[64], err[512];
    cfg_config c;
    write_json("{\"port\": 1}", path);
    tk_mem_fail_after(0);
    int rc = load(&c, err, NULL, "--config", path, NULL);
    tk_mem_fail_after(-1);
    unlink(path);
    ck_assert_int_eq(rc, CFG_ERR_NOMEM);
    ck_assert_msg(strstr(err, "out of memory"), "%s", err);
}
END_TEST

START_TEST(test_env_errors) {
    char err[512];
    cfg_config c;
    char *unknown[] = {"TOKD_PROT=1", NULL};
    expect_error(load(&c, err, unknown, NULL), err, "TOKD_PROT: ", "unknown variable");
    char *range[] = {"TOKD_PORT=70000", NULL};
    expect_error(load(&c, err, range, NULL), err, "TOKD_PORT: ", "must be an integer in [1, 65535], got 70000");
    char *junk[] = {"TOKD_MAX_SEQS=8x", NULL};
    expect_error(load(&c, err, junk, NULL), err, "TOKD_MAX_SEQS: ", "got '8x'");
    char *bad_bool[] = {"TOKD_PREFIX_CACHE=maybe", NULL};
    expect_error(load(&c, err, bad_bool, NULL), err, "TOKD_PREFIX_CACHE: ", "must be true or false");
    char *bad_enum[] = {"TOKD_KV_TYPE=int4", NULL};
    expect_error(load(&c, err, bad_enum, NULL), err, "TOKD_KV_TYPE: ", "must be one of f16, q8_0, f32");
    char *lower[] = {"TOKD_port=1", NULL};
    expect_error(load(&c, err, lower, NULL), err, "TOKD_port: ", "unknown variable");
    /* The allow-list (test harness variables) and variables of other programs are ignored. */
    char *ok[] = {"TOKD_SHARED=/x", "TOKD_BIN=/b", "TOKD_TESTDATA=/t", "TOKD_ASAN=1", "PORT=1", "XTOKD_PROT=1", NULL};
    ck_assert_int_eq(load(&c, err, ok, NULL), 0);
    ck_assert_int_eq(c.port, 8080);
    /* TOKD_MODEL is the `model` key, not an ignored test variable. */
    char *model[] = {"TOKD_MODEL=/m/a.gguf", NULL};
    ck_assert_int_eq(load(&c, err, model, NULL), 0);
    ck_assert_str_eq(c.model, "/m/a.gguf");
}
END_TEST

/* Integers are strict in every source: no spaces, signs other than '-', hex, suffixes. */
START_TEST(test_integer_junk) {
    static const char *const bad[] = {
        "", " 80", "80 ", "+80", "0x50", "80k", "8.0", "1e3", "--", "-", "99999999999999999999999", NULL};
    char err[512], flag[64];
    cfg_config c;
    for (const char *const *b = bad; *b; b++) {
        snprintf(flag, sizeof flag, "--port=%s", *b);
        expect_error(load(&c, err, NULL, flag, NULL), err, "--port: ", "must be an integer in [1, 65535]");
    }
    expect_error(load(&c, err, NULL, "--port", "-1", NULL), err, "--port: ", "got -1");
    expect_error(load(&c, err, NULL, "--threads=-99999999999999999999", NULL), err,
                 "--threads: ", "must be an integer in [0, 1024]");
    ck_assert_int_eq(load(&c, err, NULL, "--port", "00080", NULL), 0);
    ck_assert_int_eq(c.port, 80);
}
END_TEST

START_TEST(test_flag_errors) {
    char err[512];
    cfg_config c;
    expect_error(load(&c, err, NULL, "--prot", "1", NULL), err, "--prot: ", "unknown flag");
    expect_error(load(&c, err, NULL, "--prot=1", NULL), err, "--prot: ", "unknown flag");
    expect_error(load(&c, err, NULL, "--no-port", NULL), err, "--no-port: ", "unknown flag");
    expect_error(load(&c, err, NULL, "--port", NULL), err, "--port: ", "missing value");
    expect_error(load(&c, err, NULL, "--host", "--port", "1", NULL), err, "--host: ", "missing value");
    expect_error(load(&c, err, NULL, "--port", "80x", NULL), err, "--port: ", "got '80x'");
    expect_error(load(&c, err, NULL, "--max_seqs=0", NULL), err, "--max_seqs: ", "in [1, 4096], got 0");
    expect_error(load(&c, err, NULL, "--log-level=verbose", NULL), err,
                 "--log-level: ", "must be one of debug, info, warn, error");
    expect_error(load(&c, err, NULL, "--chat-template", "jinja", NULL), err, "--chat-template: ", "must be one of");
    expect_error(load(&c, err, NULL, "--no-prefix-cache=1", NULL), err, "--no-prefix-cache: ", "takes no value");
    expect_error(load(&c, err, NULL, "--prefix-cache=maybe", NULL), err, "--prefix-cache: ", "true or false");
    expect_error(load(&c, err, NULL, "serve", NULL), err, "serve: ", "unexpected argument");
    expect_error(load(&c, err, NULL, "-p", "1", NULL), err, "-p: ", "unexpected argument");
    char longflag[300] = "--";
    memset(longflag + 2, 'a', 200);
    expect_error(load(&c, err, NULL, longflag, NULL), err, "--aaaa", "unknown flag");
    /* Flag errors are reported even when the file would fail too: flags are checked first. */
    expect_error(load(&c, err, NULL, "--config", "/nonexistent.json", "--bogus", NULL), err,
                 "--bogus: ", "unknown flag");
}
END_TEST

START_TEST(test_help) {
    char err[512];
    cfg_config c;
    ck_assert_int_eq(load(&c, err, NULL, "--help", NULL), 1);
    ck_assert_int_eq(load(&c, err, NULL, "--port", "1", "-h", NULL), 1);
    ck_assert_int_eq(load(&c, err, NULL, "--bogus", "--help", NULL), 1);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cfg_print_help(f);
    fclose(f);
    static const char *const want[] = {"--config FILE",       "--model PATH",      "--max-batched-tokens N",
                                       "--[no-]prefix-cache", "--kv-type TYPE",    "f16|q8_0|f32",
                                       "default 8080",        "--log-level LEVEL", NULL};
    for (const char *const *w = want; *w; w++)
        ck_assert_msg(strstr(text, *w), "help lacks '%s'", *w);
    free(text);
}
END_TEST

/* Every field of cfg_config has a flag: setting each one changes the struct. */
START_TEST(test_every_field_has_a_key) {
    static char *const args[][2] = {{"--model", "m"},
                                    {"--model-name", "n"},
                                    {"--chat-template", "chatml"},
                                    {"--threads", "3"},
                                    {"--ctx-size", "100"},
                                    {"--kv-blocks", "9"},
                                    {"--kv-cache-mb", "7"},
                                    {"--block-size", "32"},
                                    {"--kv-type", "f32"},
                                    {"--max-seqs", "2"},
                                    {"--max-batched-tokens", "3"},
                                    {"--max-waiting", "4"},
                                    {"--no-prefix-cache", NULL},
                                    {"--host", "::1"},
                                    {"--port", "1"},
                                    {"--api-key", "k"},
                                    {"--max-body-bytes", "2048"},
                                    {"--max-connections", "5"},
                                    {"--idle-timeout-s", "6"},
                                    {"--max-prompt-tokens", "7"},
                                    {"--max-tokens-limit", "8"},
                                    {"--default-max-tokens", "9"},
                                    {"--max-n", "10"},
                                    {"--drain-timeout-s", "11"},
                                    {"--log-level", "warn"}};
    char err[512];
    cfg_config c, d;
    cfg_defaults(&d);
    size_t n = sizeof args / sizeof args[0];
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(load(&c, err, NULL, args[i][0], args[i][1], NULL), 0);
        ck_assert_msg(memcmp(&c, &d, sizeof c) != 0, "%s changed nothing", args[i][0]);
    }
    ck_assert_int_eq(n, 25); /* one per field of cfg_config: update both when adding a key */
}
END_TEST

/* Every template name the engine knows is accepted by config (the list in config.c mirrors it). */
START_TEST(test_chat_template_names) {
    char err[512], flag[64];
    cfg_config c;
    for (int k = 0; k < CHAT_TMPL_COUNT; k++) {
        snprintf(flag, sizeof flag, "--chat-template=%s", chat_tmpl_name((chat_tmpl_kind)k));
        ck_assert_msg(load(&c, err, NULL, flag, NULL) == 0, "%s", err);
        chat_tmpl t;
        ck_assert_int_eq(chat_tmpl_by_name(c.chat_template, &t), 0);
        chat_tmpl_free(&t);
    }
}
END_TEST

START_TEST(test_examples_load) {
    static const char *const files[] = {"config/example.json", "config/production.json", NULL};
    char err[512];
    cfg_config c;
    for (const char *const *p = files; *p; p++) {
        ck_assert_msg(access(*p, R_OK) == 0, "%s not found: run from the repository root", *p);
        ck_assert_msg(load(&c, err, NULL, "--config", *p, NULL) == 0, "%s", err);
    }
    ck_assert_int_eq(load(&c, err, NULL, "--config", "config/example.json", NULL), 0);
    ck_assert_str_eq(c.model_name, "smollm2-135m-instruct");
    ck_assert_int_eq(c.ctx_size, 2048);
    ck_assert_int_eq(c.max_seqs, 32);
}
END_TEST

START_TEST(test_docs_match_schema) {
    char *want = NULL;
    size_t want_len = 0;
    FILE *f = open_memstream(&want, &want_len);
    cfg_print_markdown(f);
    fclose(f);
    FILE *d = fopen("docs/config.md", "rb");
    ck_assert_msg(d, "docs/config.md not found: run from the repository root");
    char *have = calloc(1, want_len + 2);
    size_t have_len = fread(have, 1, want_len + 1, d);
    fclose(d);
    ck_assert_msg(have_len == want_len && memcmp(have, want, want_len) == 0,
                  "docs/config.md is stale: build/tests/test_config --print-markdown > docs/config.md");
    free(have);
    free(want);
}
END_TEST

static Suite *config_suite(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_precedence);
    tcase_add_test(tc, test_flag_forms);
    tcase_add_test(tc, test_model_name_derived);
    tcase_add_test(tc, test_file_errors);
    tcase_add_test(tc, test_file_io_errors);
    tcase_add_test(tc, test_file_nomem);
    tcase_add_test(tc, test_env_errors);
    tcase_add_test(tc, test_integer_junk);
    tcase_add_test(tc, test_flag_errors);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_every_field_has_a_key);
    tcase_add_test(tc, test_chat_template_names);
    tcase_add_test(tc, test_examples_load);
    tcase_add_test(tc, test_docs_match_schema);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--print-markdown") == 0) {
        cfg_print_markdown(stdout);
        return 0;
    }
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
