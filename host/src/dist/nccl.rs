//! NCCL between GPUs: the gradient average of a data-parallel GPU run stays on the devices
//! (one `ncclAllReduce` with `ncclAvg` over the flat gradient per step) instead of going
//! through host memory and MPI. The communicator is set up through the run's [`Collective`]:
//! rank 0 makes NCCL's unique id and broadcasts it (128 bytes as 32 f32 words); a world of
//! one needs no broadcast, so a single GPU can check the path.
//!
//! BatchNorm's per-channel sums (a few KB per layer) still go through the collective: they
//! are added in f64, which NCCL's f32 sum would not be.

use super::Collective;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::{Arc, Mutex};

/// One rank's NCCL communicator, on the stream of its GPU backend.
pub struct Nccl {
    comm: Mutex<CommHandle>,
}

struct CommHandle(Comm);
// SAFETY: the communicator is used under the mutex only, on the backend's one stream.
unsafe impl Send for CommHandle {}

fn nccl_err(e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("NCCL: {e:?}"))
}

impl Nccl {
    /// Joins this rank's GPU, whose work is queued on `stream` (the GPU backend's), to the
    /// run's other ranks (every rank calls it together).
    pub fn new(stream: Arc<CudaStream>, collective: &dyn Collective) -> Result<Self> {
        // SAFETY: only tries to load the library.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(Error::GpuUnavailable(
                "libnccl.so was not found: pip install nvidia-nccl-cu13 and run through `host` (which links the wheel's libnccl.so.2 under the name cudarc loads), or add a folder with libnccl.so to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let (rank, world) = (collective.rank(), collective.world());
        let id = if rank == 0 {
            Id::new().map_err(nccl_err)?
        } else {
            Id::uninit([0; 128])
        };
        let id = if world > 1 {
            let mut words: Vec<f32> = id
                .internal()
                .chunks(4)
                .map(|b| {
                    f32::from_bits(u32::from_le_bytes([
                        b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8,
                    ]))
                })
                .collect();
            collective.broadcast_f32(&mut words)?;
            let mut internal = [0 as std::ffi::c_char; 128];
            for (k, w) in words.iter().enumerate() {
                for (j, byte) in w.to_bits().to_le_bytes().into_iter().enumerate() {
                    internal[4 * k + j] = byte as std::ffi::c_char;
                }
            }
            Id::uninit(internal)
        } else {
            id
        };
        let comm = Comm::from_rank(stream, rank, world, id).map_err(nccl_err)?;
        Ok(Nccl {
            comm: Mutex::new(CommHandle(comm)),
        })
    }

    /// `buf ← the mean of buf over the ranks`, on the devices.
    pub fn average(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        let comm = self.comm.lock().expect("NCCL communicator poisoned");
        comm.0
            .all_reduce_in_place(buf, &ReduceOp::Avg)
            .map(|_| ())
            .map_err(nccl_err)
    }
}
