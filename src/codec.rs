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
//! 3. Decode. JPEG goes through libjpeg-turbo (the `turbojpeg` crate, its
//!    SIMD built in) with DCT-domain scaling: the IDCT produces the image at
//!    1/8, 1/4 or 1/2 of its size directly, the smallest whose shorter side
//!    is still >= `size`, so the anti-aliased resize below still only
//!    downscales (as PIL's draft mode does). Only the part of the image
//!    around the centred square is decoded (libjpeg-turbo's partial decode;
//!    the output is the same). What libjpeg-turbo refuses or only decodes
//!    with a warning (CMYK/YCCK, lossless, 12-bit, truncated or corrupt
//!    data) goes to `jpeg-decoder` instead, which decides and words the
//!    reject as before. Other formats go through `image` with allocation
//!    limits.
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
    /// fdeflate's fast mode with the Paeth filter: slightly larger files for
    /// a fraction of the time (figures in benches/prepare/README.md).
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

/// An 8-bit RGB pixel buffer and the square of it that becomes the output.
struct Rgb {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    crop: Crop,
}

/// A square in pixel coordinates (fractional: the centre of an odd margin).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Crop {
    left: f64,
    top: f64,
    side: f64,
}

impl Crop {
    /// The centred square of the shorter side of a `w`x`h` image.
    fn centre(w: u32, h: u32) -> Crop {
        let side = w.min(h);
        Crop {
            left: (w - side) as f64 / 2.0,
            top: (h - side) as f64 / 2.0,
            side: side as f64,
        }
    }
}

impl Rgb {
    /// A whole decoded image, to be cropped to its centred square.
    fn whole(width: u32, height: u32, pixels: Vec<u8>) -> Rgb {
        Rgb {
            width,
            height,
            pixels,
            crop: Crop::centre(width, height),
        }
    }
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
    give_back_scratch(rgb.pixels);
    let square = orient(square, opts.size, orientation);
    Ok(Prepared {
        width,
        height,
        bytes: encode(square, opts)?,
    })
}

/// Prepares an image given as raw 8-bit grayscale pixels (IDX files).
pub fn prepare_gray(
    pixels: &[u8],
    width: u32,
    height: u32,
    opts: &Options,
) -> Result<Prepared, String> {
    let rgb = Rgb::whole(
        width,
        height,
        pixels.iter().flat_map(|&v| [v, v, v]).collect(),
    );
    let square = crop_resize(&rgb, opts.size)?;
    Ok(Prepared {
        width,
        height,
        bytes: encode(square, opts)?,
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
            "{w}x{h} = {n} pixels is above the max-pixels limit of {max} (refused before decoding)"
        ));
    }
    Ok(())
}

/// Decoded pixels, their EXIF orientation and the full-size dimensions.
type Decoded = (Rgb, Orientation, (u32, u32));

/// JPEG: libjpeg-turbo when it takes the file cleanly, else jpeg-decoder.
fn decode_jpeg(bytes: &[u8], opts: &Options) -> Result<Decoded, String> {
    match decode_turbo(bytes, opts)? {
        Some(done) => Ok(done),
        None => decode_jpeg_fallback(bytes, opts),
    }
}

/// The power-of-two DCT scale (1/8, 1/4, 1/2 or 1, as `(num, denom)`) with
/// the smallest output whose shorter side still covers `size`. libjpeg-turbo
/// also offers 3/8, 5/8, 6/8 and 7/8, but its SIMD IDCTs are the 8x8, 4x4 and
/// 2x2 ones (the others are scalar C); most of the decode is the entropy
/// decoding, which no scale reduces, so a smaller output buys little.
fn turbo_scale(short: usize, size: u32, scaling: JpegScaling) -> (usize, usize) {
    if scaling == JpegScaling::Off {
        return (1, 1);
    }
    [8, 4, 2]
        .into_iter()
        .find(|&d| short.div_ceil(d) >= size as usize)
        .map_or((1, 1), |d| (1, d))
}

/// Where to decode and what to crop: the part of the scaled image that
/// libjpeg-turbo decodes (`region`, x aligned to the scaled iMCU width), and
/// the centred square inside it. The region keeps a margin of the resize
/// filter's support around the square, so the output equals that of a whole
/// decode (the test `partial_decode_equals_whole_decode_on_the_photos`)
/// while the columns or rows outside it are never colour-converted or
/// upsampled.
struct TurboPlan {
    scale: (usize, usize),
    region: (usize, usize, usize, usize),
    crop: Crop,
}

fn turbo_plan(w: usize, h: usize, mcu_w: Option<usize>, opts: &Options) -> TurboPlan {
    let scale = turbo_scale(w.min(h), opts.size, opts.jpeg_scaling);
    let scaled = |v: usize| (v * scale.0).div_ceil(scale.1);
    let (sw, sh) = (scaled(w), scaled(h));
    let whole = Crop::centre(sw as u32, sh as u32);
    let margin = (whole.side / opts.size as f64).ceil() as usize + 1;
    let (mut x, mut y, mut rw, mut rh) = (0, 0, sw, sh);
    if sw > sh {
        if let Some(mcu) = mcu_w.map(|m| (m * scale.0).div_ceil(scale.1)) {
            x = (whole.left as usize).saturating_sub(margin) / mcu * mcu;
            rw = ((whole.left + whole.side).ceil() as usize + margin).min(sw) - x;
        }
    } else if sh > sw {
        y = (whole.top as usize).saturating_sub(margin);
        rh = ((whole.top + whole.side).ceil() as usize + margin).min(sh) - y;
    }
    TurboPlan {
        scale,
        region: (x, y, rw, rh),
        crop: Crop {
            left: whole.left - x as f64,
            top: whole.top - y as f64,
            side: whole.side,
        },
    }
}

/// libjpeg-turbo through its TurboJPEG 3 C API (`turbojpeg::raw`): the safe
/// wrapper of the `turbojpeg` crate has no partial decode.
mod turbo {
    use std::os::raw::c_int;
    use turbojpeg::raw;

    /// A TurboJPEG decompressor handle, used by one thread (see `TURBO`).
    pub struct Decompressor(raw::tjhandle);

    /// What the header says, for choosing the path and the plan.
    pub struct Header {
        pub width: usize,
        pub height: usize,
        /// Width of an iMCU in pixels; `None` for an unknown subsampling.
        pub mcu_width: Option<usize>,
        /// 8-bit lossy YCbCr, grayscale or RGB: what this path decodes.
        pub plain: bool,
    }

    impl Decompressor {
        pub fn new() -> Option<Self> {
            // SAFETY: tj3Init has no preconditions; a null handle means failure.
            let h = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
            (!h.is_null()).then_some(Decompressor(h))
        }

        fn get(&self, param: raw::TJPARAM) -> c_int {
            // SAFETY: a valid handle; tj3Get only reads the handle's parameters.
            unsafe { raw::tj3Get(self.0, param as c_int) }
        }

        pub fn header(&mut self, bytes: &[u8]) -> Option<Header> {
            // SAFETY: a valid handle, and a pointer and length of a live slice.
            let rc = unsafe {
                raw::tj3DecompressHeader(self.0, bytes.as_ptr(), bytes.len() as raw::size_t)
            };
            if rc != 0 {
                return None;
            }
            let width = usize::try_from(self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH)).ok()?;
            let height = usize::try_from(self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT)).ok()?;
            let mcu_width = match self.get(raw::TJPARAM_TJPARAM_SUBSAMP) {
                raw::TJSAMP_TJSAMP_444
                | raw::TJSAMP_TJSAMP_GRAY
                | raw::TJSAMP_TJSAMP_440
                | raw::TJSAMP_TJSAMP_441 => Some(8),
                raw::TJSAMP_TJSAMP_422 | raw::TJSAMP_TJSAMP_420 => Some(16),
                raw::TJSAMP_TJSAMP_411 => Some(32),
                _ => None,
            };
            let colorspace = self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS;
            let plain = matches!(
                colorspace,
                raw::TJCS_TJCS_YCbCr | raw::TJCS_TJCS_GRAY | raw::TJCS_TJCS_RGB
            ) && self.get(raw::TJPARAM_TJPARAM_LOSSLESS) == 0
                && self.get(raw::TJPARAM_TJPARAM_PRECISION) == 8;
            Some(Header {
                width,
                height,
                mcu_width,
                plain,
            })
        }

        /// Decodes `region` (x, y, w, h, in scaled pixels) of the image whose
        /// header was read last, at `scale`, as RGB into `out` (w * h * 3
        /// bytes). False on any error or warning.
        pub fn decode(
            &mut self,
            bytes: &[u8],
            scale: (usize, usize),
            region: (usize, usize, usize, usize),
            out: &mut [u8],
        ) -> bool {
            let (x, y, w, h) = region;
            if out.len() != w * h * 3 {
                return false;
            }
            let factor = raw::tjscalingfactor {
                num: scale.0 as c_int,
                denom: scale.1 as c_int,
            };
            let crop = raw::tjregion {
                x: x as c_int,
                y: y as c_int,
                w: w as c_int,
                h: h as c_int,
            };
            // SAFETY: a valid handle on which tj3DecompressHeader succeeded for
            // `bytes`; `out` holds exactly the w x h RGB pixels (pitch 3w) that
            // the cropping region makes tj3Decompress8 write.
            unsafe {
                raw::tj3SetScalingFactor(self.0, factor) == 0
                    && raw::tj3SetCroppingRegion(self.0, crop) == 0
                    && raw::tj3Decompress8(
                        self.0,
                        bytes.as_ptr(),
                        bytes.len() as raw::size_t,
                        out.as_mut_ptr(),
                        (w * 3) as c_int,
                        raw::TJPF_TJPF_RGB,
                    ) == 0
            }
        }
    }

    impl Drop for Decompressor {
        fn drop(&mut self) {
            // SAFETY: the handle came from tj3Init and is destroyed once.
            unsafe { raw::tj3Destroy(self.0) }
        }
    }
}

thread_local! {
    /// One libjpeg-turbo decompressor per worker thread (`None` if it could
    /// not be created: every JPEG then takes the fallback).
    static TURBO: std::cell::RefCell<Option<turbo::Decompressor>> =
        std::cell::RefCell::new(turbo::Decompressor::new());
}

/// libjpeg-turbo's path. `Ok(None)`: not for libjpeg-turbo (a colour space,
/// precision or coding it does not turn into 8-bit RGB, a missing end-of-
/// image marker, or any error or warning while decoding); the fallback
/// decides. `Err` is a reject that needs no second opinion (too many pixels).
fn decode_turbo(bytes: &[u8], opts: &Options) -> Result<Option<Decoded>, String> {
    TURBO.with(|cell| {
        let mut cell = cell.borrow_mut();
        let Some(d) = cell.as_mut() else {
            return Ok(None);
        };
        let Some(header) = d.header(bytes) else {
            return Ok(None);
        };
        let (w, h) = (header.width as u32, header.height as u32);
        check_pixels(w, h, opts.max_pixels)?;
        // libjpeg-turbo pads a cut-off scan with grey and only warns; the
        // fallback names a truncated file as such.
        if !header.plain || !has_eoi(bytes) {
            return Ok(None);
        }
        let plan = turbo_plan(header.width, header.height, header.mcu_width, opts);
        let (_, _, rw, rh) = plan.region;
        let mut pixels = take_scratch(rw * rh * 3);
        if !d.decode(bytes, plan.scale, plan.region, &mut pixels) {
            give_back_scratch(pixels);
            return Ok(None);
        }
        Ok(Some((
            Rgb {
                width: rw as u32,
                height: rh as u32,
                pixels,
                crop: plan.crop,
            },
            jpeg_orientation(bytes),
            (w, h),
        )))
    })
}

thread_local! {
    /// The decode buffer, reused from image to image on each worker thread.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A buffer of exactly `len` bytes (contents unspecified), reusing this thread's.
fn take_scratch(len: usize) -> Vec<u8> {
    let mut v = SCRATCH.with(|c| c.take());
    v.resize(len, 0);
    v
}

fn give_back_scratch(v: Vec<u8>) {
    SCRATCH.with(|c| c.set(v));
}

/// The EXIF orientation of a JPEG: its last APP1 `Exif` segment before the
/// scan, as jpeg-decoder reads it. Anything unreadable means "no transform".
fn jpeg_orientation(bytes: &[u8]) -> Orientation {
    let mut exif = None;
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // start of scan / end of image: no more metadata
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        let Some(body) = bytes.get(i + 4..i + 2 + len) else {
            break;
        };
        if marker == 0xE1 && body.starts_with(b"Exif\0\0") {
            exif = Some(&body[6..]);
        }
        i += 2 + len;
    }
    exif.and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms)
}

/// JPEG through jpeg-decoder: header first, then a DCT-scaled decode (1/2,
/// 1/4 or 1/8). Returns the pixels, the EXIF orientation and the full-size
/// dimensions.
fn decode_jpeg_fallback(bytes: &[u8], opts: &Options) -> Result<Decoded, String> {
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
    Ok((Rgb::whole(ow, oh, rgb), orientation, (w, h)))
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
fn decode_other(bytes: &[u8], format: ImageFormat, opts: &Options) -> Result<Decoded, String> {
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
    Ok((Rgb::whole(iw, ih, pixels), orientation, (w, h)))
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

/// Crops the image's square (`src.crop`) and resizes it to `size`.
fn crop_resize(src: &Rgb, size: u32) -> Result<Vec<u8>, String> {
    let view = fr::images::ImageRef::new(src.width, src.height, &src.pixels, fr::PixelType::U8x3)
        .map_err(|e| format!("internal: bad pixel buffer ({e})"))?;
    let mut dst = fr::images::Image::new(size, size, fr::PixelType::U8x3);
    let c = src.crop;
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(c.left, c.top, c.side, c.side);
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

fn encode(pixels: Vec<u8>, opts: &Options) -> Result<Vec<u8>, String> {
    let s = opts.size;
    let mut out = Vec::with_capacity(pixels.len() / 2);
    let res = match opts.codec {
        Codec::Raw => return Ok(pixels),
        Codec::Png => {
            // Fast: one Paeth filter for every row rather than trying all
            // five on each row and keeping the best (Adaptive).
            let (compression, filter) = match opts.png_compression {
                PngCompression::Fast => (CompressionType::Fast, FilterType::Paeth),
                PngCompression::Default => (CompressionType::Default, FilterType::Adaptive),
            };
            PngEncoder::new_with_quality(&mut out, compression, filter).write_image(
                &pixels,
                s,
                s,
                image::ExtendedColorType::Rgb8,
            )
        }
        Codec::Jpeg => JpegEncoder::new_with_quality(&mut out, opts.quality).write_image(
            &pixels,
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

    /// Decodes `bytes` through libjpeg-turbo at `plan`, then crops and resizes.
    fn turbo_square(bytes: &[u8], plan: &TurboPlan, size: u32) -> Vec<u8> {
        TURBO.with(|c| {
            let mut c = c.borrow_mut();
            let d = c.as_mut().expect("libjpeg-turbo handle");
            d.header(bytes).expect("header");
            let (_, _, w, h) = plan.region;
            let mut pixels = vec![0; w * h * 3];
            assert!(d.decode(bytes, plan.scale, plan.region, &mut pixels));
            let rgb = Rgb {
                width: w as u32,
                height: h as u32,
                pixels,
                crop: plan.crop,
            };
            crop_resize(&rgb, size).unwrap()
        })
    }

    #[test]
    fn partial_decode_equals_whole_decode_on_the_photos() {
        let dir = std::env::var("FEWLABELS_PHOTOS").expect("FEWLABELS_PHOTOS (run make setup)");
        let mut files = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("imagenet_") && name.ends_with(".jpg")) {
                continue;
            }
            let photo = image::open(&path).unwrap().into_rgb8();
            // Each (square) photo stretched wide and tall, so both crop axes
            // and several DCT scales are hit.
            let (w, h) = photo.dimensions();
            for (nw, nh) in [(w * 2, h), (w, h * 2 + 8), (300, 901), (1001, 333)] {
                let img =
                    image::imageops::resize(&photo, nw, nh, image::imageops::FilterType::Triangle);
                let mut bytes = Vec::new();
                JpegEncoder::new_with_quality(&mut bytes, 85)
                    .write_image(img.as_raw(), nw, nh, image::ExtendedColorType::Rgb8)
                    .unwrap();
                for size in [32, 128] {
                    let o = opts(size);
                    let mcu = TURBO.with(|c| {
                        let mut c = c.borrow_mut();
                        c.as_mut().unwrap().header(&bytes).unwrap().mcu_width
                    });
                    let plan = turbo_plan(nw as usize, nh as usize, mcu, &o);
                    let (sw, sh) = (
                        (nw as usize * plan.scale.0).div_ceil(plan.scale.1),
                        (nh as usize * plan.scale.0).div_ceil(plan.scale.1),
                    );
                    let whole = TurboPlan {
                        scale: plan.scale,
                        region: (0, 0, sw, sh),
                        crop: Crop::centre(sw as u32, sh as u32),
                    };
                    assert_ne!(plan.region, whole.region, "{nw}x{nh}: nothing cut off");
                    assert_eq!(
                        turbo_square(&bytes, &plan, size),
                        turbo_square(&bytes, &whole, size),
                        "{} at {nw}x{nh} to {size}",
                        path.display()
                    );
                }
            }
            files += 1;
        }
        assert_eq!(files, 20, "the 20 foolbox photos");
    }

    #[test]
    fn eoi_detection_allows_padding() {
        assert!(has_eoi(&[0xFF, 0xD8, 0xFF, 0xD9]));
        assert!(has_eoi(&[0xFF, 0xD8, 0xFF, 0xD9, 0, 0, b'\n']));
        assert!(!has_eoi(&[0xFF, 0xD8, 0x12, 0x34]));
    }
}
