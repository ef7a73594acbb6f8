//! Bakes libtorch's library directory into the binary's rpath so that `gramzoom` runs without
//! LD_LIBRARY_PATH, and, with the `cuda` feature, forces libtorch_cuda to stay linked (the linker
//! otherwise drops it as unused, see tch-rs issue 980, and CUDA is then silently unavailable).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
