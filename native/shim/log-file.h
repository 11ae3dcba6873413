/* The container's output log: appended as it comes, rotated by size into
 * LOG.1 .. LOG.KEEP so that a chatty service cannot fill the disk. */
#ifndef FLEETLET_LOG_FILE_H
#define FLEETLET_LOG_FILE_H

#include "shim.h"

struct log_file {
  const char *path;
  int fd;
  uint64_t size, max;
  unsigned keep;
};

int log_file_open(struct log_file *log, const char *path, uint64_t max, unsigned keep, struct shim_error *err);
void log_file_write(struct log_file *log, const char *buf, size_t len);

#endif
