// The trust of one registry client (http-conn.h): its CAs, and the TLS
// sessions its connections agreed, resumed by the next connection to the
// same server.
#include <openssl/err.h>
#include <openssl/pem.h>

#include "http-conn.h"

std::string SslReason(const char* fallback) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return fallback;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

bool TlsTrust::Init(const std::string& ca_pem, std::string* why) {
  ctx_ = SSL_CTX_new(TLS_client_method());
  if (!ctx_) return *why = SslReason("cannot make a TLS context"), false;
  SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
  // A close without close_notify ends a body only where the framing allows it; the digest checks the rest.
  SSL_CTX_set_options(ctx_, SSL_OP_IGNORE_UNEXPECTED_EOF);
  // Without read-ahead each 16 KiB record costs two reads, its 5-byte header and then its body; with it, one
  // read takes what the socket holds, up to the buffer, and the records in it are decrypted from memory.
  SSL_CTX_set_read_ahead(ctx_, 1);
  SSL_CTX_set_default_read_buffer_len(ctx_, kTlsReadBuffer);
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
