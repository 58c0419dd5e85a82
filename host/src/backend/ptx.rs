//! The PTX of the kernel crate, built by `scripts/build-ptx.sh` and embedded in the binary.

/// PTX text for sm_80 and newer (A100, H100, H200).
pub const PTX: &str = include_str!("../../../kernels/ptx/byol_kernels.ptx");

/// Stamp of the kernel sources the embedded PTX was built from (written by the script).
pub const PTX_SOURCE_STAMP: &str = include_str!("../../../kernels/ptx/SOURCE_STAMP");

/// Stamp of the kernel sources this binary was compiled with (computed by `build.rs`).
pub const CURRENT_SOURCE_STAMP: &str = env!("KERNEL_SOURCE_STAMP");

/// A device address, as the kernels take their buffers (`*mut f32` / `*const f32` in
/// `kernels::gpu`).
pub type DeviceAddr = u64;

/// The one list of the PTX's entry points: each kernel's name and parameters, in the order
/// of its `extern "ptx-kernel"` signature in `kernels/src/gpu.rs`. `ptx_entries!(then)`
/// hands the list to the macro `then`: here it makes [`KERNEL_NAMES`] and [`KERNEL_PARAMS`]
/// (which the tests check against the PTX itself), and in the CUDA backend one typed launch
/// method per kernel, so no launch passes an untyped argument list.
macro_rules! ptx_entries {
    ($then:ident) => {
        $then! {
            ema_update(target: DeviceAddr, online: DeviceAddr, tau: f32, n: usize);
            nmse_forward(p: DeviceAddr, z: DeviceAddr, loss_rows: DeviceAddr, rows: usize, dim: usize);
            nmse_backward(p: DeviceAddr, z: DeviceAddr, grad_p: DeviceAddr, rows: usize, dim: usize, scale: f32);
            bn_sums_partial(h: DeviceAddr, rows: usize, cols: usize, partial: DeviceAddr);
            reduce_blocks(partial: DeviceAddr, k: usize, blocks: usize, cols: usize, out: DeviceAddr);
            bn_finish(cols: usize, count: usize, sums: DeviceAddr, gamma: DeviceAddr, beta: DeviceAddr, running_mean: DeviceAddr, running_var: DeviceAddr, stats: DeviceAddr, fold: DeviceAddr);
            bn_fold_eval(cols: usize, gamma: DeviceAddr, beta: DeviceAddr, running_mean: DeviceAddr, running_var: DeviceAddr, fold: DeviceAddr);
            bn_normalise(rows: usize, cols: usize, h: DeviceAddr, residual: DeviceAddr, relu: usize, fold: DeviceAddr, a: DeviceAddr);
            bn_backward_partial(rows: usize, cols: usize, h: DeviceAddr, a: DeviceAddr, grad: DeviceAddr, relu: usize, stats: DeviceAddr, partial: DeviceAddr, residual_grad: DeviceAddr);
            bn_backward_apply(rows: usize, cols: usize, count: usize, h: DeviceAddr, a: DeviceAddr, grad: DeviceAddr, relu: usize, gamma: DeviceAddr, stats: DeviceAddr, sums: DeviceAddr, partial_dh: DeviceAddr);
            bn_finish_grads(cols: usize, local: DeviceAddr, sum_dh: DeviceAddr, grad_gamma: DeviceAddr, grad_beta: DeviceAddr, grad_bias: DeviceAddr);
            maxpool_forward(n: usize, h: usize, w: usize, cin: usize, k: usize, stride: usize, pad: usize, x: DeviceAddr, out: DeviceAddr, argmax: DeviceAddr);
            maxpool_backward(n: usize, h: usize, w: usize, cin: usize, k: usize, stride: usize, pad: usize, dout: DeviceAddr, argmax: DeviceAddr, dx: DeviceAddr);
            avgpool_forward(n: usize, hw: usize, c: usize, x: DeviceAddr, out: DeviceAddr);
            avgpool_backward(n: usize, hw: usize, c: usize, dout: DeviceAddr, dx: DeviceAddr);
            simplicial_forward(groups: usize, group: usize, inv_temperature: f32, z: DeviceAddr, s: DeviceAddr);
            simplicial_backward(groups: usize, group: usize, inv_temperature: f32, s: DeviceAddr, grad: DeviceAddr);
            lars_square_sums(chunks: usize, chunk_tensor: DeviceAddr, table: DeviceAddr, params: DeviceAddr, grads: DeviceAddr, partial: DeviceAddr);
            lars_trust(tensors: usize, table: DeviceAddr, chunks: usize, partial: DeviceAddr, eta: f32, clip: usize);
            augment_resize(n: usize, params: DeviceAddr, images: DeviceAddr, index: DeviceAddr, h: usize, w: usize, size: usize, out: DeviceAddr);
            augment_mean_gray(n: usize, params: DeviceAddr, stage: usize, size: usize, out: DeviceAddr, means: DeviceAddr);
            augment_jitter(n: usize, params: DeviceAddr, stage: usize, size: usize, means: DeviceAddr, out: DeviceAddr);
            augment_grayscale(n: usize, params: DeviceAddr, size: usize, out: DeviceAddr);
            augment_blur(n: usize, params: DeviceAddr, size: usize, src: DeviceAddr, dst: DeviceAddr, horizontal: usize);
            augment_finish(n: usize, params: DeviceAddr, size: usize, m0: f32, m1: f32, m2: f32, s0: f32, s1: f32, s2: f32, out: DeviceAddr);
            convert_to_bf16(n: usize, src: DeviceAddr, dst: DeviceAddr);
            convert_from_bf16(n: usize, src: DeviceAddr, dst: DeviceAddr, accumulate: usize);
            optimizer_update(n_params: usize, table: DeviceAddr, tensors: usize, params: DeviceAddr, grads: DeviceAddr, momentum: DeviceAddr, second_moment: DeviceAddr, mu: f32, adam_bc2_sqrt: f32, adam: usize);
            bias_fill(dst: DeviceAddr, rows: usize, cols: usize, bias: DeviceAddr);
            column_sum(x: DeviceAddr, rows: usize, cols: usize, out: DeviceAddr);
        }
    };
}
#[cfg(feature = "cuda")]
pub(crate) use ptx_entries;

/// A kernel parameter as the PTX declares it: `ptr` (a `.u64 .ptr`), `u64` (a size) or `f32`.
macro_rules! ptx_type {
    (DeviceAddr) => {
        "ptr"
    };
    (usize) => {
        "u64"
    };
    (f32) => {
        "f32"
    };
}

macro_rules! entry_tables {
    ($($name:ident($($arg:ident: $ty:ident),*);)*) => {
        /// Entry points the PTX must export; the CUDA backend loads each of them once.
        pub const KERNEL_NAMES: &[&str] = &[$(stringify!($name)),*];
        /// Each entry point's parameter types, as the PTX declares them.
        pub const KERNEL_PARAMS: &[(&str, &[&str])] =
            &[$((stringify!($name), &[$(ptx_type!($ty)),*])),*];
    };
}
ptx_entries!(entry_tables);

/// The parameters of entry point `name` as the PTX text declares them (`ptr` for `.param .u64
/// .ptr`, else the type: `u64`, `f32`), or `None` when it has no such entry.
pub fn ptx_params(ptx: &str, name: &str) -> Option<Vec<String>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let list = &ptx[start..start + ptx[start..].find(')')?];
    let params = list.lines().filter_map(|l| {
        let l = l.trim();
        let ty = l.strip_prefix(".param .")?;
        Some(match ty.contains(".ptr") {
            true => "ptr".to_string(),
            false => ty.split_whitespace().next().unwrap_or("").to_string(),
        })
    });
    Some(params.collect())
}

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
    fn embedded_ptx_exports_every_kernel_with_the_declared_parameters() {
        assert!(PTX.contains(".target sm_80"));
        assert_eq!(KERNEL_NAMES.len(), KERNEL_PARAMS.len());
        for (name, declared) in KERNEL_PARAMS {
            assert!(
                PTX.contains(&format!(".visible .entry {name}(")),
                "PTX lacks entry point {name}"
            );
            let in_ptx = ptx_params(PTX, name).unwrap();
            assert_eq!(
                &in_ptx, declared,
                "{name}: the PTX's parameters differ from the table"
            );
        }
        // Every entry the PTX exports is in the table.
        let exported = PTX.matches(".visible .entry ").count();
        assert_eq!(
            exported,
            KERNEL_NAMES.len(),
            "the PTX exports entries the table lacks"
        );
    }
}
