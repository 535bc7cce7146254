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
    let dir = alexnet_rs::data::idx::fashion_mnist_dir();
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
    remove(&d);
    Scratch(d)
}

/// Removes `p`, a folder or a file (some tests use their scratch path as a file).
fn remove(p: &Path) {
    if std::fs::remove_dir_all(p).is_err() {
        let _ = std::fs::remove_file(p);
    }
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
            remove(&self.0);
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

/// The largest error, relative to 1 + |analytic|, between autograd's gradient of
/// `sum(f(x) * w)` (float64) and central finite differences over every element of `x`.
pub fn worst_finite_difference_error(x: &tch::Tensor, w: &tch::Tensor, f: impl Fn(&tch::Tensor) -> tch::Tensor) -> f64 {
    let loss = |x: &tch::Tensor| (f(x) * w).sum(tch::Kind::Double).double_value(&[]);
    let xg = x.detach().set_requires_grad(true);
    (f(&xg) * w).sum(tch::Kind::Double).backward();
    let analytic = xg.grad().flatten(0, -1);
    let flat = x.flatten(0, -1);
    let eps = 1e-6;
    let mut worst = 0f64;
    for i in 0..flat.size()[0] {
        let bump = |d: f64| {
            let xp = flat.copy();
            let _ = xp.get(i).fill_(flat.double_value(&[i]) + d);
            loss(&xp.view_as(x))
        };
        let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
        let a = analytic.double_value(&[i]);
        worst = worst.max((numeric - a).abs() / (1.0 + a.abs()));
    }
    worst
}
