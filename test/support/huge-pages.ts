/** The kernel's transparent huge pages, as deploy/launcher.sh reads them. */
import { readFileSync } from "node:fs";

/**
 * Whether the kernel's transparent huge page is 2 MiB (it has none, or another size, otherwise): the check
 * deploy/launcher.sh makes before it sets the malloc tunable (agent/system/process-memory.ts).
 */
export function twoMiBHugePages(sizeFile = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"): boolean {
  try {
    return readFileSync(sizeFile, "utf8").trim() === String(2 << 20);
  } catch {
    return false;
  }
}
