/* Reads the container config: records of "key=value" separated by NUL bytes,
 * so that values may hold any byte but NUL (environment values with
 * newlines, paths with spaces). Repeated keys build lists. */
#include "shim.h"

#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>

void set_error(struct shim_error *err, int code, int errnum, const char *fmt, ...) {
  va_list ap;
  int n;
  err->code = code;
  err->errnum = errnum;
  va_start(ap, fmt);
  n = vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  if (errnum && n >= 0 && (size_t)n < sizeof(err->message))
    snprintf(err->message + n, sizeof(err->message) - n, ": %s", strerror(errnum));
}

/* Appends to a list and keeps it NULL-terminated, so that `args` and `env`
 * are ready for execve however many entries they hold. `what` names the
 * list's entries in the refusal: "command arguments". */
int list_push(struct str_list *list, const char *value, const char *what, struct shim_error *err) {
  if (list->len >= MAX_LIST) {
    set_error(err, EXIT_RUNTIME, 0, "too many %s (at most %d)", what, MAX_LIST);
    return -1;
  }
  list->items[list->len++] = value;
  list->items[list->len] = NULL;
  return 0;
}

int parse_u64(const char *value, uint64_t *out, const char *key, struct shim_error *err) {
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(value, &end, 10);
  if (errno || end == value || *end || *value == '-') {
    set_error(err, EXIT_RUNTIME, 0, "`%s` is not a number: %s", key, value);
    return -1;
  }
  *out = v;
  return 0;
}

static int apply(struct shim_config *cfg, const char *key, const char *value, struct shim_error *err) {
  uint64_t n;
#define IS(k) (strcmp(key, k) == 0)
  if (IS("id")) cfg->id = value;
  else if (IS("rootfs")) cfg->rootfs = value;
  else if (IS("lower")) return list_push(&cfg->lower, value, "layers", err);
  else if (IS("upper")) cfg->upper = value;
  else if (IS("work")) cfg->work = value;
  else if (IS("hostname")) cfg->hostname = value;
  else if (IS("cwd")) cfg->cwd = value;
  else if (IS("arg")) return list_push(&cfg->args, value, "command arguments", err);
  else if (IS("env")) return list_push(&cfg->env, value, "environment entries", err);
  else if (IS("group")) return list_push(&cfg->groups, value, "supplementary groups", err);
  else if (IS("cap")) return list_push(&cfg->caps, value, "capabilities", err);
  else if (IS("mask")) return list_push(&cfg->masked, value, "masked paths", err);
  else if (IS("ropath")) return list_push(&cfg->readonly_paths, value, "read-only paths", err);
  else if (IS("cgroup")) return list_push(&cfg->cgroups, value, "cgroups", err);
  else if (IS("devcgroup")) cfg->dev_cgroup = value;
  else if (IS("device")) return list_push(&cfg->dev_rules, value, "device rules", err);
  else if (IS("devnode")) {
    if (cfg->ndevnodes >= MAX_LIST) {
      set_error(err, EXIT_RUNTIME, 0, "too many devices (at most %d)", MAX_LIST);
      return -1;
    }
    return devnode_parse((char *)value, &cfg->devnodes[cfg->ndevnodes++], err);
  } else if (IS("fdscan")) cfg->fd_scan = strcmp(value, "1") == 0;
  else if (IS("cgroup-move")) cfg->cgroup_move = strcmp(value, "1") == 0;
  else if (IS("overlay-sync")) cfg->overlay_sync = strcmp(value, "1") == 0;
  else if (IS("init")) cfg->init = strcmp(value, "1") == 0;
  else if (IS("oom")) cfg->oom_file = value;
  else if (IS("log")) cfg->log_path = value;
  else if (IS("exit")) cfg->exit_path = value;
  else if (IS("running")) cfg->running_path = value;
  else if (IS("net")) cfg->net_host = strcmp(value, "host") == 0;
  else if (IS("netns")) cfg->netns = value;
  else if (IS("readonly")) cfg->readonly = strcmp(value, "1") == 0;
  else if (IS("seccomp")) cfg->seccomp = strcmp(value, "default") == 0;
  else if (IS("bind") || IS("bind-ro") || IS("bindfile-ro")) {
    /* "source\ttarget": the runtime refuses tabs in both. */
    char *tab = strchr(value, '\t');
    if (!tab || cfg->nbinds >= MAX_LIST) {
      set_error(err, EXIT_RUNTIME, 0, "config: bad `%s` entry: %s", key, value);
      return -1;
    }
    *tab = '\0';
    cfg->binds[cfg->nbinds].source = value;
    cfg->binds[cfg->nbinds].target = tab + 1;
    cfg->binds[cfg->nbinds].readonly = IS("bind-ro") || IS("bindfile-ro");
    cfg->binds[cfg->nbinds].file = IS("bindfile-ro");
    cfg->nbinds++;
  } else if (IS("cglimit") || IS("cglimit-opt")) {
    /* "file\tvalue": a limit written before the init joins the cgroup;
     * cglimit-opt is skipped when the kernel lacks the file. */
    char *tab = strchr(value, '\t');
    if (!tab || cfg->ncg_limits >= MAX_LIST) {
      set_error(err, EXIT_RUNTIME, 0, "config: bad `%s` entry: %s", key, value);
      return -1;
    }
    *tab = '\0';
    cfg->cg_limits[cfg->ncg_limits].file = value;
    cfg->cg_limits[cfg->ncg_limits].value = tab + 1;
    cfg->cg_limits[cfg->ncg_limits].optional = IS("cglimit-opt");
    cfg->ncg_limits++;
  } else if (IS("uid") || IS("gid") || IS("logmax") || IS("logkeep") || IS("nofile-soft") ||
             IS("nofile-hard")) {
    if (parse_u64(value, &n, key, err) < 0) return -1;
    if (IS("uid")) cfg->uid = (uint32_t)n;
    else if (IS("gid")) cfg->gid = (uint32_t)n;
    else if (IS("logmax")) cfg->log_max = n;
    else if (IS("logkeep")) cfg->log_keep = (unsigned)n;
    else if (IS("nofile-soft")) cfg->nofile_soft = n;
    else cfg->nofile_hard = n;
  } else {
    set_error(err, EXIT_RUNTIME, 0, "config: unknown key `%s`", key);
    return -1;
  }
#undef IS
  return 0;
}

int config_read(const char *path, struct shim_config *cfg, struct shim_error *err) {
  cleanup_fd int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  char *buf, *p, *end, *next;

  memset(cfg, 0, sizeof(*cfg));
  cfg->seccomp = 1;
  cfg->log_max = 1 << 20;
  cfg->log_keep = 2;
  cfg->nofile_soft = 1024;
  cfg->nofile_hard = 524288;
  if (fd < 0 || fstat(fd, &st) < 0) {
    set_error(err, EXIT_RUNTIME, errno, "open config `%s`", path);
    return -1;
  }
  buf = malloc(st.st_size + 1); /* lives as long as the shim */
  if (!buf) {
    set_error(err, EXIT_RUNTIME, ENOMEM, "read config `%s`", path);
    return -1;
  }
  for (off_t got = 0; got < st.st_size;) {
    ssize_t r = read(fd, buf + got, st.st_size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      set_error(err, EXIT_RUNTIME, r < 0 ? errno : EIO, "read config `%s`", path);
      return -1;
    }
    got += r;
  }
  buf[st.st_size] = '\0';
  end = buf + st.st_size;
  for (p = buf; p < end; p = next) {
    next = p + strlen(p) + 1; /* found before the record is split at '=' */
    char *eq = strchr(p, '=');
    if (!*p) continue;
    if (!eq) {
      set_error(err, EXIT_RUNTIME, 0, "config: record without `=`: %s", p);
      return -1;
    }
    *eq = '\0';
    if (apply(cfg, p, eq + 1, err) < 0) return -1;
  }
  if (!cfg->rootfs || !cfg->lower.len || !cfg->upper || !cfg->work || !cfg->args.len ||
      !cfg->exit_path || !cfg->running_path || !cfg->log_path) {
    set_error(err, EXIT_RUNTIME, 0,
              "config `%s`: rootfs, lower, upper, work, arg, exit, running and log are required", path);
    return -1;
  }
  return 0;
}
