// zstd chunk compression through the system's libzstd (Debian: libzstd1,
// which dpkg and apt themselves depend on), loaded with dlopen so that the
// build needs no development package and the addon still loads where the
// library is absent (zstdAvailable() says so, and a zstd chunk then fails
// with a clear error in protocol/zstd.ts).
//
// A chunk's zstd payload is exactly one zstd frame (RFC 8878) whose header
// carries the content size. Each thread (the main thread and every worker)
// keeps one compression and one decompression context, made on first use
// and freed when its Node environment ends: creating a context per chunk
// costs more than compressing a 1 MiB chunk at level 1.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define NAPI_VERSION 8
#include <node_api.h>

#define ZSTD_ARG_ERROR "CLONECAST_ERR_NATIVE_ARGUMENT"

// The few prototypes used, as declared in zstd.h (stable API since v1.3).
typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct ZSTD_DCtx_s ZSTD_DCtx;
#define ZSTD_CONTENTSIZE_UNKNOWN (0ULL - 1)
#define ZSTD_CONTENTSIZE_ERROR (0ULL - 2)
// ZSTD_ErrorCode value of ZSTD_error_dstSize_tooSmall (zstd_errors.h).
#define ZSTD_ERROR_DST_TOO_SMALL 70

static struct {
  ZSTD_CCtx *(*createCCtx)(void);
  size_t (*freeCCtx)(ZSTD_CCtx *);
  ZSTD_DCtx *(*createDCtx)(void);
  size_t (*freeDCtx)(ZSTD_DCtx *);
  size_t (*compressCCtx)(ZSTD_CCtx *, void *, size_t, const void *, size_t, int);
  size_t (*decompressDCtx)(ZSTD_DCtx *, void *, size_t, const void *, size_t);
  unsigned long long (*getFrameContentSize)(const void *, size_t);
  size_t (*findFrameCompressedSize)(const void *, size_t);
  unsigned (*isError)(size_t);
  int (*getErrorCode)(size_t);
  const char *(*getErrorName)(size_t);
  int (*minCLevel)(void);
  int (*maxCLevel)(void);
} zs;
static int zstd_state; // 0 not tried, 1 loaded, -1 absent
static __thread ZSTD_CCtx *thread_cctx;
static __thread ZSTD_DCtx *thread_dctx;

static int zstd_load(void) {
  // dlopen/dlsym are thread-safe; two threads racing here resolve the same
  // symbols, and the state is published only after the table is filled.
  int state = __atomic_load_n(&zstd_state, __ATOMIC_ACQUIRE);
  if (state != 0) return state > 0;
  void *lib = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
  int ok = lib != NULL;
#define SYM(field, name) \
  if (ok && (*(void **)&zs.field = dlsym(lib, name)) == NULL) ok = 0
  SYM(createCCtx, "ZSTD_createCCtx");
  SYM(freeCCtx, "ZSTD_freeCCtx");
  SYM(createDCtx, "ZSTD_createDCtx");
  SYM(freeDCtx, "ZSTD_freeDCtx");
  SYM(compressCCtx, "ZSTD_compressCCtx");
  SYM(decompressDCtx, "ZSTD_decompressDCtx");
  SYM(getFrameContentSize, "ZSTD_getFrameContentSize");
  SYM(findFrameCompressedSize, "ZSTD_findFrameCompressedSize");
  SYM(isError, "ZSTD_isError");
  SYM(getErrorCode, "ZSTD_getErrorCode");
  SYM(getErrorName, "ZSTD_getErrorName");
  SYM(minCLevel, "ZSTD_minCLevel");
  SYM(maxCLevel, "ZSTD_maxCLevel");
#undef SYM
  __atomic_store_n(&zstd_state, ok ? 1 : -1, __ATOMIC_RELEASE);
  return ok;
}

static napi_value zstd_throw(napi_env env, const char *code, const char *message) {
  napi_throw_error(env, code, message);
  return NULL;
}

static int zstd_buffer(napi_env env, napi_value v, uint8_t **ptr, size_t *len) {
  bool is = false;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return 0;
  void *data;
  if (napi_get_buffer_info(env, v, &data, len) != napi_ok) return 0;
  *ptr = data;
  return 1;
}

// Reads (src, dst[, level]); throws and returns 0 on bad arguments or without libzstd.
static int zstd_args(napi_env env, napi_callback_info info, size_t want, uint8_t **src, size_t *src_len, uint8_t **dst, size_t *dst_len, int *level) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != want || !zstd_buffer(env, argv[0], src, src_len) || !zstd_buffer(env, argv[1], dst, dst_len) ||
      (want == 3 && napi_get_value_int32(env, argv[2], level) != napi_ok)) {
    zstd_throw(env, ZSTD_ARG_ERROR, want == 3 ? "expected (src: Buffer, dst: Buffer, level: integer)" : "expected (src: Buffer, dst: Buffer)");
    return 0;
  }
  if (*src_len > 0x7e000000 || *dst_len > 0x7e000000) {
    zstd_throw(env, ZSTD_ARG_ERROR, "buffers must be smaller than 2 GiB");
    return 0;
  }
  if (!zstd_load()) {
    zstd_throw(env, "ENOSYS", "dlopen(libzstd.so.1) failed: install libzstd1");
    return 0;
  }
  if (want == 3 && (*level < zs.minCLevel() || *level > zs.maxCLevel() || *level == 0)) {
    char msg[96];
    snprintf(msg, sizeof msg, "level must be a non-zero integer from %d to %d", zs.minCLevel(), zs.maxCLevel());
    zstd_throw(env, ZSTD_ARG_ERROR, msg);
    return 0;
  }
  return 1;
}

// zstdAvailable(): boolean.
static napi_value js_zstd_available(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_get_boolean(env, zstd_load(), &result);
  return result;
}

// zstdCompress(src, dst, level): number. Writes one frame (content size in
// its header) into dst; returns its length, or 0 if it would not fit (the
// caller sizes dst to the most it accepts, so 0 means "store raw").
static napi_value js_zstd_compress(napi_env env, napi_callback_info info) {
  uint8_t *src, *dst;
  size_t src_len, dst_len;
  int level = 0;
  if (!zstd_args(env, info, 3, &src, &src_len, &dst, &dst_len, &level)) return NULL;
  if (thread_cctx == NULL && (thread_cctx = zs.createCCtx()) == NULL) return zstd_throw(env, "ENOMEM", "ZSTD_createCCtx failed");
  size_t n = zs.compressCCtx(thread_cctx, dst, dst_len, src, src_len, level);
  if (zs.isError(n)) {
    if (zs.getErrorCode(n) == ZSTD_ERROR_DST_TOO_SMALL) n = 0;
    else return zstd_throw(env, "CLONECAST_ERR_ZSTD", zs.getErrorName(n));
  }
  napi_value result;
  napi_create_int32(env, (int32_t)n, &result);
  return result;
}

// zstdDecompress(src, dst): number. src must be exactly one frame whose
// header declares dst.length bytes, and must decode to exactly that many;
// returns dst.length, or -1 if the frame is malformed or says otherwise.
static napi_value js_zstd_decompress(napi_env env, napi_callback_info info) {
  uint8_t *src, *dst;
  size_t src_len, dst_len;
  if (!zstd_args(env, info, 2, &src, &src_len, &dst, &dst_len, NULL)) return NULL;
  int32_t out = -1;
  unsigned long long declared = zs.getFrameContentSize(src, src_len);
  size_t frame = zs.findFrameCompressedSize(src, src_len);
  if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != ZSTD_CONTENTSIZE_ERROR && declared == dst_len && !zs.isError(frame) && frame == src_len) {
    if (thread_dctx == NULL && (thread_dctx = zs.createDCtx()) == NULL) return zstd_throw(env, "ENOMEM", "ZSTD_createDCtx failed");
    size_t n = zs.decompressDCtx(thread_dctx, dst, dst_len, src, src_len);
    if (!zs.isError(n) && n == dst_len) out = (int32_t)n;
  }
  napi_value result;
  napi_create_int32(env, out, &result);
  return result;
}

// Frees this thread's contexts when its environment (main or worker) ends.
static void zstd_cleanup(void *arg) {
  (void)arg;
  if (thread_cctx != NULL) zs.freeCCtx(thread_cctx);
  if (thread_dctx != NULL) zs.freeDCtx(thread_dctx);
  thread_cctx = NULL;
  thread_dctx = NULL;
}

// Adds zstdAvailable, zstdCompress and zstdDecompress to exports.
void clonecast_zstd_init(napi_env env, napi_value exports) {
  napi_value f;
  napi_create_function(env, "zstdAvailable", NAPI_AUTO_LENGTH, js_zstd_available, NULL, &f);
  napi_set_named_property(env, exports, "zstdAvailable", f);
  napi_create_function(env, "zstdCompress", NAPI_AUTO_LENGTH, js_zstd_compress, NULL, &f);
  napi_set_named_property(env, exports, "zstdCompress", f);
  napi_create_function(env, "zstdDecompress", NAPI_AUTO_LENGTH, js_zstd_decompress, NULL, &f);
  napi_set_named_property(env, exports, "zstdDecompress", f);
  napi_add_env_cleanup_hook(env, zstd_cleanup, NULL);
}
