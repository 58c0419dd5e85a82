//! CPU drivers of the kernels: how the kernel crate's per-tile functions are scheduled on
//! rayon, and the GEMM. Shared by the MLP backend and the ResNet layers.
//!
//! Matrices are row-major `[rows, cols]`. Work is cut into [`Tile`]s of at most [`TILE`]
//! columns × [`ROW_BLOCK`] rows; tiles are disjoint, which is what makes the shared
//! raw-pointer writes below sound. Sums over rows are reduced in a fixed order, so results do
//! not depend on the number of threads.

pub mod batchnorm;
pub mod gemm;
pub mod linear;
pub mod mlp;

use kernels::batchnorm::Tile;
use kernels::{ema, loss};
use rayon::prelude::*;

/// Elements per rayon task for element-wise kernels (large enough to amortise scheduling).
const ELEMENT_CHUNK: usize = 1 << 16;

/// `target ← τ·target + (1 − τ)·online` over equal-length slices.
pub fn ema_update(target: &mut [f32], online: &[f32], tau: f32) {
    target
        .par_chunks_mut(ELEMENT_CHUNK)
        .zip(online.par_chunks(ELEMENT_CHUNK))
        .for_each(|(t, o)| ema::ema_update(t, o, tau));
}

/// Batch mean of the normalised MSE between `p, z [rows, dim]`; with `grad_p`, writes the
/// gradient of that mean. Row losses are summed in row order (thread-count independent).
pub fn nmse_loss(p: &[f32], z: &[f32], rows: usize, dim: usize, grad_p: Option<&mut [f32]>) -> f32 {
    let losses: Vec<f32> = p
        .par_chunks(dim)
        .zip(z.par_chunks(dim))
        .map(|(p, z)| loss::nmse_row_forward(p, z))
        .collect();
    if let Some(g) = grad_p {
        let scale = 1.0 / rows as f32;
        g.par_chunks_mut(dim)
            .zip(p.par_chunks(dim).zip(z.par_chunks(dim)))
            .for_each(|(g, (p, z))| loss::nmse_row_backward(p, z, scale, g));
    }
    losses.iter().sum::<f32>() / rows as f32
}

/// Columns per tile. A tile of 256 columns × 256 rows is 256 KiB: it stays in L2 from the
/// statistics pass to the normalising pass, and each row segment (1 KiB) is a stream the
/// prefetchers follow. Narrow tiles (16 columns) jump a page per row and measured 5× slower.
pub const TILE: usize = 256;

/// Rows per tile: about 256 KiB per tile at 64 columns, and enough tiles to keep every thread
/// busy on the `[N·H·W, C]` matrices of a ResNet.
pub const ROW_BLOCK: usize = 1024;

/// A pointer into a buffer whose tiles different rayon tasks write.
#[derive(Clone, Copy)]
pub struct TilePtr(*mut f32);
// SAFETY: every task touches only its own tile (see `par_tiles`).
unsafe impl Send for TilePtr {}
unsafe impl Sync for TilePtr {}

impl TilePtr {
    pub fn new(buf: &mut [f32]) -> Self {
        TilePtr(buf.as_mut_ptr())
    }
    /// Null, for "no such tensor" arguments of the kernels.
    pub fn null() -> Self {
        TilePtr(std::ptr::null_mut())
    }
    /// The whole buffer (a method, so closures capture the `Send` wrapper, not the field).
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
    /// `len` values starting at `at`.
    ///
    /// # Safety
    /// No other live reference covers them.
    pub unsafe fn slice<'a>(self, at: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }
}

/// The tiles of a `[rows, cols]` matrix: row blocks of `row_block` rows × column tiles of
/// [`TILE`] columns, in row-block-major order; `(row block index, tile)`.
pub fn tiles(rows: usize, cols: usize, row_block: usize) -> Vec<(usize, Tile)> {
    let mut out = Vec::new();
    for (b, r0) in (0..rows).step_by(row_block.max(1)).enumerate() {
        for c0 in (0..cols).step_by(TILE) {
            out.push((
                b,
                Tile {
                    cols,
                    r0,
                    r1: rows.min(r0 + row_block),
                    c0,
                    width: TILE.min(cols - c0),
                },
            ));
        }
    }
    out
}

/// Runs `f` on every tile, in parallel.
pub fn par_tiles(rows: usize, cols: usize, row_block: usize, f: impl Fn(usize, Tile) + Sync) {
    tiles(rows, cols, row_block)
        .into_par_iter()
        .for_each(|(b, t)| f(b, t));
}

/// The tile's part of a per-column vector.
pub fn part(v: &[f32], t: Tile) -> &[f32] {
    &v[t.c0..t.c0 + t.width]
}
