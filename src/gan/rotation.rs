//! The S3GAN rotation batch layout (compare_gan `s3gan.py`,
//! `merge_with_rotation_data`; docs/method.md, "The labelling modes"). Of a batch of `B` images,
//! the last `n = (B / rotated_batch_fraction) / 4` are rotated by 90, 180 and
//! 270 degrees and appended: `[x (B), rot90(x[-n:]), rot180(x[-n:]),
//! rot270(x[-n:])]`, `B + 3n` rows, rotated copies keeping their labels. The
//! GAN loss uses the first `B` logits; the rotation loss uses the last `4n`
//! (n unrotated with target 0, then n each with targets 1, 2, 3).
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

pub const NUM_ROTATIONS: i64 = 4;

/// The layout of one half (real or fake) of a rotated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationLayout {
    /// Unrotated images `B`.
    pub batch: i64,
    /// Images rotated per angle `n`.
    pub n: i64,
}

impl RotationLayout {
    pub fn new(batch: i64, rotated_batch_fraction: i64) -> Result<Self> {
        if rotated_batch_fraction <= 0 || batch % rotated_batch_fraction != 0 {
            return Err(Error::invalid(format!(
                "rotated batch fraction {rotated_batch_fraction} must divide the batch size {batch}"
            )));
        }
        let n = batch / rotated_batch_fraction / NUM_ROTATIONS;
        if n == 0 {
            return Err(Error::invalid(format!(
                "batch size {batch} / rotated batch fraction {rotated_batch_fraction} leaves no image to rotate (needs at least 4)"
            )));
        }
        Ok(RotationLayout { batch, n })
    }

    /// Rows of one half after appending: `B + 3n`.
    pub fn rows(&self) -> i64 {
        self.batch + (NUM_ROTATIONS - 1) * self.n
    }

    /// `[x, rot90(x[-n:]), rot180(x[-n:]), rot270(x[-n:])]` for images [B, C, H, W].
    pub fn append_images(&self, x: &Tensor) -> Tensor {
        let last = x.narrow(0, self.batch - self.n, self.n);
        let mut parts = vec![x.shallow_clone()];
        for k in 1..NUM_ROTATIONS {
            parts.push(last.rot90(k, [2, 3]));
        }
        Tensor::cat(&parts, 0)
    }

    /// Labels (or any per-row tensor) follow their images: `[y, y[-n:] x 3]`.
    pub fn append_rows(&self, y: &Tensor) -> Tensor {
        let last = y.narrow(0, self.batch - self.n, self.n);
        let mut parts = vec![y.shallow_clone()];
        for _ in 1..NUM_ROTATIONS {
            parts.push(last.shallow_clone());
        }
        Tensor::cat(&parts, 0)
    }

    /// The first `B` rows: the unrotated batch the GAN loss sees.
    pub fn unrotated(&self, t: &Tensor) -> Tensor {
        t.narrow(0, 0, self.batch)
    }

    /// The last `4n` rows: the rotation head's inputs.
    pub fn rotation_rows(&self, t: &Tensor) -> Tensor {
        t.narrow(
            0,
            self.rows() - NUM_ROTATIONS * self.n,
            NUM_ROTATIONS * self.n,
        )
    }

    /// Targets of [`Self::rotation_rows`]: `[0]*n + [1]*n + [2]*n + [3]*n`.
    pub fn targets(&self, device: Device) -> Tensor {
        Tensor::arange(NUM_ROTATIONS, (Kind::Int64, device))
            .repeat_interleave_self_int(self.n, 0, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch 8, fraction 2 -> n = 1: the last image (index 7) is rotated.
    #[test]
    fn layout_and_targets_by_hand() {
        let l = RotationLayout::new(8, 2).expect("layout");
        assert_eq!(l.n, 1);
        assert_eq!(l.rows(), 11);
        // Images 2x2 whose pixels encode the row: [[a, b], [c, d]] with a = 10 * row.
        let x = Tensor::arange(8 * 4, (Kind::Float, Device::Cpu)).view([8, 1, 2, 2]);
        let all = l.append_images(&x);
        assert_eq!(all.size(), vec![11, 1, 2, 2]);
        assert!(all.narrow(0, 0, 8).equal(&x));
        // Row 7 is [[28, 29], [30, 31]]; rot90 (counter-clockwise) is [[29, 31], [28, 30]],
        // rot180 [[31, 30], [29, 28]], rot270 [[30, 28], [31, 29]].
        let got: Vec<f32> = Vec::try_from(all.narrow(0, 8, 3).flatten(0, -1)).expect("vec");
        assert_eq!(
            got,
            vec![29., 31., 28., 30., 31., 30., 29., 28., 30., 28., 31., 29.]
        );
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7]);
        let ys: Vec<i64> = Vec::try_from(l.append_rows(&y)).expect("vec");
        assert_eq!(ys, vec![0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7]);
        // Rotation rows: the unrotated row 7 then its three rotations.
        let rows: Vec<i64> = Vec::try_from(l.rotation_rows(&l.append_rows(&y))).expect("vec");
        assert_eq!(rows, vec![7, 7, 7, 7]);
        let t: Vec<i64> = Vec::try_from(l.targets(Device::Cpu)).expect("vec");
        assert_eq!(t, vec![0, 1, 2, 3]);
    }

    #[test]
    fn layout_with_two_per_angle() {
        let l = RotationLayout::new(16, 2).expect("layout");
        assert_eq!(l.n, 2);
        let t: Vec<i64> = Vec::try_from(l.targets(Device::Cpu)).expect("vec");
        assert_eq!(t, vec![0, 0, 1, 1, 2, 2, 3, 3]);
        let y = Tensor::arange(16, (Kind::Int64, Device::Cpu));
        let rows: Vec<i64> = Vec::try_from(l.rotation_rows(&l.append_rows(&y))).expect("vec");
        assert_eq!(rows, vec![14, 15, 14, 15, 14, 15, 14, 15]);
        assert!(RotationLayout::new(6, 4).is_err());
        assert!(RotationLayout::new(4, 4).is_err());
    }
}
