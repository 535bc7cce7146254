//! `alexnet eval`, `alexnet predict`, `alexnet filters` and `alexnet neighbours`: a trained
//! checkpoint on a test set, on image files, its first layer drawn, and Fig. 4's nearest fc7
//! neighbours.
use crate::error::{Error, Result};
use crate::train;
use crate::viz::class_name;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct EvalArgs {
    /// A run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// Evaluate on this dataset's test split instead of the run's.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Average the softmax over 10 crops.
    #[arg(long)]
    ten_crop: bool,
    /// Where the network runs: one device, or two for the paper's split (cuda:0,cuda:1; cpu,cpu).
    #[arg(long, default_value = "cpu")]
    devices: String,
    /// Evaluate on a random subset of this many test samples, the same one for every checkpoint
    /// [default: the run's --limit-test].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Images per forward pass (with --ten-crop, 10 crops of each: 1280 network inputs at the
    /// default; lower it where memory is short).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Also write the confusion matrix (class names, row-normalised) as a PNG here, and print
    /// each class's accuracy.
    #[arg(long, value_name = "PNG")]
    confusion: Option<PathBuf>,
}

#[derive(Args)]
pub struct PredictArgs {
    /// A run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// Image files, or folders (their images, recursively, sorted). A file that cannot be read is
    /// reported, the others are still predicted, and the exit code is 1.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Where the network runs: one device, or two for the paper's split.
    #[arg(long, default_value = "cpu")]
    devices: String,
}

#[derive(Args)]
pub struct FiltersArgs {
    /// A run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// The PNG to write.
    #[arg(long, default_value = "conv1.png")]
    out: PathBuf,
}

pub fn filters(a: &FiltersArgs) -> Result<()> {
    crate::image::check_output(&a.out)?;
    let c = crate::checkpoint::load_weights(&a.checkpoint)?;
    let cfg = c.state.config.model_config(c.state.classes.len() as i64)?;
    let first = &cfg.convs[0].name;
    let w = c
        .weights
        .get(&format!("{first}.weight"))
        .ok_or_else(|| crate::Error::File {
            path: c.dir.clone(),
            reason: format!("no {first}.weight"),
        })?;
    let (mut image, towers) = crate::viz::filter_grid(&cfg, w)?;
    crate::viz::save_png(&mut image, &towers, &a.out)?;
    crate::say::outln!(
        "{}: {} kernels of {first} ({}) from {}",
        a.out.display(),
        w.size()[0],
        cfg.preset,
        c.dir.display()
    )?;
    for (i, t) in towers.iter().enumerate() {
        crate::say::outln!(
            "  tower {}: kernels {}-{}, colour spread {:.3} (0: the same in R, G and B)",
            i + 1,
            t.first + 1,
            t.first + t.count,
            t.colour_spread
        )?;
    }
    Ok(())
}

#[derive(Args)]
pub struct NeighboursArgs {
    /// A run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// Query image files.
    images: Vec<PathBuf>,
    /// Instead of image files, query the first N images of the test split, and report how many
    /// of their neighbours share their class.
    #[arg(long, value_name = "N")]
    test: Option<usize>,
    /// The training images to search [default: the run's data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 6)]
    k: usize,
    /// The contact sheet to write.
    #[arg(long, default_value = "neighbours.png")]
    out: PathBuf,
    /// Where the network runs: one device, or two for the paper's split.
    #[arg(long, default_value = "cpu")]
    devices: String,
}

/// The queries `a` asks for, its flags checked (before any work).
fn neighbour_queries(a: &NeighboursArgs) -> Result<train::Queries> {
    crate::image::check_output(&a.out)?;
    let inputs: Vec<&Path> = a.images.iter().chain(&a.data).map(PathBuf::as_path).collect();
    crate::files::check_not_input(&a.out, &inputs)?;
    let queries = match (a.test, a.images.is_empty()) {
        (Some(n), true) => train::Queries::Test(n),
        (None, false) => train::Queries::Files(a.images.clone()),
        _ => {
            return Err(crate::Error::Config(
                "give query images or --test N (not both, not neither)".into(),
            ))
        }
    };
    if !(1..=crate::viz::SHEET_NEIGHBOURS).contains(&a.k) {
        return Err(crate::Error::Config(format!(
            "--k must be between 1 and {} (got {})",
            crate::viz::SHEET_NEIGHBOURS,
            a.k
        )));
    }
    Ok(queries)
}

pub fn neighbours(a: &NeighboursArgs) -> Result<()> {
    let queries = neighbour_queries(a)?;
    let bar = super::progress_bar(0, "fc7 vectors");
    let n = train::neighbours(
        &a.checkpoint,
        a.data.clone(),
        queries,
        a.k,
        &a.devices,
        &super::ticks(&bar),
    )?;
    bar.finish_and_clear();
    // A random training image shares class l with the probability of l in the searched set.
    let mut per_class = vec![0usize; n.train.classes.len()];
    for &(_, l) in &n.train.items {
        per_class[l as usize] += 1;
    }
    let share = |l: i64| {
        per_class
            .get(l as usize)
            .map_or(0.0, |&c| c as f64 / n.train.items.len().max(1) as f64)
    };
    let (mut same, mut total, mut chance) = (0usize, 0usize, 0.0);
    for q in &n.queries {
        let names: Vec<String> = q
            .neighbours
            .iter()
            .map(|&(_, _, l)| class_name(&n.train.classes, l).to_string())
            .collect();
        let (c, p) = q.top5[0];
        crate::say::outln!(
            "{}: {} {p:.3}; nearest: {}",
            q.name,
            class_name(&n.classes, c),
            names.join(", ")
        )?;
        if let Some(l) = q.label {
            same += q.neighbours.iter().filter(|&&(_, _, c)| c == l).count();
            total += q.neighbours.len();
            chance += share(l) * q.neighbours.len() as f64;
        }
    }
    crate::viz::contact_sheet(&n, &a.out)?;
    if total > 0 {
        crate::say::outln!(
            "neighbours sharing the query's class: {same} of {total} ({:.1}%; chance: {:.1}%)",
            100.0 * same as f64 / total as f64,
            100.0 * chance / total as f64
        )?;
    }
    let shown = match n.queries.len() {
        q if q > crate::viz::SHEET_ROWS => format!(", the first {} of {q} queries", crate::viz::SHEET_ROWS),
        _ => String::new(),
    };
    crate::say::outln!(
        "contact sheet: {}{shown} (fc7 vectors cached in {})",
        a.out.display(),
        n.cache.display()
    )?;
    if n.unread > 0 {
        return Err(crate::Error::SomeFailed(format!(
            "{} of {} query images could not be read (each named above)",
            n.unread,
            n.unread + n.queries.len()
        )));
    }
    Ok(())
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    if let Some(out) = &a.confusion {
        crate::image::check_output(out)?;
        crate::files::check_not_input(out, &a.data.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
        // Before the evaluation (the check after it stays: the newest checkpoint may change).
        let state =
            crate::checkpoint::find_latest_weights(&a.checkpoint).and_then(|d| crate::checkpoint::read_state(&d));
        if let Ok(s) = state {
            too_many_to_count(s.classes.len())?;
        }
    }
    let bar = super::progress_bar(0, "eval");
    let ticks = super::ticks(&bar);
    let r = train::evaluate_checkpoint(
        &a.checkpoint,
        a.data.clone(),
        a.ten_crop,
        a.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        a.batch_size,
        &a.devices,
        &|done, total| {
            ticks(done, total);
            false // Ctrl-C ends the process
        },
    )?;
    bar.finish_and_clear();
    let view = if a.ten_crop { "10 crops" } else { "centre crop" };
    if let Some(note) = train::top5_note(r.classes.len()) {
        crate::say::note(&note);
    }
    crate::say::outln!(
        "{} samples ({view}): top-1 {:.4}, top-5 {:.4}, loss {:.4}",
        r.samples,
        r.top1,
        r.top5,
        r.loss
    )?;
    if let Some(out) = &a.confusion {
        // The evaluated checkpoint's names (loading it again could read a newer one).
        let classes = &r.classes;
        if r.confusion.is_empty() {
            too_many_to_count(classes.len())?;
        }
        crate::say::outln!("top-1 accuracy per class:")?;
        for (name, acc) in classes.iter().zip(r.per_class()) {
            match acc.is_nan() {
                true => crate::say::outln!("  {:>7}  {name} (no test samples)", "-")?,
                false => crate::say::outln!("  {acc:>7.4}  {name}")?,
            }
        }
        crate::viz::confusion_png(&r.confusion, classes, out)?;
        crate::say::outln!("confusion matrix: {}", out.display())?;
    }
    Ok(())
}

pub fn predict(a: &PredictArgs) -> Result<()> {
    let mut images = Vec::new();
    // A folder without images is reported like an unreadable image; the others are predicted.
    let mut bad_folders = 0;
    for p in &a.images {
        if !p.is_dir() {
            images.push(p.clone());
            continue;
        }
        match crate::data::source::image_files_once(p) {
            Ok(inside) if !inside.is_empty() => images.extend(inside),
            Ok(_) => {
                crate::say::line(&format!("error: {}: no image files in this folder", p.display()));
                bad_folders += 1;
            }
            Err(e) => {
                crate::say::line(&format!("error: {e}"));
                bad_folders += 1;
            }
        }
    }
    let t = train::load_trained(&a.checkpoint, &a.devices)?;
    let mut failed = bad_folders;
    for (path, top) in images.iter().zip(train::predict(&t, &images)?) {
        match top {
            Ok(top) => {
                crate::say::outln!("{}:", path.display())?;
                for (i, name, p) in top {
                    crate::say::outln!("  {p:>7.4}  {i:>4}  {name}")?;
                }
            }
            Err(e) => {
                crate::say::line(&format!("error: {e}"));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        // An empty folder counts as one unreadable item.
        return Err(Error::SomeFailed(format!(
            "{failed} of {} images could not be read (each named above)",
            images.len() + bad_folders
        )));
    }
    Ok(())
}

/// `--confusion` of `classes` classes: refused past [`train::CONFUSION_CLASSES`].
fn too_many_to_count(classes: usize) -> Result<()> {
    if classes as i64 <= train::CONFUSION_CLASSES {
        return Ok(());
    }
    Err(Error::Config(format!(
        "--confusion: {classes} classes are more than the {} a confusion matrix is counted for",
        train::CONFUSION_CLASSES
    )))
}
