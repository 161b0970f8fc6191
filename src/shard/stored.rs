//! The `image` column's stored format and its one decoder. `prepare`
//! records how it stored the images (codec and size) in the schema
//! metadata key `fewlabels.image`, and `shard` carries it into `train/`;
//! every reader (the training loader, `embed`, `evaluate`) decodes through
//! [`decode`], so a PNG, a JPEG and a raw-pixel row come out the same.
//!
//! Raw rows are `size * size * 3` bytes with no header of their own: their
//! size comes from the metadata, never from the `width`/`height` columns
//! (those hold the source image's size, before the crop and resize). A
//! table without the key (written before it existed) is read by sniffing:
//! PNG and JPEG by their magic bytes, raw rows when their length is a
//! square number of RGB pixels.
//!
//! A `keep-ratio` table ([`StoredShape::ShorterSide`]) holds whole photos
//! whose shorter side is `size` (PNG or JPEG only): the training loader
//! draws compare_gan's crops from them, and every reader that wants a
//! square takes the centred one ([`decode_square`]), which is what a
//! `crop` table of the same size would hold.
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Schema metadata key holding a [`StoredImage`] as JSON.
pub const STORED_IMAGE_KEY: &str = "fewlabels.image";

/// How a table's images are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    /// `png`, `jpeg` or `raw` (serde names of `codec::Codec`).
    pub codec: StoredCodec,
    /// Side of the square images (of the shorter side for `shorter-side`).
    pub size: u32,
    /// Squares, or whole photos by their shorter side (left out of the
    /// metadata for squares, which is what tables without it hold).
    #[serde(default, skip_serializing_if = "StoredShape::is_square")]
    pub shape: StoredShape,
}

/// The shape of a table's stored images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoredShape {
    /// `size` x `size`.
    #[default]
    Square,
    /// Any aspect ratio, the shorter side `size` (`prepare --resize keep-ratio`).
    ShorterSide,
}

impl StoredShape {
    pub fn is_square(&self) -> bool {
        *self == StoredShape::Square
    }
}

/// The codec of stored rows (the subset of `codec::Codec` a reader needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredCodec {
    Png,
    Jpeg,
    Raw,
}

impl StoredImage {
    /// The format recorded in `schema`, if any.
    pub fn from_schema(schema: &Schema) -> Option<StoredImage> {
        schema
            .metadata()
            .get(STORED_IMAGE_KEY)
            .and_then(|v| serde_json::from_str(v).ok())
    }

    /// `schema` with this format recorded in its metadata. Raw rows are no
    /// image file PIL can open, so Hugging Face `datasets` is told the
    /// column is a plain struct of bytes and path, not an `Image`.
    pub fn attach(&self, schema: &SchemaRef) -> SchemaRef {
        let mut md = schema.metadata().clone();
        md.insert(
            STORED_IMAGE_KEY.to_string(),
            serde_json::to_string(self).expect("stored image serialises"),
        );
        if self.codec == StoredCodec::Raw {
            let hf = crate::shard::schema::HF_KEY;
            if let Some(mut v) = md
                .get(hf)
                .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            {
                if let Some(image) = v.pointer_mut("/info/features/image") {
                    *image = serde_json::json!({
                        "bytes": {"dtype": "binary", "_type": "Value"},
                        "path": {"dtype": "string", "_type": "Value"},
                    });
                }
                md.insert(hf.to_string(), v.to_string());
            }
        }
        Arc::new(Schema::new_with_metadata(schema.fields().clone(), md))
    }
}

const PNG_MAGIC: &[u8] = b"\x89PNG";
const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8];

/// Decodes one stored row to 8-bit RGB. `format` is the table's recorded
/// format (None: sniff, for tables written before it was recorded).
pub fn decode(bytes: &[u8], format: Option<&StoredImage>) -> Result<RgbImage, String> {
    let raw_side = match format {
        Some(f) if f.codec == StoredCodec::Raw => Some(f.size as usize),
        Some(_) => None,
        None if bytes.starts_with(PNG_MAGIC) || bytes.starts_with(JPEG_MAGIC) => None,
        None => {
            let side = ((bytes.len() / 3) as f64).sqrt().round() as usize;
            Some(side)
        }
    };
    let img = match raw_side {
        Some(side) => {
            if side == 0 || bytes.len() != side * side * 3 {
                return Err(format!(
                    "{} bytes are not a {side}x{side} raw RGB image",
                    bytes.len()
                ));
            }
            RgbImage::from_raw(side as u32, side as u32, bytes.to_vec())
                .ok_or_else(|| "raw RGB image of the wrong length".to_string())?
        }
        None => image::load_from_memory(bytes)
            .map_err(|e| format!("cannot decode the stored image: {e}"))?
            .into_rgb8(),
    };
    if let Some(f) = format {
        let (w, h) = (img.width(), img.height());
        match f.shape {
            StoredShape::Square if (w, h) != (f.size, f.size) => {
                return Err(format!(
                    "is {w}x{h} but the table stores {}x{} images",
                    f.size, f.size
                ));
            }
            StoredShape::ShorterSide if w.min(h) != f.size => {
                return Err(format!(
                    "is {w}x{h} but the table stores images whose shorter side is {}",
                    f.size
                ));
            }
            _ => {}
        }
    }
    Ok(img)
}

/// Decodes one stored row to its square: the row itself, or for a
/// `shorter-side` table the centred square of the shorter side (what a
/// `crop` table of the same size stores: compare_gan's "middle" crop).
pub fn decode_square(bytes: &[u8], format: Option<&StoredImage>) -> Result<RgbImage, String> {
    let img = decode(bytes, format)?;
    let (w, h) = img.dimensions();
    if w == h {
        return Ok(img);
    }
    let side = w.min(h);
    let (left, top) = ((w - side) / 2, (h - side) / 2);
    Ok(image::imageops::crop_imm(&img, left, top, side, side).to_image())
}

/// (height, width) of a stored row's square (see [`decode_square`])
/// without decoding its pixels.
pub fn dimensions(bytes: &[u8], format: Option<&StoredImage>) -> Result<(usize, usize), String> {
    if let Some(f) = format {
        return Ok((f.size as usize, f.size as usize));
    }
    if bytes.starts_with(PNG_MAGIC) || bytes.starts_with(JPEG_MAGIC) {
        let r = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let (w, h) = r
            .into_dimensions()
            .map_err(|e| format!("cannot read the image header: {e}"))?;
        return Ok((h as usize, w as usize));
    }
    let side = ((bytes.len() / 3) as f64).sqrt().round() as usize;
    if side > 0 && side * side * 3 == bytes.len() {
        Ok((side, side))
    } else {
        Err(format!(
            "{} bytes: neither PNG, JPEG nor square raw RGB",
            bytes.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut b = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
            .unwrap();
        b
    }

    #[test]
    fn every_codec_decodes_to_the_same_pixels() {
        let img = RgbImage::from_fn(5, 5, |x, y| image::Rgb([x as u8 * 40, y as u8 * 40, 7]));
        let raw = StoredImage {
            codec: StoredCodec::Raw,
            size: 5,
            shape: StoredShape::Square,
        };
        let p = StoredImage {
            codec: StoredCodec::Png,
            size: 5,
            shape: StoredShape::Square,
        };
        assert_eq!(decode(img.as_raw(), Some(&raw)).unwrap(), img);
        assert_eq!(decode(&png(&img), Some(&p)).unwrap(), img);
        // Sniffed, for tables without the key.
        assert_eq!(decode(img.as_raw(), None).unwrap(), img);
        assert_eq!(decode(&png(&img), None).unwrap(), img);
        assert_eq!(dimensions(img.as_raw(), None).unwrap(), (5, 5));
        // The recorded size is the truth: a row of another size is an error.
        let other = StoredImage {
            codec: StoredCodec::Raw,
            size: 4,
            shape: StoredShape::Square,
        };
        assert!(decode(img.as_raw(), Some(&other)).is_err());
        assert!(decode(&png(&img), Some(&StoredImage { size: 4, ..p })).is_err());
    }

    /// Whole photos by their shorter side: decoded whole, or as the centred
    /// square; a row whose shorter side is not the table's is refused.
    #[test]
    fn shorter_side_rows_decode_whole_or_as_their_centre_square() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        let f = StoredImage {
            codec: StoredCodec::Png,
            size: 5,
            shape: StoredShape::ShorterSide,
        };
        assert_eq!(decode(&png(&img), Some(&f)).unwrap(), img);
        let square = decode_square(&png(&img), Some(&f)).unwrap();
        assert_eq!(square.dimensions(), (5, 5));
        assert_eq!(square.get_pixel(0, 0), img.get_pixel(1, 0));
        assert_eq!(square.get_pixel(4, 4), img.get_pixel(5, 4));
        let e = decode(&png(&img), Some(&StoredImage { size: 6, ..f })).unwrap_err();
        assert!(e.contains("shorter side is 6"), "{e}");
    }

    #[test]
    fn the_format_round_trips_through_schema_metadata() {
        let schema = crate::shard::schema::train(&["a".into()]);
        let f = StoredImage {
            codec: StoredCodec::Jpeg,
            size: 160,
            shape: StoredShape::Square,
        };
        let with = f.attach(&schema);
        assert_eq!(StoredImage::from_schema(&with), Some(f));
        // Squares are recorded as before the shape existed.
        assert_eq!(
            with.metadata()[STORED_IMAGE_KEY],
            r#"{"codec":"jpeg","size":160}"#
        );
        let whole = StoredImage {
            shape: StoredShape::ShorterSide,
            ..f
        };
        assert_eq!(
            StoredImage::from_schema(&whole.attach(&schema)),
            Some(whole)
        );
        assert_eq!(StoredImage::from_schema(&schema), None);
        // The other metadata (class names, the Hugging Face features) stays.
        assert_eq!(
            crate::shard::schema::class_names_of(&with),
            vec!["a".to_string()]
        );
    }
}
