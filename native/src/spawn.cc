// spawnShim(shimPath, config: Buffer, foreground)
//   -> Promise<{shimPid, shimStartTime, initPid, initStartTime}>
//
// Forking Node's multi-threaded process and doing setup work in the child is
// unsafe, so the addon only posix_spawns the shim (vfork + exec) on a worker
// thread and reads the one status line the shim writes once the container's
// command is exec'd, or why it could not be. The config reaches the shim in
// a memfd, so starting a container writes no config file.
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "native.h"

class SpawnWorker : public Napi::AsyncWorker {
 public:
  SpawnWorker(Napi::Env env, std::string shim, std::string config, bool foreground)
      // config holds the bytes of the shim config, NULs included
      : Napi::AsyncWorker(env, "fleetlet.spawnShim"),
        deferred_(Napi::Promise::Deferred::New(env)),
        shim_(std::move(shim)),
        config_(std::move(config)),
        foreground_(foreground) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    int cfg = memfd_create("fleetlet-config", MFD_CLOEXEC);
    if (cfg < 0) return Fail(errno, "memfd_create");
    for (size_t off = 0; off < config_.size();) {
      ssize_t n = write(cfg, config_.data() + off, config_.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int e = errno;
        close(cfg);
        return Fail(e, "write the shim config");
      }
      off += n;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) {
      int e = errno;
      close(cfg);
      return Fail(e, "pipe2");
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    // Node marks its own stdio close-on-exec: hand the shim copies.
    int out = -1, err_out = -1;
    if (foreground_) {
      out = fcntl(1, F_DUPFD_CLOEXEC, 10);
      err_out = fcntl(2, F_DUPFD_CLOEXEC, 10);
    }
    if (out >= 0) posix_spawn_file_actions_adddup2(&fa, out, 1);
    else posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (err_out >= 0) posix_spawn_file_actions_adddup2(&fa, err_out, 2);
    else posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
    posix_spawn_file_actions_adddup2(&fa, cfg, 4);
    const char* argv[] = {shim_.c_str(), "/proc/self/fd/4", "3", foreground_ ? "--foreground" : nullptr, nullptr};
    const char* envp[] = {nullptr};
    pid_t pid;
    int err = posix_spawn(&pid, shim_.c_str(), &fa, nullptr, const_cast<char* const*>(argv),
                          const_cast<char* const*>(envp));
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    close(cfg);
    if (out >= 0) close(out);
    if (err_out >= 0) close(err_out);
    if (err != 0) {
      close(fds[0]);
      return Fail(err, "spawn shim `" + shim_ + "`");
    }
    // The spawned process forks the detached shim and exits at once.
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    char buf[2048];
    size_t len = 0;
    for (;;) {
      ssize_t n = read(fds[0], buf + len, sizeof(buf) - 1 - len);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || (len += n) >= sizeof(buf) - 1) break;
    }
    close(fds[0]);
    buf[len] = '\0';
    while (len && buf[len - 1] == '\n') buf[--len] = '\0';
    line_ = buf;
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (!error_.empty()) {
      Napi::Error e = Napi::Error::New(env, error_);
      e.Set("exitCode", Napi::Number::New(env, 125));
      e.Set("errno", Napi::Number::New(env, errno_));
      return deferred_.Reject(e.Value());
    }
    int shim = 0, init = 0, code = 0, eno = 0, consumed = 0;
    unsigned long long shim_start = 0, init_start = 0;
    if (std::sscanf(line_.c_str(), "ok %d %llu %d %llu", &shim, &shim_start, &init, &init_start) == 4) {
      Napi::Object r = Napi::Object::New(env);
      r.Set("shimPid", shim);
      r.Set("shimStartTime", Napi::BigInt::New(env, static_cast<uint64_t>(shim_start)));
      r.Set("initPid", init);
      r.Set("initStartTime", Napi::BigInt::New(env, static_cast<uint64_t>(init_start)));
      return deferred_.Resolve(r);
    }
    std::string message = "the shim exited without saying why";
    if (std::sscanf(line_.c_str(), "err %d %d %n", &code, &eno, &consumed) >= 2 && consumed > 0)
      message = line_.substr(consumed);
    else if (!line_.empty())
      message = "unexpected reply from the shim: " + line_;
    Napi::Error e = Napi::Error::New(env, message);
    e.Set("exitCode", Napi::Number::New(env, code ? code : 125));
    e.Set("errno", Napi::Number::New(env, eno));
    deferred_.Reject(e.Value());
  }

 private:
  void Fail(int err, const std::string& what) {
    errno_ = err;
    error_ = what + ": " + std::strerror(err);
  }

  Napi::Promise::Deferred deferred_;
  std::string shim_, config_, line_, error_;
  bool foreground_;
  int errno_ = 0;
};

Napi::Value SpawnShim(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsBuffer() || !info[2].IsBoolean()) {
    Napi::TypeError::New(env, "expected (shimPath: string, config: Buffer, foreground: boolean)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto config = info[1].As<Napi::Buffer<char>>();
  auto* w = new SpawnWorker(env, info[0].As<Napi::String>(), std::string(config.Data(), config.Length()),
                            info[2].As<Napi::Boolean>());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}
