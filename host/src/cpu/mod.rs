//! CPU drivers of the kernels: how the kernel crate's functions are scheduled on rayon, one
//! file per file of `kernels/src` (batchnorm, conv, ema, linear, loss, pool), plus the GEMM,
//! the loss's ablation objectives and the optimisers (host arithmetic with no kernel yet).
//! The CPU backend ([`crate::backend::cpu`]) is these functions behind the backend trait.
//!
//! Matrices are row-major `[rows, cols]`. Work is cut into [`Tile`]s of at most [`TILE`]
//! columns × [`ROW_BLOCK`] rows; tiles are disjoint, which is what makes the shared
//! raw-pointer writes below sound. Sums over rows are reduced in a fixed order, so results do
//! not depend on the number of threads.

pub mod batchnorm;
pub mod conv;
pub mod direct_conv;
pub mod ema;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod objective;
pub mod optimizer;
pub mod pool;
pub mod simplicial;

pub use ema::ema_update;
pub use loss::nmse_loss;

use kernels::batchnorm::Tile;
use rayon::prelude::*;

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
