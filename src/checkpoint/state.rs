//! A checkpoint's `state.json`: where the run stands (epoch, step, schedule, best accuracy, the
//! running loss of the epoch in progress) and what it was trained with (settings, classes, ranks,
//! data), and the checks that a resume continues it as it was.
use super::FORMAT;
use crate::error::{Error, Result};
use crate::optim::Schedule;
use crate::settings::TrainConfig;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub format: String,
    pub config: TrainConfig,
    /// The epoch in progress and how many of its batches are done.
    pub epoch: u64,
    pub batch_in_epoch: u64,
    /// Optimizer steps so far.
    pub step: u64,
    pub schedule: Schedule,
    pub best_top1: Option<f64>,
    pub best_step: Option<u64>,
    pub classes: Vec<String>,
    /// Sum and count of the training losses of the epoch in progress, so that a resumed epoch's
    /// `train_loss` is the uninterrupted one's (0 in checkpoints written before they existed).
    #[serde(default)]
    pub loss_sum: f64,
    #[serde(default)]
    pub loss_count: u64,
    /// Data-parallel ranks the run trains with (its global batch is batch_size x ranks; 1 in
    /// checkpoints written before it was recorded).
    #[serde(default = "one")]
    pub ranks: usize,
    /// The fingerprints ([`crate::data::Dataset::fingerprint`]) of the training and test sets the
    /// run trains and evaluates on: a resume on other data is refused (absent in checkpoints
    /// written before they were recorded).
    #[serde(default)]
    pub data: Option<[u64; 2]>,
    /// The revision of the networks the run's code builds ([`NETWORK`]; 1 in checkpoints written
    /// before it was recorded).
    #[serde(default = "one")]
    pub network: u32,
}

/// The revision of the networks this code builds. 2 (2026-12-01): the `paper` network's LRN
/// normalises each tower apart; it normalised across both towers before.
pub const NETWORK: u32 = 2;

fn one<T: From<u8>>() -> T {
    T::from(1)
}

impl TrainState {
    /// The state of a run before its first step: epoch 0, step 0, the schedule of `config`.
    pub fn start(config: TrainConfig, classes: Vec<String>) -> TrainState {
        let schedule = Schedule::new(
            config.schedule,
            config.lr,
            config.epochs,
            config.step_epochs,
            config.plateau_patience,
        );
        TrainState {
            format: FORMAT.into(),
            config,
            epoch: 0,
            batch_in_epoch: 0,
            step: 0,
            schedule,
            best_top1: None,
            best_step: None,
            classes,
            loss_sum: 0.0,
            loss_count: 0,
            ranks: 1,
            data: None,
            network: NETWORK,
        }
    }

    /// What a checkpoint of an older revision of the networks now computes otherwise, for a
    /// warning (`None`: the same network); `cfg` is its network now.
    pub fn changed_network(&self, cfg: &crate::config::Config) -> Option<String> {
        let towers = cfg.lrn.groups > 1 && cfg.convs.iter().any(|c| c.lrn);
        (self.network < 2 && towers).then(|| {
            // revision 2 made the towers' LRN apart
            "it was trained when the paper network's LRN normalised across its two towers; it now \
             normalises each tower apart (as the 2012 network did), so its outputs differ slightly"
                .to_string()
        })
    }

    /// Refuses to continue on other data than the run's: `data` are the fingerprints of the
    /// training and test sets given now (the same sets at another path are the run's).
    pub fn check_data(&self, data: [u64; 2]) -> Result<()> {
        let Some(was) = self.data else { return Ok(()) };
        match ["training", "test"]
            .into_iter()
            .zip(was.into_iter().zip(data))
            .find(|(_, (a, b))| a != b)
        {
            Some((set, (a, b))) => Err(Error::Config(format!(
                "the {set} set holds other images or labels than the run was trained with (fingerprint \
                 {b:016x}, the run's {a:016x}): --resume continues a run on its own data, wherever it is \
                 now; to train these weights on other data, start a new run with --init-from <checkpoint>"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses to continue with `ranks` ranks and `per_epoch` batches per epoch what was trained
    /// otherwise: another rank count changes the global batch (and the position in the epoch,
    /// counted in batches); a position past the end of an epoch (the data or the batch size
    /// changed since the checkpoint was written) would skip the rest of the epoch.
    pub fn check_position(&self, per_epoch: u64, ranks: usize) -> Result<()> {
        if self.step > 0 && self.ranks != ranks {
            return Err(Error::Config(format!(
                "the run was trained with {} rank(s) (global batch {} x {}); continuing it with {ranks} \
                 would change the global batch and the position in the epoch: resume it with {} rank(s) \
                 (torchrun --nproc_per_node/--nnodes)",
                self.ranks, self.config.batch_size, self.ranks, self.ranks
            )));
        }
        if self.batch_in_epoch > per_epoch {
            return Err(Error::Config(format!(
                "the checkpoint's batch_in_epoch is {} but an epoch has {per_epoch} batches: the data or \
                 the batch size changed since it was written",
                self.batch_in_epoch
            )));
        }
        Ok(())
    }
}
