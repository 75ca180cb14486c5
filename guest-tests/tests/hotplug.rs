//! Memory hotplug through virtio-mem: `skvm ctl SOCKET mem-add SIZE` backs
//! more of the region, gives every device process a new sandbox with the
//! new memory map, and only then lets the guest plug it. The guest's
//! MemTotal grows; each device process maps exactly the memory that is
//! backed; then every device does I/O through memory the guest allocates
//! after the hotplug (above 4 GiB, in the zone the guest allocates from
//! first): a blk copy through a 32 MiB buffer arrives whole and its pages
//! are found in the new memory; a TCP round trip on net arrives whole and
//! every receive buffer the driver posted sits in the new memory; the rng
//! driver, bound again, puts its rings there and reads work. Where buffers
//! sit is read from outside: descriptor tables (at the addresses `skvm ctl
//! status` gives) in skvm's memfds, each named with its guest address.
//! Bad sizes are refused.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use guest_tests::{
    booted, booted_with, ctl, device_pids, device_status, field, md5, pattern, skvm_bin,
    tcp_round_trip, Netns, Scratch, GUEST_IP, HOST_IP, MIB,
};

const TIMEOUT: Duration = Duration::from_secs(900);
const PAGE: usize = 4096;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
const TAP: &str = "skvmh0";
/// Sent to the guest and back after the hotplug.
const NET_BYTES: usize = 1 << 20;
/// The devices the VM has besides mem0.
const DEVICES: [&str; 4] = ["blk0", "blk1", "rng0", "net0"];

/// Mappings of guest memory (memfds) in process `pid`.
fn memory_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:skvm-guest-ram"))
        .count()
}

/// Guest memory read from outside, through skvm's memfds: boot RAM (file
/// offset = guest address, for RAM under 3 GiB) and each hotplugged region,
/// whose memfd is named with its guest address.
struct GuestMemory {
    /// (guest address, memfd, hotplugged)
    regions: Vec<(u64, std::fs::File, bool)>,
}

impl GuestMemory {
    fn of(skvm: u32) -> Self {
        let mut regions = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{skvm}/fd")).unwrap() {
            let path = e.unwrap().path();
            let Ok(target) = std::fs::read_link(&path) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            let Some(rest) = target.strip_prefix("/memfd:skvm-guest-ram") else {
                continue;
            };
            let (addr, hot) = match rest.strip_prefix("@0x") {
                Some(hex) => (
                    u64::from_str_radix(hex.split(' ').next().unwrap(), 16).unwrap(),
                    true,
                ),
                None => (0, false),
            };
            regions.push((addr, std::fs::File::open(&path).unwrap(), hot));
        }
        Self { regions }
    }

    /// The region holding `addr`: (its memfd, offset in it, hotplugged).
    fn find(&self, addr: u64) -> Option<(&std::fs::File, u64, bool)> {
        self.regions.iter().find_map(|(base, f, hot)| {
            let len = f.metadata().unwrap().len();
            (addr >= *base && addr - base < len).then(|| (f, addr - base, *hot))
        })
    }

    fn read(&self, addr: u64, buf: &mut [u8]) {
        let (f, off, _) = self.find(addr).unwrap_or_else(|| panic!("{addr:#x}"));
        f.read_exact_at(buf, off).unwrap();
    }

    fn hotplugged(&self, addr: u64) -> bool {
        self.find(addr).is_some_and(|(_, _, hot)| hot)
    }

    /// Every hotplugged region's contents.
    fn hotplugged_contents(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (_, f, hot) in &self.regions {
            if *hot {
                let mut data = Vec::new();
                (&*f).read_to_end(&mut data).unwrap();
                out.push(data);
            }
        }
        out
    }

    /// The guest addresses of the buffers in the descriptor table of queue
    /// `q` (a queue in `skvm ctl status`): every entry the driver has
    /// filled, through indirect tables.
    fn buffers(&self, q: &serde_json::Value) -> Vec<u64> {
        let desc = q["desc"].as_u64().unwrap();
        let size = q["size"].as_u64().unwrap();
        let mut out = Vec::new();
        let mut d = [0u8; 16];
        for i in 0..size {
            self.read(desc + 16 * i, &mut d);
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            if addr == 0 {
                continue;
            }
            if flags & VIRTQ_DESC_F_INDIRECT == 0 {
                out.push(addr);
                continue;
            }
            for j in 0..u64::from(len / 16) {
                let mut e = [0u8; 16];
                self.read(addr + 16 * j, &mut e);
                out.push(u64::from_le_bytes(e[0..8].try_into().unwrap()));
            }
        }
        out
    }

    /// How many of the buffers of `device`'s queue `index` sit in
    /// hotplugged memory, of how many.
    fn buffers_in_new_memory(
        &self,
        st: &serde_json::Value,
        device: &str,
        index: u64,
    ) -> (usize, usize) {
        let d = device_status(st, device);
        let q = d["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["index"] == index)
            .unwrap_or_else(|| panic!("{device} has no queue {index}: {st}"));
        let all = self.buffers(q);
        let new = all.iter().filter(|a| self.hotplugged(**a)).count();
        (new, all.len())
    }
}

#[test]
fn mem_add_grows_the_guest_and_rebuilds_every_device_with_the_new_memory() {
    let s = Scratch::new("hotplug", "grow");
    let sock = s.path("ctl.sock");
    let target = s.blank("target.img", 32 * MIB);
    let source = s.pattern("source.img", 32 * MIB, 9);
    let ns = Netns::new("hotplug");
    ns.tap(TAP, 1500);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    // Wait for MemTotal to grow by 200 MB, then use every device with
    // buffers allocated now, so from the new memory: the rng driver is
    // unbound; blk copies through a 32 MiB buffer; net receives a file and
    // sends it back; the rng driver is bound again (new rings and buffer)
    // and read.
    let script = format!(
        "b=0; while read k v u; do [ \"$k\" = MemTotal: ] && b=$v; done < /proc/meminfo; \
         echo SKVM-MEM-BOOT $b; echo SKVM-READY; n=$b; \
         while [ $n -lt $((b + 200000)) ]; do sleep 1; \
         while read k v u; do [ \"$k\" = MemTotal: ] && n=$v; done < /proc/meminfo; done; \
         echo SKVM-MEM-AFTER $n; \
         d=/sys/bus/virtio/drivers/virtio_rng; for r in $d/virtio*; do r=${{r##*/}}; done; \
         echo $r > $d/unbind; \
         dd if=/dev/vdb of=/dev/vda bs=32M iflag=direct oflag=direct 2>/dev/null; \
         echo SKVM-COPY $?; \
         ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; \
         nc -l -p 5001 > /tmp/in; md5sum /tmp/in; nc {HOST_IP} 5002 < /tmp/in; echo SKVM-NET $?; \
         echo $r > $d/bind; echo SKVM-REBIND $?; \
         dd if=/dev/hwrng of=/tmp/r bs=4096 count=4 2>/dev/null; echo SKVM-RNG $?; \
         echo SKVM-DONE; while true; do sleep 1; done"
    );
    let source_ro = format!("{},ro", source.display());
    let tap = format!("tap={TAP}");
    let mut vm = booted_with(
        || ns.exec(skvm_bin().to_str().unwrap()),
        [
            "--mem",
            "128M",
            "--hotplug-mem",
            "256M",
            "--rng",
            "--disk",
            target.to_str().unwrap(),
            "--disk",
            &source_ro,
            "--net",
            &tap,
            "--ctl",
            sock.to_str().unwrap(),
            "--run",
            &script,
        ],
    );
    vm.wait_for("SKVM-READY", TIMEOUT);
    for name in DEVICES {
        let pid = device_pids(vm.pid(), name)[0];
        assert_eq!(memory_mappings(pid), 1, "{name} before mem-add");
    }

    // Sizes that cannot be added are refused; nothing changes.
    for bad in ["100M", "512M"] {
        let (code, e) = ctl(&sock, &format!("mem-add {bad}"));
        assert_eq!(code, 1, "{bad}: {e}");
    }
    for _ in 0..2 {
        let (code, a) = ctl(&sock, "mem-add 128M");
        assert_eq!(code, 0, "{a}");
        assert_eq!(a["added"], 128 * MIB);
        assert_eq!(a["devices"], DEVICES.len() + 1, "{a}");
        assert!(a["longest_pause_us"].is_u64(), "{a}");
    }
    let (code, e) = ctl(&sock, "mem-add 128M");
    assert_eq!(code, 1, "past --hotplug-mem: {e}");
    let (_, st) = ctl(&sock, "status");
    assert_eq!(st["hotplugged"], 256 * MIB, "{st}");
    // Every device process is new (restarted twice) and maps boot RAM and
    // the two added regions, no more.
    for name in DEVICES {
        let d = device_status(&st, name);
        assert_eq!(d["restarts"], 2, "{st}");
        let pid = u32::try_from(d["pid"].as_u64().unwrap()).unwrap();
        assert_eq!(memory_mappings(pid), 3, "{name} after mem-add");
    }

    let data = pattern(NET_BYTES);
    let ((), back) = tcp_round_trip(&ns, data.clone(), || ());
    vm.wait_for("SKVM-DONE", TIMEOUT);
    let out = vm.output();
    let boot: u64 = field(&out, "SKVM-MEM-BOOT").unwrap().parse().unwrap();
    let after: u64 = field(&out, "SKVM-MEM-AFTER").unwrap().parse().unwrap();
    // 256 MiB is 262144 KiB; the kernel keeps some for the new memmap.
    assert!(after >= boot + 240_000, "MemTotal {boot} -> {after} KiB");
    for marker in ["SKVM-COPY", "SKVM-REBIND", "SKVM-RNG", "SKVM-NET"] {
        assert_eq!(field(&out, marker).as_deref(), Some("0"), "{marker}: {out}");
    }
    let want = std::fs::read(&source).unwrap();
    assert!(std::fs::read(&target).unwrap() == want, "copy corrupted");
    assert!(out.contains(&format!("{}  /tmp/in", md5(&data))), "{out}");
    assert!(back == data, "net data came back different");

    // Where the buffers were, read from outside in the guest's memory.
    let (_, st) = ctl(&sock, "status");
    let mem = GuestMemory::of(vm.pid());
    // net: every receive buffer the driver has posted (all refilled during
    // the transfer, from pages the guest allocates after the hotplug) is in
    // the added memory. (The transmit table holds only the last few frames
    // sent, small headers in slab objects the guest may have had before.)
    let (new, all) = mem.buffers_in_new_memory(&st, "net0", 0);
    assert!(
        all >= 128 && new == all,
        "net0 rx: {new} of {all} buffers in the added memory"
    );
    let (new, all) = mem.buffers_in_new_memory(&st, "net0", 1);
    eprintln!("net0 tx: {new} of {all} buffers in the added memory");
    // rng: the driver, unbound before the blk copy and the transfer and
    // bound again after them, put its rings in the added memory, and reads
    // went through them. Its 64-byte buffer is a slab object: the churn in
    // between makes it likely, not certain, that it is a new one.
    let (new, all) = mem.buffers_in_new_memory(&st, "rng0", 0);
    eprintln!("rng0: {new} of {all} buffers in the added memory");
    let rng = device_status(&st, "rng0");
    for ring in ["desc", "avail", "used"] {
        let addr = rng["queues"][0][ring].as_u64().unwrap();
        assert!(mem.hotplugged(addr), "rng0 {ring} ring at {addr:#x}: {st}");
    }
    // The blk copy's buffer sat in the added memory: pages of the pattern
    // are there.
    let pages: HashSet<&[u8]> = want.chunks(PAGE).collect();
    let found: usize = mem
        .hotplugged_contents()
        .iter()
        .map(|m| m.chunks(PAGE).filter(|p| pages.contains(p)).count())
        .sum();
    assert!(
        found >= 1024,
        "only {found} pages of the copied data are in the added memory"
    );
    let (code, _) = ctl(&sock, "shutdown");
    assert_eq!(code, 0);
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(f.code(), 0, "{}", f.output);
}

#[test]
fn mem_add_without_room_is_refused() {
    let s = Scratch::new("hotplug", "none");
    let sock = s.path("ctl.sock");
    // The rng tests' machine, started from its snapshot.
    let mut vm = booted([
        "--rng",
        "--ctl",
        sock.to_str().unwrap(),
        "--run",
        "echo SKVM-READY; while true; do sleep 1; done",
    ]);
    vm.wait_for("SKVM-READY", TIMEOUT);
    let (code, e) = ctl(&sock, "mem-add 128M");
    assert_eq!(code, 1);
    assert!(
        e["error"].as_str().unwrap().contains("--hotplug-mem"),
        "{e}"
    );
    let f = guest_tests::run_to_exit(&["--hotplug-mem", "100M", "--run", "true"], TIMEOUT);
    assert_eq!(f.code(), 1, "{}", f.output);
    assert!(f.output.contains("invalid --hotplug-mem"), "{}", f.output);
}

#[test]
fn mem_add_with_a_share_mounted_leaves_it_usable() {
    let s = Scratch::new("hotplug", "fs");
    let sock = s.path("ctl.sock");
    let share = s.path("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("from-host.txt"), "before").unwrap();
    let (uid, gid) = guest_tests::outside_ids();
    std::os::unix::fs::chown(&share, Some(uid), Some(gid)).unwrap();
    // The share is mounted and used before the memory comes, the shell's
    // working directory in it and a file open on fd 3; after it (the
    // device process rebuilt, its node and file tables carried over) the
    // same directory, fd and paths are used again, 8 MiB written through
    // buffers the guest allocates from new memory.
    let script = "mkdir -p /mnt/s; mount -t virtiofs work /mnt/s; mkdir /mnt/s/sub; \
                  echo kept > /mnt/s/sub/open.txt; cd /mnt/s/sub; exec 3< open.txt; \
                  echo SKVM-BEFORE $(cat /mnt/s/from-host.txt); \
                  b=0; while read k v u; do [ \"$k\" = MemTotal: ] && b=$v; done < /proc/meminfo; \
                  echo SKVM-READY; n=$b; \
                  while [ $n -lt $((b + 100000)) ]; do sleep 1; \
                  while read k v u; do [ \"$k\" = MemTotal: ] && n=$v; done < /proc/meminfo; done; \
                  echo SKVM-AFTER $(cat /mnt/s/from-host.txt); \
                  echo SKVM-CWD $(ls); echo SKVM-FD $(cat <&3); \
                  dd if=/dev/zero of=/mnt/s/made bs=1M count=8 oflag=direct 2>/dev/null; \
                  echo SKVM-WRITE $?; echo SKVM-DONE";
    // The fs tests' machine, started from the same snapshot.
    let keep = s.path("keep");
    std::fs::create_dir_all(&keep).unwrap();
    let mut args = guest_tests::share_machine(&share, &keep);
    args.extend(["--ctl", sock.to_str().unwrap(), "--run", script].map(String::from));
    let mut vm = booted(&args);
    vm.wait_for("SKVM-READY", TIMEOUT);
    let (code, a) = ctl(&sock, "mem-add 128M");
    assert_eq!(code, 0, "{a}");
    vm.wait_for("SKVM-DONE", TIMEOUT);
    let out = vm.output();
    assert!(out.contains("SKVM-BEFORE before"), "{out}");
    assert!(out.contains("SKVM-AFTER before"), "{out}");
    assert!(out.contains("SKVM-CWD open.txt"), "{out}");
    assert!(out.contains("SKVM-FD kept"), "{out}");
    assert_eq!(field(&out, "SKVM-WRITE").as_deref(), Some("0"), "{out}");
    assert_eq!(
        std::fs::metadata(share.join("made")).unwrap().len(),
        8 * MIB
    );
    let (_, st) = ctl(&sock, "status");
    assert_eq!(device_status(&st, "fs0")["restarts"], 1, "{st}");
    let (code, _) = ctl(&sock, "shutdown");
    assert_eq!(code, 0);
    let f = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(f.code(), 0, "{}", f.output);
}
