//! A TensorBoard event-file writer with no TensorFlow or protobuf
//! dependency: TFRecord framing (length, masked CRC32C of the length, data,
//! masked CRC32C of the data) around hand-encoded `Event` / `Summary`
//! protocol buffers (tensorflow/core/util/event.proto, summary.proto). It
//! writes scalars (`simple_value`) and PNG images, which is all TensorBoard's
//! scalar and image dashboards read.
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, ResultExt};

/// TFRecord's CRC: CRC32C rotated right by 15 bits plus a constant, so that
/// a CRC of data containing CRCs stays well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord: `u64 len | u32 masked_crc(len) | data | u32 masked_crc(data)`, little-endian.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field key: `(field << 3) | wire_type`.
fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | wire as u64, out);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn varint_field(field: u32, v: u64, out: &mut Vec<u8>) {
    key(field, 0, out);
    varint(v, out);
}

/// What one summary value holds.
pub enum Value<'a> {
    Scalar(f32),
    /// An encoded PNG with its size.
    Png {
        png: &'a [u8],
        width: u32,
        height: u32,
        channels: u32,
    },
}

/// `Summary.Value { tag = 1; simple_value = 2 | image = 4 }`.
fn summary_value(tag: &str, value: &Value<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(1, tag.as_bytes(), &mut v);
    match value {
        Value::Scalar(x) => {
            key(2, 5, &mut v);
            v.extend_from_slice(&x.to_le_bytes());
        }
        Value::Png {
            png,
            width,
            height,
            channels,
        } => {
            // Summary.Image { height = 1; width = 2; colorspace = 3; encoded_image_string = 4 }
            let mut img = Vec::new();
            varint_field(1, *height as u64, &mut img);
            varint_field(2, *width as u64, &mut img);
            varint_field(3, *channels as u64, &mut img);
            bytes_field(4, png, &mut img);
            bytes_field(4, &img, &mut v);
        }
    }
    v
}

/// `Event { wall_time = 1 (double); step = 2; file_version = 3 | summary = 5 }`.
pub fn event(wall_time: f64, step: i64, body: EventBody<'_>) -> Vec<u8> {
    let mut e = Vec::new();
    key(1, 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint_field(2, step as u64, &mut e);
    match body {
        EventBody::FileVersion(v) => bytes_field(3, v.as_bytes(), &mut e),
        EventBody::Summary(values) => {
            let mut s = Vec::new();
            for (tag, value) in values {
                bytes_field(1, &summary_value(tag, value), &mut s);
            }
            bytes_field(5, &s, &mut e);
        }
    }
    e
}

pub enum EventBody<'a> {
    FileVersion(&'a str),
    Summary(&'a [(&'a str, Value<'a>)]),
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Appends events to `DIR/events.out.tfevents.<time>.fewlabels`. A resumed
/// run opens a new file: TensorBoard merges the files of a folder by step.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).at(dir)?;
        let t = now();
        let mut path = dir.join(format!("events.out.tfevents.{}.fewlabels", t as u64));
        let mut k = 1;
        while path.exists() {
            path = dir.join(format!("events.out.tfevents.{}.fewlabels.{k}", t as u64));
            k += 1;
        }
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        let mut w = EventWriter {
            out: BufWriter::new(file),
            path,
        };
        w.write_event(&event(t, 0, EventBody::FileVersion("brain.Event:2")))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, e: &[u8]) -> Result<()> {
        self.out.write_all(&frame(e)).at(&self.path)
    }

    /// Writes several scalars for one step in one event.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f64)]) -> Result<()> {
        let vals: Vec<(&str, Value<'_>)> = values
            .iter()
            .map(|(t, v)| (*t, Value::Scalar(*v as f32)))
            .collect();
        self.write_event(&event(now(), step, EventBody::Summary(&vals)))
    }

    /// Writes a PNG image.
    pub fn image(
        &mut self,
        step: i64,
        tag: &str,
        png: &[u8],
        width: u32,
        height: u32,
    ) -> Result<()> {
        let vals = [(
            tag,
            Value::Png {
                png,
                width,
                height,
                channels: 3,
            },
        )];
        self.write_event(&event(now(), step, EventBody::Summary(&vals)))
    }

    /// Pushes buffered events to the file (TensorBoard reads partial files).
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().at(&self.path)?;
        self.out.get_ref().sync_data().at(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC32C check value of "123456789" is 0xE3069283 (RFC 3720 B.4);
    /// the masked value follows TFRecord's formula by hand.
    #[test]
    fn masked_crc_by_hand() {
        let crc: u32 = 0xE306_9283;
        assert_eq!(crc32c::crc32c(b"123456789"), crc);
        let masked = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc32c(b"123456789"), masked);
    }

    #[test]
    fn varints_and_scalar_event_bytes() {
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, vec![0xac, 0x02]);
        let e = event(1.0, 5, EventBody::Summary(&[("a", Value::Scalar(2.0))]));
        let mut want = vec![0x09];
        want.extend_from_slice(&1.0f64.to_le_bytes());
        // Summary (10 bytes) = value (8 bytes: tag "a" + fixed32 float).
        want.extend_from_slice(&[0x10, 5, 0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15]);
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(e, want);
        let f = frame(&e);
        assert_eq!(&f[..8], &(e.len() as u64).to_le_bytes());
        assert_eq!(f.len(), e.len() + 16);
    }
}
