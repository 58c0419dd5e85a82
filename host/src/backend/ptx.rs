//! The PTX of the kernel crate, built by `scripts/build-ptx.sh` and embedded in the binary.

/// PTX text for sm_80 and newer (A100, H100, H200).
pub const PTX: &str = include_str!("../../../kernels/ptx/byol_kernels.ptx");

/// Stamp of the kernel sources the embedded PTX was built from (written by the script).
pub const PTX_SOURCE_STAMP: &str = include_str!("../../../kernels/ptx/SOURCE_STAMP");

/// Stamp of the kernel sources this binary was compiled with (computed by `build.rs`).
pub const CURRENT_SOURCE_STAMP: &str = env!("KERNEL_SOURCE_STAMP");

/// Entry points the PTX must export; the CUDA backend loads each of them once.
pub const KERNEL_NAMES: &[&str] = &[
    "ema_update",
    "nmse_forward",
    "nmse_backward",
    "bn_relu_forward_train",
    "bn_relu_forward_eval",
    "bn_relu_backward",
    "bias_fill",
    "column_sum",
];

/// Whether the embedded PTX was built from the kernel sources this binary was compiled with.
pub fn ptx_matches_sources() -> bool {
    PTX_SOURCE_STAMP.trim() == CURRENT_SOURCE_STAMP
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_ptx_is_built_from_the_current_kernel_sources() {
        assert!(
            ptx_matches_sources(),
            "kernels/ptx/byol_kernels.ptx is stale (stamp {} vs sources {}): run scripts/build-ptx.sh",
            PTX_SOURCE_STAMP.trim(),
            CURRENT_SOURCE_STAMP
        );
    }

    #[test]
    fn embedded_ptx_exports_every_kernel_for_sm_80() {
        assert!(PTX.contains(".target sm_80"));
        for name in KERNEL_NAMES {
            assert!(
                PTX.contains(&format!(".visible .entry {name}(")),
                "PTX lacks entry point {name}"
            );
        }
    }
}
