//! Guest memory in the host's 2 MiB pages (`skvm run --hugepages`): the test
//! grows the host's pool of huge pages for itself (and puts it back).
//! `skvm drive --hugepages` serves a disk from them; a guest boots in
//! them, its disk and rng device processes serve it through huge-page
//! mappings, memory added with `skvm ctl mem-add` is in huge pages too, a
//! mem-add the pool cannot hold is refused with the guest unharmed, and a
//! snapshot of it restores into huge pages with the guest's memory as it
//! was; at the end every page is back in the pool. Memory that is not whole
//! huge pages, or a pool too small, is refused at once with one line and
//! exit status 1.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use guest_tests::{code_and_text, ctl, device_pids, field, md5, skvm_bin, Scratch, TestVm, MIB};

const TIMEOUT: Duration = Duration::from_secs(600);
/// The host's pool of 2 MiB pages.
const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
/// 2 MiB pages in 128 MiB.
const PAGES_128M: u64 = 64;

fn pool(name: &str) -> u64 {
    std::fs::read_to_string(format!("{POOL}/{name}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Pages of the pool in use or promised to a mapping.
fn taken() -> u64 {
    pool("nr_hugepages") - pool("free_hugepages") + pool("resv_hugepages")
}

/// The pool grown by `extra` pages for the test; shrunk back when dropped
/// (also when the test fails).
struct Grown {
    before: u64,
}

impl Grown {
    fn by(extra: u64) -> Self {
        let before = pool("nr_hugepages");
        std::fs::write(format!("{POOL}/nr_hugepages"), (before + extra).to_string()).unwrap();
        let now = pool("nr_hugepages");
        let grown = Self { before };
        assert_eq!(
            now,
            before + extra,
            "the host could not make {extra} more 2 MiB pages"
        );
        grown
    }
}

impl Drop for Grown {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("{POOL}/nr_hugepages"), self.before.to_string());
    }
}

/// The page size of each of process `pid`'s mappings of guest memory, in
/// KiB: (boot RAM's, every added region's).
fn ram_page_kib(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut boot, mut added) = (Vec::new(), Vec::new());
    let mut current: Option<bool> = None;
    for l in smaps.lines() {
        if l.contains("memfd:skvm-guest-ram") {
            current = Some(l.contains("skvm-guest-ram@"));
        } else if l.split_whitespace().count() > 2 && l.contains('-') && !l.contains(':') {
            current = None;
        } else if let (Some(hot), Some(v)) = (current, l.strip_prefix("KernelPageSize:")) {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap();
            if hot { &mut added } else { &mut boot }.push(kib);
            current = None;
        }
    }
    (boot, added)
}

/// Some mappings, all of 2 MiB pages.
fn all_huge(page_kib: &[u64]) -> bool {
    !page_kib.is_empty() && page_kib.iter().all(|&k| k == 2048)
}

/// The guest: reads 1 MiB of its disk with O_DIRECT and 4 KiB of its rng,
/// waits for memory to be added, then prints a line with a mark it keeps
/// in memory and its MemTotal every second until stopped.
const SCRIPT: &str = "mem() { awk '/MemTotal/ {print $2}' /proc/meminfo; }; \
    d=$(dd if=/dev/vda bs=4096 count=256 iflag=direct 2>/dev/null | md5sum); \
    echo \"SKVM-DISK ${d%% *}\"; echo SKVM-RNG $(head -c 4096 /dev/hwrng | wc -c); \
    m=$(mem); echo SKVM-UP $m; while [ $(mem) -le $m ]; do sleep 1; done; \
    echo huge-$m > /tmp/mark; \
    while true; do echo \"SKVM-MARK $(cat /tmp/mark) $(mem)\"; sleep 1; done";

/// What the guest's last SKVM-MARK line says: its mark and MemTotal.
fn last_mark(out: &str) -> String {
    out.lines()
        .rev()
        .find_map(|l| l.split("SKVM-MARK ").nth(1))
        .unwrap_or_else(|| panic!("no mark:\n{out}"))
        .trim()
        .to_owned()
}

fn vm_args(disk: &Path, sock: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["run", "--hugepages", "--hotplug-mem", "1G", "--rng"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    a.extend(["--disk".into(), disk.display().to_string()]);
    a.extend(["--ctl".into(), sock.display().to_string()]);
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

#[test]
fn a_guest_in_huge_pages_boots_grows_and_restores_and_gives_every_page_back() {
    // Boot RAM and one mem-add, and two pages to spare: a second mem-add
    // does not fit.
    let _pool = Grown::by(2 * PAGES_128M + 2);
    let before = taken();
    let s = Scratch::new("hugepages", "grow");
    let disk = s.pattern("disk.img", MIB, 7);
    let want = md5(&std::fs::read(&disk).unwrap());
    let sock = s.path("ctl.sock");
    let dir = s.path("snap");

    // `skvm drive --hugepages`: its memory (66 MiB, 33 pages) is taken
    // from the pool while it runs, and given back.
    let mut drive = Command::new(skvm_bin())
        .args([
            "drive",
            "--hugepages",
            "--device",
            "blk0",
            "--op",
            "randread",
        ])
        .args(["--depth", "8", "--requests", "400000", "--disk"])
        .arg(&disk)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut most = 0;
    while drive.try_wait().unwrap().is_none() {
        most = most.max(taken().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = drive.wait_with_output().unwrap();
    let (code, text) = code_and_text(&out);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("requests=400000"), "{text}");
    assert_eq!(most, 33, "pages drive took from the pool:\n{text}");
    assert_eq!(taken(), before, "drive kept pages");

    let mut vm = TestVm::spawn(vm_args(&disk, &sock, &["--mem", "128M", "--run", SCRIPT]));
    vm.wait_for("SKVM-UP", TIMEOUT);
    let out = vm.output();
    assert_eq!(
        field(&out, "SKVM-DISK").as_deref(),
        Some(want.as_str()),
        "{out}"
    );
    assert_eq!(field(&out, "SKVM-RNG").as_deref(), Some("4096"), "{out}");
    // Every page of boot RAM is the VMM's from the start.
    assert_eq!(taken() - before, PAGES_128M, "{out}");
    let (boot, added) = ram_page_kib(vm.pid());
    assert!(
        all_huge(&boot) && added.is_empty(),
        "the VMM's: {boot:?} {added:?}"
    );
    for dev in ["blk0", "rng0"] {
        let pid = device_pids(vm.pid(), dev)[0];
        let (boot, _) = ram_page_kib(pid);
        assert!(all_huge(&boot), "{dev}'s: {boot:?}");
    }

    let (code, r) = ctl(&sock, "mem-add 128M");
    assert_eq!(code, 0, "{r}");
    vm.wait_for("SKVM-MARK", TIMEOUT);
    assert_eq!(taken() - before, 2 * PAGES_128M);
    let (_, added) = ram_page_kib(vm.pid());
    assert!(all_huge(&added), "{added:?}");
    // Two pages left: the next 128 MiB is refused, named, and the guest
    // goes on.
    let (code, r) = ctl(&sock, "mem-add 128M");
    assert_ne!(code, 0, "{r}");
    assert!(r.to_string().contains("pool of 2 MiB pages"), "{r}");
    let marks = vm.output().matches("SKVM-MARK").count();
    vm.wait_for_count("SKVM-MARK", marks + 2, TIMEOUT);
    let out = vm.output();
    let grown = last_mark(&out);

    let (code, r) = ctl(&sock, &format!("snapshot {}", dir.display()));
    assert_eq!(code, 0, "{r}");
    let f = vm.wait_exit(TIMEOUT);
    assert_eq!(f.code(), 0, "{}", f.output);
    assert_eq!(taken(), before, "pages kept after the VM's exit");

    // The restore writes the snapshot's memory into huge pages (no
    // write(2) there) and the guest goes on with its mark and MemTotal.
    let restore = dir.display().to_string();
    let mut vm = TestVm::spawn(vm_args(&disk, &sock, &["--restore", &restore]));
    let marks = vm.output().matches("SKVM-MARK").count();
    vm.wait_for_count("SKVM-MARK", marks + 2, TIMEOUT);
    let out = vm.output();
    assert!(!out.contains("Linux version"), "the guest booted:\n{out}");
    assert_eq!(last_mark(&out), grown, "{out}");
    assert_eq!(taken() - before, 2 * PAGES_128M);
    let (boot, added) = ram_page_kib(vm.pid());
    assert!(all_huge(&boot) && all_huge(&added), "{boot:?} {added:?}");
    let (code, r) = ctl(&sock, "shutdown");
    assert_eq!(code, 0, "{r}");
    let f = vm.wait_exit(TIMEOUT);
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(!f.output.contains("forbidden syscall"), "{}", f.output);
    assert_eq!(taken(), before, "pages kept after the restored VM's exit");
}

/// `skvm run --hugepages` with `mem`: refused at once, with one line
/// containing `why`.
fn refused(mem: &str, why: &str) {
    let out = Command::new(skvm_bin())
        .args(["run", "--hugepages", "--mem", mem, "--run", "true"])
        .output()
        .unwrap();
    let (code, text) = code_and_text(&out);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(why), "expected {why:?}:\n{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(!text.contains("Linux version"), "{text}");
}

#[test]
fn memory_that_is_not_whole_huge_pages_or_does_not_fit_the_pool_is_refused() {
    refused(
        "129M",
        "--hugepages: guest memory of 129 MiB is not a multiple of 2 MiB",
    );
    // More than the pool has, whatever the other test adds to it.
    let mib = (pool("nr_hugepages") + 1024) * 2;
    refused(
        &format!("{mib}M"),
        "the host's pool of 2 MiB pages cannot hold the",
    );
}
