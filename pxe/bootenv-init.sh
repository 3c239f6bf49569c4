#!/bin/busybox sh
# /init of clonecast's network-boot environment (pxe/bootenv.ts builds it).
# Kernel command line: clonecast.server=URL clonecast.fingerprint=SHA256 [clonecast.token=CREDENTIAL] clonecast.mac=MAC
# (URL is the server's https:// address; SHA256 its certificate's fingerprint, which the agent pins;
# the iPXE script of `clonecast serve --pxe` writes them; the boot credential only for a
# machine the server names: without one the agent connects unverified).
/bin/busybox --install -s /bin
# /sbin first: the full tools bootenv build copies there (util-linux blkid and losetup, mkswap,
# partclone) win over busybox's applets of the same names, which lack options the agent uses.
export PATH=/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp

say() { echo "clonecast-boot: $*" > /dev/console; }
fail_wait() { say "$*"; say "retrying in 10 s (the server's dashboard shows this machine once it connects)"; sleep 10; }

for arg in $(cat /proc/cmdline); do
  case "$arg" in
    clonecast.server=*) SERVER="${arg#clonecast.server=}" ;;
    clonecast.fingerprint=*) FINGERPRINT="${arg#clonecast.fingerprint=}" ;;
    clonecast.token=*) TOKEN="${arg#clonecast.token=}" ;;
    clonecast.mac=*) MAC="${arg#clonecast.mac=}" ;;
    clonecast.shell=1) SHELL_ON_FAIL=1 ;;
  esac
done
say "$(cat /etc/clonecast-bootenv | tr '\n' ' ')"
# Whether the firmware booted this under Secure Boot (then modules must be signed: Debian's are).
say "$(dmesg | grep -m1 -iE 'secure ?boot (enabled|disabled)|secure boot could not be determined' | sed 's/^\[[^]]*\] *//')"
[ -n "$SERVER" ] || { say "no clonecast.server= on the kernel command line; boot this through clonecast serve --pxe"; exec sh; }
[ -n "$FINGERPRINT" ] || { say "no clonecast.fingerprint= on the kernel command line (the server's certificate); boot this through clonecast serve --pxe"; exec sh; }
# The credential goes to the agent in a file (never on its command line, where ps shows it); the agent
# keeps the machine's own secret, given on its first Hello, beside it for its later runs.
umask 077
CRED=""
if [ -n "$TOKEN" ]; then printf '%s\n' "$TOKEN" > /run/clonecast-credential; CRED="--token-file /run/clonecast-credential"; fi
unset TOKEN

# Drivers: load what the devices ask for, by their modaliases (modules.alias, written by depmod when the
# boot environment was built), pass after pass: a USB host controller's driver makes USB devices appear,
# an AHCI or SAS driver SCSI disks, a virtio transport virtio devices. Stop when 2 passes find nothing new.
T0="$(cut -d' ' -f1 /proc/uptime)"
SEEN=" "
quiet=0
pass=0
while [ $quiet -lt 2 ] && [ $pass -lt 20 ]; do
  new=""
  for f in /sys/bus/*/devices/*/modalias; do
    [ -r "$f" ] || continue
    a="$(cat "$f" 2>/dev/null)"
    [ -n "$a" ] || continue
    case "$SEEN" in *" $a "*) continue ;; esac
    SEEN="$SEEN$a "
    new="$new $a"
  done
  # One modprobe for all of a pass's new devices: it reads modules.alias once.
  [ -n "$new" ] && modprobe -qa $new 2>/dev/null
  if [ -z "$new" ]; then quiet=$((quiet + 1)); else quiet=0; fi
  pass=$((pass + 1))
  sleep 0.5
done
say "drivers: $(wc -l < /proc/modules) modules loaded for the devices' modaliases in $pass passes (uptime $T0 s to $(cut -d' ' -f1 /proc/uptime) s)"
# What finishing a disk loads by name, not by a device: loop devices over partitions, XFS and btrfs mounts.
modprobe -qa loop xfs btrfs 2>/dev/null
# The drivers bound along a device's path in /sys/devices, nearest first, and its PCI (or USB) address.
drivers_of() {
  local p drv
  p="$(readlink -f "$1")"; DRV=""; BUSID=""
  while [ -n "$p" ] && [ "$p" != /sys/devices ] && [ "$p" != /sys ]; do
    if [ -e "$p/driver" ]; then
      drv="$(basename "$(readlink "$p/driver")")"
      case " $DRV " in *" $drv "*) ;; *) DRV="${DRV:+$DRV }$drv" ;; esac
      case "${p##*/}" in
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:*) BUSID="${p##*/}"; break ;;
      esac
    fi
    p="${p%/*}"
  done
}
for d in /sys/class/net/*; do
  [ -e "$d/device" ] || continue
  drivers_of "$d/device"; say "network ${d##*/} ${BUSID:-?} ${DRV:-no driver} $(cat "$d/address")"
done
for d in /sys/block/*; do
  case "${d##*/}" in loop*|ram*|zram*|sr*|fd*) continue ;; esac
  [ -e "$d/device" ] || continue
  drivers_of "$d/device"; say "disk ${d##*/} ${BUSID:-?} ${DRV:-no driver} $(( $(cat "$d/size") / 2048 )) MiB"
done

# The interface the machine booted from (its MAC), else the first Ethernet one.
IFACE=""
i=0
while [ -z "$IFACE" ] && [ $i -lt 50 ]; do
  for d in /sys/class/net/*; do
    n="${d##*/}"
    [ "$n" = lo ] && continue
    if [ -z "$MAC" ] || [ "$(cat "$d/address")" = "$MAC" ]; then IFACE="$n"; break; fi
  done
  [ -z "$IFACE" ] && { sleep 0.2; i=$((i + 1)); }
done
[ -n "$IFACE" ] || { say "no network card found (MAC ${MAC:-any}); this kernel may lack its driver"; exec sh; }
[ -n "$MAC" ] || MAC="$(cat /sys/class/net/$IFACE/address)"
hostname "pc-$(echo "$MAC" | tr -d : | cut -c7-12)"
ip link set lo up
ip link set "$IFACE" up

until udhcpc -i "$IFACE" -t 5 -T 2 -n -q -s /etc/udhcpc.script > /dev/null 2>&1; do
  fail_wait "no DHCP answer on $IFACE ($MAC)"
done
say "network up on $IFACE: $(cat /run/clonecast-ip) ($MAC); server $SERVER"

while true; do
  node /opt/clonecast/bin/clonecast agent --server "$SERVER" --fingerprint "$FINGERPRINT" $CRED --secret-file /run/clonecast-secret --machine-id "$MAC" \
    --disk auto --once --power-exit --data /tmp/clonecast
  code=$?
  case $code in
    0) say "done and verified; waiting for more work" ;;
    10) say "done and verified; rebooting"; sync; reboot -f ;;
    11) say "done and verified; powering off"; sync; poweroff -f ;;
    *)
      [ -n "$SHELL_ON_FAIL" ] && { say "the agent failed (exit $code); a shell for you (clonecast.shell=1)"; sh; }
      fail_wait "the agent failed (exit $code)" ;;
  esac
done
