/* fleetlet-shim exec PID START_TIME [--cgroup DIR]... [--cap N]... [--uid U] [--gid G]
 *                    [--env K=V]... [--no-seccomp] [--fd-scan] -- CMD ARGS...
 *
 * Runs a command inside a running container (healthchecks): checks that PID
 * is still the container's init that started at START_TIME, joins its
 * cgroups, enters its cgroup, ipc, uts, net, pid and mount namespaces, and
 * forks (a pid namespace applies to children) a process with the same
 * privilege limits as the container's own before exec. Exits with the
 * command's status (128+N for a signal), 125 when the runtime failed.
 *
 * The forked process sits in the container's pid namespace, as root, until
 * its exec: the container's own root can see it there. So before joining
 * anything this process makes itself non-dumpable (no /proc/PID/environ,
 * exe, mem, fd or cwd for anyone without CAP_SYS_PTRACE: the runc
 * CVE-2019-5736 pattern), wipes the environment it was started with, closes
 * every inherited descriptor but stdio and takes the container's OOM score
 * (0) instead of the agent's. */
#include "shim.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static const char *const NAMESPACES[] = {"cgroup", "ipc", "uts", "net", "pid", "mnt"};
#define NNS (sizeof(NAMESPACES) / sizeof(NAMESPACES[0]))

static int die(const struct shim_error *err) {
  fprintf(stderr, "fleetlet-shim exec: %s\n", err->message);
  return err->code ? err->code : EXIT_RUNTIME;
}

static int parse_id(const char *value, uint64_t max, uint64_t *out, const char *what, struct shim_error *err) {
  if (parse_u64(value, out, what, err) < 0) return -1;
  if (*out > max) {
    set_error(err, EXIT_RUNTIME, 0, "`%s` is out of range: %s", what, value);
    return -1;
  }
  return 0;
}

static int parse(int argc, char **argv, struct shim_config *cfg, pid_t *pid, unsigned long long *start, struct shim_error *err) {
  uint64_t n;
  memset(cfg, 0, sizeof(*cfg));
  cfg->seccomp = 1;
  cfg->nofile_soft = 1024;
  cfg->nofile_hard = 524288;
  if (argc < 3) {
    set_error(err, EXIT_RUNTIME, 0, "usage: exec PID START_TIME [options] -- CMD...");
    return -1;
  }
  if (parse_id(argv[1], INT32_MAX, &n, "PID", err) < 0) return -1;
  *pid = (pid_t)n;
  if (parse_u64(argv[2], &n, "START_TIME", err) < 0) return -1;
  *start = n;
  int i = 3;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    const char *opt = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    int r = 0;
    if (strcmp(opt, "--no-seccomp") == 0) {
      cfg->seccomp = 0;
      continue;
    }
    if (strcmp(opt, "--fd-scan") == 0) {
      cfg->fd_scan = 1;
      continue;
    }
    if (!val) {
      set_error(err, EXIT_RUNTIME, 0, "option `%s` needs a value", opt);
      return -1;
    }
    if (strcmp(opt, "--cgroup") == 0) r = list_push(&cfg->cgroups, val, "cgroups", err);
    else if (strcmp(opt, "--cap") == 0) r = list_push(&cfg->caps, val, "capabilities", err);
    else if (strcmp(opt, "--env") == 0) r = list_push(&cfg->env, val, "environment entries", err);
    else if (strcmp(opt, "--uid") == 0 || strcmp(opt, "--gid") == 0) {
      if ((r = parse_id(val, UINT32_MAX - 1, &n, opt, err)) == 0) *(opt[2] == 'u' ? &cfg->uid : &cfg->gid) = (uint32_t)n;
    } else {
      set_error(err, EXIT_RUNTIME, 0, "unknown option `%s`", opt);
      return -1;
    }
    if (r < 0) return -1;
    i++;
  }
  if (i >= argc - 1) {
    set_error(err, EXIT_RUNTIME, 0, "no command given after --");
    return -1;
  }
  for (i++; i < argc; i++)
    if (list_push(&cfg->args, argv[i], "command arguments", err) < 0) return -1;
  return 0;
}

/* The environment this process was started with is wiped where it lies, not
 * only unlinked from `environ`: /proc/PID/environ reads the original block. */
static void scrub_environment(void) {
  for (char **e = environ; e && *e; e++) memset(*e, 0, strlen(*e));
  clearenv();
}

/* The agent protects itself from the OOM killer; the command must not be
 * the last thing the kernel kills. Written while /proc is still the host's. */
static int reset_oom_score(struct shim_error *err) {
  cleanup_fd int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "0", 1) != 1) {
    set_error(err, EXIT_RUNTIME, errno, "reset `/proc/self/oom_score_adj`");
    return -1;
  }
  return 0;
}

/* Opens the init's namespaces (while /proc is the host's), checks the init
 * is still the one named, and joins its cgroups and namespaces. */
static int enter(const struct shim_config *cfg, pid_t pid, unsigned long long start, struct shim_error *err) {
  int fds[NNS];
  for (size_t i = 0; i < NNS; i++) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, NAMESPACES[i]);
    fds[i] = open(path, O_RDONLY | O_CLOEXEC);
    if (fds[i] < 0) {
      set_error(err, EXIT_RUNTIME, errno, "open `%s`", path);
      while (i > 0) close(fds[--i]);
      return -1;
    }
  }
  int r = 0;
  /* Checked after the opens: the descriptors now pin that process's namespaces. */
  if (start_time(pid) != start) {
    set_error(err, EXIT_RUNTIME, ESRCH, "container init %d is gone", pid);
    r = -1;
  } else if (cgroups_join_self(&cfg->cgroups, err) < 0) {
    r = -1;
  }
  for (size_t i = 0; i < NNS; i++) {
    if (r == 0 && setns(fds[i], 0) < 0) {
      set_error(err, EXIT_RUNTIME, errno, "enter the %s namespace of pid %d", NAMESPACES[i], pid);
      r = -1;
    }
    close(fds[i]);
  }
  return r;
}

int exec_main(int argc, char **argv) {
  struct shim_config cfg;
  struct shim_error err = {0};
  pid_t pid;
  unsigned long long start;

  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
    set_error(&err, EXIT_RUNTIME, errno, "prctl PR_SET_DUMPABLE 0");
    return die(&err);
  }
  scrub_environment();
  if (parse(argc, argv, &cfg, &pid, &start, &err) < 0) return die(&err);
  if (fds_release_from(3, FDS_CLOSE, cfg.fd_scan, &err) < 0 || reset_oom_score(&err) < 0) return die(&err);
  if (enter(&cfg, pid, start, &err) < 0) return die(&err);
  pid_t child = fork();
  if (child < 0) {
    set_error(&err, EXIT_RUNTIME, errno, "fork");
    return die(&err);
  }
  if (child == 0) {
    if (chdir("/") < 0) set_error(&err, EXIT_RUNTIME, errno, "chdir to `/`");
    else if (security_apply(&cfg, &err) == 0)
      exec_command((char *const *)cfg.args.items, (char *const *)cfg.env.items, &err);
    fprintf(stderr, "fleetlet-shim exec: %s\n", err.message);
    _exit(err.code ? err.code : EXIT_RUNTIME);
  }
  int status;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) {
      set_error(&err, EXIT_RUNTIME, errno, "wait for the command (pid %d)", child);
      return die(&err);
    }
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
