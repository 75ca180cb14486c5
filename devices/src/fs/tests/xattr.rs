//! Extended attributes (`server/xattr.rs`): `user.` only, on files and
//! directories, and only on a share that offers them.

use std::fs;

use super::super::proto::{op, Writer, ROOT_ID};
use super::super::server::Options;
use super::{Client, Scratch};

/// A request body: `head` then `name` NUL-terminated, then `tail`.
fn body(head: &[u32], name: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    for v in head {
        w.u32(*v);
    }
    w.bytes(name).bytes(&[0]).bytes(tail);
    w.done()
}

fn set(c: &mut Client, node: u64, name: &[u8], value: &[u8], flags: u32) -> Result<(), i32> {
    let size = u32::try_from(value.len()).unwrap();
    c.call(op::SETXATTR, node, &body(&[size, flags], name, value))
        .map(drop)
}

fn get(c: &mut Client, node: u64, name: &[u8], size: u32) -> Result<Vec<u8>, i32> {
    c.call(op::GETXATTR, node, &body(&[size, 0], name, &[]))
}

fn list(c: &mut Client, node: u64, size: u32) -> Result<Vec<u8>, i32> {
    let mut w = Writer::new();
    w.u32(size).u32(0);
    c.call(op::LISTXATTR, node, &w.done())
}

#[test]
fn user_attributes_are_served_and_nothing_else() {
    let s = Scratch::new();
    fs::write(s.share.join("f"), b"x").unwrap();
    fs::create_dir(s.share.join("d")).unwrap();
    std::os::unix::fs::symlink("f", s.share.join("l")).unwrap();
    let on = Options {
        xattr: true,
        ..Options::default()
    };
    let mut c = Client::new(&s.share, on.clone());
    let (f, _, _) = c.lookup(ROOT_ID, b"f").unwrap();
    let (d, _, _) = c.lookup(ROOT_ID, b"d").unwrap();
    let (l, _, _) = c.lookup(ROOT_ID, b"l").unwrap();
    for node in [f, d] {
        set(&mut c, node, b"user.k", b"value", 0).unwrap();
        // Size first (fuse_getxattr_out), then the value; too small: ERANGE.
        assert_eq!(
            get(&mut c, node, b"user.k", 0).unwrap(),
            [5, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(get(&mut c, node, b"user.k", 64).unwrap(), b"value");
        assert_eq!(get(&mut c, node, b"user.k", 2), Err(libc::ERANGE));
        assert_eq!(list(&mut c, node, 64).unwrap(), b"user.k\0");
        assert_eq!(
            set(&mut c, node, b"user.k", b"v", libc::XATTR_CREATE as u32),
            Err(libc::EEXIST)
        );
        assert_eq!(set(&mut c, node, b"user.k", b"v", 0x100), Err(libc::EINVAL));
        assert_eq!(
            c.call(op::REMOVEXATTR, node, &body(&[], b"user.k", &[])),
            Ok(Vec::new())
        );
        assert_eq!(get(&mut c, node, b"user.k", 64), Err(libc::ENODATA));
    }
    // The host's own attributes stay the host's.
    assert_eq!(
        get(&mut c, f, b"security.capability", 64),
        Err(libc::ENODATA)
    );
    assert_eq!(
        set(&mut c, f, b"security.capability", b"x", 0),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(set(&mut c, f, b"trusted.x", b"x", 0), Err(libc::EOPNOTSUPP));
    assert_eq!(set(&mut c, f, b"user.", b"x", 0), Err(libc::ERANGE));
    assert_eq!(set(&mut c, l, b"user.k", b"x", 0), Err(libc::EOPNOTSUPP));
    // What the host sees.
    set(&mut c, f, b"user.seen", b"yes", 0).unwrap();
    let mut buf = [0u8; 8];
    let path = std::ffi::CString::new(s.share.join("f").to_str().unwrap()).unwrap();
    // SAFETY: getxattr into a live buffer of its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.seen".as_ptr(),
            buf.as_mut_ptr().cast(),
            8,
        )
    };
    assert_eq!(&buf[..usize::try_from(n).unwrap()], b"yes");

    // Read-only: reads work, changes are refused.
    let mut ro = Client::new(
        &s.share,
        Options {
            read_only: true,
            ..on
        },
    );
    let (f, _, _) = ro.lookup(ROOT_ID, b"f").unwrap();
    assert_eq!(get(&mut ro, f, b"user.seen", 64).unwrap(), b"yes");
    assert_eq!(set(&mut ro, f, b"user.k", b"v", 0), Err(libc::EROFS));
    // A share without them: ENOSYS, and the guest stops asking.
    let mut off = Client::new(&s.share, Options::default());
    let (f, _, _) = off.lookup(ROOT_ID, b"f").unwrap();
    assert_eq!(get(&mut off, f, b"user.seen", 64), Err(libc::ENOSYS));
    assert_eq!(list(&mut off, f, 64), Err(libc::ENOSYS));
}
