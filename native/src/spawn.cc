// spawnShim(shimPath, config: Buffer, foreground)
//   -> Promise<{shimPid, shimStartTime, initPid, initStartTime}>
//
// Forking Node's multi-threaded process and doing setup work in the child is
// unsafe, so the addon only posix_spawns the shim (vfork + exec, as libuv's
// own uv_spawn does) and then reads, from libuv's poll, the one status line
// the shim writes once the container's command is exec'd or why it could not
// be. The spawn runs on a libuv worker thread: vfork suspends the calling
// thread until the shim execs, and with containers starting side by side on
// a busy device that wait held Node's main thread for milliseconds per start
// (over half of a batch of twenty). The config reaches the shim in a memfd,
// so starting a container writes no config file.
#include <fcntl.h>
#include <spawn.h>
#include <signal.h>
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
  StatusRead(Napi::Env env, Napi::Promise::Deferred deferred, pid_t spawned, int fd)
      : env_(env), deferred_(deferred), context_(env, "fleetlet.spawnShim"), spawned_(spawned), fd_(fd) {}

  void Start() {
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env_, &loop);
    poll_.data = this;
    uv_poll_init(loop, &poll_, fd_);
    uv_poll_start(&poll_, UV_READABLE | UV_DISCONNECT, [](uv_poll_t* h, int, int) { static_cast<StatusRead*>(h->data)->OnReadable(); });
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

// The spawn, off the main thread; OnOK hands the status pipe to a StatusRead.
class SpawnWork : public Napi::AsyncWorker {
 public:
  SpawnWork(Napi::Env env, std::string shim, const char* config, size_t length, bool foreground)
      : Napi::AsyncWorker(env, "fleetlet.spawnShim"),
        deferred_(Napi::Promise::Deferred::New(env)),
        shim_(std::move(shim)),
        config_(config, length),
        foreground_(foreground) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    int cfg = memfd_create("fleetlet-config", MFD_CLOEXEC);
    if (cfg < 0 || WriteAll(cfg, config_.data(), config_.size()) < 0) {
      Fail(errno ? errno : EIO, "write the shim config");
      if (cfg >= 0) close(cfg);
      return;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
      Fail(errno, "pipe2");
      close(cfg);
      return;
    }
    // Node marks its own stdio close-on-exec: hand the shim copies.
    int out = foreground_ ? fcntl(1, F_DUPFD_CLOEXEC, 10) : -1;
    int err_out = foreground_ ? fcntl(2, F_DUPFD_CLOEXEC, 10) : -1;
    int rc = Spawn(fds[1], cfg, out, err_out);
    close(fds[1]);
    close(cfg);
    if (out >= 0) close(out);
    if (err_out >= 0) close(err_out);
    if (rc != 0) {
      close(fds[0]);
      Fail(rc, "spawn shim `" + shim_ + "`");
      return;
    }
    status_fd_ = fds[0];
  }

  void OnOK() override {
    if (!what_.empty()) {
      Napi::Error e = ErrnoError(Env(), errno_, what_);
      e.Set("exitCode", Napi::Number::New(Env(), 125));
      return deferred_.Reject(e.Value());
    }
    (new StatusRead(Env(), deferred_, pid_, status_fd_))->Start();
  }

 private:
  int Spawn(int status, int cfg, int out, int err_out) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (out >= 0) posix_spawn_file_actions_adddup2(&fa, out, 1);
    else posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (err_out >= 0) posix_spawn_file_actions_adddup2(&fa, err_out, 2);
    else posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, status, 3);
    posix_spawn_file_actions_adddup2(&fa, cfg, 4);
    const char* argv[] = {shim_.c_str(), "/proc/self/fd/4", "3", foreground_ ? "--foreground" : nullptr, nullptr};
    const char* envp[] = {nullptr};
    // The shim starts as the leader of a session of its own, so it detaches
    // with one fork rather than two (see native/shim/main.c). It starts with
    // every signal unblocked, whatever the spawning thread's mask, and at its
    // default: an ignored signal stays ignored through exec, and Node ignores
    // SIGPIPE and SIGXFSZ, which the container's processes must not inherit.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawn(&pid_, shim_.c_str(), &fa, &attr, const_cast<char* const*>(argv), const_cast<char* const*>(envp));
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    return rc;
  }

  // The call that failed and its errno: a non-empty `what_` is what marks a failure.
  void Fail(int err, const std::string& what) {
    errno_ = err;
    what_ = what;
  }

  Napi::Promise::Deferred deferred_;
  std::string shim_;
  std::string config_;
  bool foreground_;
  pid_t pid_ = -1;
  int status_fd_ = -1;
  int errno_ = 0;
  std::string what_;
};

}  // namespace

Napi::Value SpawnShim(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsBuffer() || !info[2].IsBoolean()) {
    Napi::TypeError::New(env, "expected (shimPath: string, config: Buffer, foreground: boolean)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto config = info[1].As<Napi::Buffer<char>>();
  auto* work = new SpawnWork(env, info[0].As<Napi::String>(), config.Data(), config.Length(), info[2].As<Napi::Boolean>());
  Napi::Promise promise = work->Promise();
  work->Queue();
  return promise;
}
