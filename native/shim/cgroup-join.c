/* Joining a container's cgroups, one directory per hierarchy.
 *
 * Moving a process into a cgroup through `cgroup.procs` takes the kernel's
 * global threadgroup lock for writing, and that waits for an RCU grace
 * period whenever no other move happened just before: 5 to 14 ms measured
 * on an idle host (kernel 6.18), against 0.05 ms for the same move made
 * through a v1 hierarchy's `tasks` file by the process itself, which the
 * kernel does without that lock. So a process that joins by itself writes
 * "0" (itself) to `tasks` where the hierarchy has one (v1), and to
 * `cgroup.procs` where it does not (v2). A hierarchy is v1 exactly when its
 * directories hold a `tasks` file: the shim and the init apply that same
 * test, so each v1 directory is joined by the init and each v2 one by the
 * shim, never both nor neither. Older kernels take the lock either way; the
 * writes are the same and only slower there. */
#include "shim.h"

#include <fcntl.h>

static int open_in(const char *dir, const char *file, char *path, size_t len) {
  snprintf(path, len, "%s/%s", dir, file);
  return open(path, O_WRONLY | O_CLOEXEC);
}

/* True when `dir` belongs to a v1 hierarchy, which the process joins itself. */
static int cgroup_is_v1(const char *dir) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/tasks", dir);
  return access(path, F_OK) == 0;
}

/* Moves `pid` into each v2 directory of `dirs`, through its cgroup.procs
 * (the v1 ones it joins by itself). */
int cgroups_add_pid_v2(const struct str_list *dirs, pid_t pid, struct shim_error *err) {
  char path[4096], value[32];
  int len = snprintf(value, sizeof(value), "%d", pid);
  for (size_t i = 0; i < dirs->len; i++) {
    if (cgroup_is_v1(dirs->items[i])) continue;
    cleanup_fd int fd = open_in(dirs->items[i], "cgroup.procs", path, sizeof(path));
    if (fd < 0 || write(fd, value, len) != len) {
      set_error(err, EXIT_RUNTIME, errno, "join cgroup `%s`", dirs->items[i]);
      return -1;
    }
  }
  return 0;
}

/* Opens the `tasks` file of each v1 directory of `dirs` (fds[i], or -1 for a
 * v2 one), for cgroups_join_opened later: the init opens them while the
 * host's cgroup mounts are still in its view, before its pivot_root. */
int cgroups_open_v1(const struct str_list *dirs, int *fds, struct shim_error *err) {
  char path[4096];
  for (size_t i = 0; i < dirs->len; i++) {
    fds[i] = open_in(dirs->items[i], "tasks", path, sizeof(path));
    if (fds[i] >= 0 || errno == ENOENT) continue;
    set_error(err, EXIT_RUNTIME, errno, "open `%s`", path);
    while (i > 0) close(fds[--i]);
    return -1;
  }
  return 0;
}

/* Moves this (single-threaded) process into the cgroups opened by
 * cgroups_open_v1, and closes them all. */
int cgroups_join_opened(const struct str_list *dirs, int *fds, struct shim_error *err) {
  int r = 0;
  for (size_t i = 0; i < dirs->len; i++) {
    if (fds[i] < 0) continue;
    if (r == 0 && write(fds[i], "0", 1) != 1) {
      set_error(err, EXIT_RUNTIME, errno, "join cgroup `%s`", dirs->items[i]);
      r = -1;
    }
    close(fds[i]);
  }
  return r;
}

/* Moves this (single-threaded) process into every cgroup of `dirs`. */
int cgroups_join_self(const struct str_list *dirs, struct shim_error *err) {
  char path[4096];
  for (size_t i = 0; i < dirs->len; i++) {
    cleanup_fd int fd = open_in(dirs->items[i], "tasks", path, sizeof(path));
    if (fd < 0 && errno == ENOENT) fd = open_in(dirs->items[i], "cgroup.procs", path, sizeof(path));
    if (fd < 0 || write(fd, "0", 1) != 1) {
      set_error(err, EXIT_RUNTIME, errno, "join cgroup `%s`", dirs->items[i]);
      return -1;
    }
  }
  return 0;
}
