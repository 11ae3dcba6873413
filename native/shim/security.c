/* Privileges of the container's init, dropped in this order just before
 * exec: file-descriptor limit, capability bounding set, user and groups,
 * the remaining capability sets, no_new_privs, and the seccomp filter last. */
#include "shim.h"

#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

static uint64_t cap_mask(const struct shim_config *cfg) {
  uint64_t mask = 0;
  for (size_t i = 0; i < cfg->caps.len; i++) {
    long c = strtol(cfg->caps.items[i], NULL, 10);
    if (c >= 0 && c < 64) mask |= 1ULL << c;
  }
  return mask;
}

static int drop_bounding(uint64_t keep, struct shim_error *err) {
  /* One call per capability dropped: EINVAL is the first number past the
   * kernel's last capability (a kept one is never asked about). */
  for (int cap = 0; cap < 64; cap++) {
    if (keep & (1ULL << cap)) continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
      if (errno == EINVAL) break;
      set_error(err, EXIT_RUNTIME, errno, "drop capability %d from the bounding set", cap);
      return -1;
    }
  }
  return 0;
}

static int set_user(const struct shim_config *cfg, struct shim_error *err) {
  gid_t groups[MAX_LIST];
  for (size_t i = 0; i < cfg->groups.len; i++) groups[i] = (gid_t)strtoul(cfg->groups.items[i], NULL, 10);
  if (setgroups(cfg->groups.len, groups) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "setgroups");
    return -1;
  }
  if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "prctl PR_SET_KEEPCAPS");
    return -1;
  }
  if (setresgid(cfg->gid, cfg->gid, cfg->gid) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "setresgid %u", cfg->gid);
    return -1;
  }
  if (setresuid(cfg->uid, cfg->uid, cfg->uid) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "setresuid %u", cfg->uid);
    return -1;
  }
  return 0;
}

/* What this process may grant: asking for more (CAP_SYS_RESOURCE in a
 * sandbox without it, say) would fail capset, so "ALL" means all we have. */
static uint64_t permitted_caps(void) {
  struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2];
  if (syscall(SYS_capget, &hdr, data) < 0) return ~0ULL;
  return (uint64_t)data[0].permitted | ((uint64_t)data[1].permitted << 32);
}

static int set_caps(uint64_t mask, int root, struct shim_error *err) {
  struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2];
  /* A non-root user gets the bounding set only, as Docker does: it can
   * regain capabilities through file capabilities, never by default. The
   * inheritable set stays empty for everyone (Docker since CVE-2022-24769):
   * it survives a switch to another user (su in the container), and a
   * program with inheritable file capabilities would then get them. */
  uint64_t sets = root ? mask : 0;
  memset(data, 0, sizeof(data));
  for (int i = 0; i < 2; i++) {
    uint32_t word = (uint32_t)(sets >> (32 * i));
    data[i].effective = data[i].permitted = word;
    data[i].inheritable = 0;
  }
  if (syscall(SYS_capset, &hdr, data) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "capset");
    return -1;
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
    set_error(err, EXIT_RUNTIME, errno, "clear ambient capabilities");
    return -1;
  }
  return 0;
}

/* Without CAP_SYS_RESOURCE the hard limit cannot grow past ours: keep ours. */
static int set_nofile(struct rlimit *nofile) {
  struct rlimit cur;
  if (setrlimit(RLIMIT_NOFILE, nofile) == 0) return 0;
  if (errno != EPERM || getrlimit(RLIMIT_NOFILE, &cur) < 0) return -1;
  if (nofile->rlim_max > cur.rlim_max) nofile->rlim_max = cur.rlim_max;
  if (nofile->rlim_cur > nofile->rlim_max) nofile->rlim_cur = nofile->rlim_max;
  return setrlimit(RLIMIT_NOFILE, nofile);
}

int security_apply(const struct shim_config *cfg, struct shim_error *err) {
  struct rlimit nofile = {.rlim_cur = cfg->nofile_soft, .rlim_max = cfg->nofile_hard};
  uint64_t mask = cap_mask(cfg) & permitted_caps();

  if (set_nofile(&nofile) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "setrlimit RLIMIT_NOFILE %llu:%llu",
              (unsigned long long)nofile.rlim_cur, (unsigned long long)nofile.rlim_max);
    return -1;
  }
  if (drop_bounding(mask, err) < 0) return -1;
  if (set_user(cfg, err) < 0) return -1;
  if (set_caps(mask, cfg->uid == 0, err) < 0) return -1;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "prctl PR_SET_NO_NEW_PRIVS");
    return -1;
  }
  if (cfg->seccomp && seccomp_install(err) < 0) return -1;
  return 0;
}
