#include "worker.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "job.h"
#include "log.h"
#include "metrics.h"
#include "spec.h"

typedef struct worker {
    rt_app *app;
    char device[32];
    char name[160];  /* host:pid:device, the lease holder */
    pthread_t thread;
    atomic_bool *stopping;
    int wake[2];     /* a pipe: written to stop the wait */
} worker;

struct rt_workers {
    int n;
    worker *w;
    atomic_bool stopping;
};

/* What the engine thread shares with the heartbeat thread while a job runs. */
typedef struct running {
    worker *w;
    char id[64];
    pthread_mutex_t lock;
    char phase[32];
    int64_t done, total;
    bool changed;
    atomic_bool cancel;     /* the user asked */
    atomic_bool lost;       /* the lease went to another worker */
    atomic_bool finished;   /* the engine returned: the heartbeat thread exits */
    char out_dir[PATH_MAX];
    time_t ckpt_mtime;
} running;

void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char p[PATH_MAX + 256];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
                rm_tree(p);
            else
                unlink(p);
        }
        closedir(d);
    }
    rmdir(path);
}

static void on_progress(void *user, const char *phase, int64_t done, int64_t total)
{
    running *r = user;
    pthread_mutex_lock(&r->lock);
    snprintf(r->phase, sizeof r->phase, "%s", phase);
    r->done = done;
    r->total = total;
    r->changed = true;
    pthread_mutex_unlock(&r->lock);
}

static bool on_cancelled(void *user)
{
    running *r = user;
    return r->cancel || r->lost || *r->w->stopping;
}

/* Keeps the job's last checkpoint in the database, for a worker on another host. */
static void save_checkpoint(running *r)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", r->out_dir);
    struct stat st;
    if (stat(path, &st) != 0 || st.st_mtime == r->ckpt_mtime)
        return;
    char sha[65];
    int64_t size;
    if (sha256_file(path, sha, &size))
        return;
    db_conn *c = db_get(r->w->app->db);
    if (!c)
        return;
    db_rc rc = DB_FAILED;
    if (db_command(c, "BEGIN")) {
        rc = blob_store(c, path, sha, size);
        const char *p[3] = {r->id, r->w->name, sha};
        if (rc == DB_OK)
            PQclear(db_exec(c, Q_JOB_SET_CHECKPOINT, 3, p, &rc));
        db_command(c, rc == DB_OK ? "COMMIT" : "ROLLBACK");
    }
    db_put(r->w->app->db, c);
    if (rc == DB_OK) {
        r->ckpt_mtime = st.st_mtime;
        rlog(LOG_INFO, "checkpoint_saved", json_pack("{s:s,s:s,s:I}", "job", r->id, "sha256", sha, "bytes", size));
    }
}

static void *heartbeat(void *arg)
{
    running *r = arg;
    rt_app *app = r->w->app;
    double last_write = 0, last_ckpt = rt_now();
    int renew = app->cfg.lease_seconds / 4 > 0 ? app->cfg.lease_seconds / 4 : 1;
    while (!r->finished) {
        usleep(200 * 1000);
        double now = rt_now();
        pthread_mutex_lock(&r->lock);
        bool due = (r->changed && now - last_write >= 1.0) || now - last_write >= renew;
        char phase[32], done[24], total[24], lease[16];
        snprintf(phase, sizeof phase, "%s", r->phase);
        snprintf(done, sizeof done, "%lld", (long long)r->done);
        snprintf(total, sizeof total, "%lld", (long long)r->total);
        if (due)
            r->changed = false;
        pthread_mutex_unlock(&r->lock);
        if (now - last_ckpt >= 10.0) {
            save_checkpoint(r);
            last_ckpt = now;
        }
        if (!due)
            continue;
        snprintf(lease, sizeof lease, "%d", app->cfg.lease_seconds);
        db_conn *c = db_get(app->db);
        if (!c)
            continue; /* the database is away: keep running, the lease may survive it */
        const char *p[6] = {r->id, r->w->name, lease, phase[0] ? phase : NULL, done, total};
        db_rc rc;
        PGresult *res = db_exec(c, Q_JOB_HEARTBEAT, 6, p, &rc);
        if (rc == DB_OK) {
            last_write = now;
            if (PQntuples(res) == 0) {
                r->lost = true;
                rlog(LOG_WARN, "lease_lost", json_pack("{s:s,s:s}", "job", r->id, "worker", r->w->name));
            } else if (!strcmp(PQgetvalue(res, 0, 0), "t")) {
                r->cancel = true;
            }
        }
        PQclear(res);
        db_put(app->db, c);
    }
    return NULL;
}

typedef struct finish_args {
    worker *w;
    const char *id, *kind, *state, *error;
    char *report, *summary;
    const char *out_dir;
    bool stored;        /* Q_JOB_FINISH took */
} finish_args;

static const struct {
    const char *name, *ctype;
} artifact_files[] = {
    {"report.json", "application/json"},
    {"head.safetensors", "application/octet-stream"},
    {"model.safetensors", "application/octet-stream"},
    {"gradients.png", "image/png"},
};

static db_rc put_artifact(db_conn *c, const char *job, const char *dir, const char *name, const char *ctype,
                          char sha_out[65])
{
    char path[PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char sha[65];
    int64_t size;
    if (access(path, R_OK) != 0)
        return DB_OK;
    if (sha256_file(path, sha, &size))
        return DB_FAILED;
    db_rc rc = blob_store(c, path, sha, size);
    if (rc != DB_OK)
        return rc;
    char size_s[24];
    snprintf(size_s, sizeof size_s, "%lld", (long long)size);
    const char *p[5] = {job, name, sha, size_s, ctype};
    PQclear(db_exec(c, Q_ARTIFACT_PUT, 5, p, &rc));
    if (sha_out)
        memcpy(sha_out, sha, 65);
    return rc;
}

static db_rc finish_tx(db_conn *c, void *user)
{
    finish_args *a = user;
    db_rc rc = DB_OK;
    a->stored = false;
    const char *p[6] = {a->id, a->w->name, a->state, a->error, a->report, a->summary};
    PGresult *r = db_exec(c, Q_JOB_FINISH, 6, p, &rc);
    bool took = rc == DB_OK && PQntuples(r) == 1;
    PQclear(r);
    if (rc != DB_OK)
        return rc;
    if (!took)
        return DB_FAILED; /* the lease is gone: someone else owns the job now */
    if (strcmp(a->state, "succeeded"))
        return (a->stored = true, DB_OK);
    char model_sha[65] = "";
    for (size_t i = 0; rc == DB_OK && i < sizeof artifact_files / sizeof *artifact_files; i++)
        rc = put_artifact(c, a->id, a->out_dir, artifact_files[i].name, artifact_files[i].ctype,
                          !strcmp(artifact_files[i].name, "model.safetensors") ? model_sha : NULL);
    for (int i = 0; rc == DB_OK; i++) {
        char name[64], path[PATH_MAX + 64];
        snprintf(name, sizeof name, "gradients/%04d.png", i);
        snprintf(path, sizeof path, "%s/%s", a->out_dir, name);
        if (access(path, R_OK) != 0)
            break;
        rc = put_artifact(c, a->id, a->out_dir, name, "image/png", NULL);
    }
    if (rc == DB_OK && !strcmp(a->kind, "backbone") && model_sha[0]) {
        json_t *rep = json_loads(a->report, 0, NULL);
        json_t *m = json_object_get(rep, "model");
        json_t *meta = json_pack("{s:O*,s:O*,s:O*,s:O*}", "mean", json_object_get(m, "mean"), "std",
                                 json_object_get(m, "std"), "input_size", json_object_get(m, "input_size"), "classes",
                                 json_object_get(m, "num_classes"));
        char *ms = json_dumps(meta, JSON_COMPACT);
        const char *q[3] = {a->id, model_sha, ms};
        PQclear(db_exec(c, Q_BB_SET_WEIGHTS, 3, q, &rc));
        free(ms);
        json_decref(meta);
        json_decref(rep);
    }
    if (rc == DB_OK)
        a->stored = true;
    return rc;
}

/* Headline numbers for GET /v1/transfers/{id}. */
static char *summarise(json_t *rep)
{
    json_t *ev = json_object_get(rep, "evaluation");
    json_t *s = json_object();
    json_object_set(s, "clean_accuracy", json_object_get(json_object_get(ev, "clean"), "accuracy"));
    json_t *att = json_object();
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(ev, "attacks"), i, a)
        json_object_set(att, json_string_value(json_object_get(a, "name")), json_object_get(a, "robust_accuracy"));
    json_object_set_new(s, "robust_accuracy", att);
    if (json_object_get(ev, "worst_case"))
        json_object_set(s, "worst_case_accuracy", json_object_get(json_object_get(ev, "worst_case"), "robust_accuracy"));
    json_object_set(s, "examples", json_object_get(ev, "examples"));
    char *text = json_dumps(s, JSON_COMPACT);
    json_decref(s);
    return text;
}

static void count_images(const char *device, json_t *rep)
{
    json_t *tm = json_object_get(rep, "timings");
    double secs = 0, images = 0;
    const char *k;
    json_t *v;
    json_object_foreach(tm, k, v) secs += json_number_value(v);
    images += (double)json_integer_value(json_object_get(json_object_get(rep, "data"), "train")) *
              (double)json_array_size(json_object_get(json_object_get(rep, "training"), "epochs"));
    json_t *ev = json_object_get(rep, "evaluation");
    double steps = 1;
    size_t i;
    json_array_foreach(json_object_get(ev, "attacks"), i, v)
        steps += (double)json_integer_value(json_object_get(v, "steps")) *
                 (double)(json_integer_value(json_object_get(v, "restarts")) > 0
                              ? json_integer_value(json_object_get(v, "restarts"))
                              : 1);
    images += steps * (double)json_integer_value(json_object_get(ev, "examples"));
    metrics_engine_images(device, images, secs);
}

static void simple_update(worker *w, rt_sql_id q, int n, const char *const *p)
{
    for (int attempt = 0; attempt < 30; attempt++) {
        db_conn *c = db_get(w->app->db);
        db_rc rc = DB_UNAVAILABLE;
        if (c) {
            PQclear(db_exec(c, q, n, p, &rc));
            db_put(w->app->db, c);
        }
        if (rc != DB_UNAVAILABLE)
            return;
        sleep(1);
    }
}

static void run_job(worker *w, PGresult *claim)
{
    rt_app *app = w->app;
    running r = {.w = w};
    pthread_mutex_init(&r.lock, NULL);
    snprintf(r.id, sizeof r.id, "%s", PQgetvalue(claim, 0, 0));
    char tenant[24], kind[16], ckpt[65] = "";
    snprintf(tenant, sizeof tenant, "%s", PQgetvalue(claim, 0, 1));
    snprintf(kind, sizeof kind, "%s", PQgetvalue(claim, 0, 2));
    json_t *spec = json_loads(PQgetvalue(claim, 0, 3), 0, NULL);
    int attempt = atoi(PQgetvalue(claim, 0, 4));
    if (!PQgetisnull(claim, 0, 5))
        snprintf(ckpt, sizeof ckpt, "%s", PQgetvalue(claim, 0, 5));
    metrics_queue_wait(atof(PQgetvalue(claim, 0, 6)));
    snprintf(r.out_dir, sizeof r.out_dir, "%s/%s", app->work_dir, r.id);
    mkdir(r.out_dir, 0700);
    rlog(LOG_INFO, "job_started", json_pack("{s:s,s:s,s:s,s:i}", "job", r.id, "kind", kind, "worker", w->name,
                                            "attempt", attempt));
    double t0 = rt_now();
    char err[600] = "";
    db_rc rc = DB_OK;
    json_t *espec = spec ? spec_to_engine(app, tenant, kind, spec, err, sizeof err, &rc) : NULL;
    if (!spec)
        snprintf(err, sizeof err, "the stored spec is not JSON");
    /* a checkpoint from an earlier attempt elsewhere: resume from it */
    char local_ckpt[PATH_MAX + 32];
    snprintf(local_ckpt, sizeof local_ckpt, "%s/checkpoint.safetensors", r.out_dir);
    if (espec && ckpt[0] && access(local_ckpt, R_OK) != 0) {
        char cached[PATH_MAX];
        if (blob_fetch(app->db, ckpt, app->cache_dir, cached, sizeof cached, NULL) == 0) {
            char cmd_src[PATH_MAX];
            snprintf(cmd_src, sizeof cmd_src, "%s", cached);
            FILE *in = fopen(cmd_src, "rb"), *out = fopen(local_ckpt, "wb");
            char buf[1 << 16];
            size_t got;
            while (in && out && (got = fread(buf, 1, sizeof buf, in)) > 0)
                fwrite(buf, 1, got, out);
            if (in)
                fclose(in);
            if (out)
                fclose(out);
        }
    }
    struct stat st;
    if (stat(local_ckpt, &st) == 0)
        r.ckpt_mtime = st.st_mtime;
    eng_status s = ENG_ERR_ARG;
    char *report = NULL;
    if (espec) {
        char *text = json_dumps(espec, JSON_COMPACT);
        eng_job *job = NULL;
        char field[160];
        s = eng_job_parse(text, strlen(text), &job, field, sizeof field);
        free(text);
        if (s == ENG_OK) {
            pthread_t hb;
            pthread_create(&hb, NULL, heartbeat, &r);
            eng_job_hooks hooks = {.progress = on_progress, .cancelled = on_cancelled, .user = &r,
                                   .out_dir = r.out_dir, .device = w->device};
            s = eng_job_run(job, &hooks, &report);
            r.finished = true;
            pthread_join(hb, NULL);
        }
        if (s != ENG_OK)
            snprintf(err, sizeof err, "%s: %s", eng_strerror(s), eng_last_error());
        eng_job_free(job);
    }
    double busy = rt_now() - t0;
    metrics_worker_busy(w->device, busy);
    finish_args fa = {.w = w, .id = r.id, .kind = kind, .out_dir = r.out_dir};
    bool keep_dir = false;
    if (s == ENG_OK) {
        json_t *rep = json_loads(report, 0, NULL);
        /* the request as the user sent it, without this host's cache paths */
        json_object_set(rep, "spec", spec);
        if (json_object_get(rep, "backbone"))
            json_object_set(json_object_get(rep, "backbone"), "weights", json_object_get(spec, "backbone"));
        json_object_set_new(rep, "job", json_pack("{s:s,s:s,s:i,s:s,s:f}", "id", r.id, "kind", kind, "attempt",
                                                  attempt, "worker", w->name, "seconds", busy));
        count_images(w->device, rep);
        fa.report = json_dumps(rep, JSON_COMPACT | JSON_REAL_PRECISION(10));
        fa.summary = summarise(rep);
        json_decref(rep);
        /* report.json on disk gets the same, complete text */
        char rp[PATH_MAX + 16];
        snprintf(rp, sizeof rp, "%s/report.json", r.out_dir);
        FILE *f = fopen(rp, "w");
        if (f) {
            fputs(fa.report, f);
            fclose(f);
        }
        fa.state = "succeeded";
    } else if (s == ENG_ERR_CANCELLED && r.lost) {
        fa.state = NULL; /* another worker has it */
    } else if (s == ENG_ERR_CANCELLED && r.cancel) {
        fa.state = "cancelled";
    } else if ((s == ENG_ERR_CANCELLED && *w->stopping) || rc == DB_UNAVAILABLE) {
        fa.state = NULL;
        keep_dir = true;
        save_checkpoint(&r);
        const char *p[2] = {r.id, w->name};
        simple_update(w, Q_JOB_REQUEUE, 2, p);
        rlog(LOG_INFO, "job_requeued", json_pack("{s:s,s:s}", "job", r.id, "reason",
                                                 rc == DB_UNAVAILABLE ? "database unavailable" : "worker stopping"));
    } else {
        fa.state = "failed";
        fa.error = err;
    }
    if (fa.state) {
        db_rc frc = DB_RETRY;
        for (int attempt_db = 0; attempt_db < 60 && (frc == DB_UNAVAILABLE || frc == DB_RETRY); attempt_db++) {
            if (attempt_db)
                sleep(1);
            frc = db_tx(app->db, finish_tx, &fa);
        }
        rlog(fa.stored ? LOG_INFO : LOG_WARN, "job_finished",
             json_pack("{s:s,s:s,s:b,s:f,s:s?}", "job", r.id, "state", fa.state, "recorded", fa.stored, "seconds", busy,
                       "error", fa.error));
    }
    if (!keep_dir)
        rm_tree(r.out_dir);
    free(fa.report);
    free(fa.summary);
    free(report);
    json_decref(spec);
    json_decref(espec);
    pthread_mutex_destroy(&r.lock);
}

/* A connection of its own that LISTENs for new jobs; NULL while the database is away. */
static PGconn *listen_conn(rt_app *app)
{
    PGconn *pg = db_connect(app->db);
    if (PQstatus(pg) != CONNECTION_OK) {
        PQfinish(pg);
        return NULL;
    }
    PGresult *r = PQexec(pg, "LISTEN rtaas_jobs");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    rt_app *app = w->app;
    PGconn *listen = NULL;
    char lease[16];
    snprintf(lease, sizeof lease, "%d", app->cfg.lease_seconds);
    while (!*w->stopping) {
        if (!listen)
            listen = listen_conn(app);
        PGresult *claim = NULL;
        db_conn *c = db_get(app->db);
        if (c) {
            db_rc rc;
            PGresult *ex = db_exec(c, Q_JOB_EXPIRE, 0, NULL, &rc);
            for (int i = 0; rc == DB_OK && i < PQntuples(ex); i++)
                rlog(LOG_WARN, "job_expired", json_pack("{s:s}", "job", PQgetvalue(ex, i, 0)));
            PQclear(ex);
            const char *p[2] = {w->name, lease};
            claim = db_exec(c, Q_JOB_CLAIM, 2, p, &rc);
            if (rc != DB_OK || PQntuples(claim) != 1) {
                PQclear(claim);
                claim = NULL;
            }
            db_put(app->db, c);
        }
        if (claim) {
            run_job(w, claim);
            PQclear(claim);
            continue;
        }
        /* nothing to do: wait for a NOTIFY, a stop, or a lease that may run out */
        struct pollfd fds[2] = {{.fd = w->wake[0], .events = POLLIN}, {.fd = listen ? PQsocket(listen) : -1,
                                                                        .events = POLLIN}};
        int wait_ms = listen ? 1000 * (app->cfg.lease_seconds < 10 ? app->cfg.lease_seconds : 10) : 1000;
        poll(fds, listen ? 2 : 1, wait_ms);
        if (listen) {
            if (!PQconsumeInput(listen)) {
                PQfinish(listen);
                listen = NULL;
            } else {
                PGnotify *nt;
                while ((nt = PQnotifies(listen)))
                    PQfreemem(nt);
            }
        }
    }
    if (listen)
        PQfinish(listen);
    return NULL;
}

/* Jobs leased by an earlier process on this host that is gone (killed, crashed): their leases
 * end now instead of after RTAAS_LEASE_SECONDS. A name with our own pid is stale too (a
 * container restarts as pid 1). */
static void release_dead(rt_app *app, const char *host)
{
    db_conn *c = db_get(app->db);
    if (!c)
        return;
    char like[96];
    snprintf(like, sizeof like, "%s:%%", host);
    const char *p[1] = {like};
    db_rc rc;
    PGresult *r = db_exec(c, Q_JOB_HOST_WORKERS, 1, p, &rc);
    for (int i = 0; rc == DB_OK && i < PQntuples(r); i++) {
        const char *name = PQgetvalue(r, i, 0);
        int pid = atoi(name + strlen(host) + 1);
        if (pid <= 0 || (pid != getpid() && (kill(pid, 0) == 0 || errno != ESRCH)))
            continue;
        const char *q[1] = {name};
        db_rc rc2;
        PGresult *rel = db_exec(c, Q_JOB_RELEASE, 1, q, &rc2);
        for (int k = 0; rc2 == DB_OK && k < PQntuples(rel); k++)
            rlog(LOG_WARN, "lease_released", json_pack("{s:s,s:s,s:s}", "job", PQgetvalue(rel, k, 0), "worker", name,
                                                      "reason", "its process is gone"));
        PQclear(rel);
    }
    PQclear(r);
    db_put(app->db, c);
}

rt_workers *workers_start(rt_app *app, char *err, size_t n)
{
    rt_workers *ws = calloc(1, sizeof *ws);
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    release_dead(app, host);
    char devs[256];
    snprintf(devs, sizeof devs, "%s", app->cfg.devices);
    int count = 0;
    for (char *save = NULL, *d = strtok_r(devs, ",", &save); d; d = strtok_r(NULL, ",", &save))
        count++;
    ws->w = calloc((size_t)(count ? count : 1), sizeof *ws->w);
    snprintf(devs, sizeof devs, "%s", app->cfg.devices);
    for (char *save = NULL, *d = strtok_r(devs, ",", &save); d; d = strtok_r(NULL, ",", &save)) {
        while (*d == ' ')
            d++;
        if (strcmp(d, "cpu") && strncmp(d, "cuda", 4)) {
            snprintf(err, n, "RTAAS_DEVICES: unknown device '%s' (cpu, cuda:N)", d);
            workers_stop(ws);
            return NULL;
        }
        if (!strncmp(d, "cuda", 4) && eng_cuda_device_count() <= 0) {
            snprintf(err, n, "RTAAS_DEVICES names %s, but this build or host has no CUDA device", d);
            workers_stop(ws);
            return NULL;
        }
        worker *w = &ws->w[ws->n];
        w->app = app;
        w->stopping = &ws->stopping;
        snprintf(w->device, sizeof w->device, "%s", d);
        snprintf(w->name, sizeof w->name, "%s:%d:%s", host, (int)getpid(), d);
        if (pipe(w->wake)) {
            snprintf(err, n, "pipe: %s", strerror(errno));
            workers_stop(ws);
            return NULL;
        }
        pthread_create(&w->thread, NULL, worker_main, w);
        ws->n++;
        rlog(LOG_INFO, "worker_started", json_pack("{s:s,s:s}", "worker", w->name, "device", d));
    }
    return ws;
}

void workers_stop(rt_workers *ws)
{
    if (!ws)
        return;
    ws->stopping = true;
    for (int i = 0; i < ws->n; i++)
        if (write(ws->w[i].wake[1], "x", 1) < 0)
            (void)0;
    for (int i = 0; i < ws->n; i++) {
        pthread_join(ws->w[i].thread, NULL);
        close(ws->w[i].wake[0]);
        close(ws->w[i].wake[1]);
    }
    free(ws->w);
    free(ws);
}
