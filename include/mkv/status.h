/* status.h: the status listener (statussrv.c) -- a read-only page, /metrics and /health
 * on status_listen, for people and scrapers apart from the admin listener, on a thread
 * of its own. main.c binds it and starts its worker with mkv_status_handler. */
#ifndef MKV_STATUS_H
#define MKV_STATUS_H

struct mkv_worker_s;
struct mkv_handler_s;

extern const struct mkv_handler_s mkv_status_handler;

/* The version the page shows (main's); call before the thread starts. */
void mkv_status_set_version(const char *version);
/* The worker's on_start and on_drain: the rate sampler's timer on its loop. */
void mkv_status_thread_start(struct mkv_worker_s *w);
void mkv_status_thread_drain(struct mkv_worker_s *w);

#endif
