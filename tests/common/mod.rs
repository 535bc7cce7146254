//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset of these helpers
use std::path::{Path, PathBuf};

/// Tests that seed torch's global generator take this lock: they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fashion-MNIST's folder (Debian's dataset-fashion-mnist, or `$ALEXNET_FASHION_MNIST`). A test
/// that needs it fails here when it is missing, naming the fix: it never passes without checking.
#[allow(dead_code)] // not every test file trains
pub fn require_data() -> PathBuf {
    let dir = alexnet_rs::data::source::fashion_mnist_dir();
    assert!(
        dir.is_dir(),
        "Fashion-MNIST is missing at {}: run `make setup` (it installs Debian's dataset-fashion-mnist)",
        dir.display()
    );
    dir
}

/// A fresh scratch folder for this test process (not created yet): removed when the test that
/// holds it passes, kept and named on stderr when it fails. Checkpoints are hundreds of MB, so a
/// test run must not leave its scratch behind.
pub fn tmp(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("alexnet-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Scratch(d)
}

pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the failed test's scratch folder {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Asserts that `r` is an op error of `kind` whose message mentions `needle`.
pub fn expect_op_error(
    r: Result<tch::Tensor, alexnet_rs::error::Error>,
    kind: alexnet_rs::error::OpErrorKind,
    needle: &str,
) {
    match r {
        Err(alexnet_rs::error::Error::Op { kind: k, message }) => {
            assert_eq!(k, kind, "{message}");
            assert!(message.contains(needle), "`{message}` does not mention `{needle}`");
        }
        other => panic!("expected an op error, got {other:?}"),
    }
}
