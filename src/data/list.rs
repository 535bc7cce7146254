//! List files: `path label` lines (flat layouts such as ImageNet's validation set, or a CSV).
use super::source::{class_names, data_err, Dataset, Sample, MAX_CLASSES};
use crate::error::{io, Result};
use std::fs;
use std::path::{Path, PathBuf};

impl Dataset {
    /// Lines `relative/or/absolute/path label` (separated by spaces, tabs or a comma; `#` comments;
    /// a CSV's quoted fields and first `path,label` header line). Paths are relative to the list's folder. Class names come from a `classes.txt` beside the
    /// list (one per line) when present, else are the label numbers. Labels are below
    /// [`MAX_CLASSES`].
    pub fn list_file(list: &Path) -> Result<Dataset> {
        let text = read_list(list)?;
        let base = list.parent().unwrap_or(Path::new("."));
        let mut items = Vec::new();
        // One label per file: `a.png 0` then `./a.png 1` trained one image under two labels
        // (listed twice with one label is oversampling, allowed). Paths compare as written, less
        // `.` components.
        let mut lines: std::collections::HashMap<PathBuf, (usize, i64)> = std::collections::HashMap::new();
        // The line of a `path,label` header.
        let mut header = None;
        // A UTF-8 byte order mark (Windows editors) is not part of the first path.
        for (n, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, label) = line.rsplit_once([' ', '\t', ',']).ok_or_else(|| {
                data_err(
                    list,
                    format!("line {}: expected `path label`, got `{}`", n + 1, shortened(line)),
                )
            })?;
            // A spreadsheet's or pandas' CSV: quoted fields, a `path,label` header first.
            let label = unquoted(label.trim());
            let words = label.chars().any(char::is_alphabetic) && !label.chars().any(|c| c.is_ascii_digit());
            if header.is_none() && items.is_empty() && words {
                header = Some(n + 1);
                continue;
            }
            let label = list_label(&label).map_err(|why| data_err(list, format!("line {}: {why}", n + 1)))?;
            // `a.png, 0`: split at the space, the comma is a separator too, not part of the name.
            let path = unquoted(path.trim().trim_end_matches([' ', '\t', ',']));
            if path.is_empty() {
                return Err(data_err(list, format!("line {}: no path before the label", n + 1)));
            }
            let key: PathBuf = base
                .join(&*path)
                .components()
                .filter(|c| *c != std::path::Component::CurDir)
                .collect();
            match lines.entry(key).or_insert((n + 1, label)) {
                (first, l) if *l != label => {
                    return Err(data_err(
                        list,
                        format!(
                            "line {}: `{}` is listed again with another label ({label}; line {first}: {l})",
                            n + 1,
                            shortened(&path)
                        ),
                    ))
                }
                _ => {}
            }
            items.push((Sample::File(base.join(&*path)), label));
        }
        if items.is_empty() {
            let why = header.map_or(String::new(), |n| {
                format!(" (line {n} is no sample: its label is no number)")
            });
            return Err(data_err(list, format!("no samples listed{why}")));
        }
        if let Some(n) = header {
            crate::say::note(&format!(
                "{}: line {n} is a header (its label is no number): skipped",
                list.display()
            ));
        }
        let max = items.iter().map(|(_, l)| *l).max().unwrap_or(0);
        let classes = class_names(&base.join("classes.txt"), max)?;
        Ok(Dataset {
            classes,
            items,
            idx: None,
            origin: list.to_path_buf(),
        })
    }
}

/// A list file's label: a class index, below [`MAX_CLASSES`] (labels name classes 0..=max: a
/// huge one would allocate that many class names).
fn list_label(label: &str) -> std::result::Result<i64, String> {
    match label.parse::<i64>() {
        Err(_) => Err(format!("label `{}` is not a non-negative integer", shortened(label))),
        Ok(l) if l < 0 => Err(format!("negative label {l}")),
        Ok(l) if l >= MAX_CLASSES => Err(format!("label {l} is over the limit of {MAX_CLASSES} classes")),
        Ok(l) => Ok(l),
    }
}

/// `field` without the double quotes a CSV writer puts around it (a quote inside it doubled).
fn unquoted(field: &str) -> std::borrow::Cow<'_, str> {
    match field.strip_prefix('"').and_then(|f| f.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\"").into(),
        None => field.into(),
    }
}

/// The text of list file `list`, refused unread past its start when that is binary (an IDX `.gz`,
/// an image or an archive given as DATA: read whole, it made an error quoting megabytes).
fn read_list(list: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = fs::File::open(list).map_err(io(list))?;
    let mut head = Vec::with_capacity(4096);
    file.by_ref().take(4096).read_to_end(&mut head).map_err(io(list))?;
    // Text, unless a NUL or invalid UTF-8 (not a character cut at the 4 KiB mark) is there.
    let text = match std::str::from_utf8(&head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    if !text || head.contains(&0) {
        return Err(data_err(
            list,
            "not a list file of `path label` lines (binary content): give image data as a folder \
             (one subfolder per class), IDX files as the folder that holds them",
        ));
    }
    file.read_to_end(&mut head).map_err(io(list))?;
    String::from_utf8(head).map_err(|_| data_err(list, "not a list file: not UTF-8 text"))
}

/// `text` cut to 80 characters for an error message.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}
