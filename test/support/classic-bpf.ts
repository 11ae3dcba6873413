/**
 * A classic BPF interpreter for seccomp programs, as the kernel runs them
 * (kernel/seccomp.c checks the program, net/core/filter.c runs it): the
 * program reads a struct seccomp_data and returns an action. It checks what
 * the kernel would refuse to load (a jump out of the program, a load past
 * seccomp_data, an instruction seccomp does not allow) and throws on it.
 */

/** One instruction as the generator writes it: code, jt, jf, k. */
export type Instruction = readonly [code: number, jt: number, jf: number, k: number];

/** What the kernel hands the filter; args as 64-bit values. */
export interface SeccompData {
  nr: number;
  arch: number;
  args?: readonly bigint[];
  instructionPointer?: bigint;
}

export const AUDIT_ARCH = { x86_64: 0xc000003e, i386: 0x40000003, aarch64: 0xc00000b7, arm: 0x40000028 } as const;

const SECCOMP_DATA_SIZE = 64;
const BPF_MAXINSNS = 4096;
const MEMWORDS = 16;

// Instruction classes and fields (include/uapi/linux/bpf_common.h).
const [LD, LDX, ST, STX, ALU, JMP, RET, MISC] = [0, 1, 2, 3, 4, 5, 6, 7];
const W = 0x00;
const [IMM, ABS, MEM, LEN] = [0x00, 0x20, 0x60, 0x80];
const X = 0x08;
const RET_A = 0x10;
const TXA = 0x80;

/** seccomp_data in the little-endian layout of every target: nr, arch, ip, args[6]. */
function layout(d: SeccompData): DataView {
  const view = new DataView(new ArrayBuffer(SECCOMP_DATA_SIZE));
  view.setInt32(0, d.nr, true);
  view.setUint32(4, d.arch, true);
  view.setBigUint64(8, d.instructionPointer ?? 0n, true);
  for (const [i, a] of (d.args ?? []).entries()) view.setBigUint64(16 + 8 * i, BigInt.asUintN(64, a), true);
  return view;
}

const ALU_OPS: Record<number, (a: number, b: number) => number> = {
  0: (a, b) => a + b,
  16: (a, b) => a - b,
  32: (a, b) => Math.imul(a, b),
  48: (a, b) => (b === 0 ? Number.NaN : Math.floor(a / b)),
  64: (a, b) => a | b,
  80: (a, b) => a & b,
  96: (a, b) => (b >= 32 ? 0 : a << b),
  112: (a, b) => (b >= 32 ? 0 : a >>> b),
  128: (a) => -a,
  160: (a, b) => a ^ b,
};

const JUMPS: Record<number, (a: number, b: number) => boolean> = {
  16: (a, b) => a === b,
  32: (a, b) => a > b,
  48: (a, b) => a >= b,
  64: (a, b) => (a & b) !== 0,
};

/** Throws unless the kernel would load the program: size, jump targets, a return at the end. */
export function checkProgram(program: readonly Instruction[]): void {
  if (program.length === 0 || program.length > BPF_MAXINSNS) throw new Error(`${program.length} instructions`);
  program.forEach(([code, jt, jf, k], pc) => {
    const cls = code & 7;
    if (cls === JMP) {
      const targets = (code & 0xf0) === 0 ? [pc + 1 + k] : [pc + 1 + jt, pc + 1 + jf];
      for (const t of targets) if (t >= program.length) throw new Error(`jump out of the program at ${pc}`);
      if ((code & 0xf0) !== 0 && !JUMPS[code & 0xf0]) throw new Error(`bad jump ${code} at ${pc}`);
    } else if (cls === LD && (code & 0xe0) === ABS) {
      if ((code & 0x18) !== W || k % 4 !== 0 || k >= SECCOMP_DATA_SIZE) throw new Error(`bad load at ${pc}`);
    }
  });
  if ((program[program.length - 1]![0] & 7) !== RET) throw new Error("the program does not end in a return");
}

/**
 * Runs a seccomp program over one system call and returns the action
 * (SECCOMP_RET_*), as an unsigned 32-bit number.
 */
export function runSeccomp(program: readonly Instruction[], data: SeccompData): number {
  checkProgram(program);
  const view = layout(data);
  const mem = new Array<number>(MEMWORDS).fill(0);
  let a = 0;
  let x = 0;
  for (let pc = 0; pc < program.length; pc++) {
    const [code, jt, jf, k] = program[pc]!;
    const mode = code & 0xe0;
    switch (code & 7) {
      case LD:
        if (mode === ABS) a = view.getUint32(k, true);
        else if (mode === IMM) a = k;
        else if (mode === MEM) a = mem[k]!;
        else if (mode === LEN) a = SECCOMP_DATA_SIZE;
        else throw new Error(`load mode ${mode} at ${pc}`);
        break;
      case LDX:
        if (mode === IMM) x = k;
        else if (mode === MEM) x = mem[k]!;
        else if (mode === LEN) x = SECCOMP_DATA_SIZE;
        else throw new Error(`ldx mode ${mode} at ${pc}`);
        break;
      case ST:
        mem[k] = a;
        break;
      case STX:
        mem[k] = x;
        break;
      case ALU: {
        const op = ALU_OPS[code & 0xf0];
        if (!op) throw new Error(`alu op ${code & 0xf0} at ${pc}`);
        const r = op(a, code & X ? x : k);
        if (Number.isNaN(r)) return 0; // division by zero ends the program with 0 (KILL_THREAD)
        a = r >>> 0;
        break;
      }
      case JMP:
        if ((code & 0xf0) === 0) pc += k;
        else pc += JUMPS[code & 0xf0]!(a, code & X ? x : k) ? jt : jf;
        break;
      case RET:
        return (code & 0x18) === RET_A ? a : k >>> 0;
      case MISC:
        if ((code & 0xf8) === TXA) a = x;
        else x = a;
        break;
    }
  }
  throw new Error("fell off the end of the program");
}

/** The action as a word: "ALLOW", "KILL_PROCESS", "ERRNO 1", … */
export function actionName(ret: number): string {
  const data = ret & 0xffff;
  const action = (ret & 0xffff0000) >>> 0;
  const names: Record<number, string> = {
    2147483648: "KILL_PROCESS",
    0: "KILL_THREAD",
    196608: `TRAP ${data}`,
    327680: `ERRNO ${data}`,
    2143289344: "USER_NOTIF",
    2146435072: `TRACE ${data}`,
    2147221504: "LOG",
    2147418112: "ALLOW",
  };
  return names[action] ?? `UNKNOWN 0x${ret.toString(16)}`;
}
