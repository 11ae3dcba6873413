/* Joining a container's cgroups, one directory per hierarchy.
 *
 * Moving a process into a cgroup through `cgroup.procs` takes the kernel's
 * global threadgroup lock for writing, and that waits for an RCU grace
 * period whenever no other move happened just before: 5 to 14 ms measured
 * on an idle host (kernel 6.18), against 0.05 ms for the same move made
 * through a v1 hierarchy's `tasks` file by the process itself, which the
 * kernel does without that lock. So a process that joins by itself writes
 * "0" (itself) to `tasks` where the hierarchy has one (v1), and to
 * `cgroup.procs` where it does not (v2). Every choice here between the two
 * rests on one test, cgroup_is_v2, which the shim, the init and the exec
 * helper all apply: each v1 directory is joined by the init and each v2 one
 * by the shim, never both nor neither. Older kernels take the lock either way; the
 * writes are the same and only slower there.
 *
 * On v2, where there is no `tasks`, the init is instead born in its cgroup:
 * clone3 with CLONE_INTO_CGROUP (Linux 5.7) places the child at fork, which
 * takes that lock only for reading. Where clone3 or the flag is refused,
 * the init is forked and moved through `cgroup.procs`. */
#include "shim.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/syscall.h>

static int open_in(const char *dir, const char *file, char *path, size_t len) {
  snprintf(path, len, "%s/%s", dir, file);
  return open(path, O_WRONLY | O_CLOEXEC);
}

/* True when `dir` is in a cgroup2 hierarchy: asked of its parent's file
 * system, which the runtime made, so the answer is the same before the shim
 * makes `dir` and after. */
static int cgroup_is_v2(const char *dir) {
  char parent[4096];
  snprintf(parent, sizeof(parent), "%s", dir);
  char *slash = strrchr(parent, '/');
  if (slash && slash != parent) *slash = '\0';
  struct statfs fs;
  return statfs(parent, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
}

/* The v2 directory of `dirs` (there is at most one), or NULL. */
const char *cgroup_v2_dir(const struct str_list *dirs) {
  for (size_t i = 0; i < dirs->len; i++)
    if (cgroup_is_v2(dirs->items[i])) return dirs->items[i];
  return NULL;
}

/* fork(), the child born in the cgroup `dir` (v2) when it is given and
 * `allowed`. *placed says whether it was: when not, the caller moves it.
 * The caller is single-threaded, as clone3 without a stack requires. */
pid_t fork_into_cgroup(const char *dir, int allowed, int *placed) {
  *placed = 0;
  if (dir && allowed) {
#if defined(CLONE_INTO_CGROUP) && defined(SYS_clone3)
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      struct clone_args args;
      memset(&args, 0, sizeof(args));
      args.flags = CLONE_INTO_CGROUP;
      args.exit_signal = SIGCHLD;
      args.cgroup = (uint64_t)fd;
      long pid = syscall(SYS_clone3, &args, sizeof(args));
      close(fd); /* in the child too */
      if (pid == 0) return 0;
      if (pid > 0) {
        *placed = 1;
        return (pid_t)pid;
      }
      /* Whatever the refusal, the fork and move either work or fail
       * themselves, naming the file: ENOSYS or EPERM from a seccomp
       * profile that predates clone3 (a runtime's, when the agent itself
       * runs in a container), E2BIG or EINVAL from a kernel before 5.7. */
    }
#endif
  }
  return fork();
}

/* Moves `pid` into each v2 directory of `dirs`, through its cgroup.procs
 * (the v1 ones it joins by itself). */
int cgroups_add_pid_v2(const struct str_list *dirs, pid_t pid, struct shim_error *err) {
  char path[4096], value[32];
  int len = snprintf(value, sizeof(value), "%d", pid);
  for (size_t i = 0; i < dirs->len; i++) {
    if (!cgroup_is_v2(dirs->items[i])) continue;
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
    fds[i] = -1;
    if (cgroup_is_v2(dirs->items[i])) continue;
    fds[i] = open_in(dirs->items[i], "tasks", path, sizeof(path));
    if (fds[i] >= 0) continue;
    set_error(err, EXIT_RUNTIME, errno, "open `%s`", path);
    while (i > 0)
      if (fds[--i] >= 0) close(fds[i]);
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
    const char *file = cgroup_is_v2(dirs->items[i]) ? "cgroup.procs" : "tasks";
    cleanup_fd int fd = open_in(dirs->items[i], file, path, sizeof(path));
    if (fd < 0 || write(fd, "0", 1) != 1) {
      set_error(err, EXIT_RUNTIME, errno, "join cgroup `%s`", dirs->items[i]);
      return -1;
    }
  }
  return 0;
}
