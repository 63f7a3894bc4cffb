/* libFuzzer target for the HTTP request-body parsers (server/parse.c): arbitrary bytes as the
 * body of /v1/completions (first byte even) or /v1/chat/completions (odd), and of /tokenize and
 * /detokenize. Checked: the parser never crashes or leaks, a rejected body always carries an
 * error with status 400 and a message, and an accepted one respects the limits it was given.
 *
 * Build: make fuzz   (or clang -fsanitize=fuzzer,address,undefined ... see the Makefile)
 * Run:   build/fuzz/fuzz_request -max_len=4096 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/tk_mem.h"
#include "server/srv_internal.h"

static void check_gen(const uint8_t *data, size_t size) {
    int endpoint = size && (data[0] & 1) ? SRV_EP_CHAT : SRV_EP_COMPLETIONS;
    const char *body = size ? (const char *)data + 1 : "";
    size_t len = size ? size - 1 : 0;
    srv_limits lim = {.max_n = 8, .max_tokens_limit = 4096, .n_vocab = 49152};
    srv_gen_req r;
    srv_error e;
    memset(&e, 0, sizeof e);
    if (srv_parse_gen(body, len, endpoint, &lim, &r, &e) == 0) {
        if (r.n < 1 || r.n > lim.max_n) abort();
        if (r.max_tokens != -1 && (r.max_tokens < 0 || r.max_tokens > lim.max_tokens_limit)) abort();
        for (size_t i = 0; i < r.n_prompt_ids; i++)
            if (r.prompt_ids[i] < 0 || r.prompt_ids[i] >= lim.n_vocab) abort();
        if (r.n_stops > SRV_MAX_STOPS) abort();
        if (endpoint == SRV_EP_CHAT && r.n_msgs == 0) abort();
        srv_gen_req_free(&r);
    } else {
        if (e.status != 400 || e.message[0] == '\0') abort();
        char *json = srv_error_json(&e);
        free(json);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_gen(data, size);
    srv_tokenize_req t;
    srv_error e;
    memset(&e, 0, sizeof e);
    if (srv_parse_tokenize((const char *)data, size, &t, &e) == 0) tk_free(t.content);
    int32_t *ids = NULL;
    size_t n = 0;
    memset(&e, 0, sizeof e);
    if (srv_parse_detokenize((const char *)data, size, 512, &ids, &n, &e) == 0) {
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= 512) abort();
        tk_free(ids);
    }
    return 0;
}
