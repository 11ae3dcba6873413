// sd_notify: one datagram to the unix socket systemd names in NOTIFY_SOCKET
// ("READY=1", "STOPPING=1", "STATUS=…"). Node has no unix datagram sockets,
// hence this. Returns false when there is no NOTIFY_SOCKET (not under
// systemd, or Type=simple); throws on a real failure.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "native.h"

namespace {
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};
}  // namespace

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "sdNotify(state: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return Napi::Boolean::New(env, false);
  std::string state = info[0].As<Napi::String>().Utf8Value();

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  size_t len = std::strlen(path);
  // An abstract socket is written "@name"; its address starts with a NUL.
  if ((path[0] != '/' && path[0] != '@') || len >= sizeof(addr.sun_path)) {
    ErrnoError(env, EINVAL, std::string("NOTIFY_SOCKET ") + path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);

  Fd sock;
  sock.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock.fd < 0) {
    ErrnoError(env, errno, "socket(AF_UNIX, SOCK_DGRAM)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // A datagram to a bound socket: it either goes whole or fails at once.
  ssize_t n = sendto(sock.fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), addr_len);
  if (n < 0) {
    ErrnoError(env, errno, std::string("sd_notify to ") + path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, true);
}
