//! `fewlabels duplicates` and `shard --duplicates` end to end on real
//! photos: copies, re-encodes, resized and slightly cropped versions are
//! found (inside the table and against a reference), a mirrored photo and
//! unrelated photos are not; the same table whatever the thread count;
//! shard drops what it is asked to with a reason each and the counts add
//! up; our pHash is imagehash's; bad inputs are one-line errors.
mod common;
use common::s;

use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray, UInt64Array, UInt8Array};
use fewlabels::fsutil::checksum_file;
use fewlabels::manifest::Manifest;
use fewlabels::shard::{image_bytes, shard_schema, TableReader};
use fewlabels::stage::StageName;
use image::RgbImage;

fn photos() -> Vec<PathBuf> {
    common::imagenet_photos()
}

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    common::jpeg_bytes(img, quality)
}

fn photo(i: usize) -> RgbImage {
    image::open(&photos()[i]).unwrap().into_rgb8()
}

fn shrunk(i: usize, side: u32) -> RgbImage {
    image::imageops::resize(&photo(i), side, side, image::imageops::FilterType::Triangle)
}

/// The training images (15 rows, ids in name order) and the reference (7):
/// - `p00`..`p09`: ten unrelated ImageNet photos (ids 0, 2, 4, ..., 13, 14);
/// - `p00_copy` (id 1): the same file again: an exact duplicate of 0;
/// - `p01_q60` (3): photo 1 re-encoded at quality 60: near 2;
/// - `p02_small` (5): photo 2 at 300x300: near 4;
/// - `p03_crop` (7): photo 3 with 1% cut off each side: near 6;
/// - `p04_flip` (9): photo 4 mirrored: a different picture, no pair;
/// - reference `r05_q50` (0) is train 10 re-encoded, `r06` (1) is train 11's
///   file, `r07_small` (2) is train 12 at 256x256; `r10`..`r13` (3-6) are
///   photos not in the training images.
fn dataset(root: &Path) -> (PathBuf, PathBuf) {
    let (train, reference) = (root.join("train"), root.join("reference"));
    fs::create_dir_all(&train).unwrap();
    fs::create_dir_all(&reference).unwrap();
    let p = photos();
    for (i, f) in p.iter().enumerate().take(10) {
        fs::copy(f, train.join(format!("p{i:02}.jpg"))).unwrap();
    }
    fs::copy(&p[0], train.join("p00_copy.jpg")).unwrap();
    fs::write(train.join("p01_q60.jpg"), jpeg(&photo(1), 60)).unwrap();
    fs::write(train.join("p02_small.jpg"), jpeg(&shrunk(2, 300), 90)).unwrap();
    let cut = image::imageops::crop_imm(&photo(3), 5, 5, 502, 502).to_image();
    fs::write(train.join("p03_crop.jpg"), jpeg(&cut, 90)).unwrap();
    let flip = image::imageops::flip_horizontal(&photo(4));
    fs::write(train.join("p04_flip.jpg"), jpeg(&flip, 90)).unwrap();
    fs::write(reference.join("r05_q50.jpg"), jpeg(&photo(5), 50)).unwrap();
    fs::copy(&p[6], reference.join("r06.jpg")).unwrap();
    fs::write(reference.join("r07_small.jpg"), jpeg(&shrunk(7, 256), 90)).unwrap();
    for (i, f) in p.iter().enumerate().take(14).skip(10) {
        fs::copy(f, reference.join(format!("r{i:02}.jpg"))).unwrap();
    }
    (train, reference)
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", common::text(o));
}

fn prepare(input: &Path, out: &Path) {
    ok(&common::run(&[
        "--quiet",
        "prepare",
        "--input",
        s(input),
        "--output",
        s(out),
        "--size",
        "64",
    ]));
}

/// (id, other table, other id, distance, kind) of every row of a duplicates table.
type PairRow = (u64, String, u64, u8, String);

fn pairs(dir: &Path) -> Vec<PairRow> {
    let m = Manifest::read_complete(dir, StageName::Duplicates).unwrap();
    let mut out = Vec::new();
    for b in TableReader::from_manifest(dir, &m, "duplicates", None) {
        let b = b.unwrap();
        let u = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap()
                .clone()
        };
        let st = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let (id, table, other, kind) = (u("id"), st("other_table"), u("other_id"), st("kind"));
        let d = b.column_by_name("distance").unwrap();
        let d = d.as_any().downcast_ref::<UInt8Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((
                id.value(i),
                table.value(i).to_string(),
                other.value(i),
                d.value(i),
                kind.value(i).to_string(),
            ));
        }
    }
    out
}

/// A pair without its distance: (id, other table, other id, kind).
type Found<'a> = (u64, &'a str, u64, &'a str);

/// The pairs without their distances, and the distances.
fn shape(p: &[PairRow]) -> (Vec<Found<'_>>, Vec<u8>) {
    (
        p.iter()
            .map(|r| (r.0, r.1.as_str(), r.2, r.4.as_str()))
            .collect(),
        p.iter().map(|r| r.3).collect(),
    )
}

const EXPECTED: [(u64, &str, u64, &str); 7] = [
    (1, "images", 0, "exact"),
    (3, "images", 2, "near"),
    (5, "images", 4, "near"),
    (7, "images", 6, "near"),
    (10, "reference", 0, "near"),
    (11, "reference", 1, "exact"),
    (12, "reference", 2, "near"),
];

/// A prepared training set and reference, made once per test binary.
fn prepared() -> (PathBuf, PathBuf, PathBuf) {
    use std::sync::OnceLock;
    static MADE: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    MADE.get_or_init(|| {
        let root = tempfile::tempdir().unwrap().keep();
        let (train, reference) = dataset(&root.join("data"));
        let (ti, ri) = (root.join("images"), root.join("reference-images"));
        prepare(&train, &ti);
        prepare(&reference, &ri);
        (root, ti, ri)
    })
    .clone()
}

fn duplicates(
    images: &Path,
    reference: Option<&Path>,
    out: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let mut a = vec!["duplicates", "--images", s(images), "--output", s(out)];
    if let Some(r) = reference {
        a.extend(["--reference", s(r)]);
    }
    a.extend_from_slice(extra);
    common::ok_json(&a)
}

#[test]
fn copies_re_encodes_resizes_and_crops_are_found_and_nothing_else() {
    let (root, images, reference) = prepared();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dup");
    let j = duplicates(&images, Some(&reference), &out, &[]);
    let got = pairs(&out);
    let (found, distances) = shape(&got);
    assert_eq!(found, EXPECTED.to_vec(), "distances {distances:?}");
    for (r, d) in EXPECTED.iter().zip(&distances) {
        let limit = if r.3 == "exact" { 0 } else { 4 };
        assert!(*d <= limit, "{r:?} at distance {d}");
    }
    let c = &j["counts"];
    for (k, v) in [
        ("images", 15),
        ("reference_images", 7),
        ("within_exact", 1),
        ("within_near", 3),
        ("within_pairs", 4),
        ("rows_with_earlier_duplicate", 4),
        ("reference_exact", 1),
        ("reference_near", 2),
        ("reference_pairs", 3),
        ("rows_duplicating_reference", 3),
        ("max_distance", 4),
    ] {
        assert_eq!(c[k], v, "{k}: {c}");
    }
    // Even at 12 bits the mirrored and the unrelated photos stay apart.
    let wide = tmp.path().join("wide");
    duplicates(&images, Some(&reference), &wide, &["--max-distance", "12"]);
    assert_eq!(shape(&pairs(&wide)).0, EXPECTED.to_vec());
    // Without a reference: the same pairs inside the table, none across.
    let alone = tmp.path().join("alone");
    let j = duplicates(&images, None, &alone, &[]);
    assert_eq!(shape(&pairs(&alone)).0, EXPECTED[..4].to_vec());
    assert_eq!(j["counts"]["reference_pairs"], 0);
    drop(root);
}

#[test]
fn the_table_is_the_same_whatever_the_thread_count() {
    let (_, images, reference) = prepared();
    let tmp = tempfile::tempdir().unwrap();
    let mut sums = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = tmp.path().join(format!("t{threads}"));
        duplicates(&images, Some(&reference), &out, &["--threads", threads]);
        sums.push(checksum_file(out.join("duplicates-00000.arrow")).unwrap());
    }
    assert_eq!(sums[0], sums[1]);
    assert_eq!(sums[0], sums[2]);
}

/// The training rows (ids) and rejects (id, reason) of a shard folder.
fn shard_rows(dir: &Path) -> (Vec<u64>, Vec<(u64, String)>) {
    let m = Manifest::read_complete(dir, StageName::Shard).unwrap();
    let mut ids = Vec::new();
    for b in TableReader::from_manifest(dir, &m, "train", Some(&["id"])) {
        let b = b.unwrap();
        let id = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        ids.extend(id.values().iter().copied());
    }
    ids.sort_unstable();
    let mut rejects = Vec::new();
    for b in TableReader::from_manifest(dir, &m, "rejects", Some(&["id", "reason"])) {
        let b = b.unwrap();
        let id = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        let why = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            rejects.push((id.value(i), why.value(i).to_string()));
        }
    }
    (ids, rejects)
}

#[test]
fn shard_drops_the_duplicates_asked_for_with_reasons_and_the_counts_add_up() {
    let (_, images, reference) = prepared();
    let tmp = tempfile::tempdir().unwrap();
    let dup = tmp.path().join("dup");
    duplicates(&images, Some(&reference), &dup, &[]);
    let plain = tmp.path().join("plain");
    common::ok_json(&["shard", "--images", s(&images), "--output", s(&plain)]);
    for (policy, dropped) in [
        ("all", vec![1, 3, 5, 7, 10, 11, 12]),
        ("within", vec![1, 3, 5, 7]),
        ("reference", vec![10, 11, 12]),
        ("none", vec![]),
    ] {
        let out = tmp.path().join(policy);
        let j = common::ok_json(&[
            "shard",
            "--images",
            s(&images),
            "--duplicates",
            s(&dup),
            "--drop-duplicates",
            policy,
            "--output",
            s(&out),
        ]);
        let c = &j["counts"];
        let n = dropped.len() as u64;
        assert_eq!(c["seen"], 15, "{policy}: {c}");
        assert_eq!(c["dropped"], n, "{policy}: {c}");
        assert_eq!(c["images"], 15 - n, "{policy}: {c}");
        let (ids, rejects) = shard_rows(&out);
        let want: Vec<u64> = (0..15).filter(|i| !dropped.contains(i)).collect();
        assert_eq!(ids, want, "{policy}");
        assert_eq!(
            rejects.iter().map(|r| r.0).collect::<Vec<_>>(),
            dropped,
            "{policy}"
        );
        for (id, why) in &rejects {
            let want = match id {
                1 => "exact duplicate of row 0 (distance 0)".to_string(),
                3 | 5 | 7 => format!("near-duplicate of row {} (distance", id - 1),
                10 => "near-duplicate of reference row 0 (distance".into(),
                11 => "exact duplicate of reference row 1 (distance 0)".into(),
                12 => "near-duplicate of reference row 2 (distance".into(),
                _ => unreachable!(),
            };
            assert!(why.starts_with(&want), "{policy}: row {id}: {why}");
        }
        if policy == "none" {
            // Nothing dropped: the very shards of a shard without --duplicates.
            assert_eq!(
                checksum_file(out.join("train-00000.arrow")).unwrap(),
                checksum_file(plain.join("train-00000.arrow")).unwrap()
            );
            assert!(!out.join("rejects-00000.arrow").exists());
        }
    }
    // The rejects table carries the images' paths.
    let m = Manifest::read_complete(&tmp.path().join("all"), StageName::Shard).unwrap();
    let b = TableReader::from_manifest(&tmp.path().join("all"), &m, "rejects", None)
        .next()
        .unwrap()
        .unwrap();
    let path = b.column_by_name("path").unwrap();
    let path = path.as_any().downcast_ref::<StringArray>().unwrap();
    assert!(path.value(0).ends_with("p00_copy.jpg"), "{}", path.value(0));
}

#[test]
fn bad_inputs_are_one_line_errors_naming_the_folder_or_flag() {
    let (root, images, reference) = prepared();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let shard = |dup: &Path| {
        common::run(&[
            "shard",
            "--images",
            s(&images),
            "--duplicates",
            s(dup),
            "--output",
            s(&out),
        ])
    };
    // Not a duplicates stage: a prepare folder, then an empty folder.
    common::one_line_error(
        &shard(&reference),
        1,
        &[s(&reference), "not of `duplicates`"],
    );
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    common::one_line_error(
        &shard(&empty),
        1,
        &[s(&empty), "run `fewlabels duplicates` first"],
    );
    // The duplicates of other images (the reference's own): refused by name.
    let other = tmp.path().join("other");
    duplicates(&reference, None, &other, &[]);
    common::one_line_error(
        &shard(&other),
        1,
        &[s(&other), "other images than", s(&images)],
    );
    // Parameters and folders of `duplicates` itself.
    let dup = |extra: &[&str]| {
        let mut a = vec!["duplicates", "--images", s(&images), "--output", s(&out)];
        a.extend_from_slice(extra);
        common::run(&a)
    };
    common::one_line_error(
        &dup(&["--max-distance", "20"]),
        2,
        &["--max-distance 20", "between 0 and 16"],
    );
    common::one_line_error(
        &dup(&["--reference", s(&images)]),
        2,
        &["--reference", "is the --images folder"],
    );
    let notes = root.join("data");
    common::one_line_error(
        &dup(&["--reference", s(&notes)]),
        1,
        &[s(&notes), "run `fewlabels prepare` first"],
    );
    common::one_line_error(
        &common::run(&[
            "shard",
            "--images",
            s(&images),
            "--drop-duplicates",
            "some",
            "--output",
            s(&out),
        ]),
        2,
        &["--drop-duplicates", "all, within, reference, none"],
    );
    assert!(!out.join("_stage.json").exists());
}

/// Our pHash of every row of a prepared folder, and imagehash's of the same
/// stored PNGs, as hex strings.
fn ours_and_imagehash(dir: &Path) -> (Vec<String>, Vec<String>) {
    let m = Manifest::read_complete(dir, StageName::Prepare).unwrap();
    let mut ours = Vec::new();
    for b in TableReader::from_manifest(dir, &m, "images", Some(&["image"])) {
        let b = b.unwrap();
        for i in 0..b.num_rows() {
            let png = image_bytes(b.column(0).as_ref(), i).unwrap();
            let img = image::load_from_memory(png).unwrap().into_rgb8();
            ours.push(format!("{:016x}", fewlabels::dedup::phash(&img)));
        }
    }
    let script = r#"
import sys, glob, io, pyarrow as pa, imagehash
from PIL import Image
for f in sorted(glob.glob(sys.argv[1] + "/images-*.arrow")):
    t = pa.ipc.open_stream(f).read_all()
    for cell in t.column("image").to_pylist():
        print(imagehash.phash(Image.open(io.BytesIO(cell["bytes"]))))
"#;
    let o = common::python()
        .args(["-c", script, s(dir)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let theirs = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (ours, theirs)
}

#[test]
fn our_phash_is_imagehash_phash() {
    // At 32x32 no resampling happens on either side: every hash is equal.
    let fashion = common::prepared_fashion(2000, 32, None);
    let (ours, theirs) = ours_and_imagehash(&fashion);
    assert_eq!(ours.len(), 2000);
    let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
    assert_eq!(same, 2000, "Fashion-MNIST at 32: {same} of 2000 equal");
    // At 64 and 128 the 32x32 greyscale is resampled on both sides, by
    // PIL's arithmetic: the hashes are equal there too.
    let (_, images, reference) = prepared();
    let (mut ours, mut theirs) = ours_and_imagehash(&images);
    let (o2, t2) = ours_and_imagehash(&reference);
    ours.extend(o2);
    theirs.extend(t2);
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    ok(&common::run(&[
        "--quiet",
        "prepare",
        "--input",
        s(&common::photos()),
        "--output",
        s(&big),
        "--size",
        "128",
    ]));
    let (o3, t3) = ours_and_imagehash(&big);
    ours.extend(o3);
    theirs.extend(t3);
    let d: Vec<u32> = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| {
            (u64::from_str_radix(a, 16).unwrap() ^ u64::from_str_radix(b, 16).unwrap()).count_ones()
        })
        .collect();
    assert!(d.len() > 100);
    assert!(d.iter().all(|&x| x == 0), "bits apart: {d:?}");
}

#[test]
fn a_pipeline_finds_the_overlap_with_the_evaluation_reference_and_reports_it() {
    let root = tempfile::tempdir().unwrap();
    let (train, reference) = dataset(&root.path().join("data"));
    let run = root.path().join("run");
    let pipe = root.path().join("p.toml");
    fs::write(
        &pipe,
        format!(
            "[prepare]\ninput = {:?}\nsize = 64\n\n[duplicates]\n\n[shard]\n\n[train-gan]\nmode = \"unconditional\"\nsteps = 1\n\n[evaluate]\nreference = {:?}\n",
            s(&train),
            s(&reference)
        ),
    )
    .unwrap();
    // The plan: the reference is prepared before `duplicates`, which reads it.
    let o = common::run(&["run", s(&pipe), "--run-dir", s(&run), "--plan"]);
    ok(&o);
    let plan = String::from_utf8_lossy(&o.stdout);
    let order: Vec<&str> = plan
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| ["prepare", "duplicates", "shard"].contains(w))
        .collect();
    assert_eq!(
        order,
        ["prepare", "prepare", "duplicates", "shard"],
        "{plan}"
    );
    ok(&common::run(&[
        "--quiet",
        "run",
        s(&pipe),
        "--run-dir",
        s(&run),
        "--until",
        "shard",
    ]));
    let dup = Manifest::read_complete(&run.join("duplicates"), StageName::Duplicates).unwrap();
    assert_eq!(dup.count("reference_pairs"), 3);
    assert_eq!(dup.count("within_pairs"), 4);
    let train_m = Manifest::read_complete(&run.join("train"), StageName::Shard).unwrap();
    assert_eq!((train_m.count("dropped"), train_m.count("images")), (7, 8));
    // The report's section: the counts in words and pairs side by side.
    let md = fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        md.contains("3 training images (20.00%) duplicate a reference image"),
        "{md}"
    );
    assert!(md.contains("report/duplicates-examples.png"), "{md}");
    assert!(run.join("report/duplicates-examples.png").exists());
    assert!(
        md.contains("Rejects: 7 duplicate image(s) left out"),
        "{md}"
    );
    // The resize metadata travels with the reference too.
    let sch = shard_schema(&run.join("reference/images-00000.arrow")).unwrap();
    assert!(sch
        .metadata()
        .contains_key(fewlabels::shard::schema::RESIZE_KEY));
}
