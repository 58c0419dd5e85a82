//! Row-major f32 matrix product on the CPU, through the `gemm` crates (docs/DESIGN.md §4: with its
//! `x86-v4` feature it reached 62–86 GFLOP/s per core here, the best of the Rust crates tried).

/// `dst[m, n] = (dst if accumulate, else 0) + op(lhs) · op(rhs)`, row-major: `op(lhs)` is
/// `[m, k]` (stored `[k, m]` when `lhs_t`), `op(rhs)` is `[k, n]` (stored `[n, k]` when
/// `rhs_t`). Every backend runs the same values, so a layer's products are stated once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lhs_t: bool,
    pub rhs_t: bool,
    pub accumulate: bool,
}

/// The three products of a Linear layer `y [rows, n] = x [rows, k] · wᵀ`, `w [n, k]` as
/// PyTorch stores it.
impl Gemm {
    /// Forward: `y [rows, n] (+)= x · wᵀ`; it accumulates onto a bias already in `y`.
    pub fn linear_forward(rows: usize, k: usize, n: usize, onto_bias: bool) -> Gemm {
        Gemm {
            m: rows,
            n,
            k,
            lhs_t: false,
            rhs_t: true,
            accumulate: onto_bias,
        }
    }

    /// Weight gradient: `∂w [n, k] += dyᵀ · x` (accumulated, as gradients are).
    pub fn linear_weight_grad(rows: usize, k: usize, n: usize) -> Gemm {
        Gemm {
            m: n,
            n: k,
            k: rows,
            lhs_t: true,
            rhs_t: false,
            accumulate: true,
        }
    }

    /// Input gradient: `∂x [rows, k] = dy · w` (overwritten).
    pub fn linear_input_grad(rows: usize, k: usize, n: usize) -> Gemm {
        Gemm {
            m: rows,
            n: k,
            k: n,
            lhs_t: false,
            rhs_t: false,
            accumulate: false,
        }
    }
}

/// [`matmul`] of the product `g` describes, on slices that hold at least its operands.
pub fn gemm(g: Gemm, dst: &mut [f32], lhs: &[f32], rhs: &[f32]) {
    let Gemm {
        m,
        n,
        k,
        lhs_t,
        rhs_t,
        accumulate,
    } = g;
    matmul(
        &mut dst[..m * n],
        m,
        n,
        k,
        &lhs[..m * k],
        lhs_t,
        &rhs[..k * n],
        rhs_t,
        accumulate,
    )
}

/// `dst[m, n] = (dst if accumulate, else 0) + op(lhs) · op(rhs)` with row-major storage:
/// `op(lhs)` is `[m, k]`, stored as `[m, k]`, or as `[k, m]` when `lhs_t`; `op(rhs)` is
/// `[k, n]`, stored as `[k, n]`, or as `[n, k]` when `rhs_t`. Callers check the lengths.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    accumulate: bool,
) {
    let threads = gemm_common::Parallelism::Rayon(rayon::current_num_threads());
    matmul_with(dst, m, n, k, lhs, lhs_t, rhs, rhs_t, accumulate, threads)
}

/// [`matmul`] on the calling thread only: for callers that already run one product per
/// thread (split-K over chunks of a long inner dimension).
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    accumulate: bool,
) {
    matmul_with(
        dst,
        m,
        n,
        k,
        lhs,
        lhs_t,
        rhs,
        rhs_t,
        accumulate,
        gemm_common::Parallelism::None,
    )
}

#[allow(clippy::too_many_arguments)]
fn matmul_with(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    accumulate: bool,
    parallelism: gemm_common::Parallelism,
) {
    debug_assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    let (lhs_rs, lhs_cs) = if lhs_t { (1, m) } else { (k, 1) };
    let (rhs_rs, rhs_cs) = if rhs_t { (1, k) } else { (n, 1) };
    // The kernels want a column-major destination; a row-major `[m, n]` one is the column-major
    // `[n, m]` product `op(rhs)ᵀ · op(lhs)ᵀ`. This is the swap the `gemm` facade makes (a
    // single column needs none), so the sums and their order are the facade's, bit for bit.
    // `rows × cols` is the destination as the kernels see it, `a · b` its product.
    let (rows, cols, dst_cs, dst_rs, a, a_cs, a_rs, b, b_cs, b_rs) = if n > 1 {
        (n, m, n, 1, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs)
    } else {
        (m, n, 1, n, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs)
    };
    // SAFETY: the strides above address exactly the [m,k], [k,n] and [m,n] matrices the
    // slices hold (read transposed or not), as the debug assertion states and the callers check.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            rows,
            cols,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
