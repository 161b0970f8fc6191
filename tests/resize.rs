//! `prepare --resize crop|pad|squash --filter F` end to end on real photos:
//! the default is today's centre crop with today's filter, byte for byte;
//! pad and squash keep the whole picture (and its EXIF orientation); bad
//! values are one-line usage errors naming the flag.
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Int32Array};
use fewlabels::manifest::Manifest;
use fewlabels::shard::{image_bytes, TableReader};
use fewlabels::stage::StageName;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, RgbImage};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", common::text(o));
}

/// The 20 foolbox ImageNet photos (512x512 progressive JPEGs), sorted.
fn photos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(common::photos())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("imagenet_") && n.ends_with(".jpg")
        })
        .collect();
    v.sort();
    assert_eq!(
        v.len(),
        20,
        "the 20 foolbox photos in {:?}",
        common::photos()
    );
    v
}

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `jpeg` with an APP1 Exif segment (a little-endian TIFF holding only the
/// orientation tag 0x0112) inserted after SOI: what a camera writes.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes()); // IFD0 offset
    tiff.extend(1u16.to_le_bytes()); // one entry
    tiff.extend(0x0112u16.to_le_bytes()); // Orientation
    tiff.extend(3u16.to_le_bytes()); // SHORT
    tiff.extend(1u32.to_le_bytes()); // count
    tiff.extend(orientation.to_le_bytes());
    tiff.extend([0, 0]); // value padding
    tiff.extend(0u32.to_le_bytes()); // no next IFD
    let mut body = b"Exif\0\0".to_vec();
    body.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((body.len() + 2) as u16).to_be_bytes());
    out.extend(body);
    out.extend(&jpeg[2..]);
    out
}

fn resized(path: &Path, w: u32, h: u32) -> RgbImage {
    let img = image::open(path).unwrap().into_rgb8();
    image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
}

/// A folder of real photos in every shape the resize policies treat
/// differently: square (progressive, the libjpeg-turbo path), wide and tall
/// (baseline, from the `image` encoder), small (upscaled), PNG, and wide or
/// tall with EXIF orientations that swap the axes. Made by Rust code only,
/// so the bytes are the same on every machine with this Cargo.lock.
fn shapes_folder(root: &Path) {
    let p = photos();
    let d = root.join("photos");
    fs::create_dir_all(&d).unwrap();
    for (i, photo) in p.iter().take(4).enumerate() {
        fs::copy(photo, d.join(format!("a{i}_square.jpg"))).unwrap();
    }
    fs::write(d.join("b_wide.jpg"), jpeg(&resized(&p[5], 700, 300), 90)).unwrap();
    fs::write(d.join("c_tall.jpg"), jpeg(&resized(&p[6], 300, 640), 90)).unwrap();
    fs::write(d.join("d_small.png"), png(&resized(&p[7], 90, 60))).unwrap();
    fs::write(d.join("e_wide.png"), png(&resized(&p[8], 333, 120))).unwrap();
    let wide = jpeg(&resized(&p[9], 640, 360), 92);
    for o in [3u16, 5, 6, 8] {
        fs::write(
            d.join(format!("f_wide_exif{o}.jpg")),
            with_orientation(&wide, o),
        )
        .unwrap();
    }
    let tall = jpeg(&resized(&p[10], 250, 500), 92);
    fs::write(d.join("g_tall_exif6.jpg"), with_orientation(&tall, 6)).unwrap();
}

/// One image row: path, source width and height, encoded image.
type Row = (String, i32, i32, Vec<u8>);

fn rows(dir: &Path) -> Vec<Row> {
    let m = Manifest::read_complete(dir, StageName::Prepare).unwrap();
    let mut out = Vec::new();
    for b in TableReader::from_manifest(
        dir,
        &m,
        "images",
        Some(&["path", "width", "height", "image"]),
    ) {
        let b = b.unwrap();
        let path = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        let w = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
        let h = b.column(2).as_any().downcast_ref::<Int32Array>().unwrap();
        for i in 0..b.num_rows() {
            let name = Path::new(path.value(i))
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((
                name,
                w.value(i),
                h.value(i),
                image_bytes(b.column(3).as_ref(), i).unwrap().to_vec(),
            ));
        }
    }
    out
}

/// A digest of every row's name, source size and encoded image bytes.
fn digest(rows: &[Row]) -> String {
    let mut h = blake3::Hasher::new();
    for (name, w, h_, img) in rows {
        h.update(name.as_bytes());
        h.update(&w.to_le_bytes());
        h.update(&h_.to_le_bytes());
        h.update(&(img.len() as u64).to_le_bytes());
        h.update(img);
    }
    h.finalize().to_hex().to_string()
}

fn prepare(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "prepare",
        "--quiet",
        "--input",
        s(input),
        "--output",
        s(out),
    ];
    a.extend_from_slice(extra);
    common::run(&a)
}

/// What the centre crop wrote before `--resize` existed (main at 1368682):
/// the digest of [`shapes_folder`] at 32 and 64, and of 50 Fashion-MNIST
/// images (the grey IDX path) at 32.
const GOLDEN: [(&str, &str); 3] = [
    (
        "photos-32",
        "e525b6a33d3e87b5cfbce9b0e8961fc1e48b949aab59d3f283b88d7ee2bd6f15",
    ),
    (
        "photos-64",
        "5abae64728596f3cace55a0ed5523f398ee7e78ff05be9a3852777e348ed95d5",
    ),
    (
        "fashion-32",
        "83f9c0c5dbc4253fea6863ed1ba98de7a0f13a4413302f851e46d6adba27c777",
    ),
];

#[test]
fn default_is_the_centre_crop_of_before_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    shapes_folder(tmp.path());
    let (images, labels) = common::fashion_raw("t10k", 50);
    let imgs: Vec<&[u8]> = images.iter().map(|v| v.as_slice()).collect();
    let idx = common::write_idx(&tmp.path().join("idx"), "t10k", &imgs, &labels);
    let mut got = Vec::new();
    for (name, input, size) in [
        ("photos-32", tmp.path().join("photos"), "32"),
        ("photos-64", tmp.path().join("photos"), "64"),
        ("fashion-32", idx, "32"),
    ] {
        let out = tmp.path().join(name);
        ok(&prepare(&input, &out, &["--size", size]));
        let r = rows(&out);
        assert_eq!(
            r.len(),
            if name == "fashion-32" { 50 } else { 13 },
            "{name}"
        );
        let d = digest(&r);
        got.push((name, d));
    }
    for ((name, d), (gname, want)) in got.iter().zip(GOLDEN) {
        assert_eq!(*name, gname);
        assert_eq!(d, want, "{name}: the default output changed");
    }
}
