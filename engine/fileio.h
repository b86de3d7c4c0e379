/* Files written whole or not at all (internal to the engine). */
#ifndef ENG_FILEIO_H
#define ENG_FILEIO_H

#include <stddef.h>

#include "status.h"

typedef struct eng_piece {
    const void *data;
    size_t len;
} eng_piece;

/* Writes the pieces, in order, to a temporary file next to path (mode 0644), fsyncs it and
 * renames it over path, then fsyncs the folder so that the rename lasts. On failure path is
 * untouched and the temporary is gone; messages start with `who` ("png: write"). */
eng_status eng_write_file_atomic(const char *path, const eng_piece *pieces, int n, const char *who);

#endif
