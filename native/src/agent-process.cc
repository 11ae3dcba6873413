// The agent's own process, for a long-running daemon on a small device.
//
// ReclaimMemory: once the agent has gone quiet after a burst of work, V8's
// low-memory collection (every generation, the heap shrunk to what lives),
// then glibc's free pages handed back to the kernel. Without it a heap grown
// by a burst stays grown until the next burst. The one call into V8's own API:
// N-API has no way to ask for that collection (the addon is built against the
// Node it runs on, at install).
//
// Execve: replaces the process image, keeping its pid (what systemd watches
// and NOTIFY_SOCKET answers to), so the agent can restart itself under the
// Node flags it needs. Only returns by throwing.
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>
#include <v8.h>

#include <cerrno>
#include <string>
#include <vector>

#include "native.h"

Napi::Value ReclaimMemory(const Napi::CallbackInfo& info) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (isolate != nullptr) isolate->LowMemoryNotification();
#ifdef __GLIBC__
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

static bool StringArray(const Napi::Value& value, std::vector<std::string>* out) {
  if (!value.IsArray()) return false;
  Napi::Array array = value.As<Napi::Array>();
  for (uint32_t i = 0; i < array.Length(); i++) {
    Napi::Value item = array.Get(i);
    if (!item.IsString()) return false;
    out->push_back(item.As<Napi::String>().Utf8Value());
  }
  return true;
}

static std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

Napi::Value Execve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::string> argv, envp;
  if (info.Length() < 3 || !info[0].IsString() || !StringArray(info[1], &argv) || argv.empty() || !StringArray(info[2], &envp)) {
    Napi::TypeError::New(env, "execve(path: string, argv: string[] (not empty), env: string[])").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::vector<char*> argp = Pointers(argv), envpp = Pointers(envp);
  // Node marks the descriptors it inherited close-on-exec (so that its own
  // children do not get them): the standard streams must go along.
  for (int fd = 0; fd <= 2; fd++) {
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) && fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0) {
      ErrnoError(env, errno, "execve " + path + ": keeping descriptor " + std::to_string(fd) + " open").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  // A profiler (node --cpu-prof) samples with SIGPROF: one sent while the
  // image is replaced stays pending across execve, and would end the new
  // image before it installs a handler (the default action). Ignored, it is
  // dropped when sent and any pending one is discarded; node restores the
  // default at start-up. (Should execve fail, profiling goes without samples.)
  signal(SIGPROF, SIG_IGN);
  // The new image starts with the signal mask it inherits: start it with none
  // blocked. (Should execve fail, the process goes on with the standard
  // streams inheritable and nothing blocked, which is harmless.)
  sigset_t none;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, nullptr);
  execve(path.c_str(), argp.data(), envpp.data());
  ErrnoError(env, errno, "execve " + path).ThrowAsJavaScriptException();
  return env.Undefined();
}
