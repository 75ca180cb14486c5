//! The common configuration's rules, one behaviour per test.

use super::*;

const OFFERED: u64 = (1 << 32) | (1 << 29) | 1;

/// Two queues of at most 256, three vectors.
fn cfg() -> CommonConfig {
    CommonConfig::new(OFFERED, 2, 256, 3)
}

fn read(c: &CommonConfig, offset: u64, len: usize) -> u64 {
    let mut b = vec![0u8; len];
    c.read(offset, &mut b);
    le_value(&b)
}

fn write(c: &mut CommonConfig, offset: u64, v: u64, len: usize) -> Effect {
    c.write(offset, &v.to_le_bytes()[..len])
}

/// Negotiates `features` and sets FEATURES_OK.
fn negotiate(c: &mut CommonConfig, features: u64) -> Effect {
    write(
        c,
        DEVICE_STATUS,
        u64::from(status::ACKNOWLEDGE | status::DRIVER),
        1,
    );
    write(c, DRIVER_FEATURE_SELECT, 0, 4);
    write(c, DRIVER_FEATURE, features & 0xffff_ffff, 4);
    write(c, DRIVER_FEATURE_SELECT, 1, 4);
    write(c, DRIVER_FEATURE, features >> 32, 4);
    write(
        c,
        DEVICE_STATUS,
        u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        1,
    )
}

fn set_up_queue(c: &mut CommonConfig, index: u16, size: u16) {
    write(c, QUEUE_SELECT, u64::from(index), 2);
    write(c, QUEUE_SIZE, u64::from(size), 2);
    write(c, QUEUE_DESC, 0x1_0000_1000, 8);
    write(c, QUEUE_DRIVER, 0x2000, 4);
    write(c, QUEUE_DRIVER + 4, 0, 4);
    write(c, QUEUE_DEVICE, 0x3000, 8);
    write(c, QUEUE_ENABLE, 1, 2);
}

const DRIVER_OK_ALL: u8 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn the_device_features_read_in_two_halves() {
    let mut c = cfg();
    assert_eq!(read(&c, DEVICE_FEATURE, 4), OFFERED & 0xffff_ffff);
    write(&mut c, DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(read(&c, DEVICE_FEATURE, 4), OFFERED >> 32);
    write(&mut c, DEVICE_FEATURE_SELECT, 2, 4);
    assert_eq!(read(&c, DEVICE_FEATURE, 4), 0);
    assert_eq!(read(&c, NUM_QUEUES, 2), 2);
}

#[test]
fn offered_features_are_accepted() {
    let mut c = cfg();
    assert_eq!(negotiate(&mut c, 1 << 32), Effect::None);
    assert_eq!(c.status() & status::FEATURES_OK, status::FEATURES_OK);
    assert_eq!(c.driver_features(), 1 << 32);
    assert_eq!(read(&c, DRIVER_FEATURE, 4), 1);
}

#[test]
fn unoffered_features_refuse_features_ok() {
    let mut c = cfg();
    assert_eq!(
        negotiate(&mut c, (1 << 32) | (1 << 5)),
        Effect::UnofferedFeatures(1 << 5)
    );
    assert_eq!(c.status() & status::FEATURES_OK, 0);
}

#[test]
fn features_are_frozen_after_features_ok() {
    let mut c = cfg();
    negotiate(&mut c, 1 << 32);
    write(&mut c, DRIVER_FEATURE_SELECT, 0, 4);
    write(&mut c, DRIVER_FEATURE, 1, 4);
    assert_eq!(c.driver_features(), 1 << 32);
}

#[test]
fn queue_sizes_are_powers_of_two_up_to_the_maximum() {
    let mut c = cfg();
    for (size, want) in [(128, 128), (100, 128), (512, 128), (0, 128), (1, 1)] {
        write(&mut c, QUEUE_SIZE, size, 2);
        assert_eq!(read(&c, QUEUE_SIZE, 2), want, "size {size}");
    }
}

#[test]
fn queue_addresses_are_written_in_halves_or_whole() {
    let mut c = cfg();
    set_up_queue(&mut c, 1, 64);
    let q = c.enabled_queues();
    assert_eq!(
        q,
        vec![QueueLayout {
            index: 1,
            size: 64,
            desc: 0x1_0000_1000,
            avail: 0x2000,
            used: 0x3000,
        }]
    );
    write(&mut c, QUEUE_SELECT, 1, 2);
    assert_eq!(read(&c, QUEUE_DESC + 4, 4), 1);
    assert_eq!(read(&c, QUEUE_DESC, 4), 0x1000);
    assert_eq!(read(&c, QUEUE_NOTIFY_OFF, 2), 1);
}

#[test]
fn a_queue_that_does_not_exist_reads_as_absent_and_ignores_writes() {
    let mut c = cfg();
    write(&mut c, QUEUE_SELECT, 7, 2);
    write(&mut c, QUEUE_ENABLE, 1, 2);
    write(&mut c, QUEUE_SIZE, 16, 2);
    assert_eq!(read(&c, QUEUE_SIZE, 2), 0);
    assert_eq!(read(&c, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert!(c.enabled_queues().is_empty());
}

#[test]
fn queue_setup_is_frozen_after_driver_ok() {
    let mut c = cfg();
    negotiate(&mut c, 1 << 32);
    set_up_queue(&mut c, 0, 64);
    assert_eq!(
        write(&mut c, DEVICE_STATUS, u64::from(DRIVER_OK_ALL), 1),
        Effect::Activate
    );
    assert!(c.is_active());
    let before = c.enabled_queues();
    write(&mut c, QUEUE_SELECT, 0, 2);
    write(&mut c, QUEUE_SIZE, 16, 2);
    write(&mut c, QUEUE_DESC, 0x9000, 8);
    write(&mut c, QUEUE_ENABLE, 0, 2);
    write(&mut c, QUEUE_SELECT, 1, 2);
    write(&mut c, QUEUE_ENABLE, 1, 2);
    assert_eq!(c.enabled_queues(), before);
}

#[test]
fn driver_ok_activates_once() {
    let mut c = cfg();
    negotiate(&mut c, 1 << 32);
    assert_eq!(
        write(&mut c, DEVICE_STATUS, u64::from(DRIVER_OK_ALL), 1),
        Effect::Activate
    );
    assert_eq!(
        write(&mut c, DEVICE_STATUS, u64::from(DRIVER_OK_ALL), 1),
        Effect::None
    );
}

#[test]
fn writing_zero_resets_everything_but_the_generation() {
    let mut c = cfg();
    negotiate(&mut c, 1 << 32);
    set_up_queue(&mut c, 0, 64);
    write(&mut c, CONFIG_MSIX_VECTOR, 0, 2);
    write(&mut c, DEVICE_STATUS, u64::from(DRIVER_OK_ALL), 1);
    c.config_changed();
    assert_eq!(write(&mut c, DEVICE_STATUS, 0, 1), Effect::Reset);
    assert_eq!(c.status(), 0);
    assert_eq!(c.driver_features(), 0);
    assert!(c.enabled_queues().is_empty());
    assert_eq!(c.config_vector(), NO_VECTOR);
    assert_eq!(read(&c, QUEUE_SIZE, 2), 256);
    assert_eq!(read(&c, CONFIG_GENERATION, 1), 1);
}

#[test]
fn needs_reset_sticks_until_the_driver_resets() {
    let mut c = cfg();
    negotiate(&mut c, 1 << 32);
    write(&mut c, DEVICE_STATUS, u64::from(DRIVER_OK_ALL), 1);
    assert!(c.fail());
    assert!(!c.is_active());
    assert_eq!(read(&c, CONFIG_GENERATION, 1), 1);
    write(&mut c, DEVICE_STATUS, u64::from(DRIVER_OK_ALL), 1);
    assert_ne!(c.status() & status::NEEDS_RESET, 0);
    write(&mut c, DEVICE_STATUS, 0, 1);
    assert_eq!(c.status(), 0);
}

#[test]
fn a_reset_device_cannot_fail() {
    let mut c = cfg();
    assert!(!c.fail());
    assert_eq!(c.status(), 0);
}

#[test]
fn vectors_past_the_table_read_back_as_no_vector() {
    let mut c = cfg();
    assert_eq!(write(&mut c, CONFIG_MSIX_VECTOR, 2, 2), Effect::Routes);
    assert_eq!(c.config_vector(), 2);
    write(&mut c, CONFIG_MSIX_VECTOR, 3, 2);
    assert_eq!(c.config_vector(), NO_VECTOR);
    write(&mut c, QUEUE_SELECT, 1, 2);
    assert_eq!(write(&mut c, QUEUE_MSIX_VECTOR, 1, 2), Effect::Routes);
    write(&mut c, QUEUE_SELECT, 0, 2);
    write(&mut c, QUEUE_MSIX_VECTOR, 0x8000, 2);
    assert_eq!(c.queue_vectors(), vec![NO_VECTOR, 1]);
    assert_eq!(read(&c, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
}

#[test]
fn odd_widths_and_offsets_never_panic() {
    let mut c = cfg();
    for offset in 0..LEN + 8 {
        for len in [0, 1, 2, 3, 4, 8, 9] {
            let mut b = vec![0xffu8; len];
            c.read(offset, &mut b);
            c.write(offset, &b);
        }
    }
}

#[test]
fn writing_zero_to_a_device_never_started_resets_only_the_registers() {
    let mut c = cfg();
    write(&mut c, QUEUE_SIZE, 16, 2);
    assert_eq!(write(&mut c, DEVICE_STATUS, 0, 1), Effect::Routes);
    assert_eq!(read(&c, QUEUE_SIZE, 2), 256);
}

#[test]
fn driver_ok_without_features_ok_does_not_start_the_device() {
    // Found by the transport fuzz target: features written after a
    // DRIVER_OK that skipped FEATURES_OK changed what the transport
    // reported for a running device.
    let mut c = cfg();
    write(&mut c, DRIVER_FEATURE, 1 << 5, 4);
    let no_features_ok = status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK;
    assert_eq!(
        write(&mut c, DEVICE_STATUS, u64::from(no_features_ok), 1),
        Effect::None
    );
    assert!(!c.is_active());
    assert_eq!(c.status() & status::DRIVER_OK, 0);
}

#[test]
fn features_are_frozen_once_the_device_runs() {
    let mut c = cfg();
    negotiate(&mut c, 1 << 32);
    write(&mut c, DEVICE_STATUS, u64::from(DRIVER_OK_ALL), 1);
    write(
        &mut c,
        DEVICE_STATUS,
        u64::from(DRIVER_OK_ALL & !status::FEATURES_OK),
        1,
    );
    write(&mut c, DRIVER_FEATURE_SELECT, 0, 4);
    write(&mut c, DRIVER_FEATURE, 1 << 5, 4);
    assert_eq!(c.driver_features(), 1 << 32);
}

#[test]
fn a_saved_running_configuration_restores_into_a_fresh_one() {
    let mut c = cfg();
    negotiate(&mut c, 1 << 32);
    set_up_queue(&mut c, 1, 64);
    write(&mut c, QUEUE_MSIX_VECTOR, 2, 2);
    write(&mut c, CONFIG_MSIX_VECTOR, 0, 2);
    write(&mut c, DEVICE_STATUS, u64::from(DRIVER_OK_ALL), 1);
    let saved = c.save();
    let mut fresh = cfg();
    fresh.restore(&saved).unwrap();
    assert_eq!(fresh, c);
    assert!(fresh.is_active());
    assert_eq!(fresh.enabled_queues(), c.enabled_queues());
    // Restored, it follows the rules as before: no queue setup once running.
    assert_eq!(write(&mut fresh, QUEUE_SIZE, 32, 2), Effect::None);
    assert_eq!(read(&fresh, QUEUE_SIZE, 2), 64);
}

#[test]
fn a_saved_configuration_no_driver_could_set_is_refused_whole() {
    let mut c = cfg();
    negotiate(&mut c, 1);
    set_up_queue(&mut c, 0, 128);
    let good = c.save();
    let cases: Vec<(CommonState, CommonStateError)> = vec![
        (
            CommonState {
                queues: good.queues[..1].to_vec(),
                ..good.clone()
            },
            CommonStateError::Queues {
                saved: 1,
                device: 2,
            },
        ),
        {
            let mut s = good.clone();
            s.queues[0].size = 100;
            (
                s,
                CommonStateError::QueueSize {
                    index: 0,
                    size: 100,
                    max: 256,
                },
            )
        },
        {
            let mut s = good.clone();
            s.queues[1].size = 512;
            (
                s,
                CommonStateError::QueueSize {
                    index: 1,
                    size: 512,
                    max: 256,
                },
            )
        },
        {
            let mut s = good.clone();
            s.queues[0].vector = 3;
            (s, CommonStateError::Vector(3, 3))
        },
        (
            CommonState {
                msix_config: 7,
                ..good.clone()
            },
            CommonStateError::Vector(7, 3),
        ),
        (
            CommonState {
                status: 0x80 | status::ACKNOWLEDGE,
                ..good.clone()
            },
            CommonStateError::Status(0x81),
        ),
        (
            CommonState {
                status: status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
                ..good.clone()
            },
            CommonStateError::Status(7),
        ),
        (
            CommonState {
                driver_features: 1 << 40,
                ..good.clone()
            },
            CommonStateError::Features(1 << 40),
        ),
    ];
    for (bad, why) in cases {
        let mut fresh = cfg();
        assert_eq!(fresh.restore(&bad), Err(why));
        assert_eq!(fresh, cfg(), "a refused state changed nothing");
    }
}
