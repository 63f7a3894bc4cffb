/* tokd: an OpenAI-compatible LLM inference daemon. This file only dispatches subcommands. */
#include <stdio.h>
#include <string.h>

#include "server/cli.h"
#include "server/cli_tools.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tokd <command> [options]\n"
            "commands:\n"
            "  serve      the OpenAI-compatible HTTP server (--model PATH --host H --port P)\n"
            "  generate   run one prompt through a model and print the continuation\n"
            "  bench      kernel and step benchmarks beside the machine's bandwidth and peak (--quick, --json)\n"
            "  quantize   IN.gguf OUT.gguf TYPE: re-encode a model's weights (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, ...)\n"
            "  mkmodel    OUT.gguf --shape S135|S1B|LLAMA8B|custom: write a random-weight model\n"
            "  help       this text\n"
            "Run `tokd <command> --help` for a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0) return cli_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "generate") == 0) return cli_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0) return cli_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "quantize") == 0) return cli_quantize(argc - 1, argv + 1);
    if (strcmp(cmd, "mkmodel") == 0) return cli_mkmodel(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "tokd: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
