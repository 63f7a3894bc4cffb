/* cli: the subcommands of the tokd binary. Each takes argc/argv after the subcommand name and
 * returns the process exit status (0 ok, 1 runtime error, 2 usage error). */
#ifndef SERVER_CLI_H
#define SERVER_CLI_H

int cli_generate(int argc, char **argv);
int cli_serve(int argc, char **argv);

#endif
