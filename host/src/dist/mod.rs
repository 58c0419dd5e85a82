//! The collectives of a data-parallel run: the processes ("ranks") of one run add buffers
//! together, copy rank 0's to all, and wait for each other, through one trait with three
//! implementations: [`Single`] (one process, the default: nothing to do), [`threads::InProcess`]
//! (ranks as threads of one process, for tests without MPI) and, with the `mpi` feature,
//! `mpi::Mpi` (Open MPI, across processes and machines, started by `mpirun`).
//!
//! Buffers are host slices; the data-parallel backend ([`crate::backend::distributed`]) moves
//! device buffers through them, except a GPU run's gradient average, which goes through NCCL
//! on the devices (`nccl::Nccl`, with the `cuda` feature). Sums are in a fixed order for a given world size (rank order
//! in-process; MPI's reduction for a fixed size), so a run repeats bit for bit.

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod threads;

use crate::error::{Error, Result};

/// What every rank of a data-parallel run calls together, in the same order.
pub trait Collective: Send + Sync {
    /// This process's index, `0..world()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;
    /// `buf ← Σ_ranks buf`, in place, on every rank.
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// `buf ← Σ_ranks buf` in f64 (BatchNorm's sums), in place, on every rank.
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// `buf ←` rank 0's `buf`, on every rank.
    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every rank of the run now, with exit code `code` (after one rank's error, so that
    /// no other rank waits forever in a collective).
    fn abort(&self, code: i32) -> !;

    /// Whether every rank passed the same `value` (a configuration's or the parameters'
    /// checksum). Every rank gets the same answer: with `x` the value's four 16-bit parts,
    /// `Σx² · world = (Σx)²` holds part by part exactly when all ranks' parts are equal
    /// (Cauchy–Schwarz), and these sums are exact in f64.
    fn agree(&self, value: u64) -> Result<bool> {
        let parts: Vec<f64> = (0..4)
            .map(|i| ((value >> (16 * i)) & 0xffff) as f64)
            .collect();
        let mut sums: Vec<f64> = parts.iter().chain(parts.iter()).copied().collect();
        sums[4..].iter_mut().for_each(|x| *x *= *x);
        self.all_reduce_f64(&mut sums)?;
        let world = self.world() as f64;
        Ok((0..4).all(|i| sums[4 + i] * world == sums[i] * sums[i]))
    }
}

/// One process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A 64-bit FNV-1a checksum of bytes (a configuration's text; parameters' bits, which the
/// replicas must agree on exactly).
pub fn checksum(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The bytes of f32 values, for [`checksum`].
pub fn bits(values: &[f32]) -> impl Iterator<Item = u8> + '_ {
    values.iter().flat_map(|v| v.to_bits().to_le_bytes())
}

/// The error of a run whose ranks disagree.
pub fn disagreement(what: &str) -> Error {
    Error::InvalidArgument(format!(
        "the ranks of this distributed run disagree on {what}: every rank must run the same binary with the same configuration and data"
    ))
}
