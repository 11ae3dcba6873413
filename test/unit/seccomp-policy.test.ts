/**
 * The default seccomp programs, as built by native/seccomp/generator.c into
 * native/build/Release/seccomp-programs.json, run in a classic BPF
 * interpreter over system calls of every ABI. The call numbers below come
 * from the kernel's tables (arch/x86/entry/syscalls/syscall_64.tbl,
 * include/uapi/asm-generic/unistd.h, arch/arm/tools/syscall.tbl), not from
 * libseccomp, so that they check its numbering too.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { AUDIT_ARCH, actionName, checkProgram, type Instruction, runSeccomp } from "../support/classic-bpf.js";

type Abi = "x86_64" | "aarch64" | "arm";
interface Programs {
  policy: { allow: string[]; deny: string[]; nosys: string[]; allowArg0: { name: string }[] };
  targets: Record<string, { abis: Abi[]; numbers: Record<Abi, Record<string, number>>; program: Instruction[] }>;
}
const programs: Programs = JSON.parse(
  readFileSync(new URL("../../native/build/Release/seccomp-programs.json", import.meta.url), "utf8"),
);

const ALLOW = "ALLOW";
const EPERM = "ERRNO 1";
const ENOSYS = "ERRNO 38";
const KILL = "KILL_PROCESS";

/** [x86_64, aarch64, arm]; undefined where the ABI lacks the call. */
const NR: Record<string, [number | undefined, number | undefined, number | undefined]> = {
  read: [0, 63, 3],
  write: [1, 64, 4],
  openat: [257, 56, 322],
  execve: [59, 221, 11],
  exit_group: [231, 94, 248],
  futex: [202, 98, 240],
  getpid: [39, 172, 20],
  chroot: [161, 51, 61],
  clone: [56, 220, 120],
  unshare: [272, 97, 337],
  personality: [135, 92, 136],
  socket: [41, 198, 281],
  arch_prctl: [158, undefined, undefined],
  set_tls: [undefined, undefined, 0xf0005],
  mount: [165, 40, 21],
  umount2: [166, 39, 52],
  ptrace: [101, 117, 26],
  process_vm_readv: [310, 270, 376],
  kexec_load: [246, 104, 347],
  bpf: [321, 280, 386],
  init_module: [175, 105, 128],
  finit_module: [313, 273, 379],
  reboot: [169, 142, 88],
  setns: [308, 268, 375],
  keyctl: [250, 219, 311],
  userfaultfd: [323, 282, 388],
  io_uring_setup: [425, 425, 425],
  pidfd_getfd: [438, 438, 438],
  process_madvise: [440, 440, 440],
  fanotify_init: [300, 262, 367],
  quotactl_fd: [443, 443, 443],
  vhangup: [153, 58, 111],
  sysfs: [139, undefined, 135],
  ustat: [136, undefined, 62],
  // Newer than the policy: the numbers are the same on every ABI since Linux 5.1.
  clone3: [435, 435, 435],
  statmount: [457, 457, 457],
  listmount: [458, 458, 458],
  lsm_get_self_attr: [459, 459, 459],
  mseal: [462, 462, 462],
  open_tree_attr: [467, 467, 467],
  file_getattr: [468, 468, 468],
};
const ABIS: Abi[] = ["x86_64", "aarch64", "arm"];

// Flags and arguments from the kernel's uapi headers.
const SIGCHLD = 17n;
const CLONE_THREAD_FLAGS = 0x3d0f00n; // VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID, as pthread_create
const [CLONE_FS, CLONE_FILES, CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP, CLONE_NEWTIME] =
  [0x200n, 0x400n, 0x20000n, 0x10000000n, 0x20000000n, 0x40000000n, 0x2000000n, 0x80n];
const [AF_UNIX, AF_INET, AF_NETLINK, AF_ALG, AF_NFC, AF_VSOCK, AF_XDP, AF_MCTP] = [
  1n,
  2n,
  16n,
  38n,
  39n,
  40n,
  44n,
  45n,
];
const [PER_LINUX32, UNAME26, ADDR_NO_RANDOMIZE, MMAP_PAGE_ZERO, READ_IMPLIES_EXEC] = [
  8n,
  0x20000n,
  0x40000n,
  0x100000n,
  0x400000n,
];
const HIGH = 1n << 32n;

/** [description, call, first argument, expected action] */
const CALLS: [string, string, bigint, string][] = [
  ["read", "read", 0n, ALLOW],
  ["write", "write", 1n, ALLOW],
  ["openat", "openat", 0n, ALLOW],
  ["execve", "execve", 0n, ALLOW],
  ["exit_group", "exit_group", 0n, ALLOW],
  ["futex", "futex", 0n, ALLOW],
  ["getpid", "getpid", 0n, ALLOW],
  ["chroot (CAP_SYS_CHROOT is in the default set)", "chroot", 0n, ALLOW],
  ["clone for a process", "clone", SIGCHLD, ALLOW],
  ["clone for a thread", "clone", CLONE_THREAD_FLAGS, ALLOW],
  ["unshare of the fs attributes", "unshare", CLONE_FS, ALLOW],
  ["unshare of the file table", "unshare", CLONE_FILES, ALLOW],
  ["personality query", "personality", 0xffffffffn, ALLOW],
  ["personality PER_LINUX", "personality", 0n, ALLOW],
  ["personality PER_LINUX32", "personality", PER_LINUX32, ALLOW],
  ["personality UNAME26|PER_LINUX32", "personality", UNAME26 | PER_LINUX32, ALLOW],
  ["socket AF_UNIX", "socket", AF_UNIX, ALLOW],
  ["socket AF_INET", "socket", AF_INET, ALLOW],
  ["socket AF_NETLINK", "socket", AF_NETLINK, ALLOW],
  ["socket AF_NFC", "socket", AF_NFC, ALLOW],
  ["socket AF_XDP", "socket", AF_XDP, ALLOW],
  ["socket AF_MCTP", "socket", AF_MCTP, ALLOW],
  ["socket 63", "socket", 63n, ALLOW],
  ["clone with CLONE_NEWUSER", "clone", CLONE_NEWUSER | SIGCHLD, EPERM],
  ["clone with CLONE_NEWNS", "clone", CLONE_NEWNS | SIGCHLD, EPERM],
  ["clone with CLONE_NEWPID", "clone", CLONE_NEWPID | SIGCHLD, EPERM],
  ["clone with CLONE_NEWNET", "clone", CLONE_NEWNET | SIGCHLD, EPERM],
  ["clone with CLONE_NEWCGROUP", "clone", CLONE_NEWCGROUP | SIGCHLD, EPERM],
  ["unshare(CLONE_NEWNS)", "unshare", CLONE_NEWNS, EPERM],
  ["unshare(CLONE_NEWUSER)", "unshare", CLONE_NEWUSER, EPERM],
  ["unshare(CLONE_FS|CLONE_NEWNET)", "unshare", CLONE_FS | CLONE_NEWNET, EPERM],
  ["unshare(CLONE_NEWTIME)", "unshare", CLONE_NEWTIME, EPERM],
  ["personality ADDR_NO_RANDOMIZE", "personality", ADDR_NO_RANDOMIZE, EPERM],
  ["personality MMAP_PAGE_ZERO", "personality", MMAP_PAGE_ZERO, EPERM],
  ["personality READ_IMPLIES_EXEC", "personality", READ_IMPLIES_EXEC, EPERM],
  ["personality 1", "personality", 1n, EPERM],
  ["personality with high bits", "personality", HIGH, EPERM],
  ["socket AF_ALG", "socket", AF_ALG, EPERM],
  ["socket AF_VSOCK", "socket", AF_VSOCK, EPERM],
  ["socket 64", "socket", 64n, EPERM],
  ["socket AF_VSOCK with high bits, which the kernel truncates away", "socket", HIGH | AF_VSOCK, EPERM],
  ["socket AF_INET with high bits", "socket", HIGH | AF_INET, EPERM],
  ["socket -1", "socket", 0xffffffffn, EPERM],
  ["mount", "mount", 0n, EPERM],
  ["umount2", "umount2", 0n, EPERM],
  ["ptrace", "ptrace", 0n, EPERM],
  ["process_vm_readv", "process_vm_readv", 0n, EPERM],
  ["kexec_load", "kexec_load", 0n, EPERM],
  ["bpf", "bpf", 0n, EPERM],
  ["init_module", "init_module", 0n, EPERM],
  ["finit_module", "finit_module", 0n, EPERM],
  ["reboot", "reboot", 0n, EPERM],
  ["setns", "setns", 0n, EPERM],
  ["keyctl", "keyctl", 0n, EPERM],
  ["userfaultfd", "userfaultfd", 0n, EPERM],
  ["io_uring_setup", "io_uring_setup", 0n, EPERM],
  ["pidfd_getfd", "pidfd_getfd", 0n, EPERM],
  ["process_madvise", "process_madvise", 0n, EPERM],
  ["fanotify_init", "fanotify_init", 0n, EPERM],
  ["quotactl_fd", "quotactl_fd", 0n, EPERM],
  ["vhangup", "vhangup", 0n, EPERM],
  ["sysfs", "sysfs", 0n, EPERM],
  ["ustat", "ustat", 0n, EPERM],
  ["clone3, so that libc falls back to clone", "clone3", 0n, ENOSYS],
  ["statmount", "statmount", 0n, ENOSYS],
  ["listmount", "listmount", 0n, ENOSYS],
  ["lsm_get_self_attr", "lsm_get_self_attr", 0n, ENOSYS],
  ["mseal", "mseal", 0n, ENOSYS],
  ["open_tree_attr", "open_tree_attr", 0n, ENOSYS],
  ["file_getattr", "file_getattr", 0n, ENOSYS],
];

/** The targets whose program filters this ABI. */
const targetsOf = (abi: Abi) => Object.entries(programs.targets).filter(([, t]) => t.abis.includes(abi));
const verdict = (target: string, abi: keyof typeof AUDIT_ARCH, nr: number, args: bigint[] = []) =>
  actionName(runSeccomp(programs.targets[target]!.program, { arch: AUDIT_ARCH[abi], nr, args }));

describe("the generated seccomp programs", () => {
  it("exist for x86_64, aarch64 (with arm) and arm, and each loads in the kernel's checks", () => {
    expect(Object.fromEntries(Object.entries(programs.targets).map(([n, t]) => [n, t.abis]))).toEqual({
      x86_64: ["x86_64"],
      aarch64: ["aarch64", "arm"],
      arm: ["arm"],
    });
    for (const t of Object.values(programs.targets)) expect(() => checkProgram(t.program)).not.toThrow();
  });

  for (const abi of ABIS) {
    for (const [target] of targetsOf(abi)) {
      const cases = CALLS.flatMap(([what, call, arg, action]) => {
        const nr = NR[call]![ABIS.indexOf(abi)];
        // A 32-bit ABI's arguments reach the filter zero-extended: no high bits to test.
        const fits = abi !== "arm" || BigInt.asUintN(64, arg) < HIGH;
        return nr === undefined || !fits ? [] : [{ what, nr, arg, action }];
      });
      it.each(cases)(`on ${abi} (${target}'s program): $what → $action`, ({ nr, arg, action }) => {
        expect(verdict(target, abi, nr, [arg])).toBe(action);
      });
    }
  }

  it("allows the ABI's own calls: arch_prctl on x86_64, set_tls on arm", () => {
    expect(verdict("x86_64", "x86_64", NR.arch_prctl![0]!)).toBe(ALLOW);
    expect(verdict("arm", "arm", NR.set_tls![2]!)).toBe(ALLOW);
    expect(verdict("aarch64", "arm", NR.set_tls![2]!)).toBe(ALLOW);
  });

  it("answers ENOSYS for numbers it does not know", () => {
    for (const [target, t] of Object.entries(programs.targets))
      for (const abi of t.abis) for (const nr of [1000, 4095, 0xf00ff]) expect(verdict(target, abi, nr)).toBe(ENOSYS);
  });

  it("kills a call from an ABI it does not filter", () => {
    expect(verdict("x86_64", "aarch64", NR.read![1]!)).toBe(KILL);
    expect(verdict("x86_64", "arm", NR.read![2]!)).toBe(KILL);
    expect(verdict("aarch64", "x86_64", NR.read![0]!)).toBe(KILL);
    expect(verdict("arm", "aarch64", NR.read![1]!)).toBe(KILL);
  });

  it("kills i386 and x32 calls on x86_64", () => {
    expect(verdict("x86_64", "i386", 3)).toBe(KILL); // i386 read
    expect(verdict("x86_64", "x86_64", 0x40000000 | 0)).toBe(KILL); // x32 read
    expect(verdict("x86_64", "x86_64", 0x40000000 | 39)).toBe(KILL); // x32 getpid
  });

  it("gives every listed call its listed action, on every ABI that has it", () => {
    const { allow, deny, nosys, allowArg0 } = programs.policy;
    for (const [target, t] of Object.entries(programs.targets))
      for (const abi of t.abis) {
        const numbers = Object.entries(t.numbers[abi]);
        const expected = (name: string) =>
          allow.includes(name) ? ALLOW : deny.includes(name) ? EPERM : nosys.includes(name) ? ENOSYS : undefined;
        for (const [name, nr] of numbers)
          if (expected(name))
            expect([target, abi, name, verdict(target, abi, nr)]).toEqual([target, abi, name, expected(name)]);
        for (const { name } of allowArg0)
          if (t.numbers[abi][name] === undefined) throw new Error(`${abi} lacks ${name}`);
        // Every number up to 1023 that the policy does not name is unknown to it.
        const known = new Set(numbers.map(([, nr]) => nr));
        for (let nr = 0; nr < 1024; nr++)
          if (!known.has(nr)) expect([abi, nr, verdict(target, abi, nr)]).toEqual([abi, nr, ENOSYS]);
      }
  });
});
