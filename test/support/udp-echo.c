/* udp-echo PORT: answers each UDP datagram on PORT with "udp-ok " and the
 * datagram, for container network tests (busybox has no UDP server). */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = INADDR_ANY};
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
    perror("udp-echo: bind");
    return 1;
  }
  for (;;) {
    char in[512], out[600];
    struct sockaddr_in from;
    socklen_t len = sizeof(from);
    ssize_t n = recvfrom(s, in, sizeof(in) - 1, 0, (struct sockaddr *)&from, &len);
    if (n < 0) continue;
    in[n] = '\0';
    int m = snprintf(out, sizeof(out), "udp-ok %s", in);
    sendto(s, out, m, 0, (struct sockaddr *)&from, len);
  }
}
