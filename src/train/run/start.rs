//! [`Run::start`]: a fresh run or a resumed checkpoint, its data, network, optimiser and folder.
use super::Run;
use crate::checkpoint::{self, Checkpoint, TrainState};
use crate::config::Config;
use crate::data::{Loader, Split, View};
use crate::error::{Error, Result};
use crate::files::RunLock;
use crate::metrics::{Metrics, ResumeAt};
use crate::model::{self, Params};
use crate::optim::Sgd;
use crate::placement::Placement;
use crate::settings::TrainConfig;
use crate::train::resume::{self, resumed_config, warn_ignored};
use crate::train::{Event, Group};
use std::path::{Path, PathBuf};

/// Rank 0's hold on the folder it writes (see [`RunLock`]), with that folder.
type Held = Option<(RunLock, PathBuf)>;

impl<'a> Run<'a> {
    /// Opens the data, builds (or restores) the network and optimiser, and the run's folder. With
    /// a `group`, this rank's share of the data; rank 0 alone writes.
    pub fn start(
        tc: &TrainConfig,
        resume: Option<&Path>,
        group: Option<&'a Group<'a>>,
        on_event: &'a mut dyn FnMut(&Event),
    ) -> Result<Run<'a>> {
        let writer = group.is_none_or(|g| g.rank == 0);
        if let Some(g) = group {
            // Before the collectives that only a resuming rank takes (recovering the folder).
            let resumes = [(
                "resumes a checkpoint (1) or not (0)",
                f64::from(u8::from(resume.is_some())),
            )];
            g.check_same(
                &resumes,
                tch::Device::Cpu,
                "give every rank --resume (the same run) or none",
            )?;
        }
        let (tc, ckpt, mut lock) = settle(tc, resume, group, writer)?;
        let (cfg, placement, train_loader, test_loader) = open_data(&tc, ckpt.as_ref(), group)?;
        let per_epoch = train_loader.batches_per_epoch() as u64;
        let ranks = group.map_or(1, |g| g.world);
        let data = [
            train_loader.dataset().fingerprint(),
            test_loader.dataset().fingerprint(),
        ];
        if let Some(c) = &ckpt {
            // Before anything is written to the run's folder.
            c.state.check_data(data)?;
            c.state.check_position(per_epoch, ranks)?;
        }
        let resumed = ckpt.as_ref().map(|c| c.dir.clone());
        let (params, sgd, mut state) = match ckpt {
            Some(c) => restore(&tc, &cfg, &placement, c)?,
            None => fresh(&tc, &cfg, &placement, train_loader.dataset().classes.clone())?,
        };
        freeze(&params, &tc.frozen(&cfg)?);
        // The folder is changed only once the weights (--init-from) and --freeze are good.
        if writer {
            hold(&mut lock, &tc.out)?;
            crate::files::write(
                &tc.out.join("classes.json"),
                train_loader.dataset().classes_json().as_bytes(),
            )?;
            resume::fill_out(&tc, resumed.as_deref())?;
        }
        resume::replan(&mut state.schedule, tc.epochs, state.epoch);
        state.config = tc.clone();
        (state.ranks, state.data, state.network) = (ranks, Some(data), checkpoint::NETWORK);
        if let Some(g) = group {
            check_alike(g, &state, data, &train_loader, &cfg, &params)?;
        }
        let at = ResumeAt {
            step: state.step,
            epoch: state.epoch,
        };
        let metrics = writer.then(|| Metrics::open(&tc.out, resume.map(|_| at))).transpose()?;
        on_event(&Event::Start {
            epoch: state.epoch,
            batch_in_epoch: state.batch_in_epoch,
            batches_per_epoch: per_epoch,
        });
        Ok(Run {
            tc,
            cfg,
            params,
            sgd,
            state,
            train_loader,
            test_loader,
            metrics,
            group,
            on_event,
            _lock: lock.map(|(l, _)| l),
            eval_on_stop: true,
        })
    }
}

/// The run's settings (a resumed run's come from its checkpoint, which is loaded) for this
/// rank's devices, validated, and its folder checked; a `writer` holds an existing folder before
/// the check, so that a folder another process is training is refused as such.
fn settle(
    tc: &TrainConfig,
    resume: Option<&Path>,
    group: Option<&Group>,
    writer: bool,
) -> Result<(TrainConfig, Option<Checkpoint>, Held)> {
    let mut lock = None;
    let (mut tc, ckpt) = match resume {
        Some(path) => {
            if path.as_os_str().is_empty() {
                return Err(Error::Config("resume is an empty path".into())); // an unnamed io error
            }
            resume::check_loose(path, tc)?; // before anything is written there
            lock = resume::recover_run(path, group)?.map(|l| (l, resume::run_of(path).to_path_buf()));
            let c = checkpoint::load(path)?;
            let t = resumed_config(tc, &c)?;
            warn_ignored(tc, &t);
            (t, Some(c))
        }
        None => (tc.clone(), None),
    };
    tc.check_paths()?; // before they are used
    if writer && tc.out.is_dir() {
        hold(&mut lock, &tc.out)?;
    }
    resume::check_out(&tc, ckpt.as_ref())?;
    // Stored absolute: `alexnet eval` and `--resume` of the run work from any folder.
    if let Some(d) = &tc.data {
        let d = std::path::absolute(d).map_err(crate::error::io(d))?;
        check_out_apart(&d, &tc.out)?;
        tc.data = Some(d);
    }
    if let Some(s) = &tc.stats {
        tc.stats = Some(std::path::absolute(s).map_err(crate::error::io(s))?);
    }
    if let Some(g) = group {
        tc.devices = Placement::for_local_rank(&tc.devices, g.local_rank)?;
    }
    tc.validate()?;
    Ok((tc, ckpt, lock))
}

/// The network's config and placement and this rank's training and test loaders; the data must
/// hold at least one global batch.
fn open_data(
    tc: &TrainConfig,
    ckpt: Option<&Checkpoint>,
    group: Option<&Group>,
) -> Result<(Config, Placement, Loader, Loader)> {
    let train_ds = tc.open(Split::Train, tc.limit_train)?;
    resume::check_classes(ckpt, &train_ds)?;
    let test_ds = tc.open(Split::Test, tc.limit_test)?.labelled_as(&train_ds.classes)?;
    let cfg = tc.model_config(train_ds.classes.len() as i64)?;
    if let Some(note) = crate::train::top5_note(train_ds.classes.len()) {
        crate::say::note(&note);
    }
    let placement = Placement::parse(&tc.devices)?;
    placement.check_available()?;
    let shard = group.map(|g| (g.rank, g.world));
    let train_loader = tc.shard_loader(train_ds, View::Train, true, shard)?;
    let eval_view = if tc.ten_crop_eval { View::TenCrop } else { View::Center };
    let test_loader = tc.shard_loader(test_ds, eval_view, false, shard)?;
    if let Some(why) = train_loader.why_empty() {
        return Err(Error::Config(format!("no training batch: {why}")));
    }
    Ok((cfg, placement, train_loader, test_loader))
}

/// Refuses ranks that would train together from different states: another checkpoint (a node
/// that does not share the run folder), seed, data or statistics (the normalisation).
/// `data`: the fingerprints of this rank's training and test sets.
fn check_alike(
    g: &Group,
    state: &TrainState,
    data: [u64; 2],
    train: &Loader,
    cfg: &Config,
    params: &Params,
) -> Result<()> {
    let per_epoch = train.batches_per_epoch() as u64;
    let fnv32 = |h: u64| (h & 0xffff_ffff) as f64;
    let normalisation = format!("{:?}", train.transform());
    let alike = [
        (
            "settings fingerprint",
            shared_settings_fingerprint(&state.config) as f64,
        ),
        ("step", state.step as f64),
        ("epoch", state.epoch as f64),
        ("batch in epoch", state.batch_in_epoch as f64),
        ("batches per epoch", per_epoch as f64),
        ("classes", cfg.num_classes() as f64),
        ("weights fingerprint", params.fingerprint()? as f64),
        ("training data fingerprint", fnv32(data[0])),
        ("test data fingerprint", fnv32(data[1])),
        (
            "transform fingerprint (statistics)",
            fnv32(crate::files::fnv(crate::files::FNV_START, normalisation.as_bytes())),
        ),
    ];
    g.check_same(
        &alike,
        params.device(),
        "every rank must be given the same training settings and start from the same checkpoint (one \
         shared run folder) or the same seed and --init-from, on the same data and --stats",
    )
}

/// A fingerprint (below 2^32) of the settings every rank must share: all but where the files are
/// on each machine (out, data, stats, init_from: the data, statistics and weights are compared
/// themselves),
/// each rank's devices and threads, and what only the writer uses (keep).
fn shared_settings_fingerprint(tc: &TrainConfig) -> u64 {
    let shared = TrainConfig {
        out: PathBuf::new(),
        data: None,
        stats: None,
        init_from: None,
        devices: String::new(),
        threads: 0,
        keep: 0,
        ..tc.clone()
    };
    let text = serde_json::to_string(&shared).expect("plain record");
    crate::files::fnv(crate::files::FNV_START, text.as_bytes()) & 0xffff_ffff
}

/// Holds `dir` (unless `lock` already holds it), for the run's lifetime.
fn hold(lock: &mut Held, dir: &Path) -> Result<()> {
    if !lock.as_ref().is_some_and(|(_, d)| resume::same_folder(d, dir)) {
        *lock = Some((RunLock::acquire(dir)?, dir.to_path_buf()));
    }
    Ok(())
}

/// The network, optimiser and state of a resumed checkpoint.
fn restore(tc: &TrainConfig, cfg: &Config, placement: &Placement, c: Checkpoint) -> Result<(Params, Sgd, TrainState)> {
    let params = model::shard(cfg, placement, &c.weights, tc.channels_last)?;
    let mut sgd = Sgd::new(&params, tc.update_rule, tc.momentum, tc.weight_decay);
    let v = model::split(cfg, placement, &c.velocity, false)?;
    sgd.velocity = params.iter_shards().map(|(n, i, _)| v[n][i].shallow_clone()).collect();
    Ok((params, sgd, c.state))
}

/// A freshly initialised network (drawn from a generator of its own seeded by `tc.seed`, so that
/// other threads' use of torch's global one changes nothing), optimiser and state.
fn fresh(
    tc: &TrainConfig,
    cfg: &Config,
    placement: &Placement,
    classes: Vec<String>,
) -> Result<(Params, Sgd, TrainState)> {
    let mut whole = model::init_seeded(cfg, tc.seed)?;
    if let Some(path) = &tc.init_from {
        let class = &cfg.fcs[cfg.fcs.len() - 1].name;
        if crate::weights::init_from(cfg, &mut whole, path)? && tc.frozen(cfg)?.contains(class) {
            // It would stay as initialised: a random class layer, never trained.
            return Err(Error::Config(format!(
                "--freeze {class}: the class layer is re-initialised (--init-from {} has another number of \
                 classes) and would never be trained; freeze the layers before it",
                path.display()
            )));
        }
    }
    let params = model::shard(cfg, placement, &whole, tc.channels_last)?;
    let sgd = Sgd::new(&params, tc.update_rule, tc.momentum, tc.weight_decay);
    let state = TrainState::start(tc.clone(), classes);
    Ok((params, sgd, state))
}

/// The parameters of the `layers` get no gradient: backward leaves them out, the update and the
/// all-reduce skip them.
fn freeze(params: &Params, layers: &[String]) {
    for (name, _, p) in params.iter_shards() {
        if name
            .rsplit_once('.')
            .is_some_and(|(layer, _)| layers.iter().any(|l| l == layer))
        {
            let _ = p.set_requires_grad(false);
        }
    }
}

/// Refuses a run folder inside the image folder it trains on: its files (curves.png, the
/// checkpoints) would be read back as images of a class, or the folder taken for a new class.
fn check_out_apart(data: &Path, out: &Path) -> Result<()> {
    let Ok(d) = data.canonicalize() else {
        return Ok(()); // a missing dataset is reported when it is opened
    };
    if d.is_dir() && crate::files::resolved(out)?.starts_with(&d) {
        return Err(Error::Config(format!(
            "--out {} is inside the dataset {}: the run's files would be read as training images; \
             put the run elsewhere",
            out.display(),
            data.display()
        )));
    }
    Ok(())
}
