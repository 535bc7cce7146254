//! The data pipeline from Rust: determinism across thread counts, IDX parsing and its errors,
//! the eigen-solver against a hand-built matrix.
use alexnet_rs::data::source::read_idx;
use alexnet_rs::data::stats::symmetric_eigen3;
use alexnet_rs::data::{Dataset, Loader, LoaderConfig, Split, Transform, View};
use alexnet_rs::Preset;
use std::path::Path;

fn fashion() -> Option<Dataset> {
    let dir = Path::new(alexnet_rs::data::source::FASHION_MNIST_DIR);
    dir.is_dir()
        .then(|| Dataset::open(dir, Split::Test).unwrap().subset(300, 3))
}

#[test]
fn one_and_two_threads_give_identical_batches() {
    let Some(ds) = fashion() else {
        eprintln!("dataset-fashion-mnist not installed: skipped");
        return;
    };
    let run = |threads| {
        let tf = Transform::for_preset(Preset::Paper, 40, View::Train, None);
        let cfg = LoaderConfig {
            batch_size: 64,
            threads,
            seed: 11,
            ..LoaderConfig::default()
        };
        let loader = Loader::new(ds.clone(), tf, cfg).unwrap();
        (0..2)
            .flat_map(|e| loader.epoch(e).map(|b| b.unwrap()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(1), run(2));
    assert_eq!(a.len(), 10);
    for (x, y) in a.iter().zip(&b) {
        assert!(x.images.equal(&y.images) && x.labels.equal(&y.labels) && x.indices == y.indices);
    }
    assert!(!a[0].images.equal(&a[5].images), "epochs must differ");
}

#[test]
fn idx_errors_name_the_problem() {
    let dir = std::env::temp_dir().join(format!("alexnet-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad-idx");
    std::fs::write(&f, [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3]).unwrap();
    let e = read_idx(&f, 0x0803).unwrap_err().to_string();
    assert!(e.contains("need 8 data bytes, file has 3"), "{e}");
    std::fs::write(&f, [0, 0, 8, 1, 0, 0, 0, 1, 7]).unwrap();
    assert!(read_idx(&f, 0x0803).unwrap_err().to_string().contains("magic"));
    std::fs::write(&f, [0x1f, 0x8b, 1, 2]).unwrap();
    assert!(read_idx(&f, 0x0803).unwrap_err().to_string().contains("gzip"));
    std::fs::write(&f, [0, 0, 8, 1, 0, 0, 0, 2, 7, 9]).unwrap();
    assert_eq!(read_idx(&f, 0x0801).unwrap(), (vec![2], vec![7, 9]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eigen_pairs_of_a_known_matrix() {
    // Q diag(5, 2, 1) Q^T with Q a rotation about z by 30 degrees: eigenvectors are Q's columns.
    let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let q = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
    let d = [5.0, 2.0, 1.0];
    let a: [[f64; 3]; 3] =
        std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| q[i][k] * d[k] * q[j][k]).sum()));
    let (vals, vecs) = symmetric_eigen3(a);
    for k in 0..3 {
        assert!((vals[k] - d[k]).abs() < 1e-12, "{vals:?}");
        let dot: f64 = (0..3).map(|i| vecs[i][k] * q[i][k]).sum();
        assert!((dot.abs() - 1.0).abs() < 1e-12);
    }
}

#[test]
fn missing_data_is_a_not_found_error() {
    let e = Dataset::open(Path::new("/no/such/folder"), Split::Train).unwrap_err();
    assert!(
        matches!(&e, alexnet_rs::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
}
