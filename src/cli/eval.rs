//! `alexnet eval` and `alexnet predict`: a trained checkpoint on a test set or on image files.
use crate::error::Result;
use crate::train;
use clap::Args;
use std::path::PathBuf;

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
    #[arg(long, default_value = "cpu")]
    devices: String,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
}

#[derive(Args)]
pub struct PredictArgs {
    /// A run folder or checkpoint folder.
    checkpoint: PathBuf,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long, default_value = "cpu")]
    devices: String,
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let r = train::evaluate_checkpoint(
        &a.checkpoint,
        a.data.clone(),
        a.ten_crop,
        a.limit,
        a.batch_size,
        &a.devices,
    )?;
    let view = if a.ten_crop { "10 crops" } else { "centre crop" };
    println!(
        "{} samples ({view}): top-1 {:.4}, top-5 {:.4}, loss {:.4}",
        r.samples, r.top1, r.top5, r.loss
    );
    Ok(())
}

pub fn predict(a: &PredictArgs) -> Result<()> {
    let t = train::load_trained(&a.checkpoint, &a.devices)?;
    for (path, top) in a.images.iter().zip(train::predict(&t, &a.images)?) {
        println!("{}:", path.display());
        for (i, name, p) in top {
            println!("  {p:>7.4}  {i:>4}  {name}");
        }
    }
    Ok(())
}
