//! Safe wrappers over the C ABI of src/dist/shim.cpp and shim_nccl.cpp:
//! a c10d `TCPStore` ([`Store`]) and a c10d process group ([`Group`]:
//! Gloo or NCCL) with the collectives the training loops use. Every call
//! that can fail returns the shim's one-line message; callers add the rank
//! and what was being done.
use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr;
use std::time::Duration;

use tch::Tensor;

#[repr(C)]
struct RawStore {
    _private: [u8; 0],
}
#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

extern "C" {
    fn fl_store_open(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        timeout_ms: i64,
        out: *mut *mut RawStore,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_store_free(s: *mut RawStore);
    fn fl_store_set(
        s: *mut RawStore,
        key: *const c_char,
        value: *const u8,
        len: usize,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_store_check(
        s: *mut RawStore,
        keys: *const *const c_char,
        n: usize,
        found: *mut c_int,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_store_get(
        s: *mut RawStore,
        key: *const c_char,
        timeout_ms: i64,
        value: *mut *mut u8,
        len: *mut usize,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_store_add(
        s: *mut RawStore,
        key: *const c_char,
        delta: i64,
        result: *mut i64,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_free(p: *mut c_void);
    fn fl_has_gloo() -> c_int;
    fn fl_has_nccl() -> c_int;
    fn fl_group_new_gloo(
        s: *mut RawStore,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        hostname: *const c_char,
        threads: c_int,
        timeout_ms: i64,
        out: *mut *mut RawGroup,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_group_new_nccl(
        s: *mut RawStore,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        device_index: c_int,
        timeout_ms: i64,
        out: *mut *mut RawGroup,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_group_free(g: *mut RawGroup);
    fn fl_allreduce_sum(
        g: *mut RawGroup,
        tensors: *const *mut c_void,
        n: usize,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_broadcast(
        g: *mut RawGroup,
        tensors: *const *mut c_void,
        n: usize,
        root: c_int,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn fl_sync_batch_norm(
        input: *mut c_void,
        eps: f64,
        sum: SumFn,
        sum_ctx: *mut c_void,
        stats: *mut c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
}

/// The shim's callback that sums a tensor (`at::Tensor*`) in place over
/// the ranks: nonzero on failure, with one line in `err`.
pub type SumFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    tensor: *mut c_void,
    err: *mut c_char,
    cap: usize,
) -> c_int;

/// Writes `msg` (one line, NUL-terminated, cut to fit) into a shim error buffer.
///
/// # Safety
/// `err` must point to `cap` writable bytes (or be null).
pub unsafe fn write_error(err: *mut c_char, cap: usize, msg: &str) {
    if err.is_null() || cap == 0 {
        return;
    }
    let line = msg.lines().next().unwrap_or("");
    let n = line.len().min(cap - 1);
    // SAFETY: the caller's buffer holds cap bytes; n < cap.
    unsafe {
        ptr::copy_nonoverlapping(line.as_ptr(), err as *mut u8, n);
        *err.add(n) = 0;
    }
}

/// `x` normalised by the moments of every rank's `x` (the shim's autograd
/// function: gradients flow, and the backward pass sums over the ranks
/// too, through `sum`), and the `[2C]` (mean, unbiased variance) it used.
///
/// # Safety
/// `sum` is called with `sum_ctx` now and in every backward pass through
/// the result, so `sum_ctx` must be what `sum` expects for as long as the
/// result's autograd graph lives.
pub unsafe fn sync_batch_norm(
    x: &Tensor,
    eps: f64,
    sum: SumFn,
    sum_ctx: *mut c_void,
) -> Result<(Tensor, Tensor), String> {
    let c = x.size().get(1).copied().unwrap_or(0);
    let stats = Tensor::zeros([2 * c], (tch::Kind::Double, x.device()));
    let mut out: *mut c_void = ptr::null_mut();
    // SAFETY: x and stats outlive the call; the shim returns a new tensor
    // that tch takes ownership of (both are `new at::Tensor`).
    call(|e, cap| unsafe {
        fl_sync_batch_norm(
            x.as_ptr() as *mut c_void,
            eps,
            sum,
            sum_ctx,
            stats.as_ptr() as *mut c_void,
            &mut out,
            e,
            cap,
        )
    })?;
    // SAFETY: out is a fresh at::Tensor* from the shim.
    let y = unsafe { Tensor::from_ptr(out as *mut _) };
    Ok((y, stats))
}

const ERR_CAP: usize = 1024;

/// Runs a shim call with an error buffer; its message on failure.
fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut buf = vec![0u8; ERR_CAP];
    let rc = f(buf.as_mut_ptr() as *mut c_char, ERR_CAP);
    if rc == 0 {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let msg = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    Err(if msg.is_empty() {
        "c10d failed without a message".into()
    } else {
        msg
    })
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("`{s}` contains a NUL byte"))
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Whether this build has Gloo (CPU collectives) and NCCL (CUDA collectives).
pub fn has_gloo() -> bool {
    // SAFETY: a constant query.
    unsafe { fl_has_gloo() != 0 }
}
pub fn has_nccl() -> bool {
    // SAFETY: a constant query.
    unsafe { fl_has_nccl() != 0 }
}

/// A c10d TCPStore: the server on one rank, a client elsewhere.
pub struct Store {
    raw: *mut RawStore,
}

// SAFETY: c10d's TCPStore serialises its own socket use; the pointer is
// only freed on drop.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Serves (`server`) or connects to `host:port`; a client retries for
    /// `timeout` before it gives up. `timeout` is also each later wait's default.
    pub fn open(host: &str, port: u16, server: bool, timeout: Duration) -> Result<Store, String> {
        let host = cstr(host)?;
        let mut raw = ptr::null_mut();
        // SAFETY: valid C string and out-pointer; the shim reports through `err`.
        call(|e, c| unsafe {
            fl_store_open(
                host.as_ptr(),
                port,
                server as c_int,
                millis(timeout),
                &mut raw,
                e,
                c,
            )
        })?;
        Ok(Store { raw })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let k = cstr(key)?;
        // SAFETY: valid pointers for the call's duration.
        call(|e, c| unsafe {
            fl_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len(), e, c)
        })
    }

    /// Whether every key exists, without waiting.
    pub fn check(&self, keys: &[String]) -> Result<bool, String> {
        let owned: Vec<CString> = keys.iter().map(|k| cstr(k)).collect::<Result<_, _>>()?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|k| k.as_ptr()).collect();
        let mut found = 0;
        // SAFETY: `ptrs` outlives the call.
        call(|e, c| unsafe {
            fl_store_check(self.raw, ptrs.as_ptr(), ptrs.len(), &mut found, e, c)
        })?;
        Ok(found != 0)
    }

    /// The value of `key`, waiting up to `timeout` for it to be set.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        let k = cstr(key)?;
        let mut value: *mut u8 = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: out-pointers valid; the buffer is ours to free below.
        call(|e, c| unsafe {
            fl_store_get(
                self.raw,
                k.as_ptr(),
                millis(timeout),
                &mut value,
                &mut len,
                e,
                c,
            )
        })?;
        // SAFETY: the shim malloc'd `len` bytes (at least one) at `value`.
        let out = unsafe { std::slice::from_raw_parts(value, len).to_vec() };
        unsafe { fl_free(value as *mut c_void) };
        Ok(out)
    }

    /// Adds `delta` to the counter `key` and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let k = cstr(key)?;
        let mut v = 0i64;
        // SAFETY: valid pointers for the call's duration.
        call(|e, c| unsafe { fl_store_add(self.raw, k.as_ptr(), delta, &mut v, e, c) })?;
        Ok(v)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: made by fl_store_open, freed once.
        unsafe { fl_store_free(self.raw) }
    }
}

/// Which engine moves the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo over TCP, for CPU tensors.
    Gloo,
    /// NCCL, for CUDA tensors on one GPU per rank.
    Nccl { device: usize },
}

/// A c10d process group.
pub struct Group {
    raw: *mut RawGroup,
    pub backend: Backend,
}

// SAFETY: c10d process groups are used from one thread at a time here (the
// training loop's), and their own worker threads are internal.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Group {
    /// A group of `world` ranks meeting through `store` under `prefix`.
    /// `hostname` (Gloo only) is the address this rank's device binds.
    pub fn new(
        store: &Store,
        prefix: &str,
        rank: usize,
        world: usize,
        backend: Backend,
        hostname: Option<&str>,
        timeout: Duration,
    ) -> Result<Group, String> {
        let p = cstr(prefix)?;
        let host = hostname.map(cstr).transpose()?;
        let mut raw = ptr::null_mut();
        match backend {
            // SAFETY: valid pointers; the shim reports through `err`.
            Backend::Gloo => call(|e, c| unsafe {
                fl_group_new_gloo(
                    store.raw,
                    p.as_ptr(),
                    rank as c_int,
                    world as c_int,
                    host.as_ref().map_or(ptr::null(), |h| h.as_ptr()),
                    2,
                    millis(timeout),
                    &mut raw,
                    e,
                    c,
                )
            })?,
            // SAFETY: as above.
            Backend::Nccl { device } => call(|e, c| unsafe {
                fl_group_new_nccl(
                    store.raw,
                    p.as_ptr(),
                    rank as c_int,
                    world as c_int,
                    device as c_int,
                    millis(timeout),
                    &mut raw,
                    e,
                    c,
                )
            })?,
        }
        Ok(Group { raw, backend })
    }

    fn pointers(tensors: &[Tensor]) -> Vec<*mut c_void> {
        tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect()
    }

    /// Sums every tensor in place over the ranks (one collective per
    /// tensor, all started before the first is waited for).
    pub fn allreduce_sum(&self, tensors: &[Tensor]) -> Result<(), String> {
        let ptrs = Self::pointers(tensors);
        // SAFETY: the tensors outlive the call, which waits for completion.
        call(|e, c| unsafe { fl_allreduce_sum(self.raw, ptrs.as_ptr(), ptrs.len(), e, c) })
    }

    /// Overwrites every tensor with rank `root`'s.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), String> {
        let ptrs = Self::pointers(tensors);
        // SAFETY: as for allreduce_sum.
        call(|e, c| unsafe {
            fl_broadcast(self.raw, ptrs.as_ptr(), ptrs.len(), root as c_int, e, c)
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: made by fl_group_new_*, freed once.
        unsafe { fl_group_free(self.raw) }
    }
}
