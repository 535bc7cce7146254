//! Figures as PNG: the paper's Fig. 3 (the first convolution's kernels as a grid of colour tiles,
//! one block per tower: the `paper` and `caffe` presets' two groups of 48, as the two GPUs learned
//! them, each kernel scaled to the full display range on its own), the confusion matrix
//! (`confusion_png`) and Fig. 4's contact sheet of nearest neighbours (`contact_sheet`).
use crate::config::Config;
use crate::error::{Error, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// An RGB8 image, row-major.
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

const ZOOM: usize = 4; // display pixels per kernel tap
const GAP: usize = 2;
const HEADER: usize = 22; // a tower's label band
const COLUMNS: usize = 8;

/// How a tower's kernels use colour: the mean over its kernels of the spread between the R, G
/// and B planes (the per-tap standard deviation over the three channels, averaged over the taps)
/// relative to the kernel's own scale (the standard deviation of all its values). Near 0: the
/// kernel looks the same in all three channels (colour-agnostic).
pub struct Tower {
    pub first: usize,
    pub count: usize,
    pub colour_spread: f64,
}

/// The grid of `weight` (`conv1`'s, `(K, C, kh, kw)`, C = 1 or 3) for the network `cfg`: one
/// block per tower (the groups of the second convolution, where the paper's towers stay apart).
pub fn filter_grid(cfg: &Config, weight: &Tensor) -> Result<(Image, Vec<Tower>)> {
    let size = weight.size();
    if size.len() != 4 || !(size[1] == 1 || size[1] == 3) {
        return Err(Error::Shape(format!(
            "the first convolution's weight must be (K, 1 or 3, kh, kw), got {size:?}"
        )));
    }
    let (k, c, kh, kw) = (size[0] as usize, size[1] as usize, size[2] as usize, size[3] as usize);
    if k == 0 || kh == 0 || kw == 0 {
        // Zero kernels gave an empty grid and a NaN colour spread.
        return Err(Error::Shape(format!(
            "the first convolution's weight has no kernel to draw: {size:?}"
        )));
    }
    let towers = cfg.convs.get(1).map_or(1, |c2| c2.groups.max(1) as usize);
    if k % towers != 0 {
        return Err(Error::Shape(format!("{k} kernels do not split into {towers} towers")));
    }
    let w: Vec<f32> = Vec::try_from(weight.f_to_kind(Kind::Float)?.f_contiguous()?.f_view([-1])?)?;
    let per = k / towers;
    let rows = per.div_ceil(COLUMNS);
    let (tile_w, tile_h) = (kw * ZOOM + GAP, kh * ZOOM + GAP);
    let width = GAP + COLUMNS * tile_w;
    let block_h = HEADER + rows * tile_h + GAP;
    let height = towers * block_h;
    let mut rgb = vec![255u8; width * height * 3];
    let mut stats = Vec::with_capacity(towers);
    let plane = kh * kw;
    for t in 0..towers {
        let mut spread = 0.0;
        for i in 0..per {
            let kernel = &w[(t * per + i) * c * plane..(t * per + i + 1) * c * plane];
            let (lo, hi) = kernel
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
            let (x0, y0) = (
                GAP + (i % COLUMNS) * tile_w,
                t * block_h + HEADER + (i / COLUMNS) * tile_h,
            );
            for y in 0..kh * ZOOM {
                for x in 0..kw * ZOOM {
                    let tap = (y / ZOOM) * kw + x / ZOOM;
                    let at = ((y0 + y) * width + x0 + x) * 3;
                    for ch in 0..3 {
                        let v = kernel[(ch % c) * plane + tap];
                        rgb[at + ch] = ((v - lo) * scale).round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
            spread += colour_spread(kernel, c, plane);
        }
        stats.push(Tower {
            first: t * per,
            count: per,
            colour_spread: spread / per as f64,
        });
    }
    let image = Image {
        width: width as u32,
        height: height as u32,
        rgb,
    };
    Ok((image, stats))
}

fn colour_spread(kernel: &[f32], c: usize, plane: usize) -> f64 {
    if c < 3 {
        return 0.0;
    }
    let n = kernel.len() as f64;
    let mean = kernel.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let scale = (kernel.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut across = 0.0;
    for tap in 0..plane {
        let v: Vec<f64> = (0..3).map(|ch| f64::from(kernel[ch * plane + tap])).collect();
        let m = v.iter().sum::<f64>() / 3.0;
        across += (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 3.0).sqrt();
    }
    if scale > 0.0 {
        across / plane as f64 / scale
    } else {
        0.0
    }
}

/// Writes `image` as PNG with each tower's label drawn in its band ("tower 1: kernels 1-48,
/// colour spread 0.12"; without a system font, no labels), the image widened (white on the
/// right) where a label is wider than the grid (5x5 kernels: it was cut after "colour").
pub fn save_png(image: &mut Image, towers: &[Tower], out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let fail = |e: String| Error::File {
        path: out.to_path_buf(),
        reason: e,
    };
    if crate::metrics::load_font() {
        let font = ("sans-serif", 14).into_font();
        let labels: Vec<String> = towers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (first, last) = (t.first + 1, t.first + t.count);
                format!(
                    "tower {}: kernels {first}-{last}, colour spread {:.2}",
                    i + 1,
                    t.colour_spread
                )
            })
            .collect();
        for label in &labels {
            let (text_w, _) = font.box_size(label).map_err(|e| fail(format!("drawing: {e}")))?;
            widen(image, text_w + 2 * GAP as u32);
        }
        let (w, h) = (image.width, image.height);
        let root = BitMapBackend::with_buffer(&mut image.rgb, (w, h)).into_drawing_area();
        let block = h as usize / towers.len().max(1);
        for (i, label) in labels.iter().enumerate() {
            root.draw_text(label, &font.color(&BLACK), (GAP as i32, (i * block) as i32 + 4))
                .map_err(|e| fail(format!("drawing: {e}")))?;
        }
        root.present().map_err(|e| fail(format!("drawing: {e}")))?;
    }
    let img = image::RgbImage::from_raw(image.width, image.height, image.rgb.clone())
        .ok_or_else(|| fail("image buffer of the wrong size".into()))?;
    crate::image::save(&img, out)
}

/// `image` at least `width` pixels wide: white columns added on the right.
fn widen(image: &mut Image, width: u32) {
    if width <= image.width {
        return;
    }
    let (old, new) = (image.width as usize * 3, width as usize * 3);
    let mut rgb = vec![255u8; new * image.height as usize];
    for (to, from) in rgb.chunks_exact_mut(new).zip(image.rgb.chunks_exact(old)) {
        to[..old].copy_from_slice(from);
    }
    image.rgb = rgb;
    image.width = width;
}

/// Writes the confusion matrix (`counts`, classes x classes, rows: the true class) as a PNG
/// heatmap, each row normalised to its class's test samples (white 0 to dark blue 1), with the
/// numbered class names down the side (when there are at most 60), the numbers over the columns
/// and each diagonal fraction written in its cell (at most 20 classes).
pub fn confusion_png(counts: &[u64], classes: &[String], out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let k = classes.len();
    if counts.len() != k * k || k == 0 {
        return Err(Error::Shape(format!("{} counts for {k} classes", counts.len())));
    }
    let fail = |e: String| Error::File {
        path: out.to_path_buf(),
        reason: e,
    };
    let labels = crate::metrics::load_font();
    let cell = (640 / k).clamp(1, 48);
    let left = if labels && k <= 60 { 170 } else { 10 };
    let top = if labels { 40 } else { 10 };
    // Wide enough for the title, which says how to read the matrix (it was cut at a few classes).
    let title = "true class (rows) x predicted class (columns), row-normalised";
    let width = left + (k * cell).max(if labels { 8 * title.len() } else { 0 }) + 20;
    let (w, h) = (width as u32, (top + k * cell + 20) as u32);
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let font = |size| ("sans-serif", size).into_font().color(&BLACK);
        let draw = |r: std::result::Result<(), DrawingAreaErrorKind<_>>| r.map_err(|e| fail(format!("drawing: {e}")));
        for i in 0..k {
            let row = &counts[i * k..(i + 1) * k];
            let seen = row.iter().sum::<u64>();
            let total = seen.max(1) as f64;
            for (j, &c) in row.iter().enumerate() {
                let f = c as f64 / total;
                let shade = |full: f64| (255.0 - f * (255.0 - full)).round() as u8;
                let (x, y) = ((left + j * cell) as i32, (top + i * cell) as i32);
                draw(root.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32, y + cell as i32)],
                    RGBColor(shade(8.0), shade(48.0), shade(107.0)).filled(),
                )))?;
                if labels && i == j && k <= 20 {
                    let colour = if f > 0.5 { WHITE } else { BLACK };
                    let style = ("sans-serif", 12).into_font().color(&colour);
                    // A class with no test sample has no fraction (not 0.00: none of it was missed).
                    let text = if seen == 0 {
                        "n/a".to_string()
                    } else {
                        format!("{f:.2}")
                    };
                    draw(root.draw_text(&text, &style, (x + 4, y + cell as i32 / 2 - 6)))?;
                }
            }
            if labels && k <= 60 {
                // Numbered rows; the columns (predicted classes) carry the same numbers.
                let y = (top + i * cell + cell / 2) as i32 - 6;
                draw(root.draw_text(&format!("{i} {}", classes[i]), &font(12), (4, y)))?;
                if k <= 20 {
                    let x = (left + i * cell + cell / 2) as i32 - 6;
                    draw(root.draw_text(&i.to_string(), &font(12), (x, top as i32 - 14)))?;
                }
            }
        }
        if labels {
            draw(root.draw_text(title, &font(14), (left as i32, 4)))?;
        }
        root.present().map_err(|e| fail(format!("drawing: {e}")))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| fail("image buffer of the wrong size".into()))?;
    crate::image::save(&img, out)
}

/// The most queries a contact sheet shows (one row each; further queries count in the statistics
/// only) and the most neighbours a query may ask for (the tiles of one row; checked by the CLI).
pub const SHEET_ROWS: usize = 100;
pub const SHEET_NEIGHBOURS: usize = 100;

/// The paper's Fig. 4 as a contact sheet: one row per query (the query, then its nearest
/// training images by fc7 distance, nearest first), with the top-5 predictions beside it; the
/// first [`SHEET_ROWS`] queries.
pub fn contact_sheet(n: &crate::train::Neighbours, out: &Path) -> Result<()> {
    use image::imageops::{overlay, resize, FilterType};
    use plotters::prelude::*;
    const TILE: u32 = 64;
    const PAD: u32 = 4;
    const TEXT: u32 = 230;
    let fail = |e: String| Error::File {
        path: out.to_path_buf(),
        reason: e,
    };
    let queries = &n.queries[..n.queries.len().min(SHEET_ROWS)];
    let k = queries.iter().map(|q| q.neighbours.len()).max().unwrap_or(0) as u32;
    let row_h = TILE + 2 * PAD;
    let (w, h) = (TEXT + (k + 1) * (TILE + PAD) + 2 * PAD, row_h * queries.len() as u32);
    let mut sheet = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (r, q) in queries.iter().enumerate() {
        let y = i64::from(r as u32 * row_h + PAD);
        overlay(
            &mut sheet,
            &resize(&q.image, TILE, TILE, FilterType::Triangle),
            i64::from(TEXT),
            y,
        );
        for (j, &(idx, _, _)) in q.neighbours.iter().enumerate() {
            let img = crate::data::loader::decode(&n.train, idx)?;
            let x = TEXT + PAD + (j as u32 + 1) * (TILE + PAD);
            overlay(
                &mut sheet,
                &resize(&img, TILE, TILE, FilterType::Triangle),
                i64::from(x),
                y,
            );
        }
    }
    if crate::metrics::load_font() {
        let (sw, sh) = sheet.dimensions();
        let mut buf = sheet.into_raw();
        {
            let root = BitMapBackend::with_buffer(&mut buf, (sw, sh)).into_drawing_area();
            for (r, q) in queries.iter().enumerate() {
                let y = (r as u32 * row_h + PAD) as i32;
                let truth = q
                    .label
                    .map_or(String::new(), |l| format!(" ({})", class_name(&n.train.classes, l)));
                let mut lines = vec![format!("{}{truth}", q.name)];
                lines.extend(
                    q.top5
                        .iter()
                        .map(|&(c, p)| format!("{p:.3}  {}", class_name(&n.classes, c))),
                );
                for (i, line) in lines.iter().enumerate() {
                    let style = ("sans-serif", 11).into_font().color(&BLACK);
                    root.draw_text(line, &style, (PAD as i32, y + 12 * i as i32))
                        .map_err(|e| fail(format!("drawing: {e}")))?;
                }
            }
            root.present().map_err(|e| fail(format!("drawing: {e}")))?;
        }
        sheet = image::RgbImage::from_raw(sw, sh, buf).ok_or_else(|| fail("image buffer of the wrong size".into()))?;
    }
    crate::image::save(&sheet, out)
}

/// The name of class `c`, or `?` for an index outside `classes`.
pub fn class_name(classes: &[String], c: i64) -> &str {
    classes.get(c as usize).map_or("?", String::as_str)
}

#[cfg(test)]
mod tests {
    /// The figures' text needs DejaVu Sans (Debian's fonts-dejavu-core, which `make setup`
    /// installs): without it these tests would check a figure with no text.
    fn require_font() {
        assert!(
            crate::metrics::load_font(),
            "no DejaVu Sans font: run `make setup` (it installs Debian's fonts-dejavu-core)"
        );
    }

    #[test]
    fn a_tower_label_wider_than_the_grid_is_not_cut() {
        require_font();
        // cnn4's 32 kernels of 5x5: a grid 178 pixels wide, its label cut after "colour".
        let cfg = crate::Config::preset(crate::Preset::Cnn4, 10).unwrap();
        let (mut image, towers) =
            super::filter_grid(&cfg, &tch::Tensor::randn([32, 3, 5, 5], tch::kind::FLOAT_CPU)).unwrap();
        let (grid_width, grid) = (image.width, image.rgb.clone());
        let path = std::env::temp_dir().join(format!("alexnet-filters-{}.png", std::process::id()));
        super::save_png(&mut image, &towers, &path).unwrap();
        let png = image::open(&path).unwrap().to_rgb8();
        std::fs::remove_file(&path).unwrap();
        let inked = |x: u32| (0..super::HEADER as u32).any(|y| png.get_pixel(x, y).0.iter().any(|&v| v < 128));
        let last_ink = (0..png.width()).rev().find(|&x| inked(x)).expect("a label is drawn");
        assert!(
            png.width() > grid_width && last_ink + 2 < png.width(),
            "label ink to x={last_ink} of {}",
            png.width()
        );
        // The grid below the label band is where it was, unchanged.
        let row = 3 * grid_width as usize;
        for y in super::HEADER..image.height as usize {
            let at = y * 3 * png.width() as usize;
            assert_eq!(&png.as_raw()[at..at + row], &grid[y * row..(y + 1) * row], "row {y}");
        }
    }

    #[test]
    fn a_class_without_test_samples_is_not_drawn_as_all_missed() {
        require_font();
        // Class 0 has no test sample (A) or 3 all predicted as class 1 (B): its diagonal cell read
        // 0.00 in both, where the text output says "(no test samples)" for A.
        let dir = std::env::temp_dir().join(format!("alexnet-confusion-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let classes = vec!["a".to_string(), "b".to_string()];
        let draw = |counts: &[u64], name: &str| {
            let path = dir.join(name);
            super::confusion_png(counts, &classes, &path).unwrap();
            image::open(&path).unwrap().to_rgb8()
        };
        let (a, b) = (draw(&[0, 0, 0, 5], "a.png"), draw(&[0, 3, 0, 5], "b.png"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(a.width() >= 8 * 60, "the title fits: {} pixels wide", a.width());
        // The diagonal cell of row 0: left 170, top 40, cells of 48 pixels.
        let cell = |img: &image::RgbImage| -> Vec<u8> {
            (40..88)
                .flat_map(|y| (170..218).flat_map(move |x| img.get_pixel(x, y).0))
                .collect()
        };
        assert_ne!(cell(&a), cell(&b), "an empty row is drawn as a row of misses");
    }
}
