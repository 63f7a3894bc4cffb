/* cli_tools: the model-file and benchmark subcommands of the tokd binary, beside cli.h's.
 * Each takes argc/argv after the subcommand name (argv[0] is the subcommand) and returns the
 * process exit status (0 ok, 1 runtime error, 2 usage error).
 *   tokd quantize IN.gguf OUT.gguf TYPE   (server/cli_quantize.c)
 *   tokd mkmodel OUT.gguf --shape NAME    (server/cli_mkmodel.c)
 *   tokd bench [--quick] [--json]         (server/cli_bench.c, docs/bench.md) */
#ifndef SERVER_CLI_TOOLS_H
#define SERVER_CLI_TOOLS_H

int cli_quantize(int argc, char **argv);
int cli_mkmodel(int argc, char **argv);
int cli_bench(int argc, char **argv);

#endif
