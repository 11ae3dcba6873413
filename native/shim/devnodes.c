/* Host device nodes in a container's /dev: made by the init while it builds
 * the rootfs (rootfs.c), and made or removed later in a running container
 * when the device is plugged in or out:
 *
 *   fleetlet-shim devnode PID START_TIME add TARGET c|b MAJOR MINOR MODE UID GID
 *   fleetlet-shim devnode PID START_TIME remove TARGET
 *
 * A running container's /dev is its own to change, so it is never reached by
 * a host path (/proc/PID/root/dev/… follows the container's symlinks against
 * the host's root). This process enters the container's mount namespace
 * instead, opens its /dev without following a link, and walks to the
 * target's parent one component at a time, refusing symlinks and anything
 * on another mount (a volume bound under /dev), then mknodat/unlinkat
 * relative to that directory. So the worst a hostile container can do is
 * make the node not appear. */
#include "shim.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

/* "TARGET\tc|b\tMAJOR\tMINOR\tMODE\tUID\tGID" (the config's `devnode`), split in place. */
int devnode_parse(char *value, struct host_device *d, struct shim_error *err) {
  char *fields[7];
  int n = 0;
  for (char *save = NULL, *f = strtok_r(value, "\t", &save); f && n < 7; f = strtok_r(NULL, "\t", &save)) fields[n++] = f;
  uint64_t num[5];
  const char *names[5] = {"major", "minor", "mode", "uid", "gid"};
  if (n != 7 || strncmp(fields[0], "/dev/", 5) != 0 || (strcmp(fields[1], "c") != 0 && strcmp(fields[1], "b") != 0)) {
    set_error(err, EXIT_RUNTIME, 0, "config: bad `devnode` entry for `%s`", n ? fields[0] : "");
    return -1;
  }
  for (char *p = fields[0]; (p = strstr(p, "/.")) != NULL; p++)
    if (p[2] == '/' || p[2] == '\0' || (p[2] == '.' && (p[3] == '/' || p[3] == '\0'))) {
      set_error(err, EXIT_RUNTIME, 0, "device `%s`: `.` and `..` are refused in a target", fields[0]);
      return -1;
    }
  for (int i = 0; i < 5; i++)
    if (parse_u64(fields[i + 2], &num[i], names[i], err) < 0) return -1;
  if (num[0] > 0xfff || num[1] > 0xfffff || num[2] > 0777 || num[3] > UINT32_MAX - 1 || num[4] > UINT32_MAX - 1) {
    set_error(err, EXIT_RUNTIME, 0, "device `%s`: a number is out of range", fields[0]);
    return -1;
  }
  *d = (struct host_device){.target = fields[0], .type = fields[1][0] == 'c' ? S_IFCHR : S_IFBLK,
                         .major = (unsigned)num[0], .minor = (unsigned)num[1], .mode = (unsigned)num[2],
                         .uid = (uint32_t)num[3], .gid = (uint32_t)num[4]};
  return 0;
}

/* The directory holding `target` (an absolute path under /dev) opened
 * relative to `devfd`, and its last component in `base`. Missing parents
 * are made (0755) when `create`. Every step is opened O_NOFOLLOW and must
 * be a directory on the same file system as /dev itself. */
static int open_parent(int devfd, const char *target, int create, char *base, size_t baselen, struct shim_error *err) {
  char copy[1024];
  struct stat devst, st;
  if (snprintf(copy, sizeof(copy), "%s", target + 5) >= (int)sizeof(copy) || fstat(devfd, &devst) < 0) {
    set_error(err, EXIT_RUNTIME, ENAMETOOLONG, "device target `%s`", target);
    return -1;
  }
  char *last = strrchr(copy, '/');
  snprintf(base, baselen, "%s", last ? last + 1 : copy);
  int fd = dup(devfd);
  if (!last) return fd;
  *last = '\0';
  for (char *save = NULL, *part = strtok_r(copy, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
    if (create && mkdirat(fd, part, 0755) < 0 && errno != EEXIST) {
      set_error(err, EXIT_RUNTIME, errno, "create `%s` for device `%s`", part, target);
      close(fd);
      return -1;
    }
    int next = openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int saved = errno;
    close(fd);
    if (next < 0) {
      set_error(err, EXIT_RUNTIME, saved == ELOOP || saved == ENOTDIR ? ELOOP : saved,
                "open `%s` on the way to device `%s` (a symlink or a file in its place is refused)", part, target);
      return -1;
    }
    if (fstat(next, &st) < 0 || st.st_dev != devst.st_dev) {
      set_error(err, EXIT_RUNTIME, EXDEV, "`%s` on the way to device `%s` is not on the container's /dev", part, target);
      close(next);
      return -1;
    }
    fd = next;
  }
  return fd;
}

int devnode_make(int devfd, const struct host_device *d, struct shim_error *err) {
  char base[1024];
  cleanup_fd int dir = open_parent(devfd, d->target, 1, base, sizeof(base), err);
  if (dir < 0) return -1;
  mode_t old = umask(0); /* the node gets the host node's mode exactly, with no chmod that could follow a link */
  int r = mknodat(dir, base, d->type | d->mode, makedev(d->major, d->minor));
  struct stat st;
  /* A device node left there (the device's old numbers) is replaced; anything else of the container's is not. */
  if (r < 0 && errno == EEXIST && fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) && unlinkat(dir, base, 0) == 0)
    r = mknodat(dir, base, d->type | d->mode, makedev(d->major, d->minor));
  umask(old);
  if (r < 0) {
    set_error(err, EXIT_RUNTIME, errno, "mknod device `%s` (%u:%u)", d->target, d->major, d->minor);
    return -1;
  }
  if (fchownat(dir, base, d->uid, d->gid, AT_SYMLINK_NOFOLLOW) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "chown device `%s`", d->target);
    return -1;
  }
  return 0;
}

/* Removes the node at `target` if it is a device node; anything else there
 * (the container's own file) is left alone. Absent is done. */
static int devnode_remove(int devfd, const char *target, struct shim_error *err) {
  char base[1024];
  struct stat st;
  cleanup_fd int dir = open_parent(devfd, target, 0, base, sizeof(base), err);
  /* No parent, or one the container replaced (a link, a file, another mount): no node of ours is reachable there. */
  if (dir < 0) return err->errnum == ENOENT || err->errnum == ELOOP || err->errnum == EXDEV ? 0 : -1;
  if (fstatat(dir, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return 0;
    set_error(err, EXIT_RUNTIME, errno, "stat device `%s`", target);
    return -1;
  }
  if (!S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode)) return 0;
  if (unlinkat(dir, base, 0) < 0 && errno != ENOENT) {
    set_error(err, EXIT_RUNTIME, errno, "remove device `%s`", target);
    return -1;
  }
  return 0;
}

/* Enters the mount namespace of the container's init (checked by its start
 * time after the namespace is opened) and opens its /dev. */
static int enter_dev(pid_t pid, unsigned long long start, struct shim_error *err) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/ns/mnt", pid);
  cleanup_fd int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open `%s`", path);
    return -1;
  }
  if (start_time(pid) != start) {
    set_error(err, EXIT_RUNTIME, ESRCH, "container init %d is gone", pid);
    return -1;
  }
  if (setns(ns, CLONE_NEWNS) < 0 || chdir("/") < 0) {
    set_error(err, EXIT_RUNTIME, errno, "enter the mount namespace of pid %d", pid);
    return -1;
  }
  int dev = open("/dev", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dev < 0) set_error(err, EXIT_RUNTIME, errno, "open the container's `/dev`");
  return dev;
}

int devnode_main(int argc, char **argv) {
  struct shim_error err = {0};
  uint64_t pid = 0, start = 0;
  struct host_device d;
  int add = argc == 11 && strcmp(argv[3], "add") == 0;
  int remove = argc == 5 && strcmp(argv[3], "remove") == 0;
  if (!add && !remove) {
    fprintf(stderr, "usage: fleetlet-shim devnode PID START_TIME add TARGET c|b MAJOR MINOR MODE UID GID\n"
                    "       fleetlet-shim devnode PID START_TIME remove TARGET\n");
    return EXIT_RUNTIME;
  }
  char spec[1400];
  snprintf(spec, sizeof(spec), "%s\t%s\t%s\t%s\t%s\t%s\t%s", argv[4], add ? argv[5] : "c", add ? argv[6] : "0",
           add ? argv[7] : "0", add ? argv[8] : "0", add ? argv[9] : "0", add ? argv[10] : "0");
  if (parse_u64(argv[1], &pid, "PID", &err) == 0 && parse_u64(argv[2], &start, "START_TIME", &err) == 0 &&
      devnode_parse(spec, &d, &err) == 0) {
    cleanup_fd int dev = enter_dev((pid_t)pid, start, &err);
    if (dev >= 0 && (add ? devnode_make(dev, &d, &err) : devnode_remove(dev, d.target, &err)) == 0) return 0;
  }
  fprintf(stderr, "fleetlet-shim devnode: %s\n", err.message);
  return EXIT_RUNTIME;
}
