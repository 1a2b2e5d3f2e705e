//! The C functions of dqlite.h, and the only unsafe code of the crate.
//!
//! Invariants every function relies on, as dqlite.h states them for C
//! dqlite:
//! - A `dqlite_node *` is either null (refused with `DQLITE_MISUSE` where
//!   the signature allows a code) or a pointer `dqlite_node_create` wrote
//!   and `dqlite_node_destroy` has not freed yet. It is a `Box<NodeHandle>`
//!   turned into a raw pointer.
//! - Calls on one node are not concurrent (go-dqlite makes them from one
//!   goroutine at a time), so `&mut NodeHandle` is unique for the call.
//! - Strings are NUL-terminated and live for the call; the pointer
//!   `dqlite_node_errmsg` and `dqlite_node_get_bind_address` return lives
//!   until the next call on the same node.
//! - Arrays (`infos`, `n_info`) hold at least `n_info` elements.
//!
//! No panic crosses the boundary: every body runs under `catch_unwind`
//! and a panic becomes `DQLITE_ERROR` (or a neutral value).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_int, c_uint, c_ulonglong, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use dqlite_node::{NodeInfo, Role};

use crate::handle::{NodeHandle, ERROR, MISUSE, OK};

/// Size of the first version of `dqlite_node_info_ext`.
const NODE_INFO_EXT_SZ_ORIG: u64 = 32;

/// The application's connect function and its argument.
pub struct ConnectFunc {
    f: unsafe extern "C" fn(arg: *mut c_void, address: *const c_char, fd: *mut c_int) -> c_int,
    arg: *mut c_void,
}

// SAFETY: dqlite.h lets the node call the connect function from its own
// thread with the argument the application gave; go-dqlite's function
// locks its own registry. The pointer is never dereferenced here.
unsafe impl Send for ConnectFunc {}
// SAFETY: as above; calls may overlap, which go-dqlite serializes itself.
unsafe impl Sync for ConnectFunc {}

impl ConnectFunc {
    /// Calls the function; blocks until it returns a connected socket.
    pub fn connect(&self, address: &str) -> io::Result<OwnedFd> {
        let address = CString::new(address)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in address"))?;
        let mut fd: c_int = -1;
        // SAFETY: `f` and `arg` are what the application registered for
        // this purpose; `address` and `fd` outlive the call.
        let rc = unsafe { (self.f)(self.arg, address.as_ptr(), &mut fd) };
        if rc != 0 || fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the connect function failed with code {rc}"),
            ));
        }
        // SAFETY: on success the function hands over a connected socket
        // that nothing else owns (go-dqlite passes a dup of its own).
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Runs `f`, turning a panic into `on_panic`.
fn guard<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// The node behind `n`, if not null.
///
/// # Safety
/// `n` is null or a live pointer from `dqlite_node_create` that no other
/// call is using (module invariants).
unsafe fn node<'a>(n: *mut NodeHandle) -> Option<&'a mut NodeHandle> {
    // SAFETY: the caller's contract above.
    unsafe { n.as_mut() }
}

/// A string argument, if not null and UTF-8.
///
/// # Safety
/// `s` is null or a NUL-terminated string live for the call.
unsafe fn string<'a>(s: *const c_char) -> Option<&'a str> {
    if s.is_null() {
        return None;
    }
    // SAFETY: the caller's contract above.
    unsafe { CStr::from_ptr(s) }.to_str().ok()
}

/// Applies `f` to the node, or returns `DQLITE_MISUSE` for a null one.
///
/// # Safety
/// As [`node`].
unsafe fn with_node(n: *mut NodeHandle, f: impl FnOnce(&mut NodeHandle) -> c_int) -> c_int {
    guard(ERROR, || match unsafe { node(n) } {
        Some(node) => f(node),
        None => MISUSE,
    })
}

/// The version of the dqlite C API this library provides (1.11.1).
#[no_mangle]
pub extern "C" fn dqlite_version_number() -> c_int {
    11101
}

/// Creates a node; on failure `*n` still points to a node whose
/// `dqlite_node_errmsg` says why (free it with `dqlite_node_destroy`).
///
/// # Safety
/// `address` and `data_dir` are C strings; `n` is writable.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_create(
    id: c_ulonglong,
    address: *const c_char,
    data_dir: *const c_char,
    n: *mut *mut NodeHandle,
) -> c_int {
    guard(ERROR, || {
        if n.is_null() {
            return MISUSE;
        }
        crate::trace::init();
        // SAFETY: module invariants.
        let (address, dir) = unsafe { (string(address), string(data_dir)) };
        let mut handle = Box::new(NodeHandle::new(
            id,
            address.unwrap_or(""),
            dir.unwrap_or(""),
        ));
        let rc = match (address, dir) {
            (Some(a), Some(d)) if !a.is_empty() && !d.is_empty() => OK,
            _ => handle.fail(
                MISUSE,
                "the address and the data directory must be UTF-8 strings",
            ),
        };
        // SAFETY: `n` is writable (checked non-null above).
        unsafe { *n = Box::into_raw(handle) };
        rc
    })
}

/// Frees the node, stopping it first if it still runs.
///
/// # Safety
/// Module invariants; `n` is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_destroy(n: *mut NodeHandle) {
    guard((), || {
        if !n.is_null() {
            // SAFETY: `n` came from `Box::into_raw` in `dqlite_node_create`
            // and is freed once (module invariants).
            drop(unsafe { Box::from_raw(n) });
        }
    })
}

/// The last error message of the node.
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_errmsg(n: *mut NodeHandle) -> *const c_char {
    guard(std::ptr::null(), || match unsafe { node(n) } {
        Some(node) => node.errmsg().as_ptr(),
        None => c"the node is NULL".as_ptr(),
    })
}

/// Listens on `address` (`host:port`).
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_bind_address(
    n: *mut NodeHandle,
    address: *const c_char,
) -> c_int {
    unsafe {
        with_node(n, |node| match string(address) {
            Some(a) => node.set_bind_address(a),
            None => node.fail(MISUSE, "the bind address must be a UTF-8 string"),
        })
    }
}

/// The address set, or the one bound once started; NULL if neither.
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_get_bind_address(n: *mut NodeHandle) -> *const c_char {
    guard(std::ptr::null(), || {
        unsafe { node(n) }
            .and_then(|node| node.bind_address())
            .map_or(std::ptr::null(), CStr::as_ptr)
    })
}

/// Opens connections to other nodes through `f`.
///
/// # Safety
/// Module invariants; `f` may be called with `arg` from any thread until
/// the node is destroyed.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_connect_func(
    n: *mut NodeHandle,
    f: Option<unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_int) -> c_int>,
    arg: *mut c_void,
) -> c_int {
    unsafe {
        with_node(n, |node| match f {
            Some(f) => node.set_dial(crate::connect::dial(ConnectFunc { f, arg })),
            None => node.fail(MISUSE, "the connect function is NULL"),
        })
    }
}

/// One-way network latency in nanoseconds (at least 500 µs).
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_network_latency(
    n: *mut NodeHandle,
    nanoseconds: c_ulonglong,
) -> c_int {
    unsafe {
        with_node(n, |node| {
            node.set_network_latency(Duration::from_nanos(nanoseconds))
        })
    }
}

/// One-way network latency in milliseconds (1 to 3600000).
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_network_latency_ms(
    n: *mut NodeHandle,
    milliseconds: c_uint,
) -> c_int {
    unsafe {
        with_node(n, |node| {
            if milliseconds == 0 {
                return node.fail(MISUSE, "network latency must be positive");
            }
            node.set_network_latency(Duration::from_millis(milliseconds.into()))
        })
    }
}

/// The failure domain DESCRIBE reports.
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_failure_domain(
    n: *mut NodeHandle,
    code: c_ulonglong,
) -> c_int {
    unsafe { with_node(n, |node| node.set_failure_domain(code)) }
}

/// Snapshot threshold and trailing entries.
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_snapshot_params(
    n: *mut NodeHandle,
    snapshot_threshold: c_uint,
    snapshot_trailing: c_uint,
) -> c_int {
    unsafe {
        with_node(n, |node| {
            node.set_snapshot_params(snapshot_threshold.into(), snapshot_trailing.into())
        })
    }
}

/// Keeps databases on disk (dqlite 1.12+).
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_enable_disk_mode(n: *mut NodeHandle) -> c_int {
    unsafe { with_node(n, |node| node.enable_disk_mode()) }
}

/// Sets damaged raft files aside at start, or refuses to start (dqlite
/// 1.16+).
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_auto_recovery(n: *mut NodeHandle, enabled: bool) -> c_int {
    unsafe { with_node(n, |node| node.set_auto_recovery(enabled)) }
}

/// Runs the role manager on this node (dqlite 1.17+; off by default).
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_enable_role_management(n: *mut NodeHandle) -> c_int {
    unsafe { with_node(n, |node| node.enable_role_management()) }
}

/// Voters the role manager keeps (dqlite 1.15+).
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_target_voters(n: *mut NodeHandle, voters: c_int) -> c_int {
    unsafe { with_node(n, |node| node.set_target_voters(voters)) }
}

/// Standbys the role manager keeps (dqlite 1.15+).
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_set_target_standbys(
    n: *mut NodeHandle,
    standbys: c_int,
) -> c_int {
    unsafe { with_node(n, |node| node.set_target_standbys(standbys)) }
}

/// Starts the node on its own threads; returns once it serves.
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_start(n: *mut NodeHandle) -> c_int {
    unsafe { with_node(n, NodeHandle::start) }
}

/// Stops the node; returns once it has stopped.
///
/// # Safety
/// Module invariants.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_stop(n: *mut NodeHandle) -> c_int {
    unsafe { with_node(n, NodeHandle::stop) }
}

/// Forces the membership of the stopped node to `infos`, all voters.
///
/// # Safety
/// Module invariants; `infos` holds `n_info` elements.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_recover(
    n: *mut NodeHandle,
    infos: *const NodeInfoC,
    n_info: c_int,
) -> c_int {
    unsafe {
        with_node(n, |node| {
            let Some(infos) = slice(infos, n_info) else {
                return node.fail(MISUSE, "no nodes given");
            };
            let mut nodes = Vec::with_capacity(infos.len());
            for info in infos {
                match string(info.address) {
                    Some(a) => nodes.push(NodeInfo::new(info.id, a, Role::Voter)),
                    None => return node.fail(MISUSE, "a node address is not a UTF-8 string"),
                }
            }
            node.recover(&nodes)
        })
    }
}

/// Forces the membership of the stopped node to `infos`, roles included.
///
/// # Safety
/// Module invariants; `infos` holds `n_info` elements.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_recover_ext(
    n: *mut NodeHandle,
    infos: *const NodeInfoExtC,
    n_info: c_int,
) -> c_int {
    unsafe {
        with_node(n, |node| {
            let Some(infos) = slice(infos, n_info) else {
                return node.fail(MISUSE, "no nodes given");
            };
            let mut nodes = Vec::with_capacity(infos.len());
            for info in infos {
                if info.size < NODE_INFO_EXT_SZ_ORIG {
                    return node.fail(MISUSE, format!("dqlite_node_info_ext size {}", info.size));
                }
                let Some(role) = Role::from_code(info.dqlite_role) else {
                    return node.fail(MISUSE, format!("invalid role {}", info.dqlite_role));
                };
                // The address travels as a pointer in a u64 field.
                match string(info.address as usize as *const c_char) {
                    Some(a) => nodes.push(NodeInfo::new(info.id, a, role)),
                    None => return node.fail(MISUSE, "a node address is not a UTF-8 string"),
                }
            }
            node.recover(&nodes)
        })
    }
}

/// Index and term of the last entry of the stopped node's log (dqlite
/// 1.16+).
///
/// # Safety
/// Module invariants; `index` and `term` are writable.
#[no_mangle]
pub unsafe extern "C" fn dqlite_node_describe_last_entry(
    n: *mut NodeHandle,
    index: *mut u64,
    term: *mut u64,
) -> c_int {
    unsafe {
        with_node(n, |node| {
            if index.is_null() || term.is_null() {
                return node.fail(MISUSE, "NULL output pointer");
            }
            match node.describe_last_entry() {
                Ok((i, t)) => {
                    // SAFETY: both checked non-null; writable per contract.
                    *index = i;
                    *term = t;
                    OK
                }
                Err(code) => code,
            }
        })
    }
}

/// A fresh node id for `address`.
///
/// # Safety
/// `address` is a C string (or NULL).
#[no_mangle]
pub unsafe extern "C" fn dqlite_generate_node_id(address: *const c_char) -> c_ulonglong {
    guard(0, || {
        dqlite_node::generate_id(unsafe { string(address) }.unwrap_or(""))
    })
}

/// `struct dqlite_node_info`.
#[repr(C)]
pub struct NodeInfoC {
    id: c_ulonglong,
    address: *const c_char,
}

/// `struct dqlite_node_info_ext` (its first version, 32 bytes).
#[repr(C)]
pub struct NodeInfoExtC {
    size: u64,
    id: u64,
    address: u64,
    dqlite_role: u64,
}

/// `n` elements at `p`, if there are any.
///
/// # Safety
/// `p` is null or points to at least `n` initialized elements.
unsafe fn slice<'a, T>(p: *const T, n: c_int) -> Option<&'a [T]> {
    let n = usize::try_from(n).ok().filter(|n| *n > 0)?;
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's contract above.
    Some(unsafe { std::slice::from_raw_parts(p, n) })
}
