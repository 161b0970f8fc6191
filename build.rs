//! Links the binary against the cached libtorch so it runs without
//! LD_LIBRARY_PATH, and keeps libtorch_cuda.so in the link: nothing
//! references it by symbol, so `--as-needed` would drop it and CUDA would
//! never be available, even on a GPU machine.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = env::var_os("LIBTORCH").map(PathBuf::from) else {
        // torch-sys has already failed with its own message by now.
        return;
    };
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
}
