//! Just enough zip to find and read the STORED entries of a torch.save archive.
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

// ---------------------------------------------------------------------------
// Zip: just enough to find and read STORED entries.
//
// End of central directory (EOCD), the last 22 bytes plus a comment:
//   sig 0x06054b50, disk u16, cd disk u16, entries on disk u16, entries u16,
//   cd size u32, cd offset u32, comment len u16
// ZIP64 EOCD locator, the 20 bytes just before the EOCD:
//   sig 0x07064b50, disk u32, zip64 EOCD offset u64, disks u32
// ZIP64 EOCD (56 bytes + extensible data):
//   sig 0x06064b50, record size u64, made by u16, needed u16, disk u32,
//   cd disk u32, entries on disk u64, entries u64, cd size u64, cd offset u64
// Central directory file header (46 bytes + name + extra + comment):
//   sig 0x02014b50, made by u16, needed u16, flags u16, method u16, time u16,
//   date u16, crc32 u32, compressed u32, uncompressed u32, name len u16,
//   extra len u16, comment len u16, disk u16, int attr u16, ext attr u32,
//   local header offset u32
//   A 0xFFFFFFFF size or offset is in the zip64 extra field (id 0x0001), which
//   holds, in this order, only those of uncompressed, compressed, offset that
//   overflowed.
// Local file header (30 bytes + name + extra, then the data):
//   sig 0x04034b50, needed u16, flags u16, method u16, time u16, date u16,
//   crc32 u32, compressed u32, uncompressed u32, name len u16, extra len u16
//   (torch zeroes the sizes here and pads the extra field; only the two lengths
//   are used.)
// ---------------------------------------------------------------------------

pub(super) const LOCAL_SIG: u32 = 0x0403_4b50;
pub(super) const CENTRAL_SIG: u32 = 0x0201_4b50;
pub(super) const EOCD_SIG: u32 = 0x0605_4b50;
pub(super) const EOCD64_SIG: u32 = 0x0606_4b50;
pub(super) const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;

pub(super) const NOT_ZIP: &str = "not a torch.save file: neither a zip archive (the format since \
                       PyTorch 1.6) nor a pickle (the legacy format)";

pub(super) struct ZipEntry {
    pub(super) name: String,
    pub(super) flags: u16,
    pub(super) method: u16,
    pub(super) crc32: u32,
    pub(super) compressed_size: u64,
    pub(super) size: u64,
    pub(super) local_header_offset: u64,
}

pub(super) struct Zip<R> {
    pub(super) src: R,
    pub(super) len: u64,
    pub(super) entries: Vec<ZipEntry>,
    pub(super) by_name: HashMap<String, usize>,
}

/// Little-endian reader over a byte slice; every read is bounds-checked.
pub(super) struct Cursor<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes: &'a [u8] = self.bytes;
        let s = bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
}

pub(super) fn io_error(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "truncated".into()
    } else {
        format!("read error: {e}")
    }
}

impl<R: Read + Seek> Zip<R> {
    /// Reads `n` bytes at `offset`, after checking they lie inside the file
    /// (so a corrupt size can never make us allocate more than the file holds).
    pub(super) fn read_at(&mut self, offset: u64, n: u64, what: &str) -> Result<Vec<u8>, String> {
        match offset.checked_add(n) {
            Some(end) if end <= self.len => {}
            _ => return Err(format!("truncated ({what} runs past the end of the file)")),
        }
        let n = usize::try_from(n).map_err(|_| format!("{what} is too large for this machine"))?;
        self.src.seek(SeekFrom::Start(offset)).map_err(io_error)?;
        let mut buf = vec![0; n];
        self.src.read_exact(&mut buf).map_err(io_error)?;
        Ok(buf)
    }

    pub(super) fn open(mut src: R) -> Result<Self, String> {
        let len = src.seek(SeekFrom::End(0)).map_err(io_error)?;
        let mut zip = Zip {
            src,
            len,
            entries: Vec::new(),
            by_name: HashMap::new(),
        };

        let (n_entries, cd_size, cd_offset) = zip.directory()?;
        zip.read_entries(n_entries, cd_size, cd_offset)?;
        Ok(zip)
    }

    /// The end-of-central-directory record (zip64 when present): (entries, size, offset) of the
    /// central directory.
    fn directory(&mut self) -> Result<(u64, u64, u64), String> {
        let len = self.len;
        // The EOCD is the last record; a comment of up to 64 KiB may follow it.
        let tail_len = len.min(22 + 0xFFFF);
        let tail = self.read_at(len - tail_len, tail_len, "end of file")?;
        let eocd_in_tail = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&p| tail.get(p..p + 4) == Some(&EOCD_SIG.to_le_bytes()[..]));
        let Some(p) = eocd_in_tail else {
            let head = self.read_at(0, len.min(4), "file header")?;
            return Err(if head == LOCAL_SIG.to_le_bytes() {
                "truncated (the zip archive has lost its end-of-central-directory record)".into()
            } else {
                NOT_ZIP.into()
            });
        };
        let eocd_offset = len - tail_len + p as u64;
        let mut c = Cursor::new(tail.get(p + 4..).unwrap_or_default());
        let bad_eocd = || "truncated (end-of-central-directory record)".to_string();
        let disk = c.u16().ok_or_else(bad_eocd)?;
        let cd_disk = c.u16().ok_or_else(bad_eocd)?;
        let _entries_on_disk = c.u16().ok_or_else(bad_eocd)?;
        let mut n_entries = u64::from(c.u16().ok_or_else(bad_eocd)?);
        let mut cd_size = u64::from(c.u32().ok_or_else(bad_eocd)?);
        let mut cd_offset = u64::from(c.u32().ok_or_else(bad_eocd)?);
        let needs_zip64 = n_entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF;

        // torch always writes the zip64 records; when present they win.
        let locator = if eocd_offset >= 20 {
            Some(self.read_at(eocd_offset - 20, 20, "zip64 locator")?)
        } else {
            None
        };
        let mut c = Cursor::new(locator.as_deref().unwrap_or_default());
        if c.u32() == Some(EOCD64_LOCATOR_SIG) {
            let _disk = c.u32();
            let eocd64_offset = c.u64().ok_or("corrupt zip64 locator")?;
            if eocd64_offset.checked_add(56).is_none_or(|end| end > eocd_offset) {
                return Err("corrupt zip64 locator (points past the end of the archive)".into());
            }
            let rec = self.read_at(eocd64_offset, 56, "zip64 end-of-central-directory record")?;
            let mut c = Cursor::new(&rec);
            if c.u32() != Some(EOCD64_SIG) {
                return Err("corrupt zip64 end-of-central-directory record (bad signature)".into());
            }
            c.take(4 + 8 + 4); // record size, made by, needed, disk number
            let bad = || "corrupt zip64 end-of-central-directory record".to_string();
            let cd_disk64 = c.u32().ok_or_else(bad)?;
            let _entries_on_disk = c.u64().ok_or_else(bad)?;
            n_entries = c.u64().ok_or_else(bad)?;
            cd_size = c.u64().ok_or_else(bad)?;
            cd_offset = c.u64().ok_or_else(bad)?;
            if cd_disk64 != 0 {
                return Err("multi-disk zip archives are not supported".into());
            }
        } else if needs_zip64 {
            return Err("truncated (the zip64 end-of-central-directory record is missing)".into());
        } else if disk != 0 || cd_disk != 0 {
            return Err("multi-disk zip archives are not supported".into());
        }
        Ok((n_entries, cd_size, cd_offset))
    }

    /// The central directory's entries, with their zip64 sizes and offsets.
    fn read_entries(&mut self, n_entries: u64, cd_size: u64, cd_offset: u64) -> Result<(), String> {
        let cd = self.read_at(cd_offset, cd_size, "central directory")?;
        let mut c = Cursor::new(&cd);
        let corrupt = |i: u64| format!("corrupt central directory (entry {i} of {n_entries})");
        for i in 0..n_entries {
            if c.u32() != Some(CENTRAL_SIG) {
                return Err(corrupt(i));
            }
            let fixed = c.take(42).ok_or_else(|| corrupt(i))?;
            let mut f = Cursor::new(fixed);
            let (_made_by, _needed) = (f.u16(), f.u16());
            let flags = f.u16().unwrap_or_default();
            let method = f.u16().unwrap_or_default();
            let (_time, _date) = (f.u16(), f.u16());
            let crc32 = f.u32().unwrap_or_default();
            let mut compressed_size = u64::from(f.u32().unwrap_or_default());
            let mut size = u64::from(f.u32().unwrap_or_default());
            let name_len = usize::from(f.u16().unwrap_or_default());
            let extra_len = usize::from(f.u16().unwrap_or_default());
            let comment_len = usize::from(f.u16().unwrap_or_default());
            let (_disk, _int_attr, _ext_attr) = (f.u16(), f.u16(), f.u32());
            let mut local_header_offset = u64::from(f.u32().unwrap_or_default());
            let name = c.take(name_len).ok_or_else(|| corrupt(i))?;
            let extra = c.take(extra_len).ok_or_else(|| corrupt(i))?;
            c.take(comment_len).ok_or_else(|| corrupt(i))?;

            // The zip64 extra field replaces the fields that read 0xFFFFFFFF.
            let mut x = Cursor::new(extra);
            while let (Some(id), Some(n)) = (x.u16(), x.u16()) {
                let body = x.take(usize::from(n)).ok_or_else(|| corrupt(i))?;
                if id != 0x0001 {
                    continue;
                }
                let mut z = Cursor::new(body);
                for field in [&mut size, &mut compressed_size, &mut local_header_offset] {
                    if *field == 0xFFFF_FFFF {
                        *field = z.u64().ok_or_else(|| corrupt(i))?;
                    }
                }
            }

            let name = String::from_utf8_lossy(name).into_owned();
            // zipfile (and so torch) reads the last of two same-named entries: refused, not guessed.
            if self.by_name.insert(name.clone(), self.entries.len()).is_some() {
                return Err(format!("corrupt archive: two entries named `{name}`"));
            }
            self.entries.push(ZipEntry {
                name,
                flags,
                method,
                crc32,
                compressed_size,
                size,
                local_header_offset,
            });
        }
        // Each entry's bytes are its own (as zipfile checks): entries sharing bytes would each
        // be read in full, a file's size read many times over.
        let mut spans: Vec<(u64, u64, &str)> = self
            .entries
            .iter()
            .map(|e| {
                let end = e
                    .local_header_offset
                    .saturating_add(30)
                    .saturating_add(e.compressed_size);
                (e.local_header_offset, end, e.name.as_str())
            })
            .collect();
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
            return Err(format!(
                "corrupt archive: entries `{}` and `{}` overlap",
                w[0].2, w[1].2
            ));
        }
        Ok(())
    }

    /// Whether the entries carry CRC-32s: one that is not 0 (an empty entry's is 0).
    fn checksums(&self) -> bool {
        self.entries.iter().any(|e| e.crc32 != 0)
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The contents of entry `name`, CRC-checked.
    pub(super) fn read(&mut self, name: &str) -> Result<Vec<u8>, String> {
        let entry = self
            .by_name
            .get(name)
            .and_then(|&i| self.entries.get(i))
            .ok_or_else(|| format!("the archive has no entry `{name}`"))?;
        let (flags, method, crc32, size) = (entry.flags, entry.method, entry.crc32, entry.size);
        let (compressed_size, header) = (entry.compressed_size, entry.local_header_offset);
        if flags & 1 != 0 {
            return Err(format!("entry `{name}` is encrypted"));
        }
        if method != 0 {
            let how = match method {
                8 => "deflate".to_string(),
                12 => "bzip2".to_string(),
                14 => "lzma".to_string(),
                93 => "zstd".to_string(),
                m => format!("method {m}"),
            };
            return Err(format!(
                "entry `{name}` is compressed ({how}); torch.save writes uncompressed (stored) entries, \
                 so re-save the tensors with torch.save rather than re-zipping the file"
            ));
        }
        if compressed_size != size {
            return Err(format!("corrupt entry `{name}` (stored, yet its two sizes differ)"));
        }
        let local = self.read_at(header, 30, &format!("local header of `{name}`"))?;
        let mut c = Cursor::new(&local);
        if c.u32() != Some(LOCAL_SIG) {
            return Err(format!("corrupt local header for entry `{name}`"));
        }
        c.take(22);
        let name_len = u64::from(c.u16().unwrap_or_default());
        let extra_len = u64::from(c.u16().unwrap_or_default());
        let data_offset = header.saturating_add(30 + name_len + extra_len);
        let data = self.read_at(data_offset, size, &format!("entry `{name}`"))?;
        // torch.save with torch.serialization.set_crc32_options(False) records 0 for every
        // entry (torch.load reads it): those archives are not checked.
        if self.checksums() && crc32_of(&data) != crc32 {
            return Err(format!("entry `{name}` is corrupt (CRC-32 mismatch)"));
        }
        Ok(data)
    }
}

/// CRC-32 (IEEE, reflected, as zip uses), table-driven.
pub(super) fn crc32_of(data: &[u8]) -> u32 {
    pub(super) const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}
