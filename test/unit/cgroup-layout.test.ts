import { describe, expect, it } from "vitest";
import {
  CGROUP2_SUPER_MAGIC,
  classifyLayout,
  detectCgroupLayout,
  parseV1Mounts,
  TMPFS_MAGIC,
} from "../../agent/runtime/cgroup-layout.js";

describe("classifyLayout", () => {
  it.each([
    [CGROUP2_SUPER_MAGIC, null, "v2"],
    [TMPFS_MAGIC, CGROUP2_SUPER_MAGIC, "hybrid"],
    [TMPFS_MAGIC, null, "v1"],
    [TMPFS_MAGIC, TMPFS_MAGIC, "v1"],
  ])("root fs 0x%s with unified 0x%s is %s", (root, unified, mode) => {
    expect(classifyLayout(root, unified)).toBe(mode);
  });
});

describe("parseV1Mounts", () => {
  it("finds separate and co-mounted controllers and ignores named hierarchies", () => {
    const mountinfo = [
      "30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755",
      "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw",
      "32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd",
      "35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw shared:14 - cgroup cgroup rw,cpu,cpuacct",
      "36 30 0:32 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory",
      "37 30 0:33 / /sys/fs/cgroup/pids rw shared:16 - cgroup cgroup rw,pids",
      "38 30 0:34 / /sys/fs/cgroup/devices rw shared:17 - cgroup cgroup rw,devices",
      "39 30 0:35 / /sys/fs/cgroup/freezer rw shared:18 - cgroup cgroup rw,freezer",
    ].join("\n");
    const mounts = parseV1Mounts(mountinfo);
    expect(Object.fromEntries(mounts)).toEqual({
      cpu: "/sys/fs/cgroup/cpu,cpuacct",
      cpuacct: "/sys/fs/cgroup/cpu,cpuacct",
      memory: "/sys/fs/cgroup/memory",
      pids: "/sys/fs/cgroup/pids",
      devices: "/sys/fs/cgroup/devices",
    });
  });
});

describe("detectCgroupLayout on this machine", () => {
  it("finds a layout whose memory, cpu, pids and (on v1) devices controllers are usable", () => {
    const layout = detectCgroupLayout();
    if (layout.mode === "v2") {
      expect(layout.unified).toBe("/sys/fs/cgroup");
    } else {
      // v1 or hybrid: the limits go to the v1 controllers
      for (const c of ["memory", "cpu", "cpuacct", "pids", "devices"])
        expect(layout.v1.get(c), `v1 ${c} controller`).toBeTruthy();
      if (layout.mode === "hybrid") expect(layout.unified).toBe("/sys/fs/cgroup/unified");
    }
  });
});
