/**
 * The CNI plugin chain of one network attachment: `bridge` with `host-local`
 * addresses (its state under the state root), then `portmap` when the
 * container publishes ports through this network. An internal network has
 * no gateway on the bridge, no masquerading and no routes in the container.
 */
import type { Attachment, ContainerSpec } from "../../schemas/container.js";

export const CNI_VERSION = "1.0.0";

export interface ChainInput {
  attachment: Attachment;
  /** Ports published through this attachment (none on any other). */
  ports: ContainerSpec["ports"];
  /** The container's default route goes through this attachment. */
  defaultRoute: boolean;
  /** host-local's dataDir. */
  ipamDir: string;
}

/** Each plugin's configuration, in ADD order, without prevResult. */
export function pluginChain(c: ChainInput): Record<string, unknown>[] {
  const { bridge, subnet, internal } = c.attachment;
  const common = { cniVersion: CNI_VERSION, name: bridge };
  const chain: Record<string, unknown>[] = [
    {
      ...common,
      type: "bridge",
      bridge,
      isGateway: !internal,
      // Masquerading is one rule per network of ours (bridge-rules.ts), not a chain per container.
      ipMasq: false,
      hairpinMode: true,
      ipam: {
        type: "host-local",
        ranges: [[{ subnet }]],
        routes: c.defaultRoute ? [{ dst: "0.0.0.0/0" }] : [],
        dataDir: c.ipamDir,
      },
    },
  ];
  if (c.ports.length > 0)
    chain.push({
      ...common,
      type: "portmap",
      capabilities: { portMappings: true },
      snat: true,
      runtimeConfig: {
        portMappings: c.ports.map((p) => ({
          hostPort: p.hostPort,
          containerPort: p.containerPort,
          protocol: p.protocol,
          ...(p.hostIp ? { hostIP: p.hostIp } : {}),
        })),
      },
    });
  return chain;
}

/** The attachment the default route and the published ports go through: the first that is not internal. */
export function outwardAttachment(spec: Pick<ContainerSpec, "attachments">): number {
  return spec.attachments.findIndex((a) => !a.internal);
}

/** The container's address on this attachment, from the bridge plugin's result ("10.89.0.2/24" → "10.89.0.2"). */
export function resultAddress(result: Record<string, unknown>): string | undefined {
  const ips = result.ips as { address?: string }[] | undefined;
  return ips?.[0]?.address?.split("/")[0];
}

/**
 * The ADD result a CHECK is given, with the bridge's MAC address as it is
 * now (`mac`; undefined when the bridge is gone, and CHECK then says so). A
 * Linux bridge takes the lowest MAC of its ports unless one was set, and the
 * plugin sets one only on a bridge it gives a gateway address: an internal
 * network's bridge changes its MAC as containers come and go. The plugin's
 * CHECK compares it with the one recorded at ADD, and would call broken the
 * network of every container that joined before a peer left.
 */
export function checkResult(result: Record<string, unknown>, bridge: string, mac: string | undefined) {
  const interfaces = result.interfaces as { name?: string; mac?: string; sandbox?: string }[] | undefined;
  if (!mac || !interfaces) return result;
  return { ...result, interfaces: interfaces.map((i) => (i.name === bridge && !i.sandbox ? { ...i, mac } : i)) };
}
