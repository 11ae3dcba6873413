// The connection and TLS half of http-conn.h: connect with a deadline, the
// handshake with the server's name checked, reads and writes that give up
// after the idle timeout, and the body's bytes onto the disk and into the
// hash. The HTTP half is in http-body.cc, the CAs and sessions in
// tls-trust.cc.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "http-conn.h"

namespace {

// Written bytes past this are handed to the disk at once (writeback started, not waited for).
constexpr off_t kWriteback = 8 << 20;

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

bool IsIpLiteral(const std::string& name) {
  unsigned char addr[sizeof(in6_addr)];
  return inet_pton(AF_INET, name.c_str(), addr) == 1 || inet_pton(AF_INET6, name.c_str(), addr) == 1;
}

}  // namespace

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
  Close();
  std::vector<std::string> addresses;
  for (size_t from = 0; from <= t_.addresses.size();) {
    size_t space = std::min(t_.addresses.find(' ', from), t_.addresses.size());
    if (space > from) addresses.push_back(t_.addresses.substr(from, space - from));
    from = space + 1;
  }
  *err = HttpError{};
  int fd = RaceConnect(addresses, t_.port, t_.connect_ms, closing_, err);
  if (fd < 0) return false;
  {
    std::lock_guard<std::mutex> lock(fd_mu_);
    fd_ = fd;
  }
  // A Shutdown() after the race's last look and before fd_ was set shut nothing down: it is seen here.
  if (closing_) return Fail(err, ECANCELED, "the connection was closed");
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval idle{t_.idle_ms / 1000, (t_.idle_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &idle, sizeof idle);
  return t_.servername.empty() || Handshake(err);
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
  SslOutcome outcome = SslFailed(rc, "handshake", err);
  if (outcome == SslOutcome::kEof) return Closed(err, "the server closed the connection in the handshake");
  return false;  // a handshake is not repeated: kRetry (EINTR) is as good as a failure here
}

// What a failed SSL_* call on a blocking socket with timeouts means. OpenSSL reports the socket's EAGAIN (the
// SO_RCVTIMEO/SO_SNDTIMEO timeout) and EINTR as WANT_READ or WANT_WRITE, not as a system call error.
HttpConn::SslOutcome HttpConn::SslFailed(int rc, const char* what, HttpError* err) {
  int e = errno;
  int why = SSL_get_error(ssl_, rc);
  if (why == SSL_ERROR_ZERO_RETURN || (why == SSL_ERROR_SYSCALL && e == 0)) return SslOutcome::kEof;
  bool socket = why == SSL_ERROR_WANT_READ || why == SSL_ERROR_WANT_WRITE || why == SSL_ERROR_SYSCALL;
  if (socket && e == EINTR) return SslOutcome::kRetry;
  if (socket && (e == EAGAIN || e == EWOULDBLOCK || e == 0))
    Fail(err, ETIMEDOUT, std::string(what) + ": nothing moved for " + std::to_string(t_.idle_ms) + " ms");
  else if (socket)
    Fail(err, e, what);
  else
    FailCode(err, "EPROTO", "TLS: " + SslReason(what));  // the protocol's own failure, not the link's
  return SslOutcome::kFailed;
}

bool HttpConn::Readable(int ms) {
  // With read-ahead, OpenSSL may hold whole records it has read but not yet decrypted: SSL_pending does not
  // count those, SSL_has_pending does.
  if (in_pos_ < in_len_ || (ssl_ && SSL_has_pending(ssl_))) return true;
  pollfd p{fd_, POLLIN, 0};
  int n;
  while ((n = poll(&p, 1, ms)) < 0 && errno == EINTR) {
  }
  return n != 0;  // readable, closed or failed: the read says which
}

ssize_t HttpConn::Read(uint8_t* buf, size_t len, HttpError* err) {
  for (;;) {
    if (!ssl_) {
      errno = 0;
      ssize_t n = recv(fd_, buf, len, 0);
      if (n > 0) return n;
      if (n == 0) return Eof(err);
      if (errno == EINTR) continue;
    } else {
      ERR_clear_error();  // SSL_get_error reads the thread's queue: an old entry would be taken for this call's
      errno = 0;
      int n = SSL_read(ssl_, buf, static_cast<int>(std::min<size_t>(len, 1 << 30)));
      if (n > 0) return n;
      SslOutcome outcome = SslFailed(n, "read", err);
      if (outcome == SslOutcome::kRetry) continue;
      if (outcome == SslOutcome::kFailed) return -1;
      return Eof(err);
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      Fail(err, ETIMEDOUT, "read: nothing moved for " + std::to_string(t_.idle_ms) + " ms");
    else
      Fail(err, errno, "read");
    return -1;
  }
}

// The end of the stream: 0, or a failure when the connection was closed from our side (a cancel).
ssize_t HttpConn::Eof(HttpError* err) {
  if (!closing_) return 0;
  Fail(err, ECANCELED, "the connection was closed");
  return -1;
}

bool HttpConn::WriteAll(const char* data, size_t len, HttpError* err) {
  while (len > 0) {
    ssize_t n;
    if (ssl_) {
      ERR_clear_error();
      errno = 0;
      int w = SSL_write(ssl_, data, static_cast<int>(len));
      if (w > 0) {
        data += w;
        len -= static_cast<size_t>(w);
        continue;
      }
      SslOutcome outcome = SslFailed(w, "write", err);
      if (outcome == SslOutcome::kRetry) continue;
      return outcome == SslOutcome::kEof ? Fail(err, EPIPE, "write: the server closed the connection") : false;
    } else {
      n = send(fd_, data, len, MSG_NOSIGNAL);
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN)
      return Fail(err, ETIMEDOUT, "write: nothing moved for " + std::to_string(t_.idle_ms) + " ms");
    if (n < 0) return Fail(err, errno, "write");
    data += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool HttpConn::Flush(int fd, EVP_MD_CTX* md, off_t at, const uint8_t* data, size_t len, uint8_t* copy,
                     HttpError* err) {
  // Written first, hashed after, as BlobWriter does: the hash covers exactly the bytes on disk.
  for (size_t done = 0; done < len;) {
    ssize_t n = pwrite(fd, data + done, len - done, at + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err->disk = true;
      err->errnum = errno;
      err->message = "write";
      return false;
    }
    done += static_cast<size_t>(n);
  }
  // Start the writeback of what piled up: the commit's fsync then waits for little, and a small device does not
  // fill its memory with dirty pages of one blob. Advisory: a file system without it writes back as usual.
  off_t end = at + static_cast<off_t>(len);
  if (fd != wb_fd_ || at < wb_from_) {
    wb_fd_ = fd;
    wb_from_ = at;
  }
  if (end - wb_from_ >= kWriteback) {
    sync_file_range(fd, wb_from_, end - wb_from_, SYNC_FILE_RANGE_WRITE);
    wb_from_ = end;
  }
  if (EVP_DigestUpdate(md, data, len) != 1) {
    err->disk = true;
    err->message = "sha256: cannot update";
    return false;
  }
  if (copy) std::memcpy(copy, data, len);
  return true;
}
