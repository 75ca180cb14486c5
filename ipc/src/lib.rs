//! The VMM <-> device process protocol: messages, a bounded total decoder and
//! file-descriptor passing with a per-message cap.
