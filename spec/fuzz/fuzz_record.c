/* fuzz_record: the index record decoder (records come from disk: an index written by the
 * Go original, or damaged). Properties: no crash; a record that decodes encodes back to
 * bytes that decode to the same record. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mkv/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mkv_record_t r;
  /* a copy of exactly `size` bytes, so ASan sees any read past the end */
  char *v = malloc(size ? size : 1);
  memcpy(v, data, size);
  if (mkv_record_decode(v, size, &r) == 0) {
    size_t nvol = 0;
    const char *end = r.volumes + r.volumes_len, *item;
    size_t ilen;
    mkv_volumes_iter_t it;
    mkv_volumes_iter(&it, r.volumes, r.volumes_len);
    while (mkv_volumes_next(&it, &item, &ilen)) {
      if (item < r.volumes || item + ilen > end) abort();
      if (++nvol > size + 1) abort(); /* it must end */
    }
    mkv_buf_t b;
    mkv_buf_init(&b);
    /* a write in progress encodes as mkv's own form, whichever form it was read in */
    int state = r.writing ? MKV_REC_WRITING : r.deleted ? MKV_REC_DELETED : MKV_REC_LIVE;
    mkv_record_encode(&b, state, r.has_hash ? r.hash : NULL, r.volumes, r.volumes_len);
    mkv_record_t r2;
    if (mkv_record_decode(b.data, b.len, &r2) != 0) abort();
    if (r2.deleted != r.deleted || r2.writing != r.writing || r2.has_hash != r.has_hash) abort();
    if (r2.fork_init) abort(); /* mkv never writes the fork's form */
    if (r.has_hash && memcmp(r.hash, r2.hash, 32) != 0) abort();
    if (r2.volumes_len != r.volumes_len || memcmp(r2.volumes, r.volumes, r.volumes_len) != 0)
      abort();
    mkv_buf_free(&b);
  }
  free(v);
  return 0;
}
