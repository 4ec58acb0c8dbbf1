/* fuzz_config: the config loader (lua/mkv_config.lua run by core/config.c) on arbitrary
 * config files and flag values. Properties: no crash, no leak; it either loads a config
 * or fails with a one-line error (no newline in it). The input is split at the first NUL:
 * the file's text, then "name=value" flags separated by NULs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mkv/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[64];
  if (!path[0]) snprintf(path, sizeof(path), "/tmp/mkv-fuzz-config-%d.lua", (int)getpid());
  const uint8_t *nul = memchr(data, 0, size);
  size_t flen = nul ? (size_t)(nul - data) : size;
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  fwrite(data, 1, flen, f);
  fclose(f);
  mkv_flag_t flags[8];
  char *owned[8];
  int nflags = 0;
  if (nul) {
    const char *p = (const char *)nul + 1, *end = (const char *)data + size;
    while (p < end && nflags < 8) {
      const char *e = memchr(p, 0, (size_t)(end - p));
      if (!e) e = end;
      char *s = strndup(p, (size_t)(e - p));
      char *eq = strchr(s, '=');
      owned[nflags] = s;
      if (eq) {
        *eq = 0;
        int is_bool;
        if (mkv_config_flag_kind(s, &is_bool) >= 0) {
          flags[nflags].name = s;
          flags[nflags].value = eq + 1;
          nflags++;
        } else {
          free(s);
        }
      } else {
        free(s);
      }
      p = e + 1;
    }
  }
  mkv_config_t cfg;
  char *err = NULL;
  if (mkv_config_load(&cfg, path, flags, nflags, "server", &err) == 0) {
    mkv_config_free(&cfg);
  } else {
    if (err == NULL || strchr(err, '\n') != NULL) abort();
    free(err);
  }
  for (int i = 0; i < nflags; i++) free(owned[i]);
  return 0;
}
