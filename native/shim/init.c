/* The container's init, from fork to exec. It unshares its namespaces,
 * builds the rootfs while the shim writes the cgroup limits, joins its
 * cgroups, unshares the cgroup namespace (last, so that its root is the
 * container's cgroup), drops privileges and execs. Any failure is reported to the shim through
 * `err` and the error pipe; success is the pipe closing at exec. */
#include "shim.h"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

int loopback_up(struct shim_error *err) {
  struct ifreq ifr;
  cleanup_fd int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    set_error(err, EXIT_RUNTIME, errno, "socket for `lo`");
    return -1;
  }
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "read flags of `lo`");
    return -1;
  }
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "bring `lo` up");
    return -1;
  }
  return 0;
}

static const char *env_path(char *const envp[]) {
  for (size_t i = 0; envp[i]; i++)
    if (strncmp(envp[i], "PATH=", 5) == 0) return envp[i] + 5;
  return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
}

static int mkdir_p(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof(buf), "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  return mkdir(buf, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

/* execvpe searches the shim's PATH, not the container's: search here, in
 * the PATH of `envp`. */
void exec_command(char *const argv[], char *const envp[], struct shim_error *err) {
  const char *cmd = argv[0];
  int saw_eacces = 0;

  if (strchr(cmd, '/')) {
    execve(cmd, argv, envp);
    int e = errno;
    set_error(err, e == ENOENT ? EXIT_NOT_FOUND : EXIT_NOT_EXECUTABLE, e, "exec `%s`", cmd);
    return;
  }
  const char *path = env_path(envp);
  while (*path) {
    const char *colon = strchrnul(path, ':');
    char full[4096];
    int n = snprintf(full, sizeof(full), "%.*s/%s", (int)(colon - path), path, cmd);
    if (n > 0 && (size_t)n < sizeof(full)) {
      execve(full, argv, envp);
      if (errno == EACCES) saw_eacces = 1;
      else if (errno != ENOENT && errno != ENOTDIR) {
        set_error(err, EXIT_NOT_EXECUTABLE, errno, "exec `%s`", full);
        return;
      }
    }
    path = *colon ? colon + 1 : colon;
  }
  if (saw_eacces) set_error(err, EXIT_NOT_EXECUTABLE, EACCES, "exec `%s`", cmd);
  else set_error(err, EXIT_NOT_FOUND, 0, "exec `%s`: executable file not found in $PATH", cmd);
}

/* With `init`, PID 1 is the shim's own binary in its init role (pid1.c),
 * bound read-only at INIT_PATH by rootfs_setup, and the command is its
 * child. The error pipe goes along as INIT_ERR_FD, open across this exec:
 * the init's child reports a failed exec of the command on it and closes it
 * by exec'ing, so the shim hears "ok" only once the command runs, as it
 * does without an init. Only the argv pointers are copied: no allocation. */
static void exec_init(const struct shim_config *cfg, int err_fd, struct shim_error *err) {
  const char *argv[MAX_LIST + 6] = {INIT_PATH, "init", "--error-fd", INIT_ERR_FD_TEXT, "--"};
  for (size_t i = 0; i <= cfg->args.len; i++) argv[5 + i] = cfg->args.items[i]; /* and its NULL */
  /* dup2 leaves the copy without FD_CLOEXEC; a pipe already at the number
   * (dup2 would do nothing) has the flag cleared by hand. */
  int r = err_fd == INIT_ERR_FD ? fcntl(err_fd, F_SETFD, 0) : dup2(err_fd, INIT_ERR_FD);
  if (r < 0) {
    set_error(err, EXIT_RUNTIME, errno, "pass the error pipe to the init as fd %d", INIT_ERR_FD);
    return;
  }
  execve(INIT_PATH, (char *const *)argv, (char *const *)cfg->env.items);
  set_error(err, EXIT_RUNTIME, errno, "exec the init `%s`", INIT_PATH);
}

void container_init(const struct shim_config *cfg, pid_t shim, int go_fd, int stdout_fd, int stderr_fd, int err_fd,
                    struct shim_error *err) {
  char go;
  struct netns_handoff handoff = {.go_fd = go_fd, .shim = shim};

  /* A container on a bridge joins the namespace the runtime pinned and set
   * up before the start, so its network is there before its command runs. */
  if (cfg->netns) {
    cleanup_fd int ns = open(cfg->netns, O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET) < 0) {
      set_error(err, EXIT_RUNTIME, errno, "join the network namespace `%s`", cfg->netns);
      return;
    }
  }

  /* A new network namespace comes from the shim, made while this builds the
   * rootfs (netns.c), and joined in rootfs_setup. */
  if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "unshare mount, uts, ipc namespaces");
    return;
  }
  /* Read while the shim cannot be gone (it is about to send 'd'), so that
   * the namespace joined later is known to be its own (netns.c). */
  if (shim_makes_netns(cfg)) handoff.shim_start = start_time(shim);
  /* The shim sends 'd' once the overlay's and the cgroups' dirs exist, 'n'
   * once it has made our network namespace (if it makes one), 'g' once the
   * limits are written (and we are in the v2 cgroups); EOF means it gave up. */
  if (read(go_fd, &go, 1) != 1) {
    set_error(err, EXIT_RUNTIME, errno, "wait for the container dirs");
    return;
  }
  /* Opened while the host's cgroup mounts are in view; written after 'g'. */
  int cgroup_fds[MAX_LIST];
  if (cgroups_open_v1(&cfg->cgroups, cgroup_fds, err) < 0) return;
  /* The agent protects itself from the OOM killer (OOMScoreAdjust=-900); a
   * container must not inherit that, or it would be the last to go. */
  int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (oom < 0 || write(oom, "0", 1) != 1) {
    set_error(err, EXIT_RUNTIME, errno, "reset `/proc/self/oom_score_adj`");
    if (oom >= 0) close(oom);
    return;
  }
  close(oom);
  umask(0);
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open `/dev/null`");
    return;
  }
  if (rootfs_setup(cfg, shim_makes_netns(cfg) ? &handoff : NULL, err) < 0) return;
  if (cfg->hostname && sethostname(cfg->hostname, strlen(cfg->hostname)) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "sethostname `%s`", cfg->hostname);
    return;
  }
  umask(022);
  const char *cwd = cfg->cwd && *cfg->cwd ? cfg->cwd : "/";
  if (mkdir_p(cwd) < 0 || chdir(cwd) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "chdir to working directory `%s`", cwd);
    return;
  }
  if (dup2(devnull, 0) < 0 || dup2(stdout_fd, 1) < 0 || dup2(stderr_fd, 2) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "set up stdio");
    return;
  }
  /* Limits first, then the move; only once in our cgroups the cgroup
   * namespace, so that its root is our cgroup. */
  if (read(go_fd, &go, 1) != 1) {
    set_error(err, EXIT_RUNTIME, errno, "wait for the cgroup limits");
    return;
  }
  close(go_fd);
  if (cgroups_join_opened(&cfg->cgroups, cgroup_fds, err) < 0) return;
  if (unshare(CLONE_NEWCGROUP) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "unshare the cgroup namespace");
    return;
  }
  /* Only stdin, stdout and stderr go through the exec. Done before the
   * seccomp filter, which need not allow what the listing uses. */
  if (fds_release_from(3, FDS_CLOEXEC, cfg->fd_scan, err) < 0) return;
  if (security_apply(cfg, err) < 0) return;
  if (cfg->init) exec_init(cfg, err_fd, err);
  else exec_command((char *const *)cfg->args.items, (char *const *)cfg->env.items, err);
}
