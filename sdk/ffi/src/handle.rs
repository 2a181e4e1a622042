//! Handles. C holds a pointer to an opaque handle type (`navigen_engine`, `navigen_history`); behind
//! it lies a [`Checked`] value: a magic number naming the handle type, then the Rust value. A handle
//! is used only after its magic number is checked, and the number is cleared when it is freed. The
//! casts between a handle pointer and its `Checked` value are made here and nowhere else, typed by
//! [`Handle`].

use crate::boundary::{invalid, Fail};

/// An opaque C handle type and what it stands for.
pub(crate) trait Handle {
    /// The Rust value behind the handle.
    type Value;
    /// Distinct for every handle type: a handle of another type (or a freed one) is refused.
    const MAGIC: u64;
    /// The argument's name in messages ("engine").
    const ARG: &'static str;
    /// The C type's name in messages ("navigen_engine").
    const C_TYPE: &'static str;
}

/// What a handle points to. `repr(C)` puts the magic number first in every handle type, so that the
/// check reads the same place whatever the value behind it.
#[repr(C)]
struct Checked<T> {
    magic: u64,
    value: T,
}

/// Moves `value` to the heap behind a new handle; [`free`] releases it.
pub(crate) fn into_raw<H: Handle>(value: H::Value) -> *mut H {
    Box::into_raw(Box::new(Checked {
        magic: H::MAGIC,
        value,
    }))
    .cast::<H>()
}

/// The value behind a handle argument: INVALID_ARGUMENT for NULL or a handle of another type.
pub(crate) unsafe fn arg<'a, H: Handle>(p: *const H) -> Result<&'a H::Value, Fail> {
    let c = p.cast::<Checked<H::Value>>();
    if c.is_null() {
        return Err(invalid(format!("{} is NULL", H::ARG)));
    }
    // The magic number is read through the pointer; a reference is made only once it matches.
    if (*c).magic != H::MAGIC {
        return Err(invalid(format!(
            "{} is not a {} (freed, or another handle?)",
            H::ARG,
            H::C_TYPE
        )));
    }
    Ok(&(*c).value)
}

/// Releases a handle; NULL and handles of another type are ignored.
pub(crate) unsafe fn free<H: Handle>(p: *mut H) {
    let c = p.cast::<Checked<H::Value>>();
    if c.is_null() || (*c).magic != H::MAGIC {
        return;
    }
    (*c).magic = 0;
    drop(Box::from_raw(c));
}
