/**
 * What the runtime needs to create one container, and the records it keeps
 * in `<root>/containers/<id>/`. The CLI and the reconciler both build a
 * ContainerSpec; the runtime validates it once, here.
 */

import { deviceList } from "./device.js";
import { ipv4ToNumber, parseCidr } from "./network.js";
import { byteQuantity } from "./quantity.js";
import { z } from "./zod.js";

export const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

/** A host name (sethostname, /etc/hosts): unlike NAME_PATTERN, no '_'. */
export const hostName = z
  .string()
  .regex(/^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})$/, "expected a host name of letters, digits, '.' and '-' (at most 63)");
const name = z
  .string()
  .regex(NAME_PATTERN, "expected letters, digits, '_', '.' or '-' (at most 63), starting with a letter or digit");

/** Absolute, and free of the characters that the overlay options and the shim config use as separators. */
const hostPath = z
  .string()
  .refine((p) => p.startsWith("/"), "expected an absolute path")
  .refine((p) => !/[:,\t\0\n]/.test(p), "must not contain ':', ',', tabs or newlines");

const containerPath = z
  .string()
  .refine((p) => p.startsWith("/"), "expected an absolute path")
  .refine((p) => !p.split("/").includes(".."), "must not contain '..'")
  .refine((p) => !/[\t\0]/.test(p), "must not contain tabs or NUL");

/**
 * A volume's mount point: anywhere but /dev itself, the container's own
 * tmpfs, where `fleetlet-shim devnode` makes and removes device nodes as
 * they are plugged: over a volume, those would be made in a host directory.
 */
export const volumeTarget = containerPath.refine(
  (p) =>
    p
      .split("/")
      .filter((c) => c !== "" && c !== ".")
      .join("/") !== "dev",
  "must not be /dev: the container's own device directory cannot be a volume",
);

export const volumeMount = z.object({
  name,
  target: volumeTarget,
  readOnly: z.boolean().default(false),
});

export const resources = z
  .object({
    memory: byteQuantity.refine((b) => b === 0 || b >= 4 * 1024 * 1024, "must be at least 4Mi").optional(),
    cpus: z.number().positive("must be more than 0").max(1024).optional(),
    cpuShares: z.number().int().min(2).max(262144).optional(),
    pids: z.number().int().positive("must be at least 1").optional(),
  })
  .default({});

/** One network a container joins: its bridge, its subnet, whether it leads anywhere. */
export const attachment = z.object({
  network: z.string().min(1),
  bridge: z.string().regex(/^[a-z0-9-]{1,15}$/, "expected a link name of at most 15 lower-case letters, digits or '-'"),
  subnet: z.string().refine((s) => parseCidr(s) !== undefined, "expected an IPv4 network such as 10.89.0.0/24"),
  internal: z.boolean().default(false),
});
export type Attachment = z.output<typeof attachment>;

export const publishedPort = z.object({
  hostIp: z.string().refine((ip) => ip === "" || ipv4ToNumber(ip) !== undefined, 'expected an IPv4 address or ""'),
  hostPort: z.number().int().min(1).max(65535),
  containerPort: z.number().int().min(1).max(65535),
  protocol: z.enum(["tcp", "udp"]),
});

const containerFields = z.object({
  name: name.optional(),
  /** Read-only lower layers, topmost first; never modified. */
  layers: z.array(hostPath).min(1, "at least one layer or --rootfs is needed"),
  command: z.array(z.string().refine((a) => !a.includes("\0"), "must not contain NUL")).min(1, "a command is needed"),
  env: z.array(z.string().regex(/^[^=\0]+=[^\0]*$/, "expected KEY=VALUE")).default([]),
  workingDir: containerPath.default("/"),
  user: z
    .object({
      uid: z.number().int().min(0).max(0xfffffffe),
      gid: z.number().int().min(0).max(0xfffffffe),
      groups: z.array(z.number().int().min(0)).default([]),
    })
    .default({ uid: 0, gid: 0, groups: [] }),
  hostname: hostName.optional(),
  resources,
  /** "bridge": the container joins `attachments`, each a bridge, in a network namespace of its own. */
  network: z.enum(["none", "host", "bridge"]).default("none"),
  attachments: z.array(attachment).default([]),
  /** Host ports forwarded to the container (on its first attachment that is not internal). */
  ports: z.array(publishedPort).default([]),
  /** Names the container's peers know it by, besides its hostname. */
  aliases: z.array(name).default([]),
  /** More lines of the container's /etc/hosts (its peers, as known at its start): on bridges only. */
  extraHosts: z
    .array(
      z.object({
        address: z.string().refine((a) => ipv4ToNumber(a) !== undefined, "expected an IPv4 address"),
        names: z.array(name).min(1),
      }),
    )
    .default([]),
  readOnlyRootfs: z.boolean().default(false),
  /** PID 1 is a minimal init (the shim's init role) that forwards signals, reaps zombies and exits with the command's status. */
  init: z.boolean().default(false),
  volumes: z.array(volumeMount).default([]),
  /** Host devices: a node at each target, and the device cgroup's rule for it. Paths are under the runtime's devRoot. */
  devices: deviceList,
  capAdd: z.array(z.string()).default([]),
  capDrop: z.array(z.string()).default([]),
  seccomp: z.enum(["default", "unconfined"]).default("default"),
  log: z
    .object({
      maxBytes: byteQuantity.default(1024 * 1024),
      keep: z.number().int().min(0).max(20).default(2),
    })
    .default({ maxBytes: 1024 * 1024, keep: 2 }),
  stopSignal: z.string().default("SIGTERM"),
  stopTimeoutMs: z.number().int().min(0).default(10_000),
  labels: z.record(z.string(), z.string()).default({}),
});

/** The spec, held also to the rules between its network fields. */
export const containerSpec = containerFields
  .refine((s) => (s.network === "bridge") === s.attachments.length > 0, {
    path: ["attachments"],
    message: 'a container joins networks with network "bridge", and only then',
  })
  .refine((s) => s.network === "bridge" || s.extraHosts.length === 0, {
    path: ["extraHosts"],
    message: 'a container has an /etc/hosts of ours only with network "bridge"',
  })
  .refine((s) => s.network === "bridge" || s.ports.length === 0, {
    path: ["ports"],
    message: 'ports are published only with network "bridge"',
  });

export type ContainerSpecInput = z.input<typeof containerSpec>;
export type ContainerSpec = z.output<typeof containerSpec>;

/** Written by the shim when the container's init has exited. */
export const exitRecord = z.object({
  pid: z.number().int(),
  exitCode: z.number().int(),
  signal: z.number().int(),
  oomKilled: z.boolean(),
  startedAt: z.string(),
  finishedAt: z.string(),
});
export type ExitRecord = z.infer<typeof exitRecord>;

const processRef = z.object({ pid: z.number().int().positive(), startTime: z.string().regex(/^\d+$/) });
export type ProcessRef = z.infer<typeof processRef>;

/** `state.json`: written once by create; the spec never changes afterwards. */
export const containerState = z.object({
  id: z.string(),
  createdAt: z.string(),
  spec: containerSpec,
});
export type ContainerState = z.infer<typeof containerState>;

/** `running.json`: written by the shim before it reports the start, so a later process can find it. */
export const runningRecord = z.object({
  shim: processRef,
  init: processRef,
  startedAt: z.string(),
});
export type RunningRecord = z.infer<typeof runningRecord>;

/** How the host's cgroups are laid out: pure v2, v1, or v1 controllers beside a v2 mount. */
export const cgroupMode = z.enum(["v1", "v2", "hybrid"]);
export type CgroupMode = z.infer<typeof cgroupMode>;

/** A container's usage figures, read from its cgroups. */
export const containerStats = z.object({
  memoryBytes: z.number(),
  cpuNanos: z.number(),
  pids: z.number(),
});
export type ContainerStats = z.infer<typeof containerStats>;

export const containerStatus = z.enum(["created", "running", "exited"]);
export type ContainerStatus = z.infer<typeof containerStatus>;

/** A container as a runtime describes it: its spec, and how it stands now. */
export const containerInfo = z.object({
  id: z.string(),
  status: containerStatus,
  createdAt: z.string(),
  startedAt: z.string().optional(),
  pid: z.number().int().optional(),
  exit: exitRecord.optional(),
  spec: containerSpec,
});
export type ContainerInfo = z.infer<typeof containerInfo>;
