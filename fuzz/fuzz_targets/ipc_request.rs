//! A hostile message reaching a device: the device side's decoder must
//! return an error or a value, never panic, and a value must encode again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = ipc::Request::decode(data) {
        // Whatever decodes is a message the VMM could have sent.
        let again = req.encode().expect("a decoded request encodes");
        assert_eq!(ipc::Request::decode(&again).ok(), Some(req));
    }
});
