/* `tokd quantize IN.gguf OUT.gguf TYPE`: re-encodes a model's weight matrices in one type with
 * the reference quantizers (engine/quantize.h has the rule for which tensors change and the
 * fallbacks). Prints a one-line summary on stderr. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/tk_time.h"
#include "common/tk_log.h"
#include "engine/model.h"
#include "engine/quantize.h"
#include "kernels/kern.h"
#include "server/cli_tools.h"

static void quantize_usage(FILE *f) {
    fprintf(f,
            "usage: tokd quantize IN.gguf OUT.gguf TYPE [options]\n"
            "  TYPE                 Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, F16, BF16 (or F32)\n"
            "  Rule (as llama.cpp): 2-D weight matrices get TYPE; 1-D tensors (norms, biases) stay as\n"
            "  they are; output.weight (token_embd.weight when tied) gets Q6_K for 4/5-bit TYPEs; a\n"
            "  width that is not a multiple of TYPE's block falls back to Q8_0 (or F16).\n"
            "  --output-type T      type of output.weight instead of the rule\n"
            "  --embd-type T        type of token_embd.weight instead of TYPE\n"
            "  --pure               every matrix in TYPE (no output.weight rule)\n"
            "  --allow-requantize   accept an already-quantized input (loses precision twice)\n"
            "  --threads N          threads (default: all CPUs)\n");
}

static int parse_type_opt(const char *what, const char *s, uint32_t *t) {
    if (eng_quant_type_parse(s, t) == 0) return 0;
    fprintf(stderr, "tokd quantize: %s: unknown type '%s' (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, F16, BF16, F32)\n", what, s);
    return -1;
}

int cli_quantize(int argc, char **argv) {
    static const struct option longs[] = {{"output-type", 1, 0, 'o'}, {"embd-type", 1, 0, 'e'},
                                          {"pure", 0, 0, 'p'},        {"allow-requantize", 0, 0, 'r'},
                                          {"threads", 1, 0, 'j'},     {"help", 0, 0, 'h'},
                                          {0, 0, 0, 0}};
    eng_quant_params p;
    eng_quant_params_default(&p, KERN_TYPE_Q8_0);
    uint32_t t;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "j:h", longs, NULL)) != -1) {
        switch (c) {
        case 'o': if (parse_type_opt("--output-type", optarg, &t)) return 2; p.output_type = (int32_t)t; break;
        case 'e': if (parse_type_opt("--embd-type", optarg, &t)) return 2; p.embd_type = (int32_t)t; break;
        case 'p': p.pure = true; break;
        case 'r': p.allow_requantize = true; break;
        case 'j': {
            char *end;
            errno = 0;
            long n = strtol(optarg, &end, 10);
            if (errno || *end || n < 1 || n > 256) {
                fprintf(stderr, "tokd quantize: --threads: '%s' is not a number in [1, 256]\n", optarg);
                return 2;
            }
            p.n_threads = (int)n;
            break;
        }
        case 'h': quantize_usage(stdout); return 0;
        default: quantize_usage(stderr); return 2;
        }
    }
    if (argc - optind != 3) {
        fprintf(stderr, "tokd quantize: expected IN.gguf OUT.gguf TYPE\n");
        quantize_usage(stderr);
        return 2;
    }
    const char *in = argv[optind], *out = argv[optind + 1];
    if (parse_type_opt("TYPE", argv[optind + 2], &p.type)) return 2;
    tk_log_set_level(TK_LOG_WARN); /* no kernel start-up chatter in a tool's output */
    char err[512] = "";
    eng_quant_stats st;
    double t0 = tk_now_s();
    int rc = eng_quantize_file(in, out, &p, &st, err, sizeof err);
    if (rc) {
        fprintf(stderr, "tokd quantize: %s\n", err);
        return rc == ENG_ERR_INVALID ? 2 : 1;
    }
    fprintf(stderr, "%s -> %s (%s): %zu tensors, %zu re-encoded (%zu by the width fallback), %.1f MiB -> %.1f MiB in %.1f s\n",
            in, out, kern_type_name(p.type), st.n_tensors, st.n_converted, st.n_fallback,
            (double)st.bytes_in / 1048576.0, (double)st.bytes_out / 1048576.0, tk_now_s() - t0);
    return 0;
}
