//! A hostile snapshot's state file, as `skvm run --restore` reads it: the
//! decoder must refuse it or return a snapshot that encodes again, to bytes
//! that decode to the same; never panic, and never allocate past its caps
//! (libFuzzer's RSS limit). The first byte chooses how the rest is used:
//! as the whole file (the header's checks), or as sections that go behind
//! a valid header and checksum, which random bytes would never pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::snapshot::format::{Enc, StateWriter};
use vmm::snapshot::state::VmSnapshot;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        sectioned(rest)
    };
    if let Ok(snap) = VmSnapshot::decode(&file) {
        let again = snap.encode().expect("a decoded snapshot encodes");
        let back = VmSnapshot::decode(&again).expect("what it encodes decodes");
        assert_eq!(back.encode().ok(), Some(again));
    }
});

/// A state file of the sections in `data`: each a tag (one byte, 0 to 7,
/// which covers every tag skvm writes and some it does not), a length (two
/// bytes, cut to what is left) and that many bytes.
fn sectioned(mut data: &[u8]) -> Vec<u8> {
    let mut w = StateWriter::new();
    while let [tag, lo, hi, rest @ ..] = data {
        let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        let mut body = Enc::new();
        body.raw(&rest[..n]);
        let _ = w.section(u32::from(tag % 8), &body);
        data = &rest[n..];
    }
    w.finish().unwrap_or_default()
}
