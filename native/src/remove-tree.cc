// removeTree(path) -> Promise<void>
//
// Erases a directory tree on a worker thread, without following symlinks
// and without crossing into another filesystem, so that a mount left inside
// (or planted by a hostile image) is never descended into.
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "native.h"

namespace {

thread_local std::string first_error;

int RemoveEntry(const char* path, const struct stat*, int type, struct FTW*) {
  int r = (type == FTW_DP) ? rmdir(path) : unlink(path);
  if (r < 0 && errno != ENOENT && first_error.empty()) first_error = std::string(path) + ": " + std::strerror(errno);
  return 0;  // keep going: erase as much as possible, report the first failure
}

class RemoveTreeWorker : public Napi::AsyncWorker {
 public:
  RemoveTreeWorker(Napi::Env env, std::string path)
      : Napi::AsyncWorker(env, "fleetlet.removeTree"), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    first_error.clear();
    if (nftw(path_.c_str(), RemoveEntry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 && errno != ENOENT)
      first_error = "walk " + path_ + ": " + std::strerror(errno);
    error_ = first_error;
  }

  void OnOK() override {
    if (error_.empty()) return deferred_.Resolve(Env().Undefined());
    deferred_.Reject(Napi::Error::New(Env(), "remove " + error_).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_, error_;
};

}  // namespace

Napi::Value RemoveTree(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(info.Env(), "expected (path: string)").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  auto* w = new RemoveTreeWorker(info.Env(), info[0].As<Napi::String>());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}
