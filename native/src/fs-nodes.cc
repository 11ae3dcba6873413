// The filesystem calls Node lacks, for unpacking layers: mknod (overlay
// whiteouts are character devices 0/0; fifos and device nodes in images)
// and lsetxattr (opaque directories, file capabilities). Both act on the
// path itself and never follow a final symlink.
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <cerrno>
#include <string>

#include "native.h"

// mknod(path, mode, major, minor): mode carries the file type bits.
Napi::Value Mknod(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "expected (path: string, mode: number, major: number, minor: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>();
  mode_t mode = info[1].As<Napi::Number>().Uint32Value();
  dev_t dev = makedev(info[2].As<Napi::Number>().Uint32Value(), info[3].As<Napi::Number>().Uint32Value());
  if (mknod(path.c_str(), mode, dev) < 0) ErrnoError(env, errno, "mknod " + path).ThrowAsJavaScriptException();
  return env.Undefined();
}

// setXattr(path, name, value: Buffer)
Napi::Value SetXattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsBuffer()) {
    Napi::TypeError::New(env, "expected (path: string, name: string, value: Buffer)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>();
  std::string name = info[1].As<Napi::String>();
  auto value = info[2].As<Napi::Buffer<char>>();
  if (lsetxattr(path.c_str(), name.c_str(), value.Data(), value.Length(), 0) < 0)
    ErrnoError(env, errno, "set xattr " + name + " on " + path).ThrowAsJavaScriptException();
  return env.Undefined();
}

// getXattr(path, name) -> Buffer | null (null when the attribute is absent)
Napi::Value GetXattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "expected (path: string, name: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>();
  std::string name = info[1].As<Napi::String>();
  char buf[65536];
  ssize_t n = lgetxattr(path.c_str(), name.c_str(), buf, sizeof(buf));
  if (n < 0) {
    if (errno == ENODATA) return env.Null();
    ErrnoError(env, errno, "get xattr " + name + " of " + path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Buffer<char>::Copy(env, buf, n);
}
