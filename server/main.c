/* tokd: an OpenAI-compatible LLM inference daemon. This file only dispatches subcommands. */
#include <stdio.h>
#include <string.h>

#include "server/cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tokd <command> [options]\n"
            "commands:\n"
            "  generate   run one prompt through a model and print the continuation\n"
            "  help       this text\n"
            "Run `tokd <command> --help` for a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "generate") == 0) return cli_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "tokd: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
