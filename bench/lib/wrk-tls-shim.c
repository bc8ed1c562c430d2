/*
 * LD_PRELOAD shim for wrk's TLS client (bench/tls.mjs, lib/tls-targets.mjs).
 *
 * wrk (4.1.0) reuses one SSL object per connection slot: on a reconnect it
 * calls SSL_shutdown + SSL_clear and SSL_connect again. SSL_clear keeps the
 * session of a connection that was shut down cleanly, so the next
 * SSL_connect offers it (a TLS 1.3 ticket or a TLS 1.2 session id) and a
 * server that accepts it resumes: with `Connection: close`, "a handshake per
 * request" is then mostly resumed handshakes, not full ones.
 *
 * This shim:
 *  - counts completed client handshakes (SSL_connect returning 1), full and
 *    resumed (SSL_session_reused), and remembers the protocol version,
 *    cipher suite and key-exchange group of the first one;
 *  - with WRK_TLS_NO_RESUME=1, drops the kept session in SSL_clear
 *    (SSL_set_session(s, NULL)), so every reconnect is a full handshake;
 *  - with WRK_TLS_MAX=1.2, caps wrk's SSL_CTX at TLS 1.2 (where a resumed
 *    handshake does no key exchange, unlike TLS 1.3's psk_dhe_ke);
 *  - at exit prints one line to stderr:
 *      TLSSHIM {"handshakes":N,"resumed":M,"version":"TLSv1.3","cipher":"...","group":"X25519"}
 *
 * No OpenSSL headers needed (prototypes declared here; the symbols come from
 * the libssl/libcrypto wrk is linked with): `cc -shared -fPIC -O2 -o shim.so
 * wrk-tls-shim.c -ldl`. Only counters on the hot path (one atomic add per
 * handshake); nothing per request.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
typedef struct ssl_cipher_st SSL_CIPHER;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;

#define SSL_CTRL_GET_NEGOTIATED_GROUP 134 /* OpenSSL 3 ssl.h */
#define SSL_CTRL_SET_MAX_PROTO_VERSION 124
#define TLS1_2_VERSION 0x0303

static int (*real_connect)(SSL *);
static int (*real_clear)(SSL *);
static int (*p_session_reused)(const SSL *);
static int (*p_set_session)(SSL *, SSL_SESSION *);
static const char *(*p_get_version)(const SSL *);
static const SSL_CIPHER *(*p_current_cipher)(const SSL *);
static const char *(*p_cipher_name)(const SSL_CIPHER *);
static long (*p_ctrl)(SSL *, int, long, void *);
static const char *(*p_nid2sn)(int);
static SSL_CTX *(*real_ctx_new)(const SSL_METHOD *);
static long (*p_ctx_ctrl)(SSL_CTX *, int, long, void *);

static unsigned long handshakes, resumed;
static int no_resume = -1;
static char version[32], cipher[64], group[32];

static void *sym(const char *name) {
  void *p = dlsym(RTLD_NEXT, name);
  return p ? p : dlsym(RTLD_DEFAULT, name);
}

static void init(void) {
  if (real_connect) return;
  real_clear = sym("SSL_clear");
  p_session_reused = sym("SSL_session_reused");
  p_set_session = sym("SSL_set_session");
  p_get_version = sym("SSL_get_version");
  p_current_cipher = sym("SSL_get_current_cipher");
  p_cipher_name = sym("SSL_CIPHER_get_name");
  p_ctrl = sym("SSL_ctrl");
  p_nid2sn = sym("OBJ_nid2sn");
  const char *e = getenv("WRK_TLS_NO_RESUME");
  no_resume = e != NULL && e[0] == '1';
  real_ctx_new = sym("SSL_CTX_new");
  p_ctx_ctrl = sym("SSL_CTX_ctrl");
  real_connect = sym("SSL_connect");
}

SSL_CTX *SSL_CTX_new(const SSL_METHOD *m) {
  init();
  SSL_CTX *ctx = real_ctx_new(m);
  const char *e = getenv("WRK_TLS_MAX");
  if (ctx && e && strcmp(e, "1.2") == 0 && p_ctx_ctrl) p_ctx_ctrl(ctx, SSL_CTRL_SET_MAX_PROTO_VERSION, TLS1_2_VERSION, NULL);
  return ctx;
}

int SSL_connect(SSL *s) {
  init();
  int r = real_connect(s);
  if (r == 1) {
    unsigned long n = __atomic_add_fetch(&handshakes, 1, __ATOMIC_RELAXED);
    if (p_session_reused && p_session_reused(s)) __atomic_add_fetch(&resumed, 1, __ATOMIC_RELAXED);
    if (n == 1) {
      if (p_get_version) snprintf(version, sizeof version, "%s", p_get_version(s));
      const SSL_CIPHER *c = p_current_cipher ? p_current_cipher(s) : NULL;
      if (c && p_cipher_name) snprintf(cipher, sizeof cipher, "%s", p_cipher_name(c));
      if (p_ctrl && p_nid2sn) {
        long nid = p_ctrl(s, SSL_CTRL_GET_NEGOTIATED_GROUP, 0, NULL);
        const char *g = nid > 0 ? p_nid2sn((int)nid) : NULL;
        if (g) snprintf(group, sizeof group, "%s", g);
      }
    }
  }
  return r;
}

int SSL_clear(SSL *s) {
  init();
  int r = real_clear(s);
  if (no_resume && p_set_session) p_set_session(s, NULL);
  return r;
}

__attribute__((destructor)) static void report(void) {
  if (no_resume < 0) return; /* never used: not a TLS run */
  fprintf(stderr, "TLSSHIM {\"handshakes\":%lu,\"resumed\":%lu,\"noResume\":%s,\"version\":\"%s\",\"cipher\":\"%s\",\"group\":\"%s\"}\n",
          handshakes, resumed, no_resume ? "true" : "false", version, cipher, group);
}
