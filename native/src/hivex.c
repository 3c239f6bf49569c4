// Windows registry hives through the system's libhivex (Debian: libhivex0),
// loaded with dlopen like liblz4 and libzstd, so that the build needs no
// development package and the addon loads where the library is absent
// (hiveAvailable() says so). Used to write a deployed machine's computer
// name into the SYSTEM hive of its Windows partition: hivex changes single
// values in place and keeps every other value of a key, which hivexsh's
// "setval" (it replaces all values of a node) cannot.
//
// hiveGet(file, key, name) -> [type, Buffer] | null
// hiveSet(file, [[key, name, type, Buffer], ...]) creates missing keys,
// sets each value, and commits once (hivex writes a new file and renames it
// over the old one only when every change succeeded).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define NAPI_VERSION 8
#include <node_api.h>

#define HIVE_ARG_ERROR "CLONECAST_ERR_NATIVE_ARGUMENT"
#define HIVE_MAX_PATH 1024
#define HIVE_MAX_VALUE (1 << 20)
#define HIVE_MAX_EDITS 64
// hivex.h: HIVEX_OPEN_WRITE
#define HIVEX_OPEN_WRITE 4

typedef struct hive_h hive_h;
typedef size_t hive_node_h;
typedef size_t hive_value_h;
// hivex.h: struct hive_set_value
typedef struct {
  char *key;
  int t;
  size_t len;
  char *value;
} hive_set_value;

static struct {
  hive_h *(*open)(const char *, int);
  int (*close)(hive_h *);
  hive_node_h (*root)(hive_h *);
  hive_node_h (*get_child)(hive_h *, hive_node_h, const char *);
  hive_node_h (*add_child)(hive_h *, hive_node_h, const char *);
  hive_value_h (*get_value)(hive_h *, hive_node_h, const char *);
  char *(*value_value)(hive_h *, hive_value_h, int *, size_t *);
  int (*set_value)(hive_h *, hive_node_h, const hive_set_value *, int);
  int (*commit)(hive_h *, const char *, int);
} hx;
static int hive_state; // 0 not tried, 1 loaded, -1 absent

static int hive_load(void) {
  int state = __atomic_load_n(&hive_state, __ATOMIC_ACQUIRE);
  if (state != 0) return state > 0;
  void *lib = dlopen("libhivex.so.0", RTLD_NOW | RTLD_LOCAL);
  int ok = lib != NULL;
#define SYM(field, name) \
  if (ok && (*(void **)&hx.field = dlsym(lib, name)) == NULL) ok = 0
  SYM(open, "hivex_open");
  SYM(close, "hivex_close");
  SYM(root, "hivex_root");
  SYM(get_child, "hivex_node_get_child");
  SYM(add_child, "hivex_node_add_child");
  SYM(get_value, "hivex_node_get_value");
  SYM(value_value, "hivex_value_value");
  SYM(set_value, "hivex_node_set_value");
  SYM(commit, "hivex_commit");
#undef SYM
  __atomic_store_n(&hive_state, ok ? 1 : -1, __ATOMIC_RELEASE);
  return ok;
}

static napi_value hive_throw(napi_env env, const char *what, const char *detail) {
  char message[HIVE_MAX_PATH + 256];
  snprintf(message, sizeof message, "%s%s%s", what, detail != NULL ? ": " : "", detail != NULL ? detail : "");
  napi_throw_error(env, NULL, message);
  return NULL;
}

static int string_arg(napi_env env, napi_value v, char *out, size_t cap) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, out, cap, &len) != napi_ok || len + 1 >= cap) return 0;
  return 1;
}

// Walks (and with create, makes) the key path "A\\B\\C" from the root; 0 if absent.
static hive_node_h walk(hive_h *h, const char *path, int create) {
  char copy[HIVE_MAX_PATH];
  snprintf(copy, sizeof copy, "%s", path);
  hive_node_h node = hx.root(h);
  char *save = NULL;
  for (char *part = strtok_r(copy, "\\", &save); part != NULL && node != 0; part = strtok_r(NULL, "\\", &save)) {
    errno = 0;
    hive_node_h child = hx.get_child(h, node, part);
    if (child == 0 && errno == 0 && create) child = hx.add_child(h, node, part);
    node = child;
  }
  return node;
}

static napi_value js_hive_available(napi_env env, napi_callback_info info) {
  napi_value result;
  napi_get_boolean(env, hive_load(), &result);
  return result;
}

static napi_value js_hive_get(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char file[HIVE_MAX_PATH], key[HIVE_MAX_PATH], name[256];
  if (argc != 3 || !string_arg(env, argv[0], file, sizeof file) || !string_arg(env, argv[1], key, sizeof key) || !string_arg(env, argv[2], name, sizeof name)) {
    napi_throw_type_error(env, HIVE_ARG_ERROR, "hiveGet(file, key, name) takes three strings");
    return NULL;
  }
  if (!hive_load()) return hive_throw(env, "libhivex.so.0 could not be loaded (install libhivex0)", NULL);
  hive_h *h = hx.open(file, 0);
  if (h == NULL) return hive_throw(env, "not a readable registry hive", strerror(errno));
  hive_node_h node = walk(h, key, 0);
  hive_value_h value = node != 0 ? hx.get_value(h, node, name) : 0;
  int type = 0;
  size_t len = 0;
  char *data = value != 0 ? hx.value_value(h, value, &type, &len) : NULL;
  if (data == NULL || len > HIVE_MAX_VALUE) {
    free(data);
    hx.close(h);
    napi_get_null(env, &result);
    return result;
  }
  napi_value t, buf;
  void *copy;
  napi_create_array_with_length(env, 2, &result);
  napi_create_int32(env, type, &t);
  napi_create_buffer_copy(env, len, data, &copy, &buf);
  napi_set_element(env, result, 0, t);
  napi_set_element(env, result, 1, buf);
  free(data);
  hx.close(h);
  return result;
}

static napi_value js_hive_set(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char file[HIVE_MAX_PATH];
  uint32_t n = 0;
  bool is_array = false;
  if (argc != 2 || !string_arg(env, argv[0], file, sizeof file) || napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &n) != napi_ok || n == 0 || n > HIVE_MAX_EDITS) {
    napi_throw_type_error(env, HIVE_ARG_ERROR, "hiveSet(file, edits) takes a path and 1-64 [key, name, type, Buffer] edits");
    return NULL;
  }
  // Every argument is checked before the hive is opened for writing.
  char keys[HIVE_MAX_EDITS][HIVE_MAX_PATH / 4], names[HIVE_MAX_EDITS][128];
  int types[HIVE_MAX_EDITS];
  void *data[HIVE_MAX_EDITS];
  size_t lens[HIVE_MAX_EDITS];
  for (uint32_t i = 0; i < n; i++) {
    napi_value e, k, nm, t, b;
    uint32_t len = 0;
    bool arr = false, isbuf = false;
    if (napi_get_element(env, argv[1], i, &e) != napi_ok || napi_is_array(env, e, &arr) != napi_ok || !arr || napi_get_array_length(env, e, &len) != napi_ok || len != 4 ||
        napi_get_element(env, e, 0, &k) != napi_ok || !string_arg(env, k, keys[i], sizeof keys[i]) || napi_get_element(env, e, 1, &nm) != napi_ok ||
        !string_arg(env, nm, names[i], sizeof names[i]) || napi_get_element(env, e, 2, &t) != napi_ok || napi_get_value_int32(env, t, &types[i]) != napi_ok ||
        types[i] < 0 || types[i] > 11 || napi_get_element(env, e, 3, &b) != napi_ok || napi_is_buffer(env, b, &isbuf) != napi_ok || !isbuf ||
        napi_get_buffer_info(env, b, &data[i], &lens[i]) != napi_ok || lens[i] > HIVE_MAX_VALUE) {
      napi_throw_type_error(env, HIVE_ARG_ERROR, "each hiveSet edit is [key path, value name, type 0-11, Buffer up to 1 MiB]");
      return NULL;
    }
  }
  if (!hive_load()) return hive_throw(env, "libhivex.so.0 could not be loaded (install libhivex0)", NULL);
  hive_h *h = hx.open(file, HIVEX_OPEN_WRITE);
  if (h == NULL) return hive_throw(env, "not a writable registry hive", strerror(errno));
  for (uint32_t i = 0; i < n; i++) {
    hive_node_h node = walk(h, keys[i], 1);
    hive_set_value v = {names[i], types[i], lens[i], (char *)data[i]};
    if (node == 0 || hx.set_value(h, node, &v, 0) != 0) {
      int err = errno;
      hx.close(h); // without a commit nothing is written
      return hive_throw(env, node == 0 ? "could not make the key" : "could not set the value", strerror(err));
    }
  }
  if (hx.commit(h, NULL, 0) != 0) {
    int err = errno;
    hx.close(h);
    return hive_throw(env, "could not write the hive", strerror(err));
  }
  hx.close(h);
  return NULL;
}

void clonecast_hivex_init(napi_env env, napi_value exports) {
  napi_value f;
  napi_create_function(env, "hiveAvailable", NAPI_AUTO_LENGTH, js_hive_available, NULL, &f);
  napi_set_named_property(env, exports, "hiveAvailable", f);
  napi_create_function(env, "hiveGet", NAPI_AUTO_LENGTH, js_hive_get, NULL, &f);
  napi_set_named_property(env, exports, "hiveGet", f);
  napi_create_function(env, "hiveSet", NAPI_AUTO_LENGTH, js_hive_set, NULL, &f);
  napi_set_named_property(env, exports, "hiveSet", f);
}
