//! Image transforms of the paper's recipe (section 4.1; ALEXNET.md): shorter side to S, centre
//! crop, random crop + horizontal flip, PCA colour noise, mean subtraction; and the evaluation
//! views (centre crop, or 10 crops: 4 corners + centre and their mirrors, averaged at test time).
use crate::data::rng::Rng;
use crate::error::{Error, Result};
use crate::image::{recycle, take_buffer};
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// How pixel values (scaled to [0, 1]) are normalised.
#[derive(Clone, Debug)]
pub enum Normalize {
    /// (v - mean[c]) / std[c] per channel (torchvision's convention).
    MeanStd { mean: [f32; 3], std: [f32; 3] },
    /// v - mean image (the paper's per-pixel mean over the training set), a (3, S, S) array over
    /// the S x S centre crop; a crop subtracts the matching window of it.
    MeanImage { side: u32, mean: std::sync::Arc<Vec<f32>> },
}

/// PCA colour augmentation: add sum_i alpha_i * lambda_i * p_i to every pixel, alpha_i ~ N(0, sigma).
#[derive(Clone, Copy, Debug)]
pub struct Pca {
    /// Eigenvalues of the RGB covariance (pixel values in [0, 1]).
    pub eigval: [f32; 3],
    /// Eigenvectors as columns: eigvec[channel][i].
    pub eigvec: [[f32; 3]; 3],
    pub sigma: f32,
}

impl Pca {
    /// ImageNet's eigen-pairs as published with fb.resnet.torch (pixels in [0, 1]): the fallback
    /// when no `alexnet stats` file is given.
    pub fn imagenet() -> Pca {
        Pca {
            eigval: [0.2175, 0.0188, 0.0045],
            eigvec: [
                [-0.5675, 0.7192, 0.4009],
                [-0.5808, -0.0045, -0.8140],
                [-0.5836, -0.6948, 0.4203],
            ],
            sigma: 0.1,
        }
    }

    /// The RGB offset for one draw of alpha.
    pub fn offset(&self, rng: &mut Rng) -> [f32; 3] {
        let a: [f32; 3] = std::array::from_fn(|i| rng.normal() as f32 * self.sigma * self.eigval[i]);
        std::array::from_fn(|c| (0..3).map(|i| self.eigvec[c][i] * a[i]).sum())
    }
}

/// Which views of an image a sample yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Random crop + random flip (+ PCA noise): training.
    Train,
    /// Centre crop.
    Center,
    /// 4 corners + centre, then their mirrors (torchvision.transforms.TenCrop's order).
    TenCrop,
}

impl std::str::FromStr for View {
    type Err = Error;
    fn from_str(s: &str) -> Result<View> {
        match s {
            "train" => Ok(View::Train),
            "center" => Ok(View::Center),
            "ten_crop" => Ok(View::TenCrop),
            _ => Err(Error::Config(format!(
                "view must be train, center or ten_crop, got `{s}`"
            ))),
        }
    }
}

impl View {
    pub fn count(self) -> usize {
        if self == View::TenCrop {
            10
        } else {
            1
        }
    }
}

#[derive(Clone, Debug)]
pub struct Transform {
    /// Shorter side after resizing (256).
    pub resize: u32,
    /// Whether to centre-crop to resize x resize first (the paper), or keep the aspect ratio.
    pub square: bool,
    /// Output side (224).
    pub crop: u32,
    pub view: View,
    pub pca: Option<Pca>,
    pub normalize: Normalize,
    /// Multiplies the normalised values: 255 for `paper` and `caffe`, whose N(0, 0.01) init was
    /// made for raw 0-255 pixel values minus the mean (cuda-convnet, Caffe); 1 for torchvision's
    /// [0, 1] mean/std convention.
    pub scale: f32,
}

/// Resizes so the shorter side is `side` (bilinear with antialiasing, as PIL/torchvision).
pub fn resize_shorter(img: &RgbImage, side: u32) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Shape("empty image".into()));
    }
    let (short, long) = (u64::from(w.min(h)), u64::from(w.max(h)));
    let long = (long.saturating_mul(u64::from(side)) / short).max(1);
    let (nw, nh) = if w <= h {
        (u64::from(side), long)
    } else {
        (long, u64::from(side))
    };
    within_pixel_limit(nw, nh)?;
    resize_exact(img, nw as u32, nh as u32)
}

/// A resize target of at most [`crate::image::MAX_PIXELS`] (a larger one would abort the
/// process on its allocation).
fn within_pixel_limit(w: u64, h: u64) -> Result<()> {
    if w.saturating_mul(h) > crate::image::MAX_PIXELS {
        return Err(Error::Shape(format!(
            "resizing to {w}x{h} is over the limit of {} pixels",
            crate::image::MAX_PIXELS
        )));
    }
    Ok(())
}

/// `img` resized to w x h (bilinear).
pub fn resize_exact(img: &RgbImage, w: u32, h: u32) -> Result<RgbImage> {
    if img.dimensions() == (w, h) {
        return Ok(img.clone());
    }
    within_pixel_limit(u64::from(w), u64::from(h))?;
    let mut dst = RgbImage::new(w, h);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(img, &mut dst, &opts)
        .map_err(|e| Error::Shape(format!("resize failed: {e}")))?;
    Ok(dst)
}

/// The (left, top) corners of torchvision's FiveCrop on a w x h image: tl, tr, bl, br, centre.
pub fn five_crop_corners(w: u32, h: u32, crop: u32) -> [(u32, u32); 5] {
    let (cx, cy) = center_offset(w, h, crop);
    [(0, 0), (w - crop, 0), (0, h - crop), (w - crop, h - crop), (cx, cy)]
}

/// torchvision's CenterCrop offset: round((size - crop) / 2), with round-half-to-even.
pub fn center_offset(w: u32, h: u32, crop: u32) -> (u32, u32) {
    let off = |s: u32| ((f64::from(s - crop)) / 2.0).round_ties_even() as u32;
    (off(w), off(h))
}

impl Transform {
    /// Refuses sizes no image can satisfy (a zero crop, a crop larger than the resized side).
    pub fn check(&self) -> Result<()> {
        let max = crate::config::MAX_INPUT;
        if self.crop == 0 || i64::from(self.crop) > max {
            // A crop past the networks' largest input asked for a batch of hundreds of GB.
            return Err(Error::Config(format!("crop must be in 1..={max}, got {}", self.crop)));
        }
        if self.resize < self.crop {
            return Err(Error::Config(format!(
                "resize ({}) must be at least the crop ({}): the shorter side is resized to it before cropping",
                self.resize, self.crop
            )));
        }
        Ok(())
    }

    /// The resized (and, with `square`, centre-cropped) image that crops are taken from.
    pub fn base(&self, img: &RgbImage) -> Result<RgbImage> {
        let r = resize_shorter(img, self.resize)?;
        if !self.square {
            return Ok(r);
        }
        let (x, y) = center_offset(r.width(), r.height(), self.resize);
        let s = self.resize as usize;
        let mut sq = RgbImage::from_raw(self.resize, self.resize, take_buffer(s * s * 3)).expect("s * s * 3 bytes");
        for row in 0..s {
            let src = ((y as usize + row) * r.width() as usize + x as usize) * 3;
            sq.as_mut()[row * s * 3..(row + 1) * s * 3].copy_from_slice(&r.as_raw()[src..src + s * 3]);
        }
        recycle(r.into_raw());
        Ok(sq)
    }

    /// Floats per view: 3 x crop x crop.
    pub fn view_len(&self) -> usize {
        3 * (self.crop as usize).pow(2)
    }

    /// Writes the sample's views, CHW float32, into `out` (view_len() * view.count() floats).
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng, out: &mut [f32]) -> Result<()> {
        let base = self.base(img)?;
        let (w, h) = base.dimensions();
        if w < self.crop || h < self.crop {
            return Err(Error::Shape(format!(
                "{w}x{h} image is smaller than the {} crop",
                self.crop
            )));
        }
        let n = self.view_len();
        match self.view {
            View::Train => {
                let x = rng.below(u64::from(w - self.crop + 1)) as u32;
                let y = rng.below(u64::from(h - self.crop + 1)) as u32;
                let flip = rng.below(2) == 1;
                let offset = self.pca.map_or([0.0; 3], |p| p.offset(rng));
                self.write(&base, x, y, flip, offset, &mut out[..n]);
            }
            View::Center => {
                let (x, y) = center_offset(w, h, self.crop);
                self.write(&base, x, y, false, [0.0; 3], &mut out[..n]);
            }
            View::TenCrop => {
                // torchvision's TenCrop: five crops of the image, then five crops of its mirror
                // image; a crop at x of the mirror is the mirror of the crop at w - crop - x.
                let corners = five_crop_corners(w, h, self.crop);
                for (v, &(x, y)) in corners.iter().enumerate() {
                    self.write(&base, x, y, false, [0.0; 3], &mut out[v * n..(v + 1) * n]);
                    let m = (v + 5) * n;
                    self.write(&base, w - self.crop - x, y, true, [0.0; 3], &mut out[m..m + n]);
                }
            }
        }
        recycle(base.into_raw());
        Ok(())
    }

    /// One crop at (x, y) of `base`, mirrored if `flip`, plus `offset`, normalised, as CHW.
    fn write(&self, base: &RgbImage, x: u32, y: u32, flip: bool, offset: [f32; 3], out: &mut [f32]) {
        let c = self.crop as usize;
        let plane = c * c;
        let (bw, raw) = (base.width() as usize, base.as_raw());
        for row in 0..c {
            let src = ((y as usize + row) * bw + x as usize) * 3;
            for col in 0..c {
                let sc = if flip { c - 1 - col } else { col };
                let px = &raw[src + 3 * sc..src + 3 * sc + 3];
                let o = row * c + col;
                for ch in 0..3 {
                    let v = f32::from(px[ch]) / 255.0 + offset[ch];
                    out[ch * plane + o] = self.scale
                        * match &self.normalize {
                            Normalize::MeanStd { mean, std } => (v - mean[ch]) / std[ch],
                            Normalize::MeanImage { side, mean } => {
                                // The mean image is over the square centre crop; mirror with the crop.
                                let s = *side as usize;
                                let (my, mx) = ((y as usize + row).min(s - 1), (x as usize + sc).min(s - 1));
                                v - mean[(ch * s + my) * s + mx]
                            }
                        };
                }
            }
        }
    }
}

/// The resize side of the presets' recipes for a `crop`: 256 for the 224/227 crops, the same
/// ratio for smaller inputs.
pub fn resize_for(crop: u32) -> u32 {
    if crop >= 224 {
        crop.max(256)
    } else {
        (crop * 256).div_ceil(224)
    }
}

/// What of an `alexnet stats` file the preset's recipe (see [`Transform::for_preset`]) leaves
/// unused, in words, so that a run can say so.
pub fn unused_stats(preset: crate::Preset, crop: u32, stats: &crate::data::stats::Stats) -> Option<String> {
    let resize = resize_for(crop);
    match preset {
        crate::Preset::Torchvision => Some(
            "the torchvision preset normalises by ImageNet's channel mean and std (torchvision's recipe): \
             the stats file (--stats) is not used"
                .into(),
        ),
        crate::Preset::Paper if stats.side != resize => Some(format!(
            "the stats file's (--stats) mean image is {0}x{0}, but inputs of {crop} are resized to {resize}: its \
             channel means are subtracted instead of the mean image (for the mean image: alexnet stats \
             --size {resize})",
            stats.side
        )),
        _ => None,
    }
}

impl Transform {
    /// The recipe of each preset: `paper` resizes, centre-crops a square and subtracts the
    /// per-pixel mean image (from `stats`, else ImageNet's channel means) with PCA colour noise in
    /// training; `torchvision` and `caffe` keep the aspect ratio and normalise by ImageNet's
    /// channel mean/std (torchvision) or subtract the channel means (caffe). `paper` and `caffe`
    /// see 0-255 values minus the mean, as their recipes (and their inits) assume.
    pub fn for_preset(
        preset: crate::Preset,
        crop: u32,
        view: View,
        stats: Option<&crate::data::stats::Stats>,
    ) -> Transform {
        use crate::image::{IMAGENET_MEAN, IMAGENET_STD};
        use crate::Preset;
        let resize = resize_for(crop);
        let channel_mean = stats.map_or(IMAGENET_MEAN, |s| s.channel_mean);
        let normalize = match (preset, stats) {
            (Preset::Torchvision, _) => Normalize::MeanStd {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            (Preset::Paper, Some(s)) if s.side == resize => s.mean_image(),
            _ => Normalize::MeanStd {
                mean: channel_mean,
                std: [1.0; 3],
            },
        };
        let pca =
            (preset == Preset::Paper && view == View::Train).then(|| stats.map_or_else(Pca::imagenet, |s| s.pca()));
        Transform {
            resize,
            square: preset == Preset::Paper,
            crop,
            view,
            pca,
            normalize,
            scale: if matches!(preset, Preset::Paper | Preset::Caffe) {
                255.0
            } else {
                1.0
            },
        }
    }
}
