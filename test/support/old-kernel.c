/* old-kernel 5.8|5.10 -- PROG ARGS...
 * old-kernel 5.8|5.10 --probe
 *
 * Runs PROG as the kernels before 5.11 would answer close_range(2): a seccomp
 * filter, inherited by everything PROG starts (fleetlet, the shim, the
 * container), fails the call with ENOSYS ("5.8": before close_range existed)
 * or, when CLOSE_RANGE_CLOEXEC is asked for, with EINVAL ("5.10": the call
 * without that flag). --probe prints what close_range(3, ~0U,
 * CLOSE_RANGE_CLOEXEC) answers under the filter, to show the emulation holds.
 * close_range is 436 in every architecture's table; the flags are read from
 * the low half of the argument, so this is for little-endian machines. */
#include <errno.h>
#include <linux/close_range.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "old-kernel reads the low 32 bits of close_range's flags at the little-endian offset"
#endif

int main(int argc, char **argv) {
  int before_5_9 = argc > 2 && strcmp(argv[1], "5.8") == 0;
  int probe = argc == 3 && strcmp(argv[2], "--probe") == 0;
  if (argc < 3 || (!before_5_9 && strcmp(argv[1], "5.10") != 0) || (!probe && (argc < 4 || strcmp(argv[2], "--") != 0))) {
    fprintf(stderr, "usage: old-kernel 5.8|5.10 -- PROG ARGS... | old-kernel 5.8|5.10 --probe\n");
    return 2;
  }
  unsigned flags_at = offsetof(struct seccomp_data, args) + 2 * sizeof(__u64);
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_close_range, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, flags_at),
      /* 5.8: whatever the flags (x >= 0); 5.10: only with CLOSE_RANGE_CLOEXEC */
      BPF_JUMP(BPF_JMP | (before_5_9 ? BPF_JGE : BPF_JSET) | BPF_K, before_5_9 ? 0 : CLOSE_RANGE_CLOEXEC, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (before_5_9 ? ENOSYS : EINVAL)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
    perror("old-kernel: install the seccomp filter");
    return 125;
  }
  if (probe) {
    long r = syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
    printf("%s\n", r == 0 ? "0" : strerror(errno));
    return 0;
  }
  execvp(argv[3], argv + 3);
  perror("old-kernel: exec");
  return 127;
}
