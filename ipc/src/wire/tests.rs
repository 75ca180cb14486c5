//! The wire format's unit tests.

use super::*;

fn requests() -> Vec<Request> {
    vec![
        Request::Hello {
            version: 1,
            backend: Backend {
                kind: "rng".into(),
                params: vec![1],
                fds: 0,
            },
            poll_us: 0,
        },
        Request::Hello {
            version: 1,
            backend: Backend {
                kind: "blk".into(),
                params: vec![1, 0, 0, 32, 0, 0, 0, 0, 0, 1, 0, 6],
                fds: 1,
            },
            poll_us: 50,
        },
        Request::ConfigRead { offset: 4, len: 8 },
        Request::ConfigWrite {
            offset: 2,
            data: vec![1, 2, 3],
        },
        Request::Activate {
            features: 1 << 32 | 1 << 29,
            regions: vec![
                MemRegion {
                    guest_addr: 0,
                    size: 3 << 30,
                    file_offset: 0,
                },
                MemRegion {
                    guest_addr: 1 << 32,
                    size: 1 << 30,
                    file_offset: 3 << 30,
                },
            ],
            queues: vec![QueueLayout {
                index: 0,
                size: 256,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
            }],
        },
        Request::Reset,
        Request::Shutdown,
        Request::Pause,
        Request::Resume,
        Request::Restore {
            regions: vec![MemRegion {
                guest_addr: 0,
                size: 1 << 30,
                file_offset: 0,
            }],
            state: saved(),
            recover: true,
            bulk: true,
        },
    ]
}

fn saved() -> DeviceState {
    DeviceState {
        features: 1 << 32 | 1 << 29,
        queues: vec![QueueState {
            layout: QueueLayout {
                index: 1,
                size: 128,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
            },
            event_idx: true,
            next_avail: 65535,
            next_used: 65530,
        }],
        device: vec![7; 16],
    }
}

fn replies() -> Vec<Reply> {
    vec![
        Reply::Welcome {
            version: 1,
            info: DeviceInfo {
                device_type: 4,
                num_queues: 1,
                max_queue_size: 256,
                features: 1 << 32,
                config: vec![9; 8],
            },
        },
        Reply::ConfigData { data: vec![1, 2] },
        Reply::Ack,
        Reply::Error {
            message: "no".into(),
        },
        Reply::ConfigChanged { config: vec![] },
        Reply::NeedsReset {
            reason: "queue 0: used ring outside memory".into(),
        },
        Reply::ForbiddenSyscall { nr: 257 },
        Reply::Saved {
            state: saved(),
            bulk: true,
        },
        Reply::Saved {
            state: DeviceState::default(),
            bulk: false,
        },
    ]
}

#[test]
fn saved_state_flags_are_strict_and_restore_carries_activate_fds() {
    let restore = Request::Restore {
        regions: vec![],
        state: saved(),
        recover: false,
        bulk: false,
    };
    assert_eq!(restore.fd_count(), 2 + 1);
    let with_bulk = Request::Restore {
        regions: vec![],
        state: saved(),
        recover: false,
        bulk: true,
    };
    assert_eq!(with_bulk.fd_count(), 2 + 1 + 1);
    let good = restore.encode().unwrap();
    // The recover and bulk flags are the last bytes; the event-index flag
    // sits after the queue layout (header, regions count, features, queue
    // count, layout).
    let event_idx_at = HEADER + 2 + 8 + 2 + QUEUE_BYTES;
    assert_eq!(good[event_idx_at], 1);
    for at in [good.len() - 1, good.len() - 2, event_idx_at] {
        let mut bad = good.clone();
        bad[at] = 2;
        assert!(matches!(Request::decode(&bad), Err(IpcError::BadValue(_))));
    }
    let mut big = saved();
    big.device = vec![0; MAX_DEVICE_STATE + 1];
    let big = Reply::Saved {
        state: big,
        bulk: false,
    };
    assert!(big.encode().is_err());
    let saved = |bulk| Reply::Saved {
        state: saved(),
        bulk,
    };
    assert_eq!((saved(false).fd_count(), saved(true).fd_count()), (0, 1));
    let mut bad = saved(true).encode().unwrap();
    *bad.last_mut().unwrap() = 2;
    assert!(matches!(Reply::decode(&bad), Err(IpcError::BadValue(_))));
}

#[test]
fn the_signal_handler_encoding_matches_the_encoder() {
    let r = Reply::ForbiddenSyscall { nr: 0xdead_beef };
    assert_eq!(
        forbidden_syscall_message(0xdead_beef).to_vec(),
        r.encode().unwrap()
    );
}

#[test]
fn every_request_round_trips() {
    for r in requests() {
        assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
    }
}

#[test]
fn every_reply_round_trips() {
    for r in replies() {
        assert_eq!(Reply::decode(&r.encode().unwrap()).unwrap(), r);
    }
}

#[test]
fn every_strict_prefix_fails_cleanly() {
    for r in requests() {
        let b = r.encode().unwrap();
        for n in 0..b.len() {
            assert!(Request::decode(&b[..n]).is_err(), "{r:?} prefix {n}");
        }
    }
    for r in replies() {
        let b = r.encode().unwrap();
        for n in 0..b.len() {
            assert!(Reply::decode(&b[..n]).is_err(), "{r:?} prefix {n}");
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut b = Request::Reset.encode().unwrap();
    b.push(0);
    assert!(Request::decode(&b).is_err());
    // Even when the header's length covers them.
    b[8] = 1;
    assert!(matches!(Request::decode(&b), Err(IpcError::Trailing(1))));
}

#[test]
fn directions_do_not_mix() {
    let b = Reply::Ack.encode().unwrap();
    assert!(matches!(
        Request::decode(&b),
        Err(IpcError::UnknownKind(ACK))
    ));
    let b = Request::Reset.encode().unwrap();
    assert!(matches!(
        Reply::decode(&b),
        Err(IpcError::UnknownKind(RESET))
    ));
}

#[test]
fn wrong_magic_and_version_are_rejected() {
    let mut b = Request::Reset.encode().unwrap();
    b[0] ^= 1;
    assert!(matches!(Request::decode(&b), Err(IpcError::BadMagic(_))));
    let mut b = Request::Reset.encode().unwrap();
    b[4] = 9;
    assert!(matches!(Request::decode(&b), Err(IpcError::Version(9))));
}

#[test]
fn counts_above_caps_are_rejected_before_allocating() {
    // A ConfigWrite claiming 65535 bytes in a 20-byte message.
    let mut w = Writer::new(CONFIG_WRITE);
    w.u32(0);
    w.u16(u16::MAX);
    let b = w.finish().unwrap();
    assert!(matches!(
        Request::decode(&b),
        Err(IpcError::Limit { got: 65535, .. })
    ));
    // An Activate claiming three queues' worth but carrying one.
    let mut w = Writer::new(ACTIVATE);
    w.u64(0);
    w.u16(0);
    w.u16(3);
    w.buf.extend_from_slice(&[0; QUEUE_BYTES]);
    let b = w.finish().unwrap();
    assert!(matches!(Request::decode(&b), Err(IpcError::Truncated)));
}

#[test]
fn encoding_refuses_what_decoding_would_refuse() {
    let r = Request::ConfigWrite {
        offset: 0,
        data: vec![0; MAX_CONFIG + 1],
    };
    assert!(r.encode().is_err());
    let r = Reply::Error {
        message: "x".repeat(MAX_TEXT + 1),
    };
    assert!(r.encode().is_err());
    let r = Request::Activate {
        features: 0,
        regions: vec![],
        queues: vec![
            QueueLayout {
                index: 0,
                size: 1,
                desc: 0,
                avail: 0,
                used: 0
            };
            MAX_QUEUES + 1
        ],
    };
    assert!(r.encode().is_err());
}

#[test]
fn malformed_backends_are_rejected() {
    let hello = |kind: &[u8], params: &[u8], fds: u8| {
        let mut w = Writer::new(HELLO);
        w.u16(PROTOCOL_VERSION);
        w.bytes("kind length", kind, 64).unwrap();
        w.bytes("parameters length", params, 4096).unwrap();
        w.buf.push(fds);
        w.u32(0);
        Request::decode(&w.finish().unwrap())
    };
    assert!(hello(b"blk", &[1], 1).is_ok());
    for (kind, params, fds) in [
        (&b""[..], &[1u8][..], 0u8),
        (b"Blk", &[1], 0),
        (b"blk0", &[1], 0),
        (b"\xff", &[1], 0),
        (&[b'a'; MAX_KIND + 1], &[1], 0),
        (b"blk", &[0; MAX_PARAMS + 1], 0),
        (b"blk", &[1], u8::try_from(MAX_BACKEND_FDS + 1).unwrap()),
    ] {
        assert!(hello(kind, params, fds).is_err(), "{kind:?} {fds}");
    }
    let bad = Request::Hello {
        version: PROTOCOL_VERSION,
        backend: Backend {
            kind: "no such".into(),
            params: Vec::new(),
            fds: 0,
        },
        poll_us: 0,
    };
    assert!(bad.encode().is_err());
    let long = Request::Hello {
        version: PROTOCOL_VERSION,
        backend: Backend {
            kind: "rng".into(),
            params: Vec::new(),
            fds: 0,
        },
        poll_us: MAX_POLL_US + 1,
    };
    assert!(long.encode().is_err());
}

#[test]
fn backends_say_how_many_fds_they_carry() {
    let hello = |fds| Request::Hello {
        version: PROTOCOL_VERSION,
        backend: Backend {
            kind: "blk".into(),
            params: Vec::new(),
            fds,
        },
        poll_us: 0,
    };
    assert_eq!(hello(0).fd_count(), 0);
    assert_eq!(hello(1).fd_count(), 1);
}

#[test]
fn oversized_input_is_rejected() {
    let b = vec![0u8; MAX_MESSAGE + 1];
    assert!(matches!(Request::decode(&b), Err(IpcError::TooLong(_))));
}

#[test]
fn invalid_utf8_text_is_rejected() {
    let mut w = Writer::new(ERROR);
    w.bytes("t", &[0xff, 0xfe], MAX_TEXT).unwrap();
    assert!(matches!(
        Reply::decode(&w.finish().unwrap()),
        Err(IpcError::BadText)
    ));
}

/// xorshift64: enough randomness to shake a decoder.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn garbage_never_panics() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..5000 {
        let len = usize::try_from(next(&mut s) % 200).unwrap();
        let mut b: Vec<u8> = (0..len).map(|_| (next(&mut s) & 0xff) as u8).collect();
        let _ = Request::decode(&b);
        let _ = Reply::decode(&b);
        // A valid header in front makes the payload decoders work too.
        if b.len() >= HEADER {
            b[..4].copy_from_slice(&MAGIC.to_le_bytes());
            b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            let kinds = [1u16, 2, 3, 4, 5, 6, 101, 102, 103, 104, 105, 106, 107];
            let k = kinds[usize::try_from(next(&mut s) % 13).unwrap()];
            b[6..8].copy_from_slice(&k.to_le_bytes());
            let plen = u32::try_from(b.len() - HEADER).unwrap();
            b[8..12].copy_from_slice(&plen.to_le_bytes());
            let _ = Request::decode(&b);
            let _ = Reply::decode(&b);
        }
    }
}

#[test]
fn single_byte_mutations_never_panic() {
    let mut s = 42u64;
    let all: Vec<Vec<u8>> = requests()
        .iter()
        .map(|r| r.encode().unwrap())
        .chain(replies().iter().map(|r| r.encode().unwrap()))
        .collect();
    for b in &all {
        for i in 0..b.len() {
            for _ in 0..8 {
                let mut m = b.clone();
                m[i] = (next(&mut s) & 0xff) as u8;
                let _ = Request::decode(&m);
                let _ = Reply::decode(&m);
            }
        }
    }
}
