//! Image folders. With sub-folders, each top-level sub-folder is a class
//! (ImageNet's `train/nXXXXXXXX/*.JPEG`): class index = position of its name
//! in byte order, and the files below it (searched recursively) carry that
//! label. Without sub-folders, the folder's files are unlabelled images.
//!
//! Every file found is an input, whatever its name: stray files (`.txt`,
//! `.DS_Store`, files beside the class folders) are kept in the listing so
//! they end in the rejects table with a reason rather than vanish. Symbolic
//! links that stay inside the input folder are followed; one that leads out
//! of it (to `/etc`, a home folder) is a reject, not followed, unless the
//! caller asks to follow such links: a dataset folder should not make
//! `prepare` read, and record the paths of, files elsewhere. A link to a
//! folder already being walked (a loop) becomes a reject instead of an
//! endless walk.
use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{display_path, io_reason, Item, Listing, Source};
use crate::error::{Error, Result};

/// Directory entries sorted by the bytes of their names.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.sort_by(|a, b| {
        a.file_name()
            .map(|n| n.as_bytes())
            .cmp(&b.file_name().map(|n| n.as_bytes()))
    });
    Ok(v)
}

/// What a walk carries: the folders on the current path (loops), and the
/// input folder's real path when links must stay inside it.
struct Walk {
    visited: HashSet<(u64, u64)>,
    inside: Option<PathBuf>,
}

pub fn list(root: &Path, follow_links: bool) -> Result<Listing> {
    let entries = sorted_entries(root)
        .map_err(|e| Error::file(root, format!("cannot list the folder: {}", io_reason(&e))))?;
    let inside = if follow_links {
        None
    } else {
        Some(fs::canonicalize(root).map_err(|e| Error::io(root, e))?)
    };
    let is_dir = |p: &Path| fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false);
    let classes: Vec<&PathBuf> = entries.iter().filter(|p| is_dir(p)).collect();
    let mut listing = Listing {
        kind: if classes.is_empty() {
            "flat folder"
        } else {
            "class folders"
        },
        ..Listing::default()
    };
    let mut w = Walk {
        visited: HashSet::new(),
        inside,
    };
    if let Ok(m) = fs::metadata(root) {
        w.visited.insert((m.dev(), m.ino()));
    }
    if classes.is_empty() {
        for p in &entries {
            walk(p, None, &mut w, &mut listing.items);
        }
        return Ok(listing);
    }
    // Files beside the class folders have no class: kept as unlabelled inputs,
    // which the codec accepts or rejects like any other file.
    for p in entries.iter().filter(|p| !is_dir(p)) {
        walk(p, None, &mut w, &mut listing.items);
    }
    for (label, dir) in classes.iter().enumerate() {
        let name = dir
            .file_name()
            .map(|n| super::escape_bytes(n.as_bytes()))
            .unwrap_or_default();
        let before = listing.items.len();
        walk(dir, Some(label as i64), &mut w, &mut listing.items);
        if listing.items.len() == before {
            listing.empty_classes.push(name.clone());
        }
        listing.class_names.push(name);
    }
    Ok(listing)
}

/// Adds `path` (a file, or a folder walked recursively in sorted order).
fn walk(path: &Path, label: Option<i64>, w: &mut Walk, out: &mut Vec<Item>) {
    let item = |source| Item {
        path: display_path(path),
        label,
        source,
    };
    if let Some(inside) = &w.inside {
        let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        // A link that does not resolve (dangling, a loop) is named below.
        if let (true, Ok(target)) = (is_link, fs::canonicalize(path)) {
            if !target.starts_with(inside) {
                out.push(item(Source::Bad(format!(
                    "symbolic link to {} outside the input folder; not followed (follow-links follows it)",
                    display_path(&target)
                ))));
                return;
            }
        }
    }
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            // A dangling link, a link loop (ELOOP), a permission problem.
            out.push(item(Source::Bad(format!("cannot read: {}", io_reason(&e)))));
            return;
        }
    };
    if !meta.is_dir() {
        out.push(item(Source::File(path.to_path_buf())));
        return;
    }
    if !w.visited.insert((meta.dev(), meta.ino())) {
        out.push(item(Source::Bad(
            "symbolic link loop (a folder already being read); not followed".to_string(),
        )));
        return;
    }
    match sorted_entries(path) {
        Ok(entries) => {
            for e in entries {
                walk(&e, label, w, out);
            }
        }
        Err(e) => out.push(item(Source::Bad(format!(
            "cannot list the folder: {}",
            io_reason(&e)
        )))),
    }
    w.visited.remove(&(meta.dev(), meta.ino()));
}
