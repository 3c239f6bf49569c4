// Batched UDP for the multicast engine: one system call and one call into
// JavaScript for many datagrams instead of one of each per datagram.
//
// Send: sendmmsg(2) of a tick's packets, where runs of equal-sized packets to
// one destination that lie back to back in memory go as one UDP GSO message
// (UDP_SEGMENT, Linux 4.18; udp(7)): the stack is walked once per run and the
// datagrams are cut at the device or where they are delivered. Packets may be
// signed here first (the MAC of native/src/mac.c), in the same call.
//
// Receive: the socket's descriptor is watched by a uv_poll on the addon's own
// event loop; when readable, recvmmsg(2) fills slots of one shared buffer and
// one JavaScript callback gets the count, with a length, source address and
// port and a verdict per slot. The verdict carries the MAC check under one key
// for the packet types asked for (a truncated datagram is marked, never cut).
//
// The descriptor belongs to this file from socket() to close(); JavaScript
// holds an external to it (transfer/batch-socket.ts).
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define NAPI_VERSION 8
#include <node_api.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define ARG_ERROR_CODE "CLONECAST_ERR_NATIVE_ARGUMENT"
#define MAC_BYTES 16
// udp(7): at most 64 segments per GSO send (UDP_MAX_SEGMENTS), and one IP
// datagram's payload in all (65535 - 20 - 8).
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65507
// Messages per sendmmsg call (the kernel caps a call at UIO_MAXIOV, 1024).
#define SEND_CHUNK 256
// recvmmsg batches handled per readable event before the loop runs timers again.
#define RECV_ROUNDS 8
// Verdicts per received slot (transfer/batch-socket.ts, BatchStatus).
#define V_UNCHECKED 0
#define V_MAC_OK 1
#define V_MAC_BAD 2
#define V_TRUNCATED 3

// From mac.c.
int clonecast_mac_state_valid(const uint8_t *state, size_t len);
void clonecast_mac_sign_raw(const uint8_t *state, uint8_t *buf, size_t len);
int clonecast_mac_verify_raw(const uint8_t *state, const uint8_t *buf, size_t len);
size_t clonecast_mac_state_size(void);

typedef struct {
  int fd;
  int gso;  // 1: try UDP_SEGMENT; 0: the kernel or the route refused it once
  int receiving, closing, closed, finalized;
  uv_poll_t poll;
  napi_env env;
  napi_ref callback, data_ref, meta_ref, resource;
  napi_async_context async;
  uint8_t *data;
  uint32_t slot, slots;
  uint32_t *meta;
  struct mmsghdr *rmsgs;
  struct iovec *riov;
  struct sockaddr_in *rnames;
  uint8_t *mac;  // a copy of a macKey state, or NULL
  uint32_t types;  // bit t: verify packets of type t
  struct out_msg *out;  // send arrays, made on the first batch
  struct mmsghdr *smsgs;
} udpb;

static napi_value ub_throw(napi_env env, const char *message) {
  napi_throw_type_error(env, ARG_ERROR_CODE, message);
  return NULL;
}

// Throws an Error like Node's fs errors ("CODE: description, syscall"; clonecast_native.c).
napi_value clonecast_throw_errno(napi_env env, int err, const char *syscall);

static void ub_free(udpb *u) {
  free(u->rmsgs);
  free(u->riov);
  free(u->rnames);
  free(u->mac);
  free(u->out);
  free(u->smsgs);
  free(u);
}

// The external was collected: free now if the descriptor is closed, else when it is.
static void ub_finalize(napi_env env, void *data, void *hint) {
  udpb *u = data;
  u->finalized = 1;
  if (u->closed) ub_free(u);
  else if (!u->receiving) {
    close(u->fd);
    ub_free(u);
  }
}

static udpb *ub_get(napi_env env, napi_value v) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  void *p;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  udpb *u = p;
  return u->closed || u->closing ? NULL : u;
}

static int ub_buffer(napi_env env, napi_value v, uint8_t **ptr, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return 0;
  void *d;
  if (napi_get_buffer_info(env, v, &d, len) != napi_ok) return 0;
  *ptr = d;
  return 1;
}

static int ub_u32array(napi_env env, napi_value v, uint32_t **ptr, size_t *count) {
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  napi_typedarray_type type;
  void *d;
  if (napi_get_typedarray_info(env, v, &type, count, &d, NULL, NULL) != napi_ok || type != napi_uint32_array) return 0;
  *ptr = d;
  return 1;
}

static int ub_uint(napi_env env, napi_value v, uint32_t max, uint32_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return 0;
  double d;
  napi_get_value_double(env, v, &d);
  if (!(d >= 0) || d > max || d != (double)(uint32_t)d) return 0;
  *out = (uint32_t)d;
  return 1;
}

static int ub_addr(napi_env env, napi_value v, struct in_addr *out) {
  char s[64];
  size_t len;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) return 0;
  napi_get_value_string_utf8(env, v, s, sizeof s, &len);
  if (len == 0) {
    out->s_addr = htonl(INADDR_ANY);
    return 1;
  }
  return inet_pton(AF_INET, s, out) == 1;
}

// A macKey state or null; -1 if neither.
static int ub_mac(napi_env env, napi_value v, uint8_t **state) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_null || t == napi_undefined) {
    *state = NULL;
    return 0;
  }
  size_t len;
  if (!ub_buffer(env, v, state, &len) || !clonecast_mac_state_valid(*state, len)) return -1;
  return 1;
}

// udpbOpen() -> external: a non-blocking UDP/IPv4 socket with SO_REUSEADDR, not yet bound.
static napi_value js_open(napi_env env, napi_callback_info info) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return clonecast_throw_errno(env, errno, "socket");
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    int err = errno;
    close(fd);
    return clonecast_throw_errno(env, err, "setsockopt(SO_REUSEADDR)");
  }
  udpb *u = calloc(1, sizeof *u);
  if (u == NULL) {
    close(fd);
    return clonecast_throw_errno(env, ENOMEM, "calloc");
  }
  u->fd = fd;
  u->gso = 1;
  napi_value result;
  if (napi_create_external(env, u, ub_finalize, NULL, &result) != napi_ok) {
    close(fd);
    free(u);
    return NULL;
  }
  return result;
}

// udpbBind(h, address ("" for any), port) -> the bound port.
static napi_value js_bind(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  struct sockaddr_in sa;
  uint32_t port;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  if (argc != 3 || (u = ub_get(env, argv[0])) == NULL || !ub_addr(env, argv[1], &sa.sin_addr) || !ub_uint(env, argv[2], 65535, &port)) {
    return ub_throw(env, "expected (socket: open external, address: dotted IPv4 or \"\", port: 0 to 65535)");
  }
  sa.sin_port = htons((uint16_t)port);
  if (bind(u->fd, (struct sockaddr *)&sa, sizeof sa) != 0) return clonecast_throw_errno(env, errno, "bind");
  socklen_t len = sizeof sa;
  if (getsockname(u->fd, (struct sockaddr *)&sa, &len) != 0) return clonecast_throw_errno(env, errno, "getsockname");
  napi_value result;
  napi_create_uint32(env, ntohs(sa.sin_port), &result);
  return result;
}

// udpbSetInt(h, option, value): 0 SO_RCVBUF, 1 SO_SNDBUF, 2 IP_MULTICAST_TTL, 3 IP_MULTICAST_LOOP.
static napi_value js_set_int(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  uint32_t which, value;
  if (argc != 3 || (u = ub_get(env, argv[0])) == NULL || !ub_uint(env, argv[1], 3, &which) || !ub_uint(env, argv[2], 1 << 30, &value)) {
    return ub_throw(env, "expected (socket: open external, option: 0 to 3, value: number)");
  }
  static const int levels[] = {SOL_SOCKET, SOL_SOCKET, IPPROTO_IP, IPPROTO_IP};
  static const int names[] = {SO_RCVBUF, SO_SNDBUF, IP_MULTICAST_TTL, IP_MULTICAST_LOOP};
  static const char *calls[] = {"setsockopt(SO_RCVBUF)", "setsockopt(SO_SNDBUF)", "setsockopt(IP_MULTICAST_TTL)", "setsockopt(IP_MULTICAST_LOOP)"};
  int v = (int)value;
  if (setsockopt(u->fd, levels[which], names[which], &v, sizeof v) != 0) return clonecast_throw_errno(env, errno, calls[which]);
  return NULL;
}

// udpbMulticastInterface(h, address): IP_MULTICAST_IF, the interface multicast leaves by.
static napi_value js_mcast_if(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  struct in_addr a;
  if (argc != 2 || (u = ub_get(env, argv[0])) == NULL || !ub_addr(env, argv[1], &a)) return ub_throw(env, "expected (socket: open external, address: dotted IPv4)");
  if (setsockopt(u->fd, IPPROTO_IP, IP_MULTICAST_IF, &a, sizeof a) != 0) return clonecast_throw_errno(env, errno, "setsockopt(IP_MULTICAST_IF)");
  return NULL;
}

// udpbMembership(h, group, interface address or ""): IP_ADD_MEMBERSHIP.
static napi_value js_membership(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  struct ip_mreq m;
  if (argc != 3 || (u = ub_get(env, argv[0])) == NULL || !ub_addr(env, argv[1], &m.imr_multiaddr) || !ub_addr(env, argv[2], &m.imr_interface)) {
    return ub_throw(env, "expected (socket: open external, group: dotted IPv4, interface: dotted IPv4 or \"\")");
  }
  if (setsockopt(u->fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m) != 0) return clonecast_throw_errno(env, errno, "setsockopt(IP_ADD_MEMBERSHIP)");
  return NULL;
}

// udpbSend(h, buffer, offset, length, port, address) -> 0, or the errno (not thrown:
// the caller counts a full queue like a lost packet).
static napi_value js_send(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  uint8_t *buf;
  size_t len;
  uint32_t off, n, port;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  if (argc != 6 || (u = ub_get(env, argv[0])) == NULL || !ub_buffer(env, argv[1], &buf, &len) || !ub_uint(env, argv[2], UINT32_MAX, &off) ||
      !ub_uint(env, argv[3], 65507, &n) || (size_t)off + n > len || !ub_uint(env, argv[4], 65535, &port) || !ub_addr(env, argv[5], &sa.sin_addr)) {
    return ub_throw(env, "expected (socket: open external, buffer, offset, length: 0 to 65507 within the buffer, port, address: dotted IPv4)");
  }
  sa.sin_port = htons((uint16_t)port);
  ssize_t r;
  do r = sendto(u->fd, buf + off, n, 0, (struct sockaddr *)&sa, sizeof sa);
  while (r < 0 && errno == EINTR);
  napi_value result;
  napi_create_int32(env, r < 0 ? errno : 0, &result);
  return result;
}

typedef struct out_msg {
  struct sockaddr_in name;
  struct iovec iov;
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } control;
  uint32_t packets;
} out_msg;

// Builds messages for packets [first, count) of meta; returns how many messages,
// and how many packets they cover in *covered.
static uint32_t build(udpb *u, uint8_t *buf, const uint32_t *meta, uint32_t first, uint32_t count, out_msg *out, struct mmsghdr *msgs, uint32_t max, uint32_t *covered) {
  uint32_t m = 0, i = first;
  while (i < count && m < max) {
    const uint32_t *p = meta + 4 * i;
    uint32_t run = 1, bytes = p[1];
    if (u->gso) {
      // Equal-sized packets to the same place, back to back in memory; the last may be shorter.
      while (i + run < count && run < GSO_MAX_SEGMENTS) {
        const uint32_t *q = meta + 4 * (i + run);
        if (q[2] != p[2] || q[3] != p[3] || q[0] != p[0] + bytes || q[1] > p[1] || bytes + q[1] > GSO_MAX_BYTES) break;
        if (meta[4 * (i + run - 1) + 1] != p[1]) break;  // only the last may be short
        bytes += q[1];
        run++;
      }
    }
    out_msg *o = out + m;
    memset(&o->name, 0, sizeof o->name);
    o->name.sin_family = AF_INET;
    o->name.sin_addr.s_addr = htonl(p[2]);
    o->name.sin_port = htons((uint16_t)p[3]);
    o->iov.iov_base = buf + p[0];
    o->iov.iov_len = bytes;
    o->packets = run;
    struct msghdr *h = &msgs[m].msg_hdr;
    memset(h, 0, sizeof *h);
    h->msg_name = &o->name;
    h->msg_namelen = sizeof o->name;
    h->msg_iov = &o->iov;
    h->msg_iovlen = 1;
    if (run > 1) {
      h->msg_control = o->control.buf;
      h->msg_controllen = sizeof o->control.buf;
      struct cmsghdr *c = CMSG_FIRSTHDR(h);
      c->cmsg_level = SOL_UDP;
      c->cmsg_type = UDP_SEGMENT;
      c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      uint16_t seg = (uint16_t)p[1];
      memcpy(CMSG_DATA(c), &seg, sizeof seg);
    }
    i += run;
    m++;
  }
  *covered = i - first;
  return m;
}

// udpbSendBatch(h, buffer, meta: Uint32Array, count, macState | null) -> packets sent.
// meta holds 4 numbers per packet: offset in buffer, length, IPv4 address (host
// order), port. With macState each packet's last 16 bytes are first set to the
// MAC of the bytes before them. Fewer than count sent: the socket's queue was
// full (EAGAIN, ENOBUFS) or the send failed; the rest were not sent.
static napi_value js_send_batch(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  uint8_t *buf, *mac;
  size_t len, metalen;
  uint32_t *meta, count;
  if (argc != 5 || (u = ub_get(env, argv[0])) == NULL || !ub_buffer(env, argv[1], &buf, &len) || !ub_u32array(env, argv[2], &meta, &metalen) ||
      !ub_uint(env, argv[3], UINT32_MAX, &count) || (size_t)count * 4 > metalen || ub_mac(env, argv[4], &mac) < 0) {
    return ub_throw(env, "expected (socket: open external, buffer, meta: Uint32Array of 4 per packet, count, macState: Buffer from macKey or null)");
  }
  for (uint32_t i = 0; i < count; i++) {
    const uint32_t *p = meta + 4 * i;
    if ((size_t)p[0] + p[1] > len || p[1] > 65507 || p[3] > 65535 || (mac != NULL && p[1] < MAC_BYTES)) {
      return ub_throw(env, "a packet of meta lies outside the buffer, is over 65507 bytes, is shorter than its MAC, or has a port over 65535");
    }
  }
  if (mac != NULL)
    for (uint32_t i = 0; i < count; i++) clonecast_mac_sign_raw(mac, buf + meta[4 * i], meta[4 * i + 1]);
  if (u->out == NULL) {
    u->out = calloc(SEND_CHUNK, sizeof *u->out);
    u->smsgs = calloc(SEND_CHUNK, sizeof *u->smsgs);
    if (u->out == NULL || u->smsgs == NULL) return clonecast_throw_errno(env, ENOMEM, "calloc");
  }
  out_msg *out = u->out;
  struct mmsghdr *msgs = u->smsgs;
  uint32_t sent = 0;
  while (sent < count) {
    uint32_t covered;
    uint32_t m = build(u, buf, meta, sent, count, out, msgs, SEND_CHUNK, &covered);
    int r;
    do r = sendmmsg(u->fd, msgs, m, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0 && u->gso && (errno == EIO || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOPROTOOPT) && out[0].packets > 1) {
      // This route or device takes no UDP GSO (a kernel without it, an MTU below the
      // segment, xfrm): one datagram per message from now on.
      u->gso = 0;
      continue;
    }
    if (r <= 0) break;
    for (int k = 0; k < r; k++) sent += out[k].packets;
    if ((uint32_t)r < m) break;  // the queue is full: the rest would fail the same way now
  }
  napi_value result;
  napi_create_uint32(env, sent, &result);
  return result;
}

// udpbGso(h) -> true while UDP GSO is used for runs of packets.
static napi_value js_gso(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  if (argc != 1 || (u = ub_get(env, argv[0])) == NULL) return ub_throw(env, "expected (socket: open external)");
  napi_value result;
  napi_get_boolean(env, u->gso != 0, &result);
  return result;
}

static void on_closed(uv_handle_t *h) {
  udpb *u = h->data;
  close(u->fd);
  u->closed = 1;
  if (u->finalized) ub_free(u);
}

// Reads what the socket holds, in batches, into the shared buffer; calls back once per batch.
static void on_readable(uv_poll_t *poll, int status, int events) {
  udpb *u = poll->data;
  if (u->closing) return;
  if (status < 0) {
    uv_poll_stop(poll);  // the poll itself failed: stop rather than be called again at once (the run ends by its timeout)
    return;
  }
  napi_env env = u->env;
  for (int round = 0; round < RECV_ROUNDS && !u->closing; round++) {
    for (uint32_t i = 0; i < u->slots; i++) {
      struct msghdr *h = &u->rmsgs[i].msg_hdr;
      h->msg_namelen = sizeof u->rnames[i];
      h->msg_flags = 0;
      h->msg_controllen = 0;
    }
    int n;
    do n = recvmmsg(u->fd, u->rmsgs, u->slots, MSG_DONTWAIT, NULL);
    while (n < 0 && errno == EINTR);
    if (n <= 0) return;  // EAGAIN: drained; any other error is the next read's, or the loop's
    for (int i = 0; i < n; i++) {
      uint32_t *m = u->meta + 4 * i;
      const uint8_t *d = u->data + (size_t)i * u->slot;
      uint32_t len = u->rmsgs[i].msg_len;
      m[0] = len;
      m[1] = ntohl(u->rnames[i].sin_addr.s_addr);
      m[2] = ntohs(u->rnames[i].sin_port);
      if ((u->rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len > u->slot) m[3] = V_TRUNCATED;
      else if (u->mac != NULL && len >= 6 + MAC_BYTES && d[5] < 32 && (u->types & (1u << d[5])))
        m[3] = clonecast_mac_verify_raw(u->mac, d, len) ? V_MAC_OK : V_MAC_BAD;
      else m[3] = V_UNCHECKED;
    }
    napi_handle_scope scope;
    napi_open_handle_scope(env, &scope);
    napi_value cb, resource, arg;
    napi_get_reference_value(env, u->callback, &cb);
    napi_get_reference_value(env, u->resource, &resource);
    napi_create_uint32(env, (uint32_t)n, &arg);
    napi_status st = napi_make_callback(env, u->async, resource, cb, 1, &arg, NULL);
    if (st == napi_pending_exception) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
    napi_close_handle_scope(env, scope);
    if ((uint32_t)n < u->slots) return;  // drained
  }
}

// udpbRecvStart(h, callback(count), data: Buffer, slotSize, meta: Uint32Array)
// Starts delivering datagrams: up to data.length / slotSize per callback, datagram i
// in data[i * slotSize, ...), meta[4i..4i+3] = length, source address (host order),
// source port, verdict (0 unchecked, 1 MAC good, 2 MAC bad, 3 truncated: longer than a slot).
// data and meta are written again for the next batch: copy what must outlive the callback.
static napi_value js_recv_start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  napi_valuetype t;
  uint8_t *data;
  size_t len, metalen;
  uint32_t slot, *meta;
  if (argc != 5 || (u = ub_get(env, argv[0])) == NULL || u->receiving || napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function ||
      !ub_buffer(env, argv[2], &data, &len) || !ub_uint(env, argv[3], 65536, &slot) || slot < 64 || len / slot < 1 || len / slot > 1024 ||
      !ub_u32array(env, argv[4], &meta, &metalen) || metalen < 4 * (len / slot)) {
    return ub_throw(env, "expected (socket: open external not receiving, callback, data: Buffer of 1 to 1024 slots, slotSize: 64 to 65536, meta: Uint32Array of 4 per slot)");
  }
  u->env = env;
  u->slot = slot;
  u->slots = (uint32_t)(len / slot);
  u->data = data;
  u->meta = meta;
  u->rmsgs = calloc(u->slots, sizeof *u->rmsgs);
  u->riov = calloc(u->slots, sizeof *u->riov);
  u->rnames = calloc(u->slots, sizeof *u->rnames);
  if (u->rmsgs == NULL || u->riov == NULL || u->rnames == NULL) return clonecast_throw_errno(env, ENOMEM, "calloc");
  for (uint32_t i = 0; i < u->slots; i++) {
    u->riov[i].iov_base = data + (size_t)i * slot;
    u->riov[i].iov_len = slot;
    u->rmsgs[i].msg_hdr.msg_iov = &u->riov[i];
    u->rmsgs[i].msg_hdr.msg_iovlen = 1;
    u->rmsgs[i].msg_hdr.msg_name = &u->rnames[i];
  }
  napi_value resource, name;
  napi_create_object(env, &resource);
  napi_create_string_utf8(env, "clonecast:udpBatch", NAPI_AUTO_LENGTH, &name);
  if (napi_async_init(env, resource, name, &u->async) != napi_ok) return NULL;
  napi_create_reference(env, resource, 1, &u->resource);
  napi_create_reference(env, argv[1], 1, &u->callback);
  napi_create_reference(env, argv[2], 1, &u->data_ref);
  napi_create_reference(env, argv[4], 1, &u->meta_ref);
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return ub_throw(env, "no event loop");
  int r = uv_poll_init_socket(loop, &u->poll, u->fd);
  if (r != 0) return clonecast_throw_errno(env, -r, "uv_poll_init_socket");
  u->poll.data = u;
  u->receiving = 1;
  r = uv_poll_start(&u->poll, UV_READABLE, on_readable);
  if (r != 0) return clonecast_throw_errno(env, -r, "uv_poll_start");
  return NULL;
}

// udpbSetVerify(h, macState | null, types: bitmask): from the next batch on, the MAC of
// datagrams whose type byte (offset 5) is t with bit t set in types is checked under macState.
static napi_value js_set_verify(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  uint8_t *mac;
  uint32_t types;
  if (argc != 3 || (u = ub_get(env, argv[0])) == NULL || ub_mac(env, argv[1], &mac) < 0 || !ub_uint(env, argv[2], UINT32_MAX, &types)) {
    return ub_throw(env, "expected (socket: open external, macState: Buffer from macKey or null, types: bitmask)");
  }
  if (mac != NULL && u->mac == NULL && (u->mac = malloc(clonecast_mac_state_size())) == NULL) return clonecast_throw_errno(env, ENOMEM, "malloc");
  if (mac != NULL) memcpy(u->mac, mac, clonecast_mac_state_size());
  else {
    free(u->mac);
    u->mac = NULL;
  }
  u->types = types;
  return NULL;
}

// udpbClose(h): stops receiving and closes the descriptor (after the poll handle closes).
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  udpb *u;
  if (argc != 1 || (u = ub_get(env, argv[0])) == NULL) return ub_throw(env, "expected (socket: open external)");
  u->closing = 1;
  if (u->receiving) {
    uv_poll_stop(&u->poll);
    napi_delete_reference(env, u->callback);
    napi_delete_reference(env, u->data_ref);
    napi_delete_reference(env, u->meta_ref);
    napi_delete_reference(env, u->resource);
    napi_async_destroy(env, u->async);
    uv_close((uv_handle_t *)&u->poll, on_closed);
  } else {
    close(u->fd);
    u->closed = 1;
  }
  return NULL;
}

#define UB_EXPORT(name, fn)                                           \
  do {                                                                \
    napi_value f;                                                     \
    napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &f);  \
    napi_set_named_property(env, exports, name, f);                   \
  } while (0)

// Adds the udpb* functions to exports.
void clonecast_udp_batch_init(napi_env env, napi_value exports) {
  UB_EXPORT("udpbOpen", js_open);
  UB_EXPORT("udpbBind", js_bind);
  UB_EXPORT("udpbSetInt", js_set_int);
  UB_EXPORT("udpbMulticastInterface", js_mcast_if);
  UB_EXPORT("udpbMembership", js_membership);
  UB_EXPORT("udpbSend", js_send);
  UB_EXPORT("udpbSendBatch", js_send_batch);
  UB_EXPORT("udpbGso", js_gso);
  UB_EXPORT("udpbRecvStart", js_recv_start);
  UB_EXPORT("udpbSetVerify", js_set_verify);
  UB_EXPORT("udpbClose", js_close);
}
