//! TF32 tensor-core maths for fp32 matrix products and convolutions on NVIDIA GPUs (a 10-bit
//! mantissa on input, fp32 accumulation): about 8x the fp32 throughput of an H100 for the
//! convolutions that dominate an iteration.
//!
//! libtorch's C API (and so tch) has no switch for it, so this calls the two setters of
//! `at::Context` that PyTorch's `torch.backends.{cuda.matmul,cudnn}.allow_tf32` call. They are
//! exported C++ member functions, declared here by their Itanium-ABI names (`this` is the first
//! argument); a libtorch without them fails at link time, not at run time. The flags are
//! process-wide: a process renders on the GPU one job at a time, and each render sets them as it
//! starts (`Engine::configure_device`).
#![allow(unsafe_code)]

use std::ffi::c_void;

extern "C" {
    #[link_name = "_ZN2at13globalContextEv"]
    fn at_global_context() -> *mut c_void;
    #[link_name = "_ZN2at7Context18setAllowTF32CuBLASEb"]
    fn at_context_set_allow_tf32_cublas(context: *mut c_void, allow: bool);
    #[link_name = "_ZN2at7Context17setAllowTF32CuDNNEb"]
    fn at_context_set_allow_tf32_cudnn(context: *mut c_void, allow: bool);
    #[link_name = "_ZNK2at7Context15allowTF32CuBLASEv"]
    fn at_context_allow_tf32_cublas(context: *const c_void) -> bool;
}

/// Allows (or forbids) TF32 in cuBLAS matrix products and cuDNN convolutions. No effect on the
/// CPU, whose fp32 maths stays fp32.
pub fn allow(allow: bool) {
    // SAFETY: `at::globalContext()` returns a reference to a static that lives as long as the
    // library, never null; both setters only store a flag in it (no CUDA call), take `this`
    // and a bool, and are thread-safe in libtorch (atomic or guarded stores).
    unsafe {
        let context = at_global_context();
        at_context_set_allow_tf32_cublas(context, allow);
        at_context_set_allow_tf32_cudnn(context, allow);
    }
}

/// Whether cuBLAS may use TF32 now (read back from libtorch, for tests and `bench`).
pub fn allowed() -> bool {
    // SAFETY: as in `allow`; the getter only reads the flag.
    unsafe { at_context_allow_tf32_cublas(at_global_context()) }
}

#[cfg(test)]
mod tests {
    /// The switch reaches libtorch's own flag, both ways.
    #[test]
    fn the_switch_reaches_libtorch() {
        let before = super::allowed();
        super::allow(true);
        assert!(super::allowed());
        super::allow(false);
        assert!(!super::allowed());
        super::allow(before);
    }
}
