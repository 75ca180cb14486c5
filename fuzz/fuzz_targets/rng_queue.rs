//! virtio-rng request handling on arbitrary queue contents and guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut rng = devices::rng::Rng::new();
    common::serve(&mut rng, data);
});
