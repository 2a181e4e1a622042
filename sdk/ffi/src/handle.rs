//! Handles. C holds a pointer to an opaque handle type (`navigen_engine`, `navigen_history`) that is
//! only a token: it is never dereferenced. A registry of live handles maps each token to its type's
//! magic number and the Rust value, shared (`Arc`). So a NULL, freed, never-issued or wrong-type
//! pointer is refused by a lookup, without reading any memory it points to, and a handle freed while a
//! call on another thread is using it stays alive until that call returns. The casts between tokens
//! and handle pointers are made here and nowhere else, typed by [`Handle`].
//!
//! A token is the address of the value's allocation, unique while the handle lives. Once a handle is
//! freed, a later handle may get the same address: a stale pointer then names that live handle (of
//! the same type at worst, never freed memory).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::boundary::{invalid, Fail};

/// An opaque C handle type and what it stands for.
pub(crate) trait Handle {
    /// The Rust value behind the handle (shared by the calls in flight on it).
    type Value: Send + Sync + 'static;
    /// Distinct for every handle type: a handle of another type is refused.
    const MAGIC: u64;
    /// The argument's name in messages ("engine").
    const ARG: &'static str;
    /// The C type's name in messages ("navigen_engine").
    const C_TYPE: &'static str;
}

struct Entry {
    magic: u64,
    value: Arc<dyn Any + Send + Sync>,
}

fn live() -> MutexGuard<'static, HashMap<usize, Entry>> {
    static LIVE: OnceLock<Mutex<HashMap<usize, Entry>>> = OnceLock::new();
    // A panic while the lock was held leaves the map consistent (every operation is one insert,
    // lookup or remove), so a poisoned lock is taken over.
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Registers `value` behind a new handle; [`free`] releases it.
pub(crate) fn into_raw<H: Handle>(value: H::Value) -> *mut H {
    let value = Arc::new(value);
    let token = Arc::as_ptr(&value) as *const () as usize;
    live().insert(
        token,
        Entry {
            magic: H::MAGIC,
            value,
        },
    );
    token as *mut H
}

/// The value behind a handle argument: INVALID_ARGUMENT for NULL, a pointer that is not a live
/// handle (freed, or never issued), or a handle of another type.
pub(crate) fn arg<H: Handle>(p: *const H) -> Result<Arc<H::Value>, Fail> {
    if p.is_null() {
        return Err(invalid(format!("{} is NULL", H::ARG)));
    }
    let map = live();
    let Some(e) = map.get(&(p as usize)) else {
        return Err(invalid(format!(
            "{} is not a live {} (freed, or never opened?)",
            H::ARG,
            H::C_TYPE
        )));
    };
    if e.magic != H::MAGIC {
        return Err(invalid(format!(
            "{} is another kind of handle, not a {}",
            H::ARG,
            H::C_TYPE
        )));
    }
    e.value
        .clone()
        .downcast::<H::Value>()
        .map_err(|_| invalid(format!("{} is not a {}", H::ARG, H::C_TYPE)))
}

/// Releases a handle; NULL, freed, unknown pointers and handles of another type are ignored. The value
/// is dropped when the last call using it returns.
pub(crate) fn free<H: Handle>(p: *mut H) {
    let removed = {
        let mut map = live();
        match map.get(&(p as usize)) {
            Some(e) if e.magic == H::MAGIC => map.remove(&(p as usize)),
            _ => None,
        }
    };
    // Dropped outside the lock: closing an engine frees llama.cpp's model, which takes a while.
    drop(removed);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct A;
    struct B;
    impl Handle for A {
        type Value = String;
        const MAGIC: u64 = 1;
        const ARG: &'static str = "a";
        const C_TYPE: &'static str = "A";
    }
    impl Handle for B {
        type Value = String;
        const MAGIC: u64 = 2;
        const ARG: &'static str = "b";
        const C_TYPE: &'static str = "B";
    }

    #[test]
    fn stale_foreign_and_wrong_type_pointers_are_refused_without_reading_them() {
        let a = into_raw::<A>("alpha".into());
        assert_eq!(*arg(a).ok().unwrap(), "alpha");
        // The same token as another type.
        assert!(arg(a.cast::<B>()).is_err());
        free(a.cast::<B>()); // ignored: wrong type
        assert!(arg(a).is_ok());
        // A pointer never issued (not even valid memory).
        assert!(arg(0x10 as *const A).is_err());
        // Freed while in use: the user keeps it alive; afterwards it is refused.
        let in_use = arg(a).ok().unwrap();
        free(a);
        assert_eq!(*in_use, "alpha");
        assert!(arg(a).is_err());
        free(a); // a double free is ignored
        assert!(arg(std::ptr::null::<A>()).is_err());
    }
}
