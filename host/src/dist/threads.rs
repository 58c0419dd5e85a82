//! Ranks as threads of one process, for tests of the data-parallel step without MPI:
//! [`InProcess::world`] gives one handle per rank; each rank's thread calls the collectives
//! with its own handle, in the same order as the others. Sums run in rank order.

use super::Collective;
use crate::error::{Error, Result};
use std::sync::{Arc, Barrier, Mutex};

struct Shared {
    world: usize,
    barrier: Barrier,
    /// Each rank's contribution to the collective in progress.
    slots: Mutex<Vec<Vec<f64>>>,
}

/// One rank's handle.
pub struct InProcess {
    rank: usize,
    shared: Arc<Shared>,
}

impl InProcess {
    /// Handles for ranks `0..world`, to be moved one per thread.
    pub fn world(world: usize) -> Vec<InProcess> {
        let shared = Arc::new(Shared {
            world,
            barrier: Barrier::new(world),
            slots: Mutex::new(vec![Vec::new(); world]),
        });
        (0..world)
            .map(|rank| InProcess {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Every rank's contribution, in rank order, once all have given theirs.
    fn exchange(&self, mine: Vec<f64>) -> Result<Vec<Vec<f64>>> {
        let poisoned = |_| Error::InvalidArgument("a rank thread panicked".into());
        self.shared.slots.lock().map_err(poisoned)?[self.rank] = mine;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().map_err(poisoned)?.clone();
        // Nobody may overwrite a slot before every rank has read them all.
        self.shared.barrier.wait();
        if all.iter().any(|s| s.len() != all[0].len()) {
            return Err(Error::InvalidArgument(
                "ranks called a collective with different lengths".into(),
            ));
        }
        Ok(all)
    }

    fn sum(&self, mine: Vec<f64>) -> Result<Vec<f64>> {
        let all = self.exchange(mine)?;
        let mut total = vec![0.0f64; all[0].len()];
        for slot in &all {
            total.iter_mut().zip(slot).for_each(|(t, v)| *t += v);
        }
        Ok(total)
    }
}

impl Collective for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()> {
        // Summed in f32, rank by rank, as a reduction over f32 buffers would.
        let all = self.exchange(buf.iter().map(|&v| v as f64).collect())?;
        for (i, v) in buf.iter_mut().enumerate() {
            *v = all.iter().fold(0.0f32, |t, slot| t + slot[i] as f32);
        }
        Ok(())
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        buf.copy_from_slice(&self.sum(buf.to_vec())?);
        Ok(())
    }
    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<()> {
        let all = self.exchange(buf.iter().map(|&v| v as f64).collect())?;
        buf.iter_mut()
            .zip(&all[0])
            .for_each(|(b, &v)| *b = v as f32);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
