//! Hand-built files: zip archives (plain and zip64 layouts) and the legacy format, and every way
//! they can be broken.

use super::opcodes::STOP;
use super::tests::load_bytes;
use super::tests_pickle::{f32s, int, state_dict_pkl, storage_bytes, string, tensor_call};
use super::*;

// -- hand-built zips -----------------------------------------------------

/// Appends each `(value, width)` field little-endian, `width` bytes wide.
fn put(out: &mut Vec<u8>, fields: &[(u64, usize)]) {
    for &(v, n) in fields {
        out.extend_from_slice(&v.to_le_bytes()[..n]);
    }
}

/// A minimal zip writer (STORED entries), optionally putting sizes and
/// offsets in zip64 extra fields and writing the zip64 EOCD records.
fn make_zip(entries: &[(&str, &[u8])], zip64: bool, method: u16) -> Vec<u8> {
    let (mut out, mut cd) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let (offset, crc, n) = (out.len() as u64, u64::from(crc32_of(data)), data.len() as u64);
        let name_len = name.len() as u64;
        let local = [
            (u64::from(LOCAL_SIG), 4),
            (20, 2),
            (0, 2),
            (u64::from(method), 2),
            (0, 4),
            (crc, 4),
        ];
        put(&mut out, &local);
        put(&mut out, &[(n, 4), (n, 4), (name_len, 2), (0, 2)]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        let big = |v: u64| if zip64 { 0xFFFF_FFFF } else { v };
        let central = [
            (u64::from(CENTRAL_SIG), 4),
            (45, 2),
            (45, 2),
            (0, 2),
            (u64::from(method), 2),
            (0, 4),
        ];
        put(&mut cd, &central);
        put(
            &mut cd,
            &[
                (crc, 4),
                (big(n), 4),
                (big(n), 4),
                (name_len, 2),
                (if zip64 { 28 } else { 0 }, 2),
            ],
        );
        put(&mut cd, &[(0, 2), (0, 2), (0, 2), (0, 4), (big(offset), 4)]);
        cd.extend_from_slice(name.as_bytes());
        if zip64 {
            put(&mut cd, &[(1, 2), (24, 2), (n, 8), (n, 8), (offset, 8)]);
        }
    }
    let (cd_offset, cd_size, count) = (out.len() as u64, cd.len() as u64, entries.len() as u64);
    out.extend(cd);
    if zip64 {
        let eocd64 = out.len() as u64;
        put(
            &mut out,
            &[(u64::from(EOCD64_SIG), 4), (44, 8), (45, 2), (45, 2), (0, 4), (0, 4)],
        );
        put(&mut out, &[(count, 8), (count, 8), (cd_size, 8), (cd_offset, 8)]);
        put(
            &mut out,
            &[(u64::from(EOCD64_LOCATOR_SIG), 4), (0, 4), (eocd64, 8), (1, 4)],
        );
    }
    let small = |v: u64, max: u64| if zip64 { max } else { v };
    put(&mut out, &[(u64::from(EOCD_SIG), 4), (0, 2), (0, 2)]);
    put(&mut out, &[(small(count, 0xFFFF), 2), (small(count, 0xFFFF), 2)]);
    put(
        &mut out,
        &[
            (small(cd_size, 0xFFFF_FFFF), 4),
            (small(cd_offset, 0xFFFF_FFFF), 4),
            (0, 2),
        ],
    );
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
        (Vec::new(), "not a torch.save file"),
        (
            b"hello world, this is not a zip file at all".to_vec(),
            "not a torch.save file",
        ),
        // A legacy file's magic number, and nothing after it.
        (
            b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec(),
            "the protocol version (pickle at byte 15): truncated",
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
    // Written without checksums (torch.serialization.set_crc32_options(False): 0 for every
    // entry), the archive reads; one entry's 0 among checksums is still a mismatch.
    let clean = make_zip(&[("arch/data.pkl", &pkl), ("arch/data/0", &s0)], false, 0);
    let crc_at = |z: &[u8], name: &str| {
        let central = z.windows(4).position(|w| w == CENTRAL_SIG.to_le_bytes()).unwrap();
        let local = z.windows(name.len()).position(|w| w == name.as_bytes()).unwrap() - 30;
        let central = central
            + z[central..]
                .windows(name.len())
                .position(|w| w == name.as_bytes())
                .unwrap()
            - 46;
        [local + 14, central + 16]
    };
    let mut none = clean.clone();
    for at in ["arch/data.pkl", "arch/data/0"].iter().flat_map(|n| crc_at(&clean, n)) {
        none[at..at + 4].fill(0);
    }
    assert_eq!(load_bytes(&none).unwrap().len(), load_bytes(&clean).unwrap().len());
    let mut one = clean.clone();
    for at in crc_at(&clean, "arch/data/0") {
        one[at..at + 4].fill(0);
    }
    assert!(load_bytes(&one).unwrap_err().contains("CRC-32 mismatch"));
}

/// Entries a zip writer never makes and torch would read otherwise: two entries of one name
/// (zipfile, and so torch, takes the last, this reader took the first), and entries sharing bytes
/// (central records pointing at one local header: each read its own copy, memory = copies x size,
/// the square of the file's size).
#[test]
fn zip_duplicate_and_overlapping_entries_are_refused() {
    let pkl = state_dict_pkl(&[("w", tensor_call("0", 6, 0, &[6], &[1]))]);
    let s0 = storage0();
    let z = make_zip(
        &[("arch/data.pkl", &pkl), ("arch/data/0", &s0), ("arch/data/0", &s0)],
        false,
        0,
    );
    let err = load_bytes(&z).unwrap_err();
    assert!(err.contains("two entries named `arch/data/0`"), "{err}");
    // Entry `arch/data/1` (the same bytes as data/0) pointed at data/0's local header.
    let z = make_zip(
        &[("arch/data.pkl", &pkl), ("arch/data/0", &s0), ("arch/data/1", &s0)],
        false,
        0,
    );
    let records: Vec<usize> = (0..z.len() - 4)
        .filter(|&i| z[i..i + 4] == CENTRAL_SIG.to_le_bytes())
        .collect();
    let offset_of = |r: usize| z[r + 42..r + 46].to_vec();
    let mut bad = z.clone();
    let data0 = offset_of(records[1]);
    bad[records[2] + 42..records[2] + 46].copy_from_slice(&data0);
    let err = load_bytes(&bad).unwrap_err();
    assert!(err.contains("entries `arch/data/0` and `arch/data/1` overlap"), "{err}");
    assert!(load_bytes(&z).is_ok(), "the archive before the change is fine");
}

/// A legacy file from its parts (legacy.rs): magic number, protocol version, sys_info, the
/// object, the storage keys, then one record (numel, bytes) per key.
#[test]
fn legacy_layout() {
    let file = |version: &[u8], sys_info: &[u8], keys: &[&str], records: &[(i64, Vec<f32>)]| {
        let mut b = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02".to_vec();
        b.extend_from_slice(version);
        b.push(STOP);
        b.extend_from_slice(sys_info);
        b.extend(state_dict_pkl(&[("x", tensor_call("0", 6, 1, &[2], &[2]))]));
        b.extend_from_slice(b"\x80\x02(");
        for k in keys {
            b.extend(string(k));
        }
        b.extend_from_slice(b"l.");
        for (numel, values) in records {
            b.extend(numel.to_le_bytes());
            b.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        b
    };
    let v1001 = &int(1001);
    let little = b"}X\x0d\x00\x00\x00little_endian\x88s.";
    let six = || (6, (0..6).map(|x| x as f32).collect::<Vec<_>>());
    let ts = super::tests::load_bytes(&file(v1001, little, &["0"], &[six()])).unwrap();
    assert_eq!(f32s(&ts[0]), [1.0, 3.0]);
    // Without the little_endian key (old files) too.
    assert!(super::tests::load_bytes(&file(v1001, b"}.", &["0"], &[six()])).is_ok());

    let big = b"}X\x0d\x00\x00\x00little_endian\x89s.";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (file(&int(1000), little, &["0"], &[six()]), "protocol version 1000"),
        (file(v1001, big, &["0"], &[six()]), "big-endian"),
        (file(v1001, little, &[], &[]), "storage `0` is missing from the file"),
        (
            file(v1001, little, &["0", "7"], &[six(), six()]),
            "names `7`, which the pickle does not use",
        ),
        (
            file(v1001, little, &["0"], &[(5, vec![0.0; 5])]),
            "holds 20 bytes, but the pickle says 6",
        ),
        (
            file(v1001, little, &["0"], &[(7, vec![0.0; 6])]),
            "truncated (storage `0`",
        ),
        (
            file(v1001, little, &["0"], &[(i64::MAX, vec![])]),
            "claims 9223372036854775807 elements",
        ),
        (file(v1001, little, &["0"], &[(-1, vec![])]), "claims -1 elements"),
    ];
    for (bytes, needle) in cases {
        let err = super::tests::load_bytes(&bytes).unwrap_err();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}
