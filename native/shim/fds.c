/* Descriptors that must not reach a container. The shim is handed the
 * status pipe (fd 3) and the config memfd (fd 4), and may inherit whatever
 * the agent itself inherited; a container holding the status pipe could hang
 * a start or write a false `err` line, and a leaked directory is a way out of
 * the rootfs. So every descriptor from `low` up is closed, or marked
 * close-on-exec where the process still needs some of them until its exec:
 *
 *   close_range(low, ~0U, 0)                     Linux 5.9 and later;
 *   close_range(low, ~0U, CLOSE_RANGE_CLOEXEC)   Linux 5.11 and later;
 *   otherwise each descriptor listed in /proc/self/fd (close_range answers
 *   ENOSYS before 5.9, and EINVAL to the flag on 5.9 and 5.10).
 *
 * The init marks rather than closes: its error pipe must stay open until the
 * exec, which is how the shim learns the exec happened. The listing uses
 * getdents64 into a stack buffer, no malloc, so it is safe between fork and
 * exec. `scan` forces the listing, for tests on kernels that have the flag. */
#include "shim.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/close_range.h>
#include <sys/syscall.h>

struct linux_dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

/* A /proc/self/fd entry's number; -1 for "." and "..". */
static int fd_number(const char *name) {
  int fd = 0;
  if (!*name) return -1;
  for (; *name; name++) {
    if (*name < '0' || *name > '9' || fd > (INT_MAX - 9) / 10) return -1;
    fd = fd * 10 + (*name - '0');
  }
  return fd;
}

static int release_fd(int fd, int how) {
  if (how == FDS_CLOSE) return close(fd) < 0 && errno != EINTR ? -1 : 0;
  int flags = fcntl(fd, F_GETFD);
  return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

static int release_listed(int low, int how, struct shim_error *err) {
  char buf[4096] __attribute__((aligned(8)));
  cleanup_fd int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open `/proc/self/fd` to release inherited descriptors");
    return -1;
  }
  for (;;) {
    long n = syscall(SYS_getdents64, dir, buf, sizeof(buf));
    if (n < 0) {
      set_error(err, EXIT_RUNTIME, errno, "list `/proc/self/fd`");
      return -1;
    }
    if (n == 0) return 0;
    for (long off = 0; off < n;) {
      const struct linux_dirent64 *d = (const struct linux_dirent64 *)(buf + off);
      off += d->d_reclen;
      int fd = fd_number(d->d_name);
      if (fd < low || fd == dir) continue;
      if (release_fd(fd, how) < 0) {
        set_error(err, EXIT_RUNTIME, errno, "%s fd %d", how == FDS_CLOSE ? "close" : "mark close-on-exec", fd);
        return -1;
      }
    }
  }
}

int fds_release_from(int low, int how, int scan, struct shim_error *err) {
  unsigned flags = how == FDS_CLOSE ? 0 : CLOSE_RANGE_CLOEXEC;
  if (!scan) {
    if (syscall(SYS_close_range, (unsigned)low, ~0U, flags) == 0) return 0;
    if (errno != ENOSYS && errno != EINVAL) {
      set_error(err, EXIT_RUNTIME, errno, "close_range(%d, ~0U, %s)", low, flags ? "CLOSE_RANGE_CLOEXEC" : "0");
      return -1;
    }
  }
  return release_listed(low, how, err);
}
