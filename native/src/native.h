// The addon's few coarse operations, exposed to agent/system/native.ts.
#pragma once
#include <napi.h>
#include <sys/types.h>

#include <cstdint>
#include <string>

// Start time of a process in clock ticks since boot (field 22 of
// /proc/PID/stat), or 0 when the process does not exist. Together with the
// pid it names one process for good, whatever pids the kernel reuses.
uint64_t ProcessStartTime(pid_t pid);

// A pidfd for pid, or -1 with errno ESRCH when the process is gone or is no
// longer the one that started at `start_time`.
int OpenVerifiedPidfd(pid_t pid, uint64_t start_time);

Napi::Value StartTime(const Napi::CallbackInfo& info);
Napi::Value SignalProcess(const Napi::CallbackInfo& info);
Napi::Value SpawnShim(const Napi::CallbackInfo& info);
Napi::Value RemoveTree(const Napi::CallbackInfo& info);
Napi::Value Mknod(const Napi::CallbackInfo& info);
Napi::Value SetXattr(const Napi::CallbackInfo& info);
Napi::Value GetXattr(const Napi::CallbackInfo& info);
Napi::Value SdNotify(const Napi::CallbackInfo& info);
Napi::Value ReclaimMemory(const Napi::CallbackInfo& info);
Napi::Value Execve(const Napi::CallbackInfo& info);
Napi::Value TryLock(const Napi::CallbackInfo& info);
Napi::Object InitExitWatch(Napi::Env env, Napi::Object exports);
Napi::Object InitBlobWriter(Napi::Env env, Napi::Object exports);
Napi::Object InitHttpConnection(Napi::Env env, Napi::Object exports);

// A BlobWriter's file and hash, for one operation another object runs on them (an HTTP body's receive).
struct BlobTarget {
  int fd;
  struct evp_md_ctx_st* ctx;
  bool* busy;  // set by the claim; the operation clears it on the main thread when it settles
};
// Claims the BlobWriter `value` (throwing, and false, when it is none or is busy).
bool ClaimBlobWriter(Napi::Env env, Napi::Value value, BlobTarget* target);

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what);
