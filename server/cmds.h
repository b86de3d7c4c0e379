/* Subcommands of the rtaas binary that live in their own files; each takes the arguments after
 * its name and returns the process exit status (0 ok, 1 failure, 2 bad usage). */
#ifndef SRV_CMDS_H
#define SRV_CMDS_H

/* rtaas import MODEL.pt --out BACKBONE.safetensors [--mean a,b,c --std a,b,c] [--input-size N]:
 * reads a PyTorch checkpoint and writes an rtaas backbone; the recognition report (JSON) goes
 * to stdout, errors and notes to stderr. */
int cmd_import(int argc, char **argv);

#endif
