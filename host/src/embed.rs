//! Representations out, the point of self-supervised training: a data set through a run's
//! online encoder (evaluation-mode BatchNorm, unaugmented images resized to the training
//! side and normalised with the pre-training data's channel statistics, exactly as the kNN
//! monitor sees them), written for other programs.
//!
//! Per split (`train`, `test`), with N its images in order:
//! `representations [N, repr_dim]` f32 (the encoder's pooled output), `labels [N]` u16
//! (65535 marks an unlabelled image, as STL-10's), and on request `projections
//! [N, projection_dim]` f32 (the online projector, evaluation mode).
//! A `*.safetensors` output holds them all as `<split>.<name>`; any other output is a folder
//! of NumPy files `<split>_<name>.npy`.

use crate::byol::{Byol, ByolState};
use crate::data::augment::Augmenter;
use crate::data::Dataset;
use crate::error::Result;
use crate::files::Tensor;
use std::io::IsTerminal;
use std::path::Path;

/// One split's outputs.
pub struct Embedded {
    pub split: &'static str,
    pub representations: Vec<f32>,
    pub projections: Option<Vec<f32>>,
    pub labels: Vec<u16>,
}

/// Images per pass through the encoder; also the progress line's step.
const CHUNK: usize = 1024;

/// Every image of `data` through the online encoder (and projector, when `projections`).
pub fn embed_split(
    byol: &Byol,
    state: &ByolState,
    split: &'static str,
    data: &Dataset,
    aug: &Augmenter,
    projections: bool,
    progress: bool,
) -> Result<Embedded> {
    // The encoder's parameters and statistics lead the online buffers.
    let (params, running) = (&state.online, &state.online_running);
    let all: Vec<usize> = (0..data.len()).collect();
    let mut representations = Vec::with_capacity(data.len() * byol.encoder.repr_dim());
    let terminal = std::io::stderr().is_terminal();
    for (c, chunk) in all.chunks(CHUNK).enumerate() {
        let r = crate::eval::embed(
            &byol.backend,
            &byol.encoder,
            params,
            running,
            data,
            chunk,
            aug,
            256,
        )?;
        representations.extend(r);
        if progress && (terminal || (c + 1) * CHUNK >= data.len()) {
            let done = ((c + 1) * CHUNK).min(data.len());
            let bar = crate::train::progress_bar(done, data.len());
            let end = if done == data.len() { "\n" } else { "" };
            let clear = if terminal { "\r\x1b[2K" } else { "" };
            eprint!("{clear}{split} [{bar}] {done}/{} images{end}", data.len());
        }
    }
    let projections = match projections {
        true => Some(byol.projections(state, &representations)?),
        false => None,
    };
    Ok(Embedded {
        split,
        representations,
        projections,
        labels: data.labels.clone(),
    })
}

/// Refuses, before any work, an output named as one NumPy file (`x.npy`, `x.npz`): the
/// output is a safetensors file or a folder of several `.npy` files.
pub fn check_out(out: &Path) -> Result<()> {
    match out.extension().and_then(|e| e.to_str()) {
        Some(ext @ ("npy" | "npz")) => Err(crate::Error::InvalidArgument(format!(
            "{}: --out is FILE.safetensors or a folder (for train_representations.npy, train_labels.npy, …), not one .{ext} file",
            out.display()
        ))),
        _ => Ok(()),
    }
}

/// Writes the splits to `out`: one safetensors file when its name ends in `.safetensors`,
/// else a folder of `.npy` files. `metadata` goes into the safetensors header.
pub fn write(
    out: &Path,
    splits: &[Embedded],
    byol: &Byol,
    metadata: std::collections::HashMap<String, String>,
) -> Result<()> {
    check_out(out)?;
    let (dim, proj) = (byol.encoder.repr_dim(), byol.projector.output);
    let mut tensors = Vec::new();
    for s in splits {
        let n = s.labels.len();
        let name = |what: &str| format!("{}.{what}", s.split);
        tensors.push(Tensor::f32(
            name("representations"),
            vec![n, dim],
            &s.representations,
        ));
        if let Some(z) = &s.projections {
            tensors.push(Tensor::f32(name("projections"), vec![n, proj], z));
        }
        tensors.push(Tensor::u16(name("labels"), vec![n], &s.labels));
    }
    if out.extension().is_some_and(|e| e == "safetensors") {
        return crate::files::write_safetensors(out, &tensors, metadata);
    }
    std::fs::create_dir_all(out).map_err(|e| crate::Error::io(out, e))?;
    for t in &tensors {
        crate::files::write_npy(&out.join(format!("{}.npy", t.name.replace('.', "_"))), t)?;
    }
    Ok(())
}
