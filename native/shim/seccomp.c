/* The default seccomp filter: a deny-list in classic BPF. Calls from the
 * native ABI (and, on x86_64, the i386 ABI) that load kernel code, reboot,
 * touch swap, keys, bpf, perf, ptrace, handles, userfaultfd, mounts or the
 * clock get EPERM; asking for a new user namespace gets EPERM; clone3 gets
 * ENOSYS so that libc falls back to clone, whose flags the filter can see.
 * Calls from any other ABI kill the process. */
#include "shim.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#elif defined(__arm__)
#define NATIVE_ARCH AUDIT_ARCH_ARM
#elif defined(__i386__)
#define NATIVE_ARCH AUDIT_ARCH_I386
#elif defined(__riscv) && __riscv_xlen == 64
#define NATIVE_ARCH AUDIT_ARCH_RISCV64
#else
#error "fleetlet-shim: add this architecture's AUDIT_ARCH to seccomp.c"
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG0_LOW offsetof(struct seccomp_data, args[0])
#else
#define ARG0_LOW (offsetof(struct seccomp_data, args[0]) + 4)
#endif

#define DENY(nr) nr,
static const int native_denied[] = {
#include "seccomp-denied.h"
};
#undef DENY

struct syscall_abi {
  uint32_t arch;
  const int *denied;
  size_t ndenied;
  int nr_clone, nr_unshare, nr_clone3;
  uint32_t x32_bit; /* x86_64 only: the x32 ABI shares the arch value */
};

#if defined(__x86_64__)
extern const int i386_denied[];
extern const size_t i386_denied_len;
extern const int i386_clone, i386_unshare, i386_clone3;
#endif

#define MAX_PROG 1024

struct prog {
  struct sock_filter ins[MAX_PROG];
  unsigned short len;
};

static void emit(struct prog *p, struct sock_filter f) {
  if (p->len < MAX_PROG) p->ins[p->len] = f;
  p->len++;
}

#define RET(v) emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, (v)))
#define LOAD(off) emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off)))
#define JEQ(k, t, f) emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (t), (f)))
#define JSET(k, t, f) emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, (k), (t), (f)))
#define JGE(k, t, f) emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, (k), (t), (f)))

/* Emits the checks of one ABI; control reaches the end only when the call
 * is allowed, which then returns ALLOW. */
static void emit_abi(struct prog *p, const struct syscall_abi *abi) {
  LOAD(offsetof(struct seccomp_data, nr));
  if (abi->x32_bit) {
    JGE(abi->x32_bit, 0, 1);
    RET(SECCOMP_RET_ERRNO | EPERM);
  }
  for (size_t i = 0; i < abi->ndenied; i++) {
    JEQ((uint32_t)abi->denied[i], 0, 1);
    RET(SECCOMP_RET_ERRNO | EPERM);
  }
  JEQ((uint32_t)abi->nr_clone3, 0, 1);
  RET(SECCOMP_RET_ERRNO | ENOSYS);
  int flagged[2] = {abi->nr_clone, abi->nr_unshare};
  for (int i = 0; i < 2; i++) {
    LOAD(offsetof(struct seccomp_data, nr));
    JEQ((uint32_t)flagged[i], 0, 4);
    LOAD(ARG0_LOW);
    JSET(CLONE_NEWUSER, 0, 1);
    RET(SECCOMP_RET_ERRNO | EPERM);
    RET(SECCOMP_RET_ALLOW);
  }
  RET(SECCOMP_RET_ALLOW);
}

int seccomp_install(struct shim_error *err) {
  static struct prog prog; /* static: too large for a small stack */
  struct prog *p = &prog;
  struct syscall_abi abis[2];
  size_t nabis = 0;

  abis[nabis++] = (struct syscall_abi){
      .arch = NATIVE_ARCH, .denied = native_denied, .ndenied = sizeof(native_denied) / sizeof(int),
      .nr_clone = __NR_clone, .nr_unshare = __NR_unshare, .nr_clone3 = __NR_clone3,
#if defined(__x86_64__)
      .x32_bit = 0x40000000,
#endif
  };
#if defined(__x86_64__)
  abis[nabis++] = (struct syscall_abi){
      .arch = AUDIT_ARCH_I386, .denied = i386_denied, .ndenied = i386_denied_len,
      .nr_clone = i386_clone, .nr_unshare = i386_unshare, .nr_clone3 = i386_clone3,
  };
#endif

  p->len = 0;
  for (size_t a = 0; a < nabis; a++) {
    unsigned short start;
    LOAD(offsetof(struct seccomp_data, arch));
    /* The jump over this ABI's block is patched once its length is known. */
    JEQ(abis[a].arch, 0, 0);
    start = p->len;
    emit_abi(p, &abis[a]);
    if (p->len <= MAX_PROG) p->ins[start - 1].jf = (unsigned char)(p->len - start);
    if (p->len - start > 255) {
      set_error(err, EXIT_RUNTIME, E2BIG, "seccomp: filter block for arch 0x%x is too long", abis[a].arch);
      return -1;
    }
  }
  RET(SECCOMP_RET_KILL_PROCESS);
  if (p->len > MAX_PROG) {
    set_error(err, EXIT_RUNTIME, E2BIG, "seccomp: filter has %u instructions", p->len);
    return -1;
  }
  struct sock_fprog fprog = {.len = p->len, .filter = p->ins};
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0, 0) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "install the seccomp filter");
    return -1;
  }
  return 0;
}
