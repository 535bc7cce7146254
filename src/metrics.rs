//! Training metrics: one JSON line per step (`metrics.jsonl`), one CSV row per epoch
//! (`epochs.csv`), and `curves.png` (loss, top-1/top-5 validation accuracy, learning rate).
//!
//! Both files are append-only: each line is written with one `write` on an append-mode file
//! (a failed write is cut back to the previous length) and both are fsynced before every
//! checkpoint. A resumed run cuts them in place (`set_len`, atomic for a crash: old or new
//! length) after the last whole, parseable line at or before its checkpoint; the lines kept are
//! never parsed and printed again, so they stay byte for byte what the run wrote.
use crate::error::{io, Error, Result};
use crate::fault;
use plotters::prelude::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    /// Top-1 error of the step's batch, before the update.
    pub train_error: f64,
    pub images_per_s: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub step: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    pub seconds: f64,
}

const CSV_HEADER: &str = "epoch,step,train_loss,val_loss,val_top1,val_top5,lr,seconds";

/// Where a resumed run continues: its checkpoint's step, and the epoch in progress there.
#[derive(Clone, Copy, Debug)]
pub struct ResumeAt {
    pub step: u64,
    pub epoch: u64,
}

pub struct Metrics {
    dir: PathBuf,
}

/// Appends `line` and a newline in one write; on failure the file is cut back to where it was.
fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let before = f.metadata().map_err(io(path))?.len();
    let bytes = format!("{line}\n");
    let written = match fault::reached("metrics-mid-line") {
        Some(mode) => f
            .write_all(&bytes.as_bytes()[..bytes.len() / 2])
            .and_then(|()| fault::fire(mode, "metrics-mid-line"))
            .and_then(|()| f.write_all(&bytes.as_bytes()[bytes.len() / 2..])),
        None => f.write_all(bytes.as_bytes()),
    };
    if let Err(e) = written {
        let _ = f.set_len(before);
        return Err(io(path)(e));
    }
    Ok(())
}

/// Cuts `path` back to its lines that `keep` accepts: `Some(true)` keeps a line, `Some(false)`
/// (past the checkpoint) ends the kept lines, `None` (unreadable) drops that line alone, with a
/// warning that names it (the lines after it are kept). A partial last line (a write cut short)
/// ends them too. Cut in place (`set_len`) when the kept lines are a prefix, else rewritten
/// through a renamed file: a crash leaves the old file or the new one.
fn cut(path: &Path, keep: impl Fn(usize, &str) -> Option<bool>) -> Result<()> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    let (mut kept, mut dropped) = (Vec::new(), false);
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if line.last() != Some(&b'\n') {
            break;
        }
        // A file saved with CRLF line ends (a Windows editor) reads as ours.
        match std::str::from_utf8(&line[..line.len() - 1])
            .ok()
            .and_then(|t| keep(i, t.strip_suffix('\r').unwrap_or(t)))
        {
            Some(true) => kept.extend_from_slice(line),
            Some(false) => break,
            None => {
                let text = String::from_utf8_lossy(line);
                let shown: String = text.trim_end().chars().take(80).collect();
                crate::say::note(&format!(
                    "warning: {}: line {} is unreadable and is dropped: {shown}",
                    path.display(),
                    i + 1
                ));
                dropped = true;
            }
        }
    }
    if dropped {
        return crate::files::write(path, &kept);
    }
    // Nothing dropped: the kept lines are a prefix of the file.
    if kept.len() < bytes.len() {
        let f = OpenOptions::new().write(true).open(path).map_err(io(path))?;
        f.set_len(kept.len() as u64).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok(())
}

fn parse_csv_row(l: &str) -> Option<EpochRecord> {
    let v: Vec<&str> = l.split(',').collect();
    if v.len() != 8 {
        return None;
    }
    Some(EpochRecord {
        epoch: v[0].parse().ok()?,
        step: v[1].parse().ok()?,
        train_loss: v[2].parse().ok()?,
        val_loss: v[3].parse().ok()?,
        val_top1: v[4].parse().ok()?,
        val_top5: v[5].parse().ok()?,
        lr: v[6].parse().ok()?,
        seconds: v[7].parse().ok()?,
    })
}

impl Metrics {
    /// The metrics files of `dir` as they are (for reading).
    pub fn existing(dir: &Path) -> Metrics {
        Metrics { dir: dir.to_path_buf() }
    }

    /// Metrics of the run in `dir`: a new run starts empty files; a resumed one keeps the lines
    /// up to its checkpoint (steps <= its step; epoch rows of the epochs finished before it).
    pub fn open(dir: &Path, resume: Option<ResumeAt>) -> Result<Metrics> {
        crate::files::create_dir(dir)?;
        let m = Metrics::existing(dir);
        match resume {
            None => {
                for f in [m.steps_path(), m.epochs_path()] {
                    if f.exists() {
                        fs::remove_file(&f).map_err(io(&f))?;
                    }
                }
            }
            Some(at) => {
                cut(&m.steps_path(), |_, l| {
                    serde_json::from_str::<StepRecord>(l).ok().map(|r| r.step <= at.step)
                })?;
                // Another first line than our header is dropped with a warning like any unreadable
                // line, and the header put back (the whole history was cut away in silence).
                let p = m.epochs_path();
                cut(&p, |i, l| match i {
                    0 if l == CSV_HEADER => Some(true),
                    _ => parse_csv_row(l).map(|r| r.step <= at.step && r.epoch <= at.epoch),
                })?;
                match fs::read(&p) {
                    Ok(rows) if !rows.is_empty() && !rows.starts_with(CSV_HEADER.as_bytes()) => {
                        crate::files::write(&p, &[format!("{CSV_HEADER}\n").as_bytes(), &rows].concat())?
                    }
                    _ => {}
                }
            }
        }
        Ok(m)
    }

    /// fsyncs both files and their folder's entries for them (before a checkpoint, so that no
    /// checkpoint outlives its metrics).
    pub fn sync(&self) -> Result<()> {
        for p in [self.steps_path(), self.epochs_path()] {
            if p.exists() {
                crate::files::fsync(&p)?;
            }
        }
        crate::files::fsync(&self.dir)?;
        Ok(())
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
            append(&p, CSV_HEADER)?;
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
        // A last line without its newline is a write cut short (a crash): not a record yet.
        let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
        // Each line is parsed alone (serde's position is in it): the line's number is said.
        (1..)
            .zip(whole.lines())
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                serde_json::from_str(l).map_err(|e| Error::File {
                    path: p.clone(),
                    reason: format!("line {n}: {e}"),
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
        Ok(text.lines().skip(1).filter_map(parse_csv_row).collect())
    }

    /// Draws `curves.png`: training loss per step (and validation loss per epoch), validation
    /// top-1/top-5 accuracy, and the learning rate.
    pub fn plot(&self) -> Result<PathBuf> {
        let out = self.dir.join("curves.png");
        let (steps, epochs) = (self.steps()?, self.epochs()?);
        draw(&out, &steps, &epochs)?;
        Ok(out)
    }
}

pub(crate) fn load_font() -> bool {
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
fn draw(out: &Path, steps: &[StepRecord], epochs: &[EpochRecord]) -> Result<()> {
    let (w, h) = (1200u32, 900u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let plotting = |reason: String| Error::File {
        path: out.to_path_buf(),
        reason: format!("plotting: {reason}"),
    };
    draw_into(&mut buf, (w, h), steps, epochs).map_err(|e| plotting(e.to_string()))?;
    let img =
        image::RgbImage::from_raw(w, h, buf).ok_or_else(|| plotting("an image buffer of the wrong size".into()))?;
    crate::image::save(&img, out)
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
    // The validation losses too: above the training losses (overfitting) they were pinned to the top.
    let ymax = (loss.iter().map(|p| p.1))
        .chain(epochs.iter().map(|e| e.val_loss))
        .filter(|v| v.is_finite())
        .fold(0.1, f64::max);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_losses_above_the_training_losses_stay_on_the_chart() {
        // Training losses ~1, validation losses 3.0 (step 25) and 2.5 (step 100): the loss axis
        // was sized by the training losses alone, and both points were drawn on its top edge.
        let steps: Vec<StepRecord> = (1..=100)
            .map(|step| StepRecord {
                step,
                loss: 1.0,
                ..Default::default()
            })
            .collect();
        let epoch = |step, val_loss| EpochRecord {
            step,
            val_loss,
            ..Default::default()
        };
        let (w, h) = (600u32, 900u32);
        let mut buf = vec![0u8; (w * h * 3) as usize];
        draw_into(&mut buf, (w, h), &steps, &[epoch(25, 3.0), epoch(100, 2.5)]).unwrap();
        // Red pixels of the loss panel (the top third), left and right of the middle.
        let mean_row = |right: bool| {
            let rows: Vec<f64> = (0..h / 3)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    let i = ((y * w + x) * 3) as usize;
                    buf[i..i + 3] == [255, 0, 0] && (x >= w / 2) == right
                })
                .map(|(_, y)| f64::from(y))
                .collect();
            assert!(
                !rows.is_empty(),
                "no validation point on the {} half",
                if right { "right" } else { "left" }
            );
            rows.iter().sum::<f64>() / rows.len() as f64
        };
        let (at_3, at_2_5) = (mean_row(false), mean_row(true));
        assert!(at_2_5 - at_3 > 10.0, "3.0 drawn at row {at_3}, 2.5 at row {at_2_5}");
    }

    #[test]
    fn an_unreadable_step_line_is_named_by_its_number() {
        // Each line is parsed alone: serde said "line 1" whichever line it was.
        let dir = std::env::temp_dir().join(format!("alexnet-metrics-line-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let good = serde_json::to_string(&StepRecord::default()).unwrap();
        fs::write(
            dir.join("metrics.jsonl"),
            format!("{good}\n\n{{\"step\": oops}}\n{good}\n"),
        )
        .unwrap();
        let e = Metrics::existing(&dir)
            .steps()
            .expect_err("line 3 is not JSON")
            .to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("metrics.jsonl: line 3: expected value"), "{e}");
    }
}
