/* Prometheus metrics, kept in memory and rendered as text at /metrics. */
#ifndef RT_METRICS_H
#define RT_METRICS_H

#include "db.h"

void metrics_request(const char *method, const char *route, int status, double seconds);
void metrics_queue_wait(double seconds);
void metrics_worker_busy(const char *device, double seconds);
/* Images through the engine (training examples, evaluated and attacked examples). */
void metrics_engine_images(const char *device, double images, double seconds);
/* The text exposition; jobs by state come from the database (skipped when it is down). */
char *metrics_render(db *d, size_t *len);

#endif
