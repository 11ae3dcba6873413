/* fleetlet-shim exec PID START_TIME [--cgroup DIR]... [--cap N]... [--uid U] [--gid G]
 *                    [--env K=V]... [--no-seccomp] -- CMD ARGS...
 *
 * Runs a command inside a running container (healthchecks): checks that PID
 * is still the container's init that started at START_TIME, joins its
 * cgroups, enters its cgroup, ipc, uts, net, pid and mount namespaces, and
 * forks (a pid namespace applies to children) a process with the same
 * privilege limits as the container's own before exec. Exits with the
 * command's status (128+N for a signal), 125 when the runtime failed. */
#include "shim.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>

static const char *const NAMESPACES[] = {"cgroup", "ipc", "uts", "net", "pid", "mnt"};
#define NNS (sizeof(NAMESPACES) / sizeof(NAMESPACES[0]))

static int die(const struct shim_error *err) {
  fprintf(stderr, "fleetlet-shim exec: %s\n", err->message);
  return err->code ? err->code : EXIT_RUNTIME;
}

static int parse(int argc, char **argv, struct shim_config *cfg, pid_t *pid, unsigned long long *start, struct shim_error *err) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->seccomp = 1;
  cfg->nofile_soft = 1024;
  cfg->nofile_hard = 524288;
  if (argc < 3) {
    set_error(err, EXIT_RUNTIME, 0, "usage: exec PID START_TIME [options] -- CMD...");
    return -1;
  }
  *pid = (pid_t)atoi(argv[1]);
  *start = strtoull(argv[2], NULL, 10);
  int i = 3;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    const char *opt = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    struct str_list *list = NULL;
    if (strcmp(opt, "--no-seccomp") == 0) {
      cfg->seccomp = 0;
      continue;
    }
    if (!val) break;
    if (strcmp(opt, "--cgroup") == 0) list = &cfg->cgroups;
    else if (strcmp(opt, "--cap") == 0) list = &cfg->caps;
    else if (strcmp(opt, "--env") == 0) list = &cfg->env;
    else if (strcmp(opt, "--uid") == 0) cfg->uid = (uint32_t)strtoul(val, NULL, 10);
    else if (strcmp(opt, "--gid") == 0) cfg->gid = (uint32_t)strtoul(val, NULL, 10);
    else {
      set_error(err, EXIT_RUNTIME, 0, "unknown option `%s`", opt);
      return -1;
    }
    if (list && list->len < MAX_LIST) list->items[list->len++] = val;
    i++;
  }
  if (i >= argc - 1) {
    set_error(err, EXIT_RUNTIME, 0, "no command given after --");
    return -1;
  }
  for (i++; i < argc && cfg->args.len < MAX_LIST - 1; i++) cfg->args.items[cfg->args.len++] = argv[i];
  return 0;
}

/* Moves `pid` into each cgroup directory of `dirs` (one per hierarchy). */
int cgroups_add_pid(const struct str_list *dirs, pid_t pid, struct shim_error *err) {
  char path[4096], value[32];
  int len = snprintf(value, sizeof(value), "%d", pid);
  for (size_t i = 0; i < dirs->len; i++) {
    snprintf(path, sizeof(path), "%s/cgroup.procs", dirs->items[i]);
    cleanup_fd int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, value, len) != len) {
      set_error(err, EXIT_RUNTIME, errno, "join cgroup `%s`", dirs->items[i]);
      return -1;
    }
  }
  return 0;
}

int exec_main(int argc, char **argv) {
  struct shim_config cfg;
  struct shim_error err = {0};
  pid_t pid;
  unsigned long long start;
  int fds[NNS];

  if (parse(argc, argv, &cfg, &pid, &start, &err) < 0) return die(&err);
  cfg.env.items[cfg.env.len] = NULL;
  cfg.args.items[cfg.args.len] = NULL;
  /* Open every namespace first: after entering the mount namespace, /proc is the container's. */
  for (size_t i = 0; i < NNS; i++) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, NAMESPACES[i]);
    fds[i] = open(path, O_RDONLY | O_CLOEXEC);
    if (fds[i] < 0) {
      set_error(&err, EXIT_RUNTIME, errno, "open `%s`", path);
      return die(&err);
    }
  }
  /* Checked after the opens: the descriptors now pin that process's namespaces. */
  if (start_time(pid) != start) {
    set_error(&err, EXIT_RUNTIME, ESRCH, "container init %d is gone", pid);
    return die(&err);
  }
  if (cgroups_add_pid(&cfg.cgroups, getpid(), &err) < 0) return die(&err);
  for (size_t i = 0; i < NNS; i++) {
    if (setns(fds[i], 0) < 0) {
      set_error(&err, EXIT_RUNTIME, errno, "enter the %s namespace of pid %d", NAMESPACES[i], pid);
      return die(&err);
    }
    close(fds[i]);
  }
  pid_t child = fork();
  if (child < 0) {
    set_error(&err, EXIT_RUNTIME, errno, "fork");
    return die(&err);
  }
  if (child == 0) {
    if (chdir("/") < 0) set_error(&err, EXIT_RUNTIME, errno, "chdir to `/`");
    else if (security_apply(&cfg, &err) == 0) exec_command(&cfg, &err);
    fprintf(stderr, "fleetlet-shim exec: %s\n", err.message);
    _exit(err.code ? err.code : EXIT_RUNTIME);
  }
  int status;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return EXIT_RUNTIME;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
