//! `evaluate --samples DIR` on a plain folder of PNG/JPEG images (what a
//! user has from another GAN's sampler, and what clean-fid scores): the
//! folder becomes an images table through `prepare` (stored losslessly as
//! PNG, no resize since the sizes already match) in a scratch folder inside
//! evaluate's output, which is scored like any table and removed after.
//!
//! FID compares sets of one size, so every image must already be the
//! reference's size: a folder at another size is refused before anything
//! is decoded, naming a file, rather than silently resized (the resize
//! filter alone moves FID; clean-fid makes the same point).
use std::path::Path;

use super::prepare::{self, Prepare};
use super::{Exec, RunDirs, Stage};
use crate::error::{Error, Result};
use crate::input::{self, Source};

/// Whether `dir` is a plain folder rather than a stage folder.
pub fn is_plain_folder(dir: &Path) -> bool {
    dir.is_dir() && !dir.join(crate::manifest::MANIFEST_FILE).exists()
}

/// Checks that every image in `dir` is `side` x `side` (read from the file
/// headers only); returns how many images it holds. Files that are not
/// images are left to `prepare`, which rejects them with a reason.
pub fn check_sizes(dir: &Path, side: u32) -> Result<usize> {
    let listing = input::folder::list(dir, false)?;
    let mut images = 0;
    for item in &listing.items {
        let Source::File(path) = &item.source else {
            continue;
        };
        let Ok((w, h)) = image::image_dimensions(path) else {
            continue;
        };
        if (w, h) != (side, side) {
            return Err(Error::usage(format!(
                "evaluate: {} is {w}x{h} but the reference images are {side}x{side}; FID compares sets of one size: write the samples at {side}x{side}, or run `fewlabels prepare --input {} --size {side}` and score that folder",
                path.display(),
                dir.display()
            )));
        }
        images += 1;
    }
    if images == 0 {
        return Err(Error::file(
            dir,
            "holds no PNG or JPEG images and no `_stage.json`: give a folder of images or a `fewlabels prepare` folder",
        ));
    }
    Ok(images)
}

/// Prepares `dir`'s images (already `side` x `side`) as an images table in
/// `scratch`.
pub fn prepare_table(dir: &Path, side: u32, scratch: &Path, exec: &Exec) -> Result<()> {
    let params = prepare::Params {
        input: dir.to_path_buf(),
        size: side,
        ..prepare::Params::default()
    };
    let _ = std::fs::remove_dir_all(scratch);
    Prepare::execute(&RunDirs::new(scratch), &params, exec)?;
    Ok(())
}
