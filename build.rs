//! Links the binary against the cached libtorch so it runs without
//! LD_LIBRARY_PATH, and keeps libtorch_cuda.so in the link: nothing
//! references it by symbol, so `--as-needed` would drop it and CUDA would
//! never be available, even on a GPU machine.
//!
//! Also compiles the distributed shim (src/dist/shim*.cpp) against the same
//! libtorch: c10d's TCPStore and the cross-replica batch norm's autograd
//! function always, Gloo when Debian's libgloo-dev headers
//! are there (the torch wheel ships none), NCCL when the nvidia wheels'
//! NCCL, CUDA and CCCL headers are (`make setup` installs all of them). A
//! part whose headers are missing is built as a stub that says so at run
//! time, so the crate builds everywhere.
use std::env;
use std::path::{Path, PathBuf};

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
    build_shim(&libtorch);
}

/// The first of `dirs` holding `file`.
fn with_file(dirs: &[PathBuf], file: &str) -> Option<PathBuf> {
    dirs.iter().find(|d| d.join(file).exists()).cloned()
}

fn build_shim(libtorch: &Path) {
    for f in ["shim.h", "shim.cpp", "shim_nccl.cpp", "shim_syncbn.cpp"] {
        println!("cargo:rerun-if-changed=src/dist/{f}");
    }
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    let include = libtorch.join("include");
    let mut cc = cc::Build::new();
    cc.cpp(true)
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // libtorch's headers are not warning-clean; ours are checked by review.
        .warnings(false)
        .flag_if_supported("-Wno-interference-size");

    let mut gloo = cc.clone();
    let gloo_dirs: Vec<PathBuf> = env::var_os("GLOO_INCLUDE")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("/usr/include"),
            PathBuf::from("/usr/local/include"),
        ])
        .collect();
    match with_file(&gloo_dirs, "gloo/config.h") {
        Some(dir) => {
            println!("cargo:rerun-if-changed={}", dir.join("gloo").display());
            gloo.include(dir).define("USE_C10D_GLOO", None);
        }
        None => {
            // Build again once `make setup` has installed them.
            println!("cargo:rerun-if-changed=/usr/include");
            println!(
                "cargo:warning=no gloo headers (Debian libgloo-dev): distributed training on the CPU is disabled in this build"
            );
        }
    }
    gloo.file("src/dist/shim.cpp").compile("fewlabels_dist");
    // Cross-replica batch norm: an autograd function, whatever the backend.
    cc.clone()
        .file("src/dist/shim_syncbn.cpp")
        .compile("fewlabels_syncbn");

    // The nvidia wheels sit beside torch in site-packages.
    let site = libtorch.parent().unwrap_or(libtorch).to_path_buf();
    let cu = site.join("nvidia/cu13/include");
    let needs: [(&str, Vec<PathBuf>); 4] = [
        ("nccl.h", vec![site.join("nvidia/nccl/include")]),
        ("cuda_runtime_api.h", vec![cu.clone()]),
        // CCCL (PyPI nvidia-cuda-cccl), for <nv/target>.
        ("nv/target", vec![cu.join("cccl"), cu.clone()]),
        (
            "crt/host_config.h",
            vec![site.join("triton/backends/nvidia/include"), cu.clone()],
        ),
    ];
    let found: Vec<Option<PathBuf>> = needs.iter().map(|(f, d)| with_file(d, f)).collect();
    // Build again when `make setup` adds a wheel (cargo scans these folders).
    for dir in [
        site.join("nvidia"),
        site.join("triton/backends/nvidia/include"),
    ] {
        if dir.exists() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    let mut nccl = cc.clone();
    let has_cuda_lib = libtorch.join("lib/libtorch_cuda.so").exists();
    if has_cuda_lib && found.iter().all(Option::is_some) {
        for dir in found.into_iter().flatten() {
            nccl.include(dir);
        }
        nccl.define("USE_C10D_NCCL", None);
        println!("cargo:rustc-link-arg=-lc10_cuda");
    } else {
        let missing: Vec<&str> = needs
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|((name, _), _)| *name)
            .collect();
        println!(
            "cargo:warning=NCCL disabled in this build (missing: {}{})",
            missing.join(", "),
            if has_cuda_lib {
                ""
            } else {
                " libtorch_cuda.so"
            }
        );
    }
    nccl.file("src/dist/shim_nccl.cpp")
        .compile("fewlabels_dist_nccl");
}
