//! The CUDA backend: the kernel crate's PTX launched through `cudarc` (driver API, loaded at
//! run time so the crate builds with no CUDA installed), GEMMs through cuBLAS.
//!
//! Everything runs on one stream, in order, so kernels take raw device pointers: stream
//! order already serialises them. Launch shapes follow `kernels::gpu`: one thread per
//! element, row or column, [`BLOCK`] threads per block.
//!
//! cuBLAS is column-major; a row-major `C[m,n] = op(A)·op(B)` is the column-major
//! `Cᵀ[n,m] = op(B)ᵀ·op(A)ᵀ`, which is what [`Cuda::matmul`] asks it for.

use super::ptx::{self, DeviceAddr};
use super::{Backend, MlpSaved, MlpState};
use crate::cpu::batchnorm::BnMode;
use crate::error::{Error, Result};
use crate::nn::mlp::Mlp;
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Threads per block for every kernel.
const BLOCK: u32 = 256;

fn cuda_err(e: impl std::fmt::Display) -> Error {
    Error::Cuda(e.to_string())
}

/// One GPU with the kernels loaded and a cuBLAS handle.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: HashMap<&'static str, CudaFunction>,
}

impl Cuda {
    /// Opens GPU `ordinal`. Without a driver, a device or cuBLAS it returns
    /// [`Error::GpuUnavailable`] saying which is missing; it never panics.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: these only try to dlopen the libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::GpuUnavailable(
                "libcuda.so (the NVIDIA driver) was not found on this machine".into(),
            ));
        }
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(Error::GpuUnavailable(
                "libcublas.so.13 was not found: install CUDA 13's cuBLAS or add its folder to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::GpuUnavailable(format!("cannot open GPU {ordinal}: {e}")))?;
        let stream = ctx.default_stream();
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx::PTX))
            .map_err(cuda_err)?;
        let mut kernels = HashMap::new();
        for &name in ptx::KERNEL_NAMES {
            kernels.insert(name, module.load_function(name).map_err(cuda_err)?);
        }
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err)?;
        Ok(Cuda {
            ctx,
            stream,
            blas,
            kernels,
        })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> Result<String> {
        self.ctx.name().map_err(cuda_err)
    }

    /// Waits for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err)
    }

    /// Device-to-device copy of a whole buffer (the bandwidth baseline of the EMA bench).
    pub fn copy(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
        self.stream.memcpy_dtod(src, dst).map_err(cuda_err)
    }

    /// Raw device address of `buf[offset..]`.
    fn ptr(&self, buf: &CudaSlice<f32>, offset: usize) -> u64 {
        let (p, _sync) = buf.device_ptr(&self.stream);
        p + (offset * std::mem::size_of::<f32>()) as u64
    }

    fn config(threads: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: ((threads as u32).div_ceil(BLOCK).max(1), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// The launch of kernel `name` with one thread per unit of work; the typed methods below
    /// push its arguments.
    fn launcher(&self, name: &str) -> cudarc::driver::LaunchArgs<'_> {
        self.stream.launch_builder(&self.kernels[name])
    }

    /// The typed launches of the kernels.
    fn launch(&self) -> Launch<'_> {
        Launch { cuda: self }
    }

    /// Row-major `dst[m,n] = (dst if accumulate) + op(lhs)·op(rhs)`, as `backend::gemm::matmul`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        dst: u64,
        m: usize,
        n: usize,
        k: usize,
        lhs: u64,
        lhs_t: bool,
        rhs: u64,
        rhs_t: bool,
        accumulate: bool,
    ) -> Result<()> {
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let (op_b, ldb) = if rhs_t {
            (CUBLAS_OP_T, k)
        } else {
            (CUBLAS_OP_N, n)
        };
        let (op_a, lda) = if lhs_t {
            (CUBLAS_OP_T, m)
        } else {
            (CUBLAS_OP_N, k)
        };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: the pointers address the [m,k], [k,n] and [m,n] matrices whose lengths the
        // checked methods of `Backend` validated; cuBLAS runs on our stream.
        unsafe {
            blas::sgemm(
                *self.blas.handle(),
                op_b,
                op_a,
                n as i32,
                m as i32,
                k as i32,
                &alpha,
                rhs as *const f32,
                ldb as i32,
                lhs as *const f32,
                lda as i32,
                &beta,
                dst as *mut f32,
                n as i32,
            )
        }
        .map_err(cuda_err)
    }

    /// `out[rows, n] = x[rows, k] · wᵀ (+ bias)`, `w [n, k]`, `bias` null for none.
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &self,
        out: u64,
        x: u64,
        w: u64,
        bias: Option<u64>,
        rows: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        if let Some(bias) = bias {
            self.launch().bias_fill(n, out, rows, n, bias)?;
        }
        self.matmul(out, rows, n, k, x, false, w, true, bias.is_some())
    }
}

/// The kernels of one GPU, as typed methods: `gpu.launch().ema_update(threads, target,
/// online, tau, n)` launches `threads` threads of `ema_update`.
struct Launch<'a> {
    cuda: &'a Cuda,
}

/// One typed method per PTX entry point, from the one list in [`ptx::ptx_entries`].
macro_rules! typed_launchers {
    ($($name:ident($($arg:ident: $ty:ident),*);)*) => {
        #[allow(clippy::too_many_arguments)]
        impl Launch<'_> {
            $(
                fn $name(&self, threads: usize, $($arg: $ty),*) -> Result<()> {
                    let mut launch = self.cuda.launcher(stringify!($name));
                    $( launch.arg(&$arg); )*
                    // SAFETY: the argument types are the entry point's (checked against the
                    // PTX by `ptx`'s tests), and the checked methods of `Backend` validated
                    // every buffer length before we got here.
                    unsafe { launch.launch(Cuda::config(threads)) }.map_err(cuda_err)?;
                    Ok(())
                }
            )*
        }
    };
}
ptx::ptx_entries!(typed_launchers);

impl Backend for Cuda {
    type Buffer = CudaSlice<f32>;

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(data).map_err(cuda_err)
    }
    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(buf).map_err(cuda_err)
    }
    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream.alloc_zeros(len).map_err(cuda_err)
    }
    fn fill_zero(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        self.stream.memset_zeros(buf).map_err(cuda_err)
    }
    fn len(buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn ema_update_unchecked(
        &self,
        target: &mut CudaSlice<f32>,
        online: &CudaSlice<f32>,
        tau: f32,
    ) -> Result<()> {
        let n = target.len();
        self.launch()
            .ema_update(n, self.ptr(target, 0), self.ptr(online, 0), tau, n)
    }

    fn nmse_loss_unchecked(
        &self,
        p: &CudaSlice<f32>,
        z: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        grad_p: Option<&mut CudaSlice<f32>>,
    ) -> Result<f32> {
        let (pp, zp) = (self.ptr(p, 0), self.ptr(z, 0));
        let row_losses = self.zeros(rows)?;
        self.launch()
            .nmse_forward(rows, pp, zp, self.ptr(&row_losses, 0), rows, dim)?;
        if let Some(g) = grad_p {
            let scale = 1.0 / rows as f32;
            self.launch()
                .nmse_backward(rows, pp, zp, self.ptr(g, 0), rows, dim, scale)?;
        }
        let losses = self.download(&row_losses)?;
        Ok(losses.iter().sum::<f32>() / rows as f32)
    }

    fn mlp_forward_unchecked(
        &self,
        state: &mut MlpState<CudaSlice<f32>>,
        x: &CudaSlice<f32>,
        mode: BnMode,
        saved: &mut MlpSaved<CudaSlice<f32>>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (mlp, b) = (state.mlp, saved.batch);
        depth_two_only(&mlp)?;
        let at = |r: std::ops::Range<usize>| self.ptr(&state.params, r.start);
        let (h, a) = (self.ptr(&saved.h, 0), self.ptr(&saved.a, 0));
        self.linear_forward(
            h,
            self.ptr(x, 0),
            at(mlp.w1()),
            Some(at(mlp.b1())),
            b,
            mlp.input,
            mlp.hidden,
        )?;
        let (gamma, beta) = (at(mlp.gamma()), at(mlp.beta()));
        let (rm, rv) = (
            self.ptr(&state.running, 0),
            self.ptr(&state.running, mlp.hidden),
        );
        let hd = mlp.hidden;
        match mode {
            BnMode::Train => {
                let (mean, invstd) = (self.ptr(&saved.stats, 0), self.ptr(&saved.stats, hd));
                self.launch()
                    .bn_relu_forward_train(hd, h, a, b, hd, gamma, beta, mean, invstd, rm, rv)?;
            }
            BnMode::Eval => {
                self.launch()
                    .bn_relu_forward_eval(hd, h, a, b, hd, gamma, beta, rm, rv)?;
            }
        }
        let b2 = mlp.last_bias.then(|| at(mlp.b2()));
        self.linear_forward(self.ptr(out, 0), a, at(mlp.w2()), b2, b, hd, mlp.output)
    }

    fn mlp_backward_unchecked(
        &self,
        state: &MlpState<CudaSlice<f32>>,
        x: &CudaSlice<f32>,
        saved: &mut MlpSaved<CudaSlice<f32>>,
        grad_out: &CudaSlice<f32>,
        grads: &mut CudaSlice<f32>,
        grad_x: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (mlp, b) = (state.mlp, saved.batch);
        depth_two_only(&mlp)?;
        let (i, hd, o) = (mlp.input, mlp.hidden, mlp.output);
        let p = |r: std::ops::Range<usize>| self.ptr(&state.params, r.start);
        let g = |r: std::ops::Range<usize>| self.ptr(grads, r.start);
        let dout = self.ptr(grad_out, 0);
        let (h, a, gh) = (
            self.ptr(&saved.h, 0),
            self.ptr(&saved.a, 0),
            self.ptr(&saved.grad_hidden, 0),
        );
        // Second Linear: bias, weight, then the gradient flowing into the hidden layer.
        if mlp.last_bias {
            self.launch().column_sum(o, dout, b, o, g(mlp.b2()))?;
        }
        self.matmul(g(mlp.w2()), o, hd, b, dout, true, a, false, true)?;
        self.matmul(gh, b, hd, o, dout, false, p(mlp.w2()), false, false)?;
        // Fused ReLU + BatchNorm backward, in place on grad_hidden.
        let (mean, invstd) = (self.ptr(&saved.stats, 0), self.ptr(&saved.stats, hd));
        self.launch().bn_relu_backward(
            hd,
            h,
            a,
            gh,
            b,
            hd,
            p(mlp.gamma()),
            mean,
            invstd,
            g(mlp.gamma()),
            g(mlp.beta()),
            g(mlp.b1()),
        )?;
        // First Linear: weight gradient and input gradient.
        self.matmul(g(mlp.w1()), hd, i, b, gh, true, self.ptr(x, 0), false, true)?;
        self.matmul(
            self.ptr(grad_x, 0),
            b,
            i,
            hd,
            gh,
            false,
            p(mlp.w1()),
            false,
            false,
        )
    }
}

/// The GPU MLP is the paper's depth-2 projector; other depths (the depth ablation) run on the
/// CPU backend.
fn depth_two_only(mlp: &Mlp) -> Result<()> {
    if mlp.depth != 2 {
        return Err(Error::InvalidArgument(format!(
            "the CUDA backend's MLP has depth 2 (Linear, BatchNorm, ReLU, Linear); depth {} runs on the CPU backend",
            mlp.depth
        )));
    }
    Ok(())
}
