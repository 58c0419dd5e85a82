//! Checkpoints in safetensors, written atomically (a temporary file in the same folder, then
//! a rename), so a crash never leaves half a file.
//!
//! A training checkpoint holds, under the registry's names (`encoder.conv1.weight`, …):
//! `online.*`, `target.*` and `momentum.*` parameters (and `second_moment.*` for AdamW),
//! `online.*` and `target.*` running statistics, and in its metadata the run's configuration (JSON) and step. Encoder weights
//! are stored in PyTorch's layout (OIHW). [`export_encoder`] writes the online encoder alone
//! under torchvision's names, loadable with `torchvision.models.resnet18().load_state_dict(…,
//! strict=False)` (no `fc`, no `num_batches_tracked`).

use crate::backend::Backend;
use crate::byol::{Byol, ByolState};
use crate::error::{Error, Result};
use crate::files::{f32_values, Tensor};
use crate::nn::Registry;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

/// The checkpoint format's name.
pub const FORMAT: &str = "byol-rs checkpoint v1";

/// The one metadata entry of a training checkpoint. One entry, because safetensors takes
/// metadata as a `HashMap`, whose order (and so the file's bytes) would vary between saves.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: String,
    step: u64,
    /// The run's configuration, as JSON.
    config: String,
}

/// The metadata key holding [`Meta`].
const META_KEY: &str = "byol-rs";

/// Every parameter of `registry` in `flat`, in PyTorch's layout, limited to those that end
/// before `limit` (the target has no predictor).
fn param_tensors(registry: &Registry, prefix: &str, flat: &[f32], limit: usize) -> Vec<Tensor> {
    let params = registry.params.iter().filter(|p| p.range.end <= limit);
    params
        .map(|p| {
            let name = format!("{prefix}{}", p.name);
            Tensor::f32(name, p.shape.clone(), &registry.to_torch(p, flat))
        })
        .collect()
}

fn buffer_tensors(registry: &Registry, prefix: &str, flat: &[f32]) -> Vec<Tensor> {
    let buffers = registry
        .buffers
        .iter()
        .filter(|b| b.range.end <= flat.len());
    buffers
        .map(|b| {
            let name = format!("{prefix}{}", b.name);
            Tensor::f32(name, b.shape.clone(), &flat[b.range.clone()])
        })
        .collect()
}

/// Writes `tensors` with `metadata` to `path` atomically; failures are checkpoint errors.
fn write_atomic(
    path: &Path,
    tensors: Vec<Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    crate::files::write_safetensors(path, &tensors, metadata).map_err(|e| match e {
        Error::Data { path, reason } => Error::Checkpoint { path, reason },
        e => e,
    })
}

/// Writes a training checkpoint; `config` is the run's configuration as JSON.
pub fn save<B: Backend>(
    path: &Path,
    byol: &Byol<B>,
    state: &ByolState,
    config: &str,
) -> Result<()> {
    let r = &byol.registry;
    let mut t = param_tensors(r, "online.", &state.online, usize::MAX);
    t.extend(param_tensors(
        r,
        "target.",
        &state.target,
        state.target.len(),
    ));
    t.extend(param_tensors(r, "momentum.", &state.momentum, usize::MAX));
    if !state.second_moment.is_empty() {
        let v = &state.second_moment;
        t.extend(param_tensors(r, "second_moment.", v, usize::MAX));
    }
    t.extend(buffer_tensors(r, "online.", &state.online_running));
    t.extend(buffer_tensors(r, "target.", &state.target_running));
    let meta = Meta {
        format: FORMAT.into(),
        step: state.step,
        config: config.into(),
    };
    write_atomic(
        path,
        t,
        HashMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(&meta).expect("serialises"),
        )]),
    )
}

/// Reads a training checkpoint written by [`save`] for the same networks. Returns the state
/// and the stored configuration (JSON).
pub fn load<B: Backend>(path: &Path, byol: &Byol<B>) -> Result<(ByolState, String)> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.into(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| not_safetensors(path, e))?;
    let meta = read_meta(path, header.metadata().as_ref())?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut state = byol.init(0);
    state.step = meta.step;
    let r = &byol.registry;
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|_| {
            bad(format!(
                "lacks tensor {name}: it was written for other networks"
            ))
        })?;
        if t.dtype() != Dtype::F32 || t.shape() != shape {
            return Err(bad(format!(
                "tensor {name} is {:?} {:?}, expected F32 {shape:?}: other networks",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(f32_values(t.data()).collect())
    };
    // AdamW's second moment is there when the first parameter's is.
    let first = r
        .params
        .first()
        .map(|p| format!("second_moment.{}", p.name));
    if first.is_some_and(|name| st.tensor(&name).is_ok()) {
        state.second_moment = vec![0.0; state.online.len()];
    }
    for (prefix, flat) in [
        ("online.", &mut state.online),
        ("target.", &mut state.target),
        ("momentum.", &mut state.momentum),
        ("second_moment.", &mut state.second_moment),
    ] {
        let len = flat.len();
        for p in r.params.iter().filter(|p| p.range.end <= len) {
            r.from_torch(p, &read(&format!("{prefix}{}", p.name), &p.shape)?, flat);
        }
    }
    for (prefix, flat) in [
        ("online.", &mut state.online_running),
        ("target.", &mut state.target_running),
    ] {
        let len = flat.len();
        for b in r.buffers.iter().filter(|b| b.range.end <= len) {
            flat[b.range.clone()].copy_from_slice(&read(&format!("{prefix}{}", b.name), &b.shape)?);
        }
    }
    // What `save` writes: online and momentum parameters, online buffers, and the target's.
    let target_params = r
        .params
        .iter()
        .filter(|p| p.range.end <= state.target.len())
        .count();
    let target_buffers = r
        .buffers
        .iter()
        .filter(|b| b.range.end <= state.target_running.len())
        .count();
    let moments = if state.second_moment.is_empty() { 2 } else { 3 };
    let expected = moments * r.params.len() + r.buffers.len() + target_params + target_buffers;
    if st.len() != expected {
        return Err(bad(format!(
            "holds {} tensors, these networks have {expected}: other networks",
            st.len()
        )));
    }
    Ok((state, meta.config))
}

fn read_meta(path: &Path, metadata: Option<&HashMap<String, String>>) -> Result<Meta> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.into(),
        reason,
    };
    let json = metadata.and_then(|m| m.get(META_KEY)).ok_or_else(|| {
        bad("not a training checkpoint of this program (no byol-rs metadata)".into())
    })?;
    let meta: Meta =
        serde_json::from_str(json).map_err(|e| bad(format!("unreadable metadata ({e})")))?;
    if meta.format != FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {FORMAT:?}",
            meta.format
        )));
    }
    Ok(meta)
}

/// The error for a file that does not parse as safetensors, from [`load`] and [`stored_config`].
fn not_safetensors(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.into(),
        reason: format!("not a safetensors file ({e})"),
    }
}

/// Largest header [`stored_config`] reads: the safetensors crate's own limit.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The run configuration (JSON) stored in a training checkpoint, read from the file's header
/// alone (safetensors: the header's length as 8 little-endian bytes, then the header), not
/// its tensors: a resumed run asks for it before [`load`] reads the whole file, and a
/// preset's checkpoint is hundreds of MB. The tensors are checked by [`load`].
pub fn stored_config(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| not_safetensors(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(not_safetensors(
            path,
            format!("a header of {len} bytes, more than {MAX_HEADER_BYTES}"),
        ));
    }
    let mut header = Vec::new();
    file.take(len)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    if header.len() as u64 != len {
        return Err(not_safetensors(
            path,
            format!("the header ends after {} of its {len} bytes", header.len()),
        ));
    }
    let header: Metadata = serde_json::from_slice(&header).map_err(|e| not_safetensors(path, e))?;
    Ok(read_meta(path, header.metadata().as_ref())?.config)
}

/// Writes the online encoder alone, under torchvision's names, in PyTorch's layouts.
pub fn export_encoder<B: Backend>(path: &Path, byol: &Byol<B>, state: &ByolState) -> Result<()> {
    let enc = &byol.encoder.registry;
    let n = enc.param_len();
    let mut t = param_tensors(enc, "", &state.online[..n], n);
    t.extend(buffer_tensors(
        enc,
        "",
        &state.online_running[..enc.buffer_len()],
    ));
    let meta = HashMap::from([(
        "format".to_string(),
        "torchvision resnet state_dict (no fc)".to_string(),
    )]);
    write_atomic(path, t, meta)
}
