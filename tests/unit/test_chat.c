/* Unit tests for engine/chat: every case in tests/data/chat/expected.json (real templates
 * rendered by jinja2, see gen_chat.py) rendered by our C renderers and compared byte for byte;
 * family detection, default system extraction, unknown templates, bad roles and role order,
 * and out-of-memory cleanup. Run with cwd = repo root. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tk_mem.h"
#include "engine/chat.h"

#define EXPECTED_JSON "tests/data/chat/expected.json"

static cJSON *load_expected(void) {
    FILE *f = fopen(EXPECTED_JSON, "rb");
    ck_assert_msg(f != NULL, "cannot open %s (run from the repo root)", EXPECTED_JSON);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = '\0';
    fclose(f);
    cJSON *root = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(root);
    return root;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const cJSON *find_template(const cJSON *root, const char *name) {
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(root, "templates")) {
        if (strcmp(jstr(t, "name"), name) == 0) return t;
    }
    ck_abort_msg("template %s not in %s", name, EXPECTED_JSON);
    return NULL;
}

/* Shows where two renders part, with C escapes, so a failure is readable. */
static void show_diff(const char *want, const char *got) {
    size_t i = 0;
    while (want[i] && want[i] == got[i]) i++;
    fprintf(stderr, "  first difference at byte %zu\n  want: ", i);
    for (const char *p = want + (i > 20 ? i - 20 : 0); *p && p < want + i + 40; p++)
        fprintf(stderr, *p == '\n' ? "\\n" : "%c", *p);
    fprintf(stderr, "\n  got:  ");
    for (const char *p = got + (i > 20 ? i - 20 : 0); *p && p < got + i + 40; p++)
        fprintf(stderr, *p == '\n' ? "\\n" : "%c", *p);
    fprintf(stderr, "\n");
}

/* Renders one case; 1 if it matches expectations. */
static int run_case(const cJSON *root, const cJSON *c) {
    const char *tname = jstr(c, "template"), *conv = jstr(c, "conversation");
    const cJSON *t = find_template(root, tname);
    chat_tmpl tmpl;
    char err[256] = "";
    ck_assert_int_eq(chat_tmpl_detect(jstr(t, "source"), &tmpl, err, sizeof err), 0);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(c, "messages");
    size_t n = (size_t)cJSON_GetArraySize(msgs), i = 0;
    chat_msg m[16];
    ck_assert_uint_le(n, 16);
    const cJSON *jm;
    cJSON_ArrayForEach(jm, msgs) {
        m[i].role = jstr(jm, "role");
        m[i].content = jstr(jm, "content");
        i++;
    }
    bool add_gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt"));
    const char *want = jstr(c, "expected");
    char *got = NULL;
    int rc = chat_render(&tmpl, m, n, add_gen, jstr(t, "bos"), &got, err, sizeof err);
    int ok;
    if (!want) {
        ok = rc == CHAT_ERR_INVALID && got == NULL && err[0];
        if (!ok) fprintf(stderr, "%s/%s: want CHAT_ERR_INVALID, got %d\n", tname, conv, rc);
    } else {
        ok = rc == 0 && got && strcmp(got, want) == 0;
        if (!ok) fprintf(stderr, "%s/%s: rc %d (%s)\n", tname, conv, rc, err);
        if (!ok && got) show_diff(want, got);
    }
    tk_free(got);
    chat_tmpl_free(&tmpl);
    return ok;
}

START_TEST(test_jinja_reference_renders) {
    cJSON *root = load_expected();
    const cJSON *c;
    int n = 0, bad = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "cases")) {
        n++;
        bad += !run_case(root, c);
    }
    cJSON_Delete(root);
    ck_assert_int_ge(n, 60);
    ck_assert_msg(bad == 0, "%d of %d cases differ from jinja2 (details on stderr)", bad, n);
}
END_TEST

START_TEST(test_detect_reference_templates) {
    cJSON *root = load_expected();
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(root, "templates")) {
        chat_tmpl tmpl;
        char err[256] = "";
        ck_assert_int_eq(chat_tmpl_detect(jstr(t, "source"), &tmpl, err, sizeof err), 0);
        ck_assert_str_eq(chat_tmpl_name(tmpl.kind), jstr(t, "family"));
        const char *want_sys = jstr(t, "default_system");
        if (want_sys) {
            ck_assert_ptr_nonnull(tmpl.default_system);
            ck_assert_str_eq(tmpl.default_system, want_sys);
        } else {
            ck_assert_ptr_null(tmpl.default_system);
        }
        chat_tmpl_free(&tmpl);
        ck_assert_ptr_null(tmpl.default_system);
    }
    cJSON_Delete(root);
}
END_TEST

static void expect_kind(const char *src, chat_tmpl_kind want) {
    chat_tmpl t;
    char err[256] = "";
    ck_assert_msg(chat_tmpl_detect(src, &t, err, sizeof err) == 0, "%s: %s", src, err);
    ck_assert_str_eq(chat_tmpl_name(t.kind), chat_tmpl_name(want));
    chat_tmpl_free(&t);
}

START_TEST(test_detect_markers) {
    expect_kind("{{'<|im_start|>' + m.role}}", CHAT_TMPL_CHATML);
    expect_kind("<|start_header_id|>x<|end_header_id|>y<|eot_id|>", CHAT_TMPL_LLAMA3);
    expect_kind("[INST] <<SYS>>\\n", CHAT_TMPL_LLAMA2);
    expect_kind("{{ '[INST] ' + c + ' [/INST]' }}", CHAT_TMPL_MISTRAL);
    expect_kind("<start_of_turn>user", CHAT_TMPL_GEMMA);
    expect_kind("<|user|>\n{{c}}</s><|assistant|>", CHAT_TMPL_ZEPHYR);
}
END_TEST

START_TEST(test_default_system_variants) {
    chat_tmpl t;
    /* escaped newline in the literal, double quotes, escapes in the text */
    const char *esc = "{% if messages[0].role != \"system\" %}{{ \"<|im_start|>system\\nSay \\\"hi\\\""
                      "\\tplease<|im_end|>\\n\" }}{% endif %}";
    ck_assert_int_eq(chat_tmpl_detect(esc, &t, NULL, 0), 0);
    ck_assert_ptr_nonnull(t.default_system);
    ck_assert_str_eq(t.default_system, "Say \"hi\"\tplease");
    chat_tmpl_free(&t);
    /* system turn built from messages[0]: no default */
    const char *plain = "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + "
                        "messages[0]['content'] + '<|im_end|>\\n' }}{% endif %}";
    ck_assert_int_eq(chat_tmpl_detect(plain, &t, NULL, 0), 0);
    ck_assert_ptr_null(t.default_system);
    chat_tmpl_free(&t);
    /* a literal system turn that is not guarded by "first message is not system" */
    const char *unguarded = "{{ '<|im_start|>system\\nAlways here<|im_end|>\\n' }}";
    ck_assert_int_eq(chat_tmpl_detect(unguarded, &t, NULL, 0), 0);
    ck_assert_ptr_null(t.default_system);
    chat_tmpl_free(&t);
}
END_TEST

START_TEST(test_detect_unknown) {
    chat_tmpl t;
    char err[256] = "";
    ck_assert_int_eq(chat_tmpl_detect("{{ messages[0]['content'] }}<|end|>", &t, err, sizeof err),
                     CHAT_ERR_UNKNOWN);
    ck_assert_msg(strstr(err, "not recognised") != NULL, "err: %s", err);
    ck_assert_ptr_null(t.default_system);
    err[0] = '\0';
    ck_assert_int_eq(chat_tmpl_detect(NULL, &t, err, sizeof err), CHAT_ERR_UNKNOWN);
    ck_assert(err[0] != '\0');
    ck_assert_int_eq(chat_tmpl_detect("", &t, NULL, 0), CHAT_ERR_UNKNOWN);
    /* Phi-3 style: <|user|> with <|end|> is not Zephyr */
    ck_assert_int_eq(chat_tmpl_detect("<|user|>\n{{c}}<|end|>\n<|assistant|></s>", &t, NULL, 0),
                     CHAT_ERR_UNKNOWN);
}
END_TEST

START_TEST(test_by_name) {
    for (int k = 0; k < CHAT_TMPL_COUNT; k++) {
        chat_tmpl t;
        ck_assert_int_eq(chat_tmpl_by_name(chat_tmpl_name((chat_tmpl_kind)k), &t), 0);
        ck_assert_int_eq(t.kind, k);
        ck_assert_ptr_null(t.default_system);
        chat_tmpl_free(&t);
    }
    chat_tmpl t;
    ck_assert_int_eq(chat_tmpl_by_name("vicuna", &t), CHAT_ERR_UNKNOWN);
    ck_assert_str_eq(chat_tmpl_name(CHAT_TMPL_COUNT), "unknown");
}
END_TEST

START_TEST(test_bad_messages) {
    chat_tmpl t;
    char err[256] = "";
    char *out = (char *)"untouched";
    ck_assert_int_eq(chat_tmpl_by_name("chatml", &t), 0);
    chat_msg tool[] = {{"user", "hi"}, {"tool", "42"}};
    ck_assert_int_eq(chat_render(&t, tool, 2, true, "", &out, err, sizeof err), CHAT_ERR_INVALID);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err, "'tool'") != NULL, "err: %s", err);
    ck_assert_int_eq(chat_render(&t, tool, 0, true, "", &out, err, sizeof err), CHAT_ERR_INVALID);
    ck_assert_int_eq(chat_render(&t, NULL, 1, true, "", &out, err, sizeof err), CHAT_ERR_INVALID);
    chat_msg null_content[] = {{"user", NULL}};
    ck_assert_int_eq(chat_render(&t, null_content, 1, true, "", &out, err, sizeof err),
                     CHAT_ERR_INVALID);
    /* role order the family forbids */
    ck_assert_int_eq(chat_tmpl_by_name("gemma", &t), 0);
    chat_msg starts_with_assistant[] = {{"assistant", "a"}, {"user", "b"}};
    ck_assert_int_eq(chat_render(&t, starts_with_assistant, 2, true, "", &out, err, sizeof err),
                     CHAT_ERR_INVALID);
    ck_assert_msg(strstr(err, "alternate") != NULL, "err: %s", err);
}
END_TEST

START_TEST(test_bos_and_no_bos) {
    chat_tmpl t;
    char *out = NULL;
    chat_msg m[] = {{"user", "hi"}};
    ck_assert_int_eq(chat_tmpl_by_name("llama3", &t), 0);
    ck_assert_int_eq(chat_render(&t, m, 1, false, NULL, &out, NULL, 0), 0);
    ck_assert_str_eq(out, "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
    tk_free(out);
    ck_assert_int_eq(chat_render(&t, m, 1, false, "<B>", &out, NULL, 0), 0);
    ck_assert_str_eq(out, "<B><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
    tk_free(out);
}
END_TEST

START_TEST(test_render_oom) {
    chat_tmpl t;
    const char *src = "{% if loop.first and messages[0]['role'] != 'system' %}"
                      "{{ '<|im_start|>system\\nDefault<|im_end|>\\n' }}{% endif %}";
    chat_msg m[] = {{"user", "hello"}, {"assistant", "there"}};
    int rc = -1;
    for (long n = 0; n < 20 && rc != 0; n++) {
        tk_mem_fail_after(n);
        rc = chat_tmpl_detect(src, &t, NULL, 0);
        tk_mem_fail_after(-1);
        ck_assert(rc == 0 || rc == CHAT_ERR_NOMEM);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(t.default_system, "Default");
    char *out = NULL;
    rc = -1;
    for (long n = 0; n < 20 && rc != 0; n++) {
        tk_mem_fail_after(n);
        rc = chat_render(&t, m, 2, true, "", &out, NULL, 0);
        tk_mem_fail_after(-1);
        ck_assert(rc == 0 || (rc == CHAT_ERR_NOMEM && out == NULL));
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(out, "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                          "<|im_start|>assistant\nthere<|im_end|>\n<|im_start|>assistant\n");
    tk_free(out);
    chat_tmpl_free(&t);
}
END_TEST

static Suite *chat_suite(void) {
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_jinja_reference_renders);
    tcase_add_test(tc, test_detect_reference_templates);
    tcase_add_test(tc, test_detect_markers);
    tcase_add_test(tc, test_default_system_variants);
    tcase_add_test(tc, test_detect_unknown);
    tcase_add_test(tc, test_by_name);
    tcase_add_test(tc, test_bad_messages);
    tcase_add_test(tc, test_bos_and_no_bos);
    tcase_add_test(tc, test_render_oom);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(chat_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
