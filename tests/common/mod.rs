//! Helpers shared by the integration tests that train.
use std::path::{Path, PathBuf};

/// Tests that seed torch's global generator take this lock: they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether Debian's dataset-fashion-mnist is installed (`make setup` installs it).
#[allow(dead_code)] // not every test file trains
pub fn have_data() -> bool {
    let ok = Path::new(alexnet_rs::data::source::FASHION_MNIST_DIR).is_dir();
    if !ok {
        eprintln!("dataset-fashion-mnist is not installed: skipped");
    }
    ok
}

/// A fresh scratch folder for this test process.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("alexnet-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
