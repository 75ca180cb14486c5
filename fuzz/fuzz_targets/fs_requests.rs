//! virtio-fs's FUSE server on a scratch share, fed a sequence of hostile
//! requests: each is an operation (one of the server's or any other), a
//! node id (small, so that lookups, creates and opens find each other), a
//! guest caller, a reply room and a body of arbitrary bytes, which often
//! starts with a name. The server must answer or drop each without a panic,
//! with a reply that fits the room; and nothing outside the share may
//! change: a file and a directory beside it are checked after every input.
//! Files are capped at 16 MiB (RLIMIT_FSIZE; SIGXFSZ ignored, so that a
//! large write or fallocate is an EFBIG answer, not a full disk).
//!
//! Then the handover of a restart: the server's node and file tables, as
//! it saves them, must be taken by a new server; and what is left of the
//! input, taken as tables, is refused or taken without a panic.
#![no_main]

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use devices::fs::proto::{op, InHeader, Writer, OUT_HEADER_LEN};
use devices::fs::server::{Options, Server};
use libfuzzer_sys::fuzz_target;

/// Operations the server knows, and some it does not.
const OPS: &[u32] = &[
    op::LOOKUP,
    op::FORGET,
    op::GETATTR,
    op::SETATTR,
    op::READLINK,
    op::SYMLINK,
    op::MKNOD,
    op::MKDIR,
    op::UNLINK,
    op::RMDIR,
    op::RENAME,
    op::LINK,
    op::OPEN,
    op::READ,
    op::WRITE,
    op::STATFS,
    op::RELEASE,
    op::FSYNC,
    op::FLUSH,
    op::INIT,
    op::OPENDIR,
    op::READDIR,
    op::RELEASEDIR,
    op::FSYNCDIR,
    op::ACCESS,
    op::CREATE,
    op::INTERRUPT,
    op::DESTROY,
    op::BATCH_FORGET,
    op::FALLOCATE,
    op::READDIRPLUS,
    op::RENAME2,
    op::LSEEK,
    op::GETXATTR,
    op::SETXATTR,
    op::LISTXATTR,
    op::REMOVEXATTR,
    0,
    4096,
];

struct Scratch {
    top: PathBuf,
    share: PathBuf,
}

fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        // SAFETY: setrlimit and signal with plain values.
        unsafe {
            let r = libc::rlimit {
                rlim_cur: 16 << 20,
                rlim_max: 16 << 20,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &r);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let top = std::env::temp_dir().join(format!("skvm-fuzz-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        // libFuzzer ends the process with exit(): the scratch goes with it.
        // SAFETY: registers a function that takes and returns nothing.
        unsafe { libc::atexit(remove_scratch) };
        std::fs::create_dir_all(top.join("beside")).unwrap();
        std::fs::write(top.join("outside"), b"outside").unwrap();
        Scratch {
            share: top.join("share"),
            top,
        }
    })
}

extern "C" fn remove_scratch() {
    let top = std::env::temp_dir().join(format!("skvm-fuzz-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(top);
}

/// The share as each input starts: a file, a directory with a file, and
/// symlinks out of the share.
fn reset(s: &Scratch) {
    let _ = std::fs::remove_dir_all(&s.share);
    std::fs::create_dir_all(s.share.join("d")).unwrap();
    std::fs::write(s.share.join("f"), b"file").unwrap();
    std::fs::write(s.share.join("d/g"), b"g").unwrap();
    let _ = std::os::unix::fs::symlink("../outside", s.share.join("up"));
    let _ = std::os::unix::fs::symlink(&s.top, s.share.join("top"));
}

/// Nothing outside the share changed.
fn check_outside(s: &Scratch) {
    assert_eq!(std::fs::read(s.top.join("outside")).unwrap(), b"outside");
    let mut names: Vec<_> = std::fs::read_dir(&s.top)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["beside", "outside", "share"], "the top changed");
    assert_eq!(std::fs::read_dir(s.top.join("beside")).unwrap().count(), 0);
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    reset(s);
    let dir = std::fs::File::open(&s.share).unwrap();
    let opts = Options {
        read_only: data.first().is_some_and(|b| b & 0x80 != 0),
        max_inodes: 64,
        max_handles: 16,
        xattr: data.first().is_some_and(|b| b & 2 != 0),
    };
    let mut server = Server::new(dir.as_fd(), opts.clone()).unwrap();
    // A session first, most of the time.
    if data.first().is_none_or(|b| b & 1 == 0) {
        let mut w = Writer::new();
        w.u32(7).u32(38).u32(0).u32(u32::MAX);
        request(&mut server, op::INIT, 0, 0, 1024, &w.done());
    }
    let mut rest = data.get(1..).unwrap_or_default();
    for _ in 0..64 {
        let [opi, node, who, room, lo, hi, tail @ ..] = rest else {
            break;
        };
        let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let opcode = OPS[usize::from(*opi) % OPS.len()];
        let room = usize::from(*room) * 64;
        request(&mut server, opcode, u64::from(*node % 12), *who, room, &tail[..n]);
        rest = &tail[n..];
    }
    let tables = server.save_tables();
    let minor = server.minor();
    drop(server);
    for (bytes, saved) in [(tables.as_slice(), true), (rest, false)] {
        let mut next = Server::new(dir.as_fd(), opts.clone()).unwrap();
        let _ = next.resume(minor);
        let taken = next.restore_tables(bytes);
        assert!(!saved || bytes.is_empty() || taken.is_ok(), "{taken:?}");
        for node in 1..12 {
            request(&mut next, op::GETATTR, node, 0, 1024, &[0; 16]);
        }
    }
    check_outside(s);
});

fn request(server: &mut Server, opcode: u32, nodeid: u64, who: u8, room: usize, body: &[u8]) {
    let mut w = Writer::new();
    InHeader {
        len: u32::try_from(40 + body.len()).unwrap(),
        opcode,
        unique: 7,
        nodeid,
        uid: u32::from(who & 3) * 1000,
        gid: u32::from(who >> 2 & 3) * 1000,
        pid: 1,
        total_extlen: 0,
    }
    .write(&mut w);
    w.bytes(body);
    if let Some(reply) = server.handle(&w.done(), room) {
        assert!(reply.len() >= OUT_HEADER_LEN);
        assert!(
            reply.len() <= room.max(OUT_HEADER_LEN),
            "reply of {} bytes for room {room}",
            reply.len()
        );
    }
}
