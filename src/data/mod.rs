//! The data pipeline: sources (image folders, list files, IDX), the paper's transforms, dataset
//! statistics, and the parallel deterministic loader.
pub mod idx;
mod keys;
mod list;
pub mod loader;
pub mod prepare;
pub mod rng;
pub mod source;
pub mod stats;
pub mod transform;
mod walk;
pub(crate) use walk::is_image;

pub use loader::{Batch, Epoch, Loader, LoaderConfig, OnBadImage};
pub use source::{check_class_names, Dataset, Sample, Split};
pub use transform::{Normalize, Pca, Transform, View};
