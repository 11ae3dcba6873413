/**
 * What the runtime needs to create one container, and the records it keeps
 * in `<root>/containers/<id>/`. The CLI and the reconciler both build a
 * ContainerSpec; the runtime validates it once, here.
 */

import { deviceList } from "./device.js";
import { ipv4ToNumber, parseCidr } from "./network.js";
import { byteQuantity } from "./quantity.js";
import * as z from "./zod.js";

export const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

/** A host name (sethostname, /etc/hosts): unlike NAME_PATTERN, no '_'. */
export const hostName = z
  .string()
  .check(
    z.regex(/^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})$/, "expected a host name of letters, digits, '.' and '-' (at most 63)"),
  );
const name = z
  .string()
  .check(
    z.regex(NAME_PATTERN, "expected letters, digits, '_', '.' or '-' (at most 63), starting with a letter or digit"),
  );

/** Absolute, and free of the characters that the overlay options and the shim config use as separators. */
const hostPath = z.string().check(
  z.refine((p) => p.startsWith("/"), "expected an absolute path"),
  z.refine((p) => !/[:,\t\0\n]/.test(p), "must not contain ':', ',', tabs or newlines"),
);

const containerPath = z.string().check(
  z.refine((p) => p.startsWith("/"), "expected an absolute path"),
  z.refine((p) => !p.split("/").includes(".."), "must not contain '..'"),
  z.refine((p) => !/[\t\0]/.test(p), "must not contain tabs or NUL"),
);

/**
 * A volume's mount point: anywhere but /dev itself, the container's own
 * tmpfs, where `fleetlet-shim devnode` makes and removes device nodes as
 * they are plugged: over a volume, those would be made in a host directory.
 */
export const volumeTarget = containerPath.check(
  z.refine(
    (p) =>
      p
        .split("/")
        .filter((c) => c !== "" && c !== ".")
        .join("/") !== "dev",
    "must not be /dev: the container's own device directory cannot be a volume",
  ),
);

export const volumeMount = z.object({
  name,
  target: volumeTarget,
  readOnly: z._default(z.boolean(), false),
});

const port = () => z.number().check(z.int(), z.minimum(1), z.maximum(65535));

export const resources = z._default(
  z.object({
    memory: z.optional(byteQuantity.check(z.refine((b) => b === 0 || b >= 4 * 1024 * 1024, "must be at least 4Mi"))),
    cpus: z.optional(z.number().check(z.positive("must be more than 0"), z.maximum(1024))),
    cpuShares: z.optional(z.number().check(z.int(), z.minimum(2), z.maximum(262144))),
    pids: z.optional(z.number().check(z.int(), z.positive("must be at least 1"))),
  }),
  {},
);

/** One network a container joins: its bridge, its subnet, whether it leads anywhere. */
export const attachment = z.object({
  network: z.string().check(z.minLength(1)),
  bridge: z
    .string()
    .check(z.regex(/^[a-z0-9-]{1,15}$/, "expected a link name of at most 15 lower-case letters, digits or '-'")),
  subnet: z
    .string()
    .check(z.refine((s) => parseCidr(s) !== undefined, "expected an IPv4 network such as 10.89.0.0/24")),
  internal: z._default(z.boolean(), false),
});
export type Attachment = z.output<typeof attachment>;

export const publishedPort = z.object({
  hostIp: z
    .string()
    .check(z.refine((ip) => ip === "" || ipv4ToNumber(ip) !== undefined, 'expected an IPv4 address or ""')),
  hostPort: port(),
  containerPort: port(),
  protocol: z.enum(["tcp", "udp"]),
});

const containerFields = z.object({
  name: z.optional(name),
  /** Read-only lower layers, topmost first; never modified. */
  layers: z.array(hostPath).check(z.minLength(1, "at least one layer or --rootfs is needed")),
  command: z
    .array(z.string().check(z.refine((a) => !a.includes("\0"), "must not contain NUL")))
    .check(z.minLength(1, "a command is needed")),
  env: z._default(z.array(z.string().check(z.regex(/^[^=\0]+=[^\0]*$/, "expected KEY=VALUE"))), []),
  workingDir: z._default(containerPath, "/"),
  user: z._default(
    z.object({
      uid: z.number().check(z.int(), z.minimum(0), z.maximum(0xfffffffe)),
      gid: z.number().check(z.int(), z.minimum(0), z.maximum(0xfffffffe)),
      groups: z._default(z.array(z.number().check(z.int(), z.minimum(0))), []),
    }),
    { uid: 0, gid: 0, groups: [] },
  ),
  hostname: z.optional(hostName),
  resources,
  /** "bridge": the container joins `attachments`, each a bridge, in a network namespace of its own. */
  network: z._default(z.enum(["none", "host", "bridge"]), "none"),
  attachments: z._default(z.array(attachment), []),
  /** Host ports forwarded to the container (on its first attachment that is not internal). */
  ports: z._default(z.array(publishedPort), []),
  /** Names the container's peers know it by, besides its hostname. */
  aliases: z._default(z.array(name), []),
  /** More lines of the container's /etc/hosts (its peers, as known at its start): on bridges only. */
  extraHosts: z._default(
    z.array(
      z.object({
        address: z.string().check(z.refine((a) => ipv4ToNumber(a) !== undefined, "expected an IPv4 address")),
        names: z.array(name).check(z.minLength(1)),
      }),
    ),
    [],
  ),
  readOnlyRootfs: z._default(z.boolean(), false),
  /** PID 1 is a minimal init (the shim's init role) that forwards signals, reaps zombies and exits with the command's status. */
  init: z._default(z.boolean(), false),
  volumes: z._default(z.array(volumeMount), []),
  /** Host devices: a node at each target, and the device cgroup's rule for it. Paths are under the runtime's devRoot. */
  devices: deviceList,
  capAdd: z._default(z.array(z.string()), []),
  capDrop: z._default(z.array(z.string()), []),
  seccomp: z._default(z.enum(["default", "unconfined"]), "default"),
  log: z._default(
    z.object({
      maxBytes: z._default(byteQuantity, 1024 * 1024),
      keep: z._default(z.number().check(z.int(), z.minimum(0), z.maximum(20)), 2),
    }),
    { maxBytes: 1024 * 1024, keep: 2 },
  ),
  stopSignal: z._default(z.string(), "SIGTERM"),
  stopTimeoutMs: z._default(z.number().check(z.int(), z.minimum(0)), 10_000),
  labels: z._default(z.record(z.string(), z.string()), {}),
});

/** The spec, held also to the rules between its network fields. */
export const containerSpec = containerFields.check(
  z.refine((s) => (s.network === "bridge") === s.attachments.length > 0, {
    path: ["attachments"],
    message: 'a container joins networks with network "bridge", and only then',
  }),
  z.refine((s) => s.network === "bridge" || s.extraHosts.length === 0, {
    path: ["extraHosts"],
    message: 'a container has an /etc/hosts of ours only with network "bridge"',
  }),
  z.refine((s) => s.network === "bridge" || s.ports.length === 0, {
    path: ["ports"],
    message: 'ports are published only with network "bridge"',
  }),
);

export type ContainerSpecInput = z.input<typeof containerSpec>;
export type ContainerSpec = z.output<typeof containerSpec>;

/** Written by the shim when the container's init has exited. */
export const exitRecord = z.object({
  pid: z.number().check(z.int()),
  exitCode: z.number().check(z.int()),
  signal: z.number().check(z.int()),
  oomKilled: z.boolean(),
  startedAt: z.string(),
  finishedAt: z.string(),
});
export type ExitRecord = z.infer<typeof exitRecord>;

const processRef = z.object({
  pid: z.number().check(z.int(), z.positive()),
  startTime: z.string().check(z.regex(/^\d+$/)),
});
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
  startedAt: z.optional(z.string()),
  pid: z.optional(z.number().check(z.int())),
  exit: z.optional(exitRecord),
  spec: containerSpec,
});
export type ContainerInfo = z.infer<typeof containerInfo>;
