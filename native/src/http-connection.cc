// new TlsContext(caPem: string)
// new HttpConnection(addresses (IPs, space-separated), port, servername ("" for plain HTTP), tls: TlsContext | null, connectMs, idleMs)
//   .exchange(requestHead: string) -> Promise<string>   the answer's head (status line and headers)
//   .receive(writer: BlobWriter, position, want, copy?: Buffer)
//       -> Promise<{ bytes, end, error? }>   `bytes` are on disk and hashed even when `error` is set
//   .reusable() -> boolean
//   .close()    ends the connection; an operation under way fails at once
//
// A blob download's bytes, from the socket to the file and the hash, on a
// worker thread (http-conn.h): JavaScript sees the head of each answer and
// how many bytes landed, never the bytes. One operation at a time.
#include "http-conn.h"
#include "native.h"

namespace {

// The kernel's errno says why in strerror's words; a code of our own (Closed() in http-conn.h) has its message
// say it.
Napi::Error ToError(Napi::Env env, const HttpError& err) {
  bool ours = !err.code.empty();
  Napi::Error e = err.errnum != 0 && !ours ? ErrnoError(env, err.errnum, err.message) : Napi::Error::New(env, err.message);
  if (ours) e.Set("code", err.code);
  if (ours && err.errnum != 0) e.Set("errno", Napi::Number::New(env, err.errnum));
  if (err.disk) e.Set("disk", true);
  return e;
}

// Marks the objects that are TlsContexts, so that an HttpConnection is never given another object as one.
constexpr napi_type_tag kTlsContextTag = {0x2c4e6a8b1d3f5a7cULL, 0x9e0b2d4f6a8c1e3bULL};

class TlsContext : public Napi::ObjectWrap<TlsContext> {
 public:
  static Napi::Function Define(Napi::Env env) { return DefineClass(env, "TlsContext", {}); }

  explicit TlsContext(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TlsContext>(info) {
    if (info.Length() < 1 || !info[0].IsString()) {
      Napi::TypeError::New(info.Env(), "expected (caPem: string)").ThrowAsJavaScriptException();
      return;
    }
    napi_type_tag_object(info.Env(), info.This(), &kTlsContextTag);
    std::string why;
    if (!trust.Init(info[0].As<Napi::String>().Utf8Value(), &why))
      Napi::Error::New(info.Env(), "TLS: " + why).ThrowAsJavaScriptException();
  }

  TlsTrust trust;
};

class HttpConnection : public Napi::ObjectWrap<HttpConnection> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "HttpConnection",
                       {InstanceMethod("exchange", &HttpConnection::Exchange),
                        InstanceMethod("receive", &HttpConnection::Receive),
                        InstanceMethod("reusable", &HttpConnection::Reusable),
                        InstanceMethod("close", &HttpConnection::Close)});
  }

  explicit HttpConnection(const Napi::CallbackInfo& info);

  HttpConn* conn() { return conn_.get(); }
  // After the last operation of a closed connection: its socket and TLS state go at once, not at collection.
  void Drop() { conn_.reset(); }
  bool busy = false;
  bool closed = false;

 private:
  bool Claim(Napi::Env env) {
    if (closed) Napi::Error::New(env, "HttpConnection: closed").ThrowAsJavaScriptException();
    else if (busy) Napi::Error::New(env, "HttpConnection: an operation is already running").ThrowAsJavaScriptException();
    else return busy = true;
    return false;
  }
  Napi::Value Exchange(const Napi::CallbackInfo& info);
  Napi::Value Receive(const Napi::CallbackInfo& info);
  Napi::Value Reusable(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), !closed && !busy && conn_ && conn_->Reusable());
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    closed = true;
    if (conn_) conn_->Shutdown();
    if (conn_ && !busy) conn_.reset();  // else the operation's end frees it
    return info.Env().Undefined();
  }

  std::unique_ptr<HttpConn> conn_;
  Napi::ObjectReference tls_;  // keeps the TlsTrust alive as long as the connection
};

HttpConnection::HttpConnection(const Napi::CallbackInfo& info) : Napi::ObjectWrap<HttpConnection>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsString() ||
      !info[4].IsNumber() || !info[5].IsNumber()) {
    Napi::TypeError::New(env, "expected (addresses, port, servername, tls, connectMs, idleMs)")
        .ThrowAsJavaScriptException();
    return;
  }
  HttpTarget t{info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Number>().Int32Value(),
               info[2].As<Napi::String>().Utf8Value(), info[4].As<Napi::Number>().Int32Value(),
               info[5].As<Napi::Number>().Int32Value()};
  TlsTrust* trust = nullptr;
  if (!t.servername.empty()) {
    bool tagged = false;
    if (info[3].IsObject()) napi_check_object_type_tag(env, info[3], &kTlsContextTag, &tagged);
    if (!tagged) {
      Napi::TypeError::New(env, "a TLS connection needs a TlsContext").ThrowAsJavaScriptException();
      return;
    }
    trust = &TlsContext::Unwrap(info[3].As<Napi::Object>())->trust;
    tls_ = Napi::Persistent(info[3].As<Napi::Object>());
  }
  conn_ = std::make_unique<HttpConn>(std::move(t), trust);
}

// Holds the connection object alive until the work settles, then gives the connection back.
class ConnWork : public Napi::AsyncWorker {
 public:
  ConnWork(Napi::Env env, HttpConnection* owner, const char* name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner) {
    owner_ref_ = Napi::Persistent(owner->Value());
    conn_ = owner->conn();
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Settle() {
    owner_->busy = false;
    if (owner_->closed) owner_->Drop();  // closed meanwhile: freed now that nothing uses it
  }
  void OnError(const Napi::Error&) override {}

  Napi::Promise::Deferred deferred_;
  HttpConnection* owner_;
  Napi::ObjectReference owner_ref_;
  HttpConn* conn_;
  HttpError err_;
};

class ExchangeWork : public ConnWork {
 public:
  ExchangeWork(Napi::Env env, HttpConnection* owner, std::string request)
      : ConnWork(env, owner, "fleetlet.httpExchange"), request_(std::move(request)) {}

 protected:
  void Execute() override { ok_ = conn_->Exchange(request_, &head_, &err_); }
  void OnOK() override {
    Settle();
    if (ok_) return deferred_.Resolve(Napi::String::New(Env(), head_));
    deferred_.Reject(ToError(Env(), err_).Value());
  }

 private:
  std::string request_, head_;
  bool ok_ = false;
};

class ReceiveWork : public ConnWork {
 public:
  ReceiveWork(Napi::Env env, HttpConnection* owner, BlobTarget target, off_t position, size_t want, uint8_t* copy)
      : ConnWork(env, owner, "fleetlet.httpReceive"), target_(target), position_(position), want_(want), copy_(copy) {}
  Napi::ObjectReference holds[2];  // the writer and the copy buffer

 protected:
  void Execute() override { ok_ = conn_->Receive(target_.fd, target_.ctx, position_, want_, copy_, &got_, &end_, &err_); }
  void OnOK() override {
    Settle();
    *target_.busy = false;
    Napi::Object out = Napi::Object::New(Env());
    out.Set("bytes", Napi::Number::New(Env(), static_cast<double>(got_)));
    out.Set("end", Napi::Boolean::New(Env(), end_));
    if (!ok_) out.Set("error", ToError(Env(), err_).Value());
    deferred_.Resolve(out);
  }

 private:
  BlobTarget target_;
  off_t position_;
  size_t want_;
  uint8_t* copy_;
  size_t got_ = 0;
  bool end_ = false, ok_ = false;
};

Napi::Value HttpConnection::Exchange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "expected (requestHead: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!Claim(env)) return env.Undefined();
  auto* w = new ExchangeWork(env, this, info[0].As<Napi::String>().Utf8Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value HttpConnection::Receive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[1].IsNumber() || !info[2].IsNumber() ||
      (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsBuffer())) {
    Napi::TypeError::New(env, "expected (writer, position, want, copy?: Buffer)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int64_t position = info[1].As<Napi::Number>().Int64Value();
  int64_t want = info[2].As<Napi::Number>().Int64Value();
  uint8_t* copy = nullptr;
  if (info.Length() > 3 && info[3].IsBuffer()) {
    auto buf = info[3].As<Napi::Buffer<uint8_t>>();
    if (static_cast<int64_t>(buf.Length()) < want) {
      Napi::RangeError::New(env, "the copy buffer is shorter than `want`").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    copy = buf.Data();
  }
  if (position < 0 || want < 0) {
    Napi::RangeError::New(env, "position and want must not be negative").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  BlobTarget target;
  if (!ClaimBlobWriter(env, info[0], &target)) return env.Undefined();
  if (!Claim(env)) {
    *target.busy = false;
    return env.Undefined();
  }
  auto* w = new ReceiveWork(env, this, target, position, static_cast<size_t>(want), copy);
  w->holds[0] = Napi::Persistent(info[0].As<Napi::Object>());
  if (copy) w->holds[1] = Napi::Persistent(info[3].As<Napi::Object>());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

Napi::Object InitHttpConnection(Napi::Env env, Napi::Object exports) {
  exports.Set("TlsContext", TlsContext::Define(env));
  exports.Set("HttpConnection", HttpConnection::Define(env));
  return exports;
}
