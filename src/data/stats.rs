//! `alexnet stats DATA`: the training set's per-pixel mean image, channel means and standard
//! deviations, and the eigen-pairs of its RGB covariance (for PCA colour noise, paper section
//! 4.1), over the resized S x S centre crops, pixel values in [0, 1]. Saved as safetensors.
use crate::data::loader::{decode, sample_error};
use crate::data::source::Dataset;
use crate::data::transform::{Normalize, Pca, Transform, View};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;
use tch::{Kind, Tensor};

#[derive(Clone, Debug)]
pub struct Stats {
    pub side: u32,
    /// (3, side, side), channel-major.
    pub mean_image: Vec<f32>,
    pub channel_mean: [f32; 3],
    pub channel_std: [f32; 3],
    /// Descending eigenvalues of the RGB covariance, and eigenvectors as columns.
    pub eigval: [f32; 3],
    pub eigvec: [[f32; 3]; 3],
    pub images: usize,
    pub skipped: usize,
}

struct Acc {
    sum_image: Vec<f64>,
    sum: [f64; 3],
    cross: [[f64; 3]; 3],
    images: usize,
    skipped: usize,
}

impl Acc {
    fn new(plane: usize) -> Acc {
        Acc {
            sum_image: vec![0.0; 3 * plane],
            sum: [0.0; 3],
            cross: [[0.0; 3]; 3],
            images: 0,
            skipped: 0,
        }
    }

    fn add(&mut self, image: &image::RgbImage) {
        let plane = self.sum_image.len() / 3;
        for (p, px) in image.pixels().enumerate() {
            let v = [0, 1, 2].map(|c| f64::from(px[c]) / 255.0);
            for c in 0..3 {
                self.sum_image[c * plane + p] += v[c];
                self.sum[c] += v[c];
                for d in 0..3 {
                    self.cross[c][d] += v[c] * v[d];
                }
            }
        }
        self.images += 1;
    }

    fn merge(mut self, o: Acc) -> Acc {
        self.sum_image.iter_mut().zip(&o.sum_image).for_each(|(a, b)| *a += b);
        for i in 0..3 {
            self.sum[i] += o.sum[i];
            for j in 0..3 {
                self.cross[i][j] += o.cross[i][j];
            }
        }
        self.images += o.images;
        self.skipped += o.skipped;
        self
    }
}

impl Stats {
    /// Computes the statistics over `ds` at side `side` (bad images are skipped and counted).
    pub fn compute(ds: &Dataset, side: u32, progress: &(dyn Fn() + Sync)) -> Result<Stats> {
        if side == 0 {
            return Err(Error::Config("the statistics' image side must be >= 1, got 0".into()));
        }
        let plane = (side as usize).pow(2);
        let tf = Transform {
            resize: side,
            square: true,
            crop: side,
            view: View::Center,
            pca: None,
            scale: 1.0,
            normalize: Normalize::MeanStd {
                mean: [0.0; 3],
                std: [1.0; 3],
            },
        };
        // One accumulator (a mean image of 3 x side² f64) per thread at work, taken from a pool
        // for each image: rayon's fold made one per split, dozens of them (2 GB at side 2048).
        let pool = std::sync::Mutex::new(Vec::<Acc>::new());
        let lock = || pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (0..ds.len()).into_par_iter().for_each(|i| {
            progress();
            let base = decode(ds, i).and_then(|img| tf.base(&img).map_err(sample_error(ds, i)));
            let mut a = lock().pop().unwrap_or_else(|| Acc::new(plane));
            match base {
                Ok(b) => a.add(&b),
                Err(e) => {
                    crate::say::line(&format!("skipping bad image: {e}")); // as the training loader says it
                    a.skipped += 1;
                }
            }
            lock().push(a);
        });
        let acc = pool
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .into_iter()
            .fold(Acc::new(plane), Acc::merge);
        if acc.images == 0 {
            return Err(Error::File {
                path: ds.origin.clone(),
                reason: "no readable image to compute statistics".into(),
            });
        }
        let (n, npx) = (acc.images as f64, (acc.images * plane) as f64);
        let mean: [f64; 3] = acc.sum.map(|s| s / npx);
        let cov: [[f64; 3]; 3] =
            std::array::from_fn(|i| std::array::from_fn(|j| acc.cross[i][j] / npx - mean[i] * mean[j]));
        let (eigval, eigvec) = symmetric_eigen3(cov);
        Ok(Stats {
            side,
            mean_image: acc.sum_image.iter().map(|s| (s / n) as f32).collect(),
            channel_mean: mean.map(|m| m as f32),
            channel_std: [0, 1, 2].map(|c| cov[c][c].max(0.0).sqrt() as f32),
            eigval: eigval.map(|v| v as f32),
            eigvec: eigvec.map(|r| r.map(|v| v as f32)),
            images: acc.images,
            skipped: acc.skipped,
        })
    }

    pub fn pca(&self) -> Pca {
        Pca {
            eigval: self.eigval,
            eigvec: self.eigvec,
            sigma: 0.1,
        }
    }

    pub fn mean_image(&self) -> Normalize {
        Normalize::MeanImage {
            side: self.side,
            mean: Arc::new(self.mean_image.clone()),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let s = i64::from(self.side);
        let t = |v: &[f32], shape: &[i64]| Tensor::from_slice(v).view(shape);
        let eigvec: Vec<f32> = self.eigvec.iter().flatten().copied().collect();
        let tensors = [
            ("mean_image", t(&self.mean_image, &[3, s, s])),
            ("channel_mean", t(&self.channel_mean, &[3])),
            ("channel_std", t(&self.channel_std, &[3])),
            ("eigval", t(&self.eigval, &[3])),
            ("eigvec", t(&eigvec, &[3, 3])),
            ("images", Tensor::from_slice(&[self.images as i64])),
        ];
        crate::checkpoint::save_tensors(path, &tensors)
    }

    pub fn load(path: &Path) -> Result<Stats> {
        let bad = |reason: String| Error::File {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such stats file"),
            });
        }
        let map: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| bad(format!("not a stats file: {e}")))?
            .into_iter()
            .collect();
        // The tensor `name`, of the shape `alexnet stats` writes (a hand-made file laid out
        // otherwise was read in the wrong order), its values finite (NaN normalised every image
        // to NaN, then blamed on the checkpoint's weights).
        let get = |name: &str, shape: &str, fits: &dyn Fn(&[i64]) -> bool| -> Result<Vec<f32>> {
            let t = map.get(name).ok_or_else(|| bad(format!("missing tensor `{name}`")))?;
            if !fits(&t.size()) {
                return Err(bad(format!("`{name}` has shape {:?}, expected {shape}", t.size())));
            }
            let v = Vec::<f32>::try_from(t.f_to_kind(Kind::Float)?.f_reshape([-1])?)?;
            match v.iter().all(|x| x.is_finite()) {
                true => Ok(v),
                false => Err(bad(format!("`{name}` holds NaN or infinite values"))),
            }
        };
        let three = |name: &str| -> Result<[f32; 3]> {
            let v = get(name, "[3]", &|s| s == [3])?;
            Ok([v[0], v[1], v[2]])
        };
        let mean_image = get(
            "mean_image",
            "[3, S, S]",
            &|s| matches!(s, [3, h, w] if h == w && *h > 0),
        )?;
        let channel_mean = three("channel_mean")?;
        // Pixels are in [0, 1]: a mean in 0-255 units shifted every input by ~-100.
        for (name, v) in [("mean_image", &mean_image[..]), ("channel_mean", &channel_mean[..])] {
            if v.iter().any(|x| !(0.0..=1.0).contains(x)) {
                return Err(bad(format!(
                    "`{name}` holds values outside [0, 1] (pixels are in [0, 1], not 0-255)"
                )));
            }
        }
        let side = ((mean_image.len() / 3) as f64).sqrt().round() as u32;
        let ev = get("eigvec", "[3, 3]", &|s| s == [3, 3])?;
        let channel_std = three("channel_std")?;
        // Zero is a channel of one value everywhere (`alexnet stats` writes it; no transform
        // divides by these: they are the report's).
        if channel_std.iter().any(|&s| s < 0.0) {
            return Err(bad(format!("channel_std {channel_std:?} is negative")));
        }
        // A count (written by `alexnet stats`; absent from hand-made files): one value.
        let images = match map.get("images") {
            None => 0,
            Some(t) => match Vec::<i64>::try_from(t.f_reshape([-1])?.f_to_kind(Kind::Int64)?)?.as_slice() {
                [n] => usize::try_from(*n).map_err(|_| bad(format!("images = {n} is negative")))?,
                other => return Err(bad(format!("`images` holds {} values, expected 1", other.len()))),
            },
        };
        let (eigval, eigvec) = (
            three("eigval")?,
            std::array::from_fn(|r| std::array::from_fn(|c| ev[r * 3 + c])),
        );
        check_pca(&eigval, &eigvec).map_err(bad)?;
        Ok(Stats {
            side,
            mean_image,
            channel_mean,
            channel_std,
            eigval,
            eigvec,
            images,
            skipped: 0,
        })
    }
}

/// The colour PCA of pixels in [0, 1]: eigenvalues of their covariance (each at least 0 and
/// together at most 3 x 0.25, the largest variance a value in [0, 1] can have) and orthonormal
/// eigenvectors. ImageNet's widely copied 0-255 eigenvalues (55.46, 4.79, 1.15) made the
/// lighting noise ~255x too strong, in silence.
fn check_pca(eigval: &[f32; 3], eigvec: &[[f32; 3]; 3]) -> std::result::Result<(), String> {
    const SLACK: f32 = 1e-6; // rounding of a degenerate (one-colour) dataset's eigenvalues
    if eigval.iter().any(|&v| v < -SLACK) || eigval.iter().sum::<f32>() > 0.75 + SLACK {
        return Err(format!(
            "eigval {eigval:?} are not eigenvalues of the covariance of pixels in [0, 1] (each at least 0, \
             together at most 0.75; 0-255 units?)"
        ));
    }
    // Columns are the eigenvectors: V^T V = I, to the 4 decimals published values are given to.
    for (i, j) in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)] {
        let dot: f32 = (0..3).map(|r| eigvec[r][i] * eigvec[r][j]).sum();
        if (dot - f32::from(u8::from(i == j))).abs() > 1e-3 {
            return Err(format!(
                "eigvec {eigvec:?} is not orthonormal (columns {i} . {j} = {dot})"
            ));
        }
    }
    Ok(())
}

/// Eigen-decomposition of a symmetric 3x3 matrix by cyclic Jacobi rotations: eigenvalues in
/// descending order and the matching unit eigenvectors as columns.
#[allow(clippy::needless_range_loop)] // a rotation reads and writes two columns (rows) by index
pub fn symmetric_eigen3(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..50 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        if off < 1e-30 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
            for k in 0..3 {
                let (akp, akq) = (a[k][p], a[k][q]);
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let (apk, aqk) = (a[p][k], a[q][k]);
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let vals = order.map(|i| a[i][i]);
    let vecs = std::array::from_fn(|r| std::array::from_fn(|c| v[r][order[c]]));
    (vals, vecs)
}
