#include "pgembed.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

/* The newest installed server's bin folder (RTAAS_PG_BIN overrides). */
static int pg_bindir(char *out, size_t n)
{
    const char *env = getenv("RTAAS_PG_BIN");
    if (env && *env)
        return snprintf(out, n, "%s", env) < (int)n ? 0 : -1;
    glob_t g;
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0)
        return -1;
    int best = -1, best_v = -1;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        int v = atoi(g.gl_pathv[i] + strlen("/usr/lib/postgresql/"));
        if (v > best_v) {
            best_v = v;
            best = (int)i;
        }
    }
    int rc = snprintf(out, n, "%.*s", (int)(strlen(g.gl_pathv[best]) - strlen("/initdb")), g.gl_pathv[best]) < (int)n
                 ? 0
                 : -1;
    globfree(&g);
    return rc;
}

/* Runs argv (as `postgres` when we are root), output to log_path; returns the exit status. */
static int run(char *const argv[], const struct passwd *as, const char *log_path)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        if (as && (initgroups(as->pw_name, as->pw_gid) || setgid(as->pw_gid) || setuid(as->pw_uid)))
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void tail_log(const char *path, char *err, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char buf[4096];
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, sz > (long)sizeof buf - 1 ? sz - (long)sizeof buf + 1 : 0, SEEK_SET);
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = 0;
    for (char *p = buf; *p; p++)
        if (*p == '\n')
            *p = ' ';
    size_t len = strlen(err);
    snprintf(err + len, n - len, " (log %s: ...%s)", path, got > 300 ? buf + got - 300 : buf);
}

static const struct passwd *run_as(void)
{
    if (geteuid() != 0)
        return NULL;
    return getpwnam("postgres");
}

int pg_embed_start(const char *data_dir, char *conninfo, size_t ci_len, bool *started, char *err, size_t n)
{
    *started = false;
    char bin[PATH_MAX], abs[PATH_MAX], pgdir[PATH_MAX + 8], logp[PATH_MAX + 16], ver[PATH_MAX + 32];
    if (pg_bindir(bin, sizeof bin)) {
        snprintf(err, n, "no PostgreSQL server found (/usr/lib/postgresql/*/bin/initdb; install Debian's postgresql, "
                 "or set RTAAS_DATABASE_URL)");
        return -1;
    }
    if (mkdir(data_dir, 0700) && errno != EEXIST) {
        snprintf(err, n, "creating %s: %s", data_dir, strerror(errno));
        return -1;
    }
    if (!realpath(data_dir, abs)) {
        snprintf(err, n, "%s: %s", data_dir, strerror(errno));
        return -1;
    }
    const struct passwd *pw = run_as();
    if (geteuid() == 0 && !pw) {
        snprintf(err, n, "running as root, and there is no `postgres` user to run the private PostgreSQL as");
        return -1;
    }
    if (pw) {
        /* the postgres user must reach the cluster: the data dir and every folder above it */
        chmod(abs, 0711);
        char up[PATH_MAX];
        snprintf(up, sizeof up, "%s", abs);
        for (char *s = strrchr(up, '/'); s && s != up; s = strrchr(up, '/')) {
            *s = 0;
            struct stat st;
            if (stat(up, &st) == 0 && !(st.st_mode & S_IXOTH)) {
                snprintf(err, n, "the private PostgreSQL runs as user postgres, which cannot enter %s (mode %o); "
                         "chmod o+x it or choose another RTAAS_DATA_DIR", up, st.st_mode & 0777);
                return -1;
            }
        }
    }
    snprintf(pgdir, sizeof pgdir, "%s/pg", abs);
    snprintf(logp, sizeof logp, "%s/pg.log", abs);
    snprintf(ver, sizeof ver, "%s/PG_VERSION", pgdir);
    if (strlen(pgdir) + strlen("/.s.PGSQL.5432") >= 107) {
        snprintf(err, n, "the socket path under %s would be too long for a unix socket; use a shorter RTAAS_DATA_DIR",
                 pgdir);
        return -1;
    }
    if (pw) {
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0)
            close(fd);
        if (chown(logp, pw->pw_uid, pw->pw_gid)) {
            snprintf(err, n, "chown %s: %s", logp, strerror(errno));
            return -1;
        }
    }
    if (access(ver, F_OK) != 0) {
        if (mkdir(pgdir, 0700) && errno != EEXIST) {
            snprintf(err, n, "creating %s: %s", pgdir, strerror(errno));
            return -1;
        }
        if (pw && chown(pgdir, pw->pw_uid, pw->pw_gid)) {
            snprintf(err, n, "chown %s: %s", pgdir, strerror(errno));
            return -1;
        }
        char initdb[PATH_MAX + 16];
        snprintf(initdb, sizeof initdb, "%s/initdb", bin);
        char *argv[] = {initdb, "-D", pgdir, "-U", "rtaas", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8",
                        "--no-instructions", NULL};
        rlog(LOG_INFO, "postgres_initdb", json_pack("{s:s}", "dir", pgdir));
        if (run(argv, pw, logp) != 0) {
            snprintf(err, n, "initdb -D %s failed", pgdir);
            tail_log(logp, err, n);
            return -1;
        }
        char conf[PATH_MAX + 32];
        snprintf(conf, sizeof conf, "%s/postgresql.conf", pgdir);
        FILE *f = fopen(conf, "a");
        if (!f) {
            snprintf(err, n, "%s: %s", conf, strerror(errno));
            return -1;
        }
        fprintf(f, "\n# rtaas: a private cluster, unix socket only\nlisten_addresses = ''\n"
                   "unix_socket_directories = '%s'\nmax_connections = 200\nshared_buffers = 256MB\n"
                   "# uploads arrive as large bytea chunks: room for their WAL, fewer checkpoints\n"
                   "wal_buffers = 64MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 15min\n",
                pgdir);
        fclose(f);
    }
    char pg_ctl[PATH_MAX + 16];
    snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", bin);
    char *status_argv[] = {pg_ctl, "-D", pgdir, "status", NULL};
    if (run(status_argv, pw, "/dev/null") != 0) {
        char *start_argv[] = {pg_ctl, "-D", pgdir, "-w", "-t", "120", "-l", logp, "start", NULL};
        if (run(start_argv, pw, logp) != 0) {
            snprintf(err, n, "pg_ctl start -D %s failed", pgdir);
            tail_log(logp, err, n);
            return -1;
        }
        *started = true;
        rlog(LOG_INFO, "postgres_started", json_pack("{s:s}", "dir", pgdir));
    }
    char admin[PATH_MAX + 64];
    snprintf(admin, sizeof admin, "host=%s dbname=postgres user=rtaas", pgdir);
    PGconn *pg = PQconnectdb(admin);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, n, "connecting to the private PostgreSQL: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return -1;
    }
    PGresult *r = PQexec(pg, "SELECT 1 FROM pg_database WHERE datname = 'rtaas'");
    bool have = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    PQclear(r);
    if (!have) {
        r = PQexec(pg, "CREATE DATABASE rtaas");
        if (PQresultStatus(r) != PGRES_COMMAND_OK && !strstr(PQresultErrorMessage(r), "already exists")) {
            snprintf(err, n, "CREATE DATABASE rtaas: %s", PQresultErrorMessage(r));
            PQclear(r);
            PQfinish(pg);
            return -1;
        }
        PQclear(r);
    }
    PQfinish(pg);
    snprintf(conninfo, ci_len, "host=%s dbname=rtaas user=rtaas", pgdir);
    return 0;
}

void pg_embed_stop(const char *data_dir)
{
    char bin[PATH_MAX], abs[PATH_MAX], pgdir[PATH_MAX + 4], pg_ctl[PATH_MAX + 16];
    if (pg_bindir(bin, sizeof bin) || !realpath(data_dir, abs))
        return;
    snprintf(pgdir, sizeof pgdir, "%s/pg", abs);
    snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", bin);
    char *argv[] = {pg_ctl, "-D", pgdir, "-m", "fast", "-w", "stop", NULL};
    if (run(argv, run_as(), "/dev/null") == 0)
        rlog(LOG_INFO, "postgres_stopped", json_pack("{s:s}", "dir", pgdir));
}
