// new BlobWriter(fd)            fd -1: no file, the buffers are only hashed
//   .write(buffers: Buffer[], position: number) -> Promise<void>
//   .hashFile(length: number) -> Promise<void>
//   .digest() -> string
//   .reset()
//
// A blob being downloaded: each batch of buffers is written at `position`
// with pwritev (short writes continued) and added to the blob's SHA-256, both
// on a worker thread, so neither the copy into the page cache nor the hash
// holds up the event loop that receives the next bytes. hashFile() hashes
// the first `length` bytes already in the file (a partial being resumed).
// One operation at a time: the caller awaits each before the next. The
// SHA-256 is OpenSSL's (the one Node's crypto uses), from Node itself.
#include <openssl/evp.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "native.h"

namespace {

constexpr size_t kReadChunk = 1 << 20;
constexpr size_t kMaxIov = 1024;
// Marks the objects that are BlobWriters, so that ClaimBlobWriter can tell one from any other object.
constexpr napi_type_tag kBlobWriterTag = {0x6a1f3c2b9d4e5f60ULL, 0x8b7a6c5d4e3f2a1bULL};

class BlobWriter : public Napi::ObjectWrap<BlobWriter> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BlobWriter",
                       {InstanceMethod("write", &BlobWriter::Write), InstanceMethod("hashFile", &BlobWriter::HashFile),
                        InstanceMethod("digest", &BlobWriter::Digest), InstanceMethod("reset", &BlobWriter::Reset)});
  }

  explicit BlobWriter(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BlobWriter>(info) {
    if (info.Length() < 1 || !info[0].IsNumber()) {
      Napi::TypeError::New(info.Env(), "expected (fd: number)").ThrowAsJavaScriptException();
      return;
    }
    fd_ = info[0].As<Napi::Number>().Int32Value();
    napi_type_tag_object(info.Env(), info.This(), &kBlobWriterTag);
    ctx_ = EVP_MD_CTX_new();
    if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1)
      Napi::Error::New(info.Env(), "sha256: cannot initialise").ThrowAsJavaScriptException();
  }

  ~BlobWriter() override { EVP_MD_CTX_free(ctx_); }

  int fd() const { return fd_; }
  EVP_MD_CTX* ctx() const { return ctx_; }
  // Set while a worker owns the context; cleared back on the main thread.
  bool busy = false;

  bool Claim(Napi::Env env) {
    if (!busy) return busy = true;
    Napi::Error::New(env, "BlobWriter: an operation is already running").ThrowAsJavaScriptException();
    return false;
  }

 private:
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value HashFile(const Napi::CallbackInfo& info);

  Napi::Value Digest(const Napi::CallbackInfo& info) {
    if (!Claim(info.Env())) return info.Env().Undefined();
    busy = false;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_, md, &len) != 1 || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
      Napi::Error::New(info.Env(), "sha256: cannot finish").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; i++) {
      out += hex[md[i] >> 4];
      out += hex[md[i] & 15];
    }
    return Napi::String::New(info.Env(), out);
  }

  Napi::Value Reset(const Napi::CallbackInfo& info) {
    if (!Claim(info.Env())) return info.Env().Undefined();
    busy = false;
    if (EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1)
      Napi::Error::New(info.Env(), "sha256: cannot initialise").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }

  int fd_ = -1;
  EVP_MD_CTX* ctx_ = nullptr;
};

// Holds the writer (and the buffers being written) alive until the work is done.
class BlobWork : public Napi::AsyncWorker {
 public:
  BlobWork(Napi::Env env, BlobWriter* writer, const char* name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), writer_(writer) {
    writer_ref_ = Napi::Persistent(writer->Value());
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void OnOK() override {
    writer_->busy = false;
    if (what_.empty()) return deferred_.Resolve(Env().Undefined());
    if (errno_ != 0) return deferred_.Reject(ErrnoError(Env(), errno_, what_).Value());
    deferred_.Reject(Napi::Error::New(Env(), what_).Value());
  }

  // A failed call (with its errno), or a failure of another kind (errno 0).
  void Fail(const std::string& what, int err) {
    what_ = what;
    errno_ = err;
  }

  Napi::Promise::Deferred deferred_;
  BlobWriter* writer_;
  Napi::ObjectReference writer_ref_;
  std::string what_;
  int errno_ = 0;
};

class WriteWork : public BlobWork {
 public:
  WriteWork(Napi::Env env, BlobWriter* writer, Napi::Array buffers, std::vector<iovec> chunks, off_t position)
      : BlobWork(env, writer, "fleetlet.blobWrite"), position_(position), chunks_(std::move(chunks)) {
    buffers_ref_ = Napi::Persistent(buffers.As<Napi::Object>());
  }

 protected:
  void Execute() override {
    // Written first, hashed after: the bytes are hashed as they are on disk, and a failed write hashes nothing.
    size_t first = 0, skip = 0;
    off_t at = position_;
    while (writer_->fd() >= 0 && first < chunks_.size()) {
      std::vector<iovec> iov;
      for (size_t i = first; i < chunks_.size() && iov.size() < kMaxIov; i++) {
        size_t off = i == first ? skip : 0;
        iov.push_back({static_cast<uint8_t*>(chunks_[i].iov_base) + off, chunks_[i].iov_len - off});
      }
      ssize_t n = pwritev(writer_->fd(), iov.data(), static_cast<int>(iov.size()), at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Fail("write", errno);
      at += n;
      size_t left = static_cast<size_t>(n);
      while (first < chunks_.size() && left >= chunks_[first].iov_len - skip) {
        left -= chunks_[first].iov_len - skip;
        first++;
        skip = 0;
      }
      skip += left;
    }
    for (const iovec& c : chunks_) {
      if (EVP_DigestUpdate(writer_->ctx(), c.iov_base, c.iov_len) != 1) return Fail("sha256: cannot update", 0);
    }
  }

 private:
  off_t position_;
  std::vector<iovec> chunks_;
  Napi::ObjectReference buffers_ref_;
};

class HashFileWork : public BlobWork {
 public:
  HashFileWork(Napi::Env env, BlobWriter* writer, off_t length)
      : BlobWork(env, writer, "fleetlet.blobHashFile"), length_(length) {}

 protected:
  void Execute() override {
    std::vector<uint8_t> buf(kReadChunk);
    off_t at = 0;
    while (at < length_) {
      size_t want = static_cast<size_t>(std::min<off_t>(length_ - at, static_cast<off_t>(buf.size())));
      ssize_t n = pread(writer_->fd(), buf.data(), want, at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Fail("read", errno);
      if (n == 0) return Fail("read: the file ended before " + std::to_string(length_) + " bytes", 0);
      if (EVP_DigestUpdate(writer_->ctx(), buf.data(), static_cast<size_t>(n)) != 1)
        return Fail("sha256: cannot update", 0);
      at += n;
    }
  }

 private:
  off_t length_;
};

Napi::Value BlobWriter::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "expected (buffers: Buffer[], position: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto buffers = info[0].As<Napi::Array>();
  // Two N-API calls a buffer, the least there is: a download hands over some 13,000 of them per 200 MiB.
  uint32_t count = buffers.Length();
  std::vector<iovec> chunks(count);
  for (uint32_t i = 0; i < count; i++) {
    napi_value item;
    if (napi_get_element(env, buffers, i, &item) != napi_ok ||
        napi_get_buffer_info(env, item, &chunks[i].iov_base, &chunks[i].iov_len) != napi_ok) {
      Napi::TypeError::New(env, "expected (buffers: Buffer[], position: number)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  if (!Claim(env)) return env.Undefined();
  auto* w = new WriteWork(env, this, buffers, std::move(chunks),
                          static_cast<off_t>(info[1].As<Napi::Number>().Int64Value()));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value BlobWriter::HashFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "expected (length: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!Claim(env)) return env.Undefined();
  auto* w = new HashFileWork(env, this, static_cast<off_t>(info[0].As<Napi::Number>().Int64Value()));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

bool ClaimBlobWriter(Napi::Env env, Napi::Value value, BlobTarget* target) {
  bool tagged = false;
  if (value.IsObject()) napi_check_object_type_tag(env, value, &kBlobWriterTag, &tagged);
  if (!tagged) {
    Napi::TypeError::New(env, "expected a BlobWriter").ThrowAsJavaScriptException();
    return false;
  }
  BlobWriter* writer = BlobWriter::Unwrap(value.As<Napi::Object>());
  if (!writer->Claim(env)) return false;
  *target = {writer->fd(), writer->ctx(), &writer->busy};
  return true;
}

Napi::Object InitBlobWriter(Napi::Env env, Napi::Object exports) {
  exports.Set("BlobWriter", BlobWriter::Define(env));
  return exports;
}
