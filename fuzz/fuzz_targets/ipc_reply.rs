//! A hostile device talking to the VMM: the VMM side's decoder must return
//! an error or a value, never panic, and a value must encode again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = ipc::Reply::decode(data) {
        let again = reply.encode().expect("a decoded reply encodes");
        assert_eq!(ipc::Reply::decode(&again).ok(), Some(reply));
    }
});
