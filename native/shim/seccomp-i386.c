/* The i386 system call numbers of the deny-list, for x86_64 hosts that run
 * 32-bit binaries. Kept in its own file because the i386 and x86_64 headers
 * define the same names with different numbers. */
#if defined(__x86_64__)
#include <asm/unistd_32.h>
#include <stddef.h>

#define DENY(nr) nr,
const int i386_denied[] = {
#include "seccomp-denied.h"
};
#undef DENY
const size_t i386_denied_len = sizeof(i386_denied) / sizeof(i386_denied[0]);
const int i386_clone = __NR_clone, i386_unshare = __NR_unshare, i386_clone3 = __NR_clone3;
#endif
