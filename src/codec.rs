//! Image codec for `prepare`: bytes in, a `size`x`size` 8-bit RGB image out,
//! encoded as PNG, JPEG or raw pixels. A building block: it knows nothing of
//! stages or the command line, and every failure is a one-line reason
//! (`Err(String)`) that the caller records as a reject.
//!
//! The steps, in the order that keeps decoding cheap (decode dominates, see
//! /work/shared/MEASUREMENTS.md and benches/prepare/):
//! 1. Sniff the format from the content, never from the file name (ImageNet
//!    has a PNG named `.JPEG`).
//! 2. Read the header only and refuse an image above `max_pixels` before
//!    anything is allocated for its pixels.
//! 3. Decode. JPEG goes through `jpeg-decoder` with DCT-domain scaling
//!    (`Decoder::scale`): when the shorter side is at least 2x the target,
//!    the IDCT produces a 1/2, 1/4 or 1/8 image directly, the largest
//!    reduction that keeps the shorter side >= `size`, so the anti-aliased
//!    resize below still only downscales. Other formats go through `image`
//!    with allocation limits.
//! 4. Convert to 8-bit RGB: grayscale is expanded, 16-bit is scaled, CMYK
//!    (and YCCK) is converted with `rgb = (255 - c) * (255 - k) / 255`,
//!    palettes are expanded, alpha is composited on white. An animated GIF
//!    (or APNG) gives its first frame, as PIL does.
//! 5. Centre-crop a square of the shorter side and resize it to `size` with
//!    `fast_image_resize` (SIMD convolution, bilinear with a support scaled to
//!    the reduction: anti-aliased like PIL's `Resize`; small images are
//!    upscaled, e.g. 28 to 32).
//!
//! EXIF orientation: applied. A photo shot upright but stored sideways with
//! an orientation tag is shown upright by browsers, viewers, OpenCV's
//! `imdecode` (img2dataset) and `ImageOps.exif_transpose`; a GAN trained on
//! sideways faces learns sideways faces. The `width`/`height` a caller
//! records are therefore those of the image as displayed. Because the crop
//! is the centred square, rotating or flipping commutes with it, so the
//! transform is applied to the small output square (a few microseconds)
//! rather than to the decoded image. JPEG (APP1 Exif), PNG (eXIf), TIFF and
//! WebP tags are honoured; an unreadable tag counts as "no transform".
use std::io::Cursor;

use fast_image_resize as fr;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageFormat, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

/// How output images are stored in the `image` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Lossless PNG (what Hugging Face `datasets` and PIL read by default).
    #[default]
    Png,
    /// JPEG at `--quality`.
    Jpeg,
    /// Uncompressed RGB bytes, row-major HWC, `size*size*3` of them.
    Raw,
}

/// zlib effort for PNG output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PngCompression {
    /// fdeflate's fast mode: slightly larger files for a fraction of the
    /// time (figures in benches/prepare/README.md).
    #[default]
    Fast,
    /// zlib level 6.
    Default,
}

/// Whether JPEGs may be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JpegScaling {
    /// Scale when the shorter side stays >= the target size.
    #[default]
    Auto,
    /// Always decode at full size.
    Off,
}

/// What the codec needs to know; built once per run.
#[derive(Debug, Clone)]
pub struct Options {
    pub size: u32,
    pub codec: Codec,
    pub quality: u8,
    pub max_pixels: u64,
    pub jpeg_scaling: JpegScaling,
    pub png_compression: PngCompression,
}

/// One prepared image.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Width and height of the source image as displayed (after EXIF orientation).
    pub width: u32,
    pub height: u32,
    /// The encoded `size`x`size` image.
    pub bytes: Vec<u8>,
}

/// An 8-bit RGB pixel buffer.
struct Rgb {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

/// Decodes, crops, resizes and encodes one image file's bytes.
pub fn prepare(bytes: &[u8], opts: &Options) -> Result<Prepared, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".to_string());
    }
    let format = image::guess_format(bytes)
        .map_err(|_| "not an image (content matches no known image format)".to_string())?;
    let (rgb, orientation, (width, height)) = match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, opts)?,
        other => decode_other(bytes, other, opts)?,
    };
    let (width, height) = displayed(width, height, orientation);
    let square = crop_resize(&rgb, opts.size)?;
    let square = orient(square, opts.size, orientation);
    Ok(Prepared {
        width,
        height,
        bytes: encode(&square, opts)?,
    })
}

/// Prepares an image given as raw 8-bit grayscale pixels (IDX files).
pub fn prepare_gray(
    pixels: &[u8],
    width: u32,
    height: u32,
    opts: &Options,
) -> Result<Prepared, String> {
    let rgb = Rgb {
        width,
        height,
        pixels: pixels.iter().flat_map(|&v| [v, v, v]).collect(),
    };
    let square = crop_resize(&rgb, opts.size)?;
    Ok(Prepared {
        width,
        height,
        bytes: encode(&square, opts)?,
    })
}

fn displayed(w: u32, h: u32, o: Orientation) -> (u32, u32) {
    match o {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (h, w),
        _ => (w, h),
    }
}

fn check_pixels(w: u32, h: u32, max: u64) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image has no pixels ({w}x{h})"));
    }
    let n = w as u64 * h as u64;
    if n > max {
        return Err(format!(
            "{w}x{h} = {n} pixels is above --max-pixels {max} (refused before decoding)"
        ));
    }
    Ok(())
}

/// JPEG through jpeg-decoder: header first, then a DCT-scaled decode.
/// Returns the pixels, the EXIF orientation and the full-size dimensions.
fn decode_jpeg(bytes: &[u8], opts: &Options) -> Result<(Rgb, Orientation, (u32, u32)), String> {
    let mut d = jpeg_decoder::Decoder::new(bytes);
    d.read_info().map_err(|e| format!("corrupt JPEG ({e})"))?;
    let info = d.info().ok_or("corrupt JPEG (no frame header)")?;
    let (w, h) = (info.width as u32, info.height as u32);
    check_pixels(w, h, opts.max_pixels)?;
    if opts.jpeg_scaling == JpegScaling::Auto {
        // Ask for the smallest image whose shorter side is still >= size:
        // jpeg-decoder picks the largest 1/8..1 reduction meeting both requests.
        let short = w.min(h).max(1) as u64;
        let want = |side: u32| -> u16 {
            let v = (opts.size as u64 * side as u64).div_ceil(short);
            v.min(u16::MAX as u64) as u16
        };
        d.scale(want(w), want(h))
            .map_err(|e| format!("corrupt JPEG ({e})"))?;
    }
    let pixels = d.decode().map_err(|e| {
        if has_eoi(bytes) {
            format!("corrupt JPEG ({e})")
        } else {
            format!("truncated JPEG (no end-of-image marker; {e})")
        }
    })?;
    let info = d.info().ok_or("corrupt JPEG (no frame header)")?;
    let (ow, oh) = (info.width as u32, info.height as u32);
    let n = ow as usize * oh as usize;
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        // 16-bit lossless JPEG: big-endian samples; keep the high byte.
        jpeg_decoder::PixelFormat::L16 => pixels
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        // jpeg-decoder has already undone Adobe's inversion: these are true CMYK.
        jpeg_decoder::PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .flat_map(|p| {
                let k = 255 - p[3] as u32;
                let f = |c: u8| ((255 - c as u32) * k / 255) as u8;
                [f(p[0]), f(p[1]), f(p[2])]
            })
            .collect(),
    };
    if rgb.len() < n * 3 {
        return Err("corrupt JPEG (decoder returned too few pixels)".to_string());
    }
    if !has_eoi(bytes) {
        // jpeg-decoder pads a cut-off scan with zeros instead of failing; a
        // file with no end-of-image marker is truncated (a half-grey image).
        return Err("truncated JPEG (no end-of-image marker)".to_string());
    }
    let orientation = d
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok((
        Rgb {
            width: ow,
            height: oh,
            pixels: rgb,
        },
        orientation,
        (w, h),
    ))
}

/// Whether a JPEG ends with EOI (FF D9), allowing the trailing padding
/// (zeros, newlines) some writers append.
fn has_eoi(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    let end = tail
        .iter()
        .rposition(|&b| b != 0 && b != b'\n' && b != b'\r' && b != b' ')
        .map(|i| i + 1)
        .unwrap_or(0);
    end >= 2 && tail[end - 2] == 0xFF && tail[end - 1] == 0xD9
}

/// Every other format through the `image` crate, with allocation limits.
fn decode_other(
    bytes: &[u8],
    format: ImageFormat,
    opts: &Options,
) -> Result<(Rgb, Orientation, (u32, u32)), String> {
    let name = format!("{format:?}").to_uppercase();
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // 8 bytes per pixel covers RGBA16, the widest layout `image` produces.
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let mut dec = reader
        .into_decoder()
        .map_err(|e| format!("corrupt {name} ({e})"))?;
    let (w, h) = dec.dimensions();
    check_pixels(w, h, opts.max_pixels)?;
    let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(dec).map_err(|e| format!("corrupt {name} ({e})"))?;
    let (iw, ih) = (img.width(), img.height());
    let pixels = if img.color().has_alpha() {
        // Composite on white: a transparent background reads as paper, not black.
        let rgba = img.into_rgba8();
        let mut out = Vec::with_capacity(iw as usize * ih as usize * 3);
        for p in rgba.pixels() {
            let a = p.0[3] as u32;
            for c in &p.0[..3] {
                out.push(((*c as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
            }
        }
        out
    } else {
        img.into_rgb8().into_raw()
    };
    Ok((
        Rgb {
            width: iw,
            height: ih,
            pixels,
        },
        orientation,
        (w, h),
    ))
}

thread_local! {
    static RESIZER: std::cell::RefCell<fr::Resizer> = std::cell::RefCell::new(new_resizer());
}

fn new_resizer() -> fr::Resizer {
    let mut r = fr::Resizer::new();
    // Benchmark lever only (benches/prepare/): the scalar path, to measure
    // what the SIMD one buys. Results are identical by fast_image_resize's design.
    if std::env::var_os("FEWLABELS_RESIZE_NO_SIMD").is_some() {
        // SAFETY: `None` (plain Rust) is supported by every CPU.
        unsafe { r.set_cpu_extensions(fr::CpuExtensions::None) };
    }
    r
}

/// Centre-crops the square of the shorter side and resizes it to `size`.
fn crop_resize(src: &Rgb, size: u32) -> Result<Vec<u8>, String> {
    let (w, h) = (src.width, src.height);
    let side = w.min(h);
    let view = fr::images::ImageRef::new(w, h, &src.pixels, fr::PixelType::U8x3)
        .map_err(|e| format!("internal: bad pixel buffer ({e})"))?;
    let mut dst = fr::images::Image::new(size, size, fr::PixelType::U8x3);
    let left = (w - side) as f64 / 2.0;
    let top = (h - side) as f64 / 2.0;
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(left, top, side as f64, side as f64);
    RESIZER
        .with(|r| r.borrow_mut().resize(&view, &mut dst, &options))
        .map_err(|e| format!("internal: resize failed ({e})"))?;
    Ok(dst.into_vec())
}

/// Applies an EXIF orientation to the `size`x`size` output (see the module doc).
fn orient(square: Vec<u8>, size: u32, o: Orientation) -> Vec<u8> {
    if o == Orientation::NoTransforms {
        return square;
    }
    let Some(img) = RgbImage::from_raw(size, size, square.clone()) else {
        return square;
    };
    let mut img = DynamicImage::ImageRgb8(img);
    img.apply_orientation(o);
    img.into_rgb8().into_raw()
}

fn encode(pixels: &[u8], opts: &Options) -> Result<Vec<u8>, String> {
    let s = opts.size;
    let mut out = Vec::with_capacity(pixels.len() / 2);
    let res =
        match opts.codec {
            Codec::Raw => return Ok(pixels.to_vec()),
            Codec::Png => {
                let compression = match opts.png_compression {
                    PngCompression::Fast => CompressionType::Fast,
                    PngCompression::Default => CompressionType::Default,
                };
                PngEncoder::new_with_quality(&mut out, compression, FilterType::Adaptive)
                    .write_image(pixels, s, s, image::ExtendedColorType::Rgb8)
            }
            Codec::Jpeg => JpegEncoder::new_with_quality(&mut out, opts.quality).write_image(
                pixels,
                s,
                s,
                image::ExtendedColorType::Rgb8,
            ),
        };
    res.map_err(|e| format!("internal: encoding failed ({e})"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: u32) -> Options {
        Options {
            size,
            codec: Codec::Raw,
            quality: 90,
            max_pixels: 1 << 30,
            jpeg_scaling: JpegScaling::Auto,
            png_compression: PngCompression::Fast,
        }
    }

    fn jpeg(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 95)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn centre_crop_keeps_the_middle_square() {
        // Left and right thirds red, middle third green: the crop is all green.
        let bytes = jpeg(300, 100, |x, _| {
            if (100..200).contains(&x) {
                [0, 255, 0]
            } else {
                [255, 0, 0]
            }
        });
        let p = prepare(&bytes, &opts(16)).unwrap();
        assert_eq!((p.width, p.height), (300, 100));
        assert_eq!(p.bytes.len(), 16 * 16 * 3);
        for px in p.bytes.chunks(3) {
            assert!(px[1] > 200 && px[0] < 60, "{px:?}");
        }
    }

    #[test]
    fn dct_scaling_matches_full_decode_closely() {
        let bytes = jpeg(512, 384, |x, y| {
            [(x / 2) as u8, (y / 2) as u8, ((x + y) / 4) as u8]
        });
        let scaled = prepare(&bytes, &opts(64)).unwrap();
        let mut o = opts(64);
        o.jpeg_scaling = JpegScaling::Off;
        let full = prepare(&bytes, &o).unwrap();
        let mean_abs: f64 = scaled
            .bytes
            .iter()
            .zip(&full.bytes)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / scaled.bytes.len() as f64;
        assert!(mean_abs < 2.0, "mean abs difference {mean_abs}");
    }

    #[test]
    fn truncated_jpeg_is_refused() {
        let bytes = jpeg(64, 64, |x, y| [x as u8, y as u8, 0]);
        let cut = &bytes[..bytes.len() / 2];
        let err = prepare(cut, &opts(16)).unwrap_err();
        assert!(err.contains("JPEG"), "{err}");
    }

    #[test]
    fn orientation_rotates_the_output() {
        // A 2x2 marker: top-left red. Rotate90 moves it to the top-right.
        let mut sq = vec![0u8; 2 * 2 * 3];
        sq[0] = 255;
        let r = orient(sq, 2, Orientation::Rotate90);
        assert_eq!(&r[3..6], &[255, 0, 0]);
        assert_eq!(displayed(30, 20, Orientation::Rotate90), (20, 30));
    }

    #[test]
    fn eoi_detection_allows_padding() {
        assert!(has_eoi(&[0xFF, 0xD8, 0xFF, 0xD9]));
        assert!(has_eoi(&[0xFF, 0xD8, 0xFF, 0xD9, 0, 0, b'\n']));
        assert!(!has_eoi(&[0xFF, 0xD8, 0x12, 0x34]));
    }
}
