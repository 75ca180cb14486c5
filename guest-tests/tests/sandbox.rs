//! Device confinement, checked from the outside: the seccomp policies are as
//! small as promised, this host supports every step, a running device
//! process is in its own namespaces with an empty root, no capabilities, no
//! new privileges, its seccomp filter and tight limits, and a host that
//! forbids namespaces gets a clear refusal or, when allowed, a warning. The
//! VMM's own filter (`--sandbox`) is on every one of its threads.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::{code_and_text, device_pids, sigkill, skvm_bin, TestVm};

fn skvm(args: &[&str]) -> (i32, String) {
    let out = Command::new(skvm_bin()).args(args).output().unwrap();
    code_and_text(&out)
}

/// The count `skvm sandbox show KIND` prints.
fn allowed(kind: &str, mode: &str) -> usize {
    let (code, out) = skvm(&["sandbox", "show", kind, "--seccomp", mode]);
    assert_eq!(code, 0, "{out}");
    let first = out.lines().next().unwrap();
    let n: usize = first
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {first}"));
    // One line per allowed syscall follows, then one per call that fails
    // with ENOSYS (the allocator's mremap), then the x32 guard's.
    let enosys = out
        .lines()
        .filter(|l| l.contains("fails with ENOSYS"))
        .count();
    assert_eq!(enosys, 1, "{out}");
    assert_eq!(out.lines().count(), n + enosys + 2, "{out}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("x32 calls"), "{out}");
    let refusal = if mode == "log" { "ENOSYS" } else { "kill" };
    assert!(mode == "trap" || last.contains(refusal), "{last}");
    n
}

#[test]
fn seccomp_policies_are_within_their_targets() {
    assert!(allowed("rng", "kill") <= 15);
    assert!(allowed("blk", "kill") <= 25);
    assert!(allowed("net", "kill") <= 25);
    // Trap mode adds only rt_sigreturn, for its handler.
    assert_eq!(allowed("rng", "trap"), allowed("rng", "kill") + 1);
    assert_eq!(allowed("rng", "log"), allowed("rng", "kill"));
    for kind in ["rng", "blk", "net"] {
        let (_, out) = skvm(&["sandbox", "show", kind]);
        for forbidden in [
            "openat", "socket", "connect", "execve", "ptrace", "kill", "clone", "mount", "unshare",
            "setuid",
        ] {
            assert!(
                !out.lines()
                    .any(|l| l.split_whitespace().next() == Some(forbidden)),
                "{kind}: {forbidden} is allowed:\n{out}"
            );
        }
    }
    // fs names files only relative to the fds it holds: the worker's 14,
    // 21 fd-relative file calls, 4 for extended attributes, memfd_create.
    assert!(allowed("fs", "kill") <= 40);
    let (_, out) = skvm(&["sandbox", "show", "fs"]);
    for forbidden in [
        "open",
        "socket",
        "connect",
        "execve",
        "ptrace",
        "kill",
        "clone",
        "mount",
        "unshare",
        "setuid",
        "chdir",
        "fchdir",
        "chroot",
        "open_by_handle_at",
        "name_to_handle_at",
    ] {
        assert!(
            !out.lines()
                .any(|l| l.split_whitespace().next() == Some(forbidden)),
            "fs: {forbidden} is allowed:\n{out}"
        );
    }
    // net's one ioctl is TUNSETOFFLOAD, by argument.
    let (_, out) = skvm(&["sandbox", "show", "net"]);
    let ioctl = out
        .lines()
        .find(|l| l.trim_start().starts_with("ioctl"))
        .unwrap_or_else(|| panic!("no ioctl line:\n{out}"));
    assert!(ioctl.contains("0x400454d0"), "{ioctl}");
    let (code, _) = skvm(&["sandbox", "show", "gpu"]);
    assert_eq!(code, 1);
}

#[test]
fn this_host_supports_full_confinement() {
    let (code, out) = skvm(&["sandbox", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // As root (the tests' user), the spawner's step is tried too.
    assert!(
        out.contains("  ok    leaves root for the VM's user"),
        "{out}"
    );
}

/// Field `key` of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Whether `pid` runs under more seccomp filters than its parent.
fn own_filter_installed(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(parent) = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return false;
    };
    let filters = |p: u32| {
        status_field(p, "Seccomp_filters")
            .parse::<u32>()
            .unwrap_or(0)
    };
    filters(pid) > filters(parent)
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn check_confined(device: &str, extra: &[&str]) {
    let mut args = vec![
        "drive",
        "--device",
        device,
        "--requests",
        "100000000",
        "--size",
        "512",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(skvm_bin())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let pid = loop {
        let pids = device_pids(child.id(), device);
        if let Some(p) = pids.first() {
            // Its own filter is in (the last step of its confinement):
            // it has one more than the spawner it was forked from, whose
            // filter it inherits at once.
            if own_filter_installed(*p) {
                break *p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{device} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let p = pid.to_string();
    for kind in ["user", "pid", "mnt", "net", "ipc", "uts"] {
        assert_ne!(
            ns(&p, kind),
            ns("self", kind),
            "{device}: same {kind} namespace"
        );
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for caps in ["CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let uid = status_field(pid, "Uid");
        assert!(uid.split_whitespace().all(|u| u == "65534"), "uid {uid}");
        assert_eq!(status_field(pid, "Groups"), "");
    }
    // pid 1 of its own pid namespace.
    assert!(
        status_field(pid, "NSpid").ends_with(" 1") || status_field(pid, "NSpid").ends_with("\t1")
    );
    // An empty root.
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .collect();
    assert!(root.is_empty(), "{device}: root has {} entries", root.len());
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .rev()
            .nth(2)
            .unwrap()
            .to_owned()
    };
    assert_eq!(limit("Max processes"), "0");
    assert_eq!(limit("Max core file size"), "0");
    assert_eq!(limit("Max open files"), "64");
    // Only its own fds: stdio, control socket, guest memory, eventfds (and
    // the image for blk).
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(fds <= 10, "{device}: {fds} fds");
    sigkill(child.id());
    let _ = child.wait();
}

#[test]
fn device_processes_are_confined() {
    check_confined("rng0", &[]);
    let img = std::env::temp_dir().join(format!("skvm-sandbox-{}.img", std::process::id()));
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = img.to_str().unwrap().to_owned();
    check_confined("blk0", &["--disk", &disk]);
    std::fs::remove_file(&img).unwrap();
}

/// Runs skvm drive in a user namespace whose limit on nested user
/// namespaces is 0: what a container that forbids them looks like.
fn drive_without_namespaces(extra: &str) -> (i32, String) {
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec {} drive --requests 100 {extra}",
        skvm_bin().display()
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) must be installed");
    code_and_text(&out)
}

#[test]
fn a_host_without_namespaces_is_refused_unless_allowed() {
    let (code, out) = drive_without_namespaces("");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot be confined on this host"), "{out}");
    assert!(out.contains("--sandbox-degraded allow"), "{out}");
    let (code, out) = drive_without_namespaces("--sandbox-degraded allow");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("skvm: warning: device rng0"), "{out}");
    assert!(out.contains("WITHOUT namespaces"), "{out}");
    assert!(out.contains("req_per_s="), "{out}");
}

#[test]
fn the_vmm_lists_each_thread_kinds_allowlist() {
    let (code, out) = skvm(&["sandbox", "show", "vmm"]);
    assert_eq!(code, 0, "{out}");
    // "KIND threads: N syscalls allowed...", then N entries, then the
    // calls that fail with ENOSYS.
    let mut counts = Vec::new();
    let lines: Vec<&str> = out.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let Some((kind, rest)) = l.split_once(" threads: ") else {
            continue;
        };
        let n: usize = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no count in: {l}"));
        let entries = lines[i + 1..]
            .iter()
            .take_while(|e| e.starts_with("  "))
            .filter(|e| !e.contains("fails with ENOSYS"))
            .count();
        assert_eq!(entries, n, "{kind}:\n{out}");
        counts.push((kind.to_owned(), n));
    }
    let count = |k: &str| counts.iter().find(|(n, _)| n == k).map(|(_, c)| *c);
    assert!(count("main").is_some_and(|n| n <= 45), "{out}");
    assert!(count("vcpu").is_some_and(|n| n <= 25), "{out}");
    assert!(count("device").is_some(), "{out}");
    // What the vCPU may ask of KVM is listed by request number.
    assert!(out.contains("arg1 == 0xae80"), "{out}");
    let never = out
        .lines()
        .find_map(|l| l.strip_prefix("never allowed on a VMM thread, by any group: "))
        .unwrap_or_else(|| panic!("no never line:\n{out}"));
    // The thread lists come first, then the helper processes'.
    let (threads, processes) = out
        .split_once("\nspawner process")
        .unwrap_or_else(|| panic!("no spawner list:\n{out}"));
    for name in ["execve", "setuid", "fork"] {
        assert!(
            !threads.contains(&format!("\n  {name} ")),
            "{name} allowed:\n{out}"
        );
    }
    // The spawner's list: what it and its children need before their own
    // filter, and nothing to reach other processes, the network or the
    // kernel's attack surface.
    let (spawner, remover) = processes
        .split_once("\nsocket remover process")
        .unwrap_or_else(|| panic!("no remover list:\n{out}"));
    for name in ["execve", "clone", "openat", "mount", "pivot_root"] {
        assert!(spawner.contains(&format!("\n  {name} ")), "{out}");
    }
    for name in [
        "socket",
        "connect",
        "ptrace",
        "process_vm_writev",
        "unshare",
        "setns",
        "bpf",
        "init_module",
        "perf_event_open",
        "io_uring_setup",
        "userfaultfd",
        "keyctl",
    ] {
        assert!(
            !spawner.contains(&format!("\n  {name} ")),
            "spawner allows {name}:\n{out}"
        );
    }
    // ioctl only with the net device's request numbers, opens never create.
    for name in ["ioctl", "openat", "clone", "kill"] {
        let line = spawner
            .lines()
            .find(|l| l.starts_with(&format!("  {name} ")))
            .unwrap_or_else(|| panic!("no {name}:\n{out}"));
        assert!(line.contains("[only if"), "{line}");
    }
    let (remover, connector) = remover
        .split_once("\nvsock connector process")
        .unwrap_or_else(|| panic!("no connector list:\n{out}"));
    let removes = remover.lines().filter(|l| l.starts_with("  ")).count();
    assert!(removes > 0 && removes <= 12, "{out}");
    // The vsock connector: a unix stream socket and a connect, its channel
    // (fd 3) and nothing that opens, maps or runs anything.
    let connects: Vec<&str> = connector
        .lines()
        .take_while(|l| !l.starts_with("never allowed"))
        .filter(|l| l.starts_with("  "))
        .collect();
    assert!(!connects.is_empty() && connects.len() <= 8, "{out}");
    for name in ["socket", "read", "sendmsg"] {
        let line = connects
            .iter()
            .find(|l| l.starts_with(&format!("  {name} ")))
            .unwrap_or_else(|| panic!("connector has no {name}:\n{out}"));
        assert!(line.contains("[only if"), "{line}");
    }
    for name in ["openat", "mmap", "execve", "bind", "write"] {
        assert!(
            !connects
                .iter()
                .any(|l| l.starts_with(&format!("  {name} "))),
            "connector allows {name}:\n{out}"
        );
    }
    for name in ["ptrace", "mount", "unshare", "bpf", "socket", "init_module"] {
        assert!(
            never.split_whitespace().any(|n| n == name),
            "{name} not in the never list:\n{out}"
        );
    }
    assert!(
        out.lines().any(|l| l
            == "groups left denied (on no list): obsolete elevateprivileges spawn resourcecontrol"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "x32 calls (number | 0x40000000), before any rule: kill the process"),
        "{out}"
    );
    // An allowed group is added to every list; off has no filter.
    let (_, relaxed) = skvm(&["sandbox", "show", "vmm", "--sandbox", "on,spawn=allow"]);
    let added = relaxed
        .split_once("spawn=allow adds to every thread's list:")
        .unwrap_or_else(|| panic!("{relaxed}"))
        .1;
    assert!(added.contains("\n  execve "), "{relaxed}");
    let (_, off) = skvm(&["sandbox", "show", "vmm", "--sandbox", "off"]);
    assert!(off.contains("no seccomp filter"), "{off}");
    let (code, bad) = skvm(&["run", "--sandbox", "on,spawn=sometimes"]);
    assert_eq!(code, 2, "{bad}");
}

/// Every thread of `pid` with its seccomp mode and no_new_privs.
fn thread_confinement(pid: u32) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid = t.file_name().to_string_lossy().into_owned();
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue;
        };
        let field = |key: &str| guest_tests::status_value(&status, key);
        v.push((tid, field("Seccomp:"), field("NoNewPrivs:")));
    }
    v
}

#[test]
fn every_vmm_thread_runs_under_the_vmm_filter() {
    // Thread mode: the device thread installs its own list after its
    // hello, each vCPU thread its own, the main thread last (skvm checks
    // the others first); this checks from outside.
    let mut vm = guest_tests::booted([
        "--rng",
        "--device-mode",
        "thread",
        "--run",
        "echo SKVM-UP; sleep 3",
    ]);
    vm.wait_for("SKVM-UP", Duration::from_secs(600));
    let threads = thread_confinement(vm.pid());
    assert!(threads.len() >= 3, "{threads:?}");
    for (tid, seccomp, nnp) in &threads {
        assert_eq!(seccomp, "2", "thread {tid} unfiltered: {threads:?}");
        assert_eq!(nnp, "1", "thread {tid}: {threads:?}");
    }
    let f = vm.wait_exit(Duration::from_secs(120));
    assert_eq!(f.code(), 0, "{}", f.output);
}

/// Runs `args` as user and group `id`, an ordinary user whose only way to
/// KVM is /dev/kvm: a node of the same device owned by group `id`, bound over
/// /dev/kvm in a mount namespace of this test's own (the host's /dev/kvm
/// stays as it is). Files it needs are in `dir` (mode 0755), with `dir/dev`
/// for the node.
fn as_ordinary_user(dir: &std::path::Path, id: u32, args: &[&str]) -> Command {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata("/dev/kvm").unwrap().rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    let script = format!(
        "mount -t tmpfs none {d} && mknod -m 0660 {d}/kvm c {major} {minor} && \
         chown 0:{id} {d}/kvm && mount --bind {d}/kvm /dev/kvm && \
         exec setpriv --reuid {id} --regid {id} --clear-groups --inh-caps=-all \"$@\"",
        d = dev.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(skvm_bin())
    .args(args);
    cmd
}

#[test]
fn an_ordinary_user_with_access_to_dev_kvm_runs_confined() {
    use std::os::unix::fs::PermissionsExt;
    const ID: u32 = 4244;
    let scratch = guest_tests::Scratch::new("sandbox", "user");
    let dir = scratch.0.clone();
    let guest = guest_tests::default_guest();
    let initrd = ["initramfs.cpio", "initramfs.cpio.gz"]
        .iter()
        .map(|n| guest.join(n))
        .find(|p| p.is_file())
        .unwrap();
    let (kernel, rd) = (dir.join("vmlinux"), dir.join("initrd"));
    std::fs::copy(guest.join("vmlinux"), &kernel).unwrap();
    std::fs::copy(&initrd, &rd).unwrap();
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    for (p, mode) in [(&kernel, 0o644), (&rd, 0o644), (&dir, 0o755)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::os::unix::fs::chown(&run, Some(ID), Some(ID)).unwrap();
    // `skvm sandbox check` tells this user the truth: all of it works.
    let out = as_ordinary_user(&dir, ID, &["sandbox", "check"])
        .output()
        .unwrap();
    let (code, text) = code_and_text(&out);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("as an ordinary user"), "{text}");
    assert!(
        text.contains("the VMM can give up every privilege"),
        "{text}"
    );
    let sock = run.join("ctl.sock");
    let mut vm = TestVm::spawn_command(as_ordinary_user(
        &dir,
        ID,
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            rd.to_str().unwrap(),
            "--rng",
            "--ctl",
            sock.to_str().unwrap(),
            "--run",
            "dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c; echo SKVM-UP; sleep 600",
        ],
    ));
    vm.wait_for("SKVM-UP", Duration::from_secs(600));
    // unshare, sh and setpriv exec: the pid is skvm's.
    let pid = vm.pid();
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(name.trim(), "skvm");
    guest_tests::assert_holds_no_privilege(pid, (ID, ID));
    let [dev] = device_pids(pid, "rng0")[..] else {
        panic!("no single rng0 process:\n{}", vm.output())
    };
    let (code, answer) = guest_tests::ctl(&sock, "device-restart rng0");
    assert_eq!(code, 0, "{answer}\n{}", vm.output());
    guest_tests::new_device_pid(&vm, "rng0", dev, Duration::from_secs(60));
    let (code, answer) = guest_tests::ctl(&sock, "shutdown");
    assert_eq!(code, 0, "{answer}");
    let f = vm.wait_exit(Duration::from_secs(120));
    assert_eq!(f.code(), 0, "{}", f.output);
    assert!(f.output.contains("\n64"), "{}", f.output);
    guest_tests::assert_no_forbidden_syscall(&f.output);
    assert!(!sock.exists(), "the control socket outlived skvm");
}

#[test]
fn a_user_of_root_or_garbage_is_refused() {
    for bad in ["0", "0:5", "5:0", "nobody", "1:2:3", ""] {
        let (code, out) = skvm(&["run", "--user", bad]);
        assert_eq!(code, 2, "--user '{bad}': {out}");
        assert!(out.contains("--user"), "{out}");
    }
}
