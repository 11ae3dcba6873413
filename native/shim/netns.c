/* `fleetlet-shim netns add PATH`: a new network namespace with `lo` up,
 * pinned by a bind mount of /proc/self/ns/net on PATH (a new, empty file), so
 * that the runtime can set its links up before a container joins it and it
 * outlives the container's processes until `netns del PATH` unpins it.
 * `del` is idempotent: a PATH that is gone or no longer mounted is fine.
 * `pin PID START PATH` pins again, on the existing PATH, the namespace of a
 * container's running init (checked by its start time once the namespace is
 * open): a pin is a mount, and an agent started in a mount namespace of its
 * own (as systemd starts a unit with ProtectSystem or PrivateTmp) does not
 * see the previous agent's. */
#include "shim.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>

static int netns_add(const char *path, struct shim_error *err) {
  cleanup_fd int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (fd < 0) {
    set_error(err, EXIT_RUNTIME, errno, "create `%s`", path);
    return -1;
  }
  if (unshare(CLONE_NEWNET) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "unshare the network namespace");
    unlink(path);
    return -1;
  }
  if (loopback_up(err) < 0 || mount("/proc/self/ns/net", path, NULL, MS_BIND, NULL) < 0) {
    if (!err->code) set_error(err, EXIT_RUNTIME, errno, "pin the network namespace on `%s`", path);
    unlink(path);
    return -1;
  }
  return 0;
}

/* A container's own network namespace, made by the shim rather than by the
 * init: it is the dearest namespace to make (the loopback device and every
 * per-namespace sysctl table, some 0.4 ms here), and the shim makes it, `lo`
 * up, while the init mounts the overlay, /proc and /dev. The init joins it
 * just before mounting /sys. The shim stays in it, which costs nothing: it
 * uses no network and, once `lo` is up, holds and opens no socket (keep it
 * so: a socket of the shim's would be reachable from the container), and it
 * ends with the container. The kernel memory the namespace takes at its
 * making (about 90 kB measured on 6.x) is charged to the shim's cgroup, the
 * agent's, as it always was on cgroup v1, where the init joins its cgroups
 * only after its rootfs; on v2 the init born in its cgroup used to pay it. */
int netns_make_for_init(int go_fd, struct shim_error *err) {
  char step = 'n';
  if (unshare(CLONE_NEWNET) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "unshare the network namespace");
    return -1;
  }
  if (loopback_up(err) < 0) return -1;
  if (write(go_fd, &step, 1) == 1) return 0;
  set_error(err, EXIT_RUNTIME, errno, "hand the network namespace to the container init");
  return -1;
}

/* In the init: waits for the shim's 'n', then joins the shim's namespace,
 * through the host's /proc, still mounted while the rootfs is being built.
 * The namespace is checked to be the shim's by its start time once open: a
 * shim killed meanwhile, its pid taken by another process, fails the start. */
int netns_join_shims(const struct netns_handoff *from, struct shim_error *err) {
  char step, path[40];
  ssize_t n = read(from->go_fd, &step, 1);
  if (n != 1 || step != 'n') {
    set_error(err, EXIT_RUNTIME, n < 0 ? errno : EPIPE, "wait for the network namespace");
    return -1;
  }
  snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)from->shim);
  cleanup_fd int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open the network namespace `%s`", path);
    return -1;
  }
  if (from->shim_start == 0 || start_time(from->shim) != from->shim_start) {
    set_error(err, EXIT_RUNTIME, ESRCH, "the shim (pid %d) is gone", (int)from->shim);
    return -1;
  }
  if (setns(ns, CLONE_NEWNET) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "join the network namespace `%s`", path);
    return -1;
  }
  return 0;
}

static int netns_del(const char *path, struct shim_error *err) {
  if (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL && errno != ENOENT) {
    set_error(err, EXIT_RUNTIME, errno, "unpin the network namespace on `%s`", path);
    return -1;
  }
  if (unlink(path) < 0 && errno != ENOENT) {
    set_error(err, EXIT_RUNTIME, errno, "remove `%s`", path);
    return -1;
  }
  return 0;
}

static int netns_pin(const char *pid_text, const char *start_text, const char *path, struct shim_error *err) {
  char *end;
  errno = 0;
  long pid = strtol(pid_text, &end, 10);
  if (errno || *end || pid <= 0) return set_error(err, EXIT_RUNTIME, EINVAL, "bad pid `%s`", pid_text), -1;
  unsigned long long start = strtoull(start_text, &end, 10);
  if (errno || *end) return set_error(err, EXIT_RUNTIME, EINVAL, "bad start time `%s`", start_text), -1;
  char ns_path[64], fd_path[64];
  snprintf(ns_path, sizeof(ns_path), "/proc/%ld/ns/net", pid);
  cleanup_fd int ns = open(ns_path, O_RDONLY | O_CLOEXEC);
  if (ns < 0) return set_error(err, EXIT_RUNTIME, errno, "open `%s`", ns_path), -1;
  if (start_time((pid_t)pid) != start)
    return set_error(err, EXIT_RUNTIME, ESRCH, "container init %ld is gone", pid), -1;
  snprintf(fd_path, sizeof(fd_path), "/proc/self/fd/%d", ns);
  if (mount(fd_path, path, NULL, MS_BIND, NULL) < 0)
    return set_error(err, EXIT_RUNTIME, errno, "pin the network namespace of pid %ld on `%s`", pid, path), -1;
  return 0;
}

int netns_main(int argc, char **argv) {
  struct shim_error err = {0};
  int rc;
  if (argc == 3 && strcmp(argv[1], "add") == 0) rc = netns_add(argv[2], &err);
  else if (argc == 3 && strcmp(argv[1], "del") == 0) rc = netns_del(argv[2], &err);
  else if (argc == 5 && strcmp(argv[1], "pin") == 0) rc = netns_pin(argv[2], argv[3], argv[4], &err);
  else {
    fprintf(stderr, "usage: fleetlet-shim netns add|del PATH | pin PID START_TIME PATH\n");
    return EXIT_RUNTIME;
  }
  if (rc < 0) {
    fprintf(stderr, "fleetlet-shim: %s\n", err.message);
    return err.code ? err.code : EXIT_RUNTIME;
  }
  return 0;
}
