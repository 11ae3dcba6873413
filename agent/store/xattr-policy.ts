/**
 * Which extended attributes a layer may set: an allow-list. `user.*` (data
 * of the image's own) and `security.capability` (file capabilities, which
 * `ping` and the like need) are applied. Everything else is dropped with a
 * warning naming the entry and the attribute, never applied and never fatal:
 * - `trusted.*`: `trusted.overlay.*` steers overlayfs itself (redirect,
 *   metacopy, opaque); only the unpacker sets `trusted.overlay.opaque`, for
 *   a `.wh..wh..opq` entry;
 * - `user.overlay.*`: the same, for an overlay mounted with `userxattr`;
 * - `system.posix_acl_*`: ACLs that would grant what the mode bits do not;
 * - `security.selinux`, `security.ima` and the rest: labels and signatures
 *   of the host that built the image, meaningless or harmful here.
 * Dropping rather than refusing, because layers built on SELinux hosts or
 * with ACLs are common and run fine without them; a dropped attribute can
 * only take away what the image asked for, never give it more.
 *
 * An allowed attribute the filesystem will not take (a `user.*` attribute
 * on a symlink, a malformed capability, a filesystem without user xattrs)
 * is dropped the same way, with the kernel's reason.
 */

export const XATTR_ALLOWED = "user.* (except user.overlay.*) and security.capability";

export function xattrAllowed(name: string): boolean {
  if (name.includes("\0")) return false;
  if (name === "security.capability") return true;
  return name.startsWith("user.") && !name.startsWith("user.overlay.");
}

/** Errors of setxattr that drop the attribute (with a warning) rather than fail the layer. */
export const XATTR_DROP_ERRNOS = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "EINVAL", "E2BIG", "ERANGE", "ENOSPC"]);

/**
 * The warnings of one layer's dropped attributes: the first entry for each
 * attribute name as it happens, and at the end how many entries lost it in
 * all, so that a layer labelled file by file makes two lines, not thousands.
 */
export class XattrDrops {
  private readonly counts = new Map<string, number>();

  constructor(private readonly warn: (message: string) => void) {}

  drop(entry: string, xattr: string, why: string): void {
    // A layer could name attributes without end: past 64 names, they are counted together.
    const name = this.counts.has(xattr) || this.counts.size < 64 ? xattr : "(other names)";
    const n = this.counts.get(name) ?? 0;
    this.counts.set(name, n + 1);
    if (n === 0) this.warn(`entry "${entry}": xattr "${xattr}" dropped: ${why}`);
  }

  /** Says how many entries lost each attribute, where more than one did. */
  summarize(): void {
    for (const [name, n] of this.counts) {
      if (n > 1) this.warn(`xattr "${name}" dropped from ${n} entries in all`);
    }
  }
}
