/* fleetlet-shim CONFIG SYNC_FD [--foreground]
 *
 * Detaches (fork, setsid, fork; or, started as a session leader, as the
 * runtime starts it, just fork), forks the container's init into a new pid
 * namespace, joins it to its cgroups and reports one line on SYNC_FD:
 *   "ok SHIM_PID SHIM_START INIT_PID INIT_START" once the command is exec'd, or
 *   "err CODE ERRNO MESSAGE" if anything before exec failed.
 * (the start times are /proc/PID/stat's field 22).
 * It then supervises: forwards signals, copies output to the rotated log
 * (and to its own stdout/stderr with --foreground), and writes the exit
 * record when the init is gone. */
#include "shim.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "log-file.h"

static void report(int sync_fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(int sync_fd, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof(line) - 2) n = sizeof(line) - 2;
  line[n++] = '\n';
  while (write(sync_fd, line, n) < 0 && errno == EINTR) {
  }
}

/* Start time in clock ticks since boot: with the pid, it names this one
 * process for good, so a later reader can tell it from a reused pid. */
unsigned long long start_time(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  cleanup_fd int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  if (n <= 0) return 0;
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  for (int field = 2; field < 22 && p; field++) p = strchr(p + 1, ' ');
  return p ? strtoull(p + 1, NULL, 10) : 0;
}

static void fail(int sync_fd, const struct shim_error *err) {
  report(sync_fd, "err %d %d %s", err->code, err->errnum, err->message);
  _exit(err->code ? err->code : EXIT_RUNTIME);
}

/* UTC by arithmetic: gmtime_r would load /etc/localtime on every start. */
static void iso_now(char *buf, size_t len) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  long long days = ts.tv_sec / 86400, secs = ts.tv_sec % 86400;
  /* civil-from-days, after H. Hinnant's public-domain algorithm */
  long long z = days + 719468, era = z / 146097, doe = z - era * 146097;
  long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
  long long d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
  snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", (int)y, (int)m, (int)d, (int)(secs / 3600), (int)(secs / 60 % 60),
           (int)(secs % 60), (int)(ts.tv_nsec / 1000000));
}

/* Creates the container's cgroups, before the init is let past its first
 * wait: it opens their v1 `tasks` files next (cgroup-join.c). */
static int make_cgroups(const struct shim_config *cfg, struct shim_error *err) {
  for (size_t i = 0; i < cfg->cgroups.len; i++) {
    if (mkdir(cfg->cgroups.items[i], 0755) < 0 && errno != EEXIST) {
      set_error(err, EXIT_RUNTIME, errno, "create cgroup `%s`", cfg->cgroups.items[i]);
      return -1;
    }
  }
  return 0;
}

/* Writes the cgroups' limits and, on v2, attaches the device program: before
 * the init joins. On v1 this runs while the init builds its rootfs, so the
 * two overlap; on v2 before the init is forked into its cgroup. */
static int configure_cgroups(const struct shim_config *cfg, struct shim_error *err) {
  for (size_t i = 0; i < cfg->ncg_limits; i++) {
    const struct cg_limit *l = &cfg->cg_limits[i];
    cleanup_fd int fd = open(l->file, O_WRONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && l->optional) continue;
    ssize_t n = strlen(l->value);
    if (fd < 0 || write(fd, l->value, n) != n) {
      set_error(err, EXIT_RUNTIME, errno, "write %s to `%s`", l->value, l->file);
      return -1;
    }
  }
  if (cfg->dev_cgroup && devices_attach(cfg->dev_cgroup, &cfg->dev_rules, err) < 0) return -1;
  return 0;
}

/* The kernel counts OOM kills per memory cgroup: "oom_kill N" in v1's
 * memory.oom_control and v2's memory.events. */
static int oom_killed(const struct shim_config *cfg) {
  char buf[4096];
  if (!cfg->oom_file) return 0;
  cleanup_fd int fd = open(cfg->oom_file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  if (n <= 0) return 0;
  buf[n] = '\0';
  for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
    if (strncmp(line, "oom_kill ", 9) == 0) return strtoull(line + 9, NULL, 10) > 0;
  return 0;
}

static void write_exit(const struct shim_config *cfg, pid_t init, int status, const char *started) {
  char finished[40], json[512];
  iso_now(finished, sizeof(finished));
  int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + sig;
  int n = snprintf(json, sizeof(json),
                   "{\"pid\":%d,\"exitCode\":%d,\"signal\":%d,\"oomKilled\":%s,"
                   "\"startedAt\":\"%s\",\"finishedAt\":\"%s\"}\n",
                   init, code, sig, oom_killed(cfg) ? "true" : "false", started, finished);
  /* One write into the empty file made at start: readers see all or nothing
   * of it in practice, and check its shape anyway. No fsync: after a power
   * cut there is no container whose exit matters. */
  cleanup_fd int fd = open(cfg->exit_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || pwrite(fd, json, n, 0) != n)
    fprintf(stderr, "fleetlet-shim: write exit record `%s`: %s\n", cfg->exit_path, strerror(errno));
}

/* The overlay's upper and work dirs, made while the init unshares. */
static int prepare_dirs(const struct shim_config *cfg, struct shim_error *err) {
  const char *dirs[] = {cfg->upper, cfg->work};
  for (int i = 0; i < 2; i++) {
    if (mkdir(dirs[i], 0755) < 0 && errno != EEXIST) {
      set_error(err, EXIT_RUNTIME, errno, "create `%s`", dirs[i]);
      return -1;
    }
  }
  return 0;
}

/* One byte down the go pipe lets the init past its next wait. */
static int release(int go_fd, char step, struct shim_error *err) {
  if (write(go_fd, &step, 1) == 1) return 0;
  set_error(err, EXIT_RUNTIME, errno, "release the container init");
  return -1;
}

struct started_pids {
  pid_t shim, init;
  unsigned long long shim_start, init_start; /* read once: for running.json and the "ok" line */
};

/* running.json: what a later process needs to find this container again.
 * Written once, before the launcher hears "ok"; readers check its shape.
 * Fills in the start times, which the "ok" line repeats. */

static int write_running(const struct shim_config *cfg, struct started_pids *p, const char *started,
                         struct shim_error *err) {
  char json[512];
  p->shim_start = start_time(p->shim);
  p->init_start = start_time(p->init);
  int n = snprintf(json, sizeof(json),
                   "{\"shim\":{\"pid\":%d,\"startTime\":\"%llu\"},\"init\":{\"pid\":%d,\"startTime\":\"%llu\"},"
                   "\"startedAt\":\"%s\"}\n",
                   p->shim, p->shim_start, p->init, p->init_start, started);
  cleanup_fd int fd = open(cfg->running_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, json, n) != n) {
    set_error(err, EXIT_RUNTIME, errno, "record the running container in `%s`", cfg->running_path);
    return -1;
  }
  /* The exit record is created empty now and filled in at exit, so that
   * writing it then allocates nothing. Readers take empty as "not yet". */
  cleanup_fd int exit_fd = open(cfg->exit_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (exit_fd < 0) {
    set_error(err, EXIT_RUNTIME, errno, "create `%s`", cfg->exit_path);
    return -1;
  }
  return 0;
}

/* The init's report on the error pipe: a whole struct, 0 at EOF (it
 * exec'd), or anything else when it died without one. */
static ssize_t read_init_error(int fd, struct shim_error *child_err) {
  ssize_t n;
  do n = read(fd, child_err, sizeof(*child_err));
  while (n < 0 && errno == EINTR);
  if (n == (ssize_t)sizeof(*child_err)) child_err->message[sizeof(child_err->message) - 1] = '\0';
  return n;
}

static void supervise(const struct shim_config *cfg, pid_t init, int sigfd, int out, int errfd, int fg,
                      struct log_file *log, const char *started) {
  char buf[65536];
  int status = 0, init_done = 0;
  struct pollfd fds[3] = {{sigfd, POLLIN, 0}, {out, POLLIN, 0}, {errfd, POLLIN, 0}};
  int forward[3] = {-1, fg ? 1 : -1, fg ? 2 : -1};

  while (!init_done || fds[1].fd >= 0 || fds[2].fd >= 0) {
    /* Once the init is gone every process of its pid namespace is too, so
     * the pipes are at EOF; the timeout only guards against a stray holder. */
    int r = poll(fds, 3, init_done ? 2000 : -1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    for (int i = 1; i < 3; i++) {
      if (fds[i].fd < 0 || !fds[i].revents) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        continue;
      }
      log_file_write(log, buf, n);
      if (forward[i] >= 0 && write(forward[i], buf, n) < 0) forward[i] = -1; /* terminal gone */
    }
    if (fds[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      if (read(sigfd, &si, sizeof(si)) != sizeof(si)) continue;
      if (si.ssi_signo != SIGCHLD) {
        kill(init, si.ssi_signo);
        continue;
      }
      pid_t w;
      int st;
      while ((w = waitpid(-1, &st, WNOHANG)) > 0)
        if (w == init) {
          status = st;
          init_done = 1;
        }
    }
  }
  write_exit(cfg, init, status, started);
}

/* Leaves the launcher: the shim goes on in a child whose parent exits, so it
 * is reparented away from the launcher, in a session of its own that it
 * does not lead (it can never gain a controlling terminal). Started as a
 * session leader (posix_spawn's POSIX_SPAWN_SETSID, by the runtime) one
 * fork does; otherwise fork, setsid, fork. Each fork is a new process to
 * schedule, on the start's critical path. */
static void detach(int sync_fd) {
  struct shim_error err = {0};
  int forks = getsid(0) == getpid() ? 1 : 2;
  for (int i = 0; i < forks; i++) {
    if (i == 1 && setsid() < 0) {
      set_error(&err, EXIT_RUNTIME, errno, "setsid");
      fail(sync_fd, &err);
    }
    pid_t p = fork();
    if (p < 0) {
      set_error(&err, EXIT_RUNTIME, errno, "fork the shim");
      fail(sync_fd, &err);
    }
    if (p > 0) _exit(0);
  }
}

int main(int argc, char **argv) {
  struct shim_config cfg;
  struct shim_error err = {0};
  int go[2], errpipe[2], out[2], errout[2];
  static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};

  if (argc > 1 && strcmp(argv[1], "exec") == 0) return exec_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "devices") == 0) return devices_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "devnode") == 0) return devnode_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "init") == 0) return init_main(argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "netns") == 0) return netns_main(argc - 1, argv + 1);
  if (argc < 3) {
    fprintf(stderr, "usage: fleetlet-shim CONFIG SYNC_FD [--foreground]\n"
                    "       fleetlet-shim exec PID START_TIME [options] -- CMD...\n"
                    "       fleetlet-shim devices CGROUP2_DIR [RULE]...\n"
                    "       fleetlet-shim devnode PID START_TIME add|remove TARGET [c|b MAJOR MINOR MODE UID GID]\n"
                    "       fleetlet-shim init [--error-fd N] -- CMD...   (PID 1 of a container with `init`)\n"
                    "       fleetlet-shim netns add|del PATH | pin PID START_TIME PATH\n");
    return EXIT_RUNTIME;
  }
  int sync_fd = atoi(argv[2]);
  int fg = argc > 3 && strcmp(argv[3], "--foreground") == 0;

  detach(sync_fd);

  if (config_read(argv[1], &cfg, &err) < 0) fail(sync_fd, &err);
  /* Nothing the launcher handed over or leaked (the status pipe, the config
   * memfd) may reach the container; the init checks again before its exec. */
  if (fds_release_from(3, FDS_CLOEXEC, cfg.fd_scan, &err) < 0) fail(sync_fd, &err);
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) {
    set_error(&err, EXIT_RUNTIME, errno, "prctl PR_SET_CHILD_SUBREAPER");
    fail(sync_fd, &err);
  }
  prctl(PR_SET_NAME, "fleetlet-shim", 0, 0, 0); /* cosmetic: the name in ps */
  signal(SIGPIPE, SIG_IGN);

  struct log_file log = {.fd = -1};
  if (pipe2(go, O_CLOEXEC) < 0 || pipe2(errpipe, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 ||
      pipe2(errout, O_CLOEXEC) < 0) {
    set_error(&err, EXIT_RUNTIME, errno, "create pipes");
    fail(sync_fd, &err);
  }
  sigset_t mask, old;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) sigaddset(&mask, forwarded[i]);
  sigprocmask(SIG_BLOCK, &mask, &old);
  int sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
  if (sigfd < 0) {
    set_error(&err, EXIT_RUNTIME, errno, "signalfd");
    fail(sync_fd, &err);
  }
  if (unshare(CLONE_NEWPID) < 0) {
    set_error(&err, EXIT_RUNTIME, errno, "unshare the pid namespace");
    fail(sync_fd, &err);
  }

  /* On v2 the init is born in its cgroup (cgroup-join.c): the cgroup is
   * made and set up first. On v1 that waits until the init runs. */
  const char *v2 = cgroup_v2_dir(&cfg.cgroups);
  if (v2 && (make_cgroups(&cfg, &err) < 0 || configure_cgroups(&cfg, &err) < 0)) fail(sync_fd, &err);
  int placed;
  pid_t shim = getpid();
  pid_t init = fork_into_cgroup(v2, !cfg.cgroup_move, &placed);
  if (init < 0) {
    set_error(&err, EXIT_RUNTIME, errno, "fork the container init%s%s", v2 ? " into " : "", v2 ? v2 : "");
    fail(sync_fd, &err);
  }
  if (init == 0) {
    close(go[1]); /* so that a shim that dies leaves the init reading EOF, not waiting */
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    container_init(&cfg, shim, go[0], out[1], errout[1], errpipe[1], &err);
    while (write(errpipe[1], &err, sizeof(err)) < 0 && errno == EINTR) {
    }
    _exit(err.code);
  }
  close(go[0]);
  close(errpipe[1]);
  close(out[1]);
  close(errout[1]);

  /* While the init unshares its namespaces, prepare what it needs next; then
   * while it builds its rootfs, make its network namespace, write the cgroup
   * limits and create the records, so they cost no time of their own. */
  char started[40];
  iso_now(started, sizeof(started));
  struct started_pids pids = {.shim = shim, .init = init};
  if (prepare_dirs(&cfg, &err) < 0 || (!v2 && make_cgroups(&cfg, &err) < 0) || release(go[1], 'd', &err) < 0 ||
      (shim_makes_netns(&cfg) && netns_make_for_init(go[1], &err) < 0) ||
      (!v2 && configure_cgroups(&cfg, &err) < 0) || (!placed && cgroups_add_pid_v2(&cfg.cgroups, init, &err) < 0) ||
      release(go[1], 'g', &err) < 0 || write_running(&cfg, &pids, started, &err) < 0 ||
      log_file_open(&log, cfg.log_path, cfg.log_max, cfg.log_keep, &err) < 0) {
    kill(init, SIGKILL);
    waitpid(init, NULL, 0);
    unlink(cfg.running_path);
    unlink(cfg.exit_path);
    /* The init may have failed first (a mount in its rootfs, say): our step
     * then fails on the go pipe it closed, EPIPE, while its own report, the
     * one that names the cause, waits in the error pipe. The init is dead,
     * so this read cannot block. */
    struct shim_error child_err;
    if (read_init_error(errpipe[0], &child_err) == (ssize_t)sizeof(child_err)) fail(sync_fd, &child_err);
    fail(sync_fd, &err);
  }
  close(go[1]);

  struct shim_error child_err;
  ssize_t n = read_init_error(errpipe[0], &child_err);
  close(errpipe[0]);
  if (n != 0) {
    waitpid(init, NULL, 0);
    unlink(cfg.running_path); /* never started: the container stays "created" */
    unlink(cfg.exit_path);
    if (n != sizeof(child_err)) set_error(&child_err, EXIT_RUNTIME, 0, "container init died before exec");
    fail(sync_fd, &child_err);
  }
  report(sync_fd, "ok %d %llu %d %llu", pids.shim, pids.shim_start, pids.init, pids.init_start);
  close(sync_fd);
  if (!fg) {
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
      close(devnull);
    }
  }
  supervise(&cfg, init, sigfd, out[0], errout[0], fg, &log, started);
  return 0;
}
