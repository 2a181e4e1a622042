//! The C ABI of navigen. A thin layer over the `navigen` crate: argument checks, a panic boundary on
//! every export, status codes and a per-thread error message. The header `include/navigen.h` is
//! generated from these modules by cbindgen.
//!
//! One module per C concept: `boundary` (the status enum and its names, the per-thread error
//! message, the panic guards every export runs in), `handle` (the one checked handle type behind
//! both handles, and the only casts of handle pointers), `convert` (arguments from C and the strings
//! handed back), `engine` and `history` (their handles, parameter structs and exports).
//!
//! cbindgen reads this file's items first, then the modules in the order declared below (rustfmt keeps
//! them sorted by name): that is the order of the functions in the header, and the header test fails
//! if it changes.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_char;

mod boundary;
mod convert;
mod engine;
mod handle;
mod history;

/// Version of this C ABI; bumped on any incompatible change. navigen_abi_version() returns it.
pub const NAVIGEN_ABI_VERSION: u32 = 2;

/// The ABI version this library implements (NAVIGEN_ABI_VERSION of its header).
#[no_mangle]
pub extern "C" fn navigen_abi_version() -> u32 {
    boundary::guard_value(NAVIGEN_ABI_VERSION, || NAVIGEN_ABI_VERSION)
}

/// The library version, e.g. "0.1.0" (static string).
#[no_mangle]
pub extern "C" fn navigen_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    boundary::guard_value(V.as_ptr() as *const c_char, || V.as_ptr() as *const c_char)
}
