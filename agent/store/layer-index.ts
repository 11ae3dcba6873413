/**
 * Every path an unpack has made in its layer directory, and what it is: the
 * directory starts empty and only the unpacker writes into it, so this tree
 * knows all there is, without asking the filesystem (and so without
 * following anything an entry planted). A tree rather than a flat map of
 * paths: replacing a directory drops its subtree in one step, so no layer
 * can make the unpacker scan every path it knows once per entry, and a
 * deep path is stored once per component.
 */
export type EntryKind = "dir" | "file" | "symlink" | "other";

interface IndexNode {
  kind: EntryKind;
  children?: Map<string, IndexNode>;
}

function split(rel: string): string[] {
  return rel === "" ? [] : rel.split("/");
}

export class LayerIndex {
  private readonly top: IndexNode = { kind: "dir", children: new Map() };

  private node(parts: string[]): IndexNode | undefined {
    let at: IndexNode | undefined = this.top;
    for (const part of parts) {
      at = at.children?.get(part);
      if (!at) return undefined;
    }
    return at;
  }

  /** What `rel` is ("" is the layer's root), or undefined when nothing is there. */
  kind(rel: string): EntryKind | undefined {
    return this.node(split(rel))?.kind;
  }

  /**
   * Makes sure every parent of `rel` is a directory: a missing one is made
   * through `mkdir` (given its path) and recorded. Resolves with the first
   * parent that is something else, or undefined when all are directories.
   */
  ensureParents(rel: string, mkdir: (path: string) => void): { path: string; kind: EntryKind } | undefined {
    const parts = split(rel);
    let at = this.top;
    let path = "";
    for (const part of parts.slice(0, -1)) {
      path = path ? `${path}/${part}` : part;
      let next = at.children!.get(part);
      if (!next) {
        mkdir(path);
        next = { kind: "dir", children: new Map() };
        at.children!.set(part, next);
      } else if (next.kind !== "dir") {
        return { path, kind: next.kind };
      }
      at = next;
    }
    return undefined;
  }

  /** Records `rel` as `kind`; its parent must be a recorded directory. A directory recorded again keeps its content. */
  set(rel: string, kind: EntryKind): void {
    const parts = split(rel);
    const parent = this.node(parts.slice(0, -1));
    if (!parent?.children) throw new Error(`layer index: "${rel}" has no recorded parent directory`);
    const name = parts.at(-1)!;
    const existing = parent.children.get(name);
    if (existing?.kind === "dir" && kind === "dir") return;
    parent.children.set(name, kind === "dir" ? { kind, children: new Map() } : { kind });
  }

  /** Forgets `rel` and, for a directory, everything under it. */
  remove(rel: string): void {
    const parts = split(rel);
    this.node(parts.slice(0, -1))?.children?.delete(parts.at(-1)!);
  }
}
