//! What the settings make: the network's config, the frozen layers, the data sets, transforms
//! and loaders of a run, and the checks of the settings together.
use super::TrainConfig;
use crate::config::{Config, Init};
use crate::data::{Dataset, Loader, LoaderConfig, OnBadImage, Split, Transform, View};
use crate::error::{Error, Result};
use crate::placement::Placement;
use std::path::Path;

/// The settings that change the preset's network (`alexnet train`'s ablation switches; at their
/// defaults the network is the preset's).
pub const ABLATIONS: [&str; 4] = ["activation", "lrn", "pool_kernel", "dropout"];

impl TrainConfig {
    /// The ablation switches ([`ABLATIONS`]) whose values here make the network differ from the
    /// preset's own, with their values: a value equal to the preset's (`--dropout 0.5` on
    /// `torchvision`), or one with nothing to act on (`--no-lrn` on a preset without LRN), changes
    /// nothing and is not listed.
    pub fn ablations(&self, classes: i64) -> Result<Vec<(&'static str, serde_json::Value)>> {
        let (mine, default) = (super::to_map(self)?, super::to_map(&TrainConfig::default())?);
        // The network with these settings' values of `keep`, the defaults' of the other switches.
        let network = |keep: &[&str]| -> Result<Config> {
            let mut m = mine.clone();
            for key in ABLATIONS.iter().filter(|k| !keep.contains(k)) {
                m.insert(key.to_string(), default[*key].clone());
            }
            TrainConfig::from_map(m)?.model_config(classes)
        };
        let own = network(&[])?;
        let mut changed = Vec::new();
        for key in ABLATIONS {
            if network(&[key])? != own {
                changed.push((key, mine[key].clone()));
            }
        }
        Ok(changed)
    }

    /// The preset's network with the run's ablations, its head sized for the run's input.
    pub fn model_config(&self, classes: i64) -> Result<Config> {
        let mut cfg = Config::preset(self.preset, classes)?;
        cfg.conv_backend = self.conv_backend;
        cfg.input_size = i64::from(self.input_size);
        cfg.activation = self.activation;
        if !self.lrn {
            cfg.convs.iter_mut().for_each(|c| c.lrn = false);
        }
        if self.torch_init {
            cfg.convs.iter_mut().for_each(|c| c.init = Init::TorchDefault);
            cfg.fcs.iter_mut().for_each(|f| f.init = Init::TorchDefault);
        }
        if let Some(k) = self.pool_kernel {
            if k < 1 {
                return Err(Error::Config(format!("pool_kernel must be >= 1, got {k}")));
            }
            cfg.pool.kernel = k;
        }
        if let Some(p) = self.dropout {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::Config(format!("dropout must be in [0, 1), got {p}")));
            }
            // With no dropout layer to act on (cnn4) it changes nothing: the preset's network
            // (`validate` refuses it for a new run).
            if cfg.fcs.iter().any(|f| f.dropout_before) {
                cfg.dropout = p;
            }
        }
        cfg.spatial_sizes(cfg.input_size)?;
        Ok(cfg)
    }

    /// Checks the settings that need no data: the optimiser's, the devices, the network's (so a
    /// bad flag is reported before any dataset is opened).
    pub fn validate(&self) -> Result<()> {
        Placement::parse(&self.devices)?;
        let cfg = self.model_config(1)?;
        if let Some(p) = self
            .dropout
            .filter(|&p| p > 0.0 && !cfg.fcs.iter().any(|f| f.dropout_before))
        {
            return Err(Error::Config(format!(
                "dropout {p}: the {} preset has no dropout layer for it to act on",
                self.preset
            )));
        }
        let bad = |m: String| Err(Error::Config(m));
        if self.batch_size == 0 {
            return bad("batch_size must be >= 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!("weight_decay must be >= 0, got {}", self.weight_decay));
        }
        if let Some(t) = self.time_budget_s.filter(|t| !(*t >= 0.0 && t.is_finite())) {
            return bad(format!("time_budget_s must be a number of seconds >= 0, got {t}"));
        }
        for (key, epochs) in [
            ("epochs", self.epochs),
            ("eval_every", self.eval_every),
            ("step_epochs", self.step_epochs),
        ] {
            if epochs == 0 {
                return bad(format!("{key} is a number of epochs and must be >= 1, got 0"));
            }
        }
        if self.plateau_patience == 0 {
            return bad("plateau_patience is a number of evaluations and must be >= 1, got 0".into());
        }
        // An empty test set was found only at the first evaluation, after a checkpoint.
        for (key, limit) in [("limit_train", self.limit_train), ("limit_test", self.limit_test)] {
            if limit == Some(0) {
                return bad(format!("{key} is a number of samples and must be >= 1, got 0"));
            }
        }
        crate::data::loader::check_threads(self.threads)?;
        self.check_paths()?;
        if self.max_steps == Some(0) {
            return bad("max_steps must be >= 1 (leave it out for no step limit), got 0".into());
        }
        self.frozen(&self.model_config(1)?)?;
        Ok(())
    }

    /// Refuses an empty path (from TOML or Python; clap refuses the flag): an empty `out` trained
    /// into the working directory and failed at the first checkpoint, the others failed with
    /// ": No such file or directory", naming nothing. And one that is not UTF-8 text
    /// ([`TrainConfig::text_paths`]).
    pub fn check_paths(&self) -> Result<()> {
        self.text_paths()?;
        let empty = self
            .paths()
            .into_iter()
            .find(|(_, p)| p.is_some_and(|p| p.as_os_str().is_empty()));
        empty.map_or(Ok(()), |(key, _)| Err(Error::Config(format!("{key} is an empty path"))))
    }

    /// Refuses a path that is not UTF-8 text: the settings are stored as JSON text (a
    /// checkpoint's state.json), and one such path failed as an internal error, naming nothing.
    pub fn text_paths(&self) -> Result<()> {
        let odd = self
            .paths()
            .into_iter()
            .find_map(|(k, p)| p.filter(|p| p.to_str().is_none()).map(|p| (k, p)));
        odd.map_or(Ok(()), |(key, p)| {
            Err(Error::Config(format!(
                "{key}: the path {} is not UTF-8 text, which a run's settings (its state.json) are stored as: \
                 rename it",
                p.display()
            )))
        })
    }

    /// The settings that are paths, by key.
    fn paths(&self) -> [(&'static str, Option<&Path>); 4] {
        [
            ("out", Some(&self.out)),
            ("data", self.data.as_deref()),
            ("stats", self.stats.as_deref()),
            ("init_from", self.init_from.as_deref()),
        ]
    }

    /// The layers of `cfg` that `freeze` names (each must be a layer with parameters).
    pub fn frozen(&self, cfg: &Config) -> Result<Vec<String>> {
        let layers: Vec<String> = cfg
            .convs
            .iter()
            .map(|c| c.name.clone())
            .chain(cfg.fcs.iter().map(|f| f.name.clone()))
            .collect();
        let asked = self.freeze.clone().unwrap_or_default();
        for l in &asked {
            if !layers.contains(l) {
                return Err(Error::Config(format!(
                    "freeze: no layer `{l}` with parameters in the {} network; its layers: {}",
                    self.preset,
                    layers.join(", ")
                )));
            }
        }
        if layers.iter().all(|l| asked.contains(l)) {
            return Err(Error::Config(format!(
                "freeze names every layer with parameters ({}): nothing would be trained",
                layers.join(", ")
            )));
        }
        Ok(asked)
    }

    /// The run's dataset split (Fashion-MNIST by default), limited to a random subset if asked
    /// (training: drawn with the run's seed; test: the same for every run).
    pub fn open(&self, split: Split, limit: Option<usize>) -> Result<Dataset> {
        let ds = match &self.data {
            Some(p) => {
                let ds = Dataset::open(p, split)?;
                // Said once it is known to be so (not before the error of a missing folder).
                for w in ds.warnings(p, split) {
                    crate::say::note(&format!("warning: {w}"));
                }
                ds
            }
            None => Dataset::fashion_mnist(split)?,
        };
        // The test subset does not depend on the run's seed: runs (and checkpoints) of other
        // seeds are evaluated on the same images.
        let seed = if split == Split::Train { self.seed } else { 0 };
        Ok(match limit {
            Some(n) => ds.subset(n, seed),
            None => ds,
        })
    }

    /// The preset's transform for `view`, with the run's `alexnet stats` file if it has one.
    pub fn transform(&self, view: View) -> Result<Transform> {
        let stats = self.stats.as_deref().map(crate::data::stats::Stats::load).transpose()?;
        // Said once per run: the training view is built once.
        if let Some(w) = stats
            .as_ref()
            .filter(|_| view == View::Train)
            .and_then(|s| crate::data::transform::unused_stats(self.preset, self.input_size, s))
        {
            crate::say::note(&format!("warning: {w}"));
        }
        Ok(Transform::for_preset(
            self.preset,
            self.input_size,
            view,
            stats.as_ref(),
        ))
    }

    /// A loader of `ds` for training (shuffled, drop-last) or evaluation.
    pub fn loader(&self, ds: Dataset, view: View, train: bool) -> Result<Loader> {
        self.shard_loader(ds, view, train, None)
    }

    /// [`TrainConfig::loader`] of rank `shard.0` of `shard.1`: its slice of every global batch
    /// (training), or its share of the samples (evaluation).
    pub fn shard_loader(&self, ds: Dataset, view: View, train: bool, shard: Option<(usize, usize)>) -> Result<Loader> {
        let tf = self.transform(view)?;
        let cfg = LoaderConfig {
            batch_size: self.batch_size,
            threads: self.threads,
            seed: self.seed,
            shuffle: train,
            drop_last: train,
            on_bad_image: OnBadImage::Skip,
            device: Placement::parse(&self.devices)?.first(),
            // Training, one process too: a batch of only bad images comes (empty), so that the
            // run skips it and counts its place in the epoch (ranks: on every rank at once).
            shard: if train { Some(shard.unwrap_or((0, 1))) } else { shard },
            keep_tail: !train,
            ..LoaderConfig::default()
        };
        Loader::new(ds, tf, cfg)
    }
}
