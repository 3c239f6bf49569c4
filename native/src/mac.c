// Packet MACs for the multicast protocol: HMAC-SHA256 (RFC 2104) truncated
// to 16 bytes (RFC 2104 section 5), over every byte of a datagram before its
// last 16, which carry the tag.
//
// Node's own HMAC costs ~4 us per 1.5 KB packet, nearly all of it per call
// (objects, key setup); here the key's inner and outer hash states are made
// once (macKey) and copied per packet, so a packet costs its SHA-256 blocks.
// SHA256_* are the OpenSSL functions the running node exports (its headers
// are the ones node-gyp builds against), so nothing more is linked.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define NAPI_VERSION 8
#include <node_api.h>

#define MAC_BYTES 16
#define ARG_ERROR_CODE "CLONECAST_ERR_NATIVE_ARGUMENT"

// A key's precomputed state: SHA-256 after (key ^ ipad) and after (key ^ opad).
typedef struct {
  uint32_t magic;
  SHA256_CTX inner;
  SHA256_CTX outer;
} mac_state;

#define MAC_MAGIC 0x4d41434bu

static napi_value mac_throw(napi_env env, const char *message) {
  napi_throw_type_error(env, ARG_ERROR_CODE, message);
  return NULL;
}

static int mac_buffer(napi_env env, napi_value v, uint8_t **ptr, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return 0;
  void *data;
  if (napi_get_buffer_info(env, v, &data, len) != napi_ok) return 0;
  *ptr = data;
  return 1;
}

// macKey(key: Buffer of 1-64 bytes) -> Buffer (the key's state, opaque).
static napi_value js_mac_key(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *key;
  size_t len;
  if (argc != 1 || !mac_buffer(env, argv[0], &key, &len) || len == 0 || len > 64) return mac_throw(env, "expected (key: Buffer of 1 to 64 bytes)");
  uint8_t pad[64];
  napi_value result;
  void *out;
  if (napi_create_buffer(env, sizeof(mac_state), &out, &result) != napi_ok) return NULL;
  mac_state st;
  memset(&st, 0, sizeof st);
  st.magic = MAC_MAGIC;
  memset(pad, 0x36, sizeof pad);
  for (size_t i = 0; i < len; i++) pad[i] ^= key[i];
  SHA256_Init(&st.inner);
  SHA256_Update(&st.inner, pad, sizeof pad);
  memset(pad, 0x5c, sizeof pad);
  for (size_t i = 0; i < len; i++) pad[i] ^= key[i];
  SHA256_Init(&st.outer);
  SHA256_Update(&st.outer, pad, sizeof pad);
  memcpy(out, &st, sizeof st);
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(&st, sizeof st);
  return result;
}

// The tag of data[0, len) under state into tag (32 bytes).
static void mac_compute(const uint8_t *state, const uint8_t *data, size_t len, uint8_t tag[32]) {
  mac_state st;
  memcpy(&st, state, sizeof st);
  SHA256_Update(&st.inner, data, len);
  SHA256_Final(tag, &st.inner);
  SHA256_Update(&st.outer, tag, 32);
  SHA256_Final(tag, &st.outer);
  OPENSSL_cleanse(&st, sizeof st);
}

// Checks (state, packet, length) and returns the parts; NULL after throwing.
static int mac_args(napi_env env, napi_callback_info info, uint8_t **state, uint8_t **buf, size_t *len) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  size_t state_len, buf_len;
  uint32_t n;
  if (argc != 3 || !mac_buffer(env, argv[0], state, &state_len) || state_len != sizeof(mac_state) || ((mac_state *)*state)->magic != MAC_MAGIC ||
      !mac_buffer(env, argv[1], buf, &buf_len) || napi_get_value_uint32(env, argv[2], &n) != napi_ok || n < MAC_BYTES || n > buf_len) {
    mac_throw(env, "expected (state: Buffer from macKey, packet: Buffer, length: 16 to packet.length)");
    return 0;
  }
  *len = n;
  return 1;
}

// macSign(state, packet, length): writes the tag of packet[0, length-16) into packet[length-16, length).
static napi_value js_mac_sign(napi_env env, napi_callback_info info) {
  uint8_t *state, *buf;
  size_t len;
  if (!mac_args(env, info, &state, &buf, &len)) return NULL;
  uint8_t tag[32];
  mac_compute(state, buf, len - MAC_BYTES, tag);
  memcpy(buf + len - MAC_BYTES, tag, MAC_BYTES);
  return NULL;
}

// macVerify(state, packet, length) -> true if packet[length-16, length) is the tag of the bytes before (constant time).
static napi_value js_mac_verify(napi_env env, napi_callback_info info) {
  uint8_t *state, *buf;
  size_t len;
  if (!mac_args(env, info, &state, &buf, &len)) return NULL;
  uint8_t tag[32];
  mac_compute(state, buf, len - MAC_BYTES, tag);
  napi_value result;
  napi_get_boolean(env, CRYPTO_memcmp(tag, buf + len - MAC_BYTES, MAC_BYTES) == 0, &result);
  return result;
}

// For udp_batch.c, which signs and checks batches of packets in one call.
size_t clonecast_mac_state_size(void) { return sizeof(mac_state); }

int clonecast_mac_state_valid(const uint8_t *state, size_t len) {
  return len == sizeof(mac_state) && ((const mac_state *)state)->magic == MAC_MAGIC;
}

// Writes the tag of buf[0, len-16) into buf[len-16, len); len >= 16.
void clonecast_mac_sign_raw(const uint8_t *state, uint8_t *buf, size_t len) {
  uint8_t tag[32];
  mac_compute(state, buf, len - MAC_BYTES, tag);
  memcpy(buf + len - MAC_BYTES, tag, MAC_BYTES);
}

// 1 if buf[len-16, len) is the tag of the bytes before it (constant time); len >= 16.
int clonecast_mac_verify_raw(const uint8_t *state, const uint8_t *buf, size_t len) {
  uint8_t tag[32];
  mac_compute(state, buf, len - MAC_BYTES, tag);
  return CRYPTO_memcmp(tag, buf + len - MAC_BYTES, MAC_BYTES) == 0;
}

// Adds macKey, macSign and macVerify to exports.
void clonecast_mac_init(napi_env env, napi_value exports) {
  napi_value f;
  napi_create_function(env, "macKey", NAPI_AUTO_LENGTH, js_mac_key, NULL, &f);
  napi_set_named_property(env, exports, "macKey", f);
  napi_create_function(env, "macSign", NAPI_AUTO_LENGTH, js_mac_sign, NULL, &f);
  napi_set_named_property(env, exports, "macSign", f);
  napi_create_function(env, "macVerify", NAPI_AUTO_LENGTH, js_mac_verify, NULL, &f);
  napi_set_named_property(env, exports, "macVerify", f);
}
