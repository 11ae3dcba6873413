/* Makes system calls the default seccomp filter must refuse, must not know
 * or must allow, and prints "name result" per line: 0 for success, the
 * errno for a failure, or -N when the call (made in a child) was killed by
 * signal N. The refused calls get arguments the kernel would reject anyway
 * or that change only this process (nothing here can load a module, reboot
 * or swap), so that without the filter the kernel's own checks answer.
 * Numbers past the build machine's headers are given raw: since Linux 5.1 a
 * new call has the same number on every ABI. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NR_statmount 457
#define NR_listmount 458
#define NR_mseal 462
#define NR_open_tree_attr 467
#define NR_unknown 1000
#define ADDR_NO_RANDOMIZE 0x0040000

#define PROBE(name, ...)                        \
  do {                                          \
    errno = 0;                                  \
    long r = syscall(__VA_ARGS__);              \
    printf("%s %d\n", name, r < 0 ? errno : 0); \
  } while (0)

/* clone must not leave a second copy of the probe running. */
static void probe_clone(const char *name, unsigned long flags) {
  errno = 0;
  long r = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
  if (r == 0) _exit(0);
  if (r > 0) waitpid((pid_t)r, NULL, 0);
  printf("%s %d\n", name, r < 0 ? errno : 0);
}

#if defined(__x86_64__)
/* An x32 or i386 call may kill the caller: make it in a child. */
static void probe_in_child(const char *name, int i386) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    long r;
    if (i386) {
      /* getpid is 20 on i386; the kernel answers -errno in eax. */
      __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory", "r8", "r9", "r10", "r11");
      _exit(r < 0 ? (int)-r : 0);
    }
    errno = 0;
    r = syscall(0x40000000 | SYS_getpid);
    _exit(r < 0 ? errno : 0);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) < 0) status = 255 << 8;
  printf("%s %d\n", name, WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status));
}
#endif

int main(void) {
  /* Refused with EPERM. */
  PROBE("init_module", SYS_init_module, NULL, 0, NULL);
  PROBE("finit_module", SYS_finit_module, -1, NULL, 0);
  PROBE("delete_module", SYS_delete_module, NULL, 0);
  PROBE("kexec_load", SYS_kexec_load, 0, 0, NULL, -1L);
  PROBE("reboot", SYS_reboot, 0, 0, 0, NULL); /* wrong magic numbers: EINVAL without the filter */
  PROBE("swapon", SYS_swapon, NULL, 0);
  PROBE("swapoff", SYS_swapoff, NULL);
  PROBE("bpf", SYS_bpf, -1, NULL, 0);
  PROBE("perf_event_open", SYS_perf_event_open, NULL, 0, -1, -1, 0);
  PROBE("add_key", SYS_add_key, NULL, NULL, NULL, 0, 0);
  PROBE("keyctl", SYS_keyctl, -1, 0, 0, 0, 0);
  PROBE("open_by_handle_at", SYS_open_by_handle_at, -1, NULL, 0);
  PROBE("userfaultfd", SYS_userfaultfd, -1);
  PROBE("ptrace", SYS_ptrace, -1, 0, NULL, NULL);
  PROBE("mount", SYS_mount, NULL, NULL, NULL, 0, NULL);
  PROBE("pidfd_getfd", SYS_pidfd_getfd, -1, -1, 0);
  PROBE("process_madvise", SYS_process_madvise, -1, NULL, 0, 0, 0);
  PROBE("fanotify_init", SYS_fanotify_init, 0, 0);
  PROBE("quotactl_fd", SYS_quotactl_fd, -1, 0, 0, NULL);
  PROBE("personality_addr_no_randomize", SYS_personality, ADDR_NO_RANDOMIZE);
  PROBE("unshare_user", SYS_unshare, CLONE_NEWUSER | CLONE_NEWNS);
  PROBE("unshare_mount", SYS_unshare, CLONE_NEWNS);
  probe_clone("clone_newns", CLONE_NEWNS);
  PROBE("socket_alg", SYS_socket, AF_ALG, SOCK_SEQPACKET, 0);
  PROBE("socket_vsock", SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
  PROBE("socket_vsock_high_bits", SYS_socket, (1L << 32) | AF_VSOCK, SOCK_STREAM, 0);
#if defined(SYS_sysfs)
  PROBE("sysfs", SYS_sysfs, 1, NULL);
  PROBE("ustat", SYS_ustat, 0, NULL);
#endif
  /* Unknown to the filter: ENOSYS, though this kernel may have them. */
  PROBE("clone3", SYS_clone3, NULL, 0);
  PROBE("statmount", NR_statmount, NULL, NULL, 0, 0);
  PROBE("listmount", NR_listmount, NULL, NULL, 0, 0);
  PROBE("mseal", NR_mseal, 0, 0, 0);
  PROBE("open_tree_attr", NR_open_tree_attr, -1, NULL, 0, NULL, 0);
  PROBE("unknown_1000", NR_unknown, 0);
  /* Allowed. */
  PROBE("getpid", SYS_getpid);
  PROBE("socket_unix", SYS_socket, AF_UNIX, SOCK_STREAM, 0);
  probe_clone("clone_process", 0);
  PROBE("unshare_fs", SYS_unshare, CLONE_FS);
  PROBE("personality_query", SYS_personality, 0xffffffffUL);
#if defined(__x86_64__)
  /* Other ABIs: killed. */
  probe_in_child("x32_getpid", 0);
  probe_in_child("i386_getpid", 1);
#endif
  return 0;
}
