//! The C side of the VFS: `extern "C"` shims that SQLite calls, each a thin
//! funnel into the safe [`File`] and [`Backend`] traits. This is the only
//! unsafe code in the crate.
//!
//! Invariants every shim relies on:
//! - I1: a `*mut sqlite3_file` SQLite hands us points to a `FileSlot` we
//!   initialised in `x_open` (SQLite allocates `szOsFile` bytes, which is
//!   `size_of::<FileSlot>()`, and passes the same pointer to every method
//!   and finally to `xClose`). `FileSlot` is `repr(C)` with the
//!   `sqlite3_file` first, so the pointer cast is layout-correct.
//! - I2: SQLite serialises calls on one file handle (a connection is used
//!   by one thread at a time), so `&mut` access to the slot is exclusive.
//! - I3: `pAppData` of our `sqlite3_vfs` points to an `AppData` that is
//!   never freed (see the module doc of `vfs`).
//! - I4: buffer pointers and lengths come from SQLite and are valid for
//!   the length given for the duration of the call.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

use rusqlite::ffi as sys;

use super::{code, Backend, Code, File, MemFile};

struct AppData {
    backend: Arc<dyn Backend>,
    name: CString,
}

#[repr(C)]
struct FileSlot {
    /// Must stay first (I1).
    base: sys::sqlite3_file,
    file: Option<Box<dyn File>>,
}

/// A registered VFS. Dropping it unregisters the name (the memory stays:
/// see the `vfs` module doc).
#[derive(Debug)]
pub struct Registration {
    vfs: *mut sys::sqlite3_vfs,
    name: String,
}

// SAFETY: the pointer is only handed to `sqlite3_vfs_unregister`, which
// SQLite makes thread-safe with its own global mutex.
unsafe impl Send for Registration {}
// SAFETY: as above; `&Registration` exposes only the name.
unsafe impl Sync for Registration {}

impl Registration {
    /// The VFS name to pass to `sqlite3_open_v2`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: `vfs` was registered by `register` and is still allocated
        // (it is never freed).
        unsafe {
            sys::sqlite3_vfs_unregister(self.vfs);
        }
    }
}

/// Runs a shim body: a panic becomes `SQLITE_IOERR` instead of unwinding
/// into C (which would abort).
fn funnel(f: impl FnOnce() -> Result<(), Code>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => code::OK,
        Ok(Err(c)) => c,
        Err(_) => code::IOERR,
    }
}

/// # Safety
/// `p` must be a handle opened by `x_open` (I1, I2).
unsafe fn slot<'a>(p: *mut sys::sqlite3_file) -> Result<&'a mut Box<dyn File>, Code> {
    if p.is_null() {
        return Err(code::IOERR);
    }
    // SAFETY: I1 and I2.
    unsafe { (*p.cast::<FileSlot>()).file.as_mut().ok_or(code::IOERR) }
}

unsafe extern "C" fn x_close(p: *mut sys::sqlite3_file) -> c_int {
    funnel(|| {
        if !p.is_null() {
            // SAFETY: I1; dropping the boxed file here is its only drop, and
            // SQLite frees the slot's memory after xClose returns.
            let file = unsafe { (*p.cast::<FileSlot>()).file.take() };
            drop(file);
        }
        Ok(())
    })
}

unsafe extern "C" fn x_read(
    p: *mut sys::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: sys::sqlite3_int64,
) -> c_int {
    funnel(|| {
        // SAFETY: I1, I2.
        let file = unsafe { slot(p)? };
        let len = usize::try_from(amt).map_err(|_| code::IOERR_READ)?;
        let offset = u64::try_from(off).map_err(|_| code::IOERR_READ)?;
        if buf.is_null() {
            return Err(code::IOERR_READ);
        }
        // SAFETY: I4.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        // "If xRead() returns SQLITE_IOERR_SHORT_READ it must also fill in
        // the unread portions of the buffer with zeros": File::read does.
        match file.read(buf, offset)? {
            true => Ok(()),
            false => Err(code::IOERR_SHORT_READ),
        }
    })
}

unsafe extern "C" fn x_write(
    p: *mut sys::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: sys::sqlite3_int64,
) -> c_int {
    funnel(|| {
        // SAFETY: I1, I2.
        let file = unsafe { slot(p)? };
        let len = usize::try_from(amt).map_err(|_| code::IOERR_WRITE)?;
        let offset = u64::try_from(off).map_err(|_| code::IOERR_WRITE)?;
        if buf.is_null() {
            return Err(code::IOERR_WRITE);
        }
        // SAFETY: I4.
        let buf = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        file.write(buf, offset)
    })
}

unsafe extern "C" fn x_truncate(p: *mut sys::sqlite3_file, size: sys::sqlite3_int64) -> c_int {
    funnel(|| {
        // SAFETY: I1, I2.
        let file = unsafe { slot(p)? };
        file.truncate(u64::try_from(size).map_err(|_| code::IOERR)?)
    })
}

unsafe extern "C" fn x_sync(p: *mut sys::sqlite3_file, _flags: c_int) -> c_int {
    // SAFETY: I1, I2.
    funnel(|| unsafe { slot(p)? }.sync())
}

unsafe extern "C" fn x_file_size(p: *mut sys::sqlite3_file, out: *mut sys::sqlite3_int64) -> c_int {
    funnel(|| {
        // SAFETY: I1, I2.
        let size = unsafe { slot(p)? }.size()?;
        if out.is_null() {
            return Err(code::IOERR);
        }
        // SAFETY: I4: `out` points to one sqlite3_int64.
        unsafe { *out = i64::try_from(size).map_err(|_| code::IOERR)? };
        Ok(())
    })
}

unsafe extern "C" fn x_lock(p: *mut sys::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: I1, I2.
    funnel(|| unsafe { slot(p)? }.lock(level))
}

unsafe extern "C" fn x_unlock(p: *mut sys::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: I1, I2.
    funnel(|| unsafe { slot(p)? }.unlock(level))
}

unsafe extern "C" fn x_check_reserved_lock(p: *mut sys::sqlite3_file, out: *mut c_int) -> c_int {
    funnel(|| {
        // SAFETY: I1, I2.
        let reserved = unsafe { slot(p)? }.check_reserved();
        if out.is_null() {
            return Err(code::IOERR);
        }
        // SAFETY: I4.
        unsafe { *out = c_int::from(reserved) };
        Ok(())
    })
}

unsafe extern "C" fn x_file_control(
    p: *mut sys::sqlite3_file,
    op: c_int,
    _arg: *mut c_void,
) -> c_int {
    // SAFETY: I1, I2.
    funnel(|| {
        unsafe { slot(p)? }
            .control(op)
            .unwrap_or(Err(code::NOTFOUND))
    })
}

unsafe extern "C" fn x_sector_size(_p: *mut sys::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn x_device_characteristics(_p: *mut sys::sqlite3_file) -> c_int {
    0
}

static IO_METHODS: sys::sqlite3_io_methods = sys::sqlite3_io_methods {
    // Version 1: no shared memory, so SQLite refuses WAL mode on these
    // files and stays in rollback-journal mode, which the store relies on.
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `vfs` must be one registered by `register` (I3).
unsafe fn app<'a>(vfs: *mut sys::sqlite3_vfs) -> Result<&'a AppData, Code> {
    if vfs.is_null() {
        return Err(code::IOERR);
    }
    // SAFETY: I3.
    unsafe {
        (*vfs)
            .pAppData
            .cast::<AppData>()
            .as_ref()
            .ok_or(code::IOERR)
    }
}

/// # Safety
/// `name` must be null or a NUL-terminated string (SQLite's contract).
unsafe fn name_of<'a>(name: *const c_char) -> Option<&'a str> {
    if name.is_null() {
        None
    } else {
        // SAFETY: per the function contract.
        unsafe { CStr::from_ptr(name) }.to_str().ok()
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut sys::sqlite3_vfs,
    name: sys::sqlite3_filename,
    p: *mut sys::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    if p.is_null() {
        return code::CANTOPEN;
    }
    // "If xOpen fails, pMethods must be NULL" (sqlite.org, sqlite3_io_methods):
    // SQLite then does not call xClose.
    // SAFETY: `p` points to szOsFile writable bytes (I1).
    unsafe { (*p).pMethods = ptr::null() };
    let rc = funnel(|| {
        // SAFETY: I3.
        let app = unsafe { app(vfs)? };
        let file: Box<dyn File> = if flags & sys::SQLITE_OPEN_MAIN_DB != 0 {
            // SAFETY: SQLite passes a NUL-terminated name or null.
            let name = unsafe { name_of(name) }.ok_or(code::CANTOPEN)?;
            app.backend.open_main(name)?
        } else {
            Box::<MemFile>::default()
        };
        let slot = FileSlot {
            base: sys::sqlite3_file {
                pMethods: &IO_METHODS,
            },
            file: Some(file),
        };
        // SAFETY: I1: the memory is SQLite's, sized for a FileSlot and not
        // yet initialised, so write without dropping anything.
        unsafe { ptr::write(p.cast::<FileSlot>(), slot) };
        if !out_flags.is_null() {
            // SAFETY: I4.
            unsafe { *out_flags = flags };
        }
        Ok(())
    });
    rc
}

unsafe extern "C" fn x_delete(
    _vfs: *mut sys::sqlite3_vfs,
    _name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    // Journals and temporary files are private to their handle and vanish
    // on close; databases are only dropped through the store.
    code::OK
}

unsafe extern "C" fn x_access(
    vfs: *mut sys::sqlite3_vfs,
    name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    funnel(|| {
        // SAFETY: I3.
        let app = unsafe { app(vfs)? };
        // SAFETY: SQLite passes a NUL-terminated name.
        let exists = unsafe { name_of(name) }.is_some_and(|n| app.backend.exists(n));
        if out.is_null() {
            return Err(code::IOERR);
        }
        // SAFETY: I4.
        unsafe { *out = c_int::from(exists) };
        Ok(())
    })
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut sys::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    funnel(|| {
        if name.is_null() || out.is_null() {
            return Err(code::CANTOPEN);
        }
        // Names are keys in the store, not paths: returned unchanged.
        // SAFETY: SQLite passes a NUL-terminated name.
        let bytes = unsafe { CStr::from_ptr(name) }.to_bytes_with_nul();
        if bytes.len() > usize::try_from(n_out).unwrap_or(0) {
            return Err(code::CANTOPEN);
        }
        // SAFETY: I4: `out` has room for `n_out` bytes, checked above.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len()) };
        Ok(())
    })
}

unsafe extern "C" fn x_randomness(
    _vfs: *mut sys::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SQLite seeds its own PRNG from this; the std hasher's random keys
    // are good enough for that and need no file or syscall of ours.
    use std::hash::{BuildHasher, Hasher};
    let len = usize::try_from(n).unwrap_or(0);
    if out.is_null() {
        return 0;
    }
    let state = std::collections::hash_map::RandomState::new();
    for i in 0..len {
        let mut h = state.build_hasher();
        h.write_usize(i);
        // SAFETY: I4: `out` has room for `n` bytes.
        unsafe { *out.add(i) = h.finish() as c_char };
    }
    n
}

unsafe extern "C" fn x_sleep(_vfs: *mut sys::sqlite3_vfs, micros: c_int) -> c_int {
    std::thread::sleep(std::time::Duration::from_micros(
        u64::try_from(micros).unwrap_or(0),
    ));
    micros
}

/// Milliseconds since the Julian epoch, as `xCurrentTimeInt64` reports it.
fn julian_millis() -> i64 {
    const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    UNIX_EPOCH_JULIAN_MS + since
}

unsafe extern "C" fn x_current_time(_vfs: *mut sys::sqlite3_vfs, out: *mut f64) -> c_int {
    if !out.is_null() {
        // SAFETY: I4.
        unsafe { *out = julian_millis() as f64 / 86_400_000.0 };
    }
    code::OK
}

unsafe extern "C" fn x_current_time_int64(
    _vfs: *mut sys::sqlite3_vfs,
    out: *mut sys::sqlite3_int64,
) -> c_int {
    if !out.is_null() {
        // SAFETY: I4.
        unsafe { *out = julian_millis() };
    }
    code::OK
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut sys::sqlite3_vfs,
    _n: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}

pub(super) fn register(name: &str, backend: Arc<dyn Backend>) -> Result<Registration, Code> {
    let cname = CString::new(name).map_err(|_| code::IOERR)?;
    let app = Box::new(AppData {
        backend,
        name: cname,
    });
    let vfs = Box::new(sys::sqlite3_vfs {
        // Version 2 adds xCurrentTimeInt64.
        iVersion: 2,
        szOsFile: c_int::try_from(std::mem::size_of::<FileSlot>()).map_err(|_| code::IOERR)?,
        mxPathname: 1024,
        pNext: ptr::null_mut(),
        zName: app.name.as_ptr(),
        // Leaked on purpose (I3).
        pAppData: Box::into_raw(app).cast::<c_void>(),
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        // Extension loading is off; SQLite never calls these.
        xDlOpen: None,
        xDlError: None,
        xDlSym: None,
        xDlClose: None,
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: Some(x_current_time_int64),
        xSetSystemCall: None,
        xGetSystemCall: None,
        xNextSystemCall: None,
    });
    let vfs = Box::into_raw(vfs);
    // SAFETY: `vfs` is a fully initialised sqlite3_vfs that lives for the
    // rest of the process (I3); SQLite copies nothing and keeps the pointer.
    let rc = unsafe { sys::sqlite3_vfs_register(vfs, 0) };
    if rc != code::OK {
        return Err(rc);
    }
    Ok(Registration {
        vfs,
        name: name.to_owned(),
    })
}

/// `sqlite3_config` with a threading mode, then `sqlite3_initialize`.
/// SQLite refuses the first call with `SQLITE_MISUSE` once it has been
/// initialised, which is reported, not ignored.
pub(super) fn config_threading(serialized: bool) -> Result<(), Code> {
    let option = if serialized {
        sys::SQLITE_CONFIG_SERIALIZED
    } else {
        sys::SQLITE_CONFIG_MULTITHREAD
    };
    // SAFETY: a threading option of sqlite3_config takes no further
    // arguments, and SQLite makes the call safe at any time: after
    // initialisation it only returns SQLITE_MISUSE. rusqlite never
    // configures SQLite itself, so nothing overrides the mode chosen here.
    let rc = unsafe { sys::sqlite3_config(option) };
    if rc != code::OK {
        return Err(rc);
    }
    // SAFETY: sqlite3_initialize takes no arguments and may be called
    // repeatedly.
    let rc = unsafe { sys::sqlite3_initialize() };
    if rc != code::OK {
        return Err(rc);
    }
    Ok(())
}
