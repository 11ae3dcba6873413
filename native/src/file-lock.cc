// Advisory whole-file locks (flock), for db.json's read-modify-write between
// the agent and the fleetlet commands. Never blocks: the caller polls, so no
// thread waits in the kernel, and the kernel drops the lock with the last
// descriptor of its holder, so a killed process leaves no stale lock.
#include <sys/file.h>

#include <cerrno>

#include "native.h"

// tryLock(fd, exclusive) -> true when taken, false when another holds it.
Napi::Value TryLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsBoolean()) {
    Napi::TypeError::New(env, "expected (fd: number, exclusive: boolean)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int op = (info[1].As<Napi::Boolean>().Value() ? LOCK_EX : LOCK_SH) | LOCK_NB;
  for (;;) {
    if (flock(fd, op) == 0) return Napi::Boolean::New(env, true);
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
    ErrnoError(env, errno, "flock fd " + std::to_string(fd)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
}
