/* `fleetlet-shim netns add PATH`: a new network namespace with `lo` up,
 * pinned by a bind mount of /proc/self/ns/net on PATH (a new, empty file), so
 * that the runtime can set its links up before a container joins it and it
 * outlives the container's processes until `netns del PATH` unpins it.
 * `del` is idempotent: a PATH that is gone or no longer mounted is fine. */
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

int netns_main(int argc, char **argv) {
  struct shim_error err = {0};
  if (argc != 3 || (strcmp(argv[1], "add") != 0 && strcmp(argv[1], "del") != 0)) {
    fprintf(stderr, "usage: fleetlet-shim netns add|del PATH\n");
    return EXIT_RUNTIME;
  }
  int rc = strcmp(argv[1], "add") == 0 ? netns_add(argv[2], &err) : netns_del(argv[2], &err);
  if (rc < 0) {
    fprintf(stderr, "fleetlet-shim: %s\n", err.message);
    return err.code ? err.code : EXIT_RUNTIME;
  }
  return 0;
}
