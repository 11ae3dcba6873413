/* fleetlet-shim: the per-container supervisor.
 *
 * One shim runs per container. It detaches from whoever started it, clones
 * the container's init into new namespaces, places it in its cgroups, sets
 * up the root filesystem and privileges, execs the command, and then stays
 * behind to forward signals, copy output into a rotated log and record the
 * exit. It is single-threaded and links nothing but libc.
 */
#ifndef FLEETLET_SHIM_H
#define FLEETLET_SHIM_H

#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LIST 256

/* Exit codes that follow Docker's conventions. */
#define EXIT_RUNTIME 125
#define EXIT_NOT_EXECUTABLE 126
#define EXIT_NOT_FOUND 127

struct str_list {
  const char *items[MAX_LIST + 1]; /* room for the NULL that ends argv and envp */
  size_t len;
};

struct bind_mount {
  const char *source;
  const char *target;
  int readonly;
  int file; /* a single file (/etc/hosts), its mount point made as an empty file */
};

/* A limit written into a cgroup file before the init joins it. */
struct cg_limit {
  const char *file;
  const char *value;
  int optional; /* skipped when the kernel lacks the file (swap accounting off) */
};

/* A host device node to make in the container's /dev (devnodes.c). */
struct host_device {
  const char *target; /* absolute, under /dev/ */
  unsigned type;      /* S_IFCHR or S_IFBLK */
  unsigned major, minor;
  unsigned mode;      /* permission bits */
  uint32_t uid, gid;
};

/* The container's configuration, read from the NUL-separated `config` file
 * that the runtime writes into the container directory. */
struct shim_config {
  const char *id;
  const char *rootfs;          /* where the overlay is mounted */
  struct str_list lower;       /* read-only layers, topmost first */
  const char *upper;
  const char *work;
  const char *hostname;
  const char *cwd;
  struct str_list args;
  struct str_list env;
  uint32_t uid, gid;
  struct str_list groups;
  struct str_list caps;        /* capability numbers, as text */
  int net_host;
  const char *netns;           /* a pinned network namespace to join instead of a new one */
  int readonly;
  int seccomp;                 /* 1: the default filter, 0: none */
  struct bind_mount binds[MAX_LIST];
  size_t nbinds;
  struct str_list masked;
  struct str_list readonly_paths;
  struct str_list cgroups;     /* cgroup dirs to create and join, one per hierarchy */
  struct cg_limit cg_limits[MAX_LIST];
  size_t ncg_limits;
  const char *oom_file;        /* memory.oom_control (v1) or memory.events (v2) */
  const char *log_path;
  uint64_t log_max;
  unsigned log_keep;
  const char *exit_path;
  const char *running_path;    /* where the shim records its and the init's pid */
  uint64_t nofile_soft, nofile_hard;
  const char *dev_cgroup;      /* cgroup v2: the dir the device program is attached to */
  struct str_list dev_rules;   /* allowed devices, "c 1:3 rwm" as in v1's devices.allow */
  int fd_scan;                 /* list /proc/self/fd even where close_range works (tests) */
  int cgroup_move;             /* fork, then move into the v2 cgroup, even where clone3 can (tests) */
  int overlay_sync;            /* mount the overlay without `volatile`, even where the kernel has it (tests) */
  int init;                    /* PID 1 is the shim's init role (pid1.c), the command its child */
  struct host_device devnodes[MAX_LIST]; /* host devices made in the container's /dev */
  size_t ndevnodes;
};

/* An error travels as a value: the exit code it maps to, errno and a
 * message naming the step and the path. */
struct shim_error {
  int code;
  int errnum;
  char message[768];
};

int parse_u64(const char *value, uint64_t *out, const char *key, struct shim_error *err);
int list_push(struct str_list *list, const char *value, const char *what, struct shim_error *err);
int config_read(const char *path, struct shim_config *cfg, struct shim_error *err);

/* Where the shim's binary is bound, read-only, in a container with `init`,
 * and the descriptor that carries the shim's error pipe across its exec. */
#define INIT_PATH "/dev/init"
#define INIT_ERR_FD 3
#define INIT_ERR_FD_TEXT "3"

/* Runs in the container's init between fork and exec; returns only on
 * failure, with err filled in. `err_fd` is the error pipe's write end. */
void container_init(const struct shim_config *cfg, pid_t shim, int go_fd, int stdout_fd, int stderr_fd, int err_fd,
                    struct shim_error *err);

/* Execs argv[0], searched in envp's PATH; returns only on failure. */
void exec_command(char *const argv[], char *const envp[], struct shim_error *err);
/* `fleetlet-shim init -- CMD...`: PID 1 of a container with `init` (pid1.c). */
int init_main(int argc, char **argv);
unsigned long long start_time(pid_t pid);
int exec_main(int argc, char **argv);
/* Joining the container's cgroups (cgroup-join.c). */
int cgroups_add_pid_v2(const struct str_list *dirs, pid_t pid, struct shim_error *err);
const char *cgroup_v2_dir(const struct str_list *dirs);
pid_t fork_into_cgroup(const char *dir, int allowed, int *placed);
int cgroups_open_v1(const struct str_list *dirs, int *fds, struct shim_error *err);
int cgroups_join_opened(const struct str_list *dirs, int *fds, struct shim_error *err);
int cgroups_join_self(const struct str_list *dirs, struct shim_error *err);

/* Closes every descriptor from `low` up, or marks it close-on-exec (fds.c). */
enum { FDS_CLOEXEC, FDS_CLOSE };
int fds_release_from(int low, int how, int scan, struct shim_error *err);
/* Attaches (or atomically replaces) the cgroup v2 device program (devices.c). */
int devices_attach(const char *cgroup_dir, const struct str_list *rules, struct shim_error *err);
int devices_main(int argc, char **argv);
/* Host device nodes in the container's /dev (devnodes.c). */
int devnode_parse(char *value, struct host_device *d, struct shim_error *err);
int devnode_make(int devfd, const struct host_device *d, struct shim_error *err);
int devnode_main(int argc, char **argv);
/* `fleetlet-shim netns add|del PATH`: pins a new network namespace on PATH, or unpins it (netns.c). */
int netns_main(int argc, char **argv);
/* Brings `lo` up in the current network namespace (init.c). */
int loopback_up(struct shim_error *err);
/* A container with a network namespace of its own gets it from the shim (netns.c). */
static inline int shim_makes_netns(const struct shim_config *cfg) { return !cfg->net_host && !cfg->netns; }
/* Where the init finds that namespace: the shim's, once it sends 'n' down the go pipe. */
struct netns_handoff {
  int go_fd;
  pid_t shim;
  unsigned long long shim_start; /* the shim's start time, read by the init while the shim waits on it */
};
int netns_make_for_init(int go_fd, struct shim_error *err);
int netns_join_shims(const struct netns_handoff *from, struct shim_error *err);

/* `netns`, when not NULL, is joined just before /sys is mounted. */
int rootfs_setup(const struct shim_config *cfg, const struct netns_handoff *netns, struct shim_error *err);
int security_apply(const struct shim_config *cfg, struct shim_error *err);
int seccomp_install(struct shim_error *err);

void set_error(struct shim_error *err, int code, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Cleanup helpers in the manner of crun: a variable declared with
 * `cleanup_fd` is closed on every exit path. */
static inline void close_fdp(int *fd) {
  if (*fd >= 0) close(*fd);
}
#define cleanup_fd __attribute__((cleanup(close_fdp)))

#endif
