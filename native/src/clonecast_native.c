// clonecast native addon: only what Node's fs cannot do.
//
// Raw block-device I/O with O_DIRECT, device size and sector size ioctls,
// aligned buffers, flush, zeroing and discard of ranges, re-reading the
// partition table, syncfs. Every asynchronous call runs on the libuv thread
// pool, touches only the C fields of its request on the worker thread, and
// keeps a reference on the JavaScript buffer it reads or writes until it
// completes.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define NAPI_VERSION 8
#include <node_api.h>

#define ARG_ERROR_CODE "CLONECAST_ERR_NATIVE_ARGUMENT"
#define MAX_SAFE_INTEGER 9007199254740991.0

// Throws a TypeError with a fixed message and a stable code.
static napi_value throw_arg(napi_env env, const char *message) {
  napi_throw_type_error(env, ARG_ERROR_CODE, message);
  return NULL;
}

// Builds an Error for an errno value the way Node's fs does:
// message "CODE: description, syscall", properties errno, code, syscall.
static napi_value errno_error(napi_env env, int err, const char *syscall) {
  const char *name = strerrorname_np(err);
  if (name == NULL) name = "EUNKNOWN";
  char message[256];
  snprintf(message, sizeof message, "%s: %s, %s", name, strerror(err), syscall);
  napi_value msg, code, error, value;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, msg, &error);
  napi_create_int32(env, -err, &value);
  napi_set_named_property(env, error, "errno", value);
  napi_set_named_property(env, error, "code", code);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &value);
  napi_set_named_property(env, error, "syscall", value);
  return error;
}

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_throw(env, errno_error(env, err, syscall));
  return NULL;
}

// The same for the other files of the addon (udp_batch.c): throws errno_error(), returns NULL.
napi_value clonecast_throw_errno(napi_env env, int err, const char *syscall) {
  return throw_errno(env, err, syscall);
}

// Reads a non-negative integer that fits a double exactly.
static int get_uint(napi_env env, napi_value value, double limit, int64_t *out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) return 0;
  double d;
  napi_get_value_double(env, value, &d);
  if (!(d >= 0) || d > limit || d != (double)(int64_t)d) return 0;
  *out = (int64_t)d;
  return 1;
}

static int get_fd(napi_env env, napi_value value, int *fd) {
  int64_t v;
  if (!get_uint(env, value, 2147483647.0, &v)) return 0;
  *fd = (int)v;
  return 1;
}

static int get_bool(napi_env env, napi_value value, int *out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_boolean) return 0;
  bool b;
  napi_get_value_bool(env, value, &b);
  *out = b ? 1 : 0;
  return 1;
}

static int is_block_device(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISBLK(st.st_mode);
}

// ---------------------------------------------------------------------------
// Asynchronous requests

typedef enum { OP_READ, OP_WRITE, OP_FLUSH, OP_SYNCFS, OP_DISCARD, OP_ZERO, OP_RRPART } op_t;

typedef struct {
  op_t op;
  int fd;
  uint8_t *ptr;
  uint64_t length;
  uint64_t position;
  uint64_t done;    // bytes transferred
  int err;          // errno, 0 on success
  const char *syscall;
  napi_deferred deferred;
  napi_ref buffer;  // pins the JavaScript buffer until completion
  napi_async_work work;
} request_t;

static void run_range_ioctl(request_t *r, unsigned long request, const char *name, int falloc_mode) {
  if (is_block_device(r->fd)) {
    uint64_t range[2] = {r->position, r->length};
    r->syscall = name;
    if (ioctl(r->fd, request, range) != 0) r->err = errno;
  } else {
    r->syscall = "fallocate";
    if (fallocate(r->fd, falloc_mode, (off_t)r->position, (off_t)r->length) != 0) r->err = errno;
  }
}

// Runs on the thread pool: only C fields are touched here.
static void execute(napi_env env, void *data) {
  (void)env;
  request_t *r = data;
  switch (r->op) {
    case OP_READ:
      r->syscall = "pread";
      while (r->done < r->length) {
        ssize_t n = pread(r->fd, r->ptr + r->done, r->length - r->done, (off_t)(r->position + r->done));
        if (n < 0) {
          if (errno == EINTR) continue;
          r->err = errno;
          break;
        }
        if (n == 0) break;  // end of file: a short count
        r->done += (uint64_t)n;
      }
      break;
    case OP_WRITE:
      r->syscall = "pwrite";
      while (r->done < r->length) {
        ssize_t n = pwrite(r->fd, r->ptr + r->done, r->length - r->done, (off_t)(r->position + r->done));
        if (n < 0) {
          if (errno == EINTR) continue;
          r->err = errno;
          break;
        }
        if (n == 0) {
          r->err = ENOSPC;
          break;
        }
        r->done += (uint64_t)n;
      }
      break;
    case OP_FLUSH:
      r->syscall = "fdatasync";
      if (fdatasync(r->fd) != 0) r->err = errno;
      break;
    case OP_SYNCFS:
      r->syscall = "syncfs";
      if (syncfs(r->fd) != 0) r->err = errno;
      break;
    case OP_DISCARD:
      run_range_ioctl(r, BLKDISCARD, "ioctl(BLKDISCARD)", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
      break;
    case OP_ZERO:
      // A punched hole in a regular file reads back as zeros.
      run_range_ioctl(r, BLKZEROOUT, "ioctl(BLKZEROOUT)", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
      break;
    case OP_RRPART:
      r->syscall = "ioctl(BLKRRPART)";
      if (ioctl(r->fd, BLKRRPART, 0) != 0) r->err = errno;
      break;
  }
}

static void complete(napi_env env, napi_status status, void *data) {
  request_t *r = data;
  if (r->buffer != NULL) napi_delete_reference(env, r->buffer);
  if (status != napi_ok) r->err = ECANCELED;
  if (r->err != 0) {
    napi_reject_deferred(env, r->deferred, errno_error(env, r->err, r->syscall));
  } else {
    napi_value result;
    if (r->op == OP_READ || r->op == OP_WRITE) {
      napi_create_double(env, (double)r->done, &result);
    } else {
      napi_get_undefined(env, &result);
    }
    napi_resolve_deferred(env, r->deferred, result);
  }
  napi_delete_async_work(env, r->work);
  free(r);
}

static napi_value queue(napi_env env, request_t *r) {
  napi_value promise, name;
  napi_create_promise(env, &r->deferred, &promise);
  napi_create_string_utf8(env, "clonecast:io", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, r, &r->work);
  napi_queue_async_work(env, r->work);
  return promise;
}

static request_t *new_request(op_t op, int fd) {
  request_t *r = calloc(1, sizeof *r);
  if (r != NULL) {
    r->op = op;
    r->fd = fd;
  }
  return r;
}

// read(fd, buffer, offset, length, position) / write(...): Promise<number>
static napi_value transfer(napi_env env, napi_callback_info info, op_t op) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 5) return throw_arg(env, "expected (fd, buffer, offset, length, position)");
  int fd;
  if (!get_fd(env, argv[0], &fd)) return throw_arg(env, "fd must be a non-negative integer");
  bool is_buffer = false;
  napi_is_buffer(env, argv[1], &is_buffer);
  if (!is_buffer) return throw_arg(env, "buffer must be a Buffer");
  void *base;
  size_t size;
  napi_get_buffer_info(env, argv[1], &base, &size);
  int64_t offset, length, position;
  if (!get_uint(env, argv[2], MAX_SAFE_INTEGER, &offset)) return throw_arg(env, "offset must be a non-negative integer");
  if (!get_uint(env, argv[3], MAX_SAFE_INTEGER, &length)) return throw_arg(env, "length must be a non-negative integer");
  if (!get_uint(env, argv[4], MAX_SAFE_INTEGER, &position)) return throw_arg(env, "position must be a non-negative integer");
  if ((uint64_t)offset > size || (uint64_t)length > size - (uint64_t)offset) {
    return throw_arg(env, "offset and length must lie within the buffer");
  }
  request_t *r = new_request(op, fd);
  if (r == NULL) return throw_errno(env, ENOMEM, "malloc");
  r->ptr = (uint8_t *)base + offset;
  r->length = (uint64_t)length;
  r->position = (uint64_t)position;
  napi_create_reference(env, argv[1], 1, &r->buffer);
  return queue(env, r);
}

static napi_value js_read(napi_env env, napi_callback_info info) { return transfer(env, info, OP_READ); }
static napi_value js_write(napi_env env, napi_callback_info info) { return transfer(env, info, OP_WRITE); }

// flush(fd), syncfs(fd), rereadPartitions(fd): Promise<void>
static napi_value fd_only(napi_env env, napi_callback_info info, op_t op) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd;
  if (argc != 1 || !get_fd(env, argv[0], &fd)) return throw_arg(env, "fd must be a non-negative integer");
  request_t *r = new_request(op, fd);
  if (r == NULL) return throw_errno(env, ENOMEM, "malloc");
  return queue(env, r);
}

static napi_value js_flush(napi_env env, napi_callback_info info) { return fd_only(env, info, OP_FLUSH); }
static napi_value js_syncfs(napi_env env, napi_callback_info info) { return fd_only(env, info, OP_SYNCFS); }
static napi_value js_rrpart(napi_env env, napi_callback_info info) { return fd_only(env, info, OP_RRPART); }

// discard(fd, position, length), zeroRange(fd, position, length): Promise<void>
static napi_value range_op(napi_env env, napi_callback_info info, op_t op) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 3) return throw_arg(env, "expected (fd, position, length)");
  int fd;
  int64_t position, length;
  if (!get_fd(env, argv[0], &fd)) return throw_arg(env, "fd must be a non-negative integer");
  if (!get_uint(env, argv[1], MAX_SAFE_INTEGER, &position)) return throw_arg(env, "position must be a non-negative integer");
  if (!get_uint(env, argv[2], MAX_SAFE_INTEGER, &length)) return throw_arg(env, "length must be a non-negative integer");
  request_t *r = new_request(op, fd);
  if (r == NULL) return throw_errno(env, ENOMEM, "malloc");
  r->position = (uint64_t)position;
  r->length = (uint64_t)length;
  return queue(env, r);
}

static napi_value js_discard(napi_env env, napi_callback_info info) { return range_op(env, info, OP_DISCARD); }
static napi_value js_zero(napi_env env, napi_callback_info info) { return range_op(env, info, OP_ZERO); }

// ---------------------------------------------------------------------------
// Synchronous calls: cheap system calls that never block on the device.

// open(path, write, direct[, create]): number. O_DIRECT is asked for only
// when direct is true; the caller falls back to buffered I/O on EINVAL (tmpfs
// and some filesystems refuse it). create makes a new file (O_CREAT|O_EXCL,
// mode 0644) in the same call.
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 3 && argc != 4) return throw_arg(env, "expected (path, write, direct[, create])");
  napi_valuetype type;
  napi_typeof(env, argv[0], &type);
  if (type != napi_string) return throw_arg(env, "path must be a string");
  char path[4096];
  size_t len;
  napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len);
  if (len == 0 || len >= sizeof path - 1) return throw_arg(env, "path must be a string of 1 to 4094 bytes");
  int write, direct, create = 0;
  if (!get_bool(env, argv[1], &write)) return throw_arg(env, "write must be a boolean");
  if (!get_bool(env, argv[2], &direct)) return throw_arg(env, "direct must be a boolean");
  if (argc == 4 && !get_bool(env, argv[3], &create)) return throw_arg(env, "create must be a boolean");
  int flags = (write ? O_RDWR : O_RDONLY) | O_CLOEXEC | (direct ? O_DIRECT : 0) | (create ? O_CREAT | O_EXCL : 0);
  int fd = open(path, flags, 0644);
  if (fd < 0) return throw_errno(env, errno, "open");
  napi_value result;
  napi_create_int32(env, fd, &result);
  return result;
}

// close(fd): closes a descriptor that open() returned. (fs.closeSync in a
// worker thread warns about descriptors fs did not open itself.)
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd;
  if (argc != 1 || !get_fd(env, argv[0], &fd)) return throw_arg(env, "fd must be a non-negative integer");
  if (close(fd) != 0 && errno != EINTR) return throw_errno(env, errno, "close");
  return NULL;
}

// seekData(fd, position): the offset of the first byte of data at or after
// position in a sparse file (lseek SEEK_DATA), or -1 if only a hole follows.
static napi_value js_seek_data(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd;
  int64_t position;
  if (argc != 2 || !get_fd(env, argv[0], &fd)) return throw_arg(env, "fd must be a non-negative integer");
  if (!get_uint(env, argv[1], MAX_SAFE_INTEGER, &position)) return throw_arg(env, "position must be a non-negative integer");
  off_t r = lseek(fd, (off_t)position, SEEK_DATA);
  if (r < 0 && errno != ENXIO) return throw_errno(env, errno, "lseek(SEEK_DATA)");
  napi_value result;
  napi_create_double(env, r < 0 ? -1.0 : (double)r, &result);
  return result;
}

static void set_number(napi_env env, napi_value obj, const char *key, double v) {
  napi_value value;
  napi_create_double(env, v, &value);
  napi_set_named_property(env, obj, key, value);
}

// deviceInfo(fd): { blockDevice, size, logicalSectorSize, physicalSectorSize,
// major, minor, direct }. For a regular file the size is its length, and the
// sector sizes are 512 and the filesystem's block size.
static napi_value js_device_info(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd;
  if (argc != 1 || !get_fd(env, argv[0], &fd)) return throw_arg(env, "fd must be a non-negative integer");
  struct stat st;
  if (fstat(fd, &st) != 0) return throw_errno(env, errno, "fstat");
  uint64_t size = (uint64_t)st.st_size;
  int logical = 512, physical = (int)st.st_blksize;
  int block = S_ISBLK(st.st_mode);
  if (block) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) return throw_errno(env, errno, "ioctl(BLKGETSIZE64)");
    if (ioctl(fd, BLKSSZGET, &logical) != 0) return throw_errno(env, errno, "ioctl(BLKSSZGET)");
    unsigned int pb = 0;
    if (ioctl(fd, BLKPBSZGET, &pb) != 0) return throw_errno(env, errno, "ioctl(BLKPBSZGET)");
    physical = (int)pb;
  } else if (!S_ISREG(st.st_mode)) {
    return throw_errno(env, ENOTBLK, "fstat");
  }
  int fl = fcntl(fd, F_GETFL);
  napi_value obj, b;
  napi_create_object(env, &obj);
  napi_get_boolean(env, block, &b);
  napi_set_named_property(env, obj, "blockDevice", b);
  napi_get_boolean(env, fl >= 0 && (fl & O_DIRECT) != 0, &b);
  napi_set_named_property(env, obj, "direct", b);
  set_number(env, obj, "size", (double)size);
  set_number(env, obj, "logicalSectorSize", logical);
  set_number(env, obj, "physicalSectorSize", physical);
  set_number(env, obj, "major", block ? major(st.st_rdev) : major(st.st_dev));
  set_number(env, obj, "minor", block ? minor(st.st_rdev) : minor(st.st_dev));
  return obj;
}

static void free_aligned(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

// alignedBuffer(size, alignment): Buffer of zeros whose address is a
// multiple of alignment, as O_DIRECT requires.
static napi_value js_aligned_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t size, alignment;
  if (argc != 2 || !get_uint(env, argv[0], 1u << 30, &size) || size == 0) {
    return throw_arg(env, "size must be an integer from 1 to 1 GiB");
  }
  if (!get_uint(env, argv[1], 1 << 20, &alignment) || alignment < 512 || (alignment & (alignment - 1)) != 0) {
    return throw_arg(env, "alignment must be a power of two from 512 to 1 MiB");
  }
  void *p = NULL;
  int err = posix_memalign(&p, (size_t)alignment, (size_t)size);
  if (err != 0) return throw_errno(env, err, "posix_memalign");
  memset(p, 0, (size_t)size);
  napi_value result;
  if (napi_create_external_buffer(env, (size_t)size, p, free_aligned, NULL, &result) != napi_ok) {
    free(p);
    return throw_errno(env, ENOMEM, "napi_create_external_buffer");
  }
  return result;
}

// isAligned(buffer, alignment): whether the buffer's address is a multiple of alignment.
static napi_value js_is_aligned(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool is_buffer = false;
  if (argc == 2) napi_is_buffer(env, argv[0], &is_buffer);
  if (!is_buffer) return throw_arg(env, "buffer must be a Buffer");
  int64_t alignment;
  if (!get_uint(env, argv[1], 1 << 20, &alignment) || alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return throw_arg(env, "alignment must be a power of two from 1 to 1 MiB");
  }
  void *base;
  size_t size;
  napi_get_buffer_info(env, argv[0], &base, &size);
  napi_value result;
  napi_get_boolean(env, ((uintptr_t)base & (uintptr_t)(alignment - 1)) == 0, &result);
  return result;
}

// ---------------------------------------------------------------------------
// LZ4 block compression through the system's liblz4 (Debian: liblz4-1, which
// apt itself depends on), loaded with dlopen so that the build needs no
// development package and the addon still loads where the library is absent.
// lz4-napi's own compressor took 3.3 s where liblz4 took 0.43 s for the
// data chunks of the 1 GiB benchmark image.
// The output layout is lz4-napi's: u32 little-endian uncompressed length,
// then one LZ4 block, so either side can decode what the other wrote.

typedef int (*lz4_compress_fn)(const char *, char *, int, int);
typedef int (*lz4_decompress_fn)(const char *, char *, int, int);
static lz4_compress_fn lz4_compress;
static lz4_decompress_fn lz4_decompress;
static int lz4_tried;

static int lz4_load(void) {
  if (!lz4_tried) {
    lz4_tried = 1;
    void *lib = dlopen("liblz4.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib != NULL) {
      lz4_compress = (lz4_compress_fn)dlsym(lib, "LZ4_compress_default");
      lz4_decompress = (lz4_decompress_fn)dlsym(lib, "LZ4_decompress_safe");
      if (lz4_compress == NULL || lz4_decompress == NULL) lz4_compress = NULL, lz4_decompress = NULL;
    }
  }
  return lz4_compress != NULL;
}

static napi_value js_lz4_available(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_get_boolean(env, lz4_load(), &result);
  return result;
}

static int get_buffer(napi_env env, napi_value v, uint8_t **ptr, size_t *len) {
  bool is_buffer = false;
  napi_is_buffer(env, v, &is_buffer);
  if (!is_buffer) return 0;
  void *p;
  napi_get_buffer_info(env, v, &p, len);
  *ptr = p;
  return 1;
}

// Reads the (src, dst) buffer pair of the lz4 calls; throws and returns 0 if
// they are not two Buffers under 2 GiB.
static int get_src_dst(napi_env env, napi_callback_info info, uint8_t **src, size_t *src_len, uint8_t **dst, size_t *dst_len) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 2 || !get_buffer(env, argv[0], src, src_len) || !get_buffer(env, argv[1], dst, dst_len)) {
    throw_arg(env, "expected (src: Buffer, dst: Buffer)");
    return 0;
  }
  if (*src_len > 0x7e000000 || *dst_len > 0x7e000000) {
    throw_arg(env, "buffers must be smaller than 2 GiB");
    return 0;
  }
  if (!lz4_load()) {
    throw_errno(env, ENOSYS, "dlopen(liblz4.so.1)");
    return 0;
  }
  return 1;
}

// lz4Compress(src, dst): number. Writes the 4-byte length prefix and the
// block into dst; returns the bytes written, or 0 if they would not fit
// (the caller sizes dst to the most it accepts, so 0 means "store raw").
static napi_value js_lz4_compress(napi_env env, napi_callback_info info) {
  uint8_t *src, *dst;
  size_t src_len, dst_len;
  if (!get_src_dst(env, info, &src, &src_len, &dst, &dst_len)) return NULL;
  int n = 0;
  if (dst_len > 4) {
    n = lz4_compress((const char *)src, (char *)dst + 4, (int)src_len, (int)(dst_len - 4));
    if (n > 0) {
      dst[0] = src_len & 0xff;
      dst[1] = (src_len >> 8) & 0xff;
      dst[2] = (src_len >> 16) & 0xff;
      dst[3] = (src_len >> 24) & 0xff;
      n += 4;
    }
  }
  napi_value result;
  napi_create_int32(env, n, &result);
  return result;
}

// lz4Decompress(src, dst): number. src is prefix + block; returns the bytes
// written to dst, or -1 if the block is malformed or does not fit.
static napi_value js_lz4_decompress(napi_env env, napi_callback_info info) {
  uint8_t *src, *dst;
  size_t src_len, dst_len;
  if (!get_src_dst(env, info, &src, &src_len, &dst, &dst_len)) return NULL;
  int n = -1;
  if (src_len >= 4) n = lz4_decompress((const char *)src + 4, (char *)dst, (int)(src_len - 4), (int)dst_len);
  napi_value result;
  napi_create_int32(env, n < 0 ? -1 : n, &result);
  return result;
}

// ---------------------------------------------------------------------------
// XXH64 (seed 0), written from the xxHash specification (xxhash_spec.md,
// "XXH64 algorithm description"). The chunk check on every import, transfer
// and write; a native loop runs about twice as fast as the WebAssembly one,
// which also copies its input.

#define XXH_P1 0x9E3779B185EBCA87ULL
#define XXH_P2 0xC2B2AE3D27D4EB4FULL
#define XXH_P3 0x165667B19E3779F9ULL
#define XXH_P4 0x85EBCA77C2B2AE63ULL
#define XXH_P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// XXH64 reads its input as little-endian words.
static inline uint64_t read64le(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

static inline uint32_t read32le(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t input) {
  acc += input * XXH_P2;
  acc = rotl64(acc, 31);
  return acc * XXH_P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t val) {
  acc ^= xxh_round(0, val);
  return acc * XXH_P1 + XXH_P4;
}

static uint64_t xxh64(const uint8_t *p, size_t len, uint64_t seed) {
  const uint8_t *end = p + len;
  uint64_t h;
  if (len >= 32) {
    uint64_t v1 = seed + XXH_P1 + XXH_P2, v2 = seed + XXH_P2, v3 = seed, v4 = seed - XXH_P1;
    const uint8_t *limit = end - 32;
    do {
      v1 = xxh_round(v1, read64le(p));
      v2 = xxh_round(v2, read64le(p + 8));
      v3 = xxh_round(v3, read64le(p + 16));
      v4 = xxh_round(v4, read64le(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
    h = xxh_merge(h, v1);
    h = xxh_merge(h, v2);
    h = xxh_merge(h, v3);
    h = xxh_merge(h, v4);
  } else {
    h = seed + XXH_P5;
  }
  h += (uint64_t)len;
  while (p + 8 <= end) {
    h ^= xxh_round(0, read64le(p));
    h = rotl64(h, 27) * XXH_P1 + XXH_P4;
    p += 8;
  }
  if (p + 4 <= end) {
    h ^= (uint64_t)read32le(p) * XXH_P1;
    h = rotl64(h, 23) * XXH_P2 + XXH_P3;
    p += 4;
  }
  while (p < end) {
    h ^= (uint64_t)(*p) * XXH_P5;
    h = rotl64(h, 11) * XXH_P1;
    p++;
  }
  h ^= h >> 33;
  h *= XXH_P2;
  h ^= h >> 29;
  h *= XXH_P3;
  h ^= h >> 32;
  return h;
}

// xxh64(buffer): bigint, seed 0.
static napi_value js_xxh64(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *p;
  size_t len;
  if (argc != 1 || !get_buffer(env, argv[0], &p, &len)) return throw_arg(env, "expected (buffer: Buffer)");
  napi_value result;
  napi_create_bigint_uint64(env, xxh64(p, len, 0), &result);
  return result;
}

// udpSocket(device, address, port): number. A UDP/IPv4 socket bound to one
// network interface (SO_BINDTODEVICE, set before bind so that no packet from
// another interface is ever queued), with SO_REUSEADDR and SO_BROADCAST, bound
// to address:port. address "0.0.0.0" receives broadcasts, which a socket
// bound to the interface's own address does not. The descriptor is handed to
// dgram (socket.bind({ fd })). Needs CAP_NET_RAW for SO_BINDTODEVICE.
static napi_value js_udp_socket(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 3) return throw_arg(env, "expected (device, address, port)");
  napi_valuetype type;
  char dev[IFNAMSIZ + 1];
  char addr[64];
  size_t len;
  napi_typeof(env, argv[0], &type);
  if (type != napi_string) return throw_arg(env, "device must be a string");
  napi_get_value_string_utf8(env, argv[0], dev, sizeof dev, &len);
  if (len == 0 || len >= IFNAMSIZ) return throw_arg(env, "device must be an interface name of 1 to 15 bytes");
  napi_typeof(env, argv[1], &type);
  if (type != napi_string) return throw_arg(env, "address must be a string");
  napi_get_value_string_utf8(env, argv[1], addr, sizeof addr, &len);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) return throw_arg(env, "address must be a dotted IPv4 address");
  int32_t port;
  napi_typeof(env, argv[2], &type);
  if (type != napi_number || napi_get_value_int32(env, argv[2], &port) != napi_ok || port < 0 || port > 65535) return throw_arg(env, "port must be 0 to 65535");
  sa.sin_port = htons((uint16_t)port);
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  int one = 1;
  const char *failed = NULL;
  if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, (socklen_t)strlen(dev)) != 0) failed = "setsockopt(SO_BINDTODEVICE)";
  else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) failed = "setsockopt(SO_REUSEADDR)";
  else if (setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) != 0) failed = "setsockopt(SO_BROADCAST)";
  else if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) failed = "bind";
  if (failed != NULL) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, failed);
  }
  napi_value result;
  napi_create_int32(env, fd, &result);
  return result;
}

#define EXPORT(name, fn)                                              \
  do {                                                                \
    napi_value f;                                                     \
    napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &f);  \
    napi_set_named_property(env, exports, name, f);                   \
  } while (0)

void clonecast_mac_init(napi_env env, napi_value exports);
void clonecast_zstd_init(napi_env env, napi_value exports);
void clonecast_udp_batch_init(napi_env env, napi_value exports);
void clonecast_fec_init(napi_env env, napi_value exports);
void clonecast_hivex_init(napi_env env, napi_value exports);

NAPI_MODULE_INIT() {
  clonecast_mac_init(env, exports);
  clonecast_zstd_init(env, exports);
  clonecast_udp_batch_init(env, exports);
  clonecast_fec_init(env, exports);
  clonecast_hivex_init(env, exports);
  EXPORT("open", js_open);
  EXPORT("close", js_close);
  EXPORT("seekData", js_seek_data);
  EXPORT("deviceInfo", js_device_info);
  EXPORT("alignedBuffer", js_aligned_buffer);
  EXPORT("isAligned", js_is_aligned);
  EXPORT("read", js_read);
  EXPORT("write", js_write);
  EXPORT("flush", js_flush);
  EXPORT("syncfs", js_syncfs);
  EXPORT("discard", js_discard);
  EXPORT("zeroRange", js_zero);
  EXPORT("rereadPartitions", js_rrpart);
  EXPORT("lz4Available", js_lz4_available);
  EXPORT("xxh64", js_xxh64);
  EXPORT("lz4Compress", js_lz4_compress);
  EXPORT("lz4Decompress", js_lz4_decompress);
  EXPORT("udpSocket", js_udp_socket);
  return exports;
}
