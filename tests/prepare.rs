//! `fewlabels prepare` end to end: every kind of bad input from the issue
//! made as a real file, every input kind (folder, tar of tars, list files,
//! IDX), byte-identical output across `--threads`, kill -9 then resume, and
//! slices that together equal the single run.
mod common;
use common::s;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, Int32Array, Int64Array, StringArray, UInt64Array};
use fewlabels::fsutil::checksum_file;
use fewlabels::manifest::Manifest;
use fewlabels::shard::{image_bytes, schema, shard_schema, TableReader};
use fewlabels::stage::StageName;

/// One row of `images/`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: u64,
    path: String,
    label: Option<i64>,
    width: i32,
    height: i32,
    image: Vec<u8>,
}

fn images(dir: &Path) -> Vec<Row> {
    let m = Manifest::read_complete(dir, StageName::Prepare).unwrap();
    let mut rows = Vec::new();
    for b in TableReader::from_manifest(dir, &m, "images", None) {
        let b = b.unwrap();
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let ids = col("id");
        let ids = ids.as_any().downcast_ref::<UInt64Array>().unwrap();
        let paths = col("path");
        let paths = paths.as_any().downcast_ref::<StringArray>().unwrap();
        let labels = col("label");
        let labels = labels.as_any().downcast_ref::<Int64Array>().unwrap();
        let ws = col("width");
        let ws = ws.as_any().downcast_ref::<Int32Array>().unwrap();
        let hs = col("height");
        let hs = hs.as_any().downcast_ref::<Int32Array>().unwrap();
        let img = col("image");
        for i in 0..b.num_rows() {
            rows.push(Row {
                id: ids.value(i),
                path: paths.value(i).to_string(),
                label: (!labels.is_null(i)).then(|| labels.value(i)),
                width: ws.value(i),
                height: hs.value(i),
                image: image_bytes(img.as_ref(), i).unwrap().to_vec(),
            });
        }
    }
    rows
}

fn rejects(dir: &Path) -> Vec<(String, String)> {
    let m = Manifest::read_complete(dir, StageName::Prepare).unwrap();
    let mut out = Vec::new();
    for b in TableReader::from_manifest(dir, &m, "rejects", None) {
        let b = b.unwrap();
        let p = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let r = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            out.push((p.value(i).to_string(), r.value(i).to_string()));
        }
    }
    out
}

/// The Arrow files of a stage folder and their checksums.
fn checksums(dir: &Path) -> BTreeMap<String, String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                checksum_file(&p).unwrap(),
            )
        })
        .collect()
}

fn prepare(args: &[&str]) -> std::process::Output {
    let mut a = vec!["prepare", "--quiet"];
    a.extend_from_slice(args);
    common::run(a.as_slice())
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", common::text(o));
}

/// The decoded RGB pixel at (x, y) of an output PNG.
fn pixel(png: &[u8], x: u32, y: u32) -> [u8; 3] {
    let img = image::load_from_memory(png).unwrap().to_rgb8();
    img.get_pixel(x, y).0
}

fn near(a: [u8; 3], b: [u8; 3], tol: i32) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (*x as i32 - y as i32).abs() <= tol)
}

fn photo(i: usize) -> PathBuf {
    let v = common::imagenet_photos();
    v[i % v.len()].clone()
}

fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A valid PNG header claiming `w`x`h` pixels, followed by a token IDAT.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &[0u8; 64]).unwrap();
    chunk(b"IDAT", &z.finish().unwrap());
    chunk(b"IEND", &[]);
    out
}

fn euid_is_root() -> bool {
    let o = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

/// Runs Python (the cache's, with PIL) to make a file PIL can write and `image` cannot.
fn pil(script: &str) {
    let o = common::python().args(["-c", script]).output().unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
}

/// What each input should become: `Ok(label)` written, `Err(words)` rejected.
type Expect = BTreeMap<String, Result<Option<i64>, &'static str>>;

/// A class folder holding every bad input of the issue, real files each.
fn bad_inputs(root: &Path) -> Expect {
    let a = root.join("a_class");
    let b = root.join("b_class");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::create_dir_all(root.join("c_empty")).unwrap();
    let jpeg = fs::read(photo(0)).unwrap();
    let mut e = Expect::new();
    let mut put = |rel: &str, bytes: &[u8], want| {
        fs::write(root.join(rel), bytes).unwrap();
        e.insert(rel.to_string(), want);
    };
    put("a_class/good.JPEG", &jpeg, Ok(Some(0)));
    put(
        "a_class/truncated.JPEG",
        &jpeg[..jpeg.len() / 2],
        Err("truncated JPEG"),
    );
    put("a_class/zero.JPEG", b"", Err("empty file"));
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    put("a_class/noise.JPEG", &noise, Err("not an image"));
    let green = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        50,
        40,
        image::Rgb([0, 200, 0]),
    ));
    put("a_class/png_named.JPEG", &png_bytes(&green), Ok(Some(0)));
    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        40,
        30,
        image::Rgb([65535, 32896, 0]),
    );
    put(
        "b_class/sixteen_bit.png",
        &png_bytes(&image::DynamicImage::ImageRgb16(deep)),
        Ok(Some(1)),
    );
    let clear = image::RgbaImage::from_pixel(30, 30, image::Rgba([0, 0, 0, 0]));
    put(
        "b_class/transparent.png",
        &png_bytes(&image::DynamicImage::ImageRgba8(clear)),
        Ok(Some(1)),
    );
    put(
        "b_class/huge_header.png",
        &png_claiming(100_000, 100_000),
        Err("max-pixels"),
    );
    put(
        "b_class/notes.txt",
        b"class b: collected 2019\n",
        Err("not an image"),
    );
    put("README.md", b"# a dataset\n", Err("not an image"));
    // An animated GIF: red frame, then blue; the first frame is kept.
    {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame, RgbaImage};
        let mut buf = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut buf);
            for c in [[255, 0, 0, 255], [0, 0, 255, 255]] {
                let f = Frame::from_parts(
                    RgbaImage::from_pixel(24, 24, image::Rgba(c)),
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                );
                enc.encode_frame(f).unwrap();
            }
        }
        put("b_class/animated.gif", &buf, Ok(Some(1)));
    }
    // A CMYK JPEG (PIL writes Adobe-inverted CMYK, as Photoshop does): pure red.
    let cmyk = b.join("cmyk.jpg");
    pil(&format!(
        "from PIL import Image; Image.new('CMYK', (64, 48), (0, 255, 255, 0)).save({:?}, quality=95)",
        s(&cmyk)
    ));
    e.insert("b_class/cmyk.jpg".into(), Ok(Some(1)));
    // EXIF orientation 6 (rotate 90 clockwise to display): stored top half red,
    // bottom half blue, so displayed right half red, left half blue.
    let rotated = b.join("rotated.jpg");
    pil(&format!(
        "from PIL import Image\nim = Image.new('RGB', (60, 40), (0, 0, 255))\nim.paste((255, 0, 0), (0, 0, 60, 20))\nex = Image.Exif(); ex[0x0112] = 6\nim.save({:?}, quality=95, exif=ex)",
        s(&rotated)
    ));
    e.insert("b_class/rotated.jpg".into(), Ok(Some(1)));
    // A non-UTF-8 file name holding a good JPEG: kept, its path escaped.
    let raw = std::ffi::OsStr::from_bytes(b"caf\xff.JPEG");
    fs::write(a.join(raw), &jpeg).unwrap();
    e.insert("a_class/caf\\xFF.JPEG".into(), Ok(Some(0)));
    // Unreadable: a dangling link, and a file without read permission
    // (readable anyway when the tests run as root, who ignores permissions).
    std::os::unix::fs::symlink(root.join("nowhere.JPEG"), a.join("dangling.JPEG")).unwrap();
    e.insert("a_class/dangling.JPEG".into(), Err("cannot read"));
    let locked = a.join("locked.JPEG");
    fs::write(&locked, &jpeg).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    e.insert(
        "a_class/locked.JPEG".into(),
        if euid_is_root() {
            Ok(Some(0))
        } else {
            Err("cannot read")
        },
    );
    // Symbolic link loops: a folder link back to its parent, and two file links to each other.
    std::os::unix::fs::symlink("..", a.join("loop")).unwrap();
    e.insert("a_class/loop".into(), Err("symbolic link loop"));
    std::os::unix::fs::symlink("l2.JPEG", b.join("l1.JPEG")).unwrap();
    std::os::unix::fs::symlink("l1.JPEG", b.join("l2.JPEG")).unwrap();
    e.insert("b_class/l1.JPEG".into(), Err("symbolic links"));
    e.insert("b_class/l2.JPEG".into(), Err("symbolic links"));
    e
}

#[test]
fn every_bad_input_lands_in_images_or_rejects_and_the_counts_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let expect = bad_inputs(&root);
    let out = tmp.path().join("images");
    let o = common::run(&[
        "prepare",
        "--json",
        "--input",
        s(&root),
        "--output",
        s(&out),
        "--size",
        "32",
        "--max-pixels",
        "50000000",
    ]);
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &summary["counts"];
    let (seen, written, rejected) = (
        c["seen"].as_u64().unwrap(),
        c["written"].as_u64().unwrap(),
        c["rejected"].as_u64().unwrap(),
    );
    assert_eq!(seen, expect.len() as u64, "{summary}");
    assert_eq!(seen, written + rejected);
    assert_eq!(c["empty_classes"], "c_empty");
    let m = Manifest::read_complete(&out, StageName::Prepare).unwrap();
    assert_eq!(m.count("seen"), seen);
    assert_eq!(m.count("written") + m.count("rejected"), m.count("seen"));

    let prefix = format!("{}/", root.display());
    let rows = images(&out);
    let rej = rejects(&out);
    assert_eq!(rows.len() as u64, written);
    assert_eq!(rej.len() as u64, rejected);
    let mut got: BTreeMap<String, Result<Option<i64>, String>> = BTreeMap::new();
    for r in &rows {
        got.insert(r.path.trim_start_matches(&prefix).to_string(), Ok(r.label));
    }
    for (p, why) in &rej {
        got.insert(p.trim_start_matches(&prefix).to_string(), Err(why.clone()));
    }
    for (name, want) in &expect {
        let have = got
            .get(name)
            .unwrap_or_else(|| panic!("{name} is neither written nor rejected: {got:#?}"));
        match (want, have) {
            (Ok(l), Ok(h)) => assert_eq!(l, h, "{name}"),
            (Err(words), Err(why)) => assert!(
                why.contains(words),
                "{name}: reason `{why}` lacks `{words}`"
            ),
            _ => panic!("{name}: expected {want:?}, got {have:?}"),
        }
    }
    // Ids are positions in the sorted listing; class names follow folder order.
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let names = schema::class_names_of(&shard_schema(&out.join("images-00000.arrow")).unwrap());
    assert_eq!(names, ["a_class", "b_class", "c_empty"]);

    let by = |n: &str| rows.iter().find(|r| r.path.ends_with(n)).unwrap();
    for r in &rows {
        let img = image::load_from_memory(&r.image).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32), "{}", r.path);
        assert!(
            matches!(img, image::DynamicImage::ImageRgb8(_)),
            "{} is not 8-bit RGB",
            r.path
        );
    }
    assert!(near(
        pixel(&by("png_named.JPEG").image, 16, 16),
        [0, 200, 0],
        2
    ));
    assert!(near(
        pixel(&by("sixteen_bit.png").image, 16, 16),
        [255, 128, 0],
        2
    ));
    assert!(
        near(
            pixel(&by("transparent.png").image, 16, 16),
            [255, 255, 255],
            0
        ),
        "alpha goes on white"
    );
    assert!(
        near(pixel(&by("animated.gif").image, 16, 16), [255, 0, 0], 2),
        "first frame"
    );
    assert!(
        near(pixel(&by("cmyk.jpg").image, 16, 16), [255, 0, 0], 12),
        "{:?}",
        pixel(&by("cmyk.jpg").image, 16, 16)
    );
    let rot = by("rotated.jpg");
    assert_eq!((rot.width, rot.height), (40, 60), "recorded as displayed");
    assert!(
        near(pixel(&rot.image, 2, 16), [0, 0, 255], 40),
        "left is blue: {:?}",
        pixel(&rot.image, 2, 16)
    );
    assert!(
        near(pixel(&rot.image, 29, 16), [255, 0, 0], 40),
        "right is red: {:?}",
        pixel(&rot.image, 29, 16)
    );
    let good = by("good.JPEG");
    let src = image::open(photo(0)).unwrap();
    assert_eq!(
        (good.width as u32, good.height as u32),
        (src.width(), src.height())
    );
}

#[test]
fn strict_stops_at_the_first_reject_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    fs::create_dir_all(&root).unwrap();
    fs::copy(photo(1), root.join("a.jpg")).unwrap();
    fs::write(root.join("b.jpg"), b"").unwrap();
    let out = tmp.path().join("images");
    let o = prepare(&[
        "--input",
        s(&root),
        "--output",
        s(&out),
        "--size",
        "16",
        "--strict",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("b.jpg") && err.contains("empty file") && err.contains("--strict"),
        "{err}"
    );
    assert!(
        Manifest::read(&out).unwrap().is_none(),
        "a strict failure leaves no finished stage"
    );
    // Without --strict the same input finishes, the bad file in rejects.
    let o = prepare(&["--input", s(&root), "--output", s(&out), "--size", "16"]);
    ok(&o);
    assert_eq!(images(&out).len(), 1);
    assert_eq!(rejects(&out).len(), 1);
}

#[test]
fn bad_usage_and_bad_input_paths_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = prepare(&["--input", "/nonexistent/x", "--output", s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/x") && err.trim().lines().count() == 1,
        "{err}"
    );
    let o = prepare(&[
        "--input",
        s(tmp.path()),
        "--output",
        s(&out),
        "--codec",
        "gif",
    ]);
    assert_eq!(o.status.code(), Some(2), "unknown codec is bad usage");
    let o = prepare(&[
        "--input",
        s(tmp.path()),
        "--output",
        s(&out),
        "--shard-index",
        "3",
        "--num-shards",
        "2",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a parameter out of range is bad usage"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--shard-index 3: must be below"));
}

/// `n` JPEG inputs in two class folders (copies of the 20 photos) plus one bad file.
fn photo_folder(root: &Path, n: usize) {
    for i in 0..n {
        let class = root.join(if i % 3 == 0 { "cat" } else { "dog" });
        fs::create_dir_all(&class).unwrap();
        fs::copy(photo(i), class.join(format!("{i:05}.jpg"))).unwrap();
    }
    fs::write(root.join("dog").join("00002_bad.jpg"), b"junk").unwrap();
}

#[test]
fn output_is_byte_identical_whatever_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    photo_folder(&root, 40);
    let mut sums = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = tmp.path().join(format!("t{threads}"));
        ok(&prepare(&[
            "--input",
            s(&root),
            "--output",
            s(&out),
            "--size",
            "48",
            "--rows-per-shard",
            "7",
            "--threads",
            threads,
        ]));
        sums.push(checksums(&out));
    }
    assert_eq!(
        sums[0].len(),
        6 + 1,
        "6 image shards + 1 rejects shard: {:?}",
        sums[0]
    );
    assert_eq!(sums[0], sums[1]);
    assert_eq!(sums[0], sums[2]);
}

#[test]
fn kill_9_then_the_same_command_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    photo_folder(&root, 600);
    let args = |out: &Path| -> Vec<String> {
        [
            "prepare",
            "--quiet",
            "--input",
            s(&root),
            "--output",
            s(out),
            "--rows-per-shard",
            "20",
            "--threads",
            "1",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let whole = tmp.path().join("whole");
    ok(&common::bin().args(args(&whole)).output().unwrap());

    let out = tmp.path().join("killed");
    let mut child = common::bin().args(args(&out)).spawn().unwrap();
    let start = Instant::now();
    // Kill once a few shards are finished, mid-run.
    loop {
        let finished = fs::read_dir(&out)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("images-")
                })
                .count()
            })
            .unwrap_or(0);
        if finished >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no shard after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        Manifest::read(&out).unwrap().is_none(),
        "killed before the end (raise the input size if this fails)"
    );
    let partial = checksums(&out);
    assert!(partial.len() < checksums(&whole).len());

    let o = common::bin()
        .args(args(&out))
        .args(["--json"])
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(checksums(&out), checksums(&whole));
    // The shards finished before the kill were kept, not redone.
    for (name, sum) in &partial {
        assert_eq!(checksums(&out)[name], *sum);
    }
    let a = Manifest::read_complete(&out, StageName::Prepare).unwrap();
    let b = Manifest::read_complete(&whole, StageName::Prepare).unwrap();
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.counts, b.counts);
}

#[test]
fn slices_together_equal_the_single_run_and_merge_into_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    photo_folder(&root, 23);
    let base = ["--size", "32", "--rows-per-shard", "4"];
    let single = tmp.path().join("single");
    let mut a = vec!["--input", s(&root), "--output", s(&single)];
    a.extend(base);
    ok(&prepare(&a));
    let mut union = BTreeMap::new();
    let mut slices = Vec::new();
    for i in 0..3 {
        let d = tmp.path().join(format!("slice{i}"));
        let idx = i.to_string();
        let mut a = vec![
            "--input",
            s(&root),
            "--output",
            s(&d),
            "--shard-index",
            &idx,
            "--num-shards",
            "3",
        ];
        a.extend(base);
        ok(&prepare(&a));
        for (k, v) in checksums(&d) {
            assert!(
                union.insert(k.clone(), v).is_none(),
                "{k} written by two slices"
            );
        }
        slices.push(d);
    }
    assert_eq!(union, checksums(&single));

    let merged = tmp.path().join("merged");
    let mut a = vec!["--input", s(&root), "--output", s(&merged)];
    a.extend(base);
    for d in &slices {
        a.extend(["--merge", s(d)]);
    }
    ok(&prepare(&a));
    let m = Manifest::read_complete(&merged, StageName::Prepare).unwrap();
    let one = Manifest::read_complete(&single, StageName::Prepare).unwrap();
    assert_eq!(m.outputs, one.outputs);
    assert_eq!(m.params, one.params);
    assert_eq!(m.output_fingerprint(), one.output_fingerprint());
    for k in ["seen", "written", "rejected", "classes"] {
        assert_eq!(m.counts[k], one.counts[k], "{k}");
    }
    // A missing slice is refused.
    let m2 = tmp.path().join("m2");
    let mut a = vec!["--input", s(&root), "--output", s(&m2)];
    a.extend(base);
    a.extend(["--merge", s(&slices[0]), "--merge", s(&slices[1])]);
    let o = prepare(&a);
    assert_eq!(o.status.code(), Some(1));
}

/// Writes a tar holding `members` (name, bytes).
fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &bytes[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn tar_of_class_tars_and_list_files_give_the_folder_images() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    photo_folder(&root, 12);
    let folder_out = tmp.path().join("from_folder");
    ok(&prepare(&[
        "--input",
        s(&root),
        "--output",
        s(&folder_out),
        "--size",
        "24",
    ]));
    let from_folder = images(&folder_out);

    // ImageNet's layout: a tar of per-class tars, read in place.
    let mut outer = Vec::new();
    for class in ["cat", "dog"] {
        let mut members = Vec::new();
        let mut names: Vec<_> = fs::read_dir(root.join(class))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            members.push((
                n.to_string_lossy().into_owned(),
                fs::read(root.join(class).join(&n)).unwrap(),
            ));
        }
        outer.push((format!("{class}.tar"), tar_of(&members)));
    }
    let tar_path = tmp.path().join("train.tar");
    fs::write(&tar_path, tar_of(&outer)).unwrap();
    let tar_out = tmp.path().join("from_tar");
    let o = common::run(&[
        "prepare",
        "--json",
        "--input",
        s(&tar_path),
        "--output",
        s(&tar_out),
        "--size",
        "24",
    ]);
    ok(&o);
    let from_tar = images(&tar_out);
    // Everything but the path (which names the container).
    type Content = (u64, Option<i64>, i32, i32, Vec<u8>);
    let strip = |rows: &[Row]| -> Vec<Content> {
        rows.iter()
            .map(|r| (r.id, r.label, r.width, r.height, r.image.clone()))
            .collect()
    };
    assert_eq!(strip(&from_tar), strip(&from_folder));
    assert_eq!(from_tar[0].path, "cat.tar/00000.jpg");
    assert_eq!(rejects(&tar_out).len(), 1);

    // A CSV list of path,label (class names) relative to the list's folder, in the folder's order.
    let mut csv = String::from("path,label\n");
    for r in from_folder.iter() {
        let rel = r
            .path
            .trim_start_matches(&format!("{}/", tmp.path().display()));
        csv.push_str(&format!(
            "{rel},{}\n",
            if r.label == Some(0) { "cat" } else { "dog" }
        ));
    }
    csv.push_str("data/missing.jpg,cat\n");
    let list = tmp.path().join("list.csv");
    fs::write(&list, &csv).unwrap();
    let list_out = tmp.path().join("from_csv");
    ok(&prepare(&[
        "--input",
        s(&list),
        "--output",
        s(&list_out),
        "--size",
        "24",
    ]));
    let from_csv = images(&list_out);
    // Same images and labels; ids are positions in the list (the folder's had the bad file too).
    let no_id = |rows: &[Row]| -> Vec<(Option<i64>, i32, i32, Vec<u8>)> {
        rows.iter()
            .map(|r| (r.label, r.width, r.height, r.image.clone()))
            .collect()
    };
    assert_eq!(no_id(&from_csv), no_id(&from_folder));
    assert_eq!(
        from_csv.iter().map(|r| r.id).collect::<Vec<_>>(),
        (0..from_folder.len() as u64).collect::<Vec<_>>()
    );
    let rej = rejects(&list_out);
    assert_eq!(rej.len(), 1);
    assert!(
        rej[0].0 == "data/missing.jpg" && rej[0].1.contains("cannot read"),
        "{rej:?}"
    );

    // The same list as Parquet, integer labels.
    let pq = tmp.path().join("list.parquet");
    pil(&format!(
        "import polars as pl\ndf = pl.read_csv({:?})\ndf = df.with_columns(pl.col('label').replace_strict({{'cat': 0, 'dog': 1}}).cast(pl.Int64))\ndf.write_parquet({:?})",
        s(&list),
        s(&pq)
    ));
    let pq_out = tmp.path().join("from_parquet");
    ok(&prepare(&[
        "--input",
        s(&pq),
        "--output",
        s(&pq_out),
        "--size",
        "24",
        "--class-names",
        "cat,dog",
    ]));
    assert_eq!(strip(&images(&pq_out)), strip(&from_csv));
    let names = schema::class_names_of(&shard_schema(&pq_out.join("images-00000.arrow")).unwrap());
    assert_eq!(names, ["cat", "dog"]);
}

#[test]
fn idx_fashion_mnist_with_class_names_and_readable_by_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fashion_mnist().join("t10k-images-idx3-ubyte.gz");
    let out = tmp.path().join("images");
    let names = "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot";
    let o = common::run(&[
        "prepare",
        "--json",
        "--input",
        s(&input),
        "--output",
        s(&out),
        "--size",
        "32",
        "--class-names",
        names,
    ]);
    ok(&o);
    let rows = images(&out);
    assert_eq!(rows.len(), 10_000);
    let mut per = [0; 10];
    for r in &rows {
        per[r.label.unwrap() as usize] += 1;
    }
    assert_eq!(per, [1000; 10], "t10k has 1000 images per class");
    assert_eq!((rows[0].width, rows[0].height), (28, 28));
    assert_eq!(rows[0].path, "t10k-images-idx3-ubyte.gz#00000");
    // The upscale keeps the picture: mean brightness within 2 levels of the source's.
    let raw = {
        use std::io::Read;
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(fs::File::open(&input).unwrap())
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    for i in [0usize, 1, 9999] {
        let src = &raw[16 + i * 784..16 + (i + 1) * 784];
        let src_mean = src.iter().map(|&v| v as f64).sum::<f64>() / 784.0;
        let img = image::load_from_memory(&rows[i].image).unwrap().to_rgb8();
        let out_mean = img.as_raw().iter().map(|&v| v as f64).sum::<f64>() / (32.0 * 32.0 * 3.0);
        assert!(
            (src_mean - out_mean).abs() < 2.0,
            "image {i}: {src_mean} vs {out_mean}"
        );
    }
    // Hugging Face `datasets` sees an Image feature and a ClassLabel with the names.
    let script = format!(
        "import glob, datasets\nds = datasets.load_dataset('arrow', data_files=sorted(glob.glob({:?})), split='train')\nf = ds.features\nassert type(f['image']).__name__ == 'Image', f\nassert f['label'].names[9] == 'Ankle boot', f['label']\nim = ds[3]['image']\nassert im.size == (32, 32) and im.mode == 'RGB', (im.size, im.mode)\nprint(len(ds))",
        format!("{}/images-*.arrow", out.display())
    );
    let o = common::python()
        .args(["-c", &script])
        .env("HF_DATASETS_CACHE", tmp.path().join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "10000");
}

// Input hardening (issue 13, item 6): each probe finding with a real bad input.

/// `p` relative to `root` (rows record the full path of a folder's file).
fn under(root: &Path, p: &str) -> String {
    let prefix = format!("{}/", root.display());
    p.strip_prefix(&prefix).unwrap_or(p).to_string()
}

/// The rejects of `out`, paths relative to `root`.
fn rejects_under(root: &Path, out: &Path) -> Vec<(String, String)> {
    rejects(out)
        .into_iter()
        .map(|(p, r)| (under(root, &p), r))
        .collect()
}

/// The image paths of `out`, relative to `root`.
fn paths_under(root: &Path, out: &Path) -> Vec<String> {
    images(out).iter().map(|r| under(root, &r.path)).collect()
}

/// Runs prepare under GNU time; returns the output and the peak RSS in MB.
fn prepare_peak_rss(args: &[&str]) -> (std::process::Output, u64) {
    let o = std::process::Command::new("/usr/bin/time")
        .args([
            "-f",
            "peak-rss-kb %M",
            env!("CARGO_BIN_EXE_fewlabels"),
            "prepare",
            "--quiet",
        ])
        .args(args)
        .output()
        .expect("spawn /usr/bin/time");
    let err = String::from_utf8_lossy(&o.stderr);
    let kb: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kb "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {err}"));
    (o, kb / 1024)
}

#[test]
fn symlinks_out_of_the_input_folder_are_rejects_unless_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let a = root.join("a");
    fs::create_dir_all(&a).unwrap();
    fs::copy(photo(0), a.join("in.jpg")).unwrap();
    // Outside the input: a private key and a photo.
    let private = tmp.path().join("private");
    fs::create_dir_all(&private).unwrap();
    fs::write(
        private.join("id_ed25519"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    fs::copy(photo(1), private.join("x.jpg")).unwrap();
    use std::os::unix::fs::symlink;
    symlink(&private, a.join("elsewhere")).unwrap(); // a folder link out
    symlink(private.join("x.jpg"), a.join("photo.jpg")).unwrap(); // a file link out
    symlink("in.jpg", a.join("alias.jpg")).unwrap(); // a link inside: followed

    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec!["--input", s(&root), "--output", s(out), "--size", "16"];
        a.extend_from_slice(extra);
        ok(&prepare(&a));
    };
    let out = tmp.path().join("o");
    run(&out, &[]);
    let imgs = paths_under(&root, &out);
    assert_eq!(imgs, ["a/alias.jpg", "a/in.jpg"]);
    let rej = rejects_under(&root, &out);
    assert_eq!(rej.len(), 2, "{rej:?}");
    for ((path, reason), want) in rej.iter().zip(["a/elsewhere", "a/photo.jpg"]) {
        assert_eq!(path, want);
        assert!(
            reason.starts_with("symbolic link to ")
                && reason.contains("outside the input folder; not followed"),
            "{reason}"
        );
    }
    // Nothing below the link was listed: no path of the private folder.
    assert!(!rej.iter().any(|(p, _)| p.contains("id_ed25519")));

    // --follow-links reads them (the key becomes a reject like any non-image).
    let out = tmp.path().join("followed");
    run(&out, &["--follow-links"]);
    let imgs = paths_under(&root, &out);
    assert_eq!(
        imgs,
        [
            "a/alias.jpg",
            "a/elsewhere/x.jpg",
            "a/in.jpg",
            "a/photo.jpg"
        ]
    );
    let rej = rejects_under(&root, &out);
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0].0, "a/elsewhere/id_ed25519");
    assert!(rej[0].1.starts_with("not an image"), "{}", rej[0].1);
}

#[test]
fn an_output_folder_inside_the_input_folder_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    fs::create_dir_all(root.join("a")).unwrap();
    fs::copy(photo(0), root.join("a").join("x.jpg")).unwrap();
    for out in [
        root.join("images"),
        root.join("a").join("deeper").join("images"),
    ] {
        let o = prepare(&["--input", s(&root), "--output", s(&out)]);
        // A usage error, found before anything runs.
        assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("is inside --input"), "{err}");
        let arrow = fs::read_dir(&out)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "arrow")
                })
                .count()
            })
            .unwrap_or(0);
        assert_eq!(arrow, 0, "nothing prepared into {out:?}");
        assert!(!out.exists(), "nothing created inside the input: {out:?}");
    }
    // Beside the input is fine.
    ok(&prepare(&[
        "--input",
        s(&root),
        "--output",
        s(&tmp.path().join("images")),
    ]));
}

#[test]
fn big_files_are_refused_by_size_or_header_before_they_are_read() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    fs::create_dir_all(&root).unwrap();
    fs::copy(photo(0), root.join("a_photo.jpg")).unwrap();
    // 1 GiB that is no image (sparse files: no disk used).
    let mut f = fs::File::create(root.join("b_big.JPEG")).unwrap();
    f.write_all(b"MOV data, not a JPEG, whatever the name says")
        .unwrap();
    f.set_len(1 << 30).unwrap();
    // 300 MiB that starts like a JPEG: above the default 256 MiB limit.
    let mut f = fs::File::create(root.join("c_huge.jpg")).unwrap();
    f.write_all(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', 0])
        .unwrap();
    f.set_len(300 << 20).unwrap();
    drop(f);

    let out = tmp.path().join("o");
    let (o, _) = prepare_peak_rss(&["--input", s(&root), "--output", s(&out), "--size", "16"]);
    ok(&o);
    assert_eq!(images(&out).len(), 1);
    let limit = |size: u64| {
        format!(
            "{size} bytes is above the max-file-bytes limit of {} (not read)",
            256 << 20
        )
    };
    assert_eq!(
        rejects_under(&root, &out),
        [
            ("b_big.JPEG".to_string(), limit(1 << 30)),
            ("c_huge.jpg".to_string(), limit(300 << 20)),
        ]
    );

    // Raise the limit past both: the 1 GiB non-image is still refused from
    // its first bytes, so the run's memory stays that of the binary (~0.5
    // GB with libtorch mapped), not 1 GiB more.
    let out = tmp.path().join("o2");
    let (o, peak_mb) = prepare_peak_rss(&[
        "--input",
        s(&root),
        "--output",
        s(&out),
        "--size",
        "16",
        "--max-file-bytes",
        &(2u64 << 30).to_string(),
    ]);
    ok(&o);
    let rej = rejects_under(&root, &out);
    assert_eq!(rej.len(), 2, "{rej:?}");
    assert!(rej[0].1.starts_with("not an image"), "{rej:?}");
    assert!(
        rej[1].1.contains("JPEG"),
        "the fake JPEG is decoded and refused: {rej:?}"
    );
    assert!(peak_mb < 1024 + 300, "peak RSS {peak_mb} MB");

    // A small limit refuses the photo itself, with its size.
    let out = tmp.path().join("o3");
    ok(&prepare(&[
        "--input",
        s(&root),
        "--output",
        s(&out),
        "--max-file-bytes",
        "1000",
    ]));
    let size = fs::metadata(photo(0)).unwrap().len();
    assert_eq!(
        rejects_under(&root, &out)[0],
        (
            "a_photo.jpg".to_string(),
            format!("{size} bytes is above the max-file-bytes limit of 1000 (not read)")
        )
    );
    // The limit with a unit, and a unit that is no unit.
    let out = tmp.path().join("o4");
    ok(&prepare(&[
        "--input",
        s(&root),
        "--output",
        s(&out),
        "--max-file-bytes",
        "2kB",
    ]));
    assert!(rejects_under(&root, &out)[0]
        .1
        .contains("limit of 2000 (not read)"));
    let o = prepare(&[
        "--input",
        s(&root),
        "--output",
        s(&out),
        "--max-file-bytes",
        "2 parsecs",
    ]);
    common::one_line_error(&o, 2, &["--max-file-bytes", "unknown unit"]);
}

#[test]
fn broken_list_files_are_one_line_errors_naming_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(photo(0), tmp.path().join("ok.jpg")).unwrap();
    let csv = tmp.path().join("list.csv");
    fs::write(&csv, "path,label\nok.jpg,a\n\"broken.jpg,b\nok.jpg,a\n").unwrap();
    let o = prepare(&["--input", s(&csv), "--output", s(&tmp.path().join("o"))]);
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(s(&csv)) && err.contains("opened on line 3 is never closed"),
        "{err}"
    );
    // A Parquet file that is not one.
    let pq = tmp.path().join("list.parquet");
    fs::write(&pq, b"PAR1 not really parquet PAR1").unwrap();
    let o = prepare(&["--input", s(&pq), "--output", s(&tmp.path().join("p"))]);
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(s(&pq)) && err.contains("not a readable Parquet file"),
        "{err}"
    );
}

/// `--codec raw` rows are no image file PIL can open: Hugging Face
/// `datasets` is told a struct of bytes and path, and the bytes are the
/// size x size x 3 pixels, as the PNG rows decode.
#[test]
fn raw_rows_are_declared_as_bytes_to_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = common::fashion_raw("t10k", 20);
    let refs: Vec<&[u8]> = images.iter().map(|v| v.as_slice()).collect();
    let idx = common::write_idx(&tmp.path().join("idx"), "t10k", &refs, &labels);
    let (raw, png) = (tmp.path().join("raw"), tmp.path().join("png"));
    for (out, codec) in [(&raw, "raw"), (&png, "png")] {
        ok(&common::run(&[
            "prepare",
            "--quiet",
            "--input",
            s(&idx),
            "--output",
            s(out),
            "--size",
            "32",
            "--codec",
            codec,
            "--class-names",
            &common::fashion_class_names(),
        ]));
    }
    let script = format!(
        "import glob, datasets, numpy as np\n\
         load = lambda d: datasets.load_dataset('arrow', data_files=sorted(glob.glob(d + '/images-*.arrow')), split='train')\n\
         raw, png = load({:?}), load({:?})\n\
         assert type(raw.features['image']).__name__ != 'Image', raw.features\n\
         assert type(png.features['image']).__name__ == 'Image', png.features\n\
         for i in (0, 7, 19):\n\
         \x20   px = np.frombuffer(raw[i]['image']['bytes'], np.uint8).reshape(32, 32, 3)\n\
         \x20   assert (px == np.asarray(png[i]['image'].convert('RGB'))).all(), i\n\
         print(len(raw))",
        s(&raw),
        s(&png)
    );
    let o = common::python()
        .args(["-c", &script])
        .env("HF_DATASETS_CACHE", tmp.path().join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "20");
}
