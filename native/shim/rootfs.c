/* The container's root filesystem: an overlay of the image layers with a
 * writable upper dir, /proc, /dev, /sys and named volumes mounted into it,
 * then pivot_root. Every path inside the rootfs is resolved with openat2
 * RESOLVE_IN_ROOT, so a symlink planted in an image cannot steer a mount
 * onto the host. Runs in the container's init, in its new mount namespace. */
#include "shim.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#define FD_PATH_LEN 32

static void fd_path(char *buf, int fd) { snprintf(buf, FD_PATH_LEN, "/proc/self/fd/%d", fd); }

/* Fallback for kernels without openat2: walk the path one component at a
 * time and refuse symlinks outright. */
static int walk_no_symlinks(int rootfd, const char *path) {
  char copy[4096];
  int fd = dup(rootfd);
  if (fd < 0) return -1;
  snprintf(copy, sizeof(copy), "%s", path);
  for (char *save = NULL, *part = strtok_r(copy, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
    int next = openat(fd, part, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    int saved = errno;
    close(fd);
    if (next < 0) {
      errno = saved;
      return -1;
    }
    struct stat st;
    if (fstat(next, &st) == 0 && S_ISLNK(st.st_mode)) {
      close(next);
      errno = ELOOP;
      return -1;
    }
    fd = next;
  }
  return fd;
}

static int resolve_in_root(int rootfd, const char *path) {
  struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
  int fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
  if (fd < 0 && errno == ENOSYS) return walk_no_symlinks(rootfd, path);
  return fd;
}

/* Opens `path` inside the rootfs, creating it (a directory, or an empty file
 * when `as_file`) and its missing parents in the upper layer. */
static int open_in_root(int rootfd, const char *path, int as_file) {
  int fd = resolve_in_root(rootfd, path);
  if (fd >= 0 || errno != ENOENT) return fd;

  char parent[4096];
  snprintf(parent, sizeof(parent), "%s", path);
  char *slash = strrchr(parent, '/');
  const char *base = path;
  if (slash) {
    *slash = '\0';
    base = path + (slash - parent) + 1;
  } else {
    parent[0] = '\0';
  }
  cleanup_fd int pfd = parent[0] ? open_in_root(rootfd, parent, 0) : dup(rootfd);
  if (pfd < 0) return -1;
  if (as_file) {
    int f = openat(pfd, base, O_CREAT | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (f < 0 && errno != EEXIST) return -1;
    if (f >= 0) close(f);
  } else if (mkdirat(pfd, base, 0755) < 0 && errno != EEXIST) {
    return -1;
  }
  return resolve_in_root(rootfd, path);
}

static int mount_at(int rootfd, const char *source, const char *target, const char *fstype,
                    unsigned long flags, const char *data, struct shim_error *err) {
  char where[FD_PATH_LEN];
  cleanup_fd int fd = open_in_root(rootfd, target, 0);
  if (fd < 0) {
    set_error(err, EXIT_RUNTIME, errno, "create mount point `%s` in the rootfs", target);
    return -1;
  }
  fd_path(where, fd);
  if (mount(source, where, fstype, flags, data) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "mount `%s` to `%s`", source, target);
    return -1;
  }
  return 0;
}

static int mount_overlay(const struct shim_config *cfg, struct shim_error *err) {
  char data[4096];
  size_t n = snprintf(data, sizeof(data), "lowerdir=");
  for (size_t i = 0; i < cfg->lower.len && n < sizeof(data); i++)
    n += snprintf(data + n, sizeof(data) - n, "%s%s", i ? ":" : "", cfg->lower.items[i]);
  if (n < sizeof(data))
    n += snprintf(data + n, sizeof(data) - n, ",upperdir=%s,workdir=%s", cfg->upper, cfg->work);
  if (n >= sizeof(data)) {
    set_error(err, EXIT_RUNTIME, E2BIG, "mount overlay on `%s`: %zu layers make the options too long",
              cfg->rootfs, cfg->lower.len);
    return -1;
  }
  /* nodev: a device node shipped in an image must not reach host devices.
   * volatile (Linux 5.10): the upper layer is never synced. Each container
   * mounts its upper dir once, and after a crash it is thrown away, never
   * mounted again, so a sync there only costs: the whole host filesystem's
   * sync and a disk flush at every container's exit, an fsync in the
   * container that waits on flash for nothing. An older kernel refuses the
   * option (EINVAL) and gets the mount without it. */
  char with_volatile[sizeof(data) + sizeof(",volatile")];
  snprintf(with_volatile, sizeof(with_volatile), "%s,volatile", data);
  int rc = cfg->overlay_sync ? -1 : mount("overlay", cfg->rootfs, "overlay", MS_NODEV, with_volatile);
  if (rc < 0 && (cfg->overlay_sync || errno == EINVAL)) rc = mount("overlay", cfg->rootfs, "overlay", MS_NODEV, data);
  if (rc < 0) {
    set_error(err, EXIT_RUNTIME, errno, "mount overlay on `%s` (lower `%s`)", cfg->rootfs,
              cfg->lower.items[0]);
    return -1;
  }
  return 0;
}

struct dev_node {
  const char *name;
  unsigned major, minor;
};

static const struct dev_node dev_nodes[] = {
    {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
};

static const char *const dev_links[][2] = {
    {"fd", "/proc/self/fd"},          {"stdin", "/proc/self/fd/0"}, {"stdout", "/proc/self/fd/1"},
    {"stderr", "/proc/self/fd/2"},    {"ptmx", "pts/ptmx"},         {"core", "/proc/kcore"},
};

static int populate_dev(const struct shim_config *cfg, int rootfd, struct shim_error *err) {
  if (mount_at(rootfd, "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k", err) < 0)
    return -1;
  cleanup_fd int dev = resolve_in_root(rootfd, "/dev");
  char where[FD_PATH_LEN];
  int devdir;
  fd_path(where, dev);
  devdir = open(where, O_DIRECTORY | O_CLOEXEC);
  if (devdir < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open `/dev` in the rootfs");
    return -1;
  }
  cleanup_fd int devfd = devdir;
  for (size_t i = 0; i < sizeof(dev_nodes) / sizeof(dev_nodes[0]); i++) {
    const struct dev_node *d = &dev_nodes[i];
    if (mknodat(devfd, d->name, S_IFCHR | 0666, makedev(d->major, d->minor)) < 0) {
      set_error(err, EXIT_RUNTIME, errno, "mknod `/dev/%s`", d->name);
      return -1;
    }
  }
  for (size_t i = 0; i < sizeof(dev_links) / sizeof(dev_links[0]); i++) {
    if (symlinkat(dev_links[i][1], devfd, dev_links[i][0]) < 0) {
      set_error(err, EXIT_RUNTIME, errno, "symlink `/dev/%s`", dev_links[i][0]);
      return -1;
    }
  }
  for (size_t i = 0; i < cfg->ndevnodes; i++)
    if (devnode_make(devfd, &cfg->devnodes[i], err) < 0) return -1;
  if (mount_at(rootfd, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620,gid=5", err) < 0)
    return -1;
  return mount_at(rootfd, "shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "mode=1777,size=65536k", err);
}

/* The shim's own binary, opened by path in this mount namespace: a bind
 * mount's source must be a mount of the caller's namespace, and
 * /proc/self/exe names the binary in the host's. The two must be one file,
 * or the binary was replaced (an upgrade) since this shim started. */
static int open_self(struct shim_error *err) {
  char path[4096];
  struct stat want, got;
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n < 0 || stat("/proc/self/exe", &want) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "find the shim's binary through `/proc/self/exe`");
    return -1;
  }
  path[n] = '\0';
  int fd = open(path, O_PATH | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &got) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open the shim's binary `%s` for the init", path);
    if (fd >= 0) close(fd);
    return -1;
  }
  if (got.st_dev != want.st_dev || got.st_ino != want.st_ino) {
    set_error(err, EXIT_RUNTIME, 0, "the shim's binary `%s` was replaced since the shim started", path);
    close(fd);
    return -1;
  }
  return fd;
}

/* `init`: the shim's own binary bound at INIT_PATH. /dev is the
 * container's own tmpfs, so this works with a read-only rootfs and leaves
 * the image and the upper layer alone. The bind is read-only: a process in
 * the container that opens /proc/1/exe to write gets EROFS, never the
 * host's binary. */
static int bind_init(int rootfd, struct shim_error *err) {
  char from[FD_PATH_LEN];
  cleanup_fd int self = open_self(err);
  if (self < 0) return -1;
  cleanup_fd int target = open_in_root(rootfd, INIT_PATH, 1);
  if (target < 0) {
    set_error(err, EXIT_RUNTIME, errno, "create the mount point `%s` for the init", INIT_PATH);
    return -1;
  }
  fd_path(from, self);
  if (mount_at(rootfd, from, INIT_PATH, NULL, MS_BIND, NULL, err) < 0) return -1;
  /* The remount resolves the path again, so it reaches the bind, not the file under it. */
  return mount_at(rootfd, "none", INIT_PATH, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL,
                  err);
}

static int mount_sys(const struct shim_config *cfg, int rootfd, struct shim_error *err) {
  unsigned long flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
  if (mount_at(rootfd, "sysfs", "/sys", "sysfs", flags, NULL, err) == 0) return 0;
  if (!cfg->net_host || err->errnum != EPERM) return -1;
  /* Some kernels refuse a new sysfs in the host's network namespace: bind
   * the host's read-only instead. */
  if (mount_at(rootfd, "/sys", "/sys", NULL, MS_BIND | MS_REC, NULL, err) < 0) return -1;
  return mount_at(rootfd, "/sys", "/sys", NULL, MS_BIND | MS_REMOUNT | flags, NULL, err);
}

static int mount_binds(const struct shim_config *cfg, int rootfd, struct shim_error *err) {
  for (size_t i = 0; i < cfg->nbinds; i++) {
    const struct bind_mount *b = &cfg->binds[i];
    char from[FD_PATH_LEN];
    if (b->file) {
      cleanup_fd int target = open_in_root(rootfd, b->target, 1);
      if (target < 0) {
        set_error(err, EXIT_RUNTIME, errno, "create mount point `%s` in the rootfs", b->target);
        return -1;
      }
    }
    cleanup_fd int src = open(b->source, O_PATH | O_CLOEXEC);
    if (src < 0) {
      set_error(err, EXIT_RUNTIME, errno, "open volume `%s`", b->source);
      return -1;
    }
    fd_path(from, src);
    if (mount_at(rootfd, from, b->target, NULL, MS_BIND | MS_REC, NULL, err) < 0) return -1;
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (b->readonly ? MS_RDONLY : 0);
    if (mount_at(rootfd, "none", b->target, NULL, flags, NULL, err) < 0) return -1;
  }
  return 0;
}

static int enter_root(const struct shim_config *cfg, int rootfd, struct shim_error *err) {
  if (fchdir(rootfd) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "chdir to rootfs `%s`", cfg->rootfs);
    return -1;
  }
  /* pivot_root(".", ".") stacks the old root on top of the new one; the
   * lazy unmount then detaches it, leaving no host path reachable. */
  if (syscall(SYS_pivot_root, ".", ".") < 0) {
    set_error(err, EXIT_RUNTIME, errno, "pivot_root to `%s`", cfg->rootfs);
    return -1;
  }
  if (mount(NULL, ".", NULL, MS_REC | MS_SLAVE, NULL) < 0 || umount2(".", MNT_DETACH) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "detach the old root");
    return -1;
  }
  if (chdir("/") < 0) {
    set_error(err, EXIT_RUNTIME, errno, "chdir to `/`");
    return -1;
  }
  return 0;
}

static int mask_paths(const struct shim_config *cfg, struct shim_error *err) {
  for (size_t i = 0; i < cfg->masked.len; i++) {
    const char *p = cfg->masked.items[i];
    struct stat st;
    int r;
    if (lstat(p, &st) < 0) continue; /* absent on this kernel: nothing to hide */
    if (S_ISDIR(st.st_mode))
      r = mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0");
    else
      r = mount("/dev/null", p, NULL, MS_BIND, NULL);
    if (r < 0) {
      set_error(err, EXIT_RUNTIME, errno, "mask `%s`", p);
      return -1;
    }
  }
  for (size_t i = 0; i < cfg->readonly_paths.len; i++) {
    const char *p = cfg->readonly_paths.items[i];
    struct stat st;
    if (lstat(p, &st) < 0) continue;
    if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0 ||
        mount(p, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
      set_error(err, EXIT_RUNTIME, errno, "make `%s` read-only", p);
      return -1;
    }
  }
  return 0;
}

static int remount_root_readonly(struct shim_error *err) {
  struct statvfs sv;
  if (statvfs("/", &sv) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "statvfs `/`");
    return -1;
  }
  unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV;
  if (sv.f_flag & ST_NOSUID) flags |= MS_NOSUID;
  if (mount(NULL, "/", NULL, flags, NULL) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "remount the rootfs read-only");
    return -1;
  }
  return 0;
}

int rootfs_setup(const struct shim_config *cfg, const struct netns_handoff *netns, struct shim_error *err) {
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "make mount propagation private");
    return -1;
  }
  if (mount_overlay(cfg, err) < 0) return -1;
  cleanup_fd int rootfd = open(cfg->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open rootfs `%s`", cfg->rootfs);
    return -1;
  }
  if (mount_at(rootfd, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, err) < 0) return -1;
  if (populate_dev(cfg, rootfd, err) < 0) return -1;
  if (cfg->init && bind_init(rootfd, err) < 0) return -1;
  /* sysfs shows the network of the namespace it is mounted in. */
  if (netns && netns_join_shims(netns, err) < 0) return -1;
  if (mount_sys(cfg, rootfd, err) < 0) return -1;
  if (mount_binds(cfg, rootfd, err) < 0) return -1;
  if (enter_root(cfg, rootfd, err) < 0) return -1;
  if (mask_paths(cfg, err) < 0) return -1;
  if (cfg->readonly && remount_root_readonly(err) < 0) return -1;
  return 0;
}
