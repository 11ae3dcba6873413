/**
 * Picking one manifest for this device from an index (or a Docker manifest
 * list): os and architecture must match; for arm the variant falls back
 * v7 → v6 → v5, as a v7 core runs v6 and v5 code.
 */
import { arch } from "node:os";

export interface Platform {
  os: string;
  architecture: string;
  variant?: string | undefined;
}

const NODE_TO_OCI: Record<string, string> = {
  x64: "amd64",
  ia32: "386",
  arm: "arm",
  arm64: "arm64",
  ppc64: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
};

export function hostPlatform(): Platform {
  const architecture = NODE_TO_OCI[arch()] ?? arch();
  const armVersion = (process.config.variables as Record<string, unknown>).arm_version;
  const variant = architecture === "arm" ? `v${armVersion ?? "7"}` : architecture === "arm64" ? "v8" : undefined;
  return { os: "linux", architecture, variant };
}

export function parsePlatform(text: string): Platform {
  const [os = "", architecture = "", variant] = text.split("/");
  return { os, architecture, variant };
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join("/");
}

/** Variants acceptable for `wanted`, best first. */
function variantPreference(wanted: Platform): (string | undefined)[] {
  if (wanted.architecture === "arm") {
    const n = Number((wanted.variant ?? "v7").replace(/^v/, ""));
    const out: (string | undefined)[] = [];
    for (let v = n; v >= 5; v--) out.push(`v${v}`);
    return [...out, undefined];
  }
  if (wanted.architecture === "arm64") return ["v8", undefined];
  return [wanted.variant, undefined];
}

/** Index of the best entry for `wanted`, or -1 when none fits. */
export function selectPlatform(candidates: (Platform | undefined)[], wanted: Platform): number {
  let best = -1;
  let bestRank = Number.POSITIVE_INFINITY;
  const prefs = variantPreference(wanted);
  candidates.forEach((p, i) => {
    if (!p || p.os !== wanted.os || p.architecture !== wanted.architecture) return;
    const rank = prefs.indexOf(p.variant);
    if (rank >= 0 && rank < bestRank) {
      best = i;
      bestRank = rank;
    }
  });
  return best;
}
