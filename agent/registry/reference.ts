/**
 * Image references: `host[:port]/path[:tag][@sha256:…]`. fleetlet talks to
 * private registries, so the host is always named: there is no implicit
 * default registry to send a device's credentials to.
 */
import { FleetError } from "../errors.js";
import { digestHex } from "../store/digest.js";

export interface ImageRef {
  /** host[:port] */
  registry: string;
  /** repository path, e.g. acme/web */
  repository: string;
  tag?: string | undefined;
  digest?: string | undefined;
}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

export function parseReference(text: string, field = "image"): ImageRef {
  const fail = (why: string) => new FleetError("E_INVALID_ARGUMENT", `${field} "${text}": ${why}`, { exitCode: 125 });
  let rest = text.trim();
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    digestHex(digest, `${field} digest`);
    rest = rest.slice(0, at);
  }
  const slash = rest.indexOf("/");
  if (slash < 0) throw fail("name the registry, as in registry.local:5000/acme/web:1.2");
  const registry = rest.slice(0, slash);
  if (
    !/^[a-zA-Z0-9.-]+(:\d{1,5})?$/.test(registry) ||
    !(registry.includes(".") || registry.includes(":") || registry.startsWith("localhost"))
  ) {
    throw fail(`"${registry}" is not a registry host (expected host[:port], e.g. registry.local:5000)`);
  }
  let path = rest.slice(slash + 1);
  let tag: string | undefined;
  const colon = path.lastIndexOf(":");
  if (colon >= 0) {
    tag = path.slice(colon + 1);
    path = path.slice(0, colon);
    if (!TAG.test(tag)) throw fail(`tag "${tag}" is not valid`);
  }
  if (!path?.split("/").every((c) => PATH_COMPONENT.test(c))) {
    throw fail("the repository path must be lowercase letters, digits and separators (., _, -, /)");
  }
  if (!tag && !digest) tag = "latest";
  return { registry, repository: path, tag, digest };
}

export function formatReference(ref: ImageRef): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ""}${ref.digest ? `@${ref.digest}` : ""}`;
}
