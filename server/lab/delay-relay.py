#!/usr/bin/python3
"""Layer-2 delay relay for the clonecast lab (this kernel has no netem).

Forwards every Ethernet frame between two interfaces of its network
namespace, each one DELAY_MS later, in both directions, in order.

usage: delay-relay.py IFACE_A IFACE_B DELAY_MS
Runs until killed.
"""
import collections
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def open_raw(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
    return s


def main():
    a_name, b_name, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
    delay = delay_ms / 1000.0
    a, b = open_raw(a_name), open_raw(b_name)
    peer = {a: b, b: a}
    queue = collections.deque()  # (due time, output socket, frame), in arrival order
    while True:
        timeout = None
        if queue:
            timeout = max(0.0, queue[0][0] - time.monotonic())
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for s in readable:
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own transmission, seen again on this socket
                queue.append((now + delay, peer[s], frame))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, out, frame = queue.popleft()
            try:
                out.send(frame)
            except OSError:
                pass  # a full queue drops the frame, as a congested link would


if __name__ == '__main__':
    main()
