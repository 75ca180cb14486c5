//! What a new instance of a device is handed to carry on from (on restart
//! and on the memory-hotplug rebuild): the state its predecessor saved,
//! once checked against what the transport knows, or else the transport's
//! own knowledge.
//!
//! The predecessor may be hostile: its saved state is a claim. The
//! transport knows the features the driver accepted and the queues it
//! enabled, with their rings and sizes; a state that says otherwise would
//! make the successor serve rings the driver never set up (or with
//! features it never accepted), so it is not used. It is then treated as
//! if there were no saved state: the successor starts from the transport's
//! state with the indices read back from the used rings, as after a
//! device that died unsaved. That path loses only what the transport
//! cannot know (the model's own bytes and in-flight work the old instance
//! held back), which a lying instance has no claim to, and keeps the
//! device, and the guest's I/O on it, running. Failing the device instead
//! would gain nothing: the successor is a fresh process that never saw
//! the liar's memory, and the state it gets is the VMM's. What the
//! transport cannot check (the model's bytes, the indices) the successor
//! decodes and validates itself.

use ipc::{DeviceState, QueueLayout, QueueState};

use crate::virtio_pci::DriverState;

/// How a saved state differs from what the transport knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateMismatch {
    /// Other features than the driver accepted.
    #[error("features {saved:#x}, but the driver accepted {driver:#x}")]
    Features {
        /// What the state says.
        saved: u64,
        /// What the driver accepted.
        driver: u64,
    },
    /// Another number of queues than the driver enabled.
    #[error("{saved} queues, but the driver enabled {driver}")]
    QueueCount {
        /// What the state says.
        saved: usize,
        /// What the driver enabled.
        driver: usize,
    },
    /// A queue elsewhere, or of another size, than the driver set up.
    #[error("queue {index} is not where or as large as the driver set it up")]
    Layout {
        /// The driver's queue index at that position.
        index: u16,
    },
    /// An event-index flag the negotiated features contradict.
    #[error("queue {index} has event indices {saved}, but the features say {driver}")]
    EventIdx {
        /// The queue.
        index: u16,
        /// What the state says.
        saved: bool,
        /// What the features say.
        driver: bool,
    },
    /// More requests taken than returned than the queue has descriptors.
    #[error("queue {index} has {in_flight} requests in flight, more than its {size} entries")]
    InFlight {
        /// The queue.
        index: u16,
        /// next_avail - next_used.
        in_flight: u16,
        /// The queue's size.
        size: u16,
    },
}

/// Whether the driver accepted event indices with `features`.
fn event_idx(features: u64) -> bool {
    features & (1 << devices::virtio::VIRTIO_F_RING_EVENT_IDX) != 0
}

/// The state of a running device as the transport knows it: features and
/// queue layouts (no indices), for an instance that died unsaved.
pub fn known_state(driver: &DriverState) -> DeviceState {
    DeviceState {
        features: driver.features,
        queues: driver
            .queues
            .iter()
            .map(|q| QueueState {
                layout: crate::remote::wire_layout(*q),
                event_idx: event_idx(driver.features),
                next_avail: 0,
                next_used: 0,
            })
            .collect(),
        device: Vec::new(),
    }
}

/// Checks `saved` against what the transport knows (`driver`): the same
/// features, the same queues in the same order with the same rings and
/// sizes, event indices as the features say, and no more requests in
/// flight than a queue has entries.
pub fn check_saved(saved: &DeviceState, driver: &DriverState) -> Result<(), StateMismatch> {
    if saved.features != driver.features {
        return Err(StateMismatch::Features {
            saved: saved.features,
            driver: driver.features,
        });
    }
    if saved.queues.len() != driver.queues.len() {
        return Err(StateMismatch::QueueCount {
            saved: saved.queues.len(),
            driver: driver.queues.len(),
        });
    }
    let want_idx = event_idx(driver.features);
    for (s, d) in saved.queues.iter().zip(&driver.queues) {
        let known: QueueLayout = crate::remote::wire_layout(*d);
        if s.layout != known {
            return Err(StateMismatch::Layout { index: d.index });
        }
        if s.event_idx != want_idx {
            return Err(StateMismatch::EventIdx {
                index: d.index,
                saved: s.event_idx,
                driver: want_idx,
            });
        }
        let in_flight = s.next_avail.wrapping_sub(s.next_used);
        if in_flight > d.size {
            return Err(StateMismatch::InFlight {
                index: d.index,
                in_flight,
                size: d.size,
            });
        }
    }
    Ok(())
}

/// What the successor of device `name` is handed, and whether it must
/// recover its indices from the used rings: `saved` if it matches the
/// transport's `driver` state, else (logged, naming the device and the
/// reason) or without one the transport's own state.
pub fn for_successor(
    name: &str,
    saved: Option<DeviceState>,
    driver: &DriverState,
) -> (DeviceState, bool) {
    match saved.map(|s| check_saved(&s, driver).map(|()| s)) {
        Some(Ok(s)) => (s, false),
        Some(Err(why)) => {
            crate::log::error(&format!(
                "device {name}: its saved state does not match the transport ({why}); \
                 the new instance carries on from the transport's state instead"
            ));
            (known_state(driver), true)
        }
        None => (known_state(driver), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_pci::QueueLayout as TransportLayout;

    fn driver() -> DriverState {
        let q = |index: u16, base: u64| TransportLayout {
            index,
            size: 256,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
        };
        DriverState {
            features: (1 << 32) | (1 << devices::virtio::VIRTIO_F_RING_EVENT_IDX),
            queues: vec![q(0, 0x10_0000), q(1, 0x20_0000)],
        }
    }

    /// What an honest device saves: the driver's layout, with indices
    /// and model bytes of its own.
    fn honest() -> DeviceState {
        let mut s = known_state(&driver());
        for q in &mut s.queues {
            q.next_avail = 7;
            q.next_used = 5;
        }
        s.device = vec![1, 2, 3];
        s
    }

    #[test]
    fn an_honest_state_is_handed_on_as_saved() {
        assert_eq!(check_saved(&honest(), &driver()), Ok(()));
        assert_eq!(
            for_successor("rng0", Some(honest()), &driver()),
            (honest(), false)
        );
    }

    #[test]
    fn indices_that_wrap_are_not_a_mismatch() {
        let mut s = honest();
        s.queues[0].next_avail = 3;
        s.queues[0].next_used = u16::MAX - 2;
        assert_eq!(check_saved(&s, &driver()), Ok(()));
    }

    #[test]
    fn other_features_are_refused() {
        let mut s = honest();
        s.features |= 1 << 28;
        assert!(matches!(
            check_saved(&s, &driver()),
            Err(StateMismatch::Features { .. })
        ));
    }

    #[test]
    fn a_missing_or_extra_queue_is_refused() {
        let mut fewer = honest();
        fewer.queues.pop();
        let e = check_saved(&fewer, &driver()).unwrap_err();
        assert_eq!(
            e,
            StateMismatch::QueueCount {
                saved: 1,
                driver: 2
            }
        );
        let mut more = honest();
        more.queues.push(more.queues[0]);
        assert!(check_saved(&more, &driver()).is_err());
    }

    #[test]
    fn a_moved_resized_or_renumbered_queue_is_refused() {
        let changes: [fn(&mut ipc::QueueLayout); 5] = [
            |l| l.desc += 0x1000,
            |l| l.avail = 0,
            |l| l.used = u64::MAX,
            |l| l.size = 1024,
            |l| l.index = 0,
        ];
        for change in changes {
            let mut s = honest();
            change(&mut s.queues[1].layout);
            let e = check_saved(&s, &driver()).unwrap_err();
            assert_eq!(e, StateMismatch::Layout { index: 1 });
        }
    }

    #[test]
    fn queues_in_another_order_are_refused() {
        let mut s = honest();
        s.queues.swap(0, 1);
        assert!(check_saved(&s, &driver()).is_err());
    }

    #[test]
    fn an_event_index_flag_against_the_features_is_refused() {
        let mut s = honest();
        s.queues[0].event_idx = false;
        assert!(matches!(
            check_saved(&s, &driver()),
            Err(StateMismatch::EventIdx { index: 0, .. })
        ));
    }

    #[test]
    fn more_in_flight_than_a_queue_holds_is_refused() {
        let mut s = honest();
        s.queues[1].next_avail = 300;
        s.queues[1].next_used = 0;
        let e = check_saved(&s, &driver()).unwrap_err();
        assert_eq!(
            e,
            StateMismatch::InFlight {
                index: 1,
                in_flight: 300,
                size: 256
            }
        );
    }

    #[test]
    fn a_mismatch_hands_on_the_transports_state_to_recover_from() {
        let mut s = honest();
        s.features = 0;
        let (state, recover) = for_successor("blk0", Some(s), &driver());
        assert_eq!(state, known_state(&driver()));
        assert!(recover);
    }

    #[test]
    fn without_a_saved_state_the_transports_is_used() {
        let (state, recover) = for_successor("blk0", None, &driver());
        assert_eq!(state, known_state(&driver()));
        assert!(recover);
    }
}
