//! Tar files, read in place: no member is ever extracted to disk. Listing
//! walks the headers only (seeking over the data), so listing ImageNet's
//! 140 GB `ILSVRC2012_img_train.tar` reads about 1.3 M headers; each image is
//! later read with one positioned read of its byte range, from any thread.
//!
//! Labels: a member `*.tar` inside the tar is a class (ImageNet's tar of
//! per-class tars: `n01440764.tar` holds class `n01440764`'s JPEGs) and is
//! walked the same way. Otherwise a member's class is its parent folder
//! (`cats/1.jpg`), and members at the top level are unlabelled. Class index
//! = position of the name in byte order; inputs are sorted by path.
//! Symbolic and hard links, sparse and other non-file members become rejects.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::{escape_bytes, io_reason, Item, Listing, Source};
use crate::error::{Error, Result};

/// A byte range of a file, as a seekable reader (an inner tar).
struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        use std::os::unix::fs::FileExt;
        let k = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => p as i64,
            SeekFrom::Current(d) => self.pos as i64 + d,
            SeekFrom::End(d) => self.len as i64 + d,
        };
        if p < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = p as u64;
        Ok(self.pos)
    }
}

/// A member found while listing: path bytes, class name, source.
struct Member {
    path: Vec<u8>,
    class: Option<String>,
    source: Source,
}

fn walk(
    reader: Window,
    inner_class: Option<&str>,
    prefix: &[u8],
    out: &mut Vec<Member>,
    inner_tars: &mut Vec<String>,
) -> io::Result<()> {
    let base = reader.start;
    // Positioned reads ignore the shared cursor, so clones read inner tars safely.
    let handle = reader.file.try_clone()?;
    let mut archive = ::tar::Archive::new(reader);
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let raw = entry.path_bytes().into_owned();
        let mut path = prefix.to_vec();
        path.extend_from_slice(&raw);
        let kind = entry.header().entry_type();
        // Folders and metadata records (pax, GNU long names) are not inputs.
        if kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        let class = inner_class
            .map(str::to_string)
            .or_else(|| parent_name(&raw));
        let bad = |why: &str| Member {
            path: path.clone(),
            class: class.clone(),
            source: Source::Bad(why.to_string()),
        };
        if kind.is_symlink() || kind.is_hard_link() {
            out.push(bad("a link inside the tar; only regular members are read"));
            continue;
        }
        if !kind.is_file() {
            out.push(bad("not a regular file inside the tar"));
            continue;
        }
        let offset = base + entry.raw_file_position();
        let size = entry.size();
        if inner_class.is_none() && raw.ends_with(b".tar") {
            let name = escape_bytes(&raw);
            let stem = name
                .rsplit('/')
                .next()
                .unwrap_or(&name)
                .trim_end_matches(".tar")
                .to_string();
            inner_tars.push(stem.clone());
            let file = handle.try_clone()?;
            let inner = Window {
                file,
                start: offset,
                len: size,
                pos: 0,
            };
            let mut inner_prefix = path.clone();
            inner_prefix.push(b'/');
            if let Err(e) = walk(inner, Some(&stem), &inner_prefix, out, inner_tars) {
                out.push(bad(&format!("unreadable inner tar: {}", io_reason(&e))));
            }
            continue;
        }
        out.push(Member {
            path,
            class,
            source: Source::Tar { offset, size },
        });
    }
    Ok(())
}

fn parent_name(raw: &[u8]) -> Option<String> {
    let s = escape_bytes(raw);
    let s = s.trim_end_matches('/');
    let mut parts = s.rsplit('/');
    parts.next()?;
    parts
        .next()
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_string)
}

pub fn list(path: &Path) -> Result<Listing> {
    let open = || File::open(path).map_err(|e| Error::io(path, e));
    let file = open()?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut members = Vec::new();
    let mut inner_tars = Vec::new();
    walk(
        Window {
            file,
            start: 0,
            len,
            pos: 0,
        },
        None,
        b"",
        &mut members,
        &mut inner_tars,
    )
    .map_err(|e| Error::file(path, format!("not a readable tar ({})", io_reason(&e))))?;
    members.sort_by(|a, b| a.path.cmp(&b.path));
    let mut classes: BTreeMap<String, i64> = BTreeMap::new();
    for m in &members {
        if let Some(c) = &m.class {
            classes.insert(c.clone(), 0);
        }
    }
    for t in &inner_tars {
        classes.insert(t.clone(), 0);
    }
    for (i, v) in classes.values_mut().enumerate() {
        *v = i as i64;
    }
    let class_names: Vec<String> = classes.keys().cloned().collect();
    let empty_classes = class_names
        .iter()
        .filter(|c| !members.iter().any(|m| m.class.as_ref() == Some(*c)))
        .cloned()
        .collect();
    let items = members
        .into_iter()
        .map(|m| Item {
            path: escape_bytes(&m.path),
            label: m.class.as_ref().map(|c| classes[c]),
            source: m.source,
        })
        .collect();
    Ok(Listing {
        items,
        class_names,
        empty_classes,
        kind: if inner_tars.is_empty() {
            "tar"
        } else {
            "tar of tars"
        },
        tar: Some((path.to_path_buf(), open()?)),
        idx: None,
    })
}
