// The connection and TLS half of http-conn.h: connect with a deadline, the
// handshake with the server's name checked, and reads and writes that give
// up after the idle timeout. The HTTP half is in http-body.cc.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "http-conn.h"

namespace {

// Node's names for the verify results a misconfigured CA gives, so the caller classifies them as Node's own.
const char* VerifyCode(long v) {
  switch (v) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: return "UNABLE_TO_GET_ISSUER_CERT_LOCALLY";
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: return "UNABLE_TO_VERIFY_LEAF_SIGNATURE";
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: return "DEPTH_ZERO_SELF_SIGNED_CERT";
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: return "SELF_SIGNED_CERT_IN_CHAIN";
    case X509_V_ERR_CERT_HAS_EXPIRED: return "CERT_HAS_EXPIRED";
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH: return "ERR_TLS_CERT_ALTNAME_INVALID";
    default: return "CERT_UNTRUSTED";
  }
}

bool Fail(HttpError* err, int errnum, const std::string& message) {
  err->errnum = errnum;
  err->message = message;
  return false;
}

bool FailCode(HttpError* err, const char* code, const std::string& message) {
  err->code = code;
  err->message = message;
  return false;
}

// OpenSSL's reason for the last failure, or `fallback`.
std::string SslReason(const char* fallback) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return fallback;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

bool IsIpLiteral(const std::string& name) {
  unsigned char addr[sizeof(in6_addr)];
  return inet_pton(AF_INET, name.c_str(), addr) == 1 || inet_pton(AF_INET6, name.c_str(), addr) == 1;
}

}  // namespace

bool TlsTrust::Init(const std::string& ca_pem, std::string* why) {
  ctx_ = SSL_CTX_new(TLS_client_method());
  if (!ctx_) return *why = SslReason("cannot make a TLS context"), false;
  SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
  // A close without close_notify ends a body only where the framing allows it; the digest checks the rest.
  SSL_CTX_set_options(ctx_, SSL_OP_IGNORE_UNEXPECTED_EOF);
  // TLS 1.3 sends its session tickets after the handshake: each is kept as it comes, for the next connection.
  SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_set_app_data(ctx_, this);
  SSL_CTX_sess_set_new_cb(ctx_, [](SSL* ssl, SSL_SESSION* session) {
    auto* trust = static_cast<TlsTrust*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
    auto* server = static_cast<const std::string*>(SSL_get_app_data(ssl));
    if (!trust || !server || !SSL_SESSION_is_resumable(session)) return 0;
    trust->Keep(*server, session);
    return 1;  // the reference is the trust's now
  });
  SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  BIO* bio = BIO_new_mem_buf(ca_pem.data(), static_cast<int>(ca_pem.size()));
  if (!bio) return *why = SslReason("cannot read the CA bundle"), false;
  X509_STORE* store = SSL_CTX_get_cert_store(ctx_);
  int added = 0;
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    if (X509_STORE_add_cert(store, cert) == 1) added++;
    X509_free(cert);
  }
  BIO_free(bio);
  ERR_clear_error();  // the end of the bundle reads as an error
  if (added == 0) return *why = "the CA bundle holds no certificate", false;
  return true;
}

TlsTrust::~TlsTrust() {
  for (auto& [server, session] : sessions_) SSL_SESSION_free(session);
  SSL_CTX_free(ctx_);
}

SSL_SESSION* TlsTrust::Session(const std::string& server) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(server);
  if (it == sessions_.end()) return nullptr;
  SSL_SESSION_up_ref(it->second);
  return it->second;
}

void TlsTrust::Keep(const std::string& server, SSL_SESSION* session) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = sessions_.emplace(server, session);
  if (fresh) return;
  SSL_SESSION_free(it->second);
  it->second = session;
}

HttpConn::~HttpConn() { Close(); }

void HttpConn::Close() {
  std::lock_guard<std::mutex> lock(fd_mu_);  // a Shutdown() from another thread never meets a reused fd number
  int fd = fd_.exchange(-1);
  // Marked as shut down, though no close_notify is sent: else OpenSSL makes the session unresumable.
  if (ssl_) SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  if (ssl_) SSL_free(ssl_);
  ssl_ = nullptr;
  if (fd >= 0) close(fd);
}

void HttpConn::Shutdown() {
  std::lock_guard<std::mutex> lock(fd_mu_);
  closing_ = true;  // a connect under way gives up before its next step
  int fd = fd_.load();
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
}

bool HttpConn::Connect(HttpError* err) {
  // Each address in turn, as happy eyeballs would fall back: a name with an IPv6 and an IPv4 address
  // still reaches a registry that listens on one of them only.
  size_t from = 0;
  for (;;) {
    size_t space = t_.addresses.find(' ', from);
    std::string address = t_.addresses.substr(from, space == std::string::npos ? std::string::npos : space - from);
    *err = HttpError{};
    if (closing_) return Fail(err, ECANCELED, "the connection was closed");
    if (ConnectTo(address, err)) return t_.servername.empty() || Handshake(err);
    if (space == std::string::npos) return false;
    from = space + 1;
  }
}

bool HttpConn::ConnectTo(const std::string& address, HttpError* err) {
  Close();
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string port = std::to_string(t_.port);
  if (getaddrinfo(address.c_str(), port.c_str(), &hints, &found) != 0 || !found)
    return Fail(err, EINVAL, "connect: " + address + " is not an IP address");
  int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    freeaddrinfo(found);
    return Fail(err, errno, "socket");
  }
  {
    std::lock_guard<std::mutex> lock(fd_mu_);
    fd_ = fd;
    if (closing_) shutdown(fd, SHUT_RDWR);  // closed between the check above and now
  }
  int rc = connect(fd, found->ai_addr, found->ai_addrlen);
  freeaddrinfo(found);
  if (rc < 0 && errno != EINPROGRESS) return Fail(err, errno, "connect to " + address);
  if (rc < 0) {
    pollfd p{fd, POLLOUT, 0};
    int n;
    while ((n = poll(&p, 1, t_.connect_ms)) < 0 && errno == EINTR) {
    }
    if (n == 0)
      return Fail(err, ETIMEDOUT, "connecting to " + address + " took longer than " + std::to_string(t_.connect_ms) + " ms");
    int so = 0;
    socklen_t len = sizeof so;
    if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len) < 0) return Fail(err, errno, "connect to " + address);
    if (so != 0) return Fail(err, so, "connect to " + address);
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval idle{t_.idle_ms / 1000, (t_.idle_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &idle, sizeof idle);
  return true;
}

bool HttpConn::Handshake(HttpError* err) {
  ssl_ = SSL_new(trust_->ctx());
  if (!ssl_ || SSL_set_fd(ssl_, fd_) != 1) return FailCode(err, "EPROTO", "TLS: " + SslReason("cannot start"));
  const std::string& name = t_.servername;
  bool named = IsIpLiteral(name) ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), name.c_str()) == 1
                                 : SSL_set_tlsext_host_name(ssl_, name.c_str()) == 1 &&
                                       SSL_set1_host(ssl_, name.c_str()) == 1;
  if (!named) return FailCode(err, "EPROTO", "TLS: cannot check the server's name " + name);
  server_ = name + ":" + std::to_string(t_.port);
  SSL_set_app_data(ssl_, &server_);
  if (SSL_SESSION* session = trust_->Session(server_)) {
    SSL_set_session(ssl_, session);
    SSL_SESSION_free(session);
  }
  ERR_clear_error();
  errno = 0;
  int rc = SSL_connect(ssl_);
  if (rc == 1) return true;
  long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK)
    return FailCode(err, VerifyCode(verify),
                    std::string("TLS: the server's certificate is not trusted: ") +
                        X509_verify_cert_error_string(verify));
  int why = SSL_get_error(ssl_, rc);
  if (why == SSL_ERROR_SYSCALL && errno != 0)
    return Fail(err, errno == EAGAIN ? ETIMEDOUT : errno, "TLS handshake");
  return FailCode(err, "EPROTO", "TLS handshake: " + SslReason("the server closed the connection"));
}

bool HttpConn::Readable(int ms) {
  if (in_pos_ < in_len_ || (ssl_ && SSL_pending(ssl_) > 0)) return true;
  pollfd p{fd_, POLLIN, 0};
  int n;
  while ((n = poll(&p, 1, ms)) < 0 && errno == EINTR) {
  }
  return n != 0;  // readable, closed or failed: the read says which
}

ssize_t HttpConn::Read(uint8_t* buf, size_t len, HttpError* err) {
  for (;;) {
    if (!ssl_) {
      ssize_t n = recv(fd_, buf, len, 0);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
    } else {
      ERR_clear_error();  // SSL_get_error reads the thread's queue: an old entry would be taken for this call's
      errno = 0;
      int n = SSL_read(ssl_, buf, static_cast<int>(std::min<size_t>(len, 1 << 30)));
      if (n > 0) return n;
      int why = SSL_get_error(ssl_, n);
      if (why == SSL_ERROR_ZERO_RETURN || (why == SSL_ERROR_SYSCALL && errno == 0)) return 0;
      if (why == SSL_ERROR_SYSCALL && errno == EINTR) continue;
      if (why != SSL_ERROR_SYSCALL) {
        FailCode(err, "EPROTO", "TLS: " + SslReason("cannot read"));
        return -1;
      }
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      Fail(err, ETIMEDOUT, "no data for " + std::to_string(t_.idle_ms) + " ms");
    else
      Fail(err, errno, "read");
    return -1;
  }
}

bool HttpConn::WriteAll(const char* data, size_t len, HttpError* err) {
  while (len > 0) {
    ssize_t n;
    if (ssl_) {
      ERR_clear_error();
      errno = 0;
      int w = SSL_write(ssl_, data, static_cast<int>(len));
      if (w <= 0 && SSL_get_error(ssl_, w) != SSL_ERROR_SYSCALL)
        return FailCode(err, "EPROTO", "TLS: " + SslReason("cannot write"));
      n = w > 0 ? w : -1;
    } else {
      n = send(fd_, data, len, MSG_NOSIGNAL);
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail(err, errno == EAGAIN ? ETIMEDOUT : (errno ? errno : EPIPE), "write");
    data += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}
