/**
 * What the agent does with a bridge's link itself, beside the bridge plugin:
 * it turns IPv6 off, and reads the MAC address.
 */
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { isErrno } from "../errors.js";

/**
 * Takes IPv6 off the bridge (the bridge plugin leaves it on): its link-local
 * address would be an address of the device on every network, internal ones
 * included, so a container reached the device's programs on all addresses
 * (`::`) through `fe80::…%eth0` with no route and no capability.
 */
export function closeIpv6(bridge: string): void {
  try {
    writeFileSync(`/proc/sys/net/ipv6/conf/${bridge}/disable_ipv6`, "1");
  } catch (err) {
    // No IPv6 in this kernel (or turned off at boot): the bridge has no IPv6 address to take away.
    if (!isErrno(err, "ENOENT")) throw err;
  }
}

/**
 * The bridge's MAC address now ("0e:47:80:7a:ab:dd"), or undefined when
 * there is no such link. Asked of `ip`, which answers for this process's
 * network namespace: /sys/class/net shows the namespace sysfs was mounted in.
 */
export function bridgeMac(bridge: string): Promise<string | undefined> {
  return new Promise((done) =>
    execFile("ip", ["-j", "link", "show", "dev", bridge], (err, stdout) => {
      if (err) return done(undefined); // no such link (or no ip): CHECK itself then says what is wrong
      try {
        done((JSON.parse(stdout) as { address?: string }[])[0]?.address);
      } catch {
        done(undefined);
      }
    }),
  );
}
