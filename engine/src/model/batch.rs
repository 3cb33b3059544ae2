//! Laying token sequences out for one forward pass: padding, position ids, attention masks,
//! and the key/value cache used by the sampler.
//!
//! Every architecture takes the same inputs (ids, position ids, an additive mask over all keys
//! so far), so padding and caching are solved once here rather than once per model. Position ids
//! count only real tokens, so a left-padded row sees the same positions as the unpadded sequence.

use candle_core::{DType, Device, Result, Tensor};

use super::ops::mask_value;

/// Token ids plus the mask and positions the models need.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (batch, seq) u32.
    pub input_ids: Tensor,
    /// (batch, seq) u32, counting real tokens only.
    pub position_ids: Tensor,
    /// (batch, 1, seq, seq) additive: causal and key padding.
    pub mask: Tensor,
    /// Which cells hold real tokens, row by row.
    pub valid: Vec<Vec<bool>>,
}

/// Where the padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Real tokens first (scoring, training).
    Right,
    /// Real tokens last, so every row's next token lands in the same column (sampling).
    Left,
}

impl Batch {
    pub fn new(seqs: &[&[u32]], padding: Padding, pad_id: u32, dtype: DType, device: &Device) -> Result<Self> {
        if seqs.is_empty() {
            candle_core::bail!("empty batch");
        }
        let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if width == 0 {
            candle_core::bail!("every sequence in the batch is empty");
        }
        let mut ids = Vec::with_capacity(seqs.len() * width);
        let mut valid = Vec::with_capacity(seqs.len());
        for s in seqs {
            let pad = width - s.len();
            let row: Vec<bool> = match padding {
                Padding::Right => (0..width).map(|j| j < s.len()).collect(),
                Padding::Left => (0..width).map(|j| j >= pad).collect(),
            };
            match padding {
                Padding::Right => {
                    ids.extend_from_slice(s);
                    ids.extend(std::iter::repeat_n(pad_id, pad));
                }
                Padding::Left => {
                    ids.extend(std::iter::repeat_n(pad_id, pad));
                    ids.extend_from_slice(s);
                }
            }
            valid.push(row);
        }
        let input_ids = Tensor::from_vec(ids, (seqs.len(), width), device)?;
        let position_ids = positions(&valid, 0, &vec![0; seqs.len()], device)?;
        let mask = attention_mask(&valid, 0, dtype, device)?;
        Ok(Self { input_ids, position_ids, mask, valid })
    }

    /// A batch with an arbitrary pattern of real tokens (`valid`), e.g. mixed padding sides.
    pub fn from_rows(ids: Vec<Vec<u32>>, valid: Vec<Vec<bool>>, dtype: DType, device: &Device) -> Result<Self> {
        let (b, t) = (ids.len(), ids.first().map_or(0, |r| r.len()));
        if valid.len() != b || ids.iter().any(|r| r.len() != t) || valid.iter().any(|r| r.len() != t) {
            candle_core::bail!("ids and valid must both be {b} rows of {t} columns");
        }
        let input_ids = Tensor::from_vec(ids.concat(), (b, t), device)?;
        let position_ids = positions(&valid, 0, &vec![0; b], device)?;
        let mask = attention_mask(&valid, 0, dtype, device)?;
        Ok(Self { input_ids, position_ids, mask, valid })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.valid.len(), self.valid.first().map_or(0, |r| r.len()))
    }
}

/// Position ids for columns `offset..` of `valid`, where `start[b]` real tokens precede `offset`.
pub fn positions(valid: &[Vec<bool>], offset: usize, start: &[u32], device: &Device) -> Result<Tensor> {
    let t = valid.first().map_or(0, |r| r.len()) - offset;
    let mut out = Vec::with_capacity(valid.len() * t);
    for (row, &s) in valid.iter().zip(start) {
        let mut p = s;
        for &v in &row[offset..] {
            out.push(if v { p } else { 0 });
            if v {
                p += 1;
            }
        }
    }
    Tensor::from_vec(out, (valid.len(), t), device)
}

/// Additive mask (batch, 1, t, s) for queries in columns `offset..s` over keys `0..s`:
/// a query may see a key if the key is a real token and not in its future.
pub fn attention_mask(valid: &[Vec<bool>], offset: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let b = valid.len();
    let s = valid.first().map_or(0, |r| r.len());
    let t = s - offset;
    let neg = mask_value(dtype);
    let mut m = Vec::with_capacity(b * t * s);
    for row in valid {
        for i in 0..t {
            let q = offset + i;
            m.extend(row.iter().enumerate().map(|(j, &ok)| if ok && j <= q { 0.0 } else { neg }));
        }
    }
    Tensor::from_vec(m, (b, 1, t, s), device)?.to_dtype(dtype)
}

/// Preallocated per-layer keys and values, written in place, so each sampling step costs the
/// same whatever the prefix length (no re-concatenation of the whole cache).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    capacity: usize,
}

#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), capacity }
    }

    /// Number of positions cached (by the first layer).
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `k`, `v` (batch, kv_heads, t, head_dim) to `layer` and returns every key and
    /// value cached for that layer so far.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if k.track_op() || v.track_op() {
            candle_core::bail!("the KV cache is for inference; run training without it");
        }
        let (b, h, t, d) = k.dims4()?;
        let capacity = self.capacity;
        let slot = &mut self.layers[layer];
        if slot.is_none() {
            *slot = Some(LayerCache {
                k: Tensor::zeros((b, h, capacity, d), k.dtype(), k.device())?,
                v: Tensor::zeros((b, h, capacity, d), v.dtype(), v.device())?,
                len: 0,
            });
        }
        let c = slot.as_mut().expect("just set");
        if c.len + t > capacity {
            candle_core::bail!("KV cache full: {} + {t} positions exceed its capacity {capacity}", c.len);
        }
        c.k.slice_set(&k.contiguous()?, 2, c.len)?;
        c.v.slice_set(&v.contiguous()?, 2, c.len)?;
        c.len += t;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_positions_and_mask() {
        let b = Batch::new(&[&[5, 6, 7], &[8]], Padding::Left, 0, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(b.input_ids.to_vec2::<u32>().unwrap(), vec![vec![5, 6, 7], vec![0, 0, 8]]);
        assert_eq!(b.position_ids.to_vec2::<u32>().unwrap(), vec![vec![0, 1, 2], vec![0, 0, 0]]);
        let m = b.mask.squeeze(1).unwrap().to_vec3::<f32>().unwrap();
        let neg = mask_value(DType::F32);
        assert_eq!(m[0][1], vec![0.0, 0.0, neg]);
        assert_eq!(m[1][2], vec![neg, neg, 0.0]);
    }

    #[test]
    fn right_padding_positions() {
        let b = Batch::new(&[&[5, 6], &[8, 9, 10]], Padding::Right, 1, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(b.input_ids.to_vec2::<u32>().unwrap(), vec![vec![5, 6, 1], vec![8, 9, 10]]);
        assert_eq!(b.position_ids.to_vec2::<u32>().unwrap(), vec![vec![0, 1, 0], vec![0, 1, 2]]);
    }

    #[test]
    fn cache_refuses_overflow() {
        let mut c = KvCache::new(1, 2);
        let k = Tensor::zeros((1, 1, 2, 4), DType::F32, &Device::Cpu).unwrap();
        let (kk, _) = c.append(0, &k, &k).unwrap();
        assert_eq!(kk.dims(), &[1, 1, 2, 4]);
        let one = Tensor::zeros((1, 1, 1, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(c.append(0, &one, &one).is_err());
    }
}
