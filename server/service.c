#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "http.h"
#include "log.h"
#include "pgembed.h"
#include "service.h"
#include "worker.h"

/* Opens the database (the private cluster when RTAAS_DATABASE_URL is unset) and applies the
 * migrations. *private_started: this process started the private cluster. */
static int open_db(rt_app *app, bool *private_started)
{
    char err[2048], conninfo[PATH_MAX + 128];
    *private_started = false;
    if (app->cfg.database_url[0]) {
        snprintf(conninfo, sizeof conninfo, "%s", app->cfg.database_url);
    } else if (pg_embed_start(app->cfg.data_dir, conninfo, sizeof conninfo, private_started, err, sizeof err)) {
        rlog(LOG_ERROR, "database", json_pack("{s:s}", "error", err));
        fprintf(stderr, "rtaas: %s\n", err);
        return -1;
    }
    app->db = db_open(conninfo, app->cfg.database_password, app->cfg.db_pool);
    /* the database may still be starting (compose): retry for a minute; a refused password
     * will not get better */
    for (int i = 0;; i++) {
        if (db_migrate(app->db, err, sizeof err) == 0)
            return 0;
        if (i >= 60 || strstr(err, "edited") || strstr(err, "does not know") || !strncmp(err, "migration", 9) ||
            strstr(err, "password authentication failed") || strstr(err, "no password supplied")) {
            rlog(LOG_ERROR, "migrations", json_pack("{s:s}", "error", err));
            fprintf(stderr, "rtaas: %s\n", err);
            return -1;
        }
        if (i == 0)
            rlog(LOG_WARN, "database_wait", json_pack("{s:s}", "error", err));
        sleep(1);
    }
}

static int make_dirs(rt_app *app)
{
    const rt_config *c = &app->cfg;
    if (mkdir(c->data_dir, 0700) && errno != EEXIST) {
        fprintf(stderr, "rtaas: creating %s: %s\n", c->data_dir, strerror(errno));
        return -1;
    }
    snprintf(app->tmp_dir, sizeof app->tmp_dir, "%s/tmp", c->data_dir);
    snprintf(app->cache_dir, sizeof app->cache_dir, "%s/cache", c->data_dir);
    snprintf(app->work_dir, sizeof app->work_dir, "%s/work", c->data_dir);
    /* uploads a crash interrupted are garbage */
    rm_tree(app->tmp_dir);
    const char *dirs[3] = {app->tmp_dir, app->cache_dir, app->work_dir};
    for (int i = 0; i < 3; i++)
        if (mkdir(dirs[i], 0700) && errno != EEXIST) {
            fprintf(stderr, "rtaas: creating %s: %s\n", dirs[i], strerror(errno));
            return -1;
        }
    return 0;
}

static void serve_usage(FILE *f, bool http)
{
    if (http)
        fprintf(f, "usage: rtaas serve [--no-workers]\n"
                   "  the REST API on RTAAS_LISTEN and a worker per RTAAS_DEVICES entry;\n"
                   "  --no-workers: the API only (as RTAAS_DEVICES empty)\n");
    else
        fprintf(f, "usage: rtaas worker\n"
                   "  a worker per RTAAS_DEVICES entry (cuda:0,cuda:1 or cpu), no API\n");
}

/* A random signing key when none is configured: the links this process signs die with it, and
 * API nodes behind one load balancer each refuse the others' links. */
static int random_signing_key(rt_config *c)
{
    if (RAND_bytes(c->signing_key, 32) != 1)
        return -1;
    c->signing_key_len = 32;
    rlog(LOG_WARN, "signing_key",
         json_pack("{s:s}", "message",
                   "no RTAAS_SIGNING_KEY(_FILE): download links are signed with a random key and stop working "
                   "when this process restarts (and on other API nodes)"));
    return 0;
}

int cmd_serve(int argc, char **argv, bool http, bool workers)
{
    for (int i = 0; i < argc; i++) {
        if (http && !strcmp(argv[i], "--no-workers")) {
            workers = false;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            serve_usage(stdout, http);
            return 0;
        } else {
            fprintf(stderr, "rtaas %s: unknown argument '%s'\n", http ? "serve" : "worker", argv[i]);
            serve_usage(stderr, http);
            return 2;
        }
    }
    rt_app app = {0};
    char err[512];
    if (config_load(&app.cfg, err, sizeof err)) {
        fprintf(stderr, "rtaas: %s\n", err);
        return 2;
    }
    if (!workers)
        app.cfg.devices[0] = 0;
    if (http && !app.cfg.signing_key_len && random_signing_key(&app.cfg)) {
        fprintf(stderr, "rtaas: no randomness for a signing key\n");
        return 1;
    }
    if (!http && !app.cfg.devices[0]) {
        fprintf(stderr, "rtaas worker: RTAAS_DEVICES is empty: nothing to run jobs on\n");
        return 2;
    }
    /* every thread started from here on leaves the signals to the main thread */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (make_dirs(&app))
        return 1;
    bool private_started;
    if (open_db(&app, &private_started)) {
        if (private_started)
            pg_embed_stop(app.cfg.data_dir);
        return 1;
    }
    rt_http *h = NULL;
    if (http && !(h = http_start(&app, err, sizeof err))) {
        fprintf(stderr, "rtaas: %s\n", err);
        rlog(LOG_ERROR, "listen", json_pack("{s:s}", "error", err));
        db_close(app.db);
        if (!app.cfg.database_url[0])
            pg_embed_stop(app.cfg.data_dir);
        return 1;
    }
    rt_workers *ws = NULL;
    if (app.cfg.devices[0] && !(ws = workers_start(&app, err, sizeof err))) {
        fprintf(stderr, "rtaas: %s\n", err);
        http_stop(h);
        db_close(app.db);
        if (!app.cfg.database_url[0])
            pg_embed_stop(app.cfg.data_dir);
        return 1;
    }
    rlog(LOG_INFO, "started",
         json_pack("{s:s,s:s?,s:i,s:s,s:s,s:s}", "version", RTAAS_VERSION, "listen", http ? app.cfg.listen_host : NULL,
                   "port", app.cfg.port, "devices", app.cfg.devices, "data_dir", app.cfg.data_dir, "database",
                   app.cfg.database_url[0] ? "external" : "private"));
    int sig = 0;
    sigwait(&set, &sig);
    rlog(LOG_INFO, "stopping", json_pack("{s:i}", "signal", sig));
    workers_stop(ws); /* running jobs go back to the queue with their checkpoints */
    http_stop(h);
    db_close(app.db);
    if (!app.cfg.database_url[0])
        pg_embed_stop(app.cfg.data_dir);
    rlog(LOG_INFO, "stopped", NULL);
    return 0;
}

int cmd_apikey(int argc, char **argv)
{
    const char *tenant = NULL;
    if (argc < 1 || strcmp(argv[0], "create")) {
        fprintf(stderr, "usage: rtaas apikey create --tenant NAME\n");
        return 2;
    }
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--tenant") && i + 1 < argc)
            tenant = argv[++i];
    if (!tenant || !*tenant || strlen(tenant) > 63) {
        fprintf(stderr, "usage: rtaas apikey create --tenant NAME (1 to 63 characters)\n");
        return 2;
    }
    rt_app app = {0};
    char err[512];
    if (config_load(&app.cfg, err, sizeof err)) {
        fprintf(stderr, "rtaas: %s\n", err);
        return 2;
    }
    app.cfg.db_pool = 1;
    bool started;
    if (mkdir(app.cfg.data_dir, 0700) && errno != EEXIST) {
        fprintf(stderr, "rtaas: creating %s: %s\n", app.cfg.data_dir, strerror(errno));
        return 1;
    }
    if (open_db(&app, &started)) {
        if (started)
            pg_embed_stop(app.cfg.data_dir);
        return 1;
    }
    static const char alphabet[] = "abcdefghijkmnpqrstuvwxyz23456789";
    unsigned char rnd[40];
    char key[64] = "rtaas_";
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        fprintf(stderr, "rtaas: no randomness for a key\n");
        return 1;
    }
    for (int i = 0; i < 40; i++)
        key[6 + i] = alphabet[rnd[i] & 31];
    key[46] = 0;
    unsigned char hash[32];
    unsigned int hl;
    EVP_Digest(key, strlen(key), hash, &hl, EVP_sha256(), NULL);
    int ret = 1;
    db_conn *c = db_get(app.db);
    if (c) {
        db_rc rc;
        const char *p[1] = {tenant};
        PGresult *r = db_exec(c, Q_TENANT_UPSERT, 1, p, &rc);
        if (rc == DB_OK && PQntuples(r) == 1) {
            char prefix[16];
            snprintf(prefix, sizeof prefix, "%.10s", key);
            const char *q[3] = {PQgetvalue(r, 0, 0), (const char *)hash, prefix};
            const int len[3] = {0, 32, 0}, fmt[3] = {0, 1, 0};
            PQclear(db_exec_bin(c, Q_KEY_INSERT, 3, q, len, fmt, &rc));
            if (rc == DB_OK) {
                printf("%s\n", key);
                fflush(stdout);
                rlog(LOG_INFO, "apikey_created", json_pack("{s:s,s:s}", "tenant", tenant, "prefix", prefix));
                ret = 0;
            }
        }
        PQclear(r);
        db_put(app.db, c);
    }
    if (ret)
        fprintf(stderr, "rtaas: creating the key failed: %s\n", db_last_error());
    db_close(app.db);
    if (started)
        pg_embed_stop(app.cfg.data_dir);
    return ret;
}

int cmd_routes(void)
{
    for (const rt_route *r = rt_routes; r->method; r++)
        printf("%s %s\n", r->method, r->pattern);
    return 0;
}
