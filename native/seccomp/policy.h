/* The default seccomp policy of a fleetlet container: the one place that
 * says which system calls a container may make. native/seccomp/generator.c
 * turns it into a classic BPF program per target with libseccomp at build
 * time; the shim embeds the program of its own architecture.
 *
 * It follows Docker's default profile for a container with fleetlet's
 * default capabilities (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL,
 * NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT), with the
 * differences marked "Docker:" below. The policy does not widen with
 * --cap-add: a container that needs more runs with --seccomp unconfined.
 *
 *   ALLOW(name)                    allowed
 *   ALLOW_ARG0_IN(name, lo, hi)    allowed when the first argument, as a 64-bit
 *                                  value, is in [lo, hi]
 *   ALLOW_ARG0_CLEAR(name, bits)   allowed when the first argument has none of bits
 *   DENY(name)                     refused with EPERM
 *   NOSYS(name)                    answered ENOSYS, as if the kernel lacked it
 *
 * A call with ALLOW_ARG0_* rules is allowed when any of them matches and
 * refused with EPERM otherwise. Every call named nowhere here, which
 * includes every call Linux adds after this list was reviewed, is answered
 * ENOSYS: it fails closed, and libc falls back as it does on an older
 * kernel. A name applies on every ABI that has it, and a name no target ABI
 * has is a build error. Many calls exist on some ABIs only: aarch64 lacks
 * the legacy ones (open, stat, fork, …), the *64, *32 and *_time64 variants
 * are arm's, and [x86_64] or [arm] marks a few more.
 *
 * TARGET(name, C condition that selects it in the shim, ABIs it filters):
 * a system call from any other ABI kills the process. */

#ifndef TARGET
#define TARGET(name, condition, ...)
#endif
#ifndef ALLOW
#define ALLOW(name)
#endif
#ifndef ALLOW_ARG0_IN
#define ALLOW_ARG0_IN(name, lo, hi)
#endif
#ifndef ALLOW_ARG0_CLEAR
#define ALLOW_ARG0_CLEAR(name, bits)
#endif
#ifndef DENY
#define DENY(name)
#endif
#ifndef NOSYS
#define NOSYS(name)
#endif

/* x86_64 filters its own ABI only. The x32 ABI (same arch, call numbers
 * with bit 30 set) and the i386 ABI are refused: an i386 libc reaches
 * sockets through socketcall, whose arguments live in memory a filter
 * cannot read, so the socket family rule below could not hold there; and
 * 32-bit x86 images are rare on x86_64 edge hosts. Such a binary is killed
 * by SIGSYS at its first system call. Docker: filters i386 and x32 too.
 * aarch64 also filters 32-bit arm, for the armv7 images common on 64-bit
 * boards; arm EABI has direct socket calls and no socketcall. */
TARGET(x86_64, "defined(__x86_64__)", SCMP_ARCH_X86_64)
TARGET(aarch64, "defined(__aarch64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__", SCMP_ARCH_AARCH64, SCMP_ARCH_ARM)
TARGET(arm, "defined(__arm__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__", SCMP_ARCH_ARM)

/* Files, directories, links and extended attributes. */
ALLOW(access) ALLOW(faccessat) ALLOW(faccessat2)
ALLOW(open) ALLOW(openat) ALLOW(openat2) ALLOW(creat) ALLOW(close) ALLOW(close_range)
ALLOW(read) ALLOW(readv) ALLOW(pread64) ALLOW(preadv) ALLOW(preadv2)
ALLOW(write) ALLOW(writev) ALLOW(pwrite64) ALLOW(pwritev) ALLOW(pwritev2)
ALLOW(lseek) ALLOW(_llseek) /* [arm] */
ALLOW(stat) ALLOW(lstat) ALLOW(fstat) ALLOW(newfstatat) ALLOW(statx)
ALLOW(stat64) ALLOW(lstat64) ALLOW(fstat64) ALLOW(fstatat64) /* [arm] */
ALLOW(statfs) ALLOW(fstatfs) ALLOW(statfs64) ALLOW(fstatfs64)
ALLOW(truncate) ALLOW(ftruncate) ALLOW(truncate64) ALLOW(ftruncate64)
ALLOW(fallocate) ALLOW(fadvise64) ALLOW(arm_fadvise64_64) ALLOW(readahead)
ALLOW(fsync) ALLOW(fdatasync) ALLOW(sync) ALLOW(syncfs)
ALLOW(sync_file_range) ALLOW(arm_sync_file_range)
ALLOW(sendfile) ALLOW(sendfile64) ALLOW(copy_file_range) ALLOW(splice) ALLOW(tee) ALLOW(vmsplice)
ALLOW(getdents) ALLOW(getdents64) ALLOW(getcwd) ALLOW(chdir) ALLOW(fchdir)
ALLOW(mkdir) ALLOW(mkdirat) ALLOW(rmdir) ALLOW(mknod) ALLOW(mknodat)
ALLOW(link) ALLOW(linkat) ALLOW(symlink) ALLOW(symlinkat) ALLOW(readlink) ALLOW(readlinkat)
ALLOW(unlink) ALLOW(unlinkat) ALLOW(rename) ALLOW(renameat) ALLOW(renameat2)
ALLOW(chmod) ALLOW(fchmod) ALLOW(fchmodat) ALLOW(fchmodat2) ALLOW(umask)
ALLOW(chown) ALLOW(fchown) ALLOW(lchown) ALLOW(fchownat)
ALLOW(chown32) ALLOW(fchown32) ALLOW(lchown32) /* [arm] */
ALLOW(utime) ALLOW(utimes) ALLOW(futimesat) ALLOW(utimensat) ALLOW(utimensat_time64)
ALLOW(getxattr) ALLOW(lgetxattr) ALLOW(fgetxattr) ALLOW(setxattr) ALLOW(lsetxattr) ALLOW(fsetxattr)
ALLOW(listxattr) ALLOW(llistxattr) ALLOW(flistxattr)
ALLOW(removexattr) ALLOW(lremovexattr) ALLOW(fremovexattr)
ALLOW(fcntl) ALLOW(fcntl64) ALLOW(flock) ALLOW(ioctl) ALLOW(dup) ALLOW(dup2) ALLOW(dup3)
ALLOW(pipe) ALLOW(pipe2) ALLOW(cachestat)
ALLOW(inotify_init) ALLOW(inotify_init1) ALLOW(inotify_add_watch) ALLOW(inotify_rm_watch)
ALLOW(fanotify_mark) /* useless without fanotify_init, which is denied */
ALLOW(chroot) /* Docker: allowed with CAP_SYS_CHROOT, which is in the default set */

/* Waiting and events. */
ALLOW(select) ALLOW(_newselect) ALLOW(pselect6) ALLOW(pselect6_time64)
ALLOW(poll) ALLOW(ppoll) ALLOW(ppoll_time64)
ALLOW(epoll_create) ALLOW(epoll_create1) ALLOW(epoll_ctl) ALLOW(epoll_wait) ALLOW(epoll_pwait) ALLOW(epoll_pwait2)
ALLOW(epoll_ctl_old) ALLOW(epoll_wait_old) /* [x86_64] */
ALLOW(eventfd) ALLOW(eventfd2) ALLOW(signalfd) ALLOW(signalfd4)
ALLOW(timerfd_create) ALLOW(timerfd_settime) ALLOW(timerfd_gettime)
ALLOW(timerfd_settime64) ALLOW(timerfd_gettime64)
ALLOW(io_setup) ALLOW(io_destroy) ALLOW(io_submit) ALLOW(io_cancel) ALLOW(io_getevents)
ALLOW(io_pgetevents) ALLOW(io_pgetevents_time64)
ALLOW(futex) ALLOW(futex_time64) ALLOW(futex_waitv) ALLOW(futex_wake) ALLOW(futex_wait) ALLOW(futex_requeue)
ALLOW(get_robust_list) ALLOW(set_robust_list)

/* Memory. */
ALLOW(brk) ALLOW(mmap) ALLOW(mmap2) ALLOW(munmap) ALLOW(mremap) ALLOW(mprotect) ALLOW(msync)
ALLOW(madvise) ALLOW(mincore) ALLOW(remap_file_pages) ALLOW(membarrier)
ALLOW(mlock) ALLOW(mlock2) ALLOW(mlockall) ALLOW(munlock) ALLOW(munlockall)
ALLOW(memfd_create) ALLOW(memfd_secret)
ALLOW(pkey_alloc) ALLOW(pkey_free) ALLOW(pkey_mprotect) ALLOW(map_shadow_stack)

/* Processes, threads and signals. clone, unshare and personality are below. */
ALLOW(fork) ALLOW(vfork) ALLOW(execve) ALLOW(execveat) ALLOW(exit) ALLOW(exit_group)
ALLOW(wait4) ALLOW(waitid) ALLOW(set_tid_address) ALLOW(rseq) ALLOW(restart_syscall)
ALLOW(kill) ALLOW(tkill) ALLOW(tgkill) ALLOW(pidfd_open) ALLOW(pidfd_send_signal) ALLOW(process_mrelease)
ALLOW(rt_sigaction) ALLOW(rt_sigprocmask) ALLOW(rt_sigreturn) ALLOW(rt_sigpending) ALLOW(rt_sigsuspend)
ALLOW(rt_sigtimedwait) ALLOW(rt_sigtimedwait_time64) ALLOW(rt_sigqueueinfo) ALLOW(rt_tgsigqueueinfo)
ALLOW(sigaltstack) ALLOW(sigreturn) ALLOW(sigprocmask) ALLOW(pause)
ALLOW(getpid) ALLOW(getppid) ALLOW(gettid) ALLOW(getpgid) ALLOW(setpgid) ALLOW(getpgrp)
ALLOW(getsid) ALLOW(setsid)
ALLOW(prctl) ALLOW(seccomp) ALLOW(capget) ALLOW(capset)
ALLOW(landlock_create_ruleset) ALLOW(landlock_add_rule) ALLOW(landlock_restrict_self)
ALLOW(arch_prctl) ALLOW(modify_ldt) ALLOW(get_thread_area) ALLOW(set_thread_area) /* [x86_64] */
ALLOW(set_tls) ALLOW(cacheflush) ALLOW(breakpoint) /* [arm] */

/* Identity: the kernel checks CAP_SETUID and CAP_SETGID. */
ALLOW(getuid) ALLOW(geteuid) ALLOW(getgid) ALLOW(getegid) ALLOW(getresuid) ALLOW(getresgid) ALLOW(getgroups)
ALLOW(setuid) ALLOW(setgid) ALLOW(setreuid) ALLOW(setregid) ALLOW(setresuid) ALLOW(setresgid)
ALLOW(setgroups) ALLOW(setfsuid) ALLOW(setfsgid)
ALLOW(getuid32) ALLOW(geteuid32) ALLOW(getgid32) ALLOW(getegid32) ALLOW(getresuid32) /* [arm] */
ALLOW(getresgid32) ALLOW(getgroups32) ALLOW(setuid32) ALLOW(setgid32) ALLOW(setreuid32)
ALLOW(setregid32) ALLOW(setresuid32) ALLOW(setresgid32) ALLOW(setgroups32) ALLOW(setfsuid32) ALLOW(setfsgid32)

/* Scheduling, limits and accounting of the caller's own processes. */
ALLOW(sched_yield) ALLOW(sched_getaffinity) ALLOW(sched_setaffinity) ALLOW(sched_getattr) ALLOW(sched_setattr)
ALLOW(sched_getparam) ALLOW(sched_setparam) ALLOW(sched_getscheduler) ALLOW(sched_setscheduler)
ALLOW(sched_get_priority_max) ALLOW(sched_get_priority_min)
ALLOW(sched_rr_get_interval) ALLOW(sched_rr_get_interval_time64)
ALLOW(getpriority) ALLOW(setpriority) ALLOW(ioprio_get) ALLOW(ioprio_set)
ALLOW(getrlimit) ALLOW(ugetrlimit) ALLOW(setrlimit) ALLOW(prlimit64) ALLOW(getrusage) ALLOW(times)
ALLOW(getcpu) ALLOW(sysinfo) ALLOW(uname) ALLOW(getrandom)

/* Time. Setting the clock is denied below; adjtimex and clock_adjtime only
 * read it without CAP_SYS_TIME (glibc's ntp_gettime uses clock_adjtime). */
ALLOW(time) ALLOW(gettimeofday) ALLOW(clock_gettime) ALLOW(clock_gettime64)
ALLOW(clock_getres) ALLOW(clock_getres_time64) ALLOW(clock_nanosleep) ALLOW(clock_nanosleep_time64)
ALLOW(nanosleep) ALLOW(alarm) ALLOW(getitimer) ALLOW(setitimer)
ALLOW(timer_create) ALLOW(timer_delete) ALLOW(timer_getoverrun)
ALLOW(timer_gettime) ALLOW(timer_settime) ALLOW(timer_gettime64) ALLOW(timer_settime64)
ALLOW(adjtimex) ALLOW(clock_adjtime) ALLOW(clock_adjtime64)

/* Sockets (socket itself is below) and System V / POSIX IPC. */
ALLOW(socketpair) ALLOW(bind) ALLOW(listen) ALLOW(accept) ALLOW(accept4) ALLOW(connect) ALLOW(shutdown)
ALLOW(getsockname) ALLOW(getpeername) ALLOW(getsockopt) ALLOW(setsockopt)
ALLOW(sendto) ALLOW(sendmsg) ALLOW(sendmmsg) ALLOW(recvfrom) ALLOW(recvmsg) ALLOW(recvmmsg) ALLOW(recvmmsg_time64)
ALLOW(send) ALLOW(recv) /* [arm] */
ALLOW(msgget) ALLOW(msgsnd) ALLOW(msgrcv) ALLOW(msgctl)
ALLOW(semget) ALLOW(semop) ALLOW(semtimedop) ALLOW(semtimedop_time64) ALLOW(semctl)
ALLOW(shmget) ALLOW(shmat) ALLOW(shmdt) ALLOW(shmctl)
ALLOW(mq_open) ALLOW(mq_unlink) ALLOW(mq_timedsend) ALLOW(mq_timedsend_time64)
ALLOW(mq_timedreceive) ALLOW(mq_timedreceive_time64) ALLOW(mq_notify) ALLOW(mq_getsetattr)

/* New processes, but no new namespaces. clone3 passes its flags in memory
 * the filter cannot read, so it gets ENOSYS and libc falls back to clone. */
ALLOW_ARG0_CLEAR(clone, CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP)
NOSYS(clone3)
/* Docker: denies unshare altogether without CAP_SYS_ADMIN. Unsharing the
 * file table, fs attributes or SysV semaphore undo list creates nothing
 * new in the kernel's eyes, and thread pools use unshare(CLONE_FS). */
ALLOW_ARG0_CLEAR(unshare, CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWTIME)

/* Execution domains: Linux, 32-bit Linux, either with a 2.6-style uname,
 * and the query 0xffffffff. Not ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC or
 * MMAP_PAGE_ZERO, which weaken the address space of what runs next. */
ALLOW_ARG0_IN(personality, PER_LINUX, PER_LINUX)
ALLOW_ARG0_IN(personality, PER_LINUX32, PER_LINUX32)
ALLOW_ARG0_IN(personality, UNAME26, UNAME26)
ALLOW_ARG0_IN(personality, UNAME26 | PER_LINUX32, UNAME26 | PER_LINUX32)
ALLOW_ARG0_IN(personality, 0xffffffff, 0xffffffff)

/* Socket families, except AF_ALG (the kernel's crypto API) and AF_VSOCK
 * (the hypervisor's sockets), as Docker. The range is checked on all 64
 * bits: the kernel truncates the family to an int, so a family with high
 * bits set (which Docker's GT 40 lets through) is refused. Families past
 * 63 (Linux has 46) are refused too. */
ALLOW_ARG0_IN(socket, AF_UNSPEC, AF_ALG - 1)
ALLOW_ARG0_IN(socket, AF_NFC, AF_NFC)
ALLOW_ARG0_IN(socket, AF_VSOCK + 1, 63)

/* Refused with EPERM: each needs a capability the default set lacks
 * (Docker allows them only with it), or is refused by Docker outright. */
/* Kernel code, boot and swap. */
DENY(init_module) DENY(finit_module) DENY(delete_module)
DENY(create_module) DENY(query_module) DENY(get_kernel_syms) /* [x86_64] */
DENY(kexec_load) DENY(kexec_file_load) DENY(reboot) DENY(swapon) DENY(swapoff)
/* Tracing other processes. Docker: allows ptrace and process_vm_* on
 * kernels from 4.8 on; fleetlet keeps them out (no strace or gdb inside). */
DENY(ptrace) DENY(process_vm_readv) DENY(process_vm_writev) DENY(kcmp)
DENY(pidfd_getfd) DENY(process_madvise)
/* Mounts, namespaces and file handles. Docker: allows name_to_handle_at;
 * fleetlet keeps it with its partner open_by_handle_at. */
DENY(mount) DENY(umount2) DENY(pivot_root) DENY(setns)
DENY(fsopen) DENY(fsconfig) DENY(fsmount) DENY(fspick) DENY(move_mount) DENY(open_tree) DENY(mount_setattr)
DENY(name_to_handle_at) DENY(open_by_handle_at)
DENY(fanotify_init) DENY(quotactl) DENY(quotactl_fd) DENY(lookup_dcookie)
/* Kernel facilities with a record of exploits. */
DENY(bpf) DENY(perf_event_open) DENY(userfaultfd)
DENY(io_uring_setup) DENY(io_uring_enter) DENY(io_uring_register)
DENY(add_key) DENY(request_key) DENY(keyctl)
/* The host's clock, name, log, accounting and terminals. */
DENY(settimeofday) DENY(clock_settime) DENY(clock_settime64)
DENY(sethostname) DENY(setdomainname) DENY(syslog) DENY(acct) DENY(vhangup)
/* NUMA memory policy and page migration (CAP_SYS_NICE). */
DENY(get_mempolicy) DENY(set_mempolicy) DENY(set_mempolicy_home_node) DENY(mbind)
DENY(migrate_pages) DENY(move_pages)
/* Hardware ports and PCI. */
DENY(iopl) DENY(ioperm) /* [x86_64] */
DENY(pciconfig_iobase) DENY(pciconfig_read) DENY(pciconfig_write) /* [arm] */
/* Obsolete: removed from Linux, never implemented, or superseded. */
DENY(_sysctl) DENY(sysfs) DENY(ustat) DENY(uselib) DENY(nfsservctl) DENY(bdflush)
DENY(afs_syscall) DENY(tuxcall) DENY(security) DENY(vserver) DENY(getpmsg) DENY(putpmsg)
DENY(nice) DENY(sigaction) DENY(sigpending) DENY(sigsuspend) /* [arm]: libc uses the rt_ and priority calls */
DENY(usr26) DENY(usr32) DENY(get_tls) /* [arm] private calls */

#undef TARGET
#undef ALLOW
#undef ALLOW_ARG0_IN
#undef ALLOW_ARG0_CLEAR
#undef DENY
#undef NOSYS
