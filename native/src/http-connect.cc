// Connecting to the first of a name's addresses that answers, in the manner
// of happy eyeballs (RFC 8305): the families in turn, the next address tried
// 250 ms after the last attempt began, or at once when one failed, and the
// first connection made wins. A device whose IPv6 route is broken (a cellular link that hands
// out AAAA records it cannot reach) thus reaches an IPv4 registry a quarter
// second later, not after the whole connect timeout, as Node's own sockets
// (autoSelectFamily) do for the requests that are not blob bodies.
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "http-conn.h"

namespace {

constexpr int kAttemptDelayMs = 250;
constexpr int kCancelCheckMs = 100;  // how soon a Shutdown() during the race is noticed

int64_t Now() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

struct Attempt {
  int fd;
  std::string address;
  int64_t deadline;
};

// Starts a non-blocking connect to `address`; -1 with `err` set when it failed at once.
int Start(const std::string& address, int port, HttpError* err) {
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  if (getaddrinfo(address.c_str(), service.c_str(), &hints, &found) != 0 || !found) {
    *err = HttpError{EINVAL, "", "connect: " + address + " is not an IP address"};
    return -1;
  }
  int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *err = HttpError{errno, "", "socket"};
    freeaddrinfo(found);
    return -1;
  }
  int rc = connect(fd, found->ai_addr, found->ai_addrlen);
  int e = errno;
  freeaddrinfo(found);
  if (rc == 0 || e == EINPROGRESS) return fd;
  *err = HttpError{e, "", "connect to " + address};
  close(fd);
  return -1;
}

// The addresses in the order to try them: the first one's family first, then the families in turn
// (RFC 8305 4), so that three unreachable IPv6 addresses do not hold back an IPv4 one for 750 ms.
std::vector<std::string> Interleaved(const std::vector<std::string>& addresses) {
  std::vector<std::string> first, other, out;
  bool v6 = !addresses.empty() && addresses[0].find(':') != std::string::npos;
  for (const std::string& a : addresses) ((a.find(':') != std::string::npos) == v6 ? first : other).push_back(a);
  for (size_t i = 0; i < first.size() || i < other.size(); i++) {
    if (i < first.size()) out.push_back(first[i]);
    if (i < other.size()) out.push_back(other[i]);
  }
  return out;
}

}  // namespace

int RaceConnect(const std::vector<std::string>& given, int port, int connect_ms, const std::atomic<bool>& closing,
                HttpError* err) {
  const std::vector<std::string> addresses = Interleaved(given);
  std::vector<Attempt> pending;
  size_t next = 0;
  int64_t next_at = 0;  // when the next address is due
  *err = HttpError{EINVAL, "", "connect: no address to connect to"};
  for (;;) {
    if (closing) {
      for (const Attempt& a : pending) close(a.fd);
      *err = HttpError{ECANCELED, "", "the connection was closed"};
      return -1;
    }
    int64_t now = Now();
    if (next < addresses.size() && (pending.empty() || now >= next_at)) {
      const std::string& address = addresses[next++];
      int fd = Start(address, port, err);
      if (fd >= 0) pending.push_back({fd, address, now + connect_ms});
      next_at = fd >= 0 ? now + kAttemptDelayMs : now;  // a failed start goes straight on to the next address
      continue;
    }
    if (pending.empty()) return -1;  // every address failed: *err is the last failure
    int64_t until = std::min<int64_t>(now + kCancelCheckMs, next < addresses.size() ? next_at : INT64_MAX);
    for (const Attempt& a : pending) until = std::min(until, a.deadline);
    std::vector<pollfd> polled;
    for (const Attempt& a : pending) polled.push_back({a.fd, POLLOUT, 0});
    int n = poll(polled.data(), polled.size(), static_cast<int>(std::max<int64_t>(0, until - now)));
    if (n < 0 && errno != EINTR) {
      *err = HttpError{errno, "", "poll"};
      for (const Attempt& a : pending) close(a.fd);
      return -1;
    }
    now = Now();
    std::vector<Attempt> still;
    int won = -1;
    for (size_t i = 0; i < pending.size(); i++) {
      const Attempt& a = pending[i];
      bool ready = n > 0 && polled[i].revents != 0;
      if (!ready && now < a.deadline) {
        still.push_back(a);
        continue;
      }
      int so = 0;
      socklen_t len = sizeof so;
      if (ready && won < 0 && getsockopt(a.fd, SOL_SOCKET, SO_ERROR, &so, &len) == 0 && so == 0) {
        won = a.fd;
        continue;
      }
      if (won < 0) {  // a refusal, or a timeout, starts the next address at once
        *err = ready ? HttpError{so != 0 ? so : errno, "", "connect to " + a.address}
                     : HttpError{ETIMEDOUT, "",
                                 "connecting to " + a.address + " took longer than " + std::to_string(connect_ms) +
                                     " ms"};
        next_at = now;
      }
      close(a.fd);
    }
    if (won >= 0) {
      for (const Attempt& a : still) close(a.fd);
      *err = HttpError{};  // the losers' failures are not this connection's
      return won;
    }
    pending.swap(still);
  }
}
