/* The device cgroup on cgroup v2, which has no devices.allow file: a
 * BPF_PROG_TYPE_CGROUP_DEVICE program built from the same rules the v1
 * controller takes ("c 1:3 rwm", "c 136:* rwm", "b *:* m"), attached to the
 * container's cgroup before its init joins. The kernel runs it on every open
 * and mknod of a device node in that cgroup; it answers 1 (allow) for the
 * first rule that matches and 0 (EPERM) when none does.
 *
 * It is attached with BPF_F_ALLOW_MULTI. Attaching again to a cgroup that
 * holds one of ours replaces it atomically (BPF_F_REPLACE, Linux 5.6), with
 * no moment where neither program runs, so devices can later be given to or
 * taken from a running container: `fleetlet-shim devices DIR RULE...`. */
#include "shim.h"

#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/syscall.h>

#define PROG_NAME "fleetlet_dev" /* BPF names: at most 15 of [A-Za-z0-9_.] */

struct dev_rule {
  int type;           /* 0 for any, else BPF_DEVCG_DEV_BLOCK or BPF_DEVCG_DEV_CHAR */
  long major, minor;  /* -1 for "*" */
  unsigned access;    /* BPF_DEVCG_ACC_{READ,WRITE,MKNOD} */
};

static int parse_num(const char **p, long *out) {
  if (**p == '*') {
    (*p)++;
    *out = -1;
    return 0;
  }
  if (**p < '0' || **p > '9') return -1;
  for (*out = 0; **p >= '0' && **p <= '9'; (*p)++) {
    *out = *out * 10 + (**p - '0');
    if (*out > 0xfffff) return -1; /* the kernel's majors and minors are 12 and 20 bits */
  }
  return 0;
}

/* "TYPE MAJOR:MINOR ACCESS" as v1's devices.allow takes it, or "a" for all. */
static int parse_rule(const char *text, struct dev_rule *r) {
  const char *p = text;
  *r = (struct dev_rule){.type = 0, .major = -1, .minor = -1, .access = 0};
  char type = *p++;
  if (type == 'a' && *p == '\0') {
    r->access = BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE | BPF_DEVCG_ACC_MKNOD;
    return 0;
  }
  if (type == 'b') r->type = BPF_DEVCG_DEV_BLOCK;
  else if (type == 'c') r->type = BPF_DEVCG_DEV_CHAR;
  else if (type != 'a') return -1;
  if (*p++ != ' ' || parse_num(&p, &r->major) < 0 || *p++ != ':' || parse_num(&p, &r->minor) < 0 || *p++ != ' ')
    return -1;
  for (; *p; p++) {
    if (*p == 'r') r->access |= BPF_DEVCG_ACC_READ;
    else if (*p == 'w') r->access |= BPF_DEVCG_ACC_WRITE;
    else if (*p == 'm') r->access |= BPF_DEVCG_ACC_MKNOD;
    else return -1;
  }
  return r->access ? 0 : -1;
}

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define LOAD_U32(dst, field) INSN(BPF_LDX | BPF_MEM | BPF_W, dst, BPF_REG_1, offsetof(struct bpf_cgroup_dev_ctx, field), 0)
#define ALU32(op, dst, imm) INSN(BPF_ALU | (op) | BPF_K, dst, 0, 0, imm)
#define JUMP_IF(op, dst, imm, off) INSN(BPF_JMP | (op) | BPF_K, dst, 0, off, imm)
#define RETURN(v) INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, v), INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

#define MAX_INSNS (6 + MAX_LIST * 6 + 2)

/* Writes the program into `prog`; returns its length. Registers: r2 the
 * node's type, r3 the access asked for, r4 the major, r5 the minor. */
static size_t build(const struct dev_rule *rules, size_t n, struct bpf_insn *prog) {
  size_t len = 0;
  const struct bpf_insn head[] = {
      LOAD_U32(BPF_REG_2, access_type), ALU32(BPF_AND, BPF_REG_2, 0xffff), /* type: low 16 bits */
      LOAD_U32(BPF_REG_3, access_type), ALU32(BPF_RSH, BPF_REG_3, 16),     /* access: high 16 bits */
      LOAD_U32(BPF_REG_4, major),       LOAD_U32(BPF_REG_5, minor),
  };
  for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); i++) prog[len++] = head[i];
  for (size_t i = 0; i < n; i++) {
    const struct dev_rule *r = &rules[i];
    unsigned denied = ~r->access & (BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE | BPF_DEVCG_ACC_MKNOD);
    int checks = (r->type != 0) + (denied != 0) + (r->major >= 0) + (r->minor >= 0);
    /* Each failed check jumps past the rest of this rule and its "return 1". */
    if (r->type) prog[len++] = JUMP_IF(BPF_JNE, BPF_REG_2, r->type, --checks + 2);
    if (denied) prog[len++] = JUMP_IF(BPF_JSET, BPF_REG_3, denied, --checks + 2); /* asks for more than allowed */
    if (r->major >= 0) prog[len++] = JUMP_IF(BPF_JNE, BPF_REG_4, r->major, --checks + 2);
    if (r->minor >= 0) prog[len++] = JUMP_IF(BPF_JNE, BPF_REG_5, r->minor, --checks + 2);
    const struct bpf_insn allow[] = {RETURN(1)};
    prog[len++] = allow[0];
    prog[len++] = allow[1];
    /* A rule that matches everything ends the program: the verifier
     * refuses instructions no path reaches. */
    if (r->type == 0 && !denied && r->major < 0 && r->minor < 0) return len;
  }
  const struct bpf_insn deny[] = {RETURN(0)};
  prog[len++] = deny[0];
  prog[len++] = deny[1];
  return len;
}

static int bpf(int cmd, union bpf_attr *attr) { return (int)syscall(SYS_bpf, cmd, attr, sizeof(*attr)); }

static int load(const struct str_list *rules, struct shim_error *err) {
  struct dev_rule parsed[MAX_LIST];
  struct bpf_insn prog[MAX_INSNS];
  for (size_t i = 0; i < rules->len; i++) {
    if (parse_rule(rules->items[i], &parsed[i]) < 0) {
      set_error(err, EXIT_RUNTIME, EINVAL, "device rule `%s` (expected `c|b|a MAJOR:MINOR rwm`)", rules->items[i]);
      return -1;
    }
  }
  union bpf_attr attr;
  memset(&attr, 0, sizeof(attr));
  attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
  attr.insns = (uint64_t)(uintptr_t)prog;
  attr.insn_cnt = (uint32_t)build(parsed, rules->len, prog);
  attr.license = (uint64_t)(uintptr_t) "Apache-2.0";
  memcpy(attr.prog_name, PROG_NAME, sizeof(PROG_NAME));
  int fd = bpf(BPF_PROG_LOAD, &attr);
  if (fd < 0) set_error(err, EXIT_RUNTIME, errno, "load the device cgroup program (%u instructions)", attr.insn_cnt);
  return fd;
}

/* The device program attached to this cgroup itself (not one inherited from
 * a parent) into *fd, or -1 when there is none. Only one of ours may be there. */
static int attached(int cg, const char *dir, int *fd, struct shim_error *err) {
  uint32_t ids[4];
  union bpf_attr attr;
  memset(&attr, 0, sizeof(attr));
  attr.query.target_fd = cg;
  attr.query.attach_type = BPF_CGROUP_DEVICE;
  attr.query.prog_ids = (uint64_t)(uintptr_t)ids;
  attr.query.prog_cnt = 4;
  *fd = -1;
  if (bpf(BPF_PROG_QUERY, &attr) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "query the device programs of cgroup `%s`", dir);
    return -1;
  }
  uint32_t count = attr.query.prog_cnt;
  if (count == 0) return 0;
  memset(&attr, 0, sizeof(attr));
  attr.prog_id = ids[0];
  *fd = count == 1 ? bpf(BPF_PROG_GET_FD_BY_ID, &attr) : -1;
  struct bpf_prog_info info;
  memset(&info, 0, sizeof(info));
  memset(&attr, 0, sizeof(attr));
  attr.info.bpf_fd = *fd;
  attr.info.info_len = sizeof(info);
  attr.info.info = (uint64_t)(uintptr_t)&info;
  if (*fd < 0 || bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) < 0 || strcmp(info.name, PROG_NAME) != 0) {
    set_error(err, EXIT_RUNTIME, 0, "cgroup `%s` holds %u device programs, not the one fleetlet attaches", dir, count);
    return -1;
  }
  return 0;
}

int devices_attach(const char *cgroup_dir, const struct str_list *rules, struct shim_error *err) {
  cleanup_fd int cg = open(cgroup_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open cgroup `%s`", cgroup_dir);
    return -1;
  }
  cleanup_fd int prog = load(rules, err);
  if (prog < 0) return -1;
  cleanup_fd int old = -1;
  if (attached(cg, cgroup_dir, &old, err) < 0) return -1;
  union bpf_attr attr;
  memset(&attr, 0, sizeof(attr));
  attr.target_fd = cg;
  attr.attach_bpf_fd = prog;
  attr.attach_type = BPF_CGROUP_DEVICE;
  attr.attach_flags = BPF_F_ALLOW_MULTI | (old >= 0 ? BPF_F_REPLACE : 0);
  attr.replace_bpf_fd = old >= 0 ? old : 0;
  if (bpf(BPF_PROG_ATTACH, &attr) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "%s the device program of cgroup `%s`", old >= 0 ? "replace" : "attach",
              cgroup_dir);
    return -1;
  }
  return 0;
}

/* fleetlet-shim devices CGROUP2_DIR [RULE]...: puts these rules (and only
 * these) in force for the cgroup, replacing what fleetlet attached before. */
int devices_main(int argc, char **argv) {
  struct str_list rules = {.len = 0};
  struct shim_error err = {0};
  if (argc < 2) {
    fprintf(stderr, "usage: fleetlet-shim devices CGROUP2_DIR [RULE]...\n");
    return EXIT_RUNTIME;
  }
  for (int i = 2; i < argc; i++)
    if (list_push(&rules, argv[i], "device rules", &err) < 0) break;
  if (!err.message[0] && devices_attach(argv[1], &rules, &err) == 0) return 0;
  fprintf(stderr, "fleetlet-shim devices: %s\n", err.message);
  return EXIT_RUNTIME;
}
