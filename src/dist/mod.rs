//! Data-parallel training across processes and machines on libtorch's own
//! engine, c10d (issue 17): a [`Dist`] handle that the training loops take
//! to average gradients, broadcast rank 0's state and ask whether they are
//! rank 0 (the only one that writes). A process launched by torchrun, srun
//! or a PyTorchJob finds its rank in the environment ([`launch`]), meets
//! the others through c10d's TCPStore at `MASTER_ADDR:MASTER_PORT` (the
//! store torchrun itself uses), and joins a Gloo group for CPU tensors or
//! an NCCL group (one GPU per rank) for CUDA tensors ([`ffi`], over the C++
//! shim that build.rs compiles against the same libtorch).
//!
//! A rank that is missing at the rendezvous is named in the timeout error.
//! A rank that fails tells the others through the store before it exits,
//! and closes its connections so they stop at once with its message
//! instead of waiting for the collective timeout; a rank killed without a
//! word shows up as a broken connection in the others' next collective.
//! The group lives as long as the process: one launched process, one group.
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

pub mod ffi;
pub mod launch;

pub use ffi::Backend;
pub use launch::{Launch, Launcher};

use ffi::{Group, Store};

/// Gradients and state travel in flat buckets of about this size (DDP's
/// default `bucket_cap_mb`): few collectives, bounded extra memory.
pub const BUCKET_BYTES: usize = 25 << 20;

/// How long a failing rank 0 keeps its store up for the others to read its error.
const LINGER: Duration = Duration::from_secs(10);

/// The process group of a launched process.
pub struct Inner {
    launch: Launch,
    backend: Backend,
    store: Store,
    /// `None` once closed after a failure.
    group: Mutex<Option<Group>>,
}

static GROUP: OnceLock<Inner> = OnceLock::new();

/// This process's place in a data-parallel job; `Dist::default()` is a
/// plain single process, for which every call is free.
#[derive(Clone, Copy, Default)]
pub struct Dist(Option<&'static Inner>);

impl fmt::Debug for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => write!(f, "Dist(single process)"),
            Some(i) => write!(f, "Dist({}, {:?})", i.launch.who(), i.backend),
        }
    }
}

impl Dist {
    /// One process, no group.
    pub fn single() -> Dist {
        Dist(None)
    }

    /// Joins the job `launch` describes (`None`: a single process) with
    /// the backend `device` needs: Gloo for the CPU, NCCL for CUDA (the GPU
    /// `LOCAL_RANK` names). Waits for every rank; the first call in a
    /// process does the work, later ones return the same group.
    pub fn init(launch: Option<Launch>, device: Device) -> Result<Dist> {
        let Some(launch) = launch else {
            return Ok(Dist(None));
        };
        if let Some(inner) = GROUP.get() {
            return Ok(Dist(Some(inner)));
        }
        let inner = connect(launch, device)?;
        Ok(Dist(Some(GROUP.get_or_init(|| inner))))
    }

    pub fn rank(self) -> usize {
        self.0.map_or(0, |i| i.launch.rank)
    }

    pub fn world(self) -> usize {
        self.0.map_or(1, |i| i.launch.world)
    }

    /// Whether this process writes (rank 0, or a single process).
    pub fn is_rank0(self) -> bool {
        self.rank() == 0
    }

    /// Whether there is a group (a launched process, even at world size 1).
    pub fn is_launched(self) -> bool {
        self.0.is_some()
    }

    pub fn launch(self) -> Option<&'static Launch> {
        self.0.map(|i| &i.launch)
    }

    pub fn backend(self) -> Option<Backend> {
        self.0.map(|i| i.backend)
    }

    /// "rank R of W" (empty for a single process), for messages.
    pub fn who(self) -> String {
        self.0.map(|i| i.launch.who()).unwrap_or_default()
    }

    /// The device this rank trains on: its own GPU under NCCL.
    pub fn local_device(self, device: Device) -> Device {
        match (self.backend(), device) {
            (Some(Backend::Nccl { device: d }), Device::Cuda(_)) => Device::Cuda(d),
            _ => device,
        }
    }

    /// Averages the gradients of `vs`'s trainable variables over the ranks,
    /// in buckets (variables in name order, so every rank packs the same).
    /// Call once per update, after the last accumulated backward pass.
    pub fn average_gradients(self, vs: &VarStore) -> Result<()> {
        let Some(inner) = self.0 else {
            return Ok(());
        };
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        // A variable no loss reached has no gradient on any rank (same code
        // on every rank), and the optimiser skips it.
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|(_, t)| t.grad())
            .filter(|g| g.defined())
            .collect();
        let world = inner.launch.world as f64;
        self.bucketed("all-reduce of gradients", &grads, |g, flat| {
            g.allreduce_sum(flat)?;
            for f in flat {
                let mut f = f.shallow_clone();
                let _ = f.f_div_scalar_(world).map_err(|e| e.to_string())?;
            }
            Ok(true)
        })
    }

    /// Overwrites `tensors` on every rank with rank 0's (weights, batch-norm
    /// statistics, optimiser state): at the start of a run and on resume.
    pub fn broadcast_from_rank0(self, tensors: &[Tensor]) -> Result<()> {
        if self.0.is_none() {
            return Ok(());
        }
        let rank0 = self.is_rank0();
        self.bucketed("broadcast of rank 0's state", tensors, |g, flat| {
            g.broadcast(flat, 0)?;
            Ok(!rank0)
        })
    }

    /// Rank 0's value of `v`.
    pub fn broadcast_u64(self, v: u64) -> Result<u64> {
        let Some(inner) = self.0 else {
            return Ok(v);
        };
        let t = Tensor::from_slice(&[v as i64]).to_device(inner.device());
        self.collective("broadcast of rank 0's step", |g| {
            g.broadcast(std::slice::from_ref(&t), 0)
        })?;
        Ok(t.int64_value(&[0]) as u64)
    }

    /// Sums `values` over the ranks in place (logged means, counters).
    pub fn sum_f64(self, values: &mut [f64]) -> Result<()> {
        self.sum_f64_for("all-reduce of logged values", values)
    }

    /// Batch normalisation of `x` [N, C, ...] (no affine part) with the
    /// moments of every rank's `x`: compare_gan's cross-replica batch norm.
    /// Its backward pass sums over the ranks too, so it must run, like the
    /// forward, on every rank in the same order. Returns the output and the
    /// `[2C]` (mean, unbiased variance) for the running statistics. A
    /// single process normalises by its own moments through the same code.
    pub fn sync_batch_norm(self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let ctx = self.0.map_or(std::ptr::null_mut(), |i| {
            i as *const Inner as *mut std::ffi::c_void
        });
        // SAFETY: ctx is null or the job's &'static Inner, which
        // sum_for_shim expects and which outlives every graph. The
        // callback's message already names the rank and the collective.
        unsafe { ffi::sync_batch_norm(x, eps, sum_for_shim, ctx) }.map_err(Error::invalid)
    }

    /// Waits until every rank gets here (a one-value all-reduce).
    pub fn barrier(self, what: &str) -> Result<()> {
        self.sum_f64_for(what, &mut [1.0])
    }

    fn sum_f64_for(self, what: &str, values: &mut [f64]) -> Result<()> {
        let Some(inner) = self.0 else {
            return Ok(());
        };
        if values.is_empty() {
            return Ok(());
        }
        let t = Tensor::from_slice(values).to_device(inner.device());
        self.collective(what, |g| g.allreduce_sum(std::slice::from_ref(&t)))?;
        let out = Vec::<f64>::try_from(&t.to_device(Device::Cpu)).map_err(Error::from)?;
        values.copy_from_slice(&out);
        Ok(())
    }

    /// Packs `tensors` into flat buckets (consecutive tensors of one kind
    /// and device, up to [`BUCKET_BYTES`]), runs `op` on the buckets, and
    /// copies them back when `op` says so.
    fn bucketed(
        self,
        what: &str,
        tensors: &[Tensor],
        op: impl FnOnce(&Group, &[Tensor]) -> std::result::Result<bool, String>,
    ) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let plan = buckets(tensors, BUCKET_BYTES);
        let flat: Vec<Tensor> = tch::no_grad(|| {
            plan.iter()
                .map(|b| {
                    let parts: Vec<Tensor> = b.iter().map(|&i| tensors[i].reshape([-1])).collect();
                    Tensor::cat(&parts, 0)
                })
                .collect()
        });
        let copy_back = self.collective(what, |g| op(g, &flat))?;
        if copy_back {
            tch::no_grad(|| -> Result<()> {
                for (b, f) in plan.iter().zip(&flat) {
                    let mut offset = 0i64;
                    for &i in b {
                        let mut t = tensors[i].shallow_clone();
                        let n = t.numel() as i64;
                        let part = f.narrow(0, offset, n).view_as(&t);
                        t.f_copy_(&part)?;
                        offset += n;
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Runs a collective on the group; a failure becomes one error that
    /// says which rank stopped, when it said so.
    fn collective<T>(
        self,
        what: &str,
        f: impl FnOnce(&Group) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let inner = self.0.expect("collectives need a group");
        let guard = inner.group.lock().unwrap_or_else(|e| e.into_inner());
        let Some(group) = guard.as_ref() else {
            return Err(Error::invalid(format!(
                "{}: {what}: the process group was closed after an earlier failure",
                inner.launch.who()
            )));
        };
        let r = f(group);
        drop(guard);
        r.map_err(|msg| inner.explain(what, &msg))
    }

    /// Tells the other ranks why this one stops, and closes its connections
    /// so that their collectives fail now rather than at the timeout. Rank 0
    /// (whose store the others may be using) then waits a little for them
    /// to read it.
    pub fn announce_failure(self, err: &Error) {
        let Some(inner) = self.0 else {
            return;
        };
        let key = inner.key(&format!("error/{}", inner.launch.rank));
        let _ = inner.store.set(&key, err.to_string().as_bytes());
        inner.group.lock().unwrap_or_else(|e| e.into_inner()).take();
        if inner.launch.rank == 0 && inner.launch.world > 1 {
            self.wait_for_others(LINGER.min(inner.launch.timeout));
        } else {
            self.leave();
        }
    }

    /// Sets `key` (under this job's prefix) for the other ranks to read.
    pub fn publish(self, key: &str, value: &[u8]) -> Result<()> {
        let Some(inner) = self.0 else {
            return Ok(());
        };
        inner.store.set(&inner.key(key), value).map_err(|e| {
            Error::invalid(format!(
                "{}: cannot publish `{key}` in the store: {e}",
                inner.launch.who()
            ))
        })
    }

    /// The value another rank published under `key`, waiting up to the timeout.
    pub fn receive(self, key: &str) -> Result<Vec<u8>> {
        let inner = self.0.expect("receive needs a group");
        inner
            .store
            .get(&inner.key(key), inner.launch.timeout)
            .map_err(|e| match inner.error_of_others() {
                Some((r, msg)) => {
                    Error::invalid(format!("{}: rank {r} stopped: {msg}", inner.launch.who()))
                }
                None => Error::invalid(format!(
                    "{}: no word from rank 0 on `{key}` within {} s ({e})",
                    inner.launch.who(),
                    inner.launch.timeout.as_secs()
                )),
            })
    }

    /// Says this rank is done with the store (it may go away now).
    pub fn leave(self) {
        if let Some(inner) = self.0 {
            let _ = inner.store.add(&inner.key("left"), 1);
        }
    }

    /// Rank 0: waits (at most `limit`) until every other rank has left, so
    /// that the store it serves outlives their last read.
    pub fn wait_for_others(self, limit: Duration) {
        let Some(inner) = self.0 else {
            return;
        };
        let want = inner.launch.world as i64 - 1;
        let deadline = Instant::now() + limit;
        let key = inner.key("left");
        while let Ok(n) = inner.store.add(&key, 0) {
            if n >= want || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The timeout every wait of this job uses.
    pub fn timeout(self) -> Duration {
        self.0
            .map_or(Duration::from_secs(launch::DEFAULT_TIMEOUT_S), |i| {
                i.launch.timeout
            })
    }
}

impl Inner {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.launch.key_prefix)
    }

    fn device(&self) -> Device {
        match self.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl { device } => Device::Cuda(device),
        }
    }

    /// The first other rank that announced a failure, with its message.
    fn error_of_others(&self) -> Option<(usize, String)> {
        (0..self.launch.world)
            .filter(|&r| r != self.launch.rank)
            .find_map(|r| {
                let key = self.key(&format!("error/{r}"));
                match self.store.check(std::slice::from_ref(&key)) {
                    Ok(true) => self
                        .store
                        .get(&key, Duration::from_secs(5))
                        .ok()
                        .map(|v| (r, String::from_utf8_lossy(&v).into_owned())),
                    _ => None,
                }
            })
    }

    fn explain(&self, what: &str, msg: &str) -> Error {
        let who = self.launch.who();
        match self.error_of_others() {
            Some((r, m)) => Error::invalid(format!("{who}: {what} stopped: rank {r} failed: {m}")),
            None => Error::invalid(format!(
                "{who}: {what} failed: {msg} (another rank stopped or lost its connection; its own output says why)"
            )),
        }
    }
}

/// The shim's all-reduce callback: `ctx` is the job's [`Inner`] (null in a
/// single process, where the sum over one rank is the tensor itself).
unsafe extern "C" fn sum_for_shim(
    ctx: *mut std::ffi::c_void,
    tensor: *mut std::ffi::c_void,
    err: *mut std::ffi::c_char,
    cap: usize,
) -> std::ffi::c_int {
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: ctx is the &'static Inner sync_batch_norm passed; tensor is an
    // at::Tensor* the shim owns, borrowed for this call (never freed here).
    let (inner, t) = unsafe {
        (
            &*(ctx as *const Inner),
            std::mem::ManuallyDrop::new(Tensor::from_ptr(tensor as *mut _)),
        )
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Dist(Some(inner)).collective("the batch-norm all-reduce", |g| {
            g.allreduce_sum(std::slice::from_ref(&t.shallow_clone()))
        })
    }));
    let msg = match result {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "panic in the batch-norm all-reduce".to_string(),
    };
    // SAFETY: the shim's buffer of cap bytes.
    unsafe { ffi::write_error(err, cap, &msg) };
    1
}

/// Which tensors go in which bucket: consecutive runs of one kind and
/// device, each at most `cap` bytes (a larger tensor gets a bucket alone).
pub fn buckets(tensors: &[Tensor], cap: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0usize;
    let mut key: Option<(Kind, Device)> = None;
    for (i, t) in tensors.iter().enumerate() {
        let k = (t.kind(), t.device());
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let fits = key == Some(k) && bytes + size <= cap;
        if fits {
            if let Some(last) = out.last_mut() {
                last.push(i);
            }
            bytes += size;
        } else {
            out.push(vec![i]);
            bytes = size;
            key = Some(k);
        }
    }
    out
}

/// The rendezvous: the store, every rank's arrival (a timeout names the
/// missing ones), then the process group and one all-reduce to prove it.
fn connect(launch: Launch, device: Device) -> Result<Inner> {
    let who = launch.who();
    let backend = match device {
        Device::Cpu => {
            if !ffi::has_gloo() {
                return Err(Error::invalid(format!(
                    "{who}: distributed training on the CPU needs Gloo, and this build has none (install Debian's libgloo-dev, or run `make setup`, and rebuild)"
                )));
            }
            Backend::Gloo
        }
        Device::Cuda(_) => {
            if !ffi::has_nccl() {
                return Err(Error::invalid(format!(
                    "{who}: distributed training on CUDA needs NCCL, and this build has none (run `make setup` and rebuild)"
                )));
            }
            let n = tch::Cuda::device_count().max(0) as usize;
            if launch.local_rank >= n {
                return Err(Error::invalid(format!(
                    "{who}: local rank {} needs GPU {}, but this machine shows {n} CUDA device(s): start at most {n} processes per machine",
                    launch.local_rank, launch.local_rank
                )));
            }
            Backend::Nccl {
                device: launch.local_rank,
            }
        }
        other => {
            return Err(Error::invalid(format!(
                "{who}: distributed training runs on the CPU or CUDA, not {other:?}"
            )))
        }
    };
    let addr = format!("{}:{}", launch.master_addr, launch.master_port);
    let serve = launch.rank == 0 && !launch.agent_store;
    let store = Store::open(&launch.master_addr, launch.master_port, serve, launch.timeout)
        .map_err(|e| {
            if serve {
                Error::invalid(format!(
                    "{who}: cannot serve the rendezvous store on port {} (MASTER_PORT): {e}",
                    launch.master_port
                ))
            } else {
                Error::invalid(format!(
                    "{who}: cannot reach the rendezvous store at {addr} (MASTER_ADDR:MASTER_PORT) within {} s: {e}",
                    launch.timeout.as_secs()
                ))
            }
        })?;
    let key = |k: &str| format!("{}{k}", launch.key_prefix);
    let store_err = |e: String| Error::invalid(format!("{who}: rendezvous store at {addr}: {e}"));
    let me = format!("pid {}", std::process::id());
    store
        .set(&key(&format!("arrived/{}", launch.rank)), me.as_bytes())
        .map_err(store_err)?;
    // The last to arrive opens the door; everyone waits on it (no polling).
    let arrived = store.add(&key("arrivals"), 1).map_err(store_err)?;
    if arrived >= launch.world as i64 {
        store.set(&key("all-arrived"), b"1").map_err(store_err)?;
    }
    if store.get(&key("all-arrived"), launch.timeout).is_err() {
        return Err(rendezvous_timeout(&store, &launch, &addr, serve));
    }
    let host = launch.is_local().then_some("127.0.0.1");
    let group = Group::new(
        &store,
        &key("pg/"),
        launch.rank,
        launch.world,
        backend,
        host,
        launch.timeout,
    )
    .map_err(|e| {
        Error::invalid(format!(
            "{who}: cannot make the {backend:?} process group: {e}"
        ))
    })?;
    let inner = Inner {
        launch,
        backend,
        store,
        group: Mutex::new(Some(group)),
    };
    let probe = Tensor::ones([1], (Kind::Float, inner.device()));
    {
        let g = inner.group.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = g.as_ref() {
            g.allreduce_sum(std::slice::from_ref(&probe))
                .map_err(|e| inner.explain("the first all-reduce", &e))?;
        }
    }
    let got = probe.double_value(&[0]);
    if got != inner.launch.world as f64 {
        return Err(Error::Internal(format!(
            "{who}: the first all-reduce summed to {got}, not the world size"
        )));
    }
    Ok(inner)
}

/// The error of a rendezvous that timed out: which ranks never came. The
/// rank serving the store keeps it up a little, so that the others that
/// came can read the same answer.
fn rendezvous_timeout(store: &Store, launch: &Launch, addr: &str, serve: bool) -> Error {
    let who = launch.who();
    let key = |k: &str| format!("{}{k}", launch.key_prefix);
    let arrived: std::result::Result<Vec<bool>, String> = (0..launch.world)
        .map(|r| store.check(&[key(&format!("arrived/{r}"))]))
        .collect();
    let _ = store.add(&key("gave-up"), 1);
    let err = match &arrived {
        Ok(arrived) => {
            let missing: Vec<String> = (0..launch.world)
                .filter(|&r| !arrived[r])
                .map(|r| r.to_string())
                .collect();
            Error::invalid(format!(
                "{who}: rendezvous at {addr}: rank{} {} of {} did not arrive within {} s (not started, crashed, or given another MASTER_ADDR/MASTER_PORT; {} sets the wait)",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                launch.world,
                launch.timeout.as_secs_f64(),
                launch::TIMEOUT_VAR
            ))
        }
        Err(e) => Error::invalid(format!(
            "{who}: rendezvous at {addr}: the store went away while this rank waited for the others (did rank 0 stop?): {e}"
        )),
    };
    if serve {
        let came = arrived
            .map(|a| a.iter().filter(|x| **x).count())
            .unwrap_or(1) as i64;
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(n) = store.add(&key("gave-up"), 0) {
            if n >= came || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_by_kind_and_size() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let i = |n: i64| Tensor::zeros([n], (Kind::Int64, Device::Cpu));
        let ts = [f(10), f(10), i(2), f(300), f(1), f(1)];
        // 100 bytes: 40 + 40 fit, the int64 starts a bucket, 1200 bytes alone, then 4 + 4.
        assert_eq!(
            buckets(&ts, 100),
            vec![vec![0, 1], vec![2], vec![3], vec![4, 5]]
        );
        assert!(buckets(&[], 100).is_empty());
    }

    #[test]
    fn a_single_process_needs_no_group() {
        let d = Dist::init(None, Device::Cpu).unwrap();
        assert!(!d.is_launched() && d.is_rank0());
        assert_eq!((d.rank(), d.world()), (0, 1));
        let mut v = [1.5, 2.0];
        d.sum_f64(&mut v).unwrap();
        assert_eq!(v, [1.5, 2.0]);
        assert_eq!(d.broadcast_u64(7).unwrap(), 7);
        assert_eq!(d.local_device(Device::Cuda(0)), Device::Cuda(0));
    }
}
