//! Hand-written pickles and hand-built tensors (no fixture files).

use super::objects::*;
use super::opcodes::*;
use super::tests::logical_bytes;
use super::*;

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
    assert!(
        err.contains("not all tensors: `a` is a int (the file's keys: `a`, `b`)"),
        "{err}"
    );
}

// -- hand-built tensors --------------------------------------------------

pub(super) fn int(v: i64) -> Vec<u8> {
    let mut b = vec![LONG1, 8];
    b.extend_from_slice(&v.to_le_bytes());
    b
}
pub(super) fn string(s: &str) -> Vec<u8> {
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
/// BINPERSID of `('storage', <module>.FloatStorage, key, location, numel<, extra>)`, where `extra`
/// is the pickled tail of a legacy id (`N` for its `None`) or empty.
fn persistent_id(module: &str, key: &str, location: &str, numel: i64, extra: &[u8]) -> Vec<u8> {
    typed_persistent_id(&format!("{module}\nFloatStorage"), key, location, numel, extra)
}
/// [`persistent_id`] of the storage class `class` (`module\nName`).
fn typed_persistent_id(class: &str, key: &str, location: &str, numel: i64, extra: &[u8]) -> Vec<u8> {
    let mut b = b"(".to_vec();
    b.extend(string("storage"));
    b.extend_from_slice(format!("c{class}\n").as_bytes());
    b.extend(string(key));
    b.extend(string(location));
    b.extend(int(numel));
    b.extend_from_slice(extra);
    b.extend_from_slice(b"tQ");
    b
}
/// `_rebuild_tensor_v2(<storage key, numel>, offset, size, stride, False, OrderedDict())`.
pub(super) fn tensor_call(key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut b = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    b.extend(persistent_id("torch", key, "cpu", numel, b""));
    b.extend(int(offset));
    b.extend(int_tuple(size));
    b.extend(int_tuple(stride));
    b.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    b
}
/// `{name: tensor, ...}` pickle.
pub(super) fn state_dict_pkl(items: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"\x80\x02}(".to_vec();
    for (name, t) in items {
        b.extend(string(name));
        b.extend_from_slice(t);
    }
    b.extend_from_slice(b"u.");
    b
}
/// Storage "0" holds the f32s 0..6, storage "1" the f32s 10..12.
pub(super) fn storage_bytes(key: &str) -> Result<Vec<u8>, String> {
    let vals: Vec<f32> = match key {
        "0" => (0..6).map(|x| x as f32).collect(),
        "1" => vec![10.0, 11.0],
        _ => return Err(format!("no storage {key}")),
    };
    Ok(vals.iter().flat_map(|v| v.to_le_bytes()).collect())
}
pub(super) fn f32s(t: &RawTensor) -> Vec<f32> {
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
        (tensor_call("0", -1, 0, &[1], &[1]), "storage `0` has -1 elements"),
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

/// What older files hold (legacy.rs reads them): `_rebuild_tensor` (PyTorch < 0.4), the
/// legacy persistent id `(..., numel, None)` naming a CUDA storage, and Python 2's
/// `OrderedDict([[key, value], ...])`.
#[test]
fn older_forms() {
    let pid = |view: &[u8]| persistent_id("torch.cuda", "0", "cuda:0", 6, view);
    let v1 = |args: &[u8]| {
        let mut b = b"ctorch._utils\n_rebuild_tensor\n(".to_vec();
        b.extend_from_slice(args);
        b.extend_from_slice(b"tR");
        b
    };
    let mut args = pid(b"N");
    args.extend(int(2));
    args.extend(int_tuple(&[2]));
    args.extend(int_tuple(&[1]));
    let py2_dict = |items: &[(&str, Vec<u8>)]| {
        let mut b = b"\x80\x02ccollections\nOrderedDict\n(".to_vec();
        for (k, v) in items {
            b.push(MARK);
            b.extend(string(k));
            b.extend_from_slice(v);
            b.push(LIST);
        }
        b.extend_from_slice(b"l\x85R.");
        b
    };
    let ts = run_sd(&py2_dict(&[
        ("w", v1(&args)),
        ("u", tensor_call("1", 2, 0, &[2], &[1])),
    ]))
    .unwrap();
    assert_eq!(ts.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["w", "u"]);
    assert_eq!(f32s(&ts[0]), [2.0, 3.0]);
    assert!(!ts[0].requires_grad);
    assert_eq!(f32s(&ts[1]), [10.0, 11.0]);

    let mut view = b"(".to_vec();
    view.extend(string("0"));
    view.extend(int(0));
    view.extend(int(6));
    view.push(TUPLE);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            py2_dict(&[("w", v1(&pid(&view)))]),
            "a storage view (written by PyTorch < 0.4)",
        ),
        (py2_dict(&[("w", v1(&int(1)))]), "_rebuild_tensor expects (storage"),
        (
            b"ccollections\nOrderedDict\n(K\x01l\x85R.".to_vec(),
            "an item is a int, not a pair",
        ),
        (
            b"ccollections\nOrderedDict\n((K\x01ll\x85R.".to_vec(),
            "not a (key, value) pair",
        ),
    ];
    for (pkl, needle) in cases {
        let err = run_sd(&pkl).unwrap_err();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}

/// One storage key named with two element types: torch keeps the first type's storage, this
/// reader read the bytes as each reference's type (a float32 0.5 became a float64 3e-5).
/// Refused, as a damaged or hand-made file.
#[test]
fn a_storage_named_with_two_types_is_refused() {
    let mut double = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    double.extend(typed_persistent_id("torch\nDoubleStorage", "0", "cpu", 3, b""));
    double.extend(int(0));
    double.extend(int_tuple(&[3]));
    double.extend(int_tuple(&[1]));
    double.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    let pkl = state_dict_pkl(&[("a", tensor_call("0", 6, 0, &[6], &[1])), ("b", double)]);
    let err = run_sd(&pkl).unwrap_err();
    assert!(err.contains("storage `0` is named as F32 and as F64"), "{err}");
}

/// Python 2's `OrderedDict(list)` on a memoised list, called again and again: each call copied
/// the whole list (45 KB of pickle took 1.3 GB). A list of pairs makes one dict.
#[test]
fn one_list_of_pairs_makes_one_ordered_dict() {
    // MARK ( 'k' 'v' ) pairs x 3 in a memoised list (q\x01), then OrderedDict(list).
    let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00(".to_vec();
    for _ in 0..3 {
        p.push(MARK);
        p.extend(string("k"));
        p.extend(string("v"));
        p.push(TUPLE);
    }
    p.extend_from_slice(b"lq\x01\x85R");
    assert_eq!(
        eval(&[&p[..], b"."].concat()).unwrap(),
        "{'k': 'v', 'k': 'v', 'k': 'v'}"
    );
    // (OrderedDict(list), OrderedDict(list))
    let err = eval(&[&p[..], b"h\x00h\x01\x85R\x86."].concat()).unwrap_err();
    assert!(
        err.contains("collections.OrderedDict: one list of pairs passed twice"),
        "{err}"
    );
}
