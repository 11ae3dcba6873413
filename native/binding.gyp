{
  "targets": [
    {
      "target_name": "fleetlet_native",
      "sources": ["src/addon.cc", "src/spawn.cc", "src/process.cc", "src/remove-tree.cc", "src/fs-nodes.cc", "src/sd-notify.cc", "src/agent-process.cc", "src/file-lock.cc", "src/blob-writer.cc", "src/http-conn.cc", "src/http-connect.cc", "src/http-body.cc", "src/http-connection.cc", "src/tls-trust.cc"],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++20", "-Wall", "-Wextra", "-O2", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
      "ldflags": ["-Wl,-z,relro,-z,now"]
    },
    {
      "target_name": "fleetlet-shim",
      "type": "executable",
      "sources": [
        "shim/main.c", "shim/config.c", "shim/init.c", "shim/rootfs.c",
        "shim/security.c", "shim/seccomp.c", "shim/log-file.c", "shim/exec.c",
        "shim/fds.c", "shim/devices.c", "shim/devnodes.c", "shim/pid1.c", "shim/netns.c",
        "shim/cgroup-join.c"
      ],
      "actions": [
        {
          "action_name": "seccomp_programs",
          "message": "Generating the seccomp programs from seccomp/policy.h",
          "inputs": ["seccomp/generator.sh", "seccomp/generator.c", "seccomp/policy.h"],
          "outputs": ["<(SHARED_INTERMEDIATE_DIR)/seccomp-programs.h", "<(PRODUCT_DIR)/seccomp-programs.json"],
          "action": ["sh", "seccomp/generator.sh", "<(SHARED_INTERMEDIATE_DIR)/seccomp-programs.h", "<(PRODUCT_DIR)"]
        }
      ],
      "include_dirs": ["<(SHARED_INTERMEDIATE_DIR)"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2", "-fno-pie", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
      "ldflags": ["-static", "-no-pie", "-Wl,--gc-sections", "-Wl,-z,relro,-z,now"]
    }
  ]
}
