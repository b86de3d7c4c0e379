#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static eng_status write_all(int fd, const uint8_t *p, size_t n, const char *path, const char *who)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return eng_fail(ENG_ERR_IO, "%s '%.300s': %s", who, path, k < 0 ? strerror(errno) : "no progress");
        p += k;
        n -= (size_t)k;
    }
    return ENG_OK;
}

eng_status eng_write_file_atomic(const char *path, const eng_piece *pieces, int n, const char *who)
{
    eng_status s = ENG_OK;
    /* The temporary sits next to the target so that rename() is atomic (same file system). */
    int fd = -1;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof ".tmp.XXXXXX");
    if (!tmp)
        return eng_fail(ENG_ERR_NOMEM, "%s: out of memory", who);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    if ((fd = mkstemp(tmp)) < 0) {
        s = eng_fail(ENG_ERR_IO, "%s: cannot create a file next to '%.300s': %s", who, path, strerror(errno));
        free(tmp);
        return s;
    }
    /* mkstemp makes the file 0600; models and images are meant to be read by others */
    if (fchmod(fd, 0644) != 0) {
        s = eng_fail(ENG_ERR_IO, "%s: chmod '%.300s': %s", who, tmp, strerror(errno));
        goto out;
    }
    for (int i = 0; i < n; i++)
        if ((s = write_all(fd, pieces[i].data, pieces[i].len, path, who)) != ENG_OK)
            goto out;
    if (fsync(fd) != 0) {
        s = eng_fail(ENG_ERR_IO, "%s: fsync '%.300s': %s", who, tmp, strerror(errno));
        goto out;
    }
    int rc = close(fd);
    fd = -1;
    if (rc != 0) {
        s = eng_fail(ENG_ERR_IO, "%s: close '%.300s': %s", who, tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        s = eng_fail(ENG_ERR_IO, "%s: rename to '%.300s': %s", who, path, strerror(errno));
        goto out;
    }
    free(tmp);
    tmp = NULL;
    /* Makes the rename itself durable; a failure leaves a complete file, so it is not an error. */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
out:
    if (fd >= 0)
        close(fd);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    return s;
}
