//! The parameter registry: every trainable tensor and every BatchNorm running buffer of a
//! network, by its torchvision name, as a range of one flat buffer (so an EMA, a LARS step or
//! a checkpoint handles a whole network at once).
//!
//! Shapes are PyTorch's. Convolution weights are stored OHWI (`[cout, k, k, cin]`) for the
//! NHWC kernels; [`Registry::to_torch`] and [`Registry::from_torch`] convert to and from
//! PyTorch's OIHW. Everything else has PyTorch's layout already.

use std::ops::Range;

/// What a parameter is; LARS and weight decay skip biases and BatchNorm parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ConvWeight,
    LinearWeight,
    Bias,
    BnWeight,
    BnBias,
}

impl Role {
    /// Biases and BatchNorm γ, β: excluded from weight decay and from the trust ratio.
    pub fn is_bias_or_bn(self) -> bool {
        matches!(self, Role::Bias | Role::BnWeight | Role::BnBias)
    }
}

/// One trainable tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    /// PyTorch's shape (`[cout, cin, k, k]` for a convolution).
    pub shape: Vec<usize>,
    pub range: Range<usize>,
    pub role: Role,
}

/// One BatchNorm running buffer (`running_mean` or `running_var`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

/// Parameters and buffers of one network, in registration order (torchvision's order).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    pub params: Vec<Param>,
    pub buffers: Vec<Buffer>,
}

impl Registry {
    /// Total length of the flat parameter buffer (also of the gradient buffer).
    pub fn param_len(&self) -> usize {
        self.params.last().map_or(0, |p| p.range.end)
    }
    /// Total length of the flat running-statistics buffer.
    pub fn buffer_len(&self) -> usize {
        self.buffers.last().map_or(0, |b| b.range.end)
    }
    pub fn add_param(&mut self, name: String, shape: Vec<usize>, role: Role) -> Range<usize> {
        let start = self.param_len();
        let range = start..start + shape.iter().product::<usize>();
        self.params.push(Param {
            name,
            shape,
            range: range.clone(),
            role,
        });
        range
    }
    pub fn add_buffer(&mut self, name: String, shape: Vec<usize>) -> Range<usize> {
        let start = self.buffer_len();
        let range = start..start + shape.iter().product::<usize>();
        self.buffers.push(Buffer {
            name,
            shape,
            range: range.clone(),
        });
        range
    }
    /// Appends every parameter and buffer of `other` under `{prefix}.{name}`, shifted to
    /// follow what this registry already holds.
    pub fn extend_prefixed(&mut self, other: &Registry, prefix: &str) {
        for p in &other.params {
            self.add_param(format!("{prefix}.{}", p.name), p.shape.clone(), p.role);
        }
        for b in &other.buffers {
            self.add_buffer(format!("{prefix}.{}", b.name), b.shape.clone());
        }
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }
    pub fn buffer(&self, name: &str) -> Option<&Buffer> {
        self.buffers.iter().find(|b| b.name == name)
    }

    /// A parameter's values in PyTorch's layout, from the flat buffer.
    pub fn to_torch(&self, p: &Param, flat: &[f32]) -> Vec<f32> {
        let v = &flat[p.range.clone()];
        match (p.role, p.shape.as_slice()) {
            (Role::ConvWeight, &[co, ci, kh, kw]) => permute(v, [co, kh, kw, ci], [0, 3, 1, 2]),
            _ => v.to_vec(),
        }
    }

    /// Writes `values` (PyTorch's layout) into the parameter's range of the flat buffer.
    pub fn from_torch(&self, p: &Param, values: &[f32], flat: &mut [f32]) {
        let v = match (p.role, p.shape.as_slice()) {
            (Role::ConvWeight, &[co, ci, kh, kw]) => {
                permute(values, [co, ci, kh, kw], [0, 2, 3, 1])
            }
            _ => values.to_vec(),
        };
        flat[p.range.clone()].copy_from_slice(&v);
    }
}

/// Transposes a 4-D row-major tensor of shape `dims`: output axis `i` is input axis `order[i]`.
fn permute(v: &[f32], dims: [usize; 4], order: [usize; 4]) -> Vec<f32> {
    let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
    let out_dims = order.map(|a| dims[a]);
    let mut out = Vec::with_capacity(v.len());
    for i0 in 0..out_dims[0] {
        for i1 in 0..out_dims[1] {
            for i2 in 0..out_dims[2] {
                for i3 in 0..out_dims[3] {
                    let idx = [i0, i1, i2, i3];
                    out.push(v[(0..4).map(|k| idx[k] * strides[order[k]]).sum::<usize>()]);
                }
            }
        }
    }
    out
}
