/**
 * A root filesystem made from Debian's busybox-static: /bin/busybox with a
 * link per applet, and minimal /etc files. Built once per directory and
 * reused; the builder is also what the demo and the benchmarks use.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const BUSYBOX = "/bin/busybox";

export function buildBusyboxRootfs(dir: string): string {
  if (existsSync(join(dir, ".complete"))) return dir;
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} is missing: install Debian's busybox-static (npm test does)`);
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  for (const d of ["bin", "etc", "tmp", "root", "var", "home"]) mkdirSync(join(tmp, d), { recursive: true });
  copyFileSync(BUSYBOX, join(tmp, "bin", "busybox"));
  const applets = execFileSync(BUSYBOX, ["--list"], { encoding: "utf8" }).split("\n").filter(Boolean);
  for (const applet of applets) {
    // `busybox --list` names busybox itself: linking it would replace the binary with a loop.
    if (applet === "busybox") continue;
    symlinkSync("busybox", join(tmp, "bin", applet));
  }
  writeFileSync(
    join(tmp, "etc", "passwd"),
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\napp:x:1000:1000:app:/home:/bin/sh\n",
  );
  writeFileSync(join(tmp, "etc", "group"), "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n");
  writeFileSync(join(tmp, ".complete"), "");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, ".."), { recursive: true });
  renameSync(tmp, dir);
  return dir;
}
