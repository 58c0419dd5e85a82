//! Row-major f32 matrix product on the CPU, through the `gemm` crate (docs/DESIGN.md §4: with its
//! `x86-v4` feature it reached 62–86 GFLOP/s per core here, the best of the Rust crates tried).

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
    let threads = gemm::Parallelism::Rayon(rayon::current_num_threads());
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
        gemm::Parallelism::None,
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
    parallelism: gemm::Parallelism,
) {
    debug_assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    let (lhs_rs, lhs_cs) = if lhs_t { (1, m) } else { (k, 1) };
    let (rhs_rs, rhs_cs) = if rhs_t { (1, k) } else { (n, 1) };
    // SAFETY: the strides above address exactly the [m,k], [k,n] and [m,n] matrices the
    // slices hold, as the debug assertion states and the callers check.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
