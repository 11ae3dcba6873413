// One HTTP/1.1 connection to a registry, over TLS (OpenSSL, Node's own) or
// plain TCP, driven from a worker thread: a request head out, the answer's
// head in, then the body straight into a blob's file and its SHA-256. No
// byte of a blob body passes through JavaScript. Redirects, auth, ranges and
// retries stay with the caller (agent/registry/blob-http.ts).
#pragma once
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <sys/types.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

// A failure: `errnum` for a system call's errno, else `code` (a TLS check).
struct HttpError {
  int errnum = 0;
  std::string code;
  std::string message;
  bool disk = false;  // writing the blob's file failed, not the connection
};

// The server closed the connection: ECONNRESET, so that it is retried (and, when nothing came, taken for a
// stale kept connection), with a code of its own, so that no "Connection reset by peer" joins `message`.
inline bool Closed(HttpError* err, const std::string& message) {
  err->errnum = ECONNRESET;
  err->code = "ECONNRESET";
  err->message = message;
  return false;
}

// OpenSSL's reason for the thread's last failure (the queue cleared), or `fallback`.
std::string SslReason(const char* fallback);

// How much of the socket one TLS read takes at most (read-ahead, tls-trust.cc): four full records.
constexpr size_t kTlsReadBuffer = 64 << 10;

// The trust of one registry client: its CAs, and the TLS sessions it may resume, per server.
class TlsTrust {
 public:
  // `ca_pem`: the PEM bundle that signs the servers (the configured CA, or Node's roots).
  bool Init(const std::string& ca_pem, std::string* why);
  ~TlsTrust();
  SSL_CTX* ctx() const { return ctx_; }
  // The session last agreed with `server`, with a reference the caller frees; nullptr when none.
  SSL_SESSION* Session(const std::string& server);
  // Takes the caller's reference to `session`, agreed with `server`.
  void Keep(const std::string& server, SSL_SESSION* session);

 private:
  SSL_CTX* ctx_ = nullptr;
  std::mutex mu_;
  std::map<std::string, SSL_SESSION*> sessions_;
};

struct HttpTarget {
  std::string addresses;   // IP literals separated by spaces, in the order to try them (the caller resolved the name)
  int port = 0;
  std::string servername;  // the name the certificate must carry; empty for plain HTTP
  int connect_ms = 10000;
  int idle_ms = 30000;
};

// A connected, non-blocking socket to the first of `addresses` (IP literals) to answer on `port`, racing them
// 250 ms apart, the families in turn (http-connect.cc); -1 with `err` set when none did, or when `closing`
// became true meanwhile.
int RaceConnect(const std::vector<std::string>& addresses, int port, int connect_ms, const std::atomic<bool>& closing,
                HttpError* err);

class HttpConn {
 public:
  HttpConn(HttpTarget target, TlsTrust* trust) : t_(std::move(target)), trust_(trust) {}
  ~HttpConn();
  // Connects when it is not, sends `request` (a whole head) and reads the answer's head into `head`.
  bool Exchange(const std::string& request, std::string* head, HttpError* err);
  // Up to `want` body bytes (0: only whether the body ends here, read ahead), fewer when 200 ms passed
  // with some in (progress on a slow link). Each is written to `fd` at `position` on, hashed into `md`
  // and copied to `copy` (when given). *got says how many even on failure: they are on disk and
  // hashed. *end: the body is over.
  bool Receive(int fd, EVP_MD_CTX* md, off_t position, size_t want, uint8_t* copy, size_t* got, bool* end,
               HttpError* err);
  // True when the answer was read to its end and the server keeps the connection.
  bool Reusable() const { return fd_ >= 0 && body_end_ && keep_alive_; }
  // Safe from any thread: a blocked read or write returns at once.
  void Shutdown();

 private:
  bool Connect(HttpError* err);
  bool Handshake(HttpError* err);
  bool Readable(int ms);
  enum class SslOutcome { kRetry, kEof, kFailed };
  SslOutcome SslFailed(int rc, const char* what, HttpError* err);
  ssize_t Eof(HttpError* err);
  ssize_t Read(uint8_t* buf, size_t len, HttpError* err);
  bool WriteAll(const char* data, size_t len, HttpError* err);
  bool ReadHead(std::string* head, HttpError* err);
  bool Frame(const std::string& head, HttpError* err);
  bool NextChunk(HttpError* err);
  void Compact();  // moves the unread bytes of in_ to its start
  bool Fill(HttpError* err);
  bool Line(std::string* line, HttpError* err);
  bool Probe(HttpError* err);
  bool Payload(uint8_t* out, size_t room, size_t* n, HttpError* err);
  bool Flush(int fd, EVP_MD_CTX* md, off_t at, const uint8_t* data, size_t len, uint8_t* copy, HttpError* err);
  bool Send(const std::string& request, std::string* head, HttpError* err);
  void Close();

  HttpTarget t_;
  TlsTrust* trust_;
  std::atomic<int> fd_{-1};
  std::mutex fd_mu_;  // between Close() and Shutdown(), which run on different threads
  std::atomic<bool> closing_{false};
  SSL* ssl_ = nullptr;
  std::string server_;  // host:port, the key of its TLS sessions
  // Raw bytes read past the head (and chunk framing): in_[in_pos_, in_len_).
  std::vector<uint8_t> in_ = std::vector<uint8_t>(64 << 10);
  size_t in_pos_ = 0, in_len_ = 0;
  std::vector<uint8_t> out_;
  enum class Framing { kLength, kChunked, kClose } framing_ = Framing::kLength;
  uint64_t left_ = 0;  // of the body (kLength) or of the current chunk (kChunked)
  bool body_end_ = true;
  bool keep_alive_ = false;
  bool chunk_started_ = false;
  // The file and offset from which written bytes still wait for their writeback to be started.
  int wb_fd_ = -1;
  off_t wb_from_ = 0;
};
