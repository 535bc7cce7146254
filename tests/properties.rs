//! Property tests (proptest) on damaged real files: the image decoder on the sample images
//! `make setup` fetches (JPEG, PNG, GIF, TIFF) plus BMP and PPM made from them, and the
//! checkpoint loader on a checkpoint written here, each file truncated, bit-flipped, overwritten
//! or grown. Whatever the damage: no panic, no crash, and either a valid result or an error
//! naming the file. The seed is fixed (reproducible in CI); `PROPTEST_RNG_SEED=<n>` explores
//! others, `PROPTEST_CASES=<n>` runs more cases.
use alexnet_rs::checkpoint;
use alexnet_rs::image::{decode_rgb, MAX_PIXELS};
use alexnet_rs::{model, Config, Error, Preset};
use proptest::prelude::*;
use proptest::test_runner::{Config as Runner, RngSeed};
use std::path::Path;
use std::sync::OnceLock;

mod common;

/// One kind of damage; positions are taken modulo the file's length.
#[derive(Clone, Debug)]
enum Damage {
    /// Keep this many thousandths of the file.
    Truncate(usize),
    /// Flip bit `b` of byte `i`, for each pair.
    Flip(Vec<(usize, u8)>),
    /// Write these bytes over the file from a position.
    Overwrite(usize, Vec<u8>),
    /// Insert these bytes at a position.
    Insert(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    // Half of the positions fall in the first 512 bytes, where headers are.
    let pos = prop_oneof![0usize..512, any::<usize>()];
    prop_oneof![
        (0usize..1000).prop_map(Damage::Truncate),
        prop::collection::vec((pos.clone(), 0u8..8), 1..12).prop_map(Damage::Flip),
        (pos.clone(), prop::collection::vec(any::<u8>(), 1..48)).prop_map(|(p, b)| Damage::Overwrite(p, b)),
        (pos, prop::collection::vec(any::<u8>(), 1..48)).prop_map(|(p, b)| Damage::Insert(p, b)),
    ]
}

fn apply(d: &Damage, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let n = bytes.len().max(1);
    match d {
        Damage::Truncate(k) => out.truncate(bytes.len() * k / 1000),
        Damage::Flip(flips) => flips.iter().for_each(|&(i, b)| out[i % n] ^= 1 << b),
        Damage::Overwrite(p, b) => {
            let start = p % n;
            let end = (start + b.len()).min(out.len());
            out[start..end].copy_from_slice(&b[..end - start]);
        }
        Damage::Insert(p, b) => {
            let at = p % n;
            out.splice(at..at, b.iter().copied());
        }
    }
    out
}

fn runner(cases: u32) -> Runner {
    Runner {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        rng_seed: std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(RngSeed::Fixed(0x5eed), RngSeed::Fixed),
        failure_persistence: None,
        ..Runner::default()
    }
}

/// (name, bytes) of the sample images: real files, and BMP/PPM encodings of one of them.
fn images() -> &'static [(String, Vec<u8>)] {
    static IMAGES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/data");
        let names = [
            "foolbox/imagenet_00_243.jpg",
            "skimage/chessboard_GRAY.png",
            "skimage/logo.png",
            "skimage/no_time_for_that_tiny.gif",
            "skimage/multipage_rgb.tif",
            "skimage/retina.jpg",
        ];
        let mut out: Vec<(String, Vec<u8>)> = names
            .iter()
            .map(|n| {
                let bytes = std::fs::read(data.join(n))
                    .unwrap_or_else(|e| panic!("{n}: {e}: the sample images come with `make setup`"));
                (n.to_string(), bytes)
            })
            .collect();
        let small = image::imageops::thumbnail(&decode_rgb(Path::new(names[0]), &out[0].1).unwrap(), 48, 40);
        for (name, format) in [
            ("made.bmp", image::ImageFormat::Bmp),
            ("made.ppm", image::ImageFormat::Pnm),
        ] {
            let mut bytes = std::io::Cursor::new(Vec::new());
            small.write_to(&mut bytes, format).unwrap();
            out.push((name.to_string(), bytes.into_inner()));
        }
        out
    })
}

proptest! {
    #![proptest_config(runner(256))]

    #[test]
    fn the_image_decoder_turns_any_damage_into_an_image_or_a_clear_error(
        which in 0usize..8,
        d in damage(),
    ) {
        let (name, bytes) = &images()[which % images().len()];
        let damaged = apply(&d, bytes);
        let result = std::panic::catch_unwind(|| decode_rgb(Path::new(name), &damaged));
        prop_assert!(result.is_ok(), "{name}: the decoder panicked through decode_rgb on {d:?}");
        match result.unwrap() {
            Ok(img) => {
                let (w, h) = img.dimensions();
                prop_assert!(w > 0 && h > 0 && u64::from(w) * u64::from(h) <= MAX_PIXELS);
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(matches!(e, Error::File { .. }), "{msg}");
                prop_assert!(msg.starts_with(name.as_str()) && msg.len() > name.len() + 2, "{msg}");
            }
        }
    }
}

/// A small real checkpoint (cnn4, 10 classes) with non-zero momentum, written once and kept in
/// memory: the bytes of each of `FILES`.
fn pristine() -> &'static [Vec<u8>] {
    static FILES_BYTES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES_BYTES.get_or_init(|| {
        let run = common::tmp("prop-pristine");
        let cfg = Config::preset(Preset::Cnn4, 10).unwrap();
        tch::manual_seed(4);
        let w = model::init_whole(&cfg).unwrap();
        checkpoint::save_weights(&run, Preset::Cnn4, 32, &w, None).unwrap();
        let mut c = checkpoint::load(&run).unwrap();
        c.state.step = 7;
        let v = w.iter().map(|(k, t)| (k.clone(), t.randn_like() * 0.01)).collect();
        let dir = checkpoint::save(&run, &c.state, &w, &v, 1).unwrap();
        FILES.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect()
    })
}

const FILES: [&str; 3] = ["weights.safetensors", "optimizer.safetensors", "state.json"];

proptest! {
    #![proptest_config(runner(192))]

    #[test]
    fn the_checkpoint_loader_turns_any_damage_into_a_checkpoint_or_a_clear_error(
        which in 0usize..3,
        d in damage(),
    ) {
        let case = common::tmp(&format!("prop-ckpt-{:?}", std::thread::current().id()));
        std::fs::create_dir_all(&case).unwrap();
        for (i, (f, bytes)) in FILES.iter().zip(pristine()).enumerate() {
            let bytes = if i == which { apply(&d, bytes) } else { bytes.clone() };
            std::fs::write(case.join(f), bytes).unwrap();
        }
        let result = std::panic::catch_unwind(|| checkpoint::load(&case));
        prop_assert!(result.is_ok(), "{}: the loader panicked on {d:?}", FILES[which]);
        match result.unwrap() {
            // Undamaged where it matters (e.g. a changed weight value): shapes, dtype and
            // finiteness were checked by the loader.
            Ok(c) => prop_assert_eq!(c.state.format, checkpoint::FORMAT),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(matches!(e, Error::File { .. } | Error::Io { .. }), "{msg}");
                prop_assert!(FILES.iter().any(|f| msg.contains(f)), "{msg}");
            }
        }
    }
}
