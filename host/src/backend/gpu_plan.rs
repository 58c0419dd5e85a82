//! What the CUDA backend computes on the host before it launches: the optimiser's tensor table
//! and the levels of a row-sum reduction. Kept out of `cuda` so that it builds, and is tested
//! against the CPU backend (`tests/grid.rs`, which runs the `kernels::grid` functions over
//! every thread index), on machines without a GPU.

use super::{Optimizer, OptimizerKind, TensorStep};
use crate::cpu::optimizer::adam_factors;
use kernels::grid::{TensorRow, GPU_REDUCE_GROUP, NORM_CHUNK};

/// The optimiser step of one launch sequence: per tensor a [`TensorRow`], per chunk of the
/// LARS norms the index of its tensor, and AdamW's `√(1 − β₂ᵗ)`.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerPlan {
    pub rows: Vec<TensorRow>,
    pub chunk_tensor: Vec<u32>,
    pub adam: bool,
    pub adam_bc2_sqrt: f32,
    /// LARS's trust coefficient and clipping; `None` for SGD and AdamW.
    pub lars: Option<(f32, bool)>,
}

impl OptimizerPlan {
    /// The plan of `optimizer` at step `t` (from 1) and learning rate `lr` over `tensors`.
    pub fn new(optimizer: &Optimizer, tensors: &[TensorStep], t: u64, lr: f32) -> Self {
        let lars = match optimizer.kind {
            OptimizerKind::Lars {
                trust_coefficient,
                clip,
            } => Some((trust_coefficient, clip)),
            _ => None,
        };
        let adam = optimizer.needs_second_moment();
        let (mut rows, mut chunk_tensor) = (Vec::with_capacity(tensors.len()), Vec::new());
        for (k, p) in tensors.iter().enumerate() {
            let step = lr * p.lr_scale;
            let first = chunk_tensor.len() as u32;
            if lars.is_some() && !p.plain {
                let chunks = p.range.len().div_ceil(NORM_CHUNK);
                chunk_tensor.extend(std::iter::repeat_n(k as u32, chunks));
            }
            rows.push(TensorRow {
                start: p.range.start as u64,
                end: p.range.end as u64,
                chunk_first: first,
                chunk_end: chunk_tensor.len() as u32,
                step,
                weight_decay: if p.plain { 0.0 } else { optimizer.weight_decay },
                trust: 1.0,
                adam_step_size: adam_factors(optimizer.momentum, t, step).step_size,
            });
        }
        OptimizerPlan {
            rows,
            chunk_tensor,
            adam,
            adam_bc2_sqrt: adam_factors(optimizer.momentum, t, 1.0).bc2_sqrt,
            lars,
        }
    }

    /// The table as the GPU reads it: five u64 per row.
    pub fn table_words(&self) -> Vec<u64> {
        self.rows
            .iter()
            .flat_map(|r| {
                let pair = |a: u32, b: u32| a as u64 | (b as u64) << 32;
                [
                    r.start,
                    r.end,
                    pair(r.chunk_first, r.chunk_end),
                    pair(r.step.to_bits(), r.weight_decay.to_bits()),
                    pair(r.trust.to_bits(), r.adam_step_size.to_bits()),
                ]
            })
            .collect()
    }
}

/// The launches of a row-sum reduction from `blocks` partial blocks down to one, as the block
/// count each reads: every launch adds [`GPU_REDUCE_GROUP`] blocks at a time
/// (`kernels::grid::reduce_blocks`), and the last one (which reads at most that many) writes
/// the result where it belongs, so there is always at least one.
pub fn reduce_launches(blocks: usize) -> Vec<usize> {
    let mut launches = vec![blocks];
    while *launches.last().unwrap() > GPU_REDUCE_GROUP {
        let b = *launches.last().unwrap();
        launches.push(b.div_ceil(GPU_REDUCE_GROUP));
    }
    launches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_words_are_the_rows_memory() {
        let opt = Optimizer {
            kind: OptimizerKind::Lars {
                trust_coefficient: 0.02,
                clip: true,
            },
            momentum: 0.9,
            weight_decay: 1e-4,
        };
        let tensors = [
            TensorStep {
                range: 0..5000,
                plain: false,
                lr_scale: 1.0,
            },
            TensorStep {
                range: 5000..5010,
                plain: true,
                lr_scale: 2.0,
            },
        ];
        let plan = OptimizerPlan::new(&opt, &tensors, 3, 0.5);
        assert_eq!(plan.chunk_tensor, vec![0, 0, 0]);
        assert_eq!((plan.rows[1].chunk_first, plan.rows[1].chunk_end), (3, 3));
        assert_eq!(plan.rows[1].step, 1.0);
        assert_eq!(plan.rows[1].weight_decay, 0.0);
        let words = plan.table_words();
        assert_eq!(std::mem::size_of::<TensorRow>(), 40);
        // SAFETY: TensorRow is repr(C), 40 bytes, no padding (checked above), read as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(plan.rows.as_ptr() as *const u8, 40 * plan.rows.len())
        };
        let from_words: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(bytes, &from_words[..]);
    }

    #[test]
    fn reductions_end_in_one_launch_of_at_most_a_group() {
        assert_eq!(reduce_launches(1), vec![1]);
        assert_eq!(reduce_launches(64), vec![64]);
        assert_eq!(reduce_launches(65), vec![65, 2]);
        assert_eq!(reduce_launches(8192), vec![8192, 128, 2]);
    }
}
