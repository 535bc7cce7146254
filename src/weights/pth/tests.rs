//! Fixture tests: files written by `tests/pth_fixtures.py` into target/pth-fixtures (make
//! test-rust runs it first); fuzzing. tests_pickle.rs and tests_zip.rs build their inputs by hand.

use super::opcodes::*;
use super::*;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pth-fixtures")
}

/// Fixture stems with the given extension, sorted.
fn fixture_stems(ext: &str) -> Vec<String> {
    let dir = fixtures();
    let mut stems: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `python tests/pth_fixtures.py` (make test-rust does) first",
                dir.display()
            )
        })
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == ext).then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    stems.sort();
    assert!(
        !stems.is_empty(),
        "no *.{ext} in {}; run `python tests/pth_fixtures.py` (make test-rust does)",
        dir.display()
    );
    stems
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    let p = fixtures().join(name);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `python tests/pth_fixtures.py` (make test-rust does)",
            p.display()
        )
    })
}

/// The tensor's elements in row-major order, gathered through
/// shape/strides/offset (so a misread stride or offset changes the bytes).
pub(super) fn logical_bytes(t: &RawTensor) -> Vec<u8> {
    let es = t.dtype.size();
    let numel: i64 = t.shape.iter().product();
    let mut out = Vec::with_capacity(numel as usize * es);
    if numel == 0 {
        return out;
    }
    let mut idx = vec![0i64; t.shape.len()];
    loop {
        let el = t.storage_offset + idx.iter().zip(&t.strides).map(|(i, s)| i * s).sum::<i64>();
        let b = el as usize * es;
        out.extend_from_slice(&t.data[b..b + es]);
        let mut d = t.shape.len();
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(chunk[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ints(s: &str) -> Vec<i64> {
    if s.is_empty() {
        vec![]
    } else {
        s.split(',').map(|x| x.parse().unwrap()).collect()
    }
}

#[test]
fn sha256_matches_known_digests() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(crc32_of(b"123456789"), 0xCBF4_3926);
}

/// Every `fixtures/<name>.expected`: names in file order, dtype, shape,
/// strides, offset, requires_grad, storage sharing and the logical contents.
#[test]
fn fixtures_load_as_expected() {
    for stem in fixture_stems("expected") {
        let path = fixtures().join(format!("{stem}.pth"));
        let start = std::time::Instant::now();
        let tensors = read_state_dict(&path).unwrap_or_else(|e| panic!("{e}"));
        let expected = std::fs::read_to_string(fixtures().join(format!("{stem}.expected"))).unwrap();
        let rows: Vec<Vec<&str>> = expected.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(tensors.len(), rows.len(), "{stem}: tensor count");
        for (t, row) in tensors.iter().zip(&rows) {
            let [name, dtype, shape, strides, offset, rg, group, sha, hexdata] = row[..] else {
                panic!("{stem}: bad expected row {row:?}")
            };
            let ctx = format!("{stem}: `{name}`");
            assert_eq!(t.name, name, "{ctx}: order");
            assert_eq!(format!("{:?}", t.dtype), dtype, "{ctx}: dtype");
            assert_eq!(t.shape, ints(shape), "{ctx}: shape");
            assert_eq!(t.strides, ints(strides), "{ctx}: strides");
            assert_eq!(t.storage_offset, offset.parse::<i64>().unwrap(), "{ctx}: offset");
            assert_eq!(t.requires_grad, rg == "1", "{ctx}: requires_grad");
            let bytes = logical_bytes(t);
            if hexdata != "-" {
                assert_eq!(hex(&bytes), hexdata, "{ctx}: contents");
            }
            assert_eq!(sha256_hex(&bytes), sha, "{ctx}: contents (sha256)");
            // Same storage in the file <=> same Arc here.
            for (u, urow) in tensors.iter().zip(&rows) {
                assert_eq!(
                    Arc::ptr_eq(&t.data, &u.data),
                    group == urow[6],
                    "{ctx}: storage shared with `{}`?",
                    u.name
                );
            }
        }
        println!("{stem}: {} tensors ok in {:?}", tensors.len(), start.elapsed());
    }
}

/// Every `fixtures/<name>.error`: an Err naming the file and containing
/// each listed substring.
#[test]
fn fixtures_are_refused() {
    for stem in fixture_stems("error") {
        let path = fixtures().join(format!("{stem}.pth"));
        let err = match read_state_dict(&path) {
            Ok(t) => panic!("{stem}: loaded {} tensors, expected an error", t.len()),
            Err(e) => e,
        };
        println!("{stem}: {err}");
        assert!(
            err.starts_with(&format!("{}: ", path.display())),
            "{stem}: error does not name the file: {err}"
        );
        let needles = std::fs::read_to_string(fixtures().join(format!("{stem}.error"))).unwrap();
        for needle in needles.lines().filter(|l| !l.is_empty()) {
            assert!(err.contains(needle), "{stem}: error lacks {needle:?}: {err}");
        }
    }
}

#[test]
fn missing_file_is_an_error() {
    let err = read_state_dict(Path::new("/nonexistent/x.pth")).unwrap_err();
    assert!(err.starts_with("/nonexistent/x.pth: cannot open"), "{err}");
}

pub(super) fn load_bytes(bytes: &[u8]) -> Result<Vec<RawTensor>, String> {
    read_archive(std::io::Cursor::new(bytes))
}

/// xorshift64*: deterministic randomness without a crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SMALL_FIXTURES: [&str; 4] = ["small.pth", "small_proto4.pth", "small_pyzip.pth", "net.pth"];
const LEGACY_FIXTURES: [&str; 4] = ["legacy.pth", "legacy_proto4.pth", "legacy_v1.pth", "legacy_net.pth"];

#[test]
fn truncated_files_are_errors_not_panics() {
    for name in SMALL_FIXTURES {
        let bytes = fixture_bytes(name);
        assert!(load_bytes(&bytes).is_ok(), "{name}");
        // Plain truncation (every byte, a superset of every 1000th).
        for cut in 0..bytes.len() {
            let r = load_bytes(&bytes[..cut]);
            assert!(r.is_err(), "{name} cut at {cut} loaded");
        }
        // Truncation that keeps the zip trailer: the central directory now
        // points past the end, or into the wrong bytes.
        let eocd = bytes.windows(4).rposition(|w| w == EOCD_SIG.to_le_bytes()).unwrap();
        let cd_offset = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        for cut in (0..cd_offset).step_by(7) {
            let mut b = bytes[..cut].to_vec();
            b.extend_from_slice(&bytes[cd_offset..]);
            let _ = load_bytes(&b);
        }
    }
    // A legacy file has no trailer: every prefix must be refused.
    for name in LEGACY_FIXTURES {
        let bytes = fixture_bytes(name);
        assert!(load_bytes(&bytes).is_ok(), "{name}");
        for cut in 0..bytes.len() {
            assert!(load_bytes(&bytes[..cut]).is_err(), "{name} cut at {cut} loaded");
        }
    }
    // And every 1000th byte of AlexNet's last 100 kB, if it was generated.
    for name in ["alexnet.pth", "legacy_alexnet.pth"] {
        if let Ok(bytes) = std::fs::read(fixtures().join(name)) {
            let tail = bytes.len() - 100_000;
            for cut in (tail..bytes.len()).step_by(1000) {
                assert!(load_bytes(&bytes[..cut]).is_err(), "{name} cut at {cut} loaded");
            }
        }
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for name in SMALL_FIXTURES.into_iter().chain(LEGACY_FIXTURES) {
        let bytes = fixture_bytes(name);
        let (mut ok, mut err) = (0, 0);
        for i in 0..4000 {
            let mut b = bytes.clone();
            // Half the time aim at the end (a zip's central directory and EOCD).
            let lo = if i % 2 == 0 { 0 } else { bytes.len().saturating_sub(800) };
            for _ in 0..1 + rng.below(4) {
                let at = lo + rng.below(bytes.len() - lo);
                b[at] ^= 1 + rng.below(255) as u8;
            }
            match load_bytes(&b) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
        println!("{name}: flips -> {ok} Ok, {err} Err");
        assert!(err > 0);
    }
}

/// The zip layer's CRC check stops most flips before they reach the
/// pickle, so fuzz the unpickler directly too.
#[test]
fn pickle_fuzz_never_panics() {
    let mut rng = Rng(12345);
    for name in SMALL_FIXTURES {
        let bytes = fixture_bytes(name);
        let mut zip = Zip::open(std::io::Cursor::new(&bytes[..])).unwrap();
        let prefix = zip.entries[0].name.split('/').next().unwrap().to_string();
        let pkl = zip.read(&format!("{prefix}/data.pkl")).unwrap();
        let mut load = |key: &str| zip.read(&format!("{prefix}/data/{key}"));
        assert!(unpickle_state_dict(&pkl, &mut load).is_ok());
        for cut in 0..pkl.len() {
            assert!(
                unpickle_state_dict(&pkl[..cut], &mut load).is_err(),
                "{name}: pickle cut at {cut} loaded"
            );
        }
        for _ in 0..5000 {
            let mut p = pkl.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(p.len());
                p[at] ^= 1 + rng.below(255) as u8;
            }
            let _ = unpickle_state_dict(&p, &mut load);
        }
    }
    // Opcode soup: random sequences of the supported opcodes with small
    // arguments, to stress the stack/mark/memo bookkeeping.
    let alphabet: &[u8] = &[
        MARK,
        STOP,
        BININT1,
        NONE,
        REDUCE,
        APPEND,
        BUILD,
        DICT,
        EMPTY_DICT,
        APPENDS,
        BINGET,
        LIST,
        EMPTY_LIST,
        BINPUT,
        SETITEM,
        TUPLE,
        EMPTY_TUPLE,
        SETITEMS,
        NEWOBJ,
        TUPLE1,
        TUPLE2,
        TUPLE3,
        NEWTRUE,
        NEWFALSE,
        MEMOIZE,
        BINPERSID,
        STACK_GLOBAL,
        SHORT_BINUNICODE,
    ];
    let mut fail = |_: &str| -> Result<Vec<u8>, String> { Ok(vec![0; 24]) };
    for _ in 0..20000 {
        let mut p = vec![PROTO, 2];
        for _ in 0..rng.below(60) {
            let op = alphabet[rng.below(alphabet.len())];
            p.push(op);
            match op {
                BININT1 | BINGET | BINPUT => p.push(rng.below(4) as u8),
                SHORT_BINUNICODE => {
                    let s: &[u8] = [&b"storage"[..], b"0", b"collections", b"OrderedDict", b"cpu"][rng.below(5)];
                    p.push(s.len() as u8);
                    p.extend_from_slice(s);
                }
                _ => {}
            }
        }
        p.push(STOP);
        let _ = unpickle_state_dict(&p, &mut fail);
    }
}
