//! The stage boundary: whatever goes wrong inside a stage reaches the user
//! as one line and exit 1, never as a panic with C++ stack frames. tch's
//! tensor methods panic on a libtorch error (an allocation that fails, a
//! shape that does not fit, a CUDA fault); [`catch`] turns such a panic
//! into an [`Error`] holding libtorch's own first line, and the panic hook
//! stays silent while a boundary is active.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use crate::error::{Error, Result};

/// Boundaries active in this process (any thread): panics are then errors, not messages.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Where the last silenced panic happened, for the message of one that is not libtorch's.
static LAST_LOCATION: Mutex<Option<String>> = Mutex::new(None);

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ACTIVE.load(Ordering::SeqCst) > 0 {
                if let Some(loc) = info.location() {
                    *LAST_LOCATION.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("{}:{}", loc.file(), loc.line()));
                }
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it becomes an error.
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    let r = catch_unwind(AssertUnwindSafe(f));
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    r.unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let location = LAST_LOCATION
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Err(panic_error(msg, location.as_deref()))
    })
}

/// The error for a panic message: libtorch's first line when it is a
/// libtorch error (`... Torch("MESSAGE\nException raised from ...")`).
pub fn panic_error(msg: &str, location: Option<&str>) -> Error {
    if let Some(torch) = torch_message(msg) {
        return Error::TorchFailure(torch);
    }
    let first = msg.lines().next().unwrap_or(msg).trim();
    Error::Internal(match location {
        Some(loc) => format!("{first} (at {loc})"),
        None => first.to_string(),
    })
}

/// libtorch's message inside a tch panic, cut to its first line and without
/// the `[enforce fail at FILE:LINE] ` prefix libtorch puts before it.
fn torch_message(msg: &str) -> Option<String> {
    let start = msg.find("Torch(\"")? + "Torch(\"".len();
    let body = &msg[start..];
    // The Debug string escapes newlines: the first line ends at `\n`.
    let end = body
        .find("\\n")
        .or_else(|| body.find("\")"))
        .unwrap_or(body.len());
    let mut line = body[..end].trim();
    if line.starts_with("[enforce fail at ") {
        if let Some(i) = line.find("] ") {
            line = line[i + 2..].trim();
        }
    }
    Some(line.trim_end_matches('.').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_panics_become_their_first_line() {
        let msg = r#"called `Result::unwrap()` on an `Err` value: Torch("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: you tried to allocate 40000000000 bytes.\nException raised from alloc_cpu at /pytorch/c10/core/impl/alloc_cpu.cpp:121 (most recent call first):\nframe #0: ...")"#;
        let e = panic_error(msg, Some("src/x.rs:1"));
        assert_eq!(
            e.to_string(),
            "libtorch: data. DefaultCPUAllocator: not enough memory: you tried to allocate 40000000000 bytes"
        );
        let e = catch(|| -> Result<()> { panic!("index out of bounds") }).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("internal error: index out of bounds (at "),
            "{e}"
        );
    }
}
