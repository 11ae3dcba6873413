/** What the tests check of an ELF file: its class, type, machine, and whether it names a program interpreter. */
import { closeSync, openSync, readSync } from "node:fs";

export const EM_X86_64 = 62;
export const EM_AARCH64 = 183;
export const ET_EXEC = 2;
export const ET_DYN = 3;
const PT_INTERP = 3;

export interface ElfHeader {
  /** 64-bit, little-endian. */
  elf64le: boolean;
  type: number;
  machine: number;
  /** A PT_INTERP program header: the file is linked dynamically (or is a PIE with a loader). */
  interpreter: boolean;
}

function readAt(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const n = readSync(fd, buf, 0, length, offset);
  if (n !== length) throw new Error(`short read: ${n} of ${length} bytes at ${offset}`);
  return buf;
}

/** Reads the ELF header and the program headers only (Node's binary is over 100 MB). */
export function readElfHeader(path: string): ElfHeader {
  const fd = openSync(path, "r");
  try {
    const h = readAt(fd, 0, 64);
    if (h.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${path} is not an ELF file`);
    const elf64le = h[4] === 2 && h[5] === 1;
    if (!elf64le) return { elf64le, type: 0, machine: 0, interpreter: false };
    const phoff = Number(h.readBigUInt64LE(32));
    const phentsize = h.readUInt16LE(54);
    const phnum = h.readUInt16LE(56);
    const phdrs = readAt(fd, phoff, phentsize * phnum);
    let interpreter = false;
    for (let i = 0; i < phnum; i++) if (phdrs.readUInt32LE(i * phentsize) === PT_INTERP) interpreter = true;
    return { elf64le, type: h.readUInt16LE(16), machine: h.readUInt16LE(18), interpreter };
  } finally {
    closeSync(fd);
  }
}
