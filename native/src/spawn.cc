// spawnShim(shimPath, config: Buffer, foreground)
//   -> Promise<{shimPid, shimStartTime, initPid, initStartTime}>
//
// Forking Node's multi-threaded process and doing setup work in the child is
// unsafe, so the addon only posix_spawns the shim (vfork + exec, as libuv's
// own uv_spawn does on this thread) and then reads, from libuv's poll, the
// one status line the shim writes once the container's command is exec'd or
// why it could not be. The config reaches the shim in a memfd, so starting a
// container writes no config file.
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "native.h"

namespace {

int WriteAll(int fd, const char* data, size_t len) {
  for (size_t off = 0; off < len;) {
    ssize_t n = write(fd, data + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    off += n;
  }
  return 0;
}

// Owns the read end of the status pipe until the shim closes its end.
class StatusRead {
 public:
  StatusRead(Napi::Env env, pid_t spawned, int fd)
      : env_(env), deferred_(Napi::Promise::Deferred::New(env)), context_(env, "fleetlet.spawnShim"), spawned_(spawned), fd_(fd) {}

  Napi::Promise Start() {
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env_, &loop);
    poll_.data = this;
    uv_poll_init(loop, &poll_, fd_);
    uv_poll_start(&poll_, UV_READABLE | UV_DISCONNECT, [](uv_poll_t* h, int, int) { static_cast<StatusRead*>(h->data)->OnReadable(); });
    return deferred_.Promise();
  }

 private:
  void OnReadable() {
    char buf[1024];
    for (;;) {
      ssize_t n = read(fd_, buf, sizeof(buf));
      if (n > 0) {
        if (line_.size() < 4096) line_.append(buf, n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;  // more to come
      break;                                  // EOF (or an error): the shim is done talking
    }
    uv_poll_stop(&poll_);
    close(fd_);
    // The spawned process forked the detached shim and exited at once.
    while (waitpid(spawned_, nullptr, 0) < 0 && errno == EINTR) {
    }
    Settle();
    uv_close(reinterpret_cast<uv_handle_t*>(&poll_), [](uv_handle_t* h) { delete static_cast<StatusRead*>(h->data); });
  }

  void Settle() {
    Napi::HandleScope scope(env_);
    Napi::CallbackScope callback_scope(env_, context_);  // runs microtasks when it closes
    while (!line_.empty() && line_.back() == '\n') line_.pop_back();
    int shim = 0, init = 0, code = 0, eno = 0, consumed = 0;
    unsigned long long shim_start = 0, init_start = 0;
    if (std::sscanf(line_.c_str(), "ok %d %llu %d %llu", &shim, &shim_start, &init, &init_start) == 4) {
      Napi::Object r = Napi::Object::New(env_);
      r.Set("shimPid", shim);
      r.Set("shimStartTime", Napi::BigInt::New(env_, static_cast<uint64_t>(shim_start)));
      r.Set("initPid", init);
      r.Set("initStartTime", Napi::BigInt::New(env_, static_cast<uint64_t>(init_start)));
      deferred_.Resolve(r);
      return;
    }
    std::string message = "the shim exited without saying why";
    if (std::sscanf(line_.c_str(), "err %d %d %n", &code, &eno, &consumed) >= 2 && consumed > 0)
      message = line_.substr(consumed);
    else if (!line_.empty())
      message = "unexpected reply from the shim: " + line_;
    Napi::Error e = Napi::Error::New(env_, message);
    e.Set("exitCode", Napi::Number::New(env_, code ? code : 125));
    e.Set("errno", Napi::Number::New(env_, eno));
    deferred_.Reject(e.Value());
  }

  Napi::Env env_;
  Napi::Promise::Deferred deferred_;
  Napi::AsyncContext context_;
  pid_t spawned_;
  int fd_;
  uv_poll_t poll_;
  std::string line_;
};

}  // namespace

Napi::Value SpawnShim(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsBuffer() || !info[2].IsBoolean()) {
    Napi::TypeError::New(env, "expected (shimPath: string, config: Buffer, foreground: boolean)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string shim = info[0].As<Napi::String>();
  auto config = info[1].As<Napi::Buffer<char>>();
  bool foreground = info[2].As<Napi::Boolean>();

  int cfg = memfd_create("fleetlet-config", MFD_CLOEXEC);
  if (cfg < 0 || WriteAll(cfg, config.Data(), config.Length()) < 0) {
    int e = errno;
    if (cfg >= 0) close(cfg);
    ErrnoError(env, e, "write the shim config").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
    int e = errno;
    close(cfg);
    ErrnoError(env, e, "pipe2").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Node marks its own stdio close-on-exec: hand the shim copies.
  int out = foreground ? fcntl(1, F_DUPFD_CLOEXEC, 10) : -1;
  int err_out = foreground ? fcntl(2, F_DUPFD_CLOEXEC, 10) : -1;

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (out >= 0) posix_spawn_file_actions_adddup2(&fa, out, 1);
  else posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  if (err_out >= 0) posix_spawn_file_actions_adddup2(&fa, err_out, 2);
  else posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
  posix_spawn_file_actions_adddup2(&fa, cfg, 4);
  const char* argv[] = {shim.c_str(), "/proc/self/fd/4", "3", foreground ? "--foreground" : nullptr, nullptr};
  const char* envp[] = {nullptr};
  // The shim starts as the leader of a session of its own, so it detaches
  // with one fork rather than two (see native/shim/main.c).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  pid_t pid;
  int rc = posix_spawn(&pid, shim.c_str(), &fa, &attr, const_cast<char* const*>(argv), const_cast<char* const*>(envp));
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  close(cfg);
  if (out >= 0) close(out);
  if (err_out >= 0) close(err_out);
  if (rc != 0) {
    close(fds[0]);
    Napi::Error e = ErrnoError(env, rc, "spawn shim `" + shim + "`");
    e.Set("exitCode", Napi::Number::New(env, 125));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return (new StatusRead(env, pid, fds[0]))->Start();
}
