//! The data pipeline from Rust: determinism across thread counts, IDX parsing and its errors,
//! the eigen-solver against a hand-built matrix.
use alexnet_rs::data::idx::read_idx;
use alexnet_rs::data::stats::symmetric_eigen3;
use alexnet_rs::data::{Dataset, Loader, LoaderConfig, Sample, Split, Transform, View};
use alexnet_rs::Preset;
use std::path::Path;

mod common;

fn fashion() -> Dataset {
    Dataset::open(&common::require_data(), Split::Test)
        .unwrap()
        .subset(300, 3)
}

#[test]
fn one_and_two_threads_give_identical_batches() {
    let ds = fashion();
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
    let dir = common::tmp("idx");
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
    // Dims whose product wraps: 4 images of 2^31 x 2^31 in no bytes passed, then panicked.
    let huge = [0, 0, 8, 3, 0, 0, 0, 4, 0x80, 0, 0, 0, 0x80, 0, 0, 0];
    std::fs::write(&f, huge).unwrap();
    let e = read_idx(&f, 0x0803).unwrap_err().to_string();
    assert!(e.contains("too large"), "{e}");
    // No images of 65536 x 65536: past the pixel limit of every image file, refused alike.
    let labels = dir.join("labels");
    std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 0]).unwrap();
    std::fs::write(&f, [0, 0, 8, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0]).unwrap();
    let e = Dataset::idx(&f, &labels, vec![]).unwrap_err().to_string();
    assert!(e.contains("65536x65536 pixels"), "{e}");
    // No images of 28 x 28: an empty data set (a folder or list file without samples is refused).
    std::fs::write(&f, [0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0, 28]).unwrap();
    let e = Dataset::idx(&f, &labels, vec![]).unwrap_err().to_string();
    assert!(
        e.contains("bad-idx") && e.contains("no images (the file's count is 0)"),
        "{e}"
    );
    // gzip of several members (`cat a.gz b.gz`, bgzip): only the first was read ("file has 0").
    let member = |bytes: &[u8]| {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(bytes).unwrap();
        z.finish().unwrap()
    };
    std::fs::write(&f, [member(&[0, 0, 8, 1, 0, 0, 0, 2]), member(&[7, 9])].concat()).unwrap();
    assert_eq!(read_idx(&f, 0x0801).unwrap(), (vec![2], vec![7, 9]));
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

/// A scratch image folder: `classes` class folders of `per_class` 8x8 PNGs each.
fn image_folder(name: &str, classes: usize, per_class: usize) -> common::Scratch {
    let root = common::tmp(&format!("data-{name}"));
    for c in 0..classes {
        let d = root.join(format!("c{c}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per_class {
            image::RgbImage::from_pixel(8, 8, image::Rgb([i as u8 * 20, c as u8 * 60, 9]))
                .save(d.join(format!("img{i}.png")))
                .unwrap();
        }
    }
    root
}

#[test]
fn a_directory_symlink_loop_is_an_error_not_more_data() {
    // Finding 8: `c1/sub -> ..` made 8 images 328 samples, half of them mislabelled.
    let root = image_folder("loop", 2, 4);
    std::os::unix::fs::symlink("..", root.join("c1").join("sub")).unwrap();
    let e = Dataset::open(&root, Split::Train)
        .expect_err("a loop is refused")
        .to_string();
    assert!(e.contains("symlink loop") && e.contains("sub"), "{e}");
    // A second link to a folder already read would label its images twice: refused too.
    std::fs::remove_file(root.join("c1").join("sub")).unwrap();
    std::os::unix::fs::symlink(root.join("c0"), root.join("c1").join("again")).unwrap();
    let e = Dataset::open(&root, Split::Train)
        .expect_err("a second path is refused")
        .to_string();
    assert!(e.contains("reached twice"), "{e}");
    std::fs::remove_file(root.join("c1").join("again")).unwrap();
    assert_eq!(Dataset::open(&root, Split::Train).unwrap().len(), 8);
}

#[test]
fn hidden_entries_are_not_samples_and_an_empty_class_is_refused() {
    // `.ipynb_checkpoints/` became a class (two real classes, a 4-way network), and so did an
    // empty folder, silently.
    let root = image_folder("hidden", 2, 3);
    let hidden = root.join(".ipynb_checkpoints");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::copy(root.join("c0").join("img0.png"), hidden.join("img0-checkpoint.png")).unwrap();
    std::fs::copy(root.join("c0").join("img0.png"), root.join("c1").join("._img0.png")).unwrap();
    let ds = Dataset::open(&root, Split::Train).unwrap();
    assert_eq!(
        (ds.classes.clone(), ds.len()),
        (vec!["c0".to_string(), "c1".to_string()], 6)
    );
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let e = Dataset::open(&root, Split::Train).expect_err("refused").to_string();
    assert!(
        e.contains("empty") && e.contains("a class folder with no image files") && e.contains(".pnm"),
        "{e}"
    );
}

#[test]
fn every_netpbm_name_the_decoder_reads_is_an_image_file() {
    // .pbm, .pnm and .pam decode, but an image folder left them out in silence (a class of
    // them was "a class folder with no image files").
    let root = image_folder("netpbm", 2, 1);
    let files: [(&str, &[u8]); 3] = [
        ("a.pbm", b"P1\n2 2\n0 1\n1 0\n"),
        ("b.pnm", b"P6\n1 1\n255\n\x10\x20\x30"),
        (
            "c.pam",
            b"P7\nWIDTH 1\nHEIGHT 1\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n\x10\x20\x30",
        ),
    ];
    for (name, bytes) in files {
        std::fs::write(root.join("c1").join(name), bytes).unwrap();
    }
    let ds = Dataset::open(&root, Split::Train).unwrap();
    assert_eq!(ds.len(), 5);
    for (sample, _) in &ds.items {
        let Sample::File(path) = sample else {
            panic!("{sample:?}")
        };
        alexnet_rs::image::load_rgb(path).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_symlink_to_an_image_read_already_is_an_error_and_a_hard_link_is_a_file() {
    // A file symlink gave its image twice (under another label in another class), where a
    // second path to a folder was refused.
    let root = image_folder("file-link", 2, 2);
    let target = root.join("c0").join("img0.png");
    std::os::unix::fs::symlink(&target, root.join("c1").join("link.png")).unwrap();
    let e = Dataset::open(&root, Split::Train).expect_err("refused").to_string();
    assert!(
        e.contains("link.png") && e.contains("img0.png") && e.contains("read twice"),
        "{e}"
    );
    std::fs::remove_file(root.join("c1").join("link.png")).unwrap();
    // Two symlinks to one image outside the dataset.
    let outside = image_folder("file-link-outside", 1, 1);
    let away = outside.join("c0").join("img0.png");
    std::os::unix::fs::symlink(&away, root.join("c0").join("a.png")).unwrap();
    assert_eq!(
        Dataset::open(&root, Split::Train).unwrap().len(),
        5,
        "one symlink is one image"
    );
    std::os::unix::fs::symlink(&away, root.join("c1").join("b.png")).unwrap();
    let e = Dataset::open(&root, Split::Train).expect_err("refused").to_string();
    assert!(e.contains("a.png") && e.contains("b.png"), "{e}");
    std::fs::remove_file(root.join("c1").join("b.png")).unwrap();
    // Hard links are separate files (a deduplicated copy of a dataset).
    std::fs::hard_link(&target, root.join("c1").join("same.png")).unwrap();
    assert_eq!(Dataset::open(&root, Split::Train).unwrap().len(), 6);
}

#[test]
fn a_class_folder_named_in_bytes_that_are_not_utf8_is_read() {
    use std::os::unix::ffi::OsStrExt;
    // `caf\xe9/` became the class "caf\u{fffd}", and its folder was looked for under that name:
    // "No such file or directory".
    let root = image_folder("latin1", 1, 2);
    let latin1 = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::rename(root.join("c0"), &latin1).unwrap();
    std::fs::create_dir(root.join("ok")).unwrap();
    std::fs::copy(latin1.join("img0.png"), root.join("ok").join("x.png")).unwrap();
    let ds = Dataset::open(&root, Split::Train).unwrap();
    assert_eq!(ds.classes, ["caf\u{fffd}", "ok"]);
    assert_eq!(ds.len(), 3);
    // Two such names that read the same as text are refused, not merged.
    let other = root.join(std::ffi::OsStr::from_bytes(b"caf\xe8"));
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(latin1.join("img0.png"), other.join("y.png")).unwrap();
    let e = Dataset::open(&root, Split::Train).expect_err("refused").to_string();
    assert!(e.contains("have one name as text"), "{e}");
}

#[test]
fn prepare_refuses_two_sources_with_one_output_name() {
    // Finding 8: a.jpg and a.png both became a.jpg; one was dropped as "already there".
    let src = image_folder("collide", 1, 1);
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
    img.save(src.join("c0").join("a.png")).unwrap();
    img.save(src.join("c0").join("a.jpg")).unwrap();
    let dst = common::tmp("data-collide-out");
    let e = alexnet_rs::data::prepare::prepare(&src, &dst, 8, 90, &|_, _| {})
        .expect_err("a collision is refused")
        .to_string();
    assert!(e.contains("a.png") && e.contains("a.jpg"), "{e}");
    assert!(!dst.exists(), "nothing is written before the names are checked");
    // An output that would be a folder of another: b.png -> b.jpg, and b.jpg/x.png -> b.jpg/x.jpg
    // (it failed midway with "Is a directory", the winner decided by the threads' order).
    std::fs::remove_file(src.join("c0").join("a.jpg")).unwrap();
    img.save(src.join("c0").join("b.png")).unwrap();
    std::fs::create_dir(src.join("c0").join("b.jpg")).unwrap();
    img.save(src.join("c0").join("b.jpg").join("x.png")).unwrap();
    let e = alexnet_rs::data::prepare::prepare(&src, &dst, 8, 90, &|_, _| {})
        .expect_err("a folder clash is refused")
        .to_string();
    assert!(
        e.contains("b.png") && e.contains("a file inside it") && e.contains("x.png"),
        "{e}"
    );
    assert!(!dst.exists(), "nothing is written before the names are checked");
}

#[test]
fn prepare_refuses_a_destination_inside_its_source_and_redoes_another_size() {
    use alexnet_rs::data::prepare::prepare;
    // DST inside SRC: every rerun took the earlier outputs as inputs (out/out/out/...); DST ==
    // SRC: a .jpg source counted as its own output. Both ran and exited 0.
    // SRC inside DST: `prepare d/c d` wrote d/c/c/x.jpg's output over the source d/c/x.jpg. A
    // missing folder and `..` (`missing/../src/out`) slipped past the check.
    let src = image_folder("prepare-inside", 1, 2);
    let around = src.join("c0").join("sub");
    std::fs::create_dir_all(&around).unwrap();
    let missing_then_up = src.join("missing").join("..").join("out");
    for (s, dst, why) in [
        (&*src, src.join("out"), "the destination is inside the source"),
        (&*src, src.to_path_buf(), "the destination is inside the source"),
        (
            &*src,
            src.join("c0").join("..").join("new"),
            "the destination is inside the source",
        ),
        (&*src, missing_then_up, "the destination is inside the source"),
        (&*around, src.join("c0"), "the source is inside the destination"),
        (&*around, src.to_path_buf(), "the source is inside the destination"),
    ] {
        let e = prepare(s, &dst, 8, 90, &|_, _| {}).expect_err("refused").to_string();
        assert!(e.contains(why), "{e}");
        assert!(!src.join("out").exists() && !src.join("new").exists() && !src.join("missing").exists());
    }
    // A rerun with another --size kept the first size's files ("already there").
    let dst = common::tmp("data-prepare-resize-out");
    assert_eq!(prepare(&src, &dst, 8, 90, &|_, _| {}).unwrap().written, 2);
    let again = prepare(&src, &dst, 8, 90, &|_, _| {}).unwrap();
    assert_eq!((again.written, again.skipped_existing), (0, 2));
    let resized = prepare(&src, &dst, 4, 90, &|_, _| {}).unwrap();
    assert_eq!((resized.written, resized.skipped_existing), (2, 0));
    assert_eq!(
        image::image_dimensions(dst.join("c0").join("img0.jpg")).unwrap(),
        (4, 4)
    );
}

#[test]
fn prepare_makes_again_what_a_changed_source_settings_or_damage_made_stale() {
    use alexnet_rs::data::prepare::prepare;
    // "Already there" was an output of the right size: a source changed since, another
    // --quality, and a truncated output were all kept.
    let src = image_folder("prepare-stale", 1, 3);
    let dst = common::tmp("data-prepare-stale-out");
    let run = |quality| {
        let r = prepare(&src, &dst, 8, quality, &|_, _| {}).unwrap();
        (r.written, r.skipped_existing, r.orphans)
    };
    let pixel = |name: &str| {
        image::open(dst.join("c0").join(name))
            .unwrap()
            .to_rgb8()
            .get_pixel(4, 4)
            .0
    };
    assert_eq!(run(90), (3, 0, 0));
    assert_eq!(run(90), (0, 3, 0));
    // A new image under an old name (its modification time is later, its size may be the same).
    std::thread::sleep(std::time::Duration::from_millis(20));
    image::RgbImage::from_pixel(8, 8, image::Rgb([0, 0, 250]))
        .save(src.join("c0").join("img1.png"))
        .unwrap();
    assert_eq!(run(90), (1, 2, 0));
    let blue = pixel("img1.jpg");
    assert!(blue[2] > 200 && blue[0] < 40, "{blue:?}");
    // Another quality: every output again.
    assert_eq!(run(50), (3, 0, 0));
    assert_eq!(run(50), (0, 3, 0));
    // A damaged (truncated) output is made again.
    let out = dst.join("c0").join("img2.jpg");
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&out, &bytes[..bytes.len() - 40]).unwrap();
    assert_eq!(run(50), (1, 2, 0));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    // Two images of one size swapped, each keeping its modification time (as `tar x` or
    // `cp -p` give them): both were "already there"; the change time tells.
    let (x, y) = (src.join("c0").join("x.bmp"), src.join("c0").join("y.bmp"));
    image::RgbImage::from_pixel(8, 8, image::Rgb([250, 0, 0]))
        .save(&x)
        .unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([0, 0, 250]))
        .save(&y)
        .unwrap();
    assert_eq!(run(50), (2, 3, 0));
    let (red, blue) = (std::fs::read(&x).unwrap(), std::fs::read(&y).unwrap());
    assert_eq!(red.len(), blue.len());
    for (path, bytes) in [(&x, &blue), (&y, &red)] {
        let when = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    assert_eq!(run(50), (2, 3, 0));
    assert!(pixel("x.jpg")[2] > 200 && pixel("y.jpg")[0] > 200);
    std::fs::remove_file(&x).unwrap();
    std::fs::remove_file(&y).unwrap();
    std::fs::remove_file(dst.join("c0").join("x.jpg")).unwrap();
    std::fs::remove_file(dst.join("c0").join("y.jpg")).unwrap();
    // An output whose source is gone is counted, and left.
    std::fs::remove_file(src.join("c0").join("img0.png")).unwrap();
    assert_eq!(run(50), (0, 2, 1));
    assert!(dst.join("c0").join("img0.jpg").is_file());
}

#[test]
fn prepare_refuses_a_file_for_destination_and_an_empty_source_before_any_work() {
    use alexnet_rs::data::prepare::prepare;
    // DST a file: every image was decoded, then failed with one identical line each.
    let src = image_folder("prepare-dst-file", 1, 3);
    let file = common::tmp("data-prepare-dst-file-out");
    std::fs::write(&*file, b"x").unwrap();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let count = |_, _| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let e = prepare(&src, &file, 8, 90, &count).expect_err("refused").to_string();
    assert!(e.contains("is a file, not a folder"), "{e}");
    let e = prepare(&src, &file.join("sub"), 8, 90, &count)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("is a file, not a folder"), "{e}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
    // An empty source wrote nothing and said "0 written", exit 0.
    let empty = common::tmp("data-prepare-empty");
    std::fs::create_dir_all(empty.join("c0")).unwrap();
    std::fs::write(empty.join("c0").join("notes.txt"), b"x").unwrap();
    let e = prepare(&empty, &empty.with_extension("out"), 8, 90, &count)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("no image files"), "{e}");
    // .jfif and .jpe are JPEG names too (they were passed over in silence).
    let src = image_folder("prepare-jfif", 1, 1);
    let jpeg = src.join("c0").join("a.jpg");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(&jpeg)
        .unwrap();
    std::fs::copy(&jpeg, src.join("c0").join("b.JPE")).unwrap();
    std::fs::rename(&jpeg, src.join("c0").join("a.jfif")).unwrap();
    let dst = common::tmp("data-prepare-jfif-out");
    assert_eq!(prepare(&src, &dst, 8, 90, &count).unwrap().written, 3);
}

#[test]
fn prepare_exits_non_zero_when_files_failed() {
    // Finding 8: `alexnet prepare` reported 12 failed files and exited 0.
    let src = image_folder("prepare-fail", 1, 2);
    std::fs::write(src.join("c0").join("broken.jpg"), b"not an image").unwrap();
    let dst = common::tmp("data-prepare-fail-out");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(["prepare", "--size", "8"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit 0 with a failed file: {err}");
    assert!(err.contains("broken.jpg") && err.contains("1 of 3"), "{err}");
    assert!(dst.join("c0").join("img0.jpg").is_file());
}

#[test]
fn a_panic_in_a_data_thread_is_an_error_not_an_empty_epoch() {
    // Finding 6: `crop=0` panicked in a decoding thread and the epoch then ended with 0 batches
    // and no error. Here the panic comes from a mean image too small for its side (an index out
    // of bounds in the worker), a stand-in for any bug in a data thread.
    let root = image_folder("panic", 2, 2);
    let ds = Dataset::open(&root, Split::Train).unwrap();
    let mut tf = Transform::for_preset(Preset::Caffe, 8, View::Center, None);
    tf.normalize = alexnet_rs::data::Normalize::MeanImage {
        side: 8,
        mean: std::sync::Arc::new(Vec::new()),
    };
    let cfg = LoaderConfig {
        batch_size: 2,
        threads: 1,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(ds, tf, cfg).unwrap();
    let got: Vec<_> = loader.epoch(0).collect();
    assert!(!got.is_empty(), "the epoch ended silently");
    let e = got.into_iter().find_map(|b| b.err()).expect("an error").to_string();
    assert!(e.contains("data thread") && e.contains("index out of bounds"), "{e}");
}

/// `root/<split>/<class>/img<i>.png` for each (split, classes) pair, two images per class.
fn split_folder(name: &str, splits: &[(&str, &[&str])]) -> common::Scratch {
    let root = common::tmp(&format!("data-{name}"));
    for (split, classes) in splits {
        for (c, class) in classes.iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..2u8 {
                image::RgbImage::from_pixel(8, 8, image::Rgb([i * 20, c as u8 * 60, 9]))
                    .save(d.join(format!("img{i}.png")))
                    .unwrap();
            }
        }
    }
    root
}

#[test]
fn a_missing_split_folder_is_an_error_not_the_whole_folder_as_one_class() {
    // With train/ and no val/, the test split was the root itself: one class named `train`, the
    // training images evaluated as class 0.
    let root = split_folder("no-val", &[("train", &["c0", "c1"])]);
    assert_eq!(Dataset::open(&root, Split::Train).unwrap().len(), 4);
    let e = Dataset::open(&root, Split::Test).expect_err("no val/").to_string();
    assert!(e.contains("train/") && e.contains("no val/ or test/"), "{e}");
    let root = split_folder("no-train", &[("val", &["c0", "c1"])]);
    assert_eq!(Dataset::open(&root, Split::Test).unwrap().len(), 4);
    let e = Dataset::open(&root, Split::Train).expect_err("no train/").to_string();
    assert!(e.contains("val/") && e.contains("no train/"), "{e}");
}

#[test]
fn a_class_named_like_a_split_folder_beside_other_classes_is_an_error_naming_them() {
    // Classes bus/ car/ train/: train/ was taken for the training split, its subfolders for the
    // classes, bus/ and car/ left out in silence (or, with images in train/, "no class subfolders").
    let root = split_folder(
        "vehicles",
        &[("train", &["electric", "steam"]), ("bus", &["a"]), ("car", &["b"])],
    );
    for split in [Split::Train, Split::Test] {
        let e = Dataset::open(&root, split).expect_err("mixed layout").to_string();
        assert!(e.contains("train/ beside the class folders bus/, car/"), "{e}");
    }
    assert_eq!(Dataset::training_classes(&root), None);
    // Hidden folders, and folders without images (an unzipped archive's __MACOSX/ of `._*`
    // files, annotations), are neither classes nor splits: a split layout stays one.
    let root = split_folder(
        "split-hidden",
        &[("train", &["c0"]), ("val", &["c0"]), (".cache", &["x"])],
    );
    for (dir, file) in [("__MACOSX/train/c0", "._img0.png"), ("annotations", "c0.json")] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join(file), "{}").unwrap();
    }
    assert_eq!(Dataset::open(&root, Split::Train).unwrap().classes, ["c0"]);
    assert_eq!(Dataset::missing_test_split(&root), None);
    // Beside many classes, the first few are named.
    let root = split_folder("split-many", &[("train", &["c0"])]);
    for k in 0..8 {
        std::fs::create_dir_all(root.join(format!("k{k}"))).unwrap();
        std::fs::copy(root.join("train/c0/img0.png"), root.join(format!("k{k}/a.png"))).unwrap();
    }
    let e = Dataset::open(&root, Split::Train).expect_err("mixed").to_string();
    assert!(e.contains("k0/, k1/, k2/, k3/, k4/, and 3 more"), "{e}");
}

#[test]
fn the_test_split_is_labelled_by_the_training_class_names() {
    // val/ without the class c1 has classes [c0, c2]: by position its c2 images were label 1 (c1).
    let root = split_folder("classes", &[("train", &["c0", "c1", "c2"]), ("val", &["c0", "c2"])]);
    let train = Dataset::open(&root, Split::Train).unwrap();
    let val = Dataset::open(&root, Split::Test).unwrap();
    assert_eq!(val.classes, ["c0", "c2"]);
    let val = val.labelled_as(&train.classes).unwrap();
    assert_eq!(val.classes, train.classes);
    let labels: Vec<i64> = val.items.iter().map(|(_, l)| *l).collect();
    assert_eq!(labels, [0, 0, 2, 2]);
    // A class the network was not trained on has no label: refused, by name.
    let root = split_folder("unknown-class", &[("train", &["c0", "c1"]), ("val", &["c0", "c9"])]);
    let train = Dataset::open(&root, Split::Train).unwrap();
    let e = Dataset::open(&root, Split::Test)
        .unwrap()
        .labelled_as(&train.classes)
        .expect_err("c9 is unknown")
        .to_string();
    assert!(e.contains("`c9`") && e.contains("c0, c1"), "{e}");
    // A list file's labels without class names are the labels.
    std::fs::write(root.join("val.txt"), "val/c0/img0.png 1\nval/c0/img1.png 0\n").unwrap();
    let listed = Dataset::open(&root.join("val.txt"), Split::Test).unwrap();
    assert_eq!(listed.classes, ["0", "1"]);
    let labels: Vec<i64> = listed
        .labelled_as(&train.classes)
        .unwrap()
        .items
        .iter()
        .map(|(_, l)| *l)
        .collect();
    assert_eq!(labels, [1, 0]);
}

#[test]
fn a_device_or_fifo_is_refused_unread() {
    // /dev/zero was read until the OOM killer; a FIFO blocked the reader forever.
    let root = common::tmp("data-fifo");
    std::fs::create_dir_all(&*root).unwrap();
    let fifo = root.join("pipe.jpg");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    for path in [Path::new("/dev/zero").to_path_buf(), fifo] {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || tx.send(alexnet_rs::image::load_rgb(&p).map(|_| ())));
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("load_rgb({}) did not return", path.display()));
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("not a regular file"), "{msg}");
        assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    }
}

#[test]
fn a_file_too_large_for_any_allowed_image_is_refused_unread() {
    // A 2 GiB file was read whole before its header was looked at.
    let root = common::tmp("data-huge");
    std::fs::create_dir_all(&*root).unwrap();
    let big = root.join("big.png");
    let f = std::fs::File::create(&big).unwrap();
    std::io::Write::write_all(&mut &f, b"\x89PNG\r\n\x1a\n").unwrap();
    f.set_len(alexnet_rs::image::MAX_FILE_BYTES + 1).unwrap(); // sparse: no disk used
    let msg = alexnet_rs::image::load_rgb(&big).unwrap_err().to_string();
    assert!(msg.contains("big.png") && msg.contains("over the limit"), "{msg}");
}

#[test]
fn a_resize_past_the_pixel_limit_is_an_error_not_an_abort() {
    // transform_views(img, 100000, 32) aborted the process (a 30 GB allocation).
    let img = image::RgbImage::new(28, 28);
    let msg = alexnet_rs::data::transform::resize_shorter(&img, 100_000)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("100000x100000") && msg.contains("limit"), "{msg}");
    let wide = image::RgbImage::new(4000, 1);
    let msg = alexnet_rs::data::transform::resize_shorter(&wide, 2_000_000)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("limit"), "{msg}");
}

#[test]
fn a_stats_file_the_recipe_leaves_unused_is_named() {
    // --stats was silently ignored by the torchvision preset, and the paper preset silently used
    // channel means when the file's mean image was not at its resize side.
    use alexnet_rs::data::stats::Stats;
    use alexnet_rs::data::transform::{resize_for, unused_stats};
    let root = image_folder("unused-stats", 2, 2);
    let ds = Dataset::open(&root, Split::Train).unwrap();
    let at = |side| Stats::compute(&ds, side, &|| ()).unwrap();
    let (fits, other) = (at(resize_for(63)), at(256));
    let tv = unused_stats(Preset::Torchvision, 63, &fits).expect("torchvision uses none of it");
    assert!(tv.contains("not used"), "{tv}");
    assert_eq!(unused_stats(Preset::Paper, 63, &fits), None);
    let paper = unused_stats(Preset::Paper, 63, &other).expect("mean image at the wrong side");
    assert!(paper.contains("256x256") && paper.contains("--size 72"), "{paper}");
    assert_eq!(unused_stats(Preset::Caffe, 63, &other), None);
}

#[test]
fn a_training_shard_yields_a_batch_of_only_bad_images_empty_so_ranks_stay_in_step() {
    // A rank whose batch was all bad skipped it and took one step fewer than the others: their
    // gradient all-reduces no longer matched (a hang, or steps summed out of step).
    let root = image_folder("shard-bad", 1, 8);
    for i in [0, 1, 2, 3] {
        std::fs::write(root.join("c0").join(format!("img{i}.png")), b"").unwrap();
    }
    let ds = Dataset::open(&root, Split::Train).unwrap();
    let batches = |shard, keep_tail| {
        let cfg = LoaderConfig {
            batch_size: 2,
            threads: 1,
            shuffle: false,
            drop_last: true,
            shard,
            keep_tail,
            ..LoaderConfig::default()
        };
        let tf = Transform::for_preset(Preset::Cnn4, 8, View::Center, None);
        let loader = Loader::new(ds.clone(), tf, cfg).unwrap();
        loader.epoch(0).map(|b| b.unwrap().indices).collect::<Vec<_>>()
    };
    // Global batches [0..4) and [4..8): rank 0 takes images 0, 1 (bad) and 4, 5.
    assert_eq!(batches(Some((0, 2)), false), vec![vec![], vec![4, 5]]);
    assert_eq!(batches(Some((1, 2)), false), vec![vec![], vec![6, 7]]);
    // Alone, or evaluating (keep_tail), an all-bad batch is left out.
    assert_eq!(batches(None, false), vec![vec![4, 5], vec![6, 7]]);
    assert_eq!(batches(Some((0, 2)), true), vec![vec![4, 5]]);
}

#[test]
fn a_long_run_of_bad_images_is_skipped_without_growing_the_stack() {
    // Each all-bad batch was skipped by a recursive call: 60,000 empty files overflowed the
    // stack (an abort). Here 5000 of them, read on a thread with a 256 KiB stack.
    let root = image_folder("many-bad", 1, 1);
    for i in 0..5000 {
        std::fs::write(root.join("c0").join(format!("bad{i:04}.png")), b"").unwrap();
    }
    let ds = Dataset::open(&root, Split::Train).unwrap();
    let cfg = LoaderConfig {
        batch_size: 1,
        threads: 1,
        shuffle: false,
        drop_last: false,
        ..LoaderConfig::default()
    };
    let tf = Transform::for_preset(Preset::Cnn4, 8, View::Center, None);
    let loader = Loader::new(ds, tf, cfg).unwrap();
    let epoch = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let mut epoch = loader.epoch(0);
            let batches: Vec<Vec<usize>> = epoch.by_ref().map(|b| b.unwrap().indices).collect();
            (batches, epoch.skipped())
        })
        .unwrap()
        .join()
        .expect("the loader's thread");
    assert_eq!(epoch, (vec![vec![5000]], 5000)); // bad0000.png.. sort before img0.png
}

#[test]
fn an_idx_folder_without_test_files_serves_its_training_images_for_both_splits() {
    // It failed with "no class subfolders (expected one folder per class)".
    let fm = common::require_data();
    let (train, test) = (common::tmp("idx-train-only"), common::tmp("idx-test-only"));
    for (dir, prefix) in [(&*train, "train"), (&*test, "t10k")] {
        std::fs::create_dir_all(dir).unwrap();
        for kind in ["images-idx3", "labels-idx1"] {
            let name = format!("{prefix}-{kind}-ubyte.gz");
            std::os::unix::fs::symlink(fm.join(&name), dir.join(&name)).unwrap();
        }
    }
    let a = Dataset::open(&train, Split::Test).unwrap();
    assert_eq!(a.len(), 60_000);
    assert_eq!(
        Dataset::missing_test_split(&train),
        Some("t10k-* IDX files beside the train-* ones")
    );
    assert_eq!(Dataset::missing_test_split(&fm), None);
    let e = Dataset::open(&test, Split::Train).unwrap_err().to_string();
    assert!(e.contains("t10k-* IDX files but no train-images-idx3-ubyte"), "{e}");
}

#[test]
fn an_idx_folder_takes_its_class_names_from_a_classes_txt() {
    // MNIST's digits were named "T-shirt/top", "Trouser", ...: every IDX folder got
    // Fashion-MNIST's names, with no way to say otherwise.
    let fm = common::require_data();
    let dir = common::tmp("idx-classes-txt");
    std::fs::create_dir_all(&*dir).unwrap();
    for prefix in ["train", "t10k"] {
        for kind in ["images-idx3", "labels-idx1"] {
            let name = format!("{prefix}-{kind}-ubyte.gz");
            std::os::unix::fs::symlink(fm.join(&name), dir.join(&name)).unwrap();
        }
    }
    assert_eq!(Dataset::open(&dir, Split::Train).unwrap().classes[0], "T-shirt/top");
    let digits: Vec<String> = (0..10).map(|d| format!("digit {d}")).collect();
    std::fs::write(dir.join("classes.txt"), digits.join("\n") + "\n").unwrap();
    for split in [Split::Train, Split::Test] {
        assert_eq!(Dataset::open(&dir, split).unwrap().classes, digits);
    }
    // Too few names for the labels: an error naming the file, as for a list file's.
    std::fs::write(dir.join("classes.txt"), "zero\none\n").unwrap();
    let e = Dataset::open(&dir, Split::Train).unwrap_err().to_string();
    assert!(e.contains("classes.txt") && e.contains("label 9"), "{e}");
}

#[test]
fn an_idx_label_past_the_class_names_is_an_error_naming_the_labels_file() {
    // One label byte of 200 in Fashion-MNIST's training labels made the classes "0".."200" (a
    // 201-way network), and the test split was then blamed for its class names.
    let dir = common::tmp("idx-bad-label");
    std::fs::create_dir_all(&*dir).unwrap();
    let images = dir.join("train-images-idx3-ubyte");
    let labels = dir.join("train-labels-idx1-ubyte");
    std::fs::write(
        &images,
        [&[0u8, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1][..], &[0, 1, 2]].concat(),
    )
    .unwrap();
    std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 3, 4, 200, 9]).unwrap();
    let e = Dataset::open(&dir, Split::Train).unwrap_err().to_string();
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("label 200 of sample 1 is past the 10 classes"),
        "{e}"
    );
    // Named by a classes.txt of enough names, it is a dataset.
    let names: Vec<String> = (0..=200).map(|d| format!("c{d}")).collect();
    std::fs::write(dir.join("classes.txt"), names.join("\n")).unwrap();
    assert_eq!(Dataset::open(&dir, Split::Train).unwrap().classes.len(), 201);
}

#[test]
fn a_binary_file_given_as_data_is_no_list_file() {
    // An IDX .gz, an image or an archive given as DATA was read whole as text: "stream did not
    // contain valid UTF-8", or, for zeros, a 200 MB error line quoting them.
    let dir = common::tmp("binary-as-list");
    std::fs::create_dir_all(&*dir).unwrap();
    let zeros = dir.join("zeros.bin");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let png = dir.join("x.png");
    image::RgbImage::new(4, 4).save(&png).unwrap();
    for f in [&zeros, &png] {
        let e = Dataset::open(f, Split::Train).unwrap_err().to_string();
        assert!(e.contains("not a list file") && e.len() < 400, "{e}");
    }
    // A long bad line is quoted short.
    let long = dir.join("long.txt");
    std::fs::write(&long, "x".repeat(100_000)).unwrap();
    let e = Dataset::open(&long, Split::Train).unwrap_err().to_string();
    assert!(e.contains("expected `path label`") && e.len() < 400, "{e}");
}

#[test]
fn numbered_labels_meet_numbered_class_names_by_name() {
    // A list file without classes.txt (labels 0..=2) against a checkpoint trained on an image
    // folder of class folders `0/ 1/ 2/ 10/` (sorted as names: 0, 1, 10, 2): label 2 was kept as
    // index 2, the class named "10".
    let dir = common::tmp("numbered-by-name");
    std::fs::create_dir_all(&*dir).unwrap();
    let list = dir.join("val.txt");
    std::fs::write(&list, "a.png 0\nb.png 2\nc.png 1\n").unwrap();
    let names: Vec<String> = ["0", "1", "10", "2"].iter().map(|s| s.to_string()).collect();
    let ds = Dataset::open(&list, Split::Test).unwrap().labelled_as(&names).unwrap();
    let labels: Vec<i64> = ds.items.iter().map(|(_, l)| *l).collect();
    assert_eq!(labels, vec![0, 3, 1]);
    // Other names than numbers: the numbers are indices, as ever.
    let words: Vec<String> = ["cat", "dog", "owl"].iter().map(|s| s.to_string()).collect();
    let ds = Dataset::open(&list, Split::Test).unwrap().labelled_as(&words).unwrap();
    assert_eq!(ds.items.iter().map(|(_, l)| *l).collect::<Vec<_>>(), vec![0, 2, 1]);
}

#[test]
fn a_list_file_separated_by_a_comma_and_a_space_names_the_files() {
    // `a.png, 0` split at the space: the path `a.png,` was missing, every sample skipped.
    let dir = common::tmp("list-comma-space");
    std::fs::create_dir_all(&*dir).unwrap();
    let list = dir.join("val.csv");
    std::fs::write(&list, "a.png, 0\nb.png ,1\nc.png,\t2\n").unwrap();
    let ds = Dataset::open(&list, Split::Test).unwrap();
    let items: Vec<_> = ds.items.iter().map(|(s, l)| (format!("{s:?}"), *l)).collect();
    let want: Vec<_> = ["a.png", "b.png", "c.png"]
        .iter()
        .zip(0..)
        .map(|(f, l)| (format!("{:?}", Sample::File(dir.join(f))), l))
        .collect();
    assert_eq!(items, want);
    // A spreadsheet's CSV: a header, quoted fields (the quotes were kept in the path: missing).
    std::fs::write(&list, "path,label\n\"a.png\",0\n\"b.png\",\"1\"\nc.png,2\n").unwrap();
    let ds = Dataset::open(&list, Split::Test).unwrap();
    let items: Vec<_> = ds.items.iter().map(|(s, l)| (format!("{s:?}"), *l)).collect();
    assert_eq!(items, want);
    // A quote inside a quoted field is doubled.
    std::fs::write(&list, "\"say \"\"hi\"\", 2.png\",0\n").unwrap();
    let ds = Dataset::open(&list, Split::Test).unwrap();
    assert_eq!(
        format!("{:?}", ds.items[0].0),
        format!("{:?}", Sample::File(dir.join("say \"hi\", 2.png")))
    );
    // A header alone is not taken for one twice, and an empty path is named.
    for (text, needle) in [
        ("path,label\nfile,label\n", "line 2: label `label`"),
        ("path label\n", "no samples listed (line 1 is no sample"),
        ("a.png 0\n, 1\n", "line 2: no path before the label"),
        ("a.png 0\npath,label\n", "line 2: label `label`"),
        // A first sample without its label is no header.
        ("a.png,\nb.png,1\n", "line 1: label `` is not a non-negative integer"),
    ] {
        std::fs::write(&list, text).unwrap();
        let e = Dataset::open(&list, Split::Test).expect_err(text).to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn a_damaged_stats_file_is_an_error_naming_it() {
    // A 0-dim `images` panicked (an internal error with libtorch's C++ frames); NaN statistics
    // made every image NaN, later blamed on the checkpoint's weights.
    use alexnet_rs::data::stats::Stats;
    use tch::Tensor;
    let root = image_folder("damaged-stats", 2, 2);
    let ds = Dataset::open(&root, Split::Train).unwrap();
    let good = root.join("good.safetensors");
    Stats::compute(&ds, 16, &|| ()).unwrap().save(&good).unwrap();
    assert_eq!(Stats::load(&good).unwrap().images, ds.len());
    let with = |name: &str, t: Tensor| {
        let path = root.join(format!("{name}.safetensors"));
        let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&good).unwrap();
        tensors.retain(|(n, _)| n != name);
        tensors.push((name.to_string(), t));
        Tensor::write_safetensors(&tensors, &path).unwrap();
        Stats::load(&path).map_err(|e| e.to_string())
    };
    assert_eq!(with("images", Tensor::from(5i64)).unwrap().images, 5);
    for (name, t, needle) in [
        ("images", Tensor::from_slice::<i64>(&[]), "`images` holds 0 values"),
        (
            "mean_image",
            Tensor::full([3, 16, 16], f64::NAN, (tch::Kind::Float, tch::Device::Cpu)),
            "`mean_image` holds NaN",
        ),
        (
            "channel_std",
            Tensor::from_slice(&[0.2f32, -0.1, 0.2]),
            "channel_std [0.2, -0.1, 0.2] is negative",
        ),
        // Laid out (S, S, 3) or in 0-255 units: accepted, and every image normalised wrongly.
        (
            "mean_image",
            Tensor::full([16, 16, 3], 0.5, (tch::Kind::Float, tch::Device::Cpu)),
            "`mean_image` has shape [16, 16, 3], expected [3, S, S]",
        ),
        (
            "mean_image",
            Tensor::full([3, 16, 16], 120.0, (tch::Kind::Float, tch::Device::Cpu)),
            "`mean_image` holds values outside [0, 1]",
        ),
        (
            "eigvec",
            Tensor::eye(3, (tch::Kind::Float, tch::Device::Cpu)).view([9]),
            "`eigvec` has shape [9], expected [3, 3]",
        ),
        (
            "eigval",
            Tensor::from_slice(&[0.1f32, 0.1, 0.1, 0.1]),
            "`eigval` has shape [4], expected [3]",
        ),
    ] {
        let e = with(name, t).map(|_| ()).unwrap_err();
        assert!(e.contains(needle) && e.contains(&format!("{name}.safetensors")), "{e}");
    }
    // A channel equal in every pixel (std 0): `alexnet stats` wrote a file its loader refused.
    let flat = with("channel_std", Tensor::from_slice(&[0.2f32, 0.0, 0.2])).unwrap();
    assert_eq!(flat.channel_std, [0.2, 0.0, 0.2]);
}

#[test]
fn commands_with_threads_run_twice_in_one_process() {
    // As the wheel runs them (`_native.cli`, in the Python process): the second `stats` failed
    // with "The global thread pool has already been initialized".
    let src = image_folder("threads-twice", 2, 2);
    let dst = common::tmp("data-threads-twice-out");
    for (i, threads) in ["1", "2"].into_iter().enumerate() {
        let out = dst.join(format!("stats{i}.safetensors"));
        let args = ["alexnet", "stats", "--threads", threads, "--size", "8", "--out"];
        let argv = args
            .iter()
            .map(Into::into)
            .chain([out.clone().into_os_string(), src.as_os_str().into()]);
        assert_eq!(alexnet_rs::cli::run(argv), 0, "stats run {i}");
        assert!(out.is_file());
    }
}

#[test]
fn a_loader_says_why_its_epochs_are_empty() {
    // The reason lived in python/alexnet_rs/data.py, which re-bound the constructor's arguments
    // to guess it; the training loop said its own. The loader knows its batches.
    let root = image_folder("why-empty", 3, 4); // 12 samples
    let ds = Dataset::open(&root, Split::Train).unwrap();
    let why = |batch_size, drop_last, shard, keep_tail| {
        let cfg = LoaderConfig {
            batch_size,
            threads: 1,
            drop_last,
            shard,
            keep_tail,
            ..LoaderConfig::default()
        };
        let tf = Transform::for_preset(Preset::Cnn4, 8, View::Center, None);
        let loader = Loader::new(ds.clone(), tf, cfg).unwrap();
        assert_eq!(loader.why_empty().is_some(), loader.batches_per_epoch() == 0);
        loader.why_empty()
    };
    assert_eq!(why(5, false, None, false), None);
    assert_eq!(why(13, false, None, false), None); // one partial batch
    assert_eq!(why(12, true, None, false), None);
    let full = why(13, true, None, false).unwrap();
    assert!(full.contains("12 samples make no full batch of 13"), "{full}");
    let global = why(5, false, Some((0, 3)), false).unwrap();
    assert!(
        global.contains("12 samples make no full global batch of 5 x 3 ranks"),
        "{global}"
    );
    assert_eq!(why(5, false, Some((2, 3)), true), None); // takes images 10, 11
    let rank = why(4, false, Some((3, 5)), true).unwrap();
    assert!(rank.contains("rank 3 of 5 gets none of the 12 samples"), "{rank}");
    assert_eq!(why(4, false, Some((0, 1)), false), None);
}

#[test]
fn an_image_without_pixels_is_refused_naming_its_size() {
    // A PNM header may say 0 columns or rows: it decoded to an empty image (a (5, 0, 3) tensor
    // from load_image), refused later as "empty image" or not at all.
    let root = common::tmp("data-no-pixels");
    std::fs::create_dir_all(&root).unwrap();
    for (name, header) in [("w0.ppm", "P6\n0 5\n255\n"), ("h0.pgm", "P5\n5 0\n255\n")] {
        let p = root.join(name);
        std::fs::write(&p, header).unwrap();
        let e = alexnet_rs::image::load_rgb(&p).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("pixels: an image without pixels"), "{e}");
    }
}
