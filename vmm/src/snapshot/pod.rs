//! KVM's state structures as bytes, and back.

use super::format::{Dec, FormatError};

/// A type whose value is its bytes: `#[repr(C)]`, every field an integer
/// (or an array or union of integers), no implicit padding.
///
/// # Safety
///
/// Any bytes of `size_of::<Self>()` must be a valid value, and every byte
/// of a value must be initialised (no padding the compiler adds).
pub unsafe trait Pod: Copy + Default {
    /// The value's bytes.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self: Pod` has every byte initialised, and the slice
        // borrows `self` for its whole size.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
    }
}

/// Reads one `T` from `d`.
pub fn from_bytes<T: Pod>(d: &mut Dec<'_>) -> Result<T, FormatError> {
    let b = d.raw(std::mem::size_of::<T>())?;
    let mut v = T::default();
    // SAFETY: `b` has exactly `size_of::<T>()` bytes, `v` is a distinct
    // local of that size, and `T: Pod` takes any bytes as a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(
            b.as_ptr(),
            (&mut v as *mut T).cast::<u8>(),
            std::mem::size_of::<T>(),
        );
    }
    Ok(v)
}
