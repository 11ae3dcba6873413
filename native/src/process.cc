// Finding a process again, robust to pid reuse: a (pid, start time) pair is
// checked against /proc after a pidfd is opened, and from then on the pidfd
// pins that one process. Exits are learnt from the pidfd turning readable in
// libuv's poll, so nothing polls on a timer.
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "native.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

uint64_t ProcessStartTime(pid_t pid) {
  char path[64], buf[1024];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  char* p = std::strrchr(buf, ')');
  if (!p) return 0;
  p += 2;  // now at field 3 (state)
  for (int field = 3; field < 22 && p; field++) {
    p = std::strchr(p, ' ');
    if (p) p++;
  }
  return p ? std::strtoull(p, nullptr, 10) : 0;
}

int OpenVerifiedPidfd(pid_t pid, uint64_t start_time) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return -1;
  if (start_time != 0 && ProcessStartTime(pid) != start_time) {
    close(fd);
    errno = ESRCH;
    return -1;
  }
  return fd;
}

static bool ReadPidArgs(const Napi::CallbackInfo& info, pid_t* pid, uint64_t* start) {
  bool lossless = true;
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsBigInt()) {
    Napi::TypeError::New(info.Env(), "expected (pid: number, startTime: bigint)").ThrowAsJavaScriptException();
    return false;
  }
  *pid = info[0].As<Napi::Number>().Int32Value();
  *start = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  return true;
}

Napi::Value StartTime(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(info.Env(), "expected (pid: number)").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  uint64_t t = ProcessStartTime(info[0].As<Napi::Number>().Int32Value());
  if (t == 0) return info.Env().Null();
  return Napi::BigInt::New(info.Env(), t);
}

// signalProcess(pid, startTime, signo) -> true when delivered, false when
// that process is already gone.
Napi::Value SignalProcess(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid;
  uint64_t start;
  if (!ReadPidArgs(info, &pid, &start)) return env.Undefined();
  int sig = info[2].As<Napi::Number>().Int32Value();
  int fd = OpenVerifiedPidfd(pid, start);
  if (fd < 0) {
    if (errno == ESRCH) return Napi::Boolean::New(env, false);
    ErrnoError(env, errno, "pidfd_open " + std::to_string(pid)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  long r = syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0);
  int saved = errno;
  close(fd);
  if (r < 0 && saved != ESRCH) {
    ErrnoError(env, saved, "signal " + std::to_string(sig) + " to pid " + std::to_string(pid))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, r == 0);
}

// new ExitWatch(pid, startTime, onExit): calls onExit() once the process
// has exited (at once if it is already gone). close() stops watching.
class ExitWatch : public Napi::ObjectWrap<ExitWatch> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ExitWatch", {InstanceMethod("close", &ExitWatch::Close)});
  }

  explicit ExitWatch(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ExitWatch>(info) {
    Napi::Env env = info.Env();
    pid_t pid;
    uint64_t start;
    if (!ReadPidArgs(info, &pid, &start)) return;
    if (info.Length() < 3 || !info[2].IsFunction()) {
      Napi::TypeError::New(env, "expected onExit: function").ThrowAsJavaScriptException();
      return;
    }
    callback_ = Napi::Persistent(info[2].As<Napi::Function>());
    context_ = std::make_unique<Napi::AsyncContext>(env, "fleetlet.ExitWatch");
    int fd = OpenVerifiedPidfd(pid, start);
    if (fd < 0 && errno != ESRCH) {
      ErrnoError(env, errno, "pidfd_open " + std::to_string(pid)).ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    if (fd < 0) {
      // Already gone: report on the next turn of the loop, never synchronously.
      immediate_ = new uv_idle_t;
      immediate_->data = this;
      uv_idle_init(loop, immediate_);
      uv_idle_start(immediate_, [](uv_idle_t* h) { static_cast<ExitWatch*>(h->data)->Fire(); });
    } else {
      pidfd_ = fd;
      poll_ = new uv_poll_t;
      poll_->data = this;
      uv_poll_init(loop, poll_, fd);
      uv_poll_start(poll_, UV_READABLE, [](uv_poll_t* h, int, int) { static_cast<ExitWatch*>(h->data)->Fire(); });
    }
    active_ = true;
    Ref();  // stay alive while watching
  }

  ~ExitWatch() override { Stop(); }

 private:
  void Stop() {
    if (poll_) {
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (immediate_) {
      uv_idle_stop(immediate_);
      uv_close(reinterpret_cast<uv_handle_t*>(immediate_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
      immediate_ = nullptr;
    }
    if (pidfd_ >= 0) {
      close(pidfd_);
      pidfd_ = -1;
    }
    if (active_) {
      active_ = false;
      Unref();
    }
  }

  void Fire() {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    bool was_active = active_;
    Napi::Function callback = callback_.Value();
    Stop();
    // The callback usually refers back to this object: drop the strong
    // reference, or neither is ever collected.
    callback_.Reset();
    if (was_active) callback.MakeCallback(env.Global(), {}, *context_);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Stop();
    callback_.Reset();
    return info.Env().Undefined();
  }

  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> context_;
  uv_poll_t* poll_ = nullptr;
  uv_idle_t* immediate_ = nullptr;
  int pidfd_ = -1;
  bool active_ = false;
};

Napi::Object InitExitWatch(Napi::Env env, Napi::Object exports) {
  exports.Set("ExitWatch", ExitWatch::Define(env));
  return exports;
}
