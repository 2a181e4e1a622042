//! The boundary between C and Rust: the status enum and its names, the per-thread error message, and
//! the guards that every export runs its body in ([`guard`] for those that return a status,
//! [`guard_void`] for the `*_free` functions, [`guard_value`] for those that return a value). Setting
//! the message happens inside the boundary too, and never panics (a thread being torn down, a
//! re-entered call).

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use navigen::Error;

/// Result of every call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum navigen_status {
    NAVIGEN_OK = 0,
    /// A NULL pointer, a wrong handle, invalid UTF-8 or a value out of range.
    NAVIGEN_ERR_INVALID_ARGUMENT = 1,
    /// A file could not be read or written.
    NAVIGEN_ERR_IO = 2,
    /// A navigen file is damaged or of another version.
    NAVIGEN_ERR_FORMAT = 3,
    /// llama.cpp refused the model or a decode step.
    NAVIGEN_ERR_MODEL = 4,
    /// Stopped by navigen_cancel() or by the token callback.
    NAVIGEN_ERR_CANCELLED = 5,
    /// The bundle cannot do this (e.g. next-item prediction with a zero-shot model).
    NAVIGEN_ERR_NOT_SUPPORTED = 6,
    /// Files that do not belong together (catalog vs model, prompt format versions).
    NAVIGEN_ERR_MISMATCH = 7,
    /// A bug inside navigen (a caught panic).
    NAVIGEN_ERR_INTERNAL = 8,
}
use navigen_status::*;

/// The name of every status, in the order of their values (checked below and by a test):
/// navigen_status_string() returns these.
const STATUS_NAMES: [(navigen_status, &CStr); 9] = [
    (NAVIGEN_OK, c"NAVIGEN_OK"),
    (
        NAVIGEN_ERR_INVALID_ARGUMENT,
        c"NAVIGEN_ERR_INVALID_ARGUMENT",
    ),
    (NAVIGEN_ERR_IO, c"NAVIGEN_ERR_IO"),
    (NAVIGEN_ERR_FORMAT, c"NAVIGEN_ERR_FORMAT"),
    (NAVIGEN_ERR_MODEL, c"NAVIGEN_ERR_MODEL"),
    (NAVIGEN_ERR_CANCELLED, c"NAVIGEN_ERR_CANCELLED"),
    (NAVIGEN_ERR_NOT_SUPPORTED, c"NAVIGEN_ERR_NOT_SUPPORTED"),
    (NAVIGEN_ERR_MISMATCH, c"NAVIGEN_ERR_MISMATCH"),
    (NAVIGEN_ERR_INTERNAL, c"NAVIGEN_ERR_INTERNAL"),
];

/// The name for any value outside the enum.
const UNKNOWN_STATUS: &CStr = c"NAVIGEN_UNKNOWN_STATUS";

// STATUS_NAMES[i] is the status of value i.
const _: () = {
    let mut i = 0;
    while i < STATUS_NAMES.len() {
        assert!(STATUS_NAMES[i].0 as usize == i);
        i += 1;
    }
};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut m) = e.try_borrow_mut() {
            *m = c;
        }
    });
}

/// The message of the last failed call on this thread ("" after a success). Valid until the next call
/// on this thread.
#[no_mangle]
pub extern "C" fn navigen_last_error() -> *const c_char {
    guard_value(c"".as_ptr(), || {
        LAST_ERROR
            .try_with(|e| e.try_borrow().map(|m| m.as_ptr()).ok())
            .ok()
            .flatten()
            .unwrap_or(c"".as_ptr())
    })
}

/// A static name for a status value ("NAVIGEN_OK", ...; "NAVIGEN_UNKNOWN_STATUS" for other values).
/// Takes an int so that any value, even one outside the enum, is safe to pass.
#[no_mangle]
pub extern "C" fn navigen_status_string(status: i32) -> *const c_char {
    guard_value(UNKNOWN_STATUS.as_ptr(), || {
        usize::try_from(status)
            .ok()
            .and_then(|i| STATUS_NAMES.get(i))
            .map_or(UNKNOWN_STATUS, |&(_, name)| name)
            .as_ptr()
    })
}

/// A failed call: the status it returns and the message navigen_last_error() gives.
pub(crate) struct Fail(pub(crate) navigen_status, pub(crate) String);

fn status_of(e: &Error) -> navigen_status {
    match e {
        Error::Format { .. } | Error::FormatInMemory(_) => NAVIGEN_ERR_FORMAT,
        Error::Io { .. } => NAVIGEN_ERR_IO,
        Error::InvalidArgument(_) => NAVIGEN_ERR_INVALID_ARGUMENT,
        Error::Mismatch(_) => NAVIGEN_ERR_MISMATCH,
        Error::Llama(_) => NAVIGEN_ERR_MODEL,
        Error::Cancelled => NAVIGEN_ERR_CANCELLED,
        Error::NotSupported(_) => NAVIGEN_ERR_NOT_SUPPORTED,
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(status_of(&e), e.to_string())
    }
}

/// A result that does not serialise to JSON is a bug of ours.
impl From<serde_json::Error> for Fail {
    fn from(e: serde_json::Error) -> Self {
        Fail(NAVIGEN_ERR_INTERNAL, e.to_string())
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Fail {
    Fail(NAVIGEN_ERR_INVALID_ARGUMENT, msg.into())
}

/// Runs `f` behind the panic boundary and turns its outcome into a status; sets this thread's message
/// ("" on success).
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Fail>) -> navigen_status {
    let run = || match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            NAVIGEN_OK
        }
        Ok(Err(Fail(s, m))) => {
            set_error(&m);
            s
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_error(&format!("internal error (panic): {what}"));
            NAVIGEN_ERR_INTERNAL
        }
    };
    // Setting the message is inside the boundary as well.
    catch_unwind(AssertUnwindSafe(run)).unwrap_or(NAVIGEN_ERR_INTERNAL)
}

/// Runs `f` behind the panic boundary for an export that returns a value; `fallback` on a panic.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Runs `f` behind the panic boundary for an export that returns nothing (the `*_free` functions): a
/// panic is caught and dropped, and this thread's message is left as it was.
pub(crate) fn guard_void(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Setting the message is inside the boundary and cannot panic: not even while the message is
    /// borrowed on this thread (before, a `borrow_mut` outside `catch_unwind` would unwind into C).
    #[test]
    fn setting_the_message_while_it_is_borrowed_does_not_panic() {
        LAST_ERROR.with(|e| {
            let _held = e.borrow();
            assert_eq!(guard(|| Err(invalid("x"))), NAVIGEN_ERR_INVALID_ARGUMENT);
            assert_eq!(guard(|| Ok(())), NAVIGEN_OK);
            assert_eq!(guard(|| panic!("inside")), NAVIGEN_ERR_INTERNAL);
        });
    }

    #[test]
    fn every_status_has_its_own_name() {
        for (i, (status, name)) in STATUS_NAMES.iter().enumerate() {
            assert_eq!(*status as usize, i);
            assert_eq!(name.to_str().unwrap(), format!("{status:?}"));
            let got = unsafe { CStr::from_ptr(navigen_status_string(i as i32)) };
            assert_eq!(got, *name);
        }
        for other in [-1, 9, 12345, i32::MIN, i32::MAX] {
            let got = unsafe { CStr::from_ptr(navigen_status_string(other)) };
            assert_eq!(got, UNKNOWN_STATUS);
        }
    }
}
