// Reed-Solomon parity over GF(2^8) for the multicast protocol's stripes
// (docs/protocol.md, "Parity"). The code is systematic: a stripe of k data
// fragments is rows 0..k-1 of the identity; parity index p is row k+p of
// ISA-L's Cauchy matrix, coefficient j = 1 / ((k+p) xor j) in GF(2^8) with
// the polynomial 0x11d (gf_gen_cauchy1_matrix). Every k x k submatrix of
// [identity; Cauchy] is invertible, so any k distinct packets of a stripe
// rebuild it.
//
// Intel's ISA-L (Debian libisal2) is loaded with dlopen at run time, never
// linked; without it the same matrix is applied by a table-driven multiply
// here (slower, byte for byte the same output; test/unit/fec.test.ts).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NAPI_VERSION 8
#include <node_api.h>

#define ARG_ERROR_CODE "CLONECAST_ERR_NATIVE_ARGUMENT"
// k + the highest row used stays below 256 (the field's distinct non-zero x values).
#define FEC_MAX_K 64
#define FEC_MAX_ROWS 255

typedef void (*ec_init_tables_fn)(int, int, unsigned char *, unsigned char *);
typedef void (*ec_encode_data_fn)(int, int, int, unsigned char *, unsigned char **, unsigned char **);
typedef void (*gf_gen_cauchy1_matrix_fn)(unsigned char *, int, int);
typedef int (*gf_invert_matrix_fn)(unsigned char *, unsigned char *, const int);

static ec_init_tables_fn isal_init_tables;
static ec_encode_data_fn isal_encode_data;
static gf_gen_cauchy1_matrix_fn isal_gen_cauchy1;
static gf_invert_matrix_fn isal_invert;
static int isal_tried;

static int isal_load(void) {
  if (!isal_tried) {
    isal_tried = 1;
    // RTLD_DEEPBIND: node itself exports a gf_mul, which ISA-L's own calls
    // (gf_invert_matrix -> gf_mul) would otherwise bind to.
    void *lib = dlopen("libisal.so.2", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (lib != NULL) {
      isal_init_tables = (ec_init_tables_fn)dlsym(lib, "ec_init_tables");
      isal_encode_data = (ec_encode_data_fn)dlsym(lib, "ec_encode_data");
      isal_gen_cauchy1 = (gf_gen_cauchy1_matrix_fn)dlsym(lib, "gf_gen_cauchy1_matrix");
      isal_invert = (gf_invert_matrix_fn)dlsym(lib, "gf_invert_matrix");
      if (!isal_init_tables || !isal_encode_data || !isal_gen_cauchy1 || !isal_invert) isal_encode_data = NULL;
    }
  }
  return isal_encode_data != NULL;
}

// ---- the portable field: exp/log tables for 0x11d, generator 2 ----
static uint8_t gf_exp[512];
static uint8_t gf_log[256];
static int gf_ready;

static void gf_setup(void) {
  if (gf_ready) return;
  unsigned x = 1;
  for (int i = 0; i < 255; i++) {
    gf_exp[i] = (uint8_t)x;
    gf_log[x] = (uint8_t)i;
    x <<= 1;
    if (x & 0x100) x ^= 0x11d;
  }
  for (int i = 255; i < 512; i++) gf_exp[i] = gf_exp[i - 255];
  gf_ready = 1;
}

static uint8_t gf_mul(uint8_t a, uint8_t b) {
  if (a == 0 || b == 0) return 0;
  return gf_exp[gf_log[a] + gf_log[b]];
}

static uint8_t gf_inv(uint8_t a) {
  return a == 0 ? 0 : gf_exp[255 - gf_log[a]];
}

// Row r (0-based, r >= k: a parity row) of the Cauchy matrix, k coefficients.
static void cauchy_row(int k, int r, uint8_t *out) {
  for (int j = 0; j < k; j++) out[j] = gf_inv((uint8_t)(r ^ j));
}

// Gauss-Jordan inversion of the n x n matrix in (destroyed) into out; 0 if singular.
static int portable_invert(uint8_t *in, uint8_t *out, int n) {
  memset(out, 0, (size_t)n * n);
  for (int i = 0; i < n; i++) out[i * n + i] = 1;
  for (int c = 0; c < n; c++) {
    int p = c;
    while (p < n && in[p * n + c] == 0) p++;
    if (p == n) return 0;
    if (p != c) {
      for (int j = 0; j < n; j++) {
        uint8_t t = in[c * n + j]; in[c * n + j] = in[p * n + j]; in[p * n + j] = t;
        t = out[c * n + j]; out[c * n + j] = out[p * n + j]; out[p * n + j] = t;
      }
    }
    uint8_t inv = gf_inv(in[c * n + c]);
    for (int j = 0; j < n; j++) {
      in[c * n + j] = gf_mul(in[c * n + j], inv);
      out[c * n + j] = gf_mul(out[c * n + j], inv);
    }
    for (int r = 0; r < n; r++) {
      uint8_t f = in[r * n + c];
      if (r == c || f == 0) continue;
      for (int j = 0; j < n; j++) {
        in[r * n + j] ^= gf_mul(f, in[c * n + j]);
        out[r * n + j] ^= gf_mul(f, out[c * n + j]);
      }
    }
  }
  return 1;
}

// out[i] = sum_j rows[i][j] * src[j], each of len bytes: ISA-L or the tables.
static void apply(int isal, int k, int nrows, uint8_t *rows, uint8_t **src, uint8_t **out, int len) {
  if (isal) {
    uint8_t tables[32 * FEC_MAX_K * 8];
    // ec_init_tables needs 32 * k * rows bytes: go 8 output rows at a time.
    for (int i = 0; i < nrows; i += 8) {
      int n = nrows - i < 8 ? nrows - i : 8;
      isal_init_tables(k, n, rows + (size_t)i * k, tables);
      isal_encode_data(len, k, n, tables, src, out + i);
    }
    return;
  }
  for (int i = 0; i < nrows; i++) {
    uint8_t *o = out[i];
    memset(o, 0, (size_t)len);
    for (int j = 0; j < k; j++) {
      uint8_t c = rows[i * k + j];
      if (c == 0) continue;
      const uint8_t *s = src[j];
      if (c == 1) {
        for (int b = 0; b < len; b++) o[b] ^= s[b];
        continue;
      }
      uint8_t mul[256];
      for (int v = 0; v < 256; v++) mul[v] = gf_mul(c, (uint8_t)v);
      for (int b = 0; b < len; b++) o[b] ^= mul[s[b]];
    }
  }
}

static napi_value fec_throw(napi_env env, const char *message) {
  napi_throw_type_error(env, ARG_ERROR_CODE, message);
  return NULL;
}

static int get_buffer(napi_env env, napi_value v, uint8_t **ptr, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return 0;
  void *data;
  if (napi_get_buffer_info(env, v, &data, len) != napi_ok) return 0;
  *ptr = data;
  return 1;
}

static int get_int(napi_env env, napi_value v, int lo, int hi, int *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return 0;
  int32_t n;
  if (napi_get_value_int32(env, v, &n) != napi_ok || n < lo || n > hi) return 0;
  *out = n;
  return 1;
}

// Which implementation: 0 ISA-L if loaded, else portable; 1 portable always.
static int use_isal(int mode) {
  gf_setup();
  return mode == 0 && isal_load();
}

// fecAvailable() -> boolean: ISA-L was loaded (the portable code is always there).
static napi_value js_fec_isal(napi_env env, napi_callback_info info) {
  napi_value result;
  napi_get_boolean(env, isal_load(), &result);
  return result;
}

// fecEncode(k, len, data, parity, out, mode): data holds k fragments of len
// bytes one after another; parity holds r parity indexes (bytes); out gets
// the r parity fragments one after another.
static napi_value js_fec_encode(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int k, len, mode;
  uint8_t *data, *parity, *out;
  size_t data_len, parity_len, out_len;
  if (argc != 6 || !get_int(env, argv[0], 1, FEC_MAX_K, &k) || !get_int(env, argv[1], 1, 65535, &len) || !get_buffer(env, argv[2], &data, &data_len) ||
      !get_buffer(env, argv[3], &parity, &parity_len) || !get_buffer(env, argv[4], &out, &out_len) || !get_int(env, argv[5], 0, 1, &mode))
    return fec_throw(env, "expected (k: 1-64, len: 1-65535, data: Buffer, parity: Buffer, out: Buffer, mode: 0 or 1)");
  if (data_len < (size_t)k * len || out_len < parity_len * len || parity_len > FEC_MAX_ROWS) return fec_throw(env, "fecEncode: a buffer is too small");
  for (size_t i = 0; i < parity_len; i++)
    if (k + parity[i] >= FEC_MAX_ROWS) return fec_throw(env, "fecEncode: a parity index is out of range for k");
  int isal = use_isal(mode);
  uint8_t *src[FEC_MAX_K];
  for (int j = 0; j < k; j++) src[j] = data + (size_t)j * len;
  uint8_t rows[8 * FEC_MAX_K];
  uint8_t *dst[8];
  static uint8_t full[FEC_MAX_ROWS * FEC_MAX_K];
  if (isal) {
    int top = 0;
    for (size_t i = 0; i < parity_len; i++) if (parity[i] > top) top = parity[i];
    isal_gen_cauchy1(full, k + top + 1, k);
  }
  // Eight parity rows at a time: the matrix stays on the stack.
  for (size_t i = 0; i < parity_len; i += 8) {
    int n = parity_len - i < 8 ? (int)(parity_len - i) : 8;
    for (int r = 0; r < n; r++) {
      int row = k + parity[i + r];
      if (isal) {
        memcpy(rows + r * k, full + (size_t)row * k, (size_t)k);
      } else {
        cauchy_row(k, row, rows + r * k);
      }
      dst[r] = out + (i + r) * (size_t)len;
    }
    apply(isal, k, n, rows, src, dst, len);
  }
  return NULL;
}

// fecDecode(k, len, have, rows, want, out, mode): have holds k received
// fragments of len bytes, rows[i] the row of have's fragment i (< k: data
// fragment, k + p: parity index p), all distinct; want holds the data
// indexes to rebuild, out gets them one after another. False if the rows
// do not form an invertible matrix (never with distinct rows).
static napi_value js_fec_decode(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int k, len, mode;
  uint8_t *have, *rowsIn, *want, *out;
  size_t have_len, rows_len, want_len, out_len;
  if (argc != 7 || !get_int(env, argv[0], 1, FEC_MAX_K, &k) || !get_int(env, argv[1], 1, 65535, &len) || !get_buffer(env, argv[2], &have, &have_len) ||
      !get_buffer(env, argv[3], &rowsIn, &rows_len) || !get_buffer(env, argv[4], &want, &want_len) || !get_buffer(env, argv[5], &out, &out_len) ||
      !get_int(env, argv[6], 0, 1, &mode))
    return fec_throw(env, "expected (k: 1-64, len: 1-65535, have: Buffer, rows: Buffer, want: Buffer, out: Buffer, mode: 0 or 1)");
  if (have_len < (size_t)k * len || rows_len != (size_t)k || want_len > (size_t)k || out_len < want_len * len) return fec_throw(env, "fecDecode: a buffer has the wrong size");
  for (int i = 0; i < k; i++)
    if (rowsIn[i] >= FEC_MAX_ROWS) return fec_throw(env, "fecDecode: a row is out of range");
  for (size_t i = 0; i < want_len; i++)
    if (want[i] >= k) return fec_throw(env, "fecDecode: a wanted index is not a data fragment");
  // Only the e erased data fragments are unknown: with D the data rows held, M the missing
  // ones and P the e parity rows held, parity_i = sum_j C[P_i][j] d_j gives
  // C[P][M] d_M = parity_P - C[P][D] d_D (the syndromes, one encode of e rows), and the e x e
  // Cauchy block C[P][M] is inverted instead of the whole k x k matrix (~e^3, not k^3).
  int isal = use_isal(mode);
  uint8_t seen[FEC_MAX_K];
  memset(seen, 0, sizeof seen);
  int e = 0;
  int prow[FEC_MAX_K];
  uint8_t *psrc[FEC_MAX_K];
  uint8_t *dsrc[FEC_MAX_K];
  int dcol[FEC_MAX_K];
  int nd = 0;
  int top = k - 1;
  for (int i = 0; i < k; i++) {
    int r = rowsIn[i];
    if (r < k) {
      if (seen[r]) return fec_throw(env, "fecDecode: a data row is given twice");
      seen[r] = 1;
      dcol[nd] = r;
      dsrc[nd++] = have + (size_t)i * len;
    } else {
      for (int j = 0; j < e; j++)
        if (prow[j] == r) return fec_throw(env, "fecDecode: a parity row is given twice");
      prow[e] = r;
      psrc[e++] = have + (size_t)i * len;
      if (r > top) top = r;
    }
  }
  int missing[FEC_MAX_K];
  int nm = 0;
  for (int j = 0; j < k; j++)
    if (!seen[j]) missing[nm++] = j;
  // nm == e: k rows given, distinct, so every missing data row has a parity row in its place.
  for (size_t i = 0; i < want_len; i++)
    if (seen[want[i]]) return fec_throw(env, "fecDecode: a wanted fragment is held already");
  napi_value result;
  if (e == 0) {
    napi_get_boolean(env, true, &result);
    return result;
  }
  static uint8_t full[FEC_MAX_ROWS * FEC_MAX_K];
  if (isal) isal_gen_cauchy1(full, top + 1, k);
  uint8_t coef[FEC_MAX_K * FEC_MAX_K];  // e rows of k: the parity rows held
  for (int i = 0; i < e; i++) {
    if (isal) memcpy(coef + i * k, full + (size_t)prow[i] * k, (size_t)k);
    else cauchy_row(k, prow[i], coef + i * k);
  }
  // Syndromes: sources are the held data, then the held parity; row i takes C[P_i][D] and parity i itself.
  uint8_t *syn = malloc((size_t)e * len);
  if (syn == NULL) return fec_throw(env, "fecDecode: out of memory");
  uint8_t *src[FEC_MAX_K];
  for (int j = 0; j < nd; j++) src[j] = dsrc[j];
  for (int j = 0; j < e; j++) src[nd + j] = psrc[j];
  uint8_t rows[8 * FEC_MAX_K];
  uint8_t *dst[8];
  for (int i = 0; i < e; i += 8) {
    int n = e - i < 8 ? e - i : 8;
    for (int r = 0; r < n; r++) {
      uint8_t *row = rows + r * k;
      for (int j = 0; j < nd; j++) row[j] = coef[(i + r) * k + dcol[j]];
      for (int j = 0; j < e; j++) row[nd + j] = (j == i + r) ? 1 : 0;
      dst[r] = syn + (size_t)(i + r) * len;
    }
    apply(isal, k, n, rows, src, dst, len);
  }
  // The e x e block C[P][M], inverted.
  uint8_t m[FEC_MAX_K * FEC_MAX_K], inv[FEC_MAX_K * FEC_MAX_K];
  for (int i = 0; i < e; i++)
    for (int j = 0; j < e; j++) m[i * e + j] = coef[i * k + missing[j]];
  int ok = isal ? isal_invert(m, inv, e) == 0 : portable_invert(m, inv, e);
  if (!ok) {
    free(syn);
    napi_get_boolean(env, false, &result);
    return result;
  }
  uint8_t *ssrc[FEC_MAX_K];
  for (int j = 0; j < e; j++) ssrc[j] = syn + (size_t)j * len;
  for (size_t i = 0; i < want_len; i += 8) {
    int n = want_len - i < 8 ? (int)(want_len - i) : 8;
    for (int r = 0; r < n; r++) {
      int at = 0;
      while (missing[at] != want[i + r]) at++;
      memcpy(rows + r * e, inv + (size_t)at * e, (size_t)e);
      dst[r] = out + (i + r) * (size_t)len;
    }
    apply(isal, e, n, rows, ssrc, dst, len);
  }
  free(syn);
  napi_get_boolean(env, true, &result);
  return result;
}

void clonecast_fec_init(napi_env env, napi_value exports) {
  napi_value f;
  napi_create_function(env, "fecIsal", NAPI_AUTO_LENGTH, js_fec_isal, NULL, &f);
  napi_set_named_property(env, exports, "fecIsal", f);
  napi_create_function(env, "fecEncode", NAPI_AUTO_LENGTH, js_fec_encode, NULL, &f);
  napi_set_named_property(env, exports, "fecEncode", f);
  napi_create_function(env, "fecDecode", NAPI_AUTO_LENGTH, js_fec_decode, NULL, &f);
  napi_set_named_property(env, exports, "fecDecode", f);
}
