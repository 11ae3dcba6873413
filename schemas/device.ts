/**
 * A host device given to a container: the desired document's
 * `services.<name>.devices[]` and `fleetlet run --device`. `path` names the
 * host node (a symlink such as /dev/serial/by-id/… is resolved each time
 * the container starts or the device reappears); `target` is where the
 * node appears in the container's /dev; `permissions` are what the device
 * cgroup allows (r read, w write, m mknod).
 */
import * as z from "./zod.js";

/** Names the container's /dev already has (rootfs.c): a device cannot take their place. */
export const RESERVED_DEV_NAMES = [
  "null",
  "zero",
  "full",
  "random",
  "urandom",
  "tty",
  "ptmx",
  "pts",
  "shm",
  "fd",
  "stdin",
  "stdout",
  "stderr",
  "core",
  "init",
];

/** Absolute, under /dev/, each component a plain name (no '', '.', '..'), nothing the shim config uses as a separator. */
function devPath(what: string) {
  return z.string().check(
    z.refine((p) => p.startsWith("/dev/"), `expected an absolute path under /dev/ (${what})`),
    z.refine(
      (p) =>
        p
          .slice(1)
          .split("/")
          .every((c) => c !== "" && c !== "." && c !== ".."),
      "must be normalised: no empty, '.' or '..' components and no trailing '/'",
    ),
    z.refine((p) => !/[\t\n\0]/.test(p), "must not contain tabs, newlines or NUL"),
    z.refine((p) => p.length <= 1024, "must be at most 1024 characters"),
  );
}

/** rwm, each at most once, in any order. */
export const devicePermissions = z
  .string()
  .check(z.regex(/^(?!.*(.).*\1)[rwm]{1,3}$/, 'expected a subset of "rwm" such as "rw" or "r"'));

export const deviceRequest = z.object({
  path: devPath("the host's device node, such as /dev/ttyUSB0"),
  /** Where the node appears in the container; `path` when absent. */
  target: z.optional(
    devPath("the container's /dev: its root filesystem is mounted nodev").check(
      z.refine(
        (p) => !RESERVED_DEV_NAMES.includes(p.split("/")[2]!),
        `must not replace the container's own /dev entries (${RESERVED_DEV_NAMES.join(", ")})`,
      ),
    ),
  ),
  permissions: z._default(devicePermissions, "rw"),
});
export type DeviceRequest = z.output<typeof deviceRequest>;

/**
 * At most this many devices per container: with the default rules and the
 * limits, the shim's config takes 256 cgroup writes (v1) or device rules (v2).
 */
export const MAX_DEVICES = 128;

/** A list of devices, each target at most once. */
export const deviceList = z
  ._default(z.array(deviceRequest).check(z.maxLength(MAX_DEVICES, `at most ${MAX_DEVICES} devices per container`)), [])
  .check(
    z.superRefine((devices, ctx) => {
      const seen = new Map<string, number>();
      devices.forEach((d, i) => {
        const target = d.target ?? d.path;
        const first = seen.get(target);
        if (first !== undefined)
          ctx.addIssue({
            code: "custom",
            path: [i, d.target ? "target" : "path"],
            message: `${target} is already the target of entry ${first}`,
          });
        else seen.set(target, i);
        if (!d.target && RESERVED_DEV_NAMES.includes(d.path.split("/")[2]!))
          ctx.addIssue({
            code: "custom",
            path: [i, "path"],
            message: `${d.path} would replace the container's own /dev entry: give a target`,
          });
      });
    }),
  );

/** A supplementary group: a name in the image's /etc/group, or a number. */
export const groupRef = z.union([
  z.number().check(z.int(), z.minimum(0), z.maximum(0xfffffffe)),
  z.string().check(z.regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/, "expected a group name or a number")),
]);

/** The host node a device request resolved to (and, in a container's devices.json, what its /dev holds). */
export const deviceNode = z.object({
  /** Where it goes in the container. */
  target: z.string(),
  type: z.enum(["c", "b"]),
  major: z.number().check(z.int(), z.minimum(0)),
  minor: z.number().check(z.int(), z.minimum(0)),
  /** The permission bits of the host node (mode & 0o777). */
  mode: z.number().check(z.int(), z.minimum(0), z.maximum(0o777)),
  uid: z.number().check(z.int(), z.minimum(0)),
  gid: z.number().check(z.int(), z.minimum(0)),
  permissions: devicePermissions,
});
export type DeviceNode = z.infer<typeof deviceNode>;

/** A container's devices.json: per requested device, the node its /dev holds, or null while the device is absent. */
export const recordedDevices = z.array(z.nullable(deviceNode));

/** Whether each of a container's devices is there now, as the reported state shows it. */
export const devicePresence = z.object({
  path: z.string(),
  target: z.string(),
  present: z.boolean(),
  /** Why the device, though on the host, has no node in the container (its target's parent was refused, say). */
  error: z.optional(z.string()),
});
export type DevicePresence = z.infer<typeof devicePresence>;
