//! Fixture tests compare against files written by `tests/pth_fixtures.py` (make test-rust does)
//! (run it first); the rest build pickles and zips by hand.

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
fn logical_bytes(t: &RawTensor) -> Vec<u8> {
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

fn load_bytes(bytes: &[u8]) -> Result<Vec<RawTensor>, String> {
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
    // And every 1000th byte of AlexNet, if it was generated.
    if let Ok(bytes) = std::fs::read(fixtures().join("alexnet.pth")) {
        let tail = bytes.len() - 100_000;
        for cut in (tail..bytes.len()).step_by(1000) {
            assert!(load_bytes(&bytes[..cut]).is_err());
        }
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for name in SMALL_FIXTURES {
        let bytes = fixture_bytes(name);
        let (mut ok, mut err) = (0, 0);
        for i in 0..4000 {
            let mut b = bytes.clone();
            // Half the time aim at the trailer (central directory, EOCD).
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

// -- hand-written pickles ------------------------------------------------

/// Runs a pickle and renders the result like Python's repr.
fn eval(pkl: &[u8]) -> Result<String, String> {
    let mut load = |_: &str| -> Result<Vec<u8>, String> { Err("no storages here".into()) };
    let mut u = Unpickler::new(pkl, &mut load);
    let v = u.run()?;
    Ok(repr(&u, &v, 0))
}

/// Python-like repr; containers nested deeper than 3 print as `...`
/// (pickles may hold cycles).
fn repr(u: &Unpickler, v: &Value, depth: usize) -> String {
    let join = |items: &[Value]| {
        items
            .iter()
            .map(|x| repr(u, x, depth + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if depth > 3 && matches!(v, Value::Tuple(_) | Value::List(_) | Value::Dict(_)) {
        return "...".into();
    }
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => (if *b { "True" } else { "False" }).into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => format!("'{s}'"),
        Value::Tuple(i) => match &u.objs[*i] {
            Obj::Tuple(items) if items.len() == 1 => format!("({},)", join(items)),
            Obj::Tuple(items) => format!("({})", join(items)),
            _ => unreachable!(),
        },
        Value::List(i) => match &u.objs[*i] {
            Obj::List(items) => format!("[{}]", join(items)),
            _ => unreachable!(),
        },
        Value::Dict(i) => match &u.objs[*i] {
            Obj::Dict(items) => {
                let kv: Vec<String> = items
                    .iter()
                    .map(|(k, v)| format!("{}: {}", repr(u, k, depth + 1), repr(u, v, depth + 1)))
                    .collect();
                format!("{{{}}}", kv.join(", "))
            }
            _ => unreachable!(),
        },
        Value::Global(g) => global_name(*g),
        Value::Storage(_) => "<storage>".into(),
        Value::Tensor(_) => "<tensor>".into(),
        Value::Layout => "<layout torch.strided>".into(),
    }
}

#[test]
fn scalar_opcodes() {
    // EMPTY_LIST BINPUT MARK BININT1 BININT2 BININT LONG1(2) LONG1(0) LONG1(8) BINFLOAT NONE NEWTRUE NEWFALSE APPENDS
    let p = b"\x80\x02]q\x00(K\x01M\x00\x01J\xff\xff\xff\xff\x8a\x02\x00\x80\x8a\x00\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7fG?\xf8\x00\x00\x00\x00\x00\x00N\x88\x89e.";
    assert_eq!(
        eval(p).unwrap(),
        "[1, 256, -1, -32768, 0, 9223372036854775807, 1.5, None, True, False]"
    );
    assert!(eval(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.")
        .unwrap_err()
        .contains("64 bits"));
}

#[test]
fn string_and_tuple_opcodes() {
    // BINUNICODE SHORT_BINUNICODE BINUNICODE8 SHORT_BINSTRING BINSTRING, under MARK ... TUPLE
    let p = b"(X\x01\x00\x00\x00a\x8c\x02\xc3\xa9\x8d\x01\x00\x00\x00\x00\x00\x00\x00cU\x01dT\x01\x00\x00\x00et.";
    assert_eq!(eval(p).unwrap(), "('a', '\u{e9}', 'c', 'd', 'e')");
    let p = b"K\x01\x85K\x01K\x02\x86K\x01K\x02K\x03\x87\x87.";
    assert_eq!(eval(p).unwrap(), "((1,), (1, 2), (1, 2, 3))");
    assert_eq!(eval(b").").unwrap(), "()");
    assert!(eval(b"\x8c\x02\xff\xfe.").unwrap_err().contains("UTF-8"));
}

#[test]
fn container_opcodes() {
    // MARK DICT, SETITEM, MARK SETITEMS
    assert_eq!(
        eval(b"(K\x01K\x02dK\x03K\x04s(K\x05K\x06u.").unwrap(),
        "{1: 2, 3: 4, 5: 6}"
    );
    // MARK LIST, APPEND, MARK APPENDS
    assert_eq!(eval(b"(K\x01lK\x02a(K\x03K\x04e.").unwrap(), "[1, 2, 3, 4]");
    // LONG_BINPUT/LONG_BINGET share one list: appending through one copy shows in both.
    assert_eq!(
        eval(b"\x80\x02]r\x00\x01\x00\x00j\x00\x01\x00\x00K\x07a\x86.").unwrap(),
        "([7], [7])"
    );
    // FRAME, MEMOIZE, BINGET (protocol 4 style).
    assert_eq!(
        eval(b"\x80\x04\x95\x07\x00\x00\x00\x00\x00\x00\x00]\x94h\x00K\x09a\x86.").unwrap(),
        "([9], [9])"
    );
    // A dict that contains itself is fine (arena indices, no Rc cycles).
    assert_eq!(eval(b"}q\x00K\x01h\x00s.").unwrap(), "{1: {1: {1: {1: ...}}}}");
}

#[test]
fn whitelisted_globals() {
    assert_eq!(eval(b"ccollections\nOrderedDict\n)R.").unwrap(), "{}");
    assert_eq!(eval(b"ccollections\nOrderedDict\n)\x81.").unwrap(), "{}");
    assert_eq!(eval(b"\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R.").unwrap(), "{}");
    // BUILD on the OrderedDict (state_dict._metadata) is accepted and ignored.
    assert_eq!(
        eval(b"ccollections\nOrderedDict\n)R}X\x09\x00\x00\x00_metadata}sb.").unwrap(),
        "{}"
    );
    assert_eq!(
        eval(b"ctorch.serialization\n_get_layout\nX\x0d\x00\x00\x00torch.strided\x85R.").unwrap(),
        "<layout torch.strided>"
    );
    assert_eq!(eval(b"ctorch\nstrided\n.").unwrap(), "torch.strided");
}

#[test]
fn pickle_errors() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"cos\nsystem\n.",
            "refuses to call `os.system` (only tensors and dicts are read)",
        ),
        (b"cbuiltins\ngetattr\n.", "refuses to call `builtins.getattr`"),
        (b"\x8c\x08builtins\x8c\x04eval\x93.", "refuses to call `builtins.eval`"),
        (
            b"ctorch._utils\n_rebuild_parameter_with_state\n.",
            "refuses to call `torch._utils._rebuild_parameter_with_state`",
        ),
        (
            b"ctorch\nComplexFloatStorage\n.",
            "unsupported tensor storage type `torch.ComplexFloatStorage`",
        ),
        (b"\x80\x06.", "unsupported pickle protocol 6"),
        (b"\x80\x02t.", "MARK missing"),
        (b"\x80\x02a.", "stack underflow"),
        (b"K\x01(\x85.", "stack underflow"),
        (b"K\x01(a.", "stack underflow"),
        (b"K\x01(q\x00.", "stack underflow"),
        (b"h\x05.", "memo has no entry 5"),
        (b"I1\n.", "unsupported pickle opcode 0x49 (INT)"),
        (b"\xff.", "unsupported pickle opcode 0xff"),
        (b"K\x01", "without a STOP"),
        (b"", "without a STOP"),
        (b"X\xff\x00\x00\x00ab.", "truncated"),
        (b"cos\nsyst", "truncated"),
        (b"K\x01K\x02R.", "REDUCE arguments: expected a tuple, found a int"),
        (b"K\x01)R.", "REDUCE calls a int"),
        (b"ctorch\nFloatStorage\n)R.", "is not callable"),
        (b"ccollections\nOrderedDict\nK\x01\x85R.", "called with arguments"),
        (
            b"ctorch\nFloatStorage\n)\x81.",
            "NEWOBJ of `torch storage class for F32` is not supported",
        ),
        (b"K\x01K\x02b.", "BUILD on a int"),
        (b"K\x01K\x02K\x03s.", "SETITEM on a int"),
        (b"(K\x01d.", "odd number"),
        (
            b"ctorch.serialization\n_get_layout\nX\x01\x00\x00\x00x\x85R.",
            "strided layout",
        ),
        (b"K\x01Q.", "persistent id: expected a tuple"),
        (b"X\x07\x00\x00\x00storage\x85Q.", "unsupported persistent id"),
    ];
    for (p, needle) in cases {
        let err = eval(p).unwrap_err();
        assert!(err.contains(needle), "{p:?}: {err:?} lacks {needle:?}");
    }
    // The byte position is reported.
    assert!(eval(b"K\x01cos\nsystem\n.").unwrap_err().starts_with("byte 2: "));
}

#[test]
fn top_level_must_be_a_dict_of_tensors() {
    let mut load = |_: &str| -> Result<Vec<u8>, String> { Err("none".into()) };
    assert_eq!(unpickle_state_dict(b"}.", &mut load).unwrap().len(), 0);
    let err = unpickle_state_dict(b"].", &mut load).unwrap_err();
    assert!(err.contains("holds a list, not a dict of tensors"), "{err}");
    let err = unpickle_state_dict(b"}K\x01K\x02s.", &mut load).unwrap_err();
    assert!(err.contains("a int key"), "{err}");
    let err = unpickle_state_dict(b"}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00b}u.", &mut load).unwrap_err();
    assert!(err.contains("not all tensors: `a` is a int (keys: `a`, `b`)"), "{err}");
}

// -- hand-built tensors --------------------------------------------------

fn int(v: i64) -> Vec<u8> {
    let mut b = vec![LONG1, 8];
    b.extend_from_slice(&v.to_le_bytes());
    b
}
fn string(s: &str) -> Vec<u8> {
    let mut b = vec![BINUNICODE];
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}
fn int_tuple(v: &[i64]) -> Vec<u8> {
    let mut b = vec![MARK];
    for &x in v {
        b.extend(int(x));
    }
    b.push(TUPLE);
    b
}
/// `_rebuild_tensor_v2(<storage key, numel>, offset, size, stride, False, OrderedDict())`.
fn tensor_call(key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut b = b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
    b.extend(string("storage"));
    b.extend_from_slice(b"ctorch\nFloatStorage\n");
    b.extend(string(key));
    b.extend(string("cpu"));
    b.extend(int(numel));
    b.extend_from_slice(b"tQ");
    b.extend(int(offset));
    b.extend(int_tuple(size));
    b.extend(int_tuple(stride));
    b.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    b
}
/// `{name: tensor, ...}` pickle.
fn state_dict_pkl(items: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"\x80\x02}(".to_vec();
    for (name, t) in items {
        b.extend(string(name));
        b.extend_from_slice(t);
    }
    b.extend_from_slice(b"u.");
    b
}
/// Storage "0" holds the f32s 0..6, storage "1" the f32s 10..12.
fn storage_bytes(key: &str) -> Result<Vec<u8>, String> {
    let vals: Vec<f32> = match key {
        "0" => (0..6).map(|x| x as f32).collect(),
        "1" => vec![10.0, 11.0],
        _ => return Err(format!("no storage {key}")),
    };
    Ok(vals.iter().flat_map(|v| v.to_le_bytes()).collect())
}
fn f32s(t: &RawTensor) -> Vec<f32> {
    logical_bytes(t)
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
fn run_sd(pkl: &[u8]) -> Result<Vec<RawTensor>, String> {
    let mut load = storage_bytes;
    unpickle_state_dict(pkl, &mut load)
}

#[test]
fn strides_offsets_and_sharing() {
    let mut calls = 0;
    let mut load = |k: &str| {
        calls += 1;
        storage_bytes(k)
    };
    let pkl = state_dict_pkl(&[
        ("t", tensor_call("0", 6, 1, &[2, 2], &[1, 2])), // elements 1,3 / 2,4
        ("u", tensor_call("0", 6, 0, &[3, 2], &[2, 1])),
        ("z", tensor_call("0", 6, 100, &[0, 5], &[5, 1])), // no elements: any offset
        ("s", tensor_call("0", 6, 5, &[], &[])),           // 0-dim: element 5
        ("e", tensor_call("1", 2, 0, &[3, 2], &[0, 1])),   // stride-0 broadcast
    ]);
    let ts = unpickle_state_dict(&pkl, &mut load).unwrap();
    assert_eq!(calls, 2, "each storage entry is read once");
    assert_eq!(f32s(&ts[0]), [1.0, 3.0, 2.0, 4.0]);
    assert_eq!(f32s(&ts[1]), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(f32s(&ts[2]), [] as [f32; 0]);
    assert_eq!(f32s(&ts[3]), [5.0]);
    assert_eq!(f32s(&ts[4]), [10.0, 11.0, 10.0, 11.0, 10.0, 11.0]);
    assert!(Arc::ptr_eq(&ts[0].data, &ts[1].data) && Arc::ptr_eq(&ts[0].data, &ts[3].data));
    assert!(!Arc::ptr_eq(&ts[0].data, &ts[4].data));
    assert!(ts.iter().all(|t| t.dtype == Dtype::F32 && !t.requires_grad));
}

#[test]
fn parameters_and_repeated_keys() {
    let mut param = b"ctorch._utils\n_rebuild_parameter\n(".to_vec();
    param.extend(tensor_call("1", 2, 0, &[2], &[1]));
    param.extend_from_slice(b"\x88ccollections\nOrderedDict\n)RtR");
    let pkl = state_dict_pkl(&[
        ("a", tensor_call("0", 6, 0, &[6], &[1])),
        ("p", param),
        ("a", tensor_call("0", 6, 2, &[1], &[1])),
    ]);
    let ts = run_sd(&pkl).unwrap();
    assert_eq!(ts.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "p"]);
    assert_eq!(
        f32s(&ts[0]),
        [2.0],
        "a repeated key keeps its place and takes the last value"
    );
    assert!(ts[1].requires_grad);
    assert_eq!(f32s(&ts[1]), [10.0, 11.0]);
}

#[test]
fn tensor_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            tensor_call("0", 6, 3, &[2, 2], &[2, 1]),
            "reaches element 6 of a storage of 6 elements",
        ),
        (tensor_call("0", 6, 6, &[1], &[1]), "reaches element 6"),
        (
            tensor_call("0", 7, 0, &[1], &[1]),
            "storage `0` holds 24 bytes, but the pickle says 7 elements of F32",
        ),
        (tensor_call("0", -1, 0, &[1], &[1]), "holds 24 bytes"),
        (tensor_call("0", 6, 0, &[2, 3], &[1]), "differ in length"),
        (tensor_call("0", 6, 0, &[2], &[-1]), "negative"),
        (tensor_call("0", 6, -1, &[2], &[1]), "negative"),
        (tensor_call("0", 6, 0, &[i64::MAX, 2], &[1, 1]), "overflows"),
        (tensor_call("0", 6, 0, &[2, 2], &[i64::MAX, 1]), "overflows"),
        (tensor_call("0", 6, 0, &[1; 65], &[1; 65]), "65 dimensions"),
        (tensor_call("9", 6, 0, &[1], &[1]), "no storage 9"),
    ];
    for (t, needle) in cases {
        let err = run_sd(&state_dict_pkl(&[("x", t)])).unwrap_err();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
    // Wrong argument shapes.
    let err = run_sd(b"ctorch._utils\n_rebuild_tensor_v2\n(K\x01tR.").unwrap_err();
    assert!(err.contains("_rebuild_tensor_v2 expects"), "{err}");
    let err = run_sd(b"ctorch._utils\n_rebuild_parameter\n(K\x01\x88}tR.").unwrap_err();
    assert!(err.contains("_rebuild_parameter expects"), "{err}");
}

// -- hand-built zips -----------------------------------------------------

/// A minimal zip writer (STORED entries), optionally putting sizes and
/// offsets in zip64 extra fields and writing the zip64 EOCD records.
fn make_zip(entries: &[(&str, &[u8])], zip64: bool, method: u16) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, v: u64, n: usize) {
        out.extend_from_slice(&v.to_le_bytes()[..n]);
    }
    let (mut out, mut cd) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let (offset, crc, n) = (out.len() as u64, u64::from(crc32_of(data)), data.len() as u64);
        for (v, w) in [
            (u64::from(LOCAL_SIG), 4),
            (20, 2),
            (0, 2),
            (u64::from(method), 2),
            (0, 4),
            (crc, 4),
            (n, 4),
            (n, 4),
        ] {
            put(&mut out, v, w);
        }
        put(&mut out, name.len() as u64, 2);
        put(&mut out, 0, 2);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        let big = |v: u64| if zip64 { 0xFFFF_FFFF } else { v };
        for (v, w) in [
            (u64::from(CENTRAL_SIG), 4),
            (45, 2),
            (45, 2),
            (0, 2),
            (u64::from(method), 2),
            (0, 4),
            (crc, 4),
        ] {
            put(&mut cd, v, w);
        }
        for (v, w) in [
            (big(n), 4),
            (big(n), 4),
            (name.len() as u64, 2),
            (if zip64 { 28 } else { 0 }, 2),
        ] {
            put(&mut cd, v, w);
        }
        for (v, w) in [(0, 2), (0, 2), (0, 2), (0, 4), (big(offset), 4)] {
            put(&mut cd, v, w);
        }
        cd.extend_from_slice(name.as_bytes());
        if zip64 {
            for (v, w) in [(1, 2), (24, 2), (n, 8), (n, 8), (offset, 8)] {
                put(&mut cd, v, w);
            }
        }
    }
    let (cd_offset, cd_size, count) = (out.len() as u64, cd.len() as u64, entries.len() as u64);
    out.extend(cd);
    if zip64 {
        let eocd64 = out.len() as u64;
        for (v, w) in [
            (u64::from(EOCD64_SIG), 4),
            (44, 8),
            (45, 2),
            (45, 2),
            (0, 4),
            (0, 4),
            (count, 8),
            (count, 8),
        ] {
            put(&mut out, v, w);
        }
        for (v, w) in [
            (cd_size, 8),
            (cd_offset, 8),
            (u64::from(EOCD64_LOCATOR_SIG), 4),
            (0, 4),
            (eocd64, 8),
            (1, 4),
        ] {
            put(&mut out, v, w);
        }
    }
    let small = |v: u64, max: u64| if zip64 { max } else { v };
    for (v, w) in [
        (u64::from(EOCD_SIG), 4),
        (0, 2),
        (0, 2),
        (small(count, 0xFFFF), 2),
        (small(count, 0xFFFF), 2),
    ] {
        put(&mut out, v, w);
    }
    for (v, w) in [
        (small(cd_size, 0xFFFF_FFFF), 4),
        (small(cd_offset, 0xFFFF_FFFF), 4),
        (0, 2),
    ] {
        put(&mut out, v, w);
    }
    out
}

fn storage0() -> Vec<u8> {
    storage_bytes("0").unwrap()
}

#[test]
fn zip_plain_and_zip64() {
    let pkl = state_dict_pkl(&[("w", tensor_call("0", 6, 0, &[3, 2], &[1, 3]))]);
    let s0 = storage0();
    for zip64 in [false, true] {
        let z = make_zip(
            &[
                ("arch/data.pkl", &pkl),
                ("arch/byteorder", b"little"),
                ("arch/data/0", &s0),
            ],
            zip64,
            0,
        );
        let ts = load_bytes(&z).unwrap_or_else(|e| panic!("zip64={zip64}: {e}"));
        assert_eq!(f32s(&ts[0]), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // No byteorder entry (PyTorch < 1.10): little-endian assumed.
        let z = make_zip(&[("arch/data.pkl", &pkl), ("arch/data/0", &s0)], zip64, 0);
        assert!(load_bytes(&z).is_ok());
    }
    // A zip64 EOCD that is needed but missing: drop the 76 bytes of records.
    let z = make_zip(&[("arch/data.pkl", &pkl), ("arch/data/0", &s0)], true, 0);
    let mut cut = z[..z.len() - 22 - 76].to_vec();
    cut.extend_from_slice(&z[z.len() - 22..]);
    assert!(load_bytes(&cut)
        .unwrap_err()
        .contains("zip64 end-of-central-directory record is missing"));
}

#[test]
fn zip_errors() {
    let pkl = state_dict_pkl(&[("w", tensor_call("0", 6, 0, &[6], &[1]))]);
    let s0 = storage0();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (make_zip(&[("arch/data.pkl", &pkl)], false, 0), "no entry `arch/data/0`"),
        (
            make_zip(&[("arch/data.pkl", &pkl), ("arch/data/0", &s0)], false, 8),
            "is compressed (deflate)",
        ),
        (make_zip(&[("data.pkl", &pkl)], false, 0), "not inside a top folder"),
        (make_zip(&[("arch/other.pkl", &pkl)], false, 0), "no `arch/data.pkl`"),
        (
            make_zip(&[("arch/constants.pkl", b""), ("arch/code/x.py", b"")], false, 0),
            "TorchScript",
        ),
        (
            make_zip(&[("arch/data.pkl", &pkl), ("arch/byteorder", b"big")], false, 0),
            "big-endian",
        ),
        (
            make_zip(&[("arch/data.pkl", &pkl), ("arch/byteorder", b"middle")], false, 0),
            "unknown byteorder",
        ),
        (make_zip(&[], false, 0), "empty"),
        (Vec::new(), "not a zip archive"),
        (
            b"hello world, this is not a zip file at all".to_vec(),
            "not a zip archive",
        ),
        (
            b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec(),
            "_use_new_zipfile_serialization=True",
        ),
        (b"PK\x03\x04 and then nothing".to_vec(), "truncated"),
    ];
    for (z, needle) in cases {
        let err = load_bytes(&z).unwrap_err();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
    // A flipped data byte is caught by the CRC.
    let mut z = make_zip(&[("arch/data.pkl", &pkl), ("arch/data/0", &s0)], false, 0);
    let at = z.windows(4).position(|w| w == 2f32.to_le_bytes()).unwrap();
    z[at + 3] ^= 0x40;
    assert!(load_bytes(&z)
        .unwrap_err()
        .contains("entry `arch/data/0` is corrupt (CRC-32 mismatch)"));
}
