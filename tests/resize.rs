//! `prepare --resize crop|pad|squash --filter F` end to end on real photos:
//! the default is today's centre crop with today's filter, byte for byte;
//! pad and squash keep the whole picture (and its EXIF orientation); bad
//! values are one-line usage errors naming the flag.
mod common;
use common::s;

use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Int32Array};
use fewlabels::manifest::Manifest;
use fewlabels::shard::{image_bytes, TableReader};
use fewlabels::stage::StageName;
use image::RgbImage;

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", common::text(o));
}

fn photos() -> Vec<PathBuf> {
    common::imagenet_photos()
}

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    common::jpeg_bytes(img, quality)
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

/// `dir/in/p.jpg`: photo `i` resized to `w`x`h`, JPEG quality 90; returns the folder.
fn one_photo(dir: &Path, i: usize, (w, h): (u32, u32)) -> PathBuf {
    let input = dir.join("in");
    fs::create_dir_all(&input).unwrap();
    fs::write(input.join("p.jpg"), jpeg(&resized(&photos()[i], w, h), 90)).unwrap();
    input
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

/// Mean absolute difference of two equally sized 8-bit images.
fn mean_abs(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

fn decoded(png: &[u8]) -> RgbImage {
    image::load_from_memory(png).unwrap().into_rgb8()
}

/// The one image of a prepare folder.
fn only_image(dir: &Path) -> (i32, i32, RgbImage) {
    let r = rows(dir);
    assert_eq!(r.len(), 1, "{}", dir.display());
    (r[0].1, r[0].2, decoded(&r[0].3))
}

/// PIL's anti-aliased bilinear resize of a whole file: the reference for
/// what `pad` and `squash` keep.
fn pil_resize(file: &Path, w: u32, h: u32, out: &Path) -> RgbImage {
    let script = format!(
        "from PIL import Image\nImage.open({:?}).convert('RGB').resize(({w}, {h}), Image.BILINEAR).save({:?})",
        s(file),
        s(out)
    );
    let o = common::python().args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    image::open(out).unwrap().into_rgb8()
}

#[test]
fn pad_and_squash_keep_the_whole_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let input = one_photo(tmp.path(), 5, (700, 300));
    let wide = input.join("p.jpg");

    // pad: 700x300 in 64 is a 64x27 picture (27.4) on rows 18..45. Decoded
    // at full size (`--jpeg-scaling off`), the picture is PIL's resize of
    // the whole photo; with the default DCT scaling (1/8 here) it is close.
    let mut pictures = Vec::new();
    for scaling in ["off", "auto"] {
        let out = tmp.path().join(format!("pad-{scaling}"));
        let args = ["--size", "64", "--resize", "pad", "--pad-color", "#102030"];
        ok(&prepare(
            &input,
            &out,
            &[&args[..], &["--jpeg-scaling", scaling]].concat(),
        ));
        let (w, h, img) = only_image(&out);
        assert_eq!((w, h), (700, 300));
        for y in (0..18).chain(45..64) {
            for x in 0..64 {
                assert_eq!(
                    img.get_pixel(x, y).0,
                    [0x10, 0x20, 0x30],
                    "border at {x},{y}"
                );
            }
        }
        pictures.push(image::imageops::crop_imm(&img, 0, 18, 64, 27).to_image());
    }
    let want = pil_resize(&wide, 64, 27, &tmp.path().join("pil-pad.png"));
    let d = mean_abs(pictures[0].as_raw(), want.as_raw());
    assert!(
        d < 1.0,
        "pad: PIL's resize of the whole photo (mean abs {d})"
    );
    let d = mean_abs(pictures[1].as_raw(), want.as_raw());
    assert!(d < 5.0, "pad, DCT-scaled: near PIL's resize (mean abs {d})");

    // squash: the whole photo in the square.
    let out = tmp.path().join("squash");
    ok(&prepare(
        &input,
        &out,
        &[
            "--size",
            "64",
            "--resize",
            "squash",
            "--jpeg-scaling",
            "off",
        ],
    ));
    let (_, _, squashed) = only_image(&out);
    let want = pil_resize(&wide, 64, 64, &tmp.path().join("pil-squash.png"));
    let d = mean_abs(squashed.as_raw(), want.as_raw());
    assert!(
        d < 1.0,
        "squash: PIL's resize of the whole photo (mean abs {d})"
    );

    // crop keeps the middle only: far from the squashed photo.
    let out = tmp.path().join("crop");
    ok(&prepare(
        &input,
        &out,
        &["--size", "64", "--jpeg-scaling", "off"],
    ));
    let (_, _, cropped) = only_image(&out);
    assert!(mean_abs(cropped.as_raw(), squashed.as_raw()) > 10.0);
}

/// The stored image that `o` turns into `upright` (one of the eight
/// lossless transforms; found by trying them, so no inverse is guessed).
fn stored_for(upright: &RgbImage, o: image::metadata::Orientation) -> RgbImage {
    use image::imageops as ops;
    let candidates = [
        upright.clone(),
        ops::rotate90(upright),
        ops::rotate180(upright),
        ops::rotate270(upright),
        ops::flip_horizontal(upright),
        ops::flip_vertical(upright),
        ops::flip_horizontal(&ops::rotate90(upright)),
        ops::flip_vertical(&ops::rotate90(upright)),
    ];
    for c in candidates {
        let mut shown = image::DynamicImage::ImageRgb8(c.clone());
        shown.apply_orientation(o);
        if shown.into_rgb8() == *upright {
            return c;
        }
    }
    panic!("no transform for {o:?}");
}

#[test]
fn exif_orientation_is_right_for_every_policy() {
    use image::metadata::Orientation;
    let tmp = tempfile::tempdir().unwrap();
    // A real photo, upright and wide (640x360); at 48 the pad border is
    // 21 rows, odd: its extra row must be at the bottom of the *displayed*
    // square. `u.jpg` is upright; `rN.jpg` stores the pixels that EXIF
    // orientation N shows upright, with the tag in `tagged/`, without in `bare/`.
    let upright = resized(&photos()[9], 640, 360);
    let (tagged, bare) = (tmp.path().join("tagged"), tmp.path().join("bare"));
    fs::create_dir_all(&tagged).unwrap();
    fs::create_dir_all(&bare).unwrap();
    fs::write(tagged.join("u.jpg"), jpeg(&upright, 95)).unwrap();
    for tag in 2u16..=8 {
        let stored = stored_for(&upright, Orientation::from_exif(tag as u8).unwrap());
        let bytes = jpeg(&stored, 95);
        fs::write(
            tagged.join(format!("r{tag}.jpg")),
            with_orientation(&bytes, tag),
        )
        .unwrap();
        fs::write(bare.join(format!("r{tag}.jpg")), &bytes).unwrap();
    }
    for p in ["crop", "pad", "squash"] {
        let args = ["--size", "48", "--resize", p, "--pad-color", "white"];
        let out = tmp.path().join(format!("tagged-{p}"));
        ok(&prepare(&tagged, &out, &args));
        let got = rows(&out);
        let out = tmp.path().join(format!("bare-{p}"));
        ok(&prepare(&bare, &out, &args));
        let without = rows(&out);
        // Rows in name order: r2..r8, then u.
        assert_eq!(got.len(), 8);
        let want = decoded(&got[7].3);
        for (i, tag) in (2u16..=8).enumerate() {
            let (name, w, h, png) = &got[i];
            assert_eq!(name, &format!("r{tag}.jpg"));
            assert_eq!(
                (*w, *h),
                (640, 360),
                "orientation {tag}: recorded as displayed"
            );
            let img = decoded(png);
            let d = mean_abs(img.as_raw(), want.as_raw());
            assert!(
                d < 3.0,
                "orientation {tag}, {p}: mean abs {d} from the upright photo's"
            );
            if p == "pad" {
                // fit(640, 360, 48) = 48x27, on rows 10..37 of the displayed square.
                for y in (0..10).chain(37..48) {
                    for x in 0..48 {
                        assert_eq!(img.get_pixel(x, y).0, [255; 3], "{tag}: border {x},{y}");
                    }
                }
            }
            // Without the tag the same pixels come out sideways or mirrored.
            let d = mean_abs(decoded(&without[i].3).as_raw(), want.as_raw());
            assert!(
                d > 8.0,
                "orientation {tag}, {p}: the tag changes nothing ({d})"
            );
        }
    }
}

#[test]
fn policy_and_filter_are_recorded_in_the_manifest_and_the_schema() {
    use fewlabels::codec::{Color, Filter, Geometry, Resize};
    use fewlabels::shard::{schema, shard_schema};
    let tmp = tempfile::tempdir().unwrap();
    let input = one_photo(tmp.path(), 1, (300, 200));
    fs::copy(&photos()[0], input.join("a.jpg")).unwrap();
    let cases: [(&[&str], Geometry); 2] = [
        (&[], Geometry::default()),
        (
            &[
                "--resize",
                "pad",
                "--filter",
                "lanczos3",
                "--pad-color",
                "255,255,255",
            ],
            Geometry {
                resize: Resize::Pad,
                filter: Filter::Lanczos3,
                pad_color: Color([255, 255, 255]),
            },
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("o{i}"));
        let mut a = vec!["--size", "32"];
        a.extend_from_slice(args);
        ok(&prepare(&input, &out, &a));
        let m = Manifest::read_complete(&out, StageName::Prepare).unwrap();
        assert_eq!(
            m.params["resize"],
            serde_json::to_value(want.resize).unwrap()
        );
        assert_eq!(
            m.params["filter"],
            serde_json::to_value(want.filter).unwrap()
        );
        assert_eq!(m.params["pad-color"], want.pad_color.to_string());
        let sch = shard_schema(&out.join("images-00000.arrow")).unwrap();
        assert_eq!(schema::geometry_of(&sch), Some(*want));
        assert!(sch.metadata().contains_key(schema::RESIZE_KEY));
    }
}

#[test]
fn every_filter_runs_and_each_gives_its_own_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let input = one_photo(tmp.path(), 3, (500, 320));
    let mut seen: Vec<(&str, Vec<u8>)> = Vec::new();
    for f in [
        "box",
        "bilinear",
        "hamming",
        "catmull-rom",
        "mitchell",
        "gaussian",
        "lanczos3",
    ] {
        for resize in ["crop", "squash"] {
            let out = tmp.path().join(format!("{f}-{resize}"));
            // 36, not 40: 320 / 8 = 40 would decode the square at its final
            // size, where every filter is the identity.
            ok(&prepare(
                &input,
                &out,
                &["--size", "36", "--filter", f, "--resize", resize],
            ));
            let img = only_image(&out).2.into_raw();
            for (other, px) in &seen {
                assert!(img != *px, "{f} {resize} equals {other}");
            }
            seen.push((f, img));
        }
    }
}

#[test]
fn square_images_come_out_the_same_whatever_the_policy() {
    // Fashion-MNIST is square: pad and squash have nothing to add or stretch.
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = common::fashion_raw("t10k", 20);
    let imgs: Vec<&[u8]> = images.iter().map(|v| v.as_slice()).collect();
    let idx = common::write_idx(&tmp.path().join("idx"), "t10k", &imgs, &labels);
    let mut digests = Vec::new();
    for p in ["crop", "pad", "squash"] {
        let out = tmp.path().join(p);
        ok(&prepare(&idx, &out, &["--size", "32", "--resize", p]));
        digests.push(digest(&rows(&out)));
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2]);
}

/// A one-line usage error (exit 2) whose line contains every one of `words`.
fn usage_error(o: &std::process::Output, words: &[&str]) {
    common::one_line_error(o, 2, words)
}

#[test]
fn bad_values_are_one_line_usage_errors_naming_the_flag_or_key() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let input = tmp.path();
    usage_error(
        &prepare(input, &out, &["--resize", "fit"]),
        &["--resize", "fit", "crop, pad, squash"],
    );
    usage_error(
        &prepare(input, &out, &["--filter", "cubic"]),
        &["--filter", "cubic", "lanczos3"],
    );
    usage_error(
        &prepare(input, &out, &["--pad-color", "red2"]),
        &["--pad-color", "red2", "#rrggbb"],
    );
    assert!(!out.exists(), "nothing made on a usage error");
    // The same keys in a pipeline's [prepare] table name the file and line.
    for (key, value, words) in [
        ("resize", "\"fit\"", vec!["pipe.toml:4", "fit", "crop"]),
        (
            "filter",
            "\"cubic\"",
            vec!["pipe.toml:4", "cubic", "lanczos3"],
        ),
        (
            "pad-color",
            "\"300,0,0\"",
            vec!["pipe.toml:4", "300,0,0", "colour"],
        ),
    ] {
        let pipe = tmp.path().join("pipe.toml");
        fs::write(
            &pipe,
            format!(
                "[prepare]\ninput = {:?}\nsize = 32\n{key} = {value}\n",
                s(&common::photos())
            ),
        )
        .unwrap();
        let o = common::run(&["run", s(&pipe), "--plan", "--run-dir", s(&out)]);
        usage_error(&o, &words);
    }
}

#[test]
fn a_pipeline_takes_the_resize_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let input = one_photo(tmp.path(), 2, (400, 240));
    let pipe = tmp.path().join("p.toml");
    fs::write(
        &pipe,
        format!(
            "[prepare]\ninput = {:?}\nsize = 32\nresize = \"pad\"\nfilter = \"catmull-rom\"\npad-color = \"gray\"\n",
            s(&input)
        ),
    )
    .unwrap();
    let run = tmp.path().join("run");
    ok(&common::run(&[
        "--quiet",
        "run",
        s(&pipe),
        "--run-dir",
        s(&run),
    ]));
    let images = run.join("images");
    let m = Manifest::read_complete(&images, StageName::Prepare).unwrap();
    assert_eq!(m.params["resize"], "pad");
    assert_eq!(m.params["filter"], "catmull-rom");
    assert_eq!(m.params["pad-color"], "#808080");
    // The same as the command line with the same flags, byte for byte.
    let cli = tmp.path().join("cli");
    ok(&prepare(
        &input,
        &cli,
        &[
            "--size",
            "32",
            "--resize",
            "pad",
            "--filter",
            "catmull-rom",
            "--pad-color",
            "#808080",
        ],
    ));
    assert_eq!(rows(&images), rows(&cli));
    // 400x240 in 32: a 32x19 picture on rows 6..25, gray above and below.
    let (_, _, img) = only_image(&images);
    assert_eq!(img.get_pixel(5, 2).0, [128; 3]);
    assert_eq!(img.get_pixel(5, 28).0, [128; 3]);
}

/// `--resize keep-ratio` stores whole photos, the shorter side at `--size`
/// and the aspect ratio kept (EXIF orientation applied), for compare_gan's
/// crops over the whole photo; a reader that wants squares gets the centred
/// one, which is the centre crop of the same size up to resampling; raw
/// rows, which carry no size of their own, are refused with it.
#[test]
fn keep_ratio_keeps_the_whole_photo_by_its_shorter_side() {
    let tmp = tempfile::tempdir().unwrap();
    shapes_folder(tmp.path());
    let (whole, crop) = (tmp.path().join("whole"), tmp.path().join("crop"));
    let photos = tmp.path().join("photos");
    ok(&prepare(
        &photos,
        &whole,
        &["--size", "64", "--resize", "keep-ratio"],
    ));
    ok(&prepare(&photos, &crop, &["--size", "64"]));
    let (whole_rows, crop_rows) = (rows(&whole), rows(&crop));
    assert_eq!(whole_rows.len(), 13);
    let mut shapes = std::collections::BTreeSet::new();
    for ((name, w, h, bytes), (_, _, _, square)) in whole_rows.iter().zip(&crop_rows) {
        let img = decoded(bytes);
        let (sw, sh) = img.dimensions();
        assert_eq!(sw.min(sh), 64, "{name}: {sw}x{sh}");
        // The displayed aspect ratio, to the rounding of the longer side.
        let want = (*w.max(h) as f64 * 64.0 / *w.min(h) as f64).round() as u32;
        assert_eq!(sw.max(sh), want, "{name}: {sw}x{sh} from {w}x{h}");
        assert_eq!(sw > sh, w > h, "{name}: oriented as displayed");
        shapes.insert((sw, sh));
        // The centred square: close to the centre crop (the whole photo is
        // resampled on another grid, and the square starts on a whole
        // pixel, up to half a pixel off the crop's centre), and much closer
        // than the square at the photo's edge.
        let centre = fewlabels::shard::stored::decode_square(bytes, None).unwrap();
        let square = decoded(square);
        let d = mean_abs(centre.as_raw(), square.as_raw());
        assert!(
            d < 10.0,
            "{name}: centre square vs centre crop differ by {d} grey levels"
        );
        if sw != sh {
            let edge = image::imageops::crop_imm(&img, 0, 0, 64, 64).to_image();
            let d_edge = mean_abs(edge.as_raw(), square.as_raw());
            assert!(
                d_edge > 2.0 * d,
                "{name}: edge square {d_edge} vs centre {d}"
            );
        }
    }
    assert!(
        shapes.len() >= 4,
        "wide, tall and square photos: {shapes:?}"
    );
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(whole.join("_stage.json")).unwrap()).unwrap();
    assert_eq!(m["params"]["resize"], "keep-ratio");
    usage_error(
        &prepare(
            &photos,
            &tmp.path().join("raw"),
            &["--resize", "keep-ratio", "--codec", "raw"],
        ),
        &["codec", "raw", "keep-ratio"],
    );
}
