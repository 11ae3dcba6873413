/* The default seccomp filter. Its program is generated at build time from
 * native/seccomp/policy.h (by native/seccomp/generator.c, with libseccomp)
 * for this architecture: allowed calls run, known dangerous ones get EPERM,
 * calls the policy does not know (newer ones included) get ENOSYS, and a
 * call from an ABI the policy does not filter kills the process. */
#include "shim.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>

#include "seccomp-programs.h"

int seccomp_install(struct shim_error *err) {
  struct sock_fprog prog = {
      .len = sizeof(seccomp_program) / sizeof(seccomp_program[0]),
      .filter = (struct sock_filter *)seccomp_program,
  };
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "install the seccomp filter for %s", SECCOMP_PROGRAM_TARGET);
    return -1;
  }
  return 0;
}
