/* chat: render a list of chat messages into prompt text with the model's template.
 *
 * Templates are recognised from the GGUF `tokenizer.chat_template` (Jinja source) by the
 * markers that identify each family, then rendered by a C renderer for that family:
 * ChatML (SmolLM2, Qwen), Llama 3, Llama 2 / Mistral [INST], Gemma, Zephyr. A default system
 * message written into a ChatML template (as SmolLM2's is) is extracted and used when the
 * conversation has none. An unknown template is an error (CHAT_ERR_UNKNOWN); a caller may fall
 * back to a named family or raw prompt text.
 * Thread: pure functions. */
#ifndef ENGINE_CHAT_H
#define ENGINE_CHAT_H

#include <stdbool.h>
#include <stddef.h>

enum {
    CHAT_ERR_UNKNOWN = -2, /* template not recognised */
    CHAT_ERR_NOMEM = -3,
    CHAT_ERR_INVALID = -7, /* bad messages (unknown role, empty list, role order the family forbids) */
};

typedef enum {
    CHAT_TMPL_CHATML = 0,
    CHAT_TMPL_LLAMA3,
    CHAT_TMPL_LLAMA2, /* [INST] with <<SYS>> system block */
    CHAT_TMPL_MISTRAL, /* [INST] without <<SYS>>; system prepended to the first user turn */
    CHAT_TMPL_GEMMA,
    CHAT_TMPL_ZEPHYR,
    CHAT_TMPL_COUNT
} chat_tmpl_kind;

typedef struct {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} chat_msg;

typedef struct {
    chat_tmpl_kind kind;
    char *default_system; /* owned; NULL when the template has none */
} chat_tmpl;

/* Recognise `source` (NUL-terminated Jinja text). 0 on success; CHAT_ERR_UNKNOWN with a message
 * in err. Caller frees with chat_tmpl_free. */
int chat_tmpl_detect(const char *source, chat_tmpl *out, char *err, size_t errlen);
/* By name: "chatml", "llama3", "llama2", "mistral", "gemma", "zephyr". */
int chat_tmpl_by_name(const char *name, chat_tmpl *out);
void chat_tmpl_free(chat_tmpl *t);
const char *chat_tmpl_name(chat_tmpl_kind kind);

/* Render messages. bos_text: the BOS token's text, written where the family's template writes
 * it (Llama 3, Llama 2, Gemma) — pass "" when the tokenizer adds BOS itself. add_generation_prompt
 * appends the assistant turn header. *out is NUL-terminated and owned by the caller (tk_free). */
int chat_render(const chat_tmpl *t, const chat_msg *msgs, size_t n_msgs,
                bool add_generation_prompt, const char *bos_text, char **out, char *err,
                size_t errlen);

#endif
