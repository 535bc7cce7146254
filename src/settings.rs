//! The training settings, defined once. Every reader takes them from this struct:
//! - `alexnet train` / `alexnet experiment` flags: clap derives them, help and defaults included;
//! - the TOML file of `--config` and the checkpoint's `state.json`: serde, same keys;
//! - Python's `alexnet_rs.train(config)` dict: serde through JSON, and its `TrainSettings` stub
//!   (`python/alexnet_rs/settings.py`, generated from [`describe`] by `make stubs`).
//!
//! A setting's key is its field name, its flag the field name in kebab case (`--no-lrn`,
//! `--time-budget` and `--no-fc-update-in-backward` are named explicitly), its default the `default_value` in its `#[arg]` and
//! nowhere else, its help the doc comment. `value_name` says what kind of value it takes (INT,
//! FLOAT (parsed by [`finite`]), PATH, NAME, TEXT or LIST: comma-separated names); the stub
//! generator reads it. Adding a setting is adding a field.
use crate::config::{Activation, Config, Preset};
use crate::conv::ConvBackend;
use crate::error::{Error, Result};
use crate::optim::{ScheduleKind, UpdateRule};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

/// A clap parser for one of a fixed set of names, parsed by the type's `FromStr` (the help lists
/// the names).
pub fn choice<T>(names: impl IntoIterator<Item = &'static str>) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>().map_err(|e| e.to_string()))
}

/// The clap parser of every FLOAT setting: a finite number. `nan` and `inf` are refused here
/// (TOML's and Python's by `from_toml` and `settings_from`): JSON has no such numbers, so on the
/// way through [`TrainConfig::overlay`] they would become `null`, i.e. an unset option.
pub fn finite(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("expected a finite number, got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Everything a training run is configured by (see the module doc for who reads it).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Network variant (cnn4: the four-layer CNN of the paper's Fig. 1).
    #[arg(long, value_name = "NAME", default_value = "paper", value_parser = choice::<Preset>(Preset::CHOICES.map(Preset::name)))]
    pub preset: Preset,
    /// Dataset: image folder, list file or IDX folder [default: Fashion-MNIST from Debian's
    /// dataset-fashion-mnist, or $ALEXNET_FASHION_MNIST].
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Input side in pixels (the crop the network sees) [default: the preset's: 224; caffe 227,
    /// cnn4 32].
    #[arg(long, value_name = "INT", default_value_t = 224, hide_default_value = true)]
    pub input_size: u32,
    /// Images per optimiser step (per rank under torchrun: the global batch is this x the ranks).
    #[arg(long, value_name = "INT", default_value_t = 128)]
    pub batch_size: usize,
    /// Passes over the training set.
    #[arg(long, value_name = "INT", default_value_t = 90)]
    pub epochs: u64,
    /// Initial learning rate.
    #[arg(long, value_name = "FLOAT", value_parser = finite, default_value_t = 0.01)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, value_name = "FLOAT", value_parser = finite, default_value_t = 0.9)]
    pub momentum: f64,
    /// L2 weight decay (weights only, not biases, as cuda-convnet).
    #[arg(long, value_name = "FLOAT", value_parser = finite, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// `paper` (v = m v - wd lr w - lr g; w += v) or `pytorch` (torch.optim.SGD's).
    #[arg(long, value_name = "NAME", default_value = "paper", value_parser = choice::<UpdateRule>(UpdateRule::NAMES))]
    pub update_rule: UpdateRule,
    /// plateau (/10 when the validation error stalls for --plateau-patience evaluations, at most 3
    /// times), step, cosine or constant.
    #[arg(long, value_name = "NAME", default_value = "plateau", value_parser = choice::<ScheduleKind>(ScheduleKind::NAMES))]
    pub schedule: ScheduleKind,
    /// Epochs between drops of the `step` schedule.
    #[arg(long, value_name = "INT", default_value_t = 30)]
    pub step_epochs: u64,
    /// Evaluations in a row without a new best validation error after which the `plateau`
    /// schedule divides the lr by 10 (a tie is no new best; 1 reacts to every noisy epoch).
    #[arg(long, value_name = "INT", default_value_t = 3)]
    pub plateau_patience: u64,
    /// Seed of the initialisation, data order, augmentation and dropout masks.
    #[arg(long, value_name = "INT", default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda:0, cuda:0,cuda:1, cuda:0,cpu or cpu,cpu (two devices: the paper's split).
    #[arg(long, value_name = "TEXT", default_value = "cpu")]
    pub devices: String,
    /// Convolutions on CUDA: ours (our kernels), stock (cuDNN) or auto (the faster per shape); on
    /// the CPU all three are ATen's convolution.
    #[arg(long, value_name = "NAME", default_value = "auto", value_parser = choice::<ConvBackend>(ConvBackend::ALL.map(ConvBackend::name)))]
    pub conv_backend: ConvBackend,
    /// Run folder: metrics.jsonl, epochs.csv, curves.png, classes.json, checkpoints/ (and a copy
    /// of the --stats file). One run per folder: a new run into one with checkpoints is refused.
    #[arg(long, value_name = "PATH", default_value = "runs/train")]
    pub out: PathBuf,
    /// Also checkpoint every N steps (0: at epoch ends only).
    #[arg(long, value_name = "INT", default_value_t = 0)]
    pub checkpoint_every: u64,
    /// Checkpoints kept, besides the best (0 counts as 1: the newest is what --resume continues).
    #[arg(long, value_name = "INT", default_value_t = 3)]
    pub keep: usize,
    /// Evaluate every N epochs.
    #[arg(long, value_name = "INT", default_value_t = 1)]
    pub eval_every: u64,
    /// Data-loading threads (0: one per core).
    #[arg(long, value_name = "INT", default_value_t = 0)]
    pub threads: usize,
    /// Train on a random subset of this many samples (drawn with --seed).
    #[arg(long, value_name = "INT")]
    pub limit_train: Option<usize>,
    /// Evaluate on a random subset of this many samples (the same one whatever --seed, so that
    /// runs are compared on the same images).
    #[arg(long, value_name = "INT")]
    pub limit_test: Option<usize>,
    /// Stop after this many steps of this invocation (with a checkpoint; `--resume` continues).
    #[arg(long, value_name = "INT")]
    pub max_steps: Option<u64>,
    /// Stop after this many seconds of training, checked after each step (then a checkpoint and
    /// the final evaluation).
    #[arg(long = "time-budget", value_name = "FLOAT", value_parser = finite)]
    pub time_budget_s: Option<f64>,
    /// Evaluate with the average over 10 crops (the paper's test procedure).
    #[arg(long)]
    pub ten_crop_eval: bool,
    /// `alexnet stats` file: mean image and PCA eigen-pairs of the training set (copied into the
    /// run folder, which eval, predict and --resume then read). paper: its PCA pairs and its mean
    /// image (if computed at the resize side, else its channel means); caffe: its channel means;
    /// torchvision: not used (ImageNet's mean/std, with a warning).
    #[arg(long, value_name = "PATH")]
    pub stats: Option<PathBuf>,
    /// bfloat16 autocast for forward and loss (meant for CUDA; also runs on the CPU).
    #[arg(long)]
    pub bf16: bool,
    /// Inputs and conv weights in the channels_last memory format.
    #[arg(long)]
    pub channels_last: bool,
    /// Apply the fully connected layers' SGD update after backward instead of inside it (key
    /// `fc_update_in_backward = false`). Inside is the default where it applies: one process,
    /// float32 on an AVX-512 CPU, batch <= 32. The same update, rounded differently.
    #[arg(long = "no-fc-update-in-backward", action = clap::ArgAction::SetFalse)]
    pub fc_update_in_backward: bool,
    /// Ablation: the non-linearity of every layer.
    #[arg(long, value_name = "NAME", default_value = "relu", value_parser = choice::<Activation>(Activation::NAMES))]
    pub activation: Activation,
    /// Ablation: leave out the preset's LRN layers (key `lrn = false`).
    #[arg(long = "no-lrn", action = clap::ArgAction::SetFalse)]
    pub lrn: bool,
    /// Ablation: max-pool window (stride stays 2; 2 = non-overlapping) [default: the preset's 3].
    #[arg(long, value_name = "INT")]
    pub pool_kernel: Option<i64>,
    /// Ablation: dropout probability (0 = off) [default: the preset's: 0.5; cnn4 has no dropout].
    #[arg(long, value_name = "FLOAT", value_parser = finite)]
    pub dropout: Option<f64>,
    /// PyTorch's default init for every layer instead of the preset's (the paper's N(0, 0.01)
    /// stalls for epochs at small scale).
    #[arg(long)]
    pub torch_init: bool,
    /// Start from these weights: an `alexnet` run or checkpoint folder, a safetensors file, or a
    /// PyTorch state_dict file (.pth/.pt/.bin, zip or legacy format, e.g. torchvision's published
    /// weights; read without running pickle code). A class layer of another size is
    /// re-initialised, with a warning.
    #[arg(long, value_name = "PATH")]
    pub init_from: Option<PathBuf>,
    /// Layers not trained (no gradient, no update, no weight decay), comma-separated, named as
    /// `alexnet info` names them (conv1,conv2 or features.0,features.3).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub freeze: Option<Vec<String>>,
    /// Not a setting: which settings the caller gave ([`Given`]).
    #[arg(skip)]
    #[serde(skip)]
    pub given: Given,
}

/// Which settings a caller set explicitly (command-line flags, TOML keys, the keys of Python's
/// dict), for `--resume`: a resumed run takes some of them (epochs, keep, out, devices, threads,
/// data, stats) and
/// warns about the others. `None`: unknown (a `TrainConfig` built in code); then a value other
/// than the default counts as given. Not part of the settings' value: configs that differ only
/// here are equal.
#[derive(Clone, Debug, Default)]
pub struct Given(pub Option<BTreeSet<String>>);

impl PartialEq for Given {
    fn eq(&self, _: &Given) -> bool {
        true
    }
}

/// A setting's key as a user may spell it (`limit-train`, ` lrn`): `limit_train`, `lrn`.
pub fn setting_key(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// The settings' clap definition on its own (no binary name).
fn command() -> Command {
    TrainConfig::augment_args(Command::new("train").no_binary_name(true))
}

impl Default for TrainConfig {
    /// The defaults of the `#[arg]` attributes, read back through clap.
    fn default() -> Self {
        static DEFAULT: OnceLock<TrainConfig> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                let m = command()
                    .try_get_matches_from(Vec::<String>::new())
                    .unwrap_or_else(|e| unreachable!("the settings' defaults parse: {e}"));
                TrainConfig::from_arg_matches(&m).unwrap_or_else(|e| unreachable!("the settings' defaults parse: {e}"))
            })
            .clone()
    }
}

/// One setting, as `describe` reports it (for stubs, docs and tests).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SettingDoc {
    /// The key in TOML, Python and state.json.
    pub key: String,
    /// The command-line flag, e.g. `--no-lrn`.
    pub flag: String,
    /// INT, FLOAT, PATH, NAME, TEXT, or BOOL for a switch.
    pub kind: String,
    /// The names a NAME takes.
    pub choices: Vec<String>,
    /// The default as JSON (null: unset).
    pub default: serde_json::Value,
    pub help: String,
}

/// Every setting, in definition order.
pub fn describe() -> Vec<SettingDoc> {
    let defaults = serde_json::to_value(TrainConfig::default()).unwrap_or_default();
    command()
        .get_arguments()
        .filter(|a| a.get_id() != "help")
        .map(|a| {
            let key = a.get_id().to_string();
            let switch = !a.get_action().takes_values();
            SettingDoc {
                flag: format!("--{}", a.get_long().unwrap_or(&key)),
                kind: if switch {
                    "BOOL".into()
                } else {
                    a.get_value_names()
                        .and_then(|v| v.first())
                        .map_or("TEXT".into(), |v| v.to_string())
                },
                choices: a
                    .get_possible_values()
                    .iter()
                    .map(|p| p.get_name().to_string())
                    .collect(),
                default: defaults[&key].clone(),
                help: a.get_help().map(|h| h.to_string()).unwrap_or_default(),
                key,
            }
        })
        .collect()
}

impl TrainConfig {
    /// `base` with every setting given on the command line (`matches` of a command that flattens
    /// TrainConfig) laid over it; the rest keeps `base`'s values.
    pub fn overlay(base: &TrainConfig, matches: &ArgMatches) -> Result<TrainConfig> {
        let flags = TrainConfig::from_arg_matches(matches).map_err(|e| Error::Config(e.to_string()))?;
        let keys: Vec<String> = command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|key| matches.value_source(key) == Some(ValueSource::CommandLine))
            .collect();
        base.with(&flags, keys)
    }

    /// These settings with `top`'s values of `keys` laid over them; `keys` join the given ones.
    fn with(&self, top: &TrainConfig, keys: impl IntoIterator<Item = String>) -> Result<TrainConfig> {
        let (mut out, from) = (to_map(self)?, to_map(top)?);
        let keys: Vec<String> = keys.into_iter().collect();
        // Asked for (here, or in the base: an experiment's defaults say it by their value).
        let sized = keys.iter().any(|k| k == "input_size") || self.gave_input_size();
        let mut given = self.given.0.clone().unwrap_or_default();
        if sized {
            given.insert("input_size".into()); // so that a further layer keeps it too
        }
        for key in keys {
            if let Some(v) = from.get(&key) {
                out.insert(key.clone(), v.clone());
            }
            given.insert(key);
        }
        let mut t = TrainConfig {
            given: Given(Some(given)),
            ..TrainConfig::from_map(out)?
        };
        if !sized {
            t.input_size = t.preset_input_size();
        }
        Ok(t)
    }

    /// These settings with `keys` (setting keys; `limit-train` for `limit_train` is accepted) put
    /// back to their built-in defaults: what a TOML file or an experiment's defaults set and no
    /// flag can undo (a switch turned on, an optional value given). `input_size` goes back to the
    /// preset's. The keys count as not given: a resumed run keeps its own values of them.
    pub fn reset(&self, keys: &[String]) -> Result<TrainConfig> {
        let known: Vec<String> = describe().into_iter().map(|d| d.key).collect();
        let keys: Vec<String> = keys.iter().map(|k| setting_key(k)).filter(|k| !k.is_empty()).collect();
        if let Some(k) = keys.iter().find(|k| !known.contains(k)) {
            return Err(Error::Config(format!(
                "--reset {k}: no such setting; the settings: {}",
                known.join(", ")
            )));
        }
        if keys.is_empty() {
            return Ok(self.clone());
        }
        let mut t = self.with(&TrainConfig::default(), keys.clone())?;
        if let Some(given) = t.given.0.as_mut() {
            keys.iter().for_each(|k| {
                given.remove(k);
            });
        }
        if keys.iter().any(|k| k == "input_size") {
            t.input_size = t.preset_input_size();
        }
        Ok(t)
    }

    fn gave_input_size(&self) -> bool {
        self.gave("input_size", self.input_size != TrainConfig::default().input_size)
    }

    /// The preset's own input size (caffe 227, cnn4 32, the others 224): an `input_size` not
    /// given.
    fn preset_input_size(&self) -> u32 {
        Config::preset(self.preset, 1).map_or(self.input_size, |c| c.input_size as u32)
    }

    fn sized_for_preset(mut self) -> TrainConfig {
        if !self.gave_input_size() {
            self.input_size = self.preset_input_size();
        }
        self
    }

    /// The settings of the TOML file `path` laid over `base` (the file's keys replace `base`'s
    /// values, the others keep them): `alexnet experiment --config` keeps the experiment's
    /// defaults for what the file does not set.
    pub fn from_toml_over(base: &TrainConfig, path: &Path) -> Result<TrainConfig> {
        let file = TrainConfig::from_toml(path)?;
        base.with(&file, file.given.0.clone().unwrap_or_default())
    }

    /// Whether the caller gave setting `key` ([`Given`]); `differs`, whether its value differs
    /// from the default, answers when that is unknown.
    pub fn gave(&self, key: &str, differs: bool) -> bool {
        self.given.0.as_ref().map_or(differs, |keys| keys.contains(key))
    }

    /// A TOML file of settings (unknown keys refused by name).
    pub fn from_toml(path: &Path) -> Result<TrainConfig> {
        let text = crate::files::read_small_text(path)?;
        let config = |e: String| Error::Config(format!("{}: {e}", path.display()));
        let tc: TrainConfig = toml::from_str(&text).map_err(|e| config(e.to_string()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| config(e.to_string()))?;
        match table.iter().find(|(_, v)| v.as_float().is_some_and(|f| !f.is_finite())) {
            Some((k, v)) => Err(config(format!(
                "train setting `{k}`: expected a finite number, got {v}"
            ))),
            None => Ok(TrainConfig {
                given: Given(Some(table.keys().cloned().collect())),
                ..tc
            }
            .sized_for_preset()),
        }
    }

    /// Settings from a JSON object (Python's dict), its keys the ones [`Given`]: an unknown key
    /// or a bad value is an error naming the key.
    pub fn from_map(map: serde_json::Map<String, serde_json::Value>) -> Result<TrainConfig> {
        let given = Given(Some(map.keys().cloned().collect()));
        let tc: TrainConfig = serde_json::from_value(serde_json::Value::Object(map.clone())).map_err(|e| {
            let culprit = map.iter().find(|(k, v)| {
                let one = serde_json::Value::Object([((*k).clone(), (*v).clone())].into_iter().collect());
                serde_json::from_value::<TrainConfig>(one).is_err()
            });
            match culprit {
                Some((k, _)) => Error::Config(format!("train setting `{k}`: {e}")),
                None => Error::Config(format!("train settings: {e}")),
            }
        })?;
        Ok(TrainConfig { given, ..tc }.sized_for_preset())
    }
}

mod apply;

fn to_map(t: &TrainConfig) -> Result<serde_json::Map<String, serde_json::Value>> {
    t.text_paths()?;
    match serde_json::to_value(t) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        other => Err(Error::Internal(format!(
            "settings did not serialise to an object: {other:?}"
        ))),
    }
}
