/* chat: recognise a model's Jinja chat template by its family markers and render chat
 * messages with a C renderer per family (see chat.h).
 *
 * We do not interpret Jinja. Each renderer reproduces, byte for byte, what Hugging Face's
 * apply_chat_template (jinja2 with trim_blocks and lstrip_blocks) makes of the reference
 * template of its family; tests/data/chat/gen_chat.py renders those templates with jinja2 and
 * tests/unit/test_chat.c compares. The reference templates are:
 *   ChatML   SmolLM2 / Qwen2.5 (a default system turn when messages[0] is not system)
 *   Llama 3  Meta-Llama-3-Instruct (bos, headers, content | trim, <|eot_id|>)
 *   Llama 2  Llama-2-chat (<<SYS>> block in the first [INST], content.strip(), eos "</s>")
 *   Mistral  Mistral-7B-Instruct-v0.1 (system + "\n\n" before the first user turn, eos "</s>")
 *   Gemma    Gemma 3 (system + "\n\n" before the first user turn, assistant -> "model")
 *   Zephyr   zephyr-7b-beta (eos "</s>" after every turn)
 * Families whose reference template raises on a role order (Llama 2, Mistral, Gemma: after an
 * optional leading system message, user and assistant must alternate, user first) return
 * CHAT_ERR_INVALID for it. Jinja's trim / str.strip() remove Python's Unicode whitespace, so
 * strip() below does too. Known gap: Llama 3.1+ templates, which add a dated system header,
 * are detected as Llama 3 and rendered without it. */
#include "engine/chat.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/tk_mem.h"

static const char *const tmpl_names[CHAT_TMPL_COUNT] = {
    [CHAT_TMPL_CHATML] = "chatml", [CHAT_TMPL_LLAMA3] = "llama3", [CHAT_TMPL_LLAMA2] = "llama2",
    [CHAT_TMPL_MISTRAL] = "mistral", [CHAT_TMPL_GEMMA] = "gemma",   [CHAT_TMPL_ZEPHYR] = "zephyr",
};

__attribute__((format(printf, 4, 5))) static int fail(int code, char *err, size_t errlen,
                                                      const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *chat_tmpl_name(chat_tmpl_kind kind) {
    return (unsigned)kind < CHAT_TMPL_COUNT ? tmpl_names[kind] : "unknown";
}

int chat_tmpl_by_name(const char *name, chat_tmpl *out) {
    if (!name || !out) return CHAT_ERR_UNKNOWN;
    for (int k = 0; k < CHAT_TMPL_COUNT; k++) {
        if (strcmp(name, tmpl_names[k]) == 0) {
            out->kind = (chat_tmpl_kind)k;
            out->default_system = NULL;
            return 0;
        }
    }
    return CHAT_ERR_UNKNOWN;
}

void chat_tmpl_free(chat_tmpl *t) {
    if (!t) return;
    tk_free(t->default_system);
    t->default_system = NULL;
}

/* ---- default system message of a ChatML template ---- */

/* The Jinja tag ("{% ... %}") that starts nearest before `before`: *at gets its "{%", *tag and
 * *tag_len its inside with the '-' / '+' markers and blanks trimmed. */
static bool prev_tag(const char *src, const char *before, const char **at, const char **tag,
                     size_t *tag_len) {
    for (const char *p = before; p-- > src;) {
        if (p[0] != '{' || p[1] != '%') continue;
        const char *b = p + 2, *e = strstr(b, "%}");
        if (!e) return false;
        while (b < e && (*b == '-' || *b == '+' || *b == ' ' || *b == '\n' || *b == '\t')) b++;
        while (e > b && (e[-1] == '-' || e[-1] == '+' || e[-1] == ' ' || e[-1] == '\n')) e--;
        *at = p;
        *tag = b;
        *tag_len = (size_t)(e - b);
        return true;
    }
    return false;
}

static bool span_has(const char *s, size_t n, const char *needle) {
    return memmem(s, n, needle, strlen(needle)) != NULL;
}

static bool tag_is(const char *tag, size_t n, const char *word) {
    size_t w = strlen(word);
    return n >= w && memcmp(tag, word, w) == 0 && (n == w || tag[w] == ' ' || tag[w] == '(');
}

/* Is the literal opening at `quote` emitted only when messages[0] is not a system message?
 * Accepts "{% if ... != 'system' %}" right before it, or "{% else %}" after an
 * "{% if ... == 'system' %}" (SmolLM2 and Qwen2.5 styles). */
static bool guarded_by_not_system(const char *src, const char *quote) {
    const char *at, *tag;
    size_t n;
    if (!prev_tag(src, quote, &at, &tag, &n)) return false;
    if (tag_is(tag, n, "if")) return span_has(tag, n, "!=") && span_has(tag, n, "system");
    if (!tag_is(tag, n, "else")) return false;
    if (!prev_tag(src, at, &at, &tag, &n) || !tag_is(tag, n, "if")) return false;
    return span_has(tag, n, "==") && span_has(tag, n, "system");
}

/* Copies a Jinja string literal body [b, e) with its backslash escapes resolved (the common
 * ones; Python keeps an unknown escape as its two characters, and so do we). */
static char *unescape(const char *b, const char *e) {
    char *out = tk_malloc((size_t)(e - b) + 1), *o = out;
    if (!out) return NULL;
    for (const char *p = b; p < e; p++) {
        if (*p != '\\' || p + 1 == e) {
            *o++ = *p;
            continue;
        }
        switch (*++p) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case '\\': case '\'': case '"': *o++ = *p; break;
        default:
            *o++ = '\\';
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

/* Finds '<|im_start|>system' + newline + TEXT + '<|im_end|>' inside one string literal that
 * the template writes only when messages[0] is not system. *out: TEXT unescaped, or NULL.
 * Returns CHAT_ERR_NOMEM or 0. */
static int extract_default_system(const char *src, char **out) {
    static const char start[] = "<|im_start|>system", end[] = "<|im_end|>";
    *out = NULL;
    for (const char *p = strstr(src, start); p; p = strstr(p + 1, start)) {
        const char *q = p; /* the quote that opens the literal */
        while (q > src && q[-1] != '\'' && q[-1] != '"') q--;
        if (q == src) continue;
        char quote = q[-1];
        const char *b = p + sizeof start - 1;
        if (*b == '\n') b += 1;
        else if (b[0] == '\\' && b[1] == 'n') b += 2;
        else continue;
        const char *e = b;
        while (*e && *e != quote && strncmp(e, end, sizeof end - 1) != 0) e += (*e == '\\' && e[1]) ? 2 : 1;
        if (*e != '<' || e == b || !guarded_by_not_system(src, q - 1)) continue;
        *out = unescape(b, e);
        return *out ? 0 : CHAT_ERR_NOMEM;
    }
    return 0;
}

/* ---- detection ---- */

int chat_tmpl_detect(const char *source, chat_tmpl *out, char *err, size_t errlen) {
    if (!out) return fail(CHAT_ERR_INVALID, err, errlen, "no output template");
    out->kind = CHAT_TMPL_CHATML;
    out->default_system = NULL;
    if (!source || !*source)
        return fail(CHAT_ERR_UNKNOWN, err, errlen, "the model has no chat template");
#define HAS(s) (strstr(source, (s)) != NULL)
    if (HAS("<|im_start|>")) {
        if (extract_default_system(source, &out->default_system) != 0)
            return fail(CHAT_ERR_NOMEM, err, errlen, "out of memory reading the chat template");
        out->kind = CHAT_TMPL_CHATML;
    } else if (HAS("<|start_header_id|>") && HAS("<|eot_id|>")) {
        out->kind = CHAT_TMPL_LLAMA3;
    } else if (HAS("<start_of_turn>")) {
        out->kind = CHAT_TMPL_GEMMA;
    } else if (HAS("<|user|>") && HAS("<|assistant|>") && !HAS("<|end|>") &&
               (HAS("</s>") || HAS("eos_token"))) {
        out->kind = CHAT_TMPL_ZEPHYR; /* "<|end|>" would be Phi-3, which we do not render */
    } else if (HAS("[INST]")) {
        out->kind = HAS("<<SYS>>") ? CHAT_TMPL_LLAMA2 : CHAT_TMPL_MISTRAL;
    } else {
        return fail(CHAT_ERR_UNKNOWN, err, errlen,
                    "chat template not recognised (no ChatML, Llama 3, Llama 2/Mistral [INST], "
                    "Gemma or Zephyr markers); choose a template by name or send a raw prompt");
    }
#undef HAS
    return 0;
}

/* ---- output buffer ---- */

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} buf;

static void put(buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *np = tk_realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

/* Length of the Python-whitespace character (str.isspace) at s[0..n), or 0. */
static size_t ws_at(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2; /* NEL, NBSP */
    if (n < 3) return 0;
    if (s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80) return 3; /* U+1680 */
    if (s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) return 3; /* U+3000 */
    if (s[0] == 0xe2 && s[1] == 0x80 && (s[2] <= 0x8a || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf))
        return 3; /* U+2000..200A, 2028, 2029, 202F */
    if (s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) return 3; /* U+205F */
    return 0;
}

/* Python's str.strip() on what was appended since `from`. */
static void strip_since(buf *b, size_t from) {
    if (b->oom) return;
    unsigned char *s = (unsigned char *)b->p + from;
    size_t n = b->len - from, lead = 0, w;
    while ((w = ws_at(s + lead, n - lead)) > 0) lead += w;
    size_t end = n;
    for (bool more = true; more && end > lead;) {
        more = false;
        for (size_t k = 1; k <= 3 && k <= end - lead; k++) {
            if (ws_at(s + end - k, k) == k) {
                end -= k;
                more = true;
                break;
            }
        }
    }
    memmove(s, s + lead, end - lead);
    b->len = from + (end - lead);
    b->p[b->len] = '\0';
}

static void put_stripped(buf *b, const char *s) {
    size_t from = b->len;
    puts_(b, s);
    strip_since(b, from);
}

/* ---- validation ---- */

static bool is_role(const chat_msg *m, const char *role) { return strcmp(m->role, role) == 0; }

static int check_messages(const chat_msg *msgs, size_t n, char *err, size_t errlen) {
    if (!msgs || n == 0) return fail(CHAT_ERR_INVALID, err, errlen, "no messages");
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return fail(CHAT_ERR_INVALID, err, errlen, "message %zu has no role or content", i);
        if (!is_role(&msgs[i], "system") && !is_role(&msgs[i], "user") &&
            !is_role(&msgs[i], "assistant"))
            return fail(CHAT_ERR_INVALID, err, errlen,
                        "message %zu: unsupported role '%s' (system, user or assistant)", i,
                        msgs[i].role);
    }
    return 0;
}

/* After an optional leading system message: user, assistant, user, ... (what the Llama 2,
 * Mistral and Gemma templates enforce with raise_exception). */
static int check_alternating(const chat_tmpl *t, const chat_msg *msgs, size_t n, char *err,
                             size_t errlen) {
    size_t first = is_role(&msgs[0], "system") ? 1 : 0;
    for (size_t i = first; i < n; i++) {
        const char *want = (i - first) % 2 == 0 ? "user" : "assistant";
        if (!is_role(&msgs[i], want))
            return fail(CHAT_ERR_INVALID, err, errlen,
                        "%s template: message %zu is '%s' but must be '%s' (after an optional "
                        "first system message, roles alternate user/assistant)",
                        chat_tmpl_name(t->kind), i, msgs[i].role, want);
    }
    return 0;
}

/* ---- renderers: each mirrors its reference template (see the file comment) ---- */

typedef struct {
    const chat_tmpl *t;
    const chat_msg *msgs;
    size_t n;
    bool add_gen;
    const char *bos;
} render_args;

/* <|im_start|>role\ncontent<|im_end|>\n per message; the template's default system turn when
 * the conversation does not start with one. */
static void render_chatml(buf *b, const render_args *a) {
    if (a->t->default_system && !is_role(&a->msgs[0], "system")) {
        puts_(b, "<|im_start|>system\n");
        puts_(b, a->t->default_system);
        puts_(b, "<|im_end|>\n");
    }
    for (size_t i = 0; i < a->n; i++) {
        puts_(b, "<|im_start|>");
        puts_(b, a->msgs[i].role);
        puts_(b, "\n");
        puts_(b, a->msgs[i].content);
        puts_(b, "<|im_end|>\n");
    }
    if (a->add_gen) puts_(b, "<|im_start|>assistant\n");
}

static void render_llama3(buf *b, const render_args *a) {
    puts_(b, a->bos);
    for (size_t i = 0; i < a->n; i++) {
        puts_(b, "<|start_header_id|>");
        puts_(b, a->msgs[i].role);
        puts_(b, "<|end_header_id|>\n\n");
        put_stripped(b, a->msgs[i].content);
        puts_(b, "<|eot_id|>");
    }
    if (a->add_gen) puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* bos[INST] strip(<<SYS>> block + user) [/INST] strip(assistant) </s>... ; the template has
 * no generation prompt (the open [INST] turn is it). */
static void render_llama2(buf *b, const render_args *a) {
    bool sys = is_role(&a->msgs[0], "system");
    for (size_t i = sys ? 1 : 0; i < a->n; i++) {
        const chat_msg *m = &a->msgs[i];
        if (is_role(m, "user")) {
            puts_(b, a->bos);
            puts_(b, "[INST] ");
            size_t from = b->len;
            if (sys && i == 1) {
                puts_(b, "<<SYS>>\n");
                puts_(b, a->msgs[0].content);
                puts_(b, "\n<</SYS>>\n\n");
            }
            puts_(b, m->content);
            strip_since(b, from); /* .strip() of the whole turn, system block included */
            puts_(b, " [/INST]");
        } else {
            puts_(b, " ");
            put_stripped(b, m->content);
            puts_(b, " </s>");
        }
    }
}

/* bos [INST] system\n\nuser [/INST] assistant</s> [INST] ...; no generation prompt. */
static void render_mistral(buf *b, const render_args *a) {
    bool sys = is_role(&a->msgs[0], "system");
    puts_(b, a->bos);
    for (size_t i = sys ? 1 : 0; i < a->n; i++) {
        const chat_msg *m = &a->msgs[i];
        if (is_role(m, "user")) {
            puts_(b, " [INST] ");
            if (sys && i == 1) {
                puts_(b, a->msgs[0].content);
                puts_(b, "\n\n");
            }
            puts_(b, m->content);
            puts_(b, " [/INST]");
        } else {
            puts_(b, " ");
            puts_(b, m->content);
            puts_(b, "</s>");
        }
    }
}

/* bos<start_of_turn>user\n[system\n\n]trim(content)<end_of_turn>\n, assistant as "model". */
static void render_gemma(buf *b, const render_args *a) {
    bool sys = is_role(&a->msgs[0], "system");
    puts_(b, a->bos);
    for (size_t i = sys ? 1 : 0; i < a->n; i++) {
        const chat_msg *m = &a->msgs[i];
        puts_(b, "<start_of_turn>");
        puts_(b, is_role(m, "assistant") ? "model" : m->role);
        puts_(b, "\n");
        if (sys && i == 1) {
            puts_(b, a->msgs[0].content); /* the prefix is not trimmed, the content is */
            puts_(b, "\n\n");
        }
        put_stripped(b, m->content);
        puts_(b, "<end_of_turn>\n");
    }
    if (a->add_gen) puts_(b, "<start_of_turn>model\n");
}

static void render_zephyr(buf *b, const render_args *a) {
    for (size_t i = 0; i < a->n; i++) {
        puts_(b, "<|");
        puts_(b, a->msgs[i].role);
        puts_(b, "|>\n");
        puts_(b, a->msgs[i].content);
        puts_(b, "</s>\n");
    }
    if (a->add_gen) puts_(b, "<|assistant|>\n");
}

int chat_render(const chat_tmpl *t, const chat_msg *msgs, size_t n_msgs,
                bool add_generation_prompt, const char *bos_text, char **out, char *err,
                size_t errlen) {
    if (!out) return fail(CHAT_ERR_INVALID, err, errlen, "no output pointer");
    *out = NULL;
    if (!t || (unsigned)t->kind >= CHAT_TMPL_COUNT)
        return fail(CHAT_ERR_UNKNOWN, err, errlen, "no chat template");
    int rc = check_messages(msgs, n_msgs, err, errlen);
    if (rc == 0 && (t->kind == CHAT_TMPL_LLAMA2 || t->kind == CHAT_TMPL_MISTRAL ||
                    t->kind == CHAT_TMPL_GEMMA))
        rc = check_alternating(t, msgs, n_msgs, err, errlen);
    if (rc != 0) return rc;
    render_args a = {t, msgs, n_msgs, add_generation_prompt, bos_text ? bos_text : ""};
    buf b = {0};
    switch (t->kind) {
    case CHAT_TMPL_CHATML: render_chatml(&b, &a); break;
    case CHAT_TMPL_LLAMA3: render_llama3(&b, &a); break;
    case CHAT_TMPL_LLAMA2: render_llama2(&b, &a); break;
    case CHAT_TMPL_MISTRAL: render_mistral(&b, &a); break;
    case CHAT_TMPL_GEMMA: render_gemma(&b, &a); break;
    case CHAT_TMPL_ZEPHYR: render_zephyr(&b, &a); break;
    default: break;
    }
    puts_(&b, ""); /* a NUL-terminated buffer even when nothing was written */
    if (b.oom) {
        tk_free(b.p);
        return fail(CHAT_ERR_NOMEM, err, errlen, "out of memory rendering the chat template");
    }
    *out = b.p;
    return 0;
}
