/* fleetlet-shim init [--error-fd N] -- CMD...
 *
 * PID 1 of a container run with `init` ("init": true in a service, `fleetlet
 * run --init`). The shim binds its own binary read-only at /dev/init, and
 * the container's init execs it in place of the command once the rootfs,
 * the user, the capabilities and the seccomp filter are in place: this runs
 * with the container's privileges and needs nothing from the image. It
 *
 *  - forks the command and forwards every signal it gets to it. The kernel
 *    gives PID 1 of a pid namespace only the signals it handles or blocks
 *    (SIGKILL from outside aside), so a command that is PID 1 itself and
 *    has no SIGTERM handler (`sleep`, most programs) ignores `fleetlet stop`
 *    until the timeout's SIGKILL;
 *  - reaps every child: orphans are re-parented to PID 1, and a command
 *    that is PID 1 itself rarely waits for children it never started;
 *  - exits with the command's status when the command exits (128+N when
 *    signal N killed it); the kernel then kills whatever is left in the
 *    namespace.
 *
 * Signals stay blocked and are taken with sigwaitinfo: no handler runs, no
 * descriptor is needed. Signals the kernel raises on the process at fault
 * (SIGSEGV, SIGBUS, …) and terminal stops are the init's own, not
 * forwarded. --error-fd is the shim's error pipe, which the child inherits
 * close-on-exec: a command that cannot be exec'd is reported on it exactly
 * as without an init, and a successful exec closes it, which is how the
 * shim learns the command runs. */
#include "shim.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/wait.h>

extern char **environ;

static const int own_signals[] = {SIGFPE, SIGILL, SIGSEGV, SIGBUS, SIGABRT, SIGTRAP, SIGSYS, SIGTTIN, SIGTTOU};

static int init_fail(const char *what) {
  fprintf(stderr, "fleetlet-init: %s: %s\n", what, strerror(errno));
  return EXIT_RUNTIME;
}

/* The error goes down the shim's pipe when there is one, else to stderr
 * (the container's log). */
static void report_error(int err_fd, const struct shim_error *err) {
  if (err_fd >= 0) {
    ssize_t n;
    do n = write(err_fd, err, sizeof(*err));
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(*err)) return;
  }
  fprintf(stderr, "fleetlet-init: %s\n", err->message);
}

/* The child: back to the signal mask the init started with, then the
 * command. Returns never. */
static void run_command(char **argv, const sigset_t *mask, int err_fd) {
  struct shim_error err = {0};
  if (sigprocmask(SIG_SETMASK, mask, NULL) < 0) set_error(&err, EXIT_RUNTIME, errno, "restore the signal mask");
  else exec_command(argv, environ, &err);
  report_error(err_fd, &err);
  _exit(err.code ? err.code : EXIT_RUNTIME);
}

/* Reaps every child that has exited; returns the command's status once it
 * is among them, -1 while it runs, -2 on an error (errno set). */
static int reap(pid_t command, int *status) {
  for (;;) {
    int st;
    pid_t w = waitpid(-1, &st, WNOHANG);
    if (w == command) {
      *status = st;
      return 0;
    }
    if (w > 0) continue; /* an orphan, gone for good now */
    if (w == 0 || errno == ECHILD) return -1;
    if (errno != EINTR) return -2;
  }
}

/* Takes signals until the command exits: SIGCHLD reaps, any other is
 * forwarded. Returns the init's exit code. */
static int forward_and_reap(pid_t command, const sigset_t *set) {
  for (;;) {
    siginfo_t si;
    int sig = sigwaitinfo(set, &si);
    if (sig < 0) {
      if (errno == EINTR) continue;
      return init_fail("wait for signals");
    }
    if (sig != SIGCHLD) {
      /* The command stays a zombie (its pid reserved) until reaped below,
       * so this never reaches another process; ESRCH cannot happen then,
       * but is harmless: its SIGCHLD is on the way. */
      if (kill(command, sig) < 0 && errno != ESRCH)
        fprintf(stderr, "fleetlet-init: forward signal %d: %s\n", sig, strerror(errno));
      continue;
    }
    int status, r = reap(command, &status);
    if (r == -2) return init_fail("reap children");
    if (r == 0) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
}

/* argv: init [--error-fd N] -- CMD...; sets *err_fd and returns CMD's index, or -1. */
static int parse(int argc, char **argv, int *err_fd) {
  int i = 1;
  *err_fd = -1;
  if (argc > 2 && strcmp(argv[1], "--error-fd") == 0) {
    struct shim_error err;
    uint64_t n;
    if (parse_u64(argv[2], &n, "--error-fd", &err) < 0 || n > INT_MAX) return -1;
    *err_fd = (int)n;
    i = 3;
  }
  if (i + 1 >= argc || strcmp(argv[i], "--") != 0) return -1;
  return i + 1;
}

int init_main(int argc, char **argv) {
  int err_fd;
  int cmd = parse(argc, argv, &err_fd);
  if (cmd < 0) {
    fprintf(stderr, "usage: fleetlet-shim init [--error-fd N] -- CMD...\n");
    return EXIT_RUNTIME;
  }
  /* Only the child's copy of the pipe may stay open, and only until its exec. */
  if (err_fd >= 0 && fcntl(err_fd, F_SETFD, FD_CLOEXEC) < 0) return init_fail("mark the error pipe close-on-exec");
  /* An ignored SIGCHLD (inherited through exec) would have the kernel reap
   * the command itself, and its status would be lost. */
  if (signal(SIGCHLD, SIG_DFL) == SIG_ERR) return init_fail("reset SIGCHLD");
  sigset_t set, old;
  if (sigfillset(&set) < 0) return init_fail("fill the signal set");
  for (size_t i = 0; i < sizeof(own_signals) / sizeof(own_signals[0]); i++)
    if (sigdelset(&set, own_signals[i]) < 0) return init_fail("leave a signal out of the set");
  if (sigprocmask(SIG_BLOCK, &set, &old) < 0) return init_fail("block signals");

  pid_t command = fork();
  if (command < 0) {
    struct shim_error err = {0};
    set_error(&err, EXIT_RUNTIME, errno, "fork the command `%s`", argv[cmd]);
    report_error(err_fd, &err);
    return EXIT_RUNTIME;
  }
  if (command == 0) run_command(argv + cmd, &old, err_fd);
  if (err_fd >= 0 && close(err_fd) < 0) return init_fail("close the error pipe");
  return forward_and_reap(command, &set);
}
