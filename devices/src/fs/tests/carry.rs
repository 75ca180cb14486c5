//! The node and file tables carried from one server to the next
//! (`server/carry.rs`).

use std::fs;

use super::super::proto::{op, Errno, ROOT_ID};
use super::super::server::Options;
use super::{Client, Scratch};

#[test]
fn a_new_server_takes_over_the_nodes_and_open_files_of_the_old_one() {
    let s = Scratch::new();
    let mut c = Client::new(&s.share, Options::default());
    assert!(c.server.save_tables().is_empty(), "only the root: nothing");
    let d = c.mkdir(ROOT_ID, b"d", 0o755).unwrap();
    let e = c.mkdir(d, b"e", 0o755).unwrap();
    let (f, fh) = c.create(e, b"f", 0o644).unwrap();
    c.write(f, fh, 0, b"hello").unwrap();
    let (gone, gone_fh) = c.create(d, b"gone", 0o644).unwrap();
    let tables = c.server.save_tables();

    // The next instance: a server of its own over the same directory.
    let mut next = Client::new(&s.share, Options::default());
    // Removed on the host in between: that node and its file are lost.
    fs::remove_file(s.share.join("d/gone")).unwrap();
    assert_eq!(next.server.restore_tables(&tables), Ok((1, 1)));
    assert_eq!(next.read(f, fh, 0, 5).unwrap(), b"hello");
    assert_eq!(next.write(f, fh, 5, b"!").unwrap(), 1);
    assert_eq!(next.lookup(e, b"f").unwrap().0, f, "same node id");
    assert_eq!(next.read(gone, gone_fh, 0, 1), Err(libc::EIO));
    assert_eq!(next.call(op::GETATTR, gone, &[0; 16]), Err(libc::ESTALE));
    // New ids never reuse old ones.
    let (n, nfh) = next.create(d, b"new", 0o644).unwrap();
    assert!(n > gone && nfh > gone_fh);
    assert_eq!(fs::read(s.share.join("d/e/f")).unwrap(), b"hello!");

    // Hostile tables: cut anywhere, a name that is a path, twice into the
    // same server: refused, never a panic, nothing outside touched.
    for cut in 0..tables.len() {
        let mut fresh = Client::new(&s.share, Options::default());
        assert!(
            fresh.server.restore_tables(&tables[..cut]).is_err(),
            "{cut}"
        );
    }
    let evil = tables
        .windows(1)
        .position(|w| w == b"e")
        .map(|at| {
            let mut t = tables.clone();
            t[at] = b'/';
            t
        })
        .unwrap();
    let mut fresh = Client::new(&s.share, Options::default());
    assert_eq!(fresh.server.restore_tables(&evil), Err(Errno(libc::EINVAL)));
    assert!(next.server.restore_tables(&tables).is_err(), "not empty");
    assert_eq!(fs::read(s.outside()).unwrap(), b"secret");
}
