//! Arguments from C (strings, arrays of strings, out-parameters) and the strings handed back to it.

use std::ffi::{c_char, CStr, CString};

use crate::boundary::{guard_void, invalid, navigen_status::NAVIGEN_ERR_INTERNAL, Fail};

/// A NUL-terminated UTF-8 string argument named `what`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

/// An out-parameter named `what`.
pub(crate) unsafe fn out_arg<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Fail> {
    p.as_mut().ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// An out-parameter for a pointer (a handle or a string), set to NULL at once: it stays NULL when the
/// call fails.
pub(crate) unsafe fn out_ptr_arg<'a, T>(
    p: *mut *mut T,
    what: &str,
) -> Result<&'a mut *mut T, Fail> {
    let out = out_arg(p, what)?;
    *out = std::ptr::null_mut();
    Ok(out)
}

/// The history array: `n` item ids (none when `n` is 0, whatever `items` is).
pub(crate) unsafe fn list_arg<'a>(
    items: *const *const c_char,
    n: usize,
) -> Result<Vec<&'a str>, Fail> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if items.is_null() {
        return Err(invalid("the history array is NULL"));
    }
    if n > 100_000 {
        return Err(invalid(format!("history length {n} is not plausible")));
    }
    (0..n)
        .map(|i| str_arg(*items.add(i), &format!("history[{i}]")))
        .collect()
}

/// Hands `s` to C in `*out`; the caller releases it with navigen_string_free().
pub(crate) fn out_string(out: &mut *mut c_char, s: String) -> Result<(), Fail> {
    let c = CString::new(s)
        .map_err(|_| Fail(NAVIGEN_ERR_INTERNAL, "result holds a NUL byte".into()))?;
    *out = c.into_raw();
    Ok(())
}

/// Releases a string returned by navigen (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn navigen_string_free(s: *mut c_char) {
    guard_void(|| {
        if !s.is_null() {
            drop(CString::from_raw(s));
        }
    })
}
