//! Image codec for `prepare`: bytes in, a `size`x`size` 8-bit RGB image out,
//! encoded as PNG, JPEG or raw pixels. A building block: it knows nothing of
//! stages or the command line, and every failure is a one-line reason
//! (`Err(String)`) that the caller records as a reject.
//!
//! The steps, in the order that keeps decoding cheap (decode dominates, see
//! benches/prepare/ and BENCHMARKS.md):
//! 1. Sniff the format from the content, never from the file name (ImageNet
//!    has a PNG named `.JPEG`).
//! 2. Read the header only and refuse an image above `max_pixels` before
//!    anything is allocated for its pixels.
//! 3. Decode. JPEG goes through libjpeg-turbo (the `turbojpeg` crate, its
//!    SIMD built in) with DCT-domain scaling: the IDCT produces the image at
//!    1/8, 1/4 or 1/2 of its size directly, the smallest that still covers
//!    what the resize policy needs on both axes, so the anti-aliased resize
//!    below still only downscales (as PIL's draft mode does): for `crop` and
//!    `squash` the shorter side must stay >= `size`; for `pad` only the
//!    longer side must (the shorter one shrinks by the same factor inside the
//!    square). For `crop`, only the part of the image around the centred
//!    square is decoded (libjpeg-turbo's partial decode; the output is the
//!    same); `pad` and `squash` keep every pixel, so they decode the whole
//!    image. What libjpeg-turbo refuses or only decodes with a warning
//!    (CMYK/YCCK, lossless, 12-bit, truncated or corrupt data) goes to
//!    `jpeg-decoder` instead, which decides and words the reject as before.
//!    Other formats go through `image` with allocation limits.
//! 4. Convert to 8-bit RGB: grayscale is expanded, 16-bit is scaled, CMYK
//!    (and YCCK) is converted with `rgb = (255 - c) * (255 - k) / 255`,
//!    palettes are expanded, alpha is composited on white. An animated GIF
//!    (or APNG) gives its first frame, as PIL does.
//! 5. Make the square with `fast_image_resize` (SIMD convolution with
//!    [`Filter`], its support scaled to the reduction: anti-aliased like
//!    PIL's `resize`; small images are upscaled, e.g. 28 to 32), by one of
//!    three [`Resize`] policies (the choices of img2dataset and StyleGAN2-ADA's
//!    dataset_tool): `crop` (the default) keeps the centred square of the
//!    shorter side; `pad` fits the whole image inside the square, centred,
//!    the border filled with a colour; `squash` resizes the whole image to
//!    the square, not keeping its aspect ratio.
//!
//! EXIF orientation: applied. A photo shot upright but stored sideways with
//! an orientation tag is shown upright by browsers, viewers, OpenCV's
//! `imdecode` (img2dataset) and `ImageOps.exif_transpose`; a GAN trained on
//! sideways faces learns sideways faces. The `width`/`height` a caller
//! records are therefore those of the image as displayed. A rotation or
//! flip commutes with resizing the whole image (each axis is resampled on
//! its own with a symmetric kernel; a rotation swaps the axes' targets
//! along with the axes) and with taking the centred square, so for `crop`
//! and `squash` the transform is applied to the small output square (a few
//! microseconds) rather than to the decoded image. It does not commute with
//! padding: the target size of the picture inside the square depends on
//! which side is displayed as the longer, and an odd border puts its extra
//! pixel on the right and bottom of the *displayed* square. So `pad` sizes
//! the picture from the stored axes (the fit is symmetric in them),
//! resizes, orients the small picture, and only then pads it, in display
//! coordinates. JPEG (APP1 Exif), PNG (eXIf), TIFF and WebP tags are
//! honoured; an unreadable tag counts as "no transform".
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
    /// Scale while the decoded image still covers what the [`Resize`] policy keeps at
    /// the target size (the shorter side for crop and squash, the longer for pad).
    #[default]
    Auto,
    /// Always decode at full size.
    Off,
}

/// How an image of any shape becomes the `size`x`size` square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// The centred square of the shorter side, resized (what `prepare` did
    /// before the policies existed; img2dataset's `center_crop`, dataset_tool's
    /// `center-crop`).
    #[default]
    Crop,
    /// The whole image fitted inside the square, centred, the border filled
    /// with the pad colour (img2dataset's `border`; dataset_tool's
    /// `center-crop-wide` pads the same way after cropping to 2:1).
    Pad,
    /// The whole image resized to the square, its aspect ratio not kept.
    Squash,
    /// The whole image, its shorter side resized to `size` and its aspect
    /// ratio kept (img2dataset's `keep_ratio`): not a square. What
    /// compare_gan's ImageNet training crops are drawn from (50-100% of the
    /// whole photo's area, src/train/loader.rs); readers that want squares
    /// take the centred one ([`crate::shard::stored::decode_square`]).
    #[serde(rename = "keep-ratio")]
    KeepRatio,
}

/// The resampling filter: `fast_image_resize`'s convolution filters, each
/// with its support scaled to the reduction (anti-aliased, as PIL's
/// `resize` is). Which one is used moves FID by a point or more, so it is a
/// parameter and is recorded with the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    /// Equal weights over the source pixels a target pixel covers (support 0.5).
    Box,
    /// Linear interpolation, the triangle filter (support 1): PIL's
    /// `BILINEAR`; what `prepare` has always used.
    #[default]
    Bilinear,
    /// Hamming-windowed (support 1): bicubic-like sharpness when downscaling.
    Hamming,
    /// Catmull-Rom cubic (support 2): PIL's `BICUBIC`.
    CatmullRom,
    /// Mitchell-Netravali cubic (support 2): softer than Catmull-Rom.
    Mitchell,
    /// Gaussian, standard deviation 0.5 (support 3).
    Gaussian,
    /// Lanczos, 3 lobes (support 3): PIL's `LANCZOS`.
    Lanczos3,
}

impl Filter {
    fn fr(self) -> fr::FilterType {
        match self {
            Filter::Box => fr::FilterType::Box,
            Filter::Bilinear => fr::FilterType::Bilinear,
            Filter::Hamming => fr::FilterType::Hamming,
            Filter::CatmullRom => fr::FilterType::CatmullRom,
            Filter::Mitchell => fr::FilterType::Mitchell,
            Filter::Gaussian => fr::FilterType::Gaussian,
            Filter::Lanczos3 => fr::FilterType::Lanczos3,
        }
    }

    /// The kernel's radius in source pixels at scale 1 (fast_image_resize's values).
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::CatmullRom | Filter::Mitchell => 2.0,
            Filter::Gaussian | Filter::Lanczos3 => 3.0,
        }
    }
}

/// An 8-bit RGB colour (the border of `pad`). Written `#rrggbb`; read from
/// `#rrggbb`, `rrggbb`, `R,G,B` (0-255 each) or `black`, `white`, `gray`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Color(pub [u8; 3]);

impl Color {
    pub const BLACK: Color = Color([0, 0, 0]);
}

impl std::str::FromStr for Color {
    type Err = String;

    fn from_str(s: &str) -> Result<Color, String> {
        let bad = || {
            format!("`{s}` is not a colour: give #rrggbb, R,G,B (each 0-255) or black, white, gray")
        };
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "black" => return Ok(Color([0, 0, 0])),
            "white" => return Ok(Color([255, 255, 255])),
            "gray" | "grey" => return Ok(Color([128, 128, 128])),
            _ => {}
        }
        if t.contains(',') {
            let parts: Vec<&str> = t.split(',').map(str::trim).collect();
            let mut c = [0u8; 3];
            if parts.len() != 3 {
                return Err(bad());
            }
            for (v, p) in c.iter_mut().zip(parts) {
                *v = p.parse().map_err(|_| bad())?;
            }
            return Ok(Color(c));
        }
        let hex = t.strip_prefix('#').unwrap_or(t);
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
        Ok(Color([byte(0)?, byte(2)?, byte(4)?]))
    }
}

impl std::fmt::Display for Color {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

impl Serialize for Color {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Color {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Color, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How the square was made, as `prepare` records it in the images table's
/// schema metadata (`shard::schema::RESIZE_KEY`) beside its manifest's
/// parameters, so that a table read without its manifest still says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Geometry {
    pub resize: Resize,
    pub filter: Filter,
    /// The border colour of `pad` (recorded whatever the policy).
    pub pad_color: Color,
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
    /// How the square is made, with which filter and border.
    pub geometry: Geometry,
}

/// One prepared image.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Width and height of the source image as displayed (after EXIF orientation).
    pub width: u32,
    pub height: u32,
    /// The encoded image: `size`x`size`, or for `keep-ratio` its shorter side `size`.
    pub bytes: Vec<u8>,
}

/// An 8-bit RGB pixel buffer, and for `Resize::Crop` the square of it that
/// becomes the output (`pad` and `squash` use every pixel).
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

/// Decodes, crops or pads, resizes and encodes one image file's bytes.
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
    let (out, ow, oh) = to_square(&rgb, (width, height), orientation, opts)?;
    give_back_scratch(rgb.pixels);
    let (width, height) = displayed(width, height, orientation);
    Ok(Prepared {
        width,
        height,
        bytes: encode(out, ow, oh, opts)?,
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
    let (out, ow, oh) = to_square(&rgb, (width, height), Orientation::NoTransforms, opts)?;
    Ok(Prepared {
        width,
        height,
        bytes: encode(out, ow, oh, opts)?,
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

/// The size, in the stored axes, that the resize makes of a whole `w`x`h`
/// image, or of as much of it as it keeps: what the DCT scale must still
/// cover on each axis. `crop` and `squash` need `size` on both axes (for
/// `crop` that is the shorter side's need, the longer side following);
/// `pad` needs the fitted picture's size.
fn needed(w: usize, h: usize, opts: &Options) -> (usize, usize) {
    let size = opts.size as usize;
    let (tw, th) = match opts.geometry.resize {
        Resize::Crop | Resize::Squash => return (size, size),
        Resize::Pad => fit(w as u32, h as u32, opts.size),
        Resize::KeepRatio => shorter_side(w as u32, h as u32, opts.size),
    };
    (tw as usize, th as usize)
}

/// The size of a `w`x`h` picture whose shorter side becomes `size`, aspect
/// ratio kept (the longer side rounded). Symmetric, as [`fit`] is.
pub fn shorter_side(w: u32, h: u32, size: u32) -> (u32, u32) {
    let scaled = |long: u32, short: u32| {
        ((long as u64 * size as u64 * 2 + short as u64) / (2 * short as u64)).max(1) as u32
    };
    if w <= h {
        (size, scaled(h, w))
    } else {
        (scaled(w, h), size)
    }
}

/// The size of a `w`x`h` picture fitted inside a `size` square, aspect ratio
/// kept: the longer side becomes `size`, the shorter one is rounded (at
/// least 1). Symmetric: `fit(h, w)` is `fit(w, h)` swapped, so it can be
/// taken in the stored axes and oriented afterwards.
fn fit(w: u32, h: u32, size: u32) -> (u32, u32) {
    let scaled = |short: u32, long: u32| {
        ((short as u64 * size as u64 * 2 + long as u64) / (2 * long as u64)).max(1) as u32
    };
    if w >= h {
        (size, scaled(h, w))
    } else {
        (scaled(w, h), size)
    }
}

/// The power-of-two DCT scale (1/8, 1/4, 1/2 or 1, as `(num, denom)`) with
/// the smallest output that still covers `need` on both axes. libjpeg-turbo
/// also offers 3/8, 5/8, 6/8 and 7/8, but its SIMD IDCTs are the 8x8, 4x4 and
/// 2x2 ones (the others are scalar C); most of the decode is the entropy
/// decoding, which no scale reduces, so a smaller output buys little.
fn turbo_scale(w: usize, h: usize, need: (usize, usize), scaling: JpegScaling) -> (usize, usize) {
    if scaling == JpegScaling::Off {
        return (1, 1);
    }
    [8, 4, 2]
        .into_iter()
        .find(|&d| w.div_ceil(d) >= need.0 && h.div_ceil(d) >= need.1)
        .map_or((1, 1), |d| (1, d))
}

/// Where to decode and what to crop: the part of the scaled image that
/// libjpeg-turbo decodes (`region`, x aligned to the scaled iMCU width), and
/// the centred square inside it. For `crop` the region keeps a margin of
/// the resize filter's support around the square, so the output equals
/// that of a whole decode (the test
/// `partial_decode_equals_whole_decode_on_the_photos`) while the columns or
/// rows outside it are never colour-converted or upsampled; `pad` and
/// `squash` decode the whole (scaled) image.
struct TurboPlan {
    scale: (usize, usize),
    region: (usize, usize, usize, usize),
    crop: Crop,
}

fn turbo_plan(w: usize, h: usize, mcu_w: Option<usize>, opts: &Options) -> TurboPlan {
    let scale = turbo_scale(w, h, needed(w, h, opts), opts.jpeg_scaling);
    let scaled = |v: usize| (v * scale.0).div_ceil(scale.1);
    let (sw, sh) = (scaled(w), scaled(h));
    let whole = Crop::centre(sw as u32, sh as u32);
    // The kernel reaches `support` target pixels, `side / size` source pixels
    // each, either side of the square; never less than bilinear's reach.
    let reach = opts.geometry.filter.support().max(1.0);
    let margin = (reach * whole.side / opts.size as f64).ceil() as usize + 1;
    let (mut x, mut y, mut rw, mut rh) = (0, 0, sw, sh);
    // `pad` and `squash` keep every pixel: the whole image, its square unused.
    let crop = opts.geometry.resize == Resize::Crop;
    if crop && sw > sh {
        if let Some(mcu) = mcu_w.map(|m| (m * scale.0).div_ceil(scale.1)) {
            x = (whole.left as usize).saturating_sub(margin) / mcu * mcu;
            rw = ((whole.left + whole.side).ceil() as usize + margin).min(sw) - x;
        }
    } else if crop && sh > sw {
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
        let clamp = |v: u64| v.min(u16::MAX as u64) as u16;
        let (want_w, want_h) = if opts.geometry.resize == Resize::Crop {
            // Ask for the smallest image whose shorter side is still >= size:
            // jpeg-decoder picks the largest 1/8..1 reduction meeting both requests.
            let short = w.min(h).max(1) as u64;
            let want = |side: u32| (opts.size as u64 * side as u64).div_ceil(short);
            (want(w), want(h))
        } else {
            // The scale libjpeg-turbo takes (both axes covered), asked for by
            // its exact output size: jpeg-decoder takes the first reduction
            // that reaches the request on either axis, which is that one.
            let (wu, hu) = (w as usize, h as usize);
            let (_, den) = turbo_scale(wu, hu, needed(wu, hu, opts), JpegScaling::Auto);
            (wu.div_ceil(den) as u64, hu.div_ceil(den) as u64)
        };
        d.scale(clamp(want_w), clamp(want_h))
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

/// Resizes `width`x`height` of `src` (from `left`, `top`: fractional, the
/// centre of an odd margin) to `dw`x`dh` with `filter`.
fn resize(
    src: &Rgb,
    (left, top, width, height): (f64, f64, f64, f64),
    dw: u32,
    dh: u32,
    filter: Filter,
) -> Result<Vec<u8>, String> {
    let view = fr::images::ImageRef::new(src.width, src.height, &src.pixels, fr::PixelType::U8x3)
        .map_err(|e| format!("internal: bad pixel buffer ({e})"))?;
    let mut dst = fr::images::Image::new(dw, dh, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(filter.fr()))
        .crop(left, top, width, height);
    RESIZER
        .with(|r| r.borrow_mut().resize(&view, &mut dst, &options))
        .map_err(|e| format!("internal: resize failed ({e})"))?;
    Ok(dst.into_vec())
}

/// The output of a decoded image whose full-size, stored dimensions are
/// `full` (the decode may be DCT-scaled), upright by `o` (see the module
/// doc for why each policy orients where it does): its pixels, width and
/// height (`size`x`size` but for `keep-ratio`).
fn to_square(
    src: &Rgb,
    full: (u32, u32),
    o: Orientation,
    opts: &Options,
) -> Result<(Vec<u8>, u32, u32), String> {
    let (size, g) = (opts.size, &opts.geometry);
    let whole = (0.0, 0.0, src.width as f64, src.height as f64);
    match g.resize {
        Resize::Crop => {
            let c = src.crop;
            let square = resize(src, (c.left, c.top, c.side, c.side), size, size, g.filter)?;
            Ok(orient(square, size, size, o))
        }
        Resize::Squash => {
            let square = resize(src, whole, size, size, g.filter)?;
            Ok(orient(square, size, size, o))
        }
        Resize::Pad => {
            // Fitted in the stored axes (from the full-size dimensions, not
            // the DCT-scaled ones, whose rounding would tilt the ratio).
            let (tw, th) = fit(full.0, full.1, size);
            let picture = resize(src, whole, tw, th, g.filter)?;
            let (picture, dw, dh) = orient(picture, tw, th, o);
            Ok((pad(&picture, dw, dh, size, g.pad_color), size, size))
        }
        Resize::KeepRatio => {
            // Like pad, sized from the full-size stored axes; the whole
            // picture is resized, so it commutes with the orientation.
            let (tw, th) = shorter_side(full.0, full.1, size);
            let picture = resize(src, whole, tw, th, g.filter)?;
            Ok(orient(picture, tw, th, o))
        }
    }
}

/// `picture` (`w`x`h`, each at most `size`) centred on a `size` square of
/// `color`; an odd border's extra pixel goes right and below.
fn pad(picture: &[u8], w: u32, h: u32, size: u32, color: Color) -> Vec<u8> {
    let (size, w, h) = (size as usize, w as usize, h as usize);
    let mut out: Vec<u8> = color
        .0
        .iter()
        .copied()
        .cycle()
        .take(size * size * 3)
        .collect();
    let (x0, y0) = ((size - w) / 2, (size - h) / 2);
    for (y, row) in picture.chunks_exact(w * 3).enumerate() {
        let start = ((y0 + y) * size + x0) * 3;
        out[start..start + w * 3].copy_from_slice(row);
    }
    out
}

/// Applies an EXIF orientation to a `w`x`h` image; returns it with its new
/// width and height (swapped by a quarter turn).
fn orient(pixels: Vec<u8>, w: u32, h: u32, o: Orientation) -> (Vec<u8>, u32, u32) {
    if o == Orientation::NoTransforms {
        return (pixels, w, h);
    }
    let Some(img) = RgbImage::from_raw(w, h, pixels.clone()) else {
        return (pixels, w, h);
    };
    let mut img = DynamicImage::ImageRgb8(img);
    img.apply_orientation(o);
    let (w, h) = (img.width(), img.height());
    (img.into_rgb8().into_raw(), w, h)
}

fn encode(pixels: Vec<u8>, w: u32, h: u32, opts: &Options) -> Result<Vec<u8>, String> {
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
                w,
                h,
                image::ExtendedColorType::Rgb8,
            )
        }
        Codec::Jpeg => JpegEncoder::new_with_quality(&mut out, opts.quality).write_image(
            &pixels,
            w,
            h,
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
            geometry: Geometry::default(),
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
        let (r, w, h) = orient(sq, 2, 2, Orientation::Rotate90);
        assert_eq!((w, h), (2, 2));
        assert_eq!(&r[3..6], &[255, 0, 0]);
        assert_eq!(displayed(30, 20, Orientation::Rotate90), (20, 30));
    }

    /// Decodes `bytes` through libjpeg-turbo at `plan`, then crops and resizes.
    fn turbo_square(bytes: &[u8], plan: &TurboPlan, o: &Options) -> Vec<u8> {
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
            to_square(&rgb, (w as u32, h as u32), Orientation::NoTransforms, o)
                .unwrap()
                .0
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
                // Bilinear (the default), and the filters of the smallest and
                // largest support, whose margins differ.
                for (size, filter) in [
                    (32, Filter::Bilinear),
                    (128, Filter::Bilinear),
                    (32, Filter::Lanczos3),
                    (128, Filter::Box),
                ] {
                    let mut o = opts(size);
                    o.geometry.filter = filter;
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
                        turbo_square(&bytes, &plan, &o),
                        turbo_square(&bytes, &whole, &o),
                        "{} at {nw}x{nh} to {size} ({filter:?})",
                        path.display()
                    );
                }
            }
            files += 1;
        }
        assert_eq!(files, 20, "the 20 foolbox photos");
    }

    /// Left and right thirds red, middle third green, 300x100.
    fn thirds() -> Vec<u8> {
        jpeg(300, 100, |x, _| {
            if (100..200).contains(&x) {
                [0, 255, 0]
            } else {
                [255, 0, 0]
            }
        })
    }

    fn with_resize(size: u32, resize: Resize) -> Options {
        let mut o = opts(size);
        o.geometry.resize = resize;
        o.geometry.pad_color = Color([0, 0, 255]);
        o
    }

    #[test]
    fn squash_keeps_the_whole_width() {
        let p = prepare(&thirds(), &with_resize(30, Resize::Squash)).unwrap();
        let px = |x: usize, y: usize| &p.bytes[(y * 30 + x) * 3..(y * 30 + x) * 3 + 3];
        for y in [0, 15, 29] {
            assert!(px(2, y)[0] > 200 && px(2, y)[1] < 60, "{:?}", px(2, y));
            assert!(px(15, y)[1] > 200 && px(15, y)[0] < 60, "{:?}", px(15, y));
            assert!(px(27, y)[0] > 200 && px(27, y)[1] < 60, "{:?}", px(27, y));
        }
    }

    #[test]
    fn pad_fits_the_whole_image_and_fills_the_border() {
        // 300x100 in 16: a 16x5 picture (5.33 rounded) on rows 5..10.
        assert_eq!(fit(300, 100, 16), (16, 5));
        let p = prepare(&thirds(), &with_resize(16, Resize::Pad)).unwrap();
        let px = |x: usize, y: usize| &p.bytes[(y * 16 + x) * 3..(y * 16 + x) * 3 + 3];
        for y in (0..5).chain(10..16) {
            for x in 0..16 {
                assert_eq!(px(x, y), &[0, 0, 255], "border at {x},{y}");
            }
        }
        for y in 5..10 {
            assert!(px(0, y)[0] > 200 && px(0, y)[2] < 60, "{:?}", px(0, y));
            assert!(px(8, y)[1] > 200 && px(8, y)[2] < 60, "{:?}", px(8, y));
        }
    }

    #[test]
    fn fit_is_symmetric_and_never_empty() {
        for (w, h, s) in [(640, 360, 128), (333, 120, 32), (5000, 3, 64), (7, 7, 9)] {
            let (a, b) = fit(w, h, s);
            assert_eq!(fit(h, w, s), (b, a));
            assert!(a.max(b) == s && a.min(b) >= 1);
        }
    }

    #[test]
    fn dct_scale_covers_what_each_policy_keeps() {
        // 4000x1000 to 128: crop and squash need 128 on the shorter side
        // (1000/4 = 250; 1/8 would give 125); pad needs 128 on the longer
        // side only (4000/8 = 500 across, 125 >= 32 down).
        let scale = |r| {
            let o = with_resize(128, r);
            turbo_scale(4000, 1000, needed(4000, 1000, &o), JpegScaling::Auto)
        };
        assert_eq!(scale(Resize::Crop), (1, 4));
        assert_eq!(scale(Resize::Squash), (1, 4));
        assert_eq!(scale(Resize::Pad), (1, 8));
        // A small image is decoded whole and upscaled, whatever the policy.
        let o = with_resize(128, Resize::Pad);
        assert_eq!(
            turbo_scale(100, 60, needed(100, 60, &o), JpegScaling::Auto),
            (1, 1)
        );
    }

    #[test]
    fn every_policy_gives_the_same_square_of_a_square_image() {
        let bytes = jpeg(96, 96, |x, y| [x as u8 * 2, y as u8 * 2, 40]);
        for filter in [Filter::Bilinear, Filter::Lanczos3] {
            let outs: Vec<Vec<u8>> = [Resize::Crop, Resize::Pad, Resize::Squash]
                .into_iter()
                .map(|r| {
                    let mut o = with_resize(40, r);
                    o.geometry.filter = filter;
                    prepare(&bytes, &o).unwrap().bytes
                })
                .collect();
            assert_eq!(outs[0], outs[1], "{filter:?}: pad");
            assert_eq!(outs[0], outs[2], "{filter:?}: squash");
        }
    }

    #[test]
    fn colours_parse_in_every_spelling_and_print_as_hex() {
        for (s, c) in [
            ("#ff8000", [255, 128, 0]),
            ("FF8000", [255, 128, 0]),
            ("255, 128,0", [255, 128, 0]),
            ("black", [0, 0, 0]),
            ("White", [255, 255, 255]),
            ("grey", [128, 128, 128]),
        ] {
            assert_eq!(s.parse::<Color>(), Ok(Color(c)), "{s}");
        }
        for bad in ["", "red", "#ff80", "256,0,0", "1,2", "#gg0000"] {
            assert!(bad.parse::<Color>().is_err(), "{bad}");
        }
        assert_eq!(Color([255, 128, 0]).to_string(), "#ff8000");
        let g = Geometry::default();
        assert_eq!(
            serde_json::to_value(g).unwrap(),
            serde_json::json!({"resize": "crop", "filter": "bilinear", "pad-color": "#000000"})
        );
    }

    #[test]
    fn eoi_detection_allows_padding() {
        assert!(has_eoi(&[0xFF, 0xD8, 0xFF, 0xD9]));
        assert!(has_eoi(&[0xFF, 0xD8, 0xFF, 0xD9, 0, 0, b'\n']));
        assert!(!has_eoi(&[0xFF, 0xD8, 0x12, 0x34]));
    }
}
