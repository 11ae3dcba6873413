#include <cstring>

#include "native.h"

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what) {
  Napi::Error e = Napi::Error::New(env, what + ": " + std::strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("startTime", Napi::Function::New(env, StartTime));
  exports.Set("signalProcess", Napi::Function::New(env, SignalProcess));
  exports.Set("spawnShim", Napi::Function::New(env, SpawnShim));
  exports.Set("removeTree", Napi::Function::New(env, RemoveTree));
  exports.Set("mknod", Napi::Function::New(env, Mknod));
  exports.Set("setXattr", Napi::Function::New(env, SetXattr));
  exports.Set("getXattr", Napi::Function::New(env, GetXattr));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
  exports.Set("reclaimMemory", Napi::Function::New(env, ReclaimMemory));
  exports.Set("execve", Napi::Function::New(env, Execve));
  exports.Set("tryLock", Napi::Function::New(env, TryLock));
  InitBlobWriter(env, exports);
  InitHttpConnection(env, exports);
  return InitExitWatch(env, exports);
}

NODE_API_MODULE(fleetlet_native, Init)
