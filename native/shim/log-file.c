#include "log-file.h"

#include <fcntl.h>
#include <sys/stat.h>

int log_file_open(struct log_file *log, const char *path, uint64_t max, unsigned keep, struct shim_error *err) {
  struct stat st;
  log->path = path;
  log->max = max;
  log->keep = keep;
  log->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (log->fd < 0 || fstat(log->fd, &st) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open log `%s`", path);
    return -1;
  }
  log->size = st.st_size;
  return 0;
}

static void rotate(struct log_file *log) {
  char from[4096], to[4096];
  for (unsigned i = log->keep; i > 1; i--) {
    snprintf(from, sizeof(from), "%s.%u", log->path, i - 1);
    snprintf(to, sizeof(to), "%s.%u", log->path, i);
    rename(from, to); /* a missing older generation is fine */
  }
  snprintf(to, sizeof(to), "%s.1", log->path);
  close(log->fd);
  if (log->keep == 0 || rename(log->path, to) < 0) unlink(log->path);
  log->fd = open(log->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  log->size = 0;
}

static int write_all(struct log_file *log, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(log->fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    buf += n;
    len -= n;
    log->size += n;
  }
  return 0;
}

/* Splits output at the size limit, so no generation grows past it. */
void log_file_write(struct log_file *log, const char *buf, size_t len) {
  while (len > 0) {
    size_t n = len;
    if (log->max) {
      if (log->size >= log->max) rotate(log);
      if (n > log->max - log->size) n = log->max - log->size;
    }
    /* disk full: the service keeps running, this output is lost */
    if (log->fd < 0 || write_all(log, buf, n) < 0) return;
    buf += n;
    len -= n;
  }
}
