/* Calls each system call the default seccomp filter must refuse, with
 * arguments the kernel would reject anyway (nothing here can load a module,
 * reboot or swap), and prints "name errno" per line. Under the filter every
 * one is EPERM even with all capabilities; without it, the kernel's own
 * argument checks answer with other errors. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PROBE(name, ...)                                   \
  do {                                                     \
    errno = 0;                                             \
    long r = syscall(__VA_ARGS__);                         \
    printf("%s %d\n", name, r < 0 ? errno : 0);            \
  } while (0)

int main(void) {
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
  PROBE("unshare_user", SYS_unshare, CLONE_NEWUSER | CLONE_NEWNS);
  PROBE("clone3", SYS_clone3, NULL, 0);
  return 0;
}
