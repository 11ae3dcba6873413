/**
 * Images made and pushed by other people's tools, so tests see what a
 * registry holds when fleetlet did not write it: Debian's umoci builds an OCI
 * image layout from a root filesystem and skopeo pushes it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type RegistryFixture, runTool } from "./registry.js";

/** The tag of "repo/name:tag", or "latest" when it has none (a colon before the last / is a port). */
export function tagOf(ref: string): string {
  const colon = ref.lastIndexOf(":");
  if (colon < 0 || colon < ref.lastIndexOf("/")) return "latest";
  return ref.slice(colon + 1);
}

/**
 * Builds a one-layer OCI layout from rootfsDir. The layer is made by
 * unpack + repack: `umoci insert` of a directory at / (umoci 0.4.7) writes a
 * layer entry named "/" and a tar stream cut short of its end blocks.
 */
async function buildLayout(work: string, rootfsDir: string, tag: string, cmd?: string[]): Promise<string> {
  const layout = join(work, "layout");
  const image = `${layout}:${tag}`;
  const bundle = join(work, "bundle");
  await runTool("umoci", ["init", "--layout", layout]);
  await runTool("umoci", ["new", "--image", image]);
  await runTool("umoci", ["unpack", "--image", image, bundle]);
  await runTool("cp", ["-a", `${rootfsDir}/.`, join(bundle, "rootfs")]);
  await runTool("umoci", ["repack", "--image", image, bundle]);
  // The = form keeps values such as "-c" from being read as flags.
  if (cmd) await runTool("umoci", ["config", "--image", image, ...cmd.map((c) => `--config.cmd=${c}`)]);
  return layout;
}

/** Builds an image from rootfsDir with umoci and pushes it to reg as ref ("repo/name:tag") with skopeo. */
export async function pushWithSkopeo(
  reg: RegistryFixture,
  rootfsDir: string,
  ref: string,
  opts: { cmd?: string[]; compress?: "gzip" | "zstd" } = {},
): Promise<void> {
  const tag = tagOf(ref);
  const work = mkdtempSync(join(tmpdir(), "fleetlet-oci-layout-"));
  try {
    const layout = await buildLayout(work, rootfsDir, tag, opts.cmd);
    // --insecure-policy: the host's signature policy has no say over a throwaway test image.
    await runTool("skopeo", [
      "copy",
      "--insecure-policy",
      "--dest-creds",
      `${reg.username}:${reg.password}`,
      "--dest-cert-dir",
      reg.certDir,
      ...(opts.compress ? ["--dest-compress", "--dest-compress-format", opts.compress] : []),
      `oci:${layout}:${tag}`,
      `docker://${reg.host}/${ref}`,
    ]);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
