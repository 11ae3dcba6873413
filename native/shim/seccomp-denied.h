/* System calls the default seccomp filter refuses with EPERM, listed once
 * and included for each ABI the filter covers. Each entry is guarded, since
 * not every architecture has every call. clone, unshare and clone3 are
 * handled apart: they are refused only when they ask for a user namespace. */
#ifdef __NR_init_module
DENY(__NR_init_module)
#endif
#ifdef __NR_finit_module
DENY(__NR_finit_module)
#endif
#ifdef __NR_delete_module
DENY(__NR_delete_module)
#endif
#ifdef __NR_create_module
DENY(__NR_create_module)
#endif
#ifdef __NR_query_module
DENY(__NR_query_module)
#endif
#ifdef __NR_get_kernel_syms
DENY(__NR_get_kernel_syms)
#endif
#ifdef __NR_kexec_load
DENY(__NR_kexec_load)
#endif
#ifdef __NR_kexec_file_load
DENY(__NR_kexec_file_load)
#endif
#ifdef __NR_reboot
DENY(__NR_reboot)
#endif
#ifdef __NR_swapon
DENY(__NR_swapon)
#endif
#ifdef __NR_swapoff
DENY(__NR_swapoff)
#endif
#ifdef __NR_bpf
DENY(__NR_bpf)
#endif
#ifdef __NR_perf_event_open
DENY(__NR_perf_event_open)
#endif
#ifdef __NR_add_key
DENY(__NR_add_key)
#endif
#ifdef __NR_request_key
DENY(__NR_request_key)
#endif
#ifdef __NR_keyctl
DENY(__NR_keyctl)
#endif
#ifdef __NR_open_by_handle_at
DENY(__NR_open_by_handle_at)
#endif
#ifdef __NR_name_to_handle_at
DENY(__NR_name_to_handle_at)
#endif
#ifdef __NR_userfaultfd
DENY(__NR_userfaultfd)
#endif
#ifdef __NR_ptrace
DENY(__NR_ptrace)
#endif
#ifdef __NR_process_vm_readv
DENY(__NR_process_vm_readv)
#endif
#ifdef __NR_process_vm_writev
DENY(__NR_process_vm_writev)
#endif
#ifdef __NR_kcmp
DENY(__NR_kcmp)
#endif
#ifdef __NR_mount
DENY(__NR_mount)
#endif
#ifdef __NR_umount
DENY(__NR_umount)
#endif
#ifdef __NR_umount2
DENY(__NR_umount2)
#endif
#ifdef __NR_pivot_root
DENY(__NR_pivot_root)
#endif
#ifdef __NR_fsopen
DENY(__NR_fsopen)
#endif
#ifdef __NR_fsconfig
DENY(__NR_fsconfig)
#endif
#ifdef __NR_fsmount
DENY(__NR_fsmount)
#endif
#ifdef __NR_fspick
DENY(__NR_fspick)
#endif
#ifdef __NR_move_mount
DENY(__NR_move_mount)
#endif
#ifdef __NR_open_tree
DENY(__NR_open_tree)
#endif
#ifdef __NR_mount_setattr
DENY(__NR_mount_setattr)
#endif
#ifdef __NR_setns
DENY(__NR_setns)
#endif
#ifdef __NR_acct
DENY(__NR_acct)
#endif
#ifdef __NR_settimeofday
DENY(__NR_settimeofday)
#endif
#ifdef __NR_stime
DENY(__NR_stime)
#endif
#ifdef __NR_clock_settime
DENY(__NR_clock_settime)
#endif
#ifdef __NR_clock_adjtime
DENY(__NR_clock_adjtime)
#endif
#ifdef __NR_adjtimex
DENY(__NR_adjtimex)
#endif
#ifdef __NR_iopl
DENY(__NR_iopl)
#endif
#ifdef __NR_ioperm
DENY(__NR_ioperm)
#endif
#ifdef __NR_vm86
DENY(__NR_vm86)
#endif
#ifdef __NR_vm86old
DENY(__NR_vm86old)
#endif
#ifdef __NR_quotactl
DENY(__NR_quotactl)
#endif
#ifdef __NR_lookup_dcookie
DENY(__NR_lookup_dcookie)
#endif
#ifdef __NR_uselib
DENY(__NR_uselib)
#endif
#ifdef __NR_nfsservctl
DENY(__NR_nfsservctl)
#endif
#ifdef __NR__sysctl
DENY(__NR__sysctl)
#endif
#ifdef __NR_syslog
DENY(__NR_syslog)
#endif
#ifdef __NR_io_uring_setup
DENY(__NR_io_uring_setup)
#endif
#ifdef __NR_io_uring_enter
DENY(__NR_io_uring_enter)
#endif
#ifdef __NR_io_uring_register
DENY(__NR_io_uring_register)
#endif
