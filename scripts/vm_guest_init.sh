#!/bin/sh
# /init of scripts/arm64_vm.sh's emulated arm64 machine: mounts what a container runtime's
# host has, loads the netfilter modules the images' rules use, runs scripts/vm_guest.py and
# powers the machine off (the host reads the result from the serial console).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/netns /run/lock
ip link set lo up
# ip_tables and ip6_tables: iptables-legacy loads them with modprobe, which the images lack;
# the rest the kernel loads on demand (nf_tables expressions, xt matches and targets).
for m in veth ip_tables ip6_tables iptable_nat iptable_mangle iptable_raw iptable_filter \
    ip6table_nat ip6table_mangle ip6table_raw ip6table_filter nf_tables nft_compat; do
    modprobe "$m" || echo "VMTEST note: modprobe $m failed"
done
echo "VMTEST kernel $(uname -r) $(uname -m), $(nproc) CPUs"
python3 /vm_guest.py /cases.json
echo "VMTEST exit status $?"
sync
echo o >/proc/sysrq-trigger
sleep 30
