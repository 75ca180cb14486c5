//! Memory hotplug through virtio-mem: `skvm ctl SOCKET mem-add SIZE` backs
//! more of the region, gives every device process a new sandbox with the
//! new memory map, and only then lets the guest plug it. The guest's
//! MemTotal grows; each device process maps exactly the memory that is
//! backed; a blk copy through a 64 MiB buffer that the guest allocates
//! after the hotplug (above 4 GiB, where user pages go first) lands in the
//! new memory and arrives whole; rng reads still work; bad sizes are
//! refused.
//!
//! Guest scripts use shell builtins and one command at a time (see
//! docs/ARCHITECTURE.md, "Concurrent processes on one vCPU").

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use guest_tests::{ctl, device_pids, device_status, field, Scratch, TestVm, MIB};

const TIMEOUT: Duration = Duration::from_secs(900);
const PAGE: usize = 4096;

/// Mappings of guest memory (memfds) in process `pid`.
fn memory_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:skvm-guest-ram"))
        .count()
}

/// The contents of skvm's guest memory memfds of `size` bytes.
fn memfds_of_size(skvm: u32, size: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{skvm}/fd")).unwrap() {
        let path = e.unwrap().path();
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        if !target.to_string_lossy().contains("memfd:skvm-guest-ram") {
            continue;
        }
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        if f.metadata().unwrap().len() != size {
            continue;
        }
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        out.push(data);
    }
    out
}

#[test]
fn mem_add_grows_the_guest_and_rebuilds_every_device_with_the_new_memory() {
    let s = Scratch::new("hotplug", "grow");
    let sock = s.path("ctl.sock");
    let target = s.blank("target.img", 64 * MIB);
    let source = s.pattern("source.img", 64 * MIB, 9);
    // Wait for MemTotal to grow by 400 MB, then copy through a 64 MiB
    // buffer (allocated now, so from the new memory) and read the rng.
    let script = "b=0; while read k v u; do [ \"$k\" = MemTotal: ] && b=$v; done < /proc/meminfo; \
                  echo SKVM-MEM-BOOT $b; echo SKVM-READY; n=$b; \
                  while [ $n -lt $((b + 400000)) ]; do sleep 1; \
                  while read k v u; do [ \"$k\" = MemTotal: ] && n=$v; done < /proc/meminfo; done; \
                  echo SKVM-MEM-AFTER $n; \
                  dd if=/dev/vdb of=/dev/vda bs=64M iflag=direct oflag=direct 2>/dev/null; \
                  echo SKVM-COPY $?; \
                  dd if=/dev/hwrng of=/tmp/r bs=4096 count=4 2>/dev/null; echo SKVM-RNG $?; \
                  echo SKVM-DONE; while true; do sleep 1; done";
    let args = [
        "run".to_owned(),
        "--mem".to_owned(),
        "128M".to_owned(),
        "--hotplug-mem".to_owned(),
        "512M".to_owned(),
        "--rng".to_owned(),
        "--disk".to_owned(),
        target.display().to_string(),
        "--disk".to_owned(),
        format!("{},ro", source.display()),
        "--ctl".to_owned(),
        sock.display().to_string(),
        "--run".to_owned(),
        script.to_owned(),
    ];
    let mut vm = TestVm::spawn(&args);
    vm.wait_for("SKVM-READY", TIMEOUT);
    for name in ["blk0", "blk1", "rng0"] {
        let pid = device_pids(vm.pid(), name)[0];
        assert_eq!(memory_mappings(pid), 1, "{name} before mem-add");
    }

    // Sizes that cannot be added are refused; nothing changes.
    for bad in ["100M", "1G"] {
        let (code, e) = ctl(&sock, &format!("mem-add {bad}"));
        assert_eq!(code, 1, "{bad}: {e}");
    }
    for _ in 0..2 {
        let (code, a) = ctl(&sock, "mem-add 256M");
        assert_eq!(code, 0, "{a}");
        assert_eq!(a["added"], 256 * MIB);
        assert_eq!(a["devices"], 4, "{a}");
        assert!(a["longest_pause_us"].is_u64(), "{a}");
    }
    let (code, e) = ctl(&sock, "mem-add 128M");
    assert_eq!(code, 1, "past --hotplug-mem: {e}");
    let (_, st) = ctl(&sock, "status");
    assert_eq!(st["hotplugged"], 512 * MIB, "{st}");
    // Every device process is new (restarted twice) and maps boot RAM and
    // the two added regions, no more.
    for name in ["blk0", "blk1", "rng0"] {
        let d = device_status(&st, name);
        assert_eq!(d["restarts"], 2, "{st}");
        let pid = u32::try_from(d["pid"].as_u64().unwrap()).unwrap();
        assert_eq!(memory_mappings(pid), 3, "{name} after mem-add");
    }

    vm.wait_for("SKVM-DONE", TIMEOUT);
    let out = vm.output();
    let boot: u64 = field(&out, "SKVM-MEM-BOOT").unwrap().parse().unwrap();
    let after: u64 = field(&out, "SKVM-MEM-AFTER").unwrap().parse().unwrap();
    // 512 MiB is 524288 KiB; the kernel keeps some for the new memmap.
    assert!(after >= boot + 480_000, "MemTotal {boot} -> {after} KiB");
    assert_eq!(field(&out, "SKVM-COPY").as_deref(), Some("0"), "{out}");
    assert_eq!(field(&out, "SKVM-RNG").as_deref(), Some("0"), "{out}");
    let want = std::fs::read(&source).unwrap();
    assert!(std::fs::read(&target).unwrap() == want, "copy corrupted");
    // The copy's buffer sat in the added memory: pages of the pattern are
    // there.
    let pages: HashSet<&[u8]> = want.chunks(PAGE).collect();
    let found: usize = memfds_of_size(vm.pid(), 256 * MIB)
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
    let mut vm = TestVm::spawn([
        "run",
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
