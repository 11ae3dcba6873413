// The HTTP half of http-conn.h: one request out, the answer's head in, its
// framing (Content-Length, chunked, or until the close) and the body into a
// blob's file and hash, staged in 128 to 256 KiB writes.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "http-conn.h"

namespace {

constexpr size_t kStage = 256 << 10;
// A receive that has bytes returns after this long, so that a slow link still shows progress.
constexpr int64_t kReportMs = 200;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

bool Protocol(HttpError* err, const std::string& message) {
  err->code = "HTTP_PROTOCOL";
  err->message = message;
  return false;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string Trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t");
  size_t b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

}  // namespace

bool HttpConn::Exchange(const std::string& request, std::string* head, HttpError* err) {
  bool reused = Reusable() && in_pos_ == in_len_;
  if (!reused && !Connect(err)) return false;
  if (Send(request, head, err)) return true;
  // A kept connection the server closed meanwhile fails before a byte of answer, and one that held stray
  // bytes of the last answer gives a garbled head: either way the GET goes once more, on a new connection.
  bool stale = err->errnum != 0 && err->errnum != ECANCELED && in_len_ == 0;
  if (!reused || !(stale || err->code == "HTTP_PROTOCOL")) return false;
  *err = HttpError{};
  return Connect(err) && Send(request, head, err);
}

bool HttpConn::Send(const std::string& request, std::string* head, HttpError* err) {
  in_pos_ = in_len_ = 0;
  body_end_ = keep_alive_ = chunk_started_ = false;
  if (!WriteAll(request.data(), request.size(), err) || !ReadHead(head, err)) return false;
  // An interim answer (100 Continue, 103 Early Hints) comes before the real one, which follows on the same
  // connection; 101 would switch protocols, which a GET never asks for.
  auto interim = [](const std::string& h) {
    return h.size() >= 12 && h.compare(0, 7, "HTTP/1.") == 0 && h[9] == '1' && h.compare(9, 3, "101") != 0;
  };
  while (interim(*head))
    if (!ReadHead(head, err)) return false;
  return Frame(*head, err);
}

void HttpConn::Compact() {
  if (in_pos_ == 0) return;
  std::memmove(in_.data(), in_.data() + in_pos_, in_len_ - in_pos_);
  in_len_ -= in_pos_;
  in_pos_ = 0;
}

bool HttpConn::Fill(HttpError* err) {
  Compact();
  if (in_len_ == in_.size()) return Protocol(err, "a line of the answer is longer than 64 KiB");
  ssize_t n = Read(in_.data() + in_len_, in_.size() - in_len_, err);
  if (n < 0) return false;
  if (n == 0)
    return Closed(err, in_len_ == 0 && !chunk_started_ ? "the server closed the connection before answering"
                                                        : "the server closed the connection in the middle of the answer");
  in_len_ += static_cast<size_t>(n);
  return true;
}

bool HttpConn::ReadHead(std::string* head, HttpError* err) {
  size_t scanned = 0;
  for (;;) {
    // Empty lines before the status line are skipped (RFC 9112 2.2): a server's stray CRLF after a body.
    while (in_pos_ < in_len_ && (in_[in_pos_] == '\r' || in_[in_pos_] == '\n')) in_pos_++;
    if (in_pos_ > 0) scanned = 0;
    Compact();
    const uint8_t* at = in_.data();
    for (size_t i = scanned; i + 3 < in_len_; i++) {
      if (std::memcmp(at + i, "\r\n\r\n", 4) != 0) continue;
      head->assign(reinterpret_cast<const char*>(at), i);
      in_pos_ = i + 4;
      return true;
    }
    scanned = in_len_ >= 3 ? in_len_ - 3 : 0;
    if (in_len_ == in_.size()) return Protocol(err, "the answer's head is longer than 64 KiB");
    if (!Fill(err)) return false;
  }
}

bool HttpConn::Frame(const std::string& head, HttpError* err) {
  if (head.size() < 12 || head.compare(0, 7, "HTTP/1.") != 0 || head[8] != ' ')
    return Protocol(err, "the answer is not HTTP/1.x");
  int status = std::atoi(head.c_str() + 9);
  keep_alive_ = head[7] == '1';
  bool chunked = false, has_length = false;
  uint64_t length = 0;
  for (size_t pos = head.find("\r\n"); pos != std::string::npos;) {
    size_t next = head.find("\r\n", pos + 2);
    std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
    pos = next;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = Lower(Trim(line.substr(0, colon)));
    std::string value = Lower(Trim(line.substr(colon + 1)));
    if (name == "content-length") {
      if (value.empty() || value.size() > 15 || value.find_first_not_of("0123456789") != std::string::npos)
        return Protocol(err, "Content-Length \"" + value + "\" is not a length");
      uint64_t n = std::stoull(value);
      if (has_length && n != length) return Protocol(err, "the answer gives two different Content-Lengths");
      has_length = true;
      length = n;
    } else if (name == "transfer-encoding") {
      chunked = value.size() >= 7 && value.compare(value.size() - 7, 7, "chunked") == 0;
      if (!chunked) return Protocol(err, "Transfer-Encoding \"" + value + "\" is not chunked");
    } else if (name == "connection") {
      if (value.find("close") != std::string::npos) keep_alive_ = false;
      if (value.find("keep-alive") != std::string::npos) keep_alive_ = true;
    }
  }
  left_ = 0;
  // Both framings at once is how requests get smuggled: the chunked one is read, and the connection not kept.
  if (chunked && has_length) keep_alive_ = false;
  if (status < 200 || status == 204 || status == 304) {
    framing_ = Framing::kLength;
    body_end_ = true;
  } else if (chunked) {
    framing_ = Framing::kChunked;
  } else if (has_length) {
    framing_ = Framing::kLength;
    left_ = length;
    body_end_ = length == 0;
  } else {
    framing_ = Framing::kClose;
    keep_alive_ = false;
  }
  return true;
}

bool HttpConn::Line(std::string* line, HttpError* err) {
  for (;;) {
    const uint8_t* start = in_.data() + in_pos_;
    const void* cr = memmem(start, in_len_ - in_pos_, "\r\n", 2);
    if (cr) {
      size_t len = static_cast<size_t>(static_cast<const uint8_t*>(cr) - start);
      line->assign(reinterpret_cast<const char*>(start), len);
      in_pos_ += len + 2;
      return true;
    }
    if (!Fill(err)) return false;
  }
}

bool HttpConn::NextChunk(HttpError* err) {
  std::string line;
  if (chunk_started_ && (!Line(&line, err) || !line.empty()))
    return err->message.empty() ? Protocol(err, "a chunk is longer than its size says") : false;
  chunk_started_ = true;
  if (!Line(&line, err)) return false;
  std::string size = Trim(line.substr(0, line.find(';')));
  if (size.empty() || size.size() > 15 || size.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
    return Protocol(err, "chunk size \"" + size + "\" is not hexadecimal");
  left_ = std::stoull(size, nullptr, 16);
  if (left_ > 0) return true;
  size_t trailer = 0;
  do {  // the trailer, up to its empty line, and no longer than a head may be
    if (!Line(&line, err)) return false;
    trailer += line.size() + 2;
    if (trailer > in_.size()) return Protocol(err, "the chunked body's trailer is longer than 64 KiB");
  } while (!line.empty());
  body_end_ = true;
  return true;
}

bool HttpConn::Payload(uint8_t* out, size_t room, size_t* n, HttpError* err) {
  *n = 0;
  if (framing_ == Framing::kChunked && left_ == 0) {
    if (!NextChunk(err)) return false;
    if (body_end_) return true;
  }
  size_t take = framing_ == Framing::kClose ? room : static_cast<size_t>(std::min<uint64_t>(room, left_));
  size_t buffered = in_len_ - in_pos_;
  if (buffered > 0 || framing_ == Framing::kChunked) {
    if (buffered == 0 && !Fill(err)) return false;
    take = std::min(take, in_len_ - in_pos_);
    std::memcpy(out, in_.data() + in_pos_, take);
    in_pos_ += take;
  } else {
    ssize_t r = Read(out, take, err);
    if (r < 0) return false;
    if (r == 0 && framing_ == Framing::kClose) return body_end_ = true;
    if (r == 0) {
      err->code = "ERR_STREAM_PREMATURE_CLOSE";
      err->message = "the connection closed " + std::to_string(left_) + (left_ == 1 ? " byte" : " bytes") + " before the body's end";
      return false;
    }
    take = static_cast<size_t>(r);
  }
  *n = take;
  if (framing_ == Framing::kClose) return true;
  left_ -= take;
  if (framing_ == Framing::kLength && left_ == 0) body_end_ = true;
  return true;
}

bool HttpConn::Probe(HttpError* err) {
  if (body_end_) return true;
  if (framing_ == Framing::kChunked) return left_ > 0 || NextChunk(err);
  if (framing_ == Framing::kLength || in_pos_ < in_len_) return true;  // more is coming, or here
  in_pos_ = in_len_ = 0;
  ssize_t n = Read(in_.data(), in_.size(), err);
  if (n < 0) return false;
  body_end_ = n == 0;
  in_len_ = static_cast<size_t>(n);
  return true;
}

bool HttpConn::Receive(int fd, EVP_MD_CTX* md, off_t position, size_t want, uint8_t* copy, size_t* got,
                       bool* end, HttpError* err) {
  *got = 0;
  if (want == 0) {  // whether the body ends here: a caller that has all it asked for checks it sends no more
    bool ok = Probe(err);
    *end = body_end_;
    return ok;
  }
  if (out_.empty()) out_.resize(kStage);
  bool ok = true;
  const int64_t report_at = NowMs() + kReportMs;
  bool due = false;
  while (ok && !due && *got < want && !body_end_) {
    size_t staged = 0;
    while (staged < kStage / 2 && *got + staged < want && !body_end_) {
      if (*got + staged > 0) {  // with bytes to report, a read waits only until the report is due
        int64_t left = report_at - NowMs();
        due = left <= 0 || !Readable(static_cast<int>(left));
        if (due) break;
      }
      size_t n = 0;
      ok = Payload(out_.data() + staged, std::min(kStage - staged, want - *got - staged), &n, err);
      if (!ok) break;
      staged += n;
    }
    // What arrived before a failure is written all the same: the next attempt resumes after it.
    HttpError disk;
    if (staged > 0 && !Flush(fd, md, position + *got, out_.data(), staged, copy ? copy + *got : nullptr, &disk)) {
      *err = disk;
      return false;
    }
    *got += staged;
  }
  *end = body_end_;
  return ok;
}
