//! alexnet_rs: AlexNet (Krizhevsky, Sutskever & Hinton, 2012) on libtorch, in three presets
//! (`paper`, `torchvision`, `caffe`) and the paper's Fig. 1 four-layer network (`cnn4`), with our
//! own ops (kernels/) registered with PyTorch's dispatcher as `torch.ops.alexnet_rs.*`.
// No function over ~80 lines (clippy.toml); `make lint` also keeps every src/ file under 500.
#![warn(clippy::too_many_lines)]
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod conv;
pub mod data;
pub mod error;
pub mod experiment;
pub mod fault;
pub mod files;
pub mod image;
pub mod info;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod placement;
#[cfg(feature = "python")]
mod python;
pub mod say;
pub mod settings;
pub mod train;
pub mod viz;
pub mod weights;

pub use config::{Activation, Config, Preset};
pub use conv::ConvBackend;
pub use error::{Error, Result};
pub use model::{forward, init_params, Params};
