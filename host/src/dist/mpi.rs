//! The collectives through MPI (the `mpi` crate over Open MPI): `mpirun -np N host train
//! --distributed …` starts N ranks, on one machine or on the hosts of a hostfile.
//!
//! MPI is initialised "funneled": only the thread that initialised it may call it. The step
//! calls every collective from the main thread (rayon's workers only compute, the
//! augmentation thread only augments), and each call checks it, so the `Send`/`Sync` below
//! never lets another thread into MPI.

use super::Collective;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use mpi::Threading;
use std::thread::ThreadId;

/// This process's place in an MPI run.
pub struct Mpi {
    world: SimpleCommunicator,
    owner: ThreadId,
    /// Finalises MPI when dropped: kept last, so the communicator goes first.
    _universe: Universe,
}

// SAFETY: every method checks that it runs on the thread that initialised MPI (`owner`),
// which is what the funneled threading level requires; other threads only hold the value.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI (once per process). Errors when it was initialised already or the
    /// library does not give the funneled level.
    pub fn init() -> Result<Self> {
        let (universe, level) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
                Error::InvalidArgument("MPI was initialised already in this process".into())
            })?;
        if level < Threading::Funneled {
            return Err(Error::InvalidArgument(format!(
                "the MPI library gives thread level {level:?}; this program needs Funneled"
            )));
        }
        Ok(Mpi {
            world: universe.world(),
            owner: std::thread::current().id(),
            _universe: universe,
        })
    }

    fn on_owner(&self, what: &str) -> Result<()> {
        if std::thread::current().id() != self.owner {
            return Err(Error::InvalidArgument(format!(
                "MPI {what} called from a thread other than the one that initialised MPI"
            )));
        }
        Ok(())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.on_owner("all-reduce")?;
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.on_owner("all-reduce")?;
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.on_owner("broadcast")?;
        self.world.process_at_rank(0).broadcast_into(buf);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.on_owner("barrier")?;
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
