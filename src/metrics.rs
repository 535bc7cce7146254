//! Training metrics: one JSON line per step (`metrics.jsonl`), one CSV row per epoch
//! (`epochs.csv`), and `curves.png` (loss, top-1/top-5 error, learning rate).
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    /// Top-1 error of the step's batch, before the update.
    pub train_error: f64,
    pub images_per_s: f64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub step: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub lr: f64,
    pub seconds: f64,
}

pub struct Metrics {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    if let Some(mode) = crate::fault::reached("metrics-mid-line") {
        f.write_all(&line.as_bytes()[..line.len() / 2]).map_err(io(path))?;
        return Err(io(path)(crate::fault::fire(mode, "metrics-mid-line")));
    }
    writeln!(f, "{line}").map_err(io(path))
}

impl Metrics {
    /// Metrics of the run in `dir`; on resume, records after `resume_step` are dropped (they
    /// were written after the checkpoint being resumed from).
    pub fn open(dir: &Path, resume_step: Option<u64>) -> Result<Metrics> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let m = Metrics { dir: dir.to_path_buf() };
        match resume_step {
            None => {
                for f in [m.steps_path(), m.epochs_path()] {
                    if f.exists() {
                        fs::remove_file(&f).map_err(io(&f))?;
                    }
                }
            }
            Some(step) => {
                let steps: Vec<StepRecord> = m.steps()?.into_iter().filter(|r| r.step <= step).collect();
                let epochs: Vec<EpochRecord> = m.epochs()?.into_iter().filter(|r| r.step <= step).collect();
                let sp = m.steps_path();
                fs::write(&sp, "").map_err(io(&sp))?;
                let ep = m.epochs_path();
                fs::write(&ep, "").map_err(io(&ep))?;
                for r in &steps {
                    m.step(r)?;
                }
                for r in &epochs {
                    m.epoch(r)?;
                }
            }
        }
        Ok(m)
    }

    pub fn steps_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    pub fn epochs_path(&self) -> PathBuf {
        self.dir.join("epochs.csv")
    }

    pub fn step(&self, r: &StepRecord) -> Result<()> {
        append(&self.steps_path(), &serde_json::to_string(r).expect("plain record"))
    }

    pub fn epoch(&self, r: &EpochRecord) -> Result<()> {
        let p = self.epochs_path();
        if !p.exists() || fs::metadata(&p).map(|m| m.len() == 0).unwrap_or(true) {
            append(&p, "epoch,step,train_loss,val_loss,val_top1,val_top5,lr,seconds")?;
        }
        append(
            &p,
            &format!(
                "{},{},{:.6},{:.6},{:.6},{:.6},{:.6e},{:.1}",
                r.epoch, r.step, r.train_loss, r.val_loss, r.val_top1, r.val_top5, r.lr, r.seconds
            ),
        )
    }

    pub fn steps(&self) -> Result<Vec<StepRecord>> {
        let p = self.steps_path();
        if !p.exists() {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&p).map_err(io(&p))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| Error::File {
                    path: p.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    pub fn epochs(&self) -> Result<Vec<EpochRecord>> {
        let p = self.epochs_path();
        if !p.exists() {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&p).map_err(io(&p))?;
        let parse = |l: &str| -> Option<EpochRecord> {
            let v: Vec<&str> = l.split(',').collect();
            Some(EpochRecord {
                epoch: v.first()?.parse().ok()?,
                step: v.get(1)?.parse().ok()?,
                train_loss: v.get(2)?.parse().ok()?,
                val_loss: v.get(3)?.parse().ok()?,
                val_top1: v.get(4)?.parse().ok()?,
                val_top5: v.get(5)?.parse().ok()?,
                lr: v.get(6)?.parse().ok()?,
                seconds: v.get(7)?.parse().ok()?,
            })
        };
        Ok(text.lines().skip(1).filter_map(parse).collect())
    }

    /// Draws `curves.png`: training loss per step (and validation loss per epoch), validation
    /// top-1/top-5 accuracy, and the learning rate.
    pub fn plot(&self) -> Result<PathBuf> {
        let out = self.dir.join("curves.png");
        let (steps, epochs) = (self.steps()?, self.epochs()?);
        draw(&out, &steps, &epochs).map_err(|e| Error::File {
            path: out.clone(),
            reason: format!("plotting: {e}"),
        })?;
        Ok(out)
    }
}

fn load_font() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        for f in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
        ] {
            if let Ok(bytes) = fs::read(f) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    labels: bool,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.margin(10)
        .x_label_area_size(if labels { 30 } else { 0 })
        .y_label_area_size(if labels { 60 } else { 0 });
    if labels {
        b.caption(title, ("sans-serif", 20));
    }
    b
}

/// Draws into an RGB buffer and writes it as PNG with the `image` crate (plotters' own encoder
/// would pull in a second version of `image`).
fn draw(out: &Path, steps: &[StepRecord], epochs: &[EpochRecord]) -> DrawResult {
    let (w, h) = (1200u32, 900u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    draw_into(&mut buf, (w, h), steps, epochs)?;
    image::RgbImage::from_raw(w, h, buf)
        .expect("w * h * 3 bytes")
        .save(out)?;
    Ok(())
}

fn draw_into(buf: &mut [u8], size: (u32, u32), steps: &[StepRecord], epochs: &[EpochRecord]) -> DrawResult {
    let labels = load_font();
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let max_step = steps.last().map_or(1, |r| r.step).max(1) as f64;
    let series =
        |f: &dyn Fn(&StepRecord) -> f64| -> Vec<(f64, f64)> { steps.iter().map(|r| (r.step as f64, f(r))).collect() };
    // Loss: raw steps (light) and a moving average (dark), validation loss per epoch (points).
    let loss = series(&|r| r.loss);
    let smooth: Vec<(f64, f64)> = loss
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let lo = i.saturating_sub(49);
            (x, loss[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i - lo + 1) as f64)
        })
        .collect();
    let ymax = loss.iter().map(|p| p.1).filter(|v| v.is_finite()).fold(0.1, f64::max);
    {
        let mut b = panel(
            &panels[0],
            "training loss (per step, 50-step mean) and validation loss",
            labels,
        );
        let mut c = b.build_cartesian_2d(0.0..max_step, 0.0..ymax * 1.05)?;
        if labels {
            c.configure_mesh().x_desc("step").draw()?;
        }
        c.draw_series(LineSeries::new(loss.clone(), RGBColor(180, 200, 230)))?;
        c.draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))?;
        c.draw_series(
            epochs
                .iter()
                .map(|e| Circle::new((e.step as f64, e.val_loss), 4, RED.filled())),
        )?;
    }
    {
        let mut b = panel(&panels[1], "validation accuracy: top-1 (red), top-5 (green)", labels);
        let mut c = b.build_cartesian_2d(0.0..max_step, 0.0..1.0)?;
        if labels {
            c.configure_mesh().x_desc("step").draw()?;
        }
        let pts = |f: &dyn Fn(&EpochRecord) -> f64| -> Vec<(f64, f64)> {
            epochs.iter().map(|e| (e.step as f64, f(e))).collect()
        };
        c.draw_series(LineSeries::new(pts(&|e| e.val_top1), RED.stroke_width(2)))?;
        c.draw_series(
            pts(&|e| e.val_top1)
                .into_iter()
                .map(|p| Circle::new(p, 4, RED.filled())),
        )?;
        c.draw_series(LineSeries::new(pts(&|e| e.val_top5), GREEN.stroke_width(2)))?;
    }
    {
        let lr = series(&|r| r.lr);
        let hi = lr.iter().map(|p| p.1).fold(1e-12, f64::max) * 1.1;
        let mut b = panel(&panels[2], "learning rate", labels);
        let mut c = b.build_cartesian_2d(0.0..max_step, 0.0..hi)?;
        if labels {
            c.configure_mesh().x_desc("step").draw()?;
        }
        c.draw_series(LineSeries::new(lr, BLACK.stroke_width(2)))?;
    }
    root.present()?;
    Ok(())
}
