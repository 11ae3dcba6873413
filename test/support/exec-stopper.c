/* exec-stopper MARKER -- PROG ARGS...
 *
 * Runs PROG under ptrace and holds every process it forks at the entry of
 * its execve(2), before the kernel replaces anything, until the file MARKER
 * exists (at most 60 s); it writes the held process's pid to MARKER.held
 * first. This stretches the moment between fork and exec, which a loaded
 * machine stretches at random, so that a test can look at the process then.
 * Exits with PROG's status. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void hold(const char *marker, pid_t pid) {
  char held[4096], part[4100];
  snprintf(held, sizeof(held), "%s.held", marker);
  snprintf(part, sizeof(part), "%s.tmp", held);
  /* Written whole, then renamed: whoever sees the name can read the pid. */
  FILE *f = fopen(part, "w");
  if (f) {
    fprintf(f, "%d\n", pid);
    if (fclose(f) == 0) rename(part, held);
  }
  struct timespec pause = {0, 20 * 1000 * 1000};
  for (int i = 0; i < 3000 && access(marker, F_OK) < 0; i++) nanosleep(&pause, NULL);
}

static int at_execve_entry(pid_t pid) {
  struct __ptrace_syscall_info info;
  long n = ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof(info), &info);
  return n > 0 && info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_execve;
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: exec-stopper MARKER -- PROG ARGS...\n");
    return 2;
  }
  pid_t root = fork();
  if (root < 0) return 125;
  if (root == 0) {
    if (ptrace(PTRACE_TRACEME, 0, 0, 0) < 0 || raise(SIGSTOP) != 0) _exit(125);
    execvp(argv[3], argv + 3);
    _exit(127);
  }
  int status, root_status = 0;
  if (waitpid(root, &status, 0) != root) return 125;
  long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC |
              PTRACE_O_EXITKILL; /* an exec is an event stop, not a SIGTRAP */
  if (ptrace(PTRACE_SETOPTIONS, root, 0, opts) < 0 || ptrace(PTRACE_SYSCALL, root, 0, 0) < 0) {
    perror("exec-stopper: ptrace");
    return 125;
  }
  for (;;) {
    pid_t pid = waitpid(-1, &status, __WALL);
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) break; /* ECHILD: every traced process is gone */
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
      if (pid == root) root_status = status;
      continue;
    }
    int sig = WSTOPSIG(status), deliver = 0;
    if (sig == (SIGTRAP | 0x80)) {
      if (pid != root && at_execve_entry(pid)) hold(argv[1], pid);
    } else if (status >> 16 == 0 && sig != SIGSTOP) {
      deliver = sig; /* a real signal; SIGSTOP is a new tracee's first stop */
    }
    ptrace(PTRACE_SYSCALL, pid, 0, deliver);
  }
  return WIFEXITED(root_status) ? WEXITSTATUS(root_status) : 128 + WTERMSIG(root_status);
}
