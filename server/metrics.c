#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SERIES 256
#define MAX_DEVICES 16

static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
#define NB (sizeof buckets / sizeof buckets[0])
static const double wait_buckets[] = {0.1, 1, 5, 15, 60, 300, 900, 3600};
#define NW (sizeof wait_buckets / sizeof wait_buckets[0])

typedef struct {
    char method[8], route[48];
    int status;
    unsigned long long count;
} req_series;

typedef struct {
    char route[48];
    unsigned long long b[NB], count;
    double sum;
} lat_series;

typedef struct {
    char device[24];
    double busy, images, engine_seconds;
} dev_series;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static req_series reqs[MAX_SERIES];
static int n_reqs;
static lat_series lats[64];
static int n_lats;
static unsigned long long wait_b[NW], wait_count;
static double wait_sum;
static dev_series devs[MAX_DEVICES];
static int n_devs;

void metrics_request(const char *method, const char *route, int status, double s)
{
    pthread_mutex_lock(&lock);
    int i;
    for (i = 0; i < n_reqs; i++)
        if (reqs[i].status == status && !strcmp(reqs[i].route, route) && !strcmp(reqs[i].method, method))
            break;
    if (i == n_reqs && n_reqs < MAX_SERIES) {
        snprintf(reqs[i].method, sizeof reqs[i].method, "%s", method);
        snprintf(reqs[i].route, sizeof reqs[i].route, "%s", route);
        reqs[i].status = status;
        n_reqs++;
    }
    if (i < MAX_SERIES)
        reqs[i].count++;
    for (i = 0; i < n_lats; i++)
        if (!strcmp(lats[i].route, route))
            break;
    if (i == n_lats && n_lats < 64)
        snprintf(lats[n_lats++].route, sizeof lats[i].route, "%s", route);
    if (i < 64) {
        for (size_t b = 0; b < NB; b++)
            lats[i].b[b] += s <= buckets[b];
        lats[i].count++;
        lats[i].sum += s;
    }
    pthread_mutex_unlock(&lock);
}

void metrics_queue_wait(double s)
{
    pthread_mutex_lock(&lock);
    for (size_t b = 0; b < NW; b++)
        wait_b[b] += s <= wait_buckets[b];
    wait_count++;
    wait_sum += s;
    pthread_mutex_unlock(&lock);
}

static dev_series *dev(const char *name)
{
    for (int i = 0; i < n_devs; i++)
        if (!strcmp(devs[i].device, name))
            return &devs[i];
    if (n_devs == MAX_DEVICES)
        return NULL;
    snprintf(devs[n_devs].device, sizeof devs[n_devs].device, "%s", name);
    return &devs[n_devs++];
}

void metrics_worker_busy(const char *device, double s)
{
    pthread_mutex_lock(&lock);
    dev_series *d = dev(device);
    if (d)
        d->busy += s;
    pthread_mutex_unlock(&lock);
}

void metrics_engine_images(const char *device, double images, double s)
{
    pthread_mutex_lock(&lock);
    dev_series *d = dev(device);
    if (d) {
        d->images += images;
        d->engine_seconds += s;
    }
    pthread_mutex_unlock(&lock);
}

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf;

static void out(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf ? b->buf + b->len : NULL, b->buf ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (b->buf && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 8192) + (size_t)n;
        char *nb = realloc(b->buf, cap);
        if (!nb)
            return;
        b->buf = nb;
        b->cap = cap;
    }
}

char *metrics_render(db *d, size_t *len)
{
    sbuf b = {0};
    out(&b, "# HELP rtaas_jobs Jobs by state.\n# TYPE rtaas_jobs gauge\n");
    static const char *const states[] = {"queued", "running", "succeeded", "failed", "cancelled"};
    long long counts[5] = {0};
    bool have = false;
    db_conn *c = db_get(d);
    if (c) {
        PGresult *r = db_exec(c, Q_JOBS_BY_STATE, 0, NULL, NULL);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            have = true;
            for (int i = 0; i < PQntuples(r); i++)
                for (int s = 0; s < 5; s++)
                    if (!strcmp(PQgetvalue(r, i, 0), states[s]))
                        counts[s] = atoll(PQgetvalue(r, i, 1));
        }
        PQclear(r);
        db_put(d, c);
    }
    for (int s = 0; have && s < 5; s++)
        out(&b, "rtaas_jobs{state=\"%s\"} %lld\n", states[s], counts[s]);
    out(&b, "# HELP rtaas_database_up Whether the database answered this scrape.\n# TYPE rtaas_database_up gauge\n"
            "rtaas_database_up %d\n", have);
    pthread_mutex_lock(&lock);
    out(&b, "# HELP rtaas_http_requests_total HTTP requests by route and status.\n"
            "# TYPE rtaas_http_requests_total counter\n");
    for (int i = 0; i < n_reqs; i++)
        out(&b, "rtaas_http_requests_total{method=\"%s\",route=\"%s\",status=\"%d\"} %llu\n", reqs[i].method,
            reqs[i].route, reqs[i].status, reqs[i].count);
    out(&b, "# HELP rtaas_http_request_duration_seconds Request latency.\n"
            "# TYPE rtaas_http_request_duration_seconds histogram\n");
    for (int i = 0; i < n_lats; i++) {
        for (size_t k = 0; k < NB; k++)
            out(&b, "rtaas_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n", lats[i].route,
                buckets[k], lats[i].b[k]);
        out(&b, "rtaas_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n", lats[i].route,
            lats[i].count);
        out(&b, "rtaas_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", lats[i].route, lats[i].sum);
        out(&b, "rtaas_http_request_duration_seconds_count{route=\"%s\"} %llu\n", lats[i].route, lats[i].count);
    }
    out(&b, "# HELP rtaas_queue_wait_seconds Time from submission to a worker's claim.\n"
            "# TYPE rtaas_queue_wait_seconds histogram\n");
    for (size_t k = 0; k < NW; k++)
        out(&b, "rtaas_queue_wait_seconds_bucket{le=\"%g\"} %llu\n", wait_buckets[k], wait_b[k]);
    out(&b, "rtaas_queue_wait_seconds_bucket{le=\"+Inf\"} %llu\nrtaas_queue_wait_seconds_sum %.3f\n"
            "rtaas_queue_wait_seconds_count %llu\n", wait_count, wait_sum, wait_count);
    out(&b, "# HELP rtaas_worker_busy_seconds_total Time workers spent running jobs.\n"
            "# TYPE rtaas_worker_busy_seconds_total counter\n");
    for (int i = 0; i < n_devs; i++)
        out(&b, "rtaas_worker_busy_seconds_total{device=\"%s\"} %.3f\n", devs[i].device, devs[i].busy);
    out(&b, "# HELP rtaas_engine_images_total Images through the engine (training, evaluation, attacks).\n"
            "# TYPE rtaas_engine_images_total counter\n");
    for (int i = 0; i < n_devs; i++)
        out(&b, "rtaas_engine_images_total{device=\"%s\"} %.0f\n", devs[i].device, devs[i].images);
    out(&b, "# HELP rtaas_engine_images_per_second Engine throughput over the jobs run so far.\n"
            "# TYPE rtaas_engine_images_per_second gauge\n");
    for (int i = 0; i < n_devs; i++)
        out(&b, "rtaas_engine_images_per_second{device=\"%s\"} %.2f\n", devs[i].device,
            devs[i].engine_seconds > 0 ? devs[i].images / devs[i].engine_seconds : 0.0);
    pthread_mutex_unlock(&lock);
    *len = b.len;
    return b.buf;
}
