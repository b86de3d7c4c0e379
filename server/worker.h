/* Workers: one thread per device of RTAAS_DEVICES. Each claims a queued job (or one whose
 * lease ran out) with FOR UPDATE SKIP LOCKED, woken by LISTEN/NOTIFY, renews its lease while
 * the engine runs, writes progress at most once a second, keeps the training checkpoint in
 * the database, and stores the artifacts and report with the final state in one transaction,
 * so that a job finishes exactly once. */
#ifndef RT_WORKER_H
#define RT_WORKER_H

#include "http.h"

typedef struct rt_workers rt_workers;

/* Starts a worker per device (none when RTAAS_DEVICES is empty). */
rt_workers *workers_start(rt_app *app, char *err, size_t err_len);
/* Stops taking jobs, interrupts running ones and puts them back in the queue (with their last
 * checkpoint), and joins the threads. */
void workers_stop(rt_workers *w);

/* Deletes a folder tree (a job's work dir). */
void rm_tree(const char *path);

#endif
