//! The CUDA backend: the kernel crate's PTX launched through `cudarc` (driver API, loaded at
//! run time so the crate builds with no CUDA installed), GEMMs through cuBLAS.
//!
//! Everything runs on one stream, in order, so kernels take raw device pointers: stream
//! order already serialises them. Launch shapes follow `kernels::gpu`: one thread per
//! element, row or column, [`BLOCK`] threads per block.
//!
//! cuBLAS is column-major; a row-major `C[m,n] = op(A)·op(B)` is the column-major
//! `Cᵀ[n,m] = op(B)ᵀ·op(A)ᵀ`, which is what [`Cuda::sgemm`] asks it for.

//!
//! Ops without a GPU kernel yet (convolution, pooling, BatchNorm with a residual or without a
//! ReLU, the split BatchNorm sums, the ablation objectives, the optimisers) return
//! [`Error::Unsupported`] naming the op; they arrive with GPU training (`--device cuda`).

use super::ptx::{self, DeviceAddr};
use super::{
    Backend, BatchNorm, BnMode, ConvGeometry, ConvOp, DirectionGrads, Gemm, Linear, Normalisation,
    Objective, Optimizer, OptimizerState, TensorStep,
};
use crate::error::{Error, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::ops::Range;
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
    pub fn copy_all(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
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

    /// Row-major `dst[m,n] = (dst if accumulate) + op(lhs)·op(rhs)` on raw addresses (see
    /// [`super::Gemm`]).
    #[allow(clippy::too_many_arguments)]
    fn sgemm(
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
    fn linear_into(
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
        self.sgemm(out, rows, n, k, x, false, w, true, bias.is_some())
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

/// `Ok` when `buf` holds at least `len` values: every launch is preceded by this check of the
/// extent its shape implies, since a kernel would otherwise read or write past the buffer.
fn fits(what: &'static str, buf: &CudaSlice<f32>, len: usize) -> Result<()> {
    super::need::<Cuda>(what, buf, len)
}

fn fits_range(what: &'static str, buf: &CudaSlice<f32>, r: &Range<usize>) -> Result<()> {
    fits(what, buf, r.end)
}

/// The error of an op with no GPU kernel yet.
fn unsupported<T>(op: &str) -> Result<T> {
    Err(Error::Unsupported(format!(
        "{op} has no GPU kernel yet: it runs on the CPU backend until GPU training lands"
    )))
}

impl Backend for Cuda {
    type Buffer = CudaSlice<f32>;
    type Indices = CudaSlice<u32>;
    type ConvWorkspace = ();

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(data).map_err(cuda_err)
    }
    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(buf).map_err(cuda_err)
    }
    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream.alloc_zeros(len).map_err(cuda_err)
    }
    fn indices(&self, len: usize) -> Result<CudaSlice<u32>> {
        self.stream.alloc_zeros(len).map_err(cuda_err)
    }
    fn fill_zero(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        self.stream.memset_zeros(buf).map_err(cuda_err)
    }
    fn len(buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn copy(
        &self,
        src: &CudaSlice<f32>,
        src_range: Range<usize>,
        dst: &mut CudaSlice<f32>,
        dst_at: usize,
    ) -> Result<()> {
        let len = src_range.len();
        fits_range("copy source", src, &src_range)?;
        fits("copy destination", dst, dst_at + len)?;
        let src = src.slice(src_range);
        let mut dst = dst.slice_mut(dst_at..dst_at + len);
        self.stream.memcpy_dtod(&src, &mut dst).map_err(cuda_err)
    }
    fn add_assign(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>, len: usize) -> Result<()> {
        fits("add_assign destination", dst, len)?;
        fits("add_assign source", src, len)?;
        let one = 1.0f32;
        // SAFETY: both buffers hold `len` values (checked above); cuBLAS runs on our stream.
        unsafe {
            blas_sys::cublasSaxpy_v2(
                *self.blas.handle(),
                len as i32,
                &one,
                self.ptr(src, 0) as *const f32,
                1,
                self.ptr(dst, 0) as *mut f32,
                1,
            )
        }
        .result()
        .map_err(cuda_err)
    }

    fn matmul(
        &self,
        g: Gemm,
        dst: &mut CudaSlice<f32>,
        lhs: &CudaSlice<f32>,
        rhs: &CudaSlice<f32>,
    ) -> Result<()> {
        fits("matmul output [m, n]", dst, g.m * g.n)?;
        fits("matmul left operand [m, k]", lhs, g.m * g.k)?;
        fits("matmul right operand [k, n]", rhs, g.k * g.n)?;
        let (d, l, r) = (self.ptr(dst, 0), self.ptr(lhs, 0), self.ptr(rhs, 0));
        self.sgemm(d, g.m, g.n, g.k, l, g.lhs_t, r, g.rhs_t, g.accumulate)
    }

    fn linear_forward(
        &self,
        l: &Linear,
        params: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_linear(l, params, x)?;
        fits("Linear output [rows, output]", out, l.rows * l.output)?;
        let bias = l.bias.as_ref().map(|b| self.ptr(params, b.start));
        let (o, xp, w) = (
            self.ptr(out, 0),
            self.ptr(x, 0),
            self.ptr(params, l.weight.start),
        );
        self.linear_into(o, xp, w, bias, l.rows, l.input, l.output)
    }

    fn linear_backward(
        &self,
        l: &Linear,
        params: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        grads: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        check_linear(l, params, x)?;
        fits(
            "Linear output gradient [rows, output]",
            dy,
            l.rows * l.output,
        )?;
        fits_range("Linear gradients", grads, &l.weight)?;
        let (rows, k, n) = (l.rows, l.input, l.output);
        let dyp = self.ptr(dy, 0);
        if let Some(b) = &l.bias {
            fits_range("Linear bias gradient", grads, b)?;
            self.launch()
                .column_sum(n, dyp, rows, n, self.ptr(grads, b.start))?;
        }
        let dw = self.ptr(grads, l.weight.start);
        self.sgemm(dw, n, k, rows, dyp, true, self.ptr(x, 0), false, true)?;
        if let Some(dx) = dx {
            fits("Linear input gradient [rows, input]", dx, rows * k)?;
            let w = self.ptr(params, l.weight.start);
            self.sgemm(self.ptr(dx, 0), rows, k, n, dyp, false, w, false, false)?;
        }
        Ok(())
    }

    fn conv_workspace(&self, _convs: &[ConvOp]) -> Result<()> {
        Ok(())
    }
    fn conv2d_forward(
        &self,
        _c: &ConvOp,
        _params: &CudaSlice<f32>,
        _x: &CudaSlice<f32>,
        _out: &mut CudaSlice<f32>,
        _ws: &mut (),
    ) -> Result<()> {
        unsupported("conv2d_forward")
    }
    fn conv2d_backward(
        &self,
        _c: &ConvOp,
        _params: &CudaSlice<f32>,
        _x: &CudaSlice<f32>,
        _dout: &CudaSlice<f32>,
        _grads: &mut CudaSlice<f32>,
        _dx: Option<(&mut CudaSlice<f32>, bool)>,
        _ws: &mut (),
    ) -> Result<()> {
        unsupported("conv2d_backward")
    }

    fn batchnorm_sums(
        &self,
        _bn: &BatchNorm,
        _h: &CudaSlice<f32>,
        _sums: &mut CudaSlice<f32>,
    ) -> Result<()> {
        unsupported("batchnorm_sums")
    }
    fn batchnorm_finish(
        &self,
        _bn: &BatchNorm,
        _count: usize,
        _sums: &CudaSlice<f32>,
        _params: &CudaSlice<f32>,
        _running: &mut CudaSlice<f32>,
        _h: &CudaSlice<f32>,
        _residual: Option<&CudaSlice<f32>>,
        _stats: &mut CudaSlice<f32>,
        _a: &mut CudaSlice<f32>,
    ) -> Result<()> {
        unsupported("batchnorm_finish")
    }

    fn batchnorm_forward(
        &self,
        bn: &BatchNorm,
        mode: BnMode,
        params: &CudaSlice<f32>,
        running: &mut CudaSlice<f32>,
        h: &CudaSlice<f32>,
        residual: Option<&CudaSlice<f32>>,
        stats: &mut CudaSlice<f32>,
        a: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if residual.is_some() || !bn.relu {
            return unsupported("BatchNorm with a residual or without a ReLU");
        }
        let (rows, cols) = (bn.rows, bn.cols);
        check_batchnorm(bn, params, running, h, stats)?;
        fits("BatchNorm output [rows, cols]", a, rows * cols)?;
        let (hp, ap) = (self.ptr(h, 0), self.ptr(a, 0));
        let (gamma, beta) = (
            self.ptr(params, bn.gamma.start),
            self.ptr(params, bn.beta.start),
        );
        let rm = self.ptr(running, bn.running_mean.start);
        let rv = self.ptr(running, bn.running_var.start);
        match mode {
            BnMode::Train => {
                let (mean, invstd) = (self.ptr(stats, 0), self.ptr(stats, cols));
                self.launch().bn_relu_forward_train(
                    cols, hp, ap, rows, cols, gamma, beta, mean, invstd, rm, rv,
                )
            }
            BnMode::Eval => self
                .launch()
                .bn_relu_forward_eval(cols, hp, ap, rows, cols, gamma, beta, rm, rv),
        }
    }

    fn batchnorm_backward(
        &self,
        bn: &BatchNorm,
        params: &CudaSlice<f32>,
        h: &CudaSlice<f32>,
        a: &CudaSlice<f32>,
        stats: &CudaSlice<f32>,
        grad: &mut CudaSlice<f32>,
        grads: &mut CudaSlice<f32>,
        residual_grad: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        let Some(bias) = &bn.linear_bias else {
            return unsupported("BatchNorm backward without a preceding Linear");
        };
        if residual_grad.is_some() || !bn.relu {
            return unsupported("BatchNorm backward with a residual or without a ReLU");
        }
        let (rows, cols) = (bn.rows, bn.cols);
        fits_range("BatchNorm γ", params, &bn.gamma)?;
        fits("BatchNorm stats [2·cols]", stats, 2 * cols)?;
        for (what, buf) in [("BatchNorm input h", h), ("BatchNorm output a", a)] {
            fits(what, buf, rows * cols)?;
        }
        fits("BatchNorm gradient [rows, cols]", grad, rows * cols)?;
        for r in [&bn.gamma, &bn.beta, bias] {
            fits_range("BatchNorm parameter gradients", grads, r)?;
        }
        let (mean, invstd) = (self.ptr(stats, 0), self.ptr(stats, cols));
        self.launch().bn_relu_backward(
            cols,
            self.ptr(h, 0),
            self.ptr(a, 0),
            self.ptr(grad, 0),
            rows,
            cols,
            self.ptr(params, bn.gamma.start),
            mean,
            invstd,
            self.ptr(grads, bn.gamma.start),
            self.ptr(grads, bn.beta.start),
            self.ptr(grads, bias.start),
        )
    }

    fn batchnorm_backward_sums(
        &self,
        _bn: &BatchNorm,
        _h: &CudaSlice<f32>,
        _a: &CudaSlice<f32>,
        _stats: &CudaSlice<f32>,
        _grad: &CudaSlice<f32>,
        _sums: &mut CudaSlice<f32>,
        _residual_grad: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        unsupported("batchnorm_backward_sums")
    }
    fn batchnorm_backward_finish(
        &self,
        _bn: &BatchNorm,
        _count: usize,
        _local: &CudaSlice<f32>,
        _global: &CudaSlice<f32>,
        _params: &CudaSlice<f32>,
        _h: &CudaSlice<f32>,
        _a: &CudaSlice<f32>,
        _stats: &CudaSlice<f32>,
        _grad: &mut CudaSlice<f32>,
        _grads: &mut CudaSlice<f32>,
    ) -> Result<()> {
        unsupported("batchnorm_backward_finish")
    }

    fn maxpool_forward(
        &self,
        _g: ConvGeometry,
        _n: usize,
        _x: &CudaSlice<f32>,
        _out: &mut CudaSlice<f32>,
        _argmax: &mut CudaSlice<u32>,
    ) -> Result<()> {
        unsupported("maxpool_forward")
    }
    fn maxpool_backward(
        &self,
        _g: ConvGeometry,
        _n: usize,
        _dout: &CudaSlice<f32>,
        _argmax: &CudaSlice<u32>,
        _dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        unsupported("maxpool_backward")
    }
    fn avgpool_forward(
        &self,
        _n: usize,
        _hw: usize,
        _c: usize,
        _x: &CudaSlice<f32>,
        _out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        unsupported("avgpool_forward")
    }
    fn avgpool_backward(
        &self,
        _n: usize,
        _hw: usize,
        _c: usize,
        _dout: &CudaSlice<f32>,
        _dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        unsupported("avgpool_backward")
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

    fn objective_direction(
        &self,
        objective: &Objective,
        anchors: &CudaSlice<f32>,
        positives: &CudaSlice<f32>,
        _same_view: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        grads: DirectionGrads<'_, CudaSlice<f32>>,
    ) -> Result<f32> {
        // BYOL's own loss (ℓ2-normalised, no contrastive term, ψ from a target network) is
        // the normalised MSE; the ablations' objectives have no GPU kernel yet.
        let byol = objective.normalisation == Normalisation::L2 && objective.beta == 0.0;
        if !byol || grads.positives.is_some() || grads.same_view.is_some() {
            return unsupported("the ablations' loss objectives");
        }
        self.nmse_loss(anchors, positives, rows, dim, Some(grads.anchors))
    }

    fn optimizer_step(
        &self,
        _optimizer: &Optimizer,
        _tensors: &[TensorStep],
        _state: OptimizerState<'_, CudaSlice<f32>>,
        _grads: &CudaSlice<f32>,
        _t: u64,
        _lr: f32,
    ) -> Result<()> {
        unsupported("optimizer_step (LARS, SGD, AdamW)")
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
}

fn check_linear(l: &Linear, params: &CudaSlice<f32>, x: &CudaSlice<f32>) -> Result<()> {
    fits_range("Linear weight", params, &l.weight)?;
    if let Some(b) = &l.bias {
        fits_range("Linear bias", params, b)?;
    }
    fits("Linear input [rows, input]", x, l.rows * l.input)
}

fn check_batchnorm(
    bn: &BatchNorm,
    params: &CudaSlice<f32>,
    running: &CudaSlice<f32>,
    h: &CudaSlice<f32>,
    stats: &CudaSlice<f32>,
) -> Result<()> {
    fits_range("BatchNorm γ", params, &bn.gamma)?;
    fits_range("BatchNorm β", params, &bn.beta)?;
    fits_range("BatchNorm running mean", running, &bn.running_mean)?;
    fits_range("BatchNorm running variance", running, &bn.running_var)?;
    fits("BatchNorm stats [2·cols]", stats, 2 * bn.cols)?;
    fits("BatchNorm input [rows, cols]", h, bn.rows * bn.cols)
}
