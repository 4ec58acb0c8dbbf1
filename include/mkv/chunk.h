/* chunk.h: a slice of a body, reference-counted, shared by every write that sends it:
 * a PUT's body slice is copied once into a chunk and handed to each replica's upload
 * (upstream.h), each dropping one reference when the kernel has the bytes; the owner
 * learns from the release callback when the last one is done (fanout.c, admin_xfer.c).
 *
 * A chunk belongs to the thread that made it (the pool is per thread). */
#ifndef MKV_CHUNK_H
#define MKV_CHUNK_H

#include <stddef.h>

typedef struct mkv_chunk_s mkv_chunk_t;

typedef void (*mkv_chunk_release_cb)(mkv_chunk_t *ch);

struct mkv_chunk_s {
  int refs;
  size_t len;
  size_t cap;                   /* room in bytes[] */
  mkv_chunk_release_cb release; /* called once, when the last reference goes */
  void *data;                   /* the release callback's context */
  char bytes[];
};

/* Returns owned: a copy of p with `refs` references. */
mkv_chunk_t *mkv_chunk_new(const void *p, size_t len, int refs, mkv_chunk_release_cb release,
                           void *data);
/* Returns owned: an empty chunk (len 0) with room for `cap` bytes, to be filled. */
mkv_chunk_t *mkv_chunk_alloc(size_t cap, int refs, mkv_chunk_release_cb release, void *data);
void mkv_chunk_unref(mkv_chunk_t *ch);
/* Frees a chunk no reference is held to (without its release callback); NULL is a
 * no-op, as for free(). Chunks of MKV_CHUNK_POOLED bytes go back to a small per-thread
 * pool. */
void mkv_chunk_free(mkv_chunk_t *ch);
/* Frees the calling thread's pool (at the end of a loop thread). */
void mkv_chunk_pool_drain(void);

/* The streaming chunk size, recycled per thread: a 1 GB body is 16384 of them, and a
 * malloc + free each cost page faults, as glibc gives a thread arena's top back with
 * madvise and the next chunk faults it in again (26 % of mkv's CPU on a 1 GB PUT). */
#define MKV_CHUNK_POOLED 65536

#endif
